"""LDC training: vmapped == separate runs, trunk path == tap cache, path choice, learning.

The tiny ResNet CLIP (random weights) on scikit-learn's digits. Four tasks
(seeds 1, 2 x 2 and 4 shots) share one support pool; one compiled program
(the image program's :func:`~jaxclip_fs.engine.image_program.fit_one`, vmapped)
trains them through the tap cache, another runs each alone through the trunk
with augmentation off on the very views the cache holds (2 epochs: float
noise grows chaotically over long runs). The slow test trains LDC for 40
epochs through the engine and checks that it learns.
"""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import cli, methods
from jaxclip_fs.clip.model import CLIP
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import load_clip
from jaxclip_fs.data import get_dataset
from jaxclip_fs.engine.image_program import bind, fit_one
from jaxclip_fs.engine.run import CellDir, run_experiment
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.features import augment
from jaxclip_fs.features.extract import select_train_pool
from jaxclip_fs.methods import ldc as ldc_lib
from jaxclip_fs.pipelines import images as ldc_inputs

SHOTS, SEEDS = (2, 4), (1, 2)
CELLS = [(k, s) for s in SEEDS for k in SHOTS]  # the engine's order
VIEWS, BATCH, EPOCHS, LR = 10, 16, 40, 3e-3
TRAINED_EPOCHS = 2  # the equality test trains 2 of the program's EPOCHS (the rest idle)


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-rn", "random")


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def _vmapped_fit(method, fetch, max_epochs):
    """``jit(vmap(fit_one))`` over tasks: pool and frozen arrays shared (the image program's)."""
    fit = functools.partial(fit_one, method, fetch, batch_size=BATCH, max_epochs=max_epochs)
    return jax.jit(jax.vmap(fit, in_axes=(None, None, 0, 0, 0, 0)))


@pytest.fixture(scope="module")
def setup(clip, digits):
    method = bind(methods.get("ldc"), ldc_inputs.image_spec(clip))
    model, taps = ldc_lib.model_for(ldc_inputs.image_spec(clip), digits.num_classes), method.taps
    rng = np.random.default_rng(0)
    text = rng.standard_normal((digits.num_classes, clip.config.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    frozen = ldc_inputs.frozen_arrays(clip, text)
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
    settings = {k: jnp.full(n, v, jnp.float32) for k, v in values.items()}  # as the engine's
    seeds = jnp.asarray([s for _, s in CELLS], jnp.int32)
    train_cache = _vmapped_fit(method, ldc_inputs.cache_fetch, EPOCHS)
    cached = train_cache(frozen, cache, index, mask, seeds, settings)
    return dict(method=method, model=model, taps=taps, frozen=frozen, cache=cache, pixels=pixels,
                index=index, mask=mask, settings=settings, seeds=seeds, cached=cached)


@pytest.mark.slow
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
    chex.assert_trees_all_close(from_trunk, from_cache, rtol=1e-4, atol=1e-5)
    # alone: scanning only its 2 epochs (the vmapped program scans 40, idling after 2)
    one = jax.jit(functools.partial(fit_one, s["method"], fetch, batch_size=BATCH,
                                    max_epochs=TRAINED_EPOCHS))
    params, info = jax.device_get(s["cached"])
    losses = info["losses"]  # NaN past each task's own epochs
    assert np.all(np.isfinite(losses[:, :TRAINED_EPOCHS])) and np.all(np.isnan(losses[:, 2:]))
    settings, index, mask = jax.device_get((s["settings"], s["index"], s["mask"]))
    row = lambda tree, t: jax.tree.map(lambda leaf: leaf[t], tree)
    starts = []
    for t in range(len(CELLS)):
        task = (s["frozen"], s["pixels"], index[t], mask[t], s["seeds"][t])
        alone = jax.device_get(one(*task, row(settings, t)))
        # its initial weights: the same program with 0 epochs to train
        starts.append(jax.device_get(one(*task, {**row(settings, t), "epochs": np.float32(0)})[0]))
        np.testing.assert_allclose(alone[1]["losses"], losses[t, :2], rtol=1e-3)
        # What training changed must agree. BatchNorm amplifies float noise in a few elements,
        # so the whole update is compared: |Δ_trunk - Δ_cache| <= 1 % of |Δ_cache| (a wrong
        # view, row or task would give an O(1) gap).
        leaves = [jax.tree.leaves(x) for x in (alone[0], row(params, t), starts[t])]
        gap = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(leaves[0], leaves[1])))
        moved = np.sqrt(sum(np.sum(np.square(b - i)) for b, i in zip(leaves[1], leaves[2])))
        assert moved > 0.1 and gap <= 1e-2 * moved, (gap, moved)
    # the tasks differ (supports, keys), and training moved the weights
    head = params["heads"]["head"]["fc2"]
    assert np.abs(head[0] - head[1]).max() > 1e-3 and np.abs(head[1] - head[2]).max() > 1e-2
    assert np.abs(head[0] - starts[0]["heads"]["head"]["fc2"]).max() > 1e-3


