"""The sweep engine: methods × datasets × shots × seeds as a few compiled programs, resumable.

:func:`run_sweep` is what ``jaxclip-fs run`` and ``demo`` call:

1. check the run against ``DIR/manifest.json`` (:mod:`~jaxclip_fs.sweep.outdir`):
   same settings or a one-line refusal; the grid may grow;
2. find the cells without a record; with none left, stop -- nothing is
   loaded or compiled;
3. get the feature sets of the datasets with work left (``features``:
   extraction, cached, or given files);
4. plan one program per method and dataset -- or per method and group of
   compatible datasets with ``fuse_datasets`` (:mod:`~jaxclip_fs.sweep.cells`);
5. run each program on the device mesh (:mod:`~jaxclip_fs.sweep.program`)
   and, as soon as it finishes, save its fitted params (orbax) and then one
   record per cell, atomically. An interruption loses at most the program
   in flight; a rerun skips finished cells.

Image methods (:mod:`~jaxclip_fs.sweep.image_methods`): TA++ / TX++ are
feature-level programs like the others, on the *paired* features
``[adapted | original]`` (``paired_features``); LDC trains on images, so its
program per dataset is the image pipeline's own compiled program
(``image_runner``; its training sharded over the same devices), whose cells the engine resumes, checkpoints
and records like any other.

Multi-host: every process runs every program (each on its own devices);
process 0 alone writes, and its view of which cells are finished is
broadcast to the others so all compile the same programs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from jaxclip_fs import methods as methods_lib
from jaxclip_fs.data.fewshot import VAL_POLICIES
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features.featfile import FeatureSet
from jaxclip_fs.io import records
from jaxclip_fs.methods import hparams as hparams_lib
from jaxclip_fs.sweep import batch as batch_lib
from jaxclip_fs.sweep import image_programs
from jaxclip_fs.sweep import ood as ood_lib
from jaxclip_fs.sweep import outdir, sharding
from jaxclip_fs.sweep import program as program_lib
from jaxclip_fs.sweep.cells import Cell, Program, all_cells, fusion_groups, plan_programs
from jaxclip_fs.sweep.evaluate import stderr_log
from jaxclip_fs.sweep.image_programs import IMAGE_PROGRAM_METHODS, ImageRunner, feature_kind
from jaxclip_fs.sweep.ood import OODSet

SAVE_PARAMS = ("trained", "all", "none")

#: ``features(dataset, shots, seeds) -> FeatureSet``: a dataset's features
#: covering the few-shot sets of ``seeds`` up to ``shots``.
FeatureSource = Callable[[str, int, Sequence[int]], FeatureSet]
#: ``ood_features(name, parent_features) -> OODSet``.
OODSource = Callable[[str, FeatureSet], OODSet]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What to run.

    Attributes:
      methods, datasets, shots, seeds: the grid.
      val_policy: ``"coop"`` (min(K, 4) per class) or ``"full"``.
      select_on_test: choose epochs / hyperparameters on test (official
        Tip-Adapter-F protocol; optimistic, recorded).
      hp: ``NAME=VALUE`` overrides, applied to every method declaring NAME.
      fuse_datasets: several datasets per program (padded, masked).
      program_per_shots: one program per shot count too (no padding work; for CPUs).
      save_params: ``trained`` (methods that train), ``all`` or ``none``.
      devices: use the first N devices (default: all).
      ood: out-of-distribution test sets scored with their parent's fit
        (:mod:`~jaxclip_fs.sweep.ood`); the parent must be in ``datasets``.
    """

    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    val_policy: str = "coop"
    select_on_test: bool = False
    hp: tuple[str, ...] = ()
    fuse_datasets: bool = False
    program_per_shots: bool = False
    save_params: str = "trained"
    devices: int | None = None
    ood: tuple[str, ...] = ()

    def settings(self) -> dict:
        """The arguments that shape the numbers (for the manifest)."""
        return {"--val-policy": self.val_policy, "--select-on-test": self.select_on_test,
                "--hp": sorted(self.hp)}

    def grid(self) -> dict:
        return {"--method": list(self.methods), "--dataset": list(self.datasets),
                "--shots": list(self.shots), "--seeds": list(self.seeds), "--ood": list(self.ood)}

    def ood_of(self) -> dict[str, tuple[str, ...]]:
        """dataset -> the OOD sets scored with its fits.

        Raises:
          ConfigError: an OOD set whose parent is not among the datasets.
        """
        found: dict[str, tuple[str, ...]] = {d: () for d in self.datasets}
        for name in self.ood:
            parent = ood_lib.parent_of(name)
            if parent not in found:
                raise ConfigError(
                    f"--ood {name} is scored with fits on '{parent}': add it to --dataset")
            found[parent] += (name,)
        return found


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What a :func:`run_sweep` call did.

    Attributes:
      out_dir: the directory.
      cells: every cell of this call's grid.
      computed: the cells computed now; ``skipped``: those already finished.
      programs: the programs run.
      seconds: wall time.
      devices: size of the mesh.
    """

    out_dir: str
    cells: tuple[Cell, ...]
    computed: tuple[Cell, ...]
    skipped: tuple[Cell, ...]
    programs: tuple[Program, ...]
    seconds: float
    devices: int


def method_overrides(method_names: Sequence[str], assignments: Sequence[str]) -> dict[str, dict]:
    """``--hp NAME=VALUE`` split per method: each method gets the names it declares.

    Raises:
      ConfigError: malformed item, or a name no selected method declares.
    """
    specs = {name: methods_lib.get(name).hparam_specs for name in method_names}
    union = {n: h for table in specs.values() for n, h in table.items()}
    parsed = hparams_lib.parse_assignments(assignments, union, "/".join(method_names))
    return {m: {n: v for n, v in parsed.items() if n in specs[m]} for m in method_names}


def ood_cells(cell: Cell, ood_of: Mapping[str, Sequence[str]]) -> list[Cell]:
    """The OOD records a cell's fit also produces (same method, shots, seed)."""
    return [Cell(cell.method, name, cell.shots, cell.seed) for name in ood_of.get(cell.dataset, ())]


