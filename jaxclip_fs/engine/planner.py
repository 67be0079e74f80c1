"""How each program is laid out: one program, one per shot count, or chunks of its cells.

A (variant, datasets) program runs all its cells in one ``jit(vmap)``. Three
layouts give the same records (``execution.plan`` / ``--plan``):

* ``one`` -- every cell in one program. Each cell's training is padded to the
  program's largest shot count: free where the cells run side by side
  (accelerators), paid for on a CPU that one cell already saturates.
* ``per-shots`` -- one program per shot count: no padding work, but each
  program compiles on its own (and an image program streams its query
  images once per program).
* ``chunk:N`` -- programs of at most N consecutive cells: less memory per device.

``auto`` (the default) decides per program, from XLA's own numbers
(:mod:`~jaxclip_fs.engine.cost`) and the machine (:mod:`~jaxclip_fs.engine.hardware`):

1. where cells run side by side: ``one``;
2. on a serial platform (CPU) with several shot counts: ``per-shots`` when
   the work it saves -- XLA's FLOPs of ``one`` minus those of the per-shot
   programs, at this machine's calibrated matmul FLOP/s (memory traffic is
   left out: XLA's uncompiled byte counts charge every intermediate) --
   exceeds the time of its extra compilations (the measured compile time of
   ``one``, at least :data:`COMPILE_PER_ANALYSIS` times its analysis time,
   per extra program) and, for image programs, of its extra streaming
   passes; else ``one``;
3. every program must fit a device: XLA's memory analysis of its compiled
   executable (arguments + outputs + temporaries, per device) must be at most
   :data:`FIT_FRACTION` of the device's memory. A program that does not fit
   is split into chunks of fewer cells per device (halving until one fits),
   or -- when even one cell per device does not fit -- refused before any
   work, in one line naming the program, its need and the device's memory.

A cheap screen spares most compilations: a program whose arguments plus
XLA's bytes of all its operations (every buffer it could ever allocate) fit
is not compiled for its memory.

A forced plan (``one``, ``per-shots``, ``chunk:N``) is checked the same way
and refused, rather than split, when a part does not fit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from jaxclip_fs.engine.cost import ZERO, Cost
from jaxclip_fs.engine.hardware import MEMORY_ENV, Calibration
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment.config import parse_plan
from jaxclip_fs.experiment.plan import Program, split_chunks, split_per_shots

#: A program fits when its peak memory is at most this share of the device's memory.
FIT_FRACTION = 0.9
#: A program's compilation is taken to cost at least this many times its analysis (tracing
#: and lowering its loop bodies: never cached). XLA:CPU compiled this library's programs in
#: 3-17x that time (measured); with a persistent compilation cache the measured compile
#: time of a program seen before is near zero, though a new shape's is not.
COMPILE_PER_ANALYSIS = 2.0

#: ``measure(program, compile)`` -- XLA's numbers for a program; ``compile``: None (cost
#: only), ``"memory"`` (compile for the memory analysis only) or ``"run"`` (compile as the
#: run will, so the run reuses the executable).
Measure = Callable[[Program, "str | None"], "Estimate"]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """XLA's numbers for one program.

    Attributes:
      program: the program.
      cost: FLOPs and bytes of all its stages, all devices together (loops counted).
      memory: per device, the best known upper bound on its memory: for a
        compiled stage its executable's memory analysis (arguments + outputs +
        temporaries), else arguments plus XLA's bytes of every operation (each
        buffer it could allocate; loops counted once). Stages run one after
        another: the largest counts.
      exact: every stage was compiled (``memory`` is XLA's memory analysis).
      compile_seconds: measured compilation of its main stage (None: not compiled).
      fixed: cost of stages a program runs once whatever its cells (image
        programs' streaming passes), part of ``cost``.
      devices: devices the program's cells are spread over.
      notes: facts for reports (shapes, training path, ...).
      analysis_seconds: how long tracing it and lowering its loop bodies for
        :func:`~jaxclip_fs.engine.cost.lowered_cost` took (never cached: a
        measure of its size when the compilation came from a cache).
      options: how the program must run for these numbers, ``((name, value), ...)``
        (a tower program: ``remat`` -- its blocks rematerialised, chosen where memory
        demands it).
    """

    program: Program
    cost: Cost
    memory: int
    exact: bool = False
    compile_seconds: float | None = None
    fixed: Cost = ZERO
    devices: int = 1
    notes: tuple[str, ...] = ()
    analysis_seconds: float = 0.0
    options: tuple[tuple[str, object], ...] = ()

    @property
    def peak(self) -> int | None:
        """XLA's memory analysis per device (None unless every stage was compiled)."""
        return self.memory if self.exact else None


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the planner plans for.

    Attributes:
      platform: ``cpu``, ``gpu``, ``tpu``. devices: devices in the mesh.
      memory: bytes per device; memory_source: where that figure comes from.
      parallel: the devices run a program's cells side by side.
      calibration: this machine's measured speed (serial platforms).
    """

    platform: str
    devices: int
    memory: int
    memory_source: str
    parallel: bool
    calibration: Calibration | None = None

    @property
    def budget(self) -> int:
        return int(FIT_FRACTION * self.memory)

    def seconds(self, cost: Cost) -> float:
        """Roofline seconds of ``cost`` here (serial platforms: all devices share the host)."""
        if self.calibration is None:
            return 0.0
        return self.calibration.seconds(cost.flops, cost.bytes_accessed)

    def compute_seconds(self, cost: Cost) -> float:
        """Seconds of ``cost`` 's FLOPs at the calibrated matmul rate (no memory traffic)."""
        return 0.0 if self.calibration is None else cost.flops / self.calibration.flops_per_s


@dataclasses.dataclass(frozen=True)
class Decision:
    """The layout chosen for one program.

    Attributes:
      program: the whole (variant, datasets) program.
      plan: ``one``, ``per-shots``, ``chunk:N`` or ``per-shots, chunk:N``.
      parts: the programs to run.
      reason: one line: why.
      estimates: XLA's numbers of each part (same order).
      requested: the plan asked for (``auto`` or a forced one).
    """

    program: Program
    plan: str
    parts: tuple[Program, ...]
    reason: str
    estimates: tuple[Estimate, ...]
    requested: str = "auto"

    def to_json(self) -> dict:
        """The manifest's entry: program, plan, reason, parts and their numbers."""
        def part(e: Estimate) -> dict:
            return {"program": e.program.name, "cells": len(e.program.cells),
                    "flops": e.cost.flops, "bytes_accessed": e.cost.bytes_accessed,
                    "memory_bytes_per_device": e.memory,
                    "memory": "XLA memory analysis" if e.exact else "upper bound"}
        return {"program": self.program.name, "requested": self.requested, "plan": self.plan,
                "reason": self.reason, "parts": [part(e) for e in self.estimates]}


def gib(n: float) -> str:
    """Bytes in GiB, two decimals (for messages and reports)."""
    return f"{n / 2**30:.2f} GiB"


class DoesNotFit(ConfigError):
    """A program that cannot fit the device, even split: the one-line refusal, with the
    estimate of the smallest part tried (``estimate``)."""

    def __init__(self, message: str, estimate: Estimate):
        super().__init__(message)
        self.estimate = estimate


def _fits(estimate: Estimate, machine: Machine, measure: Measure) -> Estimate:
    """The estimate with its memory known well enough to say whether it fits."""
    if estimate.exact or estimate.memory <= machine.budget:
        return estimate
    return measure(estimate.program, "memory")


def _fit_or_refuse(estimate: Estimate, machine: Machine, measure: Measure, forced: str) -> Estimate:
    found = _fits(estimate, machine, measure)
    if found.memory > machine.budget:
        raise DoesNotFit(_refusal(found, machine, f"with execution.plan {forced}"), found)
    return found


def _refusal(estimate: Estimate, machine: Machine, how: str) -> str:
    cells = -(-len(estimate.program.cells) // max(1, estimate.devices))
    return (f"program {estimate.program.name} needs {gib(estimate.memory)} per device for "
            f"{cells} cell(s) per device {how} (XLA's memory analysis of its compiled "
            f"program), more than {FIT_FRACTION:.0%} of the device's {gib(machine.memory)} "
            f"({machine.memory_source}): use more or larger devices, another execution.plan, "
            "or set "
            f"{MEMORY_ENV} if that figure is wrong")


def _chunked(estimate: Estimate, machine: Machine, measure: Measure) -> list[Estimate]:
    """The part as chunks that fit (halving the cells per device), or a refusal."""
    found = _fits(estimate, machine, measure)
    if found.memory <= machine.budget:
        return [found]
    program, devices = found.program, max(1, found.devices)
    per_device = -(-len(program.cells) // devices)
    while per_device > 1:
        per_device //= 2
        chunks = split_chunks(program, per_device * devices)
        first = measure(chunks[0], "memory")
        if first.memory <= machine.budget:
            rest = [_fits(measure(c, None), machine, measure) for c in chunks[1:]]
            worst = max([first] + rest, key=lambda e: e.memory)
            if worst.memory <= machine.budget:
                return [first] + rest
            first = worst
        found = first
    raise DoesNotFit(_refusal(found, machine, "even in chunks"), found)


def decide(program: Program, requested: str, machine: Machine, measure: Measure, *,
           streams_per_program: bool = False, compile_for_run: bool = True) -> Decision:
    """The layout of ``program`` (module docstring).

    Args:
      requested: ``execution.plan``.
      measure: XLA's numbers of a program (see :data:`Measure`).
      streams_per_program: the program's fixed stages run again in every part
        (image programs), so splitting it repeats them.
      compile_for_run: on a serial platform, compile ``one`` as the run will
        (reused by it) to time its compilation; False: estimate the compilation
        from the program's analysis time (:data:`COMPILE_PER_ANALYSIS`).

    Raises:
      ConfigError: a part that cannot fit (one line, module docstring), or a bad plan.
    """
    kind, size = parse_plan(requested)
    if kind != "auto":
        parts = {"one": lambda: [program], "per-shots": lambda: split_per_shots(program),
                 "chunk": lambda: split_chunks(program, size)}[kind]()
        estimates = [_fit_or_refuse(measure(p, None), machine, measure, requested) for p in parts]
        return Decision(program, requested, tuple(parts), f"--plan {requested} (forced)",
                        tuple(estimates), requested)

    shots = program.shots
    serial_choice = not machine.parallel and len(shots) > 1
    one = measure(program, "run" if serial_choice and compile_for_run else None)
    chosen, plan = [one], "one"
    if machine.parallel:
        reason = f"{machine.platform} devices run a program's cells side by side: one program"
    elif len(shots) == 1:
        reason = "one shot count: one program"
    else:
        chosen, plan, reason = _one_or_per_shots(one, machine, measure, streams_per_program)
    pieces = [_chunked(estimate, machine, measure) for estimate in chosen]
    parts = [e for found in pieces for e in found]
    if len(parts) > len(chosen):
        # one chunk size for every part, so the plan string says exactly how it was split
        cells = min(len(found[0].program.cells) for found in pieces if len(found) > 1)
        parts = [_fits(measure(p, None), machine, measure)
                 for e in chosen for p in split_chunks(e.program, cells)]
        plan = f"{plan}, chunk:{cells}" if plan != "one" else f"chunk:{cells}"
        reason += (f"; split into {len(parts)} programs of at most {cells} cells to fit "
                   f"{FIT_FRACTION:.0%} of {gib(machine.memory)} per device")
    return Decision(program, plan, tuple(e.program for e in parts), reason, tuple(parts))


def _one_or_per_shots(one: Estimate, machine: Machine, measure: Measure,
                      streams: bool) -> tuple[list[Estimate], str, str]:
    """Serial platform, several shot counts: the faster of one and per-shots (module docstring)."""
    pieces = split_per_shots(one.program)
    extra = len(pieces) - 1
    compile_s = max(one.compile_seconds or 0.0, COMPILE_PER_ANALYSIS * one.analysis_seconds)
    added = extra * (compile_s + (machine.compute_seconds(one.fixed) if streams else 0.0))
    run_one = machine.compute_seconds(one.cost)
    if run_one <= added:
        return [one], "one", (
            f"one program: per-shots could save at most {run_one:.1f} s of work here, its "
            f"{extra} extra programs would add about {added:.1f} s (compilation"
            f"{' and streaming' if streams else ''})")
    found = [measure(p, None) for p in pieces]
    total = sum((e.cost for e in found), ZERO)
    saved = run_one - machine.compute_seconds(total)
    if saved > added:
        return found, "per-shots", (
            f"per-shots: saves about {saved:.1f} s of padded work ({one.cost.flops:.3g} -> "
            f"{total.flops:.3g} FLOPs at this machine's measured rate) for about {added:.1f} s "
            f"of extra compilation")
    return [one], "one", (
        f"one program: per-shots would save about {saved:.1f} s of work here "
        f"({one.cost.flops:.3g} -> {total.flops:.3g} FLOPs) but add about {added:.1f} s")


def apply(program: Program, plan: str) -> list[Program]:
    """The parts of ``program`` under a decided ``plan`` (``one``, ``per-shots``, ``chunk:N``,
    ``per-shots, chunk:N``): how other processes follow process 0's decision."""
    parts = [program]
    for step in (s.strip() for s in plan.split(",")):
        kind, size = parse_plan(step, "plan")
        if kind == "per-shots":
            parts = [q for p in parts for q in split_per_shots(p)]
        elif kind == "chunk":
            parts = [q for p in parts for q in split_chunks(p, size)]
    return parts


def describe(decisions: Sequence[Decision]) -> list[str]:
    """One log line per program of several cells: its plan and why."""
    return [f"plan {d.program.name}: {d.plan} ({d.reason})" for d in decisions
            if len(d.program.cells) > 1]
