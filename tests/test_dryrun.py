"""``run --dry-run``: a priced plan, and nothing computed or written; sizes without the data."""

import json
import os

import pytest

from jaxclip_fs import cli
from jaxclip_fs.engine import feature_program, image_program
from jaxclip_fs.engine.hardware import ACCELERATORS


def _forbid(monkeypatch, *targets):
    def forbidden(*args, **kwargs):
        raise AssertionError("a dry run must not extract, load weights or run programs")
    for target in targets:
        monkeypatch.setattr(target, forbidden)


def test_dry_run_prices_every_program_and_computes_nothing(tmp_path, monkeypatch, capsys):
    _forbid(monkeypatch, "jaxclip_fs.features.extract.extract_features",
            "jaxclip_fs.convert.load_clip", "jaxclip_fs.features.text_classifier.text_classifier")
    monkeypatch.setattr(feature_program, "run_program", lambda *a, **k: pytest.fail("ran"))
    monkeypatch.setattr(image_program, "run_image_program", lambda *a, **k: pytest.fail("ran"))
    out = tmp_path / "run"
    argv = ["run", "--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random",
            "--method", "zero_shot,tip_adapter_f,ldc", "--shots", "1,2", "--seeds", "1",
            "--views", "2", "--out", str(out), "--dry-run", "--quiet",
            "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    report = capsys.readouterr().out
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing written
    for needle in ("3 method variant(s) x 1 dataset(s)", "nothing was extracted, trained or "
                   "written", "calibrated", "digits: 10 classes", "feature extraction",
                   "zero_shot/digits: plan", "tip_adapter_f/digits: plan", "ldc/digits: plan",
                   "supports [1, 1, 3, 10, 2, 64]", "training path '", "GFLOP", "peak/device",
                   "ESTIMATES", *[a.name for a in ACCELERATORS]):
        assert needle in report, needle
    assert report.count("GiB") > 6 and "total" in report


def test_reproduction_dry_run_needs_no_data_or_weights(tmp_path, monkeypatch, capsys):
    """The benchmark sets' sizes come from the table when there is no data root."""
    from benchmarks.reproduce.__main__ import main

    monkeypatch.delenv("JAXCLIP_FS_DATA", raising=False)
    _forbid(monkeypatch, "jaxclip_fs.features.extract.extract_features",
            "jaxclip_fs.convert.load_clip")
    config = {"name": "tiny_dtd", "description": "a dry-run test",
              "experiment": {"methods": ["zero_shot", "tip_adapter"],
                             "data": {"datasets": ["dtd", "eurosat"]},
                             "model": {"backbone": "tiny-vit"},
                             "grid": {"shots": [16], "seeds": [1, 2, 3]}},
              "compare_shots": [16], "bands": {}}
    path = tmp_path / "tiny_dtd.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main([str(path), "--dry-run", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert not out.exists()
    assert "dtd: 47 classes, train 2820 / val 1128 / test 1692 -- CoOp's split files" in report
    assert "eurosat: 10 classes" in report and "tip_adapter/eurosat: plan one" in report
    assert "test [1, 1692, 64]" in report  # shapes from the table: dtd's test split, D = 64
    # 16 shots x 3 seeds, 47 classes: at most 2256 support images, each in 11 views
    # (the plain one and 10 augmented)
    assert "2256 support images x 11 views + val 1128 + test 1692" in report


def test_dry_run_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JAXCLIP_FS_DATA", raising=False)
    argv = ["run", "--dataset", "no_such_set", "--backbone", "tiny-vit", "--weights", "random",
            "--method", "zero_shot", "--out", str(tmp_path / "x"), "--dry-run", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no_such_set" in err and "\n" not in err
    assert not os.path.exists(tmp_path / "x")


def test_a_program_that_cannot_fit_is_reported_and_the_dry_run_goes_on(tmp_path, monkeypatch,
                                                                       capsys):
    """A run would refuse it before any work; the dry run names it, prices its smallest part
    and still prices the programs that fit."""
    from jaxclip_fs.engine import hardware

    # more than zero_shot needs, less than tip_adapter_f
    monkeypatch.setenv(hardware.MEMORY_ENV, "4MiB")
    argv = ["run", "--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random",
            "--method", "zero_shot,tip_adapter_f", "--shots", "1,2", "--seeds", "1",
            "--views", "2", "--out", str(tmp_path / "run"), "--dry-run", "--quiet",
            "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    report = capsys.readouterr().out
    assert "zero_shot/digits: plan one" in report  # fits: priced as usual
    refused = [line for line in report.splitlines() if "REFUSED here" in line]
    assert len(refused) == 1 and refused[0].startswith("  tip_adapter_f/digits: REFUSED here")
    assert "per device" in refused[0] and "even in chunks" in refused[0]
    assert "a run here would stop before any work: 1 program(s)" in report
    assert "smallest part: tip_adapter_f/digits [cells 1-1 of 2]" in report
    assert not (tmp_path / "run").exists()
