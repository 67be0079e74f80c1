"""Feature files, batched CLIP encoding, augmented views and the feature cache.

``featfile`` (the .npz contract of DESIGN.md) imports neither jax nor clip/,
so feature-level tools can use it without loading a model.
"""
