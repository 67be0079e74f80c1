"""digits and fashion_mnist: splits, class names, pixels, nested sampling, errors."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxclip_fs.data import fewshot_train, fewshot_val, get_dataset
from jaxclip_fs.data.builtin import FASHION_MNIST_CLASSES, FASHION_MNIST_DEFAULT_DIR, read_idx
from jaxclip_fs.errors import DataError


def _half_up(x):
    return int(np.floor(x + 0.5))


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def test_digits_splits_partition_all_images_per_class(digits):
    target = load_digits().target
    ids = {s: digits.split(s).ids for s in ("train", "val", "test")}
    rows = {s: [int(i.rsplit(":", 1)[1]) for i in v] for s, v in ids.items()}
    assert sorted(rows["train"] + rows["val"] + rows["test"]) == list(range(len(target)))
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(digits.split(s).labels, target[rows[s]])
    for c in range(10):
        n = int((target == c).sum())
        n_val, n_test = _half_up(0.2 * n), _half_up(0.3 * n)
        assert (digits.split("val").labels == c).sum() == n_val
        assert (digits.split("test").labels == c).sum() == n_test
        assert (digits.split("train").labels == c).sum() == n - n_val - n_test
    assert digits.classnames == tuple(str(d) for d in range(10))
    assert digits.templates == ("a photo of the digit {}.",)
    assert digits.prompts()[3] == ("a photo of the digit 3.",)


def test_digits_image_is_nearest_upscaled_grey_as_rgb(digits):
    raw = load_digits().images
    split = digits.split("val")
    for i in (0, 7):
        row = int(split.ids[i].rsplit(":", 1)[1])
        img = np.asarray(split.image(i))
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        expected = np.kron(np.rint(raw[row] * 255 / 16), np.ones((4, 4))).astype(np.uint8)
        for ch in range(3):
            np.testing.assert_array_equal(img[..., ch], expected)


def test_digits_deterministic_identity_and_fingerprints(digits):
    again = get_dataset("digits")
    assert again.identity == digits.identity
    for s in ("train", "val", "test"):
        assert again.split(s).fingerprint == digits.split(s).fingerprint
        assert again.split(s).ids == digits.split(s).ids
    assert len({digits.split(s).fingerprint for s in ("train", "val", "test")}) == 3
    copy = pickle.loads(pickle.dumps(digits))  # e.g. for worker processes
    assert copy.identity == digits.identity
    assert np.array_equal(np.asarray(copy.split("test").image(5)),
                          np.asarray(digits.split("test").image(5)))


def test_digits_fewshot_nested_and_val_policies(digits):
    train = digits.split("train")
    idx16 = fewshot_train(digits, 16, seed=1)
    assert idx16.shape == (10, 16)
    for c in range(10):
        assert np.all(train.labels[idx16[c]] == c)
    for k in (1, 2, 4, 8):
        np.testing.assert_array_equal(fewshot_train(digits, k, seed=1), idx16[:, :k])
    assert not np.array_equal(fewshot_train(digits, 4, seed=2), idx16[:, :4])

    val = digits.split("val")
    for k, per_class in ((1, 1), (2, 2), (8, 4), (16, 4)):
        idx = fewshot_val(digits, k, seed=1, policy="coop")
        assert np.array_equal(np.bincount(val.labels[idx], minlength=10), np.full(10, per_class))
    # nested in K, like the train set
    small, big = fewshot_val(digits, 2, 3), fewshot_val(digits, 16, 3)
    assert set(small.tolist()) <= set(big.tolist())
    np.testing.assert_array_equal(fewshot_val(digits, 16, 1, policy="full"), np.arange(len(val)))
    with pytest.raises(DataError, match="val policy must be one of coop, full, got 'all'"):
        fewshot_val(digits, 4, 1, policy="all")


def test_digits_too_few_images_names_class(digits):
    per_class = np.bincount(digits.split("train").labels)
    with pytest.raises(DataError, match=r"class '\d' \(index \d\) has \d+ digits train images; "
                                        r"200 shots asked"):
        fewshot_train(digits, 200, seed=1)
    assert per_class.min() < 200


def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture()
def small_fashion(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for part, n in (("train", 50), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", labels)
        data[part] = (images, labels)
    return tmp_path, data


def test_fashion_mnist_from_small_idx_files(small_fashion):
    path, data = small_fashion
    ds = get_dataset("fashion_mnist", path=str(path))
    assert ds.classnames == FASHION_MNIST_CLASSES and ds.num_classes == 10
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 40, "val": 10,
                                                                       "test": 20}
    test_images, test_labels = data["t10k"]
    np.testing.assert_array_equal(ds.split("test").labels, test_labels)
    img = np.asarray(ds.split("test").image(3))
    assert img.shape == (28, 28, 3)
    np.testing.assert_array_equal(img[..., 1], test_images[3])
    # val is carved from train: 1 of the 5 per class, and leaves train
    train_images, train_labels = data["train"]
    val = ds.split("val")
    assert np.array_equal(np.bincount(val.labels), np.ones(10, int))
    assert not set(val.ids) & set(ds.split("train").ids)
    row = int(val.ids[0].rsplit(":", 1)[1])
    assert val.labels[0] == train_labels[row]
    np.testing.assert_array_equal(np.asarray(val.image(0))[..., 0], train_images[row])


def test_fashion_mnist_env_var_and_missing_files(small_fashion, monkeypatch, tmp_path_factory):
    path, _ = small_fashion
    monkeypatch.setenv("JAXCLIP_FS_FASHION_MNIST", str(path))
    assert len(get_dataset("fashion_mnist").split("test")) == 20
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match=f"{empty}/train-images-idx3-ubyte.gz: not found"):
        get_dataset("fashion_mnist", path=str(empty))
    with pytest.raises(DataError, match="takes no option 'root' \\(options: path\\)"):
        get_dataset("fashion_mnist", root=str(path))


def test_idx_reader_errors(tmp_path):
    bad_magic = tmp_path / "bad.gz"
    with gzip.open(bad_magic, "wb") as f:
        f.write(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match="bad.gz: not an idx file"):
        read_idx(str(bad_magic))
    truncated = tmp_path / "short"
    truncated.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + b"\x00" * 100)
    with pytest.raises(DataError, match=r"short: idx data has 100 bytes, header says \[2, 28, 28"):
        read_idx(str(truncated))
    plain = tmp_path / "labels"
    plain.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([4, 0, 9]))
    np.testing.assert_array_equal(read_idx(str(plain)), [4, 0, 9])


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DEFAULT_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files():
    ds = get_dataset("fashion_mnist")
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {
        "train": 48000, "val": 12000, "test": 10000}
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
    train_val = np.concatenate([ds.split("train").labels, ds.split("val").labels])
    np.testing.assert_array_equal(np.bincount(train_val), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.split("test").labels), np.full(10, 1000))
    raw = read_idx(os.path.join(FASHION_MNIST_DEFAULT_DIR, "t10k-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(np.asarray(ds.split("test").image(9999))[..., 2], raw[9999])
