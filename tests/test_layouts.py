"""How cells are laid out into programs changes no record: each layout against one reference run
(one program per dataset, one device).

Other layouts are compared with the same helper where they need a process setup of their own:
8 devices (test_sharding.py), 2 processes (test_multiprocess.py), a run resumed after a fault
(test_faults.py), chunks chosen by the memory planner (test_planner.py).
"""

import pytest

from same_records import assert_same_records, read_records
from test_sweep import config, run_sweep

DATASETS = ("oxford_pets", "dtd")
SHOTS = (1, 2, 4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference"))
    result = run_sweep(out, config(plan="one"))
    assert [p.name for p in result.programs] == [f"tip_adapter_f/{d}" for d in DATASETS]
    return read_records(out)


LAYOUTS = {  # name: (execution settings, the programs they give)
    "fused datasets": (dict(fuse_datasets=True), ["tip_adapter_f/oxford_pets+dtd"]),
    "a program per shot count": (dict(plan="per-shots"), [
        f"tip_adapter_f/{d} [shots {k}]" for d in DATASETS for k in SHOTS]),
    "chunks of 4 cells": (dict(plan="chunk:4"), [
        f"tip_adapter_f/{d} [cells {part} of 6]" for d in DATASETS for part in ("1-4", "5-6")]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_layout_gives_the_records_of_the_reference_run(reference, tmp_path, layout):
    execution, programs = LAYOUTS[layout]
    result = run_sweep(str(tmp_path), config(**execution))
    assert [p.name for p in result.programs] == programs
    assert_same_records(read_records(str(tmp_path)), reference)
