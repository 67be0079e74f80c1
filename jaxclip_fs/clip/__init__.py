"""CLIP in Flax: towers, variant table, tokenizer, preprocessing.

Modules (import what you need; this package imports nothing eagerly, so the
tokenizer and preprocessing stay usable without jax):

  variants    ``CLIPConfig``, ``get_config(name)``
  model       ``CLIP`` (Linen; ``encode_image``/``encode_text``/``attnpool``/``ln_post``/
              ``proj``), ``init_variables``, ``abstract_variables``, ``add_adapters``
  layers, vit, resnet, text   the towers' pieces (``text.trim_after_eot``)
  prompts     CoOp's learned context: prompt skeletons, ``text_features(model, variables, ctx,
              tokens)``
  lora        CLIP-LoRA's factors: ``LoraSpec``, ``init_lora``, the ``Lora`` argument of the towers
  embed       ``jaxclip-fs embed``: batched, jit-compiled encoding of images and texts
  tokenizer, preprocess       CLIP's BPE tokenizer and image preprocessing

Loading published checkpoints lives in :mod:`jaxclip_fs.convert` (``load_clip``).
"""
