"""The feature file: the bring-your-own-features and export format.

An ``.npz`` with these keys:

=============== ============== =================================================
key             dtype / shape  meaning
=============== ============== =================================================
``text``        float32 [C, D] L2-normalised class embeddings (zero-shot classifier)
``train``       float32 [V,N,D] training-pool image features, one row per view;
                               view 0 un-augmented, views 1.. augmented
``train_labels`` int [N]       class index of each training image
``val``         float32 [M, D] validation image features
``val_labels``  int [M]
``test``        float32 [T, D] test image features
``test_labels`` int [T]
``classnames``  str [C]
``logit_scale`` float, optional exp(logit_scale) of CLIP; default 100
``meta``        str, optional  JSON provenance (backbone, weights, dataset, ...)
``fewshot_seeds`` int [S], optional  seeds whose few-shot sets the pool holds
``fewshot_index`` int [S,C,K], optional  per seed and class, rows of ``train``
                               in nested order: ``[s, :, :k]`` is seed s's k-shot set
``draw_samplers`` str [R], optional  the official codes' (not nested) few-shot draws
``draw_seeds``, ``draw_shots`` int [R]  of each draw
``draw_index``  int [R,C,K]    rows of ``train`` of each draw (``-1`` pads K)
``draw_val``    int [R,M]      rows of ``val`` of CoOp's validation draw (``-1`` pads)
``text_prompts`` float32 [C, D], optional  the classifier of the templates plus the
                               prompt file's sentences (meta ``prompts``)
=============== ============== =================================================

When the pool was extracted for given seeds and shots (``extract --shots 16
--seeds 1,2,3``) the ``fewshot_*`` keys record which pool rows form each
seed's sets, so ``evaluate --shots 4 --seed 2`` uses exactly the images the
dataset's sampler chose. Without them the sampler runs on the pool itself.

Image features are stored as the encoder outputs them (or L2-normalised by the
user); each method normalises as its paper's code does. Every problem is
reported as one :class:`~jaxclip_fs.errors.FeatureFileError` line naming the
file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from jaxclip_fs.data.fewshot import nested_fewshot
from jaxclip_fs.errors import DataError, FeatureFileError
from jaxclip_fs.io import atomic

DEFAULT_LOGIT_SCALE = 100.0
#: The norms an image feature row may have: the methods L2-normalise in float32, which
#: fails below ~1e-12 (the square underflows) and above ~1e18 (it overflows).
MIN_NORM, MAX_NORM = 1e-12, 1e18
REQUIRED_KEYS = (
    "text", "train", "train_labels", "val", "val_labels", "test", "test_labels", "classnames",
)


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """In-memory form of a feature file (see module docstring for the keys)."""

    text: np.ndarray
    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    classnames: tuple[str, ...]
    logit_scale: float = DEFAULT_LOGIT_SCALE
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fewshot: Mapping[int, np.ndarray] = dataclasses.field(default_factory=dict)
    draws: Mapping[tuple[str, int, int], np.ndarray] = dataclasses.field(default_factory=dict)
    val_draws: Mapping[tuple[str, int, int], np.ndarray] = dataclasses.field(
        default_factory=dict)
    text_prompts: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0])

    @property
    def dim(self) -> int:
        return int(self.text.shape[1])

    @property
    def num_views(self) -> int:
        return int(self.train.shape[0])


def validate(fs: FeatureSet, source: str = "features") -> FeatureSet:
    """Checks shapes, dtypes, finiteness, feature norms and label ranges; returns ``fs``.

    Raises:
      FeatureFileError: one line, ``"<source>: key '<k>' ..."``.
    """

    def fail(key: str, msg: str) -> None:
        raise FeatureFileError(f"{source}: key '{key}' {msg}")

    for key in ("text", "train", "val", "test"):
        arr = getattr(fs, key)
        if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
            fail(key, f"must be a float array, got {getattr(arr, 'dtype', type(arr).__name__)}")
    if fs.text.ndim != 2:
        fail("text", f"must have shape [C, D], got {list(fs.text.shape)}")
    num_classes, dim = fs.text.shape
    if num_classes < 2:
        fail("text", f"needs at least 2 classes, got {num_classes}")
    if fs.train.ndim != 3 or fs.train.shape[2] != dim or fs.train.shape[0] < 1:
        fail("train", f"must have shape [V, N, {dim}] with V >= 1, got {list(fs.train.shape)}")
    for key in ("val", "test"):
        arr = getattr(fs, key)
        if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] < 1:
            fail(key, f"must have shape [M, {dim}] with M >= 1, got {list(arr.shape)}")
    for key, rows in (("train_labels", fs.train.shape[1]), ("val_labels", fs.val.shape[0]),
                      ("test_labels", fs.test.shape[0])):
        labels = getattr(fs, key)
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            got = getattr(labels, 'dtype', type(labels).__name__)
            fail(key, f"must be an integer array, got {got}")
        if labels.shape != (rows,):
            fail(key, f"must have shape [{rows}] to match its features, got {list(labels.shape)}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
            fail(key, f"has label {bad} outside [0, {num_classes})")
    for key in ("text", "train", "val", "test"):
        arr = getattr(fs, key)
        if not np.all(np.isfinite(arr)):
            fail(key, "contains NaN or Inf")
    for key in ("train", "val", "test"):
        arr = getattr(fs, key)
        norms = np.sqrt(np.sum(np.square(arr, dtype=np.float64), axis=-1))
        bad = (norms < MIN_NORM) | (norms > MAX_NORM)
        if bad.any():
            where = np.argwhere(bad)[0]
            fail(key, f"row {'/'.join(str(int(i)) for i in where)} has norm "
                      f"{norms[tuple(where)]:.3g}: image features must have a norm in "
                      f"[{MIN_NORM:g}, {MAX_NORM:g}] to be normalised in float32 (zero or "
                      "vanishing features classify nothing)")
    norms = np.linalg.norm(fs.text, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        fail("text", f"rows must be L2-normalised "
                     f"(norms range {norms.min():.4g}..{norms.max():.4g})")
    if len(fs.classnames) != num_classes:
        fail("classnames", f"has {len(fs.classnames)} names for {num_classes} classes in 'text'")
    if not (np.isfinite(fs.logit_scale) and fs.logit_scale > 0):
        fail("logit_scale", f"must be a positive number, got {fs.logit_scale}")
    for seed, index in fs.fewshot.items():
        index = np.asarray(index)
        if (index.ndim != 2 or index.shape[0] != num_classes
                or not np.issubdtype(index.dtype, np.integer)):
            fail("fewshot_index", f"seed {seed}: must be int [{num_classes}, K], "
                                  f"got {index.dtype} {list(index.shape)}")
        if index.size and (index.min() < 0 or index.max() >= fs.train.shape[1]):
            fail("fewshot_index", f"seed {seed}: row outside the {fs.train.shape[1]} train rows")
        if not np.all(fs.train_labels[index] == np.arange(num_classes)[:, None]):
            fail("fewshot_index", f"seed {seed}: a row's train_label differs from its class")
    for key, index in fs.draws.items():
        index = np.asarray(index)
        if (index.ndim != 2 or index.shape[0] != num_classes or index.size == 0
                or index.min() < 0 or index.max() >= fs.train.shape[1]
                or not np.all(fs.train_labels[index] == np.arange(num_classes)[:, None])):
            fail("draw_index", f"draw {key}: must be rows of 'train' of each class, int [C, K]")
    for key, rows in fs.val_draws.items():
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= fs.val.shape[0])):
            fail("draw_val", f"draw {key}: must be rows of 'val'")
    if fs.text_prompts is not None:
        if fs.text_prompts.shape != fs.text.shape or not np.all(np.isfinite(fs.text_prompts)):
            fail("text_prompts", f"must be finite, shaped like 'text' {list(fs.text.shape)}")
    return fs


def _looks_like(head: bytes) -> str:
    """What a file that is not a zip archive seems to be, from its first bytes."""
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array: np.save, where np.savez writes an .npz"
    if head[:1] == b"\x80":
        return "a Python pickle, which is never loaded"
    if not head:
        return "an empty file"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file, not a zip archive"
    return "binary data, not a zip archive"


def read_npz(path: str, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path`` (no pickled objects are ever loaded).

    Raises:
      FeatureFileError: one line naming the file and what it is instead of ``what``
        (numpy's own advice to load pickles unsafely is not repeated).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise FeatureFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head.startswith(b"PK"):
        raise FeatureFileError(f"{path}: not {what} ({_looks_like(head)})")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:  # numpy would silently read one of them
            raise FeatureFileError(f"{path}: not {what} (the zip archive holds member "
                                   f"{repeated[0]!r} more than once)")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise FeatureFileError(f"{path}: not {what} (it holds object arrays, i.e. pickled "
                                   "data, which are never loaded: save numeric and string "
                                   "arrays)") from None
        raise FeatureFileError(f"{path}: not {what} ({' '.join(str(exc).split())})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise FeatureFileError(f"{path}: not a readable zip archive, so not {what} "
                               f"({' '.join(str(exc).split()) or type(exc).__name__})") from None


def load(path: str | os.PathLike) -> FeatureSet:
    """Reads and validates a feature file.

    Raises:
      FeatureFileError: missing file, not an npz, missing key, or any
        :func:`validate` failure -- always one line naming the file and key.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FeatureFileError(f"{path}: no such feature file")
    data = read_npz(path, "an .npz feature file")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise FeatureFileError(f"{path}: missing key '{key}' (have: {', '.join(sorted(data))})")
    meta: dict[str, Any] = {}
    if "meta" in data:
        try:
            meta = json.loads(str(data["meta"]))
        except json.JSONDecodeError:
            raise FeatureFileError(f"{path}: key 'meta' is not a JSON string") from None
        if not isinstance(meta, dict):
            raise FeatureFileError(f"{path}: key 'meta' must be a JSON object, "
                                   f"got {type(meta).__name__}")
    logit_scale = DEFAULT_LOGIT_SCALE
    if "logit_scale" in data:
        if data["logit_scale"].size != 1:
            raise FeatureFileError(f"{path}: key 'logit_scale' must be a scalar")
        try:
            logit_scale = float(data["logit_scale"].reshape(()))
        except (TypeError, ValueError):
            raise FeatureFileError(f"{path}: key 'logit_scale' must be a number") from None
    classnames = data["classnames"]
    if classnames.ndim != 1 or classnames.dtype.kind not in "US":
        raise FeatureFileError(f"{path}: key 'classnames' must be a 1-D string array")
    fewshot: dict[int, np.ndarray] = {}
    if ("fewshot_seeds" in data) != ("fewshot_index" in data):
        raise FeatureFileError(f"{path}: keys 'fewshot_seeds' and 'fewshot_index' go together")
    if "fewshot_seeds" in data:
        seeds, index = data["fewshot_seeds"], data["fewshot_index"]
        if seeds.ndim != 1 or index.ndim != 3 or index.shape[0] != seeds.shape[0]:
            raise FeatureFileError(
                f"{path}: key 'fewshot_index' must be [S, C, K] with S = len(fewshot_seeds)")
        fewshot = {int(s): index[i] for i, s in enumerate(seeds)}
    draws, val_draws = _read_draws(path, data)
    text_prompts = data.get("text_prompts")
    fs = FeatureSet(
        text=data["text"], train=data["train"], train_labels=data["train_labels"],
        val=data["val"], val_labels=data["val_labels"], test=data["test"],
        test_labels=data["test_labels"], classnames=tuple(str(c) for c in classnames),
        logit_scale=logit_scale, meta=meta, fewshot=fewshot, draws=draws, val_draws=val_draws,
        text_prompts=None if text_prompts is None else text_prompts.astype(np.float32),
    )
    validate(fs, source=path)
    return dataclasses.replace(
        fs, **{k: getattr(fs, k).astype(np.float32, copy=False)
               for k in ("text", "train", "val", "test")},
        **{k: getattr(fs, k).astype(np.int32)
           for k in ("train_labels", "val_labels", "test_labels")},
    )


