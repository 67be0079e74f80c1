"""One method on one few-shot task, from Python: the engine on a one-cell grid.

:func:`evaluate_features` (a feature set in memory) and :func:`evaluate_file`
(a feature file) are what ``jaxclip-fs evaluate`` does for feature methods,
importable from a notebook; they return the result record, and with
``out_dir`` also write ``result.json`` and ``test_logits.npy``. The numbers
are those of the same cell in a ``jaxclip-fs run`` sweep.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Sequence

from jaxclip_fs import methods
from jaxclip_fs.engine.run import CellDir, Sources, run_experiment
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.features import featfile
from jaxclip_fs.methods import hparams
from jaxclip_fs.pipelines.features import GivenFeatures


def evaluate_features(fs: featfile.FeatureSet, method: str, *, shots: int = 16, seed: int = 1,
                      hp: Sequence[str] | Mapping[str, float] = (),
                      options: Mapping[str, str] | None = None, dataset: str | None = None,
                      protocol: str = "fair", sampler: str | None = None,
                      out_dir: str | os.PathLike | None = None,
                      log: Callable[[str], None] | None = None) -> dict:
    """Runs ``method`` on the (shots, seed) task of a feature set; returns the result record.

    Args:
      fs: the features.
      method: registry name of a method reading features.
      shots, seed: the few-shot set.
      hp: hyperparameters to fix (``["alpha=2", ...]`` or a mapping); searched
        ones not given are searched on validation, the rest keep defaults.
      options: the method's structural options.
      dataset: registry name choosing per-dataset defaults / grids (default:
        ``fs.meta["dataset"]``; unknown names use the generic default).
      protocol: one of ``experiment.protocol.PROTOCOLS`` (``fair`` by default;
        :mod:`~jaxclip_fs.experiment.protocol`).
      sampler: the few-shot sampler (default: the protocol's).
      out_dir: when given, writes ``test_logits.npy`` and ``result.json`` there.
      log: progress sink (None: silent).

    Raises:
      ConfigError / DataError: bad method, hyperparameter, policy, shots or seed.
    """
    name = dataset or str(fs.meta.get("dataset") or "features")
    spec = methods.get(method, **(options or {}))
    fixed = hparams.parse_assignments(hp, spec.hparam_specs, method)
    config = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig(method, dict(options or {}), fixed),),
        data=config_lib.DataConfig(datasets=(name,)),
        protocol=config_lib.ProtocolConfig(names=(protocol,), sampler=sampler),
        grid=config_lib.GridConfig(shots=(int(shots),), seeds=(int(seed),)))
    given = GivenFeatures({name: fs})
    sources = Sources(features=given, datasets=given.datasets, provenance=given.provenance())
    sink = CellDir(out_dir)
    run_experiment(config, sink, sources=sources, progress=False, log=log)
    return sink.records[0]


def evaluate_file(path: str | os.PathLike, method: str, **kwargs) -> dict:
    """:func:`evaluate_features` on a feature file (validated on load)."""
    fs = featfile.load(path)
    fs = dataclasses.replace(fs, meta={**fs.meta, "feature_file": os.fspath(path)})
    return evaluate_features(fs, method, **kwargs)
