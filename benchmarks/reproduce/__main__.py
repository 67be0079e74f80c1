"""Reproduce a paper setting and compare with the published numbers.

  python -m benchmarks.reproduce CONFIG --data-root DIR [--weights W] [--out DIR]
  python -m benchmarks.reproduce CONFIG --compare-only --out DIR
  python -m benchmarks.reproduce CONFIG --dry-run [--out DIR]

CONFIG is a name from ``benchmarks/reproduce/configs`` (``rn50_16shot``,
``rn50_curves``, ``imagenet_ood``; each has a fair twin, ``<name>_fair``: the
same grid under the fair protocol, derived from it, not kept as a file) or a
path to such a JSON file (:mod:`jaxclip_fs.experiment.reproduction`): a name,
a description, an ``experiment`` (a ``jaxclip-fs`` experiment config without
weights and data root, which come from the flags), the shot counts compared
and the tolerance bands. ``jaxclip-fs run --config FILE --weights W
--data-root DIR --out OUT`` runs the same experiment without the comparison.
With ``"add_published_methods": true`` every method
whose catalogue card publishes a figure for the config's setting (its
backbone, a compared shot count, one of its datasets or their average) runs
too, after the listed ones: a shipped method with published numbers joins
the reproductions through its card alone. The runner checks that every dataset is set up (else
it prints, in one line, what it needs and exits with 2), runs the experiment
(resumable: rerun the same command after an interruption; ``jaxclip-fs run
--config OUT/config.json`` repeats it), then prints one line per (method,
dataset, shots): ours (mean ± std over seeds), the published number, the
difference, the tolerance band and pass / FAIL. Exit status 0 when nothing
failed or is missing. Methods this build does not provide are named and
skipped (their published cells then show ``missing``). ``--dry-run`` prints what
the run would cost (``jaxclip-fs run --dry-run``: per program its cells, shapes,
FLOPs, bytes, memory, plan and time estimates) and needs neither the data nor
the weights (the benchmark sets' sizes come from a table when the data is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI: one LAPACK thread in XLA's pool

from benchmarks.reproduce.compare import all_passed, compare, format_checks  # noqa: E402
from jaxclip_fs.experiment import reproduction  # noqa: E402
from jaxclip_fs.experiment.reproduction import published_methods  # noqa: E402,F401

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def known_names() -> list[str]:
    """The reproductions by name: every file of ``configs``, and the fair twin of each one run
    under the paper protocol (``<name>_fair``, derived: :func:`reproduction.fair_twin`)."""
    names = []
    for file in sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".json")):
        with open(os.path.join(CONFIG_DIR, file)) as f:
            protocols = json.load(f)["experiment"].get("protocol", {}).get("names", ["fair"])
        names += [file[:-5]] + ([file[:-5] + reproduction.FAIR_SUFFIX]
                                if protocols == ["paper"] else [])
    return names


def read_config(name_or_path: str) -> dict:
    """The JSON object of a reproduction by path, by name (``configs/<name>.json``), or the
    derived fair twin of a paper one (``<name>_fair``)."""
    path = (name_or_path if name_or_path.endswith(".json")
            else os.path.join(CONFIG_DIR, f"{name_or_path}.json"))
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    if name_or_path in known_names():
        return reproduction.fair_twin(read_config(name_or_path[:-len(reproduction.FAIR_SUFFIX)]))
    raise SystemExit(f"error: no config '{name_or_path}' (known: {', '.join(known_names())})")


def load_config(name_or_path: str) -> dict:
    """A reproduction (:func:`read_config`; its methods completed by
    ``add_published_methods``), with the experiment's grid flattened beside it
    (``backbone``, ``methods``, ``datasets``, ``ood``, ``shots``, ``seeds``, ``protocol``:
    what :func:`~benchmarks.reproduce.compare.compare` reads)."""
    config = read_config(name_or_path)
    experiment = reproduction.experiment(config)
    protocols = experiment.get("protocol", {}).get("names", ["fair"])
    if len(protocols) != 1:
        raise SystemExit(f"error: {name_or_path}: a reproduction runs one protocol, "
                         f"got {protocols}")
    return {**config, "experiment": experiment, "backbone": experiment["model"]["backbone"],
            "methods": reproduction.method_names(experiment),
            "datasets": experiment["data"]["datasets"], "ood": experiment["data"].get("ood", []),
            "shots": experiment["grid"]["shots"], "seeds": experiment["grid"]["seeds"],
            "protocol": protocols[0]}


def missing_data(config: dict, data_root: str | None, source: str) -> list[tuple[str, str]]:
    """``[(dataset, reason), ...]`` for the datasets that cannot be loaded."""
    from jaxclip_fs.data import get_dataset
    from jaxclip_fs.errors import DataError

    problems = []
    for name in list(config["datasets"]) + list(config.get("ood", [])):
        try:
            get_dataset(name, data_root, source=source)
        except DataError as exc:
            problems.append((name, str(exc)))
    return problems


def available_methods(config: dict) -> tuple[list[str], list[str]]:
    """(methods this build provides, those it does not): the catalogue's cards (no jax)."""
    from jaxclip_fs import catalogue

    names = set(catalogue.NAMES)
    return ([m for m in config["methods"] if m in names],
            [m for m in config["methods"] if m not in names])


