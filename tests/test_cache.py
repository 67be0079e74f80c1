"""The content-addressed chunk cache: keys, checksummed chunks, corruption handling."""

import logging
import os

import numpy as np
import pytest

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import cache


def _spec(**overrides):
    spec = {"model": {"width": 8, "layers": [1, 2]}, "weights": "w1", "dataset": "d",
            "split": "train", "views": 3, "dtype": "float32"}
    spec.update(overrides)
    return spec


def test_key_ignores_dict_order_but_not_content():
    spec = _spec()
    reordered = dict(reversed(list(spec.items())))
    reordered["model"] = {"layers": [1, 2], "width": 8}
    assert cache.content_key(spec) == cache.content_key(reordered)
    keys = {cache.content_key(spec)}
    for field, value in [("weights", "w2"), ("dataset", "e"), ("split", "test"), ("views", 4),
                         ("dtype", "bfloat16"), ("model", {"width": 8, "layers": [1, 3]})]:
        keys.add(cache.content_key(_spec(**{field: value})))
    assert len(keys) == 7


def test_key_is_sha256_of_canonical_json():
    import hashlib
    spec = {"b": [1, 2.5], "a": None}
    assert cache.canonical_json(spec) == '{"a":null,"b":[1,2.5]}'
    assert cache.content_key(spec) == hashlib.sha256(b'{"a":null,"b":[1,2.5]}').hexdigest()


def test_entry_key_includes_layout(tmp_path):
    a = cache.ChunkedEntry(tmp_path, _spec(), num_items=10, chunk_size=4)
    b = cache.ChunkedEntry(tmp_path, _spec(), num_items=10, chunk_size=5)
    c = cache.ChunkedEntry(tmp_path, _spec(), num_items=11, chunk_size=4)
    assert len({a.key, b.key, c.key}) == 3
    assert a.num_chunks == 3 and [a.bounds(i) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]


def _arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(n, 2, 3)).astype(np.float32),
            "valid": np.ones(n, bool), "error": np.asarray([""] * n)}


def test_roundtrip_and_spec_file(tmp_path):
    entry = cache.ChunkedEntry(tmp_path, _spec(), num_items=6, chunk_size=4)
    assert entry.load(0) is None
    entry.save(1, _arrays(2))
    got = entry.load(1)
    assert set(got) == {"features", "valid", "error"}
    np.testing.assert_array_equal(got["features"], _arrays(2)["features"])
    assert os.path.exists(os.path.join(entry.directory, "spec.json"))
    assert entry.directory.startswith(os.path.join(str(tmp_path), entry.key[:2]))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage", "wrong_chunk"])
def test_corrupt_chunk_is_detected_logged_and_removed(tmp_path, caplog, damage):
    entry = cache.ChunkedEntry(tmp_path, _spec(), num_items=8, chunk_size=4)
    entry.save(0, _arrays(4, seed=0))
    entry.save(1, _arrays(4, seed=1))
    path = entry.path(1)
    data = bytearray(open(path, "rb").read())
    if damage == "flip_byte":
        # Inside the float payload of "features" (after the zip/npy headers).
        offset = data.index(b"\x93NUMPY") + 200
        data[offset] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a zip file")
    if damage == "wrong_chunk":  # a valid chunk file under another chunk's name
        os.replace(entry.path(0), path)
    else:
        open(path, "wb").write(bytes(data))
    with caplog.at_level(logging.WARNING, logger="jaxclip_fs.features.cache"):
        assert entry.load(1) is None
    assert path in caplog.text and "recomputing" in caplog.text
    assert not os.path.exists(path)


def test_unchanged_chunk_survives_neighbour_damage(tmp_path):
    entry = cache.ChunkedEntry(tmp_path, _spec(), num_items=8, chunk_size=4)
    entry.save(0, _arrays(4, seed=0))
    entry.save(1, _arrays(4, seed=1))
    open(entry.path(1), "wb").write(b"junk")
    np.testing.assert_array_equal(entry.load(0)["features"], _arrays(4, seed=0)["features"])


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV_VAR, str(tmp_path))
    assert cache.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv(cache.CACHE_ENV_VAR)
    assert cache.default_cache_dir().endswith(os.path.join(".cache", "jaxclip-fs"))


def test_unwritable_cache_dir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    entry = cache.ChunkedEntry(blocker, _spec(), num_items=2, chunk_size=2)
    with pytest.raises(ConfigError, match=f"^{blocker}/.*: cannot write the feature cache"):
        entry.save(0, _arrays(2))
