"""IMO adapters (Kravets & Namboodiri, BMVC'24): training, orbax checkpoint, loading.

"Intra-modal overlap correction": a bottleneck adapter in every ViT image
block (:class:`~jaxclip_fs.clip.layers.BottleneckAdapter`, added with
:func:`~jaxclip_fs.clip.model.add_adapters`) is trained, with a linear head
``Linear(E, C)`` (bias, PyTorch default init) on CLIP's image embedding and
cross-entropy, on a generic labelled image set -- the paper used a subset of
Open Images; here any registry dataset's split. Everything else is frozen.
Official ``supervised_train.py``: one epoch, AdamW lr 8e-3 (PyTorch defaults:
betas .9/.999, eps 1e-8, weight decay 0.01), no schedule, batch 128,
shuffled, ``drop_last=True``; images by CLIP's evaluation transform (resize,
center crop), no augmentation; adapter dropout 0.1 active.

Decision on normalisation: the official training transform has
``Normalize`` commented out (the adapters see [0, 1] pixels) while TA++/TX++
then encode CLIP-*normalised* images (``run.py``). We normalise by default,
so the adapters are trained on the inputs they are used on;
``normalize=False`` reproduces the official [0, 1] pixels.

Checkpoint (:func:`save_imo_adapters`): an orbax tree ``{"adapters":
{"block<i>": {down, up}}, "head": {kernel, bias}}`` via
:mod:`jaxclip_fs.io.checkpoints` (atomic), with metadata naming the backbone,
its architecture and weights identity, the adapter settings, the dataset and
the training settings and losses. :func:`load_imo_adapters` checks all of it
against the CLIP it is put into and returns the adapted CLIP, whose
``weights_id`` extends the base id with a digest of the adapters (so feature
caches never mix the two encoders).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxclip_fs.clip.model import abstract_variables, add_adapters, flatten_variables
from jaxclip_fs.clip.preprocess import CLIP_MEAN, CLIP_STD, preprocess
from jaxclip_fs.clip.variants import CLIPConfig, architecture_diff
from jaxclip_fs.errors import CheckpointError, ConfigError
from jaxclip_fs.features.pipeline import default_workers, ordered_prefetch
from jaxclip_fs.io import checkpoints
from jaxclip_fs.io.console import progress_bar
from jaxclip_fs.io.records import code_version
from jaxclip_fs.methods.base import cross_entropy
from jaxclip_fs.methods.ldc_layers import uniform_kernel
from jaxclip_fs.train.trainer import TrainState, update

CHECKPOINT_KIND = "imo_adapters"
ADAPTER_KEY = "adapter"
ADAPTER_STREAM, HEAD_STREAM, DROPOUT_STREAM = 0, 1, 2
LOSS_DISPLAY_EVERY = 20  # steps between progress-bar loss updates (each one waits on the device)


@dataclasses.dataclass(frozen=True)
class IMOSettings:
    """Adapter and training settings (defaults: the official ones).

    Attributes:
      epochs, lr, batch_size, weight_decay, eps: AdamW training (constant lr).
      seed: initialisation, shuffling and dropout.
      adapter_dim, scale, dropout: the bottleneck (64, 0.03, 0.1).
      normalize: CLIP-normalised inputs (ours) vs [0, 1] pixels (official).
    """

    epochs: int = 1
    lr: float = 8e-3
    batch_size: int = 128
    weight_decay: float = 0.01
    eps: float = 1e-8
    seed: int = 0
    adapter_dim: int = 64
    scale: float = 0.03
    dropout: float = 0.1
    normalize: bool = True

    def check(self) -> None:
        """ConfigError naming the first bad setting (as a CLI flag)."""
        for name in ("epochs", "batch_size", "adapter_dim"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.eps <= 0:
            raise ConfigError(f"--lr and eps must be > 0, got {self.lr}, {self.eps}")
        if self.weight_decay < 0 or not 0 <= self.dropout < 1 or self.seed < 0:
            raise ConfigError("--weight-decay and --seed must be >= 0 and dropout in [0, 1)")


@dataclasses.dataclass(frozen=True)
class IMOAdapters:
    """Trained adapters.

    Attributes:
      adapters: ``{"block<i>": {"down": {...}, "up": {...}}}`` numpy.
      head: the linear head ``{"kernel": [E, C], "bias": [C]}`` numpy.
      losses: mean training loss per epoch.
      metadata: what the checkpoint records (see module docstring).
    """

    adapters: dict
    head: dict
    losses: tuple[float, ...]
    metadata: dict


# --- adapters inside the CLIP variables ----------------------------------------------------


def split_adapters(variables: dict) -> tuple[dict, dict]:
    """CLIP variables with adapters → (variables without them, ``{"block<i>": adapter}``)."""
    visual = dict(variables["params"]["visual"])
    adapters = {}
    for name, block in list(visual.items()):
        if isinstance(block, dict) and ADAPTER_KEY in block:
            adapters[name] = block[ADAPTER_KEY]
            visual[name] = {k: v for k, v in block.items() if k != ADAPTER_KEY}
    return {**variables, "params": {**variables["params"], "visual": visual}}, adapters


def merge_adapters(base: dict, adapters: dict) -> dict:
    """Inverse of :func:`split_adapters`."""
    visual = dict(base["params"]["visual"])
    for name, adapter in adapters.items():
        visual[name] = {**visual[name], ADAPTER_KEY: adapter}
    return {**base, "params": {**base["params"], "visual": visual}}


def adapter_digest(adapters: dict) -> str:
    """sha256 (16 hex) over the adapter arrays' paths, shapes and float32 bytes."""
    h = hashlib.sha256()
    for path, leaf in sorted(flatten_variables(adapters).items()):
        array = np.ascontiguousarray(np.asarray(leaf, np.float32))
        h.update(("/".join(path) + str(array.shape)).encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]


