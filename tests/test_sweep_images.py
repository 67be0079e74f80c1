"""Image methods in the engine: LDC's variants swept in one command, OOD sets, checkpoints,
records recomputed independently, resume; TA++ as a feature program on paired features."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from jaxclip_fs import cli, methods
from jaxclip_fs.engine import outdir
from jaxclip_fs.engine.run import RunDir, Sources, run_experiment, sources_for
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import Cell
from jaxclip_fs.features import augment
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.features.image_encoder import load_views
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.io.checkpoints import restore_tree
from jaxclip_fs.methods import ldc as ldc_lib
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.search import accuracy
from jaxclip_fs.methods.task import make_evalset, make_task as task_of
from jaxclip_fs.pipelines import images, ood as ood_lib
from jaxclip_fs.pipelines.features import GivenFeatures

from test_sweep import read_records, run_sweep

FEATURES = make_task(4, num_classes=3, dim=8, shots=2, views=2, val_per_class=4, test_per_class=4,
                     dataset="dtd")
OOD_CLASSES = (1, 4, 7)  # a stand-in for ImageNet-A: the parent's test images of 3 classes


class ShiftedDigits(images.ImageSource):
    """The image pipeline, with 'digits_a' = digits' test images of :data:`OOD_CLASSES`."""

    def ood(self, name, parent):
        labels = parent.dataset.split("test").labels
        keep = np.flatnonzero(np.isin(labels, OOD_CLASSES))
        mask = np.isin(np.arange(parent.num_classes), OOD_CLASSES).astype(np.float32)
        return images.QuerySet(name, parent.dataset, "test", keep, labels[keep].astype(np.int32),
                               mask)

    def ood_size(self, name):
        labels = self.session.dataset("digits").split("test").labels
        return int(np.isin(labels, OOD_CLASSES).sum())


def _config(tmp_path, **grid):
    return config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("ldc", {"fusion": ["fixed", "concat"]},
                                         {"epochs": 3, "batch_size": 16, "lr": 3e-3}),),
        data=config_lib.DataConfig(datasets=("digits",), ood=("digits_a",)),
        model=config_lib.ModelConfig(backbone="tiny-rn", weights="random"),
        extraction=config_lib.ExtractionConfig(views=3),
        grid=config_lib.GridConfig(**{"shots": (1, 2), "seeds": (1,), **grid}),
        execution=config_lib.ExecutionConfig(cache_dir=str(tmp_path / "cache")))


@pytest.mark.slow
def test_ldc_variants_ood_checkpoints_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(ood_lib, "parent_of", lambda name: "digits")
    config = _config(tmp_path)
    sources = sources_for(config, features_dir=str(tmp_path / "out" / "features"), progress=False)
    sources.images = ShiftedDigits(sources.images.session, config.images)
    out = str(tmp_path / "out")
    result = run_experiment(config, RunDir(out), sources=sources, progress=False, log=None)
    assert [p.name for p in result.programs] == ["ldc/digits", "ldc[fusion=concat]/digits"]
    found = read_records(out)
    assert len(found) == 2 * 2 * 2  # 2 variants x 2 shots x (digits + its OOD set)

    clip = sources.images.session.clip()
    digits = sources.images.session.dataset("digits")
    text = sources.images.session.text("digits")
    frozen = images.frozen_arrays(clip, text)
    spec = images.image_spec(clip)
    labels = digits.split("test").labels
    size = clip.config.image_size
    split = digits.split("test")
    pixels = np.stack([images.to_pixels(load_views(split, i, size, 1, 0, augment.LDC_SCALE))[0]
                       for i in range(len(split))])
    for label, fusion in (("ldc", "fixed"), ("ldc[fusion=concat]", "concat")):
        for shots in (1, 2):
            record = found[Cell(label, "digits", shots, 1)]
            assert record["method_name"] == "ldc" and record["options"]["fusion"] == fusion
            assert record["searched"] == ["beta"] and record["epoch_selection"] == "final"
            assert len(record["epoch_losses"]) == 3
            tree, meta = restore_tree(os.path.join(out, record["params_checkpoint"]))
            g, t = record["params_row"]
            assert meta["slots"][g][t] == dict(method=label, dataset="digits", shots=shots, seed=1,
                                               protocol="fair")
            params = jax.tree.map(lambda leaf: leaf[g, t], tree)
            # the reported prediction, recomputed outside the engine from the saved params
            model = ldc_lib.model_for(spec, 10, fusion=fusion)
            fetch = jax.jit(images.trunk_fetch(clip.model, record["input_details"]["taps"],
                                               augment_views=False))
            beta = record["hyperparameters"]["beta"]
            fused = []
            for start in range(0, len(pixels), 128):
                inputs = fetch(frozen, None, pixels[start:start + 128])
                outputs, _ = model.apply(params["heads"], params["batch_stats"], frozen["clip"],
                                         inputs, train=False)
                fused.append(np.asarray(beta * outputs.mlp + (1 - beta) * outputs.ada))
            fused = np.concatenate(fused)
            assert record["accuracy"] == pytest.approx(
                100 * np.mean(fused.argmax(1) == labels), abs=1e-6)
            ood = found[Cell(label, "digits_a", shots, 1)]
            keep = np.isin(labels, OOD_CLASSES)
            masked = np.where(np.isin(np.arange(10), OOD_CLASSES), fused[keep], -np.inf)
            assert ood["trained_on"] == "digits" and ood["num_classes"] == 3
            assert ood["accuracy"] == pytest.approx(
                100 * np.mean(masked.argmax(1) == labels[keep]), abs=1e-6)
            assert set(record["head_accuracies"]) == {"s", "mlp", "ada", "tot"}
            prefix = outdir.confusion_prefix(out, Cell(label, "digits", shots, 1))
            analysis = json.load(open(prefix + ".json"))
            assert analysis["heads"] == {"before": "s", "after": "ada"}
            assert analysis["num_images"] == record["val_size"] and analysis["random_weights"]
            assert os.path.isfile(prefix + ".png")

    os.remove(outdir.record_path(out, Cell("ldc[fusion=concat]", "digits_a", 2, 1)))
    again = run_experiment(config, RunDir(out), sources=sources, progress=False, log=None)
    assert again.computed == (Cell("ldc[fusion=concat]", "digits", 2, 1),)
    after = read_records(out)
    assert after.keys() == found.keys()
    for cell in found:
        assert after[cell]["accuracy"] == found[cell]["accuracy"]