def experiment_config(config: dict, methods: list[str], args):
    """The experiment of a reproduction, with the weights, data and devices of the flags."""
    from jaxclip_fs.experiment import config as config_lib

    raw = json.loads(json.dumps(config["experiment"]))
    raw["methods"] = [m for m in raw["methods"]
                      if (m if isinstance(m, str) else m["name"]) in methods]
    raw["model"] = {**raw["model"], "weights": args.weights}
    raw["data"] = {**raw["data"], "data_root": args.data_root, "source": args.source}
    raw.setdefault("execution", {})["devices"] = args.devices
    return config_lib.from_dict(raw, where=config["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reproduce",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("config",
                        help="config name (rn50_16shot, rn50_curves, imagenet_ood, each also "
                             "with _fair) or JSON path")
    parser.add_argument("--data-root", help="CoOp-layout data root (default $JAXCLIP_FS_DATA)")
    parser.add_argument("--source", choices=["coop", "tfds"], default="coop")
    parser.add_argument("--weights", default="openai",
                        help="the backbone's weights (default 'openai': OpenAI's release, "
                             "local caches first)")
    parser.add_argument("--out", help="sweep directory (default runs/<config name>)")
    parser.add_argument("--devices", type=int, help="use the first N devices (default: all)")
    parser.add_argument("--compare-only", action="store_true",
                        help="compare the records in --out, run nothing")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what the run would cost; extract, train and write nothing")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    args.out = args.out or os.path.join("runs", config["name"])

    if args.dry_run or not args.compare_only:
        from jaxclip_fs.errors import JaxclipError

        if not args.dry_run:
            missing = missing_data(config, args.data_root, args.source)
            if missing:
                print(f"error: {config['name']} needs {', '.join(n for n, _ in missing)} under "
                      f"--data-root or $JAXCLIP_FS_DATA (first problem: {missing[0][1]}); "
                      "see `jaxclip-fs datasets --setup-help`", file=sys.stderr)
                return 2
        methods, lacking = available_methods(config)
        if lacking:
            print(f"note: this build has no {', '.join(lacking)}; those cells are not run",
                  file=sys.stderr)
        try:
            experiment = experiment_config(config, methods, args)
            if args.dry_run:
                from jaxclip_fs.engine.dryrun import dry_run
                from jaxclip_fs.io.console import stderr_log

                dry_run(experiment, args.out, log=stderr_log)
                return 0
            from jaxclip_fs.engine.run import RunDir, run_experiment

            run_experiment(experiment, RunDir(args.out, argv=sys.argv[1:]))
        except JaxclipError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    from jaxclip_fs.report.collect import load_records

    checks = compare(load_records(os.path.join(args.out, "records")), config)
    print(f"{config['name']}: {config['description']}")
    print(format_checks(checks))
    return 0 if all_passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
