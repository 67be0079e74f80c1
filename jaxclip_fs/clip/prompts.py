"""Learned context prompts for the text tower (CoOp, Zhou et al., IJCV'22), as arguments.

CoOp (official code KaiyangZhou/CoOp, ``trainers/coop.py`` ``PromptLearner``,
unified context, class token at the end -- its defaults ``N_CTX = 16``,
``CSC = False``, ``CLASS_TOKEN_POSITION = "end"``) feeds the text tower, for
class c, the embeddings::

    [SOS] [V]_1 ... [V]_M [CLASS c tokens] [.] [EOS]        (then padding)

where ``[V]_1..M`` are M learned context vectors [M, W] shared by all classes
and everything else is the frozen token embedding of the *skeleton*
``"X X ... X {classname}."`` (M placeholders; ``_`` in class names read as
spaces). The EOT position of each class -- where the text tower pools --
is the skeleton's, unchanged by the context.

Initialisation (the official ``CTX_INIT`` option): random N(0, 0.02²)
(:func:`random_context`), or the token embeddings of a phrase such as
``"a photo of a"`` with M its length (:func:`phrase_context`; the skeleton is
then ``"{phrase} {classname}."``). Here M is the phrase's number of BPE
tokens; the official code counts words (``len(ctx_init.split(" "))``),
which is the same for every phrase whose words are single tokens (as
``"a photo of a"``) and misaligns the suffix otherwise.

Nothing here is a parameter: :func:`text_features` takes the frozen CLIP
variables and the context as arguments, so S seeds' contexts are vmapped
over one copy of the tower.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.clip.text import trim_after_eot
from jaxclip_fs.errors import ConfigError

DEFAULT_CONTEXT_LENGTH = 16  # CoOp's N_CTX
CONTEXT_STD = 0.02  # nn.init.normal_(ctx_vectors, std=0.02)
PLACEHOLDER = "X"


def context_skeleton(tokenizer, classnames: Sequence[str], n_ctx: int = DEFAULT_CONTEXT_LENGTH,
                     context_length: int = 77) -> np.ndarray:
    """Tokens int32 [C, L] of ``"X X ... X {classname}."`` (``n_ctx`` placeholders).

    L is the longest prompt's length (:func:`~jaxclip_fs.clip.text.trim_after_eot`):
    the text tower's output does not change, its work shrinks.

    Raises:
      ConfigError: ``n_ctx`` < 1, a placeholder that is not one token, or a
        prompt longer than ``context_length`` (naming it).
    """
    if n_ctx < 1:
        raise ConfigError(f"the number of context vectors must be >= 1, got {n_ctx}")
    if len(tokenizer.encode(PLACEHOLDER)) != 1:
        raise ConfigError(f"the placeholder '{PLACEHOLDER}' is not one token of {tokenizer.name}")
    return _skeleton(tokenizer, classnames, " ".join([PLACEHOLDER] * n_ctx), n_ctx,
                     context_length)


def phrase_skeleton(tokenizer, classnames: Sequence[str], phrase: str,
                    context_length: int = 77) -> tuple[np.ndarray, int]:
    """Tokens int32 [C, L] of ``"{phrase} {classname}."`` (trimmed as
    :func:`context_skeleton`'s) and M, the phrase's token count."""
    phrase = phrase.replace("_", " ")
    n_ctx = len(tokenizer.encode(phrase))
    if n_ctx < 1:
        raise ConfigError(f"the context phrase {phrase!r} has no tokens")
    return _skeleton(tokenizer, classnames, phrase, n_ctx, context_length), n_ctx


def _skeleton(tokenizer, classnames, prefix: str, n_ctx: int, context_length: int) -> np.ndarray:
    if n_ctx + 2 >= context_length:
        raise ConfigError(f"{n_ctx} context vectors leave no room in {context_length} tokens")
    texts = [f"{prefix} {name.replace('_', ' ')}." for name in classnames]
    return trim_after_eot(tokenizer(texts, context_length=context_length, truncate=False))


def random_context(key: jax.Array, width: int, n_ctx: int = DEFAULT_CONTEXT_LENGTH,
                   std: float = CONTEXT_STD) -> jax.Array:
    """float32 [M, W] ~ N(0, std²) (CoOp's random initialisation)."""
    return std * jax.random.normal(key, (n_ctx, width), jnp.float32)


def token_table(variables) -> jax.Array:
    """The frozen token embedding table [V, W] of CLIP ``variables``."""
    return variables["params"]["text"]["token_embedding"]["embedding"]


def phrase_context(variables, tokenizer, phrase: str) -> jax.Array:
    """float32 [M, W]: the token embeddings of ``phrase`` (CoOp's ``CTX_INIT``)."""
    ids = np.asarray(tokenizer.encode(phrase.replace("_", " ")), np.int32)
    if ids.size == 0:
        raise ConfigError(f"the context phrase {phrase!r} has no tokens")
    return jnp.asarray(token_table(variables)[ids], jnp.float32)


def prompt_embeddings(variables, ctx: jax.Array, tokens: jax.Array) -> jax.Array:
    """[C, L, W]: the skeleton's token embeddings with positions 1..M replaced by ``ctx``.

    Args:
      variables: frozen CLIP variables (their token embedding table is read).
      ctx: [M, W] context vectors shared by the classes.
      tokens: int [C, L] skeleton tokens (:func:`context_skeleton`).
    """
    embedded = token_table(variables)[tokens]
    n_ctx = ctx.shape[0]
    shared = jnp.broadcast_to(ctx.astype(embedded.dtype)[None], (tokens.shape[0],) + ctx.shape)
    return jnp.concatenate([embedded[:, :1], shared, embedded[:, 1 + n_ctx:]], axis=1)


def text_features(model, variables, ctx: jax.Array, tokens: jax.Array) -> jax.Array:
    """Class embeddings [C, E] float32 (not normalised) of the context prompts.

    ``model`` is the :class:`~jaxclip_fs.clip.model.CLIP` module (its
    ``dtype`` is the compute dtype, its ``remat`` the blocks' rematerialisation).
    """
    return model.apply(variables, tokens, prompt_embeddings(variables, ctx, tokens),
                       method="encode_text")
