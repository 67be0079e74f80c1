"""Confusion analysis of zero-shot ``s`` vs de-confused ``ada``: counts, pairs, files, no jax."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxclip_fs.report import confusion


def _onehot_logits(predicted, num_classes):
    return np.eye(num_classes)[np.asarray(predicted)] * 5.0


def test_pairs_rates_and_reductions_by_hand():
    names = ["cat", "dog", "fox"]
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    s_pred = np.array([1, 1, 0, 2, 0, 1, 0, 0, 2, 1])
    ada_pred = np.array([1, 0, 0, 0, 1, 1, 0, 2, 2, 2])
    out = confusion.confusion_analysis(_onehot_logits(s_pred, 3), _onehot_logits(ada_pred, 3),
                                       labels, names, top=4)
    assert out["confusion_before"] == [[1, 2, 1], [1, 1, 0], [2, 1, 1]]
    assert out["confusion_after"] == [[3, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert out["accuracy_before"] == 30.0 and out["accuracy_after"] == 80.0
    assert (out["off_diagonal_before"], out["off_diagonal_after"]) == (7, 2)
    # rates under s: cat->dog 2/4, cat->fox 1/4, dog->cat 1/2, fox->cat 2/4, fox->dog 1/4
    pairs = [(p["true_name"], p["predicted_name"], p["rate_before"], p["rate_after"])
             for p in out["pairs"]]
    assert pairs == [("cat", "dog", 0.5, 0.25), ("dog", "cat", 0.5, 0.0), ("fox", "cat", 0.5, 0.25),
                     ("cat", "fox", 0.25, 0.0)]
    assert [p["reduction"] for p in out["pairs"]] == [0.25, 0.5, 0.25, 0.25]
    assert out["pairs"][0]["count_before"] == 2 and out["pairs"][0]["count_after"] == 1


def test_ties_go_to_the_lower_class_like_argmax():
    logits = np.zeros((2, 3))
    assert confusion.confusion_matrix(logits, np.array([2, 1]), 3).tolist() == [
        [0, 0, 0], [1, 0, 0], [1, 0, 0]]


def test_write_confusion_json_and_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4)
    s = rng.standard_normal((24, 6))
    ada = s + 3 * np.eye(6)[labels]
    names = [f"class {i}" for i in range(6)]
    analysis = confusion.confusion_analysis(s, ada, labels, names)
    json_path, png_path = confusion.write_confusion(tmp_path / "confusion", analysis, title="t")
    assert json.loads(open(json_path).read()) == json.loads(json.dumps(analysis))
    assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the accuracies are those of each head's own predictions (not just ordered as built)
    assert analysis["accuracy_before"] == pytest.approx(100 * np.mean(s.argmax(1) == labels))
    assert analysis["accuracy_after"] == pytest.approx(100 * np.mean(ada.argmax(1) == labels))
    assert analysis["accuracy_before"] < 100 and analysis["num_images"] == 24
    before = np.zeros((6, 6), int)
    np.add.at(before, (labels, s.argmax(1)), 1)
    assert analysis["confusion_before"] == before.tolist()
    lines = confusion.summary_lines(analysis, limit=2)
    assert len(lines) == 3 and f"s {analysis['accuracy_before']:.1f}%" in lines[0]


def test_report_confusion_does_not_import_jax():
    code = "import sys, jaxclip_fs.report.confusion; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
