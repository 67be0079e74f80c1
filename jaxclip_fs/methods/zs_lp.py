"""ZS-LP: the zero-shot-initialised linear probe (Silva-Rodríguez et al., CVPR 2024).

Class prototypes ``w_c`` start at the class text embeddings, ``w_c = r · t_c``
(``r`` = ``text_norm``, below), and are trained with the cross-entropy of

    ``logits = τ · cos(x, w_c) = τ · x̂ ŵ_cᵀ``    (τ = CLIP's logit scale, 100),

so at initialisation the probe *is* zero-shot CLIP. Official code: jusiro/CLAP
``trainers/adapters.py`` with ``TRAINER.ADAPTER.INIT ZS``, ``CONSTRAINT none``
(``experiments/experiment_ZSLP.txt``; ``forward_lp`` normalises features and
prototypes), config ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml`` on Dassl:
SGD lr 0.1, momentum 0.9 (Dassl's default), no weight decay, batch 256, 300
epochs; lr 1e-5 in the first epoch, then cosine over the 300 epochs stepped
once per epoch (Dassl's ``ConstantWarmupScheduler``); training features are 20
augmented passes over the support (random resized crop + flip) cached once;
the last epoch is tested (``scripts/eval.sh --load-epoch 300``) -- nothing is
selected, so ``fair`` and ``validation_free`` run it alike.

Where we differ:

* **Prototype norm.** The official prototypes are the text encoder's *raw*
  output (not L2-normalised); a feature file holds unit embeddings. ``cos`` is
  scale-free, so training ``w = r · v`` with step η is training ``v`` with step
  η / r²: ``text_norm`` = the raw norm of the model's class embeddings gives
  the official dynamics exactly; the default 1 keeps the unit embeddings (a
  larger effective step than the official code's on real CLIP weights).
* **Epochs.** An epoch reads every support item once, in batches of 256, each
  in one augmented view of the feature file (a fresh one per epoch when there
  are enough); the official epoch takes ``max(1, N // 256)`` batches of 256 from
  the shuffled 20·N cached views (with N < 256: one batch of 256 views, which
  may repeat an image).
"""

from __future__ import annotations


from jaxclip_fs import catalogue
from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official, Training
from jaxclip_fs.methods.cache import l2_normalize
from jaxclip_fs.methods.optimizers import EPOCH_COSINE_SGD

#: The official config (``SGD_lr1e-1_B256_ep300.yaml``; momentum: Dassl's default).
DEFAULTS = {"text_norm": 1.0, "epochs": 300, "batch_size": 256, "lr": 0.1, "momentum": 0.9}


def defaults(dataset, dim):
    del dataset, dim
    return dict(DEFAULTS)


def init(key, task, hp):
    """``w = text_norm · t`` [C, D] (padding classes: zero rows)."""
    del key
    return {"w": hp["text_norm"] * task.text}


def precompute(params, task, queries, query_mask):
    del params, task, query_mask
    return {"queries": l2_normalize(queries)}


def probe_logits(w, task, normalized_queries):
    """``τ · x̂ ŵᵀ`` [M, C] for L2-normalised queries [M, D]."""
    return task.logit_scale * normalized_queries @ l2_normalize(w).T


def terms(pre, params, task, hp):
    del hp
    return probe_logits(params["w"], task, pre["queries"]), {}


COMPUTE = Compute(init=init, precompute=precompute, terms=terms)
HYPERPARAMETERS = Hyperparameters((hp_lib.TEXT_NORM,), defaults, neutral={})
TRAINING = Training(("w",), optimizer=EPOCH_COSINE_SGD, epoch_selection="final")
CARD = catalogue.card("zs_lp")
OFFICIAL = Official(
    source="jusiro/CLAP trainers/adapters.py (INIT ZS, CONSTRAINT none; "
           "experiments/experiment_ZSLP.txt, scripts/adapt.sh, seeds 1-3) with "
           "configs/trainers/SGD_lr1e-1_B256_ep300.yaml on Dassl: the last epoch is tested, "
           "nothing is selected",
    epochs_on="final")


def zs_lp() -> Method:
    """ZS-LP as a :class:`Method` (trainable: ``w``)."""
    return Method(CARD, COMPUTE, HYPERPARAMETERS, TRAINING, official=OFFICIAL)
