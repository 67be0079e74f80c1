"""CLIP image preprocessing equals the torchvision pipeline; image loading errors."""

import numpy as np
import pytest
from PIL import Image

from jaxclip_fs.clip import preprocess as pp
from jaxclip_fs.errors import DataError
from oracles import lazy

open_clip = lazy("open_clip")
T = lazy("torchvision.transforms")


def _torchvision_clip(size):
    """OpenAI CLIP's ``_transform(n_px)``, spelled out."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        lambda img: img.convert("RGB"),
        T.ToTensor(),
        T.Normalize(pp.CLIP_MEAN, pp.CLIP_STD),
    ])


def _image(width, height, mode, seed):
    """Noise plus smooth gradients, in the requested PIL mode."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                       127 + 120 * np.sin(x / 7.0 + y / 5.0), 255 * (x + y) / (width + height)], -1)
    pixels = np.clip(smooth + rng.normal(0, 40, smooth.shape), 0, 255).astype(np.uint8)
    rgba = Image.fromarray(pixels, "RGBA")
    if mode == "P":
        return rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return rgba.convert(mode)


# (width, height, size): landscape, portrait, square, already the right size,
# smaller than size (upscaling), odd margins (center offsets 0.5 / 1.5 round half-to-even).
SHAPES = [(97, 61, 32), (50, 131, 32), (40, 40, 32), (32, 32, 32), (20, 13, 32),
          (33, 32, 32), (32, 35, 32), (200, 150, 64), (300, 400, 224)]


@pytest.mark.oracle
@pytest.mark.parametrize("width,height,size", SHAPES)
def test_equals_torchvision_and_open_clip_rgb(width, height, size):
    img = _image(width, height, "RGB", seed=width * height)
    ours = pp.preprocess(img, size)
    assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
    expected = _torchvision_clip(size)(img).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    open_clip_eval = open_clip.image_transform(size, is_train=False)
    np.testing.assert_allclose(ours, open_clip_eval(img).permute(1, 2, 0).numpy(),
                               rtol=0, atol=1e-6)


@pytest.mark.oracle
@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK"])
@pytest.mark.parametrize("width,height", [(75, 52), (41, 90)])
def test_equals_torchvision_other_modes(mode, width, height):
    img = _image(width, height, mode, seed=7)
    expected = _torchvision_clip(48)(img).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(pp.preprocess(img, 48), expected, rtol=0, atol=1e-6)


@pytest.mark.oracle
def test_short_side_size_matches_torchvision():
    from torchvision.transforms.functional import _compute_resized_output_size

    rng = np.random.default_rng(0)
    for width, height, size in rng.integers(1, 1000, (500, 3)):
        new_h, new_w = _compute_resized_output_size((int(height), int(width)), [int(size)])
        assert pp.short_side_size(int(width), int(height), int(size)) == (new_w, new_h)


def test_load_image_converts_to_rgb(tmp_path):
    img = _image(30, 20, "RGBA", seed=1)
    path = tmp_path / "a.png"
    img.save(path)
    loaded = pp.load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (30, 20)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(img)[..., :3])


def test_load_image_errors_are_one_line_and_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00\x01 definitely not an image\n" * 10)
    truncated = tmp_path / "truncated.png"
    _image(64, 64, "RGB", seed=2).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    for path in (tmp_path / "missing.png", garbage, truncated):
        with pytest.raises(DataError) as err:
            pp.load_image(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), str(err.value)
