"""Out-of-distribution sets: a parent's fits scored on shifted sets, vs a direct computation."""

import os

import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.engine import outdir
from jaxclip_fs.engine.run import Sources
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment.plan import Cell, ood_parents
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.task import make_task as task_of
from jaxclip_fs.pipelines.features import GivenFeatures
from jaxclip_fs.pipelines.ood import OODSet, load_ood, parent_of, save_ood

from test_sweep import read_records, run_sweep

PARENT = make_task(3, num_classes=6, dim=8, shots=4, views=2, val_per_class=4, test_per_class=5,
                   dataset="imagenet")


def _shifted(name, classes, seed):
    """The parent's test images of ``classes``, perturbed: a stand-in for ImageNet-V2 / -A."""
    rng = np.random.default_rng(seed)
    keep = np.isin(PARENT.test_labels, classes)
    noise = rng.standard_normal(PARENT.test[keep].shape).astype(np.float32)
    features = PARENT.test[keep] + 0.3 * noise
    mask = np.zeros(PARENT.num_classes, np.float32)
    mask[classes] = 1.0
    return OODSet(name, "imagenet", features, PARENT.test_labels[keep].astype(np.int32), mask,
                  {"backbone": "synthetic", "weights": "synthetic", "dataset": name,
                   "parent": "imagenet", "split_policy": "synthetic"})


OOD = {"imagenet_v2": _shifted("imagenet_v2", [0, 1, 2, 3, 4, 5], 1),
       "imagenet_a": _shifted("imagenet_a", [1, 3, 4], 2)}


class WithShifts(GivenFeatures):
    """The parent's features, and the shifted sets as its OOD sets."""

    def ood(self, name, parent):
        assert parent is PARENT
        return OOD[name]


SOURCES = Sources(features=WithShifts({"imagenet": PARENT}))


def ood_config(datasets=("imagenet",), ood=("imagenet_v2", "imagenet_a"), method="tip_adapter"):
    return config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig(method),),
        data=config_lib.DataConfig(datasets=datasets, ood=ood),
        grid=config_lib.GridConfig(shots=(1, 4), seeds=(1, 2)))


def test_ood_records_score_the_parent_fit_on_each_set(tmp_path):
    out = str(tmp_path)
    config = ood_config()
    result = run_sweep(out, config, SOURCES)
    found = read_records(out)
    assert len(result.computed) == 4 and len(found) == 4 * 3
    for method in ("tip_adapter",):
        spec = methods.get(method)
        for shots in (1, 4):
            for seed in (1, 2):
                parent = found[Cell(method, "imagenet", shots, seed)]
                task = task_of(PARENT.train[:, support_index(PARENT, shots, seed)], PARENT.text,
                               PARENT.logit_scale)
                for name, ood in OOD.items():
                    record = found[Cell(method, name, shots, seed)]
                    assert record["trained_on"] == "imagenet"
                    assert record["hyperparameters"] == parent["hyperparameters"]
                    assert record["num_classes"] == int(ood.class_mask.sum())
                    hp = as_arrays(record["hyperparameters"])
                    scores = np.array(logits(spec, spec.init(None, task, hp), task, ood.test, hp))
                    scores[:, ood.class_mask == 0] = -np.inf  # predict among the set's classes
                    expected = 100.0 * np.mean(np.argmax(scores, -1) == ood.test_labels)
                    assert record["accuracy"] == pytest.approx(expected, abs=1e-4)

    os.remove(outdir.record_path(out, Cell("tip_adapter", "imagenet_a", 4, 2)))
    again = run_sweep(out, config, SOURCES)
    assert again.computed == (Cell("tip_adapter", "imagenet", 4, 2),)
    after = read_records(out)  # the missing OOD record is back, recomputed identically
    assert after.keys() == found.keys()
    for cell in found:
        assert after[cell]["accuracy"] == pytest.approx(found[cell]["accuracy"], abs=1e-4)
        assert after[cell]["hyperparameters"] == found[cell]["hyperparameters"]


def test_ood_needs_its_parent_and_round_trips(tmp_path):
    with pytest.raises(ConfigError, match="add it to the datasets"):
        ood_parents(ood_config(datasets=("dtd",), ood=("imagenet_v2",)), parent_of)
    with pytest.raises(ConfigError, match="not an out-of-distribution test set"):
        ood_parents(ood_config(datasets=("dtd",), ood=("dtd",)), parent_of)
    path = str(tmp_path / "a.ood.npz")
    save_ood(path, OOD["imagenet_a"])
    back = load_ood(path)
    np.testing.assert_array_equal(back.test, OOD["imagenet_a"].test)
    np.testing.assert_array_equal(back.class_mask, OOD["imagenet_a"].class_mask)
    assert back.name == "imagenet_a" and back.parent == "imagenet"


def test_extract_ood_maps_labels_into_the_parent_classes(tmp_path):
    """An OOD set of 2 classes that are classes 3 and 1 of a 5-class parent (as ImageNet-A/-R)."""
    import dataclasses

    from PIL import Image

    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.data import get_dataset
    from jaxclip_fs.features.extract import extract_features
    from jaxclip_fs.pipelines.ood import extract_ood

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for name in ("ant", "bee"):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    dataset = get_dataset(f"folder:{tmp_path / 'images'}")
    shifted = dataclasses.replace(dataset, parent="imagenet", parent_class_index=(3, 1))
    clip = load_clip("tiny-vit", "random")
    cache = str(tmp_path / "cache")
    ood = extract_ood(shifted, clip, 5, cache_dir=cache, progress=False)
    labels = dataset.split("test").labels
    np.testing.assert_array_equal(ood.test_labels, np.asarray([3, 1])[labels])
    np.testing.assert_array_equal(ood.class_mask, [0, 1, 0, 1, 0])
    plain = extract_features(dataset, clip, views=1, cache_dir=cache, progress=False).features
    np.testing.assert_allclose(ood.test, plain.test, atol=1e-6)  # the same images, in order
    assert ood.meta["parent"] == "imagenet" and ood.meta["weights"] == "random"
