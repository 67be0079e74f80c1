"""The ``jaxclip-fs`` command line: parses flags and calls library functions.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args)``;
the work itself lives in the packages so it is importable from a notebook.
User errors (:class:`~jaxclip_fs.errors.JaxclipError`) are printed as one
``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from jaxclip_fs import __version__
from jaxclip_fs.errors import JaxclipError

_RUNNERS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def _command(name: str, help_text: str, description: str):
    """Registers ``_add_<name>`` with its runner ``_run_<name>``."""

    def wrap(add: Callable[[argparse.ArgumentParser], None]):
        def register(subparsers) -> None:
            parser = subparsers.add_parser(
                name, help=help_text, description=description,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            add(parser)
        register.command_name = name  # type: ignore[attr-defined]
        return register

    return wrap


# --- embed ---------------------------------------------------------------------------


@_command(
    "embed",
    "embed images and/or texts with a CLIP backbone",
    "Encode images and texts with CLIP and write L2-normalised embeddings.\n\n"
    "Writes FILE.npz with 'image' [N, D] and 'text' [M, D] in the order given.\n"
    "--image and --text may be repeated and each takes one or more values.\n\n"
    "example:\n  jaxclip-fs embed --backbone ViT-B/32 --weights openai \\\n"
    "      --image a.jpg b.png --text 'a photo of a dog.' 'a photo of a cat.' --out emb.npz",
)
def _add_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help="variant name, e.g. ViT-B/32, RN50")
    p.add_argument("--weights", required=True,
                   help="local checkpoint path, hub id, 'openai', or 'random'")
    p.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH")
    p.add_argument("--text", nargs="+", action="extend", default=[], metavar="STR")
    p.add_argument("--out", required=True, metavar="FILE.npz")


def _run_embed(args: argparse.Namespace) -> int:
    from jaxclip_fs.clip.embed import embed_command

    return embed_command(args)


# --- entry point ---------------------------------------------------------------------


_SUBCOMMANDS = [(_add_embed, _run_embed)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxclip-fs",
        description="Few-shot adaptation of CLIP in JAX/Flax (LDC, APE, TA++/TX++, baselines).",
    )
    parser.add_argument("--version", action="version", version=f"jaxclip-fs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add, run in _SUBCOMMANDS:
        add(subparsers)
        _RUNNERS[add.command_name] = run
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = _RUNNERS[args.command](args)
    except JaxclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume.",
              file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
