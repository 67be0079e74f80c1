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
    for name in args.names:
        print(registry.describe(registry.get_dataset(name, args.data_root, source=args.source)))
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
                   help="CoOp-layout data root (default $JAXCLIP_FS_DATA), or the TFDS data dir")
    p.add_argument("--source", choices=["coop", "tfds"], default="coop",
                   help="where the benchmark sets come from (default: coop)")
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


# --- evaluate ------------------------------------------------------------------------


@_command(
    "evaluate",
    "run a method on a feature file, or ldc / ta_pp / tx_pp on a dataset's images",
    "Run one feature-level method on the (--shots, --seed) few-shot task of a feature file:\n"
    "fit it (train if it trains; best epoch on validation), search its hyperparameters on\n"
    "validation over its per-dataset grid, then score the test set once. With --hp given\n"
    "for every searched hyperparameter, no search runs. Validation follows CoOp by default\n"
    "(min(K, 4) images per class of the val split, same seed).\n\n"
    "Writes DIR/test_logits.npy [T, C] and DIR/result.json (accuracy in %, hyperparameters\n"
    "used and which were searched, val accuracy, seconds, backbone / weights / dataset /\n"
    "split policy from the file's meta, shots, seed, method, code version).\n\n"
    "methods: zero_shot, tip_adapter, tip_adapter_f, tip_x, ape, ape_t, gda, clip_adapter.\n\n"
    "ldc, ta_pp and tx_pp need images, not a feature file: give --dataset, --backbone and\n"
    "--weights instead of FEATURES.npz (ta_pp/tx_pp also --imo-adapters, from `jaxclip-fs\n"
    "train-imo`). LDC trains through the frozen CLIP (trunk in the compiled step, or a tap\n"
    "cache when it fits --tap-cache-budget), searches beta on validation and also writes\n"
    "DIR/confusion.{json,png} (which class pairs ICD de-confuses) and DIR/params.\n\n"
    "examples:\n  jaxclip-fs evaluate pets.npz --method tip_adapter --shots 16 --seed 1 --out runs/ta\n"
    "  jaxclip-fs evaluate pets.npz --method ape --hp alpha=2 beta=1.5 gamma=0.3 --out runs/ape\n"
    "  jaxclip-fs evaluate --method ldc --dataset digits --backbone tiny-rn --weights random \\\n"
    "      --shots 4 --hp epochs=10 --out runs/ldc",
)
def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES.npz", nargs="?",
                   help="feature file (see `jaxclip-fs validate`); not for ldc, ta_pp, tx_pp")
    p.add_argument("--method", required=True, help="method name")
    p.add_argument("--shots", type=int, default=16, metavar="K", help="shots per class (default 16)")
    p.add_argument("--seed", type=int, default=1, help="few-shot seed (default 1)")
    p.add_argument("--hp", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="fix a hyperparameter (repeatable; each takes one or more NAME=VALUE)")
    p.add_argument("--out", metavar="DIR", help="write test_logits.npy and result.json here")
    p.add_argument("--dataset", metavar="NAME",
                   help="registry name choosing per-dataset defaults and grids "
                        "(default: the file's meta; unknown datasets get the generic grid)")
    p.add_argument("--val-policy", choices=["coop", "full"], default="coop",
                   help="validation images: coop = min(K, 4) per class (default), full = whole split")
    p.add_argument("--select-on-test", action="store_true",
                   help="choose epochs and hyperparameters on the TEST set, as the official "
                        "Tip-Adapter-F code does (optimistic; recorded in result.json)")
    images = p.add_argument_group("image methods (ldc, ta_pp, tx_pp): --dataset is the data")
    images.add_argument("--backbone", help="variant name, e.g. RN50, ViT-B/16, tiny-rn")
    images.add_argument("--weights", help="local checkpoint path, hub id, 'openai', or 'random'")
    images.add_argument("--data-root", metavar="DIR",
                        help="CoOp-layout data root (default $JAXCLIP_FS_DATA), or the TFDS data dir")
    images.add_argument("--source", choices=["coop", "tfds"], default="coop",
                        help="where the benchmark sets come from (default: coop)")
    images.add_argument("--ldc-fusion", choices=["fixed", "average", "learned", "concat"],
                        default="fixed", help="LDC level fusion (default fixed .1/.2/.3/.4)")
    images.add_argument("--ldc-ablation", choices=["full", "maf_only", "icd_only"], default="full",
                        help="LDC ablation (default full)")
    images.add_argument("--ldc-vit-taps", choices=["proportional", "official"],
                        default="proportional",
                        help="ViT blocks LDC taps: depth 6/8/10/12 of 12 (default) or the "
                             "official last-block-and-every-second-before")
    images.add_argument("--train-path", choices=["auto", "trunk", "cache"], default="auto",
                        help="LDC: run the frozen trunk in the step, or cache the support taps "
                             "(auto: cache when it fits --tap-cache-budget)")
    images.add_argument("--tap-cache-budget", type=float, metavar="GiB",
                        help="memory the LDC tap cache may take (default 4)")
    images.add_argument("--tap-cache-views", type=int, default=10, metavar="V",
                        help="LDC tap cache: views per support image, view 0 clean (default 10)")
    images.add_argument("--imo-adapters", metavar="DIR",
                        help="ta_pp/tx_pp: adapter checkpoint from `jaxclip-fs train-imo`")
    images.add_argument("--views", type=int, default=10, metavar="V",
                        help="ta_pp/tx_pp: cache-model views per train image (default 10)")
    images.add_argument("--aug-seed", type=int, default=0, help="augmentation seed (default 0)")
    images.add_argument("--batch-size", type=int, default=64, metavar="B",
                        help="images per compiled encoding batch (default 64)")
    images.add_argument("--cache-dir", metavar="DIR",
                        help="feature cache (default $JAXCLIP_FS_CACHE or ~/.cache/jaxclip-fs)")
    images.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    images.add_argument("--workers", type=int, metavar="N", help="image loading threads")
    images.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def _run_evaluate(args: argparse.Namespace) -> int:
    from jaxclip_fs.sweep.evaluate import evaluate_command

    return evaluate_command(args)


