"""LDC -- Logits DeConfusion (Li et al., CVPR 2025), as pure functions over CLIP's taps.

Frozen CLIP gives four intermediate taps, the image embedding ``f`` and the
zero-shot logits ``s = logit_scale · f̂ Wᵀ``. LDC learns::

    MAF   a_i = adapter_i(tap_i)                 i = 1..4
          z   = project(Σ_i ω_i a_i)             project: CLIP's frozen attnpool (ResNet)
                                                 or ``@ proj`` (ViT, no ln_post); ω = .1 .2 .3 .4
          mlp = head(z)                          Linear(E, H) - BN - ReLU - Linear(H, C)
    ICD   ada = s + g3(g1(s) + g2(z))            g = Linear - BN - ReLU - Linear (bias-free);
                                                 g1: C->E->E, g2: E->E->E, g3: E->E->C
    ALF   w   = sigmoid(g_w(z))                  g_w: E->E->1
          tot = w · mlp + (1 - w) · ada
    loss  CE(mlp) + CE(ada) + CE(tot) + L1(mlp, s) + L1(ada, s)   (all weights 1)

Adapters -- ResNet (taps ``layer1..4``): 1x1 conv (no bias) to the layer4
channel count F, BatchNorm2d, ReLU, AvgPool to the layer4 grid (RN50 at 224:
pools 8, 4, 2, 1 -- computed from the variant's grids), fused maps go through
the attention pool. ViT (tokens after blocks at depth 6/12, 8/12, 10/12,
12/12 -- :func:`vit_tap_blocks`): Linear W->W (no bias), LayerNorm, ReLU,
mean over all tokens (class token included); the fused vector goes through
``proj``. The reported prediction is ``β·mlp + (1 - β)·ada`` with β searched
on validation over {0, 0.02, ..., 1} (the grid search of
:mod:`~jaxclip_fs.methods.search`: the logits are linear in β); without
validation (``validation_free``) β = 0.5, our fixed choice. CE is the batch
mean, L1 the mean over rows and classes.

Training (official ``ldc_train.py``): AdamW lr 1e-4 (their ``lr / 10``), wd
1e-4, eps 1e-4, cosine annealing per step, 50 epochs, batch 64,
RandomResizedCrop(scale 0.8-1, bicubic) + flip; BatchNorm layers of the new
modules in train mode, the CLIP trunk and attention pool frozen in eval mode;
the *final* epoch's weights are evaluated (no epoch selection).
The library's one trainer runs that loop (:mod:`jaxclip_fs.train.trainer`,
``epoch_selection="final"``, BatchNorm statistics in its auxiliary slot).

Ablation switches (``LDCConfig``): ``fusion`` -- ``fixed`` (.1/.2/.3/.4, the
official ``fuse_type=2``, default), ``average`` (1/4 each, their
``fuse_type=1``), ``learned`` (softmax weights initialised at .1/.2/.3/.4;
ours, for the paper's "learned weights" row), ``concat`` (their
``fuse_type=3``: ResNet projects each adapted map, concatenates [4E] and maps
Linear(4E, F)-BN-ReLU-Linear(F, E); ViT concatenates [4W], Linear(4W, W)-BN-
ReLU-Linear(W, W), then ``proj``). ``ablation`` -- ``full``; ``maf_only``
(no ICD / ALF: ``ada = s``, ``tot = mlp``, loss CE(mlp) + L1(mlp, s), so the β
search blends the MAF head with zero-shot); ``icd_only`` (no MAF / head: ICD
reads CLIP's own embedding ``f`` as ``z``, ``mlp = tot = ada``, loss
CE(ada) + L1(ada, s)). The official code has no switch for the last two; these
are our reading of the paper's ablation.

Deviations from the official code: float32 throughout (theirs runs the model
in fp16 on GPU); sizes that the code hard-codes for RN50 (adapter channels
2048, concat hidden 2048) follow the variant (layer4 channels), so RN50x4 etc.
work; the ViT head hidden width 2048 is kept for every ViT (a config field).
Official ViT taps are the last block and every second one before it (for
ViT-L/14: 18, 20, 22, 24); we default to proportional depth (12, 16, 20, 24),
``rule="official"`` reproduces theirs. The two agree for 12-block ViTs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs import catalogue
from jaxclip_fs.methods.base import (
    Compute, Hyperparameters, Method, Official, Option, Training, cross_entropy,
)
from jaxclip_fs.methods.images import ImageInputs, ImageSpec, Projector, needs_binding
from jaxclip_fs.methods.ldc_layers import (
    BNSettings, avg_pool, batch_norm, bn_stats, layer_norm, mlp_bn, mlp_bn_init, norm_params,
    uniform_kernel,
)

TOWERS = ("resnet", "vit")
FUSIONS = ("fixed", "average", "learned", "concat")
ABLATIONS = ("full", "maf_only", "icd_only")
FIXED_WEIGHTS = (0.1, 0.2, 0.3, 0.4)
NUM_LEVELS = 4
VIT_DEPTHS = (6, 8, 10, 12)  # of 12 blocks
VIT_HEAD_HIDDEN = 2048
BETA_STEPS = 50  # β = i / 50, i = 0..50 (official ``search_hp``: step=50)

VIT_RULES = ("proportional", "official")
BN_STATS = ("official", "update_bn")
#: Compute dtypes of LDC's own layers (the official code casts every Conv / Linear weight to
#: float16 and trains them so, with AdamW eps 1e-4).
DTYPES = ("float32", "float16", "bfloat16")
#: Parameter names of LDC's Linear / 1x1-conv weights (cast to the compute dtype).
KERNELS = ("kernel", "fc1", "fc2")


def vit_tap_blocks(num_layers: int, rule: str = "proportional") -> tuple[int, ...]:
    """The four 1-based ViT blocks LDC taps.

    ``"proportional"``: ``round_half_up(L · d / 12)`` for d = 6, 8, 10, 12 (at
    least 1; repeats are possible for tiny models). ``"official"``: blocks
    L-6, L-4, L-2, L (the official ``return_fea`` rule; needs L >= 7).

    Raises:
      ConfigError: unknown rule, or too few blocks for ``"official"``.
    """
    if rule == "proportional":
        return tuple(max(1, math.floor(num_layers * d / 12 + 0.5)) for d in VIT_DEPTHS)
    if rule == "official":
        if num_layers < 7:
            raise ConfigError(f"the official ViT tap rule needs >= 7 blocks, got {num_layers}")
        return tuple(num_layers - k for k in (6, 4, 2, 0))
    raise ConfigError(f"unknown ViT tap rule '{rule}'; use 'proportional' or 'official'")


@dataclasses.dataclass(frozen=True)
class LDCConfig:
    """Shapes and switches of one LDC model.

    Attributes:
      tower: ``"resnet"`` or ``"vit"``.
      tap_dims: channels (ResNet) or width (ViT) of the four taps.
      pools: ResNet: average-pool factor bringing each tap to the layer4 grid; ViT: ().
      fused_dim: F, width of the adapted taps (ResNet: layer4 channels; ViT: W).
      embed_dim: E, the projector's output (CLIP's embedding width).
      num_classes: C.
      head_hidden: H of the MAF head (ResNet: E; ViT: 2048).
      fusion: one of :data:`FUSIONS`.
      ablation: one of :data:`ABLATIONS`.
      bn: BatchNorm momentum / eps (PyTorch's 0.1 / 1e-5).
      ln_eps: LayerNorm eps of the ViT adapters.
    """

    tower: str
    tap_dims: tuple[int, ...]
    pools: tuple[int, ...]
    fused_dim: int
    embed_dim: int
    num_classes: int
    head_hidden: int
    fusion: str = "fixed"
    ablation: str = "full"
    bn: BNSettings = BNSettings()
    ln_eps: float = 1e-5

    def __post_init__(self):
        if self.tower not in TOWERS:
            raise ConfigError(f"LDC tower must be one of {TOWERS}, got '{self.tower}'")
        if self.fusion not in FUSIONS:
            raise ConfigError(
                f"unknown LDC fusion '{self.fusion}'; use one of {', '.join(FUSIONS)}")
        if self.ablation not in ABLATIONS:
            raise ConfigError(
                f"unknown LDC ablation '{self.ablation}'; use one of {', '.join(ABLATIONS)}")
        if len(self.tap_dims) != NUM_LEVELS:
            raise ConfigError(f"LDC needs {NUM_LEVELS} taps, got {len(self.tap_dims)}")

    @property
    def uses_maf(self) -> bool:
        return self.ablation != "icd_only"

    @property
    def uses_icd(self) -> bool:
        return self.ablation != "maf_only"


def resnet_config(tap_shapes: Sequence[Sequence[int]], embed_dim: int, num_classes: int,
                  **switches: Any) -> LDCConfig:
    """An LDC config for a ModifiedResNet from its four tap shapes [h, w, c] (layer1..4).

    Pool factors are ``h_i / h_4`` (RN50 at 224: 56/7 = 8, 4, 2, 1).

    Raises:
      ConfigError: a tap side not a multiple of layer4's.
    """
    sides = [int(shape[0]) for shape in tap_shapes]
    if any(side % sides[-1] for side in sides):
        raise ConfigError(f"ResNet tap sides {sides} are not multiples of the last one")
    channels = tuple(int(shape[-1]) for shape in tap_shapes)
    return LDCConfig(tower="resnet", tap_dims=channels,
                     pools=tuple(side // sides[-1] for side in sides), fused_dim=channels[-1],
                     embed_dim=embed_dim, num_classes=num_classes, head_hidden=embed_dim,
                     **switches)


def vit_config(width: int, embed_dim: int, num_classes: int, head_hidden: int = VIT_HEAD_HIDDEN,
               **switches: Any) -> LDCConfig:
    """An LDC config for a ViT of width W (all four taps are [1 + N, W] token sets)."""
    return LDCConfig(tower="vit", tap_dims=(width,) * NUM_LEVELS, pools=(), fused_dim=width,
                     embed_dim=embed_dim, num_classes=num_classes, head_hidden=head_hidden,
                     **switches)


class LDCOutputs(NamedTuple):
    """``mlp``, ``ada``, ``tot`` [B, C] and the ALF weight ``w`` [B] (module docstring)."""

    mlp: jax.Array
    ada: jax.Array
    tot: jax.Array
    w: jax.Array


@dataclasses.dataclass(frozen=True)
class LDCModel:
    """LDC's pure functions for one config and frozen projector (hashable: a static jit argument).

    * ``init(key) -> (params, batch_stats)``;
    * ``apply(params, batch_stats, projector_params, inputs, *, train, weights)``
      ``-> (outputs, batch_stats)``;
    * ``loss(params, batch_stats, projector_params, inputs, labels, weights)``
      ``-> (value, (outputs, batch_stats))``.
    """

    config: LDCConfig
    project: Projector

    # --- parameters -----------------------------------------------------------------

    def init(self, key: jax.Array) -> tuple[dict, dict]:
        """Fresh params and BatchNorm statistics, PyTorch default initialisation.

        Keys: ``fold_in(key, j)`` per module (j: 1..4 adapters, 5 fusion,
        6 head, 7..9 g1..g3, 10 ALF), so one module's draw does not depend
        on which others exist.
        """
        c = self.config
        e, f, n = c.embed_dim, c.fused_dim, c.num_classes
        k = lambda j: jax.random.fold_in(key, j)
        params: dict = {}
        stats: dict = {}
        if c.uses_maf:
            maf, maf_stats = {}, {}
            for i, dim in enumerate(c.tap_dims, start=1):
                maf[f"adapter{i}"] = {"kernel": uniform_kernel(k(i), dim, f)}
                if c.tower == "resnet":
                    maf[f"adapter{i}"]["bn"] = norm_params(f)
                    maf_stats[f"adapter{i}"] = {"bn": bn_stats(f)}
                else:
                    maf[f"adapter{i}"]["ln"] = norm_params(f)
            if c.fusion == "learned":
                maf["fusion_logits"] = jnp.log(jnp.asarray(FIXED_WEIGHTS, jnp.float32))
            if c.fusion == "concat":
                dims = (NUM_LEVELS * e, f, e) if c.tower == "resnet" else (NUM_LEVELS * f, f, f)
                maf["concat"], maf_stats["concat"] = mlp_bn_init(k(5), dims)
            params["maf"], stats["maf"] = maf, maf_stats
            params["head"], stats["head"] = mlp_bn_init(k(6), (e, c.head_hidden, n))
        if c.uses_icd:
            icd, icd_stats = {}, {}
            for j, (name, dims) in enumerate(
                    (("g1", (n, e, e)), ("g2", (e, e, e)), ("g3", (e, e, n))), start=7):
                icd[name], icd_stats[name] = mlp_bn_init(k(j), dims)
            params["icd"], stats["icd"] = icd, icd_stats
        if c.ablation == "full":
            params["alf"], stats["alf"] = mlp_bn_init(k(10), (e, e, 1))
        return params, stats

    def fusion_weights(self, params: dict) -> jax.Array:
        """ω [4] of the weighted fusions (fixed, average or learned softmax)."""
        if self.config.fusion == "learned":
            return jax.nn.softmax(params["maf"]["fusion_logits"])
        if self.config.fusion == "average":
            return jnp.full((NUM_LEVELS,), 1.0 / NUM_LEVELS, jnp.float32)
        return jnp.asarray(FIXED_WEIGHTS, jnp.float32)

    # --- forward ----------------------------------------------------------------------

    def adapt_taps(self, params: dict, stats: dict, taps: Sequence[jax.Array], *, train: bool,
                   weights: jax.Array) -> tuple[list[jax.Array], dict]:
        """The four adapter outputs ([B, g, g, F] ResNet / [B, W] ViT) and adapter stats."""
        c = self.config
        out, new_stats = [], {}
        for i, x in enumerate(taps, start=1):
            p = params["maf"][f"adapter{i}"]
            h = x.astype(p["kernel"].dtype) @ p["kernel"]
            if c.tower == "resnet":
                h, bn = batch_norm(p["bn"], stats["maf"][f"adapter{i}"]["bn"], h, train=train,
                                   weights=weights, settings=c.bn)
                new_stats[f"adapter{i}"] = {"bn": bn}
                out.append(avg_pool(jax.nn.relu(h), c.pools[i - 1]))
            else:
                out.append(jnp.mean(jax.nn.relu(layer_norm(p["ln"], h, c.ln_eps)), axis=1))
        return out, new_stats

    def maf(self, params: dict, stats: dict, projector_params: Any, taps: Sequence[jax.Array], *,
            train: bool, weights: jax.Array) -> tuple[jax.Array, dict]:
        """Multi-level adapter fusion: taps -> ``z`` [B, E] and the MAF stats."""
        c = self.config
        adapted, new_stats = self.adapt_taps(params, stats, taps, train=train, weights=weights)
        if c.fusion == "concat":
            if c.tower == "resnet":  # project each level (one batched call), then concatenate
                projected = self.project(projector_params, jnp.concatenate(adapted, axis=0))
                cat = jnp.concatenate(jnp.split(projected, NUM_LEVELS, axis=0), axis=-1)
                z, new_stats["concat"] = mlp_bn(params["maf"]["concat"], stats["maf"]["concat"],
                                                cat, train=train, weights=weights, settings=c.bn)
                return z, new_stats
            h, new_stats["concat"] = mlp_bn(params["maf"]["concat"], stats["maf"]["concat"],
                                            jnp.concatenate(adapted, axis=-1), train=train,
                                            weights=weights, settings=c.bn)
            return self.project(projector_params, h), new_stats
        omega = self.fusion_weights(params)
        fused = sum(omega[i] * a for i, a in enumerate(adapted))
        return self.project(projector_params, fused), new_stats

    def apply(self, params: dict, batch_stats: dict, projector_params: Any, inputs: ImageInputs, *,
              train: bool, weights: jax.Array | None = None) -> tuple[LDCOutputs, dict]:
        """The LDC logits of a batch (module docstring).

        Args:
          params, batch_stats: from :meth:`init` (or training).
          projector_params: the frozen CLIP variables ``project`` reads.
          inputs: :class:`ImageInputs` of B images.
          train: BatchNorm on batch statistics (returns updated running ones).
          weights: [B] 1 real / 0 padding rows (default all real).

        Returns:
          (:class:`LDCOutputs`, new batch_stats -- unchanged when not ``train``).
        """
        c = self.config
        s = inputs.s.astype(jnp.float32)
        if weights is None:
            weights = jnp.ones(s.shape[:1], jnp.float32)
        bn = dict(train=train, weights=weights, settings=c.bn)
        new_stats: dict = {}
        if c.uses_maf:
            z, new_stats["maf"] = self.maf(params, batch_stats, projector_params, inputs.taps,
                                           train=train, weights=weights)
            mlp, new_stats["head"] = mlp_bn(params["head"], batch_stats["head"], z, **bn)
        else:
            z = inputs.features.astype(jnp.float32)
        if c.uses_icd:
            icd, icd_stats = params["icd"], batch_stats["icd"]
            new_stats["icd"] = {}
            h1, new_stats["icd"]["g1"] = mlp_bn(icd["g1"], icd_stats["g1"], s, **bn)
            h2, new_stats["icd"]["g2"] = mlp_bn(icd["g2"], icd_stats["g2"], z, **bn)
            delta, new_stats["icd"]["g3"] = mlp_bn(icd["g3"], icd_stats["g3"], h1 + h2, **bn)
            ada = s + delta
        else:
            ada = s
        if c.ablation == "full":
            gate, new_stats["alf"] = mlp_bn(params["alf"], batch_stats["alf"], z, **bn)
            w = jax.nn.sigmoid(gate[:, 0])
            tot = w[:, None] * mlp + (1.0 - w[:, None]) * ada
        elif c.ablation == "maf_only":
            w = jnp.ones(s.shape[:1], jnp.float32)
            tot = mlp
        else:  # icd_only
            w = jnp.zeros(s.shape[:1], jnp.float32)
            mlp = tot = ada
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        return LDCOutputs(f32(mlp), f32(ada), f32(tot), f32(w)), new_stats

    def loss(self, params: dict, batch_stats: dict, projector_params: Any, inputs: ImageInputs,
             labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, tuple[LDCOutputs, dict]]:
        """The official five-term loss (train-mode forward), weighted over real rows.

        ``CE(mlp) + CE(ada) + CE(tot) + L1(mlp, s) + L1(ada, s)`` for ``full``;
        ``CE(mlp) + L1(mlp, s)`` for ``maf_only``; ``CE(ada) + L1(ada, s)`` for
        ``icd_only``. CE: mean over real rows; L1: mean |x - s| over real rows
        and all classes (``F.l1_loss``).

        Returns:
          (loss, (outputs, new batch_stats)) -- ``jax.value_and_grad(..., has_aux=True)`` ready.
        """
        out, new_stats = self.apply(params, batch_stats, projector_params, inputs, train=True,
                                    weights=weights)
        s = inputs.s.astype(jnp.float32)

        def ce(logits):
            return cross_entropy(logits, labels, weights)

        def l1(logits):
            per_row = jnp.mean(jnp.abs(logits - s), axis=-1)
            return jnp.sum(weights * per_row) / jnp.maximum(jnp.sum(weights), 1.0)

        ablation = self.config.ablation
        if ablation == "full":
            value = ce(out.mlp) + ce(out.ada) + ce(out.tot) + l1(out.mlp) + l1(out.ada)
        elif ablation == "maf_only":
            value = ce(out.mlp) + l1(out.mlp)
        else:
            value = ce(out.ada) + l1(out.ada)
        return value, (out, new_stats)


# --- LDC as an image method: the reported prediction β·mlp + (1 - β)·ada --------------------

BETA = hp_lib.HParam("beta", "search", "weight of the MAF head: beta·mlp + (1 - beta)·ada",
                     minimum=0.0, maximum=1.0)
#: Official training settings (``ldc_train.py``: lr 1e-3 / 10, AdamW wd 1e-4 eps 1e-4).
TRAIN_DEFAULTS = {"epochs": 50.0, "lr": 1e-4, "batch_size": 64.0, "eps": 1e-4,
                  "weight_decay": 1e-4}
#: Without validation (the official code always searches β): the equal blend of its heads.
VALIDATION_FREE = {"beta": 0.5}
OPTIONS = (
    Option("fusion", FUSIONS, "how MAF fuses its four levels (fixed .1/.2/.3/.4 is official)"),
    Option("ablation", ABLATIONS, "full LDC, MAF only (no ICD / ALF) or ICD only (no MAF)"),
    Option("vit_taps", VIT_RULES, "ViT blocks tapped: proportional depth or the official rule"),
    Option("bn_stats", BN_STATS, "BatchNorm statistics evaluated: as training left them "
                                 "(official) or re-estimated on the final weights (update_bn)"),
    Option("dtype", DTYPES, "dtype of LDC's own weights and activations (the official code: "
                            "float16 weights, trained so); BatchNorm in float32. Mixed "
                            "precision (float32 weights) is --compute-dtype instead"),
)
CARD = catalogue.card("ldc")
OFFICIAL = Official(
    source="LiShuo1001/LDC ldc_train.py (last of 50 epochs; beta searched on the whole val "
           "split, ImageNet: on test; seed 2024; every Conv/Linear weight cast to float16, "
           "AdamW eps 1e-4) and its README tables, each the maximum over the five test "
           "accuracies clip, mlp, ada, tot and the beta-fused one (result/log)",
    epochs_on="final", reported="max_heads", seeds=(2024,), dtype="float16")
#: The heads LDC reports besides its fused prediction.
HEADS = ("s", "mlp", "ada", "tot")


def beta_grid() -> np.ndarray:
    """{0, 0.02, ..., 1}: ``i / 50`` for i = 0..50 (float64, as the official list)."""
    return np.arange(BETA_STEPS + 1, dtype=np.float64) / BETA_STEPS


def tap_names(spec: ImageSpec, vit_rule: str = "proportional") -> tuple[str, ...]:
    """LDC's four taps of a CLIP: ``layer1..4``, or the blocks of :func:`vit_tap_blocks`."""
    if spec.tower == "resnet":
        return ("layer1", "layer2", "layer3", "layer4")
    depth = sum(name.startswith("block") for name in spec.tap_names)
    return tuple(f"block{i}" for i in vit_tap_blocks(depth, vit_rule))


@functools.lru_cache(maxsize=64)
def model_for(spec: ImageSpec, num_classes: int, fusion: str = "fixed", ablation: str = "full",
              vit_rule: str = "proportional") -> LDCModel:
    """The :class:`LDCModel` of a CLIP (its taps, widths and frozen projector) for C classes."""
    switches = dict(fusion=fusion, ablation=ablation)
    taps = tap_names(spec, vit_rule)
    if spec.tower == "vit":
        width = spec.shape(taps[0])[-1]
        config = vit_config(width, spec.embed_dim, num_classes, **switches)
    else:
        config = resnet_config([spec.shape(t) for t in taps], spec.embed_dim, num_classes,
                               **switches)
    return LDCModel(config, spec.project)


def terms(pre, params, task, hp):
    """``β·mlp + (1 - β)·ada = ada + β (mlp - ada)``: base ``ada``, residual of β ``mlp - ada``."""
    del params, task, hp
    return pre["ada"], {"beta": pre["mlp"] - pre["ada"]}


def heads(pre):
    """The reported heads: zero-shot ``s``, ``mlp``, ``ada``, ``tot`` (each [M, C])."""
    return {name: pre[name] for name in HEADS}


def in_dtype(params: dict, dtype: str) -> dict:
    """``params`` with every Linear / 1x1-conv weight (:data:`KERNELS`) in ``dtype``; norms,
    fusion logits and statistics stay float32."""
    def cast(path, leaf):
        return leaf.astype(dtype) if getattr(path[-1], "key", None) in KERNELS else leaf
    return jax.tree_util.tree_map_with_path(cast, params)


def ldc(fusion: str = "fixed", ablation: str = "full", vit_taps: str = "proportional",
        bn_stats: str = "official", dtype: str = "float32") -> Method:
    """LDC as an image-input :class:`Method` (module docstring).

    ``bind(spec)`` builds the model for a CLIP; then ``init`` gives
    ``{"heads": params, "batch_stats": BatchNorm statistics}``, ``loss`` is
    the five-term loss (train-mode BatchNorm: ``batch_stats`` are updated by
    the forward pass), ``precompute`` runs the heads in eval mode on a batch
    of :class:`~jaxclip_fs.methods.images.ImageInputs`, and ``β`` is searched
    as a linear hyperparameter. The final epoch is kept (official).
    """
    values = {"fusion": fusion, "ablation": ablation, "vit_taps": vit_taps, "bn_stats": bn_stats,
              "dtype": dtype}

    def bind(spec: ImageSpec) -> Method:
        def model(task) -> LDCModel:
            return model_for(spec, task.class_mask.shape[0], fusion, ablation, vit_taps)

        def init(key, task, hp):
            del hp
            params, stats = model(task).init(key)
            return {"heads": in_dtype(params, dtype), "batch_stats": stats}

        def loss(params, task, inputs, labels, weights, hp):
            del hp
            value, (_, stats) = model(task).loss(params["heads"], params["batch_stats"],
                                                 task.frozen["projector"], inputs, labels, weights)
            return value, {"batch_stats": stats}

        def precompute(params, task, queries, query_mask):
            del query_mask
            out, _ = model(task).apply(params["heads"], params["batch_stats"],
                                       task.frozen["projector"], queries, train=False)
            return {"s": queries.s.astype(jnp.float32), "mlp": out.mlp, "ada": out.ada,
                    "tot": out.tot}

        def batch_stats(params, task, inputs, labels, weights, hp):
            """The batch's own BatchNorm statistics (train mode, momentum 1) of every layer."""
            del labels, hp
            m = model(task)
            exact = LDCModel(dataclasses.replace(m.config, bn=m.config.bn._replace(momentum=1.0)),
                             m.project)
            _, stats = exact.apply(params["heads"], params["batch_stats"],
                                   task.frozen["projector"], inputs, train=True, weights=weights)
            return {"batch_stats": stats}

        return dataclasses.replace(
            method, bind=None, taps=tap_names(spec, vit_taps),
            compute=dataclasses.replace(method.compute, init=init, loss=loss,
                                        precompute=precompute),
            training=dataclasses.replace(
                method.training,
                state_estimate=batch_stats if bn_stats == "update_bn" else None))

    method = Method(
        CARD,
        Compute(init=needs_binding, precompute=needs_binding, terms=terms, linear=("beta",),
                loss=needs_binding, heads=heads, confusion=("s", "ada")),
        Hyperparameters((BETA,), lambda dataset, dim: dict(TRAIN_DEFAULTS),
                        lambda dataset: {"beta": beta_grid()}, validation_free=VALIDATION_FREE),
        Training(trainable=("heads",), state=("batch_stats",), epoch_selection="final"),
        official=OFFICIAL, options=OPTIONS, option_values=values, bind=bind)
    return method
