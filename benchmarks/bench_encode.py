"""Image-encoding throughput: jaxclip-fs (jit, XLA CPU) vs PyTorch (open_clip), one process.

For each variant one random open_clip model is built; its state dict is
converted with jaxclip-fs' own OpenAI-layout loader, so both sides run the
same weights on the same batch. The two are timed alternately (median of
``--repeats`` batches each, after warm-up / compilation), with torch using as
many threads as there are cores, and their L2-normalised outputs compared.

    python -m benchmarks.bench_encode                       # tiny-vit, ViT-B/32, RN50
    python -m benchmarks.bench_encode --quick               # tiny-vit, RN50 at batch 8
    python -m benchmarks.bench_encode --variants ViT-B/16 --batch 16 --repeats 5

Prints images/s for both (median) and the ratio ours / PyTorch (target on CPU:
>= 1.0), plus the ratio of the two best runs (less sensitive to other load on
the machine; PyTorch's OpenMP threads suffer most from it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
import torch

from benchmarks.efficiency import count_flops, fraction, measured_peak
from jaxclip_fs.clip.model import CLIP, abstract_variables
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert.assemble import assemble
from jaxclip_fs.convert.layouts import OPENAI
from jaxclip_fs.convert.tensors import state_dict_to_numpy

# the tests' open_clip builder (random BatchNorm statistics, so ResNet branches are not all zero)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from clip_checkpoints import openai_layout_model  # noqa: E402


def bench(variant: str, batch: int, repeats: int) -> dict:
    config = get_config(variant)
    torch_model = openai_layout_model(config)
    variables = assemble(abstract_variables(config), state_dict_to_numpy(torch_model.state_dict()),
                         OPENAI, variant, "open_clip model")
    variables = jax.device_put(variables)
    model = CLIP(config)

    def encode_image(v, x):
        return model.apply(v, x, method="encode_image")[0]

    encode = jax.jit(encode_image)

    images = np.random.default_rng(0).standard_normal(
        (batch, config.image_size, config.image_size, 3)).astype(np.float32)
    images_nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def run_torch():
        with torch.inference_mode():
            return torch_model.encode_image(images_nchw).numpy()

    def run_ours():
        return np.asarray(jax.block_until_ready(encode(variables, images)))

    t0 = time.perf_counter()
    ours_out = run_ours()  # compiles
    compile_s = time.perf_counter() - t0
    ref_out = run_torch()
    run_torch()
    normed = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    max_diff = float(np.abs(normed(ours_out) - normed(ref_out)).max())

    times = {"ours": [], "torch": []}
    for _ in range(repeats):  # alternate, so load from other processes hits both alike
        for name, fn in (("ours", run_ours), ("torch", run_torch)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ours = batch / statistics.median(times["ours"])
    ref = batch / statistics.median(times["torch"])
    best_ratio = min(times["torch"]) / min(times["ours"])
    return {"variant": variant, "batch": batch, "ours": ours, "torch": ref, "ratio": ours / ref,
            "best_ratio": best_ratio, "compile_s": compile_s, "max_diff": max_diff,
            "flops": count_flops(encode_image, variables, images),
            "ours_s": statistics.median(times["ours"]),
            "torch_s": statistics.median(times["torch"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny-vit", "ViT-B/32", "RN50"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true",
                        help="tiny-vit and RN50 at batch 8, 3 repeats (about a minute)")
    args = parser.parse_args()
    if args.quick:
        args.variants, args.batch, args.repeats = ["tiny-vit", "RN50"], 8, 3
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"with {threads} threads; batch {args.batch}, median of {args.repeats} alternated runs")
    print(f"{'variant':<16}{'jaxclip-fs img/s':>18}{'PyTorch img/s':>16}{'ratio':>8}"
          f"{'best-run ratio':>16}{'compile s':>11}{'max|diff|':>11}")
    peak = measured_peak("float32")
    fractions = []
    for variant in args.variants:
        r = bench(variant, args.batch, args.repeats)
        print(f"{r['variant']:<16}{r['ours']:>18.1f}{r['torch']:>16.1f}{r['ratio']:>8.2f}"
              f"{r['best_ratio']:>16.2f}{r['compile_s']:>11.1f}{r['max_diff']:>11.1e}",
              flush=True)
        fractions += [fraction(f"{variant} encode, ours", r["flops"], r["ours_s"], peak),
                      fraction(f"{variant} encode, PyTorch (same model, XLA's count)",
                               r["flops"], r["torch_s"], peak)]
    print("\n".join(fractions))


if __name__ == "__main__":
    main()
