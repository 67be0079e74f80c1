"""Atomic file writes, orbax checkpoints and result records."""
