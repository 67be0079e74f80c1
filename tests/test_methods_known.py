"""Known-answer tests: each method's logits against an independent NumPy version of its formula.

The references follow the official PyTorch code's structure (flat cache of
N = C·K items with one-hot values, explicit loops where the official code
loops), not our class-major vectorisation.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.methods import ape as ape_lib
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.task import make_task
from numpy_ref import unit as _normalize, softmax as _softmax

C, K, V, D, M = 4, 3, 3, 8, 7


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    support = rng.standard_normal((V, C, K, D)).astype(np.float32) * 3.0
    text = _normalize(rng.standard_normal((C, D))).astype(np.float32)
    queries = rng.standard_normal((M, D)).astype(np.float32) * 2.0
    flat_views = support.reshape(V, C * K, D).astype(np.float64)  # item n = c·K + k
    labels = np.repeat(np.arange(C), K)
    return {
        "task": make_task(support, text, 100.0),
        "text": text.astype(np.float64),
        "queries": queries,
        "q": _normalize(queries.astype(np.float64)),
        "views": flat_views,
        # Tip-Adapter: mean of the augmented views, then normalise
        "keys": _normalize(flat_views[1:].mean(0)),
        "onehot": np.eye(C)[labels],
        "labels": labels,
    }


def _ours(name, data, hp, params=None):
    method = methods.get(name)
    if params is None:
        params = jax.jit(method.init)(jax.random.key(0), data["task"], as_arrays(hp))
    run = jax.jit(functools.partial(logits, method))
    return np.asarray(run(params, data["task"], jnp.asarray(data["queries"]), as_arrays(hp)))


def _tip_reference(q, keys, onehot, alpha, beta):
    return alpha * np.exp(-beta * (1.0 - q @ keys.T)) @ onehot


def test_zero_shot(data):
    np.testing.assert_allclose(_ours("zero_shot", data, {}), 100.0 * data["q"] @ data["text"].T,
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_tip_adapter(data, name):
    alpha, beta = 1.7, 5.5
    expected = 100.0 * data["q"] @ data["text"].T + _tip_reference(
        data["q"], data["keys"], data["onehot"], alpha, beta)
    hp = {**methods.get(name).defaults("dtd", D), "alpha": alpha, "beta": beta}
    np.testing.assert_allclose(_ours(name, data, hp), expected, rtol=1e-5, atol=1e-4)


def test_tip_x_kl_term_and_rescaling(data):
    alpha, beta, gamma = 2.0, 3.0, 4.5
    q, keys, onehot, text = data["q"], data["keys"], data["onehot"], data["text"]
    p_query = _softmax(q @ text.T / 0.5)
    p_key = _softmax(keys @ text.T / 0.5)
    kl = np.zeros((M, C * K))
    for m in range(M):  # KL(P_query ‖ P_key), every row (official: blocks of 100)
        for n in range(C * K):
            kl[m, n] = np.sum(p_query[m] * (np.log(p_query[m]) - np.log(p_key[n])))
    aff = q @ keys.T
    scaled = (kl - kl.min()) / (kl.max() - kl.min()) * (aff.max() - aff.min()) + aff.min()
    expected = (100.0 * q @ text.T + gamma * (-scaled) @ onehot
                + alpha * np.exp(-beta * (1.0 - aff)) @ onehot)
    ours = _ours("tip_x", data, {"alpha": alpha, "beta": beta, "gamma": gamma})
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)
    # the KL residual alone (γ = 1, α = 0): M̃ L with the sign of the official code
    kl_only = _ours("tip_x", data, {"alpha": 0.0, "beta": beta, "gamma": 1.0}) - 100.0 * q @ text.T
    np.testing.assert_allclose(kl_only, -scaled @ onehot, rtol=1e-4, atol=1e-3)


def _ape_criterion_loops(text, keys, lambda1, lambda2):
    """Official cal_criterion: explicit loops over class pairs and members; torch.var (unbiased)."""
    feats = np.concatenate([text[:, None, :], keys.reshape(C, K, D)], axis=1)  # [C, K+1, D]
    sim_sum, count = np.zeros(D), 0
    for i in range(C):
        for j in range(C):
            for m in range(K + 1):
                for n in range(K + 1):
                    if i != j:
                        sim_sum += feats[i, m] * feats[j, n]
                        count += 1
    return -lambda1 * sim_sum / count + lambda2 * np.var(text, axis=0, ddof=1)


def test_ape_channel_score(data):
    keys = data["keys"]
    expected = _ape_criterion_loops(data["text"], keys, 0.3, 0.7)
    keys = jnp.asarray(keys.reshape(C, K, D), jnp.float32)
    ours = ape_lib.channel_scores(keys, data["task"], 0.3, 0.7)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-6)


def test_ape_logits(data):
    k, lambda1, lambda2, alpha, beta, gamma = 5, 0.3, 0.7, 2.5, 4.0, 0.6
    q, keys, onehot, text = data["q"], data["keys"], data["onehot"], data["text"]
    criterion = _ape_criterion_loops(text, keys, lambda1, lambda2)
    keep = np.argsort(-criterion, kind="stable")[:k]
    keys_r, text_r, q_r = (_normalize(x[:, keep]) for x in (keys, text, q))
    p = _softmax(keys_r @ text_r.T)  # no logit scale
    div = np.sum(onehot * np.log2((onehot + 1e-6) / (p + 1e-6)), axis=1)[:, None]
    values = onehot * np.exp(gamma * div)
    expected = 100.0 * q @ text.T + alpha * np.exp(-beta * (1.0 - q_r @ keys_r.T)) @ values
    hp = {"k": k, "lambda1": lambda1, "lambda2": lambda2, "alpha": alpha, "beta": beta,
          "gamma": gamma}
    np.testing.assert_allclose(_ours("ape", data, hp), expected, rtol=1e-4, atol=1e-3)


def test_ape_t_with_learned_residual_and_values(data):
    k, alpha, beta = 6, 1.5, 3.0
    q, keys, onehot, text = data["q"], data["keys"], data["onehot"], data["text"]
    hp = {**methods.get("ape_t").defaults(None, D), "k": k, "alpha": alpha, "beta": beta}
    criterion = _ape_criterion_loops(text, keys, hp["lambda1"], hp["lambda2"])
    keep = np.argsort(-criterion, kind="stable")[:k]
    rng = np.random.default_rng(1)
    residual = rng.standard_normal((C, k)) * 0.1  # the paper's C x k category residual
    value_weights = rng.uniform(0.5, 1.5, size=C * K)
    keys_rt = _normalize(keys[:, keep]) + residual[data["labels"]]
    text_t = text.copy()
    text_t[:, keep] += residual
    affinity = _normalize(q[:, keep]) @ keys_rt.T
    expected = (100.0 * q @ text_t.T
                + alpha * np.exp(-beta * (1.0 - affinity)) @ (onehot * value_weights[:, None]))
    method = methods.get("ape_t")
    params = dict(method.init(jax.random.key(0), data["task"], as_arrays(hp)))
    full_residual = np.zeros((C, D))
    full_residual[:, keep] = residual
    params["residual"] = jnp.asarray(full_residual, jnp.float32)
    params["value_weights"] = jnp.asarray(value_weights.reshape(C, K), jnp.float32)
    np.testing.assert_allclose(_ours("ape_t", data, hp, params), expected, rtol=1e-4, atol=1e-3)


def test_gda_precision_matrix(data):
    alpha = 0.7
    q, text = data["q"], data["text"]
    vecs = _normalize(data["views"][1:]).reshape(-1, D)  # every augmented view, normalised
    labels = np.tile(data["labels"], V - 1)
    mus = np.stack([vecs[labels == c].mean(0) for c in range(C)])
    centred = vecs - mus[labels]
    cov = np.cov(centred.T)  # torch.cov: divisor N - 1
    precision = D * np.linalg.pinv((centred.shape[0] - 1) * cov + np.trace(cov) * np.eye(D))
    weights = mus @ precision
    bias = np.log(1.0 / C) - 0.5 * np.einsum("cd,de,ce->c", mus, precision, mus)
    expected = 100.0 * q @ text.T + alpha * (q @ weights.T + bias)
    np.testing.assert_allclose(_ours("gda", data, {"alpha": alpha}), expected, rtol=1e-4, atol=1e-3)


def test_clip_adapter(data):
    method = methods.get("clip_adapter")
    hp = method.defaults(None, D)
    params = method.init(jax.random.key(3), data["task"], as_arrays(hp))
    down, up = (np.asarray(params[n], np.float64) for n in ("down", "up"))
    assert down.shape == (D, D // 4) and np.abs(down).max() <= 1 / np.sqrt(D)  # nn.Linear init
    x = data["queries"].astype(np.float64)  # raw features: the adapter runs before normalisation
    blended = 0.2 * np.maximum(np.maximum(x @ down, 0) @ up, 0) + 0.8 * x
    expected = 100.0 * _normalize(blended) @ data["text"].T
    np.testing.assert_allclose(_ours("clip_adapter", data, hp, params), expected,
                               rtol=1e-5, atol=1e-4)
