"""The "Adding a method" examples (docs/extending.md) run as written and their methods land in
the records."""

import json
import os
import re

import numpy as np

from jaxclip_fs import methods

EXTENDING = os.path.join(os.path.dirname(__file__), "..", "docs", "extending.md")


def _python_blocks() -> list[str]:
    text = open(EXTENDING, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _records(root):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            record = json.loads(open(os.path.join(folder, name)).read())
            found[(record["method"], record["shots"], record["seed"])] = record
    return found


def test_adding_a_feature_method_example_runs_and_writes_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(_python_blocks()[0], "docs/extending.md", "exec"), {})
        assert "prototype" in methods.names()
    finally:
        methods.unregister("prototype")
    records = _records(tmp_path / "runs" / "prototype" / "records")
    # 2 methods x 3 shots x 3 seeds, each a real accuracy on the synthetic task's test set
    assert set(records) == {(m, k, s) for m in ("prototype", "tip_adapter")
                            for k in (1, 4, 16) for s in (1, 2, 3)}
    accuracies = np.array([r["accuracy"] for r in records.values()])
    assert np.all((accuracies >= 0) & (accuracies <= 100)) and accuracies.std() > 0
    # the new method's only hyperparameter was searched on its grid
    grid = np.linspace(0.0, 2.0, 21)
    for (method, _, _), record in records.items():
        if method == "prototype":
            assert np.min(np.abs(grid - record["hyperparameters"]["alpha"])) < 1e-6
    assert all(r["searched"] == ["alpha"] for (m, _, _), r in records.items() if m == "prototype")


def test_adding_a_trained_method_example_trains_with_its_own_optimizer(capsys):
    namespace = {}
    try:
        exec(compile(_python_blocks()[1], "docs/extending.md", "exec"), namespace)
        method = methods.get("probe")
    finally:
        methods.unregister("probe")
    # SGD's own hyperparameters, none of AdamW's
    assert method.names("train") == ("epochs", "batch_size", "lr", "momentum")
    record = namespace["record"]
    assert record["method"] == "probe" and record["epoch_selection"] == "validation"
    assert record["hyperparameters"] == {"epochs": 20, "batch_size": 32, "lr": 0.01,
                                         "momentum": 0.9}
    assert 0 <= record["best_epoch"] < 20 and len(record["epoch_losses"]) == 20
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]  # SGD lowered the loss
    assert capsys.readouterr().out.split() == [str(record["accuracy"]),
                                               str(record["best_epoch"])]


def test_adding_an_image_method_example_trains_on_clip_taps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAXCLIP_FS_CACHE", str(tmp_path / "cache"))
    try:
        exec(compile(_python_blocks()[2], "docs/extending.md", "exec"), {})
    finally:
        methods.unregister("tap_head")
    records = _records(tmp_path / "runs" / "tap_head" / "records")
    assert set(records) == {("tap_head", k, 1) for k in (1, 4)}
    for record in records.values():
        assert record["inputs"] == "images" and record["input_details"]["taps"] == ["layer4"]
        assert record["searched"] == ["alpha"] and record["epoch_selection"] == "final"
        losses = record["epoch_losses"]
        assert len(losses) == 10 and losses[-1] < losses[0]  # the head trained on the support