def with_adapters(clip, adapters: dict, config: CLIPConfig, digest: str):
    """A copy of LoadedCLIP ``clip`` whose image blocks carry ``adapters`` (and ``config``)."""
    base, existing = split_adapters(clip.params)
    if existing:
        raise ConfigError(f"{clip.config.name} already has adapters")
    variables = merge_adapters(base, jax.tree.map(jnp.asarray, adapters))
    return dataclasses.replace(clip, config=config, model=clip.model.clone(config=config),
                               params=variables, weights_id=f"{clip.weights_id}+imo:{digest}")


# --- training --------------------------------------------------------------------------------


def head_init(key: jax.Array, embed_dim: int, num_classes: int) -> dict:
    """PyTorch's default ``Linear(E, C)``: kernel and bias U(±1/sqrt(E))."""
    k_w, k_b = jax.random.split(key)
    bound = embed_dim ** -0.5
    return {"kernel": uniform_kernel(k_w, embed_dim, num_classes),
            "bias": jax.random.uniform(k_b, (num_classes,), jnp.float32, -bound, bound)}


def imo_loss(model, trainable: dict, base: dict, images: jax.Array, labels: jax.Array,
             key: jax.Array, normalize: bool) -> jax.Array:
    """Mean CE of ``head(encode_image(images))`` with the adapters in train mode (dropout on).

    Args:
      model: the CLIP module with ``adapter_dim`` set.
      trainable: ``{"adapters": ..., "head": ...}``.
      base: the frozen variables without adapters.
      images: [B, S, S, 3] CLIP-normalised; with ``normalize=False`` they are
        mapped back to [0, 1] pixels first (the official inputs).
      key: dropout key.
    """
    if not normalize:
        images = images * jnp.asarray(CLIP_STD, jnp.float32) + jnp.asarray(CLIP_MEAN, jnp.float32)
    variables = merge_adapters(base, trainable["adapters"])
    emb, _ = model.apply(variables, images, deterministic=False, rngs={"dropout": key},
                         method="encode_image")
    logits = emb @ trainable["head"]["kernel"] + trainable["head"]["bias"]
    return cross_entropy(logits, labels, jnp.ones(labels.shape, jnp.float32))


