"""IMO adapters (training, orbax checkpoint) and TA++ / TX++ against independent computations."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from jaxclip_fs import cli, methods
from jaxclip_fs.clip.model import add_adapters
from jaxclip_fs.convert import load_clip
from jaxclip_fs.data import get_dataset
from jaxclip_fs.errors import CheckpointError, ConfigError
from jaxclip_fs.io import checkpoints
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.task import make_task
from jaxclip_fs.train import imo
from numpy_ref import unit as _unit


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-vit", "random")


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def trained(clip, tmp_path_factory):
    """Adapters trained by the CLI: 2 epochs on digits, batch 64."""
    out = tmp_path_factory.mktemp("imo") / "adapters"
    assert cli.main(["train-imo", "--dataset", "digits", "--backbone", "tiny-vit", "--weights",
                     "random", "--out", str(out), "--epochs", "2", "--batch-size", "64",
                     "--lr", "3e-3", "--quiet"]) == 0
    return out


def test_first_loss_is_cross_entropy_of_the_plain_clip(clip, digits):
    """Fresh adapters (Up = 0) change nothing, so the loss is CE of the head on plain CLIP."""
    config, variables = add_adapters(clip.params, clip.config, jax.random.key(0))
    model = clip.model.clone(config=config)
    base, adapters = imo.split_adapters(variables)
    assert sorted(adapters) == ["block1", "block2", "block3"]
    assert imo.merge_adapters(base, adapters) == variables
    head = imo.head_init(jax.random.key(1), config.embed_dim, digits.num_classes)
    images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    labels = jnp.asarray([0, 3, 5, 9])
    loss = jax.jit(imo.imo_loss, static_argnums=(0, 6))
    ours = loss(model, {"adapters": adapters, "head": head}, base, images, labels,
                jax.random.key(2), True)
    plain, _ = jax.jit(clip.model.apply, static_argnames="method")(clip.params, images,
                                                                    method="encode_image")
    z = np.asarray(plain, np.float64) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    log_p = z - logsumexp(z, axis=1, keepdims=True)
    np.testing.assert_allclose(float(ours), -np.mean(log_p[np.arange(4), labels]), rtol=1e-5)


def test_trained_adapters_are_saved_loaded_and_checked(clip, trained, capsys):
    tree, meta = checkpoints.restore_tree(trained)
    assert meta["kind"] == "imo_adapters" and meta["backbone"] == "tiny-vit"
    assert meta["dataset"] == "digits" and meta["training"]["batch_size"] == 64
    assert len(meta["losses"]) == 2 and meta["losses"][1] < meta["losses"][0]
    assert np.abs(tree["adapters"]["block1"]["up"]["kernel"]).max() > 0  # Up was trained
    adapted = imo.load_imo_adapters(trained, clip)
    assert adapted.config.adapter_dim == 64
    assert adapted.weights_id.startswith(clip.weights_id + "+imo:")
    images = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype(np.float32)
    before = clip.model.apply(clip.params, images, method="encode_image")[0]
    after = adapted.model.apply(adapted.params, images, method="encode_image")[0]
    assert not np.allclose(np.asarray(before), np.asarray(after))
    manual = imo.merge_adapters(clip.params, jax.tree.map(jnp.asarray, tree["adapters"]))
    by_hand = adapted.model.apply(manual, images, method="encode_image")[0]
    np.testing.assert_array_equal(np.asarray(by_hand), np.asarray(after))
    with pytest.raises(CheckpointError, match="trained on weights random\\(seed=0\\), not random"):
        imo.load_imo_adapters(trained, load_clip("tiny-vit", "random:1"))
    with pytest.raises(CheckpointError, match="adapters for tiny-vit, not tiny-rn"):
        imo.load_imo_adapters(trained, load_clip("tiny-rn", "random"))
    with pytest.raises(CheckpointError, match="not a params checkpoint"):
        imo.load_imo_adapters(trained.parent, clip)


def test_train_imo_refuses_resnets_and_oversized_batches(digits, capsys):
    with pytest.raises(ConfigError, match="tiny-rn is a ResNet"):
        imo.train_imo(load_clip("tiny-rn", "random"), digits)
    assert cli.main(["train-imo", "--dataset", "digits", "--backbone", "tiny-vit", "--weights",
                     "random", "--out", "/tmp/never", "--batch-size", "100000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size 100000 exceeds the" in err


# --- TA++ / TX++ formulas ----------------------------------------------------------------------


def _paired_task(seed, identical=False):
    """A paired task [adapted | original] with D = 6, C = 3, K = 2, V = 3 and 7 queries."""
    rng = np.random.default_rng(seed)
    original = rng.standard_normal((3, 3, 2, 6)).astype(np.float32)
    adapted = original if identical else rng.standard_normal((3, 3, 2, 6)).astype(np.float32)
    text = rng.standard_normal((3, 6)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    queries = rng.standard_normal((7, 12)).astype(np.float32)
    if identical:
        queries[:, :6] = queries[:, 6:]
    return make_task(np.concatenate([adapted, original], -1), text, 50.0), queries, text


def _kl(f, keys, text):
    """``KL(softmax(f Wᵀ / 0.5) ‖ softmax(F Wᵀ / 0.5))`` → [M, N] (float64)."""
    log_pq = f @ text.T / 0.5 - logsumexp(f @ text.T / 0.5, axis=-1, keepdims=True)
    log_pk = keys @ text.T / 0.5 - logsumexp(keys @ text.T / 0.5, axis=-1, keepdims=True)
    return np.sum(np.exp(log_pq)[:, None] * (log_pq[:, None] - log_pk[None]), -1)


def test_ta_pp_and_tx_pp_match_independent_formulas():
    task, queries, text = _paired_task(0)
    support = np.asarray(task.support)
    f_adapt, f_orig = _unit(queries[:, :6]), _unit(queries[:, 6:])
    keys_adapt = _unit(support[1:, ..., :6].mean(0)).reshape(6, 6)  # [C*K, D], class-major
    keys_orig = _unit(support[1:, ..., 6:].mean(0)).reshape(6, 6)
    onehot = np.repeat(np.eye(3), 2, axis=0)  # [C*K, C]
    s = 50.0 * f_orig @ text.T
    alpha, beta, gamma = 1.7, 3.0, 2.5
    aff = f_adapt @ keys_adapt.T
    cache = np.exp(-beta * (1 - aff)) @ onehot
    kl = _kl(f_orig.astype(np.float64), keys_orig, text)
    kl_scaled = (kl - kl.min()) / (kl.max() - kl.min()) * (aff.max() - aff.min()) + aff.min()
    expected = {"ta_pp": s + alpha * cache, "tx_pp": s - gamma * kl_scaled @ onehot + alpha * cache}
    hp = as_arrays({"alpha": alpha, "beta": beta, "gamma": gamma})
    for name in ("ta_pp", "tx_pp"):
        method = methods.get(name)
        assert method.inputs == "paired"
        params = method.init(jax.random.key(0), task, hp)
        out = logits(method, params, task, jnp.asarray(queries), hp)
        np.testing.assert_allclose(np.asarray(out), expected[name], rtol=1e-4, atol=1e-4)


def test_identical_encoders_reduce_ta_pp_to_tip_adapter_and_tx_pp_to_tip_x():
    task, queries, _ = _paired_task(1, identical=True)
    half = task._replace(support=task.support[..., 6:])
    hp = as_arrays({"alpha": 2.0, "beta": 5.0, "gamma": 1.5})
    for ours, base in (("ta_pp", "tip_adapter"), ("tx_pp", "tip_x")):
        m, b = methods.get(ours), methods.get(base)
        got = logits(m, m.init(None, task, hp), task, jnp.asarray(queries), hp)
        want = logits(b, b.init(None, half, hp), half, jnp.asarray(queries[:, 6:]), hp)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert list(methods.get("tx_pp").grid(None)) == ["alpha", "beta", "gamma"]
    assert len(methods.get("ta_pp").grid(None)["alpha"]) == 200


def test_run_ta_pp_and_tx_pp_on_digits_end_to_end(clip, digits, trained, tmp_path):
    """Records match their test logits; the logits match the formula on re-extracted features."""
    from jaxclip_fs.features.extract import extract_features

    adapted_clip = imo.load_imo_adapters(trained, clip)
    # `--views 3`: three augmented views besides the plain one
    common = dict(shots=2, seeds=(1,), views=4, cache_dir=str(tmp_path / "cache"), progress=False)
    original = extract_features(digits, clip, **common).features
    adapted = extract_features(digits, adapted_clip, **common).features
    assert not np.allclose(original.test, adapted.test)
    index = original.fewshot[1][:, :2]  # [C, 2] pool rows of seed 1's 2-shot set
    onehot = np.repeat(np.eye(10), 2, axis=0)
    keys = _unit(adapted.train[1:, index.reshape(-1)].mean(0))
    s = original.logit_scale * _unit(original.test) @ original.text.T
    aff = _unit(adapted.test) @ keys.T
    labels = digits.split("test").labels
    for name in ("ta_pp", "tx_pp"):
        out = tmp_path / name
        assert cli.main(["evaluate", "--method", name, "--dataset", "digits", "--backbone",
                         "tiny-vit", "--weights", "random", "--shots", "2", "--seed", "1",
                         "--imo-adapters", str(trained), "--views", "3", "--hp", "beta=4",
                         "--cache-dir", str(tmp_path / "cache"), "--quiet",
                         "--out", str(out)]) == 0
        record = json.loads((out / "result.json").read_text())
        test_logits = np.load(out / "test_logits.npy")
        assert record["hyperparameters"]["beta"] == 4.0 and "beta" not in record["searched"]
        assert record["accuracy"] == pytest.approx(100 * np.mean(test_logits.argmax(1) == labels))
        assert record["inputs"] == "paired"
        hp = record["hyperparameters"]
        expected = s + hp["alpha"] * np.exp(-4.0 * (1 - aff)) @ onehot
        if name == "tx_pp":
            keys_orig = _unit(original.train[1:, index.reshape(-1)].mean(0))
            kl = _kl(_unit(original.test.astype(np.float64)), keys_orig, original.text)
            kl = (kl - kl.min()) / (kl.max() - kl.min()) * (aff.max() - aff.min()) + aff.min()
            expected = expected - hp["gamma"] * kl @ onehot
        np.testing.assert_allclose(test_logits, expected, rtol=2e-4, atol=2e-3)
        assert record["imo_adapters"] == str(trained)
        assert record["imo_weights_id"] == adapted_clip.weights_id