def save(path: str | os.PathLike, fs: FeatureSet) -> None:
    """Validates ``fs`` and writes it atomically to ``path`` (an .npz)."""
    validate(fs, source=os.fspath(path))
    extra: dict[str, np.ndarray] = {}
    if fs.fewshot:
        seeds = sorted(fs.fewshot)
        extra["fewshot_seeds"] = np.asarray(seeds, dtype=np.int64)
        extra["fewshot_index"] = np.stack([np.asarray(fs.fewshot[s], np.int64) for s in seeds])
    if fs.draws:
        extra.update(_write_draws(fs))
    if fs.text_prompts is not None:
        extra["text_prompts"] = fs.text_prompts.astype(np.float32)
    atomic.save_npz(
        path, **extra,
        text=fs.text.astype(np.float32, copy=False), train=fs.train.astype(np.float32, copy=False),
        train_labels=fs.train_labels.astype(np.int64), val=fs.val.astype(np.float32, copy=False),
        val_labels=fs.val_labels.astype(np.int64), test=fs.test.astype(np.float32, copy=False),
        test_labels=fs.test_labels.astype(np.int64),
        classnames=np.asarray(fs.classnames, dtype=str),
        logit_scale=np.float32(fs.logit_scale), meta=np.asarray(json.dumps(dict(fs.meta))),
    )


