"""``jaxclip-fs convert``: any supported checkpoint -> a converted directory that loads without
torch."""

from __future__ import annotations

import argparse
import sys

from jaxclip_fs.commands import flags

NAME = "convert"
HELP = "convert a CLIP checkpoint to saved Flax params (orbax)"
DESCRIPTION = """\
Read a CLIP checkpoint (any --weights form that `embed` accepts), check it against
the backbone's parameter tree, and save it as a directory that loads without torch:

  DIR/variables/          orbax checkpoint of the Flax variables (params, batch_stats)
  DIR/jaxclip_fs_clip.json config and provenance (the source's weights id is kept)
  DIR/vocab.json ...      the source's tokenizer files, if it had any

Use DIR as --weights afterwards. DIR must not exist (or be empty).

example:
  jaxclip-fs convert --backbone RN50 --weights ~/.cache/clip/RN50.pt --out rn50_flax"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True,
                   help="variant name (as for embed), or 'auto' to take the checkpoint's")
    p.add_argument("--weights", required=True, help=flags.WEIGHTS_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to create")


def run(args: argparse.Namespace) -> int:
    """Loads ``--backbone``/``--weights`` (checked like every load) and saves it to ``--out``."""
    from jaxclip_fs.convert.load import load_clip
    from jaxclip_fs.convert.saved import save_converted

    loaded = load_clip(args.backbone, args.weights)
    if loaded.is_random:
        print(f"note: saving random weights ({loaded.weights_id}); the manifest records it",
              file=sys.stderr)
    save_converted(args.out, loaded.config, loaded.params, loaded.weights_id, loaded.is_random,
                   source=args.weights, tokenizer_dir=loaded.source_dir)
    print(f"wrote {args.out}: {loaded.config.name}, weights {loaded.weights_id}")
    return 0
