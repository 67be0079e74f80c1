"""TFDS source: the 9 benchmark sets TFDS has, read from a prepared data dir.

Optional extra ``tfds`` (``pip install 'jaxclip-fs[tfds]'``; TensorFlow itself
is not needed to read). ``get_dataset(name, data_root=DIR, source="tfds")``
reads ``DIR/<tfds name>/<version>/`` (``DIR`` defaults to
``$TFDS_DATA_DIR``); the data must already be prepared in TFDS's
``array_record`` file format -- nothing is ever downloaded (prepare with
``tfds build <name> --data_dir DIR --file_format array_record`` where the
data can be fetched). The highest version present is used.

TFDS label names are mapped to the registry's (CoOp's) class names: pets
lower-cased; Caltech101 without ``background_google`` and ``faces_easy``
(CoOp drops them) and with CoOp's renames (``airplanes`` -> ``airplane``,
``faces`` -> ``face``, ``leopards`` -> ``leopard``, ``motorbikes`` ->
``motorbike``); Stanford Cars with the year first; SUN397 as CoOp
(``/a/apartment_building/outdoor`` -> ``outdoor apartment building``);
EuroSAT with CoOp's long names; ImageNet's wnids through a CoOp
``classnames.txt`` given as option ``imagenet_classnames=PATH``; then
underscores -> spaces. Class *order* is TFDS's (minus dropped classes).

**Splits differ from CoOp's split files** (numbers are not comparable to the
published tables): TFDS's own train / validation / test are used; where TFDS
has no validation split, 20 % of each train class is carved off; EuroSAT
(train only) is carved 50/20/30 (:mod:`~jaxclip_fs.data.carve`); Food101's
and ImageNet's test is TFDS's ``validation``. FGVC-Aircraft and UCF101 are
not in TFDS; use the CoOp root for them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
from PIL import Image

from jaxclip_fs.data import carve
from jaxclip_fs.data.coop import read_imagenet_classnames
from jaxclip_fs.data.dataset import Dataset, build_dataset, digest_file, make_split
from jaxclip_fs.data.images import decode_image_bytes
from jaxclip_fs.data.templates import TEMPLATES, clean_classname
from jaxclip_fs.errors import DataError

TFDS_ENV = "TFDS_DATA_DIR"
_MISSING_EXTRA = "source 'tfds' needs tensorflow-datasets: pip install 'jaxclip-fs[tfds]'"
_LABEL_CHUNK = 4096

_CALTECH_RENAMES = {"airplanes": "airplane", "faces": "face", "leopards": "leopard",
                    "motorbikes": "motorbike"}
_CALTECH_DROPPED = ("background_google", "faces_easy")
_EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings",
    "River": "River", "SeaLake": "Sea or Lake",
}


def _caltech(name: str) -> str | None:
    return None if name in _CALTECH_DROPPED else _CALTECH_RENAMES.get(name, name)


def _year_first(name: str) -> str:
    words = name.split(" ")
    return " ".join([words[-1], *words[:-1]])


def _sun397(name: str) -> str:
    # "/a/apartment_building/outdoor": drop the letter, most specific word first.
    return " ".join(name.strip("/").split("/")[1:][::-1])


def _eurosat(name: str) -> str:
    if name not in _EUROSAT_NAMES:
        raise DataError(f"eurosat: unexpected TFDS label name '{name}'")
    return _EUROSAT_NAMES[name]


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """How one registry dataset maps onto a TFDS dataset.

    ``val``/``test`` None: carved (see module docstring). ``rename``: TFDS
    label name -> class name before ``_`` -> space, or None to drop the class.
    """

    tfds_name: str
    train: str
    val: str | None
    test: str | None
    rename: Callable[[str], str | None] = lambda name: name
    val_cap: int | None = None


TFDS_SETS: dict[str, TfdsSpec] = {
    "imagenet": TfdsSpec("imagenet2012", "train", None, "validation",
                         val_cap=carve.IMAGENET_VAL_CAP),
    "caltech101": TfdsSpec("caltech101", "train", None, "test", _caltech),
    "oxford_pets": TfdsSpec("oxford_iiit_pet", "train", None, "test", str.lower),
    "stanford_cars": TfdsSpec("cars196", "train", None, "test", _year_first),
    "oxford_flowers": TfdsSpec("oxford_flowers102", "train", "validation", "test"),
    "food101": TfdsSpec("food101", "train", None, "validation"),
    "sun397": TfdsSpec("sun397/tfds", "train", "validation", "test", _sun397),
    "dtd": TfdsSpec("dtd", "train", "validation", "test"),
    "eurosat": TfdsSpec("eurosat/rgb", "train", None, None, _eurosat),
}


def import_tfds():
    """``tensorflow_datasets``, or a one-line ``DataError`` saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(_MISSING_EXTRA) from None
    return tfds


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def _prepared_dir(data_dir: str, tfds_name: str) -> str:
    base = os.path.join(data_dir, tfds_name)
    versions = sorted((v for v in (os.listdir(base) if os.path.isdir(base) else [])
                       if os.path.isfile(os.path.join(base, v, "dataset_info.json"))),
                      key=_version_key)
    if not versions:
        raise DataError(f"{base}: no prepared TFDS dataset (<version>/dataset_info.json); prepare "
                        f"it with `tfds build {tfds_name} --data_dir {data_dir} "
                        f"--file_format array_record` where it can be downloaded")
    return os.path.join(base, versions[-1])