def make_step(model, settings: IMOSettings):
    """The jitted AdamW step ``(state, base, images, labels, key) -> (state, loss)``.

    The library's one optimiser step (:func:`~jaxclip_fs.train.trainer.update`)
    on a :class:`~jaxclip_fs.train.trainer.TrainState` whose ``learned`` are
    the adapters and head (no auxiliary state). Returns ``(optimizer, step)``.
    """
    optimizer = optax.adamw(settings.lr, b1=0.9, b2=0.999, eps=settings.eps,
                            weight_decay=settings.weight_decay)

    def loss_fn(trainable, aux, base, images, labels, key):
        del aux
        return imo_loss(model, trainable, base, images, labels, key, settings.normalize), {}

    def step(state, base, images, labels, key):
        return update(loss_fn, optimizer, state, base, images, labels, key)

    return optimizer, jax.jit(step, donate_argnums=(0,))


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled item order of one epoch: ``default_rng([seed, epoch]).permutation``."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def train_imo(clip, dataset, settings: IMOSettings = IMOSettings(), *, split: str = "train",
              workers: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> IMOAdapters:
    """Trains IMO adapters on ``dataset.split(split)`` (module docstring).

    Each epoch visits the split in :func:`epoch_order` and drops the last
    partial batch (official ``drop_last=True``). Keys from ``key(seed)``:
    ``fold_in(., 0)`` adapters, ``fold_in(., 1)`` head, ``fold_in(., 2)``
    dropout (then per epoch and step).

    Raises:
      ConfigError: a ResNet backbone, bad settings, or fewer images than one batch.
      DataError: an unreadable image (names the file).
    """
    settings.check()
    if not clip.config.is_vit:
        raise ConfigError(f"IMO adapters go into ViT blocks; {clip.config.name} is a ResNet")
    data = dataset.split(split)
    steps = len(data) // settings.batch_size
    if steps == 0:
        raise ConfigError(f"--batch-size {settings.batch_size} exceeds the {len(data)} images of "
                          f"{dataset.name} {split} (the last partial batch is dropped)")
    root = jax.random.key(settings.seed)
    config, variables = add_adapters(clip.params, clip.config,
                                     jax.random.fold_in(root, ADAPTER_STREAM),
                                     settings.adapter_dim, settings.scale, settings.dropout)
    model = clip.model.clone(config=config)
    base, adapters = split_adapters(variables)
    trainable = {"adapters": adapters,
                 "head": head_init(jax.random.fold_in(root, HEAD_STREAM), config.embed_dim,
                                   dataset.num_classes)}
    optimizer, step = make_step(model, settings)
    state = TrainState(trainable, {}, optimizer.init(trainable))
    dropout_root = jax.random.fold_in(root, DROPOUT_STREAM)
    size = config.image_size
    workers = workers or default_workers()
    losses = []
    for epoch in range(settings.epochs):
        order = epoch_order(len(data), settings.seed, epoch)[:steps * settings.batch_size]
        bar = progress_bar(steps, desc=f"IMO epoch {epoch + 1}/{settings.epochs}", unit="step",
                           disable=not progress, leave=False)
        stream = ordered_prefetch(lambda i: preprocess(data.image(int(i)), size),
                                  order, workers=workers, ahead=2 * settings.batch_size)
        epoch_losses = []
        try:
            for j in range(steps):
                images = np.stack([next(stream)[1].result() for _ in range(settings.batch_size)])
                labels = data.labels[order[j * settings.batch_size:(j + 1) * settings.batch_size]]
                key = jax.random.fold_in(jax.random.fold_in(dropout_root, epoch), j)
                state, loss = step(state, base, images, jnp.asarray(labels, jnp.int32), key)
                epoch_losses.append(loss)  # device scalars: no host wait per step
                bar.update(1)
                if j % LOSS_DISPLAY_EVERY == 0:
                    bar.set_postfix(loss=f"{float(loss):.3f}")
        finally:
            stream.close()
            bar.close()
        losses.append(float(np.mean(jax.device_get(epoch_losses))))
        if log:
            log(f"IMO epoch {epoch + 1}/{settings.epochs}: mean loss {losses[-1]:.4f}")
    trained = jax.device_get(state.learned)
    metadata = {
        "kind": CHECKPOINT_KIND,
        "backbone": clip.config.name,
        "clip_config": clip.config.to_dict(),
        "weights": "random" if clip.is_random else clip.weights_id,
        "weights_id": clip.weights_id,
        "adapter": {"dim": settings.adapter_dim, "scale": settings.scale,
                    "dropout": settings.dropout},
        "dataset": dataset.name, "dataset_identity": dataset.identity, "split": split,
        "images": len(data), "steps_per_epoch": steps,
        "training": dataclasses.asdict(settings),
        "losses": losses,
        "digest": adapter_digest(trained["adapters"]),
        "code_version": code_version(),
    }
    return IMOAdapters(trained["adapters"], trained["head"], tuple(losses), metadata)


