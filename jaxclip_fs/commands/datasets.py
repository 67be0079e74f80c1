"""``jaxclip-fs datasets``: the registry's names, the data root's layout, or a dataset described."""

from __future__ import annotations

import argparse

import numpy as np

from jaxclip_fs.commands import common
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment.protocol import SAMPLERS

NAME = "datasets"
HELP = "list the datasets, or check and describe some"
DESCRIPTION = """\
Without NAME: list the registry names. With NAME(s): load each one and print its
classes, split sizes and how each split was made (checks that the data is set up).

With --shots K --seed S --list: print the images of that few-shot set, one path per line,
class by class (the sampler's order within a class) -- to compare with another code's
selection. --sampler official gives the official codes' draw (Python's random seeded with S,
then Dassl's per-class random.sample over the split file's train list; CoOp's
split_fewshot/shot_K-seed_S.pkl when the data root has it), official_chained GDA / IMO's
(seeded once, 1, 2, 4, 8, 16 shots drawn in turn), nested (default) ours.

examples:
  jaxclip-fs datasets
  jaxclip-fs datasets digits folder:./my_images
  jaxclip-fs datasets oxford_pets dtd --data-root /data
  jaxclip-fs datasets oxford_pets --data-root /data --shots 4 --seed 1 --sampler official --list
  jaxclip-fs datasets --setup-help"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="registry name or folder:PATH")
    common.add_data_arguments(p)
    p.add_argument("--setup-help", action="store_true", help="print how to lay out the data root")
    p.add_argument("--shots", type=int, metavar="K", help="with --list: shots per class")
    p.add_argument("--seed", type=int, default=1, help="with --list: few-shot seed (default 1)")
    p.add_argument("--sampler", choices=SAMPLERS, default="nested",
                   help="with --list: nested (ours, default), official or official_chained")
    p.add_argument("--list", action="store_true",
                   help="print the (--shots, --seed) few-shot set's images, one per line")


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs.data import coop, registry

    if args.setup_help:
        print(coop.SETUP_HELP)
    elif not args.names:
        print("benchmarks: " + ", ".join(registry.BENCHMARK_DATASETS))
        print("out-of-distribution: " + ", ".join(registry.OOD_DATASETS))
        print("offline: " + ", ".join(registry.OFFLINE_DATASETS) + ", folder:PATH")
    if args.list:
        if len(args.names) != 1 or args.shots is None:
            raise ConfigError("--list needs one dataset NAME and --shots K")
        dataset = registry.get_dataset(args.names[0], args.data_root, source=args.source)
        for path in fewshot_listing(dataset, args.shots, args.seed, args.sampler):
            print(path)
        return 0
    for name in args.names:
        print(registry.describe(registry.get_dataset(name, args.data_root, source=args.source)))
    return 0


def fewshot_listing(dataset, shots: int, seed: int, sampler: str) -> list[str]:
    """The images of a few-shot set, class by class (in the sampler's order within a class)."""
    from jaxclip_fs.data.fewshot import fewshot_train, official_sets

    if sampler == "nested":
        rows = fewshot_train(dataset, shots, seed)
    else:
        rows = official_sets(dataset, sampler, shots, seed)[0]
    train = dataset.split("train")
    return [train.describe(int(i)) for i in np.asarray(rows).reshape(-1)]