def test_pixels_round_trip_exactly():
    from jaxclip_fs.clip.preprocess import to_clip_array
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    normalized = to_clip_array(Image.fromarray(pixels))
    np.testing.assert_array_equal(ldc_inputs.to_pixels(normalized), pixels)
    np.testing.assert_allclose(np.asarray(ldc_inputs.normalize_pixels(pixels)), normalized,
                               rtol=1e-6, atol=1e-6)


class _Loaded:
    """Enough of a LoadedCLIP (config + model) for its image spec, without weights."""

    def __init__(self, name):
        self.config = get_config(name)
        self.model = CLIP(self.config)


def test_tap_cache_size_and_path_choice():
    rn50 = get_config("RN50")
    taps = ldc_lib.tap_names(ldc_inputs.image_spec(_Loaded("RN50")))
    per_view = (56 * 56 * 256 + 28 * 28 * 512 + 14 * 14 * 1024 + 7 * 7 * 2048 + 1024) * 4
    need = ldc_inputs.tap_cache_bytes(rn50, taps, 16000, 10)
    assert need == per_view * 16000 * 10  # ImageNet 16-shot, 10 views: ~963 GB
    assert ldc_inputs.choose_train_path("auto", need, 4 * 2**30) == "trunk"
    assert ldc_inputs.choose_train_path("auto", 2**30, 4 * 2**30) == "cache"
    assert ldc_inputs.choose_train_path("cache", need, 0) == "cache"
    with pytest.raises(ConfigError, match="images.train_path must be one of"):
        ldc_inputs.choose_train_path("disk", 1, 1)
    vit = get_config("tiny-vit")  # blocks (2, 2, 3, 3): repeated taps are stored once
    names = ldc_lib.tap_names(ldc_inputs.image_spec(_Loaded("tiny-vit")))
    assert ldc_inputs.tap_cache_bytes(vit, names, 10, 2) == (2 * 17 * 128 + 64) * 4 * 10 * 2


