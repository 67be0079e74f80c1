"""The cell axis sharded over 8 fake CPU devices gives the records of one device; --distributed.

The tests marked ``devices(8)`` run in a subprocess with 8 fake CPU devices (tests/conftest.py);
real multi-process runs: tests/test_multiprocess.py.
"""

import jax
import pytest

from jaxclip_fs import cli
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.engine import sharding
from jaxclip_fs.engine.run import Sources
from jaxclip_fs.pipelines.features import GivenFeatures

from test_sweep import assert_same_records, config, read_records, run_sweep

FEATURES = {"oxford_pets": make_task(2, num_classes=5, dim=8, shots=4, views=3, val_per_class=5,
                                     test_per_class=6, dataset="oxford_pets")}


@pytest.mark.devices(8)
def test_eight_devices_give_the_records_of_one(tmp_path, monkeypatch):
    assert len(jax.devices()) == 8  # the devices(8) mark: tests/conftest.py
    placed = []
    real_place = sharding.place
    monkeypatch.setattr(sharding, "place",
                        lambda tree, s: placed.append(real_place(tree, s)) or placed[-1])
    # a training-free method and one that trains (the trainer under sharding)
    cfg = dict(methods=("tip_adapter", "tip_adapter_f"), datasets=("oxford_pets",),
               shots=(1, 2, 4), seeds=(1, 2))
    runs = {}
    for devices in (8, 1):
        out = str(tmp_path / f"d{devices}")
        result = run_sweep(out, config(**cfg, devices=devices),
                           Sources(features=GivenFeatures(FEATURES)))
        assert result.devices == devices
        runs[devices] = read_records(out)
    assert_same_records(runs[8], runs[1])
    assert {r["devices"] for r in runs[8].values()} == {8}

    per_cell = placed[0]  # the 8-device run's cell arrays: 6 cells padded to 8, one per device
    shots = per_cell["shots"]
    assert shots.shape == (1, 8) and len(shots.sharding.device_set) == 8
    assert {shard.data.shape for shard in shots.addressable_shards} == {(1, 1)}
    shared = placed[1]
    assert shared["test"].sharding.is_fully_replicated


@pytest.mark.devices(8)
def test_padding_and_mesh():
    mesh = sharding.cell_mesh(8)
    assert [sharding.padded_length(n, mesh) for n in (1, 8, 9, 15)] == [8, 8, 16, 16]
    assert sharding.padded_length(5, sharding.cell_mesh(1)) == 5
    with pytest.raises(ValueError, match="9 devices"):
        sharding.cell_mesh(9)


def test_initialize_distributed_passes_only_given_arguments():
    calls = []
    sharding.initialize_distributed(initialize=lambda **kw: calls.append(kw))
    sharding.initialize_distributed("10.0.0.1:1234", 4, 2, initialize=lambda **kw: calls.append(kw))
    assert calls == [{}, dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)]


class _Started(Exception):
    pass


def test_cli_distributed_flag_initializes_jax_first(tmp_path, monkeypatch):
    seen = []

    def fake_initialize(**kwargs):
        seen.append(kwargs)
        raise _Started  # stop here: this host has no coordinator to talk to

    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    with pytest.raises(_Started):
        cli.main(["run", "--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random",
                  "--out", str(tmp_path), "--distributed", "--coordinator", "host:8476",
                  "--num-processes", "2", "--process-id", "1"])
    assert seen == [{"coordinator_address": "host:8476", "num_processes": 2, "process_id": 1}]
    assert not any(tmp_path.iterdir())  # nothing happened before the initialisation


def test_a_sub_mesh_keeps_a_share_of_every_process():
    """(2 processes x 4 devices, as `--distributed` gives them): every process keeps devices,
    so each still takes part in the programs it runs; one process: the first ones."""
    class Device:
        def __init__(self, process, index):
            self.process_index, self.id = process, index

        def __repr__(self):
            return f"p{self.process_index}d{self.id}"

    two = [Device(p, i) for p in (0, 1) for i in range(4)]
    assert repr(sharding.spread(two, 2)) == "[p0d0, p1d0]"
    assert repr(sharding.spread(two, 3)) == "[p0d0, p0d1, p1d0, p1d1]"  # rounded up
    assert repr(sharding.spread(two, 8)) == repr(two)
    one = [Device(0, i) for i in range(8)]
    assert repr(sharding.spread(one, 3)) == "[p0d0, p0d1, p0d2]"
    mesh = sharding.cell_mesh()
    assert sharding.sub_mesh(mesh, 4).devices.size == 1  # (one device here)
