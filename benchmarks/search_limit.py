"""The least work of the cache-family grid search, and that limit in seconds on this machine.

``docs/performance.md`` ("The search at its limit") derives the model; here it
is counted for a shape and priced at rates measured in the same process:

* **matmul** -- the affinities ``f Fᵀ`` (M·C·K·d multiply-adds, ``d`` the channels
  the affinity uses: D, or APE's k) and the zero-shot logits (M·C·D);
* **exponentials** -- two per affinity (``exp(-β_0 x)`` and the ratio
  ``exp(-δ x)``; every further β is a product);
* **multiply-adds** -- one per (β, value point, shot, row, class): each term of
  each class sum enters once; plus the products that form the terms' factors
  (Tip-Adapter: the 2√nβ slabs ``U_a``, ``W_j``; APE: one product per (β, shot)
  to form the terms its value points reuse);
* **compares** -- one per residual value (β, value point, row, class): every
  class must be looked at once per point to know whether it beats the label;
  the linear α needs no further pass over the classes (one comparison per α);
* **bytes** -- the inputs once: validation features, cache keys, text classifier.

Rates: the float32 matmul and the elementwise multiply-add and ``exp``
throughputs XLA reaches here (each the best of a few in-cache micro-benchmarks),
and the read bandwidth of a large array. Arithmetic shares the vector units, so
the limit adds the compute parts; memory traffic overlaps them:
``limit = max(matmul + exps + multiply-adds + compares, bytes / bandwidth)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxclip_fs.engine.hardware import _best_time, calibrate

__all__ = ["Rates", "Work", "measure_rates", "cache_search_work"]


@dataclasses.dataclass(frozen=True)
class Rates:
    """This machine's measured throughputs (per second).

    Attributes:
      matmul_flops: float32 matmul FLOP/s (2 per multiply-add).
      fma: elementwise multiply-adds per second (XLA, data in cache).
      exp: elementwise ``exp`` per second (XLA, data in cache).
      read_bytes: bytes per second read from a large array.
    """

    matmul_flops: float
    fma: float
    exp: float
    read_bytes: float

    def at_matmul_peak(self) -> "Rates":
        """These rates with the elementwise multiply-adds at the matmul's rate (the FMA
        units' peak: what a hand-written kernel could reach; XLA's elementwise code does not)."""
        return dataclasses.replace(self, fma=max(self.fma, self.matmul_flops / 2))

    def line(self) -> str:
        return (f"rates: matmul {self.matmul_flops / 1e9:.0f} GFLOP/s, elementwise "
                f"multiply-add {self.fma / 1e9:.1f} G/s, exp {self.exp / 1e9:.2f} G/s, "
                f"read {self.read_bytes / 1e9:.1f} GB/s")


@dataclasses.dataclass(frozen=True)
class Work:
    """The least work of one search (module docstring), as counts.

    Attributes:
      matmul: multiply-adds in matrix products; exps: exponentials;
      fma: elementwise multiply-adds and products; compares: comparisons;
      bytes: bytes read once.
    """

    matmul: float
    exps: float
    fma: float
    compares: float
    bytes: float

    def seconds(self, rates: Rates) -> float:
        """The limit at ``rates``: compute parts added, memory overlapped."""
        compute = (2 * self.matmul / rates.matmul_flops + self.exps / rates.exp
                   + (self.fma + self.compares) / rates.fma)
        return max(compute, self.bytes / rates.read_bytes)

    def parts(self, rates: Rates) -> str:
        """Each part's count and seconds, one line."""
        return (f"matmul {self.matmul / 1e9:.1f} G multiply-adds "
                f"({2 * self.matmul / rates.matmul_flops * 1e3:.0f} ms), "
                f"exp {self.exps / 1e6:.0f} M ({self.exps / rates.exp * 1e3:.0f} ms), "
                f"multiply-add {self.fma / 1e9:.2f} G ({self.fma / rates.fma * 1e3:.0f} ms), "
                f"compare {self.compares / 1e9:.2f} G ({self.compares / rates.fma * 1e3:.0f} ms), "
                f"bytes {self.bytes / 1e6:.0f} MB ({self.bytes / rates.read_bytes * 1e3:.0f} ms)")


def cache_search_work(rows: int, classes: int, shots: int, dim: int, nbeta: int,
                      values: int = 1, affinity_dim: int | None = None) -> Work:
    """The least work of a cache-family search (module docstring).

    Args:
      rows: validation rows M; classes: C; shots: K; dim: feature width D.
      nbeta: points of the β grid; values: value points per β (APE's γ; 1: plain).
      affinity_dim: channels of the affinity (APE's k; default D).
    """
    entries = rows * classes * shots
    affinity_dim = dim if affinity_dim is None else affinity_dim
    matmul = entries * affinity_dim + rows * classes * dim
    if values == 1:  # R[a, j] = Σ_k U_a W_j: one multiply-add per term, 2√nβ factor slabs
        fma = entries * (nbeta + 2 * math.ceil(math.sqrt(nbeta)))
    else:  # E_β = U_a W_j once per (β, shot), then Σ_k E_β v_g per value point
        fma = entries * nbeta * (values + 1)
    compares = rows * classes * nbeta * values
    bytes_ = 4 * (rows * dim + classes * shots * dim + classes * dim)
    return Work(matmul, 2 * entries, fma, compares, bytes_)


def _best_seconds(fn, *args) -> float:
    return _best_time(fn, *args, repeats=5)


def _elementwise_rate(op, per_element: int, size: int = 2**18, steps: int = 64) -> float:
    """Operations per second of ``op`` (``per_element`` per element) on an in-cache array."""
    x = jnp.linspace(0.5, 1.0, size, dtype=jnp.float32)

    def run(v):
        return lax.fori_loop(0, steps, lambda i, v: op(v), v)

    return per_element * size * steps / _best_seconds(jax.jit(run), x)


def _fma_chains(v, chains=4, length=16):
    """``chains`` independent multiply-add chains per element, summed."""
    outs = []
    for c in range(chains):
        w = v
        for _ in range(length):
            w = w * (0.999 - 0.001 * c) + 0.0005
        outs.append(w)
    return sum(outs) * (1.0 / chains)


def _exps(v, count=8):
    return sum(jnp.exp(v * (-0.5 - 0.1 * c)) for c in range(count)) * (1.0 / count) + 0.5


def measure_rates() -> Rates:
    """Measures :class:`Rates` now (a few seconds); each the best of its variants."""
    peak = calibrate("float32")
    fma = max(_elementwise_rate(lambda v: _fma_chains(v, 1, 32), 32),
              _elementwise_rate(lambda v: _fma_chains(v, 4, 16), 64 + 4),
              _elementwise_rate(lambda v: _fma_chains(v, 8, 8), 64 + 8))
    exp = max(_elementwise_rate(lambda v: _exps(v, 4), 4), _elementwise_rate(_exps, 8))
    big = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB, read once per call
    read = 4.0 * big.size / _best_seconds(jax.jit(jnp.sum), big)
    return Rates(peak.flops_per_s, fma, exp, max(read, peak.bytes_per_s))
