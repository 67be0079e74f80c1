"""The engine: an experiment config -> compiled programs -> records, resumable.

:func:`run_experiment` is what ``jaxclip-fs run``, ``evaluate`` (a one-cell
grid) and ``demo`` call:

1. resolve the config's method variants and check that the inputs they read
   can be had (:class:`Sources`: one provider per input kind -- ``features``,
   ``paired``, ``images``);
2. ask the :class:`Sink` which cells are finished (a run directory: a
   record on disk; multi-host: process 0's answer, broadcast); with none left,
   stop -- nothing is loaded or compiled;
3. plan the programs from the inputs' sizes, before fetching any input
   (:mod:`~jaxclip_fs.engine.layout`): every variant's hyperparameters are
   resolved (:meth:`~jaxclip_fs.experiment.plan.Variant.resolve`), one program
   per variant and dataset (or group of fused datasets) is laid out by the
   planner (:mod:`~jaxclip_fs.engine.planner`: one program, one per shot count
   or chunks, from XLA's cost and memory analyses; a program that cannot fit
   is refused here), and the choice is logged and kept in the manifest;
4. get each (input kind, dataset)'s inputs when its first program runs --
   feature sets for the feature and paired kinds, the image pipeline for images;
5. run each program on the device mesh -- the feature program
   (:mod:`~jaxclip_fs.engine.feature_program`) for ``features`` / ``paired``
   inputs, the image program (:mod:`~jaxclip_fs.engine.image_program`) for
   ``images``, the tower program (:mod:`~jaxclip_fs.engine.tower_program`) for
   image methods trained through the CLIP's towers (``Method.towers``) -- and, as
   soon as it finishes, hand the sink its params (orbax) and then one record per
   cell (:mod:`~jaxclip_fs.engine.results`).

Routing is by input kind (and what a method declares it trains through) only: no
method is named here. An interruption
loses at most the program in flight; a rerun skips finished cells.
Multi-host: every process runs every program (each on its own devices);
process 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxclip_fs.catalogue import is_random_weights
from jaxclip_fs.engine import batch as batch_lib
from jaxclip_fs.engine import (
    feature_program, image_program, layout, outdir, planner, sharding, tower_program,
)
from jaxclip_fs.engine.deliver import deliver
from jaxclip_fs.engine.results import (
    CellResult, OODResult, cell_records, check_finite, losses_of, reported,
)
from jaxclip_fs.engine.rules import (
    FEATURE_KINDS, as_trained, keeps_params, requests_of, rules_of,
)
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import (
    Cell, Program, Variant, all_cells, ood_cells, ood_parents, resolve_variants,
)
from jaxclip_fs.features import featfile
from jaxclip_fs.io import atomic, records
from jaxclip_fs.io.console import progress_bar, stderr_log
from jaxclip_fs.io.lock import DirectoryLock
from jaxclip_fs.io.outputs import writing
from jaxclip_fs.pipelines import ood as ood_lib
from jaxclip_fs.pipelines.features import (
    ExtractedFeatures, FeatureFiles, Request, check_sets,
)
from jaxclip_fs.pipelines.images import ImageSource
from jaxclip_fs.pipelines.paired import PairedFeatures
from jaxclip_fs.pipelines.session import ClipSession
from jaxclip_fs.train import towers as towers_lib
from jaxclip_fs.train.trainer import epoch_views
from jaxclip_fs.report.confusion import confusion_analysis, write_confusion


# --- inputs -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Sources:
    """One input provider per kind (None: not available here).

    Attributes:
      features: ``(dataset, shots, seeds) -> FeatureSet`` with ``.ood(name, parent)``.
      paired: the same for TA++/TX++'s ``[adapted | original]`` features.
      images: the image pipeline (:class:`~jaxclip_fs.pipelines.images.ImageSource`).
      datasets: the datasets the sources hold (feature files), or () for the config's.
      provenance: fixed facts of given inputs (e.g. the backbone of feature files).
      session: the CLIP session the providers share (None: feature files only); it
        reports the identities of what it loads (:meth:`ClipSession.listen`).
    """

    features: Any = None
    paired: Any = None
    images: ImageSource | None = None
    datasets: tuple[str, ...] = ()
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    session: ClipSession | None = None

    def identities(self) -> dict[str, tuple[str, str]]:
        """The content identities of the inputs known before any work: ``input -> (digest,
        source)`` (given feature sets; the CLIP, its tokenizer and the datasets are
        identified by the session as they load)."""
        of = getattr(self.features, "identities", None)
        return dict(of()) if callable(of) else {}

    def provider(self, kind: str, label: str):
        """The provider of input ``kind`` for variant ``label``.

        Raises:
          ConfigError: these sources cannot give that kind (says what would).
        """
        found = getattr(self, kind)
        if found is not None:
            return found
        if kind == "paired":
            raise ConfigError(f"method {label} reads paired features of an IMO-adapted CLIP: "
                              "give data.datasets and model.imo_adapters DIR (from `jaxclip-fs "
                              "train-imo`)")
        raise ConfigError(f"method {label} reads {kind}: give data.datasets (images are "
                          "encoded here), not data.features")


def sources_for(config: config_lib.ExperimentConfig, *, features_dir: str | None = None,
                writer: bool = True, progress: bool = True, banner: bool = True) -> Sources:
    """The providers of a config: its feature files, or its datasets through its CLIP."""
    if config.data.features:
        files = FeatureFiles(config.data.features)
        return Sources(features=files, datasets=files.datasets, provenance=files.provenance())
    if not (config.model.backbone and config.model.weights):
        raise ConfigError("datasets are encoded here: give the model's backbone and weights "
                          "(model.backbone, model.weights), or feature files")
    session = ClipSession(config, progress=progress, banner=banner)
    return Sources(features=ExtractedFeatures(session, features_dir, writer),
                   paired=PairedFeatures(session) if config.model.imo_adapters else None,
                   images=ImageSource(session, config.images), session=session)


# --- where results go -----------------------------------------------------------------------


class Sink(Protocol):
    """Where a run's outputs go (a run directory, or one ``evaluate`` directory)."""

    keep_logits: bool

    def begin(self, config: config_lib.ExperimentConfig, provenance: Mapping[str, Any],
              inputs: Mapping[str, tuple[str, str]], datasets: Sequence[str]) -> dict:
        """Called first; returns the grid the inputs must cover (``shots``, ``seeds`` lists).
        ``inputs``: the identities known now (:meth:`Sources.identities`); ``datasets``: the
        names of the datasets the cells have."""

    def identify(self, key: str, digest: str, source: str) -> None:
        """An input's identity became known (it loaded); refuses one the outputs were not
        computed with."""

    def commit(self) -> None:
        """Called before anything is written into the outputs."""

    def end(self, completed: bool) -> None:
        """Called last, whether the run completed or failed."""

    def finished(self, cell: Cell) -> bool: ...

    def save_params(self, program: Program, tree, slots) -> str | None: ...

    def write(self, result: CellResult, written: Sequence[tuple[Cell, dict]]) -> None: ...

    def plans(self, decisions: Sequence[planner.Decision]) -> None:
        """Called once the programs are planned (before any input is fetched)."""


