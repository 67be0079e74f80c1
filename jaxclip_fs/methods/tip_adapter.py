"""Tip-Adapter, training-free (Zhang et al., ECCV 2022).

``logits = s + α · exp(-β (1 - f Fᵀ)) L`` with ``s = 100 · f Wᵀ``, where the
cache keys ``F`` are, per support image, the mean of its raw augmented view
features, then L2-normalised (official ``build_cache_model``), ``L`` the
one-hot labels and ``f`` the L2-normalised query.

Search (official ``search_hp``): β over ``0.1 + i (βmax - 0.1)/200``
(outer loop), α over ``0.1 + i (αmax - 0.1)/20`` (inner loop), first best
validation accuracy wins. ``(βmax, αmax)`` and the initial α are per dataset
(official configs); the initial β is 1.

Deviations: the official loop starts from ``best_acc = 0`` and keeps
``(β, α) = (0, 0)`` if every point scores 0 %; we return the first grid
point then. The cache averages the augmented views of the feature file
(official: 10 fresh augmentations).
"""

from __future__ import annotations

from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official
from jaxclip_fs.methods.cache import (
    CacheForm, affinity, cache_keys, form_terms, l2_normalize, zero_shot_logits,
)

# dataset: (beta_max, alpha_max, init_alpha) from the official configs/*.yaml (RN50).
SETTINGS = {
    "imagenet": (7.0, 3.0, 1.17),
    "caltech101": (12.0, 5.0, 3.0),
    "oxford_pets": (7.0, 3.0, 1.17),
    "stanford_cars": (20.0, 10.0, 3.0),
    "oxford_flowers": (50.0, 50.0, 10.0),
    "food101": (10.0, 10.0, 1.17),
    "fgvc_aircraft": (30.0, 30.0, 5.0),
    "sun397": (12.0, 10.0, 1.17),
    "dtd": (13.0, 13.0, 2.0),
    "eurosat": (12.0, 10.0, 2.0),
    "ucf101": (7.0, 3.0, 3.0),
}
# Datasets outside the table use Caltech101's row (a generic object-recognition set).
GENERIC = "caltech101"
INIT_BETA = 1.0
BETA_STEPS, ALPHA_STEPS = 200, 20


def defaults(dataset, dim):
    """Initial α, β of the official configs (used to train Tip-Adapter-F)."""
    del dim
    return {"alpha": hp_lib.table_row(SETTINGS, dataset, GENERIC)[2], "beta": INIT_BETA}


def grid(dataset):
    """The official 200 x 20 grid, β outer, α inner."""
    beta_max, alpha_max, _ = hp_lib.table_row(SETTINGS, dataset, GENERIC)
    return {"beta": hp_lib.official_grid(beta_max, BETA_STEPS),
            "alpha": hp_lib.official_grid(alpha_max, ALPHA_STEPS)}


def init(key, task, hp):
    """Cache keys ``F`` [C, K, D] from the support set."""
    del key, hp
    return {"keys": cache_keys(task)}


def precompute(params, task, queries, query_mask):
    """``s`` [M, C] and the affinities ``f Fᵀ`` [K, M, C] (hyperparameter-free)."""
    del query_mask
    return {"s": zero_shot_logits(task, queries),
            "affinity": affinity(l2_normalize(queries), params["keys"])}


def cache_form(pre, params, task, hp):
    """``base = s``; residual of α: ``exp(-β (1 - A)) L``."""
    del params, hp
    return CacheForm(pre["s"], pre["affinity"], task.support_mask)


terms = form_terms(cache_form)


CARD = catalogue.card("tip_adapter")
OFFICIAL = Official(
    source="gaopengcuhk/Tip-Adapter main.py (search_hp on the whole val split; ImageNet: "
           "main_imagenet.py searches on test), utils.py build_cache_model (10 augmented views); "
           "random.seed(1) before the few-shot draw",
    seeds=(1,))


COMPUTE = Compute(init=init, precompute=precompute, terms=terms, linear=("alpha",),
                  cache_form=cache_form)
#: Without validation (``validation_free``): the defaults, the official configs' initial α, β.
HYPERPARAMETERS = Hyperparameters((hp_lib.ALPHA, hp_lib.BETA), defaults, grid,
                                  neutral={"alpha": 0.0})


def tip_adapter() -> Method:
    """Training-free Tip-Adapter as a :class:`Method`."""
    return Method(CARD, COMPUTE, HYPERPARAMETERS, official=OFFICIAL)
