"""``folder:PATH`` -- a directory with one subfolder of images per class.

Two layouts:

* ``PATH/<class>/...`` -- one pool, carved per class into train / val / test
  = 50 % / 20 % / 30 % (:data:`~jaxclip_fs.data.carve.TRAIN_VAL_TEST`; a
  class needs at least 3 images).
* ``PATH/train/<class>/...``, ``PATH/test/<class>/...`` and optionally
  ``PATH/val/<class>/...`` -- used as given; without ``val/``, 20 % of each
  train class is carved off as validation
  (:data:`~jaxclip_fs.data.carve.VAL_FROM_TRAIN`). The classes are train's;
  ``val/`` and ``test/`` may hold a subset of them.

Classes are the sorted class-folder names; labels follow that order; class
names are the folder names with underscores turned into spaces. Images are
found recursively inside each class folder; hidden entries and files that are
not images (by extension) are skipped. Symbolic links are followed but never
into an ancestor (a loop), and each real file counts once; one file in two
classes or splits is an error naming both paths. Ids are paths relative to ``PATH``.
The identity covers every file's id, size and modification time, so editing
an image changes it. The template ("a photo of a {}.") is ours.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from jaxclip_fs.data import carve
from jaxclip_fs.data.dataset import (
    Dataset, build_dataset, digest_bytes, file_splits, make_split,
)
from jaxclip_fs.data.images import FileImages, list_image_files
from jaxclip_fs.data.templates import TEMPLATES, clean_classname
from jaxclip_fs.errors import DataError

PREFIX = "folder:"


def list_class_folders(directory: str) -> list[str]:
    """Sorted names of the non-hidden subfolders of ``directory``."""
    return sorted(e.name for e in os.scandir(directory)
                  if e.is_dir() and not e.name.startswith("."))


def read_class_folders(
    directory: str, label_of: Mapping[str, int], id_prefix: str = "",
    seen: dict | None = None,
) -> tuple[list[str], np.ndarray]:
    """Lists the images of every class folder of ``directory``.

    Each real file counts once (:func:`~jaxclip_fs.data.images.list_image_files`:
    symbolic links into an ancestor are not followed); one file in two class
    folders (or, with a shared ``seen``, in two splits) is an error.

    Args:
      directory: holds one subfolder per class.
      label_of: folder name -> label; every subfolder must be in it.
      id_prefix: prepended to the ids (relative paths ``<folder>/<file>``).
      seen: ``resolved path -> path`` of files listed by earlier calls (updated).

    Returns:
      ids and int64 labels, in sorted folder then file order.

    Raises:
      DataError: a subfolder that is not a known class, a class folder
        without images, or a file reached from two classes (names the folder or both paths).
    """
    seen = {} if seen is None else seen
    ids: list[str] = []
    labels: list[int] = []
    for folder in list_class_folders(directory):
        if folder not in label_of:
            raise DataError(f"{os.path.join(directory, folder)}: folder is not one of the "
                            f"{len(label_of)} known classes")
        mine: dict = {}
        files = list_image_files(os.path.join(directory, folder), seen=mine)
        if not files:
            raise DataError(f"{os.path.join(directory, folder)}: class folder has no images")
        for key, path in mine.items():
            if key in seen:
                raise DataError(f"{path}: the same file as {seen[key]} (through a link), so "
                                "in two classes or splits at once")
        seen.update(mine)
        ids.extend(id_prefix + os.path.join(folder, f) for f in files)
        labels.extend([label_of[folder]] * len(files))
    return ids, np.asarray(labels, dtype=np.int64)


def _stat_digest(root: str, ids: Sequence[str]) -> str:
    lines = []
    for item_id in ids:
        st = os.stat(os.path.join(root, item_id))
        lines.append(f"{item_id}\t{st.st_size}\t{st.st_mtime_ns}\n")
    return digest_bytes("".join(lines).encode())


def load_folder(path: str) -> Dataset:
    """Reads ``folder:PATH`` (see module docstring).

    Raises:
      DataError: missing directory, no class folders, a class without images,
        too few images to carve, or ``val/``/``test/`` without ``train/``.
    """
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory (folder:PATH wants one subfolder of images "
                        f"per class, optionally under train/ val/ test/)")
    split_dirs = [s for s in ("train", "val", "test") if os.path.isdir(os.path.join(root, s))]
    if split_dirs and ("train" not in split_dirs or "test" not in split_dirs):
        raise DataError(f"{root}: has {'/, '.join(split_dirs)}/ but needs both train/ and "
                        f"test/ subfolders (val/ is optional)")
    class_root = os.path.join(root, "train") if split_dirs else root
    folders = list_class_folders(class_root)
    if not folders:
        raise DataError(f"{class_root}: no class subfolders (folder:PATH wants one subfolder of "
                        f"images per class)")
    classnames = [clean_classname(f) for f in folders]
    label_of = {f: i for i, f in enumerate(folders)}
    if split_dirs:
        seen: dict = {}  # (a file in two splits would leak test images into training)
        splits = file_splits(root, {
            s: read_class_folders(os.path.join(root, s), label_of, id_prefix=f"{s}/",
                                  seen=seen)
            for s in split_dirs})
        origin = {s: f"{s}/ subfolder" for s in splits}
        if "val" not in splits:
            carved, carved_origin = carve.carve_val(splits["train"], classnames, "train/")
            splits.update(carved)
            origin.update(carved_origin)
    else:
        ids, labels = read_class_folders(root, label_of)
        pool = make_split(ids, labels, FileImages(root, ids))
        splits, origin = carve.carve_train_val_test(pool, classnames, "the class folders",
                                                    what="folder")
    ids_all = sorted(i for s in splits.values() for i in s.ids)
    return build_dataset(
        kind="folder", name=PREFIX + root, identity_name="folder", classnames=classnames,
        templates=TEMPLATES["folder"], splits=splits, location=root, split_origin=origin,
        content_digests={"files": _stat_digest(root, ids_all)},
    )
