"""Feature extraction through the tiny CLIP: digits, a generated image folder, a CoOp root.

Every check compares against an independent computation: the model applied
directly to ``augmented_view`` / ``preprocess`` outputs of single images, the
few-shot sampler run on its own, the split files parsed with ``json``.
"""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from jaxclip_fs import cli
from jaxclip_fs.clip.preprocess import preprocess
from jaxclip_fs.clip.tokenizer import load_tokenizer
from jaxclip_fs.convert import load_clip
from jaxclip_fs.data import fewshot_train, get_dataset
from jaxclip_fs.data.fewshot import class_order, nested_fewshot
from jaxclip_fs.errors import ConfigError, DataError
from jaxclip_fs.features import augment, featfile
from jaxclip_fs.features.encode import FixedBatchEncoder
from jaxclip_fs.features.extract import extract_features, save_extraction, taps_path
from jaxclip_fs.features.image_encoder import encode_split, make_image_encoder
from jaxclip_fs.features.text_classifier import classifier_from_embeddings, text_classifier

SPLITS_DIR = os.path.join(os.path.dirname(__file__), "data", "coop_splits")  # real CoOp split files
DTD_JSON = os.path.join(SPLITS_DIR, "split_zhou_DescribableTextures.json")
FAST = dict(batch_size=16, workers=2, progress=False)


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-vit", "random")


@pytest.fixture(scope="module")
def tokenizer(clip):
    return load_tokenizer(clip.source_dir)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def digits_run(clip, tokenizer, digits, tmp_path_factory):
    cache_dir = str(tmp_path_factory.mktemp("cache"))
    ex = extract_features(digits, clip, tokenizer, shots=2, seeds=(1, 3), views=3,
                          cache_dir=cache_dir, chunk_images=200, **FAST)
    return ex, cache_dir


class _CountCalls:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = FixedBatchEncoder.__call__

        def counting(encoder, rows):
            self.calls += 1
            return original(encoder, rows)
        monkeypatch.setattr(FixedBatchEncoder, "__call__", counting)


def encode_direct(clip, images):
    emb, _ = clip.model.apply(clip.params, np.stack(images), method="encode_image")
    return np.asarray(emb)


# --- digits --------------------------------------------------------------------------------


def test_digits_splits_classes_and_nested_fewshot(digits_run, digits):
    fs = digits_run[0].features
    assert fs.classnames == digits.classnames
    for split in ("val", "test"):
        np.testing.assert_array_equal(getattr(fs, f"{split}_labels"), digits.split(split).labels)
    assert fs.val.shape == (len(digits.split("val")), 64)
    train = digits.split("train")
    pool_of = {}
    for seed in (1, 3):
        index = fs.fewshot[seed]
        assert index.shape == (10, 2)
        assert np.all(fs.train_labels[index] == np.arange(10)[:, None])
        pool_of[seed] = index
    # The pool rows are exactly the sampler's choice, in train-split order.
    expected_pool = np.unique(np.concatenate([fewshot_train(digits, 2, s).ravel() for s in (1, 3)]))
    assert fs.train.shape == (3, expected_pool.size, 64)
    np.testing.assert_array_equal(fs.train_labels, train.labels[expected_pool])
    for seed in (1, 3):
        np.testing.assert_array_equal(expected_pool[pool_of[seed]], fewshot_train(digits, 2, seed))
        # nested: the 1-shot set is the first column of the 2-shot set
        np.testing.assert_array_equal(expected_pool[pool_of[seed][:, :1]],
                                      fewshot_train(digits, 1, seed))


