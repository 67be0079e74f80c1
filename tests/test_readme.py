"""The README's "Adding a method" example runs as written and its method lands in the records."""

import json
import os
import re

import numpy as np

from jaxclip_fs import methods
from jaxclip_fs.methods import _FACTORIES

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _python_block(section: str) -> str:
    text = open(README, encoding="utf-8").read()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return block


def test_adding_a_method_example_runs_and_writes_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(_python_block("Adding a method"), "README.md", "exec"), {})
        assert "prototype" in methods.names()
    finally:
        _FACTORIES.pop("prototype", None)
    records = {}
    for root, _, files in os.walk(tmp_path / "runs" / "prototype" / "records"):
        for name in files:
            record = json.loads(open(os.path.join(root, name)).read())
            records[(record["method"], record["shots"], record["seed"])] = record
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
