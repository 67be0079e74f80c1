"""``jaxclip-fs embed``: L2-normalised CLIP embeddings of image files and texts (a .npz)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from jaxclip_fs import __version__
from jaxclip_fs.commands import common
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.io import atomic
from jaxclip_fs.io.console import random_weights_banner

NAME = "embed"
HELP = "embed images and/or texts with a CLIP backbone"
DESCRIPTION = """\
Encode images and texts with CLIP and write L2-normalised embeddings.

Writes FILE.npz with 'image' [N, D] and 'text' [M, D] in the order given, plus
provenance: 'backbone', 'weights' (its id, or 'random'), 'tokenizer' (which
vocabulary was used) and 'meta' (JSON). --image and --text may be repeated and
each takes one or more values. Images get CLIP's preprocessing (bicubic resize of
the short side, center crop, CLIP mean/std).

--weights is one of:
  PATH      an HF CLIPModel directory, an OpenAI/open_clip .pt/.bin/.safetensors file,
            or a directory written by `jaxclip-fs convert`
  openai    OpenAI's release of the backbone (~/.cache/clip, else the Hugging Face hub)
  ID        a Hugging Face hub id, e.g. openai/clip-vit-base-patch32 (cache first)
  random    random init (random:SEED); every output says so

example:
  jaxclip-fs embed --backbone ViT-B/32 --weights openai \\
      --image a.jpg b.png --text 'a photo of a dog.' 'a photo of a cat.' --out emb.npz"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True,
                   help="variant name: RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, "
                        "ViT-L/14, ViT-L/14@336px (tiny-vit, tiny-rn for tests), or 'auto' "
                        "to take the checkpoint's architecture")
    p.add_argument("--weights", required=True,
                   help="local checkpoint path, hub id, 'openai', or 'random' (see above)")
    p.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH")
    p.add_argument("--text", nargs="+", action="extend", default=[], metavar="STR")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="images/texts per compiled batch (default 32)")
    common.add_compute_dtype_argument(p, trained=False)


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs.clip.embed import embed_images, embed_texts
    from jaxclip_fs.clip.tokenizer import load_tokenizer
    from jaxclip_fs.convert import load_clip

    if not args.image and not args.text:
        raise ConfigError("nothing to embed: give --image PATH ... and/or --text STR ...")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    from jaxclip_fs.features.encode import compute_dtype

    loaded = load_clip(args.backbone, args.weights, dtype=compute_dtype(args.compute_dtype))
    if loaded.is_random:
        print(random_weights_banner(loaded.weights_id, "embeddings"), file=sys.stderr)
    # (real weights never meet the byte-level fallback: texts need CLIP's vocabulary)
    tokenizer = load_tokenizer(loaded.source_dir, required=bool(args.text) and not loaded.is_random)
    if args.text:
        print(f"tokenizer: {tokenizer.name}", file=sys.stderr)
    image = embed_images(loaded, args.image, args.batch_size)
    text = embed_texts(loaded, tokenizer, args.text, args.batch_size)
    weights = "random" if loaded.is_random else loaded.weights_id
    meta = {"backbone": loaded.config.name, "weights": weights, "weights_id": loaded.weights_id,
            "is_random": loaded.is_random, "tokenizer": tokenizer.name,
            "compute_dtype": args.compute_dtype,
            "tokenizer_id": tokenizer.identity,
            "images": list(args.image), "texts": list(args.text),
            "jaxclip_fs_version": __version__}
    atomic.save_npz(args.out, image=image, text=text, backbone=np.str_(loaded.config.name),
                    weights=np.str_(weights), is_random=np.bool_(loaded.is_random),
                    tokenizer=np.str_(tokenizer.name), meta=np.str_(json.dumps(meta)))
    print(f"wrote {args.out}: image {list(image.shape)}, text {list(text.shape)} "
          f"({loaded.config.name}, weights {weights})")
    return 0