# --- train-imo -----------------------------------------------------------------------


@_command(
    "train-imo",
    "train IMO adapters (TA++/TX++) inside a ViT's blocks; save an orbax checkpoint",
    "Add a bottleneck adapter to every ViT image block (down W->64, ReLU, dropout 0.1, up\n"
    "64->W, scale 0.03; up zero-initialised) and train the adapters with a linear head and\n"
    "cross-entropy on a labelled dataset's split, the rest of CLIP frozen (IMO, BMVC'24: one\n"
    "epoch, AdamW lr 8e-3, batch 128, on a subset of Open Images -- here any registry\n"
    "dataset). Writes an orbax checkpoint directory --out (adapters, head, metadata: backbone,\n"
    "weights id, dataset, settings, losses) for `evaluate --method ta_pp|tx_pp --imo-adapters`.\n\n"
    "Inputs are CLIP-normalised (the official training left Normalize out while TA++/TX++\n"
    "encode normalised images); --unnormalized reproduces the official [0, 1] pixels.\n\n"
    "example:\n  jaxclip-fs train-imo --dataset imagenet --data-root /data --backbone ViT-B/16 \\\n"
    "      --weights openai --out imo_vitb16",
)
def _add_train_imo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registry name or folder:PATH")
    p.add_argument("--data-root", metavar="DIR",
                   help="CoOp-layout data root (default $JAXCLIP_FS_DATA), or the TFDS data dir")
    p.add_argument("--source", choices=["coop", "tfds"], default="coop",
                   help="where the benchmark sets come from (default: coop)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="split to train on (default train)")
    p.add_argument("--backbone", required=True, help="a ViT variant, e.g. ViT-B/16")
    p.add_argument("--weights", required=True,
                   help="local checkpoint path, hub id, 'openai', or 'random' (as for embed)")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
    p.add_argument("--epochs", type=int, default=1, help="epochs (default 1)")
    p.add_argument("--lr", type=float, default=8e-3, help="AdamW learning rate (default 8e-3)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="default 128")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="init / shuffle / dropout seed (default 0)")
    p.add_argument("--adapter-dim", type=int, default=64, help="bottleneck width (default 64)")
    p.add_argument("--adapter-scale", type=float, default=0.03, help="adapter scale (default 0.03)")
    p.add_argument("--adapter-dropout", type=float, default=0.1, help="dropout (default 0.1)")
    p.add_argument("--unnormalized", action="store_true",
                   help="train on [0, 1] pixels as the official code does")
    p.add_argument("--workers", type=int, metavar="N", help="image loading threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_train_imo(args: argparse.Namespace) -> int:
    from jaxclip_fs.sweep.image_methods import train_imo_command

    return train_imo_command(args)


# --- validate ------------------------------------------------------------------------


@_command(
    "validate",
    "check a feature file and print a summary",
    "Load FILE.npz with the feature-file validator (keys, shapes, dtypes, NaN, label\n"
    "ranges, few-shot index) and print what it holds; a bad file gets a one-line error\n"
    "naming the key.\n\nexample:\n  jaxclip-fs validate pets.npz",
)
def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FILE.npz")


def _run_validate(args: argparse.Namespace) -> int:
    from jaxclip_fs.sweep.evaluate import validate_command

    return validate_command(args)


# --- run -----------------------------------------------------------------------------


@_command(
    "run",
    "sweep methods x datasets x shots x seeds: extract, compiled programs, records, report",
    "Extract features (cached) and run every method on every (dataset, shots, seed) cell.\n"
    "Each method runs all its seeds and shots -- and with --fuse-datasets several datasets,\n"
    "padded and masked -- as ONE compiled program, its cell axis spread over all devices\n"
    "(jax.sharding Mesh + NamedSharding; same records as one device). Hyperparameters and\n"
    "epochs are chosen on validation (CoOp: min(K, 4) images per class), test scored once.\n\n"
    "DIR gets manifest.json, features/<dataset>.npz, records/<method>/<dataset>/\n"
    "shots<K>_seed<S>.json (one result record per cell, written as each program finishes),\n"
    "params/ (orbax checkpoints of trained params) and report/ (tables and plots, see\n"
    "`jaxclip-fs report`). A rerun skips finished cells, so an interrupted sweep resumes by\n"
    "repeating the command; more methods / datasets / shots / seeds extend DIR, other\n"
    "settings are refused.\n\n"
    "--distributed starts multi-host JAX (TPU pods, multi-GPU clusters): run the same command\n"
    "on every host; coordinator and process ids come from the environment on Cloud TPU and\n"
    "SLURM, or from --coordinator/--num-processes/--process-id. Process 0 writes.\n\n"
    "examples:\n  jaxclip-fs run --dataset digits --method all --shots 1,2,4,8,16 --seeds 1,2,3 \\\n"
    "      --backbone tiny-vit --weights random --out runs/digits\n"
    "  jaxclip-fs run --dataset caltech101,dtd,eurosat --data-root /data --backbone RN50 \\\n"
    "      --weights openai --method tip_adapter,ape,gda --fuse-datasets --out runs/rn50\n"
    "  jaxclip-fs run --features pets.npz dtd.npz --method tip_adapter_f --out runs/byo",
)
def _add_run(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("the grid")
    what.add_argument("--dataset", metavar="D1,D2,...", help="registry names or folder:PATH")
    what.add_argument("--features", nargs="+", metavar="FILE.npz",
                      help="use these feature files instead of extracting (dataset from their meta)")
    what.add_argument("--method", default="all", metavar="M1,M2,...",
                      help="method names, or 'all' (default): every method the inputs allow "
                           "(ldc needs --dataset; ta_pp, tx_pp also --imo-adapters)")
    what.add_argument("--shots", default="1,2,4,8,16", metavar="K1,K2,...", help="default 1,2,4,8,16")
    what.add_argument("--seeds", default="1,2,3", metavar="S1,S2,...", help="default 1,2,3")
    what.add_argument("--ood", metavar="D1,D2,...",
                      help="out-of-distribution test sets scored with the fits on their parent "
                           "(imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r; needs --dataset "
                           "imagenet)")
    what.add_argument("--out", required=True, metavar="DIR", help="sweep directory (resumable)")
    model = p.add_argument_group("features (with --dataset)")
    model.add_argument("--backbone", help="variant name, e.g. RN50, ViT-B/16, tiny-vit")
    model.add_argument("--weights", help="local checkpoint path, hub id, 'openai', or 'random'")
    model.add_argument("--data-root", metavar="DIR",
                       help="CoOp-layout data root (default $JAXCLIP_FS_DATA), or the TFDS data dir")
    model.add_argument("--source", choices=["coop", "tfds"], default="coop",
                       help="where the benchmark sets come from (default: coop)")
    model.add_argument("--views", type=int, default=10, metavar="V",
                       help="views per train image, view 0 un-augmented (default 10)")
    model.add_argument("--aug-scale", default="0.5,1", metavar="LOW,HIGH",
                       help="RandomResizedCrop area range (default 0.5,1)")
    model.add_argument("--aug-seed", type=int, default=0, help="augmentation seed (default 0)")
    model.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                       help="CLIP compute dtype (features are stored as float32)")
    model.add_argument("--batch-size", type=int, default=64, metavar="B",
                       help="image views per compiled encoding batch (default 64)")
    model.add_argument("--cache-dir", metavar="DIR",
                       help="feature cache (default $JAXCLIP_FS_CACHE or ~/.cache/jaxclip-fs)")
    model.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    model.add_argument("--workers", type=int, metavar="N", help="image loading threads")
    model.add_argument("--imo-adapters", metavar="DIR",
                       help="IMO adapters from `jaxclip-fs train-imo` (needed for ta_pp, tx_pp)")
    science = p.add_argument_group("selection")
    science.add_argument("--val-policy", choices=["coop", "full"], default="coop",
                         help="validation images: coop = min(K, 4) per class (default), full = whole split")
    science.add_argument("--select-on-test", action="store_true",
                         help="choose epochs and hyperparameters on the TEST set, as the official "
                              "Tip-Adapter-F code does (optimistic; recorded)")
    science.add_argument("--hp", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                         help="fix a hyperparameter for every method that has it (repeatable)")
    run = p.add_argument_group("execution")
    run.add_argument("--fuse-datasets", action="store_true",
                     help="run compatible datasets in one program per method (padded classes and "
                          "samples, masked; same records as separate programs)")
    run.add_argument("--program-per-shots", action="store_true",
                     help="one program per shot count too: no work padding small-shot cells to "
                          "the largest (faster on CPUs; same records)")
    run.add_argument("--devices", type=int, metavar="N", help="use the first N devices (default: all)")
    run.add_argument("--save-params", choices=["trained", "all", "none"], default="trained",
                     help="orbax checkpoints of fitted params: methods that train (default), all, none")
    run.add_argument("--distributed", action="store_true",
                     help="multi-host: call jax.distributed.initialize() first")
    run.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed (default: auto)")
    run.add_argument("--num-processes", type=int, metavar="N", help="with --distributed (default: auto)")
    run.add_argument("--process-id", type=int, metavar="I", help="with --distributed (default: auto)")
    run.add_argument("--no-report", action="store_true", help="do not write DIR/report at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_run(args: argparse.Namespace) -> int:
    from jaxclip_fs.sweep.command import run_command

    return run_command(args)


# --- demo ----------------------------------------------------------------------------


@_command(
    "demo",
    "the whole pipeline offline on scikit-learn's digits (every method, shots 1-16, 3 seeds)",
    "Run every registered method x shots 1,2,4,8,16 x seeds 1,2,3 on scikit-learn's digits,\n"
    "offline, through the same engine as `jaxclip-fs run`: features extracted once (cached),\n"
    "one compiled program per method, records, then the report. Prints the table and the\n"
    "path of the accuracy-vs-shots plot. A rerun resumes / reuses everything.\n\n"
    "Weights: --weights if given; else pretrained ViT-B/32 if already on this machine\n"
    "(~/.cache/clip/ViT-B-32.pt or the Hugging Face cache of openai/clip-vit-base-patch32;\n"
    "nothing is downloaded); else the tiny test ViT with RANDOM weights, under a banner:\n"
    "those accuracies only show that the pipeline runs.\n\n"
    "examples:\n  jaxclip-fs demo\n  jaxclip-fs demo --weights ~/clip-vit-base-patch32 --out demo_vitb32\n"
    "  jaxclip-fs demo --shots 1,4 --seeds 1 --method tip_adapter,ape",
)
def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="checkpoint path, hub id (cached), 'openai' or 'random' "
                                     "(default: local ViT-B/32 if found, else random)")
    p.add_argument("--backbone", help="variant (default: ViT-B/32 with real weights, tiny-vit random)")
    p.add_argument("--out", default="jaxclip-fs-demo", metavar="DIR",
                   help="sweep directory (default ./jaxclip-fs-demo)")
    p.add_argument("--method", default="all", metavar="M1,M2,...", help="default: all")
    p.add_argument("--shots", default="1,2,4,8,16", metavar="K1,K2,...", help="default 1,2,4,8,16")
    p.add_argument("--seeds", default="1,2,3", metavar="S1,S2,...", help="default 1,2,3")
    p.add_argument("--views", type=int, default=4, metavar="V",
                   help="views per train image (default 4: view 0 + 3 augmented)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="feature cache (default $JAXCLIP_FS_CACHE or ~/.cache/jaxclip-fs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_demo(args: argparse.Namespace) -> int:
    from jaxclip_fs.sweep.demo import demo_command

    return demo_command(args)


# --- report --------------------------------------------------------------------------


@_command(
    "report",
    "tables (Markdown, CSV) and accuracy-vs-shots plots from result records",
    "Read the result records under DIR (a `jaxclip-fs run` directory, or any directory of\n"
    "`evaluate` result.json files) and write to OUT (default DIR/report):\n\n"
    "  report.md               per shot count a methods x datasets table of mean ± std over\n"
    "                          seeds with an average column, then accuracy-vs-shots tables\n"
    "  results.csv             one row per method, dataset, shots (and average)\n"
    "  table_<K>shot.csv       the per-shot tables, wide\n"
    "  accuracy_vs_shots_*.png one plot per dataset and one for the average\n\n"
    "Published numbers (the LDC paper's 16-shot RN50 table) appear in [brackets] where backbone,\n"
    "dataset and shots match and the weights are real. Results from random weights are labelled\n"
    "in every output. Reads records only: no model, no jax.\n\n"
    "example:\n  jaxclip-fs report runs/sweep1",
)
def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="directory (searched recursively) or file of records")
    p.add_argument("--out", metavar="OUT", help="report directory (default DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="tables only")


def _run_report(args: argparse.Namespace) -> int:
    from jaxclip_fs.report.write import report_command

    return report_command(args)


# --- entry point ---------------------------------------------------------------------


_SUBCOMMANDS = [
    (_add_embed, _run_embed),
    (_add_convert, _run_convert),
    (_add_datasets, _run_datasets),
    (_add_extract, _run_extract),
    (_add_evaluate, _run_evaluate),
    (_add_train_imo, _run_train_imo),
    (_add_validate, _run_validate),
    (_add_run, _run_run),
    (_add_report, _run_report),
    (_add_demo, _run_demo),
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
