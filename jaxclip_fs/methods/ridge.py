"""Closed-form ridge regression of the support to ±1 targets: big_vision's few-shot probe.

As ``big_vision/evaluators/fewshot_lsr.py`` (google-research/big_vision):
the support features ``x`` (view 0, the plain image) are whitened per
dimension with their own statistics, ``x̃ = (x - mean) / (std + 1e-5)``
(population std), and given a constant bias feature of 100 (large, so the
bias is almost unregularised); the targets are the one-hot labels rescaled
to ±1, ``Y = 2 L - 1``. With ``X = [x̃, 100]`` (N x (D+1)):

  ``W = (Xᵀ X + λ I)⁻¹ Xᵀ Y``   (primal, N ≥ D+1),
  ``W = Xᵀ (X Xᵀ + λ I)⁻¹ Y``   (dual, N < D+1; the same W),
  ``logits = [x̃_q, 100] W``.

One eigendecomposition of the Gram matrix (``G = U diag(s) Uᵀ``, of ``XᵀX``
or ``XXᵀ``, whichever is smaller) serves every strength: ``W(λ) = L
diag(1 / (s + λ)) R`` with ``L = U, R = Uᵀ XᵀY`` (primal) or ``L = XᵀU,
R = Uᵀ Y`` (dual), so ``init`` decomposes once per task, ``precompute``
projects the queries once (``[x̃_q, 100] L``) and each λ of the search is a
rescale of ``s`` and one [M, r] x [r, C] product.

Search: ``l2_reg`` over ``2^-10 ... 2^19`` (the ``l2_regs`` list of the
few-shot configs of big_vision's evaluator's lineage, e.g. scenic's
``scenic/projects/baselines/bert/configs/glue/glue_fewshot.py`` with
``scenic/train_lib/transfer/fewshot_utils.py``, adapted from
``fewshot_lsr.py``), first best on validation. Without validation
(``validation_free``, and under ``paper``: big_vision selects nothing) it is
``2^10``, big_vision's fixed ``l2_reg`` (``configs/common_fewshot.py``).

Where we differ: the features are L2-normalised first (CLIP's embedding, as
big_vision's image-text towers return it; its evaluator reads whatever
representation the config names); only real items and classes count (masks);
the logits are the raw regression outputs (no logit scale), zero-shot CLIP
takes no part. big_vision scores one fixed λ on test; we search on
validation under ``fair``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxclip_fs import catalogue
from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official
from jaxclip_fs.methods.cache import l2_normalize
from jaxclip_fs.methods.linalg import eigh, spectral_filter

#: big_vision's constant bias feature and its std floor (``fewshot_lsr.py``).
BIAS_CONSTANT = 100.0
STD_FLOOR = 1e-5
#: The few-shot evaluators' ``l2_regs`` list: 2^-10 ... 2^19.
L2_REGS = 2.0 ** np.arange(-10, 20, dtype=np.float64)
#: big_vision's fixed strength (``configs/common_fewshot.py``): without validation.
FIXED_L2_REG = 2.0 ** 10

L2_REG = hp_lib.HParam("l2_reg", "search", "ridge strength λ of (XᵀX + λI)⁻¹XᵀY",
                       minimum=0.0, strictly_positive=True)


def grid(dataset):
    del dataset
    return {"l2_reg": L2_REGS}


def _whiten(x, mean, std):
    """``[(x - mean) / std, 100]``: the whitened features with the bias feature."""
    whitened = (x - mean) / std
    bias = jnp.full(x.shape[:-1] + (1,), BIAS_CONSTANT, x.dtype)
    return jnp.concatenate([whitened, bias], axis=-1)


def init(key, task, hp):
    """Whitening statistics and the eigendecomposition ``(s, L, R)`` of the support's Gram
    matrix (module docstring) -> ``{"mean", "std", "eigenvalues", "left", "right"}``."""
    del key, hp
    num_classes, shots = task.support_mask.shape
    members = (task.support_mask * task.class_mask[:, None]).reshape(-1, 1)  # [N, 1]
    x = l2_normalize(task.support[0]).reshape(num_classes * shots, -1)  # view 0, item c·K + k
    count = jnp.maximum(jnp.sum(members), 1.0)
    mean = jnp.sum(members * x, axis=0, keepdims=True) / count
    variance = jnp.sum(members * (x - mean) ** 2, axis=0, keepdims=True) / count
    std = jnp.sqrt(variance) + STD_FLOOR
    features = members * _whiten(x, mean, std)  # [N, D+1], zero rows for padding
    onehot = jnp.repeat(jnp.eye(num_classes, dtype=x.dtype), shots, axis=0)  # [N, C]
    targets = members * (2.0 * onehot - 1.0) * task.class_mask[None, :]
    if features.shape[0] >= features.shape[1]:  # primal: (D+1) x (D+1)
        eigenvalues, vectors = eigh(features.T @ features)
        left, right = vectors, vectors.T @ (features.T @ targets)
    else:  # dual: N x N
        eigenvalues, vectors = eigh(features @ features.T)
        left, right = features.T @ vectors, vectors.T @ targets
    return {"mean": mean, "std": std, "eigenvalues": eigenvalues, "left": left, "right": right}


def precompute(params, task, queries, query_mask):
    """The queries whitened, with the bias feature, projected on ``L`` -> [M, r]."""
    del task, query_mask
    return _whiten(l2_normalize(queries), params["mean"], params["std"]) @ params["left"]


def terms(pre, params, task, hp):
    """``[x̃_q, 100] W(λ)`` = ``(P diag(1 / (s + λ))) R`` -> [M, C] (no linear name)."""
    del task
    weights = 1.0 / (jnp.maximum(params["eigenvalues"], 0.0) + hp["l2_reg"])
    return spectral_filter(pre, weights, params["right"]), {}


CARD = catalogue.card("ridge")
OFFICIAL = Official(
    source="google-research/big_vision big_vision/evaluators/fewshot_lsr.py (_precompute_cache, "
           "_eig_fewshot_acc_fn: whitening, bias feature 100, ±1 targets, eigh of the smaller "
           "Gram matrix) with configs/common_fewshot.py (l2_reg = 2^10, fixed: nothing is "
           "selected); few-shot sets: each class permuted per seed, the first K kept (nested)",
    search_on="none", sampler="nested", seeds=(0, 1, 2))


def ridge() -> Method:
    """big_vision's closed-form few-shot ridge regression as a :class:`Method`."""
    return Method(
        CARD, Compute(init=init, precompute=precompute, terms=terms),
        Hyperparameters((L2_REG,), grid=grid, validation_free={"l2_reg": FIXED_L2_REG}),
        official=OFFICIAL)
