"""XLA's own numbers for a program: FLOPs and bytes of the lowered program, memory of the
compiled one.

:func:`lowered_cost` asks XLA's cost model (``jax.jit(fn).lower(...).cost_analysis()``)
for a program's floating-point operations and bytes accessed, from abstract
arguments (``jax.ShapeDtypeStruct``; nothing is computed). XLA counts the
body of a loop **once**, whatever its trip count (a ``lax.scan`` of 100 steps
costs as much as one step in its report), and the library's programs are
mostly loops -- training scans epochs and steps. So the count is corrected
from the program's jaxpr: every ``scan`` body is lowered on its own, costed
by XLA, and counted ``length`` times (nested scans multiply). ``while`` loops,
whose trip count is not static, stay counted once (:attr:`Cost.while_loops`
says how many there were). Custom calls (LAPACK's ``eigh``) cost nothing in
XLA's model.

:func:`compiled_memory` compiles a lowered program and reads the executable's
``memory_analysis()``: per device, the bytes of its arguments, outputs and
temporaries -- what must fit in the device's memory at once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.extend.core as jex

from jaxclip_fs.engine import jax_compat


@dataclasses.dataclass(frozen=True)
class Cost:
    """A program's work in XLA's cost model.

    Attributes:
      flops: floating-point operations (loops counted over their trip counts).
      bytes_accessed: bytes read and written by its operations (same counting).
      while_loops: loops whose bodies are counted once (no static trip count).
    """

    flops: float
    bytes_accessed: float
    while_loops: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes_accessed + other.bytes_accessed,
                    self.while_loops + other.while_loops)

    def __mul__(self, factor: float) -> "Cost":
        return Cost(self.flops * factor, self.bytes_accessed * factor, self.while_loops)

    __rmul__ = __mul__


ZERO = Cost(0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Memory:
    """``memory_analysis()`` of a compiled program, per device, in bytes.

    Attributes:
      arguments, outputs, temporaries: the executable's buffers; aliased: outputs
        that reuse an argument's buffer (counted once).
      compile_seconds: how long this machine took to compile it.
    """

    arguments: int
    outputs: int
    temporaries: int
    aliased: int = 0
    compile_seconds: float = 0.0

    @property
    def peak(self) -> int:
        """Bytes live at once on a device: arguments + outputs + temporaries - aliases."""
        return self.arguments + self.outputs + self.temporaries - self.aliased


def xla_numbers(lowered) -> Cost:
    """XLA's own count for a lowered (or compiled) program, loops counted once. A lowered
    program's bytes charge every intermediate: an upper bound on the buffers it could ever
    allocate (the planner's memory screen).

    Backends behind the PJRT C API (the CUDA and TPU plugins) refuse
    ``Lowered.cost_analysis``; there the same HLO module is analysed by the CPU
    backend's cost model (XLA's ``HloCostAnalysis``, as ``cost_analysis`` does
    elsewhere). A compiled program whose backend gives no analysis counts zero.
    """
    try:
        found = lowered.cost_analysis()
    except NotImplementedError:
        found = jax_compat.cost_on_cpu(lowered)
    if isinstance(found, (list, tuple)):  # older jax: one dict per computation
        found = found[0] if found else {}
    found = found or {}
    return Cost(float(found.get("flops", 0.0)), float(found.get("bytes accessed", 0.0)))


def nbytes(tree) -> int:
    """Bytes of a pytree of arrays or ``jax.ShapeDtypeStruct`` s."""
    return int(sum(math.prod(leaf.shape) * jax.numpy.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree.leaves(tree)))


def _abstract(avals) -> list:
    return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]


def _closed_cost(closed: jex.ClosedJaxpr, memo: dict) -> Cost:
    """XLA's count of a closed jaxpr lowered alone (its loops counted once)."""
    key = id(closed.jaxpr)
    if key not in memo:
        lowered = jax.jit(jex.jaxpr_as_fun(closed)).lower(*_abstract(closed.in_avals))
        memo[key] = (xla_numbers(lowered), closed)  # keep the jaxpr alive: ids stay unique
    return memo[key][0]


def _subjaxprs(params: dict):
    """The jaxprs in an equation's parameters (closed ones with their consts)."""
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, jex.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex.Jaxpr):
                yield item


def _loop_correction(jaxpr: jex.Jaxpr, memo: dict) -> Cost:
    """What XLA's count of ``jaxpr`` misses: each scan body's ``length - 1`` further trips."""
    extra = ZERO
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            body: jex.ClosedJaxpr = eqn.params["jaxpr"]
            length = int(eqn.params["length"])
            inner = _loop_correction(body.jaxpr, memo)
            once = _closed_cost(body, memo) if length != 1 else ZERO
            extra = extra + once * (length - 1) + inner * length
            continue
        if name == "while":
            extra = extra + Cost(0.0, 0.0, 1)
        for sub in _subjaxprs(eqn.params):
            extra = extra + _loop_correction(sub, memo)
    return extra


def loop_correction(fn: Callable, *args: Any) -> Cost:
    """What XLA's count of ``fn(*args)`` misses: every scan body's further trips."""
    return _loop_correction(jax.make_jaxpr(fn)(*args).jaxpr, {})


def lowered_cost(fn: Callable, *args: Any) -> Cost:
    """FLOPs and bytes of ``fn(*args)`` in XLA's cost model, loops counted over their trips.

    Args:
      fn: the program (not jitted, or jitted: it is traced either way).
      args: abstract arguments (``jax.ShapeDtypeStruct`` pytrees) or arrays.
    """
    return xla_numbers(jax.jit(fn).lower(*args)) + loop_correction(fn, *args)


def compiled_memory(lowered, *, fast: bool = False) -> tuple[Any, Memory]:
    """Compiles a lowered program → ``(executable, per-device Memory)`` (timing the compile).

    Args:
      fast: compile for the memory analysis only, at XLA's backend optimisation
        level 0 (same buffers, about half the time on CPU; the executable is not
        the one a run would use).
    """
    options = {"xla_backend_optimization_level": 0} if fast else None
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    if stats is None:  # a backend without the analysis: nothing known
        return compiled, Memory(0, 0, 0, 0, seconds)
    return compiled, Memory(int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes),
                            int(stats.temp_size_in_bytes), int(stats.alias_size_in_bytes), seconds)
