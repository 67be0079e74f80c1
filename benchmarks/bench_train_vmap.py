"""Training S seeds in one vmapped program vs S sequential runs, one process.

For Tip-Adapter-F and APE-T (their official settings: batch 256, AdamW,
cosine schedule, Tip-Adapter-F 20 epochs, APE-T 30 epochs at the generic
dataset row), S = 8 seeds: the few-shot support of each seed is sampled
from one synthetic feature pool (``features.synthetic``), and each run is
``train.fit`` -- init, training with per-epoch validation, best epoch kept.

* **sequential**: one jit-compiled single-task ``fit``, called S times
  (compiled once; the timing excludes compilation);
* **vmapped**: ``jax.jit(jax.vmap(fit))`` over the S tasks, one call
  (timing excludes compilation).

Both sides run the same XLA computation per task, so the ratio measures what
batching the seeds buys on this machine; the first call (with compilation)
is reported too. Sizes (``--sizes``): ``small`` (C = 10, D = 64: tiny
per-step work), ``caltech`` (C = 100, D = 1024, a Caltech101-sized 16-shot
task). Default: both sizes with every run cut to 5 epochs (a few minutes on
2 CPU cores; the ratio barely depends on the epoch count);
``--official-epochs`` trains the methods' own 20 / 30 epochs.

  python -m benchmarks.bench_train_vmap [--quick] [--sizes small,caltech] [--seeds 8]
      [--official-epochs]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.efficiency import count_flops, fraction, measured_peak
from jaxclip_fs import methods
from jaxclip_fs.data.fewshot import coop_val_rows
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.methods.base import as_arrays
from jaxclip_fs.methods.precision import in_compute_dtype
from jaxclip_fs.methods.task import make_evalset, stack
from jaxclip_fs.methods.task import make_task as task_of
from jaxclip_fs.train.fit import fit, task_key

SIZES = {"small": (10, 64), "caltech": (100, 1024)}
SHOTS, VIEWS = 16, 11


def _timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _tasks(num_classes, dim, seeds):
    fs = make_task(0, num_classes=num_classes, dim=dim, shots=SHOTS, views=VIEWS,
                   train_per_class=2 * SHOTS, val_per_class=4, test_per_class=1)
    tasks = [task_of(fs.train[:, support_index(fs, SHOTS, seed)], fs.text, fs.logit_scale)
             for seed in seeds]

    def val_mask(seed):  # CoOp's min(K, 4) rows per class, as a mask over the val split
        rows = coop_val_rows(fs.val_labels, fs.num_classes, SHOTS, seed)
        return np.isin(np.arange(fs.val.shape[0]), rows).astype(np.float32)

    vals = [make_evalset(fs.val, fs.val_labels, val_mask(seed)) for seed in seeds]
    keys = [task_key(seed) for seed in seeds]
    return keys, tasks, vals


def bench(name, num_classes, dim, num_seeds, epochs, dtype="float32", check=True):
    """Times S sequential runs vs one vmapped run (module docstring), training in ``dtype``
    (mixed precision); ``check``: both give the same numbers (on CPU: to 1e-3)."""
    method = in_compute_dtype(methods.get(name), dtype)
    values, _ = method.resolve(None, dim, {"epochs": epochs} if epochs else {})
    hp = as_arrays(values)
    run = functools.partial(fit, method, batch_size=int(values["batch_size"]),
                            max_epochs=int(values["epochs"]))
    one = lambda key, task, val: run(key, task, val, hp)[0]  # noqa: E731
    single = jax.jit(one)
    batched = jax.jit(jax.vmap(one))
    keys, tasks, vals = _tasks(num_classes, dim, range(1, num_seeds + 1))

    first_single = _timed(single, keys[0], tasks[0], vals[0])
    sequential = sum(_timed(single, k, t, v) for k, t, v in zip(keys, tasks, vals))
    stacked = (jnp.stack(keys), stack(tasks), stack(vals))
    first_batched = _timed(batched, *stacked)
    vmapped = _timed(batched, *stacked)
    # same numbers either way
    together = batched(*stacked)
    for i in (0, num_seeds - 1) if check else ():
        a = jax.tree.leaves(single(keys[i], tasks[i], vals[i]))
        b = jax.tree.leaves(jax.tree.map(lambda x: x[i], together))
        for x, y in zip(a, b):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-4)
    return {"method": name, "epochs": int(values["epochs"]), "sequential": sequential,
            "vmapped": vmapped, "first_single": first_single, "first_batched": first_batched,
            "flops": count_flops(jax.vmap(one), *stacked)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,caltech",
                        help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--official-epochs", action="store_true",
                        help="train the methods' own epochs (default: 5 epochs per run)")
    parser.add_argument("--quick", action="store_true",
                        help="the small size, 4 seeds, 2 epochs (under a minute)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.seeds = "small", 4
    epochs = None if args.official_epochs else (2 if args.quick else 5)
    peak = measured_peak("float32")
    fractions = []
    print(f"devices: {jax.devices()}; {args.seeds} seeds; "
          f"{SHOTS} shots x {VIEWS - 1} augmented views\n")
    print(f"{'method':14s} {'size':18s} {'epochs':>6s} {'sequential (s)':>15s} "
          f"{'vmapped (s)':>12s} "
          f"{'speed-up':>9s} {'target':>7s}   first calls incl. compile (1 run / vmapped)")
    for size in args.sizes.split(","):
        num_classes, dim = SIZES[size]
        for name in ("tip_adapter_f", "ape_t"):
            r = bench(name, num_classes, dim, args.seeds, epochs)
            label = f"{size} C={num_classes} D={dim}"
            print(f"{name:14s} {label:18s} {r['epochs']:6d} {r['sequential']:15.2f} "
                  f"{r['vmapped']:12.2f} "
                  f"{r['sequential'] / r['vmapped']:8.1f}x {0.7 * args.seeds:6.1f}x   "
                  f"{r['first_single']:.1f} s / {r['first_batched']:.1f} s", flush=True)
            fractions.append(fraction(f"vmapped {name} ({label})", r["flops"], r["vmapped"], peak))
    print("\nsequential = sum of the S single-seed runs of one compiled program; vmapped = one "
          "call of the vmapped program; both exclude compilation and give the same parameters.")
    print("\n".join(fractions))


if __name__ == "__main__":
    main()
