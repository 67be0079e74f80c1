"""``jaxclip-fs datasets``: the registry's names, the data root's layout, or a dataset described."""

from __future__ import annotations

import argparse

from jaxclip_fs.commands import common

NAME = "datasets"
HELP = "list the datasets, or check and describe some"
DESCRIPTION = """\
Without NAME: list the registry names. With NAME(s): load each one and print its
classes, split sizes and how each split was made (checks that the data is set up).

examples:
  jaxclip-fs datasets
  jaxclip-fs datasets digits folder:./my_images
  jaxclip-fs datasets oxford_pets dtd --data-root /data
  jaxclip-fs datasets --setup-help"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="registry name or folder:PATH")
    common.add_data_arguments(p)
    p.add_argument("--setup-help", action="store_true", help="print how to lay out the data root")


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs.data import coop, registry

    if args.setup_help:
        print(coop.SETUP_HELP)
    elif not args.names:
        print("benchmarks: " + ", ".join(registry.BENCHMARK_DATASETS))
        print("out-of-distribution: " + ", ".join(registry.OOD_DATASETS))
        print("offline: " + ", ".join(registry.OFFLINE_DATASETS) + ", folder:PATH")
    for name in args.names:
        print(registry.describe(registry.get_dataset(name, args.data_root, source=args.source)))
    return 0
