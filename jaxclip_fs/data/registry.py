"""The dataset registry: ``get_dataset(name, data_root, **options)``.

Names (see :func:`list_datasets`):

* the 11 benchmark sets :data:`BENCHMARK_DATASETS` and the out-of-distribution
  test sets :data:`OOD_DATASETS`, from a CoOp-layout data root
  (:mod:`~jaxclip_fs.data.coop`; ``data_root`` or ``$JAXCLIP_FS_DATA``), or
  with ``source="tfds"`` from a prepared TFDS data dir for the 9 sets TFDS has
  (:mod:`~jaxclip_fs.data.tfds_source`; ``data_root`` or ``$TFDS_DATA_DIR``;
  option ``imagenet_classnames=PATH`` for imagenet);
* offline: ``digits`` (scikit-learn) and ``fashion_mnist`` (idx files;
  option ``path=DIR``) -- :mod:`~jaxclip_fs.data.builtin`; they ignore
  ``data_root``;
* ``folder:PATH`` -- class-per-subfolder images (:mod:`~jaxclip_fs.data.folder`).

Every problem (unknown name or option, missing directory or split file, bad
file) is a one-line :class:`~jaxclip_fs.errors.DataError`.
"""

from __future__ import annotations

from typing import Any

from jaxclip_fs.data import builtin, coop, folder
from jaxclip_fs.data.dataset import Dataset
from jaxclip_fs.errors import DataError

BENCHMARK_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)
OOD_DATASETS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
OFFLINE_DATASETS = ("digits", "fashion_mnist")
SOURCES = ("coop", "tfds")


def list_datasets() -> tuple[str, ...]:
    """Every registry name; ``folder:PATH`` stands for any image folder."""
    return (*BENCHMARK_DATASETS, *OOD_DATASETS, *OFFLINE_DATASETS, folder.PREFIX + "PATH")


def _check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in options:
        if key not in allowed:
            raise DataError(f"dataset '{name}' takes no option '{key}' (options: "
                            f"{', '.join(allowed) or 'none'})")


def get_dataset(name: str, data_root: str | None = None, **options: Any) -> Dataset:
    """Builds the dataset ``name``.

    Args:
      name: a name from :func:`list_datasets` (``folder:PATH`` with a real path).
      data_root: CoOp-layout root (or, with ``source="tfds"``, the TFDS data
        dir); default ``$JAXCLIP_FS_DATA`` (``$TFDS_DATA_DIR`` for TFDS).
      **options: ``source`` ("coop", the default, accepted by every dataset; or
        "tfds") and
        ``imagenet_classnames`` for the benchmark and OOD sets; ``path`` for
        fashion_mnist.

    Raises:
      DataError: unknown name or option, or any problem with the data (one line).
    """
    if options.get("source") == "coop":  # the default source: valid for every dataset
        options = {k: v for k, v in options.items() if k != "source"}
    if name.startswith(folder.PREFIX):
        _check_options(name, options, ())
        return folder.load_folder(name[len(folder.PREFIX):])
    if name == "digits":
        _check_options(name, options, ())
        return builtin.load_digits()
    if name == "fashion_mnist":
        _check_options(name, options, ("path",))
        return builtin.load_fashion_mnist(options.get("path"))
    if name in BENCHMARK_DATASETS or name in OOD_DATASETS:
        _check_options(name, options, ("source", "imagenet_classnames"))
        source = options.get("source", "coop")
        if source == "tfds":
            from jaxclip_fs.data.tfds_source import load_tfds

            return load_tfds(name, data_root, options.get("imagenet_classnames"))
        if source != "coop":
            raise DataError(f"option source must be one of {', '.join(SOURCES)}, got '{source}'")
        if "imagenet_classnames" in options:
            raise DataError("option imagenet_classnames applies to source='tfds' only (the CoOp "
                            "root has imagenet/classnames.txt)")
        return coop.load_coop(name, data_root)
    raise DataError(f"unknown dataset '{name}'; known: {', '.join(list_datasets())}")


def describe(dataset: Dataset) -> str:
    """A few lines about ``dataset``: source, classes, split sizes and origins, identity."""
    lines = [f"{dataset.name}: {dataset.num_classes} classes, source {dataset.source}",
             f"  classes: {', '.join(dataset.classnames[:8])}"
             f"{', ...' if dataset.num_classes > 8 else ''}",
             f"  templates: {len(dataset.templates)}, e.g. {dataset.templates[0]!r}"]
    for name, split in dataset.splits.items():
        lines.append(f"  {name}: {len(split)} images ({dataset.split_origin[name]})")
    if dataset.parent:
        lines.append(f"  out-of-distribution test set for '{dataset.parent}'")
    lines.append(f"  identity: {dataset.identity}")
    return "\n".join(lines)
