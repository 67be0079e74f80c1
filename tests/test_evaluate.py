"""``jaxclip-fs evaluate`` / ``validate`` and the Python pipeline, on synthetic feature files."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import cli, methods
from jaxclip_fs.data.fewshot import nested_fewshot
from jaxclip_fs.errors import DataError
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.io import records
from jaxclip_fs.methods.base import as_arrays
from jaxclip_fs.methods.task import with_shots
from jaxclip_fs.data.fewshot import coop_val_rows
from jaxclip_fs.engine.evaluate import evaluate_features, evaluate_file
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.methods.task import make_evalset
from jaxclip_fs.methods.task import make_task as task_of
from jaxclip_fs.train.fit import task_key
from runs import fit_select_predict, pad_evalset
from numpy_ref import unit as _normalize

C, D = 6, 16


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    fs = make_task(3, num_classes=C, dim=D, shots=8, views=4, val_per_class=6, test_per_class=10,
                   dataset="oxford_pets")
    path = str(tmp_path_factory.mktemp("features") / "pets.npz")
    featfile.save(path, fs)
    return path, fs


def build_task(fs, shots, seed):
    """The (seed, shots) task of a feature set, as the engine builds it."""
    return task_of(fs.train[:, support_index(fs, shots, seed)], fs.text, fs.logit_scale)


def test_cli_writes_logits_and_record(feature_file, tmp_path, capsys):
    path, fs = feature_file
    out = tmp_path / "run"
    assert cli.main(["evaluate", path, "--method", "tip_adapter", "--shots", "4", "--seed", "2",
                     "--out", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    record = json.loads((out / "result.json").read_text())
    test_logits = np.load(out / "test_logits.npy")
    assert test_logits.shape == (fs.test.shape[0], C)
    recomputed = 100.0 * np.mean(np.argmax(test_logits, -1) == fs.test_labels)
    assert record["accuracy"] == pytest.approx(recomputed)
    assert record["method"] == "tip_adapter" and record["shots"] == 4 and record["seed"] == 2
    assert record["dataset"] == "oxford_pets" and record["backbone"] == "synthetic"
    assert record["weights"] == "synthetic" and record["split_policy"] == "synthetic"
    assert record["searched"] == ["beta", "alpha"]
    assert set(record["hyperparameters"]) == {"alpha", "beta"}
    assert record["protocol"] == "fair" and record["val_size"] == fs.val.shape[0]  # whole split
    assert record["selection"]["search_on"] == "val" and not record["selection"]["optimistic"]
    assert record["code_version"].startswith(records.code_version().split("+")[0])
    assert record["seconds"] > 0 and 0 <= record["val_accuracy"] <= 100


def test_fixed_hyperparameters_skip_search_and_match_formula(feature_file, tmp_path):
    """All searched values given: no search; logits = Tip-Adapter's formula on the support."""
    path, fs = feature_file
    out = tmp_path / "fixed"
    assert cli.main(["evaluate", path, "--method", "tip_adapter", "--shots", "3", "--seed", "5",
                     "--hp", "alpha=2.5", "--hp", "beta=4", "--out", str(out)]) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["searched"] == [] and record["hyperparameters"] == {"alpha": 2.5, "beta": 4.0}
    index = nested_fewshot(fs.train_labels, C, 3, seed=5)  # [C, 3]
    keys = _normalize(fs.train[1:, index.reshape(-1)].astype(np.float64).mean(0))
    onehot = np.eye(C)[np.repeat(np.arange(C), 3)]
    q = _normalize(fs.test.astype(np.float64))
    expected = 100 * q @ fs.text.T + 2.5 * np.exp(-4.0 * (1 - q @ keys.T)) @ onehot
    np.testing.assert_allclose(np.load(out / "test_logits.npy"), expected, rtol=1e-4, atol=1e-3)


def test_python_api_matches_cli_and_trains(feature_file, tmp_path):
    path, _ = feature_file
    record = evaluate_file(path, "tip_adapter_f", shots=4, seed=1, hp=["epochs=2"],
                           out_dir=str(tmp_path / "py"))
    assert cli.main(["evaluate", path, "--method", "tip_adapter_f", "--shots", "4",
                     "--hp", "epochs=2", "--out", str(tmp_path / "cli")]) == 0
    from_cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    for field in ("accuracy", "val_accuracy", "hyperparameters", "best_epoch", "searched"):
        assert record[field] == from_cli[field]
    assert record["hyperparameters"]["epochs"] == 2 and record["best_epoch"] in (0, 1)
    np.testing.assert_array_equal(np.load(tmp_path / "py" / "test_logits.npy"),
                                  np.load(tmp_path / "cli" / "test_logits.npy"))


