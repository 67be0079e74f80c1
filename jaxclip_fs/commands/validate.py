"""``jaxclip-fs validate``: check a feature file and print what it holds."""

from __future__ import annotations

import argparse

import numpy as np

NAME = "validate"
HELP = "check a feature file and print a summary"
DESCRIPTION = """\
Load FILE.npz with the feature-file validator (keys, shapes, dtypes, NaN, label
ranges, few-shot index) and print what it holds; a bad file gets a one-line error
naming the key.

example:
  jaxclip-fs validate pets.npz"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FILE.npz")


def describe_features(fs, source: str) -> list[str]:
    """A human-readable summary of a (validated) feature file, one line per fact."""
    lines = [
        f"{source}: valid feature file",
        f"  classes: {fs.num_classes} ({', '.join(fs.classnames[:5])}"
        f"{', ...' if fs.num_classes > 5 else ''})",
        f"  feature dim: {fs.dim}; logit_scale: {fs.logit_scale:g}",
        f"  train pool: {fs.train.shape[1]} images x {fs.num_views} views "
        f"(min {np.bincount(fs.train_labels, minlength=fs.num_classes).min()} per class)",
        f"  val: {fs.val.shape[0]} images; test: {fs.test.shape[0]} images",
    ]
    if fs.fewshot:
        shots = {seed: index.shape[1] for seed, index in fs.fewshot.items()}
        lines.append("  few-shot sets: "
                     + ", ".join(f"seed {s}: {k} shots" for s, k in sorted(shots.items())))
    for field in ("dataset", "backbone", "weights", "split_policy"):
        if field in fs.meta:
            lines.append(f"  {field}: {fs.meta[field]}")
    return lines


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs.features import featfile

    print("\n".join(describe_features(featfile.load(args.features), args.features)))
    return 0
