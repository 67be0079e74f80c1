"""``jaxclip-fs embed``: the output contract, against a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jaxclip_fs.cli import main
from jaxclip_fs.clip.preprocess import load_image, preprocess
from jaxclip_fs.clip.tokenizer import load_tokenizer
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import load_clip
from clip_checkpoints import compiled, hf_model, save_hf_dir

TEXTS = ["a photo of a dog.", "A PHOTO of a cat!", ""]


@pytest.fixture
def images(tmp_path):
    """Five small images of different sizes and modes."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h, mode) in enumerate([(40, 30, "RGB"), (20, 50, "RGB"), (32, 32, "L"),
                                      (64, 48, "RGBA"), (33, 35, "RGB")]):
        pixels = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
        paths.append(str(path))
    return paths


def direct(loaded, paths, texts):
    """Independent path: preprocess all at once, one batch, NumPy L2 normalisation."""
    size = loaded.config.image_size
    x = np.stack([preprocess(load_image(p), size) for p in paths])
    img = np.asarray(compiled(loaded.config, "encode_image")(loaded.params, x)[0], np.float64)
    tokens = load_tokenizer(loaded.source_dir)(texts, context_length=77)
    txt = np.asarray(compiled(loaded.config, "encode_text")(loaded.params, tokens), np.float64)
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    return norm(img), norm(txt)


def test_embed_random_weights_matches_direct_computation(images, tmp_path, capsys):
    out = str(tmp_path / "emb.npz")
    argv = ["embed", "--backbone", "tiny-vit", "--weights", "random", "--image", *images[:2],
            "--text", TEXTS[0], "--image", *images[2:], "--text", *TEXTS[1:],
            "--batch-size", "2", "--out", out]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "RANDOM WEIGHTS (random(seed=0))" in err and "tokenizer: " in err
    data = np.load(out)
    assert data["image"].shape == (5, 64) and data["text"].shape == (3, 64)
    assert data["image"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(data["image"], axis=1), 1, atol=1e-5)
    want_img, want_txt = direct(load_clip("tiny-vit", "random"), images, TEXTS)
    np.testing.assert_allclose(data["image"], want_img, atol=2e-5)  # order kept, padding dropped
    np.testing.assert_allclose(data["text"], want_txt, atol=2e-5)
    assert str(data["backbone"]) == "tiny-vit" and str(data["weights"]) == "random"
    assert bool(data["is_random"]) and str(data["tokenizer"]) == load_tokenizer(None).name
    meta = json.loads(str(data["meta"]))
    assert meta["weights_id"] == "random(seed=0)" and meta["images"] == images
    assert meta["texts"] == TEXTS


@pytest.mark.oracle
def test_embed_checkpoint_records_its_weights_id(images, tmp_path, capsys):
    directory = save_hf_dir(hf_model(get_config("tiny-vit"), seed=4), str(tmp_path / "hf"))
    out = str(tmp_path / "emb.npz")
    assert main(["embed", "--backbone", "tiny-vit", "--weights", directory,
                 "--image", images[0], "--out", out]) == 0
    assert "RANDOM" not in capsys.readouterr().err
    data = np.load(out)
    loaded = load_clip("tiny-vit", directory)
    assert str(data["weights"]) == loaded.weights_id and not bool(data["is_random"])
    assert data["text"].shape == (0, 64)
    np.testing.assert_allclose(data["image"], direct(loaded, images[:1], ["x"])[0], atol=2e-5)


@pytest.mark.parametrize("argv_tail,needle", [
    ([], "nothing to embed"),
    (["--text", "a", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--image", "missing.png"], "missing.png"),
])
def test_embed_user_errors_are_one_line(argv_tail, needle, tmp_path, capsys):
    out = tmp_path / "e.npz"
    argv = ["embed", "--backbone", "tiny-rn", "--weights", "random", "--out", str(out)]
    assert main(argv + argv_tail) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1]
    assert not out.exists()


def test_embed_corrupt_image_names_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["embed", "--backbone", "tiny-rn", "--weights", "random", "--image", str(bad),
                 "--out", str(tmp_path / "e.npz")]) == 2
    assert "broken.jpg" in capsys.readouterr().err.strip().splitlines()[-1]


def test_batches_have_one_shape_and_keep_order():
    """The last batch is zero-padded to the batch size (one compiled shape); rows stay in order."""
    from jaxclip_fs.clip.embed import run_in_batches

    shapes = []

    def fn(rows):
        shapes.append(rows.shape)
        return rows[:, :2] * 2

    rows = lambda a, b: np.repeat(np.arange(a, b, dtype=np.float32)[:, None], 3, axis=1)
    out = run_in_batches(fn, 5, rows, batch_size=2, dim=2)
    assert shapes == [(2, 3)] * 3
    np.testing.assert_array_equal(out, 2 * rows(0, 5)[:, :2])
    assert run_in_batches(fn, 0, rows, batch_size=2, dim=2).shape == (0, 2)
