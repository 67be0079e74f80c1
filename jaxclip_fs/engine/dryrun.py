"""``run --dry-run``: what a sweep will cost, before it runs -- nothing extracted, trained or
written.

:func:`dry_run` plans the sweep exactly as :func:`~jaxclip_fs.engine.run.run_experiment`
would (:func:`~jaxclip_fs.engine.layout.plan_run`) and prints, per program, its
cells, shapes, XLA's FLOPs and bytes, its peak memory per device (XLA's
memory analysis of the compiled program), the plan chosen and why, for image
methods the training path (trunk vs tap cache) and the cache's size, and
time estimates:

* **here** -- the compile time measured while planning, plus XLA's FLOPs and
  bytes at this machine's calibrated matmul FLOP/s and bandwidth
  (:func:`~jaxclip_fs.engine.hardware.calibrate`; roofline: the slower of
  the two). Small programs reach less of the calibrated rate than a large
  matmul, so their estimates are optimistic;
* **accelerators** -- the same FLOPs and bytes at the published peak figures
  of :data:`~jaxclip_fs.engine.hardware.ACCELERATORS` (one chip): lower bounds
  labelled as estimates; programs whose memory analysis (on this machine's
  XLA backend) exceeds a chip's memory are named.

Feature extraction (image encoding with the CLIP's image tower: the support
pool's views, validation and test images) is estimated the same way; an
existing ``DIR/features/<dataset>.npz`` counts as done.

Sizes come from the datasets' labels when the data is here, else from the
benchmark table (:data:`~jaxclip_fs.data.sizes.BENCHMARK_SIZES`); shapes are
``jax.eval_shape`` / ``ShapeDtypeStruct`` lowerings; the CLIP's weights are
never read. The only effects are compilations in memory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

from jaxclip_fs.engine import estimate as estimate_lib
from jaxclip_fs.engine import hardware, layout, outdir, planner
from jaxclip_fs.engine.cost import ZERO, Cost
from jaxclip_fs.engine.rules import FEATURE_KINDS, keeps_params, requests_of
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import all_cells, ood_cells, ood_parents, resolve_variants
from jaxclip_fs.pipelines import ood as ood_lib
from jaxclip_fs.pipelines import sizes as sizes_lib
from jaxclip_fs.pipelines.features import ExtractedFeatures, FeatureFiles
from jaxclip_fs.pipelines.images import ImageSource
from jaxclip_fs.pipelines.paired import PairedFeatures
from jaxclip_fs.pipelines.session import ClipSession


@dataclasses.dataclass(frozen=True)
class Extraction:
    """The image encoding a dataset needs before its feature programs run."""

    dataset: str
    images: int
    cost: Cost
    note: str


@dataclasses.dataclass(frozen=True)
class DryRun:
    """What :func:`dry_run` found: the decisions, the extraction, the machine, the report."""

    decisions: tuple[planner.Decision, ...]
    extraction: tuple[Extraction, ...]
    machine: planner.Machine
    cells: int
    pending: int
    report: str


def _sources(config: config_lib.ExperimentConfig):
    """The run's providers, answering sizes without weights (table sizes when data is absent)."""
    from jaxclip_fs.engine.run import Sources

    if config.data.features:
        files = FeatureFiles(config.data.features)
        return Sources(features=files, datasets=files.datasets, provenance=files.provenance()), \
            None
    if not config.model.backbone:
        raise ConfigError("a dry run of datasets needs the model's backbone (model.backbone)")
    session = ClipSession(config, progress=False, banner=False, tables=True)
    return Sources(features=ExtractedFeatures(session, None, writer=False),
                   paired=PairedFeatures(session) if config.model.imo_adapters else None,
                   images=ImageSource(session, config.images)), session


def _pending(out_dir: str | None, cells, ood_of) -> list:
    if not out_dir:
        return list(cells)

    def done(cell) -> bool:
        return all(outdir.is_finished(out_dir, c) for c in [cell] + ood_cells(cell, ood_of))
    return [c for c in cells if not done(c)]


def _extraction(config, session, image_source, variants, decisions, ood_of, out_dir,
                requests) -> list[Extraction]:
    """Image encoding of every dataset a feature / paired program reads (module docstring)."""
    if session is None:
        return []
    from jaxclip_fs.pipelines.images import abstract_clip

    needs: dict[str, set] = {}
    for d in decisions:
        for dataset in d.program.datasets:
            kind = variants[d.program.method].method.inputs
            if kind in FEATURE_KINDS:
                needs.setdefault(dataset, set()).add(kind)
    clip = abstract_clip(config.model.backbone, config.extraction.dtype)
    batch, views = config.extraction.batch_size, session.train_views
    found = []
    for dataset, kinds in needs.items():
        if out_dir and os.path.exists(os.path.join(outdir.features_dir(out_dir),
                                                   f"{dataset}.npz")) and kinds == {"features"}:
            found.append(Extraction(dataset, 0, ZERO, "features already in DIR/features"))
            continue
        split = sizes_lib.split_sizes(session, dataset)
        pool = image_source.pool_size(dataset, requests("features", dataset))  # (no data: a bound)
        oods = sum(sizes_lib.split_sizes(session, o).test for o in ood_of.get(dataset, ()))
        images = pool * views + split.val + split.test + oods
        encoders = len(kinds)  # paired features: the adapted and the original encoder
        found.append(Extraction(
            dataset, images * encoders,
            estimate_lib.extraction_cost(clip, batch, images) * encoders,
            f"{pool} support images x {views} views + val {split.val} + test {split.test}"
            + (f" + OOD {oods}" if oods else "") + (" (x2: paired encoders)"
                                                    if encoders > 1 else "")))
    return found


