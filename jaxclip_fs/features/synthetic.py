"""Synthetic CLIP-like feature tasks, for tests, benchmarks and the demo's tests.

A generative model with the structure few-shot CLIP methods exploit:

* **image features** -- class clusters on the sphere inside a narrow cone,
  ``x = a g + μ_c + σ ε`` with ``g`` a direction shared by all images (CLIP's
  image embeddings all lie close together: the intra-modal overlap),
  ``μ_c`` a random unit vector and ``ε ~ N(0, I/D)`` (so ``‖ε‖ ≈ 1``), stored
  *raw*: multiplied by a random per-image norm, as encoder outputs are
  (methods must normalise as their papers do);
* **text prototypes** -- in their own cone (the modality gap), the class
  centres displaced along a few *shared confusion directions* ``u_j`` plus
  independent noise, ``t_c = norm(b h + μ_c + κ Σ_j z_cj u_j + τ η_c)``:
  classes pulled along the same directions become confusable, so zero-shot
  CLIP is imperfect and image support helps;
* **views** -- view 0 is the image, views 1.. are noisy copies
  (``x + ρ ε_v``, re-scaled), standing in for augmented crops.

``make_task`` returns a validated :class:`~jaxclip_fs.features.featfile.FeatureSet`
(so tests also exercise the feature-file path). Everything derives from
``numpy.random.SeedSequence([seed, ...])``: same seed, same features.
"""

from __future__ import annotations

import numpy as np

from jaxclip_fs.features.featfile import DEFAULT_LOGIT_SCALE, FeatureSet, validate


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_task(
    seed: int,
    num_classes: int = 10,
    dim: int = 32,
    shots: int = 16,
    views: int = 5,
    val_per_class: int = 8,
    test_per_class: int = 20,
    *,
    train_per_class: int | None = None,
    spread: float = 2.0,
    confusion: float = 0.7,
    num_confusion: int = 3,
    text_noise: float = 0.5,
    view_noise: float = 0.5,
    image_cone: float = 2.0,
    text_cone: float = 2.0,
    dataset: str = "synthetic",
) -> FeatureSet:
    """A synthetic few-shot feature task.

    Args:
      seed: everything derives from it.
      num_classes, dim: C and D.
      shots: images per class in the training pool when ``train_per_class``
        is None (the sampler then takes up to this many shots).
      views: V, view 0 un-augmented.
      val_per_class, test_per_class: sizes of the validation and test splits.
      train_per_class: pool size per class (default ``shots``).
      spread: σ, within-class spread relative to the unit class centres
        (larger = harder for every method).
      confusion: κ, length of the shared displacement of the text prototypes
        (larger = worse zero-shot CLIP).
      num_confusion: number of shared confusion directions.
      text_noise: τ, independent text noise.
      view_noise: ρ, augmentation noise of views 1..V-1.
      image_cone, text_cone: a and b, weight of the direction shared by all
        images / all texts (larger = images more alike / wider modality gap).
      dataset: name stored in ``meta`` (a registry name picks that dataset's grids).

    Returns:
      A validated FeatureSet with raw (un-normalised) image features, the pool
      in shuffled order, and ``meta`` describing the generator.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x5E7])))
    pool = shots if train_per_class is None else train_per_class
    centres = _unit_rows(rng.standard_normal((num_classes, dim)))
    image_axis, text_axis = _unit_rows(rng.standard_normal((2, dim)))
    directions = _unit_rows(rng.standard_normal((num_confusion, dim)))
    weights = rng.standard_normal((num_classes, num_confusion)) / np.sqrt(num_confusion)
    displacement = weights @ directions
    noise = rng.standard_normal((num_classes, dim)) / np.sqrt(dim)
    text = _unit_rows(text_cone * text_axis + centres + confusion * displacement
                      + text_noise * noise)

    def images(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        clean = (image_cone * image_axis + centres[labels]
                 + spread * rng.standard_normal((labels.size, dim)) / np.sqrt(dim))
        return clean, labels

    def raw(x: np.ndarray) -> np.ndarray:
        return (x * rng.uniform(5.0, 15.0, size=(x.shape[0], 1))).astype(np.float32)

    train_clean, train_labels = images(pool)
    train = np.stack([raw(train_clean)] + [
        raw(train_clean + view_noise * rng.standard_normal(train_clean.shape) / np.sqrt(dim))
        for _ in range(views - 1)
    ])
    val, val_labels = images(val_per_class)
    test, test_labels = images(test_per_class)
    meta = {
        "dataset": dataset, "backbone": "synthetic", "weights": "synthetic",
        "split_policy": "synthetic",
        "generator": {"seed": int(seed), "num_classes": num_classes, "dim": dim,
                      "pool_per_class": pool,
                      "views": views, "spread": spread, "confusion": confusion,
                      "num_confusion": num_confusion, "text_noise": text_noise,
                      "view_noise": view_noise,
                      "image_cone": image_cone, "text_cone": text_cone},
    }
    fs = FeatureSet(
        text=text.astype(np.float32), train=train, train_labels=train_labels.astype(np.int32),
        val=raw(val), val_labels=val_labels.astype(np.int32), test=raw(test),
        test_labels=test_labels.astype(np.int32),
        classnames=tuple(f"class_{c}" for c in range(num_classes)),
        logit_scale=DEFAULT_LOGIT_SCALE, meta=meta,
    )
    return validate(fs, source="synthetic")
