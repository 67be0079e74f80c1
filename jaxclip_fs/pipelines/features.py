"""The ``features`` input: CLIP feature sets, extracted here or read from feature files.

A provider is called ``provider(dataset, shots, seeds) -> FeatureSet`` (the
features covering the few-shot sets of ``seeds`` up to ``shots``) and
``provider.ood(name, parent) -> OODSet`` (an out-of-distribution test set
in the parent's classes). Two providers:

* :class:`ExtractedFeatures` -- encodes the dataset with the session's CLIP
  (:func:`~jaxclip_fs.features.extract.extract_features`, through the
  content-addressed feature cache), once per directory: with a
  ``features_dir`` the sets are kept as ``<dir>/<dataset>.npz`` and reused;
* :class:`FeatureFiles` -- feature files made elsewhere (bring your own),
  keyed by the dataset named in their meta; :class:`GivenFeatures` -- feature
  sets already in memory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import featfile
from jaxclip_fs.io.atomic import safe_name
from jaxclip_fs.pipelines import ood as ood_lib
from jaxclip_fs.pipelines import sizes as sizes_lib
from jaxclip_fs.pipelines.session import ClipSession


def covers(fs: featfile.FeatureSet, shots: int, seeds: Sequence[int]) -> bool:
    """Does the feature set hold the ``shots``-shot sets of every seed in ``seeds``?"""
    return all(s in fs.fewshot and fs.fewshot[s].shape[1] >= shots for s in seeds)


class ExtractedFeatures:
    """Feature sets encoded from a dataset's images with the session's CLIP.

    Args:
      session: the experiment's :class:`~jaxclip_fs.pipelines.session.ClipSession`.
      features_dir: where to keep ``<dataset>.npz`` / ``<ood>.ood.npz`` (None: nowhere).
      writer: this process writes files (multi-host: process 0 only).
    """

    def __init__(self, session: ClipSession, features_dir: str | None = None,
                 writer: bool = True):
        self.session = session
        self.features_dir = features_dir
        self.writer = writer

    def _path(self, name: str, suffix: str) -> str | None:
        if self.features_dir is None:
            return None
        return os.path.join(self.features_dir, safe_name(name) + suffix)

    def sizes(self, dataset: str) -> sizes_lib.InputSizes:
        """The sizes extraction will give ``dataset`` (its labels; no image is read)."""
        split = sizes_lib.split_sizes(self.session, dataset)
        return sizes_lib.feature_sizes(split, sizes_lib.embed_dim(self.session),
                                       self.session.extraction.views)

    def test_size(self, name: str, parent: str) -> int:
        """Test images of OOD set ``name`` (scored with ``parent`` 's fits; no image is read)."""
        del parent
        return sizes_lib.split_sizes(self.session, name).test

    def __call__(self, dataset: str, shots: int, seeds: Sequence[int]) -> featfile.FeatureSet:
        path = self._path(dataset, ".npz")
        if path and os.path.exists(path):
            fs = featfile.load(path)
            if covers(fs, shots, seeds):
                return fs
        from jaxclip_fs.features.extract import extract_features, save_extraction

        s = self.session
        x = s.extraction
        extraction = extract_features(
            s.dataset(dataset), s.clip(), s.tokenizer(), shots=shots, seeds=tuple(seeds),
            views=x.views, aug_scale=tuple(x.aug_scale), aug_seed=x.aug_seed, dtype=x.dtype,
            batch_size=x.batch_size, **s.encoding_options())
        if path and self.writer:
            save_extraction(path, extraction)
        return extraction.features

    def ood(self, name: str, parent: featfile.FeatureSet) -> ood_lib.OODSet:
        """The test features of OOD set ``name`` (kept as ``<name>.ood.npz``)."""
        path = self._path(name, ".ood.npz")
        if path and os.path.exists(path):
            return ood_lib.load_ood(path)
        s = self.session
        found = ood_lib.extract_ood(s.dataset(name), s.clip(), parent.num_classes,
                                    dtype=s.extraction.dtype, batch_size=s.extraction.batch_size,
                                    **s.encoding_options())
        if path and self.writer:
            ood_lib.save_ood(path, found)
        return found


class GivenFeatures:
    """Feature sets given in memory, by dataset name (``provider(dataset, shots, seeds)``)."""

    def __init__(self, sets: Mapping[str, featfile.FeatureSet]):
        self.files: dict[str, featfile.FeatureSet] = dict(sets)
        for key in ("backbone", "weights"):
            values = {str(fs.meta.get(key, "unknown")) for fs in self.files.values()}
            if len(values) > 1:
                raise ConfigError(
                    f"--features: the files disagree on {key} ({', '.join(sorted(values))})")

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.files)

    def provenance(self) -> dict:
        """Backbone and weights the features were made with (they shape every number)."""
        first = next(iter(self.files.values()))
        return {"backbone": first.meta.get("backbone", "unknown"),
                "weights": first.meta.get("weights", "unknown")}

    def __call__(self, dataset: str, shots: int, seeds: Sequence[int]) -> featfile.FeatureSet:
        del shots, seeds  # checked when the tasks are built (one-line DataError)
        return self.files[dataset]

    def sizes(self, dataset: str) -> sizes_lib.InputSizes:
        return sizes_lib.sizes_of(self.files[dataset])

    def check(self, dataset: str, shots: int, seeds: Sequence[int]) -> None:
        """A missing seed or too few shots fails here, before any work (one-line DataError)."""
        for seed in seeds:
            featfile.support_index(self.files[dataset], shots, seed)

    def test_size(self, name: str, parent: str) -> int:
        """Test images of OOD set ``name`` (its features, in memory like the parent's)."""
        return int(self.ood(name, self.files[parent]).test.shape[0])

    def ood(self, name: str, parent: featfile.FeatureSet) -> ood_lib.OODSet:
        raise ConfigError(f"--ood {name} needs --dataset (the OOD test sets are extracted here)")


class FeatureFiles(GivenFeatures):
    """Feature sets from feature files, keyed by the dataset named in their meta.

    Args:
      paths: the files (validated on load).
      names: dataset names to use instead of the files' meta (per file).
    """

    def __init__(self, paths: Sequence[str], names: Sequence[str | None] = ()):
        sets: dict[str, featfile.FeatureSet] = {}
        names = list(names) + [None] * (len(paths) - len(names))
        for path, name in zip(paths, names):
            fs = featfile.load(path)
            name = name or str(fs.meta.get("dataset")
                               or os.path.splitext(os.path.basename(path))[0])
            if name in sets:
                raise ConfigError(f"--features: two files for dataset '{name}' ({path})")
            sets[name] = dataclasses.replace(
                fs, meta={**fs.meta, "dataset": name, "feature_file": os.fspath(path)})
        super().__init__(sets)
