"""NumPy building blocks of the tests' independent restatements of the methods."""

import numpy as np


def unit(x):
    """x / ‖x‖ along the last axis."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def softmax(z):
    """exp(z - max) / Σ exp(z - max) along the last axis."""
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
