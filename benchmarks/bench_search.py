"""Grid search speed: our vectorised search vs the official point-by-point loop, one process.

Runs, on one set of synthetic CLIP-like features of ImageNet's shape
(C = 1000 classes, D = 1024, 16 shots x 10 augmented views):

* **Tip-Adapter**, the official 200 (β) x 20 (α) grid;
* **APE**, 200 (β) x 20 (α) x 21 (γ) points;

each as (ours) ``methods.search.grid_search`` -- one jit-compiled call --
and (baseline) a faithful PyTorch re-implementation of the official loops
(Tip-Adapter ``utils.search_hp``: affinity, cache logits and zero-shot
logits recomputed at every point; APE ``main.APE``: affinities hoisted out of
the loop as the official code does). The baseline runs a sample of grid
points (``--sample``, after one warm-up point) and is scaled to the whole
grid; its sampled accuracies are checked against ours. Official value
matrices are fp16 on GPU; on CPU the baseline uses float32.

Default: 1 000 validation images (a few minutes on 2 CPU cores); ``--val N``
or ``--full`` (the issue's 10 000) for more -- both sides scale with the
number of images, so the ratio barely moves (2 500: Tip-Adapter 790x, APE
370x on this machine). Times exclude feature generation; ours is reported
with and without compilation.

  python -m benchmarks.bench_search [--quick] [--full] [--val N] [--sample S] [--threads T]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.efficiency import count_flops, fraction, measured_peak
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


def ours(method, task, val, hp, grid):
    """Our search, one jit-compiled call: ``(output, seconds with compilation, seconds
    compiled, XLA's FLOPs)``."""
    def search(task, val, hp, grid):
        return grid_search(method, method.init(None, task, hp), task, val, hp, grid)

    run = jax.jit(search)
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in grid.items()}
    hp = as_arrays(hp)
    out, first = _timed(run, task, val, hp, grid)
    out, steady = _timed(run, task, val, hp, grid)
    return out, first, steady, count_flops(search, task, val, hp, grid)


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

    results = []
    (ta_label, ta_order, ta, _, ta_grid), (ape_label, ape_order, ape, ape_hp, ape_grid) = \
        search_cases()
    out, first, steady, flops = ours(ta, task, val, {}, ta_grid)
    per_point, loop_total = _baseline(tip_adapter_point, setup, ta_grid, ta_order,
                                      np.asarray(out["counts"]), num_val, args.sample, rng)
    results.append((ta_label, 200 * 20, first, steady, per_point, loop_total, flops))

    out, first, steady, flops = ours(ape, task, val, ape_hp, ape_grid)
    params = jax.jit(ape.init)(None, task, as_arrays(ape_hp))
    state = ape_setup(setup, params, task)
    per_point, loop_total = _baseline(ape_point, state, ape_grid, ape_order,
                                      np.asarray(out["counts"]), num_val, args.sample, rng)
    results.append((ape_label, 200 * 20 * 21, first, steady, per_point, loop_total, flops))

    print(f"{'grid':24s} {'points':>7s} {'ours (s)':>10s} {'ours+jit':>9s} {'loop/pt (s)':>12s} "
          f"{'loop (s, est.)':>15s} {'speed-up':>9s}")
    for name, points, first, steady, per_point, loop_total, _ in results:
        print(f"{name:24s} {points:7d} {steady:10.1f} {first:9.1f} {per_point:12.3f} "
              f"{loop_total:15.0f} {loop_total / steady:8.0f}x")
    print(f"\nloop times: mean of {args.sample} random grid points (after one warm-up) "
          "x grid size; those points' accuracies equal ours.")
    peak = measured_peak("float32")
    for name, _, _, steady, _, _, flops in results:
        print(fraction(f"ours, {name}", flops, steady, peak))


if __name__ == "__main__":
    main()