def test_image_methods_refuse_feature_files_and_need_their_flags(tmp_path, capsys):
    features = tmp_path / "f.npz"
    features.write_bytes(b"")
    assert cli.main(["evaluate", str(features), "--method", "ldc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method 'ldc' reads images, not a feature file" in err
    assert cli.main(["evaluate", "--method", "tx_pp", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --backbone, --weights" in err
    assert cli.main(["evaluate", "--method", "tip_adapter"]) == 2
    assert "needs FEATURES.npz, or images" in capsys.readouterr().err
    assert cli.main(["evaluate", "--method", "ta_pp", "--dataset", "digits", "--backbone",
                     "tiny-vit", "--weights", "random", "--quiet"]) == 2
    assert "paired features of an IMO-adapted CLIP" in capsys.readouterr().err
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
def test_ldc_fits_a_small_support_in_eval_mode_with_update_bn(clip, digits):
    """40 support images, batch 64: one step per epoch, so few BatchNorm updates.

    After 10 steps the running variances still hold 0.9^10 = 0.35 of their
    initial 1, hundreds of times the batch variance of the random tiny ResNet's
    adapted taps: with those statistics (``bn_stats="official"``, what the
    official code evaluates with) eval mode predicts one class for every image
    although the train-mode model fits the support. ``update_bn`` re-estimates
    them on the final weights, and the eval-mode model then classifies its own
    support as the train-mode one does.
    """
    spec = ldc_inputs.image_spec(clip)
    method = bind(methods.get("ldc", bn_stats="update_bn"), spec)
    model = ldc_lib.model_for(spec, digits.num_classes)
    rng = np.random.default_rng(0)
    text = rng.standard_normal((digits.num_classes, clip.config.embed_dim)).astype(np.float32)
    frozen = ldc_inputs.frozen_arrays(clip, text / np.linalg.norm(text, axis=1, keepdims=True))
    pool = select_train_pool(digits, 4, (1,))
    cache = ldc_inputs.tap_cache_pool(clip, digits, pool.indices, method.taps, views=1,  # clean
                                      use_cache=False, progress=False)
    index = np.asarray(pool.fewshot[1], np.int32)
    epochs = 10
    settings = {"epochs": jnp.float32(epochs), "lr": jnp.float32(1e-2), "eps": jnp.float32(1e-4),
                "weight_decay": jnp.float32(1e-4)}
    params, _ = jax.jit(functools.partial(
        fit_one, method, ldc_inputs.cache_fetch, batch_size=64, max_epochs=epochs))(
        frozen, jax.tree.map(jnp.asarray, cache), index, jnp.ones(index.shape, jnp.float32),
        jnp.int32(1), settings)
    support = ldc_inputs.cache_fetch(frozen, None, jax.tree.map(
        lambda leaf: jnp.asarray(leaf[0][index.reshape(-1)]), cache))
    labels = np.repeat(np.arange(digits.num_classes), index.shape[1])
    accuracy = {}
    for train in (False, True):
        out = model.apply(params["heads"], params["batch_stats"], frozen["clip"], support,
                          train=train)[0]
        accuracy[train] = {h: 100 * np.mean(np.argmax(getattr(out, h), -1) == labels)
                           for h in ("mlp", "ada", "tot")}
    # the regime: official running variances would be >= 0.9^10 = 0.35, vs the true ones
    assert np.median(params["batch_stats"]["maf"]["adapter4"]["bn"]["var"]) < 1e-2 * 0.9 ** epochs
    assert accuracy[False]["mlp"] >= 80 and accuracy[False]["tot"] >= 80, accuracy  # chance: 10
    for head in ("mlp", "ada", "tot"):
        assert abs(accuracy[False][head] - accuracy[True][head]) <= 5, accuracy


def _ldc_cells(tmp_path, devices=None, options=None, **hp):
    """LDC on digits (tiny-rn, random) through the engine: every cell's result and record."""
    config = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("ldc", options or {}, hp),),
        data=config_lib.DataConfig(datasets=("digits",)),
        model=config_lib.ModelConfig(backbone="tiny-rn", weights="random"),
        extraction=config_lib.ExtractionConfig(views=VIEWS - 1),  # the plain view + VIEWS - 1
        grid=config_lib.GridConfig(shots=SHOTS, seeds=SEEDS),
        execution=config_lib.ExecutionConfig(devices=devices,
                                             cache_dir=str(tmp_path / "cache")))
    sink = CellDir(None)
    run_experiment(config, sink, progress=False, log=None)
    return sink.results, sink.records


@pytest.mark.slow
def test_ldc_from_random_clip_learns_digits_well_above_zero_shot(tmp_path):
    """LDC through the engine (tap cache, β on CoOp validation): well above zero-shot and chance."""
    results, records = _ldc_cells(tmp_path, epochs=EPOCHS, lr=LR, batch_size=BATCH)
    labels = get_dataset("digits").split("test").labels
    assert [(r.cell.shots, r.cell.seed) for r in results] == CELLS
    for result, record in zip(results, records):
        assert record["accuracy"] == pytest.approx(
            100 * np.mean(result.test_logits.argmax(1) == labels))
        assert record["weights"] == "random" and record["input_details"]["train_path"] == "cache"
        assert record["head_accuracies"]["s"] < 20.0  # random CLIP: chance is 10 %
        assert record["val_size"] == 359  # the fair protocol: the whole val split
        assert 0.0 <= record["hyperparameters"]["beta"] <= 1.0 and record["searched"] == ["beta"]
        assert result.confusion["num_images"] == record["val_size"]
    four_shot = [r for r in records if r["shots"] == 4]
    assert all(r["accuracy"] > r["head_accuracies"]["s"] + 25 for r in four_shot), four_shot
    assert min(r["accuracy"] for r in four_shot) > 40.0


def test_evaluate_writes_an_ldc_cells_files(tmp_path, capsys):
    out = tmp_path / "cell"
    assert cli.main(["evaluate", "--method", "ldc", "--dataset", "digits", "--backbone", "tiny-rn",
                     "--weights", "random", "--shots", "2", "--seed", "1", "--hp", "epochs=2",
                     "batch_size=16", "--views", "2", "--cache-dir", str(tmp_path / "cache"),
                     "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot s" in printed and "confusion on 359 val images" in printed
    assert {p.name for p in out.iterdir()} == {
        "params", "confusion.json", "confusion.png", "test_logits.npy", "result.json"}
    record = json.loads((out / "result.json").read_text())
    logits = np.load(out / "test_logits.npy")
    labels = get_dataset("digits").split("test").labels
    assert record["accuracy"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels))


@pytest.mark.slow
@pytest.mark.devices(8)
def test_ldc_tasks_sharded_over_devices_give_the_records_of_one_device(tmp_path):
    """4 tasks on 3 of the 8 fake devices (padded to 6) == the same 4 tasks on one device.

    Same numbers up to float reordering: the per-device task count changes the
    vmapped batch XLA compiles for (4 on one device, 2 on each of 3), which
    moves the last bits of the gradients. AdamW with the official eps 1e-4
    divides near-zero gradients by about their own size, so that noise grows
    into ~1e-4 relative weight differences within 3 epochs (a test logit off
    by 5e-4, one near-tie test image flipped). eps = 1 makes the step ~ lr ·
    gradient (as in the cache-vs-trunk test), leaving ~1e-7 differences; a
    misplaced task, key or setting would give O(1) ones. With ``update_bn``
    statistics: 6-9 steps leave 0.9^6..0.9^9 of the initial running variances,
    with which the eval-mode heads would give every test image the same class,
    and equal predictions would prove little. (Re-estimated variances of the
    random taps are ~1e-5, BatchNorm's own eps, so a 2-batch estimate carries
    that noise into the logits at ~1e-3 -- still a thousand times below a
    misplaced task's.)
    """
    assert jax.device_count() >= 3
    runs = {devices: _ldc_cells(tmp_path, devices, {"bn_stats": "update_bn"}, epochs=3, lr=LR,
                                batch_size=BATCH, eps=1.0)
            for devices in (1, 3)}
    for (one, one_record), (sharded, sharded_record) in zip(zip(*runs[1]), zip(*runs[3])):
        assert one.cell == sharded.cell
        assert one_record["input_details"]["devices"] == 1
        assert sharded_record["input_details"]["devices"] == 3
        assert sharded_record["options"]["bn_stats"] == "update_bn"
        np.testing.assert_allclose(sharded.test_logits, one.test_logits, rtol=1e-2, atol=1e-2)
        for field in ("accuracy", "val_accuracy", "hyperparameters"):
            assert sharded_record[field] == one_record[field], field
        for head, value in one_record["head_accuracies"].items():  # a near-tie image may flip
            assert abs(sharded_record["head_accuracies"][head] - value) <= 100 * 2 / 539, head
    assert len({r["accuracy"] for r in runs[1][1]}) > 1  # the cells differ