def _time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(config: config_lib.ExperimentConfig, out_dir: str | None = None, *,
            print_fn: Callable[[str], None] | None = print,
            log: Callable[[str], None] | None = None) -> DryRun:
    """Plans ``config`` and prints its cost (module docstring); computes and writes nothing.

    Args:
      out_dir: a run directory whose finished cells (records) are left out;
        read only.
      print_fn: where the report goes (None: only returned).
      log: progress lines while planning.

    Raises:
      ConfigError / DataError: as a run would (bad settings, unknown datasets,
        a program that cannot fit).
    """
    say = log or (lambda message: None)
    config_lib.check(config)
    variants = {v.label: v for v in resolve_variants(config)}
    mesh = layout.mesh_of(config)
    sources, session = _sources(config)
    ood_of = ood_parents(config, ood_lib.parent_of) if config.data.ood else {}
    datasets = tuple(config.data.datasets) or sources.datasets
    cells = all_cells(config.labels(), datasets, config.grid.shots, config.grid.seeds,
                      config.protocol.names)
    pending = _pending(out_dir, cells, ood_of)
    requests = requests_of(config, variants, config.grid.shots, config.grid.seeds)
    say(f"dry run: calibrating this machine, then planning {len(pending)} cells")
    machine = layout.machine(mesh, calibrate=True)
    decisions = layout.plan_run(
        config, variants, sources, pending, ood_of, mesh, requests,
        keep_params=lambda v: keeps_params(config, v),
        machine_=machine, compile_for_run=True, exact_memory=True, keep_going=True,
        progress=log)
    extraction = _extraction(config, session, sources.images, variants, decisions, ood_of,
                             out_dir, requests)
    splits = [] if session is None else [
        (name, sizes_lib.split_sizes(session, name))
        for name in dict.fromkeys(list(datasets) + [o for d in datasets
                                                    for o in ood_of.get(d, ())])]
    report = _report(config, machine, decisions, extraction, len(cells), len(pending), splits)
    if print_fn is not None:
        print_fn(report)
    return DryRun(tuple(decisions), tuple(extraction), machine, len(cells), len(pending), report)


def _equal_parts(estimates: Sequence[planner.Estimate]) -> list[list[planner.Estimate]]:
    """Consecutive parts with the same numbers (chunks of one shape), grouped."""
    groups: list[list[planner.Estimate]] = []
    for e in estimates:
        key = (len(e.program.cells), e.cost, e.memory, e.notes)
        if groups and (len(groups[-1][0].program.cells), groups[-1][0].cost,
                       groups[-1][0].memory, groups[-1][0].notes) == key:
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


