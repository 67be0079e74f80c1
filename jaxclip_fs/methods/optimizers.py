"""How a method's trainable params are updated: optimizer factories and the hyperparameters
they read.

A method that trains names an :class:`Optimizer` in its
:class:`~jaxclip_fs.methods.base.Training`: a factory
``make(hp, steps, params) -> optax.GradientTransformation`` and the
hyperparameters ``make`` reads (declared for the method with them, so
``--hp`` and the checks know them). The trainer calls ``make`` once per
task, inside the traced program, with

* ``hp``: the task's hyperparameters (float32 scalars, may be traced);
* ``steps``: the task's total number of optimizer updates (float32 scalar,
  may be traced): ``epochs · ceil(n / batch_size)`` for a method trained in
  epochs on ``n`` real items, or its ``steps`` hyperparameter;
* ``params``: ``init``'s output, so data-derived step sizes (e.g. the inverse
  of a Lipschitz constant that ``init`` computed from the support) can set
  the update.

The default, :data:`COSINE_ADAMW`, is every trained method's optimizer so far
(Tip-Adapter-F, APE-T, CLIP-Adapter, LDC): AdamW with PyTorch's semantics and a
per-step cosine decay to 0. Another optimizer is one call, e.g. SGD with
momentum and the same schedule::

    LR = HParam("lr", "train", "SGD learning rate (cosine decay per step)", minimum=0.0,
                strictly_positive=True)
    MOMENTUM = HParam("momentum", "train", "SGD momentum", minimum=0.0, maximum=1.0)
    SGD = Optimizer(lambda hp, steps, params: optax.sgd(cosine_decay(hp["lr"], steps),
                                                        momentum=hp["momentum"]),
                    hparams=(LR, MOMENTUM))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxclip_fs.methods import hparams as hp_lib

#: ``make(hp, steps, params) -> optax.GradientTransformation`` (module docstring).
OptimizerFn = Callable[[Mapping[str, Any], jax.Array, Mapping[str, Any]],
                       optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer factory and the hyperparameters it reads (module docstring).

    Attributes:
      make: ``(hp, steps, params) -> optax.GradientTransformation``.
      hparams: the :class:`~jaxclip_fs.methods.hparams.HParam` s ``make`` reads
        (role ``"train"``); a method that trains with this optimizer declares them.
    """

    make: OptimizerFn
    hparams: tuple[hp_lib.HParam, ...] = ()


def cosine_decay(lr, total_steps) -> Callable[[jax.Array], jax.Array]:
    """``count -> lr · ½ (1 + cos(π count / T))`` (PyTorch ``CosineAnnealingLR``, eta_min 0,
    stepped per update); arguments may be traced."""
    def learning_rate(count):
        return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * count / total_steps))
    return learning_rate


def epoch_cosine(lr, total_steps, epochs, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5) -> Callable[[jax.Array], jax.Array]:
    """Dassl's schedule (the CoOp family's trainers), stepped once per epoch: ``warmup_lr`` for
    the first ``warmup_epochs`` epochs, then ``lr · ½ (1 + cos(π (e - warmup_epochs) / E))`` in
    epoch ``e`` of ``E`` (``CosineAnnealingLR(T_max=E)`` behind a ``ConstantWarmupScheduler``
    that recounts, ``WARMUP_RECOUNT=True``). The epoch of update ``count`` is ``count //
    (total_steps / epochs)``; arguments may be traced."""
    per_epoch = jnp.maximum(jnp.round(total_steps / epochs), 1.0).astype(jnp.int32)

    def learning_rate(count):
        epoch = count // per_epoch
        cosine = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * (epoch - warmup_epochs) / epochs))
        return jnp.where(epoch < warmup_epochs, warmup_lr, cosine)
    return learning_rate


def cosine_adamw(lr, total_steps, eps, weight_decay) -> optax.GradientTransformation:
    """AdamW whose step size decays as ``lr · ½ (1 + cos(π t / T))``; arguments may be traced."""
    return optax.adamw(cosine_decay(lr, total_steps), b1=0.9, b2=0.999, eps=eps,
                       weight_decay=weight_decay)


def _cosine_adamw(hp, steps, params):
    del params
    return cosine_adamw(hp["lr"], steps, hp["eps"], hp["weight_decay"])


MOMENTUM = hp_lib.HParam("momentum", "train", "SGD momentum (PyTorch's: buffer = μ·buffer + g)",
                         minimum=0.0, maximum=1.0)
SGD_LR = hp_lib.HParam("lr", "train", "SGD peak learning rate (Dassl: 1 warmup epoch at 1e-5, "
                       "then cosine per epoch)", minimum=0.0, strictly_positive=True)


def _epoch_cosine_sgd(hp, steps, params):
    del params
    return optax.sgd(epoch_cosine(hp["lr"], steps, hp["epochs"]), momentum=hp["momentum"])


#: SGD with momentum on Dassl's per-epoch schedule (one epoch at 1e-5, then cosine over the
#: epochs), no weight decay: the CoOp-family trainers' ``OPTIM.NAME: sgd``. Reads ``lr``,
#: ``momentum`` (and the loop's ``epochs``); trains in epochs.
EPOCH_COSINE_SGD = Optimizer(_epoch_cosine_sgd, (SGD_LR, MOMENTUM))

#: AdamW (PyTorch semantics: decoupled decay, eps outside the square root) with a cosine decay
#: per step over the task's own steps; reads ``lr``, ``eps``, ``weight_decay``.
COSINE_ADAMW = Optimizer(_cosine_adamw, (hp_lib.LR, hp_lib.EPS, hp_lib.WEIGHT_DECAY))
