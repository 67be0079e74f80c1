"""Datasets: registry, sources (CoOp root, TFDS, folders, built-ins), few-shot sampling.

Modules: ``registry`` (``get_dataset``, ``list_datasets``), ``dataset``
(``Dataset``, ``Split``), ``coop`` (CoOp-layout root; ``SETUP_HELP``),
``tfds_source``, ``builtin`` (digits, fashion_mnist), ``folder``
(``folder:PATH``), ``carve`` (deterministic val/test carving), ``images``
(decoding, ``ImageReader`` to skip corrupt images), ``templates``,
``fewshot`` (nested sampler, val policies).
"""

from jaxclip_fs.data.coop import SETUP_HELP
from jaxclip_fs.data.dataset import Dataset, Split
from jaxclip_fs.data.fewshot import VAL_POLICIES, fewshot_train, fewshot_val, nested_fewshot
from jaxclip_fs.data.images import ImageReader
from jaxclip_fs.data.registry import (
    BENCHMARK_DATASETS, OOD_DATASETS, get_dataset, list_datasets,
)

__all__ = [
    "BENCHMARK_DATASETS", "Dataset", "ImageReader", "OOD_DATASETS", "SETUP_HELP", "Split",
    "VAL_POLICIES", "fewshot_train", "fewshot_val", "get_dataset", "list_datasets",
    "nested_fewshot",
]
