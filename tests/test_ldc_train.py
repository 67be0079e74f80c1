"""LDC training: vmapped == separate runs, trunk path == tap cache, path choice, learning.

The tiny ResNet CLIP (random weights) on scikit-learn's digits. Four tasks
(seeds 1, 2 x 2 and 4 shots) share one support pool; one compiled program
trains them through the tap cache, another runs each alone through the trunk
with augmentation off on the very views the cache holds (2 epochs: float
noise grows chaotically over long runs). The slow test trains the same
program for 40 epochs through :func:`run_ldc` (reusing the compilation when
the tests share a process) and checks that LDC learns.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import cli
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import load_clip
from jaxclip_fs.data import get_dataset
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import augment
from jaxclip_fs.features.extract import select_train_pool
from jaxclip_fs.sweep.image_methods import (
    ImageOptions, _compiled_ldc_training, run_ldc, task_keys, write_cell,
)
from jaxclip_fs.train import ldc_inputs
from jaxclip_fs.train.ldc import LDCData, fit_ldc

SHOTS, SEEDS = (2, 4), (1, 2)
CELLS = [(k, s) for s in SEEDS for k in SHOTS]  # run_ldc's order
VIEWS, BATCH, EPOCHS, LR = 10, 16, 40, 3e-3
TRAINED_EPOCHS = 2  # the equality test trains 2 of the program's EPOCHS (the rest idle)


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-rn", "random")


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def setup(clip, digits):
    model, taps = ldc_inputs.ldc_for_clip(clip, digits.num_classes)
    rng = np.random.default_rng(0)
    text = rng.standard_normal((digits.num_classes, clip.config.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    frozen = ldc_inputs.frozen_arguments(clip, text)
    pool = select_train_pool(digits, max(SHOTS), SEEDS)
    cache = ldc_inputs.tap_cache_pool(clip, digits, pool.indices, taps, views=VIEWS,
                                      use_cache=False, progress=False)
    pixels = ldc_inputs.support_pixels(digits, pool.indices, clip.config.image_size, views=VIEWS)
    index = jnp.asarray(np.stack([pool.fewshot[s] for _, s in CELLS]), jnp.int32)
    mask = jnp.asarray(np.stack([np.broadcast_to(np.arange(max(SHOTS)) < k, index.shape[1:])
                                 for k, _ in CELLS]), jnp.float32)
    n = len(CELLS)
    # eps = 1 makes AdamW's step ~ lr · gradient (no sign-like steps for near-zero gradients,
    # which would turn float noise into ±lr differences between the two paths)
    values = {"epochs": TRAINED_EPOCHS, "lr": 1e-2, "eps": 1.0, "weight_decay": 1e-4}
    settings = {k: jnp.full(n, v, jnp.float32) for k, v in values.items()}  # as run_ldc's
    keys = task_keys([s for _, s in CELLS])
    train_cache = _compiled_ldc_training(model, ldc_inputs.cache_fetch, BATCH, EPOCHS)
    cached = train_cache(frozen, LDCData(cache, index, mask), keys, settings)
    return dict(model=model, taps=taps, frozen=frozen, cache=cache, pixels=pixels,
                index=index, mask=mask, settings=settings, keys=keys, cached=cached)


def test_vmapped_cache_path_equals_separate_trunk_runs_on_the_same_views(clip, setup):
    """4 tasks in one vmapped program on the tap cache == each task alone, trunk in the step.

    The trunk runs with augmentation off on exactly the views the cache holds,
    so one comparison checks both claims: tasks do not leak into each other
    under ``vmap``, and the two training paths compute the same numbers.
    """
    s = setup
    fetch = ldc_inputs.trunk_fetch(clip.model, s["taps"], augment_views=False)
    rows = np.arange(0, 12, 2)
    views = np.asarray([0, 1, 9, 4, 2, 0])
    from_trunk = jax.jit(fetch)(s["frozen"], None, s["pixels"][views, rows])
    from_cache = ldc_inputs.cache_fetch(  # the cache's leaves are numpy: indexed on the host
        s["frozen"], None, jax.tree.map(lambda leaf: leaf[views, rows], s["cache"]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                                         atol=1e-5), from_trunk, from_cache)
    # alone: scanning only its 2 epochs (the vmapped program scans 40, idling after 2)
    one = jax.jit(functools.partial(fit_ldc, s["model"], fetch, batch_size=BATCH,
                                    max_epochs=TRAINED_EPOCHS))
    params, stats, info = jax.device_get(s["cached"])
    losses = info["losses"]  # NaN past each task's own epochs
    assert np.all(np.isfinite(losses[:, :TRAINED_EPOCHS])) and np.all(np.isnan(losses[:, 2:]))
    settings, index, mask = jax.device_get((s["settings"], s["index"], s["mask"]))
    row = lambda tree, t: jax.tree.map(lambda leaf: leaf[t], tree)
    starts = []
    for t in range(len(CELLS)):
        data = LDCData(s["pixels"], index[t], mask[t])
        alone = jax.device_get(one(s["frozen"], data, s["keys"][t], row(settings, t)))
        # its initial weights: the same program with 0 epochs to train
        starts.append(jax.device_get(one(s["frozen"], data, s["keys"][t],
                                         {**row(settings, t), "epochs": np.float32(0)})[:2]))
        np.testing.assert_allclose(alone[2]["losses"], losses[t, :2], rtol=1e-3)
        # What training changed must agree. BatchNorm amplifies float noise in a few elements,
        # so the whole update is compared: |Δ_trunk - Δ_cache| <= 1 % of |Δ_cache| (a wrong
        # view, row or task would give an O(1) gap).
        leaves = [jax.tree.leaves(x) for x in (alone[:2], row((params, stats), t), starts[t])]
        gap = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(leaves[0], leaves[1])))
        moved = np.sqrt(sum(np.sum(np.square(b - i)) for b, i in zip(leaves[1], leaves[2])))
        assert moved > 0.1 and gap <= 1e-2 * moved, (gap, moved)
    # the tasks differ (supports, keys), and training moved the weights
    head = params["head"]["fc2"]
    assert np.abs(head[0] - head[1]).max() > 1e-3 and np.abs(head[1] - head[2]).max() > 1e-2
    assert np.abs(head[0] - starts[0][0]["head"]["fc2"]).max() > 1e-3


def test_pixels_round_trip_exactly():
    from jaxclip_fs.clip.preprocess import to_clip_array
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    normalized = to_clip_array(Image.fromarray(pixels))
    np.testing.assert_array_equal(ldc_inputs.to_pixels(normalized), pixels)
    np.testing.assert_allclose(np.asarray(ldc_inputs.normalize_pixels(pixels)), normalized,
                               rtol=1e-6, atol=1e-6)


def test_tap_cache_size_and_path_choice():
    rn50 = get_config("RN50")
    taps = ldc_inputs.ldc_tap_names(rn50)
    per_view = (56 * 56 * 256 + 28 * 28 * 512 + 14 * 14 * 1024 + 7 * 7 * 2048 + 1024) * 4
    need = ldc_inputs.tap_cache_bytes(rn50, taps, 16000, 10)
    assert need == per_view * 16000 * 10  # ImageNet 16-shot, 10 views: ~963 GB
    assert ldc_inputs.choose_train_path("auto", need, 4 * 2**30) == "trunk"
    assert ldc_inputs.choose_train_path("auto", 2**30, 4 * 2**30) == "cache"
    assert ldc_inputs.choose_train_path("cache", need, 0) == "cache"
    with pytest.raises(ConfigError, match="--train-path must be one of"):
        ldc_inputs.choose_train_path("disk", 1, 1)
    vit = get_config("tiny-vit")  # blocks (2, 2, 3, 3): repeated taps are stored once
    names = ldc_inputs.ldc_tap_names(vit)
    assert ldc_inputs.tap_cache_bytes(vit, names, 10, 2) == (2 * 17 * 128 + 64) * 4 * 10 * 2


def test_image_methods_refuse_feature_files_and_need_their_flags(tmp_path, capsys):
    features = tmp_path / "f.npz"
    features.write_bytes(b"")
    assert cli.main(["evaluate", str(features), "--method", "ldc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method 'ldc' needs images, not a feature file" in err
    assert cli.main(["evaluate", "--method", "tx_pp", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --backbone, --weights" in err
    assert cli.main(["evaluate", "--method", "tip_adapter"]) == 2
    assert "needs FEATURES.npz" in capsys.readouterr().err
    assert cli.main(["evaluate", "--method", "ta_pp", "--dataset", "digits", "--backbone",
                     "tiny-vit", "--weights", "random", "--quiet"]) == 2
    assert "needs IMO adapters" in capsys.readouterr().err
    assert cli.main(["evaluate", "--method", "ldc", "--dataset", "digits", "--backbone",
                     "tiny-rn", "--weights", "random", "--hp", "beta=2", "--quiet"]) == 2
    assert "'beta' must be <= 1" in capsys.readouterr().err


def test_augmented_trunk_fetch_crops_afresh_per_key(clip, setup):
    """The in-step path = the trunk on ``jax_random_resized_crop`` (LDC scale) of the pixels."""
    s = setup
    pixels = s["pixels"][0, :4]
    size = clip.config.image_size
    augmented = jax.jit(ldc_inputs.trunk_fetch(clip.model, s["taps"], augment_views=True))
    plain = jax.jit(ldc_inputs.trunk_fetch(clip.model, s["taps"], augment_views=False))
    key = jax.random.key(5)
    crops = augment.jax_random_resized_crop(key, pixels, size, scale=augment.LDC_SCALE)
    expected = plain(s["frozen"], None, crops)
    got = augmented(s["frozen"], key, pixels)
    np.testing.assert_allclose(np.asarray(got.taps[0]), np.asarray(expected.taps[0]), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(got.s), np.asarray(expected.s), rtol=1e-4, atol=1e-4)
    other = augmented(s["frozen"], jax.random.key(6), pixels)
    assert np.abs(np.asarray(other.taps[3]) - np.asarray(got.taps[3])).max() > 1e-3


@pytest.mark.slow
def test_ldc_from_random_clip_learns_digits_well_above_zero_shot(clip, digits, setup, tmp_path):
    """run_ldc end to end (tap cache, β on CoOp validation): well above zero-shot and chance."""
    options = ImageOptions(tap_cache_views=VIEWS, cache_dir=str(tmp_path / "cache"),
                           progress=False)
    cells = run_ldc(digits, clip, shots=SHOTS, seeds=SEEDS, options=options, log=None,
                    hp={"epochs": EPOCHS, "lr": LR, "batch_size": BATCH})
    labels = digits.split("test").labels
    assert [(c.shots, c.seed) for c in cells] == CELLS
    for cell in cells:
        record = cell.record
        assert record["accuracy"] == pytest.approx(
            100 * np.mean(cell.test_logits.argmax(1) == labels))
        assert record["weights"] == "random" and record["ldc"]["train_path"] == "cache"
        assert record["zero_shot_accuracy"] < 20.0  # random CLIP: chance is 10 %
        assert record["val_size"] == 10 * min(cell.shots, 4)  # CoOp validation
        assert 0.0 <= record["hyperparameters"]["beta"] <= 1.0 and record["searched"] == ["beta"]
        assert cell.confusion["num_images"] == record["val_size"]
    best = max(c.record["accuracy"] for c in cells)
    four_shot = [c.record for c in cells if c.shots == 4]
    assert all(r["accuracy"] > r["zero_shot_accuracy"] + 25 for r in four_shot), best
    assert min(r["accuracy"] for r in four_shot) > 40.0
    written = write_cell(tmp_path / "cell", cells[-1])
    assert {os.path.basename(p) for p in written} == {
        "params", "confusion.json", "confusion.png", "test_logits.npy", "result.json"}
    np.testing.assert_array_equal(np.load(tmp_path / "cell" / "test_logits.npy"),
                                  cells[-1].test_logits)


def test_ldc_tasks_sharded_over_devices_give_the_records_of_one_device(clip, digits, tmp_path):
    """4 tasks on 3 of the 8 fake devices (padded to 6) == the same 4 tasks on one device."""
    assert jax.device_count() >= 3
    runs = {}
    for devices in (1, 3):
        options = ImageOptions(tap_cache_views=4, cache_dir=str(tmp_path / "cache"),
                               progress=False, devices=devices)
        runs[devices] = run_ldc(digits, clip, shots=SHOTS, seeds=SEEDS, options=options, log=None,
                                hp={"epochs": 3, "lr": LR, "batch_size": BATCH})

    def gap(a, b):
        return np.sqrt(sum(np.sum(np.square(x - y)) for x, y in
                           zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))))

    for t, (one, sharded) in enumerate(zip(runs[1], runs[3])):
        assert (one.shots, one.seed) == (sharded.shots, sharded.seed)
        assert one.record["devices"] == 1 and sharded.record["devices"] == 3
        np.testing.assert_allclose(sharded.test_logits, one.test_logits, rtol=1e-4, atol=1e-4)
        for field in ("accuracy", "val_accuracy", "hyperparameters", "head_accuracies"):
            assert sharded.record[field] == one.record[field], field
        # trained weights: float noise only (BatchNorm amplifies it in a few elements, so whole
        # trees are compared), far below the distance to any other task's weights
        others = min(gap(sharded, runs[1][u]) for u in range(len(CELLS)) if u != t)
        assert gap(sharded, one) <= 1e-2 * others, (gap(sharded, one), others)
