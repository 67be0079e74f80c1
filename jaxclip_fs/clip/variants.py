"""The CLIP variant table: one frozen config per architecture.

Names are spelled as OpenAI spells them (``RN50``, ``ViT-B/32``,
``ViT-L/14@336px``, ...); open_clip's spellings (``ViT-B-32``,
``ViT-L-14-336``) are accepted as aliases. ``tiny-vit`` and ``tiny-rn`` are
test variants: a few layers and small widths, but the real 77-token context
and 49408-token vocabulary so any CLIP tokenizer's ids fit.

A config can also be built from a checkpoint so that any size loads:
:func:`config_from_hf` reads a Hugging Face ``config.json``,
:func:`config_from_openai_shapes` infers it from an OpenAI / open_clip state
dict's tensor shapes (heads = width / 64, as OpenAI's ``build_model`` does).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxclip_fs.errors import CheckpointError, ConfigError

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Architecture of one CLIP model.

    ``vision_layers`` is an int for a vision transformer and a 4-tuple of
    bottleneck counts for a ModifiedResNet (``vision_patch_size`` is then
    ``None``). ``vision_width`` is the transformer width, or the ResNet stem
    width (the attention pool then works on ``32 * vision_width`` channels).

    ``adapter_dim > 0`` adds the IMO bottleneck adapter to every ViT image
    block (see :mod:`jaxclip_fs.clip.layers`); ``adapter_dim = 0`` is the plain
    CLIP, with exactly its parameter tree and outputs.
    """

    name: str
    embed_dim: int
    image_size: int
    vision_layers: int | tuple[int, int, int, int]
    vision_width: int
    vision_heads: int
    vision_patch_size: int | None
    vision_mlp_dim: int | None
    text_width: int
    text_heads: int
    text_layers: int
    text_mlp_dim: int
    context_length: int = 77
    vocab_size: int = 49408
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    adapter_dim: int = 0
    adapter_scale: float = 0.03
    adapter_dropout: float = 0.1

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"activation '{self.act}' unknown; use one of {ACTIVATIONS}")
        if isinstance(self.vision_layers, list):
            object.__setattr__(self, "vision_layers", tuple(self.vision_layers))
        if self.adapter_dim and not self.is_vit:
            raise ConfigError(f"{self.name}: adapter_dim needs a ViT image tower, not a ResNet")

    @property
    def is_vit(self) -> bool:
        return isinstance(self.vision_layers, int)

    @property
    def num_patches(self) -> int:
        """ViT tokens per image without the class token."""
        return (self.image_size // self.vision_patch_size) ** 2

    def tap_names(self) -> tuple[str, ...]:
        """Valid ``taps`` of ``encode_image``: ``block1..blockN`` or ``layer1..layer4``."""
        if self.is_vit:
            return tuple(f"block{i}" for i in range(1, self.vision_layers + 1))
        return ("layer1", "layer2", "layer3", "layer4")

    def architecture(self) -> dict[str, Any]:
        """The fields that shape the parameters and the forward pass (not the name)."""
        out = dataclasses.asdict(self)
        del out["name"]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"CLIP config has unknown fields {unknown}")
        return cls(**d)


def _vit(name, embed_dim, image_size, layers, width, patch, text_width, text_layers=12):
    return CLIPConfig(
        name=name, embed_dim=embed_dim, image_size=image_size, vision_layers=layers,
        vision_width=width, vision_heads=width // 64, vision_patch_size=patch,
        vision_mlp_dim=4 * width, text_width=text_width, text_heads=text_width // 64,
        text_layers=text_layers, text_mlp_dim=4 * text_width,
    )


def _resnet(name, embed_dim, image_size, layers, width, text_width, text_layers=12):
    return CLIPConfig(
        name=name, embed_dim=embed_dim, image_size=image_size, vision_layers=tuple(layers),
        vision_width=width, vision_heads=width * 32 // 64, vision_patch_size=None,
        vision_mlp_dim=None, text_width=text_width, text_heads=text_width // 64,
        text_layers=text_layers, text_mlp_dim=4 * text_width,
    )


