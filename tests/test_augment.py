"""Augmented views: torchvision's crop rule and Tip-Adapter's transform, determinism, JAX crops."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxclip_fs.clip.preprocess import CLIP_MEAN, CLIP_STD, preprocess
from jaxclip_fs.features import augment as aug
from oracles import lazy

torch = lazy("torch")
T = lazy("torchvision.transforms")


class TorchDraws:
    """The ``Draws`` interface fed by torch's global RNG, the way torchvision draws."""

    integer_draws = 0

    def uniform(self, low, high):
        return torch.empty(1).uniform_(low, high).item()

    def integers(self, low, high):
        self.integer_draws += 1
        return int(torch.randint(low, high, size=(1,)).item())

    def random(self):
        return torch.rand(1).item()


def _image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([255 * x / width, 255 * y / height,
                       127 + 100 * np.sin(x / 5.0 + y / 3.0)], -1)
    noisy = np.clip(smooth + rng.normal(0, 30, smooth.shape), 0, 255)
    return Image.fromarray(noisy.astype(np.uint8))


@pytest.mark.oracle
def test_crop_params_equal_torchvision_for_the_same_draws():
    rng = np.random.default_rng(0)
    fallbacks = 0
    for case in range(1500):
        width, height = (int(v) for v in rng.integers(1, 400, 2))
        scale = [(0.5, 1.0), (0.08, 1.0), (0.8, 1.0)][case % 3]
        ratio = [(3 / 4, 4 / 3), (1.0, 1.0), (0.5, 2.0)][case % 5 % 3]
        torch.manual_seed(case)
        expected = T.RandomResizedCrop.get_params(
            torch.empty(1, height, width), list(scale), list(ratio))
        torch.manual_seed(case)
        draws = TorchDraws()
        ours = aug.random_resized_crop_params(draws, width, height, scale=scale, ratio=ratio)
        assert ours == tuple(expected), (width, height, scale, ratio)
        fallbacks += draws.integer_draws == 0  # no attempt fitted: center-crop fallback
    assert fallbacks > 5


def test_crop_params_fallback_known_answer():
    class NeverFits:  # every attempt asks for the whole area at ratio 4/3 -> too wide
        def uniform(self, low, high):
            return high

        def integers(self, low, high):
            raise AssertionError("no attempt should succeed")

    # 1 x 400 image: ratio 1/400 < 3/4, so w = 1, h = round(1 / (3/4)) = 1, centered.
    assert aug.random_resized_crop_params(NeverFits(), 1, 400) == (199, 0, 1, 1)
    # 400 x 10: ratio 40 > 4/3, so h = 10, w = round(10 * 4/3) = 13, centered.
    assert aug.random_resized_crop_params(NeverFits(), 400, 10) == (0, 193, 10, 13)


