"""The Flax CLIP itself: variant table, tree shapes, taps, frozen pieces, adapters, dtype."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs.clip.layers import ResidualAttentionBlock
from jaxclip_fs.clip.model import (
    CLIP, abstract_variables, add_adapters, flatten_variables, init_variables,
)
from jaxclip_fs.clip.variants import (
    _TABLE, CLIPConfig, architecture_diff, config_from_openai_shapes, get_config, match_variant,
)
from jaxclip_fs.convert.assemble import assemble
from jaxclip_fs.convert.layouts import OPENAI
from jaxclip_fs.errors import ConfigError
from clip_checkpoints import compiled
from oracles import lazy

torch = lazy("torch")

OPENAI_VARIANTS = {  # our name -> open_clip's model config name
    "RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16",
    "RN50x64": "RN50x64", "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336",
}


@pytest.fixture(scope="module")
def tiny_vit():
    config = get_config("tiny-vit")
    return config, init_variables(config, seed=0)


def test_table_names_and_aliases():
    assert set(OPENAI_VARIANTS) | {"tiny-vit", "tiny-rn"} == set(_TABLE)  # the whole table
    assert get_config("ViT-B-32") == get_config("ViT-B/32")
    assert get_config("ViT-L-14-336").name == "ViT-L/14@336px"
    with pytest.raises(ConfigError, match="unknown backbone 'ViT-H/14'.*RN50.*tiny-rn"):
        get_config("ViT-H/14")
    for name in ("tiny-vit", "tiny-rn"):  # any CLIP tokenizer's ids must fit
        assert get_config(name).vocab_size == 49408 and get_config(name).context_length == 77


def open_clip_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of open_clip's model ``name`` (built on the meta device: no memory)."""
    import open_clip
    from open_clip.model import CLIP as OpenClipCLIP

    with torch.device("meta"):
        reference = OpenClipCLIP(**open_clip.get_model_config(OPENAI_VARIANTS[name]),
                                 quick_gelu=True)
    return {k: tuple(v.shape) for k, v in reference.state_dict().items()}


@pytest.mark.oracle
def test_table_matches_open_clip_architectures():
    for name in OPENAI_VARIANTS:
        found = config_from_openai_shapes(open_clip_shapes(name))
        assert architecture_diff(found, get_config(name)) == [], name
        assert match_variant(found) == name


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["ViT-B/16", "ViT-L/14@336px", "RN50", "RN50x4"])
def test_param_tree_matches_open_clip(name):
    """Every open_clip tensor maps onto our tree with the right shape, nothing left over."""
    shapes = open_clip_shapes(name)
    config = get_config(name)
    zeros = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}  # no memory
    tree = assemble(abstract_variables(config), zeros, OPENAI, name, "open_clip")
    assert {k: v.shape for k, v in flatten_variables(tree).items()} == \
        {k: v.shape for k, v in flatten_variables(abstract_variables(config)).items()}


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_taps_shapes_and_names(name):
    config = get_config(name)
    variables = init_variables(config)
    images = jnp.zeros((2, config.image_size, config.image_size, 3))
    emb, taps = compiled(config, "encode_image", taps=config.tap_names())(variables, images)
    assert emb.shape == (2, config.embed_dim) and emb.dtype == jnp.float32
    if config.is_vit:
        for i in range(1, config.vision_layers + 1):
            assert taps[f"block{i}"].shape == (2, config.num_patches + 1, config.vision_width)
    else:
        s, w = config.image_size, config.vision_width
        for i in range(1, 5):  # layer_i: 4 w 2^(i-1) channels at S / 2^(i+1)
            assert taps[f"layer{i}"].shape == (2, s >> (i + 1), s >> (i + 1), 4 * w << (i - 1))
    with pytest.raises(ConfigError, match="unknown tap 'block99'"):
        CLIP(config).apply(variables, images, taps=("block99",), method="encode_image")


def test_frozen_pieces_only_on_their_tower(tiny_vit):
    config, variables = tiny_vit
    with pytest.raises(ConfigError, match="attnpool exists only for ResNet"):
        CLIP(config).apply(variables, jnp.zeros((1, 2, 2, 256)), method="attnpool")
    rn = get_config("tiny-rn")
    with pytest.raises(ConfigError, match="proj exists only for ViT"):
        CLIP(rn).apply(init_variables(rn), jnp.zeros((1, 256)), method="proj")


def test_random_init_is_deterministic_and_shaped_like_init():
    config = get_config("tiny-rn")
    a, b, c = init_variables(config, 0), init_variables(config, 0), init_variables(config, 1)
    shapes = lambda t: {k: (v.shape, v.dtype) for k, v in flatten_variables(t).items()}
    assert shapes(a) == shapes(abstract_variables(config))
    flat_a, flat_b, flat_c = (flatten_variables(t) for t in (a, b, c))
    assert all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)
    kernel = ("params", "visual", "layer2", "block1", "conv2", "kernel")  # [3, 3, 16, 16]
    assert not np.array_equal(flat_a[kernel], flat_c[kernel])
    assert abs(float(np.std(flat_a[kernel])) - (9 * 16) ** -0.5) < 0.02  # N(0, 1/fan_in)
    assert np.all(np.asarray(flat_a[("batch_stats", "visual", "bn1", "var")]) == 1)
    assert np.all(np.asarray(flat_a[("params", "visual", "bn3", "scale")]) == 1)  # stem
    assert not np.any(flat_a[("params", "visual", "layer1", "block1", "bn3", "scale")])
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    emb = compiled(config, "encode_image")(a, images)[0]
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # a random model still sees its input


