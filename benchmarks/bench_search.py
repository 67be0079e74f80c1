"""Grid search speed: ours vs the official point-by-point loop and vs its least-work limit.

Runs, on one set of synthetic CLIP-like features of ImageNet's shape
(C = 1000 classes, D = 1024, 16 shots x 10 augmented views):

* **Tip-Adapter**, the official 200 (β) x 20 (α) grid;
* **APE**, 200 (β) x 20 (α) x 21 (γ) points;

each as (ours) ``methods.search.grid_search`` -- one jit-compiled call from
the fitted cache (``init``) to the chosen point, through the cache-family path
(``methods/cache_search.py``) --, (previous) the same search with ``terms``
evaluated per non-linear point (``use_cache_form=False``; ``--no-previous``
skips it), and (baseline) a faithful PyTorch re-implementation of the official loops
(Tip-Adapter ``utils.search_hp``: affinity, cache logits and zero-shot
logits recomputed at every point; APE ``main.APE``: affinities hoisted out of
the loop as the official code does). The baseline runs a sample of grid
points (``--sample``, after one warm-up point) and is scaled to the whole
grid; its sampled accuracies are checked against ours. Official value
matrices are fp16 on GPU; on CPU the baseline uses float32.

**The limit** (``benchmarks/search_limit.py``, ``docs/performance.md``): the
least work each search needs -- exponentials, multiply-adds, comparisons,
matrix products and bytes -- priced at this machine's rates measured in the
same run; ours is printed as a fraction of it. The chosen points of ours and
the previous search are compared over the whole grid (equal, or a near tie:
the two points' counts within one image).

Default: 1 000 validation images (a few minutes on 2 CPU cores); ``--val N``
or ``--full`` (10 000) for more. Times exclude feature generation and the
cache's ``init``; ours is reported with and without compilation. The load
average of the machine is printed: on a shared machine every figure moves
with it, the ratios measured side by side less.

  python -m benchmarks.bench_search [--quick] [--full] [--val N] [--sample S] [--threads T]
                                    [--no-previous]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.efficiency import count_flops
from benchmarks.search_limit import cache_search_work, measure_rates
from jaxclip_fs import methods
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs.methods.base import as_arrays
from jaxclip_fs.methods.search import grid_search
from jaxclip_fs.methods.task import make_evalset
from jaxclip_fs.methods.task import make_task as task_of

NUM_CLASSES, DIM, SHOTS, VIEWS = 1000, 1024, 16, 11  # view 0 clean + 10 augmented views


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def search_problem(num_val: int, *, num_classes: int = NUM_CLASSES, dim: int = DIM):
    """The searched features: ``(task, val)`` of one synthetic CLIP-like set (ImageNet's shape
    by default: C = 1000, D = 1024, 16 shots x 10 augmented views) with ``num_val`` images."""
    fs = make_task(0, num_classes=num_classes, dim=dim, shots=SHOTS, views=VIEWS,
                   val_per_class=-(-num_val // num_classes), test_per_class=1)
    task = task_of(fs.train[:, support_index(fs, SHOTS, 1)], fs.text, fs.logit_scale)
    return task, make_evalset(fs.val[:num_val], fs.val_labels[:num_val])


def search_cases(dim: int = DIM) -> list:
    """``(label, order, method, hp, grid)`` of the two searches: Tip-Adapter's official
    200 (β) x 20 (α) grid, APE's 200 x 20 x 21 (γ) at ImageNet's settings."""
    ta = methods.get("tip_adapter")
    ape = methods.get("ape")
    ape_hp = {k: v for k, v in ape.defaults("imagenet", dim).items()
              if k in ("k", "lambda1", "lambda2")}
    ape_grid = dict(ape.grid("imagenet"))
    ape_grid["gamma"] = hp_lib.official_grid(1.0, 21, start=0.0)  # the 21 γ values
    return [("Tip-Adapter 200 x 20", ("beta", "alpha"), ta, {}, ta.grid("imagenet")),
            ("APE 200 x 20 x 21", ("beta", "alpha", "gamma"), ape, ape_hp, ape_grid)]


def ours(method, task, val, hp, grid, *, params=None, use_cache_form=True, flops=True,
         repeats=1):
    """Our search, one jit-compiled call: ``(output, seconds with compilation, seconds
    compiled (best of ``repeats``), XLA's FLOPs or NaN)``. With ``params`` the fitted
    cache is given (``init`` not timed); without, ``init`` runs inside the call."""
    def search(params, task, val, hp, grid):
        if params is None:
            params = method.init(None, task, hp)
        return grid_search(method, params, task, val, hp, grid, use_cache_form=use_cache_form)

    run = jax.jit(search)
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in grid.items()}
    hp = as_arrays(hp)
    out, first = _timed(run, params, task, val, hp, grid)
    steady = min(_timed(run, params, task, val, hp, grid)[1] for _ in range(repeats))
    count = count_flops(search, params, task, val, hp, grid) if flops else float("nan")
    return out, first, steady, count


def _same_choice(ours_out, previous) -> str:
    """Do both searches choose the same point -- else are the two points near-tied?"""
    counts = np.asarray(previous["counts"])
    mine = tuple(int(i) for i in ours_out["index"].values())
    theirs = tuple(int(i) for i in previous["index"].values())
    if mine == theirs:
        return f"same point {dict(zip(ours_out['index'], mine))}"
    gap = int(counts[theirs]) - int(counts[mine])
    kind = "near tie" if gap <= 1 else "DIFFERENT"
    return f"{kind}: {mine} vs {theirs}, {gap} image(s) apart on the previous search's counts"


def _torch_setup(task, val):
    """Official-layout tensors: keys [D, N], one-hot values [N, C], normalised val, W [D, C]."""
    support = torch.from_numpy(np.array(task.support))  # [V, C, K, D]
    keys = support[1:].mean(0).reshape(-1, DIM)
    keys = (keys / keys.norm(dim=-1, keepdim=True)).t().contiguous()
    values = torch.nn.functional.one_hot(torch.arange(NUM_CLASSES).repeat_interleave(SHOTS)).float()
    features = torch.from_numpy(np.array(val.features))
    features = features / features.norm(dim=-1, keepdim=True)
    weights = torch.from_numpy(np.array(task.text)).t().contiguous()
    return keys, values, features, weights, torch.from_numpy(np.array(val.labels))


def _cls_acc(output, target):
    pred = output.topk(1, 1, True, True)[1].t()
    return float(pred.eq(target.view(1, -1)).float().sum()) * 100 / target.shape[0]


def tip_adapter_point(setup, beta, alpha):
    """One iteration of the official Tip-Adapter ``search_hp`` loop body."""
    keys, values, features, weights, labels = setup
    affinity = features @ keys
    cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
    clip_logits = 100. * features @ weights
    return _cls_acc(clip_logits + cache_logits * alpha, labels)


def ape_setup(setup, params, task):
    """What the official ``APE()`` computes before its search loop (refined features, R_fW, KL)."""
    keys, values, features, weights, labels = setup
    mask = torch.from_numpy(np.array(params["channel_mask"])).bool()
    new_keys = keys.t()[:, mask]
    new_keys = new_keys / new_keys.norm(dim=-1, keepdim=True)
    new_weights = weights[mask, :]
    new_weights = new_weights / new_weights.norm(dim=0, keepdim=True)
    new_features = features[:, mask]
    new_features = new_features / new_features.norm(dim=-1, keepdim=True)
    key_logits = (new_keys @ new_weights).softmax(1)
    cache_div = torch.sum(values * torch.log2((values + 1e-6) / (key_logits + 1e-6)), dim=1)
    cache_div = cache_div[:, None]
    return new_features @ new_keys.t(), 100. * features @ weights, cache_div, values, labels


def ape_point(state, beta, alpha, gamma):
    """One iteration of the official APE search loop body."""
    r_ff, r_fw, cache_div, values, labels = state
    soft_cache_values = values * (cache_div * gamma).exp()
    cache_logits = ((-1) * (beta - beta * r_ff)).exp() @ soft_cache_values
    return _cls_acc(r_fw + cache_logits * alpha, labels)


def _baseline(point_fn, state, grid, order, counts, num_val, sample, rng):
    """Times ``sample`` random grid points (after a warm-up) and checks them against ``counts``."""
    shape = [len(grid[n]) for n in order]
    points = [tuple(int(rng.integers(s)) for s in shape) for _ in range(sample + 1)]
    times = []
    for i, index in enumerate(points):
        values = {n: float(grid[n][j]) for n, j in zip(order, index)}
        start = time.perf_counter()
        with torch.no_grad():
            acc = point_fn(state, *[values[n] for n in order])
        if i:
            times.append(time.perf_counter() - start)
        ours = 100.0 * float(counts[index]) / num_val
        assert abs(acc - ours) <= 100.0 / num_val + 1e-9, (index, acc, ours)
    per_point = float(np.mean(times))
    return per_point, per_point * int(np.prod(shape))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="10 000 validation images (the issue's size)")
    parser.add_argument("--val", type=int, default=1000, help="validation images (default 1 000)")
    parser.add_argument("--sample", type=int, default=3, help="timed baseline points per method")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="200 validation images, 2 timed baseline points (about a minute)")
    parser.add_argument("--no-previous", dest="previous", action="store_false",
                        help="skip the previous search (terms per non-linear point)")
    args = parser.parse_args()
    if args.quick:
        args.val, args.sample = 200, 2
    num_val = 10_000 if args.full else args.val
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    start = time.perf_counter()
    task, val = search_problem(num_val)
    print(f"features: C={NUM_CLASSES} D={DIM} {SHOTS} shots x {VIEWS - 1} augmented views, "
          f"{num_val} validation images (generated in {time.perf_counter() - start:.0f} s)")
    print(f"devices: {jax.devices()}; torch threads: {torch.get_num_threads()}\n")
    setup = _torch_setup(task, val)

    print(f"load average at start: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores"
          if hasattr(os, "getloadavg") else "")
    rates = measure_rates()
    print(rates.line() + "\n")

    (ta_label, ta_order, ta, _, ta_grid), (ape_label, ape_order, ape, ape_hp, ape_grid) = \
        search_cases()
    runs = [(ta_label, ta_order, ta, {}, ta_grid, tip_adapter_point, lambda params: setup,
             cache_search_work(num_val, NUM_CLASSES, SHOTS, DIM, 200)),
            (ape_label, ape_order, ape, ape_hp, ape_grid, ape_point,
             lambda params: ape_setup(setup, params, task),
             cache_search_work(num_val, NUM_CLASSES, SHOTS, DIM, 200, values=21,
                               affinity_dim=int(ape_hp["k"])))]
    results = []
    for name, order, method, hp, grid, point_fn, state_of, work in runs:
        params = jax.jit(method.init)(None, task, as_arrays(hp))
        out, first, steady, _ = ours(method, task, val, hp, grid, params=params, flops=False,
                                     repeats=3)
        choice, previous = "(previous search skipped)", float("nan")
        if args.previous:
            old, _, previous, _ = ours(method, task, val, hp, grid, params=params,
                                       use_cache_form=False, flops=False)
            choice = _same_choice(out, old)
        per_point, loop_total = _baseline(point_fn, state_of(params), grid, order,
                                          np.asarray(out["counts"]), num_val, args.sample, rng)
        results.append((name, int(np.prod([len(grid[n]) for n in order])), first, steady,
                        previous, loop_total, work, choice))

    print(f"{'grid':22s} {'points':>6s} {'ours (s)':>9s} {'ours+jit':>9s} {'previous':>9s} "
          f"{'loop (s, est.)':>15s} {'vs loop':>8s} {'limit (s)':>10s} {'of limit':>9s}")
    for name, points, first, steady, previous, loop_total, work, _ in results:
        limit = work.seconds(rates)
        print(f"{name:22s} {points:6d} {steady:9.3f} {first:9.1f} {previous:9.1f} "
              f"{loop_total:15.0f} {loop_total / steady:7.0f}x {limit:10.3f} "
              f"{100 * limit / steady:8.0f}%")
    print(f"\nloop times: mean of {args.sample} random grid points (after one warm-up) "
          "x grid size; those points' accuracies equal ours (within one image).")
    for name, _, _, steady, _, _, work, choice in results:
        strict = work.seconds(rates.at_matmul_peak())
        print(f"{name}: limit = {work.parts(rates)}")
        print(f"{name}: with the multiply-adds at the matmul's FMA rate instead: limit "
              f"{strict:.3f} s, ours at {100 * strict / steady:.0f}% of it")
        print(f"{name}: chosen point, ours vs the previous search: {choice}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg")
          else "")


if __name__ == "__main__":
    main()
