"""Vectorised hyperparameter search on a validation set: the whole grid in one call.

The official code loops over every grid point in Python and recomputes the
same matrix products each time (Tip-Adapter 200 x 20, APE 200 x 20 x 20).
Here, for a method with ``logits = base + Σ_h h · residual_h``
(``Method.terms``):

1. ``precompute`` runs once (zero-shot logits, affinities, KL terms);
2. ``terms`` runs once per point of the *non-linear* grid. The last
   non-linear name in loop order (APE's γ, Tip-Adapter's β) is ``jax.vmap`` ped
   in memory-bounded chunks (``lax.map`` with ``batch_size``), the others
   are scanned; work that does not depend on the vmapped value (APE's
   ``exp(-β (1 - A))`` for all γ) is therefore done once;
3. the *linear* names are scored without forming logits point by point:
   for ``logits = b + α r`` the label wins exactly for α in an interval
   ``(lo, hi)`` found in one pass over the classes (argmax ties go to the
   lower class index, as ``argmax`` does), so all α values of the grid cost
   one comparison each. Further linear names (Tip-X's γ) are enumerated and
   folded into ``b``.

Methods that declare their logits as an exponential-affinity cache
(``Compute.cache_form``: Tip-Adapter, APE, TA++, Tip-X and their trained
variants) take a faster path when β and α are searched:
:mod:`~jaxclip_fs.methods.cache_search` shares the exponentials across the
equally spaced β grid and scores α without dividing per grid point.

Accuracies are integer counts of correct rows, laid out in the official loop
order (``Method.grid`` key order, outermost first), and the winner is the
first maximum in that order -- the point the official ``if acc > best_acc``
loop keeps. In exact arithmetic the counts are those of evaluating every
point's logits; in float32 a row may differ only if a grid value lies within
rounding of its decision boundary. Everything is a pure function of arrays:
``jax.jit`` it, or ``jax.vmap`` it over tasks.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxclip_fs.methods import cache_search
from jaxclip_fs.methods.base import Method
from jaxclip_fs.methods.cache import MASKED_LOGIT, SCALE, SHARPNESS, mask_logits
from jaxclip_fs.methods.task import EvalSet, Task

DEFAULT_MEMORY_BYTES = 512 * 2**20
_FLOAT_BYTES = 4


def correct_count(logits: jax.Array, evalset: EvalSet) -> jax.Array:
    """Number of real rows whose argmax (first maximum) is the label → int32 []."""
    hit = (jnp.argmax(logits, axis=-1) == evalset.labels) & (evalset.mask > 0)
    return jnp.sum(hit, dtype=jnp.int32)


def accuracy(logits: jax.Array, evalset: EvalSet) -> jax.Array:
    """Top-1 accuracy in percent over the real rows."""
    return 100.0 * correct_count(logits, evalset) / jnp.sum(evalset.mask)


def search_order(method: Method, grid: Mapping[str, jax.Array]) -> tuple[str, ...]:
    """The names of ``grid`` in the method's official loop order (outermost first).

    (Pytrees sort dict keys, so the order is taken from ``Method.grid``,
    never from the dict passed in.)
    """
    official = tuple(method.grid(None))
    unknown = sorted(set(grid) - set(official))
    if unknown:
        raise ValueError(f"method '{method.name}' does not search {unknown}")
    return tuple(name for name in official if name in grid)


def _cartesian(axes: Sequence[jax.Array]) -> jax.Array:
    """All combinations, first axis outermost → [Π len, len(axes)] (float32)."""
    if not axes:
        return jnp.zeros((1, 0), jnp.float32)
    mesh = jnp.meshgrid(*[jnp.asarray(a, jnp.float32) for a in axes], indexing="ij")
    return jnp.stack([m.reshape(-1) for m in mesh], axis=-1)


def interval_counts(base: jax.Array, residual: jax.Array, values: jax.Array, evalset: EvalSet,
                    class_mask: jax.Array) -> jax.Array:
    """Correct counts of ``argmax(base + v · residual)`` for every ``v`` in ``values``.

    Row m is right iff for every class c ≠ y: ``Δb + v Δr > 0`` when c < y
    (an earlier class wins ties) and ``≥ 0`` when c > y, with
    ``Δb = b_y - b_c``, ``Δr = r_y - r_c``. Each class bounds v from below
    (``Δr > 0``) or above (``Δr < 0``) by ``t = -Δb / Δr``, or is a constant
    condition (``Δr = 0``). Non-strict bounds become strict ones on the
    neighbouring float (``v ≥ t  ⇔  v > nextafter(t, -inf)``), so a row needs
    one max and one min over the classes: ``lo < v < hi``.

    Args:
      base, residual: [M, C]; values: [L]; padding classes are masked here.

    Returns:
      int32 [L].
    """
    b = jnp.where(class_mask > 0, base, MASKED_LOGIT)
    r = jnp.where(class_mask > 0, residual, 0.0)
    label = evalset.labels[:, None]
    db = jnp.take_along_axis(b, label, axis=1) - b
    dr = jnp.take_along_axis(r, label, axis=1) - r
    earlier = jnp.arange(b.shape[-1]) < label
    bound = -db / jnp.where(dr == 0, 1.0, dr)
    # the label's own column has Δb = Δr = 0 and a satisfied constant condition
    flat = jnp.where(jnp.where(earlier, db > 0, db >= 0), -jnp.inf, jnp.inf)
    lower = jnp.where(dr > 0, jnp.where(earlier, bound, jnp.nextafter(bound, -jnp.inf)), flat)
    upper = jnp.where(dr < 0, jnp.where(earlier, bound, jnp.nextafter(bound, jnp.inf)), jnp.inf)
    lo = jnp.max(lower, axis=-1, keepdims=True)
    hi = jnp.min(upper, axis=-1, keepdims=True)
    v = values[None, :]
    hit = (v > lo) & (v < hi) & (evalset.mask[:, None] > 0)
    return jnp.sum(hit, axis=0, dtype=jnp.int32)


def _score_linear(method, base, residuals, hp, grid, searched, task, evalset, chunk):
    """Counts for every combination of the ``searched`` linear names → [Π len(grid[n])].

    The name with the longest grid is scored by :func:`interval_counts`; the
    others are enumerated (in chunks) and folded into the base.
    """
    for name in method.linear:
        if name not in searched:  # fixed by the user
            base = base + hp[name] * residuals[name]
    if not searched:
        return correct_count(mask_logits(base, task.class_mask), evalset)[None]
    swept = max(searched, key=lambda n: (grid[n].shape[0], searched.index(n)))
    folded = tuple(n for n in searched if n != swept)

    def count(coefs):  # [len(folded)] values of the folded names
        total = base
        for i, name in enumerate(folded):
            total = total + coefs[i] * residuals[name]
        return interval_counts(total, residuals[swept], grid[swept], evalset, task.class_mask)

    if folded:  # (a loop only when there is something to enumerate: loops nest slowly on CPU)
        combos = _cartesian([grid[n] for n in folded])
        counts = jax.lax.map(count, combos, batch_size=chunk)  # [F, S]
    else:
        counts = count(())[None]
    layout = folded + (swept,)
    counts = counts.reshape([grid[n].shape[0] for n in layout])
    return jnp.transpose(counts, [layout.index(n) for n in searched]).reshape(-1)


def _cache_counts(method, params, task, evalset, hp, grid, order, pre) -> jax.Array:
    """Counts in official order by :func:`cache_search.grid_counts` (``Compute.cache_form``)."""
    values_names = tuple(n for n in order if n not in method.linear and n != SHARPNESS)
    folded = tuple(n for n in order if n in method.linear and n != SCALE)
    cache_search.check_grid(grid[SHARPNESS], grid[SCALE])
    point = {**hp, **{n: grid[n][0] for n in order}}
    form = method.compute.cache_form(pre, params, task, point)
    base = form.base
    for name, residual in form.others.items():
        if name not in grid:  # fixed by the user
            base = base + hp[name] * residual

    def values_at(coords):
        at = {**point, **dict(zip(values_names, coords))}
        return method.compute.cache_form(pre, params, task, at).values

    values = jax.vmap(values_at)(_cartesian([grid[n] for n in values_names]))   # [G, C, K]
    others = (jnp.stack([form.others[n] for n in folded]) if folded
              else jnp.zeros((0,) + base.shape, base.dtype))
    counts = cache_search.grid_counts(base, form.affinity, values, others,
                                      _cartesian([grid[n] for n in folded]), evalset.labels,
                                      evalset.mask, task.class_mask, grid[SHARPNESS], grid[SCALE])
    layout = folded + (SHARPNESS,) + values_names + (SCALE,)
    counts = counts.reshape([grid[n].shape[0] for n in layout])
    return jnp.transpose(counts, [layout.index(n) for n in order])


def grid_search(method: Method, params, task: Task, evalset: EvalSet, hp: Mapping[str, jax.Array],
                grid: Mapping[str, jax.Array], *, pre=None,
                memory_bytes: int = DEFAULT_MEMORY_BYTES, use_cache_form: bool = True) -> dict:
    """Scores every point of ``grid`` on ``evalset``; picks the first best in official order.

    Args:
      method: the method.
      params: its fitted params (``init`` / trained).
      task: the few-shot task.
      evalset: validation rows (masked rows are ignored).
      hp: values of every hyperparameter not searched (scalars).
      grid: name -> 1-D array of candidate values, for the names to search.
      pre: ``method.precompute`` of ``evalset``, if already computed.
      memory_bytes: rough bound on the working set of one chunk (static; the
        cache path works on cache-sized tiles whatever it says).
      use_cache_form: take :mod:`cache_search`'s path where the method declares
        a cache form (False: ``terms`` per non-linear point, for comparisons).

    Returns:
      dict with ``best`` (name -> value), ``index`` (name -> int index into
      its grid), ``counts`` (int32 correct rows, shaped by the grids in
      official order), ``accuracy`` (best, in %).
    """
    order = search_order(method, grid)
    grid = {n: jnp.asarray(grid[n], jnp.float32) for n in order}
    if pre is None:
        pre = method.precompute(params, task, evalset.features, evalset.mask)
    if use_cache_form and cache_search.applies(method, grid):
        counts = _cache_counts(method, params, task, evalset, hp, grid, order, pre)
    else:
        counts = _generic_counts(method, params, task, evalset, hp, grid, order, pre,
                                 memory_bytes)
    index = jnp.unravel_index(jnp.argmax(counts.reshape(-1)), counts.shape)
    return {
        "best": {n: grid[n][index[i]] for i, n in enumerate(order)},
        "index": {n: index[i] for i, n in enumerate(order)},
        "counts": counts,
        "accuracy": 100.0 * jnp.max(counts) / jnp.sum(evalset.mask),
    }


def _generic_counts(method, params, task, evalset, hp, grid, order, pre, memory_bytes):
    """Counts in official order: ``terms`` once per non-linear point (module docstring)."""
    nonlinear = tuple(n for n in order if n not in method.linear)
    linear = tuple(n for n in order if n in method.linear)
    rows = evalset.labels.shape[0]
    num_classes, shots = task.support_mask.shape
    per_logits = _FLOAT_BYTES * rows * num_classes
    # The vmapped name is assumed to touch [K, M, C] per value when it is the
    # only non-linear name (β), and [M, C] when outer names are scanned (APE's γ).
    per_point = 3 * per_logits * (shots if len(nonlinear) == 1 else 1)
    inner_chunk = max(1, memory_bytes // 2 // per_point)
    folded_chunk = max(1, memory_bytes // 2 // (inner_chunk * 4 * per_logits))

    def score(point):  # name -> scalar, for every non-linear name
        base, residuals = method.terms(pre, params, task, {**hp, **point})
        return _score_linear(method, base, residuals, hp, grid, linear, task, evalset, folded_chunk)

    if nonlinear:
        outer, inner = nonlinear[:-1], nonlinear[-1]
        # One scan over (outer point, chunk of inner values), vmapping inside
        # the chunk (nested loops run far slower on XLA:CPU).
        num_inner = grid[inner].shape[0]
        inner_chunk = min(inner_chunk, num_inner)
        num_chunks = -(-num_inner // inner_chunk)
        extra = jnp.repeat(grid[inner][-1:], num_chunks * inner_chunk - num_inner)
        padded = jnp.concatenate([grid[inner], extra])
        outer_points = _cartesian([grid[n] for n in outer])
        items = (jnp.repeat(outer_points, num_chunks, axis=0),
                 jnp.tile(padded.reshape(num_chunks, inner_chunk), (outer_points.shape[0], 1)))

        def score_chunk(item):
            fixed = dict(zip(outer, item[0]))
            if inner_chunk == 1:  # no size-1 batch axis: XLA:CPU parallelises the leading axis
                return score({**fixed, inner: item[1][0]})[None]
            return jax.vmap(lambda v: score({**fixed, inner: v}))(item[1])

        counts = jax.lax.map(score_chunk, items)  # [P_outer · chunks, chunk, L]
        counts = counts.reshape(outer_points.shape[0], num_chunks * inner_chunk, -1)[:, :num_inner]
    else:
        counts = score({})
    canonical = nonlinear + linear
    counts = counts.reshape([grid[n].shape[0] for n in canonical])
    return jnp.transpose(counts, [canonical.index(n) for n in order])
