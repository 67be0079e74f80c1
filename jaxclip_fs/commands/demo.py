"""``jaxclip-fs demo``: the whole pipeline offline on scikit-learn's ``digits``, in a few minutes.

Every registered method (but those trained through CLIP's towers, which take thousands of
steps per cell: ``--method coop,clip_lora`` runs them) × shots 1, 2, 4, 8, 16 × seeds 1, 2, 3
on ``digits``
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

import argparse
import dataclasses
import os
import sys

from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.commands import common, flags

NAME = "demo"
HELP = "the whole pipeline offline on scikit-learn's digits (every method, shots 1-16, 3 seeds)"
DESCRIPTION = """\
Run every registered method x shots 1,2,4,8,16 x seeds 1,2,3 on scikit-learn's digits,
offline, through the same engine as `jaxclip-fs run`: features extracted once (cached),
one compiled program per method, records, then the report. Prints the table and the
path of the accuracy-vs-shots plot. A rerun resumes / reuses everything.

Weights: --weights if given; else pretrained ViT-B/32 if already on this machine
(~/.cache/clip/ViT-B-32.pt or the Hugging Face cache of openai/clip-vit-base-patch32;
nothing is downloaded); else the tiny test ViT with RANDOM weights, under a banner:
those accuracies only show that the pipeline runs.

examples:
  jaxclip-fs demo
  jaxclip-fs demo --weights ~/clip-vit-base-patch32 --out demo_vitb32
  jaxclip-fs demo --shots 1,4 --seeds 1 --method tip_adapter,ape
  jaxclip-fs demo --protocol fair,paper   # the paper - fair table of the official protocols"""

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


def train_imo_adapters(session, path: str, progress: bool) -> None:
    """IMO adapters trained on the digits train split into ``path`` (once)."""
    from jaxclip_fs.train.imo import IMOSettings, save_imo_adapters, train_imo

    if not os.path.isdir(path):
        print("demo: training IMO adapters (one epoch on the digits train split) for TA++ / TX++",
              file=sys.stderr)
        trained = train_imo(session.clip(), session.dataset(DATASET), IMOSettings(),
                            split="train", progress=progress)
        save_imo_adapters(path, trained)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="checkpoint path, hub id (cached), 'openai' or 'random' "
                                     "(default: local ViT-B/32 if found, else random)")
    p.add_argument("--backbone",
                   help="variant (default: ViT-B/32 with real weights, tiny-vit random)")
    p.add_argument("--out", default="jaxclip-fs-demo", metavar="DIR",
                   help="run directory (default ./jaxclip-fs-demo)")
    p.add_argument("--method", default="all", metavar="M1,M2,...",
                   help="default: all, except the methods trained through CLIP's towers "
                        "(coop, clip_lora: name them to run them)")
    flags.add(p, ("grid.shots", "grid.seeds"))
    flags.add(p, ("extraction.views", "execution.cache_dir"), defaults={"extraction.views": 3})
    p.add_argument("--quiet", action="store_true", help="no progress bars (messages stay)")
    p.add_argument("--wait-lock", action="store_true",
                   help="another run is writing into DIR: wait for it (default: stop)")
    common.add_protocol_arguments(p.add_argument_group("selection"))


def demo_config(args: argparse.Namespace, model: DemoModel, imo_dir: str | None):
    """The demo's experiment config (digits, the chosen CLIP, the grid of the flags; IMO
    adapters only when a paired-feature method runs)."""
    from jaxclip_fs import methods

    vit = get_config(model.backbone).is_vit
    kinds = common.input_kinds(False, imo_adapters=vit)
    names = common.selected_methods(args.method, kinds)
    if args.method.strip() == "all":  # towers: thousands of steps through CLIP, not a demo's
        names = tuple(n for n in names if methods.get(n).towers is None)
    paired = any(methods.get(name).inputs == "paired" for name in names)
    return common.experiment_config(
        argparse.Namespace(backbone=model.backbone, weights=model.weights, views=args.views,
                           cache_dir=args.cache_dir, imo_adapters=imo_dir if paired else None,
                           protocol=args.protocol, sampler=args.sampler, prompts=args.prompts,
                           shots=args.shots, seeds=args.seeds),
        names, {"data.datasets": (DATASET,)})


def run(args: argparse.Namespace) -> int:
    """``jaxclip-fs demo`` (module docstring)."""
    from jaxclip_fs.engine.run import RunDir, run_experiment, sources_for
    from jaxclip_fs.io.console import stderr_log
    from jaxclip_fs.report.write import write_report

    model = choose_model(args.backbone, args.weights)
    config = demo_config(args, model, os.path.join(args.out, IMO_DIR))
    if model.random:
        print(BANNER, file=sys.stderr)
    else:
        print(f"demo: {model.backbone} with weights {model.weights}", file=sys.stderr)
    sources = sources_for(config, features_dir=os.path.join(args.out, "features"),
                          progress=not args.quiet, banner=not model.random)
    if config.model.imo_adapters:
        train_imo_adapters(sources.features.session, config.model.imo_adapters, not args.quiet)
    run_experiment(config, RunDir(args.out, argv=args.argv, wait_lock=args.wait_lock),
                   sources=sources, progress=not args.quiet, log=stderr_log)

    files = write_report(args.out)
    print(files.summary)
    plots = [p for p in files.plots if p.endswith(f"_{DATASET}.png")]  # one per protocol
    for plot in plots or ["(none)"]:
        print(f"plot: {os.path.abspath(plot) if plots else plot}")
    print(f"tables: {os.path.abspath(files.markdown)}; "
          f"records: {os.path.join(os.path.abspath(args.out), 'records')}")
    if model.random:
        print("(random weights: accuracies only exercise the pipeline)")
    return 0