def digest(fs: FeatureSet) -> str:
    """``sha256:<16 hex>`` of a feature set's content -- every array, the class names and the
    logit scale, not the ``meta`` (provenance) -- so a re-saved file of the same features
    keeps its digest and any changed number changes it."""
    h = hashlib.sha256()

    def add(name: str, value) -> None:
        array = np.asarray(value)
        kind = {"f": np.float32, "i": np.int64, "u": np.int64}.get(array.dtype.kind)
        array = np.ascontiguousarray(array if kind is None else array.astype(kind))
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())

    for key in ("text", "train", "train_labels", "val", "val_labels", "test", "test_labels"):
        add(key, getattr(fs, key))
    add("classnames", np.asarray(fs.classnames, dtype=str))
    add("logit_scale", np.float64(fs.logit_scale))
    for seed in sorted(fs.fewshot):
        add(f"fewshot {seed}", fs.fewshot[seed])
    for key in sorted(fs.draws):
        add(f"draw {key}", fs.draws[key])
        add(f"draw_val {key}", fs.val_draws.get(key, np.zeros(0, np.int64)))
    if fs.text_prompts is not None:
        add("text_prompts", fs.text_prompts)
    return "sha256:" + h.hexdigest()[:16]


DRAW_KEYS = ("draw_samplers", "draw_seeds", "draw_shots", "draw_index", "draw_val")


