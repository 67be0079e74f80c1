"""A few-shot task and an evaluation set, as pytrees of arrays.

Layout is **class-major**: the support set is a ``[C, K]`` grid of items
(class ``c``, shot ``k``), so its labels are implicit (item ``(c, k)`` has
label ``c``) and per-class sums over the cache are plain reductions over
``K`` instead of matrix products with one-hot labels.

Masks are how one vmapped program holds several shot counts and datasets:

* ``support_mask[c, k] = 1`` marks real items. Nested shot counts share one
  support: the 16-shot grid with ``support_mask[:, :4] = 1`` *is* the 4-shot
  task (few-shot sets are nested, ``data/fewshot.py``).
* ``class_mask[c] = 1`` marks real classes; padding classes (zero text rows,
  no items) are never predicted and never counted.
* ``EvalSet.mask[m] = 1`` marks real evaluation rows (sets padded to a
  common size).

Every method gives, for a padded task, the result of the unpadded one.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp


class Task(NamedTuple):
    """A few-shot task.

    Attributes:
      support: float [V, C, K, D] raw support features, one slab per view;
        view 0 un-augmented, views 1.. augmented (as in the feature file).
      support_mask: float [C, K], 1 for real items.
      class_mask: float [C], 1 for real classes.
      text: float [C, D] L2-normalised class embeddings (zero rows for padding).
      logit_scale: float [] CLIP's exp(logit_scale) (100 for OpenAI CLIP).
      frozen: image methods: the frozen CLIP arrays they read (e.g. the
        projector's variables); None for feature methods. Shared by every
        task of a program (never vmapped).

    Image methods have no feature support (``support`` is None): their
    support images reach them through the trainer as inputs.
    """

    support: jax.Array | None
    support_mask: jax.Array
    class_mask: jax.Array
    text: jax.Array
    logit_scale: jax.Array
    frozen: Any = None

    @property
    def dim(self) -> int:
        return self.support.shape[-1]


class EvalSet(NamedTuple):
    """Labelled query features.

    Attributes:
      features: float [M, D] raw image features.
      labels: int [M].
      mask: float [M], 1 for real rows.
    """

    features: jax.Array
    labels: jax.Array
    mask: jax.Array


def make_task(support, text, logit_scale, support_mask=None, class_mask=None) -> Task:
    """Builds a :class:`Task` from arrays; masks default to all ones."""
    support = jnp.asarray(support, jnp.float32)
    _, num_classes, shots, _ = support.shape
    return Task(
        support=support,
        support_mask=(jnp.ones((num_classes, shots), jnp.float32) if support_mask is None
                      else jnp.asarray(support_mask, jnp.float32)),
        class_mask=(jnp.ones((num_classes,), jnp.float32) if class_mask is None
                    else jnp.asarray(class_mask, jnp.float32)),
        text=jnp.asarray(text, jnp.float32),
        logit_scale=jnp.asarray(logit_scale, jnp.float32),
    )


def make_evalset(features, labels, mask=None) -> EvalSet:
    """Builds an :class:`EvalSet`; the mask defaults to all ones."""
    features = jnp.asarray(features, jnp.float32)
    return EvalSet(
        features=features,
        labels=jnp.asarray(labels, jnp.int32),
        mask=(jnp.ones(features.shape[:1], jnp.float32) if mask is None
              else jnp.asarray(mask, jnp.float32)),
    )


def with_shots(task: Task, shots) -> Task:
    """The nested ``shots``-shot task: keeps the first ``shots`` items per class.

    ``shots`` may be a traced integer, so one vmapped program can hold
    several shot counts over one support grid.
    """
    column = jnp.arange(task.support_mask.shape[-1])
    return task._replace(support_mask=task.support_mask * (column < shots).astype(jnp.float32))


def stack(trees: Sequence):
    """Stacks equally shaped tasks / eval sets / hyperparameter dicts along a new axis 0."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
