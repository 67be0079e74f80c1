"""Tap shapes and sizes from the config agree with the model's own (abstract) outputs."""

import jax
import numpy as np
import pytest

from jaxclip_fs.clip.model import CLIP, abstract_variables
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features.taps import tap_nbytes, tap_shape


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn", "RN50", "ViT-B/16"])
def test_tap_shapes_match_eval_shape_of_the_model(name):
    config = get_config(name)
    taps = config.tap_names()
    images = jax.ShapeDtypeStruct((2, config.image_size, config.image_size, 3), np.float32)
    _, out = jax.eval_shape(
        lambda v, x: CLIP(config).apply(v, x, taps=taps, method="encode_image"),
        abstract_variables(config), images)
    for tap in taps:
        assert out[tap].shape == (2, *tap_shape(config, tap)), tap


def test_rn50_sizes_as_published():
    config = get_config("RN50")
    assert [tap_shape(config, f"layer{i}") for i in (1, 2, 3, 4)] == [
        (56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]
    sizes = tap_nbytes(config, ("layer1", "layer4"), num_images=16 * 37, views=10)
    assert sizes == {"layer1": 256 * 56 * 56 * 4 * 16 * 37 * 10,
                     "layer4": 2048 * 7 * 7 * 4 * 16 * 37 * 10}
    vit = get_config("ViT-B/16")
    assert tap_nbytes(vit, ("block6",), 3) == {"block6": 197 * 768 * 4 * 3}


def test_unknown_tap():
    with pytest.raises(ConfigError, match="unknown tap 'block1' for RN50"):
        tap_shape(get_config("RN50"), "block1")