@pytest.mark.slow
def test_cli_sweeps_ldc_options_as_variants(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "--dataset", "digits", "--backbone", "tiny-rn", "--weights", "random",
            "--method", "ldc", "--option", "ldc.fusion=fixed,average",
            "ldc.ablation=full,maf_only", "--shots", "1", "--seeds", "1", "--views", "2",
            "--hp", "epochs=1", "batch_size=16", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--quiet", "--no-report"]
    assert cli.main(argv) == 0
    found = read_records(str(out))
    assert {c.method for c in found} == {"ldc", "ldc[ablation=maf_only]", "ldc[fusion=average]",
                                         "ldc[ablation=maf_only,fusion=average]"}
    assert {r["options"]["ablation"] for r in found.values()} == {"full", "maf_only"}
    config = json.loads((out / "config.json").read_text())
    assert config["methods"][0]["options"] == {"fusion": ["fixed", "average"],
                                               "ablation": ["full", "maf_only"]}
    assert cli.main(["run", "--dataset", "digits", "--backbone", "tiny-rn", "--weights", "random",
                     "--method", "ldc", "--option", "ldc.fusion=sum", "--out",
                     str(tmp_path / "bad")]) == 2
    assert "option ldc.fusion must be one of fixed, average, learned, concat" in \
        capsys.readouterr().err


def test_image_methods_need_their_inputs(tmp_path):
    sources = Sources(features=GivenFeatures({"dtd": FEATURES}))
    for method, needle in (("ldc", "reads images"), ("ta_pp", "IMO-adapted")):
        config = config_lib.ExperimentConfig(
            methods=(config_lib.MethodConfig(method),),
            data=config_lib.DataConfig(datasets=("dtd",)),
            grid=config_lib.GridConfig(shots=(1,), seeds=(1,)))
        with pytest.raises(ConfigError, match=needle):
            run_experiment(config, RunDir(str(tmp_path)), sources=sources, progress=False,
                           log=None)


def test_ta_pp_runs_as_a_feature_program_on_paired_features(tmp_path):
    """TA++ reads ``[adapted | original]`` rows (the paired provider), the others plain features;
    its recorded accuracy is recomputed from the record's α, β with the method's own formula."""
    plain = FEATURES
    adapted = make_task(5, num_classes=3, dim=8, shots=2, views=2, val_per_class=4,
                        test_per_class=4, dataset="dtd")  # same labels layout, other features
    pair = lambda a, b: np.concatenate([a, b], axis=-1)  # noqa: E731
    paired = dataclasses.replace(plain, train=pair(adapted.train, plain.train),
                                 val=pair(adapted.val, plain.val),
                                 test=pair(adapted.test, plain.test))
    asked = []

    class Paired(GivenFeatures):
        def __call__(self, dataset, request):
            asked.append(dataset)
            return super().__call__(dataset, request)

    out = str(tmp_path)
    config = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("tip_adapter"), config_lib.MethodConfig("ta_pp")),
        data=config_lib.DataConfig(datasets=("dtd",)),
        grid=config_lib.GridConfig(shots=(1, 2), seeds=(1,)),
        execution=config_lib.ExecutionConfig(devices=1))
    run_sweep(out, config, Sources(features=GivenFeatures({"dtd": plain}),
                                   paired=Paired({"dtd": paired})))
    assert asked == ["dtd"]
    found = read_records(out)
    ta_pp = methods.get("ta_pp")
    test = make_evalset(paired.test, paired.test_labels)
    for k in (1, 2):
        record = found[Cell("ta_pp", "dtd", k, 1)]
        assert record["searched"] == ["alpha", "beta"] and record["inputs"] == "paired"
        task = task_of(paired.train[:, support_index(paired, k, 1)], paired.text,
                       paired.logit_scale)
        hp = as_arrays(record["hyperparameters"])
        acc = accuracy(logits(ta_pp, ta_pp.init(None, task, hp), task, test.features, hp), test)
        assert float(acc) == pytest.approx(record["accuracy"], abs=1e-3)
    assert found[Cell("tip_adapter", "dtd", 2, 1)]["searched"] == ["beta", "alpha"]
