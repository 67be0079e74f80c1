"""The feature-file contract: round trip, and one-line errors naming the key for bad files."""

import io
import json
import pickle

import numpy as np
import pytest

from jaxclip_fs.errors import FeatureFileError
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task


@pytest.fixture(scope="module")
def features():
    return make_task(2, num_classes=3, dim=8, shots=4, views=3, val_per_class=2, test_per_class=2)


def _arrays(fs):
    return dict(text=fs.text, train=fs.train, train_labels=fs.train_labels, val=fs.val,
                val_labels=fs.val_labels, test=fs.test, test_labels=fs.test_labels,
                classnames=np.asarray(fs.classnames))


def test_round_trip_keeps_everything(features, tmp_path):
    index = np.stack([np.flatnonzero(features.train_labels == c)[:2] for c in range(3)])
    fs = featfile.FeatureSet(**{**features.__dict__, "fewshot": {5: index}, "logit_scale": 50.0})
    path = tmp_path / "f.npz"
    featfile.save(path, fs)
    back = featfile.load(path)
    for key in ("text", "train", "val", "test"):
        np.testing.assert_array_equal(getattr(back, key), getattr(fs, key))
        assert getattr(back, key).dtype == np.float32
    for key in ("train_labels", "val_labels", "test_labels"):
        np.testing.assert_array_equal(getattr(back, key), getattr(fs, key))
    assert back.classnames == fs.classnames and back.logit_scale == 50.0
    assert back.meta == json.loads(json.dumps(dict(fs.meta)))
    np.testing.assert_array_equal(back.fewshot[5], index)


def test_synthetic_features_are_raw_and_valid(features):
    norms = np.linalg.norm(features.train, axis=-1)
    assert norms.min() > 2.0 and norms.std() > 0.5  # stored as an encoder would, not normalised
    np.testing.assert_allclose(np.linalg.norm(features.text, axis=1), 1.0, rtol=1e-5)
    assert features.num_views == 3 and np.bincount(features.train_labels).tolist() == [4, 4, 4]
    again = make_task(2, num_classes=3, dim=8, shots=4, views=3, val_per_class=2, test_per_class=2)
    np.testing.assert_array_equal(again.train, features.train)  # same seed, same features


BAD = {
    "missing key": (lambda a: a.pop("val_labels"), "missing key 'val_labels'"),
    "2-D train": (lambda a: a.update(train=a["train"][0]),
                  "key 'train' must have shape [V, N, 8]"),
    "float labels": (lambda a: a.update(train_labels=a["train_labels"].astype(float)),
                     "key 'train_labels' must be an integer array"),
    "label out of range": (lambda a: a["test_labels"].__setitem__(0, 7),
                           "key 'test_labels' has label 7 outside [0, 3)"),
    "NaN": (lambda a: a["val"].__setitem__((0, 0), np.nan), "key 'val' contains NaN or Inf"),
    "unnormalised text": (lambda a: a.update(text=a["text"] * 2),
                          "key 'text' rows must be L2-normalised"),
    "dim mismatch": (lambda a: a.update(test=a["test"][:, :5]),
                     "key 'test' must have shape [M, 8]"),
    "empty val": (lambda a: a.update(val=a["val"][:0], val_labels=a["val_labels"][:0]),
                  "key 'val' must have shape [M, 8] with M >= 1"),
    "label count": (lambda a: a.update(val_labels=a["val_labels"][:-1]),
                    "key 'val_labels' must have shape [6] to match its features"),
    "classnames": (lambda a: a.update(classnames=np.arange(3)),
                   "key 'classnames' must be a 1-D string"),
    "class count": (lambda a: a.update(classnames=a["classnames"][:2]),
                    "key 'classnames' has 2 names"),
    "meta not JSON": (lambda a: a.update(meta=np.asarray("{oops")),
                      "key 'meta' is not a JSON string"),
    "meta not object": (lambda a: a.update(meta=np.asarray("[1, 2]")),
                        "key 'meta' must be a JSON object"),
    "logit_scale text": (lambda a: a.update(logit_scale=np.asarray("big")),
                         "key 'logit_scale' must be a number"),
    "logit_scale < 0": (lambda a: a.update(logit_scale=np.float32(-1)),
                        "key 'logit_scale' must be a positive"),
    "fewshot alone": (lambda a: a.update(fewshot_seeds=np.array([1])), "go together"),
    "fewshot dtype": (lambda a: a.update(fewshot_seeds=np.array([1]),
                                         fewshot_index=np.zeros((1, 3, 2))),
                      "key 'fewshot_index' seed 1: must be int [3, K], got float64"),
    "fewshot class": (lambda a: a.update(fewshot_seeds=np.array([1]),
                                         fewshot_index=np.zeros((1, 3, 2), dtype=np.int64)),
                      "a row's train_label differs from its class"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_give_one_line_errors_naming_the_key(features, tmp_path, case):
    mutate, needle = BAD[case]
    arrays = {k: v.copy() for k, v in _arrays(features).items()}
    mutate(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(FeatureFileError) as info:
        featfile.load(path)
    message = str(info.value)
    assert needle in message and "\n" not in message and str(path) in message


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FeatureFileError, match="no such feature file"):
        featfile.load(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an npz")
    with pytest.raises(FeatureFileError, match="not an .npz feature file"):
        featfile.load(junk)


def _npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.ones(3))
    return buffer.getvalue()


def _object_npz_bytes():
    buffer = io.BytesIO()
    np.savez(buffer, text=np.array([{"a": 1}], dtype=object))
    return buffer.getvalue()


@pytest.mark.parametrize("content, needle", [
    (b"hello, not features\n", "a text file, not a zip archive"),
    (bytes(range(256)) * 4, "binary data, not a zip archive"),
    (b"", "an empty file"),
    (pickle.dumps({"text": [1, 2]}), "a Python pickle, which is never loaded"),
    (_npy_bytes(), "a single .npy array"),
    (_object_npz_bytes(), "object arrays"),
])
def test_non_npz_files_say_what_they_are_without_numpys_pickle_advice(tmp_path, content, needle):
    """numpy answers most of these with "This file contains pickled (object) data. If you trust
    the file you can load it unsafely using the `allow_pickle=` keyword argument ..." -- advice
    this library must not pass on."""
    path = tmp_path / "features.npz"
    path.write_bytes(content)
    with pytest.raises(FeatureFileError) as info:
        featfile.load(path)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message
    assert "allow_pickle" not in message and "unsafely" not in message and "trust" not in message
