"""``jaxclip-fs extract``: parse-free glue from CLI flags to :func:`extract_features`."""

from __future__ import annotations

import argparse
import sys

from jaxclip_fs.errors import ConfigError

#: The papers' few-shot seeds, used when --shots comes without --seeds.
DEFAULT_SEEDS = "1,2,3"
RANDOM_BANNER = (
    "*** RANDOM WEIGHTS ({weights_id}): these features only exercise the pipeline; they are "
    "meaningless for few-shot results. For real ones pass --weights PATH, 'openai' or a hub "
    "id. ***")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3); ConfigError naming ``--seeds`` otherwise."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be a comma list of integers, got '{text}'") from None
    if not seeds:
        raise ConfigError(f"--seeds must name at least one seed, got '{text}'")
    return seeds


def parse_scale(text: str) -> tuple[float, float]:
    """``"0.5,1"`` -> (0.5, 1.0); ConfigError naming ``--aug-scale`` otherwise."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--aug-scale must be LOW,HIGH (e.g. 0.5,1), got '{text}'") from None
    return low, high


def parse_taps(text: str | None) -> tuple[str, ...]:
    """``"layer1,layer4"`` -> ("layer1", "layer4"); None -> ()."""
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def extract_command(args: argparse.Namespace) -> int:
    """Runs ``jaxclip-fs extract`` (flags as defined in ``cli._add_extract``)."""
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.data import get_dataset
    from jaxclip_fs.features.extract import extract_features, save_extraction

    if args.shots is None and args.seeds is not None:
        raise ConfigError("--seeds needs --shots (without --shots the whole train split is used)")
    seeds = parse_seeds(args.seeds or DEFAULT_SEEDS) if args.shots is not None else ()
    aug_scale = parse_scale(args.aug_scale)
    dataset = get_dataset(args.dataset, args.data_root, source=args.source)
    loaded = load_clip(args.backbone, args.weights)
    if loaded.is_random:
        print(RANDOM_BANNER.format(weights_id=loaded.weights_id), file=sys.stderr)
    extraction = extract_features(
        dataset, loaded, shots=args.shots, seeds=seeds, views=args.views,
        aug_scale=aug_scale, aug_seed=args.aug_seed,
        taps=parse_taps(args.taps), dtype=args.dtype, batch_size=args.batch_size,
        cache_dir=args.cache_dir, use_cache=not args.no_cache, skip_corrupt=args.skip_corrupt,
        workers=args.workers, progress=not args.quiet)
    try:
        written = save_extraction(args.out, extraction)
    except OSError as exc:  # the features stay in the cache: a rerun only writes the file
        raise ConfigError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    fs = extraction.features
    if extraction.skipped:
        print(f"skipped {len(extraction.skipped)} unreadable images (listed in the file's meta):",
              file=sys.stderr)
        for split, _, message in extraction.skipped[:10]:
            print(f"  {split}: {message}", file=sys.stderr)
    cached = sum(loaded_chunks for loaded_chunks, _ in extraction.cache.values())
    total = sum(a + b for a, b in extraction.cache.values())
    print(f"wrote {', '.join(written)}: {fs.num_classes} classes, train {list(fs.train.shape)}, "
          f"val {list(fs.val.shape)}, test {list(fs.test.shape)} ({loaded.config.name}, weights "
          f"{'random' if loaded.is_random else loaded.weights_id}; {cached}/{total} image chunks "
          f"from the cache)")
    return 0
