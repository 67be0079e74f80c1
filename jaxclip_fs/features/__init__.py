"""Feature files, batched CLIP encoding, augmented views and the feature cache.

``featfile`` (the .npz feature-file contract) imports neither jax nor clip/,
so feature-level tools can use it without loading a model.

Extraction, top down: ``extract`` (:func:`~jaxclip_fs.features.extract.extract_features`,
the train pool, the feature file; ``command`` is the CLI glue) uses
``image_encoder`` (views, taps, :func:`~jaxclip_fs.features.image_encoder.encode_split`)
and ``text_classifier``; both run on ``encode`` (fixed-shape jit batches, the
chunk-cached encoding engine), which uses ``pipeline`` (threaded prefetching,
row batches) and ``cache`` (content-addressed checksummed chunks). ``taps``
gives tap shapes and sizes; ``augment`` the augmented views; ``synthetic``
synthetic feature sets.
"""