def _pending_everywhere(out_dir: str, cells: Sequence[Cell],
                        ood_of: Mapping[str, Sequence[str]]) -> list[Cell]:
    """Process 0's unfinished cells (own or OOD record missing), shared with every process."""
    done = np.asarray([all(outdir.is_finished(out_dir, x) for x in [c] + ood_cells(c, ood_of))
                       for c in cells], np.bool_)
    if jax.process_count() > 1:
        done = np.asarray(multihost_utils.broadcast_one_to_all(done))
    return [c for c, finished in zip(cells, done) if not finished]


def cell_records(program: Program, cell: Cell, method, fs: FeatureSet, oods: Sequence[OODSet],
                 batch: batch_lib.ProgramBatch, outputs: dict, g: int, t: int, *,
                 config: SweepConfig, seconds: float, devices: int,
                 params_dir: str | None) -> list[tuple[Cell, dict]]:
    """The records of one cell and of its OOD sets (``io/records.py`` fields + the sweep's)."""
    resolved = batch.resolved[cell.dataset]
    index = {name: int(v[g, t]) for name, v in outputs["index"].items()}
    common = dict(
        hyperparameters=batch_lib.chosen_hparams(method, resolved, index),
        searched=list(resolved.grid), val_policy=config.val_policy,
        selection="test" if config.select_on_test else "validation")
    results = dict(
        val_accuracy=float(outputs["val_accuracy"][g, t]),
        best_epoch=int(outputs["best_epoch"][g, t]) if method.trainable else None,
        val_size=fs.test.shape[0] if config.select_on_test else batch.val_sizes[cell],
        seconds=round(seconds / len(program.cells), 4),
        program=program.name, program_cells=len(program.cells), program_seconds=round(seconds, 3),
        fused_datasets=list(program.datasets), devices=devices,
        params_checkpoint=params_dir, params_row=[g, t] if params_dir else None)
    out = [(cell, records.build_record(
        method=cell.method, shots=cell.shots, seed=cell.seed,
        provenance={**fs.meta, "dataset": cell.dataset}, **common,
        accuracy=float(outputs["test_accuracy"][g, t]), num_classes=fs.num_classes,
        test_size=int(fs.test.shape[0]), **results))]
    for o, ood in enumerate(oods):
        out.append((Cell(cell.method, ood.name, cell.shots, cell.seed), records.build_record(
            method=cell.method, shots=cell.shots, seed=cell.seed,
            provenance={**ood.meta, "dataset": ood.name}, **common,
            accuracy=float(outputs["ood_accuracy"][g, t, o]), trained_on=cell.dataset,
            num_classes=int(ood.class_mask.sum()), test_size=int(ood.test.shape[0]), **results)))
    return out


