"""Sweep speed: one vmapped program per method vs looping the same cells one by one, one process.

The demo-sized sweep -- every feature-level method (or ``--methods``) x
shots 1, 2, 4, 8, 16 x seeds 1, 2, 3 on one dataset shaped like the demo's
``digits`` (10 classes, 359 validation / 539 test images, 4 views) with
ViT-B/32's width D = 512 by default -- run two ways with the *same code*:

* **vmapped** (ours): the engine's program over all 15 cells of a method at
  once (``engine.feature_program.run_program`` on the batch ``engine.batch`` builds);
* **loop** (baseline): the same compiled program called once per cell, on
  that cell's slice of the same batch (shapes equal, so it compiles once too);
* **per-shots** (``run --plan per-shots``): one program per shot count,
  vmapped over the seeds, each padded only to its own shots (compiled time).

Both are timed on one device, with compilation (first call) and without
(steady state, a second full pass); the vmapped records are checked equal to
the looped ones. The vmapped program's achieved FLOP/s (XLA's count / its
steady time) is printed as a fraction of this machine's measured matmul peak.

Then the whole sweep of each method goes through the engine end to end
(``engine.run.run_experiment`` into a scratch ``RunDir``, compilation
included, caches cleared first) with ``--plan one``, ``per-shots`` and
``auto``: what a user waits for, and what the planner chose.

Synthetic CLIP-like features (``features.synthetic``), or
``--features FILE.npz`` (e.g. the demo's ``jaxclip-fs-demo/features/digits.npz``).

  python -m benchmarks.bench_sweep [--quick] [--methods M1,M2] [--dim D] [--features FILE.npz]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

from benchmarks.efficiency import count_flops, fraction, measured_peak
from jaxclip_fs import methods
from jaxclip_fs.engine import batch as batch_lib
from jaxclip_fs.engine import feature_program as program_lib
from jaxclip_fs.engine import sharding
from jaxclip_fs.engine.run import RunDir, Sources, run_experiment
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import Program, Variant, all_cells
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.pipelines.features import GivenFeatures

SHOTS, SEEDS = (1, 2, 4, 8, 16), (1, 2, 3)
FIELDS = ("test_accuracy", "val_accuracy", "best_epoch")


def cell_slice(batch: batch_lib.ProgramBatch, t: int) -> batch_lib.ProgramBatch:
    """The one-cell batch of slot (0, t): same shared arrays, per-cell arrays [1, 1]."""
    per_cell = jax.tree.map(lambda a: a[:, t:t + 1], batch.per_cell)
    return batch_lib.ProgramBatch(batch.shared, per_cell, ((batch.slots[0][t],),), batch.resolved,
                                  batch.batch_size, batch.max_epochs, batch.val_sizes)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_method(name: str, fs: featfile.FeatureSet, mesh) -> dict:
    method = methods.get(name)
    dataset = str(fs.meta.get("dataset", "synthetic"))
    program = Program(name, (dataset,), tuple(all_cells((name,), (dataset,), SHOTS, SEEDS)))
    resolved = {dataset: Variant(name, method, {}).resolve(dataset, fs.dim)}
    batch = batch_lib.build_batch(program, method, {dataset: fs}, resolved, val_rows="full",
                                  pad_cells=lambda n: n)
    program_lib.compiled_program.cache_clear()

    def vmapped():
        return program_lib.run_program(method, batch, mesh=mesh)

    def loop():
        outs = [program_lib.run_program(method, cell_slice(batch, t), mesh=mesh)
                for t in range(len(program.cells))]
        return {f: np.concatenate([o[f] for o in outs], axis=1) for f in FIELDS}

    # `run --plan per-shots`: one program per shot count, each padded only to its own shots
    per_shot_programs = [Program(name, (dataset,), tuple(c for c in program.cells if c.shots == k))
                         for k in SHOTS]
    per_shot_batches = [batch_lib.build_batch(p, method, {dataset: fs}, resolved,
                                              val_rows="full", pad_cells=lambda n: n)
                        for p in per_shot_programs]
    position = {cell: t for t, cell in enumerate(program.cells)}

    def per_shots():
        merged = {f: np.zeros((1, len(program.cells))) for f in FIELDS}
        for p, b in zip(per_shot_programs, per_shot_batches):
            out = program_lib.run_program(method, b, mesh=mesh)
            for f in FIELDS:
                merged[f][0, [position[c] for c in p.cells]] = np.asarray(out[f])[0, :len(p.cells)]
        return merged

    results = {}
    for label, fn in (("vmapped", vmapped), ("loop", loop), ("per_shots", per_shots)):
        out, first = timed(fn)
        out, steady = timed(fn)
        results[label] = (out, first, steady)
    for field in FIELDS:
        for other in ("loop", "per_shots"):
            np.testing.assert_allclose(np.asarray(results["vmapped"][0][field], np.float64),
                                       np.asarray(results[other][0][field], np.float64),
                                       atol=1e-4, err_msg=f"{name}: {field} ({other})")
    statics = dict(batch_size=batch.batch_size, max_epochs=batch.max_epochs, epochs_on="val",
                   search_on="val", keep_params=True, keep_logits=False)
    flops = count_flops(program_lib.program_fn(method, **statics), batch.per_cell, batch.shared)
    timings = {label: (first, steady) for label, (_, first, steady) in results.items()}
    return {**timings, "flops": flops}


def end_to_end(name: str, fs: featfile.FeatureSet) -> dict:
    """Seconds of the whole sweep of ``name`` through the engine per plan, and auto's choice."""
    dataset = str(fs.meta.get("dataset", "synthetic"))
    sources = Sources(features=GivenFeatures({dataset: fs}))
    found = {}
    for plan in ("one", "per-shots", "auto"):
        jax.clear_caches()
        program_lib.compiled_program.cache_clear()
        experiment = config_lib.ExperimentConfig(
            methods=(config_lib.MethodConfig(name),),
            data=config_lib.DataConfig(datasets=(dataset,)),
            grid=config_lib.GridConfig(shots=SHOTS, seeds=SEEDS),
            execution=config_lib.ExecutionConfig(devices=1, plan=plan, save_params="none"))
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run_experiment(experiment, RunDir(out), sources=sources, progress=False,
                                    log=None)
            found[plan] = time.perf_counter() - start
        if plan == "auto":
            found["chosen"] = result.plans[0].plan
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    feature_methods = [n for n in methods.names() if methods.get(n).inputs == "features"]
    parser.add_argument("--methods", default=",".join(feature_methods))
    parser.add_argument("--dim", type=int, default=512,
                        help="feature width (default 512, ViT-B/32)")
    parser.add_argument("--features", help="a feature file instead of synthetic features")
    parser.add_argument("--quick", action="store_true",
                        help="two methods (Tip-Adapter, Tip-Adapter-F) at D = 64 (about a minute)")
    args = parser.parse_args()
    if args.quick:
        args.methods, args.dim = "tip_adapter,tip_adapter_f", 64
    if args.features:
        fs = featfile.load(args.features)
    else:
        fs = make_task(0, num_classes=10, dim=args.dim, shots=16, views=4, val_per_class=36,
                       test_per_class=54, train_per_class=40, dataset="digits")
    mesh = sharding.cell_mesh(1)
    cells = len(SHOTS) * len(SEEDS)
    print(f"{cells} cells per method (shots {SHOTS} x seeds {SEEDS}); {fs.num_classes} classes, "
          f"D={fs.dim}, V={fs.num_views}, val {fs.val.shape[0]}, test {fs.test.shape[0]}; "
          f"{jax.devices()[0].platform}, 1 device")
    print(f"{'method':14s} {'vmapped s':>10s} {'loop s':>9s} {'ratio':>6s}   "
          f"{'vmapped s':>10s} {'loop s':>9s} {'ratio':>6s}   {'per-shots s':>11s} {'ratio':>6s}")
    print(f"{'':14s} {'(with compilation)':>27s}         {'(compiled)':>24s}"
          f"   {'(compiled)':>18s}")
    totals = np.zeros(5)
    peak = measured_peak("float32")
    fractions, whole = [], []
    for name in args.methods.split(","):
        t = bench_method(name, fs, mesh)
        fractions.append(fraction(f"{name}, vmapped program", t["flops"], t["vmapped"][1], peak))
        whole.append((name, end_to_end(name, fs)))
        row = np.array([t["vmapped"][0], t["loop"][0], t["vmapped"][1], t["loop"][1],
                        t["per_shots"][1]])
        totals += row
        print(f"{name:14s} {row[0]:10.2f} {row[1]:9.2f} {row[1] / row[0]:6.2f}   "
              f"{row[2]:10.3f} {row[3]:9.3f} {row[3] / row[2]:6.2f}   {row[4]:11.3f} "
              f"{row[3] / row[4]:6.2f}")
    print(f"{'total':14s} {totals[0]:10.2f} {totals[1]:9.2f} {totals[1] / totals[0]:6.2f}   "
          f"{totals[2]:10.3f} {totals[3]:9.3f} {totals[3] / totals[2]:6.2f}   {totals[4]:11.3f} "
          f"{totals[3] / totals[4]:6.2f}")
    print("ratio = loop time / program time (same code path, same results checked); per-shots = "
          "`run --plan per-shots`: one program per shot count, vmapped over the seeds")
    print("\n".join(fractions))
    print(f"\nwhole sweep through the engine, compilation included (seconds):\n"
          f"{'method':14s} {'--plan one':>11s} {'per-shots':>10s} {'auto':>8s}  auto chose")
    for name, t in whole:
        print(f"{name:14s} {t['one']:11.2f} {t['per-shots']:10.2f} {t['auto']:8.2f}  "
              f"{t['chosen']}")


if __name__ == "__main__":
    main()