def _report(config, machine: planner.Machine, decisions: Sequence[planner.Decision],
            extraction: Sequence[Extraction], cells: int, pending: int, splits) -> str:
    cal = machine.calibration
    accelerators = hardware.ACCELERATORS
    dtype = config.extraction.dtype
    parts = [e for d in decisions if d.plan != "refused" for e in d.estimates]
    lines = [
        f"dry run: {len(config.labels())} method variant(s) x "
        f"{len(config.data.datasets) or len(config.data.features)} dataset(s) x shots "
        f"{list(config.grid.shots)} x seeds {list(config.grid.seeds)}: "
        f"{pending} of {cells} cells to compute in {len(parts)} program(s); nothing was "
        f"extracted, trained or written",
        f"this machine: {machine.devices} {machine.platform} device(s), "
        f"{planner.gib(machine.memory)} per device ({machine.memory_source}); calibrated "
        f"{cal.flops_per_s / 1e9:.1f} GFLOP/s ({cal.matmul}x{cal.matmul} {cal.dtype} matmul) and "
        f"{cal.bytes_per_s / 1e9:.1f} GB/s (elementwise pass); a program's cells run "
        f"{'side by side' if machine.parallel else 'one after another'}",
        ""]
    if splits:
        lines.append("dataset sizes (no image read):")
        lines += [f"  {name}: {s.num_classes} classes, train {s.train} / val {s.val} / test "
                  f"{s.test} -- {s.origin}" for name, s in splits]
        lines.append("")
    heads = ["here"] + [a.name.replace("NVIDIA ", "").replace("Google ", "") for a in accelerators]
    width = max([40] + [len(e.program.name) + 2 for e in parts])
    header = (f"{'program':<{width}} {'cells':>5} {'GFLOP':>11} {'GB':>9} {'peak/device':>12} "
              + " ".join(f"{h:>13}" for h in heads))
    totals = [0.0] * (1 + len(accelerators))
    too_big: dict[str, list[str]] = {a.name: [] for a in accelerators}

    def row(name: str, count: str, cost: Cost, peak: str, compile_s: float) -> str:
        here = compile_s + machine.seconds(cost)
        times = [here] + [a.seconds(cost.flops, cost.bytes_accessed, dtype) for a in accelerators]
        for i, t in enumerate(times):
            totals[i] += t
        return (f"{name:<{width}} {count:>5} {cost.flops / 1e9:>11.1f} "
                f"{cost.bytes_accessed / 1e9:>9.1f} {peak:>12} "
                + " ".join(f"{_time(t):>13}" for t in times))

    if extraction:
        lines += ["feature extraction (image encoding, "
                  f"{config.model.backbone}, batches of {config.extraction.batch_size}):",
                  header]
        for x in extraction:
            lines.append(row(x.dataset, "", x.cost, "", 0.0))
            lines.append(f"    {x.images} images: {x.note}")
        lines.append("")
    lines += ["programs (parts of equal shape on one row, their costs summed):", header]
    for d in decisions:
        if d.plan == "refused":  # priced as its smallest part; not in the totals
            e = d.estimates[0]
            lines.append(f"  {d.program.name}: REFUSED here -- {d.reason}")
            lines.append(f"{'    smallest part: ' + e.program.name:<{width}} "
                         f"{len(e.program.cells):>5} {e.cost.flops / 1e9:>11.1f} "
                         f"{e.cost.bytes_accessed / 1e9:>9.1f} {planner.gib(e.memory):>12}")
            lines += [f"      {note}" for note in e.notes]
            lines.append("      on one chip, the smallest part (not in the totals): " + "; ".join(
                f"{a.name.replace('NVIDIA ', '').replace('Google ', '')} "
                f"{_time(a.seconds(e.cost.flops, e.cost.bytes_accessed, dtype)).strip()}"
                + ("" if e.memory <= planner.FIT_FRACTION * a.memory_bytes else
                   f" (does not fit {a.memory_bytes / 2**30:.0f} GiB)") for a in accelerators))
            continue
        lines.append(f"  {d.program.name}: plan {d.plan} -- {d.reason}")
        for group in _equal_parts(d.estimates):
            e, count = group[0], len(group)
            name = (e.program.name if count == 1 else
                    f"{d.program.name} [{count} x {len(e.program.cells)} cells]")
            total = sum((g.cost for g in group), ZERO)
            lines.append(row("  " + name, str(sum(len(g.program.cells) for g in group)), total,
                             planner.gib(e.peak if e.exact else e.memory),
                             sum(g.compile_seconds or 0.0 for g in group)))
            lines += [f"      {note}" for note in e.notes]
            if e.cost.while_loops:
                lines.append(f"      ({e.cost.while_loops} while loop(s) counted once)")
            for a in accelerators:
                if e.memory > planner.FIT_FRACTION * a.memory_bytes:
                    too_big[a.name].append(name)
    lines += ["", f"{'total':<{width}} {'':>5} {'':>11} {'':>9} {'':>12} "
              + " ".join(f"{_time(t):>13}" for t in totals), ""]
    refused = [d.program.name for d in decisions if d.plan == "refused"]
    if refused:
        lines.append(f"a run here would stop before any work: {len(refused)} program(s) cannot "
                     f"fit this machine's devices ({', '.join(refused)}; not in the totals)")
    for a in accelerators:
        if too_big[a.name]:
            lines.append(f"on one {a.name} ({a.memory_bytes / 2**30:.0f} GiB) these need more "
                         f"than {planner.FIT_FRACTION:.0%} of its memory (by this backend's "
                         f"analysis): {', '.join(too_big[a.name])}")
    lines += [
        "",
        "time estimates: 'here' = compile time measured while planning + XLA's FLOPs and bytes "
        "at this machine's calibrated rates (the slower of the two; small programs reach less "
        "than a large matmul, so these are optimistic); accelerator columns = ESTIMATES: the "
        "same FLOPs and bytes at one chip's published peak (lower bounds; no compilation, "
        "host work or image decoding counted). FLOPs and bytes are XLA's cost analysis of "
        "each lowered program with its loops counted over their trip counts; peak/device is "
        "XLA's memory analysis of the compiled program on this machine's backend.",
        "published peak figures (dense):"]
    lines += [f"  {a.name}: {a.source}" for a in accelerators]
    return "\n".join(lines)
