"""``jaxclip-fs evaluate``: one method on one few-shot task -- the engine on a one-cell grid."""

from __future__ import annotations

import argparse
import os

from jaxclip_fs.commands import common, flags
from jaxclip_fs.errors import ConfigError

NAME = "evaluate"
HELP = "run one method on one (shots, seed) task of a feature file or a dataset"
DESCRIPTION = """\
Run one method on the (--shots, --seed) few-shot task of a feature file (feature methods) or
of a dataset's images (every method; features are extracted and cached): fit it (train if it
trains), search its hyperparameters on validation over its per-dataset grid, then score the
test set once. With --hp given for every searched hyperparameter, no search runs. The
protocol (--protocol) decides where: fair (default) selects on the whole val split, fewshot
on CoOp's min(K, 4) val images per class, paper as the method's official code did (on test
where it did; recorded as optimistic), validation_free selects nothing (fixed default
hyperparameters, the final epoch; no validation image is read). This is `jaxclip-fs run`
on a one-cell grid: the numbers equal that cell's record.

Writes DIR/test_logits.npy [T, C] and DIR/result.json (accuracy in %, hyperparameters used
and which were searched, val accuracy, seconds, backbone / weights / dataset / split policy,
tokenizer, shots, seed, method, code version); trained methods also DIR/params (orbax),
methods that report a class-confusion analysis (LDC: zero-shot vs its de-confused logits)
DIR/confusion.*. A DIR that already holds a result.json is refused before any work unless
--overwrite is given.

--shots defaults to the largest shot count a feature file holds for --seed (at most 16;
16 for a dataset). Image methods (LDC) and paired-feature methods (TA++, TX++, also --imo-adapters
from `jaxclip-fs train-imo`) need --dataset, --backbone and --weights.

examples:
  jaxclip-fs evaluate pets.npz --method tip_adapter --shots 16 --seed 1 --out runs/ta
  jaxclip-fs evaluate pets.npz --method ape --hp alpha=2 beta=1.5 gamma=0.3 --out runs/ape
  jaxclip-fs evaluate --method ldc --dataset digits --backbone tiny-rn --weights random \\
      --shots 4 --hp epochs=10 --option ldc.fusion=concat --out runs/ldc"""

DEFAULT_SHOTS = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES.npz", nargs="?",
                   help="feature file (see `jaxclip-fs validate`); or give --dataset")
    p.add_argument("--method", required=True, help="method name (see `jaxclip-fs methods`)")
    p.add_argument("--shots", type=int, metavar="K",
                   help="shots per class (default: the largest the feature file holds, else 16)")
    p.add_argument("--seed", type=int, default=1, help="few-shot seed (default 1)")
    p.add_argument("--hp", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="fix a hyperparameter (repeatable; each takes one or more NAME=VALUE)")
    p.add_argument("--option", nargs="+", action="extend", default=[], metavar="METHOD.NAME=V",
                   help="a structural option of the method, e.g. ldc.fusion=concat")
    p.add_argument("--out", metavar="DIR", help="write test_logits.npy and result.json here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier result in --out (default: refuse, before any work)")
    p.add_argument("--dataset", metavar="NAME",
                   help="with a feature file: the registry name choosing per-dataset defaults "
                        "and grids (default: the file's meta); without: the dataset to "
                        "extract (registry name or folder:PATH)")
    common.add_protocol_arguments(p)
    images = p.add_argument_group("from images (with --dataset and no feature file)")
    common.add_model_arguments(images)
    common.add_data_arguments(images)
    common.add_extraction_arguments(images)
    common.add_cache_arguments(images)
    common.add_images_arguments(images)
    common.add_quiet_argument(p)


def split_positional(args: argparse.Namespace) -> None:
    """``--hp alpha=2 FILE.npz``: ``--hp`` takes one or more values, so a feature file given
    after it lands among them; move it back to the positional argument.

    Raises:
      ConfigError: more than one non-assignment among ``--hp`` values, or one with a
        feature file already given.
    """
    strays = [item for item in args.hp if "=" not in item]
    if not strays:
        return
    if len(strays) > 1 or args.features:
        raise ConfigError(f"--hp expects NAME=VALUE, got '{strays[-1]}'")
    args.features = strays[0]
    args.hp = [item for item in args.hp if "=" in item]


