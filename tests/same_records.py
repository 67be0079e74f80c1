"""Records compared cell by cell: the check that a layout (fused datasets, programs per shot
count, chunks, devices, processes, a resumed run) changes no result."""

import json
import os

import pytest

from jaxclip_fs.experiment.plan import Cell

#: The fields of a record that no layout may change (timings, program names and the
#: device count may differ).
COMPARED = ("method", "dataset", "shots", "seed", "backbone", "weights", "split_policy",
            "hyperparameters", "searched", "protocol", "selection", "accuracy", "val_accuracy",
            "best_epoch", "num_classes", "val_size", "test_size")


def read_records(out) -> dict:
    """``{Cell: record}`` of the run directory ``out``."""
    found = {}
    for root, _, files in os.walk(os.path.join(out, "records")):
        for name in files:
            record = json.load(open(os.path.join(root, name)))
            cell = Cell(record["method"], record["dataset"], record["shots"], record["seed"],
                        record["protocol"])
            found[cell] = record
    return found


def assert_same_records(a: dict, b: dict) -> None:
    """The same cells, non-empty, with equal :data:`COMPARED` fields (floats to 1e-4)."""
    assert a.keys() == b.keys() and a
    for cell in a:
        for field in COMPARED:
            x, y = a[cell][field], b[cell][field]
            if isinstance(x, float):
                assert x == pytest.approx(y, abs=1e-4), (cell, field)
            else:
                assert x == y, (cell, field, x, y)
