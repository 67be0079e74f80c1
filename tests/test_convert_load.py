"""Loading: weights specs, architecture checks, one-line errors, hub cache, convert round trip."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import zipfile

import huggingface_hub.constants
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxclip_fs.cli import main
from jaxclip_fs.clip.model import add_adapters, flatten_variables
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import hub, load_clip
from jaxclip_fs.convert.saved import save_converted
from jaxclip_fs.convert.tensors import read_safetensors
from jaxclip_fs.errors import CheckpointError, ConfigError
from clip_checkpoints import (
    hf_model, openai_layout_model, save_hf_dir, save_state_dict, save_torchscript,
)
from oracles import lazy

torch = lazy("torch")


@pytest.fixture(scope="module")
def vit_model():
    return openai_layout_model(get_config("tiny-vit"), seed=0)


@pytest.fixture(scope="module")
def rn_model():
    return openai_layout_model(get_config("tiny-rn"), seed=0)


@pytest.fixture(scope="module")
def hf_vit():
    return hf_model(get_config("tiny-vit"), seed=0)


def same_params(a, b) -> bool:
    fa, fb = flatten_variables(a.params), flatten_variables(b.params)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in: {msg}"
    return msg


# --- weights specs ------------------------------------------------------------------------


def test_random_weights_are_labelled_and_seeded():
    a, b, c = (load_clip("tiny-rn", w) for w in ("random", "random:0", "random:1"))
    assert a.is_random and a.weights_id == "random(seed=0)" and c.weights_id == "random(seed=1)"
    assert a.source_dir is None and same_params(a, b) and not same_params(a, c)
    with pytest.raises(CheckpointError, match="needs an explicit model.backbone"):
        load_clip(None, "random")
    with pytest.raises(CheckpointError, match="random:SEED"):
        load_clip("tiny-rn", "random:x")


@pytest.mark.oracle
def test_weights_id_is_content_based(vit_model, tmp_path):
    a = load_clip("tiny-vit", save_state_dict(vit_model, str(tmp_path / "a.safetensors")))
    os.makedirs(tmp_path / "elsewhere")
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "elsewhere" / "b.safetensors")
    b = load_clip("tiny-vit", str(tmp_path / "elsewhere" / "b.safetensors"))
    other = openai_layout_model(get_config("tiny-vit"), seed=9)
    c = load_clip("tiny-vit", save_state_dict(other, str(tmp_path / "c.safetensors")))
    assert a.weights_id == b.weights_id != c.weights_id
    assert a.weights_id.startswith("sha256:") and same_params(a, b)


@pytest.mark.oracle
def test_auto_backbone_takes_the_checkpoints_architecture(rn_model, tmp_path):
    loaded = load_clip("auto", save_state_dict(rn_model, str(tmp_path / "rn.pt")))
    assert loaded.config.name == "tiny-rn"
    custom = dataclasses.replace(get_config("tiny-vit"), vision_layers=2, embed_dim=32)
    loaded = load_clip(None, save_state_dict(openai_layout_model(custom), str(tmp_path / "c.pt")))
    assert loaded.config.name == "custom" and loaded.config.vision_layers == 2
    assert loaded.model.apply(loaded.params, np.zeros((1, 32, 32, 3), np.float32),
                              method="encode_image")[0].shape == (1, 32)


@pytest.mark.oracle
def test_hf_config_declares_the_activation(tmp_path):
    config = dataclasses.replace(get_config("tiny-vit"), act="gelu")
    loaded = load_clip("tiny-vit", save_hf_dir(hf_model(config), str(tmp_path / "hf")))
    assert loaded.config.act == "gelu" and loaded.config.name == "tiny-vit"
    assert loaded.source_dir == str(tmp_path / "hf")


@pytest.mark.oracle
def test_sharded_hf_checkpoint(hf_vit, tmp_path):
    whole = load_clip("tiny-vit", save_hf_dir(hf_vit, str(tmp_path / "whole")))
    hf_vit.save_pretrained(str(tmp_path / "sharded"), max_shard_size="8MB")
    assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
    sharded = load_clip("tiny-vit", str(tmp_path / "sharded"))
    assert same_params(whole, sharded)


@pytest.mark.oracle
def test_open_clip_hub_dir_and_half_precision(vit_model, tmp_path):
    """open_clip's hub layout declares the activation; fp16 / bf16 tensors load as float32."""
    bare = load_clip("tiny-vit", save_state_dict(vit_model, str(tmp_path / "f32.pt")))
    os.makedirs(tmp_path / "oc")
    save_state_dict(vit_model, str(tmp_path / "oc" / "open_clip_model.safetensors"))
    (tmp_path / "oc" / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"quick_gelu": False}}))
    save_file({"cls_token": np.zeros((1, 1, 8), np.float32)},  # timm-format weights beside
              str(tmp_path / "oc" / "model.safetensors"))  # (as in timm/*_clip.openai repos)
    hub_dir = load_clip("tiny-vit", str(tmp_path / "oc"))
    assert hub_dir.config.act == "gelu" and bare.config.act == "quick_gelu"
    assert same_params(bare, hub_dir)
    for dtype, name in ((torch.float16, "f16.pt"), (torch.bfloat16, "bf16.safetensors")):
        half = save_state_dict(openai_layout_model(get_config("tiny-vit")).to(dtype),
                               str(tmp_path / name))
        loaded = flatten_variables(load_clip("tiny-vit", half).params)
        want = vit_model.visual.proj.detach().to(dtype).float().numpy()
        np.testing.assert_array_equal(loaded[("params", "visual", "proj")], want)


