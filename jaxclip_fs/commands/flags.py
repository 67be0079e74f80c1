"""The experiment config's fields on the command line.

Each field of :class:`~jaxclip_fs.experiment.config.ExperimentConfig` declares
its flag, its default and its rerun rule once (:data:`config_lib.SETTINGS`);
here is only how the flag reads (help, metavar, how its text becomes the
field's value). From the two come the commands' flags (:func:`add`, defaults
shown from the declarations), the config of a command line
(:func:`field_values`), the flags ``run --config`` accepts (those of fields a
rerun may change, :func:`config_overridable`), and the translation of a
library error naming a field (``execution.devices``) into the flag the user
typed (:func:`to_flags`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment import protocol as protocol_lib
from jaxclip_fs.experiment.settings import CHANGEABLE

WEIGHTS_HELP = "local checkpoint path, hub id, 'openai', or 'random' (see `jaxclip-fs embed -h`)"


# --- values ----------------------------------------------------------------------------------


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


def parse_scale(text: str | Sequence[float], flag: str = "--aug-scale") -> tuple[float, float]:
    """``"0.5,1"`` -> (0.5, 1.0); ConfigError naming ``flag`` otherwise."""
    try:
        low, high = (float(part) for part in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise ConfigError(f"{flag} must be LOW,HIGH (e.g. 0.5,1), got '{text}'") from None
    return low, high


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


def canonical_backbone(name: str) -> str:
    from jaxclip_fs.clip.variants import canonical_name

    return canonical_name(name)


def checked_plan(text: str, flag: str) -> str:
    config_lib.parse_plan(text, flag)
    return text


# --- how each field's flag reads ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a config field's flag reads (its name and default are the field's declaration).

    Attributes:
      help: what it does (its default is appended from the declaration).
      parse: ``(text, flag) -> value`` of the field (default: argparse's value as is).
      default_text: the help's default where the declared one says too little.
      follows: a field whose value this one takes when its flag is not given.
    """

    help: str
    metavar: str | None = None
    type: Callable | None = None
    choices: Sequence[str] | None = None
    store_true: bool = False
    nargs: str | None = None
    parse: Callable[[Any, str], Any] | None = None
    default_text: str | None = None
    follows: str | None = None


