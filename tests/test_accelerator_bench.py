"""``python -m benchmarks.accelerator --quick``: the report's structure, every figure finite.

No timing is asserted (the machine may be shared); the full version is for a GPU or TPU host.
"""

import json
import math

import oracles
from benchmarks import accelerator

#: Rows the quick version gives per benchmark (QUICK sizes: float32 training, both dtypes of
#: encoding, S = 1 and S vmapped of training and LDC).
ROWS = {"search": 2, "train": 2 * len(accelerator.QUICK.train_methods)
        * len(accelerator.QUICK.train_dtypes),
        "encode": 2 * len(accelerator.QUICK.encode_variants),
        "ldc": 2 * len(accelerator.QUICK.ldc_dtypes)}
WITHOUT_TORCH = oracles.skip_reason() is not None
if WITHOUT_TORCH:  # bench_search imports torch (its baseline): no search rows, said so
    del ROWS["search"]
NUMBERS = ("seconds", "flops", "flops_per_s", "peak_flops_per_s", "fraction_of_peak")


def test_quick_run_writes_the_table_and_a_json_of_finite_positive_figures(tmp_path, capsys):
    out = tmp_path / "accelerator.json"
    assert accelerator.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["device"]["platform"] == "cpu"
    assert report["errors"] == []
    found = {}
    for row in report["rows"]:
        found[row["benchmark"]] = found.get(row["benchmark"], 0) + 1
        for key in NUMBERS:
            assert math.isfinite(row[key]) and row[key] > 0, (row["case"], key, row[key])
        assert row["dtype"] in accelerator.DTYPES
        assert row["flops_per_s"] == row["flops"] / row["seconds"]
        assert row["fraction_of_peak"] == row["flops_per_s"] / row["peak_flops_per_s"]
        assert row["case"][:58] in printed  # one table line per row
    assert found == ROWS
    assert {r["dtype"] for r in report["rows"] if r["benchmark"] == "encode"} == \
        set(accelerator.DTYPES)
    vmapped = [r for r in report["rows"] if "vmapped" in r["case"]]
    assert vmapped and all(r["notes"]["speedup_over_sequential"] > 0 for r in vmapped)
    skipped = {s["benchmark"]: s for s in report["skipped"]}
    if WITHOUT_TORCH:
        assert "benchmarks.bench_search cannot be imported" in skipped.pop("search")["reason"]
    (skipped,) = skipped.values()  # the tower-training extension point, named, no number
    assert skipped["benchmark"] == "tower" and "tower_training_rows" in skipped["reason"]
    assert "tower     not run: no method trains through CLIP's towers yet" in printed
    for dtype, peak in report["peaks"].items():
        assert peak["flops_per_s"] > 0 and peak["source"].startswith("measured: "), dtype
    assert "of peak" in printed.splitlines()[1]


def test_published_peaks_are_found_by_device_kind():
    from jaxclip_fs.engine import hardware

    for kind, name in (("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
                       ("NVIDIA H200", "NVIDIA H200 SXM"), ("NVIDIA A100-SXM4-80GB",
                                                            "NVIDIA A100 SXM 80GB"),
                       ("TPU v4", "Google TPU v4"), ("TPU v5 lite", "Google TPU v5e")):
        assert hardware.published(kind).name == name, kind
    for kind in ("cpu", "NVIDIA H100 PCIe", "NVIDIA L4", "TPU v6 lite"):
        assert hardware.published(kind) is None, kind
    h100 = hardware.published("NVIDIA H100 80GB HBM3")
    assert (h100.flops("float32"), h100.flops("bfloat16")) == (67e12, 989e12)


def test_a_failing_benchmark_is_reported_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    def broken(sizes):
        raise RuntimeError("no such device")

    monkeypatch.setitem(accelerator.BENCHMARKS, "search", broken)
    out = tmp_path / "a.json"
    assert accelerator.main(["--quick", "--only", "search,tower", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert [e["benchmark"] for e in report["errors"]] == ["search"]
    assert "RuntimeError: no such device" in report["errors"][0]["error"]
    assert [s["benchmark"] for s in report["skipped"]] == ["tower"]
    assert "search    FAILED: RuntimeError: no such device" in capsys.readouterr().out


def test_past_the_time_budget_no_further_row_is_started(tmp_path):
    report = accelerator.run(["encode", "tower"], quick=True, budget=0.0, log=lambda line: None)
    assert report["rows"] == [] and report["errors"] == []
    assert [(s["benchmark"], "time budget" in s["reason"]) for s in report["skipped"]] == [
        ("encode", True), ("tower", True)]
