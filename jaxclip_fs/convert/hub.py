"""Finding published weights: ``openai`` defaults and Hugging Face hub ids.

``--weights openai`` means OpenAI's release of the backbone: first OpenAI's
own download cache (``~/.cache/clip/<name>.pt``, where ``clip.load`` puts
it), else the hub id below (transformers format for the ViTs; open_clip's
``timm/*_clip.openai`` repositories for the ResNets).

Hub access goes through ``huggingface_hub.snapshot_download``, local cache
first (``local_files_only=True``); only if that misses and the hub is not set
offline (``HF_HUB_OFFLINE``) is a download tried: the small metadata files
first, then only the preferred weight format (safetensors; pickled ``.bin``
only when a repository has no safetensors).
"""

from __future__ import annotations

import os
import re

from jaxclip_fs.errors import CheckpointError

DEFAULT_HUB_IDS = {
    "RN50": "timm/resnet50_clip.openai",
    "RN101": "timm/resnet101_clip.openai",
    "RN50x4": "timm/resnet50x4_clip.openai",
    "RN50x16": "timm/resnet50x16_clip.openai",
    "RN50x64": "timm/resnet50x64_clip.openai",
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}

# File names of OpenAI's `clip.load` download cache.
OPENAI_CACHE_FILES = {
    "RN50": "RN50.pt", "RN101": "RN101.pt", "RN50x4": "RN50x4.pt", "RN50x16": "RN50x16.pt",
    "RN50x64": "RN50x64.pt", "ViT-B/32": "ViT-B-32.pt", "ViT-B/16": "ViT-B-16.pt",
    "ViT-L/14": "ViT-L-14.pt", "ViT-L/14@336px": "ViT-L-14-336px.pt",
}

_META_PATTERNS = ["*.json", "*.txt", "*.txt.gz"]
# Weight files in order of preference, per repository kind. open_clip's hub repositories
# (those with open_clip_config.json, e.g. timm/*_clip.openai) may also hold timm-format
# model.safetensors that are not CLIP state dicts, so their own files come first.
_HF_WEIGHTS = (["model.safetensors.index.json", "model.safetensors", "model-*.safetensors"],
               ["pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model-*.bin"])
_OPEN_CLIP_WEIGHTS = (["open_clip_model.safetensors"], ["open_clip_pytorch_model.bin"])

HOW_TO_SUPPLY = (
    "supply weights with model.weights PATH (an HF CLIP directory, an OpenAI/open_clip .pt/.bin/"
    ".safetensors file, or a `jaxclip-fs convert` directory), or download them on a machine "
    "with internet (`hf download {repo}`, formerly huggingface-cli) and copy ~/.cache/huggingface, "
    "or run "
    "with model.weights random")

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def openai_cache_file(backbone: str) -> str | None:
    """OpenAI's ``clip.load`` cache file for ``backbone`` if it exists locally."""
    name = OPENAI_CACHE_FILES.get(backbone)
    if name is None:
        return None
    path = os.path.join(os.path.expanduser("~/.cache/clip"), name)
    return path if os.path.isfile(path) else None


def default_hub_id(backbone: str) -> str:
    if backbone not in DEFAULT_HUB_IDS:
        raise CheckpointError(
            f"no published checkpoint for backbone '{backbone}'; "
            "pass model.weights PATH, a hub id, "
            f"or random")
    return DEFAULT_HUB_IDS[backbone]


def snapshot(repo_id: str) -> tuple[str, str]:
    """(local snapshot directory, commit hash) of hub repository ``repo_id``.

    Raises:
      CheckpointError: not cached and not downloadable, saying how to supply weights.
    """
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(f"hub id '{repo_id}' needs huggingface_hub (pip install "
                              f"huggingface_hub), or pass model.weights PATH") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    everything = _META_PATTERNS + [p for group in _HF_WEIGHTS + _OPEN_CLIP_WEIGHTS for p in group]
    try:
        directory = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=everything, local_files_only=True)
        if find_weight_file(directory):
            return directory, os.path.basename(os.path.normpath(directory))
    except Exception:  # LocalEntryNotFoundError: not cached
        pass
    where = "not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
    if not offline:
        where = "the repository has no CLIP weight files"
        try:  # the small files first, then only the preferred weight format
            directory = huggingface_hub.snapshot_download(repo_id, allow_patterns=_META_PATTERNS)
            for patterns in _weight_groups(directory):
                directory = huggingface_hub.snapshot_download(
                    repo_id, allow_patterns=_META_PATTERNS + patterns)
                if find_weight_file(directory):
                    return directory, os.path.basename(os.path.normpath(directory))
        except Exception as exc:  # connection errors, 404, gated repositories ...
            where = f"not in the local Hugging Face cache and the download failed " \
                    f"({type(exc).__name__})"
    raise CheckpointError(f"hub id '{repo_id}': no weights found, {where}; "
                          + HOW_TO_SUPPLY.format(repo=repo_id))


def find_weight_file(directory: str) -> str | None:
    """The weight file (or shard index) of a checkpoint directory, preferred format first."""
    for names in _weight_groups(directory):
        for name in names:
            path = os.path.join(directory, name)
            if "*" not in name and os.path.isfile(path):
                return path
    return None


def _weight_groups(directory: str) -> tuple[list[str], ...]:
    if os.path.isfile(os.path.join(directory, "open_clip_config.json")):
        return _OPEN_CLIP_WEIGHTS + _HF_WEIGHTS
    return _HF_WEIGHTS + _OPEN_CLIP_WEIGHTS