SPECS: Mapping[str, Flag] = {
    "methods": Flag("method names, or 'all' (default): every method the inputs allow (image "
                    "methods need --dataset; paired-feature methods also --imo-adapters)",
                    metavar="M1,M2,..."),
    "data.datasets": Flag("registry names or folder:PATH", metavar="D1,D2,...",
                          parse=lambda v, f: canonical_datasets(parse_names(v, f))),
    "data.features": Flag("use these feature files instead of extracting (dataset from their "
                          "meta)", metavar="FILE.npz", nargs="+",
                          parse=lambda v, f: tuple(absolute_path(p) for p in v)),
    "data.ood": Flag("out-of-distribution test sets scored with the fits on their parent "
                     "(imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r; needs --dataset "
                     "imagenet)", metavar="D1,D2,...", parse=parse_names),
    "data.data_root": Flag("CoOp-layout data root, or the TFDS data dir", metavar="DIR",
                           parse=lambda v, f: absolute_path(v), default_text="$JAXCLIP_FS_DATA"),
    "data.source": Flag("where the benchmark sets come from", choices=config_lib.SOURCES),
    "model.backbone": Flag("variant name, e.g. RN50, ViT-B/16 (tiny-vit, tiny-rn for tests)",
                           parse=lambda v, f: canonical_backbone(v)),
    "model.weights": Flag(WEIGHTS_HELP, parse=lambda v, f: absolute_weights(v)),
    "model.imo_adapters": Flag("IMO adapters from `jaxclip-fs train-imo` (paired-feature "
                               "methods: TA++, TX++)", metavar="DIR",
                               parse=lambda v, f: absolute_path(v)),
    "extraction.views": Flag("augmented views per train image, besides the plain one "
                             "(Tip-Adapter's cache; trained methods take a fresh one per epoch "
                             "when there are as many as epochs)", metavar="N", type=int),
    "extraction.aug_scale": Flag("RandomResizedCrop area range of the views", metavar="LOW,HIGH",
                                 parse=parse_scale),
    "extraction.aug_seed": Flag("augmentation seed", metavar="S", type=int),
    "extraction.dtype": Flag("the CLIP encoders' compute dtype alone (features are stored as "
                             "float32)", choices=config_lib.DTYPES, default_text="--compute-dtype",
                             follows="train_dtype"),
    "extraction.batch_size": Flag("images per compiled encoding batch", metavar="B", type=int),
    "images.train_path": Flag("image methods: run the frozen trunk in each step, or cache the "
                              "support taps (auto: cache when it fits --tap-cache-budget)",
                              choices=config_lib.TRAIN_PATHS),
    "images.tap_cache_views": Flag("tap cache: augmented views per support image besides the "
                                   "clean one", metavar="N", type=int, default_text="--views"),
    "images.tap_cache_budget_gib": Flag("memory the tap cache may take", metavar="GiB",
                                        type=float),
    "protocol.names": Flag(
        "fair: everything chosen on the whole val split, never on test, same images / views / "
        "prompts for all; fewshot: fair with CoOp's min(K, 4) val images per class; paper: each "
        "method as its official code produced the published numbers (selects on test where it "
        "did; labelled optimistic); validation_free: nothing selected and no validation image "
        "read -- each method's fixed default hyperparameters, its final epoch; several run side "
        "by side (e.g. fair,paper)", metavar="P1,P2", parse=parse_names),
    "protocol.sampler": Flag("few-shot sampler", choices=protocol_lib.SAMPLERS,
                             default_text="nested for fair/fewshot/validation_free, the "
                                          "official draw for paper"),
    "protocol.prompts": Flag("CuPL-format prompt file (class name -> sentences) ensembled with "
                             "the templates (fair/fewshot/validation_free: by every method; "
                             "paper: by APE / APE-T)", metavar="FILE.json",
                             parse=lambda v, f: absolute_path(v)),
    "hp": Flag("fix a hyperparameter for every method that has it (repeatable; each takes one or "
               "more NAME=VALUE; METHOD.NAME=VALUE for one method)", metavar="NAME=VALUE"),
    "grid.shots": Flag("shot counts", metavar="K1,K2,...",
                       parse=lambda v, f: parse_int_list(v, f, 1)),
    "grid.seeds": Flag("few-shot seeds", metavar="S1,S2,...",
                       parse=lambda v, f: parse_int_list(v, f, 0)),
    "execution.devices": Flag("use the first N devices", metavar="N", type=int,
                              default_text="all"),
    "execution.fuse_datasets": Flag("run compatible datasets in one program per method (padded "
                                    "classes and samples, masked; same records as separate "
                                    "programs)", store_true=True),
    "execution.plan": Flag("how each method x dataset program is laid out (same records): auto "
                           "(decided per program from the platform and XLA's cost and memory "
                           "analyses; logged and kept in the manifest), one, per-shots (one "
                           "program per shot count: no padding work on CPUs, more compilations) "
                           "or chunk:N (programs of at most N cells: less memory)",
                           metavar="auto|one|per-shots|chunk:N", parse=checked_plan),
    "execution.save_params": Flag("orbax checkpoints of fitted params: trained (methods that "
                                  "train), all, none", choices=config_lib.SAVE_PARAMS),
    "execution.cache_dir": Flag("feature cache", metavar="DIR", parse=lambda v, f: absolute_path(v),
                                default_text="$JAXCLIP_FS_CACHE or ~/.cache/jaxclip-fs"),
    "execution.use_cache": Flag("neither read nor write the feature cache", store_true=True,
                                parse=lambda v, f: not v),
    "execution.workers": Flag("image loading threads", metavar="N", type=int,
                              default_text="CPU count"),
    "execution.stall_timeout": Flag("stop with an error (status 3) when a program leaves the CPU "
                                    "idle this long on a CPU backend: XLA is deadlocked (0: off)",
                                    metavar="SECONDS", type=float),
    "execution.program_timeout": Flag("stop with an error (status 3) when one program runs "
                                      "longer (0: no limit)", metavar="SECONDS", type=float),
    "train_dtype": Flag("mixed precision: the CLIP encoders and the trained heads' training "
                        "steps (Tip-Adapter-F, APE-T, CLIP-Adapter, LDC) compute in this dtype; "
                        "parameters, optimizer state, losses and stored features stay float32 "
                        "(bfloat16 is meant for GPUs and TPUs, a CPU gains little or nothing)",
                        choices=config_lib.DTYPES),
}

