"""``jaxclip-fs train-imo``: IMO adapters (TA++ / TX++) trained on a dataset split."""

from __future__ import annotations

import argparse

from jaxclip_fs.commands import common, flags

NAME = "train-imo"
HELP = "train IMO adapters (TA++/TX++) inside a ViT's blocks; save an orbax checkpoint"
DESCRIPTION = """\
Add a bottleneck adapter to every ViT image block (down W->64, ReLU, dropout 0.1, up
64->W, scale 0.03; up zero-initialised) and train the adapters with a linear head and
cross-entropy on a labelled dataset's split, the rest of CLIP frozen (IMO, BMVC'24: one
epoch, AdamW lr 8e-3, batch 128, on a subset of Open Images -- here any registry
dataset). Writes an orbax checkpoint directory --out (adapters, head, metadata: backbone,
weights id, dataset, settings, losses) for `--imo-adapters` of `run` / `evaluate`.

Inputs are CLIP-normalised (the official training left Normalize out while TA++/TX++
encode normalised images); --unnormalized reproduces the official [0, 1] pixels.

example:
  jaxclip-fs train-imo --dataset imagenet --data-root /data --backbone ViT-B/16 \\
      --weights openai --out imo_vitb16"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registry name or folder:PATH")
    common.add_data_arguments(p)
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="split to train on (default train)")
    p.add_argument("--backbone", required=True, help="a ViT variant, e.g. ViT-B/16")
    p.add_argument("--weights", required=True, help=flags.WEIGHTS_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
    p.add_argument("--epochs", type=int, default=1, help="epochs (default 1)")
    p.add_argument("--lr", type=float, default=8e-3, help="AdamW learning rate (default 8e-3)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="default 128")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="init / shuffle / dropout seed (default 0)")
    p.add_argument("--adapter-dim", type=int, default=64, help="bottleneck width (default 64)")
    p.add_argument("--adapter-scale", type=float, default=0.03, help="adapter scale (default 0.03)")
    p.add_argument("--adapter-dropout", type=float, default=0.1, help="dropout (default 0.1)")
    p.add_argument("--unnormalized", action="store_true",
                   help="train on [0, 1] pixels as the official code does")
    p.add_argument("--workers", type=int, metavar="N", help="image loading threads")
    common.add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.data import get_dataset
    from jaxclip_fs.io.console import stderr_log
    from jaxclip_fs.train.imo import IMOSettings, describe, save_imo_adapters, train_imo

    settings = IMOSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           weight_decay=args.weight_decay, seed=args.seed,
                           adapter_dim=args.adapter_dim, scale=args.adapter_scale,
                           dropout=args.adapter_dropout, normalize=not args.unnormalized)
    settings.check()
    dataset = get_dataset(args.dataset, args.data_root, source=args.source)
    clip = load_clip(args.backbone, args.weights)
    trained = train_imo(clip, dataset, settings, split=args.split, workers=args.workers,
                        progress=not args.quiet, log=None if args.quiet else stderr_log)
    save_imo_adapters(args.out, trained)
    print(describe(trained))
    print(f"wrote {args.out} (use it with: jaxclip-fs run --imo-adapters {args.out} ...)")
    return 0
