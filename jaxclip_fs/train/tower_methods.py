"""A tower method's training recipe, frozen inputs and predictions, from its declaration.

A method trained through CLIP's towers declares *what* it adapts
(:class:`~jaxclip_fs.methods.images.TowerTraining`: learned ``context``
vectors for the text tower, CoOp; ``lora`` factors in the attention
projections, CLIP-LoRA) and its hyperparameters; this module builds, per
adaptation, the pieces the engine's tower program runs:

* :func:`recipe` -- the :class:`~jaxclip_fs.train.towers.TowerRecipe` with
  the official optimiser at the run's hyperparameters (one object per
  (declaration, CLIP module, hyperparameters, ImageNet): it keys the compiled
  training program);
* :func:`frozen_inputs` -- what its loss reads besides the adaptation (the
  CLIP variables, the prompt tokens);
* :func:`initial` -- S seeds' starting adaptations;
* :func:`classifiers` -- each seed's class embeddings [S, C, E] (normalised),
  computed once for every query image;
* :func:`predict_fn` -- a stream function giving every seed's predictions on
  a batch of query images (CoOp: their frozen features; CLIP-LoRA: their
  pixels through the adapted image tower).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip import prompts
from jaxclip_fs.clip.lora import LoraSpec
from jaxclip_fs.methods.cache import l2_normalize, mask_logits
from jaxclip_fs.methods.images import TowerTraining
from jaxclip_fs.train import lora_tuning, prompt_learning, towers


def lora_spec(declared: TowerTraining) -> LoraSpec:
    """The :class:`~jaxclip_fs.clip.lora.LoraSpec` of a ``lora`` declaration."""
    o = dict(declared.options)
    return LoraSpec(rank=int(o.get("rank", 2)), alpha=float(o.get("alpha", 1.0)),
                    dropout=float(o.get("dropout", 0.25)),
                    params=tuple(o.get("params", ("q", "k", "v"))),
                    position=o.get("position", "all"), encoder=o.get("encoder", "both"))


def length(values: Mapping[str, float], name: str):
    """The user's ``epochs`` / ``steps`` (an int), or None for the official count."""
    value = values.get(name)
    return None if value is None else int(value)


@functools.lru_cache(maxsize=64)
def _recipe(declared: TowerTraining, model, values: tuple[tuple[str, float], ...],
            imagenet: bool) -> towers.TowerRecipe:
    hp = dict(values)
    batch = int(hp["batch_size"])
    if declared.adaptation == "context":
        built = prompt_learning.recipe(model, n_ctx=int(declared.option("n_ctx", 16)),
                                       epochs=length(hp, "epochs"), imagenet=imagenet,
                                       batch_size=batch)
        return built._replace(optimizer=functools.partial(
            prompt_learning.optimizer, lr=hp["lr"], momentum=hp["momentum"],
            weight_decay=hp["weight_decay"], warmup_lr=hp["warmup_lr"]))
    built = lora_tuning.recipe(
        model, lora_spec(declared),
        iterations_per_shot=int(declared.option("iterations_per_shot", 500)),
        total=length(hp, "steps"), batch_size=batch, augment=True,
        crop_scale=tuple(declared.crop_scale))
    return built._replace(optimizer=functools.partial(
        lora_tuning.optimizer, lr=hp["lr"], min_lr=hp["min_lr"],
        weight_decay=hp["weight_decay"]))


def recipe(declared: TowerTraining, model, values: Mapping[str, float],
           imagenet: bool = False) -> towers.TowerRecipe:
    """The training recipe (module docstring).

    Raises:
      ConfigError: CLIP-LoRA on a ResNet image tower (one line), a bad LoRA setting.
    """
    return _recipe(declared, model, tuple(sorted((k, float(v)) for k, v in values.items())),
                   bool(imagenet))


def phrase_of(declared: TowerTraining) -> str | None:
    return declared.option("phrase") if declared.adaptation == "context" else None


