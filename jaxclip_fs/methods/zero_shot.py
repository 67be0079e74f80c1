"""Zero-shot CLIP: ``logits = logit_scale · f Wᵀ`` (Radford et al. 2021).

``f`` is the L2-normalised query feature, ``W`` the text classifier; no
support set, no hyperparameters.
"""

from __future__ import annotations

from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official
from jaxclip_fs.methods.cache import zero_shot_logits


def _init(key, task, hp):
    del key, task, hp
    return {}


def _precompute(params, task, queries, query_mask):
    del params, query_mask
    return {"s": zero_shot_logits(task, queries)}


def _terms(pre, params, task, hp):
    del params, task, hp
    return pre["s"], {}


CARD = catalogue.card("zero_shot")
OFFICIAL = Official(
    source="openai/CLIP prompt ensembling, as evaluated by gaopengcuhk/Tip-Adapter main.py "
           "(the zero-shot row of every paper's table)",
    seeds=(1,))


def zero_shot() -> Method:
    """The zero-shot CLIP classifier as a :class:`Method`."""
    return Method(CARD, Compute(init=_init, precompute=_precompute, terms=_terms),
                  Hyperparameters(neutral={}), official=OFFICIAL)