class TfdsImages:
    """Images of one TFDS split, read as encoded bytes and decoded with PIL."""

    def __init__(self, source, what: str):
        self.source = source
        self.what = what

    def describe(self, row: int) -> str:
        return f"{self.what}[{row}]"

    def load(self, row: int) -> Image.Image:
        return decode_image_bytes(self.source[row]["image"], self.describe(row))


def _read_labels(source) -> np.ndarray:
    labels = []
    for start in range(0, len(source), _LABEL_CHUNK):
        rows = range(start, min(start + _LABEL_CHUNK, len(source)))
        labels.extend(int(r["label"]) for r in source.__getitems__(list(rows)))
    return np.asarray(labels, dtype=np.int64)


def _imagenet_rename(path: str | None) -> Callable[[str], str]:
    if not path:
        raise DataError("imagenet from TFDS needs CLIP's class names: pass "
                        "imagenet_classnames=PATH (a CoOp classnames.txt, '<wnid> <name>' lines)")
    names = read_imagenet_classnames(path)

    def rename(wnid: str) -> str:
        if wnid not in names:
            raise DataError(f"{path}: no class name for TFDS label '{wnid}'")
        return names[wnid]

    return rename


def load_tfds(name: str, data_dir: str | None, imagenet_classnames: str | None = None) -> Dataset:
    """Reads registry dataset ``name`` from a prepared TFDS ``data_dir`` (module docstring)."""
    if name not in TFDS_SETS:
        raise DataError(f"dataset '{name}' is not available from TFDS; TFDS has: "
                        f"{', '.join(TFDS_SETS)}")
    if imagenet_classnames is not None and name != "imagenet":
        raise DataError(f"option imagenet_classnames applies only to imagenet, not '{name}'")
    spec = TFDS_SETS[name]
    data_dir = data_dir or os.environ.get(TFDS_ENV)
    if not data_dir:
        raise DataError(f"dataset '{name}' from TFDS needs its data dir: pass data.data_root DIR "
                        f"or set {TFDS_ENV}")
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    tfds = import_tfds()
    prepared = _prepared_dir(data_dir, spec.tfds_name)
    builder = tfds.builder_from_directory(prepared)
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise DataError(f"{prepared}: prepared as {builder.info.file_format.value}; random access "
                        f"needs --file_format array_record")
    rename = _imagenet_rename(imagenet_classnames) if name == "imagenet" else spec.rename
    kept: list[str] = []
    new_label = []
    for tfds_label in builder.info.features["label"].names:
        cname = rename(tfds_label)
        new_label.append(-1 if cname is None else len(kept))
        if cname is not None:
            kept.append(clean_classname(cname))
    new_label = np.asarray(new_label, dtype=np.int64)

    def read(split: str):
        if split not in builder.info.splits:
            raise DataError(f"{prepared}: has no TFDS split '{split}' (has: "
                            f"{', '.join(builder.info.splits)})")
        source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        labels = new_label[_read_labels(source)]
        keep = np.flatnonzero(labels >= 0)
        ids = [f"{spec.tfds_name}:{split}:{i}" for i in keep]
        return make_split(ids, labels[keep], TfdsImages(source, f"{prepared}:{split}"), keep)

    train_source = f"TFDS {spec.tfds_name}:{spec.train}"
    if spec.test is None:
        splits, origin = carve.carve_train_val_test(read(spec.train), kept, train_source,
                                                    what=spec.tfds_name)
    elif spec.val is None:
        splits, origin = carve.carve_val(read(spec.train), kept, train_source,
                                         max_per_class=spec.val_cap)
    else:
        splits = {"train": read(spec.train), "val": read(spec.val)}
        origin = {"train": train_source, "val": f"TFDS {spec.tfds_name}:{spec.val}"}
    if spec.test is not None:
        splits["test"] = read(spec.test)
        origin["test"] = f"TFDS {spec.tfds_name}:{spec.test}"
    digests = {"dataset_info.json": digest_file(os.path.join(prepared, "dataset_info.json"))}
    if imagenet_classnames:
        digests["classnames.txt"] = digest_file(imagenet_classnames)
    return build_dataset(
        kind="tfds", name=name, classnames=kept, templates=TEMPLATES[name], splits=splits,
        location=prepared, split_origin=origin, content_digests=digests,
    )