def test_variant_name_as_weights_means_its_openai_release(hub_cache):
    with pytest.raises(CheckpointError, match="openai/clip-vit-base-patch16"):
        load_clip(None, "ViT-B/16")
    with pytest.raises(CheckpointError, match="is OpenAI's RN50, not ViT-B/32"):
        load_clip("ViT-B/32", "RN50")


# --- safetensors files (read with the safetensors library) ------------------------------------


def test_safetensors_floats_come_back_float32_and_integers_as_they_are(tmp_path):
    path = str(tmp_path / "t.safetensors")
    want = {"half": np.array([[0.5, -1.25], [3.0, 65504.0]], np.float16),
            "brain": np.array([1.5, -2.25, 3.0e38], jnp.bfloat16),
            "double": np.arange(3, dtype=np.float64) / 3, "long": np.array([7, -8], np.int64),
            "byte": np.array([1, 255], np.uint8), "empty": np.zeros((0, 4), np.float32)}
    save_file(want, path)
    got = read_safetensors(path)
    assert got.keys() == want.keys()
    for name in ("half", "brain", "double", "empty"):
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name].astype(np.float32))
    for name in ("long", "byte"):
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def test_broken_safetensors_files_are_one_line_errors_naming_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.ones((8, 8), np.float32)}, str(path))
    whole = path.read_bytes()
    for cut in (0, 5, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:cut])
        with pytest.raises(CheckpointError) as e:
            read_safetensors(str(path))
        one_line_error(e, "w.safetensors", "truncated")
    path.write_bytes((16).to_bytes(8, "little") + b"not a json head!")
    with pytest.raises(CheckpointError) as e:
        read_safetensors(str(path))
    one_line_error(e, "w.safetensors", "not a safetensors file")
    header = b'{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}'  # complex: not a weight
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(CheckpointError) as e:
        read_safetensors(str(path))
    one_line_error(e, "w.safetensors", "unsupported dtype")


# --- one-line errors ----------------------------------------------------------------------


@pytest.mark.oracle
def test_variant_mismatch_names_both(vit_model, hf_vit, tmp_path):
    path = save_state_dict(vit_model, str(tmp_path / "vit.pt"))
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-rn", path)
    one_line_error(e, "vit.pt", "holds tiny-vit, not tiny-rn", "vision_layers")
    patch16 = dataclasses.replace(get_config("tiny-vit"), vision_patch_size=16)  # "B/16 vs B/32"
    hf_dir = save_hf_dir(hf_model(patch16), str(tmp_path / "hf16"))
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", hf_dir)
    one_line_error(e, "hf16", "not tiny-vit", "vision_patch_size 16 != 8")


@pytest.mark.oracle
def test_missing_unexpected_and_misshaped_keys_in_one_line(vit_model, tmp_path):
    state = {k: v.numpy().copy() for k, v in vit_model.state_dict().items()}
    del state["visual.transformer.resblocks.1.ln_2.weight"]
    state["visual.extra_head.weight"] = np.zeros(3, np.float32)
    state["visual.ln_post.bias"] = np.zeros(7, np.float32)
    path = str(tmp_path / "broken.safetensors")
    save_file(state, path)
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", path)
    one_line_error(e, "broken.safetensors", "does not fit tiny-vit (openai layout)",
                   "missing keys: visual.transformer.resblocks.1.ln_2.weight",
                   "unexpected keys: visual.extra_head.weight",
                   "mis-shaped: visual.ln_post.bias [7] (expected [128])")


