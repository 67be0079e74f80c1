"""CLIP-Adapter, visual adapter (Gao et al., IJCV 2023).

On the *raw* image feature ``x`` (official ``CustomCLIP.forward``: the
adapter runs before normalisation):
``A(x) = ReLU(ReLU(x W1) W2)``, W1 [D, D/4], W2 [D/4, D], no biases;
``x' = ratio · A(x) + (1 - ratio) · x`` with ``ratio = 0.2``;
``logits = logit_scale · (x' / ‖x'‖) Wᵀ``. Weights initialised as PyTorch's
``nn.Linear`` (uniform ±1/√fan_in). Trained with cross-entropy on the
augmented support views, best epoch on validation.

Deviation: the released code is a Dassl trainer shipped without its
optimiser config; we train with our default AdamW + per-step cosine
(lr 1e-3, weight decay 0.01, batch 32, 200 epochs). ``ratio = 0`` gives
zero-shot CLIP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official, Training
from jaxclip_fs.methods.cache import l2_normalize

REDUCTION = 4
RATIO = hp_lib.HParam("ratio", "fixed", "residual blend of the adapted feature",
                       minimum=0.0, maximum=1.0)
DEFAULTS = {"ratio": 0.2, "epochs": 200, "lr": 1e-3, "batch_size": 32, "eps": 1e-8,
            "weight_decay": 0.01}


def init(key, task, hp):
    """W1 [D, D/4], W2 [D/4, D], uniform ±1/√fan_in like ``nn.Linear``."""
    del hp
    dim = task.dim
    hidden = dim // REDUCTION
    key_down, key_up = jax.random.split(key)
    return {
        "down": jax.random.uniform(key_down, (dim, hidden), jnp.float32, -1.0, 1.0) / jnp.sqrt(dim),
        "up": jax.random.uniform(key_up, (hidden, dim), jnp.float32, -1.0, 1.0) / jnp.sqrt(hidden),
    }


def adapt(params, features, ratio):
    """``ratio · ReLU(ReLU(x W1) W2) + (1 - ratio) · x`` on raw features [M, D]."""
    adapted = jax.nn.relu(jax.nn.relu(features @ params["down"]) @ params["up"])
    return ratio * adapted + (1.0 - ratio) * features


def precompute(params, task, queries, query_mask):
    del params, task, query_mask
    return {"features": queries}


def terms(pre, params, task, hp):
    """``base = logit_scale · norm(x') Wᵀ`` (no linear hyperparameter)."""
    blended = adapt(params, pre["features"], hp["ratio"])
    return task.logit_scale * l2_normalize(blended) @ task.text.T, {}


CARD = catalogue.card("clip_adapter")
OFFICIAL = Official(
    source="gaopengcuhk/CLIP-Adapter clip_adapter.py on CoOp's Dassl trainer: the last epoch "
           "is tested (Dassl TEST.FINAL_MODEL='last_step'), no validation; CoOp's seeds 1-3",
    epochs_on="final")


def clip_adapter() -> Method:
    """CLIP-Adapter as a :class:`Method` (trainable: ``down``, ``up``)."""
    return Method(
        CARD, Compute(init=init, precompute=precompute, terms=terms),
        Hyperparameters((RATIO,), lambda dataset, dim: dict(DEFAULTS), neutral={"ratio": 0.0}),
        Training(trainable=("down", "up")), official=OFFICIAL)
