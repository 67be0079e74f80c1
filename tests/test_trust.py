"""No silent wrong number, no lost record, no write outside the run directory.

One test per case a new user hit (each failed before these fixes): records that overwrote
each other, runs extended with changed inputs, real weights with the fallback tokenizer,
report writing outside its folder, symlink loops in a class folder, non-finite numbers
passed as results, a directory locked by a run that failed before any work, two runs into
one directory, a platform that is not there, and the smaller ones (evaluate replacing a
result, extract --out a directory, relative paths in config.json, duplicate zip members).
The signal cases run real processes: ``tests/test_faults.py``.
"""

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from jaxclip_fs import cli
from jaxclip_fs.clip import tokenizer as tk
from jaxclip_fs.commands import demo
from jaxclip_fs.data import get_dataset
from jaxclip_fs.engine import outdir
from jaxclip_fs.engine.evaluate import evaluate_features
from jaxclip_fs.errors import JaxclipError
from jaxclip_fs.experiment.plan import Cell
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task

from helpers import REPO, subprocess_env
from test_sweep import read_records

TINY = ["--backbone", "tiny-vit", "--weights", "random", "--views", "0", "--quiet"]


def one_line_error(capsys, *needles):
    """stderr ends in one ``error:`` line holding every needle (progress messages may come
    first), and holds no traceback."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert not any("Traceback" in line for line in lines), lines
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def image_folder(root, classes=("cat", "dog"), per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def feature_file(path, seed=0, dataset="oxford_pets", **changes):
    fs = make_task(seed, num_classes=3, dim=8, shots=2, views=1, val_per_class=3,
                   test_per_class=4, dataset=dataset)
    featfile.save(str(path), dataclasses.replace(fs, **changes))
    return str(path)


def features_run(path, out, *extra):
    """``run`` of Tip-Adapter, 1 shot, on the feature file ``path`` into ``out``."""
    return ["run", "--features", path, "--method", "tip_adapter", "--shots", "1", "--quiet",
            "--out", str(out), *extra]


# --- 1. records overwrite each other --------------------------------------------------------


def test_datasets_differing_by_slash_or_underscore_keep_their_own_records(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "d" / "x" / "ok")
    image_folder(tmp_path / "d" / "x_ok", seed=1)
    out = tmp_path / "run"
    argv = ["run", "--dataset", "folder:d/x/ok,folder:d/x_ok", *TINY, "--method", "tip_adapter",
            "--shots", "1", "--seeds", "1,2", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--no-report"]
    assert cli.main(argv) == 0
    records = read_records(str(out))
    assert len(records) == 4
    assert {r["dataset"] for r in records.values()} == {
        f"folder:{tmp_path / 'd' / 'x' / 'ok'}", f"folder:{tmp_path / 'd' / 'x_ok'}"}
    assert len(os.listdir(out / "features")) == 2
    capsys.readouterr()
    assert cli.main(argv) == 0 and "all 4 cells already have records" in capsys.readouterr().err


# --- 2. extending a run mixes inputs --------------------------------------------------------


def test_a_changed_feature_file_is_refused_naming_it_and_both_digests(tmp_path, capsys):
    path = feature_file(tmp_path / "pets.npz")
    out = str(tmp_path / "run")
    base = features_run(path, out, "--no-report")
    assert cli.main(base + ["--seeds", "1"]) == 0
    first = featfile.load(path)
    feature_file(tmp_path / "pets.npz", seed=7)  # same path, new content
    capsys.readouterr()
    assert cli.main(base + ["--seeds", "1,2"]) == 2
    before, after = featfile.digest(first), featfile.digest(featfile.load(path))
    one_line_error(capsys, "the features of oxford_pets", before, after)
    assert len(read_records(out)) == 1  # nothing mixed in


@pytest.fixture
def no_vocabulary(monkeypatch, tmp_path):
    """As without open_clip and an empty Hugging Face cache: no CLIP vocabulary anywhere."""
    import huggingface_hub.constants

    monkeypatch.delenv(tk.BPE_ENV_VAR, raising=False)
    monkeypatch.setattr(tk, "BUNDLING_PACKAGES", ())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "no_cache"))


@pytest.mark.oracle
def test_a_changed_tokenizer_is_refused(tmp_path, capsys, monkeypatch, no_vocabulary):
    out = str(tmp_path / "run")
    base = ["run", "--dataset", "digits", *TINY, "--method", "zero_shot", "--shots", "1",
            "--cache-dir", str(tmp_path / "cache"), "--no-report", "--out", out]
    assert cli.main(base + ["--seeds", "1"]) == 0  # random weights: the byte-level fallback
    monkeypatch.undo()  # open_clip is installed again: CLIP's BPE vocabulary
    capsys.readouterr()
    assert cli.main(base + ["--seeds", "1,2"]) == 2
    (record,) = read_records(out).values()
    assert record["tokenizer"].startswith("byte-fallback:sha256:")  # in every record
    one_line_error(capsys, "the tokenizer", record["tokenizer"], "clip-bpe:sha256:")


def hf_tiny_vit(directory, seed=0):
    """A transformers CLIPModel directory of the tiny ViT (random values), no vocabulary."""
    from clip_checkpoints import hf_model, save_hf_dir
    from jaxclip_fs.clip.variants import get_config

    save_hf_dir(hf_model(get_config("tiny-vit"), seed=seed), str(directory))
    assert not {"vocab.json", "tokenizer.json"} & set(os.listdir(directory))
    return str(directory)


@pytest.mark.oracle
def test_changed_weights_behind_the_same_path_are_refused(tmp_path, capsys):
    weights = hf_tiny_vit(tmp_path / "ckpt")
    out = str(tmp_path / "run")
    base = ["run", "--dataset", "digits", "--backbone", "tiny-vit", "--weights", weights,
            "--views", "0", "--quiet", "--method", "zero_shot", "--shots", "1", "--no-report",
            "--cache-dir", str(tmp_path / "cache"), "--out", out]
    assert cli.main(base + ["--seeds", "1"]) == 0
    hf_tiny_vit(tmp_path / "ckpt", seed=1)  # other weights, same directory
    capsys.readouterr()
    assert cli.main(base + ["--seeds", "1,2"]) == 2
    one_line_error(capsys, "was run with the weights sha256:", "not sha256:", weights)
    assert len(read_records(out)) == 1


# --- 3. the tokenizer falls back silently ---------------------------------------------------


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    return hf_tiny_vit(tmp_path_factory.mktemp("hf_tiny_vit"))


@pytest.mark.oracle
@pytest.mark.parametrize("command", ["embed", "extract"])
def test_real_weights_without_a_vocabulary_are_a_one_line_error(
        command, hf_checkpoint, tmp_path, capsys, no_vocabulary):
    out = str(tmp_path / "out.npz")
    argv = {"embed": ["embed", "--text", "a photo of a cat"],
            "extract": ["extract", "--dataset", "digits", "--views", "0", "--no-cache",
                        "--quiet"]}[command]
    assert cli.main(argv + ["--backbone", "tiny-vit", "--weights", hf_checkpoint,
                            "--out", out]) == 2
    one_line_error(capsys, "no CLIP vocabulary", hf_checkpoint, "hf download")
    assert not os.path.exists(out)


# --- 4. report writes outside its folder ----------------------------------------------------


def test_report_never_writes_outside_its_folder(tmp_path, capsys):
    records = tmp_path / "shared" / "records"
    records.mkdir(parents=True)
    hostile = ["/../../../escaped", "../escaped2", "..", "a/../../b", "x\\..\\y"]
    for i, name in enumerate(hostile):
        (records / f"r{i}.json").write_text(json.dumps(
            {"method": "tip_adapter", "dataset": name, "shots": 1, "seed": 1, "accuracy": 50.0,
             "backbone": "RN50", "weights": "sha256:x", "protocol": "fair"}))
    before = set(tmp_path.rglob("*"))
    assert cli.main(["report", str(records)]) == 0
    written = set(tmp_path.rglob("*")) - before
    report = records / "report"
    assert written and all(p == report or report in p.parents for p in written), written
    plots = [p for p in written if p.suffix == ".png"]
    assert len(plots) == len(hostile) + 1  # one per dataset, distinct, and the average
    assert len(capsys.readouterr().out) > 0


def test_a_dataset_named_dot_dot_something_is_reported(tmp_path, capsys):
    path = feature_file(tmp_path / "f.npz", meta={"dataset": "..pets"})
    out = tmp_path / "run"
    assert cli.main(features_run(path, out, "--seeds", "1")) == 0
    assert "| Tip-Adapter |" in capsys.readouterr().out
    assert (out / "report" / "report.md").read_text().count("..pets") >= 1


# --- 5. symlink loops in a class folder -----------------------------------------------------


def test_a_symlink_loop_in_a_class_folder_adds_no_image(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=12)
    os.symlink("..", root / "cat" / "up")
    os.symlink(".", root / "dog" / "here")
    dataset = get_dataset(f"folder:{root}")
    sizes = [len(dataset.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 24
    assert dataset.split("train").labels.tolist().count(0) < 12


def test_one_file_in_two_classes_is_an_error_naming_both(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=4)
    os.symlink(root / "dog" / "0.png", root / "cat" / "also_dog.png")
    with pytest.raises(JaxclipError, match="the same file as") as info:
        get_dataset(f"folder:{root}")
    assert str(root / "dog" / "0.png") in str(info.value)
    assert str(root / "cat" / "also_dog.png") in str(info.value)


# --- 6. non-finite numbers pass as results --------------------------------------------------


def test_features_of_vanishing_norm_are_refused_naming_the_row(tmp_path, capsys):
    fs = make_task(0, num_classes=5, dim=8, shots=2, views=1, val_per_class=3,
                   test_per_class=4, dataset="tiny")
    path = str(tmp_path / "tiny.npz")
    np.savez(path, text=fs.text, train=fs.train * 1e-30, train_labels=fs.train_labels,
             val=fs.val * 1e-30, val_labels=fs.val_labels, test=fs.test * 1e-30,
             test_labels=fs.test_labels, classnames=np.asarray(fs.classnames))
    assert cli.main(["evaluate", path, "--method", "tip_x", "--shots", "1", "--quiet"]) == 2
    one_line_error(capsys, path, "key 'train' row 0/0 has norm")


def test_non_finite_logits_are_an_error_naming_the_cell():
    fs = make_task(0, num_classes=5, dim=8, shots=2, views=1, val_per_class=3,
                   test_per_class=4, dataset="tiny")
    tiny = dataclasses.replace(fs, train=fs.train * 1e-30, val=fs.val * 1e-30,
                               test=fs.test * 1e-30)  # (in memory: not validated)
    with pytest.raises(JaxclipError, match=r"tip_x on tiny, 1-shot, seed 1 \(fair\): its test "
                                           r"logits not finite"):
        evaluate_features(tiny, "tip_x", shots=1, seed=1, log=None)


@pytest.mark.parametrize("accuracy", ["NaN", "Infinity", "-Infinity"])
def test_a_record_with_a_non_finite_accuracy_is_recomputed(tmp_path, capsys, accuracy):
    path = feature_file(tmp_path / "pets.npz")
    out = str(tmp_path / "run")
    argv = features_run(path, out, "--seeds", "1")
    assert cli.main(argv) == 0
    cell = Cell("tip_adapter", "oxford_pets", 1, 1)
    record = outdir.record_path(out, cell)
    good = json.load(open(record))
    text = json.dumps(dict(good, accuracy=0.0)).replace('"accuracy": 0.0',
                                                        f'"accuracy": {accuracy}')
    open(record, "w").write(text)
    capsys.readouterr()
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert f"warning: record {record} is malformed" in captured.err
    assert json.load(open(record))["accuracy"] == good["accuracy"]
    assert "nan" not in captured.out.lower() and "inf" not in captured.out.lower()


def test_report_names_malformed_records_and_goes_on(tmp_path, capsys):
    good = {"method": "tip_adapter", "dataset": "dtd", "shots": 1, "seed": 1, "accuracy": 61.5,
            "backbone": "RN50", "weights": "sha256:x", "protocol": "fair"}
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "high.json").write_text(json.dumps(dict(good, seed=2, accuracy="high")))
    (tmp_path / "nan.json").write_text(json.dumps(dict(good, seed=3)).replace("61.5", "NaN"))
    assert cli.main(["report", str(tmp_path), "--no-plots"]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: record ") for w in warnings)
    assert "high.json" in captured.err and "nan.json" in captured.err
    assert "61.50" in captured.out and "nan" not in captured.out.lower()


# --- 7. a run that fails before any work locks its directory --------------------------------


def test_a_run_that_failed_before_any_record_accepts_the_corrected_command(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["run", "--dataset", "digits", "--backbone", "tiny-vit", "--views", "0", "--quiet",
            "--method", "zero_shot", "--shots", "1", "--seeds", "1", "--no-report",
            "--cache-dir", str(tmp_path / "cache"), "--out", out]
    assert cli.main(base + ["--weights", str(tmp_path / "nonexistent.pt")]) == 2
    capsys.readouterr()
    assert cli.main(base + ["--weights", "random"]) == 0
    assert len(read_records(out)) == 1
    assert outdir.read_manifest(out)["settings"]["model"]["weights"] == "random"


@pytest.mark.slow
def test_the_demos_smaller_grid_runs_after_a_demo_with_imo_adapters(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(demo, "find_pretrained", lambda: None)
    base = ["demo", "--out", str(tmp_path / "demo"), "--shots", "1", "--seeds", "1", "--views",
            "0", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert cli.main(base + ["--method", "ta_pp"]) == 0  # trains and uses the IMO adapters
    capsys.readouterr()
    assert cli.main(base + ["--method", "tip_adapter"]) == 0  # the smaller grid: no adapters
    assert "| Tip-Adapter |" in capsys.readouterr().out
    assert {c.method for c in read_records(str(tmp_path / "demo"))} == {"ta_pp", "tip_adapter"}


# --- 8. two runs into one directory ---------------------------------------------------------


def test_a_second_run_into_a_directory_in_use_stops_naming_the_holder(tmp_path, capsys):
    path = feature_file(tmp_path / "pets.npz")
    out = tmp_path / "run"
    argv = features_run(path, out, "--seeds", "1")
    out.mkdir()
    with open(out / ".lock", "w") as held:  # as the first run holds it (io/lock.py)
        fcntl.flock(held, fcntl.LOCK_EX)
        json.dump({"pid": 4242, "host": "node7", "since": "today",
                   "argv": ["jaxclip-fs", "run", "(the first)"]}, held)
        held.flush()
        assert cli.main(argv) == 2
        one_line_error(capsys, f"{out} is in use by another run", "pid 4242 on node7",
                       "jaxclip-fs run (the first)", "--wait-lock")
        assert not os.path.exists(out / "records")
    assert cli.main(argv) == 0  # released: the next run goes ahead


# --- 9. platforms (signals: tests/test_faults.py) -------------------------------------------


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_an_absent_platform_is_one_line_naming_it(tmp_path, platform):
    argv = [sys.executable, "-m", "jaxclip_fs.cli", "evaluate", "--method", "zero_shot",
            "--dataset", "digits", *TINY, "--shots", "1", "--out", str(tmp_path / "o")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=subprocess_env(JAX_PLATFORMS=platform))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: JAX_PLATFORMS={platform}: this machine has no such platform (available: cpu); "
        "unset JAX_PLATFORMS or name one of those"]


# --- 10. the smaller ones -------------------------------------------------------------------


def test_evaluate_refuses_to_replace_an_earlier_result_without_overwrite(tmp_path, capsys):
    path = feature_file(tmp_path / "pets.npz")
    out = tmp_path / "ev"
    argv = ["evaluate", path, "--method", "tip_adapter", "--shots", "1", "--quiet", "--out",
            str(out)]
    assert cli.main(argv) == 0
    first = (out / "result.json").read_text()
    capsys.readouterr()
    assert cli.main(argv + ["--seed", "2"]) == 2
    one_line_error(capsys, "already holds a result", "--overwrite")
    assert (out / "result.json").read_text() == first
    assert cli.main(argv + ["--seed", "2", "--overwrite"]) == 0
    assert json.loads((out / "result.json").read_text())["seed"] == 2


def test_extract_out_a_directory_fails_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("extraction started before --out was checked")

    monkeypatch.setattr("jaxclip_fs.features.extract.extract_features", no_work)
    monkeypatch.setattr("jaxclip_fs.convert.load_clip", no_work)
    assert cli.main(["extract", "--dataset", "digits", *TINY, "--out", str(tmp_path)]) == 2
    one_line_error(capsys, f"--out {tmp_path}: is a directory")


def test_config_json_holds_absolute_paths_so_run_config_works_from_elsewhere(
        tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    feature_file(tmp_path / "a" / "pets.npz")
    assert cli.main(features_run("pets.npz", "run", "--seeds", "1", "--no-report")) == 0
    config = json.loads((tmp_path / "a" / "run" / "config.json").read_text())
    assert config["data"]["features"] == [str(tmp_path / "a" / "pets.npz")]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--config", "a/run/config.json", "--out", "again", "--quiet",
                     "--no-report"]) == 0
    assert read_records(str(tmp_path / "again")).keys() == \
        read_records(str(tmp_path / "a" / "run")).keys()


def test_duplicate_zip_members_are_an_error_naming_the_member(tmp_path):
    path = feature_file(tmp_path / "pets.npz")
    fs = make_task(9, num_classes=3, dim=8, shots=2, views=1, val_per_class=3, test_per_class=4)
    with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning, match="Duplicate"):
        with archive.open("test.npy", "w") as member:
            np.lib.format.write_array(member, fs.test)
    with pytest.raises(JaxclipError, match=r"holds member 'test.npy' more than once"):
        featfile.load(path)


# --- directories written by the previous version --------------------------------------------


def _as_previous_version(out):
    """The manifest as the version before the path encoding and input identities wrote it."""
    manifest = outdir.read_manifest(out)
    for key in ("path_encoding", "inputs"):
        manifest.pop(key)
    manifest["settings"]["model"]["imo_adapters"] = None
    open(os.path.join(out, "manifest.json"), "w").write(json.dumps(manifest))


def test_a_previous_versions_directory_resumes_or_says_why_not(tmp_path, capsys):
    path = feature_file(tmp_path / "pets.npz")
    out = str(tmp_path / "run")
    argv = features_run(path, out, "--no-report")
    assert cli.main(argv + ["--seeds", "1"]) == 0
    _as_previous_version(out)  # ordinary names: the same paths
    capsys.readouterr()
    assert cli.main(argv + ["--seeds", "1,2"]) == 0
    assert "resuming: 1 of 2 cells already finished" in capsys.readouterr().err
    assert outdir.read_manifest(out)["path_encoding"] == outdir.PATH_ENCODING

    named = feature_file(tmp_path / "named.npz", meta={"dataset": "folder:/data/x_ok"})
    out = str(tmp_path / "named_run")
    argv = features_run(named, out, "--seeds", "1", "--no-report")
    assert cli.main(argv) == 0
    _as_previous_version(out)  # a name whose path was not unique before
    capsys.readouterr()
    assert cli.main(argv) == 2
    one_line_error(capsys, "written by an earlier version", "'folder:/data/x_ok'",
                   "use another --out")
