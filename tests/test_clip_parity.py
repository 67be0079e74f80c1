"""Parity: our Flax CLIP loaded from each real checkpoint format == the PyTorch reference.

For the tiny variants every format is written from one random reference
model and loaded with ``load_clip``; L2-normalised image and text
embeddings and every intermediate tap must agree to 1e-4 (max abs), and the
frozen pieces LDC uses (ResNet ``attnpool``; ViT ``ln_post``, ``proj``) are
compared on their own. Full-size ViT-B/32 (HF) and RN50 (open_clip) run
once each, marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import load_clip
from clip_checkpoints import (
    hf_model, hf_reference, l2n, openai_layout_model, openai_reference, random_images,
    compiled, random_tokens, save_hf_dir, save_state_dict, save_torchscript,
)
from oracles import lazy

pytestmark = pytest.mark.oracle
torch = lazy("torch")

TOL = 1e-4


def _writers(variant):
    """(format name, writer(model, tmp_path) -> weights path) for each format of ``variant``."""
    config = get_config(variant)
    out = [
        ("openai.pt", lambda m, d: save_state_dict(m, str(d / "model.pt"))),
        ("openai.bin", lambda m, d: save_state_dict(m, str(d / "model.bin"))),
        ("openai.safetensors", lambda m, d: save_state_dict(m, str(d / "model.safetensors"))),
        ("openai-torchscript.pt", lambda m, d: save_torchscript(m, config, str(d / "jit.pt"))),
    ]
    if config.is_vit:
        out += [("hf-safetensors", lambda m, d: save_hf_dir(m, str(d / "hf"))),
                ("hf-bin", lambda m, d: save_hf_dir(m, str(d / "hf"), fmt="bin"))]
    return out


CASES = [(v, name, writer) for v in ("tiny-vit", "tiny-rn") for name, writer in _writers(v)]


@pytest.fixture(scope="module")
def references():
    """One reference model per (variant, layout) and its outputs on fixed inputs."""
    cache = {}

    def get(variant, layout):
        if (variant, layout) not in cache:
            config = get_config(variant)
            images, tokens = random_images(config, 3, seed=1), random_tokens(4, seed=2)
            if layout == "hf":
                model = hf_model(config, seed=3)
                ref = hf_reference(model, images, tokens)
            else:
                model = openai_layout_model(config, seed=3)
                ref = openai_reference(model, images, tokens)
            cache[variant, layout] = (model, images, tokens, ref)
        return cache[variant, layout]

    return get


def assert_close(ours, ref, what):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= TOL * scale, f"{what}: max abs diff {err:.3g} > {TOL * scale:.3g}"


def check_parity(loaded, images, tokens, ref, text=True):
    config = loaded.config
    emb, taps = compiled(config, "encode_image", taps=config.tap_names())(loaded.params, images)
    assert_close(l2n(emb), l2n(ref["image"]), "image embedding")
    alone = compiled(config, "encode_image")(loaded.params, images)[0]  # no taps: fewer rows
    assert_close(l2n(alone), l2n(ref["image"]), "image embedding without taps")
    if text:
        ours = compiled(config, "encode_text")(loaded.params, tokens.astype(np.int32))
        assert_close(l2n(ours), l2n(ref["text"]), "text embedding")
    assert sorted(taps) == sorted(ref["taps"]) == sorted(config.tap_names())
    for name in taps:
        assert_close(taps[name], ref["taps"][name], name)


@pytest.mark.parametrize("variant,fmt,writer", CASES, ids=[f"{v}-{n}" for v, n, _ in CASES])
def test_tiny_parity_every_format(variant, fmt, writer, references, tmp_path):
    model, images, tokens, ref = references(variant, "hf" if fmt.startswith("hf") else "openai")
    loaded = load_clip(variant, writer(model, tmp_path))
    assert not loaded.is_random and loaded.weights_id.startswith("sha256:")
    check_parity(loaded, images, tokens, ref)


def test_resnet_attnpool_alone(references, tmp_path):
    """attnpool(layer4) is the embedding; on any feature map it equals torch's attnpool."""
    model, images, tokens, ref = references("tiny-rn", "openai")
    loaded = load_clip("tiny-rn", save_state_dict(model, str(tmp_path / "rn.safetensors")))
    emb, taps = compiled(loaded.config, "encode_image", taps=loaded.config.tap_names())(
        loaded.params, images)
    pooled = loaded.model.apply(loaded.params, taps["layer4"], method="attnpool")
    assert_close(pooled, emb, "attnpool(layer4) vs embedding")
    fmap = np.random.default_rng(5).standard_normal(taps["layer4"].shape).astype(np.float32)
    with torch.no_grad():
        want = model.visual.attnpool(torch.from_numpy(fmap.transpose(0, 3, 1, 2))).numpy()
    assert_close(loaded.model.apply(loaded.params, fmap, method="attnpool"), want, "attnpool")


@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_vit_ln_post_and_proj_alone(layout, references, tmp_path):
    """proj(ln_post(cls after the last block)) is the embedding; each piece equals torch's."""
    model, images, tokens, ref = references("tiny-vit", layout)
    path = (save_hf_dir(model, str(tmp_path / "hf")) if layout == "hf"
            else save_state_dict(model, str(tmp_path / "vit.pt")))
    loaded = load_clip("tiny-vit", path)
    last = f"block{loaded.config.vision_layers}"
    emb, taps = compiled(loaded.config, "encode_image", taps=loaded.config.tap_names())(
        loaded.params, images)
    normed = loaded.model.apply(loaded.params, taps[last][:, 0], method="ln_post")
    assert_close(loaded.model.apply(loaded.params, normed, method="proj"), emb, "proj(ln_post)")
    tokens_in = np.random.default_rng(6).standard_normal((2, 5, 128)).astype(np.float32)
    x = torch.from_numpy(tokens_in)
    with torch.no_grad():
        if layout == "hf":
            want_ln = model.vision_model.post_layernorm(x).numpy()
            want_proj = model.visual_projection(x).numpy()
        else:
            want_ln = model.visual.ln_post(x).numpy()
            want_proj = (x @ model.visual.proj).numpy()
    assert_close(loaded.model.apply(loaded.params, tokens_in, method="ln_post"), want_ln, "ln_post")
    assert_close(loaded.model.apply(loaded.params, tokens_in, method="proj"), want_proj, "proj")


@pytest.mark.slow
def test_full_vit_b32_hf_parity(tmp_path):
    config = get_config("ViT-B/32")
    model = hf_model(config, seed=0)
    images, tokens = random_images(config, 2, seed=1), random_tokens(2, seed=2)
    ref = hf_reference(model, images, tokens)
    loaded = load_clip("ViT-B/32", save_hf_dir(model, str(tmp_path / "hf")))
    check_parity(loaded, images, tokens, ref)


@pytest.mark.slow
def test_full_rn50_openai_parity(tmp_path):
    config = get_config("RN50")
    model = openai_layout_model(config, seed=0)
    images, tokens = random_images(config, 2, seed=1), random_tokens(2, seed=2)
    ref = openai_reference(model, images, tokens)
    loaded = load_clip("RN50", save_state_dict(model, str(tmp_path / "RN50.safetensors")))
    # RN50's text tower is ViT-B/32's (width 512, 12 layers), checked in the test above.
    check_parity(loaded, images, tokens, ref, text=False)
