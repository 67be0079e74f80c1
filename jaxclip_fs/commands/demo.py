"""``jaxclip-fs demo``: the whole pipeline offline on scikit-learn's ``digits``, in a few minutes.

Every registered method × shots 1, 2, 4, 8, 16 × seeds 1, 2, 3 on ``digits``
(10 classes, 8x8 greyscale digits served as 32x32 RGB), through the same
engine as ``jaxclip-fs run``: features extracted once (cached, so a second
demo skips the encoder), one compiled program per method, records, then the
report -- the table is printed and the plot written.

TA++ / TX++ need IMO adapters: the demo trains them once (one epoch, the
paper's settings) on the digits train split into ``DIR/imo_adapters`` -- a
demo shortcut: the paper trains them on a generic labelled set (Open Images)
disjoint from the few-shot task, and digits' train split holds more labels
than the few-shot sets use. Only ViT backbones have IMO adapters.

Weights: ``--weights`` if given; otherwise pretrained CLIP ViT-B/32 when it
is already on this machine (OpenAI's ``~/.cache/clip/ViT-B-32.pt`` or the
Hugging Face cache of ``openai/clip-vit-base-patch32``; nothing is
downloaded); otherwise the tiny test ViT with random weights, under a banner
saying the accuracies only exercise the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from jaxclip_fs.sweep.cells import parse_int_list
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.sweep.command import ExtractedFeatures, selected_methods
from jaxclip_fs.sweep.engine import SweepConfig, run_sweep
from jaxclip_fs.sweep.image_programs import PAIRED_METHODS

DATASET = "digits"
PRETRAINED_BACKBONE = "ViT-B/32"
RANDOM_BACKBONE = "tiny-vit"
IMO_DIR = "imo_adapters"
BANNER = (
    "=" * 78 + "\n"
    "  No pretrained CLIP weights found on this machine: the demo runs the tiny test ViT\n"
    "  with RANDOM weights. The accuracies below only show that the pipeline works;\n"
    "  they say nothing about the methods. For real numbers pass --weights (a checkpoint\n"
    "  path or a hub id already in your Hugging Face cache), e.g. after\n"
    "  `hf download openai/clip-vit-base-patch32` on a machine with internet.\n"
    + "=" * 78)


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """The CLIP the demo uses: backbone, weights spec, and whether it is random."""

    backbone: str
    weights: str
    random: bool


def find_pretrained(hub_cache: str | None = None) -> str | None:
    """A local ViT-B/32 checkpoint (OpenAI cache file or HF cache snapshot), never downloading.

    Args:
      hub_cache: the Hugging Face hub cache directory (default: huggingface_hub's).
    """
    from jaxclip_fs.convert import hub

    cached = hub.openai_cache_file(PRETRAINED_BACKBONE)
    if cached:
        return cached
    try:
        import huggingface_hub

        directory = huggingface_hub.snapshot_download(hub.DEFAULT_HUB_IDS[PRETRAINED_BACKBONE],
                                                      cache_dir=hub_cache, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None
    return directory if hub.find_weight_file(directory) else None


def choose_model(backbone: str | None, weights: str | None) -> DemoModel:
    """``--weights`` / ``--backbone`` if given, else a local pretrained ViT-B/32, else random."""
    if weights is not None:
        is_random = weights == "random" or weights.startswith("random:")
        return DemoModel(backbone or (RANDOM_BACKBONE if is_random else PRETRAINED_BACKBONE),
                         weights, is_random)
    found = find_pretrained()
    if found is not None:
        return DemoModel(backbone or PRETRAINED_BACKBONE, found, False)
    return DemoModel(backbone or RANDOM_BACKBONE, "random", True)


def imo_adapters(source: ExtractedFeatures, out_dir: str, progress: bool) -> str:
    """``DIR/imo_adapters``: IMO adapters trained on the digits train split (once)."""
    from jaxclip_fs.train.imo import IMOSettings, save_imo_adapters, train_imo

    path = os.path.join(out_dir, IMO_DIR)
    if not os.path.isdir(path):
        print("demo: training IMO adapters (one epoch on the digits train split) for TA++ / TX++",
              file=sys.stderr)
        trained = train_imo(source.clip(), source.dataset(DATASET), IMOSettings(), split="train",
                            progress=progress)
        save_imo_adapters(path, trained)
    return path


def demo_command(args) -> int:
    """``jaxclip-fs demo`` (flags as in ``cli._add_demo``)."""
    model = choose_model(args.backbone, args.weights)
    vit = get_config(model.backbone).is_vit
    config = SweepConfig(methods=selected_methods(args.method, images=True, imo=vit),
                         datasets=(DATASET,), shots=parse_int_list(args.shots, "--shots", 1),
                         seeds=parse_int_list(args.seeds, "--seeds", 0))
    if model.random:
        print(BANNER, file=sys.stderr)
    else:
        print(f"demo: {model.backbone} with weights {model.weights}", file=sys.stderr)
    source = ExtractedFeatures(args.out, model.backbone, model.weights, views=args.views,
                               cache_dir=args.cache_dir, progress=not args.quiet,
                               banner=not model.random)  # the demo's own banner says it
    settings = {"--backbone": model.backbone, "--weights": model.weights, "--views": args.views}
    paired = None
    if set(config.methods) & set(PAIRED_METHODS):
        source.imo_adapters = imo_adapters(source, args.out, not args.quiet)
        paired = source.paired
    result = run_sweep(args.out, config, source, image_runner=source.run_image,
                       paired_features=paired, settings=settings, argv=sys.argv[1:],
                       progress=not args.quiet)

    from jaxclip_fs.report.write import write_report

    files = write_report(result.out_dir)
    print(files.summary)
    plot = next((p for p in files.plots if p.endswith(f"_{DATASET}.png")), None)
    print(f"plot: {os.path.abspath(plot) if plot else '(none)'}")
    print(f"tables: {os.path.abspath(files.markdown)}; "
          f"records: {os.path.join(os.path.abspath(result.out_dir), 'records')}")
    if model.random:
        print("(random weights: accuracies only exercise the pipeline)")
    return 0