class RunDir:
    """A run directory (:mod:`~jaxclip_fs.engine.outdir`): resumable, one record per cell.

    Its settings and input identities are checked against the directory's
    manifest at :meth:`begin` (and as inputs load: :meth:`identify`), but the
    manifest is written only before the first file goes into the directory
    (:meth:`commit`): a run that fails before that fixes nothing. A directory
    without records is no one's yet: its earlier manifest does not bind a
    corrected command (whose changed settings drop the earlier extracted
    features). One writer at a time: :meth:`begin` takes the directory's
    lock (:class:`~jaxclip_fs.io.lock.DirectoryLock`), :meth:`end` releases it.

    Args:
      out_dir: the directory.
      writer: this process writes (multi-host: process 0).
      argv: the command line, kept in the manifest's history.
      wait_lock: wait for another run holding the directory instead of stopping.
      log: one-line messages.
    """

    keep_logits = False

    def __init__(self, out_dir: str | os.PathLike, *, writer: bool = True,
                 argv: Sequence[str] | None = None, wait_lock: bool = False,
                 log: Callable[[str], None] | None = stderr_log):
        self.out_dir = os.fspath(out_dir)
        self.writer = writer
        self.argv = argv
        self.save = "trained"
        self.log = log or (lambda message: None)
        self.manifest: dict | None = None
        self.config: config_lib.ExperimentConfig | None = None
        self._lock = DirectoryLock(self.out_dir, wait=wait_lock, log=self.log,
                                   argv=argv) if writer else None
        self._unsaved = False

    def begin(self, config, provenance, inputs=None, datasets=None) -> dict:
        if self._lock is not None:
            self._lock.acquire()
            outdir.remove_leftovers(self.out_dir)  # (of interrupted writes: no one else writes)
        try:
            old = outdir.read_manifest(self.out_dir)
            if old is not None and not outdir.has_records(self.out_dir):
                self._forget(old, config, provenance)
                old = None
            self.manifest = outdir.merge_manifest(self.out_dir, config, provenance, self.argv,
                                                  old=old, datasets=datasets)
            self.config = config
            self._unsaved = True
            for key, (digest, source) in (inputs or {}).items():
                self.identify(key, digest, source)
        except BaseException:
            self.end(False)
            raise
        self.save = config.execution.save_params
        return self.manifest["grid"]

    def _forget(self, old: dict, config, provenance) -> None:
        """A directory without records: its earlier manifest binds nothing. With other
        settings, the features extracted under them go too."""
        changed = outdir.settings_difference(
            old, outdir.merge_manifest(self.out_dir, config, provenance, old=None)["settings"])
        if changed is None or not self.writer:
            return
        features = outdir.features_dir(self.out_dir)
        self.log(f"note: {self.out_dir} holds no records yet: its earlier settings "
                 f"({changed[0]} = {json.dumps(changed[1])}) are replaced"
                 + (" and its extracted features removed" if os.path.isdir(features) else ""))
        shutil.rmtree(features, ignore_errors=True)

    def identify(self, key: str, digest: str, source: str) -> None:
        if self.manifest is not None and outdir.check_input(self.out_dir, self.manifest, key,
                                                            digest, source):
            self._unsaved = True

    def commit(self) -> None:
        """Writes the manifest and ``config.json`` if they changed since last written."""
        if self.writer and self._unsaved and self.manifest is not None:
            with writing(os.path.join(self.out_dir, outdir.MANIFEST)):
                outdir.write_manifest(self.out_dir, self.manifest, self.config)
            self._unsaved = False

    def end(self, completed: bool) -> None:
        try:
            if completed and outdir.has_records(self.out_dir):
                self.commit()  # (the history and config.json of this invocation)
        finally:
            if self._lock is not None:
                self._lock.release()

    def finished(self, cell: Cell) -> bool:
        """A complete record of ``cell`` is on disk (an unreadable or incomplete one is
        reported, naming its file, and its cell recomputed: :func:`outdir.is_finished`)."""
        return outdir.is_finished(self.out_dir, cell, log=self.log if self.writer else None)

    def plans(self, decisions) -> None:
        if decisions and self.manifest is not None:
            self.manifest["invocations"][-1]["plans"] = json.loads(json.dumps(
                [d.to_json() for d in decisions]))
            self._unsaved = True

    def save_params(self, program: Program, tree, slots) -> str | None:
        if not self.writer:
            return None
        self.commit()
        with writing(outdir.params_path(self.out_dir, program), "the params"):
            return outdir.save_params(self.out_dir, program, tree, slots)

    def write(self, result: CellResult, written) -> None:
        if not self.writer:
            return
        self.commit()
        if result.confusion is not None:
            prefix = outdir.confusion_prefix(self.out_dir, result.cell)
            with writing(prefix + ".*"):
                write_confusion(prefix, result.confusion, title=_title(result))
        for cell, record in written:
            path = outdir.record_path(self.out_dir, cell)
            with writing(path):
                records.write_record(path, record)


