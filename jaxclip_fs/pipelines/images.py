"""The ``images`` input: image methods train and predict on a frozen CLIP's outputs.

An image method (LDC; ``Method.inputs == "images"``) reads, per image,
:class:`~jaxclip_fs.methods.images.ImageInputs` -- the taps it asked for
(``Method.taps`` once bound to the CLIP's :class:`ImageSpec`), the
zero-shot logits ``s`` and the embedding ``f``. :class:`ImageSource` gives:

* :meth:`ImageSource.spec` -- the CLIP's shape facts and frozen projector;
* :meth:`ImageSource.prepare` -- a dataset's :class:`ImageData`: the
  support *pool* (the union of the seeds' nested few-shot sets) on one of
  two training paths, the frozen arrays, and :meth:`ImageData.stream`,
  which runs val / test / OOD images through the frozen trunk in fixed
  batches and applies a function to their inputs.

Two training paths give the trainer's ``fetch(key, rows)`` the same inputs:

* **trunk** (:func:`trunk_fetch`): the support images live on device as
  uint8 [V, N, S, S, 3] (CLIP's evaluation transform, exactly invertible to
  bytes); each step crops them afresh with
  :func:`~jaxclip_fs.features.augment.jax_random_resized_crop`
  (``images.aug_scale``, LDC: 0.8-1; ratio 3/4-4/3, flip, bicubic),
  normalises them and runs the frozen CLIP to the taps inside the compiled
  step (``stop_gradient``). Memory: the images only. Deviation: the crop is
  taken from the preprocessed S x S centre square, not the original image.
* **cache** (:func:`cache_fetch`): V views per support image (view 0
  un-augmented, views 1..V-1 the features package's host-side
  RandomResizedCrop + flip) encoded once with taps through the
  content-addressed feature cache; minibatches index into them. Memory:
  :func:`tap_cache_bytes`.

:func:`choose_train_path` picks ``cache`` when it fits a byte budget (else
``trunk``), unless told. Given the same views (trunk path with augmentation
off on the V cached views), both paths compute the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip.preprocess import CLIP_MEAN, CLIP_STD
from jaxclip_fs.errors import ConfigError, DataError
from jaxclip_fs.experiment.config import TRAIN_PATHS, ImagesConfig
from jaxclip_fs.features import augment
from jaxclip_fs.features.encode import FixedBatchEncoder, compute_dtype, encode_items
from jaxclip_fs.features.extract import select_train_pool
from jaxclip_fs.features.image_encoder import encode_split, load_views, make_image_encoder
from jaxclip_fs.features.pipeline import default_workers, ordered_prefetch
from jaxclip_fs.features.taps import TAP_ITEMSIZE, tap_nbytes, tap_shape
from jaxclip_fs.methods.cache import l2_normalize
from jaxclip_fs.methods.images import ImageInputs, ImageSpec
from jaxclip_fs.pipelines import ood as ood_lib
from jaxclip_fs.pipelines import sizes as sizes_lib
from jaxclip_fs.pipelines.session import ClipSession

_MEAN = np.asarray(CLIP_MEAN, np.float32)
_STD = np.asarray(CLIP_STD, np.float32)


# --- the CLIP as image methods see it ------------------------------------------------------


def image_spec(clip) -> ImageSpec:
    """The :class:`ImageSpec` of a loaded CLIP: its taps in depth order, E, the projector."""
    config = clip.config
    if config.is_vit:
        names = [f"block{i}" for i in range(1, config.vision_layers + 1)]
        projector = _projector(clip.model, "proj")
    else:
        names = ["layer1", "layer2", "layer3", "layer4"]
        projector = _projector(clip.model, "attnpool")
    return ImageSpec(tower="vit" if config.is_vit else "resnet",
                     taps=tuple((n, tuple(tap_shape(config, n))) for n in names),
                     embed_dim=config.embed_dim, project=projector)


@dataclasses.dataclass(frozen=True)
class AbstractCLIP:
    """A CLIP's architecture without weights: ``config``, ``model`` and abstract ``params``
    (``jax.ShapeDtypeStruct`` leaves) -- enough for :func:`image_spec` and for shapes."""

    config: Any
    model: Any

    @property
    def params(self) -> dict:
        from jaxclip_fs.clip.model import abstract_variables

        return abstract_variables(self.config)


def abstract_clip(backbone: str, dtype: str = "float32") -> AbstractCLIP:
    """The :class:`AbstractCLIP` of a variant name computing in ``dtype`` (no weights are read)."""
    from jaxclip_fs.clip.model import CLIP
    from jaxclip_fs.clip.variants import get_config

    config = get_config(backbone)
    return AbstractCLIP(config, CLIP(config, compute_dtype(dtype)))


@functools.lru_cache(maxsize=32)
def _projector(model, method: str):
    """``project(variables, x)``; cached so equal models give the same (hashable) function."""
    def project(variables, x):
        return model.apply(variables, x, method=method)
    return project


def frozen_arrays(clip, text: np.ndarray) -> dict:
    """The frozen arguments of a fetch: CLIP variables, classifier W [C, E], exp(logit_scale)."""
    return {"clip": clip.params, "text": jnp.asarray(text, jnp.float32),
            "logit_scale": jnp.exp(clip.params["params"]["logit_scale"])}


def zero_shot(features: jax.Array, text: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """``s = logit_scale · f̂ Wᵀ`` → [B, C] (``methods.cache.zero_shot_logits`` without a Task)."""
    return logit_scale * l2_normalize(features.astype(jnp.float32)) @ text.T


# --- the two training paths ----------------------------------------------------------------


def to_pixels(clip_arrays: np.ndarray) -> np.ndarray:
    """CLIP-normalised float32 images → the uint8 pixels they came from (exact).

    ``preprocess`` / ``augmented_view`` compute ``(p / 255 - mean) / std`` in
    float32 from uint8 ``p``; ``round((x·std + mean)·255)`` recovers ``p``
    (the float error is ~1e-5 of a grey level).
    """
    return np.clip(np.rint((clip_arrays * _STD + _MEAN) * 255.0), 0, 255).astype(np.uint8)


def normalize_pixels(pixels: jax.Array) -> jax.Array:
    """uint8 (or float 0..255) [..., 3] → CLIP-normalised float32, as ``to_clip_array``."""
    return (pixels.astype(jnp.float32) / jnp.float32(255.0) - _MEAN) / _STD


def trunk_fetch(model, tap_names: Sequence[str], *, augment_views: bool,
                scale: tuple[float, float] = augment.LDC_SCALE):
    """``fetch(frozen, key, pixels [B, S, S, 3] uint8) -> ImageInputs`` running the frozen trunk.

    With ``augment_views`` each image gets a fresh RandomResizedCrop(``scale``)
    + flip from ``key``; without, the pixels are used as they are (fixed views).
    Equal arguments return the same function (so compiled programs are reused).
    """
    return _trunk_fetch(model, tuple(tap_names), bool(augment_views), tuple(scale))


@functools.lru_cache(maxsize=32)
def _trunk_fetch(model, tap_names: tuple[str, ...], augment_views: bool,
                 scale: tuple[float, float]):
    unique = tuple(dict.fromkeys(tap_names))
    size = model.config.image_size

    def fetch(frozen, key, pixels):
        if augment_views:
            pixels = augment.jax_random_resized_crop(key, pixels, size, scale=scale)
        emb, taps = model.apply(frozen["clip"], normalize_pixels(pixels), taps=unique,
                                method="encode_image")
        emb, taps = jax.lax.stop_gradient((emb, taps))
        return ImageInputs(tuple(taps[t] for t in tap_names),
                           zero_shot(emb, frozen["text"], frozen["logit_scale"]), emb)

    return fetch


def pixels_fetch(frozen, key, pixels):
    """``fetch`` handing the pixels on as they are (a stream whose function runs its own CLIP)."""
    del frozen, key
    return pixels


def cache_fetch(frozen, key, rows) -> ImageInputs:
    """``fetch`` of the tap-cache path: rows ``{"taps": (arrays), "features": [B, E]}``."""
    del key
    features = rows["features"]
    return ImageInputs(tuple(rows["taps"]), zero_shot(features, frozen["text"],
                                                      frozen["logit_scale"]), features)


def tap_cache_bytes(clip_config, tap_names: Sequence[str], num_images: int, views: int) -> int:
    """Bytes of a tap cache: the distinct taps plus the embeddings, float32, V x N."""
    unique = tuple(dict.fromkeys(tap_names))
    taps = sum(tap_nbytes(clip_config, unique, num_images, views).values())
    return taps + clip_config.embed_dim * TAP_ITEMSIZE * num_images * views


def train_path(clip_config, taps: Sequence[str], pool_images: int,
               settings: ImagesConfig, views: int) -> tuple[str, int, int]:
    """``(path, tap-cache bytes, budget bytes)``: the path :meth:`ImageSource.prepare` takes."""
    needed = tap_cache_bytes(clip_config, taps, pool_images, views)
    budget = int(settings.tap_cache_budget_gib * 2**30)
    return choose_train_path(settings.train_path, needed, budget), needed, budget


def choose_train_path(requested: str, needed_bytes: int, budget_bytes: int) -> str:
    """The training path: ``"cache"`` when asked, or on ``"auto"`` if it fits the budget.

    ``"auto"`` gives ``"cache"`` when ``needed_bytes <= budget_bytes``, else ``"trunk"``.

    Raises:
      ConfigError: unknown path name.
    """
    if requested not in TRAIN_PATHS:
        raise ConfigError(
            f"images.train_path must be one of {', '.join(TRAIN_PATHS)}, got '{requested}'")
    if requested != "auto":
        return requested
    return "cache" if needed_bytes <= budget_bytes else "trunk"


def support_pixels(dataset, indices: np.ndarray, size: int, *, views: int = 1, aug_seed: int = 0,
                   aug_scale: tuple[float, float] = augment.LDC_SCALE,
                   workers: int | None = None) -> np.ndarray:
    """uint8 [V, N, S, S, 3]: the views of train images ``indices`` (view 0 = eval transform).

    Views v >= 1 are the features package's augmented views, so these pixels
    are exactly what the tap cache with the same ``views``/``aug_seed`` encodes.
    """
    split = dataset.split("train")
    out = np.empty((views, len(indices), size, size, 3), np.uint8)

    def load(position):
        return load_views(split, int(indices[position]), size, views, aug_seed, tuple(aug_scale))

    stream = ordered_prefetch(load, range(len(indices)), workers=workers or default_workers(),
                              ahead=8)
    for position, future in stream:
        out[:, position] = to_pixels(future.result())
    return out


def tap_cache_pool(clip, dataset, indices: np.ndarray, tap_names: Sequence[str], *, views: int,
                   aug_seed: int = 0, aug_scale: tuple[float, float] = augment.LDC_SCALE,
                   batch_size: int = 64, dtype: str = "float32", cache_dir=None,
                   use_cache: bool = True, workers: int | None = None,
                   progress: bool = True) -> dict:
    """The tap-cache pool of train ``indices``: ``{"taps": T x [V, N, ...], "features": [V, N, E]}``

    Encoded (computing in ``dtype``, stored as float32) through
    :func:`~jaxclip_fs.features.image_encoder.encode_split` (content-addressed cache).
    """
    unique = tuple(dict.fromkeys(tap_names))
    encoder = make_image_encoder(clip, taps=unique, dtype=dtype, batch_size=batch_size)
    encoded = encode_split(encoder, dataset, "train", indices, views=views, aug_seed=aug_seed,
                           aug_scale=tuple(aug_scale), cache_dir=cache_dir, use_cache=use_cache,
                           workers=workers, progress=progress)
    return {"taps": tuple(encoded.taps[t] for t in tap_names), "features": encoded.features}


# --- a dataset's image inputs -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuerySet:
    """Images to predict: a split's rows, labels in the (parent) dataset's classes.

    Attributes:
      name: the dataset's name (an OOD set's own name).
      dataset: the :class:`~jaxclip_fs.data.dataset.Dataset` the images come from.
      split: split name.
      indices: int [M] rows of the split.
      labels: int32 [M].
      class_mask: float32 [C] the classes predicted among (an OOD set's subset).
    """

    name: str
    dataset: Any
    split: str
    indices: np.ndarray
    labels: np.ndarray
    class_mask: np.ndarray


@dataclasses.dataclass
class ImageData:
    """A dataset's inputs for image methods (:meth:`ImageSource.prepare`).

    Attributes:
      name: dataset name; dataset: the :class:`~jaxclip_fs.data.dataset.Dataset`.
      text: float32 [C, E] zero-shot classifier.
      frozen: the fetch's frozen arrays (CLIP variables, classifier, scale).
      pool: the support pool, leaves [V, N, ...] (pixels or cached taps).
      fetch: ``fetch(frozen, key, rows) -> ImageInputs`` of the training path.
      fewshot: ``{seed: int [C, K]}`` pool rows of every seed's nested K-shot set.
      draws: ``{(sampler, seed, shots): int [C, shots]}`` pool rows of the official draws;
        val_draws: the same keys -> val-split rows of CoOp's validation draw.
      path: ``"trunk"`` or ``"cache"``.
      views: views per support image in the tap cache (``"cache"`` path).
      meta: provenance for the records (backbone, weights, dataset, split policy).
      taps: the taps the inputs carry.
    """

    name: str
    dataset: Any
    text: np.ndarray
    frozen: dict
    pool: Any
    fetch: Callable
    fewshot: Mapping[int, np.ndarray]
    draws: Mapping[tuple[str, int, int], np.ndarray]
    val_draws: Mapping[tuple[str, int, int], np.ndarray]
    path: str
    views: int
    meta: dict
    taps: tuple[str, ...]
    _source: "ImageSource" = dataclasses.field(repr=False, default=None)

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0])

    def queries(self, split: str, indices: np.ndarray | None = None) -> QuerySet:
        """A split of this dataset (all rows by default) as a :class:`QuerySet`."""
        data = self.dataset.split(split)
        indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        return QuerySet(self.name, self.dataset, split, indices,
                        data.labels[indices].astype(np.int32),
                        np.ones(self.num_classes, np.float32))

    def stream(self, queries: QuerySet, fn: Callable, bundle: Any,
               desc: str | None = None, *, trunk: bool = True) -> dict[str, np.ndarray]:
        """``fn(frozen, bundle, inputs)`` over the query images, in fixed batches → numpy [M, ...].

        Each batch goes through the frozen trunk once (no augmentation); ``fn``
        (hashable: it keys the compiled program) maps ``(frozen, bundle,
        inputs)`` -- the frozen arrays, ``bundle`` and the batch's
        :class:`ImageInputs` -- to ``{name: [B, ...]}``. With ``trunk=False``
        ``inputs`` is the batch's uint8 pixels [B, S, S, 3] (CLIP's evaluation
        transform) instead: ``fn`` runs its own CLIP (e.g. an adapted one).
        """
        return self._source.stream(self, queries, fn, bundle, desc, trunk=trunk)


class ImageSource:
    """The ``images`` input of an experiment (module docstring).

    Args:
      session: the experiment's :class:`~jaxclip_fs.pipelines.session.ClipSession`.
      settings: the config's ``images`` section.
    """

    def __init__(self, session: ClipSession, settings: ImagesConfig):
        self.session = session
        self.settings = settings
        self._pools: dict = {}

    def _pool(self, name: str, request):
        """The train pool of ``request`` on dataset ``name`` (drawn once: the planner sizes
        it, :meth:`prepare` fills it)."""
        key = (name, request)
        if key not in self._pools:
            self._pools[key] = select_train_pool(self.session.dataset(name), request.max_shots,
                                                 request.seeds, draws=request.draws())
        return self._pools[key]

    def spec(self) -> ImageSpec:
        return image_spec(self.session.clip())

    def prepare(self, name: str, request, taps: Sequence[str],
                log: Callable[[str], None] | None = None, *, path: str | None = None,
                aug_scale: tuple[float, float] | None = None) -> ImageData:
        """The support pool of a :class:`~jaxclip_fs.pipelines.features.Request` (its seeds
        up to its largest shot count, and its official draws) on the chosen training path.

        ``path`` / ``aug_scale`` override the settings' (methods trained through the
        towers: CoOp's pool is the image features of augmented views -- ``cache`` without
        taps --, CLIP-LoRA's the pixels -- ``trunk``; both crop with area 0.08-1).

        Raises:
          ConfigError: a bad setting. DataError: too few images for ``shots``.
        """
        s, x, o = self.session, self.session.extraction, self.settings
        if path is not None or aug_scale is not None:
            o = dataclasses.replace(o, train_path=path or o.train_path,
                                    aug_scale=tuple(aug_scale or o.aug_scale))
        views = self.cache_views()
        clip, dataset = s.clip(), s.dataset(name)
        text = s.text(name, request.prompts)
        pool = self._pool(name, request)
        path, needed, budget = train_path(clip.config, taps, len(pool.indices), o, views)
        note = (f"{len(pool.indices)} support images, taps {', '.join(taps)}; training path "
                f"'{path}' (a tap cache of {views} views needs "
                f"{needed / 2**20:.1f} MiB, budget {budget / 2**20:.0f} MiB)")
        if log:
            log(f"{name}: {note}")
        common = dict(aug_seed=x.aug_seed, aug_scale=tuple(o.aug_scale),
                      workers=s.execution.workers)
        if path == "cache":
            arrays = tap_cache_pool(clip, dataset, pool.indices, taps, views=views,
                                    batch_size=x.batch_size, dtype=x.dtype,
                                    cache_dir=s.execution.cache_dir,
                                    use_cache=s.execution.use_cache, progress=s.progress, **common)
            fetch = cache_fetch
        else:
            arrays = support_pixels(dataset, pool.indices, clip.config.image_size, **common)
            fetch = trunk_fetch(clip.model, taps, augment_views=True, scale=tuple(o.aug_scale))
        origin = dataset.split_origin
        meta = {"backbone": clip.config.name,
                "weights": "random" if clip.is_random else clip.weights_id,
                "tokenizer_id": s.tokenizer().identity,
                "dataset": dataset.name, "dataset_identity": dataset.identity, "dtype": x.dtype,
                "split_policy": {"train": pool.policy,
                                 "val": f"val split ({origin.get('val', 'val split')})",
                                 "test": f"whole test split ({origin.get('test', 'test split')})"}}
        return ImageData(name, dataset, text, frozen_arrays(clip, text), arrays, fetch,
                         pool.fewshot, pool.draws, pool.val_draws, path, views, meta,
                         tuple(taps), self)

    def abstract_clip(self) -> AbstractCLIP:
        """The CLIP's architecture without loading its weights."""
        return abstract_clip(self.session.config.model.backbone, self.session.extraction.dtype)

    def cache_views(self) -> int:
        """Views per support image in a tap cache: the plain one and the augmented ones."""
        views = self.settings.tap_cache_views
        return (self.session.extraction.views if views is None else views) + 1

    def split_sizes(self, name: str):
        """Dataset ``name`` 's :class:`~jaxclip_fs.data.sizes.SplitSizes` (no image is read)."""
        return sizes_lib.split_sizes(self.session, name)

    def ood_size(self, name: str) -> int:
        """Test images of OOD set ``name`` (what :meth:`ood` will stream)."""
        return self.split_sizes(name).test

    def pool_size(self, name: str, request) -> int:
        """Support images :meth:`prepare` would hold for ``request`` (exact when the dataset
        loads)."""
        try:
            self.session.dataset(name)
        except DataError:  # a dry run without the data: the table's bound
            return sizes_lib.pool_size_bound(self.split_sizes(name), request.max_shots,
                                             request.seeds, request.draws())
        return len(self._pool(name, request).indices)  # (too few images: DataError, now)

    def ood(self, name: str, parent: ImageData) -> QuerySet:
        """The test split of OOD set ``name``, labels in ``parent`` 's classes."""
        dataset = self.session.dataset(name)
        labels, class_mask = ood_lib.parent_classes(dataset, parent.num_classes)
        return QuerySet(name, dataset, "test", np.arange(len(dataset.split("test"))), labels,
                        class_mask)

    def stream(self, data: ImageData, queries: QuerySet, fn: Callable, bundle: Any,
               desc: str | None, *, trunk: bool = True) -> dict[str, np.ndarray]:
        clip, s = self.session.clip(), self.session
        fetch = trunk_fetch(clip.model, data.taps, augment_views=False) if trunk else pixels_fetch
        size = clip.config.image_size
        split = queries.dataset.split(queries.split)
        indices = queries.indices

        def load(position):
            return to_pixels(load_views(split, int(indices[position]), size, 1, 0,
                                        augment.LDC_SCALE))

        encoder = FixedBatchEncoder(_through_trunk(fn, fetch), (data.frozen, bundle),
                                    s.extraction.batch_size, (size, size, 3), np.uint8)
        result = encode_items(encoder, load, len(indices), 1, None,
                              workers=s.execution.workers or default_workers(),
                              progress=s.progress,
                              desc=desc or f"{queries.name} {queries.split}")
        return {name: value[:, 0] for name, value in result.outputs.items()}


@functools.lru_cache(maxsize=32)
def _through_trunk(fn: Callable, fetch: Callable) -> Callable:
    """``((frozen, bundle), pixels) -> fn(frozen, bundle, fetch(frozen, pixels))`` (cached)."""
    def run(arguments, pixels):
        frozen, bundle = arguments
        return fn(frozen, bundle, fetch(frozen, None, pixels))
    return run
