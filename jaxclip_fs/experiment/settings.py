"""A config field's declaration: its flag, its default and what a rerun may do with it.

A field of a config dataclass is declared with :func:`setting`
(``views: int = setting(10, flag="--views", rerun=FIXED)``); :func:`declared`
lists every declared field of a config, section by section, as
:class:`Setting` records (``extraction.views``). Everything else is derived
from those records: the command-line flags (:mod:`jaxclip_fs.commands.common`),
the flags ``run --config`` accepts, and which fields a rerun into a run
directory must repeat, may extend or may change
(:meth:`~jaxclip_fs.experiment.config.ExperimentConfig.fixed_settings`,
:meth:`~jaxclip_fs.experiment.config.ExperimentConfig.grid_lists`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Mapping

from jaxclip_fs.errors import ConfigError

FIXED = "fixed"
GRID = "grid"
FREE = "free"
INPUT = "input"

#: What a rerun into the same run directory may do with a field of each rule.
RERUN_RULES = {
    FIXED: "must repeat it: it shapes every number (the manifest compares it)",
    GRID: "may add values: an axis of the grid, the directory is extended",
    FREE: "may change it: where and how the work runs, no number changes",
    INPUT: "may change the path: the run directory checks the content it names",
}

#: Rules whose fields a rerun may change (``run --config FILE`` accepts their flags).
CHANGEABLE = (FREE, INPUT)


@dataclasses.dataclass(frozen=True)
class Setting:
    """A declared config field.

    Attributes:
      path: ``section.field`` (``train_dtype`` for a top-level field).
      flag: its command-line flag, or None (set in a config file only).
      rerun: one of :data:`RERUN_RULES`.
      default: its default value.
      axis: the grid axis (manifest key) of a ``grid`` field.
    """

    path: str
    flag: str | None
    rerun: str
    default: Any
    axis: str | None = None


def setting(default: Any = dataclasses.MISSING, *, rerun: str, flag: str | None = None,
            axis: str | None = None, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field declaring its flag, rerun rule and (grid fields) axis."""
    if rerun not in RERUN_RULES:
        raise ValueError(f"unknown rerun rule {rerun!r}")
    if (rerun == GRID) != (axis is not None):
        raise ValueError("a grid field names its axis, and only a grid field")
    metadata = {"flag": flag, "rerun": rerun, "axis": axis}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls, prefix: str = "") -> tuple[Setting, ...]:
    """Every declared field of the config dataclass ``cls``, sections (dataclass-valued
    fields without a declaration) walked in order."""
    out: list[Setting] = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if "rerun" not in f.metadata:
            if not isinstance(f.default, type) and dataclasses.is_dataclass(f.default):
                out.extend(declared(type(f.default), path + "."))
                continue
            raise TypeError(f"config field {path} declares no rerun rule (use setting())")
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else f.default)
        out.append(Setting(path, f.metadata["flag"], f.metadata["rerun"], default,
                           f.metadata["axis"]))
    return tuple(out)


def get(config: Any, path: str) -> Any:
    """The value of the field ``path`` (``extraction.views``) of ``config``."""
    for name in path.split("."):
        config = getattr(config, name)
    return config


def with_values(config: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with the fields ``path -> value`` replaced."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for path, value in values.items():
        head, dot, rest = path.partition(".")
        if dot:
            sections.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in sections.items():
        top[head] = with_values(getattr(config, head), inner)
    return dataclasses.replace(config, **top)


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        *heads, last = path.split(".")
        inner = out
        for head in heads:
            inner = inner.setdefault(head, {})
        inner[last] = value
    return out


def given_paths(raw: Mapping[str, Any], settings: tuple[Setting, ...]) -> set[str]:
    """The declared fields a raw config object (JSON) gives a value for."""
    given = set()
    for s in settings:
        inner: Any = raw
        for name in s.path.split("."):
            if not isinstance(inner, Mapping) or name not in inner:
                break
            inner = inner[name]
        else:
            given.add(s.path)
    return given


# --- typed JSON -> config dataclasses -------------------------------------------------------


def build(cls, raw: Mapping[str, Any], where: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a JSON object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        values[name] = convert(hints[name], value, f"{where}.{name}")
    missing = [n for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required")
    return cls(**values)


def convert(hint, value, where: str):
    """``value`` as type ``hint`` (dataclasses, tuples, optionals, mappings, scalars)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(value, str) and hasattr(hint, "from_name"):
        return hint.from_name(value)  # (e.g. a method with its defaults, given by name alone)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries")
        return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a JSON object")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number")
        if hint is int and value != int(value):
            raise ConfigError(f"{where} must be a whole number")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    raise TypeError(f"{where}: unsupported config type {hint}")
