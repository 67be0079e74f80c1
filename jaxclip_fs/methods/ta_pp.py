"""TA++: Tip-Adapter on IMO-corrected image features (Kravets & Namboodiri, BMVC'24).

The IMO adapters (:mod:`jaxclip_fs.train.imo`) change the image encoder
only; the zero-shot logits keep the *original* encoder. Official ``run.py``
("Tip-Adapter corrected")::

    s      = logit_scale · f Wᵀ                          f  original (L2-normalised)
    logits = s + α · exp(-β (1 - f' F'ᵀ)) L              f', F' adapted (F' = mean of the
                                                           augmented views, then normalised)

Search (IMO grid, every dataset): α = linspace(0, 20, 200) (outer loop),
β = linspace(0, 20, 20) (inner), first best on validation.

**Paired features.** The method reads both encoders' features side by side:
every support / query row is ``[adapted | original]`` of width 2E, with
E = ``task.text.shape[1]`` (:func:`split_paired`);
the image pipeline's paired provider (``jaxclip_fs.pipelines.paired``)
builds such a set. It is not a feature file (whose rows have the text
width), which is why the method declares ``inputs="paired"``.

Deviation: the official code hard-codes ``100 ·`` for ``s``; we use the
CLIP's ``logit_scale`` (100 for OpenAI's weights), as every other method.
"""

from __future__ import annotations

import jax

from jaxclip_fs.methods import hparams as hp_lib, tip_x
from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official
from jaxclip_fs.methods.cache import affinity, cache_keys, l2_normalize, zero_shot_logits
from jaxclip_fs.methods.task import Task
from jaxclip_fs.methods.tip_adapter import cache_form, terms  # s; α → exp(-β (1 - f' F'ᵀ)) L


def grid(dataset):
    """The IMO code's Tip-Adapter grid (Tip-X's without γ): α (outer), β (inner)."""
    return {name: values for name, values in tip_x.grid(dataset).items() if name != "gamma"}


def split_paired(x: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[adapted | original]`` rows (last axis 2E, E = text width) → (adapted, original).

    Raises:
      ValueError: the last axis is not twice the text width.
    """
    width = text.shape[-1]
    if x.shape[-1] != 2 * width:
        raise ValueError(f"paired features need width 2 x {width}, got {x.shape[-1]}")
    return x[..., :width], x[..., width:]


def half_task(task: Task, which: int) -> Task:
    """The task restricted to one encoder: ``which`` 0 = adapted, 1 = original."""
    return task._replace(support=split_paired(task.support, task.text)[which])


def zero_shot_original(task: Task, queries: jax.Array) -> jax.Array:
    """``s = logit_scale · f Wᵀ`` from the original half of paired queries → [M, C]."""
    return zero_shot_logits(task, split_paired(queries, task.text)[1])


def init(key, task, hp):
    """Adapted cache keys ``F'`` [C, K, D]."""
    del key, hp
    return {"keys": cache_keys(half_task(task, 0))}


def precompute(params, task, queries, query_mask):
    """``s`` (original encoder) and the adapted affinities ``f' F'ᵀ`` [K, M, C]."""
    del query_mask
    adapted, _ = split_paired(queries, task.text)
    return {"s": zero_shot_original(task, queries),
            "affinity": affinity(l2_normalize(adapted), params["keys"])}


CARD = catalogue.card("ta_pp")
OFFICIAL = Official(
    source="akres001/CLIP_fewshot_imo run.py (alpha, beta searched on the whole val split; "
           "ImageNet: val = test; seeds 1, 2, 3 seeded once, 1..16 shots drawn in turn)",
    sampler="chained")


def ta_pp() -> Method:
    """TA++ as a :class:`Method` over paired features."""
    return Method(
        CARD, Compute(init=init, precompute=precompute, terms=terms, linear=("alpha",),
                      cache_form=cache_form),
        Hyperparameters((hp_lib.ALPHA, hp_lib.BETA), grid=grid, neutral={"alpha": 0.0},
                        validation_free={n: tip_x.VALIDATION_FREE[n] for n in ("alpha", "beta")}),
        official=OFFICIAL)
