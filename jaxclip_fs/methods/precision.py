"""Mixed precision for the trained heads: bfloat16 compute, float32 parameters and updates.

:func:`in_compute_dtype` turns a trained method into one whose *training
steps* compute in ``dtype`` (``bfloat16``): every float32 operand of the
training forward pass -- the learned and fixed params, the task's arrays
(support, classifier, the frozen CLIP projector's variables), the batch's
features or CLIP taps, the hyperparameters -- is cast to ``dtype`` inside the
loss, so its matrix products run in ``dtype`` (GPUs and TPUs multiply
bfloat16 at 8-16x their float32 rate and accumulate each product in float32).
What stays float32:

* the parameters the optimiser holds, its AdamW moments and the updates
  (the cast is inside the loss, so gradients arrive in float32);
* the loss itself: logits are cast back to float32 before the softmax
  cross-entropy (a method's own loss returns float32 the same way);
* auxiliary state (``Method.state``: BatchNorm statistics) and an image
  method's zero-shot logits ``s`` (a frozen output, not a matrix operand);
* everything outside training -- per-epoch validation, the hyperparameter
  search, test predictions -- runs the float32 parameters in float32.

This is the usual mixed-precision recipe (float32 master weights, low-precision
forward and backward passes); bfloat16 has float32's exponent range, so no
loss scaling is needed. A method with its own ``dtype`` option (LDC's
``dtype=float16``, the official code's half-precision weights *stored* in
float16) cannot also take a compute dtype: the two would mix.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.methods.base import Method, cross_entropy, logits
from jaxclip_fs.methods.images import ImageInputs

#: Compute dtypes a method's training may run in.
COMPUTE_DTYPES = ("float32", "bfloat16")


def cast_floating(tree: Any, dtype) -> Any:
    """``tree`` with every float32 leaf in ``dtype`` (other leaves as they are)."""
    def cast(leaf):
        return leaf.astype(dtype) if getattr(leaf, "dtype", None) == jnp.float32 else leaf
    return jax.tree.map(cast, tree)


def _cast_inputs(inputs: Any, dtype) -> Any:
    """A batch's inputs in ``dtype``; an image method's zero-shot logits stay float32."""
    if isinstance(inputs, ImageInputs):
        return cast_floating(inputs, dtype)._replace(s=inputs.s)
    return cast_floating(inputs, dtype)


def in_compute_dtype(method: Method, dtype: str) -> Method:
    """``method`` with its training steps computed in ``dtype`` (module docstring); the method
    itself for ``float32`` or a method that does not train.

    Raises:
      ConfigError: unknown dtype, or a method whose own ``dtype`` option is not float32.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
                          f"got '{dtype}'")
    if dtype == "float32" or not method.trains or method.towers is not None:
        return method  # (a tower method computes in the dtype of the CLIP it trains through)
    own = method.option_values.get("dtype", "float32")
    if own != "float32":
        raise ConfigError(
            f"{method.label} keeps its own weights in {own} (option dtype={own}); a compute "
            f"dtype of {dtype} would mix the two: use the option or train_dtype, not both")
    return _mixed(method, dtype)


@functools.lru_cache(maxsize=64)
def _mixed(method: Method, dtype: str) -> Method:
    """The mixed-precision method (cached: equal requests share compiled programs)."""
    if method.bind is not None:  # an image method: its loss exists once bound to a CLIP
        return dataclasses.replace(method, bind=functools.partial(_bind_mixed, method, dtype))
    low = jnp.dtype(dtype)

    def loss(params, task, inputs, labels, weights, hp):
        params_low = {k: v if k in method.state else cast_floating(v, low)
                      for k, v in params.items()}
        args = (params_low, cast_floating(task, low), _cast_inputs(inputs, low))
        hp_low = cast_floating(hp, low)
        if method.loss is None:
            scores = logits(method, *args, hp_low).astype(jnp.float32)
            return cross_entropy(scores, labels, weights), {}
        value, updates = method.loss(*args, labels, weights, hp_low)
        restored = {k: jax.tree.map(lambda new, old: new.astype(old.dtype), v, params[k])
                    for k, v in updates.items()}
        return value.astype(jnp.float32), restored

    return dataclasses.replace(method, compute=dataclasses.replace(method.compute, loss=loss))


def _bind_mixed(method: Method, dtype: str, spec) -> Method:
    return _mixed(method.bind(spec), dtype)
