"""TFDS source on tiny datasets prepared in the test in TFDS's real array_record format."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from jaxclip_fs.data import get_dataset
from jaxclip_fs.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")


def _png_bytes(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _prepare(data_dir, name, version, label_names, splits, config=None):
    """Writes a TFDS dataset ``name`` (array_record) with the given {split: labels}.

    Image of item i of a split has every pixel = (10 * label + i) % 256.
    """

    def info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(names=label_names)}))

    def split_generators(self, dl_manager):
        return {split: self._generate_examples(labels) for split, labels in splits.items()}

    def generate_examples(self, labels):
        for i, label in enumerate(labels):
            yield i, {"image": _png_bytes((10 * label + i) % 256), "label": label}

    attrs = {"name": name, "VERSION": tfds.core.Version(version), "_info": info,
             "_split_generators": split_generators, "_generate_examples": generate_examples}
    if config:
        attrs["BUILDER_CONFIGS"] = [tfds.core.BuilderConfig(name=config)]
    with tfds.core.registered.skip_registration():
        cls = type("TinyBuilder", (tfds.core.GeneratorBasedBuilder,), attrs)
    cls(data_dir=str(data_dir), config=config, file_format="array_record").download_and_prepare()


def test_dtd_uses_tfds_splits_and_decodes_images(tmp_path):
    names = ["banded", "polka-dotted", "crystalline"]
    labels = {"train": [0, 1, 2, 0, 1, 2], "validation": [2, 1, 0], "test": [0, 0, 1, 2]}
    _prepare(tmp_path, "dtd", "3.0.1", names, labels)
    ds = get_dataset("dtd", data_root=str(tmp_path), source="tfds")
    assert ds.classnames == tuple(names)
    assert ds.templates == ("{} texture.",)
    assert ds.source.startswith("tfds:") and ds.source.endswith("dtd/3.0.1")
    tfds_split = {"train": "train", "val": "validation", "test": "test"}
    for split, src in tfds_split.items():
        got = ds.split(split)
        # TFDS shuffles records on write: read back each record's label independently
        raw = tfds.builder_from_directory(str(tmp_path / "dtd" / "3.0.1")).as_data_source(src)
        np.testing.assert_array_equal(got.labels, [raw[i]["label"] for i in range(len(raw))])
        assert got.ids == tuple(f"dtd:{src}:{i}" for i in range(len(raw)))
        for i in range(len(got)):
            np.testing.assert_array_equal(np.asarray(got.image(i)), raw[i]["image"])
    assert sorted(ds.split("test").labels.tolist()) == sorted(labels["test"])


def test_caltech_drops_and_renames_classes_and_carves_val(tmp_path, monkeypatch):
    names = ["accordion", "airplanes", "background_google", "faces", "faces_easy", "leopards"]
    train = [c for c in range(6) for _ in range(5)]
    _prepare(tmp_path, "caltech101", "3.0.2", names, {"train": train, "test": list(range(6))})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    ds = get_dataset("caltech101", source="tfds")
    assert ds.classnames == ("accordion", "airplane", "face", "leopard")
    # 4 kept classes x 5 train images: 1 per class carved to val (20 %), 4 stay
    np.testing.assert_array_equal(np.bincount(ds.split("val").labels), [1, 1, 1, 1])
    np.testing.assert_array_equal(np.bincount(ds.split("train").labels), [4, 4, 4, 4])
    assert len(ds.split("test")) == 4 and set(ds.split("test").labels.tolist()) == {0, 1, 2, 3}
    assert "carved" in ds.split_origin["val"]


def test_eurosat_carves_all_three_splits_and_renames(tmp_path):
    names = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
             "PermanentCrop", "Residential", "River", "SeaLake"]
    train = [c for c in range(10) for _ in range(10)]
    _prepare(tmp_path, "eurosat", "2.0.0", names, {"train": train}, config="rgb")
    ds = get_dataset("eurosat", data_root=str(tmp_path), source="tfds")
    assert ds.classnames[0] == "Annual Crop Land" and ds.classnames[-1] == "Sea or Lake"
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 50, "val": 20,
                                                                       "test": 30}
    every = ds.split("train").ids + ds.split("val").ids + ds.split("test").ids
    assert sorted(every) == sorted(f"eurosat/rgb:train:{i}" for i in range(100))


def test_tfds_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="needs its data dir: pass data.data_root DIR or set "
                                        "TFDS_DATA_DIR"):
        get_dataset("dtd", source="tfds")
    with pytest.raises(DataError, match=f"^{tmp_path}/oxford_iiit_pet: no prepared TFDS dataset.*"
                                        f"tfds build oxford_iiit_pet"):
        get_dataset("oxford_pets", data_root=str(tmp_path), source="tfds")
    with pytest.raises(DataError, match="'ucf101' is not available from TFDS"):
        get_dataset("ucf101", data_root=str(tmp_path), source="tfds")
    _prepare(tmp_path, "imagenet2012", "5.1.0", ["n01", "n02"], {"train": [0, 1] * 3,
                                                                "validation": [0, 1]})
    with pytest.raises(DataError, match="imagenet from TFDS needs CLIP's class names"):
        get_dataset("imagenet", data_root=str(tmp_path), source="tfds")
    classnames = tmp_path / "classnames.txt"
    classnames.write_text("n01 tench\nn02 gold_fish\n")
    ds = get_dataset("imagenet", data_root=str(tmp_path), source="tfds",
                     imagenet_classnames=str(classnames))
    assert ds.classnames == ("tench", "gold fish") and len(ds.split("test")) == 2
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # the extra not installed
    with pytest.raises(DataError,
                       match=r"needs tensorflow-datasets: pip install 'jaxclip-fs\[tfds\]'"):
        get_dataset("dtd", data_root=str(tmp_path), source="tfds")