def _write_draws(fs: FeatureSet) -> dict[str, np.ndarray]:
    keys = sorted(fs.draws)
    width = max(np.asarray(fs.draws[k]).shape[1] for k in keys)
    val_width = max([len(fs.val_draws.get(k, ())) for k in keys] + [1])
    index = np.full((len(keys), fs.num_classes, width), -1, np.int64)
    val = np.full((len(keys), val_width), -1, np.int64)
    for i, key in enumerate(keys):
        rows = np.asarray(fs.draws[key])
        index[i, :, :rows.shape[1]] = rows
        val_rows = np.asarray(fs.val_draws.get(key, ()), np.int64)
        val[i, :len(val_rows)] = val_rows
    return {"draw_samplers": np.asarray([k[0] for k in keys], dtype=str),
            "draw_seeds": np.asarray([k[1] for k in keys], np.int64),
            "draw_shots": np.asarray([k[2] for k in keys], np.int64),
            "draw_index": index, "draw_val": val}


def _read_draws(path: str, data: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    present = [k for k in DRAW_KEYS if k in data]
    if not present:
        return {}, {}
    if len(present) != len(DRAW_KEYS):
        missing = next(k for k in DRAW_KEYS if k not in data)
        raise FeatureFileError(f"{path}: key '{missing}' missing (the draw_* keys go together)")
    draws, val_draws = {}, {}
    for i, (sampler, seed, shots) in enumerate(zip(data["draw_samplers"], data["draw_seeds"],
                                                   data["draw_shots"])):
        key = (str(sampler), int(seed), int(shots))
        draws[key] = data["draw_index"][i][:, :int(shots)]
        rows = data["draw_val"][i]
        if (rows >= 0).any():
            val_draws[key] = rows[rows >= 0]
    return draws, val_draws


def support_index(fs: FeatureSet, shots: int, seed: int, sampler: str = "nested") -> np.ndarray:
    """Rows of ``fs.train`` forming the (seed, shots) support set → int [C, shots].

    ``nested``: the file's ``fewshot_index`` for the seed when it has one, else
    the nested sampler on the training pool. ``official`` / ``official_chained``:
    the file's draw of that sampler, seed and shot count (extracted with it).

    Raises:
      DataError: the file's few-shot index lacks the seed or has too few
        shots; or the pool has a class with fewer than ``shots`` images; or it
        holds no such official draw.
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    if sampler != "nested":
        if (sampler, seed, shots) not in fs.draws:
            held = sorted(k for k in fs.draws if k[0] == sampler)
            raise DataError(f"the features hold no {sampler} draw of seed {seed} at {shots} "
                            f"shots (they hold {held or 'none'}): extract them with that "
                            "sampler and grid")
        return np.asarray(fs.draws[(sampler, seed, shots)])
    if fs.fewshot:
        if seed not in fs.fewshot:
            raise DataError(f"the feature file's fewshot_index holds seeds {sorted(fs.fewshot)}, "
                            f"not seed {seed}")
        index = np.asarray(fs.fewshot[seed])
        if index.shape[1] < shots:
            raise DataError(f"the feature file's fewshot_index holds {index.shape[1]} shots per "
                            f"class for seed {seed}; {shots} asked")
        return index[:, :shots]
    return nested_fewshot(fs.train_labels, fs.num_classes, shots, seed, fs.classnames)
