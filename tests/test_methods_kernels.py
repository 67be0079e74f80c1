"""ProKeR and big_vision's ridge probe against NumPy restatements of their official code.

The references solve one linear system per hyperparameter point, as the
official loops do (ProKeR ``trainers/proker.py``: ``torch.linalg.solve(K/λ + I,
L - S)``; scenic's / big_vision's few-shot ridge: ``solve(XᵀX + λI, XᵀY)``),
in float64, on a flat support of N samples -- not our eigendecomposition
shared by every λ.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.engine.evaluate import evaluate_features
from jaxclip_fs.features.synthetic import make_task as synthetic_task
from jaxclip_fs.methods import proker as proker_lib
from jaxclip_fs.methods import ridge as ridge_lib
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.search import grid_search
from jaxclip_fs.methods.task import make_evalset, make_task, stack

from test_linalg import _lapack_matrix_shapes
from numpy_ref import unit as _normalize

C, K, V, D, M = 4, 3, 3, 8, 9


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((C, D))
    support = (centres[None, :, None] + 0.7 * rng.standard_normal((V, C, K, D))) * 3.0
    text = _normalize(centres + 0.8 * rng.standard_normal((C, D)))
    labels = rng.integers(0, C, M)
    queries = (centres[labels] + 0.7 * rng.standard_normal((M, D))) * 2.0
    return {"task": make_task(support.astype(np.float32), text.astype(np.float32), 100.0),
            "support": support, "text": text, "queries": queries.astype(np.float32),
            "labels": labels}


def _ours(method, data, hp, params=None):
    if params is None:
        params = jax.jit(method.init)(jax.random.key(0), data["task"], as_arrays(hp))
    run = jax.jit(functools.partial(logits, method))
    return np.asarray(run(params, data["task"], jnp.asarray(data["queries"]), as_arrays(hp)))


# --- ProKeR ----------------------------------------------------------------------------------


def _proker_support(data):
    """Official ``main.py``: every augmented view of every image, normalised, a sample
    (view by view, the images in order), with its label."""
    vecs = np.concatenate([_normalize(data["support"][v].reshape(C * K, D))
                           for v in range(1, V)])
    labels = np.tile(np.repeat(np.arange(C), K), V - 1)
    return vecs, labels


def _proker_reference(data, beta, lmbda, kernel=None, query_kernel=None, queries=None):
    """Official ``ProKeR``: ``alpha = solve(K_SS / lmbda + I, cache - S)``,
    ``logits = f Wᵀ + K_XS alpha`` (no logit scale)."""
    vecs, labels = _proker_support(data)
    q = _normalize(np.asarray(data["queries"] if queries is None else queries, np.float64))
    text = data["text"]
    cache = np.eye(C)[labels]
    if kernel is None:
        kernel = np.exp(-beta * (1.0 - vecs @ vecs.T))
        query_kernel = np.exp(-beta * (1.0 - q @ vecs.T))
    alpha = np.linalg.solve(kernel / lmbda + np.eye(len(vecs)), cache - vecs @ text.T)
    return q @ text.T + query_kernel @ alpha


@pytest.mark.parametrize("beta, lmbda", [(1.7, 0.1), (5.0, 2.0), (0.5, 0.01)])
def test_proker_exact_solve(data, beta, lmbda):
    method = methods.get("proker", solver="exact")
    ours = _ours(method, data, {"beta": beta, "lambda": lmbda})
    np.testing.assert_allclose(ours / 100.0, _proker_reference(data, beta, lmbda),
                               rtol=1e-4, atol=1e-4)
    assert methods.get("proker").label == "proker"  # auto: exact at this size
    np.testing.assert_array_equal(ours, _ours(methods.get("proker"), data,
                                              {"beta": beta, "lambda": lmbda}))


def test_proker_search_equals_the_official_loop(data):
    """Every (β, λ) through one eigendecomposition per β picks what the official loop of
    one solve per point picks (``if acc > best_acc``, β outer, λ inner), with its counts."""
    rng = np.random.default_rng(5)
    val_labels = np.repeat(np.arange(C), 6)
    centres = data["support"][0].mean(1) / 3.0
    val = (centres[val_labels] + 0.9 * rng.standard_normal((len(val_labels), D))) * 2.0
    method = methods.get("proker")
    grid = {"beta": np.linspace(0.5, 8.0, 6), "lambda": np.geomspace(1e-3, 10.0, 7)}
    found = jax.jit(functools.partial(grid_search, method))(
        {}, data["task"], make_evalset(val, val_labels), {},
        {n: jnp.asarray(g, jnp.float32) for n, g in grid.items()})
    counts = np.zeros((6, 7), int)
    best, best_acc = None, -1
    for i, beta in enumerate(grid["beta"]):
        for j, lmbda in enumerate(grid["lambda"]):
            pred = _proker_reference(data, beta, lmbda, queries=val).argmax(1)
            counts[i, j] = np.sum(pred == val_labels)
            if counts[i, j] > best_acc:
                best, best_acc = (i, j), counts[i, j]
    np.testing.assert_array_equal(np.asarray(found["counts"]), counts)
    assert (int(found["index"]["beta"]), int(found["index"]["lambda"])) == best
    assert len(set(counts.reshape(-1))) > 3  # the grid matters on this set


def _eigh_trips(jaxpr, trips=1, found=None):
    """``[(times run, matrix shape)]`` of every ``eigh`` in a jaxpr: the product of the lengths
    of the scans around it."""
    found = [] if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "eigh":
            found.append((trips, eqn.invars[0].aval.shape))
        inner = trips * int(eqn.params["length"]) if eqn.primitive.name == "scan" else trips
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(item, "jaxpr", item)
                if hasattr(sub, "eqns"):
                    _eigh_trips(sub, inner, found)
    return found


@pytest.mark.parametrize("solver, features, size", [
    ("exact", 0, (V - 1) * C * K), ("rff", 16, 16), ("rff", 64, (V - 1) * C * K)])
def test_proker_search_decomposes_once_per_beta(data, solver, features, size):
    """The search's eigendecomposition runs once per β, never per (β, λ): of the kernel, of
    the R x R feature Gram matrix, or of the N x N one when there are more features."""
    method = proker_lib.proker(solver=solver, features=features)
    params = method.init(jax.random.key(0), data["task"], {})
    grid = {"beta": jnp.linspace(0.5, 8.0, 6), "lambda": jnp.geomspace(1e-3, 10.0, 7)}
    val = make_evalset(data["queries"], data["labels"])
    jaxpr = jax.make_jaxpr(functools.partial(grid_search, method))(
        params, data["task"], val, {}, grid).jaxpr
    assert _eigh_trips(jaxpr) == [(6, (size, size))]


def test_proker_random_features_approximate_the_kernel():
    """``E[z(x)·z(x')] = exp(-β (1 - x·x'))`` on the sphere: R = 2^17 features give it
    within Monte-Carlo error (~ 3/sqrt(R))."""
    x = _normalize(np.random.default_rng(1).standard_normal((6, D)))
    beta = 2.5
    params = proker_lib.random_features(jax.random.key(3), 2 ** 17, D)
    z = np.asarray(proker_lib.feature_map(jnp.asarray(x, jnp.float32) @ params["omega"].T,
                                          params["phase"], beta), np.float64)
    np.testing.assert_allclose(z @ z.T, np.exp(-beta * (1.0 - x @ x.T)), atol=0.01)


def test_proker_random_feature_solve(data):
    """``solver=rff`` is the official solve with the kernel ``Z Zᵀ`` of its features (R x R
    primal for R = 16 < N = 24 samples, N x N dual for R = 1024), and approaches the exact
    logits as R grows."""
    beta, lmbda = 2.0, 0.3
    exact = _proker_reference(data, beta, lmbda)
    errors = []
    for features in (16, 1024):
        method = proker_lib.proker(solver="rff", features=features)
        params = jax.jit(method.init)(jax.random.key(7), data["task"], {})
        omega, phase = (np.asarray(params[n], np.float64) for n in ("omega", "phase"))
        assert omega.shape == (features, D)
        vecs, _ = _proker_support(data)
        q = _normalize(data["queries"].astype(np.float64))

        def z(x):
            return np.sqrt(2.0 / features) * np.cos(np.sqrt(beta) * x @ omega.T + phase)
        expected = _proker_reference(data, beta, lmbda, kernel=z(vecs) @ z(vecs).T,
                                     query_kernel=z(q) @ z(vecs).T)
        ours = _ours(method, data, {"beta": beta, "lambda": lmbda}, params) / 100.0
        np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=2e-3)
        errors.append(np.abs(ours - exact).mean())
    assert errors[1] < errors[0] / 2 and errors[1] < 0.02, errors


def test_proker_lambda_zero_is_zero_shot(data):
    hp = {"beta": 3.0, "lambda": 0.0}
    zero_shot = 100.0 * _normalize(data["queries"].astype(np.float64)) @ data["text"].T
    for solver in ("exact", "rff"):
        method = proker_lib.proker(solver=solver, features=32)
        np.testing.assert_allclose(_ours(method, data, hp), zero_shot, rtol=1e-5, atol=1e-4)


# --- big_vision's ridge ------------------------------------------------------------------------


def _ridge_reference(support_view, queries, lam, num_classes):
    """scenic's ``_fewshot_acc_fn`` (big_vision ``fewshot_lsr.py`` before its eigh cache):
    whiten, bias feature 100, ±1 targets, ``w = solve(XᵀX + λI, XᵀY)``, ``x_test @ w``."""
    x = _normalize(support_view.reshape(-1, support_view.shape[-1]).astype(np.float64))
    y = np.repeat(np.arange(num_classes), support_view.shape[1])
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5

    def prep(a):
        return np.pad((a - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
    targets = 2.0 * np.eye(num_classes)[y] - 1.0
    w = np.linalg.solve(prep(x).T @ prep(x) + lam * np.eye(x.shape[1] + 1), prep(x).T @ targets)
    return prep(_normalize(queries.astype(np.float64))) @ w


@pytest.mark.parametrize("shots, lam", [(K, 8.0), (1, 1024.0)])  # primal (12 >= 9), dual (4 < 9)
def test_ridge_closed_form(data, shots, lam):
    task = data["task"]
    small = task._replace(support=task.support[:, :, :shots],
                          support_mask=task.support_mask[:, :shots])
    ours = _ours(methods.get("ridge"), dict(data, task=small), {"l2_reg": lam})
    expected = _ridge_reference(data["support"][0, :, :shots], data["queries"], lam, C)
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-3)
    params = methods.get("ridge").init(jax.random.key(0), small, {})
    rank = params["eigenvalues"].shape[0]
    assert rank == (D + 1 if shots * C >= D + 1 else shots * C)


def test_ridge_strengths_from_one_decomposition(data):
    """One ``init`` (one eigh), then every strength of big_vision's list by a rescale (in
    float32, as big_vision: the bias feature makes the Gram matrix's condition ~1e5)."""
    method = methods.get("ridge")
    params = jax.jit(method.init)(jax.random.key(0), data["task"], {})
    for lam in ridge_lib.L2_REGS[::6]:
        np.testing.assert_allclose(
            _ours(method, data, {"l2_reg": lam}, params),
            _ridge_reference(data["support"][0], data["queries"], lam, C), rtol=0, atol=5e-3)
    assert set(method.grid(None)) == {"l2_reg"} and ridge_lib.L2_REGS.size == 30
    assert method.resolve("dtd", D, search=False)[0] == {"l2_reg": 1024.0}