def tokens(declared: TowerTraining, tokenizer, classnames) -> np.ndarray:
    """int32 [C, L]: CoOp's skeleton (context placeholders, or the phrase) or CLIP-LoRA's
    template "a photo of a {}." per class."""
    if declared.adaptation == "context":
        phrase = phrase_of(declared)
        if phrase:
            return prompts.phrase_skeleton(tokenizer, classnames, phrase)[0]
        return prompts.context_skeleton(tokenizer, classnames, int(declared.option("n_ctx", 16)))
    return lora_tuning.template_tokens(tokenizer, classnames)


def frozen_inputs(declared: TowerTraining, variables, tokens_: np.ndarray,
                  text: np.ndarray) -> dict:
    """What the loss reads besides the adaptation: CLIP ``variables``, prompt tokens and (a
    LoRA adapting the image tower only) the normalised zero-shot classifier ``text``."""
    frozen = {"clip": variables, "tokens": jnp.asarray(tokens_, jnp.int32)}
    if declared.adaptation == "lora" and "text" not in lora_spec(declared).towers:
        frozen["text"] = l2_normalize(jnp.asarray(text, jnp.float32))
    return frozen


def initial(declared: TowerTraining, recipe_: towers.TowerRecipe, tasks: towers.TowerTask,
            variables, tokenizer) -> Any:
    """S seeds' starting adaptations: ``recipe.init`` per seed key, or CoOp's phrase
    embeddings (the same for every seed)."""
    phrase = phrase_of(declared)
    if phrase:
        ctx = prompts.phrase_context(variables, tokenizer, phrase)
        return {"ctx": jnp.broadcast_to(ctx, (tasks.key.shape[0],) + ctx.shape)}
    return towers.init_seeds(recipe_, tasks)


@functools.lru_cache(maxsize=32)
def _classifiers(declared: TowerTraining, model):
    def one(variables, adaptation, tokens_, text):
        if declared.adaptation == "context":
            return l2_normalize(prompts.text_features(model, variables, adaptation["ctx"],
                                                      tokens_))
        spec = lora_spec(declared)
        if "text" not in spec.towers:
            return l2_normalize(text)
        return l2_normalize(lora_tuning.text_features(model, variables, adaptation, spec,
                                                      tokens_))
    return jax.jit(jax.vmap(one, in_axes=(None, 0, None, None)))


def classifiers(declared: TowerTraining, model, variables, adaptations, tokens_,
                text) -> jax.Array:
    """[S, C, E] every seed's normalised class embeddings (its adapted text tower, or the
    frozen zero-shot classifier ``text`` where the text tower is not adapted)."""
    return _classifiers(declared, model)(variables, adaptations, jnp.asarray(tokens_),
                                         jnp.asarray(text, jnp.float32))


@functools.lru_cache(maxsize=32)
def predict_fn(declared: TowerTraining, model, keep_logits: bool = False):
    """The stream function ``(frozen, (adaptations, classifiers, class_mask), inputs) ->
    {"pred": [B, S], "finite": [B, S], "logits"?: [B, S, C]}``.

    ``inputs``: for ``context`` the batch's frozen image features (``ImageInputs``),
    ``logits = exp(logit_scale) · f̂ t̂ᵀ``; for ``lora`` its uint8 pixels, run
    through each seed's adapted image tower, ``logits = 100 · f̂ t̂ᵀ``.
    """
    def fn(frozen, bundle, inputs):
        adaptations, text, class_mask = bundle
        if declared.adaptation == "context":
            image = l2_normalize(inputs.features.astype(jnp.float32))
            logits = frozen["logit_scale"] * jnp.einsum("be,sce->bsc", image, text)
        else:
            spec = lora_spec(declared)
            images = lora_tuning.normalize_pixels(inputs)

            def one(factors, t):
                if "visual" in spec.towers:
                    f = lora_tuning.image_features(model, frozen["clip"], factors, spec, images)
                else:
                    f = model.apply(frozen["clip"], images, method="encode_image")[0]
                return lora_tuning.LOGIT_SCALE * l2_normalize(f) @ t.T
            logits = jnp.swapaxes(jax.vmap(one)(adaptations, text), 0, 1)
        logits = mask_logits(logits, class_mask)
        out = {"pred": jnp.argmax(logits, axis=-1),
               "finite": jnp.all(jnp.isfinite(logits), axis=-1)}
        if keep_logits:
            out["logits"] = logits
        return out
    return fn
