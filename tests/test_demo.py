"""``jaxclip-fs demo``: a reduced demo end to end (real extraction on digits), weight discovery."""

import json
import os

import pytest

from jaxclip_fs import cli
from jaxclip_fs.commands import demo


def test_reduced_demo_end_to_end_then_resumes_without_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setattr(demo, "find_pretrained", lambda: None)  # as on a machine without weights
    argv = ["demo", "--out", str(out), "--shots", "1,2", "--seeds", "1", "--views", "2",
            "--method", "zero_shot,tip_adapter", "--cache-dir", str(tmp_path / "cache"), "--quiet",
            "--protocol", "fair,paper"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err and "RANDOM WEIGHTS" in captured.out
    assert "| Tip-Adapter |" in captured.out and "| method \\ shots | 1 | 2 |" in captured.out
    for protocol in ("fair", "paper"):  # one plot per protocol
        plot = out / "report" / f"tiny-vit-random-{protocol}_accuracy_vs_shots_digits.png"
        assert f"plot: {plot}" in captured.out and plot.stat().st_size > 10_000
    assert "paper - fair" in captured.out  # both protocols: the gap table
    records = sorted((out / "records").rglob("*.json"))
    assert len(records) == 8
    assert {r.relative_to(out / "records").parts[0] for r in records} == {"fair", "paper"}
    record = json.loads(records[0].read_text())
    assert record["dataset"] == "digits" and record["backbone"] == "tiny-vit"
    assert record["weights"] == "random" and record["num_classes"] == 10
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["model"]["weights"] == "random"
    assert manifest["settings"]["extraction"]["views"] == 2

    def no_extraction(*args, **kwargs):
        raise AssertionError("the second demo must reuse everything")

    monkeypatch.setattr("jaxclip_fs.features.extract.extract_features", no_extraction)
    assert cli.main(argv) == 0
    assert "nothing to compute" in capsys.readouterr().err


def test_weights_choice(tmp_path, monkeypatch):
    assert demo.choose_model(None, "random") == demo.DemoModel("tiny-vit", "random", True)
    assert demo.choose_model("RN50", "/w/rn50.pt") == demo.DemoModel("RN50", "/w/rn50.pt", False)
    monkeypatch.setattr(demo, "find_pretrained", lambda: "/cache/vitb32")
    assert demo.choose_model(None, None) == demo.DemoModel("ViT-B/32", "/cache/vitb32", False)
    monkeypatch.setattr(demo, "find_pretrained", lambda: None)
    assert demo.choose_model(None, None) == demo.DemoModel("tiny-vit", "random", True)


def test_find_pretrained_looks_in_the_local_caches_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    hub = str(tmp_path / "hub")
    assert demo.find_pretrained(hub) is None
    # a Hugging Face cache snapshot of openai/clip-vit-base-patch32
    repo = tmp_path / "hub" / "models--openai--clip-vit-base-patch32"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert os.path.realpath(demo.find_pretrained(hub)) == os.path.realpath(snapshot)
    # OpenAI's clip.load cache wins
    openai = tmp_path / ".cache" / "clip"
    openai.mkdir(parents=True)
    (openai / "ViT-B-32.pt").write_bytes(b"x")
    assert demo.find_pretrained(hub) == str(openai / "ViT-B-32.pt")


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--shots", "a"], "--shots must be a comma list"),
    (["demo", "--method", "nope"], "unknown method 'nope'"),
])
def test_demo_errors_are_one_line(tmp_path, capsys, argv, needle):
    assert cli.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err


def test_the_demos_default_leaves_out_the_tower_methods_unless_named(tmp_path):
    from jaxclip_fs import methods

    model = demo.DemoModel("tiny-vit", "random", True)
    towers = {n for n in methods.names() if methods.get(n).towers is not None}
    assert {"coop", "clip_lora"} <= towers

    def names(method):
        args = cli.build_parser().parse_args(["demo", "--out", str(tmp_path), "--method", method])
        return {m.name for m in demo.demo_config(args, model, str(tmp_path / "imo")).methods}

    default = names("all")
    assert not default & towers and {"zero_shot", "ldc", "ta_pp", "proker"} <= default
    assert names("coop,clip_lora") == {"coop", "clip_lora"}
