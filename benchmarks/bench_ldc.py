"""LDC training time per seed: 1 seed vs S seeds in one vmapped program; tap-cache memory.

For each variant (random weights -- speed does not depend on the values),
a synthetic support pool of C x K images is trained with LDC's official
settings (AdamW, cosine, batch ``--batch``), for ``--epochs`` short epochs
(one step each by default), on the chosen training path, through the image
program's own fit (:func:`~jaxclip_fs.engine.image_program.fit_one`, LDC
bound to the CLIP with :func:`~jaxclip_fs.engine.image_program.bind`):

* **sequential**: ``jit(vmap(fit_one))`` over ONE task, called S times
  (the baseline: S separate runs, compiled once, compilation excluded);
* **vmapped**: the same over S tasks (seeds) in one call (compilation excluded).

The two are timed alternately ``--repeats`` times and the best of each is
kept (the machine may be shared).

Both sides run the same per-task computation, so ``S · t_1 / t_S`` is what
batching the seeds buys on this machine (the DESIGN target is >= 0.7 S on an
accelerator; on a 2-core CPU the trunk already saturates the cores).
Then the memory a tap cache would need for a 16-shot ImageNet support set
(16 000 images) is printed from the variant tables (nothing is allocated),
beside the in-step path's uint8 image pool.

  python -m benchmarks.bench_ldc [--quick] [--variants tiny-rn,RN50] [--seeds 3] [--path trunk]
"""

from __future__ import annotations

import argparse
import functools
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.efficiency import count_flops, fraction, measured_peak
from jaxclip_fs import methods
from jaxclip_fs.clip.model import CLIP
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import load_clip
from jaxclip_fs.engine.image_program import bind, fit_one
from jaxclip_fs.experiment.plan import Variant
from jaxclip_fs.features.encode import compute_dtype
from jaxclip_fs.methods.precision import in_compute_dtype
from jaxclip_fs.pipelines import images as image_inputs

IMAGENET_IMAGES = 1000 * 16


def _timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def ldc_for(clip, dtype: str = "float32"):
    """LDC bound to ``clip`` (anything with ``config`` and ``model``), training in ``dtype``: the
    method and its taps."""
    method = bind(in_compute_dtype(methods.get("ldc"), dtype), image_inputs.image_spec(clip))
    return method, method.taps