@pytest.mark.oracle
@pytest.mark.parametrize("width,height", [(90, 60), (40, 71), (20, 20)])
def test_random_view_equals_tip_adapter_transform(width, height):
    size = 32
    tip_adapter_train = T.Compose([
        T.RandomResizedCrop(size=size, scale=(0.5, 1), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    img = _image(width, height, seed=width)
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        expected = tip_adapter_train(img).permute(1, 2, 0).numpy()
        torch.manual_seed(seed)
        ours = aug.random_view(img, size, TorchDraws())
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
        torch.manual_seed(seed)
        aug.random_resized_crop_params(TorchDraws(), width, height)
        flips.add(torch.rand(1).item() < 0.5)
    assert flips == {True, False}


def test_augmented_view_zero_is_preprocess_and_views_are_deterministic():
    img = _image(70, 50)
    np.testing.assert_array_equal(aug.augmented_view(img, 32, 1, "cls/a.jpg", 0),
                                  preprocess(img, 32))
    forward = [aug.augmented_view(img, 32, 1, "cls/a.jpg", v) for v in range(1, 6)]
    backward = [aug.augmented_view(img, 32, 1, "cls/a.jpg", v) for v in reversed(range(1, 6))][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)
    for i in range(len(forward)):
        for j in range(i + 1, len(forward)):
            assert not np.allclose(forward[i], forward[j])
        assert not np.allclose(forward[i], preprocess(img, 32))
    assert not np.allclose(forward[0], aug.augmented_view(img, 32, 2, "cls/a.jpg", 1))
    assert not np.allclose(forward[0], aug.augmented_view(img, 32, 1, "cls/b.jpg", 1))


def test_augmented_view_scale_bounds_the_crop_area():
    rng = aug.view_rng(3, "x.png", 1)
    boxes = [aug.random_resized_crop_params(rng, 200, 150, scale=(0.5, 1.0)) for _ in range(300)]
    areas = [h * w / (200 * 150) for _, _, h, w in boxes]
    assert 0.49 <= min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.6


def test_view_rng_is_stable_across_processes_and_hash_seeds():
    code = ("from jaxclip_fs.features.augment import view_rng; "
            "print(view_rng(7, 'n01440764/img_01.JPEG', 3).integers(0, 2**62, 4).tolist())")
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                capture_output=True, text=True)
        outputs.add(result.stdout.strip())
    here = str(aug.view_rng(7, "n01440764/img_01.JPEG", 3).integers(0, 2 ** 62, 4).tolist())
    assert outputs == {here}


# --- on device --------------------------------------------------------------------------


def _coordinate_images(batch, height, width):
    """Channel 0 = row coordinate of the pixel centre, channel 1 = column coordinate."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    image = np.stack([y, x, x - y], -1)
    return jnp.asarray(np.repeat(image[None], batch, 0))


def _boxes(key, batch, height, width, scale, ratio=aug.DEFAULT_RATIO):
    """The boxes jax_random_resized_crop uses (its documented key schedule)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), 0))(jnp.arange(batch))
    return np.asarray(jax.jit(jax.vmap(
        lambda k: aug.jax_crop_box(k, height, width, scale, ratio)))(keys))


def test_jax_crop_samples_the_box_geometrically():
    """Linear ramps are reproduced by the cubic kernel away from the image edge."""
    height, width, size, batch = 40, 56, 24, 8
    images = _coordinate_images(batch, height, width)
    key = jax.random.key(3)
    out = np.asarray(aug.jax_random_resized_crop(key, images, size, scale=(0.08, 1.0), flip=False))
    centres = np.arange(size) + 0.5
    checked = 0
    for (top, left, h, w), crop in zip(_boxes(key, batch, height, width, (0.08, 1.0)), out):
        rows, cols = top + centres * h / size, left + centres * w / size
        # Only samples whose kernel support stays inside the image.
        ok_rows = (rows > 2 * max(1, h / size) + 1) & (rows < height - 2 * max(1, h / size) - 1)
        ok_cols = (cols > 2 * max(1, w / size) + 1) & (cols < width - 2 * max(1, w / size) - 1)
        row_values = crop[ok_rows][:, :, 0]  # [rows kept, size]
        col_values = crop[:, ok_cols][:, :, 1]  # [size, cols kept]
        np.testing.assert_allclose(
            row_values, np.broadcast_to(rows[ok_rows, None], row_values.shape), atol=0.05)
        np.testing.assert_allclose(
            col_values, np.broadcast_to(cols[None, ok_cols], col_values.shape), atol=0.05)
        checked += ok_rows.sum() + ok_cols.sum()
    assert checked > batch * size


def test_jax_crop_boxes_in_bounds_and_follow_scale_and_ratio():
    height, width = 50, 80
    keys = jax.random.split(jax.random.key(0), 2000)
    draw = jax.jit(jax.vmap(lambda k: aug.jax_crop_box(k, height, width, (0.08, 1.0))))
    boxes = np.asarray(draw(keys))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    aspect = w / h
    # Rounding to whole pixels moves area and ratio a little beyond the drawn ranges.
    assert area.min() > 0.06 and area.max() <= 1.0
    assert aspect.min() > 0.75 * 0.9 and aspect.max() < 4 / 3 * 1.1
    assert len({tuple(b) for b in boxes}) > 1000 and top.max() > 0 and left.max() > 0


