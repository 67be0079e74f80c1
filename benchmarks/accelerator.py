"""The headline benchmarks on whatever platform is here, each as a fraction of the device's peak.

One command, for a GPU or TPU host (about 5 minutes on one modern GPU, most of
it compiling; ``--quick``: a shortened version for a CPU, well under a minute)::

  python -m benchmarks.accelerator [--quick] [--out accelerator.json] [--only search,train,...]

Runs, on the first device (random weights and synthetic features: speed does
not depend on the values):

* ``search`` -- the hyperparameter searches of :mod:`benchmarks.bench_search`
  (its own problem and cases: Tip-Adapter 200 x 20 and APE 200 x 20 x 21 on
  ImageNet-sized features, C = 1000, D = 1024, 16 shots, 10 000 validation images);
* ``train`` -- S = 1 vs S = 8 seeds of Tip-Adapter-F and APE-T trained in one
  vmapped program (:func:`benchmarks.bench_train_vmap.bench`; Caltech101's
  size, official epochs), in float32 and in bfloat16 (``--compute-dtype``);
* ``encode`` -- CLIP image encoding (extraction's own program) of ViT-B/16 and
  RN50, batch 256, in float32 and bfloat16;
* ``ldc`` -- LDC training through the frozen RN50 trunk, S = 1 vs 3 seeds
  (:func:`benchmarks.bench_ldc.bench_variant`; batch 64, the official size),
  float32 and bfloat16;
* ``tower`` -- training through CLIP's towers (CoOp, CLIP-LoRA): no such
  method exists yet; :func:`tower_training_rows` is the extension point, and
  the table says so instead of printing a number.

Every row is a compiled program's time (compilation excluded; the best of a
few runs where the benchmark repeats) and XLA's FLOP count of that program
(its cost analysis, loops counted over their trip counts:
:func:`~jaxclip_fs.engine.cost.lowered_cost`), so achieved FLOP/s = FLOPs /
seconds, shown as a fraction of the device's *published* peak for the row's
dtype (:func:`~jaxclip_fs.engine.hardware.published`: H100, H200, A100, TPU
v4, v5e -- dense, no sparsity) or, for other devices and on CPUs, of a large
matmul measured in the same run (:func:`~jaxclip_fs.engine.hardware.calibrate`).
On GPUs XLA may run float32 matmuls on TF32 tensor cores (its default
precision), so a float32 row can pass 100 % of the FP32 (non-tensor) peak.
The table is printed and one JSON file is written (``--out``). A benchmark
that fails is reported with its error and the others still run (exit status
1). Past ``--budget`` seconds (default 330 for the full version) no further
row is started; what was left out is listed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import traceback
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxclip_fs.engine import cost as cost_lib
from jaxclip_fs.engine import hardware
from jaxclip_fs.experiment.config import DTYPES
from jaxclip_fs.io import atomic


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each benchmark is (:data:`FULL` on an accelerator, :data:`QUICK` on a CPU)."""

    search_val: int
    search_classes: int
    search_dim: int
    train_size: tuple[int, int]  # (C, D)
    train_seeds: int
    train_epochs: int | None  # None: each method's official epochs
    train_methods: tuple[str, ...]
    train_dtypes: tuple[str, ...]
    encode_variants: tuple[str, ...]
    encode_batch: int
    encode_repeats: int
    ldc_variant: str
    ldc: dict  # bench_ldc.bench_variant's keyword arguments
    ldc_dtypes: tuple[str, ...]


FULL = Sizes(search_val=10_000, search_classes=1000, search_dim=1024,
             train_size=(100, 1024), train_seeds=8, train_epochs=None,
             train_methods=("tip_adapter_f", "ape_t"), train_dtypes=DTYPES,
             encode_variants=("ViT-B/16", "RN50"), encode_batch=256, encode_repeats=5,
             ldc_variant="RN50",
             ldc=dict(seeds=3, classes=16, shots=16, batch=64, epochs=2, path="trunk", views=2,
                      repeats=2),
             ldc_dtypes=DTYPES)
