"""The CoOp-layout data root: the splits and folders the papers use.

CoOp, Tip-Adapter, APE, LDC and the IMO code all read the same layout under a
data root (``--data-root DIR`` or ``$JAXCLIP_FS_DATA``); :data:`SETUP_HELP`
describes it. Facts taken from CoOp's ``datasets/*.py`` and DATASETS.md:

* Nine sets come with ``split_zhou_<Name>.json``: ``{"train"|"val"|"test":
  [[relative image path, label, class name], ...]}``, paths relative to the
  set's image folder. Class c's name is the one its train items carry (as
  Dassl's ``get_lab2cname``); names are cleaned as CoOp's and Tip-Adapter's
  prompt code does, ``name.replace("_", " ")`` -- everything else (Caltech's
  "Faces" -> "face", EuroSAT's "AnnualCrop" -> "Annual Crop Land", SUN397's
  "outdoor apartment_building", cars' year first) is already in the files.
* FGVC-Aircraft: ``variants.txt`` (class order) and
  ``images_variant_{train,val,test}.txt`` lines ``<image id> <variant>``,
  images ``images/<id>.jpg``.
* ImageNet: ``classnames.txt`` lines ``<wnid> <class name>`` (CLIP's names),
  ``images/train/<wnid>/`` and ``images/val/<wnid>/``. Classes in sorted
  wnid order (CoOp enumerates the sorted folders). Test = the 50 000 val
  images. **Deviation:** CoOp and Tip-Adapter use that same set as
  validation (selecting on test); here validation is carved from train --
  20 % per class, at most 50 (:mod:`~jaxclip_fs.data.carve`) -- and those
  images leave train.
* Out-of-distribution test sets (only a "test" split), each with a copy of
  ImageNet's ``classnames.txt`` in its folder (else ``imagenet/classnames.txt``
  under the root is used): ImageNet-V2 (folders ``0``..``999`` = the
  classnames.txt lines in file order), ImageNet-Sketch (1000 wnid folders),
  ImageNet-A and ImageNet-R (200 wnid folders each: their classes are those
  200 in sorted wnid order, as CoOp; ``Dataset.parent_class_index`` maps them
  into ImageNet's 1000).

Only the image folder and each split's first image are checked when loading
(a wrong layout fails at once, naming the path); any other missing or corrupt
file fails when read, naming it.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from jaxclip_fs.data import carve
from jaxclip_fs.data.dataset import Dataset, Split, build_dataset, digest_file, file_splits
from jaxclip_fs.data.folder import list_class_folders, read_class_folders
from jaxclip_fs.data.templates import TEMPLATES, clean_classname
from jaxclip_fs.errors import DataError

DATA_ENV = "JAXCLIP_FS_DATA"

#: name -> (folder under the root, image folder inside it, split file inside it)
JSON_SPLIT_SETS: dict[str, tuple[str, str, str]] = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
FGVC_FOLDER = "fgvc_aircraft"
IMAGENET_FOLDER = "imagenet"
#: name -> (folder under the root, image folder inside it)
OOD_SETS: dict[str, tuple[str, str]] = {
    "imagenet_v2": ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
    "imagenet_sketch": ("imagenet-sketch", "images"),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
    "imagenet_r": ("imagenet-rendition", "imagenet-r"),
}
COOP_DATASETS = (IMAGENET_FOLDER, *JSON_SPLIT_SETS, FGVC_FOLDER, *OOD_SETS)

SETUP_HELP = f"""\
How to set up data (the CoOp layout the papers use). Put every set under one
root and pass it as --data-root DIR or set ${DATA_ENV}=DIR:

  DIR/imagenet/classnames.txt            '<wnid> <class name>' per line (CLIP's names)
  DIR/imagenet/images/train/<wnid>/*.JPEG
  DIR/imagenet/images/val/<wnid>/*.JPEG  (the 50k val images, one folder per wnid)
  DIR/caltech-101/101_ObjectCategories/  + split_zhou_Caltech101.json
  DIR/oxford_pets/images/                + split_zhou_OxfordPets.json
  DIR/stanford_cars/cars_train/, cars_test/ + split_zhou_StanfordCars.json
  DIR/oxford_flowers/jpg/                + split_zhou_OxfordFlowers.json
  DIR/food-101/images/                   + split_zhou_Food101.json
  DIR/fgvc_aircraft/images/              + variants.txt, images_variant_{{train,val,test}}.txt
  DIR/sun397/SUN397/                     + split_zhou_SUN397.json
  DIR/dtd/images/                        + split_zhou_DescribableTextures.json
  DIR/eurosat/2750/                      + split_zhou_EuroSAT.json
  DIR/ucf101/UCF-101-midframes/          + split_zhou_UCF101.json
  DIR/imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/ + classnames.txt
  DIR/imagenet-sketch/images/<wnid>/     + classnames.txt
  DIR/imagenet-adversarial/imagenet-a/<wnid>/ + classnames.txt
  DIR/imagenet-rendition/imagenet-r/<wnid>/   + classnames.txt

The split_zhou_*.json files are the ones CoOp publishes (its DATASETS.md links
them, with download instructions for every set); FGVC-Aircraft's text files
come with fgvc-aircraft-2013b (keep its data/ folder as fgvc_aircraft/).
"""


def resolve_root(data_root: str | None, name: str) -> str:
    """``data_root``, else ``$JAXCLIP_FS_DATA``; a one-line ``DataError`` when neither is set."""
    root = data_root or os.environ.get(DATA_ENV)
    if not root:
        raise DataError(f"dataset '{name}' needs a data root: pass data.data_root DIR or set "
                        f"{DATA_ENV} (CoOp layout; see: jaxclip-fs datasets --setup-help)")
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"{root}: data root is not a directory (for dataset '{name}')")
    return root


def _require(path: str, name: str, expected: str) -> str:
    if not os.path.exists(path):
        raise DataError(f"{path}: not found -- '{name}' expects {expected} "
                        f"(see: jaxclip-fs datasets --setup-help)")
    return path


def _check_first_images(splits: dict[str, Split], name: str) -> None:
    for split in splits.values():
        if len(split) and not os.path.isfile(split.describe(0)):
            raise DataError(f"{split.describe(0)}: image listed in the split file not found "
                            f"-- is the image folder of '{name}' complete?")


def load_coop(name: str, data_root: str | None) -> Dataset:
    """Reads dataset ``name`` (one of :data:`COOP_DATASETS`) from a CoOp-layout root."""
    root = resolve_root(data_root, name)
    if name in JSON_SPLIT_SETS:
        return _load_json_split(name, root)
    if name == FGVC_FOLDER:
        return _load_fgvc(root)
    if name == IMAGENET_FOLDER:
        return _load_imagenet(root)
    if name in OOD_SETS:
        return _load_ood(name, root)
    raise DataError(f"no CoOp-layout reader for '{name}'; known: {', '.join(COOP_DATASETS)}")


# --- split_zhou_*.json ---------------------------------------------------------------


def read_json_split(path: str) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str]]:
    """Parses a CoOp ``split_zhou_*.json``.

    Returns:
      ``({split: (relative paths, int64 labels)}, raw class names by label)``.

    Raises:
      DataError: not JSON, a missing split, a malformed entry, a label with
        two names, or labels that are not 0..C-1 in train (names file and entry).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON split file ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: split file must be a JSON object with train/val/test lists")
    names: dict[int, str] = {}
    splits = {}
    for split in ("train", "val", "test"):
        entries = data.get(split)
        if not isinstance(entries, list):
            raise DataError(f"{path}: key '{split}' missing or not a list")
        paths, labels = [], []
        for i, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool)
                    and isinstance(entry[2], str)):
                raise DataError(f"{path}: {split}[{i}] must be [path, label, classname], got "
                                f"{json.dumps(entry)[:80]}")
            relpath, label, classname = entry
            if names.setdefault(label, classname) != classname:
                raise DataError(f"{path}: label {label} is called both '{names[label]}' and "
                                f"'{classname}' ({split}[{i}])")
            paths.append(relpath)
            labels.append(label)
        splits[split] = (paths, np.asarray(labels, dtype=np.int64))
    train_labels = set(splits["train"][1].tolist())
    num_classes = max(names) + 1 if names else 0
    missing = [c for c in range(num_classes) if c not in train_labels]
    if num_classes == 0 or min(names) < 0 or missing:
        raise DataError(f"{path}: train labels must cover 0..C-1 (missing: "
                        f"{missing[:5] if missing else 'all'})")
    return splits, [names[c] for c in range(num_classes)]


def _load_json_split(name: str, root: str) -> Dataset:
    folder, image_dir, split_file = JSON_SPLIT_SETS[name]
    base = os.path.join(root, folder)
    expected = f"{folder}/{image_dir + '/' if image_dir else ''} and {folder}/{split_file}"
    split_path = _require(os.path.join(base, split_file), name, expected)
    images = _require(os.path.join(base, image_dir), name, expected)
    listed, raw_names = read_json_split(split_path)
    splits = file_splits(images, listed)
    _check_first_images(splits, name)
    return build_dataset(
        kind="coop", name=name, classnames=[clean_classname(n) for n in raw_names],
        templates=TEMPLATES[name], splits=splits, location=base,
        split_origin={s: split_file for s in splits},
        content_digests={split_file: digest_file(split_path)},
    )


# --- FGVC-Aircraft -------------------------------------------------------------------


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _load_fgvc(root: str) -> Dataset:
    base = os.path.join(root, FGVC_FOLDER)
    expected = f"{FGVC_FOLDER}/images/, variants.txt and images_variant_{{train,val,test}}.txt"
    variants_path = _require(os.path.join(base, "variants.txt"), FGVC_FOLDER, expected)
    images = _require(os.path.join(base, "images"), FGVC_FOLDER, expected)
    classnames = _read_lines(variants_path)
    label_of = {c: i for i, c in enumerate(classnames)}
    digests = {"variants.txt": digest_file(variants_path)}
    listed = {}
    for split in ("train", "val", "test"):
        fname = f"images_variant_{split}.txt"
        path = _require(os.path.join(base, fname), FGVC_FOLDER, expected)
        digests[fname] = digest_file(path)
        paths, labels = [], []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                variant = " ".join(fields[1:])
                if variant not in label_of:
                    raise DataError(f"{path}:{lineno}: variant '{variant}' is not in variants.txt")
                paths.append(fields[0] + ".jpg")
                labels.append(label_of[variant])
        listed[split] = (paths, np.asarray(labels, dtype=np.int64))
    splits = file_splits(images, listed)
    _check_first_images(splits, FGVC_FOLDER)
    return build_dataset(
        kind="coop", name=FGVC_FOLDER, classnames=[clean_classname(c) for c in classnames],
        templates=TEMPLATES[FGVC_FOLDER], splits=splits, location=base,
        split_origin={s: f"images_variant_{s}.txt" for s in splits}, content_digests=digests,
    )


# --- ImageNet and its out-of-distribution sets ----------------------------------------


def read_imagenet_classnames(path: str) -> dict[str, str]:
    """``classnames.txt`` -> {wnid: class name} in file order (one-line error on a bad line)."""
    names: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DataError(f"{path}:{lineno}: expected '<wnid> <class name>'")
            names[fields[0]] = " ".join(fields[1:])
    if not names:
        raise DataError(f"{path}: no classes")
    return names


def _imagenet_classes(classnames_path: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(sorted wnids, their cleaned names, wnid -> name in file order)."""
    names = read_imagenet_classnames(classnames_path)
    wnids = sorted(names)
    return wnids, [clean_classname(names[w]) for w in wnids], names


def _load_imagenet(root: str) -> Dataset:
    base = os.path.join(root, IMAGENET_FOLDER)
    expected = "imagenet/classnames.txt and imagenet/images/{train,val}/<wnid>/"
    classnames_path = _require(os.path.join(base, "classnames.txt"), IMAGENET_FOLDER, expected)
    wnids, classnames, _ = _imagenet_classes(classnames_path)
    label_of = {w: i for i, w in enumerate(wnids)}
    listed = {}
    for split, folder in (("train", "train"), ("test", "val")):
        directory = _require(os.path.join(base, "images", folder), IMAGENET_FOLDER, expected)
        present = set(list_class_folders(directory))
        if present != set(wnids):
            raise DataError(f"{directory}: must hold one folder per wnid of classnames.txt "
                            f"(missing {sorted(set(wnids) - present)[:3]}, unexpected "
                            f"{sorted(present - set(wnids))[:3]})")
        listed[split] = read_class_folders(directory, label_of, id_prefix=f"{folder}/")
    splits = file_splits(os.path.join(base, "images"), listed)
    carved, origin = carve.carve_val(splits["train"], classnames, "images/train",
                                     max_per_class=carve.IMAGENET_VAL_CAP)
    splits.update(carved)
    return build_dataset(
        kind="coop", name=IMAGENET_FOLDER, classnames=classnames,
        templates=TEMPLATES[IMAGENET_FOLDER], splits=splits, location=base,
        split_origin={**origin, "test": "images/val (the 50k ILSVRC validation images)"},
        content_digests={"classnames.txt": digest_file(classnames_path)},
    )


def _ood_classnames_path(root: str, base: str) -> str:
    for candidate in (os.path.join(base, "classnames.txt"),
                      os.path.join(root, IMAGENET_FOLDER, "classnames.txt")):
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"{os.path.join(base, 'classnames.txt')}: not found (nor "
                    f"{os.path.join(root, IMAGENET_FOLDER, 'classnames.txt')}); copy ImageNet's "
                    f"classnames.txt there (see: jaxclip-fs datasets --setup-help)")


def _load_ood(name: str, root: str) -> Dataset:
    folder, image_dir = OOD_SETS[name]
    base = os.path.join(root, folder)
    directory = _require(os.path.join(base, image_dir), name,
                         f"{folder}/{image_dir}/ with one folder per class, and classnames.txt")
    classnames_path = _ood_classnames_path(root, base)
    wnids, imagenet_names, file_order = _imagenet_classes(classnames_path)
    imagenet_index = {w: i for i, w in enumerate(wnids)}
    if name == "imagenet_v2":
        # Folder i holds class i of classnames.txt in file order.
        folder_label = {str(i): imagenet_index[w] for i, w in enumerate(file_order)}
        class_wnids: Sequence[str] = wnids
    elif name == "imagenet_sketch":
        folder_label = dict(imagenet_index)
        class_wnids = wnids
    else:  # imagenet_a / imagenet_r: their own 200 classes, sorted wnids
        present = list_class_folders(directory)
        unknown = [w for w in present if w not in imagenet_index]
        if unknown:
            raise DataError(f"{os.path.join(directory, unknown[0])}: folder is not a wnid of "
                            f"{classnames_path}")
        class_wnids = present
        folder_label = {w: i for i, w in enumerate(present)}
    splits = file_splits(directory, {"test": read_class_folders(directory, folder_label)})
    return build_dataset(
        kind="coop", name=name, classnames=[imagenet_names[imagenet_index[w]] for w in class_wnids],
        templates=TEMPLATES[name], splits=splits, location=base,
        split_origin={"test": f"all images of {folder}/{image_dir}"},
        content_digests={"classnames.txt": digest_file(classnames_path)},
        parent=IMAGENET_FOLDER, parent_class_index=[imagenet_index[w] for w in class_wnids],
    )
