"""folder:PATH -- generated image folders, carving, corrupt images, skipping."""

import io
import os
import random

import numpy as np
import pytest
from PIL import Image

from jaxclip_fs.data import ImageReader, fewshot_train, get_dataset
from jaxclip_fs.data.carve import TRAIN_VAL_TEST, carve
from jaxclip_fs.data.images import decode_image_bytes
from jaxclip_fs.errors import DataError


def _png(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((6, 5, 3), value, np.uint8)).save(path)


def _half_up(x):
    return int(np.floor(x + 0.5))


@pytest.fixture()
def flat(tmp_path):
    """3 classes (10, 7, 4 images) + non-image files and hidden entries."""
    counts = {"golden_retriever": 10, "cat": 7, "zebra": 4}
    for c, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            _png(str(tmp_path / name / f"img_{i}.png"), 10 * c + i)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"junk")
    os.makedirs(tmp_path / ".cache")
    return tmp_path, counts


def test_flat_folder_classes_and_carved_splits(flat):
    root, counts = flat
    ds = get_dataset(f"folder:{root}")
    assert ds.classnames == ("cat", "golden retriever", "zebra")
    assert ds.templates == ("a photo of a {}.",)
    assert ds.source == f"folder:{root}"
    every = [i for s in ("train", "val", "test") for i in ds.split(s).ids]
    assert len(every) == len(set(every)) == sum(counts.values())  # partition, no txt/hidden files
    for c, name in enumerate(sorted(counts)):
        n = counts[name]
        n_val, n_test = max(1, _half_up(0.2 * n)), max(1, _half_up(0.3 * n))
        sizes = {s: int((ds.split(s).labels == c).sum()) for s in ("train", "val", "test")}
        assert sizes == {"train": n - n_val - n_test, "val": n_val, "test": n_test}
        for s in ("train", "val", "test"):
            ids = np.asarray(ds.split(s).ids)[ds.split(s).labels == c]
            assert all(i.startswith(name + "/") for i in ids)
    split = ds.split("val")
    # the pixel value encodes (class, index): check the right file is read
    name, fname = split.ids[0].split("/")
    value = 10 * sorted(counts).index(name) + int(fname[4:-4])
    assert np.all(np.asarray(split.image(0)) == value)


def test_carving_is_a_hash_rule_of_ids_independent_of_listing_order():
    ids = [f"c{i % 3}/img{i}.png" for i in range(60)]
    labels = np.arange(60) % 3
    parts = carve(ids, labels, 3, TRAIN_VAL_TEST)
    perm = np.random.default_rng(1).permutation(60)
    shuffled = carve([ids[p] for p in perm], labels[perm], 3, TRAIN_VAL_TEST)
    for name in ("val", "test", "rest"):
        assert {ids[i] for i in parts[name]} == {ids[perm[i]] for i in shuffled[name]}
    # adding one image to class 0 does not reshuffle: the new val is the old
    # val with at most one member exchanged
    grown = carve(ids + ["c0/new.png"], np.append(labels, 0), 3, TRAIN_VAL_TEST)
    old_val = {ids[i] for i in parts["val"] if labels[i] == 0}
    new_val = {(ids + ["c0/new.png"])[i] for i in grown["val"] if i == 60 or labels[i] == 0}
    assert len(old_val ^ new_val) <= 2


def test_split_subfolders_with_and_without_val(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for name in ("ant", "bee"):
            for i in range(n):
                _png(str(tmp_path / split / name / f"{i}.png"), i)
    ds = get_dataset(f"folder:{tmp_path}")
    assert ds.classnames == ("ant", "bee")
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 10, "val": 2,
                                                                       "test": 4}
    assert all(i.startswith("train/") for i in ds.split("val").ids)
    assert "carved" in ds.split_origin["val"]
    # an explicit val/ is used as given
    for name in ("ant", "bee"):
        _png(str(tmp_path / "val" / name / "v.png"), 1)
    ds2 = get_dataset(f"folder:{tmp_path}")
    assert len(ds2.split("train")) == 12 and ds2.split("val").ids == ("val/ant/v.png",
                                                                      "val/bee/v.png")
    assert ds2.identity != ds.identity


