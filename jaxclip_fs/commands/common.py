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
import os
from typing import Sequence

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment import protocol as protocol_lib

WEIGHTS_HELP = "local checkpoint path, hub id, 'openai', or 'random' (see `jaxclip-fs embed -h`)"


# --- argument groups ---------------------------------------------------------------------------


def add_data_arguments(group) -> None:
    """``--data-root``, ``--source``."""
    group.add_argument("--data-root", metavar="DIR",
                       help="CoOp-layout data root (default $JAXCLIP_FS_DATA), "
                            "or the TFDS data dir")
    group.add_argument("--source", choices=config_lib.SOURCES, default="coop",
                       help="where the benchmark sets come from (default: coop)")


def add_model_arguments(group, required: bool = False) -> None:
    """``--backbone``, ``--weights``."""
    group.add_argument("--backbone", required=required,
                       help="variant name, e.g. RN50, ViT-B/16 (tiny-vit, tiny-rn for tests)")
    group.add_argument("--weights", required=required, help=WEIGHTS_HELP)


def add_cache_arguments(group) -> None:
    """``--cache-dir``, ``--no-cache``, ``--workers``."""
    group.add_argument("--cache-dir", metavar="DIR",
                       help="feature cache (default $JAXCLIP_FS_CACHE or ~/.cache/jaxclip-fs)")
    group.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    group.add_argument("--workers", type=int, metavar="N",
                       help="image loading threads (default: CPU count)")