#: Fields whose flags a command reads itself (the method list with --option / --hp).
OWN_PARSING = ("methods", "hp")


def dest(path: str) -> str:
    """The argparse destination of a field's flag (``--no-cache`` -> ``no_cache``)."""
    return config_lib.declaration(path).flag.lstrip("-").replace("-", "_")


def shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add(group, paths: Iterable[str], *, required: Sequence[str] = (),
        defaults: Mapping[str, Any] | None = None, help: Mapping[str, str] | None = None) -> None:
    """Adds the flags of the fields ``paths`` to an argparse group.

    Args:
      required: fields whose flag must be given.
      defaults: field -> this command's own default (else the declared one).
      help: field -> this command's own help text.
    """
    for path in paths:
        s, spec = config_lib.declaration(path), SPECS[path]
        default = (defaults or {}).get(path, s.default)
        text = (help or {}).get(path, spec.help)
        if spec.store_true:
            group.add_argument(s.flag, dest=dest(path), action="store_true", help=text)
            continue
        if spec.follows is None and path not in required:
            about = spec.default_text or (None if default is None else shown(default))
            text += f" (default: {about})" if about else ""
        elif spec.default_text:
            text += f" (default: {spec.default_text})"
        group.add_argument(s.flag, dest=dest(path), help=text, metavar=spec.metavar,
                           type=spec.type, choices=spec.choices, nargs=spec.nargs,
                           required=path in required,
                           default=None if spec.follows else default)


def field_values(args: argparse.Namespace, skip: Iterable[str] = (),
                 given: set[str] | None = None) -> dict[str, Any]:
    """``field path -> value`` of the fields whose flags ``args`` holds (a flag left at its
    default gives the declared default).

    Args:
      skip: fields the command sets itself.
      given: only these flags (the ones on the command line).
    """
    values: dict[str, Any] = {}
    for s in config_lib.SETTINGS:
        if s.flag is None or s.path in OWN_PARSING or s.path in skip:
            continue
        if given is not None and s.flag not in given:
            continue
        spec, name = SPECS[s.path], dest(s.path)
        if not hasattr(args, name) or getattr(args, name) is None:
            continue
        value = getattr(args, name)
        if spec.store_true or value != s.default:
            value = spec.parse(value, s.flag) if spec.parse else value
        values[s.path] = value
    for s in config_lib.SETTINGS:
        follows = SPECS.get(s.path, Flag("")).follows
        if follows and s.path not in values and follows in values:
            values[s.path] = values[follows]
    return values


def given_flags(argv: Iterable[str] | None) -> set[str]:
    """The ``--flags`` present on a command line (``--flag=value`` included)."""
    return {a.split("=", 1)[0] for a in argv or () if a.startswith("--")}


def config_overridable() -> tuple[str, ...]:
    """The config flags ``run --config FILE`` accepts whatever FILE says: those of the fields
    a rerun may change (free, input)."""
    return tuple(s.flag for s in config_lib.SETTINGS if s.flag and s.rerun in CHANGEABLE)


_FIELD = re.compile(r"(?<![\w.-])(" + "|".join(
    re.escape(s.path) for s in sorted(config_lib.SETTINGS, key=lambda s: -len(s.path))
    if s.flag and ("." in s.path or s.path == "train_dtype")) + r")(=true|=false)?(?![\w])")


def to_flags(message: str, only: set[str] | None = None) -> str:
    """A library message with the config fields it names (``execution.devices``) written as
    their flags (``--devices``; ``execution.use_cache=false`` as ``--no-cache``; ``hp
    NAME=VALUE`` as ``--hp NAME=VALUE``); ``only``: just the fields whose flags are among
    these."""
    def flag(match: re.Match) -> str:
        s, spec = config_lib.declaration(match.group(1)), SPECS[match.group(1)]
        if only is not None and s.flag not in only:
            return match.group(0)
        if match.group(2) is None:
            return s.flag
        if spec.store_true:
            value = spec.parse(True, s.flag) if spec.parse else True
            if match.group(2) == f"={str(value).lower()}":
                return s.flag
        return match.group(0)

    message = _FIELD.sub(flag, message)
    return message if only is not None and "--hp" not in only else _HP.sub("--hp ", message)


_HP = re.compile(r"(?<![\w.-])hp (?=[\w.]+=)")  # "hp NAME=VALUE": the top-level hp field