QUICK = Sizes(search_val=100, search_classes=20, search_dim=32,
              train_size=(10, 32), train_seeds=2, train_epochs=2,
              train_methods=("tip_adapter_f",), train_dtypes=("float32",),
              encode_variants=("tiny-vit", "tiny-rn"), encode_batch=4, encode_repeats=2,
              ldc_variant="tiny-vit",
              ldc=dict(seeds=2, classes=2, shots=2, batch=4, epochs=1, path="cache", views=2,
                       repeats=1),
              ldc_dtypes=("float32",))


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed program: ``flops`` (XLA's count) in ``seconds``, its dtype, and facts."""

    benchmark: str
    case: str
    dtype: str
    seconds: float
    flops: float
    notes: dict = dataclasses.field(default_factory=dict)


class NotAvailable(Exception):
    """A benchmark that cannot run here (the reason is its message); not an error."""


@dataclasses.dataclass(frozen=True)
class Peak:
    """The FLOP/s a row is measured against, and where the figure comes from."""

    flops_per_s: float
    source: str


def peak_of(dtype: str, quick: bool) -> Peak:
    """The first device's published peak for ``dtype``, else a matmul measured now."""
    device = jax.devices()[0]
    found = hardware.published(device.device_kind)
    if found is not None:
        return Peak(found.flops(dtype), f"published peak of {found.name}: {found.source}")
    measured = hardware.calibrate(dtype, size=1024 if quick and device.platform == "cpu"
                                  else None)
    return Peak(measured.flops_per_s, f"measured: {measured.matmul}x{measured.matmul} "
                                      f"{dtype} matmul on {device.platform} ({device.device_kind})")


# --- the benchmarks ---------------------------------------------------------------------------


def search_rows(sizes: Sizes) -> Iterator[Row]:
    """bench_search's two searches, ours only (one compiled call each)."""
    try:
        from benchmarks import bench_search
    except ImportError as exc:  # its baseline needs torch, imported at its top
        raise NotAvailable(f"benchmarks.bench_search cannot be imported ({exc})") from None
    task, val = bench_search.search_problem(sizes.search_val, num_classes=sizes.search_classes,
                                            dim=sizes.search_dim)
    for label, order, method, hp, grid in bench_search.search_cases(sizes.search_dim):
        _, first, steady, flops = bench_search.ours(method, task, val, hp, grid)
        points = math.prod(len(grid[name]) for name in order)
        yield Row("search", f"{label} (C={sizes.search_classes}, D={sizes.search_dim}, "
                            f"{sizes.search_val} val)", "float32", steady, flops,
                  {"points": points, "with_compile_s": first})


def _seed_rows(benchmark: str, case: str, dtype: str, seeds: int, sequential: float,
               vmapped: float, flops: float, notes: dict) -> list[Row]:
    """An S = 1 row (one seed's run: the mean of S sequential runs, ``sequential`` seconds in
    all) and the S-seed vmapped row (``flops``: XLA's count of the vmapped program)."""
    speedup = sequential / vmapped
    return [Row(benchmark, f"{case}, S=1", dtype, sequential / seeds, flops / seeds,
                dict(notes)),
            Row(benchmark, f"{case}, S={seeds} vmapped", dtype, vmapped, flops,
                {**notes, "speedup_over_sequential": speedup, "target": 0.7 * seeds})]


def train_rows(sizes: Sizes) -> Iterator[Row]:
    """bench_train_vmap: S sequential single-seed runs vs one vmapped S-seed run."""
    from benchmarks.bench_train_vmap import bench

    num_classes, dim = sizes.train_size
    for name in sizes.train_methods:
        for dtype in sizes.train_dtypes:
            found = bench(name, num_classes, dim, sizes.train_seeds, sizes.train_epochs,
                          dtype=dtype, check=jax.devices()[0].platform == "cpu")
            yield from _seed_rows("train", f"{name} C={num_classes} D={dim} {found['epochs']} "
                                        "epochs", dtype, sizes.train_seeds, found["sequential"],
                               found["vmapped"], found["flops"],
                                  {"with_compile_s": found["first_batched"]})


def _best_time(fn, *args, repeats: int) -> tuple[float, float]:
    """(first call's seconds, compilation included; best of ``repeats`` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return first, best


def encode_rows(sizes: Sizes) -> Iterator[Row]:
    """Extraction's image encoder (``features.image_encoder``), each variant and dtype."""
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.features.image_encoder import make_image_encoder

    for variant in sizes.encode_variants:
        clip = load_clip(variant, "random")
        size = clip.config.image_size
        images = jax.device_put(np.random.default_rng(0).standard_normal(
            (sizes.encode_batch, size, size, 3)).astype(np.float32))
        for dtype in DTYPES:
            encoder = make_image_encoder(clip, dtype=dtype, batch_size=sizes.encode_batch)
            first, best = _best_time(encoder.batches, images, repeats=sizes.encode_repeats)
            program, arguments = encoder.batches.program()
            flops = cost_lib.lowered_cost(program, *arguments).flops
            yield Row("encode", f"{variant} image encoder, batch {sizes.encode_batch}", dtype,
                      best, flops,
                      {"images_per_s": sizes.encode_batch / best, "with_compile_s": first})


def ldc_rows(sizes: Sizes) -> Iterator[Row]:
    """bench_ldc: LDC's fit (init and training steps) of S seeds, sequential vs vmapped."""
    from benchmarks.bench_ldc import bench_variant

    settings = sizes.ldc
    for dtype in sizes.ldc_dtypes:
        found = bench_variant(sizes.ldc_variant, dtype=dtype, **settings)
        case = (f"LDC on {sizes.ldc_variant} ({settings['path']} path), {found['steps']} steps "
                f"of batch {settings['batch']}")
        yield from _seed_rows("ldc", case, dtype, settings["seeds"], found["sequential"],
                              found["vmapped"], found["flops"],
                              {"steps": found["steps"], "with_compile_s": found["first_all"]})


def tower_training_rows(sizes: Sizes) -> Iterator[Row]:
    """Extension point: one training step through CLIP's towers (CoOp's prompt learner,
    CLIP-LoRA's adapters), once such a method exists -- time its compiled step and count its
    FLOPs like :func:`encode_rows`, yielding :class:`Row` s of benchmark ``tower``."""
    del sizes
    raise NotAvailable("no method trains through CLIP's towers yet (CoOp, CLIP-LoRA): "
                       "implement benchmarks.accelerator.tower_training_rows")


BENCHMARKS: dict[str, Callable[[Sizes], Iterator[Row]]] = {
    "search": search_rows, "train": train_rows, "encode": encode_rows, "ldc": ldc_rows,
    "tower": tower_training_rows,
}


# --- report -------------------------------------------------------------------------------------


def row_json(row: Row, peaks: dict[str, Peak]) -> dict:
    achieved = row.flops / row.seconds
    peak = peaks[row.dtype].flops_per_s
    return {**dataclasses.asdict(row), "flops_per_s": achieved, "peak_flops_per_s": peak,
            "fraction_of_peak": achieved / peak}


def table(report: dict) -> str:
    """The report as a text table (one line per row, then what was skipped or failed)."""
    head = (f"{'benchmark':9s} {'case':58s} {'dtype':8s} {'seconds':>9s} {'GFLOP':>10s} "
            f"{'TFLOP/s':>8s} {'peak':>7s} {'of peak':>8s}")
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        lines.append(f"{r['benchmark']:9s} {r['case'][:58]:58s} {r['dtype']:8s} "
                     f"{r['seconds']:9.4f} {r['flops'] / 1e9:10.2f} {r['flops_per_s'] / 1e12:8.3f} "
                     f"{r['peak_flops_per_s'] / 1e12:7.3g} {100 * r['fraction_of_peak']:7.2f}%")
        extra = {k: v for k, v in r["notes"].items() if k in ("speedup_over_sequential",
                                                              "images_per_s")}
        if extra:
            lines[-1] += "  " + ", ".join(f"{k} {v:.3g}" for k, v in extra.items())
    for s in report["skipped"]:
        lines.append(f"{s['benchmark']:9s} not run: {s['reason']}")
    for e in report["errors"]:
        lines.append(f"{e['benchmark']:9s} FAILED: {e['error']}")
    lines.append("")
    lines += [f"peak {dtype}: {p['flops_per_s'] / 1e12:.3f} TFLOP/s ({p['source']})"
              for dtype, p in report["peaks"].items()]
    return "\n".join(lines)


def run(names, quick: bool, budget: float = math.inf,
        log: Callable[[str], None] = print) -> dict:
    """Runs the benchmarks ``names`` and returns the report (the JSON's content). Past
    ``budget`` seconds no further row is started (each benchmark skipped from there is
    reported)."""
    sizes = QUICK if quick else FULL
    device = jax.devices()[0]
    peaks = {dtype: peak_of(dtype, quick) for dtype in DTYPES}
    report: dict[str, Any] = {
        "device": {"platform": device.platform, "device_kind": device.device_kind,
                   "devices": jax.device_count()},
        "jax_version": jax.__version__, "quick": quick, "sizes": dataclasses.asdict(sizes),
        "peaks": {k: dataclasses.asdict(v) for k, v in peaks.items()},
        "rows": [], "skipped": [], "errors": []}
    started = time.perf_counter()
    for name in names:
        log(f"[{time.perf_counter() - started:6.1f} s] {name} ...")
        rows = None
        try:
            while True:
                if time.perf_counter() - started > budget:
                    raise NotAvailable(f"its remaining rows: past the time budget of "
                                       f"{budget:.0f} s")
                rows = iter(BENCHMARKS[name](sizes)) if rows is None else rows
                row = next(rows, None)
                if row is None:
                    break
                report["rows"].append(row_json(row, peaks))
                log(f"[{time.perf_counter() - started:6.1f} s] {name}: {row.case} {row.dtype}")
        except NotAvailable as exc:
            report["skipped"].append({"benchmark": name, "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 -- one failure must not lose the others
            report["errors"].append({"benchmark": name, "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()})
    report["seconds"] = time.perf_counter() - started
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the shortened CPU version (tiny sizes; well under a minute)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default="accelerator.json", help="the JSON report")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="start no further row past this time (default: 330 s for the "
                             "full version, none with --quick)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        parser.error(f"--only: unknown benchmark {unknown[0] if unknown else '(none)'}; "
                     f"choose from {', '.join(BENCHMARKS)}")
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {jax.device_count()} {device.platform} device(s) "
          f"({device.device_kind}); {'quick' if args.quick else 'full'} sizes", flush=True)
    budget = args.budget if args.budget is not None else (math.inf if args.quick else 330.0)
    report = run(names, args.quick, budget,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    atomic.write_json(args.out, report)
    print(table(report))
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