def add_quiet_argument(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def add_compute_dtype_argument(group, trained: bool = True) -> None:
    """``--compute-dtype``: mixed precision (the CLIP encoders and, with ``trained``, the
    trained heads)."""
    what = ("the CLIP encoders and the trained heads' training steps (Tip-Adapter-F, APE-T, "
            "CLIP-Adapter, LDC) compute" if trained else "the CLIP encoders compute")
    group.add_argument("--compute-dtype", choices=config_lib.DTYPES, default="float32",
                       help=f"mixed precision: {what} in this dtype; parameters, optimizer "
                            "state, losses and stored features stay float32 (default float32; "
                            "bfloat16 is meant for GPUs and TPUs, a CPU gains little or nothing)")


def encode_dtype(args: argparse.Namespace) -> str:
    """The CLIP encoders' compute dtype: ``--dtype`` if given, else ``--compute-dtype``."""
    return getattr(args, "dtype", None) or getattr(args, "compute_dtype", "float32")


def add_extraction_arguments(group, views_default: int = 10, trained: bool = True) -> None:
    """``--views``, ``--aug-scale``, ``--aug-seed``, ``--compute-dtype``, ``--dtype``,
    ``--batch-size``."""
    group.add_argument("--views", type=int, default=views_default, metavar="N",
                       help="augmented views per train image, besides the plain one (default "
                            f"{views_default}, Tip-Adapter's cache; trained methods take a fresh "
                            "one per epoch when there are as many as epochs)")
    group.add_argument("--aug-scale", default="0.5,1", metavar="LOW,HIGH",
                       help="RandomResizedCrop area range of the views (default 0.5,1)")
    group.add_argument("--aug-seed", type=int, default=0, help="augmentation seed (default 0)")
    add_compute_dtype_argument(group, trained)
    group.add_argument("--dtype", choices=config_lib.DTYPES,
                       help="the CLIP encoders' compute dtype alone (default: --compute-dtype; "
                            "features are stored as float32)")
    group.add_argument("--batch-size", type=int, default=64, metavar="B",
                       help="images per compiled encoding batch (default 64)")


def add_method_arguments(group, methods_help: str) -> None:
    """``--method``, ``--option``, ``--hp``."""
    group.add_argument("--method", default="all", metavar="M1,M2,...", help=methods_help)
    group.add_argument("--option", nargs="+", action="extend", default=[],
                       metavar="METHOD.NAME=V1[,V2]",
                       help="a method's structural option; several values sweep it, e.g. "
                            "ldc.fusion=fixed,concat ldc.ablation=full,maf_only (see "
                            "`jaxclip-fs methods`)")
    group.add_argument("--hp", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                       help="fix a hyperparameter for every method that has it (repeatable; "
                            "each takes one or more NAME=VALUE; METHOD.NAME=VALUE for one method)")


def add_protocol_arguments(group, several: bool = True) -> None:
    """``--protocol``, ``--sampler``, ``--prompts``."""
    group.add_argument("--protocol", default=protocol_lib.DEFAULT_PROTOCOL,
                       metavar="P1,P2" if several else "P",
                       help="fair (default): everything chosen on the whole val split, never on "
                            "test, same images / views / prompts for all; fewshot: fair with "
                            "CoOp's min(K, 4) val images per class; paper: each method as its "
                            "official code produced the published numbers (selects on test "
                            "where it did; labelled optimistic); validation_free: nothing "
                            "selected and no validation image read -- each method's fixed "
                            "default hyperparameters, its final epoch"
                            + ("; several run side by side (e.g. fair,paper)" if several else ""))
    group.add_argument("--sampler", choices=protocol_lib.SAMPLERS,
                       help="few-shot sampler (default: nested for fair/fewshot/"
                            "validation_free, the official draw for paper)")
    group.add_argument("--prompts", metavar="FILE.json",
                       help="CuPL-format prompt file (class name -> sentences) ensembled with the "
                            "templates (fair/fewshot/validation_free: by every method; paper: "
                            "by APE / APE-T)")


def add_images_arguments(group) -> None:
    """The image methods' input pipeline (LDC)."""
    group.add_argument("--train-path", choices=config_lib.TRAIN_PATHS, default="auto",
                       help="image methods: run the frozen trunk in each step, or cache the "
                            "support taps (auto: cache when it fits --tap-cache-budget)")
    group.add_argument("--tap-cache-budget", type=float, default=4.0, metavar="GiB",
                       help="memory the tap cache may take (default 4)")
    group.add_argument("--tap-cache-views", type=int, metavar="N",
                       help="tap cache: augmented views per support image besides the clean one "
                            "(default: --views)")
    group.add_argument("--imo-adapters", metavar="DIR",
                       help="IMO adapters from `jaxclip-fs train-imo` (paired-feature methods: "
                            "TA++, TX++)")


# --- parsing ---------------------------------------------------------------------------------


def parse_int_list(text: str | Sequence[int], flag: str, minimum: int) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4), sorted and distinct.

    Raises:
      ConfigError: not integers, empty, or below ``minimum`` (names ``flag``).
    """
    if isinstance(text, str):
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"{flag} must be a comma list of integers, got '{text}'") from None
    else:
        values = [int(v) for v in text]
    if not values:
        raise ConfigError(f"{flag} must name at least one value")
    if min(values) < minimum:
        raise ConfigError(f"{flag} values must be >= {minimum}, got {min(values)}")
    return tuple(sorted(set(values)))


def parse_names(text: str | Sequence[str], flag: str) -> tuple[str, ...]:
    """``"a,b"`` -> ("a", "b") in the order given, without repeats.

    Raises:
      ConfigError: empty (names ``flag``).
    """
    parts = text.split(",") if isinstance(text, str) else text
    names = [str(p).strip() for p in parts if str(p).strip()]
    if not names:
        raise ConfigError(f"{flag} must name at least one value")
    return tuple(dict.fromkeys(names))


def parse_scale(text: str, flag: str = "--aug-scale") -> tuple[float, float]:
    """``"0.5,1"`` -> (0.5, 1.0); ConfigError naming ``flag`` otherwise."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} must be LOW,HIGH (e.g. 0.5,1), got '{text}'") from None
    return low, high


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


def plan_of(args: argparse.Namespace) -> str:
    """``--plan`` (``--program-per-shots`` = ``--plan per-shots``); default ``auto``.

    Raises:
      ConfigError: both flags, disagreeing (names them).
    """
    plan = getattr(args, "plan", None)
    if getattr(args, "program_per_shots", False):
        if plan not in (None, "per-shots"):
            raise ConfigError(f"--program-per-shots means --plan per-shots, not --plan {plan}")
        plan = "per-shots"
    plan = plan or "auto"
    config_lib.parse_plan(plan, "--plan")
    return plan