def run_sweep(out_dir: str | os.PathLike, config: SweepConfig, features: FeatureSource, *,
              ood_features: OODSource | None = None,
              paired_features: FeatureSource | None = None,
              image_runner: ImageRunner | None = None, settings: Mapping | None = None,
              argv: Sequence[str] | None = None, progress: bool = True,
              log: Callable[[str], None] | None = stderr_log) -> SweepResult:
    """Runs (or resumes) a sweep into ``out_dir`` (module docstring).

    Args:
      out_dir: the sweep directory (created).
      config: the grid and options.
      features: :data:`FeatureSource`; called only for datasets with work left.
      ood_features: :data:`OODSource`, needed with ``config.ood``.
      paired_features: the paired features of TA++ / TX++ (a :data:`FeatureSource`).
      image_runner: :data:`ImageRunner`, needed for LDC.
      settings: further ``{flag: value}`` shaping the numbers (backbone,
        weights, views ...), checked against the manifest with the config's.
      argv: the command line, kept in the manifest's history.
      progress: tqdm bars (stderr) over programs and cells.
      log: one-line messages (None: silent).

    Raises:
      ConfigError: bad method / hyperparameter / policy, or arguments that
        conflict with the directory's manifest.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    out_dir = os.fspath(out_dir)
    if config.val_policy not in VAL_POLICIES:
        raise ConfigError(f"--val-policy must be one of {', '.join(VAL_POLICIES)}, "
                          f"got '{config.val_policy}'")
    if config.save_params not in SAVE_PARAMS:
        raise ConfigError(f"--save-params must be one of {', '.join(SAVE_PARAMS)}, "
                          f"got '{config.save_params}'")
    ood_of = config.ood_of()
    if config.ood and ood_features is None:
        raise ConfigError("--ood needs a source of out-of-distribution features (extraction)")
    specs = {name: methods_lib.get(name) for name in config.methods}
    sources = {"clip": features, "paired": paired_features}
    image_programs.check_image_methods(specs, config, paired_features, image_runner)
    overrides = method_overrides(config.methods, config.hp)
    try:
        mesh = sharding.cell_mesh(config.devices)
    except ValueError as exc:
        raise ConfigError(f"--devices: {exc}") from None
    writer = sharding.is_writer()

    manifest = outdir.merge_manifest(out_dir, {**(settings or {}), **config.settings()},
                                     config.grid(), argv)
    if writer:
        outdir.write_manifest(out_dir, manifest)
    cells = all_cells(config.methods, config.datasets, config.shots, config.seeds)
    pending = _pending_everywhere(out_dir, cells, ood_of)
    waiting = set(pending)
    skipped = tuple(c for c in cells if c not in waiting)
    if not pending:
        say(f"all {len(cells)} cells already have records in {out_dir}: nothing to compute")
        return SweepResult(out_dir, tuple(cells), (), skipped, (), time.perf_counter() - started,
                           mesh.devices.size)
    if skipped:
        say(f"resuming: {len(skipped)} of {len(cells)} cells already finished")

    grid = manifest["grid"]
    needed = {(feature_kind(c.method), c.dataset) for c in pending
              if c.method not in IMAGE_PROGRAM_METHODS}
    fsets = {(kind, d): sources[kind](d, max(grid["--shots"]), tuple(grid["--seeds"]))
             for kind, d in sorted(needed)}
    oods = {d: [] for d in config.datasets}  # (only feature methods on CLIP features have any)
    oods.update({d: [ood_features(name, fs) for name in ood_of[d]]
                 for (kind, d), fs in fsets.items() if kind == "clip"})
    resolved = {(m, d): batch_lib.resolve(specs[m], d, fs.dim, overrides[m])
                for m in config.methods for (kind, d), fs in fsets.items()
                if kind == feature_kind(m)}

    def groups_of(method: str, datasets: Sequence[str]):
        if method in IMAGE_PROGRAM_METHODS:
            return [(d,) for d in datasets]
        return fusion_groups(datasets, lambda d: (ood_of[d], batch_lib.fusion_signature(
            specs[method], fsets[(feature_kind(method), d)], resolved[(method, d)])),
            config.fuse_datasets)

    programs = plan_programs(pending, config.methods, groups_of, config.program_per_shots)
    say(f"{len(pending)} cells in {len(programs)} programs on {mesh.devices.size} "
        f"{mesh.devices.flat[0].platform} device(s)")
    hide_bars = not progress or not writer
    program_bar = tqdm.tqdm(total=len(programs), desc="programs", unit="prog", position=0,
                            disable=hide_bars, file=sys.stderr, dynamic_ncols=True)
    cell_bar = tqdm.tqdm(total=len(pending), desc="cells", unit="cell", position=1,
                         disable=hide_bars, file=sys.stderr, dynamic_ncols=True)
    try:
        for program in programs:
            program_bar.set_postfix_str(program.name)
            if program.method in IMAGE_PROGRAM_METHODS:
                image_programs.run_image_program(program, image_runner, overrides[program.method],
                                                 config, out_dir, writer)
            else:
                kind = feature_kind(program.method)
                _run_one(program, specs[program.method],
                         {d: fsets[(kind, d)] for d in program.datasets}, oods, resolved, config,
                         mesh, out_dir, writer)
            program_bar.update(1)
            cell_bar.update(len(program.cells))
    finally:
        program_bar.close()
        cell_bar.close()
    seconds = time.perf_counter() - started
    say(f"computed {len(pending)} cells in {len(programs)} programs "
        f"({len(skipped)} already finished) in {seconds:.1f} s on {mesh.devices.size} "
        f"device(s); records in {os.path.join(out_dir, 'records')}")
    return SweepResult(out_dir, tuple(cells), tuple(pending), skipped, tuple(programs), seconds,
                       mesh.devices.size)


def _run_one(program: Program, method, fsets: Mapping[str, FeatureSet],
             oods: Mapping[str, Sequence[OODSet]], resolved, config: SweepConfig, mesh,
             out_dir: str, writer: bool) -> None:
    """Builds, runs and saves one program: params first, then the records."""
    started = time.perf_counter()
    batch = batch_lib.build_batch(
        program, method, fsets, {d: resolved[(program.method, d)] for d in program.datasets},
        val_policy=config.val_policy, pad_cells=lambda n: sharding.padded_length(n, mesh),
        ood=oods[program.datasets[0]])
    # the same program on every process (multi-host SPMD), so not conditioned on `writer`
    keep = config.save_params == "all" or (config.save_params == "trained"
                                           and bool(method.trainable))
    outputs = program_lib.run_program(method, batch, select_on_test=config.select_on_test,
                                      mesh=mesh, keep_params=keep)
    seconds = time.perf_counter() - started
    if not writer:
        return
    params_dir = None
    if keep and outputs["params"]:
        params_dir = outdir.save_params(out_dir, program, outputs["params"], batch.slots)
    for g, t, cell in batch_lib.slot_cells(batch):
        for written, record in cell_records(
                program, cell, method, fsets[cell.dataset], oods[cell.dataset], batch, outputs,
                g, t, config=config, seconds=seconds, devices=mesh.devices.size,
                params_dir=params_dir):
            records.write_record(outdir.record_path(out_dir, written), record)
