"""Flags shared by several commands, and turning flags into an experiment config.

Every command module (``jaxclip_fs.commands.<name>``) defines ``NAME``,
``HELP``, ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args)``;
``cli.py`` only parses and dispatches. The flags that several commands
share are declared once here, and :func:`experiment_config` turns the
``run`` / ``evaluate`` / ``demo`` flags into one
:class:`~jaxclip_fs.experiment.config.ExperimentConfig`.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

from jaxclip_fs.commands import flags
from jaxclip_fs.commands.flags import parse_names
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment import settings as settings_lib

# --- argument groups (the config fields' flags: :mod:`~jaxclip_fs.commands.flags`) ----------


def add_data_arguments(group) -> None:
    """``--data-root``, ``--source``."""
    flags.add(group, ("data.data_root", "data.source"))


def add_model_arguments(group, required: bool = False) -> None:
    """``--backbone``, ``--weights``."""
    paths = ("model.backbone", "model.weights")
    flags.add(group, paths, required=paths if required else ())


def add_cache_arguments(group) -> None:
    """``--cache-dir``, ``--no-cache``, ``--workers``."""
    flags.add(group, ("execution.cache_dir", "execution.use_cache", "execution.workers"))


def add_quiet_argument(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def add_compute_dtype_argument(group, trained: bool = True) -> None:
    """``--compute-dtype``: mixed precision (the CLIP encoders and, with ``trained``, the
    trained heads)."""
    flags.add(group, ("train_dtype",), help=None if trained else {"train_dtype": (
        "mixed precision: the CLIP encoders compute in this dtype; parameters and stored "
        "features stay float32 (bfloat16 is meant for GPUs and TPUs, a CPU gains little or "
        "nothing)")})


def encode_dtype(args: argparse.Namespace) -> str:
    """The CLIP encoders' compute dtype: ``--dtype`` if given, else ``--compute-dtype``."""
    return getattr(args, "dtype", None) or getattr(args, "compute_dtype", "float32")


def add_extraction_arguments(group, trained: bool = True) -> None:
    """``--views``, ``--aug-scale``, ``--aug-seed``, ``--compute-dtype``, ``--dtype``,
    ``--batch-size``."""
    flags.add(group, ("extraction.views", "extraction.aug_scale", "extraction.aug_seed"))
    add_compute_dtype_argument(group, trained)
    flags.add(group, ("extraction.dtype", "extraction.batch_size"))


def add_method_arguments(group, methods_help: str) -> None:
    """``--method``, ``--option``, ``--hp``."""
    group.add_argument("--method", default="all", metavar="M1,M2,...", help=methods_help)
    group.add_argument("--option", nargs="+", action="extend", default=[],
                       metavar="METHOD.NAME=V1[,V2]",
                       help="a method's structural option; several values sweep it, e.g. "
                            "ldc.fusion=fixed,concat ldc.ablation=full,maf_only (see "
                            "`jaxclip-fs methods`)")
    group.add_argument("--hp", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                       help=flags.SPECS["hp"].help)


def add_protocol_arguments(group) -> None:
    """``--protocol``, ``--sampler``, ``--prompts``."""
    flags.add(group, ("protocol.names", "protocol.sampler", "protocol.prompts"))


def add_images_arguments(group) -> None:
    """The image methods' input pipeline (LDC), and the IMO adapters."""
    flags.add(group, ("images.train_path", "images.tap_cache_budget_gib",
                      "images.tap_cache_views", "model.imo_adapters"))


# --- parsing ---------------------------------------------------------------------------------


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    """``"NAME=VALUE"`` -> (NAME, VALUE); ConfigError naming ``flag`` otherwise."""
    name, sep, value = str(text).partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ConfigError(f"{flag} expects NAME=VALUE, got '{text}'")
    return name.strip(), value.strip()


