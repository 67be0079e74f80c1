"""Reference PyTorch CLIPs with random weights, written in the real checkpoint formats.

Helpers only (no tests): imported by the parity, loading and embed tests;
importable without torch (the oracles are imported at first use).
The oracles are open_clip's ``CLIP`` (OpenAI layout, ViT and ModifiedResNet)
and transformers' ``CLIPModel`` (HF layout, ViT), built from the same
architecture numbers as our variant table.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from jaxclip_fs.clip.model import CLIP
from jaxclip_fs.clip.variants import CLIPConfig
from oracles import lazy

torch = lazy("torch")

SOT, EOT = 49406, 49407


def openai_layout_model(config: CLIPConfig, seed: int = 0):
    """open_clip ``CLIP`` of ``config``'s architecture; BatchNorms get random statistics."""
    from open_clip.model import CLIP as OpenClipCLIP

    torch.manual_seed(seed)
    vision = dict(layers=config.vision_layers, width=config.vision_width,
                  image_size=config.image_size, head_width=64)
    if config.is_vit:
        vision["patch_size"] = config.vision_patch_size
    text = dict(context_length=config.context_length, vocab_size=config.vocab_size,
                width=config.text_width, heads=config.text_heads, layers=config.text_layers)
    model = OpenClipCLIP(config.embed_dim, vision, text, quick_gelu=config.act == "quick_gelu")
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # open_clip inits bn3 to 0 and stats to 0/1
            c = module.num_features
            module.weight.data = torch.rand(c, generator=gen) + 0.5
            module.bias.data = torch.randn(c, generator=gen) * 0.1
            module.running_mean.data = torch.randn(c, generator=gen) * 0.1
            module.running_var.data = torch.rand(c, generator=gen) + 0.5
    return model.eval()


def hf_model(config: CLIPConfig, seed: int = 0):
    """transformers ``CLIPModel`` of ``config``'s ViT architecture with random weights.

    Built on the meta device and filled directly (weights and biases N(0, 0.02),
    LayerNorms 1/0), which is 3x faster than transformers' own init at full size.
    """
    from transformers import CLIPConfig as HFConfig, CLIPModel

    hf_config = HFConfig(
        projection_dim=config.embed_dim,
        text_config=dict(hidden_size=config.text_width, intermediate_size=config.text_mlp_dim,
                         num_hidden_layers=config.text_layers,
                         num_attention_heads=config.text_heads,
                         max_position_embeddings=config.context_length,
                         vocab_size=config.vocab_size, hidden_act=config.act),
        vision_config=dict(hidden_size=config.vision_width,
                           intermediate_size=config.vision_mlp_dim,
                           num_hidden_layers=config.vision_layers,
                           num_attention_heads=config.vision_heads,
                           image_size=config.image_size, patch_size=config.vision_patch_size,
                           hidden_act=config.act),
    )
    with torch.device("meta"):
        model = CLIPModel(hf_config)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                param.fill_(1.0) if name.endswith("weight") else param.zero_()
            elif name == "logit_scale":
                param.fill_(hf_config.logit_scale_init_value)
            else:
                param.normal_(0.0, 0.02, generator=gen)
        for name, buf in model.named_buffers():  # to_empty left them uninitialised
            assert name.endswith("position_ids"), name
            buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    return model.eval()


# --- writing checkpoints ------------------------------------------------------------------


def save_hf_dir(model, directory: str, fmt: str = "safetensors") -> str:
    """An HF model directory: ``save_pretrained`` (safetensors) or legacy ``pytorch_model.bin``."""
    model.save_pretrained(directory)
    if fmt == "bin":
        os.remove(os.path.join(directory, "model.safetensors"))
        torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
    return directory


def save_state_dict(model, path: str) -> str:
    """The model's state dict as ``.pt``/``.bin`` (torch.save) or ``.safetensors``."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def save_torchscript(model, config: CLIPConfig, path: str) -> str:
    """A traced TorchScript archive, as OpenAI released its ``.pt`` checkpoints."""
    size = config.image_size
    traced = torch.jit.trace_module(
        model, {"encode_image": torch.zeros(1, 3, size, size),
                "encode_text": torch.zeros(1, config.context_length, dtype=torch.long)},
        check_trace=False)
    traced.save(path)
    return path


# --- inputs and reference outputs ---------------------------------------------------------


def random_images(config: CLIPConfig, n: int, seed: int = 0) -> np.ndarray:
    """float32 [n, S, S, 3] standard normal (already 'normalised' images)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, config.image_size, config.image_size, 3)).astype(np.float32)


def random_tokens(n: int, seed: int = 0, length: int = 77) -> np.ndarray:
    """int64 [n, length]: sot, random ids, eot, zero padding (varied lengths incl. full)."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, length), np.int64)
    for i in range(n):
        body = int(rng.integers(0, length - 1)) if i else length - 2
        tokens[i, 0] = SOT
        tokens[i, 1:1 + body] = rng.integers(1, SOT, body)
        tokens[i, 1 + body] = EOT
    return tokens


def openai_reference(model, images: np.ndarray, tokens: np.ndarray) -> dict:
    """open_clip outputs: ``image`` [n, E], ``text`` [m, E], ``taps`` (our names, NHWC)."""
    taps, hooks = {}, []
    if hasattr(model.visual, "layer1"):
        for i in range(1, 5):
            hooks.append(getattr(model.visual, f"layer{i}").register_forward_hook(
                lambda m, inp, out, i=i: taps.__setitem__(f"layer{i}",
                                                          out.permute(0, 2, 3, 1).numpy())))
    else:
        for i, block in enumerate(model.visual.transformer.resblocks, start=1):
            hooks.append(block.register_forward_hook(
                lambda m, inp, out, i=i: taps.__setitem__(f"block{i}", out.numpy())))
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
        text = model.encode_text(torch.from_numpy(tokens)).numpy()
    for hook in hooks:
        hook.remove()
    return {"image": image, "text": text, "taps": taps}


def hf_reference(model, images: np.ndarray, tokens: np.ndarray) -> dict:
    """transformers outputs: ``image``, ``text`` (projected) and ``taps`` from ``hidden_states``."""
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens),
                    pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
                    output_hidden_states=True)
    hidden = out.vision_model_output.hidden_states  # [0] = embeddings, [i] = after layer i
    taps = {f"block{i}": hidden[i].numpy() for i in range(1, len(hidden))}
    return {"image": out.image_embeds.numpy(), "text": out.text_embeds.numpy(), "taps": taps}


@functools.lru_cache(maxsize=None)
def compiled(config: CLIPConfig, method: str, **kwargs):
    """``jit(lambda variables, x: CLIP(config).apply(variables, x, method=method, **kwargs))``.

    Cached per (config, method, kwargs): tests share one compilation per shape
    (eager first runs compile every op separately and cost seconds per test).
    """
    model = CLIP(config)
    return jax.jit(lambda variables, x: model.apply(variables, x, method=method, **kwargs))


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
