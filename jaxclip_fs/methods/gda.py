"""GDA: Gaussian discriminant analysis on CLIP features (Wang et al., ICLR 2024).

Every augmented view of every support image is L2-normalised (official
``main_few_shots.py``); over these N vectors: class means ``μ_c``, centred
vectors ``x - μ_y``, their covariance ``S`` (``torch.cov``, divisor N-1) and
the shrunk precision ``Σ⁻¹ = D · pinv((N-1) S + tr(S) I)``. Linear
discriminant: ``w_c = Σ⁻¹ μ_c``, ``b_c = log(1/C) - ½ μ_cᵀ Σ⁻¹ μ_c``.
``logits = s + α (f Σ⁻¹ μᵀ + b)`` with ``s = 100 f Wᵀ``.

Search: α over {1e-4, 1e-3, ..., 1e2} (first best). The logits are linear
in α. The official loop starts with ``best_alpha = 0.1`` and ``best_acc = 0``;
we return the first grid point if every point scores 0 %. There is no
default α: it is always searched unless given -- and without validation
(``validation_free``) it is 0.1, the official loop's starting value.

Masks: N counts real items only, C real classes only.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official
from jaxclip_fs.methods.cache import augmented_views, l2_normalize, zero_shot_logits
from jaxclip_fs.methods.linalg import pinv_hermitian

ALPHA = hp_lib.HParam("alpha", "search", "weight of the Gaussian discriminant logits", minimum=0.0)
#: Without validation: α = 0.1, the official search loop's starting value (``best_alpha``).
VALIDATION_FREE = {"alpha": 0.1}


def grid(dataset):
    del dataset
    return {"alpha": 10.0 ** np.arange(-4, 3, dtype=np.float64)}


def init(key, task, hp):
    """Discriminant weights ``Σ⁻¹ μ_c`` [C, D] and biases ``b`` [C]."""
    del key, hp
    views = l2_normalize(augmented_views(task.support))  # [V, C, K, D]
    members = task.support_mask * task.class_mask[:, None]  # [C, K]
    weights = jnp.broadcast_to(members, views.shape[:-1])[..., None]  # [V, C, K, 1]
    counts = jnp.sum(weights, axis=(0, 2))  # [C, 1]
    means = jnp.sum(weights * views, axis=(0, 2)) / jnp.maximum(counts, 1.0)  # [C, D]
    centred = jnp.where(weights > 0, views - means[None, :, None, :], 0.0)
    centred = centred.reshape(-1, views.shape[-1])
    num_vectors = jnp.sum(weights)
    scatter = centred.T @ centred  # (N - 1) S
    trace_cov = jnp.trace(scatter) / (num_vectors - 1.0)
    dim = views.shape[-1]
    shrunk = scatter + trace_cov * jnp.eye(dim, dtype=scatter.dtype)
    # one eigh per cell even when vmapped: batched LAPACK calls can deadlock sharded
    # CPU programs (methods/linalg.py)
    precision = dim * pinv_hermitian(shrunk)
    weights_c = means @ precision  # [C, D] (precision is symmetric)
    log_prior = -jnp.log(jnp.sum(task.class_mask))
    bias = log_prior - 0.5 * jnp.sum(weights_c * means, axis=-1)
    return {"weights": weights_c, "bias": bias}


def precompute(params, task, queries, query_mask):
    """``s`` and the discriminant logits ``f Σ⁻¹ μᵀ + b`` [M, C]."""
    del query_mask
    return {"s": zero_shot_logits(task, queries),
            "gda": l2_normalize(queries) @ params["weights"].T + params["bias"]}


def terms(pre, params, task, hp):
    del params, task, hp
    return pre["s"], {"alpha": pre["gda"]}


CARD = catalogue.card("gda")
OFFICIAL = Official(
    source="mrflogs/ICLR24 main_few_shots.py (alpha searched on the whole val split; "
           "ImageNet: val = test; seeds 1, 2, 3 seeded once each, 1..16 shots drawn in turn; "
           "published = mean over the seeds)",
    sampler="chained")


def gda() -> Method:
    """GDA as a :class:`Method`."""
    return Method(
        CARD, Compute(init=init, precompute=precompute, terms=terms, linear=("alpha",)),
        Hyperparameters((ALPHA,), grid=grid, neutral={"alpha": 0.0},
                        validation_free=VALIDATION_FREE),
        official=OFFICIAL)