def test_split_subfolders_errors(tmp_path):
    _png(str(tmp_path / "train" / "ant" / "0.png"), 0)
    with pytest.raises(DataError, match="needs both train/ and test/"):
        get_dataset(f"folder:{tmp_path}")
    _png(str(tmp_path / "test" / "wasp" / "0.png"), 0)
    with pytest.raises(DataError, match=r"test/wasp: folder is not one of the 1 known classes"):
        get_dataset(f"folder:{tmp_path}")


def test_corrupt_image_raises_naming_it_or_is_skipped_and_counted(flat):
    root, _ = flat
    ds = get_dataset(f"folder:{root}")
    train = ds.split("train")
    bad = train.describe(2)
    with open(bad, "r+b") as f:  # keep the PNG signature, destroy the rest
        f.seek(20)
        f.write(b"\x00" * 40)
    with pytest.raises(DataError, match=f"^{bad}: cannot read image"):
        train.image(2)
    truncated = train.describe(3)
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"^{truncated}: cannot read image"):
        train.image(3)
    os.remove(train.describe(4))
    with pytest.raises(DataError, match=f"^{train.describe(4)}: no such image file"):
        train.image(4)

    reader = ImageReader("skip")
    images = [reader(train, i) for i in range(len(train))]
    assert [i for i, im in enumerate(images) if im is None] == [2, 3, 4]
    assert reader.count == 3
    assert [s[0] for s in reader.skipped] == [train.ids[2], train.ids[3], train.ids[4]]
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images if im is not None)
    with pytest.raises(DataError, match="cannot read image"):
        ImageReader()(train, 2)
    with pytest.raises(DataError, match="on_error must be one of raise, skip, got 'ignore'"):
        ImageReader("ignore")


def test_too_few_images(tmp_path):
    for i in range(2):
        _png(str(tmp_path / "tiny_class" / f"{i}.png"), i)
    for i in range(5):
        _png(str(tmp_path / "ok" / f"{i}.png"), i)
    with pytest.raises(DataError, match="class 'tiny class' has 2 folder images: too few to carve "
                                        "val 20%, test 30% and keep at least one"):
        get_dataset(f"folder:{tmp_path}")
    _png(str(tmp_path / "tiny_class" / "2.png"), 2)
    ds = get_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="class 'tiny class' \\(index 1\\) has 1 .* train images; "
                                        "2 shots asked"):
        fewshot_train(ds, 2, seed=1)


def test_identity_tracks_content_not_location(flat, tmp_path_factory):
    root, _ = flat
    first = get_dataset(f"folder:{root}")
    assert get_dataset(f"folder:{root}").identity == first.identity
    path = first.split("test").describe(0)
    st = os.stat(path)
    _png(path, 255)  # new pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert get_dataset(f"folder:{root}").identity != first.identity


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/nope: no such directory"):
        get_dataset(f"folder:{tmp_path}/nope")
    with pytest.raises(DataError, match="no class subfolders"):
        get_dataset(f"folder:{tmp_path}")
    os.makedirs(tmp_path / "empty_class")
    with pytest.raises(DataError, match="empty_class: class folder has no images"):
        get_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="takes no option 'x'"):
        get_dataset(f"folder:{tmp_path}", x=1)


def test_random_module_state_is_not_used(flat):
    root, _ = flat
    random.seed(0)
    a = get_dataset(f"folder:{root}")
    random.seed(123)
    np.random.seed(5)
    b = get_dataset(f"folder:{root}")
    assert a.split("val").ids == b.split("val").ids
    np.testing.assert_array_equal(fewshot_train(a, 1, 7), fewshot_train(b, 1, 7))


def test_encoded_bytes_decode_or_name_the_record():
    buf = io.BytesIO()
    Image.fromarray(np.full((2, 3), 7, np.uint8)).save(buf, format="PNG")  # greyscale PNG
    img = decode_image_bytes(buf.getvalue(), "set:train[3]")
    assert img.mode == "RGB" and np.all(np.asarray(img) == 7)
    with pytest.raises(DataError, match=r"^set:train\[3\]: cannot read image"):
        decode_image_bytes(b"not an image", "set:train[3]")
