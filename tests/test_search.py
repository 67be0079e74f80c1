"""The vectorised grid search equals the official point-by-point loop over the same grid.

The reference loop walks the grid in the official order (outermost name
first), computes each point's logits with ``methods.logits`` and keeps the
first strictly better accuracy -- ``if acc > best_acc`` as in the official
``search_hp``. A small validation set makes accuracy ties common, so the
tie rule is exercised.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.search import grid_search, search_order
from jaxclip_fs.methods.task import make_evalset, make_task, stack

D = 8


def _task(seed, num_classes=4, shots=3, rows=12):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, D))
    support = (centres[None, :, None] + rng.standard_normal((3, num_classes, shots, D))) * 5.0
    text = centres + 1.2 * rng.standard_normal((num_classes, D))
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    labels = rng.integers(0, num_classes, rows)
    val = make_evalset((centres[labels] + rng.standard_normal((rows, D))) * 2.0, labels)
    return make_task(support, text, 100.0), val


def _subgrid(method, every):
    """The official grid thinned (every n-th value) to keep the reference loop short."""
    return {name: g[::every.get(name, 1)] for name, g in method.grid("dtd").items()}


def _reference_loop(method, params, task, val, hp, grid):
    order = search_order(method, grid)
    point_logits = jax.jit(functools.partial(logits, method))
    labels = np.asarray(val.labels)
    counts = np.zeros([len(grid[n]) for n in order], np.int64)
    best, best_count = None, -1
    for index in itertools.product(*[range(len(grid[n])) for n in order]):
        point = {**hp, **{n: jnp.float32(grid[n][i]) for n, i in zip(order, index)}}
        predicted = np.argmax(np.asarray(point_logits(params, task, val.features, point)), -1)
        count = int(np.sum(predicted == labels))
        counts[index] = count
        if count > best_count:  # first best in loop order
            best, best_count = index, count
    return counts, dict(zip(order, best))


CASES = {
    "tip_adapter": {"beta": 20, "alpha": 2},
    "tip_x": {"alpha": 20, "beta": 2, "gamma": 5},
    "ape": {"beta": 25, "alpha": 2, "gamma": 2},
    "ape_t": {"beta": 20, "alpha": 2},
    "gda": {},
}


@pytest.mark.parametrize("name", list(CASES))
def test_grid_search_equals_point_by_point_loop(name):
    method = methods.get(name)
    task, val = _task(0)
    hp = as_arrays({k: v for k, v in method.defaults("dtd", D).items()
                    if k not in method.grid(None)})
    params = jax.jit(method.init)(jax.random.key(0), task, hp)
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in _subgrid(method, CASES[name]).items()}
    found = jax.jit(functools.partial(grid_search, method))(params, task, val, hp, grid)
    counts, best = _reference_loop(method, params, task, val, hp, grid)
    np.testing.assert_array_equal(np.asarray(found["counts"]), counts)
    assert {n: int(i) for n, i in found["index"].items()} == best
    for n, i in best.items():
        assert float(found["best"][n]) == float(grid[n][i])
    assert float(found["accuracy"]) == pytest.approx(100.0 * counts.max() / 12)
    # ties occurred, so the order rule mattered
    assert np.sum(counts == counts.max()) > 1 or name == "gda"


def test_fixed_values_and_tiny_chunks():
    """User-fixed linear (γ) and non-linear (β) values; chunks of one point / one combination."""
    method = methods.get("tip_x")
    task, val = _task(1)
    params = jax.jit(method.init)(jax.random.key(0), task, {})
    full = _subgrid(method, {"alpha": 20, "beta": 2, "gamma": 5})
    for fixed_name in ("gamma", "beta"):
        fixed = {fixed_name: jnp.float32(full[fixed_name][4])}
        grid = {n: jnp.asarray(g, jnp.float32) for n, g in full.items() if n != fixed_name}
        search = jax.jit(functools.partial(grid_search, method, memory_bytes=1))
        found = search(params, task, val, fixed, grid)
        counts, best = _reference_loop(method, params, task, val, fixed, grid)
        np.testing.assert_array_equal(np.asarray(found["counts"]), counts)
        assert {n: int(i) for n, i in found["index"].items()} == best


def test_search_vmaps_over_tasks():
    method = methods.get("tip_adapter")
    pairs = [_task(seed) for seed in (2, 3)]
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in _subgrid(method, {"beta": 10}).items()}
    run = jax.jit(lambda task, val: grid_search(
        method, method.init(None, task, {}), task, val, {}, grid))
    batched = jax.vmap(run)(stack([p[0] for p in pairs]), stack([p[1] for p in pairs]))
    for i, (task, val) in enumerate(pairs):
        single = run(task, val)
        np.testing.assert_array_equal(np.asarray(batched["counts"][i]),
                                      np.asarray(single["counts"]))


def test_masked_rows_do_not_count():
    method = methods.get("gda")
    task, val = _task(4, rows=12)
    params = jax.jit(method.init)(None, task, {})
    grid = {"alpha": jnp.asarray(method.grid(None)["alpha"], jnp.float32)}
    search = jax.jit(functools.partial(grid_search, method))
    half = val._replace(mask=val.mask.at[6:].set(0.0))
    found = search(params, task, half, {}, grid)
    first = make_evalset(val.features[:6], val.labels[:6])
    np.testing.assert_array_equal(np.asarray(found["counts"]),
                                  np.asarray(search(params, task, first, {}, grid)["counts"]))
    assert float(found["accuracy"]) == pytest.approx(100.0 * int(np.max(found["counts"])) / 6)


# ---- the cache-family fast path (methods/cache_search.py) ------------------------------------

CACHE_METHODS = tuple(n for n in methods.names()
                      if methods.get(n).compute.cache_form is not None)


def _inputs(method, seed, **sizes):
    """``_task``'s task and validation set in the method's input kind (paired methods read
    ``[adapted | original]`` rows, the adapted half a perturbed copy)."""
    task, val = _task(seed, **sizes)
    if method.inputs == "paired":
        rng = np.random.default_rng(seed + 100)
        support = np.asarray(task.support)
        queries = np.asarray(val.features)
        task = task._replace(support=jnp.asarray(np.concatenate(
            [support + rng.standard_normal(support.shape), support], -1), jnp.float32))
        val = val._replace(features=jnp.asarray(np.concatenate(
            [queries + rng.standard_normal(queries.shape), queries], -1), jnp.float32))
    return task, val


def _searches(method, task, val, hp, grid):
    """``(fast, per-point)`` grid searches: the cache path and ``terms`` per point."""
    fast = jax.jit(functools.partial(grid_search, method))(params := jax.jit(method.init)(
        jax.random.key(0), task, hp), task, val, hp, grid)
    slow = jax.jit(functools.partial(grid_search, method, use_cache_form=False))(
        params, task, val, hp, grid)
    return fast, slow, params


def test_every_cache_method_declares_a_form_its_terms_follow():
    """``terms`` is the declared form: base + α · exp(-β (1 - A)) (L ⊙ values) + others."""
    assert {"tip_adapter", "ape", "ta_pp", "tip_x"} <= set(CACHE_METHODS)
    for name in CACHE_METHODS:
        method = methods.get(name)
        task, val = _inputs(method, 5)
        hp = as_arrays({**{k: v for k, v in method.defaults("dtd", D).items()},
                        "alpha": 1.3, "beta": 2.5, "gamma": 0.4})
        params = jax.jit(method.init)(jax.random.key(0), task, hp)
        pre = method.precompute(params, task, val.features, val.mask)
        base, residuals = method.terms(pre, params, task, hp)
        form = method.compute.cache_form(pre, params, task, hp)
        expected = np.einsum("kmc,ck->mc", np.exp(-2.5 * (1.0 - np.asarray(form.affinity))),
                             np.asarray(form.values))
        np.testing.assert_allclose(np.asarray(base), np.asarray(form.base))
        np.testing.assert_allclose(np.asarray(residuals["alpha"]), expected, rtol=1e-5)
        assert set(residuals) == {"alpha", *form.others}


@pytest.mark.parametrize("name", CACHE_METHODS)
def test_cache_search_equals_the_point_by_point_loop(name):
    """Counts and the chosen point equal the official loop's on each method's (thinned) grid."""
    method = methods.get(name)
    task, val = _inputs(method, 0)
    hp = as_arrays({k: v for k, v in method.defaults("dtd", D).items()
                    if k not in method.grid(None)})
    every = {"alpha": 20 if len(method.grid("dtd")["alpha"]) > 20 else 2, "beta": 10,
             "gamma": 5}
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in _subgrid(method, every).items()}
    fast, slow, params = _searches(method, task, val, hp, grid)
    counts, best = _reference_loop(method, params, task, val, hp, grid)
    np.testing.assert_array_equal(np.asarray(fast["counts"]), counts)
    np.testing.assert_array_equal(np.asarray(slow["counts"]), counts)
    assert {n: int(i) for n, i in fast["index"].items()} == best


def test_exact_ties_follow_the_first_index_rule():
    """Duplicated classes (same text, same support): every row of the second copy ties with
    the first, and argmax -- hence the official loop -- gives it to the first copy."""
    method = methods.get("tip_adapter")
    task, val = _task(2, num_classes=4, rows=16)
    dup = lambda x, axis: jnp.concatenate([x, jnp.take(x, jnp.array([1]), axis=axis)], axis)
    task = task._replace(support=dup(task.support, 1), text=dup(task.text, 0),
                         support_mask=dup(task.support_mask, 0), class_mask=dup(task.class_mask, 0))
    labels = np.asarray(val.labels).copy()
    labels[::3] = 4  # rows labelled with the copy (index 4) can only tie with class 1
    val = val._replace(labels=jnp.asarray(labels))
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in _subgrid(method, {"beta": 20}).items()}
    fast, slow, params = _searches(method, task, val, {}, grid)
    counts, best = _reference_loop(method, params, task, val, {}, grid)
    np.testing.assert_array_equal(np.asarray(fast["counts"]), counts)
    assert {n: int(i) for n, i in fast["index"].items()} == best


@pytest.mark.parametrize("seed", range(4))
def test_rounding_changes_a_choice_only_between_near_ties(seed):
    """On larger random tasks (the whole APE grid, 120 rows) the cache path's counts differ
    from the per-point search's (``terms`` per (β, γ)) only by rounding -- here at a few of
    the 84 000 points, by one row -- and where the chosen point differs the per-point
    search scores it within one image of its best."""
    method = methods.get("ape")
    task, val = _task(10 + seed, num_classes=12, shots=4, rows=120)
    hp = as_arrays({k: v for k, v in method.defaults("dtd", D).items()
                    if k not in method.grid(None)})
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in method.grid("dtd").items()}
    fast, slow, _ = _searches(method, task, val, hp, grid)
    fast_counts, slow_counts = np.asarray(fast["counts"]), np.asarray(slow["counts"])
    assert np.max(np.abs(fast_counts - slow_counts)) <= 2
    chosen = tuple(int(fast["index"][n]) for n in search_order(method, grid))
    assert slow_counts[chosen] >= slow_counts.max() - 1


def test_cache_search_needs_an_equally_spaced_beta_grid():
    method = methods.get("tip_adapter")
    task, val = _task(3)
    params = method.init(None, task, {})
    grid = {"beta": jnp.asarray([0.5, 1.0, 2.0, 2.5]), "alpha": jnp.asarray([0.1, 1.0])}
    with pytest.raises(ValueError, match="beta grid of the cache search must be equally spaced"):
        grid_search(method, params, task, val, {}, grid)
    with pytest.raises(ValueError, match="alpha grid of the cache search must be non-negative"):
        grid_search(method, params, task, val, {}, {**grid, "beta": jnp.asarray([1.0, 2.0]),
                                                  "alpha": jnp.asarray([-1.0, 1.0])})
    # inside jit the grid is not seen: a wrong one gives counts of -1, not a wrong answer
    traced = jax.jit(lambda g: grid_search(method, params, task, val, {}, g)["counts"])(grid)
    assert np.all(np.asarray(traced) == -1)


def test_cache_search_kernel_against_numpy():
    """The kernel on its own: value points, folded linear names, α = 0, a padding class, a
    padding row, base ties and sizes that are not multiples of the class tile."""
    from jaxclip_fs.methods import cache_search

    rng = np.random.default_rng(7)
    rows, classes, shots, num_g, num_h, num_f, nbeta, num_l = 29, 21, 5, 3, 2, 3, 9, 5
    labels = rng.integers(0, classes, rows)
    aff = rng.uniform(0.3, 0.7, (shots, rows, classes)).astype(np.float32)
    aff[:, np.arange(rows), labels] += rng.uniform(0, 0.2, (shots, rows)).astype(np.float32)
    base = rng.normal(20, 1, (rows, classes)).astype(np.float32)
    base[:, 1] = base[:, 0]  # exact base ties
    values = rng.uniform(0.5, 2, (num_g, classes, shots)).astype(np.float32)
    values[:, :, -1] = 0.0  # a padding shot
    others = rng.normal(0, 1, (num_h, rows, classes)).astype(np.float32)
    folds = rng.uniform(0, 1, (num_f, num_h)).astype(np.float32)
    class_mask = np.ones(classes, np.float32)
    class_mask[-1] = 0.0
    row_mask = np.ones(rows, np.float32)
    row_mask[-1] = 0.0
    betas = (0.5 + 0.3 * np.arange(nbeta)).astype(np.float32)
    alphas = np.concatenate([[0.0], 0.1 + 0.4 * np.arange(num_l - 1)]).astype(np.float32)
    counts = np.asarray(jax.jit(cache_search.grid_counts)(
        base, aff, values, others, folds, labels, row_mask, class_mask, betas, alphas))
    expected = np.zeros((num_f, nbeta, num_g, num_l), np.int64)
    for f, i, g, j in itertools.product(range(num_f), range(nbeta), range(num_g), range(num_l)):
        residual = np.einsum("kmc,ck->mc", np.exp(-betas[i] * (1.0 - aff)), values[g])
        logit = base + np.einsum("h,hmc->mc", folds[f], others) + alphas[j] * residual
        logit = np.where(class_mask > 0, logit, -1e9)
        expected[f, i, g, j] = np.sum((np.argmax(logit, 1) == labels) & (row_mask > 0))
    np.testing.assert_array_equal(counts, expected)