@pytest.mark.oracle
@pytest.mark.parametrize("height,width,ratio", [
    (30, 50, (1.0, 1.0)), (50, 30, (1.0, 1.0)),
    (10, 80, aug.DEFAULT_RATIO), (80, 10, aug.DEFAULT_RATIO)])
def test_jax_crop_fallback_equals_torchvision(height, width, ratio):
    # scale = 1 never fits these images within the ratio range: torchvision's
    # deterministic center-crop fallback, with the aspect ratio clamped to ``ratio``.
    box = np.asarray(aug.jax_crop_box(jax.random.key(1), height, width, (1.0, 1.0), ratio))
    expected = T.RandomResizedCrop.get_params(
        torch.empty(1, height, width), [1.0, 1.0], list(ratio))
    assert tuple(box.tolist()) == tuple(expected)


def test_jax_crop_full_box_is_a_resize_close_to_pillow():
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([127 + 100 * np.sin(x / 6.0 + y / 9.0), 127 + 100 * np.cos(x / 8.0 - y / 5.0),
                       255 * x / 63], -1).round().astype(np.uint8)
    images = jnp.asarray(np.stack([smooth, smooth[::-1]]))
    for size in (24, 100):
        out = aug.jax_random_resized_crop(jax.random.key(0), images, size, scale=(1.0, 1.0),
                                          ratio=(1.0, 1.0), flip=False)
        resized = jax.image.resize(images.astype(jnp.float32), (2, size, size, 3), "cubic",
                                   antialias=True)
        np.testing.assert_allclose(out, resized, atol=1e-3)
        pillow = np.stack([
            np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
            for im in np.asarray(images)]).astype(np.float32)
        difference = np.abs(np.asarray(out) - pillow)  # Pillow rounds to uint8 twice
        assert difference.mean() < 0.4 and difference.max() < 1.5


def test_jax_flip_mirrors_and_keys_decide():
    images = jax.random.uniform(jax.random.key(5), (16, 20, 24, 3))
    key = jax.random.key(9)
    plain = np.asarray(aug.jax_random_resized_crop(key, images, 12, flip=False))
    flipped = np.asarray(aug.jax_random_resized_crop(key, images, 12, flip=True))
    mirrored = [np.allclose(f, p[:, ::-1], atol=1e-6) for f, p in zip(flipped, plain)]
    unchanged = [np.allclose(f, p, atol=1e-6) for f, p in zip(flipped, plain)]
    assert all(m != u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)

    np.testing.assert_array_equal(aug.jax_random_resized_crop(key, images, 12, flip=True), flipped)
    other = np.asarray(aug.jax_random_resized_crop(jax.random.key(10), images, 12, flip=True))
    assert all(not np.allclose(a, b) for a, b in zip(other, flipped))
    # Image i depends on (key, i, image i) only, not on the rest of the batch.
    changed_rest = aug.jax_random_resized_crop(key, images.at[3:].set(0.0), 12, flip=True)
    np.testing.assert_array_equal(changed_rest[:3], flipped[:3])


def test_jax_crop_jits_with_traced_scale_and_uint8_input():
    images = jax.random.randint(jax.random.key(2), (4, 32, 40, 3), 0, 256).astype(jnp.uint8)
    key = jax.random.key(4)
    eager = aug.jax_random_resized_crop(key, images, 16, scale=(0.8, 1.0))
    assert eager.dtype == jnp.float32 and eager.shape == (4, 16, 16, 3)
    compiled = jax.jit(lambda k, im, s: aug.jax_random_resized_crop(k, im, 16, scale=s))
    np.testing.assert_allclose(compiled(key, images, jnp.array([0.8, 1.0])), eager, atol=1e-3)
    as_float = aug.jax_random_resized_crop(key, images.astype(jnp.float32), 16, scale=(0.8, 1.0))
    np.testing.assert_array_equal(as_float, eager)
