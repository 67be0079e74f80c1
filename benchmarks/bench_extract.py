"""Feature extraction speed: ours vs a PyTorch loop in the official style, and cache hits.

Runs in one process, on the same generated image folder and the same number
of views, for ``tiny-vit`` and ``ViT-B/32`` with random weights:

* **ours** -- :func:`~jaxclip_fs.features.image_encoder.encode_split`:
  threaded decode + augmentation, jit-compiled fixed-shape batches,
  chunked cache writes. Timed after one warm-up batch (compilation is
  reported separately).
* **baseline** -- what Tip-Adapter's ``build_cache_model`` does: for each
  view an outer pass over a ``torch.utils.data.DataLoader`` (torchvision
  ``RandomResizedCrop(scale) + RandomHorizontalFlip`` for views >= 1,
  ``Resize + CenterCrop`` for view 0; ``num_workers`` processes) feeding
  open_clip's ``VisionTransformer`` of the same architecture under
  ``torch.no_grad()``; each image is decoded once per view, as there.
* **cache hit** -- the same ``encode_split`` call again (no encoder call).

Throughput is image-views per second, end to end (decode to features).

Usage::

    python -m benchmarks.bench_extract [--quick] [--images 96] [--views 4] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image


def make_folder(root: str, images: int, classes: int = 4, seed: int = 0) -> str:
    """``images`` JPEGs (smooth random content, 320x240 / 240x320) in ``classes`` folders."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        h, w = (240, 320) if i % 2 else (320, 240)
        coarse = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
        img.save(os.path.join(folder, f"img{i:05d}.jpg"), quality=90)
    return root


def bench_ours(clip, dataset, views: int, batch_size: int, cache_dir: str, workers: int):
    from jaxclip_fs.features.image_encoder import encode_split, make_image_encoder

    encoder = make_image_encoder(clip, batch_size=batch_size)
    size = clip.config.image_size
    start = time.perf_counter()
    encoder.batches(np.zeros((batch_size, size, size, 3), np.float32))["features"] \
        .block_until_ready()
    compile_s = time.perf_counter() - start
    n = len(dataset.split("train"))
    run = lambda: encode_split(encoder, dataset, "train", views=views, cache_dir=cache_dir,
                               workers=workers, progress=False)
    start = time.perf_counter()
    cold = run()
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    hit = run()
    hit_s = time.perf_counter() - start
    assert hit.computed_chunks == 0 and np.array_equal(hit.features, cold.features)
    assert encoder.batches.num_compilations == 1
    return {"compile_s": compile_s, "cold_s": cold_s, "hit_s": hit_s, "rows": n * views,
            "features": cold.features}


def torch_vision_tower(config):
    """open_clip's image tower of ``config``: the tests' builder (random init, random
    BatchNorm statistics, eval mode). Importing it sets torch to 1 thread: reset after."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from clip_checkpoints import openai_layout_model

    return openai_layout_model(config).visual


class _ViewDataset:
    """Item ``v * N + i`` = view v of image i, decoded when read (view-major, as the
    official per-view passes)."""

    def __init__(self, paths, views, plain, augmented):
        self.paths, self.views, self.plain, self.augmented = paths, views, plain, augmented

    def __len__(self):
        return len(self.paths) * self.views

    def __getitem__(self, k):
        view, i = divmod(k, len(self.paths))
        img = Image.open(self.paths[i]).convert("RGB")
        return (self.plain if view == 0 else self.augmented)(img)


def bench_torch(config, paths, views: int, batch_size: int, workers: int, scale):
    """The baseline; returns total seconds and the steady rate after the first batch.

    One DataLoader pass over all (view, image) pairs with ``workers`` processes
    (``forkserver``: JAX's threads make plain fork unsafe), so worker start-up
    is paid once -- kinder to the baseline than the official code, which
    restarts its workers for each of the 10 views.
    """
    import torch
    from torchvision import transforms as T

    from jaxclip_fs.clip.preprocess import CLIP_MEAN, CLIP_STD

    model = torch_vision_tower(config)
    torch.set_num_threads(os.cpu_count() or 1)
    size = config.image_size
    tail = [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
    plain = T.Compose([T.Resize(size, T.InterpolationMode.BICUBIC), T.CenterCrop(size), *tail])
    augmented = T.Compose([T.RandomResizedCrop(size, scale=scale,
                                               interpolation=T.InterpolationMode.BICUBIC),
                           T.RandomHorizontalFlip(), *tail])
    loader = torch.utils.data.DataLoader(
        _ViewDataset(paths, views, plain, augmented), batch_size=batch_size,
        num_workers=workers, shuffle=False, multiprocessing_context="forkserver")
    rows = len(paths) * views
    with torch.no_grad():
        model(torch.zeros(batch_size, 3, size, size))  # warm-up
        start = time.perf_counter()
        batches = iter(loader)
        first = next(batches)
        model(first)
        after_first = time.perf_counter()
        for images in batches:
            model(images)
        end = time.perf_counter()
    return {"s": end - start, "rows": rows,
            "steady_rate": (rows - len(first)) / (end - after_first)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96, help="images in the folder")
    parser.add_argument("--views", type=int, default=4, help="views per image")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variants", default="tiny-vit,ViT-B/32")
    parser.add_argument("--quick", action="store_true",
                        help="32 images, 2 views, tiny-vit only (about a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.views, args.variants = 32, 2, "tiny-vit"

    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.data import get_dataset

    work = tempfile.mkdtemp(prefix="bench_extract_")
    try:
        data = os.path.join(work, "data")
        make_folder(os.path.join(data, "train"), args.images)
        make_folder(os.path.join(data, "test"), 4)  # the layout wants a test/ folder too
        dataset = get_dataset(f"folder:{data}")  # 20% of train/ is carved off as val
        train = dataset.split("train")
        paths = [train.describe(i) for i in range(len(train))]
        print(f"{len(paths)} train images (320x240 JPEG), {args.views} views each, batch "
              f"{args.batch_size}, {args.workers} loader workers, {os.cpu_count()} CPUs")
        for variant in args.variants.split(","):
            clip = load_clip(variant, "random")
            ours = bench_ours(clip, dataset, args.views, args.batch_size,
                              os.path.join(work, "cache", variant.replace("/", "_")),
                              args.workers)
            base = bench_torch(clip.config, paths, args.views, args.batch_size, args.workers,
                               (0.5, 1.0))
            ours_rate = ours["rows"] / ours["cold_s"]
            print(f"{variant}:\n"
                  f"  ours        {ours_rate:8.1f} views/s end to end ({ours['cold_s']:.2f} s; "
                  f"compile {ours['compile_s']:.2f} s, once)\n"
                  f"  torch loop  {base['steady_rate']:8.1f} views/s after the first batch "
                  f"({base['rows'] / base['s']:.1f} views/s incl. worker start, "
                  f"{base['s']:.2f} s)\n"
                  f"  ours / torch steady: {ours_rate / base['steady_rate']:.2f}x\n"
                  f"  cache hit   {ours['hit_s'] * 1000:8.1f} ms for {ours['rows']} views "
                  f"({ours['cold_s'] / ours['hit_s']:.0f}x faster than cold)")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