def test_digits_features_equal_direct_encoding(digits_run, digits, clip, tokenizer):
    fs = digits_run[0].features
    size = clip.config.image_size
    test = digits.split("test")
    rows = [0, 1, len(test) - 1]
    direct = encode_direct(clip, [preprocess(test.image(i), size) for i in rows])
    np.testing.assert_allclose(fs.test[rows], direct, rtol=1e-4, atol=1e-5)
    train = digits.split("train")
    pool = np.unique(np.concatenate([fewshot_train(digits, 2, s).ravel() for s in (1, 3)]))
    for row in (0, pool.size - 1):
        i = int(pool[row])
        img = train.image(i)
        views = [augment.augmented_view(img, size, 0, train.ids[i], v) for v in range(3)]
        assert not np.allclose(views[1], views[2])
        np.testing.assert_allclose(fs.train[:, row], encode_direct(clip, views),
                                   rtol=1e-4, atol=1e-5)
    # text: per prompt encode_text, normalise, mean, normalise (numpy, class by class)
    for c in (0, 9):
        tokens = tokenizer([t.format(digits.classnames[c]) for t in digits.templates])
        e = np.asarray(clip.model.apply(clip.params, tokens, method="encode_text"), np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        w = e.mean(0) / np.linalg.norm(e.mean(0))
        np.testing.assert_allclose(fs.text[c], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fs.logit_scale, np.exp(clip.params["params"]["logit_scale"]),
                               rtol=1e-6)


def test_digits_meta_file_roundtrip_and_evaluate(digits_run, tmp_path):
    ex = digits_run[0]
    meta = ex.features.meta
    assert meta["backbone"] == "tiny-vit" and meta["weights"] == "random"
    assert meta["weights_id"] == "random(seed=0)" and meta["is_random"] is True
    assert meta["dataset"] == "digits" and meta["views"] == 3
    assert meta["augmentation"]["scale"] == [0.5, 1.0] and meta["augmentation"]["seed"] == 0
    assert "seeds [1, 3]" in meta["split_policy"]["train"]
    assert meta["skipped_images"] == {"count": 0, "items": []}
    assert meta["dtype"] == "float32" and meta["tokenizer"]
    path = tmp_path / "digits.npz"
    assert save_extraction(path, ex) == [str(path)]
    loaded = featfile.load(path)
    np.testing.assert_array_equal(loaded.train, ex.features.train)
    assert sorted(loaded.fewshot) == [1, 3] and loaded.meta == meta
    # `evaluate` reads it; zero-shot accuracy equals argmax(test . text) computed here
    assert cli.main(["evaluate", str(path), "--method", "zero_shot", "--shots", "2", "--seed",
                     "3", "--out", str(tmp_path / "zs")]) == 0
    result = json.load(open(tmp_path / "zs" / "result.json"))
    fs = ex.features
    want = 100 * np.mean(np.argmax(fs.test @ fs.text.T, axis=1) == fs.test_labels)
    assert result["accuracy"] == pytest.approx(want, abs=1e-4)
    assert result["weights"] == "random" and result["dataset"] == "digits"


def test_rerun_is_a_cache_hit_and_fresh_run_identical(digits_run, digits, clip, tokenizer,
                                                      monkeypatch):
    first, cache_dir = digits_run
    counter = _CountCalls(monkeypatch)
    again = extract_features(digits, clip, tokenizer, shots=2, seeds=(1, 3), views=3,
                             cache_dir=cache_dir, chunk_images=200, **FAST)
    assert counter.calls == 0
    assert all(computed == 0 for _, computed in again.cache.values())
    fresh = extract_features(digits, clip, tokenizer, shots=2, seeds=(1, 3), views=3,
                             use_cache=False, **FAST)
    assert counter.calls > 0
    for key in ("text", "train", "val", "test"):
        np.testing.assert_array_equal(getattr(again.features, key), getattr(first.features, key))
        np.testing.assert_array_equal(getattr(fresh.features, key), getattr(first.features, key))


def test_corrupt_cache_chunk_is_recomputed(digits_run, digits, clip, tokenizer, monkeypatch,
                                           caplog):
    first, cache_dir = digits_run
    chunks = sorted(os.path.join(d, f) for d, _, files in os.walk(cache_dir) for f in files
                    if f.startswith("chunk-"))
    victim = max(chunks, key=os.path.getsize)  # a full 200-image val or test chunk
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
    counter = _CountCalls(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = extract_features(digits, clip, tokenizer, shots=2, seeds=(1, 3), views=3,
                                 cache_dir=cache_dir, chunk_images=200, **FAST)
    assert victim in caplog.text
    assert sum(computed for _, computed in again.cache.values()) == 1
    assert counter.calls == 200 // 16 + 1
    np.testing.assert_array_equal(again.features.test, first.features.test)
    np.testing.assert_array_equal(again.features.val, first.features.val)


# --- encoder details -----------------------------------------------------------------------


def test_one_compile_bfloat16_and_taps(clip, digits):
    enc = make_image_encoder(clip, taps=("block2",), batch_size=16)
    train = encode_split(enc, digits, "train", range(7), views=3, use_cache=False,
                         progress=False)
    test = encode_split(enc, digits, "test", range(21), use_cache=False, progress=False)
    assert enc.batches.num_compilations == 1  # 21 views + 21 images, padded batches of 16
    assert train.features.shape == (3, 7, 64) and test.features.shape == (1, 21, 64)
    size = clip.config.image_size
    split = digits.split("test")
    images = np.stack([preprocess(split.image(i), size) for i in range(21)])
    emb, taps = clip.model.apply(clip.params, images, taps=("block2",), method="encode_image")
    tokens = 1 + (size // clip.config.vision_patch_size) ** 2
    assert test.taps["block2"].shape == (1, 21, tokens, 128)
    np.testing.assert_allclose(test.taps["block2"][0], taps["block2"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(test.features[0], emb, rtol=1e-4, atol=1e-5)
    bf16 = encode_split(make_image_encoder(clip, dtype="bfloat16", batch_size=16), digits,
                        "test", range(21), use_cache=False, progress=False)
    assert bf16.features.dtype == np.float32
    cos = np.sum(bf16.features[0] * emb, 1) / np.linalg.norm(bf16.features[0], axis=1) \
        / np.linalg.norm(emb, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(bf16.features[0], test.features[0])


def test_text_classifier_formula_and_cache(clip, tokenizer, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3, 4, 5))
    want = np.stack([np.mean([v / np.linalg.norm(v) for v in e[c]], 0) for c in range(3)])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(classifier_from_embeddings(e), want, rtol=1e-5, atol=1e-6)
    names, templates = ("cat", "dog"), ("a {}.", "a photo of a {}.", "art of the {}.")
    w = text_classifier(clip, tokenizer, names, templates, cache_dir=tmp_path, batch_size=4,
                        progress=False)
    counter = _CountCalls(monkeypatch)
    again = text_classifier(clip, tokenizer, names, templates, cache_dir=tmp_path,
                            batch_size=4, progress=False)
    assert counter.calls == 0
    np.testing.assert_array_equal(w, again)
    other = text_classifier(clip, tokenizer, names, templates[:2], cache_dir=tmp_path,
                            batch_size=4, progress=False)
    assert counter.calls > 0 and not np.allclose(other, w)


def test_argument_errors(clip, digits):
    with pytest.raises(ConfigError, match="seeds need shots"):
        extract_features(digits, clip, seeds=(1,), **FAST)
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        extract_features(digits, clip, shots=1, seeds=(1, 1), **FAST)
    with pytest.raises(ConfigError, match="unknown tap 'layer1'"):
        make_image_encoder(clip, taps=("layer1",))
    with pytest.raises(ConfigError, match="extraction.dtype"):
        make_image_encoder(clip, dtype="float16")
    enc = make_image_encoder(clip, batch_size=4)
    with pytest.raises(ConfigError, match="extraction.aug_scale"):
        encode_split(enc, digits, "train", [0], views=2, aug_scale=(0.9, 0.5), progress=False)


# --- a generated image folder --------------------------------------------------------------


def _make_folder(root, classes=("ant", "bee", "cat"), per_class=8):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        os.makedirs(root / name)
        for j in range(per_class):
            h, w = 24 + 4 * (j % 3), 32 + 2 * j
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            pixels[..., c] = 255
            Image.fromarray(pixels).save(root / name / f"img{j}.png")
    return f"folder:{root}"


def test_folder_corrupt_image_raises_or_is_skipped(tmp_path, clip, tokenizer):
    name = _make_folder(tmp_path / "imgs")
    ds = get_dataset(name)
    train = ds.split("train")
    victim = int(class_order(train.labels, 0, 1)[0])  # in class 0's 2-shot set for seed 1
    path = train.describe(victim)
    open(path, "wb").write(b"not a png")
    ds = get_dataset(name)
    kwargs = dict(shots=2, seeds=(1, 2), views=2, cache_dir=tmp_path / "cache", **FAST)
    with pytest.raises(DataError, match=f"^{path}: cannot read image"):
        extract_features(ds, clip, tokenizer, **kwargs)
    ex = extract_features(ds, clip, tokenizer, skip_corrupt=True, **kwargs)
    fs = ex.features
    assert ex.skipped == (("train", train.ids[victim], ex.skipped[0][2]),)
    assert fs.meta["skipped_images"]["count"] == 1
    assert fs.meta["skipped_images"]["items"][0]["id"] == train.ids[victim]
    featfile.validate(fs)
    pool = np.unique(np.concatenate([
        np.stack([[i for i in class_order(train.labels, c, s) if i != victim][:2]
                  for c in range(3)]).ravel() for s in (1, 2)]))
    np.testing.assert_array_equal(fs.train_labels, train.labels[pool])
    assert victim not in pool
    np.testing.assert_array_equal(pool[fs.fewshot[1][0]], class_order(train.labels, 0, 1)[1:3])
    np.testing.assert_array_equal(pool[fs.fewshot[1][1:]],
                                  nested_fewshot(train.labels, 3, 2, 1)[1:])
    whole = extract_features(ds, clip, tokenizer, views=1, skip_corrupt=True,
                             cache_dir=tmp_path / "cache", **FAST)
    keep = np.arange(len(train)) != victim
    np.testing.assert_array_equal(whole.features.train_labels, train.labels[keep])
    assert whole.features.train.shape == (1, len(train) - 1, 64)
    assert len(whole.skipped) == 1


def test_folder_too_few_images(tmp_path, clip, tokenizer):
    ds = get_dataset(_make_folder(tmp_path / "imgs"))
    with pytest.raises(DataError, match="class 'ant' .* has 4 .*train images; 5 shots"):
        extract_features(ds, clip, tokenizer, shots=5, seeds=(1,), views=1, use_cache=False,
                         **FAST)


# --- a CoOp-layout root and the CLI -------------------------------------------------------


@pytest.fixture()
def coop_root(tmp_path):
    """dtd with a split file in the real format: the real file's entries of classes 0-2."""
    data = json.load(open(DTD_JSON))
    small = {split: [e for c in range(3) for e in [x for x in data[split] if x[1] == c][:n]]
             for split, n in (("train", 4), ("val", 2), ("test", 2))}
    os.makedirs(tmp_path / "dtd")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(small))
    rng = np.random.default_rng(1)
    for entries in small.values():
        for relpath, label, _ in entries:
            os.makedirs(os.path.dirname(tmp_path / "dtd" / "images" / relpath), exist_ok=True)
            pixels = rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "dtd" / "images" / relpath)
    return tmp_path, small


def test_cli_extract_on_coop_root(coop_root, tmp_path, clip, monkeypatch, capsys):
    root, small = coop_root
    asked = []

    def fake_load(backbone, weights):  # the loader is tested in test_convert*; reuse the fixture
        asked.append((backbone, weights))
        return clip
    monkeypatch.setattr("jaxclip_fs.convert.load_clip", fake_load)
    out = tmp_path / "out" / "dtd.npz"
    argv = ["extract", "--dataset", "dtd", "--data-root", str(root), "--backbone", "tiny-vit",
            "--weights", "random", "--views", "1", "--shots", "2", "--seeds", "1,2",
            "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"), "--quiet",
            "--taps", "block1", "--out", str(out)]
    assert cli.main(argv) == 0
    assert asked == [("tiny-vit", "random")]
    err = capsys.readouterr()
    assert "RANDOM WEIGHTS" in err.err and "0/3 image chunks from the cache" in err.out
    fs = featfile.load(out)
    assert fs.classnames == ("banded", "blotchy", "braided")
    np.testing.assert_array_equal(fs.test_labels, [e[1] for e in small["test"]])
    np.testing.assert_array_equal(fs.val_labels, [e[1] for e in small["val"]])
    ds = get_dataset("dtd", data_root=str(root))
    train_ids = [e[0] for e in small["train"]]
    assert fs.train.shape == (2, len({i for s in (1, 2) for i in fewshot_train(ds, 2, s).ravel()}),
                              64)
    pool = np.unique(np.concatenate([fewshot_train(ds, 2, s).ravel() for s in (1, 2)]))
    for s in (1, 2):
        np.testing.assert_array_equal(pool[fs.fewshot[s]], fewshot_train(ds, 2, s))
    assert [train_ids[i] for i in pool] == [ds.split("train").ids[i] for i in pool]
    taps = np.load(taps_path(out))
    assert taps["train_block1"].shape == (2, pool.size, 17, 128)
    assert taps["test_block1"].shape == (len(small["test"]), 17, 128)
    # rerun: everything from the cache
    assert cli.main(argv) == 0
    assert "3/3 image chunks from the cache" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys, clip, monkeypatch):
    monkeypatch.setattr("jaxclip_fs.convert.load_clip", lambda backbone, weights: clip)
    name = _make_folder(tmp_path / "imgs")
    path = get_dataset(name).split("test").describe(0)
    open(path, "wb").write(b"broken")
    common = ["extract", "--dataset", name, "--backbone", "tiny-vit", "--weights", "random",
              "--quiet", "--no-cache", "--views", "1"]
    base = common + ["--out", str(tmp_path / "f.npz")]
    for extra, message in [
        ([], f"error: {path}: cannot read image"),
        (["--seeds", "1"], "error: --seeds needs --shots"),
        (["--shots", "1", "--seeds", "1,x"], "error: --seeds must be a comma list"),
        (["--aug-scale", "0.5"], "error: --aug-scale must be LOW,HIGH"),
        (["--taps", "layer9"], "error: unknown tap 'layer9'"),
    ]:
        assert cli.main(base + extra) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "RANDOM" not in line]
        assert len(err) == 1 and err[0].startswith(message), err
    assert not os.path.exists(tmp_path / "f.npz")
    assert cli.main(base + ["--skip-corrupt"]) == 0
    assert featfile.load(tmp_path / "f.npz").meta["skipped_images"]["count"] == 1
    assert "skipped 1 unreadable images" in capsys.readouterr().err
    (tmp_path / "blocker").write_text("a file, not a directory")
    bad_out = str(tmp_path / "blocker" / "f.npz")
    assert cli.main(common + ["--skip-corrupt", "--out", bad_out]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: --out {bad_out}: cannot write")
