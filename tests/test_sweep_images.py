"""Image methods in the sweep: LDC's image programs and TA++/TX++ on paired features.

(The image pipeline itself -- LDC training, IMO adapters, paired extraction -- is tested by
its own tests; here the engine's side: routing, checkpoints, records, resume.)
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.io.checkpoints import restore_tree
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.search import accuracy
from jaxclip_fs.sweep import outdir
from jaxclip_fs.sweep.cells import Cell
from jaxclip_fs.sweep.command import ExtractedFeatures
from jaxclip_fs.sweep.engine import SweepConfig, run_sweep
from jaxclip_fs.sweep.evaluate import build_evalset, build_task
from jaxclip_fs.sweep.image_methods import ImageCell

from test_sweep import read_records

FEATURES = make_task(4, num_classes=3, dim=8, shots=2, views=2, val_per_class=4, test_per_class=4,
                     dataset="dtd")


class FakeImagePipeline:
    """Stands in for ``image_methods.run_image_method``: numbers that encode (shots, seed)."""

    def __init__(self):
        self.calls = []

    def __call__(self, method, dataset, shots, seeds, hp, config):
        self.calls.append((method, dataset, tuple(shots), tuple(seeds)))
        cells = []
        for seed in seeds:
            for k in shots:
                record = {"method": method, "backbone": "fake", "weights": "fake",
                          "dataset": dataset, "split_policy": "fake", "shots": k, "seed": seed,
                          "accuracy": 10.0 * k + seed, "val_policy": config.val_policy,
                          "selection": "validation", "hyperparameters": {"beta": 0.5}}
                params = {"params": {"w": np.full((2, 3), k + seed / 10, np.float32)},
                          "batch_stats": {"mean": np.zeros(3, np.float32)}}
                confusion = {"num_images": 4, "accuracy_s": 50.0, "accuracy_ada": 75.0,
                             "confusion_s": [[1, 1], [1, 1]], "confusion_ada": [[2, 0], [1, 1]],
                             "off_diagonal_s": 2, "off_diagonal_ada": 1, "classnames": ["a", "b"],
                             "pairs": []}
                cells.append(ImageCell(method, k, seed, record, np.zeros((4, 3), np.float32),
                                       params, confusion))
        return cells


def test_image_programs_are_checkpointed_recorded_and_resumed(tmp_path):
    runner = FakeImagePipeline()
    out = str(tmp_path)
    config = SweepConfig(methods=("zero_shot", "ldc"), datasets=("dtd",), shots=(1, 2),
                         seeds=(1, 2), devices=1)
    result = run_sweep(out, config, lambda d, k, s: FEATURES, image_runner=runner, progress=False,
                       log=None)
    assert [p.name for p in result.programs] == ["zero_shot/dtd", "ldc/dtd"]
    assert runner.calls == [("ldc", "dtd", (1, 2), (1, 2))]
    found = read_records(out)
    record = found[Cell("ldc", "dtd", 2, 1)]
    assert record["accuracy"] == 21.0 and record["program"] == "ldc/dtd"
    tree, meta = restore_tree(os.path.join(out, record["params_checkpoint"]))
    g, t = record["params_row"]
    np.testing.assert_allclose(tree["params"]["w"][g, t], np.full((2, 3), 2.1))
    assert meta["slots"][g][t] == {"method": "ldc", "dataset": "dtd", "shots": 2, "seed": 1}
    prefix = outdir.confusion_prefix(out, Cell("ldc", "dtd", 2, 1))
    assert json.load(open(prefix + ".json"))["accuracy_ada"] == 75.0
    assert os.path.isfile(prefix + ".png")

    os.remove(outdir.record_path(out, Cell("ldc", "dtd", 1, 2)))
    run_sweep(out, config, lambda d, k, s: FEATURES, image_runner=runner, progress=False, log=None)
    assert runner.calls[-1] == ("ldc", "dtd", (1,), (2,))  # only the missing cell's program
    assert read_records(out)[Cell("ldc", "dtd", 1, 2)]["accuracy"] == 12.0


def test_image_methods_need_their_inputs(tmp_path):
    source = lambda d, k, s: FEATURES  # noqa: E731
    for method, needle in (("ldc", "trains on images"), ("ta_pp", "IMO adapters")):
        with pytest.raises(ConfigError, match=needle):
            run_sweep(str(tmp_path), SweepConfig(methods=(method,), datasets=("dtd",), shots=(1,),
                                                 seeds=(1,)), source, progress=False, log=None)


def test_image_options_follow_the_sweep(tmp_path):
    """The options handed to the image pipeline carry the sweep's views, caches and protocol."""
    source = ExtractedFeatures(str(tmp_path), "tiny-vit", "random", views=3, aug_seed=2,
                               cache_dir="/c", imo_adapters="/imo", progress=False)
    config = SweepConfig(methods=("ldc",), datasets=("digits",), shots=(1,), seeds=(1,),
                         val_policy="full", select_on_test=True)
    options = source.image_options(config)
    assert (options.views, options.tap_cache_views, options.aug_seed) == (3, 3, 2)
    assert (options.cache_dir, options.imo_adapters) == ("/c", "/imo")
    assert options.val_policy == "full" and options.select_on_test


def test_ta_pp_runs_as_a_feature_program_on_paired_features(tmp_path):
    """TA++ reads ``[adapted | original]`` rows (``paired_features``), the others plain features;
    its recorded accuracy is recomputed from the record's α, β with the method's own formula."""
    plain = FEATURES
    adapted = make_task(5, num_classes=3, dim=8, shots=2, views=2, val_per_class=4,
                        test_per_class=4, dataset="dtd")  # same labels layout, other features
    pair = lambda a, b: np.concatenate([a, b], axis=-1)  # noqa: E731
    paired = dataclasses.replace(plain, train=pair(adapted.train, plain.train),
                                 val=pair(adapted.val, plain.val),
                                 test=pair(adapted.test, plain.test))
    asked = []

    def paired_source(dataset, shots, seeds):
        asked.append(dataset)
        return paired

    out = str(tmp_path)
    config = SweepConfig(methods=("tip_adapter", "ta_pp"), datasets=("dtd",), shots=(1, 2),
                         seeds=(1,), devices=1)
    run_sweep(out, config, lambda d, k, s: plain, paired_features=paired_source, progress=False,
              log=None)
    assert asked == ["dtd"]
    found = read_records(out)
    ta_pp = methods.get("ta_pp")
    test = build_evalset(paired.test, paired.test_labels)
    for k in (1, 2):
        record = found[Cell("ta_pp", "dtd", k, 1)]
        assert record["searched"] == ["alpha", "beta"]
        task = build_task(paired, k, 1)
        hp = as_arrays(record["hyperparameters"])
        acc = accuracy(logits(ta_pp, ta_pp.init(None, task, hp), task, test.features, hp), test)
        assert float(acc) == pytest.approx(record["accuracy"], abs=1e-3)
    assert found[Cell("tip_adapter", "dtd", 2, 1)]["searched"] == ["beta", "alpha"]
