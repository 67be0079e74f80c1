"""From pending cells to the programs a run will execute -- planned before any input is fetched.

:func:`plan_run` is the engine's planning step (``run_experiment`` and
``run --dry-run`` both call it):

1. each (input kind, dataset)'s sizes come from its provider
   (:mod:`~jaxclip_fs.pipelines.sizes`: feature files, or the dataset's
   labels and the CLIP's variant table; never an image), and every variant's
   hyperparameters are resolved there (bad values fail here, before any work);
2. one program per variant and dataset (or group of fused datasets:
   :func:`~jaxclip_fs.experiment.plan.plan_programs`);
3. each program's layout is decided by the planner
   (:func:`~jaxclip_fs.engine.planner.decide`) from XLA's numbers of the
   program lowered on abstract inputs (:mod:`~jaxclip_fs.engine.estimate`)
   and the machine (:func:`machine`): one program, one per shot count, or
   chunks -- or a one-line refusal when a program cannot fit.

So a program that cannot fit is refused before anything is extracted,
trained or written.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from jaxclip_fs.engine import batch as batch_lib
from jaxclip_fs.engine import estimate as estimate_lib
from jaxclip_fs.engine import hardware, planner, sharding
from jaxclip_fs.engine.rules import FEATURE_KINDS, rules_of
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import Cell, Program, Variant, fusion_groups, plan_programs
from jaxclip_fs.pipelines.features import Request


def mesh_of(config: config_lib.ExperimentConfig):
    """The cell mesh of ``execution.devices`` (default: every device).

    Raises:
      ConfigError: more devices asked for than there are (names execution.devices).
    """
    try:
        return sharding.cell_mesh(config.execution.devices)
    except ValueError as exc:
        raise ConfigError(f"execution.devices: {exc}") from None


def machine(mesh, *, calibrate: bool) -> planner.Machine:
    """The :class:`~jaxclip_fs.engine.planner.Machine` of a device mesh (its first device's
    memory; this machine's speed measured when ``calibrate``)."""
    device = mesh.devices.flat[0]
    memory, source = hardware.device_memory(device)
    parallel = hardware.cells_in_parallel(device.platform)
    calibration = hardware.calibrate() if calibrate else None
    return planner.Machine(device.platform, mesh.devices.size, memory, source, parallel,
                           calibration)


@dataclasses.dataclass
class Sizes:
    """The sizes of a run's inputs, fetched once per (kind, dataset)."""

    sources: object
    _found: dict = dataclasses.field(default_factory=dict)
    #: variant label -> the longest compilation measured for it (a program whose shapes were
    #: compiled before compiles in no time; the planner needs what a new shape costs)
    compiles: dict = dataclasses.field(default_factory=dict)

    def features(self, kind: str, dataset: str, label: str):
        key = (kind, dataset)
        if key not in self._found:
            self._found[key] = self.sources.provider(kind, label).sizes(dataset)
        return self._found[key]

    def test_size(self, kind: str, name: str, parent: str, label: str) -> int:
        key = ("test", kind, name)
        if key not in self._found:
            self._found[key] = self.sources.provider(kind, label).test_size(name, parent)
        return self._found[key]

    def clip(self, label: str):
        """The image source's CLIP architecture (no weights)."""
        if "clip" not in self._found:
            self._found["clip"] = self.sources.provider("images", label).abstract_clip()
        return self._found["clip"]


def plan_run(config: config_lib.ExperimentConfig, variants: Mapping[str, Variant], sources,
             pending: Sequence[Cell], ood_of: Mapping[str, Sequence[str]], mesh,
             requests: Callable[[str, str], Request], *,
             keep_params: Callable[[Variant], bool], keep_logits: bool = False,
             machine_: planner.Machine | None = None, compile_for_run: bool = True,
             exact_memory: bool = False, keep_going: bool = False,
             progress: Callable[[str], None] | None = None) -> list[planner.Decision]:
    """The decided layout of every program covering ``pending`` (module docstring).

    Args:
      variants: label -> variant. sources: the run's input providers.
      ood_of: dataset -> the OOD sets scored with its fits.
      requests: ``(input kind, dataset) -> Request`` (what its inputs must hold).
      keep_params: whether a variant's fitted params are gathered (saved).
      machine_: the machine to plan for (default: :func:`machine` of ``mesh``).
      compile_for_run: see :func:`~jaxclip_fs.engine.planner.decide`.
      exact_memory: compile every part for its memory analysis (dry runs report it).
      keep_going: a program that cannot fit gets a ``refused`` decision (its reason the
        refusal, its estimate the smallest part tried) and planning goes on (dry runs);
        else the refusal is raised.
      progress: a line per program planned (None: silent).

    Raises:
      ConfigError / DataError: a bad setting, missing data, or a program that cannot fit.
    """
    sizes = Sizes(sources)
    for label, dataset in dict.fromkeys((c.method, c.dataset) for c in pending):
        kind = variants[label].method.inputs
        check = getattr(sources.provider(kind, label), "check", None) \
            if kind in FEATURE_KINDS else None
        if check is not None:  # inputs in memory: a missing seed, draw or shot fails now
            check(dataset, requests(kind, dataset))
        for search in {rules_of(config, p, variants[label], dataset).searches
                       for p in config.protocol.names}:  # bad values fail here, before any work
            _resolve(variants[label], dataset, sizes, search)

    def groups_of(protocol: str, label: str, names: Sequence[str]) -> list[tuple[str, ...]]:
        variant = variants[label]
        kind = variant.method.inputs
        if kind not in FEATURE_KINDS or not config.execution.fuse_datasets:
            return [(d,) for d in names]

        def signature(d):
            found = sizes.features(kind, d, label)
            rules = rules_of(config, protocol, variant, d)
            return (tuple(ood_of.get(d, ())), rules,
                    batch_lib.fusion_signature(variant.method, found,
                                               variant.resolve(d, found.dim,
                                                               search=rules.searches)))
        return fusion_groups(names, signature, True)

    programs = plan_programs(pending, config.labels(), groups_of)
    if not programs:
        return []

    def decide(number: int, program: Program) -> planner.Decision:
        started = time.perf_counter()
        variant = variants[program.method]
        measure = _measure(program, variant, sizes, config, mesh, ood_of, requests,
                           keep_params(variant), keep_logits, budget=here.budget)
        image = variant.method.inputs not in FEATURE_KINDS
        try:
            decision = planner.decide(program, config.execution.plan, here, measure,
                                      streams_per_program=image,
                                      compile_for_run=compile_for_run and not image)
        except planner.DoesNotFit as refusal:
            if not keep_going:
                raise
            decision = planner.Decision(program, "refused", (), str(refusal),
                                        (refusal.estimate,), config.execution.plan)
        if exact_memory:
            decision = dataclasses.replace(decision, estimates=tuple(
                e if e.exact else measure(e.program, "memory") for e in decision.estimates))
        if progress is not None:
            progress(f"planned {number}/{len(programs)} {program.name}: {decision.plan} "
                     f"({time.perf_counter() - started:.1f} s)")
        return decision

    deciding = jax.process_count() == 1 or jax.process_index() == 0
    here = (machine_ or machine(mesh, calibrate=True)) if deciding else None
    decisions = [decide(n, p) for n, p in enumerate(programs, 1)] if deciding else []
    if jax.process_count() > 1:
        return _follow_process_zero(programs, decisions, config.execution.plan)
    return decisions


_PLAN_CODES = ("one", "per-shots", "chunk", "per-shots, chunk")


def _follow_process_zero(programs: Sequence[Program], decisions: Sequence[planner.Decision],
                         requested: str) -> list[planner.Decision]:
    """Multi-host: process 0's decisions (its timings) broadcast; every process runs the same
    programs."""
    from jax.experimental import multihost_utils

    codes = np.zeros((len(programs), 2), np.int64)
    for i, decision in enumerate(decisions):  # process 0's
        kind, _, size = decision.plan.partition(":")
        codes[i] = (_PLAN_CODES.index(kind), int(size or 0))
    codes = np.asarray(multihost_utils.broadcast_one_to_all(codes))
    if jax.process_index() == 0:
        return list(decisions)
    found = []
    for program, (kind, size) in zip(programs, codes):
        plan = _PLAN_CODES[int(kind)] + (f":{int(size)}" if "chunk" in _PLAN_CODES[int(kind)]
                                         else "")
        parts = planner.apply(program, plan)
        found.append(planner.Decision(program, plan, tuple(parts), "decided by process 0", (),
                                      requested))
    return found


def _resolve(variant: Variant, dataset: str, sizes: Sizes, search: bool):
    kind = variant.method.inputs
    if kind in FEATURE_KINDS:
        return variant.resolve(dataset, sizes.features(kind, dataset, variant.label).dim,
                               search=search)
    return variant.resolve(dataset, sizes.clip(variant.label).config.embed_dim, search=search)


def _measure(whole: Program, variant: Variant, sizes: Sizes, config, mesh, ood_of, requests,
             keep_params: bool, keep_logits: bool, budget: int | None = None) -> planner.Measure:
    """``measure(program, mode)`` for the parts of ``whole`` (memoised per part and mode).

    A tower program whose compiled memory exceeds ``budget`` (bytes per device) is measured
    again with its blocks rematerialised, and those numbers are kept when smaller (the
    estimate's ``options`` say ``remat``; the run follows them: the same results, less
    memory for more compute)."""
    kind = variant.method.inputs
    rules = rules_of(config, whole.protocol, variant, whole.datasets[0])
    ood = tuple(ood_of.get(whole.datasets[0], ()))
    found: dict = {}

    def measure(program: Program, mode: str | None) -> planner.Estimate:
        # parts of equal shape (chunks of a dataset, with as many seeds and the same top shot
        # count) lower to the same program: measure one, reuse its numbers
        shape = (tuple(len(program.cells_of(d)) for d in program.datasets), len(program.seeds),
                 max(program.shots), program.datasets)
        for have in {None: ("run", "memory", None), "memory": ("run", "memory"),
                     "run": ("run",)}[mode]:
            if (shape, have) in found:
                return dataclasses.replace(found[(shape, have)], program=program)
        if kind in FEATURE_KINDS:
            result = estimate_lib.feature_estimate(
                program, variant,
                {d: sizes.features(kind, d, variant.label) for d in program.datasets},
                rules=rules,
                ood_test=tuple(sizes.test_size(kind, o, whole.datasets[0], variant.label)
                               for o in ood),
                mesh=mesh, keep_params=keep_params, keep_logits=keep_logits, mode=mode)
        elif variant.method.towers is not None:
            clip = sizes.clip(variant.label)
            source = sizes.sources.provider("images", variant.label)
            image = estimate_lib.image_sizes(
                source, program.datasets[0], program, variant.method, clip, rules=rules,
                request=requests("images", program.datasets[0]), ood=ood)

            def tower(remat: bool):
                return estimate_lib.tower_estimate(
                    program, variant, clip, image, rules=rules, train_dtype=config.train_dtype,
                    batch_images=config.extraction.batch_size, mesh=mesh,
                    keep_logits=keep_logits, mode=mode, remat=remat)

            result = tower(False)
            if budget is not None and result.exact and result.memory > budget:
                again = tower(True)
                if again.memory < result.memory:
                    result = dataclasses.replace(
                        again, options=(("remat", True),),
                        notes=again.notes + (f"blocks rematerialised: "
                                             f"{planner.gib(result.memory)} per device without",))
        else:
            clip = sizes.clip(variant.label)
            source = sizes.sources.provider("images", variant.label)
            from jaxclip_fs.engine.image_program import bind
            from jaxclip_fs.pipelines.images import image_spec

            method = bind(variant.method, image_spec(clip))
            image = estimate_lib.image_sizes(
                source, program.datasets[0], program, method, clip, rules=rules,
                request=requests("images", program.datasets[0]), ood=ood)
            result = estimate_lib.image_estimate(
                program, variant, clip, image, rules=rules, settings=config.images,
                batch_images=config.extraction.batch_size, mesh=mesh, keep_logits=keep_logits,
                mode=mode)
        if result.compile_seconds is not None:
            longest = max(result.compile_seconds, sizes.compiles.get(variant.label, 0.0))
            sizes.compiles[variant.label] = longest
            result = dataclasses.replace(result, compile_seconds=longest)
        found[(shape, mode)] = result
        return result

    return measure
