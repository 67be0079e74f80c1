"""The engine: records equal `evaluate`, fusion = separate programs, resume, params, CLI."""

import csv
import dataclasses
import os

import numpy as np
import pytest

from jaxclip_fs import cli, methods
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.io.checkpoints import restore_tree
from jaxclip_fs.engine import feature_program as program_lib
from jaxclip_fs.engine import outdir
from jaxclip_fs.engine.evaluate import evaluate_features
from jaxclip_fs.engine.run import RunDir, Sources, run_experiment
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import Cell
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.search import accuracy
from jaxclip_fs.methods.task import make_evalset, make_task as task_of
from jaxclip_fs.pipelines.features import GivenFeatures
from same_records import COMPARED, assert_same_records, read_records  # noqa: F401 (shared)

# Two small datasets with different class counts and split sizes (fusion pads them).
FEATURES = {
    "oxford_pets": make_task(0, num_classes=4, dim=8, shots=4, views=3, val_per_class=5,
                             test_per_class=6, dataset="oxford_pets"),
    "dtd": make_task(1, num_classes=6, dim=8, shots=4, views=3, val_per_class=4, test_per_class=5,
                     dataset="dtd"),
}
# Two more of one shape: their programs share one compilation (keeps the resume tests fast).
FEATURES.update({name: make_task(seed, num_classes=3, dim=8, shots=2, views=2, val_per_class=4,
                                 test_per_class=4, dataset=name)
                 for seed, name in ((5, "twin_a"), (6, "twin_b"))})


SOURCES = Sources(features=GivenFeatures(FEATURES))


def config(methods=("tip_adapter_f",), datasets=("oxford_pets", "dtd"), shots=(1, 2, 4),
           seeds=(1, 2), hp=(), protocols=("fair",), sampler=None, **execution):
    """An experiment config over the synthetic feature sets."""
    return config_lib.ExperimentConfig(
        methods=tuple(config_lib.MethodConfig(m) for m in methods),
        data=config_lib.DataConfig(datasets=tuple(datasets)),
        protocol=config_lib.ProtocolConfig(names=tuple(protocols), sampler=sampler),
        hp={k: float(v) for k, v in (item.split("=") for item in hp)},
        grid=config_lib.GridConfig(shots=tuple(shots), seeds=tuple(seeds)),
        execution=config_lib.ExecutionConfig(**execution))


def run_sweep(out, cfg, sources=SOURCES, provenance=None):
    if provenance:
        sources = Sources(features=sources.features, provenance=provenance)
    return run_experiment(cfg, RunDir(out), sources=sources, progress=False, log=None)


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fused"))
    result = run_sweep(out, config(fuse_datasets=True))
    return out, result


# (method, options, hyperparameters): Tip-Adapter-F and the closed-form kernels as configured,
# the probes with shortened training (the layout, not the length, is under test)
SWEPT = [("tip_adapter_f", {}, {}),
         ("zs_lp", {}, {"epochs": 12}),
         ("clap", {"constraint": "adaptive"}, {"epochs": 12, "lr": 0.01}),
         ("lp_pp", {}, {"epochs": 15}),
         ("taskres", {}, {"epochs": 12}),
         ("cross_modal_lp", {}, {"steps": 250, "batch_size": 3}),
         ("proker", {}, {}),
         ("ridge", {}, {})]


@pytest.mark.parametrize("method, options, hp", SWEPT, ids=[m for m, _, _ in SWEPT])
def test_sweep_records_equal_evaluate(fused_run, tmp_path, method, options, hp):
    """Each cell of the one vmapped program (2 seeds x 3 shot counts x 2 datasets of different
    class counts, fused) equals `evaluate` run on that cell alone -- here a 1-shot cell of the
    smaller dataset, padded in classes and shots inside the program."""
    if method == "tip_adapter_f":
        out = fused_run[0]
    else:
        out = str(tmp_path)
        cfg = dataclasses.replace(config(fuse_datasets=True), methods=(
            config_lib.MethodConfig(method, dict(options), dict(hp)),))
        run_sweep(out, cfg)
    found = read_records(out)
    assert len(found) == 2 * 3 * 2
    cell = Cell(methods.get(method, **options).label, "oxford_pets", 1, 2)
    alone = evaluate_features(FEATURES[cell.dataset], method, shots=cell.shots, seed=cell.seed,
                              hp=hp, options=options or None, log=None)
    assert_same_records({cell: found[cell]}, {cell: alone})


def test_trained_params_are_saved_and_reproduce_the_accuracy(fused_run):
    out, _ = fused_run
    record = read_records(out)[Cell("tip_adapter_f", "dtd", 4, 2)]
    tree, meta = restore_tree(os.path.join(out, record["params_checkpoint"]))
    g, t = record["params_row"]
    assert meta["slots"][g][t] == dict(method="tip_adapter_f", dataset="dtd", shots=4, seed=2,
                                       protocol="fair")
    params = {k: v[g, t] for k, v in tree.items()}
    fs = FEATURES["dtd"]
    task = task_of(fs.train[:, support_index(fs, 4, 2)], fs.text, fs.logit_scale)
    assert params["keys"].shape == (fs.num_classes, 4, fs.dim)  # learned keys [C, K, D]
    assert not np.allclose(params["keys"], tree["keys"][g, t - 1])  # each cell has its own
    test = make_evalset(fs.test, fs.test_labels)
    method = methods.get("tip_adapter_f")
    hp = as_arrays(record["hyperparameters"])
    acc = accuracy(logits(method, params, task, test.features, hp), test)
    assert float(acc) == pytest.approx(record["accuracy"], abs=1e-4)


