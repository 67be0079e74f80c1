"""``jaxclip-fs report``: tables and plots match the records; published numbers; random labels."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxclip_fs import cli
from jaxclip_fs.errors import ConfigError
from jaxclip_fs import catalogue as published
from jaxclip_fs.report import write_report
from jaxclip_fs.report.collect import load_records, summarize

from helpers import DiskUsage, run_unprivileged

METHODS = ("zero_shot", "tip_adapter", "ape")
DATASETS = ("imagenet", "dtd", "eurosat")
SHOTS = (1, 4, 16)
SEEDS = (1, 2, 3)


def _write(directory, records):
    for i, record in enumerate(records):
        path = directory / record["method"] / record["dataset"] / f"r{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


def _records(weights="sha256:abc", backbone="RN50", seed=0, skip=()):
    rng = np.random.default_rng(seed)
    out = []
    for method in METHODS:
        for dataset in DATASETS:
            for shots in SHOTS:
                for s in SEEDS:
                    if (method, dataset, shots, s) in skip:
                        continue
                    out.append({"method": method, "backbone": backbone, "weights": weights,
                                "dataset": dataset, "split_policy": "x", "shots": shots, "seed": s,
                                "hyperparameters": {}, "val_policy": "coop",
                                "selection": "validation",
                                "accuracy": float(np.round(rng.uniform(20, 90), 4))})
    return out


def _accs(records, method, dataset, shots):
    return np.array([r["accuracy"] for r in sorted(records, key=lambda r: r["seed"])
                     if (r["method"], r["dataset"], r["shots"]) == (method, dataset, shots)])


def _md_row(markdown, title_start, method_label):
    """``method_label``'s row of the first table whose title starts with ``title_start``."""
    block = markdown.split(f"### {title_start}", 1)[1].split("###", 1)[0]
    header = next(line for line in block.splitlines() if line.startswith("| method"))
    row = next(line for line in block.splitlines() if line.startswith(f"| {method_label} |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    return dict(zip(names, [c.strip() for c in row.strip("|").split("|")]))


def test_report_does_not_import_jax():
    code = "import sys, jaxclip_fs.report, jaxclip_fs.report.write; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tables_match_records_and_published_numbers(tmp_path):
    records = _records()
    _write(tmp_path / "records", records)
    files = write_report(tmp_path, plots=False)
    with open(files.results_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(METHODS) * len(DATASETS) * len(SHOTS) + len(METHODS) * len(SHOTS)
    for row in rows:
        method, dataset, shots = row["method"], row["dataset"], int(row["shots"])
        if dataset == "average":  # mean ± std over seeds of the per-seed dataset averages
            per_seed = np.mean([_accs(records, method, d, shots) for d in DATASETS], axis=0)
        else:
            per_seed = _accs(records, method, dataset, shots)
        assert float(row["mean"]) == pytest.approx(per_seed.mean(), abs=1e-4)
        assert float(row["std"]) == pytest.approx(per_seed.std(), abs=1e-4)
        assert row["seeds"] == "1 2 3" and row["random_weights"] == "False"
        pub = published.PUBLISHED.get(("RN50", shots, method, dataset))
        if pub is None:
            assert row["published"] == "" and row["ours_minus_published"] == ""
        else:
            assert float(row["published"]) == pub
            difference = per_seed.mean() - pub
            assert float(row["ours_minus_published"]) == pytest.approx(difference, abs=1e-4)

    markdown = open(files.markdown).read()
    row = _md_row(markdown, "16-shot", "Tip-Adapter")
    acc = _accs(records, "tip_adapter", "dtd", 16)
    assert row["dtd"] == f"{acc.mean():.2f} ± {acc.std():.2f} [60.93]"  # Tip-Adapter, DTD
    assert row["average"].endswith("[70.32]")
    row = _md_row(markdown, "4-shot", "APE")  # no published 4-shot numbers
    acc = _accs(records, "ape", "eurosat", 4)
    assert row["eurosat"] == f"{acc.mean():.2f} ± {acc.std():.2f}"
    curve = _md_row(markdown, "accuracy vs shots, imagenet", "ZS-CLIP")
    for k in SHOTS:
        acc = _accs(records, "zero_shot", "imagenet", k)
        assert curve[str(k)].startswith(f"{acc.mean():.2f} ± {acc.std():.2f}")
    with open(files.shot_csvs[16]) as f:
        wide = {r["method"]: r for r in csv.DictReader(f)}
    acc = _accs(records, "ape", "imagenet", 16)
    assert float(wide["ape"]["imagenet mean"]) == pytest.approx(acc.mean(), abs=1e-4)
    assert "RANDOM" not in markdown


def test_random_weights_are_labelled_everywhere_and_never_compared(tmp_path):
    records = _records(weights="random")
    _write(tmp_path, records)
    files = write_report(tmp_path, tmp_path / "out")
    markdown = open(files.markdown).read()
    assert markdown.count("RANDOM WEIGHTS") >= 1 + 3 + len(DATASETS) + 1  # banner + titles
    assert "[" not in markdown.split("Entries:")[1].split("\n", 1)[1]  # no published numbers
    assert "RANDOM WEIGHTS" in files.summary
    with open(files.results_csv) as f:
        rows = list(csv.DictReader(f))
    assert all(r["random_weights"] == "True" and r["published"] == "" for r in rows)
    assert sorted(os.path.basename(p) for p in files.plots) == sorted(
        f"accuracy_vs_shots_{d}.png" for d in DATASETS + ("average",))
    from matplotlib.image import imread

    image = imread(files.plots[0])
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500


def test_missing_seeds_and_datasets_in_the_average(tmp_path):
    skip = {("ape", "dtd", 16, 3)} | {("tip_adapter", "eurosat", 16, s) for s in SEEDS}
    records = _records(skip=skip)
    _write(tmp_path, records)
    files = write_report(tmp_path, plots=False)
    markdown = open(files.markdown).read()
    row = _md_row(markdown, "16-shot", "APE")
    means = [_accs(records, "ape", d, 16).mean() for d in DATASETS]
    assert row["average"] == f"{np.mean(means):.2f} [73.36]"  # seeds incomplete: no std
    acc = _accs(records, "ape", "dtd", 16)
    assert len(acc) == 2 and row["dtd"].startswith(f"{acc.mean():.2f} ± {acc.std():.2f}")
    row = _md_row(markdown, "16-shot", "Tip-Adapter")
    assert row["eurosat"] == "–" and row["average"] == "–"


def test_settings_are_kept_apart(tmp_path):
    a, b = _records(backbone="RN50"), _records(backbone="ViT-B/16", seed=1)
    _write(tmp_path / "a", a)
    _write(tmp_path / "b", b)
    files = write_report(tmp_path, plots=True)
    assert {c.setting.backbone for c in files.cells} == {"RN50", "ViT-B/16"}
    assert len(files.plots) == 2 * (len(DATASETS) + 1)
    assert len({os.path.basename(p) for p in files.plots}) == len(files.plots)
    vit = [c for c in files.cells if c.setting.backbone == "ViT-B/16" and c.method == "ape"
           and c.dataset == "dtd" and c.shots == 16][0]
    assert vit.accuracies == tuple(_accs(b, "ape", "dtd", 16))


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no result records"):
        write_report(tmp_path)
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "no such records directory" in capsys.readouterr().err
    records = _records()[:2]
    clash = dict(records[0], accuracy=records[0]["accuracy"] + 1)
    _write(tmp_path, records + [clash])
    with pytest.raises(ConfigError, match="disagree"):
        summarize(load_records(tmp_path))
    (tmp_path / "broken.json").write_text("{not json")
    warnings = []
    assert len(load_records(tmp_path, warn=warnings.append)) == 3  # named, left out
    assert len(warnings) == 1 and "broken.json" in warnings[0] and "\n" not in warnings[0]


def test_cli_prints_tables(tmp_path, capsys):
    _write(tmp_path, _records())
    assert cli.main(["report", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"### 16-shot -- RN50", out) and "report.md" in out


def test_published_table_is_consistent():
    """Each encoded row's average column equals the mean of its 11 datasets (catches typos)."""
    rows = {m for (b, k, m, d) in published.PUBLISHED if (b, k, d) == ("RN50", 16, "average")}
    assert {"zero_shot", "ldc"} <= rows  # (the LDC paper's table: LDC and its baselines)
    for method in rows:
        row = [published.PUBLISHED[("RN50", 16, method, d)] for d in published.PUBLISHED_DATASETS]
        assert np.mean(row) == pytest.approx(published.PUBLISHED[("RN50", 16, method, "average")],
                                             abs=0.01)
    assert published.published("RN50", "random", 16, "ldc", "dtd") is None
    assert published.published("RN50", "hf:x", 16, "ldc", "dtd") == 71.39


def test_paper_minus_fair_table(tmp_path):
    """Both protocols in one directory: their gap per method and dataset, paper entries starred."""
    fair = [dict(r, protocol="fair", selection={"optimistic": False}) for r in _records()]
    rng = np.random.default_rng(5)
    paper = [dict(r, protocol="paper", selection={"optimistic": r["method"] != "zero_shot"},
                  accuracy=r["accuracy"] + float(np.round(rng.uniform(0, 3), 4)))
             for r in fair]
    _write(tmp_path / "records", fair + paper)
    files = write_report(tmp_path, plots=False)
    markdown = open(files.markdown).read()
    gap = _md_row(markdown, "16-shot, paper - fair", "Tip-Adapter")
    difference = (_accs(paper, "tip_adapter", "dtd", 16).mean()
                  - _accs(fair, "tip_adapter", "dtd", 16).mean())
    assert gap["dtd"] == f"{difference:+.2f}*"
    zero_shot = _md_row(markdown, "16-shot, paper - fair", "ZS-CLIP")
    assert not zero_shot["imagenet"].endswith("*")
    paper_row = _md_row(markdown, "16-shot -- RN50, weights sha256:abc, protocol paper",
                        "Tip-Adapter")
    acc = _accs(paper, "tip_adapter", "dtd", 16)
    assert paper_row["dtd"] == f"{acc.mean():.2f} ± {acc.std():.2f}* [60.93]"
    assert "## Protocol gap: paper - fair" in markdown
    with open(files.results_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "ape" and r["dataset"] == "dtd"]
    assert {(r["protocol"], r["optimistic"]) for r in rows} == {("fair", "False"),
                                                               ("paper", "True")}


def test_fair_minus_validation_free_table(tmp_path):
    """With validation-free records beside fair ones: how much each method loses without
    validation, per method, dataset and shot count (average column included), printed too."""
    fair = [dict(r, protocol="fair", selection={"optimistic": False}) for r in _records()]
    rng = np.random.default_rng(6)
    free = [dict(r, protocol="validation_free", selection={"optimistic": False},
                 accuracy=r["accuracy"] - float(np.round(rng.uniform(0, 5), 4)))
            for r in fair if r["shots"] != 1]  # (1-shot: fair only -- no gap table)
    _write(tmp_path / "records", fair + free)
    files = write_report(tmp_path, plots=False)
    markdown = open(files.markdown).read()
    assert "## Protocol gap: fair - validation_free" in markdown
    assert "## Protocol gap: paper - fair" not in markdown
    title = "4-shot, fair - validation_free -- RN50, weights sha256:abc"
    for method, label in (("tip_adapter", "Tip-Adapter"), ("ape", "APE")):
        row = _md_row(markdown, title, label)
        for dataset in DATASETS:
            gap = (_accs(fair, method, dataset, 4).mean()
                   - _accs(free, method, dataset, 4).mean())
            assert row[dataset] == f"{gap:+.2f}" and gap > 0
        average = np.mean([_accs(fair, method, d, 4).mean() - _accs(free, method, d, 4).mean()
                           for d in DATASETS])
        assert row["average"] == f"{average:+.2f}"
    assert "1-shot, fair - validation_free" not in markdown
    assert "how much each method loses without validation" in files.summary
    free_row = _md_row(markdown, "16-shot -- RN50, weights sha256:abc, protocol validation_free",
                       "Tip-Adapter")
    acc = _accs(free, "tip_adapter", "dtd", 16)
    assert free_row["dtd"] == f"{acc.mean():.2f} ± {acc.std():.2f} [60.93]"  # not starred


def test_one_seed_has_no_spread(tmp_path):
    """n = 1: an entry is the bare accuracy (no ``± 0.00``, which would claim a measured zero
    spread), the CSV std fields are empty; averages over datasets likewise."""
    records = [r for r in _records(backbone="tiny-vit") if r["seed"] == 2]  # (nothing published)
    _write(tmp_path, records)
    files = write_report(tmp_path, plots=False)
    markdown = open(files.markdown).read()
    tables = markdown.split("Entries:", 1)[1].split("\n", 1)[1]
    assert "±" not in tables and "±" not in files.summary
    row = _md_row(markdown, "16-shot", "APE")
    acc = _accs(records, "ape", "dtd", 16)
    assert row["dtd"] == f"{acc[0]:.2f}"
    average = np.mean([_accs(records, "ape", d, 16)[0] for d in DATASETS])
    assert row["average"] == f"{average:.2f}"
    with open(files.results_csv) as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["std"] == "" and r["num_seeds"] == "1" for r in rows)
    with open(files.shot_csvs[16]) as f:
        wide = list(csv.DictReader(f))
    assert all(r["dtd std"] == "" and r["dtd mean"] for r in wide)
    # two seeds: the spread is back, and a real zero spread reads ± 0.00
    twin = [dict(r, seed=3) for r in records]
    _write(tmp_path / "two", records + twin)
    two = open(write_report(tmp_path / "two", plots=False).markdown).read()
    assert _md_row(two, "16-shot", "APE")["dtd"] == f"{acc[0]:.2f} ± 0.00"


@pytest.fixture
def saved_figures(monkeypatch):
    """The texts (figure texts, titles, suptitle) of every figure saved, by file name."""
    from matplotlib.figure import Figure

    seen = {}
    real_savefig = Figure.savefig

    def savefig(figure, path, *args, **kwargs):
        texts = [t.get_text() for t in figure.texts]
        texts += [ax.get_title() for ax in figure.axes]
        if figure._suptitle is not None:
            texts.append(figure._suptitle.get_text())
        seen[os.path.basename(str(path))] = " ".join(texts)
        return real_savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


@pytest.mark.parametrize("weights", ["random(seed=0)", "sha256:abc"])
def test_every_figure_of_random_weights_is_labelled(tmp_path, saved_figures, weights):
    _write(tmp_path, _records(weights=weights))
    files = write_report(tmp_path, tmp_path / "out")
    assert len(saved_figures) == len(files.plots) == len(DATASETS) + 1
    for name, text in saved_figures.items():
        assert ("RANDOM WEIGHTS" in text) == weights.startswith("random"), (name, text)


def test_report_out_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    from jaxclip_fs.report import write as write_lib

    _write(tmp_path / "records", _records()[:6])
    calls = []
    monkeypatch.setattr(write_lib, "summarize", lambda *a: calls.append(a))
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for out, needle in ((taken, "exists and is not a directory"),
                        (taken / "report", "is a file, not a directory")):
        assert cli.main(["report", str(tmp_path / "records"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out}" in err and needle in err, err
    monkeypatch.setattr(shutil, "disk_usage", lambda p: DiskUsage(10, 10, 5 << 20))
    assert cli.main(["report", str(tmp_path / "records"), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "no space left (5.0 MiB free" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()  # the check left nothing behind
    assert calls == []  # nothing was read or computed


def test_report_out_not_writable_for_a_normal_user(tmp_path):
    """A read-only report directory: a one-line error naming it, exit 2. (Root writes anywhere,
    so under root the command runs as 'nobody', which cannot write a 0o555 directory.)"""
    records, out = tmp_path / "records", tmp_path / "readonly"
    _write(records, _records()[:6])
    out.mkdir()
    os.chmod(out, 0o555)
    for path in (tmp_path, records, *records.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    proc = run_unprivileged([sys.executable, "-m", "jaxclip_fs.cli", "report", str(records),
                             "--out", str(out)])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"--out {out}: not writable (Permission denied)" \
        in proc.stderr, proc.stderr
    assert os.listdir(out) == []


def test_report_write_failure_prints_the_tables_first(tmp_path, capsys, monkeypatch):
    """A disk that fills up after the check: the tables reach stdout, then a one-line error."""
    import errno

    from jaxclip_fs.io import atomic

    _write(tmp_path / "records", _records())
    real = atomic.write_bytes

    def full(path, data):
        if str(path).endswith("results.csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", full)
    assert cli.main(["report", str(tmp_path / "records"), "--no-plots"]) == 2
    captured = capsys.readouterr()
    assert "### 16-shot -- RN50" in captured.out and "| APE |" in captured.out
    assert captured.err.count("\n") == 1
    assert "results.csv: cannot write (No space left on device)" in captured.err
    assert "printed on stdout" in captured.err
