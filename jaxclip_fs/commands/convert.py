"""``jaxclip-fs convert``: any supported checkpoint -> a converted directory (:mod:`.saved`)."""

from __future__ import annotations

import argparse
import sys

from jaxclip_fs.convert.load import load_clip
from jaxclip_fs.convert.saved import save_converted


def convert_command(args: argparse.Namespace) -> int:
    """Loads ``--backbone``/``--weights`` (checked like every load) and saves it to ``--out``."""
    loaded = load_clip(args.backbone, args.weights)
    if loaded.is_random:
        print(f"note: saving random weights ({loaded.weights_id}); the manifest records it",
              file=sys.stderr)
    save_converted(args.out, loaded.config, loaded.params, loaded.weights_id, loaded.is_random,
                   source=args.weights, tokenizer_dir=loaded.source_dir)
    print(f"wrote {args.out}: {loaded.config.name}, weights {loaded.weights_id}")
    return 0
