"""CLAP: the class-adaptive linear probe (Silva-Rodríguez et al., CVPR 2024).

ZS-LP (:mod:`~jaxclip_fs.methods.zs_lp`: ``logits = τ · x̂ ŵ_cᵀ``, ``w``
initialised at ``r · t``, the same optimizer, epochs and views) with a penalty
keeping every prototype near its zero-shot one:

    ``loss = CE(τ · x̂ ŵᵀ, y) + (1/C) Σ_c λ_c ‖w_c - r · t_c‖²``,

``λ_c`` initialised to the mean zero-shot probability of class c over its
support features, ``λ_c = mean_{x in class c} softmax(τ · x̂ tᵀ)_c``, computed
on every augmented view (official ``init_lagrangian_multipliers`` on the 20
cached augmented passes). Official code: jusiro/CLAP ``trainers/adapters.py``
(``zero_shot_constraint``: ``torch.mean(alpha_constraint · ‖w - t‖²)``, a mean
over the classes; ``TRAINER.ADAPTER.CONSTRAINT l2``,
``experiments/experiment_CLAP.txt``); the last of its 300 epochs is tested and
nothing is selected: one fixed configuration for every dataset and shot count
(the ``validation_free`` protocol is CLAP's own).

Option ``constraint``:

* ``l2`` (default, the released experiments): λ stays at its initial value.
* ``adaptive`` (the code's ``l2_adaptative``): after every epoch an outer step of
  the augmented Lagrangian (``outer_step``, PHR): with ``h_c = ‖w_c - r t_c‖²``,
  ``λ_c ← max(λ_c + ρ_c h_c, 0)`` and then ``ρ_c ← h_c`` (ρ starts at 0, so the
  first outer step leaves λ unchanged).

Deviations: those of ZS-LP (the prototype norm ``text_norm``; what an epoch
reads). The official λ statistics use the same augmented views as training,
here the feature file's augmented views (view 0 when it has none).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxclip_fs import catalogue
from jaxclip_fs.methods import zs_lp
from jaxclip_fs.methods.base import Method, Official, Option, cross_entropy
from jaxclip_fs.methods.cache import augmented_views, l2_normalize, mask_logits

CONSTRAINT = Option("constraint", ("l2", "adaptive"),
                    "l2: λ fixed at the zero-shot probabilities; adaptive: the augmented "
                    "Lagrangian's outer step after every epoch")


def zero_shot_true_class_probability(task) -> jax.Array:
    """``λ_c``: the mean over class c's augmented support views of the zero-shot softmax
    probability of class c → [C] (0 for padding classes)."""
    views = augmented_views(task.support)  # [V, C, K, D]
    scores = task.logit_scale * l2_normalize(views) @ task.text.T  # [V, C, K, C]
    probs = jax.nn.softmax(mask_logits(scores, task.class_mask), axis=-1)
    true = jnp.diagonal(probs, axis1=1, axis2=3)  # [V, K, C]: probability of its own class
    members = (task.support_mask * task.class_mask[:, None]).T[None]  # [1, K, C]
    count = jnp.sum(members, axis=1)[0] * views.shape[0]
    return jnp.sum(true * members, axis=(0, 1)) / jnp.maximum(count, 1.0)


def distance_to_zero_shot(params, task, hp) -> jax.Array:
    """``h_c = ‖w_c - r · t_c‖²`` → [C]."""
    return jnp.sum((params["w"] - hp["text_norm"] * task.text) ** 2, axis=-1)


def _init(adaptive: bool):
    def init(key, task, hp):
        params = {**zs_lp.init(key, task, hp), "lam": zero_shot_true_class_probability(task)}
        if adaptive:
            params["rho"] = jnp.zeros_like(params["lam"])
        return params
    return init


def loss(params, task, inputs, labels, weights, hp):
    """Cross-entropy of the probe's logits on the batch plus the class-wise penalty, a mean
    over the real classes."""
    scores = zs_lp.probe_logits(params["w"], task, l2_normalize(inputs))
    ce = cross_entropy(mask_logits(scores, task.class_mask), labels, weights)
    penalty = jnp.sum(params["lam"] * distance_to_zero_shot(params, task, hp))
    return ce + penalty / jnp.sum(task.class_mask), {}


def outer_step(params, task, hp):
    """The augmented Lagrangian's per-epoch update (module docstring)."""
    h = distance_to_zero_shot(params, task, hp)
    raised = params["lam"] + params["rho"] * h
    return {"lam": jnp.where(raised >= 0, raised, 0.0), "rho": h}


CARD = catalogue.card("clap")
OFFICIAL = Official(
    source="jusiro/CLAP trainers/adapters.py (INIT ZS, CONSTRAINT l2; "
           "experiments/experiment_CLAP.txt, scripts/adapt.sh, seeds 1-3) with "
           "configs/trainers/SGD_lr1e-1_B256_ep300.yaml on Dassl: the last epoch is tested, "
           "nothing is selected",
    epochs_on="final")


def clap(constraint: str = "l2") -> Method:
    """CLAP as a :class:`Method` (trainable: ``w``; ``adaptive`` updates ``lam``, ``rho``
    once per epoch)."""
    adaptive = constraint == "adaptive"
    training = zs_lp.TRAINING
    if adaptive:
        training = dataclasses.replace(training, state=("lam", "rho"), epoch_end=outer_step)
    return Method(CARD, dataclasses.replace(zs_lp.COMPUTE, init=_init(adaptive), loss=loss),
                  zs_lp.HYPERPARAMETERS, training, official=OFFICIAL, options=(CONSTRAINT,),
                  option_values={"constraint": constraint})
