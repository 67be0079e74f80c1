"""``jaxclip-fs run``: flags (or ``--config FILE``) -> experiment config -> engine -> report."""

from __future__ import annotations

import argparse
import dataclasses
import os

from jaxclip_fs.commands import common, flags
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

--config FILE repeats an experiment config (DIR/config.json) or runs a reproduction's
(benchmarks/reproduce/configs). With it, the flags of settings a rerun may change (execution,
--data-root, --tap-cache-budget, --imo-adapters) are accepted; any other only where FILE leaves
its setting unset (a reproduction's --weights).

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.allow_abbrev = False  # --config tells the flags on the command line by their full names
    what = p.add_argument_group("the grid")
    what.add_argument("--config", metavar="FILE.json",
                      help="an experiment config (e.g. DIR/config.json of an earlier run) or a "
                           "reproduction (benchmarks/reproduce/configs); the flags of settings "
                           "a rerun may not change are accepted only where FILE leaves them "
                           "unset (e.g. a reproduction's --weights, --data-root)")
    flags.add(what, ("data.datasets", "data.features"))
    common.add_method_arguments(what, flags.SPECS["methods"].help)
    flags.add(what, ("grid.shots", "grid.seeds", "data.ood"))
    what.add_argument("--out", required=True, metavar="DIR", help="run directory (resumable)")
    model = p.add_argument_group("features and images (with --dataset)")
    common.add_model_arguments(model)
    common.add_data_arguments(model)
    common.add_extraction_arguments(model)
    common.add_cache_arguments(model)
    common.add_images_arguments(model)
    common.add_protocol_arguments(p.add_argument_group("selection"))
    run = p.add_argument_group("execution")
    flags.add(run, ("execution.fuse_datasets", "execution.plan"))
    run.add_argument("--dry-run", action="store_true",
                     help="print what the sweep will cost -- per program its cells, shapes, "
                          "FLOPs, bytes, peak memory per device, plan and time estimates for "
                          "this machine and published accelerators -- without extracting, "
                          "training or writing anything")
    flags.add(run, ("execution.devices", "execution.save_params"))
    run.add_argument("--distributed", action="store_true",
                     help="multi-host: call jax.distributed.initialize() first")
    distributed = "with --distributed (default: auto)"
    run.add_argument("--coordinator", metavar="HOST:PORT", help=distributed)
    run.add_argument("--num-processes", type=int, metavar="N", help=distributed)
    run.add_argument("--process-id", type=int, metavar="I", help=distributed)
    run.add_argument("--peer-timeout", type=float, metavar="SECONDS",
                     help="with --distributed: a process silent this long is lost, and every "
                          "other process stops with status 4 (default 60)")
    flags.add(run, ("execution.stall_timeout", "execution.program_timeout"))
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


def config_from_args(args: argparse.Namespace):
    """The experiment config of ``run``'s flags, or of ``--config`` (:func:`config_of_file`)."""
    if args.config:
        return config_of_file(args.config, args, flags.given_flags(getattr(args, "argv", ())))
    if bool(args.dataset) == bool(args.features):
        raise ConfigError("give either --dataset (extract here) or --features FILE.npz ...")
    if args.dataset and not (args.backbone and args.weights):
        raise ConfigError("--dataset needs --backbone and --weights (or use --features)")
    kinds = common.input_kinds(bool(args.features), bool(args.imo_adapters))
    return common.experiment_config(args, common.selected_methods(args.method, kinds))


def config_of_file(path: str, args: argparse.Namespace, given: set[str]):
    """The config of ``--config FILE`` with the config flags on the command line (``given``):
    a flag of a field a rerun may change (free, input) replaces FILE's value; any other
    flag only sets a field FILE leaves unset (a reproduction's weights and data root).

    Raises:
      ConfigError: a flag of a field FILE sets that a rerun may not change (one line
        naming the flag and the field).
    """
    from jaxclip_fs.experiment import config as config_lib
    from jaxclip_fs.experiment import settings as settings_lib

    raw = config_lib.read(path)
    in_file = settings_lib.given_paths(raw, config_lib.SETTINGS)
    for s in config_lib.SETTINGS:
        if (s.flag in given or (s.path == "methods" and "--option" in given)) \
                and s.path in in_file and s.rerun not in settings_lib.CHANGEABLE:
            flag = s.flag if s.flag in given else "--option"
            raise ConfigError(f"{flag} cannot be combined with --config: {path} sets {s.path} "
                              f"(a {s.rerun} setting); edit it there instead (or drop --config)")
    loaded = config_lib.from_dict(raw, where=os.path.basename(path))
    values = flags.field_values(args, given=given)
    if "--method" in given:
        kinds = common.input_kinds(bool(loaded.data.features), bool(loaded.model.imo_adapters))
        values["methods"] = common.method_configs(common.selected_methods(args.method, kinds),
                                                  args.option, ())[0]
    if "--hp" in given:
        names = [m.name for m in values.get("methods", loaded.methods)]
        shared, own = common.parse_hp(args.hp, names)
        values["hp"] = shared
        values["methods"] = tuple(dataclasses.replace(m, hp={**m.hp, **own.get(m.name, {})})
                                  for m in values.get("methods", loaded.methods))
    return config_lib.check(settings_lib.with_values(loaded, values))


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