class CellDir:
    """``evaluate``'s outputs of its one cell: ``result.json``, ``test_logits.npy``,
    ``confusion.{json,png}`` and ``params/`` (trained methods) -- in ``out_dir`` if given.

    The records are kept in :attr:`records` either way.
    """

    keep_logits = True

    def __init__(self, out_dir: str | os.PathLike | None):
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.records: list[dict] = []
        self.results: list[CellResult] = []
        self.written: list[str] = []

    def begin(self, config, provenance, inputs=None, datasets=None) -> dict:
        del provenance, inputs, datasets
        return {"shots": list(config.grid.shots), "seeds": list(config.grid.seeds)}

    def identify(self, key: str, digest: str, source: str) -> None:
        del key, digest, source

    def commit(self) -> None:
        pass

    def end(self, completed: bool) -> None:
        del completed

    def finished(self, cell: Cell) -> bool:
        return False

    def plans(self, decisions) -> None:
        del decisions

    def save_params(self, program: Program, tree, slots) -> str | None:
        if self.out_dir is None:
            return None
        from jaxclip_fs.io import checkpoints

        path = os.path.join(self.out_dir, "params")
        with writing(path, "the params"):
            checkpoints.save_tree(path, tree, {"method": program.method, "cell": [
                dataclasses.asdict(c) for row in slots for c in row if c is not None]})
        self.written.append(path)
        return "params"

    def write(self, result: CellResult, written) -> None:
        self.results.append(result)
        self.records.extend(record for _, record in written)
        if self.out_dir is None:
            return
        if result.confusion is not None:
            prefix = os.path.join(self.out_dir, "confusion")
            with writing(prefix + ".*"):
                self.written += write_confusion(prefix, result.confusion, title=_title(result))
        logits_path = os.path.join(self.out_dir, "test_logits.npy")
        with writing(logits_path), atomic.atomic_path(logits_path, suffix=".npy") as tmp:
            np.save(tmp, np.asarray(result.test_logits, np.float32))
        result_path = os.path.join(self.out_dir, "result.json")
        with writing(result_path):
            records.write_record(result_path, written[0][1])
        self.written += [logits_path, result_path]


