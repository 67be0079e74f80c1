"""The ``jaxclip-fs`` command line: parses flags and calls library functions.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args)``;
the work itself lives in the packages so it is importable from a notebook.
User errors (:class:`~jaxclip_fs.errors.JaxclipError`) are printed as one
``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from jaxclip_fs import __version__
from jaxclip_fs.errors import JaxclipError

_RUNNERS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def _command(name: str, help_text: str, description: str):
    """Registers ``_add_<name>`` with its runner ``_run_<name>``."""

    def wrap(add: Callable[[argparse.ArgumentParser], None]):
        def register(subparsers) -> None:
            parser = subparsers.add_parser(
                name, help=help_text, description=description,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            add(parser)
        register.command_name = name  # type: ignore[attr-defined]
        return register

    return wrap


# --- embed ---------------------------------------------------------------------------


@_command(
    "embed",
    "embed images and/or texts with a CLIP backbone",
    "Encode images and texts with CLIP and write L2-normalised embeddings.\n\n"
    "Writes FILE.npz with 'image' [N, D] and 'text' [M, D] in the order given, plus\n"
    "provenance: 'backbone', 'weights' (its id, or 'random'), 'tokenizer' (which\n"
    "vocabulary was used) and 'meta' (JSON). --image and --text may be repeated and\n"
    "each takes one or more values. Images get CLIP's preprocessing (bicubic resize of\n"
    "the short side, center crop, CLIP mean/std).\n\n"
    "--weights is one of:\n"
    "  PATH      an HF CLIPModel directory, an OpenAI/open_clip .pt/.bin/.safetensors file,\n"
    "            or a directory written by `jaxclip-fs convert`\n"
    "  openai    OpenAI's release of the backbone (~/.cache/clip, else the Hugging Face hub)\n"
    "  ID        a Hugging Face hub id, e.g. openai/clip-vit-base-patch32 (cache first)\n"
    "  random    random init (random:SEED); every output says so\n\n"
    "example:\n  jaxclip-fs embed --backbone ViT-B/32 --weights openai \\\n"
    "      --image a.jpg b.png --text 'a photo of a dog.' 'a photo of a cat.' --out emb.npz",
)
def _add_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True,
                   help="variant name: RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, "
                        "ViT-L/14, ViT-L/14@336px (tiny-vit, tiny-rn for tests), or 'auto' "
                        "to take the checkpoint's architecture")
    p.add_argument("--weights", required=True,
                   help="local checkpoint path, hub id, 'openai', or 'random' (see above)")
    p.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH")
    p.add_argument("--text", nargs="+", action="extend", default=[], metavar="STR")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="images/texts per compiled batch (default 32)")


def _run_embed(args: argparse.Namespace) -> int:
    from jaxclip_fs.clip.embed import embed_command

    return embed_command(args)


# --- convert -------------------------------------------------------------------------


@_command(
    "convert",
    "convert a CLIP checkpoint to saved Flax params (orbax)",
    "Read a CLIP checkpoint (any --weights form that `embed` accepts), check it against\n"
    "the backbone's parameter tree, and save it as a directory that loads without torch:\n\n"
    "  DIR/variables/          orbax checkpoint of the Flax variables (params, batch_stats)\n"
    "  DIR/jaxclip_fs_clip.json config and provenance (the source's weights id is kept)\n"
    "  DIR/vocab.json ...      the source's tokenizer files, if it had any\n\n"
    "Use DIR as --weights afterwards. DIR must not exist (or be empty).\n\n"
    "example:\n  jaxclip-fs convert --backbone RN50 --weights ~/.cache/clip/RN50.pt --out rn50_flax",
)
def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True,
                   help="variant name (as for embed), or 'auto' to take the checkpoint's")
    p.add_argument("--weights", required=True,
                   help="local checkpoint path, hub id, 'openai', or 'random'")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to create")


def _run_convert(args: argparse.Namespace) -> int:
    from jaxclip_fs.convert.command import convert_command

    return convert_command(args)


# --- datasets ------------------------------------------------------------------------


@_command(
    "datasets",
    "list the datasets, or check and describe some",
    "Without NAME: list the registry names. With NAME(s): load each one and print its\n"
    "classes, split sizes and how each split was made (checks that the data is set up).\n\n"
    "examples:\n  jaxclip-fs datasets\n  jaxclip-fs datasets digits folder:./my_images\n"
    "  jaxclip-fs datasets oxford_pets dtd --data-root /data\n"
    "  jaxclip-fs datasets --setup-help",
)
def _add_datasets(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="registry name or folder:PATH")
    p.add_argument("--data-root", metavar="DIR",
                   help="CoOp-layout data root (default $JAXCLIP_FS_DATA), or the TFDS data dir")
    p.add_argument("--source", choices=["coop", "tfds"], default="coop",
                   help="where the benchmark sets come from (default: coop)")
    p.add_argument("--setup-help", action="store_true", help="print how to lay out the data root")


def _run_datasets(args: argparse.Namespace) -> int:
    from jaxclip_fs.data import coop, registry

    if args.setup_help:
        print(coop.SETUP_HELP)
    elif not args.names:
        print("benchmarks: " + ", ".join(registry.BENCHMARK_DATASETS))
        print("out-of-distribution: " + ", ".join(registry.OOD_DATASETS))
        print("offline: " + ", ".join(registry.OFFLINE_DATASETS) + ", folder:PATH")
    options = {"source": args.source} if args.source != "coop" else {}
    for name in args.names:
        print(registry.describe(registry.get_dataset(name, args.data_root, **options)))
    return 0


# --- extract -------------------------------------------------------------------------


@_command(
    "extract",
    "extract a feature file (train pool with views, val, test, text classifier)",
    "Encode a dataset with CLIP and write the feature file FILE.npz: 'text' [C, D]\n"
    "(template-ensemble classifier), 'train' [V, N, D] (view 0 un-augmented, views 1..V-1\n"
    "RandomResizedCrop + flip), 'val' and 'test' [M, D] (whole splits), labels, class names,\n"
    "'logit_scale' and 'meta' (provenance). The train pool is the union of the few-shot sets\n"
    "of --seeds at --shots (recorded as 'fewshot_seeds'/'fewshot_index', so `evaluate\n"
    "--shots k --seed s` uses exactly those images), or the whole train split without\n"
    "--shots. With --taps the intermediate outputs go to FILE.taps.npz.\n\n"
    "Features are cached under --cache-dir (default $JAXCLIP_FS_CACHE or\n"
    "~/.cache/jaxclip-fs) in chunks keyed on everything that shapes them: a rerun reuses\n"
    "them, an interrupted run resumes, a corrupt chunk is recomputed.\n\n"
    "examples:\n  jaxclip-fs extract --dataset digits --backbone tiny-vit --weights random \\\n"
    "      --shots 4 --seeds 1,2,3 --out digits.npz\n"
    "  jaxclip-fs extract --dataset oxford_pets --data-root /data --backbone RN50 \\\n"
    "      --weights openai --views 10 --shots 16 --seeds 1,2,3 --out pets_rn50.npz",
)
def _add_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registry name or folder:PATH")
    p.add_argument("--data-root", metavar="DIR",
                   help="CoOp-layout data root (default $JAXCLIP_FS_DATA)")
    p.add_argument("--backbone", required=True, help="variant name, e.g. RN50, ViT-B/16")
    p.add_argument("--weights", required=True,
                   help="local checkpoint path, hub id, 'openai', or 'random' (as for embed)")
    p.add_argument("--views", type=int, default=10, metavar="V",
                   help="views per train image, view 0 un-augmented (default 10, Tip-Adapter)")
    p.add_argument("--aug-scale", default="0.5,1", metavar="LOW,HIGH",
                   help="RandomResizedCrop area range (default 0.5,1; LDC uses 0.8,1)")
    p.add_argument("--aug-seed", type=int, default=0, help="augmentation seed (default 0)")
    p.add_argument("--shots", type=int, metavar="K",
                   help="train pool = the K-shot sets of --seeds (default: whole train split)")
    p.add_argument("--seeds", metavar="S1,S2,...",
                   help="few-shot seeds, comma-separated (default with --shots: 1,2,3)")
    p.add_argument("--taps", metavar="T1,T2,...",
                   help="also save intermediate outputs (layer1..layer4 / block<i>) to "
                        "FILE.taps.npz")
    p.add_argument("--batch-size", type=int, default=64, metavar="B",
                   help="image views per compiled batch (default 64)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype (features are stored as float32)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="feature cache (default $JAXCLIP_FS_CACHE or ~/.cache/jaxclip-fs)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images (counted, listed in meta) instead of failing")
    p.add_argument("--workers", type=int, metavar="N",
                   help="image loading threads (default: CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, metavar="FILE.npz")


def _run_extract(args: argparse.Namespace) -> int:
    from jaxclip_fs.features.command import extract_command

    return extract_command(args)


# --- entry point ---------------------------------------------------------------------


_SUBCOMMANDS = [
    (_add_embed, _run_embed),
    (_add_convert, _run_convert),
    (_add_datasets, _run_datasets),
    (_add_extract, _run_extract),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxclip-fs",
        description="Few-shot adaptation of CLIP in JAX/Flax (LDC, APE, TA++/TX++, baselines).",
    )
    parser.add_argument("--version", action="version", version=f"jaxclip-fs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add, run in _SUBCOMMANDS:
        add(subparsers)
        _RUNNERS[add.command_name] = run
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = _RUNNERS[args.command](args)
    except JaxclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume.",
              file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