def default_shots(fs, seed: int) -> int:
    """The largest shot count a feature set holds for ``seed``: its few-shot index's, or
    (a whole training pool) the smallest class's size, at most 16."""
    import numpy as np

    if fs.fewshot and seed in fs.fewshot:
        return int(fs.fewshot[seed].shape[1])
    per_class = np.bincount(fs.train_labels, minlength=fs.num_classes)
    return int(max(1, min(DEFAULT_SHOTS, per_class.min())))


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs import methods
    from jaxclip_fs.engine.run import CellDir, Sources, run_experiment
    from jaxclip_fs.errors import OutputError
    from jaxclip_fs.io.console import stderr_log
    from jaxclip_fs.io.outputs import check_output_dir
    from jaxclip_fs.pipelines.features import FeatureFiles

    split_positional(args)
    if args.out:
        check_output_dir(args.out, "--out")
        earlier = os.path.join(args.out, "result.json")
        if os.path.exists(earlier) and not args.overwrite:
            raise OutputError(f"--out {args.out} already holds a result ({earlier}): pass "
                              "--overwrite to replace it, or use another --out")
    method = methods.get(args.method)
    log = None if args.quiet else stderr_log
    sources = None
    if args.features:
        if method.inputs != "features":
            raise ConfigError(
                f"method '{args.method}' reads {method.inputs}, not a feature file: drop "
                f"{args.features} and give --dataset D --backbone B --weights W")
        files = FeatureFiles([args.features], [args.dataset])  # (loaded and validated once)
        shots = args.shots or default_shots(next(iter(files.files.values())), args.seed)
        sources = Sources(features=files, datasets=files.datasets,
                          provenance=files.provenance())
        config = common.experiment_config(args, [args.method], {
            "data.features": (flags.absolute_path(args.features),), "data.datasets": (),
            "grid.shots": (shots,),
            "grid.seeds": (args.seed,)})
    else:
        missing = [flag for flag, value in (("--dataset", args.dataset),
                                            ("--backbone", args.backbone),
                                            ("--weights", args.weights)) if not value]
        if missing:
            raise ConfigError(f"method '{args.method}' needs FEATURES.npz, or images: give "
                              f"{', '.join(missing)}")
        config = common.experiment_config(args, [args.method], {
            "data.datasets": flags.canonical_datasets([args.dataset]), "data.features": (),
            "grid.shots": (args.shots or DEFAULT_SHOTS,), "grid.seeds": (args.seed,)})
    if "," in args.protocol:
        raise ConfigError(f"--protocol: evaluate runs one protocol, got '{args.protocol}'")
    sink = CellDir(args.out)
    try:
        run_experiment(config, sink, sources=sources, progress=not args.quiet, log=log)
    except OutputError:
        if sink.records:  # fitted and scored, but the files failed: the result is not lost
            print_result(args, sink)
        raise
    print_result(args, sink)
    if args.out:
        print("wrote " + ", ".join(os.path.relpath(p) for p in sink.written))
    return 0


def print_result(args: argparse.Namespace, sink) -> None:
    """The cell's accuracy, chosen hyperparameters and confusion summary, on stdout."""
    from jaxclip_fs.io import records
    from jaxclip_fs.report.confusion import summary_lines

    result, record = sink.results[0], sink.records[0]
    chosen = records.searched_summary(record)
    heads = record.get("head_accuracies", {})
    zero_shot = f"; zero-shot s {heads['s']:.2f}%" if "s" in heads else ""
    shots_note = "" if args.shots else ", the largest the file holds" if args.features else ""
    print(f"{record['method']} on {record['dataset']} ({record['shots']}-shot{shots_note}, seed "
          f"{record['seed']}): test accuracy {record['accuracy']:.2f}% (val "
          f"{record['val_accuracy']:.2f}%{'; searched ' + chosen if chosen else ''}{zero_shot}) "
          f"in {record['seconds']:.1f} s")
    if result.confusion is not None:
        print("\n".join(summary_lines(result.confusion)))