def test_bfloat16_compute_keeps_float32_params(tiny_vit):
    config, variables = tiny_vit
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    tokens = np.zeros((2, 77), np.int32)
    bf16_model = CLIP(config, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(
        jax.eval_shape(bf16_model.init, jax.random.PRNGKey(0), images, tokens)))
    f32 = np.asarray(compiled(config, "encode_image")(variables, images)[0])
    bf16 = jax.jit(lambda v, x: bf16_model.apply(v, x, method="encode_image"))(variables, images)
    assert bf16[0].dtype == jnp.float32 and bf16[1] == {}
    ours = np.asarray(bf16[0])
    cos = np.sum(ours * f32, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(f32, axis=-1))
    assert cos.min() > 0.99 and np.abs(ours - f32).max() > 1e-4  # close, but really bf16


# --- IMO adapters -------------------------------------------------------------------------


def _numpy_block(x, p, heads, adapter_scale=None):
    """Independent NumPy block: x + attn(ln_1 x); x + mlp(ln_2 x) [+ s Up(ReLU(Down x))]."""
    def ln(v, q):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-5) * q["scale"] + q["bias"]

    def dense(v, q):
        return v @ q["kernel"] + q["bias"]

    b, t, w = x.shape
    d = w // heads
    qkv = dense(ln(x, p["ln_1"]), p["attn"]["qkv"]).reshape(b, t, 3, heads, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    x = x + dense(np.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, w), p["attn"]["out"])
    h = dense(ln(x, p["ln_2"]), p["mlp"]["c_fc"])
    y = x + dense(h / (1 + np.exp(-1.702 * h)), p["mlp"]["c_proj"])
    if adapter_scale is not None:
        y = y + adapter_scale * dense(np.maximum(dense(x, p["adapter"]["down"]), 0),
                                      p["adapter"]["up"])
    return y


def test_adapter_block_matches_numpy_formula():
    width, heads, dim = 16, 2, 4
    block = ResidualAttentionBlock(heads, 4 * width, adapter_dim=dim, adapter_scale=0.03)
    x = np.random.default_rng(0).standard_normal((2, 5, width)).astype(np.float32)
    params = jax.jit(block.init)(jax.random.PRNGKey(0), x)["params"]
    up = params["adapter"]["up"]
    assert not np.any(up["kernel"]) and not np.any(up["bias"])  # zero-initialised Up
    assert not np.any(params["adapter"]["down"]["bias"])
    assert np.abs(params["adapter"]["down"]["kernel"]).max() <= 1 / np.sqrt(width)
    params = jax.tree_util.tree_map(  # make every piece matter
        lambda a: a + 0.1 * np.random.default_rng(a.size).standard_normal(a.shape), params)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    ours = jax.jit(block.apply)({"params": params}, x)
    np.testing.assert_allclose(ours, _numpy_block(x.astype(np.float64), params, heads, 0.03),
                               rtol=1e-4, atol=1e-5)
    plain = ResidualAttentionBlock(heads, 4 * width)
    without = {k: v for k, v in params.items() if k != "adapter"}
    np.testing.assert_allclose(jax.jit(plain.apply)({"params": without}, x),
                               _numpy_block(x.astype(np.float64), without, heads),
                               rtol=1e-4, atol=1e-5)


def test_adapters_fresh_are_identity_and_dropout_is_keyed(tiny_vit):
    config, variables = tiny_vit
    assert "adapter" not in variables["params"]["visual"]["block1"]  # adapter_dim=0: plain tree
    images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    plain = compiled(config, "encode_image")(variables, images)[0]
    adapted_config, adapted = add_adapters(variables, config, jax.random.PRNGKey(7))
    assert "adapter" not in variables["params"]["visual"]["block1"]  # input untouched
    assert adapted_config.adapter_dim == 64 and adapted_config.adapter_scale == 0.03
    model = CLIP(adapted_config)
    chex.assert_trees_all_equal_shapes_and_dtypes(adapted, jax.eval_shape(
        model.init, jax.random.PRNGKey(0), images, np.zeros((1, 77), np.int32)))
    encode = jax.jit(lambda v, key, deterministic: model.apply(
        v, images, deterministic=deterministic, rngs={"dropout": key}, method="encode_image")[0],
        static_argnums=2)
    fresh = encode(adapted, jax.random.PRNGKey(0), True)
    np.testing.assert_allclose(fresh, plain, atol=1e-5)  # Up = 0: the plain CLIP
    noise = lambda a: np.random.default_rng(a.size).standard_normal(a.shape).astype(np.float32)
    # Pretend Up was trained (with random values: a constant shift would vanish in LayerNorm).
    trained = jax.tree_util.tree_map_with_path(
        lambda path, a: a + noise(a) if "up" in jax.tree_util.keystr(path) else a, adapted)
    run = lambda key: encode(trained, key, False)
    det = encode(trained, jax.random.PRNGKey(0), True)
    assert np.abs(det - plain).max() > 1e-3
    assert np.array_equal(run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1)))
    assert not np.allclose(run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2)))
    assert not np.allclose(run(jax.random.PRNGKey(1)), det)


def test_adapters_refused_for_resnets():
    rn = get_config("tiny-rn")
    with pytest.raises(ConfigError, match="adapter_dim needs a ViT"):
        add_adapters(init_variables(rn), rn, jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="adapter_dim needs a ViT"):
        dataclasses.replace(rn, adapter_dim=8)


def test_config_round_trips_through_dict():
    config = get_config("RN50x4", act="gelu")
    assert CLIPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown fields"):
        CLIPConfig.from_dict({**config.to_dict(), "depth": 3})
