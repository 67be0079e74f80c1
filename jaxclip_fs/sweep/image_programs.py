"""The sweep engine's side of the image methods (:mod:`~jaxclip_fs.sweep.image_methods`).

* TA++ / TX++ (:data:`PAIRED_METHODS`) run as ordinary feature-level programs,
  on the *paired* ``[adapted | original]`` features of the IMO-adapted and the
  original encoder (:func:`~jaxclip_fs.sweep.image_methods.imo_paired_features`).
* LDC (:data:`IMAGE_PROGRAM_METHODS`) trains on images: its program per
  dataset is the image pipeline's own compiled program
  (:func:`~jaxclip_fs.sweep.image_methods.run_image_method`, all seeds x shots
  vmapped, its tasks spread over the sweep's devices), called through an :data:`ImageRunner`;
  :func:`run_image_program` checkpoints, records and resumes its cells like
  the engine's own programs, and writes LDC's confusion analyses.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import jax
import numpy as np

from jaxclip_fs.errors import ConfigError
from jaxclip_fs.io import records
from jaxclip_fs.report.confusion import write_confusion
from jaxclip_fs.sweep import outdir
from jaxclip_fs.sweep.cells import Cell, Program

#: Methods whose programs run on paired ``[adapted | original]`` features.
PAIRED_METHODS = ("ta_pp", "tx_pp")
#: Methods trained on images by the image pipeline (one program per dataset).
IMAGE_PROGRAM_METHODS = ("ldc",)
#: ``image_runner(method, dataset, shots, seeds, hp, config) -> [ImageCell]``, one per
#: (seed, shots) of the product (:func:`~jaxclip_fs.sweep.image_methods.run_image_method`).
ImageRunner = Callable[..., list]


def feature_kind(method: str) -> str:
    """Which features a feature-level program reads: ``paired`` (TA++ / TX++) or ``clip``."""
    return "paired" if method in PAIRED_METHODS else "clip"


def check_image_methods(specs: Mapping, config, paired_features, image_runner) -> None:
    """Raises ConfigError for an image method the given sources cannot run."""
    for name, spec in specs.items():
        if not spec.needs_images:
            continue
        if name in PAIRED_METHODS and paired_features is None:
            raise ConfigError(f"--method {name}: needs images and IMO adapters (--dataset with "
                              "--imo-adapters DIR from `jaxclip-fs train-imo`)")
        if name in IMAGE_PROGRAM_METHODS and image_runner is None:
            raise ConfigError(f"--method {name}: trains on images; use --dataset, not --features")
        if name not in PAIRED_METHODS + IMAGE_PROGRAM_METHODS:
            raise ConfigError(f"--method {name}: an image method this engine does not know")
        if config.ood:
            raise ConfigError(f"--ood is not supported for the image method '{name}' yet")


def run_image_program(program: Program, image_runner: ImageRunner, hp: Mapping, config,
                      out_dir: str, writer: bool) -> None:
    """One image-pipeline program (LDC on a dataset): params, confusion analyses, records.

    The runner computes the product of the program's shots and seeds; only
    the program's own cells are written. Params are stacked ``[1, T, ...]``
    in cell order, like the feature programs'.
    """
    (dataset,) = program.datasets
    started = time.perf_counter()
    shots = sorted({c.shots for c in program.cells})
    seeds = sorted({c.seed for c in program.cells})
    results = {Cell(program.method, dataset, r.shots, r.seed): r
               for r in image_runner(program.method, dataset, shots, seeds, hp, config)}
    seconds = time.perf_counter() - started
    if not writer:
        return
    mine = [results[c] for c in program.cells]
    params_dir = None
    if config.save_params != "none":
        stacked = jax.tree.map(lambda *leaves: np.stack(leaves)[None], *[r.params for r in mine])
        params_dir = outdir.save_params(out_dir, program, stacked, (program.cells,))
    for t, (cell, result) in enumerate(zip(program.cells, mine)):
        if result.confusion is not None:
            title = f"{cell.method} on {dataset}, {cell.shots}-shot, seed {cell.seed}"
            write_confusion(outdir.confusion_prefix(out_dir, cell), result.confusion, title=title)
        record = {**result.record, "seconds": round(seconds / len(program.cells), 4),
                  "program": program.name, "program_cells": len(program.cells),
                  "program_seconds": round(seconds, 3), "fused_datasets": [dataset],
                  "devices": result.record.get("devices", 1), "params_checkpoint": params_dir,
                  "params_row": [0, t] if params_dir else None}
        records.write_record(outdir.record_path(out_dir, cell), record)
