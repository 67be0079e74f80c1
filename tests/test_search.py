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
