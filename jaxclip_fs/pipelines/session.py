"""What one experiment loads from images: the CLIP, its tokenizer, datasets, text classifiers.

Every input provider (:mod:`~jaxclip_fs.pipelines.features`,
:mod:`~jaxclip_fs.pipelines.paired`, :mod:`~jaxclip_fs.pipelines.images`)
draws on one :class:`ClipSession`, which loads each thing once and only on
first need -- so a resumed sweep whose features exist never loads the CLIP.
"""

from __future__ import annotations

import sys

import numpy as np

from jaxclip_fs.experiment.config import ExperimentConfig
from jaxclip_fs.io.console import random_weights_banner


def data_digest(identity: str) -> str:
    """A dataset's identity (its sha256, :mod:`~jaxclip_fs.data.dataset`) as a run directory
    records it: ``sha256:<16 hex>``."""
    return f"sha256:{identity[:16]}"


class ClipSession:
    """The CLIP and the datasets of an experiment config, loaded lazily.

    Args:
      config: the experiment (its ``model``, ``data``, ``extraction`` and
        ``execution`` sections are read).
      progress: progress bars on stderr.
      banner: print the random-weights banner when the CLIP is random.
      tables: dataset sizes may come from the benchmark table when the data is
        not here (dry runs: :mod:`~jaxclip_fs.pipelines.sizes`).
    """

    def __init__(self, config: ExperimentConfig, *, progress: bool = True, banner: bool = True,
                 tables: bool = False):
        self.config = config
        self.progress = progress
        self.banner = banner
        self.tables = tables
        self._clip = None
        self._adapted = None
        self._tokenizer = None
        self._datasets: dict = {}
        self._texts: dict = {}
        self.identities: dict[str, tuple[str, str]] = {}
        self._listener = None

    # --- what the session loaded, as the run directory knows it --------------------------

    def listen(self, listener) -> None:
        """Reports to ``listener`` (``identify(key, digest, source)``, ``commit()``; None:
        nobody) the identity of everything the session loads -- ``weights``, ``tokenizer``,
        ``imo_adapters``, ``dataset:<name>`` -- those loaded so far first; and, before the
        session's providers write into the run directory, asks it to ``commit()``."""
        self._listener = listener
        if listener is not None:
            for key, (digest, source) in self.identities.items():
                listener.identify(key, digest, source)

    def identify(self, key: str, digest: str, source: str) -> None:
        """Notes an input's identity (and tells the listener, which may refuse it)."""
        self.identities[key] = (str(digest), str(source))
        if self._listener is not None:
            self._listener.identify(key, str(digest), str(source))

    def before_write(self) -> None:
        """Called before a provider writes into the run directory."""
        if self._listener is not None:
            self._listener.commit()

    @property
    def extraction(self):
        return self.config.extraction

    @property
    def execution(self):
        return self.config.execution

    @property
    def train_views(self) -> int:
        """Views per train image in a feature file: the plain view 0 and ``extraction.views``
        augmented ones."""
        return self.extraction.views + 1

    def clip(self):
        """The :class:`~jaxclip_fs.convert.load.LoadedCLIP` of ``model.backbone`` / ``weights``,
        computing in ``extraction.dtype`` (parameters float32)."""
        if self._clip is None:
            from jaxclip_fs.convert import load_clip
            from jaxclip_fs.features.encode import compute_dtype

            model = self.config.model
            clip = load_clip(model.backbone, model.weights,
                             dtype=compute_dtype(self.extraction.dtype))
            self.identify("weights", clip.weights_id, model.weights)
            self._clip = clip
            if clip.is_random and self.banner:
                print(random_weights_banner(clip.weights_id, 'features'), file=sys.stderr)
        return self._clip

    def adapted_clip(self):
        """The CLIP with ``model.imo_adapters`` in its blocks (TA++ / TX++)."""
        if self._adapted is None:
            from jaxclip_fs.errors import ConfigError
            from jaxclip_fs.train.imo import load_imo_adapters

            if not self.config.model.imo_adapters:
                raise ConfigError("paired features need IMO adapters: train them with "
                                  "`jaxclip-fs train-imo` and pass model.imo_adapters DIR")
            adapted = load_imo_adapters(self.config.model.imo_adapters, self.clip())
            self.identify("imo_adapters", adapted.weights_id, self.config.model.imo_adapters)
            self._adapted = adapted
        return self._adapted

    def tokenizer(self):
        if self._tokenizer is None:
            from jaxclip_fs.clip.tokenizer import load_tokenizer

            clip = self.clip()
            tokenizer = load_tokenizer(clip.source_dir, required=not clip.is_random)
            self.identify("tokenizer", tokenizer.identity, tokenizer.name)
            self._tokenizer = tokenizer
        return self._tokenizer

    def dataset(self, name: str):
        """The registry dataset ``name`` (loaded once)."""
        if name not in self._datasets:
            from jaxclip_fs.data import get_dataset

            dataset = get_dataset(name, self.config.data.data_root,
                                  source=self.config.data.source)
            self.identify(f"dataset:{name}", data_digest(dataset.identity), dataset.source)
            self._datasets[name] = dataset
        return self._datasets[name]

    def text(self, name: str, prompts: str | None = None) -> np.ndarray:
        """The zero-shot classifier W [C, E] of dataset ``name``: its templates, or with a
        prompt file the templates and its sentences pooled (cached)."""
        key = (name, prompts)
        if key not in self._texts:
            from jaxclip_fs.features.text_classifier import prompt_classifier, text_classifier

            dataset = self.dataset(name)
            common = dict(dtype=self.extraction.dtype, batch_size=self.extraction.batch_size,
                          cache_dir=self.execution.cache_dir, use_cache=self.execution.use_cache,
                          progress=self.progress)
            args = (self.clip(), self.tokenizer(), dataset.classnames, dataset.templates)
            self._texts[key] = (text_classifier(*args, **common) if prompts is None else
                                prompt_classifier(*args, prompts, **common))
        return self._texts[key]

    def encoding_options(self) -> dict:
        """Keyword arguments of the features package's encoders (cache, workers, progress)."""
        return dict(cache_dir=self.execution.cache_dir, use_cache=self.execution.use_cache,
                    workers=self.execution.workers, progress=self.progress)
