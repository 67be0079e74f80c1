"""benchmarks/reproduce: valid configs, comparison with published numbers, runner without data."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from benchmarks.reproduce import __main__ as runner  # noqa: E402
from benchmarks.reproduce.compare import all_passed, compare, format_checks  # noqa: E402
from jaxclip_fs.data.registry import BENCHMARK_DATASETS, OOD_DATASETS  # noqa: E402
from jaxclip_fs import methods  # noqa: E402
from jaxclip_fs.catalogue import PUBLISHED  # noqa: E402
from jaxclip_fs.experiment import config as config_lib  # noqa: E402

CONFIG = runner.load_config("rn50_16shot")


def _record(method, dataset, seed, accuracy, **extra):
    return {"method": method, "dataset": dataset, "shots": 16, "seed": seed, "accuracy": accuracy,
            "backbone": "RN50", "weights": "hf:timm/resnet50_clip.openai@abc", "protocol": "paper",
            **extra}


def _records(offsets, seeds=(1, 2, 3)):
    """Records whose per-method seed mean is published + offset (seed spread ±0.3)."""
    out = []
    for method, offset in offsets.items():
        for dataset in CONFIG["datasets"]:
            target = PUBLISHED[("RN50", 16, method, dataset)] + offset
            for seed, spread in zip(seeds, (-0.3, 0.0, 0.3)):
                out.append(_record(method, dataset, seed, target + spread))
    return out


def test_configs_name_real_methods_datasets_and_bands():
    for name in ("rn50_16shot", "rn50_curves", "imagenet_ood"):
        config = runner.load_config(name)
        assert config["name"] == name
        assert set(config["methods"]) <= set(methods.names())
        experiment = runner.experiment_config(config, config["methods"], type(
            "Args", (), dict(weights="openai", data_root=None, source="coop", devices=None)))
        assert isinstance(experiment, config_lib.ExperimentConfig)
        assert experiment.labels() == tuple(config["methods"])
        assert set(config["datasets"]) <= set(BENCHMARK_DATASETS)
        assert set(config.get("ood", [])) <= set(OOD_DATASETS)
        assert set(config["compare_shots"]) <= set(config["shots"])
        assert all(0 < b <= 3 for b in config["bands"].values())
    assert set(CONFIG["datasets"]) == set(BENCHMARK_DATASETS)


def test_methods_with_published_figures_join_the_reproductions(monkeypatch):
    """A card publishing a figure for a config's setting (backbone, compared shots, dataset or
    average) adds its method to that config and its fair twin -- no list to edit."""
    from jaxclip_fs import catalogue

    def card(name, *figures):
        return catalogue.Card(name, published=(catalogue.Published("a paper", dict(figures)),))
    extra = (card("probe_avg", (("RN50", 16, "average"), 70.0)),
             card("probe_dtd", (("RN50", 16, "dtd"), 60.0)),
             card("probe_vit", (("ViT-B/16", 16, "average"), 80.0)),  # another backbone
             card("probe_4shot", (("RN50", 4, "dtd"), 50.0)),  # only the curves compare 4 shots
             card("probe_v2", (("RN50", 16, "imagenet_v2"), 55.0)))  # an OOD set
    monkeypatch.setattr(catalogue, "CARDS", catalogue.CARDS + extra)
    listed = CONFIG["methods"]
    for name in ("rn50_16shot", "rn50_16shot_fair"):
        config = runner.load_config(name)
        assert config["add_published_methods"]
        assert config["methods"] == listed + ["probe_avg", "probe_dtd"]
        assert config["experiment"]["methods"] == config["methods"]
    assert runner.load_config("rn50_curves")["methods"][-3:] == [
        "probe_avg", "probe_dtd", "probe_4shot"]
    # one dataset (no average) and its shifted sets
    assert runner.load_config("imagenet_ood_fair")["methods"][-2:] == ["ldc", "probe_v2"]
    # with the shipped cards: every method published on a config's setting runs in it
    monkeypatch.undo()
    for name in ("rn50_16shot", "rn50_curves", "imagenet_ood"):
        config = runner.load_config(name)
        published = runner.published_methods("RN50", config["compare_shots"],
                                              config["datasets"], config["ood"])
        assert published and set(published) <= set(config["methods"])


def test_within_band_passes_outside_fails():
    offsets = {"zero_shot": 0.9, "tip_adapter": -1.6, "gda": 1.4}  # bands 1.0 / 1.5 / 1.5
    checks = {(c.method, c.dataset): c for c in compare(_records(offsets), CONFIG)}
    for dataset in CONFIG["datasets"]:
        zs = checks[("zero_shot", dataset)]
        assert zs.status == "pass" and zs.ours == pytest.approx(zs.published + 0.9)
        assert zs.std == pytest.approx(np.std([-0.3, 0.0, 0.3]))
        assert checks[("tip_adapter", dataset)].status == "FAIL"
        assert checks[("gda", dataset)].status == "pass"
        assert checks[("ape", dataset)].status == "missing"
    avg = checks[("gda", "average")]  # the average of published + 1.4 vs the published average
    published_mean = np.mean([PUBLISHED[("RN50", 16, "gda", d)] for d in CONFIG["datasets"]])
    assert avg.ours == pytest.approx(published_mean + 1.4)
    assert avg.status == "pass" and avg.published == 76.05
    assert not all_passed(checks.values())
    table = format_checks(list(checks.values()))
    assert "FAIL" in table and "pass" in table and "missing" in table


def test_only_the_configs_setting_is_compared():
    records = _records({"zero_shot": 0.0})
    other = [dict(r, accuracy=0.0, weights="random") for r in records]  # never compared
    other += [dict(r, accuracy=0.0, backbone="ViT-B/16") for r in records]
    other += [dict(r, accuracy=0.0, protocol="fair") for r in records]
    config = dict(CONFIG, methods=["zero_shot"])
    checks = compare(records + other, config)
    assert all(c.status == "pass" for c in checks) and all_passed(checks)


def test_the_fair_twin_reports_beside_the_published_numbers():
    """A fair-protocol twin is not held to the bands: its gap to the paper is protocol."""
    twin = runner.load_config("rn50_16shot_fair")
    assert twin["protocol"] == "fair" and CONFIG["protocol"] == "paper"
    assert twin["experiment"]["grid"] == CONFIG["experiment"]["grid"]
    records = [dict(r, protocol="fair") for r in _records({"zero_shot": -5.0})]
    checks = compare(records, dict(twin, methods=["zero_shot"]))
    assert {c.status for c in checks} == {"reported"} and all_passed(checks)


def test_missing_seeds_are_incomplete_and_unpublished_cells_reported():
    records = _records({"tip_adapter": 0.0}, seeds=(1, 2))
    config = dict(CONFIG, methods=["tip_adapter"])
    assert {c.status for c in compare(records, config)} == {"incomplete"}
    ood = runner.load_config("imagenet_ood")
    records = [_record("zero_shot", d, s, 50.0 + s)
               for d in ("imagenet", "imagenet_v2", "imagenet_sketch") for s in (1, 2, 3)]
    checks = compare(records, dict(ood, methods=["zero_shot"]))
    by = {c.dataset: c for c in checks}
    assert by["imagenet"].status == "FAIL" and by["imagenet"].published == 60.32  # 52 vs 60.32
    assert by["imagenet_v2"].status == "reported" and by["imagenet_v2"].ours == pytest.approx(52.0)


def test_runner_says_what_it_needs_without_data(tmp_path, capsys):
    argv = ["rn50_16shot", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path)]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: rn50_16shot needs imagenet, caltech101") and "\n" not in err
    assert "--setup-help" in err


def test_runner_compare_only_reads_a_sweep_directory(tmp_path, capsys):
    directory = tmp_path / "records" / "zero_shot"
    directory.mkdir(parents=True)
    for i, record in enumerate(_records({"zero_shot": 0.5})):
        (directory / f"{i}.json").write_text(json.dumps(record))
    config = dict(CONFIG, name="zs_only", add_published_methods=False,
                  experiment={**CONFIG["experiment"], "methods": ["zero_shot"]})
    path = tmp_path / "zs_only.json"
    path.write_text(json.dumps(config))
    assert runner.main([str(path), "--compare-only", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("  pass\n") == 12 and "12 pass" in out and "zero_shot      imagenet" in out
