"""jaxclip-fs: few-shot adaptation of CLIP in JAX/Flax.

Layout (imports point down):
  clip/      Flax CLIP towers, variant table, tokenizer, preprocessing
  convert/   checkpoint readers -> Flax param trees
  data/      dataset registry, sources, few-shot sampler, templates
  features/  batched encoding, augmented views, feature files, cache
  methods/   pure few-shot methods (init / logits / loss) and their registry
  train/     generic optax trainer (lax.scan over steps, vmap over seeds)
  sweep/     seeds x shots x datasets grids, sharding, selection on validation
  io/        atomic writes, orbax checkpoints, result records
  report/    tables and plots from result files (no jax)
  cli.py     the `jaxclip-fs` entry point
"""

__version__ = "0.1.0"