def test_protocols_are_recorded(feature_file):
    _, fs = feature_file
    record = evaluate_features(fs, "gda", shots=2, protocol="fewshot", log=None)
    assert record["protocol"] == "fewshot" and record["val_size"] == C * 2  # min(K, 4) per class
    record = evaluate_features(fs, "gda", shots=2, log=None)
    assert record["protocol"] == "fair" and record["val_size"] == fs.val.shape[0]
    assert record["selection"] == {"protocol": "fair", "val_rows": "full", "epochs_on": None,
                                   "search_on": "val", "reported": "final", "sampler": "nested",
                                   "prompts": False, "optimistic": False}


def test_feature_file_fewshot_index_is_used(feature_file, tmp_path, capsys):
    _, fs = feature_file
    rng = np.random.default_rng(0)
    index = np.stack([rng.permutation(np.flatnonzero(fs.train_labels == c))[:5] for c in range(C)])
    with_index = featfile.FeatureSet(**{**fs.__dict__, "fewshot": {7: index}})
    task = build_task(with_index, 3, 7)
    np.testing.assert_array_equal(np.asarray(task.support), fs.train[:, index[:, :3]])
    with pytest.raises(DataError, match="seeds \\[7\\], not seed 1"):
        build_task(with_index, 3, 1)
    with pytest.raises(DataError, match="holds 5 shots per class for seed 7; 6 asked"):
        build_task(with_index, 6, 7)
    path = str(tmp_path / "indexed.npz")
    featfile.save(path, with_index)
    assert cli.main(["evaluate", path, "--method", "zero_shot", "--seed", "1", "--shots", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not seed 1" in err and "\n" not in err


@pytest.mark.parametrize("argv, needle", [
    (["--method", "tip_adapter", "--hp", "gamma=1"], "unknown hyperparameter 'gamma'"),
    (["--method", "tip_adapter", "--hp", "alpha=abc"], "'alpha' needs a number, got 'abc'"),
    (["--method", "tip_adapter", "--hp", "alpha"], "NAME=VALUE"),
    (["--method", "tip_adapter", "--hp", "alpha=-1"], "'alpha' must be >= 0"),
    (["--method", "ape", "--hp", "k=17"], "'k' must be <= the feature width 16"),
    (["--method", "ape_t", "--hp", "epochs=1.5"], "'epochs' must be a whole number"),
    (["--method", "tip_adapter_f", "--hp", "lr=0"], "'lr' must be > 0"),
    (["--method", "tip_adapter", "--hp", "alpha=1", "alpha=2"], "'alpha' given twice"),
    (["--method", "nope"], "unknown method 'nope'; known methods: zero_shot"),
    (["--method", "ldc"], "method 'ldc' reads images, not a feature file"),
    (["--method", "tip_adapter", "--shots", "9"], "has 8 train images; 9 shots"),
])
def test_bad_arguments_give_one_line_errors(feature_file, capsys, argv, needle):
    path, _ = feature_file
    assert cli.main(["evaluate", path] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_unknown_hyperparameter_lists_valid_names(feature_file, capsys):
    path, _ = feature_file
    assert cli.main(["evaluate", path, "--method", "ape", "--hp", "delta=1"]) == 2
    assert "valid names: k, lambda1, lambda2, alpha, beta, gamma" in capsys.readouterr().err


def test_validate_prints_summary_and_rejects_bad_files(feature_file, tmp_path, capsys):
    path, fs = feature_file
    assert cli.main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert "valid feature file" in out and f"classes: {C}" in out and "dataset: oxford_pets" in out
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, text=fs.text)
    assert cli.main(["validate", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing key 'train'" in err and err.count("\n") == 1
    assert cli.main(["evaluate", bad, "--method", "tip_adapter"]) == 2
    assert "missing key 'train'" in capsys.readouterr().err


def _accuracies(name, feature_sets, shots):
    """Test accuracy of every (feature set, shots) task; one compiled program for all of them.

    The k-shot task is the largest support with a k-shot mask and every
    validation set is padded to 4 images per class, so all tasks share shapes.
    """
    method = methods.get(name)
    values, grid = method.resolve(None, feature_sets[0].dim, ())
    run = jax.jit(functools.partial(fit_select_predict, method,
                                    batch_size=int(values.get("batch_size", 0)),
                                    max_epochs=int(values.get("epochs", 0))))
    key = task_key(1)
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in grid.items()}
    out = np.zeros((len(feature_sets), len(shots)))
    for i, fs in enumerate(feature_sets):
        support = build_task(fs, max(shots), seed=1)
        test = make_evalset(fs.test, fs.test_labels)
        for j, k in enumerate(shots):
            rows = coop_val_rows(fs.val_labels, fs.num_classes, k, 1)
            val = make_evalset(fs.val[rows], fs.val_labels[rows])
            val = pad_evalset(val, 4 * fs.num_classes)
            result = run(key, with_shots(support, k), val, test, as_arrays(values), grid)
            out[i, j] = float(result["test_accuracy"])
    return out


@pytest.mark.slow
def test_methods_behave_as_published_on_synthetic_tasks():
    """ZS < Tip-Adapter < Tip-Adapter-F and APE <= APE-T at 16 shots; accuracy rises with shots.

    Two synthetic tasks x shots {1, 4, 16}, each method one compiled program.
    """
    feature_sets = [make_task(seed, num_classes=30, dim=64, shots=16, views=5, val_per_class=4,
                              test_per_class=40) for seed in (0, 1)]
    shots = (1, 4, 16)
    acc = {m: _accuracies(m, feature_sets, shots)
           for m in ("zero_shot", "tip_adapter", "tip_adapter_f", "ape", "ape_t")}
    at16 = {m: a[:, -1] for m, a in acc.items()}
    assert np.all(at16["zero_shot"] < at16["tip_adapter"]), at16
    assert np.all(at16["tip_adapter"] < at16["tip_adapter_f"]), at16
    assert np.all(at16["ape"] <= at16["ape_t"]), at16
    for m in ("tip_adapter", "tip_adapter_f", "ape", "ape_t"):
        rising = np.all(np.diff(acc[m], axis=1) >= 0) and np.all(acc[m][:, -1] > acc[m][:, 0])
        assert rising, (m, acc[m])
    # the padded, nested task gives what `evaluate` gives (up to one row's rounding)
    single = evaluate_features(feature_sets[1], "tip_adapter", shots=4, seed=1, log=None)
    assert single["accuracy"] == pytest.approx(acc["tip_adapter"][1, 1], abs=100 / 1200 + 1e-6)


def test_record_marks_missing_provenance_unknown(tmp_path):
    record = records.build_record(method="gda", shots=4, seed=2, hyperparameters={"alpha": 0.1},
                                  provenance={"backbone": "RN50", "weights": ""}, accuracy=50.0)
    assert record["backbone"] == "RN50"
    assert record["weights"] == record["dataset"] == record["split_policy"] == "unknown"
    assert record["tokenizer"] == "unknown"
    assert list(record)[:10] == ["method", "backbone", "weights", "dataset", "split_policy",
                                 "tokenizer", "shots", "seed", "hyperparameters", "code_version"]
    records.write_record(tmp_path / "r.json", record)
    assert json.loads((tmp_path / "r.json").read_text()) == record


def test_hp_values_before_the_feature_file_leave_it_positional(feature_file, tmp_path, capsys):
    """``--hp alpha=2 FILE.npz``: --hp takes one or more values, so argparse hands it the file
    too; evaluate moves it back (commands/evaluate.py split_positional)."""
    path, _ = feature_file
    out = tmp_path / "run"
    assert cli.main(["evaluate", "--method", "tip_adapter", "--shots", "2", "--quiet",
                     "--out", str(out), "--hp", "alpha=2", "beta=3", path]) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["hyperparameters"] == {"alpha": 2.0, "beta": 3.0} and record["searched"] == []
    assert record["feature_file"] == path
    capsys.readouterr()
    assert cli.main(["evaluate", "--method", "tip_adapter", "--hp", "alpha=2", path,
                     "other.npz"]) == 2
    assert "--hp expects NAME=VALUE, got 'other.npz'" in capsys.readouterr().err


def test_default_shots_are_the_largest_the_file_holds_and_said_so(tmp_path, capsys):
    """A 4-shot file (its few-shot index holds 4 per class for seed 1): no --shots runs 4-shot,
    not the usual 16, and the output says why; a plain pool: its smallest class."""
    fs = make_task(4, num_classes=C, dim=D, shots=12, views=2, val_per_class=4,
                   test_per_class=5, dataset="dtd")
    index = np.stack([nested_fewshot(fs.train_labels, C, 4, seed=s) for s in (1, 2)])
    indexed = str(tmp_path / "four_shot.npz")
    featfile.save(indexed, dataclasses.replace(fs, fewshot={1: index[0], 2: index[1]}))
    assert cli.main(["evaluate", indexed, "--method", "tip_adapter", "--seed", "2",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "(4-shot, the largest the file holds, seed 2)" in out
    pool = str(tmp_path / "pool.npz")
    featfile.save(pool, fs)
    assert cli.main(["evaluate", pool, "--method", "zero_shot", "--quiet"]) == 0
    assert "(12-shot, the largest the file holds, seed 1)" in capsys.readouterr().out
    assert cli.main(["evaluate", pool, "--method", "zero_shot", "--shots", "3", "--quiet"]) == 0
    assert "(3-shot, seed 1)" in capsys.readouterr().out
