"""CoOp-layout roots built in the test from the real split files in tests/data/coop_splits."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxclip_fs.data import SETUP_HELP, fewshot_train, fewshot_val, get_dataset, list_datasets
from jaxclip_fs.data.coop import read_json_split
from jaxclip_fs.errors import DataError

SPLITS_DIR = os.path.join(os.path.dirname(__file__), "data", "coop_splits")  # real CoOp split files
PETS_JSON = os.path.join(SPLITS_DIR, "split_zhou_OxfordPets.json")
DTD_JSON = os.path.join(SPLITS_DIR, "split_zhou_DescribableTextures.json")
FGVC_TRAIN = os.path.join(SPLITS_DIR, "images_variant_train.txt")


def _png(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path, format="PNG")


def _independent_parse(path):
    data = json.load(open(path))
    names = {}
    for entries in data.values():
        for _, label, cname in entries:
            names[label] = cname
    return data, [names[c].replace("_", " ") for c in sorted(names)]


@pytest.fixture()
def root(tmp_path):
    """pets + dtd with their real split files; images only for a few listed items."""
    for folder, src in (("oxford_pets", PETS_JSON), ("dtd", DTD_JSON)):
        os.makedirs(tmp_path / folder)
        shutil.copy(src, tmp_path / folder)
        data = json.load(open(src))
        for split in ("train", "val", "test"):
            for relpath, label, _ in data[split][:3]:
                _png(str(tmp_path / folder / "images" / relpath), label)
    return tmp_path


@pytest.mark.parametrize("name,src", [("oxford_pets", PETS_JSON), ("dtd", DTD_JSON)])
def test_json_split_sets(root, name, src):
    ds = get_dataset(name, data_root=str(root))
    data, classnames = _independent_parse(src)
    assert ds.classnames == tuple(classnames)
    assert ds.source == f"coop:{root}/{name}"
    for split in ("train", "val", "test"):
        assert ds.split(split).ids == tuple(e[0] for e in data[split])
        np.testing.assert_array_equal(ds.split(split).labels, [e[1] for e in data[split]])
        assert ds.split_origin[split] == os.path.basename(src)
    img = ds.split("test").image(1)
    assert img.mode == "RGB" and np.asarray(img)[0, 0, 0] == data["test"][1][1]


def test_real_split_file_facts(root):
    pets = get_dataset("oxford_pets", data_root=str(root))
    assert pets.num_classes == 37 and "american pit bull terrier" in pets.classnames
    assert {s: len(pets.split(s)) for s in ("train", "val", "test")} == {
        "train": 2944, "val": 736, "test": 3669}
    assert pets.templates == ("a photo of a {}, a type of pet.",)
    dtd = get_dataset("dtd", data_root=str(root))
    assert dtd.num_classes == 47 and "polka-dotted" in dtd.classnames
    assert dtd.prompts()[0] == ("banded texture.",)


def test_fewshot_on_coop_root(root, monkeypatch):
    monkeypatch.setenv("JAXCLIP_FS_DATA", str(root))
    pets = get_dataset("oxford_pets")  # root from the environment variable
    labels = pets.split("train").labels
    idx = fewshot_train(pets, 16, seed=1)
    assert idx.shape == (37, 16)
    assert np.all(labels[idx] == np.arange(37)[:, None])
    np.testing.assert_array_equal(fewshot_train(pets, 4, seed=1), idx[:, :4])
    val = fewshot_val(pets, 16, seed=1)
    np.testing.assert_array_equal(np.bincount(pets.split("val").labels[val]), np.full(37, 4))
    fewest = int(np.bincount(labels).min())
    with pytest.raises(DataError,
                       match=f"has {fewest} oxford_pets train images; {fewest + 1} shots"):
        fewshot_train(pets, fewest + 1, seed=1)


def test_identity_follows_split_file_content(root):
    before = get_dataset("dtd", data_root=str(root)).identity
    path = root / "dtd" / "split_zhou_DescribableTextures.json"
    data = json.load(open(path))
    data["test"] = data["test"][:-1]
    path.write_text(json.dumps(data))
    assert get_dataset("dtd", data_root=str(root)).identity != before
    # the same content elsewhere has the same identity
    moved = root.parent / (root.name + "_moved")
    shutil.copytree(root, moved)
    assert get_dataset("dtd", data_root=str(moved)).identity == \
        get_dataset("dtd", data_root=str(root)).identity


def test_corrupt_image_in_coop_set_names_file(root):
    ds = get_dataset("oxford_pets", data_root=str(root))
    path = ds.split("train").describe(0)
    open(path, "wb").write(b"this is not a jpeg")
    with pytest.raises(DataError, match=f"^{path}: cannot read image"):
        ds.split("train").image(0)


def test_missing_pieces_name_exact_paths(root, tmp_path_factory, monkeypatch):
    monkeypatch.delenv("JAXCLIP_FS_DATA", raising=False)
    with pytest.raises(DataError, match="needs a data root: pass data.data_root DIR or set "
                                        "JAXCLIP_FS_DATA"):
        get_dataset("caltech101")
    with pytest.raises(DataError, match=f"^{root}/caltech-101/split_zhou_Caltech101.json: not "
                                        f"found -- 'caltech101' expects caltech-101/"
                                        f"101_ObjectCategories/ and caltech-101/"
                                        f"split_zhou_Caltech101.json"):
        get_dataset("caltech101", data_root=str(root))
    shutil.rmtree(root / "dtd" / "images")
    with pytest.raises(DataError, match=f"^{root}/dtd/images: not found"):
        get_dataset("dtd", data_root=str(root))
    os.remove(root / "oxford_pets" / "images" / "Abyssinian_122.jpg")
    with pytest.raises(DataError, match="Abyssinian_122.jpg: image listed in the split file not "
                                        "found"):
        get_dataset("oxford_pets", data_root=str(root))
    assert "split_zhou_OxfordPets.json" in SETUP_HELP and "imagenet-adversarial" in SETUP_HELP


def test_registry_errors():
    with pytest.raises(DataError, match="unknown dataset 'pets'; known: imagenet, caltech101, "
                                        ".*digits, fashion_mnist, folder:PATH"):
        get_dataset("pets")
    assert len(list_datasets()) == 18
    with pytest.raises(DataError, match="option source must be one of coop, tfds, got 'hub'"):
        get_dataset("dtd", source="hub")


@pytest.mark.parametrize("content,message", [
    ("[1, 2", "not a JSON split file"),
    ('{"train": [], "val": []}', "key 'test' missing or not a list"),
    ('{"train": [["a.jpg", "0", "x"]], "val": [], "test": []}',
     r"train\[0\] must be \[path, label, classname\]"),
    ('{"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]], "val": [], "test": []}',
     "label 0 is called both 'x' and 'y'"),
    ('{"train": [["a.jpg", 1, "x"]], "val": [], "test": []}',
     r"train labels must cover 0..C-1 \(missing: \[0\]\)"),
])
def test_malformed_split_files(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        read_json_split(str(path))


def test_fgvc_with_real_variant_file(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    os.makedirs(base)
    lines = [line.split(" ", 1) for line in open(FGVC_TRAIN).read().splitlines() if line.strip()]
    variants = sorted({v for _, v in lines})
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    shutil.copy(FGVC_TRAIN, base / "images_variant_train.txt")
    (base / "images_variant_val.txt").write_text("".join(f"{i} {v}\n" for i, v in lines[:50]))
    (base / "images_variant_test.txt").write_text("".join(f"{i} {v}\n" for i, v in lines[-70:]))
    for image_id in (lines[0][0], lines[-70][0]):
        _png(str(base / "images" / f"{image_id}.jpg"))
    ds = get_dataset("fgvc_aircraft", data_root=str(tmp_path))
    assert ds.classnames == tuple(variants) and ds.num_classes == 100
    assert len(ds.split("train")) == len(lines) == 3334
    assert {s: len(ds.split(s)) for s in ("val", "test")} == {"val": 50, "test": 70}
    np.testing.assert_array_equal(ds.split("train").labels, [variants.index(v) for _, v in lines])
    assert ds.split("test").ids[0] == lines[-70][0] + ".jpg"
    assert ds.templates == ("a photo of a {}, a type of aircraft.",)
    with open(base / "images_variant_val.txt", "a") as f:
        f.write("0000001 Concorde-X\n")
    with pytest.raises(DataError, match=r"images_variant_val.txt:51: variant 'Concorde-X' is not "
                                        r"in variants.txt"):
        get_dataset("fgvc_aircraft", data_root=str(tmp_path))


WNIDS = {"n02": "goldfish", "n01": "tench", "n03": "great_white shark"}  # file order: unsorted


def _imagenet(tmp_path, train_per_class=6):
    base = tmp_path / "imagenet"
    os.makedirs(base)
    (base / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in WNIDS.items()))
    for w in WNIDS:
        for i in range(train_per_class):
            _png(str(base / "images" / "train" / w / f"{w}_{i}.JPEG"), i)
        for i in range(2):
            _png(str(base / "images" / "val" / w / f"val_{w}_{i}.JPEG"), i)
    return base


def test_imagenet_val_carved_from_train_test_is_val_folder(tmp_path):
    _imagenet(tmp_path)
    ds = get_dataset("imagenet", data_root=str(tmp_path))
    assert ds.classnames == ("tench", "goldfish", "great white shark")  # sorted wnids
    assert len(ds.templates) == 7 and ds.templates[0] == "itap of a {}."
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 15, "val": 3,
                                                                       "test": 6}
    assert all(i.startswith("train/") for i in ds.split("val").ids)
    assert not set(ds.split("val").ids) & set(ds.split("train").ids)
    assert ds.split("test").ids[:2] == ("val/n01/val_n01_0.JPEG", "val/n01/val_n01_1.JPEG")
    np.testing.assert_array_equal(ds.split("test").labels, [0, 0, 1, 1, 2, 2])
    for i, item_id in enumerate(ds.split("train").ids):
        assert ds.split("train").labels[i] == sorted(WNIDS).index(item_id.split("/")[1])
    os.makedirs(tmp_path / "imagenet" / "images" / "val" / "n09")
    with pytest.raises(DataError, match="images/val: must hold one folder per wnid"):
        get_dataset("imagenet", data_root=str(tmp_path))


def test_imagenet_val_cap_of_50(tmp_path):
    _imagenet(tmp_path, train_per_class=0)
    for w in WNIDS:  # 260 per class: 20% = 52, capped at 50
        d = tmp_path / "imagenet" / "images" / "train" / w
        os.makedirs(d)
        src = tmp_path / "one.png"
        _png(str(src))
        for i in range(260):
            os.link(src, d / f"{i}.png")
    ds = get_dataset("imagenet", data_root=str(tmp_path))
    np.testing.assert_array_equal(np.bincount(ds.split("val").labels), [50, 50, 50])
    np.testing.assert_array_equal(np.bincount(ds.split("train").labels), [210, 210, 210])


def test_ood_sets(tmp_path):
    _imagenet(tmp_path)
    # ImageNet-A: 2 of the 3 classes, own classnames.txt copy; README ignored
    a = tmp_path / "imagenet-adversarial"
    os.makedirs(a)
    shutil.copy(tmp_path / "imagenet" / "classnames.txt", a)
    for w in ("n03", "n01"):
        _png(str(a / "imagenet-a" / w / "x.jpg"))
    (a / "imagenet-a" / "README.txt").write_text("readme")
    ds = get_dataset("imagenet_a", data_root=str(tmp_path))
    assert ds.classnames == ("tench", "great white shark")
    assert ds.parent == "imagenet" and ds.parent_class_index == (0, 2)
    assert list(ds.splits) == ["test"]
    np.testing.assert_array_equal(ds.split("test").labels, [0, 1])
    with pytest.raises(DataError, match="dataset 'imagenet_a' has no 'train' split \\(an "
                                        "out-of-distribution test set for 'imagenet'\\)"):
        fewshot_train(ds, 1, seed=1)
    # ImageNet-V2: folder i = line i of classnames.txt; no copy -> imagenet's is used
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for i in range(3):
        _png(str(v2 / str(i) / "a.jpeg"))
    ds = get_dataset("imagenet_v2", data_root=str(tmp_path))
    assert ds.classnames == ("tench", "goldfish", "great white shark")
    assert ds.parent_class_index == (0, 1, 2)
    # folder 0 = first line = n02 = goldfish = label 1 in sorted order
    assert dict(zip(ds.split("test").ids, ds.split("test").labels.tolist())) == {
        "0/a.jpeg": 1, "1/a.jpeg": 0, "2/a.jpeg": 2}
    with pytest.raises(DataError, match="imagenet-sketch/images: not found"):
        get_dataset("imagenet_sketch", data_root=str(tmp_path))
    os.remove(tmp_path / "imagenet" / "classnames.txt")
    with pytest.raises(DataError, match="imagenetv2/classnames.txt: not found \\(nor .*imagenet/"
                                        "classnames.txt\\)"):
        get_dataset("imagenet_v2", data_root=str(tmp_path))