def _title(result: CellResult) -> str:
    c = result.cell
    return f"{c.method} on {c.dataset}, {c.shots}-shot, seed {c.seed}"


# --- the run ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a :func:`run_experiment` call did.

    Attributes:
      cells: every cell of this call's grid; computed / skipped: now / before.
      programs: the programs run. seconds: wall time. devices: size of the mesh.
      plans: the planner's decision for each (variant, datasets) program.
    """

    cells: tuple[Cell, ...]
    computed: tuple[Cell, ...]
    skipped: tuple[Cell, ...]
    programs: tuple[Program, ...]
    seconds: float
    devices: int
    plans: tuple[planner.Decision, ...] = ()


def _pending_everywhere(sink: Sink, cells: Sequence[Cell],
                        ood_of: Mapping[str, Sequence[str]]) -> list[Cell]:
    """Process 0's unfinished cells (own or OOD record missing), shared with every process."""
    done = np.asarray([all(sink.finished(x) for x in [c] + ood_cells(c, ood_of))
                       for c in cells], np.bool_)
    if jax.process_count() > 1:
        done = np.asarray(multihost_utils.broadcast_one_to_all(done))
    return [c for c, finished in zip(cells, done) if not finished]


class _Inputs:
    """The inputs of the datasets with work left, fetched once per (kind, dataset)."""

    def __init__(self, sources: Sources, requests: Callable[[str, str], Request],
                 ood_of: Mapping[str, Sequence[str]], log):
        self.sources, self.requests, self.ood_of, self.log = sources, requests, ood_of, log
        self._features: dict = {}
        self._oods: dict = {}
        self._images: dict = {}

    def features(self, kind: str, dataset: str, label: str) -> featfile.FeatureSet:
        key = (kind, dataset)
        if key not in self._features:
            request = self.requests(kind, dataset)
            fs = self.sources.provider(kind, label)(dataset, request)
            check_sets(fs, request)  # a missing seed, draw or too few shots fails before work
            self._features[key] = fs
        return self._features[key]

    def feature_oods(self, kind: str, dataset: str, label: str) -> list[ood_lib.OODSet]:
        key = (kind, dataset)
        if key not in self._oods:
            parent = self.features(kind, dataset, label)
            provider = self.sources.provider(kind, label)
            self._oods[key] = [provider.ood(name, parent) for name in self.ood_of.get(dataset, ())]
        return self._oods[key]

    def images(self, dataset: str, taps: tuple[str, ...], label: str, *, path=None,
               aug_scale=None):
        key = (dataset, taps, path, aug_scale)
        if key not in self._images:
            source = self.sources.provider("images", label)
            self._images[key] = source.prepare(dataset, self.requests("images", dataset), taps,
                                               self.log, path=path, aug_scale=aug_scale)
        return self._images[key]


