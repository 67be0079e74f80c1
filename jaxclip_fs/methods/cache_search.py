"""The grid search of the exponential-affinity cache family, at its least-work limit.

Tip-Adapter, APE, APE-T, TA++, Tip-X and TX++ declare their logits in one
form (``Compute.cache_form``, :class:`~jaxclip_fs.methods.cache.CacheForm`)::

    logits[m, c] = b[m, c] + α · Σ_k exp(-β (1 - A[k, m, c])) · v[c, k] + Σ_h h · r_h[m, c]

with ``v`` possibly depending on further non-linear names (APE's
``v = L ⊙ exp(γ · KL)``) and ``r_h`` on none. On this form the search needs
far less than one evaluation of ``terms`` per (β, γ) point
(``docs/performance.md``, "The search at its limit"):

1. **Exponentials.** The β grid is equally spaced, ``β_i = β_0 + i δ``, so
   with ``x = 1 - A`` and ``i = a J + j``,
   ``exp(-β_i x) = U_a · W_j``, ``U_a = exp(-β_0 x) · (z^J)^a``,
   ``W_j = z^j``, ``z = exp(-δ x)``: two exponentials per affinity, then
   products (integer powers of two short stacks, :func:`_power_stacks`;
   ``z^i`` carries about ``i`` roundings of ``z``).
2. **Class sums.** The cache values are per class (class-major support),
   so ``Σ_k`` is a segment sum over the K shots of each class -- no product
   with the one-hot label matrix: plain values (Tip-Adapter) give
   ``R[j, a] = Σ_k W_j U_a`` (the values folded into ``U``), value points
   (APE's γ) ``R[j, g] = Σ_k (U_a W_j) v_g`` in a loop over a -- one
   multiply-add per term, on class tiles of :data:`CLASS_TILE` that stay in
   the L1 cache while their points are summed.
3. **α, without logits.** ``α ≥ 0`` (``hparams.ALPHA``), and row m is right
   at α iff every class c satisfies ``Δb + α Δr ≥ 0`` (``Δb = b_y - b_c``,
   ``Δr = R_y - R_c``, strict for classes before the label: argmax keeps the
   first maximum). Dividing by ``Δb`` once per (row, class) -- not per grid
   point -- leaves two minima per (row, β, γ) over the classes:
   ``g = min_{Δb>0} Δr/Δb`` and ``h = min_{Δb<0} Δr/|Δb|``; then the row is
   right at α iff ``1 + α g > 0`` and ``α h ≥ 1`` (``h = +∞``: no class ahead
   in ``b``), one comparison per α. Exact ties of ``b`` (``Δb = 0``: e.g. two
   classes with the same text embedding) follow the first-index rule: the
   class is treated as ``Δb = ±ε`` with the sign argmax's tie rule gives it.
   Folded linear names (Tip-X's γ) are enumerated into ``b``.

Agreement with evaluating every point's logits: the same up to float
rounding -- ``z^j`` and ``Δr/Δb`` round differently from ``b + α R``, so a
row whose label is within rounding of a decision boundary may flip;
where that changes the chosen point, the two points' accuracies are within
one validation image (tested in ``tests/test_search.py``). Requires an
equally spaced β grid (every method's grid is: ``hparams.official_grid`` and
``np.linspace``): checked when the grid is concrete; inside ``jit`` a grid
that is not gives counts of -1.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxclip_fs.methods.cache import MASKED_LOGIT, SCALE, SHARPNESS

#: Classes per tile (``c = tile · CLASS_TILE + lane``): two 8-wide vectors; a tile's
#: factors stay in the L1 cache while its points are summed.
CLASS_TILE = 16
#: Bytes of one block's kept factors (about the L2 cache of a core).
TILE_BYTES = 2 * 2**20
#: Independent partial sums over the shots in :func:`_contract`.
_CHAINS = 4
#: Stand-in for ``1/|Δb|`` where ``Δb = 0`` (an exact tie of the base logits).
_TIE = 3e38
#: Relative tolerance of the equal-spacing check of the β grid.
_SPACING_RTOL = 1e-4


def applies(method, grid: Mapping[str, jax.Array]) -> bool:
    """Does the fast path serve this search (a cache form, β and α both searched)?"""
    return method.compute.cache_form is not None and SHARPNESS in grid and SCALE in grid


def _split(n: int) -> tuple[int, int]:
    """``n = n1 · n2`` with ``n1`` the largest divisor ≤ √n."""
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def _factors(nbeta: int) -> tuple[int, int]:
    """``(Na, J)``: ``Na · J ≥ nβ`` points (few padded) with the fewest slabs to build --
    ``Na + J`` factors and the short stacks of :func:`_powers` -- and ``J ≥ Na`` (``W_j`` is
    formed once per (tile, row, j) and reused; ``U`` is built, or looped over)."""
    best = None
    for num_j in range(1, nbeta + 1):
        num_a = -(-nbeta // num_j)
        slabs = num_a + num_j + sum(_split(num_a)) + sum(_split(num_j))
        key = (num_a * num_j - nbeta > max(1, nbeta // 16), slabs, num_a * num_j)
        if num_j >= num_a and (best is None or key < best[0]):
            best = (key, (num_a, num_j))
    return best[1]


def _power_stacks(z: jax.Array, n: int, axis: int, never: jax.Array):
    """``(high, low)``: ``(z^n2)^i`` (i < n1) and ``z^j`` (j < n2) on a new ``axis``, kept,
    with ``n = n1 n2``; :func:`_product` of the two is ``z^0 .. z^(n-1)``."""
    n1, n2 = _split(n)
    low = jnp.stack([lax.integer_pow(z, j) for j in range(n2)], axis)
    step = lax.integer_pow(z, n2)
    high = jnp.stack([lax.integer_pow(step, i) for i in range(n1)], axis)
    return _kept((high, low), never)


def _product(high: jax.Array, low: jax.Array, axis: int) -> jax.Array:
    """``high[i] · low[j]`` at ``n2 i + j`` on ``axis`` (an expression: fused where used)."""
    out = jnp.expand_dims(high, axis + 1) * jnp.expand_dims(low, axis)
    shape = high.shape[:axis] + (high.shape[axis] * low.shape[axis],) + high.shape[axis + 1:]
    return out.reshape(shape)


def _powers(z: jax.Array, n: int, axis: int, never: jax.Array) -> jax.Array:
    """``z^0 .. z^(n-1)`` on a new ``axis``: two short kept stacks of integer powers, then
    one product per element."""
    return _product(*_power_stacks(z, n, axis, never), axis)


def _kept(tree, never: jax.Array):
    """``tree``, computed once here: XLA fuses a cheap producer into each consumer (a
    threshold or factor would be recomputed for every grid point); the output of a loop
    it cannot see the trip count of (``never``: 0 at run time; the body keeps the values
    anyway) is a buffer."""
    def same(i, t):
        return jax.tree.map(lambda x: x * (1.0 + 0.0 * i.astype(x.dtype))
                            if jnp.issubdtype(x.dtype, jnp.floating) else x, t)

    return lax.fori_loop(0, never, same, tree)


def _spacing(betas: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(β_0, δ, ok)``: start, step and whether ``β_i = β_0 + i δ`` within tolerance."""
    n = betas.shape[0]
    start = betas[0]
    step = (betas[-1] - betas[0]) / (n - 1) if n > 1 else jnp.zeros_like(start)
    fitted = start + jnp.arange(n, dtype=betas.dtype) * step
    scale = jnp.maximum(jnp.max(jnp.abs(betas)), 1e-30)
    ok = jnp.max(jnp.abs(fitted - betas)) <= _SPACING_RTOL * scale
    return start, step, ok


