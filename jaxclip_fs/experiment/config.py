"""One experiment, one typed config: what ``run``, ``evaluate`` and ``demo`` compute.

An :class:`ExperimentConfig` holds everything that defines a sweep -- the
data, the CLIP, how features are extracted, how image methods get their
inputs, the protocol, the methods (with options and hyperparameters), the
grid, and how it is executed. Flags build it (:mod:`jaxclip_fs.commands.flags`),
``run --config FILE`` loads it, the run directory stores it
(``DIR/config.json``; the manifest compares it), and the paper
reproductions wrap one (:mod:`~jaxclip_fs.experiment.reproduction`; ``run
--config`` reads them too). Like big_vision's ``ConfigDict`` / flax's
``get_config()``: the trainer reads the config whole.

Each field declares, once (:func:`~jaxclip_fs.experiment.settings.setting`),
its command-line flag, its default and what a rerun into the same run
directory may do with it (:data:`~jaxclip_fs.experiment.settings.RERUN_RULES`:
``fixed`` -- must repeat it; ``grid`` -- may add values; ``free`` -- may
change it; ``input`` -- may move it, its content is checked). The flags of
``run`` / ``evaluate`` / ``demo``, the flags ``run --config FILE`` accepts
(those of ``free`` and ``input`` fields; any other only where FILE leaves
the field unset), the manifest's comparison on rerun and the translation of
error messages into flags are derived from those declarations
(:data:`SETTINGS`). The table (checked against them by a test; a method
variant's own ``hp`` is fixed per variant label):

========== ============================================================ =========
section     fields                                                       on rerun
========== ============================================================ =========
methods     name, options (each a value or a list: a sweep axis), hp    grid
data        datasets, features (files), ood                              grid
            source                                                       fixed
            data_root                                                    free
model       backbone, weights                                            fixed
            imo_adapters (their content is checked instead)              input
extraction  views, aug_scale, aug_seed, dtype, batch_size               fixed
images      train_path, tap_cache_views, aug_scale                       fixed
            tap_cache_budget_gib                                         free
protocol    names (fair, fewshot, paper, validation_free)                grid
            sampler, prompts                                             fixed
hp          NAME -> value for every method declaring NAME                 fixed
grid        shots, seeds                                                 grid
execution   devices, fuse_datasets, plan, save_params, cache_dir,        free
            use_cache, workers, stall_timeout, program_timeout
train_dtype the trained heads' compute dtype (mixed precision)           fixed
========== ============================================================ =========

JSON round trip: :meth:`ExperimentConfig.to_dict` / :func:`from_dict`
(unknown keys are refused with the key's path), :func:`save` / :func:`load`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import protocol as protocol_lib
from jaxclip_fs.experiment import settings as settings_lib
from jaxclip_fs.experiment.settings import FIXED, FREE, GRID, INPUT, setting
from jaxclip_fs.io import atomic

FORMAT = "jaxclip-fs experiment"
FORMAT_VERSION = 1
SOURCES = ("coop", "tfds")
DTYPES = ("float32", "bfloat16")
SAVE_PARAMS = ("trained", "all", "none")
TRAIN_PATHS = ("auto", "trunk", "cache")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """A method and its settings.

    Attributes:
      name: registry name.
      options: option -> value, or a list of values (one variant each).
      hp: hyperparameters fixed for this method (``NAME -> value``).
    """

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    hp: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_name(cls, name: str) -> "MethodConfig":
        """A method with its defaults (a config file may name it alone)."""
        return cls(name)

    def variants(self) -> list[dict[str, str]]:
        """Every combination of the option values (an option's list is a sweep axis)."""
        combos: list[dict[str, str]] = [{}]
        for key in sorted(self.options):
            values = self.options[key]
            values = [values] if isinstance(values, str) else list(values)
            combos = [{**c, key: str(v)} for c in combos for v in values]
        return combos


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images or features come from.

    Attributes:
      datasets: registry names (or ``folder:PATH``) to extract from images.
      features: feature files to use instead (bring your own; dataset from their meta).
      ood: out-of-distribution test sets scored with their parent's fits.
      data_root: CoOp-layout data root or TFDS data dir (default ``$JAXCLIP_FS_DATA``).
      source: ``coop`` or ``tfds``.
    """

    datasets: tuple[str, ...] = setting((), flag="--dataset", rerun=GRID, axis="datasets")
    features: tuple[str, ...] = setting((), flag="--features", rerun=GRID, axis="datasets")
    ood: tuple[str, ...] = setting((), flag="--ood", rerun=GRID, axis="ood")
    data_root: str | None = setting(None, flag="--data-root", rerun=FREE)
    source: str = setting("coop", flag="--source", rerun=FIXED)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The CLIP: variant, weights (``random`` for random init) and optional IMO adapters."""

    backbone: str | None = setting(None, flag="--backbone", rerun=FIXED)
    weights: str | None = setting(None, flag="--weights", rerun=FIXED)
    imo_adapters: str | None = setting(None, flag="--imo-adapters", rerun=INPUT)


@dataclasses.dataclass(frozen=True)
class ExtractionConfig:
    """How image features are computed.

    Attributes:
      views: augmented views per train image (each a RandomResizedCrop + flip),
        besides the plain view 0 every feature file holds: Tip-Adapter's
        cache averages 10; trained methods take a fresh one every epoch when
        there are at least as many as epochs.
      aug_scale: RandomResizedCrop area range of the augmented views.
      aug_seed: seed of the augmented views.
      dtype: the CLIP's compute dtype -- encoding, and the frozen CLIP inside image
        methods' steps (features are stored as float32).
      batch_size: images per compiled encoding batch.
    """

    views: int = setting(10, flag="--views", rerun=FIXED)
    aug_scale: tuple[float, float] = setting((0.5, 1.0), flag="--aug-scale", rerun=FIXED)
    aug_seed: int = setting(0, flag="--aug-seed", rerun=FIXED)
    dtype: str = setting("float32", flag="--dtype", rerun=FIXED)
    batch_size: int = setting(64, flag="--batch-size", rerun=FIXED)


@dataclasses.dataclass(frozen=True)
class ImagesConfig:
    """How image methods (LDC) train: the frozen trunk in each step, or a tap cache.

    Attributes:
      train_path: ``auto`` (cache when it fits the budget), ``trunk`` or ``cache``.
      tap_cache_views: augmented views per support image in the tap cache,
        besides the clean view 0 (default: ``extraction.views``).
      tap_cache_budget_gib: memory the tap cache may take with ``auto``.
      aug_scale: RandomResizedCrop area range of the training crops (LDC: 0.8-1).
    """

    train_path: str = setting("auto", flag="--train-path", rerun=FIXED)
    tap_cache_views: int | None = setting(None, flag="--tap-cache-views", rerun=FIXED)
    tap_cache_budget_gib: float = setting(4.0, flag="--tap-cache-budget", rerun=FREE)
    aug_scale: tuple[float, float] = setting((0.8, 1.0), rerun=FIXED)


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """What selection sees and what a record reports (:mod:`~jaxclip_fs.experiment.protocol`).

    Attributes:
      names: the protocols to run, each a grid axis: ``fair`` (default),
        ``fewshot``, ``paper``, ``validation_free``.
      sampler: the few-shot sampler, or None for each protocol's own
        (``paper``: the official draw; the others: ``nested``).
      prompts: a CuPL-format prompt file (class name -> sentences) ensembled
        with the templates (``paper``: by the methods whose official classifier
        does, APE / APE-T; the others: by every method).
    """

    names: tuple[str, ...] = setting((protocol_lib.DEFAULT_PROTOCOL,), flag="--protocol",
                                     rerun=GRID, axis="protocols")
    sampler: str | None = setting(None, flag="--sampler", rerun=FIXED)
    prompts: str | None = setting(None, flag="--prompts", rerun=FIXED)


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """Shot counts and seeds: every method x dataset x shots x seeds is one cell."""

    shots: tuple[int, ...] = setting((1, 2, 4, 8, 16), flag="--shots", rerun=GRID, axis="shots")
    seeds: tuple[int, ...] = setting((1, 2, 3), flag="--seeds", rerun=GRID, axis="seeds")


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How the work is laid out; changes no number.

    Attributes:
      devices: use the first N devices (default: all).
      fuse_datasets: compatible datasets share a program (padded, masked).
      plan: how each (variant, datasets) program is laid out: ``auto`` (the
        engine's planner decides from the platform and XLA's cost and memory
        analyses), ``one``, ``per-shots`` (one program per shot count) or
        ``chunk:N`` (programs of at most N cells). Same records either way.
      save_params: orbax checkpoints of fitted params: ``trained``, ``all`` or ``none``.
      cache_dir, use_cache: the feature cache.
      workers: image loading threads.
      stall_timeout: seconds a program may leave the CPU idle on a CPU backend
        before it counts as deadlocked (an error; 0: no check).
      program_timeout: seconds any one program may take (0: no limit).
    """

    devices: int | None = setting(None, flag="--devices", rerun=FREE)
    fuse_datasets: bool = setting(False, flag="--fuse-datasets", rerun=FREE)
    plan: str = setting("auto", flag="--plan", rerun=FREE)
    save_params: str = setting("trained", flag="--save-params", rerun=FREE)
    cache_dir: str | None = setting(None, flag="--cache-dir", rerun=FREE)
    use_cache: bool = setting(True, flag="--no-cache", rerun=FREE)
    workers: int | None = setting(None, flag="--workers", rerun=FREE)
    stall_timeout: float = setting(300.0, flag="--stall-timeout", rerun=FREE)
    program_timeout: float = setting(0.0, flag="--program-timeout", rerun=FREE)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment (module docstring)."""

    methods: tuple[MethodConfig, ...] = setting((), flag="--method", rerun=GRID, axis="methods")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    extraction: ExtractionConfig = ExtractionConfig()
    images: ImagesConfig = ImagesConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    hp: Mapping[str, float] = setting(flag="--hp", rerun=FIXED, factory=dict)
    grid: GridConfig = GridConfig()
    execution: ExecutionConfig = ExecutionConfig()
    train_dtype: str = setting("float32", flag="--compute-dtype", rerun=FIXED)

    # --- derived views ------------------------------------------------------------------

    def variants(self) -> list[tuple[str, MethodConfig, dict[str, str]]]:
        """``(label, method config, options)`` of every method variant, in config order.

        The label names the options that differ from the method's defaults
        (``ldc[fusion=concat]``; plain ``ldc`` for the defaults).

        Raises:
          ConfigError: unknown method, option or value.
        """
        from jaxclip_fs import methods as registry

        out = []
        for method in self.methods:
            for options in method.variants():
                out.append((registry.get(method.name, **options).label, method, options))
        return out

    def labels(self) -> tuple[str, ...]:
        return tuple(label for label, _, _ in self.variants())

    def fixed_settings(self) -> dict:
        """The ``fixed`` fields (:data:`SETTINGS`), nested by section: a rerun into the same
        directory must repeat them (they shape every number)."""
        values = {s.path: settings_lib.get(self, s.path) for s in SETTINGS if s.rerun == FIXED}
        values["hp"] = dict(sorted(self.hp.items()))
        return _jsonable(settings_lib.nested(values))

    def grid_lists(self) -> dict:
        """The ``grid`` fields by axis (:data:`GRID_AXES`): a rerun may extend them. The
        methods axis holds the variant labels."""
        lists: dict[str, list] = {axis: [] for axis in GRID_AXES}
        for s in SETTINGS:
            if s.rerun == GRID:
                value = self.labels() if s.path == "methods" else settings_lib.get(self, s.path)
                lists[s.axis] += list(value)
        return lists

    def method_hp(self) -> dict[str, dict[str, float]]:
        """variant label -> its own fixed hyperparameters (compared per label on rerun)."""
        return {label: dict(sorted(method.hp.items())) for label, method, _ in self.variants()}

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                **_jsonable(dataclasses.asdict(self))}

    def replace(self, **sections) -> "ExperimentConfig":
        """A copy with whole sections or fields replaced (``execution=...``)."""
        return dataclasses.replace(self, **sections)