def run_experiment(config: config_lib.ExperimentConfig, sink: Sink, *,
                   sources: Sources | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = stderr_log) -> RunResult:
    """Runs (or resumes) an experiment into ``sink`` (module docstring).

    Args:
      config: the experiment.
      sink: where results go (:class:`RunDir`, :class:`CellDir`).
      sources: the input providers (default :func:`sources_for` the config).
      progress: progress bars on stderr.
      log: one-line messages (None: silent).

    Raises:
      ConfigError: bad method / option / hyperparameter / setting, or settings
        that conflict with the run directory's manifest.
      OutputError: a params / record file could not be written after its program
        ran; the unwritten records were printed on stdout first
        (:mod:`~jaxclip_fs.engine.deliver`).
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    config_lib.check(config)
    variants = {v.label: v for v in resolve_variants(config)}
    mesh = layout.mesh_of(config)
    writer = sharding.is_writer()
    if sources is None:
        features_dir = outdir.features_dir(sink.out_dir) if isinstance(sink, RunDir) else None
        sources = sources_for(config, features_dir=features_dir, writer=writer,
                              progress=progress and writer)
    for label, variant in variants.items():  # a missing provider fails here
        sources.provider(variant.method.inputs, label)
    ood_of = ood_parents(config, ood_lib.parent_of) if config.data.ood else {}

    datasets = tuple(config.data.datasets) or sources.datasets
    grid = sink.begin(config, sources.provenance, sources.identities(), datasets)
    completed = False
    try:
        if sources.session is not None:
            sources.session.listen(sink)  # the CLIP, tokenizer and datasets, as they load
        result = _compute(config, sink, sources, variants, datasets, grid, ood_of, mesh,
                          progress=progress and writer, say=say, started=started)
        completed = True
        return result
    finally:
        if sources.session is not None:
            sources.session.listen(None)
        sink.end(completed)


def _compute(config: config_lib.ExperimentConfig, sink: Sink, sources: Sources,
             variants: Mapping[str, Variant], datasets: Sequence[str], grid: Mapping[str, Any],
             ood_of: Mapping[str, Sequence[str]], mesh, *, progress: bool,
             say: Callable[[str], None], started: float) -> RunResult:
    """The pending cells of ``grid``: planned, run program by program, delivered to ``sink``."""
    cells = all_cells(config.labels(), datasets, config.grid.shots, config.grid.seeds,
                      config.protocol.names)
    pending = _pending_everywhere(sink, cells, ood_of)
    waiting = set(pending)
    skipped = tuple(c for c in cells if c not in waiting)
    if not pending:
        say(f"all {len(cells)} cells already have records: nothing to compute")
        return RunResult(tuple(cells), (), skipped, (), time.perf_counter() - started,
                         mesh.devices.size)
    if skipped:
        say(f"resuming: {len(skipped)} of {len(cells)} cells already finished")

    requests = requests_of(config, variants, grid["shots"], grid["seeds"])
    inputs = _Inputs(sources, requests, ood_of, say)
    _warn_missing_prompts(config, variants, say)
    decisions = layout.plan_run(config, variants, sources, pending, ood_of, mesh, requests,
                                keep_params=lambda v: keeps_params(config, v),
                                keep_logits=sink.keep_logits)
    programs = [part for decision in decisions for part in decision.parts]
    # how the planner's numbers were had (a tower program rematerialised where memory demands)
    options = {e.program: dict(e.options) for d in decisions for e in d.estimates}
    for line in planner.describe(decisions):
        say(line)
    sink.plans(decisions)
    say(f"{len(pending)} cells in {len(programs)} programs on {mesh.devices.size} "
        f"{mesh.devices.flat[0].platform} device(s)")
    show = progress
    program_bar = progress_bar(len(programs), desc="programs", unit="prog", position=0,
                               disable=not show)
    cell_bar = progress_bar(len(pending), desc="cells", unit="cell", position=1, disable=not show)
    try:
        for program in programs:
            program_bar.set_postfix_str(program.name)
            variant = variants[program.method]
            started_program = time.perf_counter()
            if variant.method.inputs in FEATURE_KINDS:
                results, params, slots = _run_feature_program(program, variant, inputs, config,
                                                              mesh, sink)
            elif variant.method.towers is not None:
                results, params, slots = _run_tower_program(
                    program, variant, inputs, config, mesh, sink, say, show,
                    remat=bool(options.get(program, {}).get("remat", False)))
            else:
                results, params, slots = _run_image_program(program, variant, inputs, config,
                                                            mesh, sink)
            seconds = time.perf_counter() - started_program
            check_finite(results, program)  # a NaN is an error naming the cell, never a result
            rules = rules_of(config, program.protocol, variant, program.datasets[0])
            deliver(sink, program, params, slots, results, lambda result, params_dir: cell_records(
                result, program=program, rules=rules, seconds=seconds,
                devices=mesh.devices.size, params_dir=params_dir))
            program_bar.update(1)
            cell_bar.update(len(program.cells))
    finally:
        program_bar.close()
        cell_bar.close()
    seconds = time.perf_counter() - started
    say(f"computed {len(pending)} cells in {len(programs)} programs "
        f"({len(skipped)} already finished) in {seconds:.1f} s on {mesh.devices.size} device(s)")
    return RunResult(tuple(cells), tuple(pending), skipped, tuple(programs), seconds,
                     mesh.devices.size, tuple(decisions))


def _warn_missing_prompts(config: config_lib.ExperimentConfig, variants: Mapping[str, Variant],
                          say: Callable[[str], None]) -> None:
    """Once: ``paper`` methods whose official classifier adds prompt sentences, run without."""
    if "paper" not in config.protocol.names or config.protocol.prompts:
        return
    wanting = [label for label, v in variants.items()
               if v.method.official is not None and v.method.official.prompts]
    if wanting:
        say(f"warning: under the paper protocol {', '.join(wanting)} officially add CuPL prompt "
            "sentences to the templates; without protocol.prompts FILE.json they use the templates "
            "only (recorded). The files: gpt3_prompts/CuPL_prompts_<dataset>.json of the APE "
            "repository (yangyangyang127/APE), in CuPL's format (class name -> sentences).")


def _resolve(variant: Variant, dataset: str, inputs: _Inputs, rules):
    """The variant's hyperparameters on ``dataset`` under ``rules`` (the width comes from its
    inputs)."""
    kind = variant.method.inputs
    if kind in FEATURE_KINDS:
        dim = inputs.features(kind, dataset, variant.label).dim
    else:
        dim = inputs.sources.provider(kind, variant.label).spec().embed_dim
    return variant.resolve(dataset, dim, search=rules.searches)


def compute_dtypes(meta: Mapping[str, Any], method, config: config_lib.ExperimentConfig) -> dict:
    """What a record says of its precision: the CLIP's compute dtype when encoding its inputs
    (``unknown`` for feature files that do not say) and its training steps' (None: the
    method trains nothing)."""
    return {"encoding": meta.get("dtype", "unknown"),
            "training": config.train_dtype if method.trains else None}


def _limits(config: config_lib.ExperimentConfig) -> dict:
    """The watchdog's limits of every program (:mod:`~jaxclip_fs.engine.watchdog`)."""
    return {"stall": config.execution.stall_timeout,
            "deadline": config.execution.program_timeout}


