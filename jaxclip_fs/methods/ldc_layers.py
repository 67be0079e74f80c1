"""Pure-function layers for LDC's adapters and heads, with PyTorch semantics.

Parameters are plain dicts of arrays; BatchNorm running statistics live in a
separate ``batch_stats`` tree and are *returned*, never mutated, so a training
step is a pure function that ``jax.vmap`` s over seeds.

Initialisation follows PyTorch's defaults, as the official LDC modules use
them: ``nn.Linear`` / 1x1 ``nn.Conv2d`` kernels ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
(``kaiming_uniform_(a=sqrt(5))``), BatchNorm / LayerNorm scale 1 and bias 0,
running mean 0 and variance 1.

BatchNorm (``nn.BatchNorm1d/2d``, momentum 0.1, eps 1e-5), over every axis
but the last (channels)::

    train:  y = (x - mean_B) / sqrt(var_B + eps) * scale + bias       var_B biased
            running_mean <- (1 - m) running_mean + m mean_B
            running_var  <- (1 - m) running_var  + m var_B * n / (n - 1)   (unbiased)
    eval:   y = (x - running_mean) / sqrt(running_var + eps) * scale + bias

with ``n`` the number of values per channel. Rows of a batch carry weights
(1 real, 0 padding of a partial last batch); the statistics are taken over
the real rows only, so a padded batch gives what the unpadded one gives.
Deviation: PyTorch raises for a train-mode ``BatchNorm1d`` on one row
(n = 1); here the unbiased factor becomes 1 and the row normalises to 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BNSettings(NamedTuple):
    """BatchNorm hyperparameters (PyTorch defaults)."""

    momentum: float = 0.1
    eps: float = 1e-5


def uniform_kernel(key: jax.Array, fan_in: int, fan_out: int) -> jax.Array:
    """PyTorch's default ``Linear(fan_in, fan_out)`` weight, transposed: [fan_in, fan_out]."""
    bound = fan_in ** -0.5
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -bound, bound)


def norm_params(width: int) -> dict:
    """``{"scale": ones, "bias": zeros}`` [width] (BatchNorm / LayerNorm affine)."""
    return {"scale": jnp.ones((width,), jnp.float32), "bias": jnp.zeros((width,), jnp.float32)}


def bn_stats(width: int) -> dict:
    """Fresh running statistics: mean 0, var 1, [width]."""
    return {"mean": jnp.zeros((width,), jnp.float32), "var": jnp.ones((width,), jnp.float32)}


def batch_norm(params: dict, stats: dict, x: jax.Array, *, train: bool, weights: jax.Array,
               settings: BNSettings) -> tuple[jax.Array, dict]:
    """BatchNorm over all axes but the last (module docstring).

    Args:
      params: ``scale``, ``bias`` [F].
      stats: running ``mean``, ``var`` [F].
      x: [B, ..., F].
      train: batch statistics (and updated running ones) vs running statistics.
      weights: [B], 1 for real rows, 0 for padding (train mode only).
      settings: momentum and eps.

    Statistics are computed in float32 whatever ``x`` 's dtype; ``y`` takes
    ``x`` 's dtype (PyTorch's BatchNorm on half inputs with float parameters).

    Returns:
      (y [B, ..., F], new stats -- the input stats in eval mode).
    """
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if train:
        axes = tuple(range(x.ndim - 1))
        w = jnp.broadcast_to(weights.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype),
                             x.shape[:-1] + (1,))
        count = jnp.sum(w)  # real values per channel (rows x spatial positions)
        total = jnp.maximum(count, 1.0)
        mean = jnp.sum(w * x, axis=axes) / total
        var = jnp.sum(w * jnp.square(x - mean), axis=axes) / total
        unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
        m = settings.momentum
        new_stats = {"mean": (1.0 - m) * stats["mean"] + m * mean,
                     "var": (1.0 - m) * stats["var"] + m * unbiased}
    else:
        mean, var, new_stats = stats["mean"], stats["var"], stats
    y = (x - mean) * jax.lax.rsqrt(var + settings.eps) * params["scale"] + params["bias"]
    return y.astype(dtype), new_stats


def layer_norm(params: dict, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``nn.LayerNorm`` over the last axis (biased variance), float32 statistics; ``x`` 's dtype."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps) * params["scale"] + params["bias"]
    return y.astype(dtype)


def mlp_bn_init(key: jax.Array, dims: tuple[int, int, int]) -> tuple[dict, dict]:
    """``Linear(a, b) -> BatchNorm1d(b) -> ReLU -> Linear(b, c)``, both linears bias-free.

    Returns:
      (params ``{"fc1": [a, b], "bn": {...}, "fc2": [b, c]}``, batch_stats ``{"bn": {...}}``).
    """
    a, b, c = dims
    k1, k2 = jax.random.split(key)
    params = {"fc1": uniform_kernel(k1, a, b), "bn": norm_params(b),
              "fc2": uniform_kernel(k2, b, c)}
    return params, {"bn": bn_stats(b)}


def mlp_bn(params: dict, stats: dict, x: jax.Array, *, train: bool, weights: jax.Array,
           settings: BNSettings) -> tuple[jax.Array, dict]:
    """Applies :func:`mlp_bn_init`'s block: [B, a] -> [B, c] in the kernels' dtype; returns the
    new stats too."""
    x = x.astype(params["fc1"].dtype)
    h, bn = batch_norm(params["bn"], stats["bn"], x @ params["fc1"], train=train, weights=weights,
                       settings=settings)
    return jax.nn.relu(h) @ params["fc2"], {"bn": bn}


def avg_pool(x: jax.Array, factor: int) -> jax.Array:
    """``nn.AvgPool2d(factor)`` on NHWC maps whose side is a multiple of ``factor``."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