_TABLE: dict[str, CLIPConfig] = {
    c.name: c
    for c in (
        _resnet("RN50", 1024, 224, (3, 4, 6, 3), 64, 512),
        _resnet("RN101", 512, 224, (3, 4, 23, 3), 64, 512),
        _resnet("RN50x4", 640, 288, (4, 6, 10, 6), 80, 640),
        _resnet("RN50x16", 768, 384, (6, 8, 18, 8), 96, 768),
        _resnet("RN50x64", 1024, 448, (3, 15, 36, 10), 128, 1024),
        _vit("ViT-B/32", 512, 224, 12, 768, 32, 512),
        _vit("ViT-B/16", 512, 224, 12, 768, 16, 512),
        _vit("ViT-L/14", 768, 224, 24, 1024, 14, 768),
        _vit("ViT-L/14@336px", 768, 336, 24, 1024, 14, 768),
        # Test variants: 2 heads of width 64 (so heads = width / 64 holds and a
        # bare state dict loads), tiny images, the real context and vocabulary.
        _vit("tiny-vit", 64, 32, 3, 128, 8, 128, text_layers=2),
        _resnet("tiny-rn", 64, 64, (1, 2, 1, 1), 8, 128, text_layers=2),
    )
}

_ALIASES = {
    "ViT-B-32": "ViT-B/32", "ViT-B-16": "ViT-B/16", "ViT-L-14": "ViT-L/14",
    "ViT-L-14-336": "ViT-L/14@336px", "ViT-L/14-336px": "ViT-L/14@336px",
    "ViT-L-14-336px": "ViT-L/14@336px",
}


def canonical_name(name: str) -> str:
    """The table spelling of ``name`` (accepts open_clip's ``ViT-B-32`` style).

    Raises:
      ConfigError: unknown name, listing the known ones.
    """
    name = _ALIASES.get(name, name)
    if name not in _TABLE:
        raise ConfigError(f"unknown backbone '{name}'; known: {', '.join(_TABLE)}")
    return name


def get_config(name: str, **overrides: Any) -> CLIPConfig:
    """The config of variant ``name``, with fields replaced by ``overrides``.

    Example: ``get_config("ViT-B/16", adapter_dim=64)`` for the IMO adapter.
    """
    return dataclasses.replace(_TABLE[canonical_name(name)], **overrides)


def match_variant(config: CLIPConfig) -> str | None:
    """Name of the table variant with ``config``'s architecture (adapter ignored), or None."""
    arch = _base_architecture(config)
    for name, known in _TABLE.items():
        if _base_architecture(known) == arch:
            return name
    return None


def architecture_diff(have: CLIPConfig, want: CLIPConfig) -> list[str]:
    """``["field have != want", ...]`` for the shape-defining fields that differ.

    The activation and the adapter fields are not compared: a checkpoint can
    declare its activation, and adapters are not part of released weights.
    """
    a, b = _base_architecture(have), _base_architecture(want)
    return [f"{k} {a[k]} != {b[k]}" for k in a if a[k] != b[k]]


def _base_architecture(config: CLIPConfig) -> dict[str, Any]:
    arch = config.architecture()
    for k in ("adapter_dim", "adapter_scale", "adapter_dropout", "act"):
        del arch[k]
    return arch