def _run_feature_program(program: Program, variant: Variant, inputs: _Inputs,
                         config: config_lib.ExperimentConfig, mesh, sink: Sink):
    """A feature / paired program → (cell results, params tree or None, slots)."""
    rules = rules_of(config, program.protocol, variant, program.datasets[0])
    method, kind = as_trained(variant.method, rules), variant.method.inputs
    fsets = {d: inputs.features(kind, d, program.method) for d in program.datasets}
    oods = {d: inputs.feature_oods(kind, d, program.method) for d in program.datasets}
    resolved = {d: _resolve(variant, d, inputs, rules) for d in program.datasets}
    batch = batch_lib.build_batch(
        program, method, fsets, resolved, val_rows=rules.val_rows,
        pad_cells=lambda n: sharding.padded_length(n, mesh), ood=oods[program.datasets[0]],
        sampler=rules.sampler, prompts=rules.prompts)
    keep = keeps_params(config, variant)
    # the same program on every process (multi-host SPMD), so not conditioned on the writer
    outputs = feature_program.run_program(
        method, batch, mesh=mesh, epochs_on=rules.epochs_on, search_on=rules.search_on,
        keep_params=keep, keep_logits=sink.keep_logits, name=program.name,
        limits=_limits(config))
    results = []
    num_views = batch.shared["supports"].shape[-4]
    for g, t, cell in batch_lib.slot_cells(batch):
        fs = fsets[cell.dataset]
        index = {name: int(v[g, t]) for name, v in outputs["index"].items()}
        res = resolved[cell.dataset]
        final = float(outputs["test_accuracy"][g, t])
        heads = {k: float(v[g, t]) for k, v in outputs["heads"].items()}
        best = float(outputs["best_score"][g, t]) if method.trains else None
        results.append(CellResult(
            cell=cell, method=method,
            provenance={**fs.meta, "dataset": cell.dataset,
                        "compute_dtype": compute_dtypes(fs.meta, method, config)},
            hyperparameters=method.used(res.values, res.grid, index), searched=list(res.grid),
            accuracy=reported(rules.reported, final, heads, best), final_accuracy=final,
            val_accuracy=float(outputs["val_accuracy"][g, t]) if rules.searches else None,
            val_size=fs.test.shape[0] if rules.search_on == "test" else batch.val_sizes[cell],
            test_size=int(fs.test.shape[0]), num_classes=fs.num_classes,
            best_epoch=int(outputs["best_epoch"][g, t]) if method.trains else None,
            epoch_losses=losses_of(outputs["losses"][g, t]) if method.trains else None,
            heads=heads,
            ood=[OODResult(o.name, float(outputs["ood_accuracy"][g, t, i]),
                           int(o.class_mask.sum()), int(o.test.shape[0]), o.meta)
                 for i, o in enumerate(oods[cell.dataset])],
            inputs=({"epoch_views": epoch_views(num_views, method.training.epochs(
                         res.values, cell.shots * fs.num_classes)),
                     "augmented_views": num_views - 1} if method.trains else {}),
            test_logits=(np.asarray(outputs["test_logits"][g, t, :fs.test.shape[0],
                                                          :fs.num_classes], np.float32)
                         if sink.keep_logits else None),
            params_row=[g, t], finite=bool(outputs["test_finite"][g, t])))
    params = outputs.get("params") if keep and jax.tree.leaves(outputs.get("params", {})) else None
    return results, params, batch.slots