@pytest.mark.oracle
def test_hf_missing_qkv_part_is_named(hf_vit, tmp_path):
    directory = save_hf_dir(hf_vit, str(tmp_path / "hf"))
    weights = os.path.join(directory, "model.safetensors")
    state = read_safetensors(weights)
    del state["vision_model.encoder.layers.2.self_attn.k_proj.bias"]
    save_file(state, weights)
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", directory)
    one_line_error(e, "missing keys: vision_model.encoder.layers.2.self_attn.k_proj.bias",
                   "(hf layout)")


@pytest.mark.oracle
@pytest.mark.parametrize("fmt", ["safetensors", "bin", "torchscript", "hf"])
def test_truncated_files_fail_in_one_line(fmt, vit_model, hf_vit, tmp_path):
    config = get_config("tiny-vit")
    if fmt == "hf":
        path = os.path.join(save_hf_dir(hf_vit, str(tmp_path / "hf")), "model.safetensors")
        spec = str(tmp_path / "hf")
    elif fmt == "torchscript":
        path = spec = save_torchscript(vit_model, config, str(tmp_path / "jit.pt"))
    else:
        path = spec = save_state_dict(vit_model, str(tmp_path / f"model.{fmt}"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", spec)
    one_line_error(e, os.path.basename(path))
    assert "truncated" in str(e.value)


def test_foreign_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(7, 256)) * 4)
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", str(junk))
    one_line_error(e, "junk.pt", "not a checkpoint (unknown binary data")
    other = str(tmp_path / "other.safetensors")
    save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, other)
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", other)
    one_line_error(e, "not a CLIP state dict", "encoder.weight")
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", str(tmp_path))
    one_line_error(e, "no CLIP weights in this directory")
    for spec in (str(tmp_path / "nope.pt"), "dir/nope.pt"):
        with pytest.raises(CheckpointError, match="no such checkpoint file"):
            load_clip("tiny-vit", spec)
    with pytest.raises(ConfigError, match="unknown backbone 'ViT-X'"):
        load_clip("ViT-X", "random")