def check_grid(betas, alphas) -> None:
    """Raises ValueError for a concrete β grid that is not equally spaced or a concrete α
    grid with a negative value (traced grids are not looked at).

    Raises:
      ValueError: naming the grid and its values.
    """
    if not isinstance(betas, jax.core.Tracer):
        betas = np.asarray(betas, np.float64)
        fitted = np.linspace(betas[0], betas[-1], betas.shape[0])
        if np.max(np.abs(fitted - betas)) > _SPACING_RTOL * max(np.max(np.abs(betas)), 1e-30):
            raise ValueError(f"the {SHARPNESS} grid of the cache search must be equally "
                             f"spaced, got {betas.tolist()}")
    if not isinstance(alphas, jax.core.Tracer) and np.any(np.asarray(alphas) < 0):
        raise ValueError(f"the {SCALE} grid of the cache search must be non-negative, "
                         f"got {np.asarray(alphas).tolist()}")


def _thresholds(base: jax.Array, labels: jax.Array) -> tuple[jax.Array, ...]:
    """Per (row, class): ``1/Δb`` for classes the label leads (``Δb > 0``, the label's own
    column 0), ``1/|Δb|`` for classes ahead of it, and ``+∞`` offsets off the latter set.

    Args:
      base: [..., Mb, Cp] with padding classes at :data:`MASKED_LOGIT`; labels: int [Mb].

    Returns:
      ``(lead, behind, off, clear)``: three [..., Mb, Cp] arrays, and ``clear``
      [..., Mb] (no class ahead: the row is right at α = 0).
    """
    cols = jnp.arange(base.shape[-1])
    own = cols == labels[:, None]
    later = cols > labels[:, None]
    db = jnp.take_along_axis(base, jnp.broadcast_to(labels[:, None], base.shape[:-1] + (1,)),
                             axis=-1) - base
    leads = (db > 0) | ((db == 0) & later) | own
    inverse = jnp.where(db == 0, _TIE, jnp.minimum(1.0 / jnp.where(db == 0, 1.0, jnp.abs(db)),
                                                   _TIE))
    inverse = jnp.where(own, 0.0, inverse)
    return (jnp.where(leads, inverse, 0.0), jnp.where(leads, 0.0, inverse),
            jnp.where(leads, jnp.inf, 0.0), jnp.all(leads, axis=-1))