# --- checkpoint ----------------------------------------------------------------------------


def save_imo_adapters(path: str | os.PathLike, trained: IMOAdapters) -> None:
    """Writes the adapters and head as an orbax checkpoint with metadata (atomically)."""
    checkpoints.save_tree(path, {"adapters": trained.adapters, "head": trained.head},
                          trained.metadata)


def load_imo_adapters(path: str | os.PathLike, clip):
    """The LoadedCLIP ``clip`` with the IMO adapters saved at ``path``.

    Raises:
      CheckpointError: not an IMO checkpoint, another architecture, other
        base weights, or adapter arrays that do not fit (names the path).
    """
    path = os.fspath(path)
    tree, meta = checkpoints.restore_tree(path)
    if meta.get("kind") != CHECKPOINT_KIND or "adapters" not in tree:
        raise CheckpointError(f"{path}: not an IMO adapter checkpoint (kind {meta.get('kind')!r})")
    try:
        trained_on = CLIPConfig.from_dict(meta["clip_config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: unreadable clip_config in metadata ({exc})") from None
    diff = architecture_diff(trained_on, clip.config)
    if diff:
        raise CheckpointError(f"{path}: adapters for {trained_on.name}, not {clip.config.name} "
                              f"({'; '.join(diff[:3])})")
    if meta.get("weights_id") != clip.weights_id:
        raise CheckpointError(f"{path}: adapters were trained on weights {meta.get('weights_id')}, "
                              f"not {clip.weights_id}")
    adapter = meta.get("adapter", {})
    try:
        config = dataclasses.replace(clip.config, adapter_dim=int(adapter["dim"]),
                                     adapter_scale=float(adapter["scale"]),
                                     adapter_dropout=float(adapter["dropout"]))
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: bad adapter settings in metadata ({exc})") from None
    _check_adapter_shapes(path, config, tree["adapters"])
    return with_adapters(clip, tree["adapters"], config, adapter_digest(tree["adapters"]))


def _check_adapter_shapes(path: str, config: CLIPConfig, adapters: dict) -> None:
    _, expected = split_adapters(abstract_variables(config))
    want = {p: tuple(leaf.shape) for p, leaf in flatten_variables(expected).items()}
    have = {p: tuple(np.shape(leaf)) for p, leaf in flatten_variables(adapters).items()}
    if want != have:
        missing = sorted("/".join(p) for p in set(want) - set(have))
        wrong = sorted("/".join(p) for p in set(want) & set(have) if want[p] != have[p])
        extra = sorted("/".join(p) for p in set(have) - set(want))
        raise CheckpointError(f"{path}: adapter arrays do not fit {config.name} (missing "
                              f"{missing[:3]}, mis-shaped {wrong[:3]}, unexpected {extra[:3]})")


def describe(trained: IMOAdapters) -> str:
    """One line: blocks, settings, losses."""
    m = trained.metadata
    return (f"IMO adapters for {m['backbone']} ({len(trained.adapters)} blocks, dim "
            f"{m['adapter']['dim']}) trained on {m['dataset']} {m['split']} "
            f"({m['images']} images, {m['steps_per_epoch']} steps/epoch); "
            f"loss per epoch: {', '.join(f'{x:.4f}' for x in trained.losses)}")
