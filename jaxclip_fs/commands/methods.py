"""``jaxclip-fs methods``: the registered methods, what they read, their options and
hyperparameters."""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list the methods: inputs, options, hyperparameters"
DESCRIPTION = """\
List every registered method: its display name, what it reads (features; paired
features of an IMO-adapted CLIP; images through the frozen CLIP), its structural options
(sweep them with `--option METHOD.NAME=V1,V2`) and its hyperparameters (fix them with
`--hp NAME=VALUE`; searched ones are otherwise chosen on validation).

example:
  jaxclip-fs methods"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="METHOD", help="only these (default: all)")


def describe(name: str) -> list[str]:
    """Lines describing one registered method."""
    from jaxclip_fs import methods

    method = methods.get(name)
    card = method.card
    lines = [f"{name} ({card.shown}{'; ' + card.paper if card.paper else ''}): "
             f"{card.summary}", f"  reads: {card.inputs}"]
    for option in method.options:
        lines.append(f"  option {option.name}: {' | '.join(option.choices)} "
                     f"(default {option.default}) -- {option.doc}")
    for role in ("search", "fixed", "train"):
        names = method.names(role)
        if names:
            lines.append(f"  {role} hyperparameters: {', '.join(names)}")
    return lines


def run(args: argparse.Namespace) -> int:
    from jaxclip_fs import methods

    for name in args.names or methods.names():
        print("\n".join(describe(name)))
    return 0
