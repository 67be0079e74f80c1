"""The machine a run plans for: its devices' memory, whether they run cells side by side,
its measured speed -- and published peak figures of accelerators, for estimates.

* :func:`device_memory` -- bytes one device may hold: ``$JAXCLIP_FS_DEVICE_MEMORY``
  (e.g. ``16GiB``, ``512MiB``, ``2e9``; for tests and for planning a bigger
  machine), else the device's ``memory_stats()["bytes_limit"]`` (GPU, TPU),
  else -- CPU devices share the host -- physical memory over the number of
  local CPU devices.
* :func:`cells_in_parallel` -- a program's cells run side by side on
  accelerators (the vmapped cell axis fills the chip), one after another on a
  CPU whose cores one cell already saturates; ``$JAXCLIP_FS_CELLS_IN_PARALLEL``
  (``1`` / ``0``) overrides.
* :func:`calibrate` -- this machine's achieved FLOP/s (a large matmul) and
  memory bandwidth (a large elementwise pass), measured in a fraction of a
  second; the denominators of the benchmarks' fractions of peak and of the
  dry run's time estimates.
* :data:`ACCELERATORS` -- published peak FLOP/s, HBM bandwidth and memory of
  a few accelerator kinds, each with its source. These are vendors' peak
  figures (dense, no sparsity): a program's time at them is a lower bound,
  an *estimate*, never a measurement. :func:`published` finds a device's entry.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time

import jax
import jax.numpy as jnp

from jaxclip_fs.errors import ConfigError

MEMORY_ENV = "JAXCLIP_FS_DEVICE_MEMORY"
PARALLEL_ENV = "JAXCLIP_FS_CELLS_IN_PARALLEL"
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str, what: str = MEMORY_ENV) -> int:
    """``"16GiB"`` / ``"512MB"`` / ``"2e9"`` -> bytes.

    Raises:
      ConfigError: not a size (names ``what``).
    """
    found = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = found.group(2).lower() if found else None
    if not found or unit not in _UNITS:
        raise ConfigError(f"{what} must be a size such as 16GiB, 512MiB or 2e9, got '{text}'")
    return int(float(found.group(1)) * _UNITS[unit])


def device_memory(device: jax.Device | None = None) -> tuple[int, str]:
    """``(bytes, where the figure comes from)`` one device may hold (module docstring)."""
    given = os.environ.get(MEMORY_ENV)
    if given:
        return parse_bytes(given), f"${MEMORY_ENV}"
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without the call
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.platform} memory_stats bytes_limit"
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    sharing = max(1, sum(d.platform == device.platform for d in jax.local_devices()))
    note = "host memory" + (f" / {sharing} CPU devices" if sharing > 1 else "")
    return host // sharing, note


def cells_in_parallel(platform: str) -> bool:
    """Do a program's cells run side by side on this platform (module docstring)?"""
    given = os.environ.get(PARALLEL_ENV)
    if given is not None and given.strip():
        if given.strip() not in ("0", "1"):
            raise ConfigError(f"${PARALLEL_ENV} must be 0 or 1, got '{given}'")
        return given.strip() == "1"
    return platform != "cpu"


@dataclasses.dataclass(frozen=True)
class Calibration:
    """This machine's measured speed (one device).

    Attributes:
      flops_per_s: a large ``dtype`` matmul's FLOPs / its best time.
      bytes_per_s: bytes read and written by a large elementwise pass / its best time.
      dtype: the matmul's dtype. platform, device_kind: what was measured.
      matmul: the matmul's size n (n x n times n x n).
    """

    flops_per_s: float
    bytes_per_s: float
    dtype: str
    platform: str
    device_kind: str
    matmul: int

    def seconds(self, flops: float, bytes_accessed: float) -> float:
        """A roofline estimate: the slower of compute and memory traffic at these rates."""
        return max(flops / self.flops_per_s, bytes_accessed / self.bytes_per_s)


