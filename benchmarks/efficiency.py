"""Achieved FLOP/s as a fraction of this machine's measured peak, for the speed benchmarks.

A benchmark's program is counted by XLA (``jax.jit(fn).lower(...)``'s cost
analysis, loops counted over their trip counts:
:func:`jaxclip_fs.engine.cost.lowered_cost`); divided by its measured time it
gives the achieved FLOP/s, reported as a fraction of the peak measured in the
same process -- a large matmul of the same dtype
(:func:`jaxclip_fs.engine.hardware.calibrate`).
"""

from __future__ import annotations

from jaxclip_fs.engine.cost import lowered_cost
from jaxclip_fs.engine.hardware import Calibration, calibrate

__all__ = ["count_flops", "measured_peak", "fraction"]


def count_flops(fn, *args) -> float:
    """XLA's FLOPs of ``fn(*args)`` (loops counted over their trips)."""
    return lowered_cost(fn, *args).flops


def measured_peak(dtype: str = "float32") -> Calibration:
    """This machine's matmul FLOP/s (and bandwidth), measured now."""
    return calibrate(dtype)


def fraction(label: str, flops: float, seconds: float, peak: Calibration) -> str:
    """One line: achieved GFLOP/s and its share of the measured peak."""
    achieved = flops / seconds
    return (f"{label}: {flops / 1e9:.3g} GFLOP (XLA) in {seconds:.3g} s = {achieved / 1e9:.2f} "
            f"GFLOP/s = {100 * achieved / peak.flops_per_s:.1f}% of this machine's measured peak "
            f"({peak.flops_per_s / 1e9:.1f} GFLOP/s, {peak.matmul}x{peak.matmul} {peak.dtype} "
            f"matmul on {peak.platform})")
