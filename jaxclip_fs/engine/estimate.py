"""XLA's numbers for the engine's own programs, from sizes alone: what the planner and
``run --dry-run`` read.

Each program is lowered exactly as the engine will run it -- the same jitted
function, the same shardings -- but from ``jax.ShapeDtypeStruct`` arguments
built from the inputs' sizes (:mod:`~jaxclip_fs.pipelines.sizes`,
:func:`~jaxclip_fs.engine.batch.abstract_batch`; the CLIP's variables from
``jax.eval_shape``), so nothing is extracted, loaded or computed:

* a feature program is one ``jit``: its cost (:func:`~jaxclip_fs.engine.cost.lowered_cost`)
  and, when asked, its compiled memory;
* an image program is a sequence of stages (:mod:`~jaxclip_fs.engine.image_program`):
  **fit** (one ``jit(vmap)`` over the cells, sharded over at most one device
  per cell), the **streams** -- every batch of selection, test and OOD images
  through the frozen trunk and every cell's ``precompute`` / prediction, one
  compiled batch program each -- and **select** (the grid search over every
  cell's selection rows). Its cost is the sum (a stream's batch cost times
  its number of batches), its memory the largest stage's.

Bytes: XLA's count of the lowered program charges every intermediate; once a
stage is compiled, its loop-counted bytes are scaled by the compiled
program's own ratio of fused to unfused bytes (so uncompiled estimates are
upper bounds).

``mode`` (:data:`~jaxclip_fs.engine.planner.Measure`): None -- costs and the
memory screen only; ``"memory"`` -- every stage compiled for its memory
analysis (fast); ``"run"`` -- the main stage compiled as the run compiles it,
so the run reuses the executable (and its compile time is measured).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.engine import batch as batch_lib
from jaxclip_fs.engine import cost as cost_lib
from jaxclip_fs.engine import feature_program, image_program, sharding, tower_program
from jaxclip_fs.engine.planner import Estimate
from jaxclip_fs.engine.rules import as_trained
from jaxclip_fs.experiment.protocol import Rules
from jaxclip_fs.experiment.plan import Program, Variant
from jaxclip_fs.pipelines import images as images_lib
from jaxclip_fs.pipelines.sizes import InputSizes
from jaxclip_fs.train import tower_methods, towers
from jaxclip_fs.train.fit import task_key

_S = jax.ShapeDtypeStruct


def _sharded(tree, spec) -> Any:
    return jax.tree.map(lambda leaf: _S(leaf.shape, leaf.dtype, sharding=spec), tree)


def _per_device(tree, devices: int) -> int:
    """Bytes per device of ``tree`` split over ``devices``."""
    return cost_lib.nbytes(tree) // devices


@dataclasses.dataclass
class _Stage:
    """One compiled stage: its cost, memory bound and (when compiled) memory analysis."""

    cost: cost_lib.Cost
    bound: int
    memory: cost_lib.Memory | None = None
    analysis_seconds: float = 0.0

    @property
    def known(self) -> int:
        return self.memory.peak if self.memory is not None else self.bound


def _stage(jitted, fn, args: tuple, abstract: tuple, per_device_args: int, mode: str | None,
           *, times: float = 1.0) -> _Stage:
    """Lowers ``jitted(*args)``; costs ``fn(*abstract)`` (x ``times``); compiles per ``mode``."""
    lowered = jitted.lower(*args)
    once = cost_lib.xla_numbers(lowered)
    start = time.perf_counter()
    counted = once + cost_lib.loop_correction(fn, *abstract)
    found = _Stage(counted * times, per_device_args + int(once.bytes_accessed),
                   analysis_seconds=time.perf_counter() - start)
    if mode is not None:
        executable, found.memory = cost_lib.compiled_memory(lowered, fast=mode != "run")
        fused = cost_lib.xla_numbers(executable)
        if once.bytes_accessed > 0 and fused.bytes_accessed > 0:
            # the lowered program's bytes count every intermediate; after fusion XLA moves
            # fewer: scale the loop-counted bytes by the compiled program's own ratio
            ratio = min(1.0, fused.bytes_accessed / once.bytes_accessed)
            found.cost = dataclasses.replace(found.cost,
                                             bytes_accessed=found.cost.bytes_accessed * ratio)
    return found


def _estimate(program: Program, stages: Sequence[_Stage], main: _Stage, devices: int,
              notes: Sequence[str], fixed: cost_lib.Cost = cost_lib.ZERO) -> Estimate:
    total = sum((s.cost for s in stages), cost_lib.ZERO)
    exact = all(s.memory is not None for s in stages)
    return Estimate(program, total, max(s.known for s in stages), exact,
                    main.memory.compile_seconds if main.memory is not None else None,
                    fixed, devices, tuple(notes), sum(s.analysis_seconds for s in stages))


def _shape(name: str, leaf) -> str:
    return f"{name} {list(leaf.shape)}"


# --- feature programs ---------------------------------------------------------------------


def feature_estimate(program: Program, variant: Variant, sizes: Mapping[str, InputSizes], *,
                     rules: Rules, ood_test: Sequence[int] = (), mesh, keep_params: bool,
                     keep_logits: bool = False, mode: str | None = None) -> Estimate:
    """XLA's numbers of a feature program on inputs of these ``sizes`` (module docstring),
    as the protocol's ``rules`` run it."""
    method = as_trained(variant.method, rules)
    resolved = {d: variant.resolve(d, sizes[d].dim, search=rules.searches)
                for d in program.datasets}
    batch = batch_lib.abstract_batch(
        program, method, sizes, resolved, val_rows=rules.val_rows, sampler=rules.sampler,
        pad_cells=lambda n: sharding.padded_length(n, mesh), ood_test=ood_test)
    statics = dict(batch_size=batch.batch_size, max_epochs=batch.max_epochs,
                   epochs_on=rules.epochs_on, search_on=rules.search_on,
                   keep_params=keep_params, keep_logits=keep_logits)
    jitted = feature_program.compiled_program(method, mesh, **statics)
    devices = mesh.devices.size
    args = (_sharded(batch.per_cell, sharding.cell_sharding(mesh)),
            _sharded(batch.shared, sharding.replicated(mesh)))
    stage = _stage(jitted, feature_program.program_fn(method, **statics), args,
                   (batch.per_cell, batch.shared),
                   _per_device(batch.per_cell, devices) + cost_lib.nbytes(batch.shared),
                   mode)
    width = len(batch.slots[0])
    notes = [f"cells {len(program.cells)} (padded to {width} x {len(batch.slots)} dataset(s))",
             ", ".join(_shape(k, batch.shared[k]) for k in ("supports", "val", "test")),
             f"training: batch {batch.batch_size}, {batch.max_epochs} epochs scanned"
             if method.trainable else "training-free"]
    return _estimate(program, [stage], stage, devices, notes)