def _run_image_program(program: Program, variant: Variant, inputs: _Inputs,
                       config: config_lib.ExperimentConfig, mesh, sink: Sink):
    """An image program → (cell results, params tree [1, T, ...] or None, slots)."""
    (dataset,) = program.datasets
    rules = rules_of(config, program.protocol, variant, dataset)
    source = inputs.sources.provider("images", program.method)
    method = image_program.bind(as_trained(variant.method, rules), source.spec())
    data = inputs.images(dataset, method.taps, program.method)
    resolved = _resolve(variant, dataset, inputs, rules)
    oods = [source.ood(name, data) for name in inputs.ood_of.get(dataset, ())]
    out = image_program.run_image_program(
        program, method, data, resolved, oods=oods, rules=rules, mesh=mesh,
        keep_logits=sink.keep_logits, limits=_limits(config))
    provenance = {**data.meta, "compute_dtype": compute_dtypes(data.meta, method, config)}
    results = []
    for t, cell in enumerate(program.cells):
        index = {name: int(v[t]) for name, v in out["index"].items()}
        confusion = None
        if method.confusion is not None and out["selection"] is not None:
            before, after = method.confusion
            rows = out["selection_rows"][t] > 0
            heads = method.heads({k: v[t][rows] for k, v in out["selection_pre"].items()})
            confusion = confusion_analysis(
                np.asarray(heads[before]), np.asarray(heads[after]),
                out["selection_labels"][rows], data.dataset.classnames,
                heads=(before, after), split=out["selection"],
                random_weights=is_random_weights(provenance.get("weights", "")))
        final = float(out["test_accuracy"][t])
        heads = {k: float(v[t]) for k, v in out["heads"].items()}
        results.append(CellResult(
            cell=cell, method=method, provenance=provenance,
            hyperparameters=method.used(resolved.values, resolved.grid, index),
            searched=list(resolved.grid), accuracy=reported(rules.reported, final, heads, None),
            final_accuracy=final,
            val_accuracy=float(out["val_accuracy"][t]) if rules.searches else None,
            val_size=int(out["val_size"][t]),
            test_size=len(data.dataset.split("test")), num_classes=data.num_classes,
            best_epoch=int(out["info"]["best_epoch"][t]) if method.trains else None,
            epoch_losses=losses_of(out["info"]["losses"][t]) if method.trains else None,
            heads=heads,
            inputs={"taps": list(method.taps), "train_path": data.path,
                    "tap_cache_views": data.views if data.path == "cache" else None,
                    "epoch_views": ("fresh crops" if data.path == "trunk" else
                                    epoch_views(data.views, method.training.epochs(
                                        resolved.values, cell.shots * data.num_classes))
                                    if method.trains else None),
                    "devices": out["devices"]},
            ood=[OODResult(q.name, float(out["ood_accuracy"][t, i]), int(q.class_mask.sum()),
                           len(q.indices), {**provenance, "dataset": q.name})
                 for i, q in enumerate(oods)],
            test_logits=out["test_logits"][t] if sink.keep_logits else None,
            confusion=confusion, params_row=[0, t], finite=bool(out["test_finite"][t])))
    params = None
    if keeps_params(config, variant):
        params = jax.tree.map(lambda leaf: np.asarray(leaf)[None], out["params"])
    return results, params, (program.cells,)


