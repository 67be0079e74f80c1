"""APE, training-free Adaptive Prior rEfinement (Zhu et al., ICCV 2023).

**Channel refinement.** Stack per class its text embedding and its K cache
keys (Tip-Adapter keys, L2-normalised): ``X`` [C, K+1, D]. Per channel d

* ``Sim_d`` = mean over class pairs i ≠ j and members m, n of
  ``X[i,m,d] · X[j,n,d]``, i.e. ``(‖Σ_i s_i‖² - Σ_i ‖s_i‖²) / Σ_{i≠j} n_i n_j``
  with ``s_i`` the class sums and ``n_i = K+1`` members
  (``C (C-1) (K+1)²`` pairs for a full task);
* ``Var_d`` = unbiased variance over the classes of ``W[:, d]`` (``torch.var``).

Score ``J = -λ1 Sim + λ2 Var``; the top-``k`` channels are kept. ``k`` is an
array: the kept set is the mask ``rank(J) < k`` (ties: lower channel first).

**Prediction.** ``f'``, ``F'``, ``W'``: the kept channels, re-normalised.
``p = softmax(F' W'ᵀ)`` (no logit scale) per cache item and
``r = exp(γ · Σ_c L log2((L + 1e-6) / (p + 1e-6)))`` -- the official KL
(base 2, eps 1e-6), which for one-hot ``L`` is ``log2((1 + 1e-6)/(p_y + 1e-6))``.
``logits = s + α · exp(-β (1 - f' F'ᵀ)) (L ⊙ r)`` with ``s = 100 f Wᵀ`` on
all channels.

Search (official ``main.py``): β (outer), α, γ (inner) over
``β = 0.1 + i (βmax - 0.1)/200``, ``α = 0.1 + i (αmax - 0.1)/20``,
``γ = i · γmax / steps``; per-dataset ``k``, ``λ``, scales and steps from the
official RN50 configs (ImageNet searches 5 γ values up to 0.5). The logits are
linear in α: the search loops over (β, γ) only.

Deviations: ``k`` of the configs (D = 1024) is rescaled to other widths
(``hparams.scale_channels``); datasets outside the table use Caltech101's row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official
from jaxclip_fs.methods.cache import (
    CacheForm, affinity, cache_keys, form_terms, l2_normalize, mask_logits, zero_shot_logits,
)

# dataset: (k, lambda1, lambda2, beta_max, alpha_max, gamma_max, gamma_steps, init_alpha)
SETTINGS = {
    "caltech101": (800, 0.5, 0.5, 7.0, 7.0, 1.0, 20, 1.0),
    "dtd": (400, 0.5, 0.5, 7.0, 7.0, 1.0, 20, 3.0),
    "eurosat": (700, 0.9, 0.1, 30.0, 5.0, 1.5, 20, 1.0),
    "fgvc_aircraft": (800, 0.1, 0.9, 20.0, 10.0, 1.0, 20, 5.0),
    "food101": (700, 0.3, 0.7, 7.0, 7.0, 1.0, 20, 0.8),
    "imagenet": (500, 0.7, 0.3, 7.0, 7.0, 0.5, 5, 2.0),
    "oxford_flowers": (700, 0.4, 0.6, 7.0, 7.0, 1.0, 20, 3.0),
    "oxford_pets": (800, 0.7, 0.3, 7.0, 7.0, 1.0, 20, 2.0),
    "stanford_cars": (500, 0.6, 0.4, 10.0, 7.0, 1.0, 20, 1.0),
    "sun397": (800, 0.7, 0.3, 10.0, 7.0, 1.0, 20, 1.0),
    "ucf101": (700, 0.3, 0.7, 10.0, 7.0, 1.5, 20, 2.0),
}
GENERIC = "caltech101"
INIT_BETA, INIT_GAMMA = 1.0, 0.1
BETA_STEPS, ALPHA_STEPS = 200, 20
KL_EPS = 1e-6

CHANNELS = hp_lib.HParam("k", "fixed", "number of refined feature channels kept", minimum=1,
                         maximum="dim", integer=True)
LAMBDA1 = hp_lib.HParam("lambda1", "fixed", "weight of the inter-class similarity (channel score)")
LAMBDA2 = hp_lib.HParam("lambda2", "fixed", "weight of the inter-class variance (channel score)")
GAMMA = hp_lib.HParam("gamma", "search", "sharpness of the KL weighting of the cache values")


def defaults(dataset, dim):
    k, lambda1, lambda2, _, _, _, _, init_alpha = hp_lib.table_row(SETTINGS, dataset, GENERIC)
    return {"k": hp_lib.scale_channels(k, dim), "lambda1": lambda1, "lambda2": lambda2,
            "alpha": init_alpha, "beta": INIT_BETA, "gamma": INIT_GAMMA}


def search_scales(dataset):
    """``(β grid, α grid)`` of the official APE configs (shared by APE-T)."""
    _, _, _, beta_max, alpha_max, _, _, _ = hp_lib.table_row(SETTINGS, dataset, GENERIC)
    return (hp_lib.official_grid(beta_max, BETA_STEPS),
            hp_lib.official_grid(alpha_max, ALPHA_STEPS))


def grid(dataset):
    """β (outer), α, γ (inner)."""
    gamma_max, gamma_steps = hp_lib.table_row(SETTINGS, dataset, GENERIC)[5:7]
    betas, alphas = search_scales(dataset)
    return {"beta": betas, "alpha": alphas,
            "gamma": hp_lib.official_grid(gamma_max, gamma_steps, start=0.0)}


def channel_scores(keys, task, lambda1, lambda2):
    """APE's criterion ``J = -λ1 Sim + λ2 Var`` per channel → [D].

    Args:
      keys: [C, K, D] L2-normalised cache keys (zero for padding items).
      task: supplies ``text`` [C, D] and the masks.
    """
    class_mask = task.class_mask
    members = task.support_mask * class_mask[:, None]
    class_sums = task.text * class_mask[:, None] + jnp.einsum("ck,ckd->cd", members, keys)
    class_sizes = class_mask * (1.0 + jnp.sum(members, axis=1))
    pairs = jnp.sum(class_sizes) ** 2 - jnp.sum(class_sizes ** 2)
    similarity = (jnp.sum(class_sums, axis=0) ** 2 - jnp.sum(class_sums ** 2, axis=0)) / pairs
    num_classes = jnp.sum(class_mask)
    mean = jnp.sum(task.text * class_mask[:, None], axis=0) / num_classes
    variance = jnp.sum(class_mask[:, None] * (task.text - mean) ** 2, axis=0) / (num_classes - 1.0)
    return -lambda1 * similarity + lambda2 * variance


def top_k_mask(scores, k):
    """1 for the ``k`` highest ``scores`` (``k`` may be a traced array) → float [D]."""
    order = jnp.argsort(-scores, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(scores.shape[0]))
    return (rank < k).astype(scores.dtype)


def refine(task, hp):
    """Channel mask [D], refined re-normalised keys ``F'`` [C, K, D] and text ``W'`` [C, D]."""
    keys = cache_keys(task)
    mask = top_k_mask(channel_scores(keys, task, hp["lambda1"], hp["lambda2"]), hp["k"])
    return mask, l2_normalize(keys * mask), l2_normalize(task.text * mask)


def kl_weights(refined_keys, refined_text, task):
    """``log2((1 + ε)/(p_y + ε))`` per cache item, ``p = softmax(F' W'ᵀ)`` → [C, K]."""
    probs = jax.nn.softmax(mask_logits(jnp.einsum("ckd,jd->ckj", refined_keys, refined_text),
                                       task.class_mask), axis=-1)
    own = jnp.diagonal(probs, axis1=0, axis2=2).T  # [C, K]: p[c, k, c]
    return jnp.log2((1.0 + KL_EPS) / (own + KL_EPS))


def init(key, task, hp):
    """Channel mask, refined keys ``F'`` and KL weights (uses ``k``, ``lambda1``, ``lambda2``)."""
    del key
    mask, keys, text = refine(task, hp)
    return {"channel_mask": mask, "keys": keys, "kl": kl_weights(keys, text, task)}


