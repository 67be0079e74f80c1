"""``jaxclip-fs run``: flags (or ``--config FILE``) -> experiment config -> engine -> report."""

from __future__ import annotations

import argparse
import dataclasses
import os

from jaxclip_fs.commands import common
from jaxclip_fs.errors import ConfigError

NAME = "run"
HELP = "sweep methods x datasets x shots x seeds: extract, compiled programs, records, report"
DESCRIPTION = """\
Extract features (cached) and run every method on every (dataset, shots, seed) cell.
Each method variant runs all its seeds and shots -- and with --fuse-datasets several
datasets, padded and masked -- as ONE compiled program, its cell axis spread over all
devices (jax.sharding Mesh + NamedSharding; same records as one device). Hyperparameters and
epochs are chosen on validation (--protocol: fair, the whole val split, by default; fewshot,
CoOp's min(K, 4) images per class; paper, each method's official rules; validation_free,
nothing chosen: fixed default hyperparameters, the final epoch), test scored once.

DIR gets config.json (the experiment config; `run --config DIR/config.json` repeats it),
manifest.json, features/<dataset>.npz, records/<protocol>/<method>/<dataset>/shots<K>_seed<S>.json
(one result record per cell, written as each program finishes), params/ (orbax checkpoints
of trained params), confusion/ (class-confusion analyses of methods that report them) and
report/ (tables and plots, see `jaxclip-fs report`). A rerun skips finished cells, so an
interrupted sweep resumes by repeating the command (Ctrl-C / SIGTERM: one line, status
130 / 143); more methods / datasets / shots / seeds extend DIR, other settings are refused,
and so are changed inputs (a feature file, the weights, the tokenizer's vocabulary or a
dataset's content differing from what DIR's records were computed with: one line naming it
and both digests). Settings are fixed once DIR holds a record: until then (a first run that
failed early) a corrected command is accepted. One run writes into DIR at a time (DIR/.lock;
--wait-lock waits).

Programs are laid out by --plan (default auto: one program where the devices run cells side
by side; on CPUs one program per shot count when the padding work it saves outweighs its
extra compilations; chunks of fewer cells when a program would not fit a device's memory,
checked with XLA's memory analysis before anything is extracted; the choice and its reason
are logged and kept in DIR/manifest.json). --dry-run prints what the sweep will cost --
per program its cells, shapes, XLA's FLOPs and bytes, peak memory per device, the plan, and
time estimates for this machine and for published accelerator peaks -- without extracting,
training or writing anything (dataset sizes from the split files, or the benchmark table).

--option sweeps a method's structural options: `--option ldc.fusion=fixed,concat
ldc.ablation=full,maf_only` runs the four LDC variants, each recorded as its own method
(`ldc[ablation=maf_only,fusion=concat]`). --ood scores every fit on shifted test sets.

--distributed starts multi-host JAX (TPU pods, multi-GPU clusters): run the same command
on every host; coordinator and process ids come from the environment on Cloud TPU and
SLURM, or from --coordinator/--num-processes/--process-id. Process 0 writes. A process that
dies or fails stops the others within --peer-timeout seconds (status 4, one line saying
which); start every process again with the same command to resume.

examples:
  jaxclip-fs run --dataset digits --method all --shots 1,2,4,8,16 --seeds 1,2,3 \\
      --backbone tiny-vit --weights random --out runs/digits
  jaxclip-fs run --dataset caltech101,dtd,eurosat --data-root /data --backbone RN50 \\
      --weights openai --method tip_adapter,ape,gda --fuse-datasets --out runs/rn50
  jaxclip-fs run --features pets.npz dtd.npz --method tip_adapter_f --out runs/byo
  jaxclip-fs run --dataset digits --backbone tiny-rn --weights random --method ldc \\
      --option ldc.fusion=fixed,concat --shots 4 --seeds 1 --out runs/ldc_fusions
  jaxclip-fs run --config runs/digits/config.json --out runs/digits_again
  jaxclip-fs run --dataset imagenet,dtd --backbone RN50 --weights openai --method all \\
      --shots 16 --out runs/rn50 --dry-run"""