def _run_tower_program(program: Program, variant: Variant, inputs: _Inputs,
                       config: config_lib.ExperimentConfig, mesh, sink: Sink, say,
                       progress: bool = False, remat: bool = False):
    """A tower program (CoOp, CLIP-LoRA) → (cell results, params tree [1, T, ...] or None,
    slots). Nothing is selected: the final iterate, ``val_size`` 0 (module
    :mod:`~jaxclip_fs.engine.tower_program`)."""
    (dataset,) = program.datasets
    rules = rules_of(config, program.protocol, variant, dataset)
    method = variant.method
    declared = method.towers
    source = inputs.sources.provider("images", program.method)
    path = "cache" if declared.pool == "features" else "trunk"
    data = inputs.images(dataset, (), program.method, path=path,
                         aug_scale=tuple(declared.crop_scale))
    resolved = _resolve(variant, dataset, inputs, rules)
    oods = [source.ood(name, data) for name in inputs.ood_of.get(dataset, ())]
    clip = source.session.clip()
    model = tower_program.tower_model(clip.config, config.train_dtype, remat)
    out = tower_program.run_tower_program(
        program, method, data, resolved, oods=oods, rules=rules, mesh=mesh, model=model,
        tokenizer=source.session.tokenizer(), keep_logits=sink.keep_logits,
        limits=_limits(config), log=say, progress=progress)
    provenance = {**data.meta, "compute_dtype": compute_dtypes(data.meta, method, config)}
    length = method.training.length
    results = []
    for t, cell in enumerate(program.cells):
        counts = type(out["counts"])(*(int(np.asarray(x)[t]) for x in out["counts"]))
        final = float(out["test_accuracy"][t])
        values = {**resolved.values,
                  length: counts.epochs if length == "epochs" else counts.total}
        results.append(CellResult(
            cell=cell, method=method, provenance=provenance,
            hyperparameters=method.used(values, {}, {}), searched=[],
            accuracy=reported(rules.reported, final, {}, None), final_accuracy=final,
            val_accuracy=None, val_size=0,
            test_size=len(data.dataset.split("test")), num_classes=data.num_classes,
            best_epoch=counts.epochs - 1,
            epoch_losses=towers_lib.epoch_means(out["losses"][t], counts),
            inputs={"trained_through": declared.adaptation, "pool": declared.pool,
                    "views": int(np.shape(tower_program.training_pool(method, data))[0]),
                    "crop_scale": list(declared.crop_scale), "steps": counts.total,
                    "steps_per_epoch": counts.steps_per_epoch, "remat": remat,
                    "selection": "none: the final iterate (official), nothing searched",
                    "devices": out["devices"]},
            ood=[OODResult(q.name, float(out["ood_accuracy"][t, i]), int(q.class_mask.sum()),
                           len(q.indices), {**provenance, "dataset": q.name})
                 for i, q in enumerate(oods)],
            test_logits=out["test_logits"][t] if sink.keep_logits else None,
            params_row=[0, t], finite=bool(out["test_finite"][t])))
    params = None
    if keeps_params(config, variant):
        params = jax.tree.map(lambda leaf: np.asarray(leaf)[None], out["params"])
    return results, params, (program.cells,)