def precompute(params, task, queries, query_mask):
    """``s`` on all channels and ``A' = f' F'ᵀ`` on the kept ones."""
    del query_mask
    refined = l2_normalize(queries * params["channel_mask"])
    return {"s": zero_shot_logits(task, queries),
            "affinity": affinity(refined, params["keys"])}


def cache_form(pre, params, task, hp):
    """``base = s``; residual of α: ``exp(-β (1 - A')) (L ⊙ exp(γ · KL))``."""
    return CacheForm(pre["s"], pre["affinity"],
                     task.support_mask * jnp.exp(hp["gamma"] * params["kl"]))


terms = form_terms(cache_form)


CARD = catalogue.card("ape")
OFFICIAL = Official(
    source="yangyangyang127/APE main.py (beta x alpha x gamma searched on the whole val "
           "split; ImageNet: val = test), extract_features.py (text classifier = templates + "
           "CuPL sentences pooled; random.seed(1) before each shot count)",
    prompts=True, seeds=(1,))


def ape() -> Method:
    """Training-free APE as a :class:`Method`."""
    return Method(
        CARD, Compute(init=init, precompute=precompute, terms=terms, linear=("alpha",),
                      cache_form=cache_form),
        Hyperparameters((CHANNELS, LAMBDA1, LAMBDA2, hp_lib.ALPHA, hp_lib.BETA, GAMMA),
                        defaults, grid, neutral={"alpha": 0.0}),
        official=OFFICIAL)
