"""Output paths and records: checked before any work, nothing computed lost on a failed write,
records validated when a run resumes."""

import errno
import json
import os
import shutil
import sys

import pytest

from jaxclip_fs import cli
from jaxclip_fs.engine import outdir
from jaxclip_fs.engine import run as engine_run
from jaxclip_fs.experiment.plan import Cell
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.io import atomic, outputs

from helpers import DiskUsage, run_unprivileged
from test_sweep import COMPARED, read_records

FEATURES = make_task(3, num_classes=4, dim=8, shots=4, views=2, val_per_class=4,
                     test_per_class=5, dataset="oxford_pets")


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("features") / "pets.npz")
    featfile.save(path, FEATURES)
    return path


def run_argv(feature_file, out, *extra):
    return ["run", "--features", feature_file, "--method", "tip_adapter", "--shots", "1,2",
            "--seeds", "1,2", "--out", str(out), "--quiet", "--no-report", *extra]


def evaluate_argv(feature_file, out):
    return ["evaluate", feature_file, "--method", "tip_adapter", "--shots", "2", "--quiet",
            "--out", str(out)]


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the engine is started."""
    def refuse(*args, **kwargs):
        raise AssertionError("the engine ran before the output path was checked")
    monkeypatch.setattr(engine_run, "run_experiment", refuse)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_out_that_is_a_file_or_under_one_fails_before_any_work(
        command, feature_file, tmp_path, capsys, no_work):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    argv = run_argv if command == "run" else evaluate_argv
    assert cli.main(argv(feature_file, taken)) == 2
    _one_line_error(capsys, f"--out {taken}: exists and is not a directory")
    assert cli.main(argv(feature_file, taken / "sub" / "dir")) == 2
    _one_line_error(capsys, f"--out {taken}/sub/dir: {taken} is a file, not a directory")


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_out_on_a_full_disk_fails_before_any_work(command, feature_file, tmp_path, capsys,
                                                  monkeypatch, no_work):
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: DiskUsage(1 << 30, 1 << 30, 1 << 20))
    argv = run_argv if command == "run" else evaluate_argv
    out = tmp_path / "new" / "out"
    assert cli.main(argv(feature_file, out)) == 2
    _one_line_error(capsys, f"--out {out}: no space left (1.0 MiB free")
    assert not (tmp_path / "new").exists()  # the probe's directories are gone again


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_read_only_out_fails_before_any_work(command, feature_file, tmp_path):
    """For real: a 0o555 directory, the CLI in a subprocess that cannot override permissions."""
    out = tmp_path / "readonly"
    out.mkdir()
    os.chmod(out, 0o555)
    argv = run_argv if command == "run" else evaluate_argv
    proc = run_unprivileged([sys.executable, "-m", "jaxclip_fs.cli",
                             *argv(feature_file, out / "run")])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--out {out}/run: not writable (Permission denied)" in proc.stderr
    assert proc.stdout == "" and os.listdir(out) == []


def test_check_output_dir_accepts_and_leaves_no_trace(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    outputs.check_output_dir(existing, "--out")
    assert sorted(os.listdir(existing)) == ["keep.txt"]
    outputs.check_output_dir(tmp_path / "a" / "b" / "c", "--out")
    assert not (tmp_path / "a").exists()


def _failing_writes(monkeypatch, predicate):
    """``atomic.write_bytes`` raises ENOSPC for the paths ``predicate`` picks."""
    real = atomic.write_bytes

    def write_bytes(path, data):
        if predicate(str(path)):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", write_bytes)


def test_evaluate_prints_its_result_when_the_files_cannot_be_written(
        feature_file, tmp_path, capsys, monkeypatch):
    _failing_writes(monkeypatch, lambda path: path.endswith("result.json"))
    out = tmp_path / "eval"
    assert cli.main(evaluate_argv(feature_file, out)) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{out}/result.json: cannot write (No space left on device)" in err
    assert "printed on stdout" in err
    lines = captured.out.splitlines()
    record = json.loads(next(line for line in lines if line.startswith("{")))
    assert record["method"] == "tip_adapter" and record["shots"] == 2
    assert f"test accuracy {record['accuracy']:.2f}%" in captured.out
    monkeypatch.undo()
    assert cli.main(evaluate_argv(feature_file, tmp_path / "again")) == 0
    again = json.loads((tmp_path / "again" / "result.json").read_text())
    assert again["accuracy"] == record["accuracy"]


def test_run_prints_unwritten_records_and_a_rerun_computes_only_those(
        feature_file, tmp_path, capsys, monkeypatch):
    reference = tmp_path / "reference"
    assert cli.main(run_argv(feature_file, reference)) == 0
    expected = read_records(str(reference))
    capsys.readouterr()

    out = tmp_path / "run"
    # the disk fills up after the first record of the 2-shot cells
    seen = []
    _failing_writes(monkeypatch, lambda path: "shots2_" in path and (seen.append(path) or
                                                                      len(seen) > 1))
    assert cli.main(run_argv(feature_file, out, "--plan", "per-shots")) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[-1].startswith("error: ") and "cannot write (No space left on device)" in err[-1]
    assert "1 record(s) not written are printed on stdout" in err[-1]
    shown = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [(r["shots"], r["seed"]) for r in shown] == [(2, 2)]
    cell = Cell("tip_adapter", "oxford_pets", 2, 2)
    assert shown[0]["accuracy"] == expected[cell]["accuracy"]
    assert len(read_records(str(out))) == 3

    monkeypatch.undo()
    assert cli.main(run_argv(feature_file, out, "--plan", "per-shots")) == 0
    assert "computed 1 cells" in capsys.readouterr().err
    again = read_records(str(out))
    assert {c: {k: r[k] for k in COMPARED} for c, r in again.items()} == \
        {c: {k: r[k] for k in COMPARED} for c, r in expected.items()}


# --- records validated on resume --------------------------------------------------------------


@pytest.mark.parametrize("damage, problem", [
    (lambda text: text[:len(text) // 2], "unreadable"),
    (lambda text: "", "unreadable"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "accuracy"}),
     "incomplete (no accuracy)"),
    (lambda text: json.dumps(dict(json.loads(text), accuracy="high")),
     "incomplete (accuracy 'high' is not a number)"),
    (lambda text: json.dumps(dict(json.loads(text), seed=7)), "not this cell's record (seed 7"),
    (lambda text: json.dumps(dict(json.loads(text), protocol="paper")),
     "not this cell's record (protocol 'paper'"),
    (lambda text: "[1, 2]", "incomplete (a JSON list"),
])
def test_a_damaged_record_is_reported_and_its_cell_recomputed(
        feature_file, tmp_path, capsys, damage, problem):
    out = tmp_path / "run"
    assert cli.main(run_argv(feature_file, out)) == 0
    expected = read_records(str(out))
    cell = Cell("tip_adapter", "oxford_pets", 2, 1)
    path = outdir.record_path(str(out), cell)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(damage(text))
    capsys.readouterr()
    assert cli.main(run_argv(feature_file, out)) == 0
    err = capsys.readouterr().err
    assert f"warning: record {path} is {problem}" in err and "recomputing its cell" in err
    assert "resuming: 3 of 4 cells already finished" in err and "computed 1 cells" in err
    assert read_records(str(out))[cell]["accuracy"] == expected[cell]["accuracy"]
    assert cli.main(["report", str(out)]) == 0  # and the report reads every record


def test_record_problem_accepts_a_complete_record(tmp_path):
    cell = Cell("tip_adapter", "dtd", 4, 3)
    path = tmp_path / "r.json"
    record = {"method": "tip_adapter", "dataset": "dtd", "shots": 4, "seed": 3, "protocol": "fair",
              "accuracy": 55.0, "hyperparameters": {}, "code_version": "0"}
    path.write_text(json.dumps(record))
    assert outdir.record_problem(str(path), cell) is None
    other = Cell("ape", "dtd", 4, 3)
    assert "(method 'tip_adapter', expected 'ape')" in outdir.record_problem(str(path), other)
    assert not outdir.is_finished(str(tmp_path), cell)  # (no record at the run layout's path)
