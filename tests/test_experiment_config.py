"""The experiment config: flags build it, JSON round-trips it, bad files fail in one line, and a
saved config repeats a run."""

import json
import os

import pytest

from jaxclip_fs import cli
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task

from test_sweep import read_records


def _config(**changes):
    base = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("ldc", {"fusion": ["fixed", "concat"]}, {"epochs": 3}),
                 config_lib.MethodConfig("tip_adapter")),
        data=config_lib.DataConfig(datasets=("digits", "dtd"), ood=()),
        model=config_lib.ModelConfig(backbone="RN50", weights="openai"),
        hp={"alpha": 2.0}, grid=config_lib.GridConfig(shots=(1, 16), seeds=(1, 2, 3)))
    return base.replace(**changes)


def test_json_round_trip_and_variants(tmp_path):
    config = _config()
    path = tmp_path / "config.json"
    config_lib.save(path, config)
    back = config_lib.load(path)
    assert back == config_lib.check(config)
    assert back.to_dict() == config.to_dict()
    assert back.labels() == ("ldc", "ldc[fusion=concat]", "tip_adapter")
    # a method with its defaults may be named alone in a hand-written file
    raw = json.loads(path.read_text())
    raw["methods"][1] = "tip_adapter"
    assert config_lib.from_dict(raw).methods[1] == config_lib.MethodConfig("tip_adapter")


@pytest.mark.parametrize("change, needle", [
    (lambda raw: raw["grid"].update(shots=[0]), "grid.shots values must be >= 1"),
    (lambda raw: raw.update(colour="red"), "config.colour: unknown key"),
    (lambda raw: raw["protocol"].update(names=["some"]), "protocol.names must be one of"),
    (lambda raw: raw["protocol"].update(sampler="dice"), "protocol.sampler must be one of"),
    (lambda raw: raw["grid"].update(seeds="1,2"), "config.grid.seeds must be a list"),
    (lambda raw: raw["extraction"].update(views="four"),
     "config.extraction.views must be a number"),
    (lambda raw: raw.update(methods=[]), "methods: name at least one method"),
    (lambda raw: raw["data"].update(features=["f.npz"]), "either datasets"),
    (lambda raw: raw.update(format_version=99), "not a jaxclip-fs experiment v1 config"),
])
def test_bad_configs_fail_in_one_line_naming_the_key(change, needle):
    raw = _config().to_dict()
    change(raw)
    with pytest.raises(ConfigError, match=needle) as info:
        config_lib.from_dict(raw)
    assert "\n" not in str(info.value)


def test_unreadable_config_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path, needle in ((bad, "not JSON"), (tmp_path / "none.json", "cannot read")):
        assert cli.main(["run", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_saved_config_repeats_a_run_and_refuses_number_changing_flags(tmp_path, capsys):
    paths = []
    for seed, name in ((0, "oxford_pets"), (1, "dtd")):
        paths.append(str(tmp_path / f"{name}.npz"))
        featfile.save(paths[-1], make_task(seed, num_classes=4, dim=8, shots=4, views=3,
                                           val_per_class=4, test_per_class=5, dataset=name))
    first = str(tmp_path / "first")
    assert cli.main(["run", "--features", *paths, "--method", "tip_adapter,gda", "--shots", "1,2",
                     "--seeds", "1,2", "--hp", "gda.alpha=0.5", "--protocol", "fewshot,fair",
                     "--out", first, "--quiet", "--no-report"]) == 0
    saved = os.path.join(first, "config.json")
    config = config_lib.load(saved)
    assert config.protocol.names == ("fewshot", "fair") and config.methods[1].hp == {"alpha": 0.5}
    again = str(tmp_path / "again")
    assert cli.main(["run", "--config", saved, "--out", again, "--devices", "1", "--quiet",
                     "--no-report"]) == 0
    a, b = read_records(first), read_records(again)
    assert a.keys() == b.keys() and len(a) == 2 * 2 * 2 * 2 * 2
    for cell in a:
        for field in ("accuracy", "val_accuracy", "hyperparameters", "protocol", "val_size"):
            assert a[cell][field] == b[cell][field], (cell, field)
    assert config_lib.load(os.path.join(again, "config.json")).execution.devices == 1
    capsys.readouterr()
    assert cli.main(["run", "--config", saved, "--out", again, "--shots", "4"]) == 2
    assert "--shots cannot be combined with --config" in capsys.readouterr().err
