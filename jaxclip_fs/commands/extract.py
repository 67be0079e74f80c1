"""``jaxclip-fs extract``: a dataset's feature file (train pool with views, val, test, text)."""

from __future__ import annotations

import argparse
import sys

from jaxclip_fs.commands import common, flags
from jaxclip_fs.data.fewshot import CHAINED_SHOTS
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment.protocol import SAMPLERS
from jaxclip_fs.io.console import random_weights_banner

NAME = "extract"
HELP = "extract a feature file (train pool with views, val, test, text classifier)"
DESCRIPTION = """\
Encode a dataset with CLIP and write the feature file FILE.npz: 'text' [C, D]
(template-ensemble classifier), 'train' [V, N, D] (view 0 un-augmented, views 1..V-1
the --views augmented ones: RandomResizedCrop + flip), 'val' and 'test' [M, D] (whole
splits), labels, class names, 'logit_scale' and 'meta' (provenance). The train pool
is the union of the few-shot sets of --seeds at --shots (recorded as
'fewshot_seeds'/'fewshot_index', so `evaluate --shots k --seed s` uses exactly those
images), or the whole train split without --shots. With --taps the intermediate outputs
go to FILE.taps.npz.

Features are cached under --cache-dir (default $JAXCLIP_FS_CACHE or
~/.cache/jaxclip-fs) in chunks keyed on everything that shapes them: a rerun reuses
them, an interrupted run resumes, a corrupt chunk is recomputed.

examples:
  jaxclip-fs extract --dataset digits --backbone tiny-vit --weights random \\
      --shots 4 --seeds 1,2,3 --out digits.npz
  jaxclip-fs extract --dataset oxford_pets --data-root /data --backbone RN50 \\
      --weights openai --views 10 --shots 16 --seeds 1,2,3 --out pets_rn50.npz"""

#: The papers' few-shot seeds, used when --shots comes without --seeds.
DEFAULT_SEEDS = "1,2,3"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registry name or folder:PATH")
    common.add_data_arguments(p)
    common.add_model_arguments(p, required=True)
    common.add_extraction_arguments(p, trained=False)
    p.add_argument("--shots", type=int, metavar="K",
                   help="train pool = the K-shot sets of --seeds (default: whole train split)")
    p.add_argument("--seeds", metavar="S1,S2,...",
                   help="few-shot seeds, comma-separated (default with --shots: 1,2,3)")
    p.add_argument("--sampler", choices=SAMPLERS, default="nested",
                   help="few-shot draws the pool holds: nested (default), or also the official "
                        "codes' (for the paper protocol; at 1, 2, 4, 8, 16 up to --shots)")
    p.add_argument("--prompts", metavar="FILE.json",
                   help="also save the classifier of the templates plus this CuPL-format prompt "
                        "file's sentences ('text_prompts')")
    p.add_argument("--taps", metavar="T1,T2,...",
                   help="also save intermediate outputs (layer1..layer4 / block<i>) to "
                        "FILE.taps.npz")
    common.add_cache_arguments(p)
    p.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images (counted, listed in meta) instead of failing")
    common.add_quiet_argument(p)
    p.add_argument("--out", required=True, metavar="FILE.npz")


def official_draws(sampler: str | None, shots: int | None,
                   seeds: tuple[int, ...]) -> list[tuple[str, int, int]]:
    """An official sampler's draws a feature file holds: for every seed, the papers' shot
    counts 1, 2, 4, 8, 16 up to ``--shots`` and ``--shots`` itself (they are not nested)."""
    if sampler in (None, "nested"):
        return []
    if shots is None:
        raise ConfigError("--sampler official needs --shots")
    counts = sorted({k for k in CHAINED_SHOTS if k <= shots} | {shots})
    return [(sampler, seed, k) for seed in seeds for k in counts]


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.data import get_dataset
    from jaxclip_fs.features.extract import extract_features, save_extraction

    from jaxclip_fs.io.outputs import check_output_file

    check_output_file(args.out, "--out")  # before any work
    if args.shots is None and args.seeds is not None:
        raise ConfigError("--seeds needs --shots (without --shots the whole train split is used)")
    seeds = (flags.parse_int_list(args.seeds or DEFAULT_SEEDS, "--seeds", 0)
             if args.shots is not None else ())
    aug_scale = flags.parse_scale(args.aug_scale)
    dataset = get_dataset(args.dataset, args.data_root, source=args.source)
    loaded = load_clip(args.backbone, args.weights)
    if loaded.is_random:
        print(random_weights_banner(loaded.weights_id, "features"), file=sys.stderr)
    draws = official_draws(args.sampler, args.shots, seeds)
    extraction = extract_features(
        dataset, loaded, shots=args.shots, seeds=seeds, views=args.views + 1,
        aug_scale=aug_scale, aug_seed=args.aug_seed,
        taps=flags.parse_names(args.taps, "--taps") if args.taps else (),
        dtype=common.encode_dtype(args),
        batch_size=args.batch_size, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        skip_corrupt=args.skip_corrupt, workers=args.workers, progress=not args.quiet,
        draws=draws, prompts=args.prompts)
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
