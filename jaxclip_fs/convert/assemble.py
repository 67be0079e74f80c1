"""Build a variables tree from checkpoint tensors, checked against ``jax.eval_shape(init)``.

Every leaf of the abstract tree is looked up through the layout; the result
must have exactly the abstract leaf's shape. All problems are collected and
raised together as one line (as big_vision's ``merge_params`` does)::

    ckpt.pt: does not fit ViT-B/32 (openai layout): missing keys: a, b;
    unexpected keys: c; mis-shaped: d [768, 3, 16, 16] (expected [768, 3, 32, 32])
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxclip_fs.clip.model import flatten_variables, unflatten_variables
from jaxclip_fs.convert.layouts import Layout, Target
from jaxclip_fs.errors import CheckpointError

_SHOW = 6  # items listed per problem kind before "(+N more)"


def assemble(abstract: Mapping[str, Any], tensors: Mapping[str, np.ndarray], layout: Layout,
             what: str, source: str) -> dict[str, Any]:
    """Variables (float32 numpy) shaped like ``abstract``, from ``tensors``.

    Args:
      abstract: ``jax.eval_shape(model.init, ...)`` of the wanted model.
      tensors: checkpoint tensors by name.
      layout: the checkpoint's naming (:mod:`~jaxclip_fs.convert.layouts`).
      what: the model's name for messages (e.g. ``"ViT-B/32"``).
      source: the checkpoint's name for messages (a path or hub id).
    Raises:
      CheckpointError: one line listing missing, unexpected and mis-shaped keys.
    """
    missing, misshaped, used = [], [], set()
    flat_out: dict[Target, np.ndarray] = {}
    for target, leaf in flatten_variables(abstract).items():
        spec = layout.source(target)
        if spec is None:
            missing.append("/".join(target))
            continue
        absent = [k for k in spec.keys if k not in tensors]
        if absent:
            missing.extend(absent)
            continue
        used.update(spec.keys)
        arrays = [np.asarray(tensors[k]) for k in spec.keys]
        shapes = [a.shape for a in arrays]
        if not spec.shape_ok(shapes, leaf.shape):
            expected = spec.expected_shapes(leaf.shape)
            misshaped.extend(f"{k} {list(s)} (expected {list(e)})"
                             for k, s, e in zip(spec.keys, shapes, expected) if s != e)
            continue
        flat_out[target] = np.asarray(spec.build(arrays), np.float32)  # no copy if float32
    unexpected = sorted(k for k in tensors if k not in used and not layout.ignorable(k))
    problems = [f"{label}: {_listing(items)}" for label, items in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", misshaped))
        if items]
    if problems:
        raise CheckpointError(f"{source}: does not fit {what} ({layout.name} layout): "
                              + "; ".join(problems))
    return unflatten_variables(flat_out)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")
