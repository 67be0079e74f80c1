"""The ``features`` input: CLIP feature sets, extracted here or read from feature files.

A provider is called ``provider(dataset, request) -> FeatureSet`` (the
features covering a :class:`Request`: the few-shot sets of its seeds and shot
counts under its samplers, and the prompt classifier it asks for) and
``provider.ood(name, parent) -> OODSet`` (an out-of-distribution test set
in the parent's classes). Providers:

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
from jaxclip_fs.io.paths import inside, printable, safe_name
from jaxclip_fs.features.text_classifier import prompts_digest
from jaxclip_fs.pipelines import ood as ood_lib
from jaxclip_fs.pipelines import sizes as sizes_lib
from jaxclip_fs.pipelines.session import ClipSession, data_digest


@dataclasses.dataclass(frozen=True)
class Request:
    """What a run needs of a dataset's features.

    Attributes:
      shots, seeds: the grid's shot counts and seeds.
      samplers: the few-shot samplers its cells use (``nested``, ``official``,
        ``official_chained``).
      prompts: a prompt file whose classifier (``text_prompts``) is needed, or None.
    """

    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    samplers: tuple[str, ...] = ("nested",)
    prompts: str | None = None

    @property
    def max_shots(self) -> int:
        return max(self.shots)

    def draws(self) -> list[tuple[str, int, int]]:
        """``(sampler, seed, shots)`` of every official (not nested) draw."""
        return [(sampler, seed, k) for sampler in self.samplers if sampler != "nested"
                for seed in self.seeds for k in self.shots]


def covers(fs: featfile.FeatureSet, request: Request) -> bool:
    """Does the feature set hold every few-shot set and classifier ``request`` needs?"""
    nested = all(s in fs.fewshot and fs.fewshot[s].shape[1] >= request.max_shots
                 for s in request.seeds)
    prompts = request.prompts is None or (
        fs.text_prompts is not None
        and fs.meta.get("prompts", {}).get("sha256") == prompts_digest(request.prompts))
    return nested and prompts and all(key in fs.draws for key in request.draws())


def check_sets(fs: featfile.FeatureSet, request: Request) -> None:
    """Every few-shot set ``request`` needs is in ``fs``.

    Raises:
      DataError: a missing seed or draw, or too few shots (one line, naming it).
    """
    for seed in request.seeds:
        featfile.support_index(fs, request.max_shots, seed)
    for sampler, seed, shots in request.draws():
        featfile.support_index(fs, shots, seed, sampler)


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
        return inside(self.features_dir, safe_name(name) + suffix)

    def sizes(self, dataset: str) -> sizes_lib.InputSizes:
        """The sizes extraction will give ``dataset`` (its labels; no image is read)."""
        split = sizes_lib.split_sizes(self.session, dataset)
        return sizes_lib.feature_sizes(split, sizes_lib.embed_dim(self.session),
                                       self.session.train_views)

    def test_size(self, name: str, parent: str) -> int:
        """Test images of OOD set ``name`` (scored with ``parent`` 's fits; no image is read)."""
        del parent
        return sizes_lib.split_sizes(self.session, name).test

    def __call__(self, dataset: str, request: Request) -> featfile.FeatureSet:
        path = self._path(dataset, ".npz")
        if path and os.path.exists(path):
            fs = featfile.load(path)
            if covers(fs, request):
                self._identify(dataset, fs.meta, path)
                return fs
        from jaxclip_fs.features.extract import extract_features, save_extraction

        s = self.session
        x = s.extraction
        extraction = extract_features(
            s.dataset(dataset), s.clip(), s.tokenizer(), shots=request.max_shots,
            seeds=request.seeds, views=s.train_views, aug_scale=tuple(x.aug_scale),
            aug_seed=x.aug_seed, dtype=x.dtype, batch_size=x.batch_size,
            draws=request.draws(), prompts=request.prompts, **s.encoding_options())
        if path and self.writer:
            s.before_write()
            save_extraction(path, extraction)
        return extraction.features

    def _identify(self, dataset: str, meta, path: str) -> None:
        """The identities of the inputs a kept feature file was extracted from (its meta):
        they are this run's, or the run directory refuses them."""
        found = {"weights": meta.get("weights_id"), "tokenizer": meta.get("tokenizer_id"),
                 f"dataset:{dataset}": meta.get("dataset_identity") and
                 data_digest(str(meta["dataset_identity"]))}
        for key, digest in found.items():
            if digest:
                self.session.identify(key, digest, f"{path} (extracted)")

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
            s.before_write()
            ood_lib.save_ood(path, found)
        return found


class GivenFeatures:
    """Feature sets given in memory, by dataset name (``provider(dataset, request)``)."""

    def __init__(self, sets: Mapping[str, featfile.FeatureSet]):
        self.files: dict[str, featfile.FeatureSet] = dict(sets)
        self.sources: dict[str, str] = {name: "given in memory" for name in self.files}
        for key in ("backbone", "weights"):
            values = {str(fs.meta.get(key, "unknown")) for fs in self.files.values()}
            if len(values) > 1:
                raise ConfigError(
                    f"data.features: the files disagree on {key} ({', '.join(sorted(values))})")

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.files)

    def provenance(self) -> dict:
        """Backbone and weights the features were made with (they shape every number)."""
        first = next(iter(self.files.values()))
        return {"backbone": first.meta.get("backbone", "unknown"),
                "weights": first.meta.get("weights", "unknown")}

    def identities(self) -> dict[str, tuple[str, str]]:
        """``features:<dataset> -> (content digest, source)``: a run directory's records hold
        to the features they were computed from (:func:`~jaxclip_fs.features.featfile.digest`)."""
        return {f"features:{name}": (featfile.digest(fs), self.sources[name])
                for name, fs in self.files.items()}

    def __call__(self, dataset: str, request: Request) -> featfile.FeatureSet:
        return self._serving(dataset, request)  # its few-shot sets: checked by the run

    def _serving(self, dataset: str, request: Request) -> featfile.FeatureSet:
        fs = self.files[dataset]
        if request.prompts is not None and fs.text_prompts is None:
            raise ConfigError(f"protocol.prompts: the features of {dataset} hold no prompt "
                              "classifier (extract them with `jaxclip-fs extract --prompts`)")
        return fs

    def sizes(self, dataset: str) -> sizes_lib.InputSizes:
        return sizes_lib.sizes_of(self.files[dataset])

    def check(self, dataset: str, request: Request) -> None:
        """A missing seed, draw or prompt classifier, or too few shots, fails here, before any
        work (one-line error)."""
        check_sets(self._serving(dataset, request), request)

    def test_size(self, name: str, parent: str) -> int:
        """Test images of OOD set ``name`` (its features, in memory like the parent's)."""
        return int(self.ood(name, self.files[parent]).test.shape[0])

    def ood(self, name: str, parent: featfile.FeatureSet) -> ood_lib.OODSet:
        raise ConfigError(
            f"data.ood {name} needs data.datasets (the OOD test sets are extracted here)")


class FeatureFiles(GivenFeatures):
    """Feature sets from feature files, keyed by the dataset named in their meta.

    Args:
      paths: the files (validated on load).
      names: dataset names to use instead of the files' meta (per file).
    """

    def __init__(self, paths: Sequence[str], names: Sequence[str | None] = ()):
        sets: dict[str, featfile.FeatureSet] = {}
        sources: dict[str, str] = {}
        names = list(names) + [None] * (len(paths) - len(names))
        for path, name in zip(paths, names):
            fs = featfile.load(path)
            name = printable(name or str(fs.meta.get("dataset")
                                         or os.path.splitext(os.path.basename(path))[0]))
            if name in sets:
                raise ConfigError(f"data.features: two files for dataset {name!r} ({path})")
            sets[name] = dataclasses.replace(
                fs, meta={**fs.meta, "dataset": name, "feature_file": os.fspath(path)})
            sources[name] = os.path.abspath(path)
        super().__init__(sets)
        self.sources = sources
