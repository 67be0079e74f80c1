"""Datasets: registry, sources (CoOp root, TFDS, folders, built-ins), few-shot sampling."""