def parse_hp(items: Sequence[str], methods: Sequence[str]) -> tuple[dict, dict]:
    """``--hp`` items -> (shared ``{name: value}``, per method ``{method: {name: value}}``).

    ``NAME=VALUE`` applies to every method that declares NAME (checked later,
    against the registry); ``METHOD.NAME=VALUE`` to that method only.

    Raises:
      ConfigError: malformed item, a non-numeric value, a name given twice, or
        a METHOD not among ``methods``.
    """
    shared: dict[str, float] = {}
    own: dict[str, dict[str, float]] = {}
    for item in items:
        name, value = split_assignment(item, "--hp")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"hyperparameter '{name}' needs a number, got '{value}'") from None
        method, dot, hp_name = name.rpartition(".")
        target = own.setdefault(method, {}) if dot else shared
        key = hp_name if dot else name
        if dot and method not in methods:
            raise ConfigError(f"--hp {item}: method '{method}' is not among --method "
                              f"({', '.join(methods)})")
        if key in target:
            raise ConfigError(f"hyperparameter '{name}' given twice")
        target[key] = number
    return shared, own


def parse_options(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, list]]:
    """``--option METHOD.NAME=V1,V2`` items -> ``{method: {name: [values]}}``.

    Raises:
      ConfigError: malformed item, or a METHOD not among ``methods``.
    """
    found: dict[str, dict[str, list]] = {}
    for item in items:
        name, value = split_assignment(item, "--option")
        method, dot, option = name.partition(".")
        if not dot or not option:
            raise ConfigError(f"--option expects METHOD.NAME=VALUE[,VALUE...], got '{item}'")
        if method not in methods:
            raise ConfigError(f"--option {item}: method '{method}' is not among --method "
                              f"({', '.join(methods)})")
        found.setdefault(method, {})[option] = list(parse_names(value, f"--option {name}"))
    return found


def selected_methods(text: str, kinds: Sequence[str]) -> tuple[str, ...]:
    """``--method`` -> names; ``all`` = every registered method whose inputs are available.

    Args:
      kinds: the input kinds these inputs provide (``features``, ``paired``, ``images``).

    Raises:
      ConfigError: empty, or an unknown method.
    """
    from jaxclip_fs import methods as methods_lib

    if text.strip() != "all":
        names = parse_names(text, "--method")
        for name in names:
            methods_lib.get(name)  # unknown names fail here, before any work
        return names
    return tuple(n for n in methods_lib.names() if methods_lib.get(n).inputs in kinds)


def input_kinds(features_files: bool, imo_adapters: bool) -> tuple[str, ...]:
    """The input kinds a run can provide: feature files give features only."""
    if features_files:
        return ("features",)
    return ("features", "images") + (("paired",) if imo_adapters else ())


def method_configs(names: Sequence[str], option_items: Sequence[str],
                   hp_items: Sequence[str]) -> tuple[tuple[config_lib.MethodConfig, ...], dict]:
    """``--method`` names, ``--option`` and ``--hp`` -> (method configs, shared hp)."""
    options = parse_options(option_items, names)
    shared, own = parse_hp(hp_items, names)
    return tuple(config_lib.MethodConfig(n, options.get(n, {}), own.get(n, {}))
                 for n in names), shared


def experiment_config(args: argparse.Namespace, methods: Sequence[str],
                      fields: Mapping[str, Any] | None = None) -> config_lib.ExperimentConfig:
    """The experiment config of ``run`` / ``evaluate`` / ``demo`` flags: the fields whose
    flags ``args`` holds (:func:`~jaxclip_fs.commands.flags.field_values`; absent flags keep
    the declared defaults), the ``fields`` (``path -> value``) the command sets itself, and
    ``methods`` with ``--option`` / ``--hp``.

    Paths of inputs (feature files, weights, prompts, IMO adapters, data root, cache,
    folder datasets) are stored absolute, so ``run --config`` works from anywhere."""
    fields = dict(fields or {})
    method_list, shared = method_configs(methods, getattr(args, "option", []),
                                         getattr(args, "hp", []))
    values = {**flags.field_values(args, skip=fields), **fields,
              "methods": method_list, "hp": shared}
    return config_lib.check(settings_lib.with_values(config_lib.ExperimentConfig(), values))


def platform_problem() -> str | None:
    """One line when JAX could not start the platform ``JAX_PLATFORMS`` asks for (else None):
    :func:`jaxclip_fs.engine.platforms.platform_problem`."""
    from jaxclip_fs.engine.platforms import platform_problem as problem

    return problem()