def test_interrupted_run_resumes_without_recomputing(tmp_path, monkeypatch):
    out = str(tmp_path)
    cfg = config(methods=("zero_shot", "tip_adapter", "gda"), datasets=("twin_a", "twin_b"),
                 shots=(1, 2), devices=1)
    real = program_lib.run_program
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1].slots)
        return real(*args, **kwargs)

    monkeypatch.setattr(program_lib, "run_program", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(out, cfg)
    first = read_records(out)
    assert len(first) == 2 * 4  # the two programs that finished, 4 cells each
    stamps = {c: os.stat(outdir.record_path(out, c)).st_mtime_ns for c in first}

    calls.clear()
    monkeypatch.setattr(program_lib, "run_program",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    result = run_sweep(out, cfg)
    assert len(calls) == 4 and len(result.computed) == 4 * 4 and set(result.skipped) == set(first)
    after = read_records(out)
    assert len(after) == 24 and all(after[c] == first[c] for c in first)
    assert all(os.stat(outdir.record_path(out, c)).st_mtime_ns == stamps[c] for c in first)

    def never(*args, **kwargs):
        raise AssertionError("a finished sweep must not compile anything")

    monkeypatch.setattr(program_lib, "compiled_program", never)
    monkeypatch.setattr(program_lib, "run_program", never)
    done = run_sweep(out, cfg, Sources(features=lambda *a: never()))
    assert not done.computed and len(done.skipped) == 24


def test_rerun_extends_the_grid_or_refuses_other_settings(tmp_path, monkeypatch):
    out = str(tmp_path)
    small = config(methods=("zero_shot",), datasets=("twin_a",), shots=(1,), seeds=(1,), devices=1)
    run_sweep(out, small)
    with pytest.raises(ConfigError, match="protocol.sampler") as info:
        run_sweep(out, config(methods=("zero_shot",), datasets=("twin_a",), shots=(1,), seeds=(1,),
                              sampler="official", devices=1))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="inputs.backbone"):
        run_sweep(out, small, provenance={"backbone": "RN50"})
    bigger = config(methods=("zero_shot",), datasets=("twin_a",), shots=(1, 2), seeds=(1, 3),
                    protocols=("fair", "fewshot"), devices=1)
    result = run_sweep(out, bigger)
    assert set(result.skipped) == {Cell("zero_shot", "twin_a", 1, 1)} and len(result.computed) == 7
    manifest = outdir.read_manifest(out)
    assert manifest["grid"]["seeds"] == [1, 3] and manifest["grid"]["shots"] == [1, 2]
    assert manifest["grid"]["protocols"] == ["fair", "fewshot"]
    assert len(manifest["invocations"]) == 2


def test_hp_override_applies_to_the_methods_that_have_it(tmp_path):
    cfg = config(methods=("zero_shot", "tip_adapter"), datasets=("dtd",), shots=(2,), seeds=(1,),
                 hp=("alpha=1.5",), devices=1)
    run_sweep(str(tmp_path), cfg)
    record = read_records(str(tmp_path))[Cell("tip_adapter", "dtd", 2, 1)]
    assert record["hyperparameters"]["alpha"] == 1.5 and record["searched"] == ["beta"]
    alone = evaluate_features(FEATURES["dtd"], "tip_adapter", shots=2, seed=1, hp=["alpha=1.5"],
                              log=None)
    assert record["accuracy"] == pytest.approx(alone["accuracy"], abs=1e-4)
    with pytest.raises(ConfigError, match="unknown hyperparameter 'gamma'"):
        run_sweep(str(tmp_path / "b"), config(methods=("zero_shot",), hp=("gamma=1",)))


def test_cli_run_on_feature_files_writes_records_and_report(tmp_path, capsys):
    paths = []
    for name in ("oxford_pets", "dtd"):
        paths.append(str(tmp_path / f"{name}.npz"))
        featfile.save(paths[-1], FEATURES[name])
    out = str(tmp_path / "sweep")
    argv = ["run", "--features", *paths, "--method", "tip_adapter", "--shots", "1,2",
            "--seeds", "1,2", "--out", out, "--fuse-datasets", "--devices", "1", "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "### 2-shot" in printed and "report.md" in printed
    found = read_records(out)
    assert len(found) == 8
    with open(os.path.join(out, "report", "results.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["dataset"] != "average"]
    for row in rows:
        accs = [found[Cell("tip_adapter", row["dataset"], int(row["shots"]), s)]["accuracy"]
                for s in (1, 2)]
        assert float(row["mean"]) == pytest.approx(np.mean(accs), abs=1e-4)
    assert cli.main(argv) == 0  # resumes: nothing left
    assert "nothing to compute" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--dataset", "digits"], "either --dataset"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--shots", "0"], "--shots values must be >= 1"),
    (["--devices", "99"], "--devices"),
    (["--coordinator", "h:1"], "need --distributed"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, extra, needle):
    path = str(tmp_path / "dtd.npz")
    featfile.save(path, FEATURES["dtd"])
    argv = ["run", "--features", path, "--out", str(tmp_path / "o"), "--quiet"]
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err
