"""Checkpoints -> Flax CLIP variables.

``load_clip(backbone, weights)`` (:mod:`.load`) is the entry point; it reads
files (:mod:`.tensors`), maps names (:mod:`.layouts`), checks the tree against
``jax.eval_shape(init)`` (:mod:`.assemble`), finds published weights
(:mod:`.hub`) and reads / writes ``jaxclip-fs convert`` directories (:mod:`.saved`).
"""

from jaxclip_fs.convert.load import LoadedCLIP, load_clip

__all__ = ["LoadedCLIP", "load_clip"]