def config_from_hf(cfg: Mapping[str, Any], name: str = "custom", source: str = "config.json"
                   ) -> CLIPConfig:
    """A config from a Hugging Face ``CLIPModel`` ``config.json`` (ViT only).

    Missing entries take ``transformers``' ``CLIPTextConfig`` /
    ``CLIPVisionConfig`` defaults, as ``from_pretrained`` would.

    Raises:
      CheckpointError: not a CLIP config, or text and image activations differ.
    """
    if cfg.get("model_type", "clip") != "clip":
        raise CheckpointError(f"{source}: model_type '{cfg.get('model_type')}' is not 'clip'")
    text = dict(cfg.get("text_config") or cfg.get("text_config_dict") or {})
    vision = dict(cfg.get("vision_config") or cfg.get("vision_config_dict") or {})
    t_act, v_act = text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")
    if t_act != v_act or t_act not in ACTIVATIONS:
        raise CheckpointError(f"{source}: unsupported hidden_act text={t_act} vision={v_act}")
    t_eps, v_eps = text.get("layer_norm_eps", 1e-5), vision.get("layer_norm_eps", 1e-5)
    if t_eps != v_eps:
        raise CheckpointError(f"{source}: layer_norm_eps differs between towers ({t_eps}, {v_eps})")
    return CLIPConfig(
        name=name,
        embed_dim=int(cfg.get("projection_dim", 512)),
        image_size=int(vision.get("image_size", 224)),
        vision_layers=int(vision.get("num_hidden_layers", 12)),
        vision_width=int(vision.get("hidden_size", 768)),
        vision_heads=int(vision.get("num_attention_heads", 12)),
        vision_patch_size=int(vision.get("patch_size", 32)),
        vision_mlp_dim=int(vision.get("intermediate_size", 3072)),
        text_width=int(text.get("hidden_size", 512)),
        text_heads=int(text.get("num_attention_heads", 8)),
        text_layers=int(text.get("num_hidden_layers", 12)),
        text_mlp_dim=int(text.get("intermediate_size", 2048)),
        context_length=int(text.get("max_position_embeddings", 77)),
        vocab_size=int(text.get("vocab_size", 49408)),
        act=t_act,
        layer_norm_eps=float(t_eps),
    )


def config_from_openai_shapes(shapes: Mapping[str, tuple[int, ...]], name: str = "custom",
                              act: str = "quick_gelu") -> CLIPConfig:
    """Infers a config from an OpenAI / open_clip state dict's tensor shapes.

    Mirrors OpenAI's ``build_model``: ViT if ``visual.proj`` exists, heads are
    ``width // 64`` (ResNet attention pool: ``32 * width // 64``), the image
    size follows from the positional embedding. ``act`` cannot be read from
    shapes: OpenAI's checkpoints use QuickGELU (the default).

    Raises:
      KeyError: a tensor the inference needs is absent (the caller then
        reports missing keys against the requested variant).
    """
    def layer_count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})

    text_width = shapes["ln_final.weight"][0]
    common = dict(
        name=name,
        embed_dim=shapes["text_projection"][1],
        text_width=text_width,
        text_heads=text_width // 64,
        text_layers=layer_count("transformer.resblocks."),
        text_mlp_dim=shapes["transformer.resblocks.0.mlp.c_fc.weight"][0],
        context_length=shapes["positional_embedding"][0],
        vocab_size=shapes["token_embedding.weight"][0],
        act=act,
    )
    if "visual.proj" in shapes:
        width, _, patch, _ = shapes["visual.conv1.weight"]
        grid = round((shapes["visual.positional_embedding"][0] - 1) ** 0.5)
        return CLIPConfig(
            image_size=patch * grid, vision_layers=layer_count("visual.transformer.resblocks."),
            vision_width=width, vision_heads=width // 64, vision_patch_size=patch,
            vision_mlp_dim=shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0], **common,
        )
    width = shapes["visual.layer1.0.conv1.weight"][0]
    grid = round((shapes["visual.attnpool.positional_embedding"][0] - 1) ** 0.5)
    return CLIPConfig(
        image_size=32 * grid,
        vision_layers=tuple(layer_count(f"visual.layer{i}.") for i in (1, 2, 3, 4)),
        vision_width=width, vision_heads=width * 32 // 64, vision_patch_size=None,
        vision_mlp_dim=None, **common,
    )