# --- both ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_like_16_shot():
    return synthetic_task(11, num_classes=10, dim=32, shots=16, views=3, val_per_class=8,
                          test_per_class=20)


@pytest.mark.parametrize("name", ["proker", "ridge"])
def test_beats_zero_shot_on_a_clip_like_16_shot_file(clip_like_16_shot, name):
    zero_shot = evaluate_features(clip_like_16_shot, "zero_shot", shots=16, seed=1, log=None)
    record = evaluate_features(clip_like_16_shot, name, shots=16, seed=1, log=None)
    assert record["accuracy"] > zero_shot["accuracy"] + 5.0, (record, zero_shot["accuracy"])


@pytest.mark.parametrize("name", ["proker", "ridge"])
def test_vmapped_over_cells_every_eigh_sees_one_matrix(data, name):
    """Batched LAPACK calls can deadlock sharded CPU programs (methods/linalg.py)."""
    method = methods.get(name)
    tasks = stack([data["task"]] * 3)
    hp = {n: jnp.float32(g[len(g) // 2]) for n, g in method.grid(None).items()}

    def cell(task):
        params = method.init(jax.random.key(0), task, hp)
        return logits(method, params, task, jnp.asarray(data["queries"]), hp)
    shapes = _lapack_matrix_shapes(jax.jit(jax.vmap(cell)), tasks)
    assert shapes and all(len(shape) == 2 for shape in shapes), shapes
