"""The method protocol composes: a method trained by another optimizer and a closed-form method
are each a few lines, register, run through ``run_experiment`` and give the numbers an
independent NumPy computation gives."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxclip_fs import methods
from jaxclip_fs.catalogue import Card
from jaxclip_fs.engine.run import RunDir, Sources, run_experiment
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.io.checkpoints import restore_tree
from jaxclip_fs.methods import hparams
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Training
from jaxclip_fs.methods.cache import l2_normalize
from jaxclip_fs.methods.optimizers import Optimizer, cosine_decay
from jaxclip_fs.pipelines.features import GivenFeatures

from test_sweep import read_records
from numpy_ref import unit as _unit

SHOTS, SEEDS = (1, 4), (1, 2)
FS = make_task(3, num_classes=5, dim=12, shots=4, views=1, val_per_class=3, test_per_class=9)


# --- a linear probe trained by full-batch SGD with a cosine schedule (in under 30 lines) --------

SGD_LR = hparams.HParam("lr", "train", "SGD step size (cosine decay per step)", minimum=0.0,
                        strictly_positive=True)


def sgd_probe():
    """``logits = s · x̂ Wᵀ``, W initialised at the text classifier, then full-batch SGD."""
    def init(key, task, hp):
        return {"w": task.text}

    def precompute(params, task, queries, query_mask):
        return task.logit_scale * l2_normalize(queries) @ params["w"].T

    def sgd(hp, steps, params):
        return optax.sgd(cosine_decay(hp["lr"], steps))

    return Method(Card("sgd_probe", summary="s · x̂ Wᵀ, W learned by full-batch SGD"),
                  Compute(init=init, precompute=precompute),
                  Hyperparameters(defaults=lambda dataset, dim: {"epochs": 6, "lr": 0.02}),
                  Training(("w",), optimizer=Optimizer(sgd, (SGD_LR,)), full_batch=True,
                           epoch_selection="final"))


def sgd_probe_in_steps():
    """The same probe counting optimizer updates: 6 full-batch steps are its 6 epochs."""
    method = sgd_probe()
    return dataclasses.replace(
        method, card=Card("sgd_probe_steps"),
        hyper=Hyperparameters(defaults=lambda dataset, dim: {"steps": 6, "lr": 0.02}),
        training=dataclasses.replace(method.training, unit="steps"))


# --- a closed-form ridge probe: solved in init, no training (in under 30 lines) --------------

LAMBDA = hparams.HParam("lam", "fixed", "ridge regularisation strength", minimum=0.0)


def ridge_probe():
    """``W = (XᵀX + λI)⁻¹ Xᵀ Y`` on the L2-normalised support, ``logits = x̂ W``."""
    def init(key, task, hp):
        x = l2_normalize(task.support[0]) * task.support_mask[..., None]  # [C, K, D]
        y = jnp.eye(x.shape[0])[:, None, :] * task.support_mask[..., None]  # [C, K, C]
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        gram = x.T @ x + hp["lam"] * jnp.eye(x.shape[-1])
        return {"w": jnp.linalg.solve(gram, x.T @ y)}

    def precompute(params, task, queries, query_mask):
        return l2_normalize(queries) @ params["w"]

    return Method(Card("ridge_probe", summary="x̂ (XᵀX + λI)⁻¹ XᵀY"),
                  Compute(init=init, precompute=precompute),
                  Hyperparameters((LAMBDA,), lambda dataset, dim: {"lam": 0.5}))


# --- their NumPy restatements ------------------------------------------------------------------

def _support(shots, seed):
    """The cell's support (the nested sampler's rows), L2-normalised, and its labels."""
    rows = support_index(FS, shots, seed)  # [C, K]
    x = _unit(FS.train[0][rows].astype(np.float64)).reshape(-1, FS.dim)
    return x, np.repeat(np.arange(FS.num_classes), shots)


def _accuracy(scores):
    return 100.0 * np.mean(scores.argmax(1) == FS.test_labels)


def numpy_sgd_probe(shots, seed, epochs=6, lr=0.02):
    """(W [C, D], test accuracy)."""
    x, y = _support(shots, seed)
    w, onehot, scale = FS.text.astype(np.float64), np.eye(FS.num_classes)[y], FS.logit_scale
    for t in range(epochs):  # one full-batch step per epoch, lr · ½ (1 + cos(π t / T))
        z = scale * x @ w.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = scale * (p - onehot).T @ x / len(y)  # d mean CE / dW
        w = w - lr * 0.5 * (1 + np.cos(np.pi * t / epochs)) * grad
    return w, _accuracy(_unit(FS.test.astype(np.float64)) @ w.T)


def numpy_ridge_probe(shots, seed, lam=0.5):
    """(W [D, C], test accuracy)."""
    x, y = _support(shots, seed)
    w = np.linalg.solve(x.T @ x + lam * np.eye(FS.dim), x.T @ np.eye(FS.num_classes)[y])
    return w, _accuracy(_unit(FS.test.astype(np.float64)) @ w)


@pytest.mark.parametrize("factory, reference", [(sgd_probe, numpy_sgd_probe),
                                                (sgd_probe_in_steps, numpy_sgd_probe),
                                                (ridge_probe, numpy_ridge_probe)])
def test_a_method_written_in_a_test_runs_through_run_experiment(tmp_path, factory, reference):
    name = factory().name
    methods.register(factory)
    try:
        config = config_lib.ExperimentConfig(
            methods=(config_lib.MethodConfig(name),),
            data=config_lib.DataConfig(datasets=("synthetic",)),
            protocol=config_lib.ProtocolConfig(names=("fair", "validation_free")),
            grid=config_lib.GridConfig(shots=SHOTS, seeds=SEEDS),
            execution=config_lib.ExecutionConfig(save_params="all"))
        run_experiment(config, RunDir(str(tmp_path)), progress=False, log=None,
                       sources=Sources(features=GivenFeatures({"synthetic": FS})))
    finally:
        methods.unregister(name)
    records = read_records(str(tmp_path))
    assert len(records) == 2 * len(SHOTS) * len(SEEDS)
    for cell, record in records.items():
        w, accuracy = reference(cell.shots, cell.seed)
        tree, _ = restore_tree(str(tmp_path / record["params_checkpoint"]))
        g, t = record["params_row"]
        np.testing.assert_allclose(tree["w"][g, t], w, rtol=1e-4, atol=1e-5)
        assert record["accuracy"] == pytest.approx(accuracy, abs=1e-4)
        assert record["searched"] == [] and record["method"] == name
        trained = factory is not ridge_probe
        assert record["best_epoch"] == (5 if trained else None)
        assert record["epoch_selection"] == ("final" if trained else None)
        assert (record["val_accuracy"] is None) == (cell.protocol == "validation_free")
    accuracies = {record["accuracy"] for record in records.values()}
    assert len(accuracies) > 1  # the cells differ: real numbers, not one constant


def test_the_probes_declare_only_what_they_use():
    """The SGD probe declares its loop and its optimizer's names -- no AdamW eps / weight decay,
    no batch size (full batch); the closed-form probe trains nothing."""
    sgd, ridge = sgd_probe(), ridge_probe()
    assert [h.name for h in sgd.hparams] == ["epochs", "lr"] and sgd.trains
    assert sgd.hparam_specs["lr"] is SGD_LR
    assert [h.name for h in ridge.hparams] == ["lam"] and not ridge.trains
    assert ridge.training is None and ridge.epoch_selection is None
    for method in (sgd, ridge):
        methods.register(lambda method=method: method)
        methods.unregister(method.name)