def bench_variant(name: str, *, seeds: int, classes: int, shots: int, batch: int, epochs: int,
                  path: str, views: int, repeats: int, dtype: str = "float32") -> dict:
    """Times ``seeds`` sequential LDC fits vs one vmapped fit (module docstring), the frozen
    CLIP and LDC's steps computing in ``dtype``."""
    clip = load_clip(name, "random", dtype=compute_dtype(dtype))
    size = clip.config.image_size
    method, taps = ldc_for(clip, dtype)
    rng = np.random.default_rng(0)
    text = rng.standard_normal((classes, clip.config.embed_dim)).astype(np.float32)
    frozen = image_inputs.frozen_arrays(clip, text / np.linalg.norm(text, axis=1, keepdims=True))
    pool_size = classes * shots * seeds
    pixels = rng.integers(0, 256, (1, pool_size, size, size, 3), dtype=np.uint8)
    if path == "trunk":
        pool = jax.device_put(pixels)  # on the device once, as the image program holds it
        fetch = image_inputs.trunk_fetch(clip.model, taps, augment_views=True)
    else:  # encode V fixed views through the trunk once, as the tap cache holds them
        encode = jax.jit(image_inputs.trunk_fetch(clip.model, taps, augment_views=False))
        views_px = rng.integers(0, 256, (views, pool_size, size, size, 3), dtype=np.uint8)
        encoded = [encode(frozen, None, v) for v in views_px]
        pool = {"taps": tuple(jnp.stack([e.taps[i] for e in encoded]) for i in range(len(taps))),
                "features": jnp.stack([e.features for e in encoded])}
        fetch = image_inputs.cache_fetch
    index = np.arange(pool_size).reshape(seeds, classes, shots)
    mask = np.ones((seeds, classes, shots), np.float32)
    values = Variant("ldc", method, {}).resolve(None, clip.config.embed_dim).values
    values = {**values, "epochs": epochs}  # the official lr, eps and weight decay
    settings = {k: np.full(seeds, v, np.float32) for k, v in values.items()}
    vmapped_fit = jax.vmap(functools.partial(fit_one, method, fetch, batch_size=batch,
                                             max_epochs=epochs),
                           in_axes=(None, None, 0, 0, 0, 0))
    fit = jax.jit(vmapped_fit)

    def arguments(tasks):
        return (frozen, pool, jnp.asarray(index[tasks], jnp.int32), jnp.asarray(mask[tasks]),
                jnp.asarray(tasks + 1, jnp.int32), {k: v[tasks] for k, v in settings.items()})

    def run(tasks):
        return fit(*arguments(tasks))

    everyone = np.arange(seeds)
    first_one = _timed(run, np.arange(1))
    first_all = _timed(run, everyone)
    sequential, vmapped = [], []
    for _ in range(repeats):  # alternate, keep the best of each (the machine is shared)
        sequential.append(sum(_timed(run, np.asarray([s])) for s in range(seeds)))
        vmapped.append(_timed(run, everyone))
    sequential, vmapped = min(sequential), min(vmapped)
    steps = epochs * -(-classes * shots // batch)
    return {"variant": name, "first_one": first_one, "first_all": first_all,
            "sequential": sequential, "vmapped": vmapped, "steps": steps,
            "flops": count_flops(vmapped_fit, *arguments(everyone))}


def tap_cache_report(views: int) -> list[str]:
    lines = [f"tap cache for a 16-shot ImageNet support set ({IMAGENET_IMAGES} images), float32:"]
    for name in ("RN50", "RN101", "ViT-B/16", "ViT-L/14"):
        config = get_config(name)
        _, taps = ldc_for(types.SimpleNamespace(config=config, model=CLIP(config)))
        per_view = image_inputs.tap_cache_bytes(config, taps, IMAGENET_IMAGES, 1)
        pixels = IMAGENET_IMAGES * config.image_size ** 2 * 3
        lines.append(f"  {name:9s} taps {', '.join(taps)}: {per_view / 2**30:8.1f} GiB per view, "
                     f"{views * per_view / 2**30:9.1f} GiB for {views} views; in-step trunk "
                     f"path holds the uint8 images: {pixels / 2**30:.1f} GiB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="tiny-rn,RN50")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="default 8 = one step per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--path", choices=["trunk", "cache"], default="trunk")
    parser.add_argument("--views", type=int, default=10,
                        help="tap-cache views (report, and --path cache)")
    parser.add_argument("--repeats", type=int, default=2, help="timings alternate; best kept")
    parser.add_argument("--quick", action="store_true",
                        help="tiny-rn only, 2 epochs, 1 repeat (under a minute)")
    args = parser.parse_args()
    if args.quick:
        args.variants, args.epochs, args.repeats = "tiny-rn", 2, 1
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} devices); "
          f"path {args.path}; {args.classes} classes x {args.shots} shots per seed, batch "
          f"{args.batch}, {args.epochs} epochs")
    peak = measured_peak("float32")
    fractions = []
    for name in args.variants.split(","):
        r = bench_variant(name, seeds=args.seeds, classes=args.classes, shots=args.shots,
                          batch=args.batch, epochs=args.epochs, path=args.path, views=args.views,
                          repeats=args.repeats)
        s = args.seeds
        print(f"{name}: {r['steps']} steps per seed | 1 seed: {r['sequential'] / s:.3f} s "
              f"(first call with compile {r['first_one']:.1f} s) | {s} seeds vmapped: "
              f"{r['vmapped']:.3f} s = {r['vmapped'] / s:.3f} s per seed (first call "
              f"{r['first_all']:.1f} s) | {s} sequential runs: {r['sequential']:.3f} s | "
              f"speed-up of vmapping: {r['sequential'] / r['vmapped']:.2f}x (target >= "
              f"{0.7 * s:.1f}x on accelerators)", flush=True)
        fractions.append(fraction(f"{name} LDC training, {s} seeds vmapped ({r['steps']} steps "
                                  "each, init and selection included)", r["flops"], r["vmapped"],
                                  peak))
    print("\n".join(fractions))
    print("\n".join(tap_cache_report(args.views)))


if __name__ == "__main__":
    main()
