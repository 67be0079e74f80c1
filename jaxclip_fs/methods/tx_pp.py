"""TX++: Tip-X with intra-modal-overlap-corrected affinities (Kravets & Namboodiri, BMVC'24).

Official ``run.py`` ("Tip-X corrected"), on paired ``[adapted | original]``
features (:mod:`~jaxclip_fs.methods.ta_pp`)::

    s      = logit_scale · f Wᵀ                                  original encoder
    A'     = f' F'ᵀ                                              adapted encoder
    M      = KL(P(f) ‖ P(F)),  P(x) = softmax(x Wᵀ / 0.5)        original encoder
    M̃      = M min-max rescaled to the value range of A'         (official ``scale_``)
    logits = s - γ · M̃ L + α · exp(-β (1 - A')) L

So the KL ("signature") term stays the original one while its scale and
the cache affinity come from the adapted features. Grid: Tip-X's, which is
IMO's -- α = linspace(0, 20, 200) (outer), β = linspace(0, 20, 20),
γ = linspace(0, 30, 50) (inner); logits are linear in α and γ. Same KL
deviation as :mod:`~jaxclip_fs.methods.tip_x`: every query row is computed
(the official routine leaves the last ``M mod 100`` rows at zero).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official
from jaxclip_fs.methods.cache import affinity, cache_keys, l2_normalize
from jaxclip_fs.methods.ta_pp import half_task, split_paired, zero_shot_original
from jaxclip_fs.methods.tip_x import GAMMA, VALIDATION_FREE, grid, kl_divergence, rescale_to
from jaxclip_fs.methods.tip_x import cache_form, terms  # s; α → exp(-β(1 - A')) L, γ → -M̃ L


def init(key, task, hp):
    """Cache keys of both encoders, [C, K, D] each."""
    del key, hp
    return {"keys": cache_keys(half_task(task, 0)), "keys_original": cache_keys(half_task(task, 1))}


def precompute(params, task, queries, query_mask):
    """``s``, the adapted affinities [K, M, C] and the KL logits ``-M̃ L`` [M, C]."""
    adapted, original = split_paired(queries, task.text)
    aff = affinity(l2_normalize(adapted), params["keys"])
    valid = (query_mask[None, :, None] > 0) & (task.support_mask.T[:, None, :] > 0)
    kl = kl_divergence(l2_normalize(original), params["keys_original"], task)
    rescaled = rescale_to(kl, aff, valid)
    return {"s": zero_shot_original(task, queries), "affinity": aff,
            "kl_logits": -jnp.sum(jnp.where(valid, rescaled, 0.0), axis=0)}


CARD = catalogue.card("tx_pp")
OFFICIAL = Official(
    source="akres001/CLIP_fewshot_imo run.py (alpha, beta, gamma searched on the whole val "
           "split; ImageNet: val = test; seeds 1, 2, 3 seeded once, 1..16 shots drawn in turn)",
    sampler="chained")


def tx_pp() -> Method:
    """TX++ as a :class:`Method` over paired features."""
    return Method(
        CARD, Compute(init=init, precompute=precompute, terms=terms, linear=("alpha", "gamma"),
                      cache_form=cache_form),
        Hyperparameters((hp_lib.ALPHA, hp_lib.BETA, GAMMA), grid=grid,
                        neutral={"alpha": 0.0, "gamma": 0.0}, validation_free=VALIDATION_FREE),
        official=OFFICIAL)