def _tiles(x: jax.Array) -> jax.Array:
    """[..., Cp] -> [..., Cp / CLASS_TILE, CLASS_TILE]."""
    return x.reshape(x.shape[:-1] + (x.shape[-1] // CLASS_TILE, CLASS_TILE))


def _contract(left: jax.Array, right: jax.Array) -> jax.Array:
    """``Σ_k left[..., p, k, :] · right[..., q, k, :]`` → [..., P, Q, lanes].

    Elementwise with the K products unrolled (one expression, so the label's own
    value computed apart is bit-identical); fused into its consumer, the loop runs
    over (class tile, row) outside and (p, q) inside, the tile's factors in L1. The
    sum runs in :data:`_CHAINS` interleaved partial sums, added pairwise: one long
    chain of dependent multiply-adds would wait on each one's latency.
    """
    partial = [None] * _CHAINS
    for k in range(left.shape[-2]):
        term = left[..., :, None, k, :] * right[..., None, :, k, :]
        r = k % _CHAINS
        partial[r] = term if partial[r] is None else partial[r] + term
    partial = [x for x in partial if x is not None]
    while len(partial) > 1:
        partial = [partial[i] + partial[i + 1] if i + 1 < len(partial) else partial[i]
                   for i in range(0, len(partial), 2)]
    return partial[0]


def _at_label(x: jax.Array, tile: jax.Array, lane: jax.Array) -> jax.Array:
    """``x[tile_m, m, ..., lane_m]`` for x [T, Mb, ..., lane] → [Mb, ..., 1]."""
    at = jnp.take_along_axis(x, tile.reshape((1, -1) + (1,) * (x.ndim - 2)), axis=0)[0]
    return jnp.take_along_axis(at, lane.reshape((-1,) + (1,) * (at.ndim - 1)), axis=-1)


_LARGEST = jnp.int32(2**31 - 1)


def _ordered(x: jax.Array) -> jax.Array:
    """float32 → int32 keys in the same order (+0 after -0): integer minima are one
    instruction, float ones (NaN-propagating) several."""
    bits = lax.bitcast_convert_type(x, jnp.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _float(key: jax.Array) -> jax.Array:
    """The inverse of :func:`_ordered`."""
    return lax.bitcast_convert_type(key ^ ((key >> 31) & 0x7FFFFFFF), jnp.float32)


def _hits(left, right, own, lead, behind, off, clear, rows, alphas) -> jax.Array:
    """Correct rows of a block per (fold, point, α) → int32 [F, P·Q, L].

    Args:
      left: [T, Mb, P, K, lane], right: [T, Mb or 1, Q, K, lane]: ``R = Σ_k left · right``;
      own: [Mb, P, Q] its value at the label; lead, behind, off: [F, T, Mb, lane];
      clear: [F, Mb]; rows: [Mb]; alphas: [L].
    """
    tiles, mb = left.shape[:2]
    residual = _contract(left, right).reshape(tiles, mb, -1, CLASS_TILE)  # [T, Mb, PQ, lane]
    gap = (own.reshape(1, mb, -1, 1) - residual)[None]                     # [1, T, Mb, PQ, lane]
    g = gap * lead[:, :, :, None]
    h = gap * behind[:, :, :, None] + off[:, :, :, None]

    # min over a tile's lanes (tiles outside, points inside), then over the tiles
    g, h = lax.reduce((_ordered(g), _ordered(h)), (_LARGEST,) * 2,
                      lambda p, q: (jnp.minimum(p[0], q[0]), jnp.minimum(p[1], q[1])), (4,))
    g, h = (_float(jnp.min(x, axis=1))[..., None] for x in (g, h))       # [F, Mb, PQ, 1]
    alpha = alphas[None, None, None, :]
    zero = alpha == 0
    hit = ((zero | (1.0 + alpha * g > 0))
           & jnp.where(zero, clear[:, :, None, None], (h == jnp.inf) | (alpha * h >= 1.0)))
    hit = hit & (rows[None, :, None, None] > 0)
    return jnp.sum(hit, axis=1, dtype=jnp.int32)


def _block_counts(aff, base, others, labels, rows, plain, values, folds, start, step, nbeta,
                  alphas, never):
    """Correct counts of one block of rows → int32 [F, Na·J, G, L].

    ``W_j = z^j`` is a product of two kept stacks (:func:`_powers`) formed where it is
    used: the fused loop forms it once per (tile, row, j) and reuses it for every a
    (plain values: ``R[j, a] = Σ_k W_j U_a`` against the kept ``U``) or every value
    point (``R[j, g] = Σ_k (U_a W_j) v_g``, a loop over a carrying ``U_a``).

    Args:
      aff: [K, Mb, C]; base: [Mb, Cp] (padding classes masked); others: [H, Mb, Cp];
      labels: int [Mb]; rows: [Mb]; plain: [T, 1, K, lane] values folded into ``U``, or None;
      values: [T, 1, G, K, lane] values per point (None if plain); folds: [F, H];
      start, step: the β grid; nbeta: its length; alphas: [L]; never: int 0 (:func:`_kept`).

    Class-tiled arrays lead with the tile axis T: the fused loops run over (tile, row)
    outside and the points inside, so a tile's values stay in L1 across the rows.
    """
    num_a, num_j = _factors(nbeta)
    num_f, num_l = folds.shape[0], alphas.shape[0]
    thresholds = _thresholds(base[None] + jnp.einsum("fh,hmc->fmc", folds, others), labels)

    def tile_major(x):  # [..., Mb, Cp] -> [..., T, Mb, lane]
        return jnp.swapaxes(_tiles(x), -3, -2)

    scoring = _kept(tuple(map(tile_major, thresholds[:3])) + thresholds[3:], never)
    tile, lane = labels // CLASS_TILE, labels % CLASS_TILE
    aff = jnp.pad(aff, ((0, 0), (0, 0), (0, base.shape[1] - aff.shape[2])))
    x = jnp.transpose(_tiles(1.0 - aff), (2, 1, 0, 3))                     # [T, Mb, K, lane]
    z = jnp.exp(-step * x)
    first = jnp.exp(-start * x) if plain is None else jnp.exp(-start * x) * plain
    z, first, big = _kept((z, first, lax.integer_pow(z, num_j)), never)    # big = z^J
    high, low = _power_stacks(z, num_j, 2, never)
    w = _product(high, low, 2)                                              # [T, Mb, J, K, lane]
    w_at = _product(_at_label(high, tile, lane), _at_label(low, tile, lane), 1)  # its own use

    def hits(left, right, left_at, right_at):  # R = Σ_k left · right at every point pair
        own = _kept(_contract(left_at, right_at)[..., 0], never)
        return _hits(left, right, own, *scoring, rows, alphas)

    if values is None:
        u = _kept(first[:, :, None] * _powers(big, num_a, 2, never), never)  # [T, Mb, Na, K, lane]
        found = hits(w, u, w_at, _at_label(u, tile, lane))                   # [F, J·Na, L]
        found = jnp.swapaxes(found.reshape(num_f, num_j, num_a, num_l), 1, 2)
        return found.reshape(num_f, num_a * num_j, 1, num_l)
    values_at = _at_label(jnp.broadcast_to(values, values.shape[:1] + base.shape[:1]
                                           + values.shape[2:]), tile, lane)  # [Mb, G, K, 1]

    def one_a(a, carry):
        counts, u_a = carry
        found = hits(u_a[:, :, None] * w, values, _at_label(u_a, tile, lane)[:, None] * w_at,
                     values_at)                                               # [F, J·G, L]
        counts = lax.dynamic_update_index_in_dim(counts, found, a, 1)
        return counts, _kept(u_a * big, never)

    zeros = jnp.zeros((num_f, num_a, num_j * values.shape[2], num_l), jnp.int32)
    counts = lax.fori_loop(0, num_a, one_a, (zeros, first))[0]
    return counts.reshape(num_f, num_a * num_j, values.shape[2], num_l)


def _rows_per_block(nbeta: int, num_g: int, shots: int, classes: int, rows: int) -> int:
    """Rows scored together: their kept factors (the stacks of ``W``, and ``U`` or one
    ``U_a``) near :data:`TILE_BYTES`."""
    num_a, num_j = _factors(nbeta)
    slabs = sum(_split(num_j)) + (num_a if num_g == 1 else 1)
    return max(1, min(rows, TILE_BYTES // (4 * shots * classes * slabs)))


def grid_counts(base, affinity, values, others, folds, labels, rows, class_mask, betas,
                alphas) -> jax.Array:
    """Correct counts over the grid (module docstring) → int32 [F, nβ, G, L].

    Args:
      base: [M, C]; affinity: [K, M, C]; values: [G, C, K] per value point;
      others: [H, M, C] residuals of the folded linear names; folds: [F, H]
      their values; labels: int [M]; rows: [M] row mask; class_mask: [C];
      betas: [nβ] equally spaced; alphas: [L], all ≥ 0.

    Returns:
      counts of correct real rows; all -1 if ``betas`` is not equally spaced.
    """
    shots, num_rows, num_classes = affinity.shape
    num_g, num_f, nbeta = values.shape[0], folds.shape[0], betas.shape[0]
    real = class_mask > 0
    pad_c = -num_classes % CLASS_TILE
    classes = num_classes + pad_c
    block = _rows_per_block(nbeta, num_g, shots, classes, num_rows)
    pad_m = -num_rows % block
    base = jnp.pad(jnp.where(real, base, MASKED_LOGIT), ((0, pad_m), (0, pad_c)),
                   constant_values=MASKED_LOGIT)
    others = jnp.pad(others * real, ((0, 0), (0, pad_m), (0, pad_c)))
    affinity = jnp.pad(affinity, ((0, 0), (0, pad_m), (0, 0)))  # classes: per block
    labels, rows = jnp.pad(labels, (0, pad_m)), jnp.pad(rows, (0, pad_m))
    values = jnp.pad(values * real[:, None], ((0, 0), (0, pad_c), (0, 0)))
    values = jnp.transpose(_tiles(jnp.swapaxes(values, 1, 2)), (2, 0, 1, 3))  # [T, G, K, lane]
    plain, values = (values[:, :1], None) if num_g == 1 else (None, values[:, None])
    start, step, ok = _spacing(betas)
    never = (labels[0] < 0).astype(jnp.int32)  # labels are ≥ 0: 0, unknown to XLA

    def add_block(i, counts):
        def rows_of(x, axis):
            return lax.dynamic_slice_in_dim(x, i * block, block, axis=axis)

        return counts + _block_counts(
            rows_of(affinity, 1), rows_of(base, 0), rows_of(others, 1), rows_of(labels, 0),
            rows_of(rows, 0), plain, values, folds, start, step, nbeta, alphas,
            never)[:, :nbeta]

    zeros = jnp.zeros((num_f, nbeta, num_g, alphas.shape[0]), jnp.int32)
    counts = lax.fori_loop(0, (num_rows + pad_m) // block, add_block, zeros)
    return jnp.where(ok, counts, -1)