def _best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile, warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=8)
def calibrate(dtype: str = "float32", size: int | None = None, repeats: int = 3) -> Calibration:
    """Measures the first device's matmul FLOP/s and elementwise bandwidth (cached per process).

    Args:
      dtype: the matmul's dtype (the programs' own: float32, or bfloat16).
      size: matmul size n (default 2048 on CPU, 8192 on accelerators).
      repeats: timed runs after a warm-up; the best counts.
    """
    device = jax.local_devices()[0]
    n = size or (2048 if device.platform == "cpu" else 8192)
    a = jax.device_put(jnp.full((n, n), 0.5, jnp.dtype(dtype)), device)
    b = jax.device_put(jnp.full((n, n), 0.25, jnp.dtype(dtype)), device)
    matmul = jax.jit(lambda x, y: x @ y)
    flops = 2.0 * n ** 3 / _best_time(matmul, a, b, repeats=repeats)
    elements = (64 if device.platform == "cpu" else 512) * 2**20 // 4
    x = jax.device_put(jnp.ones((elements,), jnp.float32), device)
    scale = jax.jit(lambda v: v * 1.0001 + 1.0)
    bandwidth = 2.0 * 4 * elements / _best_time(scale, x, repeats=repeats)
    return Calibration(flops, bandwidth, str(jnp.dtype(dtype)), device.platform,
                       device.device_kind, n)


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """Published peak figures of one accelerator (dense; no sparsity).

    Attributes:
      name: the kind. fp32_flops: float32 (non-tensor-core on GPUs) FLOP/s, or
        None where the vendor publishes none. bf16_flops: bfloat16 matrix FLOP/s.
      hbm_bytes_per_s: memory bandwidth. memory_bytes: memory per chip.
      source: where the figures are published.
    """

    name: str
    fp32_flops: float | None
    bf16_flops: float
    hbm_bytes_per_s: float
    memory_bytes: int
    source: str

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s for programs in ``dtype``. On TPUs, XLA runs float32 matmuls at its
        default precision as bfloat16 passes, so their bf16 peak is the one that applies."""
        if dtype == "bfloat16" or self.fp32_flops is None:
            return self.bf16_flops
        return self.fp32_flops

    def seconds(self, flops: float, bytes_accessed: float, dtype: str = "float32") -> float:
        """A roofline lower bound: the slower of compute and HBM traffic at peak."""
        return max(flops / self.flops(dtype), bytes_accessed / self.hbm_bytes_per_s)


_T, _G = 1e12, 1e9
#: Published peak figures (estimates only; module docstring).
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("NVIDIA H100 SXM", 67 * _T, 989 * _T, 3350 * _G, 80 * 10**9,
                "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): "
                "FP32 67 TFLOPS, BF16 Tensor Core 1,979 TFLOPS with sparsity (989 dense), "
                "80 GB HBM3 at 3.35 TB/s"),
    Accelerator("NVIDIA H200 SXM", 67 * _T, 989 * _T, 4800 * _G, 141 * 10**9,
                "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200): "
                "FP32 67 TFLOPS, BF16 Tensor Core 1,979 TFLOPS with sparsity (989 dense), "
                "141 GB HBM3e at 4.8 TB/s"),
    Accelerator("NVIDIA A100 SXM 80GB", 19.5 * _T, 312 * _T, 2039 * _G, 80 * 10**9,
                "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100): "
                "FP32 19.5 TFLOPS, BF16 Tensor Core 312 TFLOPS (624 with sparsity), "
                "80 GB HBM2e at 2,039 GB/s"),
    Accelerator("Google TPU v4", None, 275 * _T, 1200 * _G, 32 * 2**30,
                "Google Cloud TPU v4 documentation (cloud.google.com/tpu/docs/v4): 275 "
                "TFLOPS bf16 peak per chip, 32 GiB HBM2 at 1,200 GB/s"),
    Accelerator("Google TPU v5e", None, 197 * _T, 819 * _G, 16 * 2**30,
                "Google Cloud TPU v5e documentation (cloud.google.com/tpu/docs/v5e): 197 "
                "TFLOPS bf16 peak per chip, 16 GiB HBM2 at 819 GB/s"),
)


#: Substrings of a ``Device.device_kind`` -> the :data:`ACCELERATORS` entry whose figures
#: apply (first match wins). PCIe and NVL boards run at other clocks and power: not matched.
DEVICE_KINDS = (("H200", "NVIDIA H200 SXM"), ("H100", "NVIDIA H100 SXM"),
                ("A100", "NVIDIA A100 SXM 80GB"), ("TPU v4", "Google TPU v4"),
                ("TPU v5 lite", "Google TPU v5e"), ("TPU v5e", "Google TPU v5e"))


def published(device_kind: str) -> Accelerator | None:
    """The :data:`ACCELERATORS` entry of a device kind (``jax.devices()[0].device_kind``, e.g.
    ``"NVIDIA H100 80GB HBM3"``, ``"TPU v5 lite"``), or None when none applies."""
    if "PCIe" in device_kind or "NVL" in device_kind:
        return None
    by_name = {a.name: a for a in ACCELERATORS}
    for needle, name in DEVICE_KINDS:
        if needle in device_kind:
            return by_name[name]
    return None
