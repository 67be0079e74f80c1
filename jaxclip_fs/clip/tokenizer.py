"""CLIP's byte-level BPE tokenizer (OpenAI ``clip.tokenize``), and where its vocabulary comes from.

Tokenizing a text, as OpenAI's ``simple_tokenizer`` does:

1. clean: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse runs of
   whitespace to one space, lower-case;
2. split into pre-tokens with CLIP's pattern (the special tokens, the
   contractions ``'s 't 're 've 'm 'll 'd``, runs of letters, single digits,
   runs of other non-space characters);
3. map each pre-token's UTF-8 bytes to printable characters (GPT-2's
   byte-to-unicode table) and mark its last symbol with ``</w>``;
4. merge adjacent symbol pairs, lowest merge rank first, until no ranked pair
   is left; look every symbol up in the vocabulary.

A batch is ``[sot] + ids + [eot]`` zero-padded to ``context_length`` (77);
an over-long text is cut to ``context_length`` tokens whose last one is
replaced by ``eot`` (``clip.tokenize(..., truncate=True)``).

The vocabulary is never shipped with this package. :func:`load_tokenizer`
finds it in a checkpoint directory, the ``JAXCLIP_FS_BPE`` environment
variable, a pip-installed ``open_clip`` / OpenAI ``clip`` package, or the
Hugging Face cache (fetched from the hub for real weights, where it can be
reached). With none of them, random weights get a byte-level fallback whose
``name`` says that it is not CLIP's vocabulary; real weights get a one-line
error saying where to get it. ``Tokenizer.identity`` (kind and a digest of the
vocabulary) goes into feature files, records and a run directory's identity.

Difference from the references: open_clip spells the special tokens
``<start_of_text>``/``<end_of_text>`` when they occur literally in a text;
we follow OpenAI and Hugging Face (``<|startoftext|>``/``<|endoftext|>``).
Hugging Face's fast ``CLIPTokenizer`` applies neither ftfy nor HTML
unescaping (it uses NFC), so it differs from OpenAI on such texts; we follow
OpenAI.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import importlib.util
import json
import os
import sys
from typing import Mapping, Sequence

import ftfy
import numpy as np
import regex

from jaxclip_fs.errors import CheckpointError, ConfigError

CONTEXT_LENGTH = 77
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
# OpenAI keeps the first 49152 - 256 - 2 merges: 256 byte symbols, 256 byte
# symbols with </w>, the merges and 2 special tokens make 49408 ids.
NUM_MERGES = 49152 - 256 - 2
END_OF_WORD = "</w>"

BPE_ENV_VAR = "JAXCLIP_FS_BPE"
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
HUB_REPO = "openai/clip-vit-base-patch32"
# Packages known to ship ``BPE_FILENAME`` next to their ``__init__.py``.
BUNDLING_PACKAGES = ("open_clip", "clip")

_PRETOKEN_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE_RUN = regex.compile(r"\s+")
_BPE_CACHE_SIZE = 1 << 17
_UNRANKED = sys.maxsize


@functools.lru_cache(maxsize=None)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to
    themselves; the other 68 bytes map, in increasing order, to
    ``chr(256)``, ``chr(257)``, .... The dict's order (printable bytes first)
    is the order of vocabulary ids 0..255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML unescape (twice), whitespace collapse, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE_RUN.sub(" ", text).strip().lower()


def _base_symbols() -> list[str]:
    """Vocabulary ids 0..511: the 256 byte symbols, then the same with ``</w>``."""
    symbols = list(byte_to_unicode().values())
    return symbols + [s + END_OF_WORD for s in symbols]


class Tokenizer:
    """CLIP BPE tokenizer over a given vocabulary and merge list.

    Attributes:
      name: human-readable description of the vocabulary and where it came from.
      is_clip_vocab: False only for the byte-level fallback.
      sot_id, eot_id: ids of ``<|startoftext|>`` / ``<|endoftext|>`` (49406 /
        49407 for CLIP).
      vocab_size: 1 + the largest id.
    """

    def __init__(self, encoder: Mapping[str, int], merges: Sequence[tuple[str, str]],
                 name: str, is_clip_vocab: bool = True):
        """Args:
          encoder: symbol -> id; must hold the 512 byte symbols, every merge
            result and both special tokens (checked by the loaders).
          merges: symbol pairs in rank order (rank 0 merges first).
          name: shown to users (the CLI prints it).
          is_clip_vocab: whether this is CLIP's real vocabulary.
        """
        self._encoder = dict(encoder)
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._bytes = byte_to_unicode()
        self.name = name
        self.is_clip_vocab = is_clip_vocab
        self.sot_id = self._encoder[SOT_TOKEN]
        self.eot_id = self._encoder[EOT_TOKEN]
        self.vocab_size = max(self._encoder.values()) + 1
        # Per-instance LRU of pre-token -> symbols (the merge loop dominates cost).
        self._merge_word = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(self._merge_word_uncached)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r})"

    @functools.cached_property
    def identity(self) -> str:
        """``clip-bpe:sha256:<16 hex>`` (``byte-fallback:...`` for the fallback): the kind and
        a digest of the vocabulary and merges -- the same for the same vocabulary whichever
        file it was read from, different for any other."""
        h = hashlib.sha256()
        for symbol, index in sorted(self._encoder.items(), key=lambda item: item[1]):
            h.update(f"{index}\t{symbol}\n".encode("utf-8", "surrogatepass"))
        h.update(b"merges\n")
        for (first, second), _ in sorted(self._ranks.items(), key=lambda item: item[1]):
            h.update(f"{first} {second}\n".encode("utf-8", "surrogatepass"))
        kind = "clip-bpe" if self.is_clip_vocab else "byte-fallback"
        return f"{kind}:sha256:{h.hexdigest()[:16]}"

    def _merge_word_uncached(self, word: str) -> tuple[str, ...]:
        """BPE on one byte-mapped pre-token: repeatedly merge the lowest-ranked pair.

        Every occurrence of the chosen pair is merged in one left-to-right,
        non-overlapping pass (``a a a`` with rank(a, a) -> ``aa a``).
        """
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        ranks = self._ranks
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, _UNRANKED))
            if best not in ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        ids: list[int] = []
        for piece in _PRETOKEN_PATTERN.findall(clean_text(text)):
            if piece in (SOT_TOKEN, EOT_TOKEN):
                ids.append(self._encoder[piece])
                continue
            word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            ids.extend(self._encoder[symbol] for symbol in self._merge_word(word))
        return ids

    def __call__(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH,
                 truncate: bool = True) -> np.ndarray:
        """Tokenizes a batch like ``clip.tokenize(texts, context_length, truncate)``.

        Args:
          texts: N strings (a single ``str`` is taken as one text).
          context_length: L, the model's text context (77 for CLIP).
          truncate: cut over-long texts to L tokens ending in ``eot``; if
            False an over-long text is an error.

        Returns:
          int32 [N, L]: ``sot, ids..., eot`` then zeros.

        Raises:
          ConfigError: ``context_length`` < 2, or a text too long with
            ``truncate=False`` (quotes the text's start).
        """
        if context_length < 2:
            raise ConfigError(f"context_length must be >= 2, got {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                if not truncate:
                    start = text[:40] + ("..." if len(text) > 40 else "")
                    raise ConfigError(f"text {start!r} has {len(ids)} tokens, more than "
                                      f"the context length {context_length}")
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            out[row, :len(ids)] = ids
        return out


# --- vocabulary readers ----------------------------------------------------------------


def _checked(encoder: dict[str, int], merges: list[tuple[str, str]], source: str,
             name: str) -> Tokenizer:
    """Builds a Tokenizer after checking ``encoder`` covers every symbol BPE can emit."""
    for token in (SOT_TOKEN, EOT_TOKEN):
        if token not in encoder:
            raise CheckpointError(f"{source}: vocabulary has no special token '{token}'")
    bad_id = next((s for s, i in encoder.items() if not isinstance(i, int) or i < 0), None)
    if bad_id is not None:
        raise CheckpointError(
            f"{source}: symbol {bad_id!r} has id {encoder[bad_id]!r}, not an int >= 0")
    for symbol in _base_symbols():
        if symbol not in encoder:
            raise CheckpointError(f"{source}: vocabulary lacks the byte symbol {symbol!r}")
    for first, second in merges:
        if first + second not in encoder:
            raise CheckpointError(f"{source}: merge '{first} {second}' has no vocabulary entry")
    return Tokenizer(encoder, merges, name=name)


def _parse_merges(lines: Sequence[str], source: str) -> list[tuple[str, str]]:
    """Merge lines ``"a b"`` (``#version`` header and blank lines skipped), first NUM_MERGES."""
    merges: list[tuple[str, str]] = []
    for line in lines:
        if not line or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{source}: bad merge line {line[:40]!r} (want two symbols)")
        merges.append((parts[0], parts[1]))
        if len(merges) == NUM_MERGES:
            break
    return merges


def _read_text(path: str, gzipped: bool = False) -> str:
    try:
        with (gzip.open if gzipped else open)(path, "rt", encoding="utf-8") as f:
            return f.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path}: unreadable vocabulary file ({type(exc).__name__})") from None


def tokenizer_from_bpe_file(path: str) -> Tokenizer:
    """Reads OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

    The ids are implied by the file: 512 byte symbols, then one id per merge
    result for the first ``NUM_MERGES`` merges, then ``<|startoftext|>``,
    ``<|endoftext|>``.

    Raises:
      CheckpointError: unreadable file or fewer than ``NUM_MERGES`` merges.
    """
    path = os.fspath(path)
    text = _read_text(path, gzipped=True)
    merges = _parse_merges(text.split("\n")[1:], path)  # line 0 names the file
    if len(merges) < NUM_MERGES:
        raise CheckpointError(
            f"{path}: {len(merges)} merges, CLIP's BPE file has at least {NUM_MERGES}")
    symbols = [*_base_symbols(), *("".join(m) for m in merges), SOT_TOKEN, EOT_TOKEN]
    encoder = {symbol: i for i, symbol in enumerate(symbols)}
    return Tokenizer(encoder, merges, name=f"CLIP BPE from {path}")


def tokenizer_from_hf_files(vocab_path: str, merges_path: str) -> Tokenizer:
    """Reads a Hugging Face ``vocab.json`` (symbol -> id) + ``merges.txt`` pair.

    Raises:
      CheckpointError: unreadable or inconsistent files, naming the file.
    """
    try:
        encoder = json.loads(_read_text(vocab_path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{vocab_path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(encoder, dict):
        raise CheckpointError(f"{vocab_path}: want a JSON object symbol -> id")
    merges = _parse_merges(_read_text(merges_path).split("\n"), merges_path)
    return _checked(encoder, merges, vocab_path,
                    name=f"CLIP BPE from {vocab_path} + {os.path.basename(merges_path)}")


def tokenizer_from_tokenizer_json(path: str) -> Tokenizer:
    """Reads a Hugging Face fast-tokenizer ``tokenizer.json`` (a BPE model).

    This is what ``CLIPTokenizer.save_pretrained`` writes in transformers 5.
    Special tokens come from ``added_tokens`` when the BPE vocab lacks them.

    Raises:
      CheckpointError: not JSON, not a BPE model, or inconsistent, naming the file.
    """
    try:
        spec = json.loads(_read_text(path))
        model = spec["model"]
        if model.get("type") != "BPE":
            raise CheckpointError(f"{path}: model type {model.get('type')!r} is not BPE")
        encoder = dict(model["vocab"])
        raw_merges = model["merges"]
        added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a tokenizer.json BPE model (missing {exc})") from None
    for token in (SOT_TOKEN, EOT_TOKEN):
        if token not in encoder and token in added:
            encoder[token] = added[token]
    lines = [m if isinstance(m, str) else " ".join(m) for m in raw_merges]
    return _checked(encoder, _parse_merges(lines, path), path, name=f"CLIP BPE from {path}")


def fallback_tokenizer(reason: str = "no CLIP vocabulary found") -> Tokenizer:
    """Byte-level tokenizer with CLIP's cleaning and ids, but **not** CLIP's vocabulary.

    It is CLIP's tokenizer with zero merges: every pre-token becomes its
    UTF-8 byte symbols (ids 0..255, the last byte marked ``</w>``: ids
    256..511), with ``sot``/``eot`` at CLIP's ids 49406/49407, so all ids fit
    CLIP's embedding table. Lets random-weight pipelines run offline; text
    features from it are meaningless for pretrained CLIP weights.
    """
    symbols = _base_symbols()
    encoder = {symbol: i for i, symbol in enumerate(symbols)}
    encoder[SOT_TOKEN] = CLIP_VOCAB_SIZE - 2
    encoder[EOT_TOKEN] = CLIP_VOCAB_SIZE - 1
    return Tokenizer(
        encoder, [], is_clip_vocab=False,
        name=(f"byte-level fallback tokenizer, NOT CLIP's BPE vocabulary ({reason}; supply a "
              f"checkpoint directory with vocab.json + merges.txt, set {BPE_ENV_VAR} to a "
              f"{BPE_FILENAME}, or pip install open_clip_torch)"),
    )


# --- where the vocabulary comes from ----------------------------------------------------


def _from_directory(directory: str) -> Tokenizer | None:
    """A tokenizer from the vocabulary files in ``directory``, or None if it has none.

    Looks for, in order: ``vocab.json`` + ``merges.txt``, ``tokenizer.json``,
    ``bpe_simple_vocab_16e6.txt.gz``.
    """
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    if os.path.isfile(vocab) or os.path.isfile(merges):
        missing = merges if os.path.isfile(vocab) else vocab
        if not os.path.isfile(missing):
            raise CheckpointError(f"{missing}: missing; vocab.json and merges.txt go together")
        return tokenizer_from_hf_files(vocab, merges)
    fast = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(fast):
        return tokenizer_from_tokenizer_json(fast)
    bpe = os.path.join(directory, BPE_FILENAME)
    if os.path.isfile(bpe):
        return tokenizer_from_bpe_file(bpe)
    return None


def _from_path(path: str) -> Tokenizer | None:
    """A BPE file, a ``tokenizer.json``, or a directory holding vocabulary files."""
    if os.path.isdir(path):
        return _from_directory(path)
    if os.path.basename(path) == "tokenizer.json":
        return tokenizer_from_tokenizer_json(path)
    if path.endswith(".gz"):
        return tokenizer_from_bpe_file(path)
    return None


def _bundled_bpe_file(package: str) -> str | None:
    """``BPE_FILENAME`` next to an installed package's ``__init__.py`` (not imported)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), BPE_FILENAME)
    return path if os.path.isfile(path) else None


def _hub_cache_files(download: bool = False) -> tuple[str, str] | None:
    """``vocab.json``/``merges.txt`` of ``HUB_REPO`` if already in the local HF cache, or with
    ``download`` fetched from the hub (None where it cannot be reached or is set offline)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return tuple(hf_hub_download(HUB_REPO, name, local_files_only=True)
                     for name in ("vocab.json", "merges.txt"))
    except LocalEntryNotFoundError:
        if not download or os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
            return None
    try:
        return tuple(hf_hub_download(HUB_REPO, name) for name in ("vocab.json", "merges.txt"))
    except Exception:  # no network, no such file, hub errors: there is no vocabulary to be had
        return None


#: Where a CLIP vocabulary comes from (the one-line error when real weights have none).
WHERE_TO_GET = (
    "put vocab.json + merges.txt (or tokenizer.json) next to the checkpoint, set "
    f"{BPE_ENV_VAR} to OpenAI's {BPE_FILENAME} (github.com/openai/CLIP, clip/), "
    "pip install open_clip_torch, or run `hf download openai/clip-vit-base-patch32 "
    "vocab.json merges.txt` on a machine with internet and copy ~/.cache/huggingface")


def load_tokenizer(source_dir: str | os.PathLike | None = None, *,
                   required: bool = False) -> Tokenizer:
    """Finds CLIP's vocabulary and returns its tokenizer (or the labelled fallback).

    Search order (first hit wins):

    1. ``source_dir``: a checkpoint directory with ``vocab.json`` +
       ``merges.txt``, ``tokenizer.json`` or ``bpe_simple_vocab_16e6.txt.gz``
       (a file path is searched in its directory; a ``.txt.gz`` is read
       directly). A directory without vocabulary files falls through.
    2. ``$JAXCLIP_FS_BPE``: a BPE ``.txt.gz``, a ``tokenizer.json`` or such a
       directory; set but unusable is an error.
    3. The BPE file bundled with an installed ``open_clip`` or OpenAI
       ``clip`` package (located with ``importlib.util.find_spec``).
    4. ``openai/clip-vit-base-patch32`` in the Hugging Face cache (offline);
       with ``required``, fetched from the hub where it can be reached.
    5. :func:`fallback_tokenizer`, whose ``name`` says it is not CLIP's --
       only without ``required``: real weights never meet it (a zero-shot
       classifier of their text tower from another vocabulary is meaningless).

    Args:
      source_dir: the checkpoint's directory (or file), searched first.
      required: the vocabulary must be CLIP's (pass True for every weights but random).

    Raises:
      CheckpointError: ``source_dir`` does not exist or its vocabulary files
        are broken; or ``required`` and no vocabulary is found (says where to get one).
      ConfigError: ``$JAXCLIP_FS_BPE`` names nothing usable.
    """
    if source_dir is not None:
        path = os.fspath(source_dir)
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: no such checkpoint directory or file")
        tokenizer = _from_path(path)
        if tokenizer is None and not os.path.isdir(path):  # e.g. a checkpoint file
            tokenizer = _from_directory(os.path.dirname(os.path.abspath(path)))
        if tokenizer is not None:
            return tokenizer
    env_path = os.environ.get(BPE_ENV_VAR)
    if env_path:
        if not os.path.exists(env_path):
            raise ConfigError(f"{BPE_ENV_VAR}={env_path}: no such file or directory")
        tokenizer = _from_path(env_path)
        if tokenizer is None:
            raise ConfigError(f"{BPE_ENV_VAR}={env_path}: not a {BPE_FILENAME}, tokenizer.json "
                              "or directory with vocab.json + merges.txt")
        return tokenizer
    for package in BUNDLING_PACKAGES:
        bundled = _bundled_bpe_file(package)
        if bundled is not None:
            return tokenizer_from_bpe_file(bundled)
    hub_files = _hub_cache_files(download=required)
    if hub_files is not None:
        return tokenizer_from_hf_files(*hub_files)
    if required:
        where = f" in {os.fspath(source_dir)}" if source_dir is not None else ""
        raise CheckpointError(f"no CLIP vocabulary found{where} or anywhere else searched, and "
                              "real weights need CLIP's own (the byte-level fallback would give "
                              f"a wrong zero-shot classifier): {WHERE_TO_GET}")
    return fallback_tokenizer()