def absolute_path(path: str | None) -> str | None:
    """``path`` made absolute (``~`` expanded), so a saved config works from any directory."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def absolute_weights(weights: str | None) -> str | None:
    """``--weights`` made absolute when it names a local file or directory (``random``,
    ``openai``, variant names and hub ids stay as given)."""
    if weights is None or not os.path.exists(os.path.expanduser(weights)):
        return weights
    return absolute_path(weights)


def canonical_datasets(names: Sequence[str]) -> tuple[str, ...]:
    """Dataset names with ``folder:PATH`` made absolute (one name per folder, from any
    directory); registry names stay."""
    from jaxclip_fs.data.folder import PREFIX

    return tuple(dict.fromkeys(
        PREFIX + absolute_path(n[len(PREFIX):]) if n.startswith(PREFIX) else n for n in names))


def experiment_config(args: argparse.Namespace, *, datasets: Sequence[str] = (),
                      features: Sequence[str] = (), methods: Sequence[str],
                      shots: Sequence[int], seeds: Sequence[int],
                      ood: Sequence[str] = ()) -> config_lib.ExperimentConfig:
    """The experiment config of ``run`` / ``evaluate`` flags (absent flags keep defaults).

    Paths of inputs (feature files, weights, prompts, IMO adapters, data root, cache,
    folder datasets) are stored absolute, so ``run --config`` works from anywhere."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    method_list, shared = method_configs(methods, get("option", []), get("hp", []))
    backbone = get("backbone")
    if backbone:
        from jaxclip_fs.clip.variants import canonical_name

        backbone = canonical_name(backbone)
    defaults = config_lib.ExtractionConfig()
    images = config_lib.ImagesConfig()
    return config_lib.check(config_lib.ExperimentConfig(
        methods=method_list,
        data=config_lib.DataConfig(datasets=canonical_datasets(datasets),
                                   features=tuple(absolute_path(f) for f in features),
                                   ood=tuple(ood), data_root=absolute_path(get("data_root")),
                                   source=get("source", "coop")),
        model=config_lib.ModelConfig(backbone=backbone, weights=absolute_weights(get("weights")),
                                     imo_adapters=absolute_path(get("imo_adapters"))),
        extraction=config_lib.ExtractionConfig(
            views=get("views", defaults.views),
            aug_scale=parse_scale(get("aug_scale", "0.5,1")),
            aug_seed=get("aug_seed", defaults.aug_seed), dtype=encode_dtype(args),
            batch_size=get("batch_size", defaults.batch_size)),
        images=config_lib.ImagesConfig(
            train_path=get("train_path", images.train_path),
            tap_cache_views=get("tap_cache_views", images.tap_cache_views),
            tap_cache_budget_gib=get("tap_cache_budget", images.tap_cache_budget_gib)),
        protocol=config_lib.ProtocolConfig(
            names=parse_names(get("protocol", protocol_lib.DEFAULT_PROTOCOL), "--protocol"),
            sampler=get("sampler"), prompts=absolute_path(get("prompts"))),
        hp=shared,
        grid=config_lib.GridConfig(shots=tuple(shots), seeds=tuple(seeds)),
        execution=config_lib.ExecutionConfig(
            devices=get("devices"), fuse_datasets=bool(get("fuse_datasets", False)),
            plan=plan_of(args),
            save_params=get("save_params", "trained"), cache_dir=absolute_path(get("cache_dir")),
            use_cache=not get("no_cache", False), workers=get("workers"),
            stall_timeout=get("stall_timeout", 300.0),
            program_timeout=get("program_timeout", 0.0)),
        train_dtype=get("compute_dtype", "float32"),
    ))


def platform_problem() -> str | None:
    """One line when JAX could not start the platform ``JAX_PLATFORMS`` asks for (else None):
    :func:`jaxclip_fs.engine.platforms.platform_problem`."""
    from jaxclip_fs.engine.platforms import platform_problem as problem

    return problem()
