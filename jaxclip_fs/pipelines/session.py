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
            self._clip = load_clip(model.backbone, model.weights,
                                   dtype=compute_dtype(self.extraction.dtype))
            if self._clip.is_random and self.banner:
                print(random_weights_banner(self._clip.weights_id, 'features'), file=sys.stderr)
        return self._clip

    def adapted_clip(self):
        """The CLIP with ``model.imo_adapters`` in its blocks (TA++ / TX++)."""
        if self._adapted is None:
            from jaxclip_fs.errors import ConfigError
            from jaxclip_fs.train.imo import load_imo_adapters

            if not self.config.model.imo_adapters:
                raise ConfigError("paired features need IMO adapters: train them with "
                                  "`jaxclip-fs train-imo` and pass --imo-adapters DIR")
            self._adapted = load_imo_adapters(self.config.model.imo_adapters, self.clip())
        return self._adapted

    def tokenizer(self):
        if self._tokenizer is None:
            from jaxclip_fs.clip.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.clip().source_dir)
        return self._tokenizer

    def dataset(self, name: str):
        """The registry dataset ``name`` (loaded once)."""
        if name not in self._datasets:
            from jaxclip_fs.data import get_dataset

            self._datasets[name] = get_dataset(name, self.config.data.data_root,
                                               source=self.config.data.source)
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
