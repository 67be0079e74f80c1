"""The ``paired`` input: features of the IMO-adapted and the original encoder, side by side.

TA++ / TX++ (``inputs="paired"``) read every row as ``[adapted | original]``
(width 2E): the adapted encoder's features for the cache affinities, the
original's for the zero-shot logits. :class:`PairedFeatures` extracts both
from the same few-shot pool with the same augmented views (Tip-Adapter's
scale 0.5-1), each through the feature cache under its own weights id, and
concatenates them. The pairs are not a feature *file* (whose rows have the
text width), so they are never written as one; the cache makes a rerun cheap.
"""

from __future__ import annotations

import dataclasses
import os
import numpy as np

from jaxclip_fs.features import augment, featfile
from jaxclip_fs.pipelines import ood as ood_lib
from jaxclip_fs.pipelines import sizes as sizes_lib
from jaxclip_fs.pipelines.features import Request
from jaxclip_fs.pipelines.session import ClipSession


def pair(adapted: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``[adapted | original]`` along the feature axis."""
    return np.concatenate([adapted, original], axis=-1)


class PairedFeatures:
    """Provider of paired feature sets (``provider(dataset, request)``, ``provider.ood``)."""

    def __init__(self, session: ClipSession):
        self.session = session

    def _extract(self, clip, dataset: str, request: Request, prompts: str | None):
        from jaxclip_fs.features.extract import extract_features

        s = self.session
        x = s.extraction
        return extract_features(
            s.dataset(dataset), clip, s.tokenizer(), shots=request.max_shots,
            seeds=request.seeds, views=s.train_views, aug_scale=augment.TIP_ADAPTER_SCALE,
            aug_seed=x.aug_seed, dtype=x.dtype, batch_size=x.batch_size, draws=request.draws(),
            prompts=prompts, **s.encoding_options()).features

    def sizes(self, dataset: str) -> sizes_lib.InputSizes:
        """The sizes of the paired features of ``dataset`` (width 2E; no image is read)."""
        split = sizes_lib.split_sizes(self.session, dataset)
        width = sizes_lib.embed_dim(self.session)
        return sizes_lib.feature_sizes(split, width, self.session.train_views, 2 * width)

    def test_size(self, name: str, parent: str) -> int:
        del parent
        return sizes_lib.split_sizes(self.session, name).test

    def __call__(self, dataset: str, request: Request) -> featfile.FeatureSet:
        s = self.session
        original = self._extract(s.clip(), dataset, request, request.prompts)
        adapted_clip = s.adapted_clip()
        adapted = self._extract(adapted_clip, dataset, request, None)
        meta = {**original.meta, "imo_adapters": os.fspath(s.config.model.imo_adapters),
                "imo_weights_id": adapted_clip.weights_id,
                "paired_layout": "[adapted | original] along the feature axis"}
        return dataclasses.replace(original, train=pair(adapted.train, original.train),
                                   val=pair(adapted.val, original.val),
                                   test=pair(adapted.test, original.test), meta=meta)

    def ood(self, name: str, parent: featfile.FeatureSet) -> ood_lib.OODSet:
        """The paired test features of OOD set ``name``."""
        s = self.session
        common = dict(dtype=s.extraction.dtype, batch_size=s.extraction.batch_size,
                      **s.encoding_options())
        original = ood_lib.extract_ood(s.dataset(name), s.clip(), parent.num_classes, **common)
        adapted = ood_lib.extract_ood(s.dataset(name), s.adapted_clip(), parent.num_classes,
                                      **common)
        return dataclasses.replace(original, test=pair(adapted.test, original.test),
                                   meta={**original.meta, "paired_layout": "[adapted | original]"})