# --- image programs -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageSizes:
    """What an image program's shapes depend on, for one dataset.

    Attributes:
      num_classes: C. pool: support images (the seeds' nested sets up to the
        program's largest shots). selection: selection images (the union of
        the cells' validation rows, or the test split where the rules search on test).
      test: test images. ood_test: each OOD set's test images.
      path: training path (``trunk`` / ``cache``); views: tap-cache views;
      cache_bytes, budget: the tap cache's size and the budget it was held to.
      origin: where the sizes come from.
    """

    num_classes: int
    pool: int
    selection: int
    test: int
    ood_test: tuple[int, ...]
    path: str
    views: int
    cache_bytes: int
    budget: int
    origin: str = ""


def image_sizes(source, name: str, program: Program, method, clip, *, rules: Rules,
                request, ood: Sequence[str]) -> ImageSizes:
    """The :class:`ImageSizes` of ``program`` 's dataset from an
    :class:`~jaxclip_fs.pipelines.images.ImageSource` (labels and tables; no image).

    ``request``: what the dataset's image pipeline is prepared for (one
    support pool serves all its cells: :class:`~jaxclip_fs.pipelines.features.Request`).
    """
    split = source.split_sizes(name)
    shots, seeds = max(program.shots), program.seeds
    pool = source.pool_size(name, request)
    if rules.search_on == "test":
        selection = split.test
    elif not rules.searches:
        selection = 0
    elif rules.val_rows == "full":
        selection = split.val
    else:  # the union over seeds of min(K, 4) per class (at most; seeds overlap)
        per_class = split.val_per_class or (split.val // max(1, split.num_classes),) * \
            split.num_classes
        selection = min(split.val, sum(min(n, min(shots, 4) * len(seeds)) for n in per_class))
    views = source.cache_views()
    path, needed, budget = images_lib.train_path(clip.config, method.taps, pool, source.settings,
                                                 views)
    return ImageSizes(split.num_classes, pool, selection, split.test,
                      tuple(source.ood_size(o) for o in ood), path, views, needed,
                      budget, split.origin)


def _pool(clip, method, sizes: ImageSizes, scale: tuple[float, float]):
    """The support pool's abstract arrays and the fetch of its training path (the trunk's
    crops of area ``scale``)."""
    config = clip.config
    if sizes.path == "cache":
        from jaxclip_fs.features.taps import tap_shape

        v, n = sizes.views, sizes.pool
        pool = {"taps": tuple(_S((v, n, *tap_shape(config, t)), jnp.float32)
                              for t in method.taps),
                "features": _S((v, n, config.embed_dim), jnp.float32)}
        return pool, images_lib.cache_fetch
    size = config.image_size
    pool = _S((1, sizes.pool, size, size, 3), jnp.uint8)
    return pool, images_lib.trunk_fetch(clip.model, method.taps, augment_views=True,
                                        scale=tuple(scale))


def image_estimate(program: Program, variant: Variant, clip, sizes: ImageSizes, *,
                   rules: Rules, settings, batch_images: int, mesh, keep_logits: bool = False,
                   mode: str | None = None) -> Estimate:
    """XLA's numbers of an image program (module docstring).

    Args:
      clip: the CLIP (or its :class:`~jaxclip_fs.pipelines.images.AbstractCLIP`).
      settings: the config's ``images`` section (the crops' scale).
      batch_images: images per stream batch (``extraction.batch_size``).
    """
    method = image_program.bind(as_trained(variant.method, rules), images_lib.image_spec(clip))
    config = clip.config
    resolved = variant.resolve(program.datasets[0], config.embed_dim, search=rules.searches)
    cells = len(program.cells)
    kmax, c = max(program.shots), sizes.num_classes
    fit_mesh = image_program.fit_mesh(mesh, cells)
    devices = fit_mesh.devices.size
    padded = sharding.padded_length(cells, fit_mesh)
    frozen = {"clip": jax.tree.map(lambda x: _S(x.shape, x.dtype), clip.params),
              "text": _S((c, config.embed_dim), jnp.float32), "logit_scale": _S((), jnp.float32)}
    pool, fetch = _pool(clip, method, sizes, settings.aug_scale)
    per_cell = (_S((padded, c, kmax), jnp.int32), _S((padded, c, kmax), jnp.float32),
                _S((padded,), jnp.int32), {k: _S((padded,), jnp.float32) for k in resolved.values})
    batch_size, max_epochs = resolved.static(method)
    jitted = image_program._compiled_fit(method, fetch, batch_size, max_epochs, fit_mesh)
    shared = _sharded((frozen, pool), sharding.replicated(fit_mesh))
    args = (*shared, *_sharded(per_cell, sharding.task_sharding(fit_mesh)))
    fit_fn = jax.vmap(functools.partial(image_program.fit_one, method, fetch,
                                        batch_size=batch_size, max_epochs=max_epochs),
                      in_axes=(None, None, 0, 0, 0, 0))
    fit = _stage(jitted, fit_fn, args, (frozen, pool, *per_cell),
                 cost_lib.nbytes((frozen, pool)) + _per_device(per_cell, devices), mode)
    params = jax.eval_shape(fit_fn, frozen, pool, *per_cell)[0]
    params = jax.tree.map(lambda x: _S((cells, *x.shape[1:]), x.dtype), params)
    masks = _S((cells, c, kmax), jnp.float32)
    hp = {k: _S((cells,), jnp.float32) for k in resolved.values}
    size = config.image_size
    pixels = _S((batch_images, size, size, 3), jnp.uint8)
    plain = images_lib.trunk_fetch(clip.model, method.taps, augment_views=False)
    stream_mode = None if mode is None else "memory"

    def stream(fn, bundle, images: int) -> _Stage:
        run = images_lib._through_trunk(fn, plain)
        arguments = ((frozen, bundle), pixels)
        return _stage(jax.jit(run), run, arguments, arguments,
                      cost_lib.nbytes(arguments), stream_mode,
                      times=math.ceil(images / batch_images))

    predict = image_program.predict_fn(method, keep_logits)
    chosen = {**hp, **{k: _S((cells,), jnp.float32) for k in resolved.grid}}
    bundle = (params, masks, chosen, _S((c,), jnp.float32))
    streams = [stream(predict, bundle, n) for n in (sizes.test, *sizes.ood_test)]
    stages = [fit]
    if rules.searches:  # (validation_free streams no selection split and searches nothing)
        streams.insert(0, stream(image_program.precompute_fn(method), (params, masks),
                                 sizes.selection))
        one_batch = jax.eval_shape(images_lib._through_trunk(
            image_program.precompute_fn(method), plain), (frozen, (params, masks)), pixels)
        pre = {k: _S((cells, sizes.selection, *v.shape[2:]), v.dtype)
               for k, v in one_batch.items()}
        grid = {k: _S((cells, len(v)), jnp.float32) for k, v in resolved.grid.items()}
        select_args = (params, masks, frozen, pre, _S((sizes.selection,), jnp.int32),
                       _S((cells, sizes.selection), jnp.float32), hp, grid)
        select_fn = image_program._compiled_select(method)
        stages.append(_stage(select_fn, select_fn, select_args, select_args,
                             cost_lib.nbytes(select_args), stream_mode))
    stages += streams
    fixed = sum((s.cost for s in streams), cost_lib.ZERO)
    notes = [f"cells {cells} over {devices} device(s) (padded to {padded}); support pool "
             f"{sizes.pool} images, {c} classes x {kmax} shots",
             f"training path '{sizes.path}': a tap cache of {sizes.views} views needs "
             f"{sizes.cache_bytes / 2**30:.2f} GiB (budget {sizes.budget / 2**30:.1f} GiB)",
             f"training: batch {batch_size}, {max_epochs} epochs; streams: selection "
             f"{sizes.selection}, test {sizes.test}"
             + (f", OOD {', '.join(map(str, sizes.ood_test))}" if sizes.ood_test else "")
             + f" images in batches of {batch_images}"]
    return _estimate(program, stages, fit, devices, notes, fixed)


def extraction_cost(clip, batch_images: int, images: int) -> cost_lib.Cost:
    """XLA's cost of encoding ``images`` images with the CLIP's image tower (batches of
    ``batch_images``; the image-encoding part of feature extraction)."""
    size = clip.config.image_size
    pixels = _S((batch_images, size, size, 3), jnp.float32)
    params = jax.tree.map(lambda x: _S(x.shape, x.dtype), clip.params)

    def encode(variables, x):
        return clip.model.apply(variables, x, method="encode_image")[0]

    once = cost_lib.lowered_cost(encode, params, pixels)
    return once * math.ceil(images / batch_images)


# --- tower programs (methods trained through CLIP's towers) --------------------------------

#: Prompt positions assumed when no tokenizer is at hand (a dry run): the template or the
#: context plus a class name of up to 8 tokens, [SOS], "." and [EOS].
CLASS_NAME_TOKENS = 8


def prompt_length(declared) -> int:
    """The prompts' length L (positions up to the longest end-of-text token) assumed for a
    dry run's shapes (module constant :data:`CLASS_NAME_TOKENS`)."""
    if declared.adaptation == "context":
        return min(77, int(declared.option("n_ctx", 16)) + CLASS_NAME_TOKENS + 3)
    return min(77, 5 + CLASS_NAME_TOKENS + 3)  # "a photo of a {}."


def tower_estimate(program: Program, variant: Variant, clip, sizes: ImageSizes, *,
                   rules: Rules, train_dtype: str, batch_images: int, mesh,
                   keep_logits: bool = False, mode: str | None = None,
                   remat: bool = False, tokens: int | None = None) -> Estimate:
    """XLA's numbers of a tower program (:mod:`~jaxclip_fs.engine.tower_program`): the
    training program of every cell -- forward *and backward* through the towers, every
    step -- and the prediction streams; for CoOp also the encoding of the pool's views.

    Args:
      train_dtype: the towers' compute dtype; remat: blocks rematerialised.
      tokens: the prompts' length L (default :func:`prompt_length`).
    """
    method, config = variant.method, clip.config
    declared = method.towers
    dataset = program.datasets[0]
    model = tower_program.tower_model(config, train_dtype, remat)
    resolved = variant.resolve(dataset, config.embed_dim, search=rules.searches)
    recipe = tower_methods.recipe(declared, model, resolved.values, dataset == "imagenet")
    cells, kmax, c = len(program.cells), max(program.shots), sizes.num_classes
    fit_mesh = image_program.fit_mesh(mesh, cells)
    devices = fit_mesh.devices.size
    padded = sharding.padded_length(cells, fit_mesh)
    take = [min(i, cells - 1) for i in range(padded)]
    masks = np.stack([np.broadcast_to(np.arange(kmax) < program.cells[i].shots, (c, kmax))
                      for i in take]).astype(np.float32)
    steps = towers.max_steps(recipe, masks)
    length = tokens or prompt_length(declared)
    variables = jax.tree.map(lambda x: _S(x.shape, x.dtype), clip.params)
    frozen = {"clip": variables, "tokens": _S((c, length), jnp.int32)}
    if declared.adaptation == "lora" and "text" not in tower_methods.lora_spec(declared).towers:
        frozen["text"] = _S((c, config.embed_dim), jnp.float32)
    size = config.image_size
    if declared.pool == "features":
        pool = _S((sizes.views, sizes.pool, config.embed_dim), jnp.float32)
    else:
        pool = _S((1, sizes.pool, size, size, 3), jnp.uint8)
    keys = jax.eval_shape(jax.vmap(task_key), _S((padded,), jnp.int32))
    tasks = towers.TowerTask(_S((padded, c, kmax), jnp.int32), _S((padded, c, kmax), jnp.float32),
                             keys)
    start = jax.eval_shape(functools.partial(towers.init_seeds, recipe), tasks)
    train = functools.partial(towers.train_seeds, recipe, steps=steps)
    per_cell = (tasks, start)
    args = (*_sharded((frozen, pool), sharding.replicated(fit_mesh)),
            *_sharded(per_cell, sharding.task_sharding(fit_mesh)))
    fit = _stage(jax.jit(train), train, args, (frozen, pool, *per_cell),
                 cost_lib.nbytes((frozen, pool))
                 + _per_device((tasks.index, tasks.mask, start), devices), mode)

    stream_mode = None if mode is None else "memory"
    pixels = _S((batch_images, size, size, 3), jnp.uint8)
    stream_frozen = {"clip": variables, "text": _S((c, config.embed_dim), jnp.float32),
                     "logit_scale": _S((), jnp.float32)}
    bundle = (start, _S((padded, c, config.embed_dim), jnp.float32), _S((c,), jnp.float32))
    fetch = (images_lib.trunk_fetch(clip.model, (), augment_views=False)
             if declared.pool == "features" else images_lib.pixels_fetch)
    run = images_lib._through_trunk(tower_methods.predict_fn(declared, model, keep_logits), fetch)
    arguments = ((stream_frozen, bundle), pixels)
    streams = [_stage(jax.jit(run), run, arguments, arguments, cost_lib.nbytes(arguments),
                      stream_mode, times=math.ceil(n / batch_images))
               for n in (sizes.test, *sizes.ood_test)]
    fixed = sum((s.cost for s in streams), cost_lib.ZERO)
    if declared.pool == "features":  # the pool's views encoded once by the frozen image tower
        fixed = fixed + extraction_cost(clip, batch_images, sizes.pool * sizes.views)
    numbers = sum(int(np.prod(leaf.shape[1:])) for leaf in jax.tree.leaves(start))
    notes = [f"cells {cells} over {devices} device(s) (padded to {padded}); support pool "
             f"{sizes.pool} images, {c} classes x {kmax} shots",
             f"trained through the towers ({declared.adaptation}, {numbers} numbers per cell), "
             f"forward and backward every step: {steps} steps of batch {recipe.batch_size}; "
             f"pool: {declared.pool}"
             + (f" of {sizes.views} views" if declared.pool == "features" else
                " cropped on device") + f"; compute {train_dtype}"
             + (", blocks rematerialised" if remat else "") + f"; prompts {length} tokens",
             f"nothing selected (final iterate); streams: test {sizes.test}"
             + (f", OOD {', '.join(map(str, sizes.ood_test))}" if sizes.ood_test else "")
             + f" images in batches of {batch_images}"]
    return _estimate(program, [fit] + streams, fit, devices, notes, fixed)