#: Every declared field of the experiment config (flag, default, rerun rule).
SETTINGS = settings_lib.declared(ExperimentConfig)
#: The grid axes (manifest keys) of the ``grid`` fields, in declaration order.
GRID_AXES = tuple(dict.fromkeys(s.axis for s in SETTINGS if s.rerun == GRID))


def declaration(path: str) -> settings_lib.Setting:
    """The declaration of the field ``path`` (``extraction.views``)."""
    for s in SETTINGS:
        if s.path == path:
            return s
    raise KeyError(path)


# --- validation -------------------------------------------------------------------------------


def check(config: ExperimentConfig) -> ExperimentConfig:
    """Validates values that need no registry (names the field); returns the config.

    Method names, options and hyperparameter names are checked where the
    registry is at hand (:func:`jaxclip_fs.experiment.plan.resolve_variants`).

    Raises:
      ConfigError: one line naming the field and the rule.
    """
    def choose(field: str, value, allowed):
        if value not in allowed:
            raise ConfigError(f"{field} must be one of {', '.join(allowed)}, got '{value}'")

    if not config.methods:
        raise ConfigError("methods: name at least one method")
    if bool(config.data.datasets) == bool(config.data.features):
        raise ConfigError("data: give either datasets (extracted here) or features (files)")
    choose("data.source", config.data.source, SOURCES)
    choose("extraction.dtype", config.extraction.dtype, DTYPES)
    choose("train_dtype", config.train_dtype, DTYPES)
    if not config.protocol.names:
        raise ConfigError("protocol.names must name at least one protocol")
    for name in config.protocol.names:
        choose("protocol.names", name, protocol_lib.PROTOCOLS)
    if config.protocol.sampler is not None:
        choose("protocol.sampler", config.protocol.sampler, protocol_lib.SAMPLERS)
    choose("images.train_path", config.images.train_path, TRAIN_PATHS)
    choose("execution.save_params", config.execution.save_params, SAVE_PARAMS)
    parse_plan(config.execution.plan)
    for name, value, low in (("grid.shots", config.grid.shots, 1),
                             ("grid.seeds", config.grid.seeds, 0)):
        if not value:
            raise ConfigError(f"{name} must name at least one value")
        if min(value) < low:
            raise ConfigError(f"{name} values must be >= {low}, got {min(value)}")
    for name, value, low in (("extraction.views", config.extraction.views, 0),
                             ("extraction.batch_size", config.extraction.batch_size, 1),
                             ("images.tap_cache_views", config.images.tap_cache_views or 0, 0)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    low, high = config.extraction.aug_scale
    if not 0 < low <= high <= 1:
        raise ConfigError(f"extraction.aug_scale must satisfy 0 < low <= high <= 1, "
                          f"got {low},{high}")
    for name in ("stall_timeout", "program_timeout"):
        if getattr(config.execution, name) < 0:
            raise ConfigError(f"execution.{name} must be >= 0 seconds (0: off)")
    if config.execution.devices is not None and config.execution.devices < 1:
        raise ConfigError(f"execution.devices must be >= 1, got {config.execution.devices}")
    if config.data.ood and config.data.features:
        raise ConfigError("data.ood needs datasets (the OOD test sets are extracted here)")
    labels = config.labels()
    if len(set(labels)) != len(labels):
        raise ConfigError("methods: a method variant is listed twice")
    return config


PLANS = ("auto", "one", "per-shots", "chunk:N")


def parse_plan(text: str, field: str = "execution.plan") -> tuple[str, int]:
    """``auto`` / ``one`` / ``per-shots`` / ``chunk:N`` -> ``(kind, N)`` (N = 0 unless chunk).

    Raises:
      ConfigError: anything else (names ``field``).
    """
    kind, _, size = str(text).partition(":")
    if kind in ("auto", "one", "per-shots") and not size:
        return kind, 0
    if kind == "chunk" and size.isdigit() and int(size) >= 1:
        return kind, int(size)
    raise ConfigError(f"{field} must be one of {', '.join(PLANS)} (N >= 1 cells), got '{text}'")


# --- JSON -------------------------------------------------------------------------------------


def from_dict(raw: Mapping[str, Any], where: str = "config") -> ExperimentConfig:
    """The config of a JSON object (as :meth:`ExperimentConfig.to_dict` writes).

    Raises:
      ConfigError: an unknown key, a missing required one, or a value of the
        wrong type (names its path, e.g. ``config.grid.shots``).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a JSON object")
    raw = dict(raw)
    fmt = raw.pop("format", FORMAT)
    version = raw.pop("format_version", FORMAT_VERSION)
    if fmt != FORMAT or version != FORMAT_VERSION:
        raise ConfigError(f"{where}: not a {FORMAT} v{FORMAT_VERSION} config "
                          f"(format {fmt!r} v{version})")
    return check(settings_lib.build(ExperimentConfig, raw, where))


def _jsonable(value):
    """Tuples -> lists, recursively (JSON's own types)."""
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save(path: str | os.PathLike, config: ExperimentConfig) -> None:
    """Writes the config as JSON (atomically)."""
    atomic.write_json(path, config.to_dict())


def read(path: str | os.PathLike) -> dict:
    """The experiment object of a config file: an experiment config, or the ``experiment`` of
    a reproduction (:mod:`~jaxclip_fs.experiment.reproduction`, published methods added).

    Raises:
      ConfigError: unreadable file, not JSON, or not a JSON object (names the file).
    """
    from jaxclip_fs.experiment import reproduction

    path = os.fspath(path)
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a JSON object")
    return reproduction.experiment(raw) if reproduction.is_reproduction(raw) else raw


def load(path: str | os.PathLike) -> ExperimentConfig:
    """Reads a config file written by :func:`save` (or by hand, or a reproduction's).

    Raises:
      ConfigError: unreadable file, not JSON, or an invalid config (names the key).
    """
    return from_dict(read(path), where=os.path.basename(os.fspath(path)))