@pytest.mark.oracle
def test_a_foreign_zip_is_not_a_pytorch_checkpoint(tmp_path):
    foreign_zip = tmp_path / "foreign.pt"  # a zip archive, as PyTorch's files are, but not one
    with zipfile.ZipFile(foreign_zip, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", str(foreign_zip))
    one_line_error(e, "foreign.pt", "cannot read as a PyTorch checkpoint")


# --- hub ----------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; ``add(repo, directory)`` puts a snapshot into it."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def add(repo_id: str, directory: str, commit: str = "a" * 40) -> str:
        repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(directory, repo_dir / "snapshots" / commit)
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text(commit)
        return commit

    return add


def test_hub_id_offline_without_cache_says_how_to_supply(hub_cache):
    with pytest.raises(CheckpointError) as e:
        load_clip("ViT-B/32", "openai")
    one_line_error(e, "openai/clip-vit-base-patch32", "HF_HUB_OFFLINE", "model.weights PATH",
                   "hf download", "model.weights random")
    with pytest.raises(CheckpointError, match="no published checkpoint for backbone 'tiny-vit'"):
        load_clip("tiny-vit", "openai")


@pytest.mark.oracle
def test_hub_id_from_the_local_cache(hub_cache, hf_vit, tmp_path, monkeypatch):
    directory = save_hf_dir(hf_vit, str(tmp_path / "hf"))
    commit = hub_cache("someone/tiny-clip", directory)
    loaded = load_clip("tiny-vit", "someone/tiny-clip")
    assert loaded.weights_id == f"hf:someone/tiny-clip@{commit}"
    assert loaded.source_dir.endswith(commit)
    assert same_params(loaded, load_clip("tiny-vit", directory))
    monkeypatch.setitem(hub.DEFAULT_HUB_IDS, "tiny-vit", "someone/tiny-clip")
    assert load_clip("tiny-vit", "openai").weights_id == loaded.weights_id


@pytest.mark.oracle
def test_openai_download_cache_is_used_first(vit_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(hub.OPENAI_CACHE_FILES, "tiny-vit", "tiny.pt")
    os.makedirs(tmp_path / ".cache" / "clip")
    path = save_torchscript(vit_model, get_config("tiny-vit"),
                            str(tmp_path / ".cache" / "clip" / "tiny.pt"))
    loaded = load_clip("tiny-vit", "openai")
    assert same_params(loaded, load_clip("tiny-vit", path)) and not loaded.is_random


@pytest.mark.oracle
def test_missing_torch_is_a_clear_error(vit_model, tmp_path, monkeypatch):
    path = save_state_dict(vit_model, str(tmp_path / "m.bin"))
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", path)
    one_line_error(e, "m.bin", "needs torch", "jaxclip-fs[torch]")


@pytest.mark.parametrize("torch_installed", [True, False])
@pytest.mark.parametrize("content, kind", [(b"<html>not found</html>\n", "a text file"),
                                           (b"", "an empty file"),
                                           (b"\x00\x01junk" * 50, "unknown binary data")])
def test_a_junk_bin_is_not_a_checkpoint_whether_or_not_torch_is_there(
        tmp_path, monkeypatch, torch_installed, content, kind):
    """A file that is neither a PyTorch zip / pickle nor safetensors is said to be no checkpoint;
    without torch it must not send the user off to install torch for it."""
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    if not torch_installed:
        monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(CheckpointError) as e:
        load_clip("tiny-vit", str(path))
    one_line_error(e, "pytorch_model.bin", f"not a checkpoint ({kind}")
    said = str(e.value).split(": ", 1)[1]  # (after the file's name, pytorch_model.bin)
    assert "install" not in said and "torch" not in said.replace("PyTorch", "")


# --- convert ------------------------------------------------------------------------------


@pytest.mark.oracle
def test_convert_round_trip_via_cli(rn_model, tmp_path, capsys):
    source = save_state_dict(rn_model, str(tmp_path / "rn.safetensors"))
    out = str(tmp_path / "converted")
    assert main(["convert", "--backbone", "tiny-rn", "--weights", source, "--out", out]) == 0
    original, converted = load_clip("tiny-rn", source), load_clip("tiny-rn", out)
    assert same_params(original, converted) and "batch_stats" in converted.params
    assert converted.weights_id == original.weights_id and not converted.is_random
    manifest = json.load(open(os.path.join(out, "jaxclip_fs_clip.json")))
    assert manifest["source"] == source and manifest["config"]["name"] == "tiny-rn"
    assert main(["convert", "--backbone", "tiny-rn", "--weights", source, "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="holds tiny-rn, not tiny-vit"):
        load_clip("tiny-vit", out)
    shutil.rmtree(os.path.join(out, "variables"))
    with pytest.raises(CheckpointError, match="incomplete converted directory"):
        load_clip("tiny-rn", out)


def test_converted_dir_keeps_adapters_and_random_label(tmp_path):
    base = load_clip("tiny-vit", "random:3")
    config, variables = add_adapters(base.params, base.config, jax.random.PRNGKey(0), 8)
    variables = jax.tree_util.tree_map(lambda a: a + 1.0, variables)  # "trained"
    out = str(tmp_path / "imo")
    save_converted(out, config, variables, base.weights_id, True, source="random:3")
    loaded = load_clip("tiny-vit", out)
    assert loaded.config.adapter_dim == 8 and loaded.is_random
    assert loaded.weights_id == "random(seed=3)"
    flat, want = flatten_variables(loaded.params), flatten_variables(variables)
    assert flat.keys() == want.keys() and all(np.array_equal(flat[k], want[k]) for k in flat)


@pytest.mark.parametrize("command", ["convert", "embed"])
def test_help_explains_the_weights_forms(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for needle in ("--weights", "--backbone", "--out", "openai", "random"):
        assert needle in text
    assert ("orbax" in text) if command == "convert" else ("L2-normalised" in text)


@pytest.mark.oracle
def test_torch_tensors_are_not_needed_for_safetensors(vit_model, tmp_path, monkeypatch):
    path = save_state_dict(vit_model, str(tmp_path / "m.safetensors"))
    expected = load_clip("tiny-vit", path)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    assert same_params(load_clip("tiny-vit", path), expected)
    monkeypatch.undo()
    assert isinstance(torch.zeros(1), torch.Tensor)  # the real module is back, untouched
