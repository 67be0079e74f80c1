"""CLIP's ModifiedResNet image tower (OpenAI ``ModifiedResNet``), NHWC.

Differences from torchvision's ResNet, as in OpenAI CLIP: a 3-conv stem
(3x3/2, 3x3, 3x3, each BN + ReLU) followed by a 2x2 average pool; strided
bottlenecks average-pool (kernel = stride) after their 3x3 conv and before
their 1x1 downsample conv instead of striding; an attention pool replaces
global average pooling::

    x = stem(images)                                   [B, S/4, S/4, w]
    x = layer4(layer3(layer2(layer1(x))))              taps "layer1".."layer4"
    embedding = attnpool(x)                            [B, E]

Feature maps: layer_i has 4 * w * 2^(i-1) channels at S / 2^(i+1) pixels
(RN50 at 224: 256@56, 512@28, 1024@14, 2048@7).

BatchNorm is frozen: eval mode only, normalising with the running statistics
stored in the ``batch_stats`` collection (``mean``, ``var``; eps 1e-5);
``scale``/``bias`` are in ``params``. Nothing here updates the statistics.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclip_fs.clip.layers import dot_product_attention
from jaxclip_fs.clip.variants import CLIPConfig

BN_EPS = 1e-5


def _avg_pool(x: jax.Array, k: int) -> jax.Array:
    """``torch.nn.AvgPool2d(k)``: kernel = stride = k, no padding (NHWC)."""
    return x if k == 1 else nn.avg_pool(x, (k, k), strides=(k, k), padding="VALID")


def _conv_bn(x: jax.Array, features: int, kernel: int, conv_name: str, bn_name: str,
             dtype: jnp.dtype, stride: int = 1, relu: bool = True,
             zero_scale: bool = False) -> jax.Array:
    """Conv (no bias, padding kernel//2) + frozen BatchNorm [+ ReLU], inside a compact method.

    ``zero_scale`` mirrors open_clip's zero-initialised last BN scale of each
    bottleneck in the module's own initializer, which only ``jax.eval_shape``
    ever traces: random weights come from :func:`~jaxclip_fs.clip.model.init_variables`,
    which restates that rule by parameter name.
    """
    pad = kernel // 2
    x = nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                use_bias=False, dtype=dtype, name=conv_name)(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=dtype,
                     scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
                     name=bn_name)(x)
    return jax.nn.relu(x) if relu else x


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> avgpool(stride) -> 1x1 (4 * planes), plus a (pooled, 1x1) shortcut; ReLU."""

    planes: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_channels = 4 * self.planes
        out = _conv_bn(x, self.planes, 1, "conv1", "bn1", self.dtype)
        out = _conv_bn(out, self.planes, 3, "conv2", "bn2", self.dtype)
        out = _avg_pool(out, self.stride)
        out = _conv_bn(out, out_channels, 1, "conv3", "bn3", self.dtype, relu=False,
                       zero_scale=True)
        identity = x
        if self.stride > 1 or x.shape[-1] != out_channels:
            identity = _conv_bn(_avg_pool(x, self.stride), out_channels, 1, "downsample_conv",
                                "downsample_bn", self.dtype, relu=False)
        return jax.nn.relu(out + identity)


class ResLayer(nn.Module):
    """``blocks`` bottlenecks ``block1..``; the first one strides."""

    planes: int
    blocks: int
    stride: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(1, self.blocks + 1):
            x = Bottleneck(self.planes, self.stride if j == 1 else 1, self.dtype,
                           name=f"block{j}")(x)
        return x


class AttentionPool2d(nn.Module):
    """QKV attention pooling of a feature map, the mean token as the only query.

    ``x`` [B, h, w, C] -> tokens ``[mean; x_1..x_hw] + positional_embedding``
    [B, 1+hw, C]; one query (the mean token, ``q_proj``) attends over all
    tokens (``k_proj``, ``v_proj``) with ``heads`` heads; output ``c_proj``
    -> [B, E]. ``h * w`` must equal the positional embedding's grid
    ((image_size/32)^2).
    """

    grid: int
    heads: int
    out_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        pos = self.param("positional_embedding", nn.initializers.normal(c ** -0.5),
                         (self.grid ** 2 + 1, c), jnp.float32)
        x = x.astype(self.dtype).reshape(b, h * w, c)
        x = jnp.concatenate([jnp.mean(x, axis=1, keepdims=True), x], axis=1)
        x = x + pos.astype(self.dtype)
        d = c // self.heads
        dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
        q = dense("q_proj")(x[:, :1]).reshape(b, 1, self.heads, d)
        k = dense("k_proj")(x).reshape(b, h * w + 1, self.heads, d)
        v = dense("v_proj")(x).reshape(b, h * w + 1, self.heads, d)
        out = dot_product_attention(q, k, v).reshape(b, c)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="c_proj")(out)


class ModifiedResNet(nn.Module):
    """ResNet image tower; ``__call__`` gives (embedding, taps), see module docstring."""

    config: CLIPConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        w = c.vision_width
        self.layers = [
            ResLayer(w * 2 ** i, n, 1 if i == 0 else 2, self.dtype, name=f"layer{i + 1}")
            for i, n in enumerate(c.vision_layers)
        ]
        self.attnpool = AttentionPool2d(c.image_size // 32, c.vision_heads, c.embed_dim, self.dtype)
        # Stem: 3x3/2 (w/2) -> 3x3 (w/2) -> 3x3 (w), each BN + ReLU, then a 2x2 average pool.
        conv = lambda features, stride: nn.Conv(
            features, (3, 3), (stride, stride), padding=((1, 1), (1, 1)), use_bias=False,
            dtype=self.dtype)
        bn = lambda: nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype)
        self.conv1, self.bn1 = conv(w // 2, 2), bn()
        self.conv2, self.bn2 = conv(w // 2, 1), bn()
        self.conv3, self.bn3 = conv(w, 1), bn()

    def __call__(self, images: jax.Array, taps: tuple[str, ...] = (),
                 deterministic: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
        del deterministic  # no dropout in the ResNet tower
        x = images.astype(self.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = jax.nn.relu(bn(conv(x)))
        x = _avg_pool(x, 2)
        out = {}
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if f"layer{i}" in taps:
                out[f"layer{i}"] = x
        return self.attnpool(x), out