#: Flags that may accompany --config (where things go and how they run; no number changes).
CONFIG_OVERRIDES = ("--config", "--out", "--devices", "--quiet", "--no-report", "--wait-lock",
                    "--distributed",
                    "--coordinator", "--num-processes", "--process-id", "--cache-dir",
                    "--no-cache", "--workers", "--data-root", "--stall-timeout",
                    "--program-timeout", "--peer-timeout", "--plan", "--program-per-shots",
                    "--dry-run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("the grid")
    what.add_argument("--config", metavar="FILE.json",
                      help="an experiment config (e.g. DIR/config.json of an earlier run); "
                           "flags that change numbers may not be given with it")
    what.add_argument("--dataset", metavar="D1,D2,...", help="registry names or folder:PATH")
    what.add_argument("--features", nargs="+", metavar="FILE.npz",
                      help="use these feature files instead of extracting "
                           "(dataset from their meta)")
    common.add_method_arguments(
        what, "method names, or 'all' (default): every method the inputs allow (image methods "
              "need --dataset; paired-feature methods also --imo-adapters)")
    what.add_argument("--shots", default="1,2,4,8,16", metavar="K1,K2,...",
                      help="default 1,2,4,8,16")
    what.add_argument("--seeds", default="1,2,3", metavar="S1,S2,...", help="default 1,2,3")
    what.add_argument("--ood", metavar="D1,D2,...",
                      help="out-of-distribution test sets scored with the fits on their parent "
                           "(imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r; needs --dataset "
                           "imagenet)")
    what.add_argument("--out", required=True, metavar="DIR", help="run directory (resumable)")
    model = p.add_argument_group("features and images (with --dataset)")
    common.add_model_arguments(model)
    common.add_data_arguments(model)
    common.add_extraction_arguments(model)
    common.add_cache_arguments(model)
    common.add_images_arguments(model)
    common.add_protocol_arguments(p.add_argument_group("selection"))
    run = p.add_argument_group("execution")
    run.add_argument("--fuse-datasets", action="store_true",
                     help="run compatible datasets in one program per method (padded classes and "
                          "samples, masked; same records as separate programs)")
    run.add_argument("--plan", metavar="auto|one|per-shots|chunk:N",
                     help="how each method x dataset program is laid out (same records): auto "
                          "(default: decided per program from the platform and XLA's cost and "
                          "memory analyses; logged and kept in the manifest), one, per-shots "
                          "(one program per shot count: no padding work on CPUs, more "
                          "compilations) or chunk:N (programs of at most N cells: less memory)")
    run.add_argument("--program-per-shots", action="store_true",
                     help="the same as --plan per-shots (kept for older command lines)")
    run.add_argument("--dry-run", action="store_true",
                     help="print what the sweep will cost -- per program its cells, shapes, "
                          "FLOPs, bytes, peak memory per device, plan and time estimates for "
                          "this machine and published accelerators -- without extracting, "
                          "training or writing anything")
    run.add_argument("--devices", type=int, metavar="N",
                     help="use the first N devices (default: all)")
    run.add_argument("--save-params", choices=["trained", "all", "none"], default="trained",
                     help="orbax checkpoints of fitted params: methods that train (default), "
                          "all, none")
    run.add_argument("--distributed", action="store_true",
                     help="multi-host: call jax.distributed.initialize() first")
    distributed = "with --distributed (default: auto)"
    run.add_argument("--coordinator", metavar="HOST:PORT", help=distributed)
    run.add_argument("--num-processes", type=int, metavar="N", help=distributed)
    run.add_argument("--process-id", type=int, metavar="I", help=distributed)
    run.add_argument("--peer-timeout", type=float, metavar="SECONDS",
                     help="with --distributed: a process silent this long is lost, and every "
                          "other process stops with status 4 (default 60)")
    run.add_argument("--stall-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="stop with an error (status 3) when a program leaves the CPU idle this "
                          "long on a CPU backend: XLA is deadlocked (default 300; 0: off)")
    run.add_argument("--program-timeout", type=float, default=0.0, metavar="SECONDS",
                     help="stop with an error (status 3) when one program runs longer "
                          "(default 0: no limit)")
    run.add_argument("--wait-lock", action="store_true",
                     help="another run is writing into DIR: wait for it to finish (default: "
                          "stop with a line naming it)")
    run.add_argument("--no-report", action="store_true", help="do not write DIR/report at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bars (messages stay)")


def start_distributed(args) -> None:
    """``--distributed``: multi-host JAX before anything touches the devices, and the watch
    over the other processes (:mod:`~jaxclip_fs.engine.hosts`)."""
    if args.distributed:
        from jaxclip_fs.engine import hosts

        hosts.start(args.coordinator, args.num_processes, args.process_id,
                    peer_timeout=(hosts.DEFAULT_PEER_TIMEOUT if args.peer_timeout is None
                                  else args.peer_timeout))
    elif (args.coordinator or args.num_processes is not None or args.process_id is not None
          or args.peer_timeout is not None):
        raise ConfigError("--coordinator / --num-processes / --process-id / --peer-timeout "
                          "need --distributed")


def given_flags(argv) -> set[str]:
    """The ``--flags`` present on a command line (``--flag=value`` included)."""
    return {a.split("=", 1)[0] for a in argv or () if a.startswith("--")}


def config_from_args(args: argparse.Namespace):
    """The experiment config of ``run``'s flags, or of ``--config`` (with its allowed overrides)."""
    from jaxclip_fs.experiment import config as config_lib

    if args.config:
        given = given_flags(getattr(args, "argv", ()))
        conflicting = sorted(given - set(CONFIG_OVERRIDES))
        if conflicting:
            raise ConfigError(f"{conflicting[0]} cannot be combined with --config: edit "
                              f"{args.config} instead (or drop --config)")
        loaded = config_lib.load(args.config)
        flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
        execution = dataclasses.replace(
            loaded.execution, **{k: getattr(args, k) for k in ("devices", "workers",
                                                                "stall_timeout", "program_timeout")
                                 if flag(k) in given},
            **({"cache_dir": common.absolute_path(args.cache_dir)} if "--cache-dir" in given
               else {}),
            **({"use_cache": False} if "--no-cache" in given else {}),
            **({"plan": common.plan_of(args)} if given & {"--plan", "--program-per-shots"}
               else {}))
        data = (dataclasses.replace(loaded.data, data_root=common.absolute_path(args.data_root))
                if "--data-root" in given else loaded.data)
        return config_lib.check(loaded.replace(execution=execution, data=data))
    if bool(args.dataset) == bool(args.features):
        raise ConfigError("give either --dataset (extract here) or --features FILE.npz ...")
    if args.dataset and not (args.backbone and args.weights):
        raise ConfigError("--dataset needs --backbone and --weights (or use --features)")
    kinds = common.input_kinds(bool(args.features), bool(args.imo_adapters))
    return common.experiment_config(
        args, datasets=common.parse_names(args.dataset, "--dataset") if args.dataset else (),
        features=args.features or (), methods=common.selected_methods(args.method, kinds),
        shots=common.parse_int_list(args.shots, "--shots", 1),
        seeds=common.parse_int_list(args.seeds, "--seeds", 0),
        ood=common.parse_names(args.ood, "--ood") if args.ood else ())


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs.io.console import stderr_log

    if args.dry_run:  # plans and prints; nothing extracted, trained or written
        from jaxclip_fs.engine.dryrun import dry_run

        dry_run(config_from_args(args), args.out, log=None if args.quiet else stderr_log)
        return 0
    start_distributed(args)
    from jaxclip_fs.engine import hosts

    # multi-process: a failure here is published to the other processes, which stop too
    return hosts.run(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from jaxclip_fs.engine import sharding
    from jaxclip_fs.engine.run import RunDir, run_experiment
    from jaxclip_fs.io.console import stderr_log
    from jaxclip_fs.io.outputs import check_output_dir

    writer = sharding.is_writer()
    if writer:
        check_output_dir(args.out, "--out")  # before any work
    config = config_from_args(args)
    sink = RunDir(args.out, writer=writer, argv=args.argv, wait_lock=args.wait_lock)
    run_experiment(config, sink, progress=not args.quiet, log=stderr_log)
    if writer and not args.no_report:
        print_report(args.out)
    return 0


def print_report(out_dir: str) -> None:
    """Writes ``DIR/report`` and prints its main tables."""
    from jaxclip_fs.report.write import write_report

    files = write_report(out_dir)
    print(files.summary)
    print(f"report: {files.markdown} ({len(files.plots)} plots in {files.out_dir}); "
          f"config: {os.path.join(out_dir, 'config.json')}")
