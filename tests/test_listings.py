"""Every registered method reaches the listings and the report through its card alone:
``jaxclip-fs methods`` lists it, ``jaxclip-fs report`` shows it under its display name with its
published figure where one matches."""

import json

import numpy as np

from jaxclip_fs import catalogue, cli, methods
from jaxclip_fs.report import write_report

from test_report import _md_row


def test_methods_command_lists_every_registered_method(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in methods.names():
        method = methods.get(name)
        line = next(line for line in out.splitlines() if line.startswith(f"{name} ("))
        assert method.card.shown in line and method.card.summary in line
        for option in method.options:
            assert f"  option {option.name}: {' | '.join(option.choices)}" in out
        searched = method.names("search")
        if searched:
            assert f"  search hyperparameters: {', '.join(searched)}" in out


def test_report_shows_every_registered_method_with_its_published_figure(tmp_path):
    rng = np.random.default_rng(0)
    for name in methods.names():
        for seed in (1, 2):
            record = {"method": name, "backbone": "RN50", "weights": "sha256:abc",
                      "dataset": "dtd", "split_policy": "x", "shots": 16, "seed": seed,
                      "hyperparameters": {}, "accuracy": float(np.round(rng.uniform(20, 90), 2))}
            path = tmp_path / "records" / name / f"{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
    markdown = open(write_report(tmp_path, plots=False).markdown).read()
    for name in methods.names():
        card = catalogue.card(name)
        cell = _md_row(markdown, "16-shot", card.shown)["dtd"]
        figure = catalogue.published("RN50", "sha256:abc", 16, name, "dtd")
        assert cell.endswith(f"[{figure:.2f}]") if figure is not None else "[" not in cell, (
            name, cell)
    assert {"ProKeR", "Ridge (LSR)"} <= {catalogue.card(n).shown for n in methods.names()}
