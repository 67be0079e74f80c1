"""Known answers for the linear-probe family (ZS-LP, CLAP, LP++, TaskRes, cross-modal LP).

Each method against an independent NumPy restatement of its official code: the
initialisation, the objective on a batch (with a padding row), the optimizer's
trajectory (the official loop, written out epoch by epoch with hand-derived
gradients; learning rates from PyTorch's own ``CosineAnnealingLR`` behind the
official warmup) and the prediction. The references work on flat arrays of N = C·K
support rows, as the official codes do.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.engine.run import RunDir, Sources, run_experiment
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.features import synthetic
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.methods import clap as clap_lib
from jaxclip_fs.methods.base import as_arrays, logits, training_loss
from jaxclip_fs.methods.optimizers import epoch_cosine
from jaxclip_fs.methods.search import accuracy
from jaxclip_fs.methods.task import make_evalset, make_task
from jaxclip_fs.pipelines.features import GivenFeatures
from jaxclip_fs.train.fit import fit
from runs import pad_task

from oracles import lazy
from test_sweep import read_records
from numpy_ref import unit as _unit, softmax as _softmax

torch = lazy("torch")

C, K, D, M = 4, 3, 8, 9
N = C * K
# CLIP's scale is 100; at 20 no class's gradient sinks to float32 rounding (which Adam would
# normalise into whole steps), so the float64 references stay comparable
TAU = 20.0


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((C, D))
    support = (centres[None, :, None, :] + 0.9 * rng.standard_normal((3, C, K, D))) * 3.0
    text = _unit(centres + 0.8 * rng.standard_normal((C, D)))
    labels = rng.integers(0, C, M)
    queries = (centres[labels] + 0.9 * rng.standard_normal((M, D))) * 2.0
    support = support.astype(np.float32)
    return {
        "support": support.astype(np.float64),
        "text": text,
        "labels": np.repeat(np.arange(C), K),  # flat item n = c·K + k has label c
        "queries": queries,
        "query_labels": labels,
        # validation sets whose accuracy moves during the short trainings below: the support's
        # plain view (LP++ trains on view 1) and its view 1 (the one-view tasks train on view 0)
        "val0": make_evalset(support[0].reshape(N, D), np.repeat(np.arange(C), K)),
        "val1": make_evalset(support[1].reshape(N, D), np.repeat(np.arange(C), K)),
        # one view (view 0 only): the trainer's view choice is then fixed
        "task1": make_task(support[:1], text, TAU),
        # three views (view 0 plain, views 1-2 augmented)
        "task3": make_task(support, text, TAU),
    }


def _flat(data, view):
    return _unit(data["support"][view].reshape(N, D))


def _hp(name, **values):
    return as_arrays({**methods.get(name).defaults(None, D), **values})


def _fit(method, task, hp, epochs, val=None):
    run = jax.jit(functools.partial(fit, method, batch_size=256, max_epochs=epochs))
    return run(jax.random.key(0), task, val, hp)


def _torch_cosine(lr, period, count):
    """The first ``count`` learning rates of PyTorch's ``CosineAnnealingLR(T_max=period)``."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=period)
    rates = []
    for _ in range(count):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def _dassl_lrs(lr, epochs):
    """Dassl's lr per epoch: the constant warmup (1e-5) for epoch 0, then PyTorch's
    ``CosineAnnealingLR(T_max=epochs)`` from its start, stepped once per epoch."""
    return [1e-5] + _torch_cosine(lr, epochs, epochs - 1)


@pytest.mark.oracle
def test_epoch_cosine_is_dassls_schedule():
    """The per-update lr of :func:`epoch_cosine` (3 updates per epoch) is Dassl's per-epoch lr."""
    epochs, per_epoch = 7, 3
    schedule = epoch_cosine(0.1, epochs * per_epoch, epochs)
    ours = [float(schedule(t)) for t in range(epochs * per_epoch)]
    np.testing.assert_allclose(ours, np.repeat(_dassl_lrs(0.1, epochs), per_epoch), rtol=1e-5)


# --- ZS-LP and CLAP (jusiro/CLAP trainers/adapters.py) ---------------------------------------

def _cos_probe_grad(w, x, y, weights):
    """d mean_w CE(τ x ŵᵀ, y) / dw, through the prototype normalisation (forward_lp)."""
    norms = np.linalg.norm(w, axis=-1, keepdims=True)
    w_hat = w / norms
    g = (_softmax(TAU * x @ w_hat.T) - np.eye(C)[y]) * (weights / weights.sum())[:, None]
    d_hat = TAU * g.T @ x
    return (d_hat - np.sum(d_hat * w_hat, axis=-1, keepdims=True) * w_hat) / norms


def numpy_clap(x, y, text, r, epochs, lam=None, adaptive=False, lr=0.1, momentum=0.9):
    """The official loop on one full batch per epoch: SGD(momentum) on the prototypes,
    CE (+ mean_c λ_c ‖w_c - t_c‖²), Dassl's lr per epoch, outer_step after each epoch."""
    w, buffer, rho = r * text.copy(), np.zeros_like(text), np.zeros(C)
    lrs = _dassl_lrs(lr, epochs)
    for epoch in range(epochs):
        grad = _cos_probe_grad(w, x, y, np.ones(len(y)))
        if lam is not None:
            grad = grad + 2.0 * lam[:, None] * (w - r * text) / C  # torch.mean over classes
        buffer = momentum * buffer + grad
        w = w - lrs[epoch] * buffer
        if adaptive:  # phr: λ ← max(λ + ρ h, 0), ρ ← h
            h = np.sum((w - r * text) ** 2, axis=-1)
            raised = lam + rho * h
            lam, rho = np.where(raised >= 0, raised, 0.0), h
    return w, lam, rho


def _clap_lambda(data):
    """init_lagrangian_multipliers: mean zero-shot softmax of the true class over the augmented
    views (views 1 and 2)."""
    x = np.concatenate([_flat(data, 1), _flat(data, 2)])
    y = np.concatenate([data["labels"]] * 2)
    probs = _softmax(TAU * x @ data["text"].T)
    return np.array([probs[y == c, c].mean() for c in range(C)])


def test_zs_lp_init_objective_prediction(data):
    method, hp = methods.get("zs_lp"), _hp("zs_lp", text_norm=2.5)
    params = method.init(jax.random.key(0), data["task3"], hp)
    np.testing.assert_allclose(np.asarray(params["w"]), 2.5 * data["text"], rtol=1e-6)
    rng = np.random.default_rng(3)
    w = 2.5 * data["text"] + 0.3 * rng.standard_normal((C, D))
    x_raw, y = data["support"][1].reshape(N, D), data["labels"]
    weights = np.ones(N)
    weights[-1] = 0.0  # a padding row of a partial batch
    z = TAU * _unit(x_raw) @ _unit(w).T
    nll = -np.log(_softmax(z)[np.arange(N), y])
    expected = np.sum(weights * nll) / weights.sum()
    loss, _ = training_loss(method, {"w": jnp.asarray(w, jnp.float32)}, data["task3"],
                            jnp.asarray(x_raw, jnp.float32), jnp.asarray(y),
                            jnp.asarray(weights, jnp.float32), hp)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    ours = logits(method, {"w": jnp.asarray(w, jnp.float32)}, data["task3"],
                  jnp.asarray(data["queries"], jnp.float32), hp)
    np.testing.assert_allclose(np.asarray(ours), TAU * _unit(data["queries"]) @ _unit(w).T,
                               rtol=1e-5, atol=1e-4)


@pytest.mark.oracle
@pytest.mark.parametrize("text_norm", [1.0, 3.0])
def test_zs_lp_trajectory(data, text_norm):
    epochs = 6
    params, _ = _fit(methods.get("zs_lp"), data["task1"], _hp("zs_lp", epochs=epochs,
                                                              text_norm=text_norm), epochs)
    w, _, _ = numpy_clap(_flat(data, 0), data["labels"], data["text"], text_norm, epochs)
    np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=2e-4, atol=2e-5)


def test_clap_init_objective(data):
    method, hp = methods.get("clap"), _hp("clap", text_norm=2.0)
    params = method.init(jax.random.key(0), data["task3"], hp)
    lam = _clap_lambda(data)
    np.testing.assert_allclose(np.asarray(params["lam"]), lam, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(4)
    w = 2.0 * data["text"] + 0.3 * rng.standard_normal((C, D))
    x_raw, y = data["support"][2].reshape(N, D), data["labels"]
    nll = -np.log(_softmax(TAU * _unit(x_raw) @ _unit(w).T)[np.arange(N), y])
    expected = nll.mean() + np.mean(lam * np.sum((w - 2.0 * data["text"]) ** 2, axis=-1))
    loss, _ = training_loss(method, {**params, "w": jnp.asarray(w, jnp.float32)}, data["task3"],
                            jnp.asarray(x_raw, jnp.float32), jnp.asarray(y),
                            jnp.ones(N, jnp.float32), hp)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.oracle
@pytest.mark.parametrize("constraint", ["l2", "adaptive"])
def test_clap_trajectory(data, constraint):
    """The CLAP loop (λ from the single view here) for both constraints: prototypes, and for
    ``adaptive`` the multipliers and penalty parameters after every epoch's outer step. (lr
    0.01: at 0.1 the adaptive multipliers of these unit prototypes grow until SGD diverges --
    in both implementations alike.)"""
    epochs, adaptive = 7, constraint == "adaptive"
    method = methods.get("clap", constraint=constraint)
    params, _ = _fit(method, data["task1"], _hp("clap", epochs=epochs, lr=0.01), epochs)
    x, y = _flat(data, 0), data["labels"]
    lam0 = np.array([_softmax(TAU * x @ data["text"].T)[y == c, c].mean() for c in range(C)])
    w, lam, rho = numpy_clap(x, y, data["text"], 1.0, epochs, lam=lam0, adaptive=adaptive,
                             lr=0.01)
    np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(params["lam"]), lam, rtol=2e-4, atol=1e-6)
    if adaptive:
        assert not np.allclose(lam, lam0)  # the outer steps moved the multipliers
        np.testing.assert_allclose(np.asarray(params["rho"]), rho, rtol=2e-4, atol=1e-6)
    else:
        assert "rho" not in params


# --- LP++ (FereshteShakeri/FewShot-CLIP-Strong-Baseline methods/linear_probe_p2.py) ----------

def _lp_pp_logits(params, x, text):
    return x @ params["w"].T + params["b"] + params["alpha"] * (x @ text.T)


def numpy_lp_pp_init(x, y, text, shots):
    """centroids (per-class sums), calculate_init_alpha, calculate_lr_w, calculate_lr_alpha."""
    w = np.stack([x[y == c].sum(0) for c in range(C)])  # the /count is commented out
    z = x @ text.T
    alpha_tilde = np.array([z[y == c, c].mean() for c in range(C)])  # one_hot * z: diagonal
    alpha0 = np.mean(250.0 / shots * (alpha_tilde * shots))
    lr_w = 4 * len(x) / np.linalg.eigvalsh(x.T @ x).max()
    lr_alpha = len(x) / (np.max(np.sum(z ** 2, axis=0)) * 4)
    return w, alpha0, lr_w, lr_alpha


def numpy_lp_pp(x, y, text, params, epochs, val_x=None, val_y=None, momentum=0.9):
    """The official epoch loop: full-batch CE, SGD(momentum, lr_w) on W and b, α -= lr_α · its
    never-zeroed gradient every 10th epoch; returns the params after every epoch and, with a
    validation set, its accuracy after every epoch."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    buffers = {"w": np.zeros_like(p["w"]), "b": np.zeros_like(p["b"])}
    alpha_grad = np.zeros_like(p["alpha"])
    history, accuracies = [], []
    for epoch in range(epochs):
        g = (_softmax(_lp_pp_logits(p, x, text)) - np.eye(C)[y]) / len(y)
        grads = {"w": g.T @ x, "b": g.sum(0)}
        alpha_grad = alpha_grad + np.sum(g * (x @ text.T), axis=0)
        for k in ("w", "b"):
            buffers[k] = momentum * buffers[k] + grads[k]
            p[k] = p[k] - p["lr_w"] * buffers[k]
        if (epoch + 1) % 10 == 0:
            p["alpha"] = p["alpha"] - p["lr_alpha"] * alpha_grad
        history.append({k: v.copy() for k, v in p.items()})
        if val_x is not None:
            accuracies.append(np.mean(_lp_pp_logits(p, val_x, text).argmax(1) == val_y))
    return history, accuracies


def test_lp_pp_init_objective_prediction(data):
    method, hp = methods.get("lp_pp"), _hp("lp_pp")
    params = jax.jit(method.init)(jax.random.key(5), data["task3"], hp)
    x, y = _flat(data, 1), data["labels"]  # the first augmented view
    w, alpha0, lr_w, lr_alpha = numpy_lp_pp_init(x, y, data["text"], K)
    np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params["alpha"]), np.full(C, alpha0), rtol=1e-5)
    assert float(params["lr_w"]) == pytest.approx(lr_w, rel=1e-4)
    assert float(params["lr_alpha"]) == pytest.approx(lr_alpha, rel=1e-5)
    bias = np.asarray(params["b"])
    assert np.all(np.abs(bias) <= 1 / np.sqrt(D)) and len(np.unique(bias)) == C  # nn.Linear
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    expected = -np.mean(np.log(_softmax(_lp_pp_logits(p, x, data["text"]))[np.arange(N), y]))
    loss, _ = training_loss(method, params, data["task3"], jnp.zeros((N, D)),
                            jnp.zeros(N, jnp.int32), jnp.ones(N), hp)  # (the batch is unused)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    ours = logits(method, params, data["task3"], jnp.asarray(data["queries"], jnp.float32), hp)
    np.testing.assert_allclose(np.asarray(ours),
                               _lp_pp_logits(p, _unit(data["queries"]), data["text"]),
                               rtol=1e-5, atol=1e-4)


def test_lp_pp_trajectory_and_best_epoch(data):
    """23 epochs (α steps after epochs 10 and 20): the final iterate, and with validation the
    first best epoch's params."""
    epochs, hp = 23, _hp("lp_pp", epochs=23)
    method = methods.get("lp_pp")
    final, _ = _fit(method.keeping_final(), data["task3"], hp, epochs)
    x, y = _flat(data, 1), data["labels"]
    init = jax.jit(method.init)(jax.random.fold_in(jax.random.key(0), 0), data["task3"], hp)
    history, accuracies = numpy_lp_pp(x, y, data["text"], init, epochs, _flat(data, 0), y)
    for key in ("w", "b", "alpha"):
        np.testing.assert_allclose(np.asarray(final[key]), history[-1][key], rtol=1e-3, atol=1e-4)
    assert not np.allclose(history[-1]["alpha"], np.asarray(init["alpha"]))  # α moved
    chosen, info = _fit(method, data["task3"], hp, epochs, val=data["val0"])
    best = int(np.argmax(accuracies))  # first best (the official >= keeps the last of a tie)
    assert int(info["best_epoch"]) == best and 0 < best < epochs - 1
    np.testing.assert_allclose(np.asarray(chosen["w"]), history[best]["w"], rtol=1e-3, atol=1e-4)


# --- TaskRes (geekyutao/TaskRes trainers/taskres.py) ------------------------------------------

def numpy_taskres(x, y, text, r, scale, epochs, lr=2e-3, weight_decay=5e-4):
    """Dassl's loop: Adam (coupled L2 decay, PyTorch semantics) on the residual, one full batch
    per epoch, Dassl's lr per epoch."""
    residual, m, v = np.zeros_like(text), np.zeros_like(text), np.zeros_like(text)
    lrs = _dassl_lrs(lr, epochs)
    for t in range(1, epochs + 1):
        base = r * text + scale * residual
        grad = scale * _cos_probe_grad(base, x, y, np.ones(len(y))) + weight_decay * residual
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        step = (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        residual = residual - lrs[t - 1] * step
    return residual


@pytest.mark.oracle
def test_taskres_init_trajectory_prediction(data):
    epochs, method = 8, methods.get("taskres")
    hp = _hp("taskres", epochs=epochs, text_norm=2.0, alpha=0.7)
    params = method.init(jax.random.key(0), data["task1"], hp)
    assert not np.any(np.asarray(params["residual"]))  # R starts at 0: zero-shot CLIP
    trained, _ = _fit(method, data["task1"], hp, epochs)
    residual = numpy_taskres(_flat(data, 0), data["labels"], data["text"], 2.0, 0.7, epochs)
    np.testing.assert_allclose(np.asarray(trained["residual"]), residual, rtol=1e-3, atol=1e-6)
    ours = logits(method, trained, data["task1"], jnp.asarray(data["queries"], jnp.float32), hp)
    classifier = _unit(2.0 * data["text"] + 0.7 * residual)
    np.testing.assert_allclose(np.asarray(ours), TAU * _unit(data["queries"]) @ classifier.T,
                               rtol=1e-4, atol=1e-3)
    assert methods.get("taskres").defaults("oxford_flowers", D)["alpha"] == 1.0
    assert methods.get("taskres").defaults("imagenet", D)["lr"] == 2e-4


# --- cross-modal linear probe (linzhiqiu/cross_modal_adaptation train.py) ---------------------

def _cross_modal_lrs(lr, steps, warmup=50):
    """LinearWarmupScheduler: 1e-5 at iteration 0, lr·i/50 below 50, then PyTorch's
    CosineAnnealingLR(T_max=steps) from its start."""
    return ([1e-5] + [lr * i / warmup for i in range(1, warmup)]
            + _torch_cosine(lr, steps, steps - warmup))


def numpy_cross_modal(x, y, text, steps, lr=1e-3, weight_decay=0.01):
    """Full-batch steps: ½ CE(images) + ½ CE(class texts), AdamW (PyTorch); W after each."""
    w, m, v = text.copy(), np.zeros_like(text), np.zeros_like(text)
    lrs, history = _cross_modal_lrs(lr, steps), []
    for t in range(1, steps + 1):
        g_img = (_softmax(TAU * x @ w.T) - np.eye(C)[y]) / len(y)
        g_txt = (_softmax(TAU * text @ w.T) - np.eye(C)) / C
        grad = 0.5 * TAU * (g_img.T @ x + g_txt.T @ text)
        w = w * (1 - lrs[t - 1] * weight_decay)  # decoupled decay first
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        w = w - lrs[t - 1] * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        history.append(w.copy())
    return history


def test_cross_modal_objective_init_prediction(data):
    method, hp = methods.get("cross_modal_lp"), _hp("cross_modal_lp")
    params = method.init(jax.random.key(0), data["task3"], hp)
    np.testing.assert_allclose(np.asarray(params["w"]), data["text"], rtol=1e-6)
    rng = np.random.default_rng(5)
    w = data["text"] + 0.2 * rng.standard_normal((C, D))
    x_raw, y = data["support"][1].reshape(N, D), data["labels"]
    image = -np.log(_softmax(TAU * _unit(x_raw) @ w.T)[np.arange(N), y])
    text = -np.log(np.diag(_softmax(TAU * data["text"] @ w.T)))
    loss, _ = training_loss(method, {"w": jnp.asarray(w, jnp.float32)}, data["task3"],
                            jnp.asarray(x_raw, jnp.float32), jnp.asarray(y), jnp.ones(N), hp)
    assert float(loss) == pytest.approx(0.5 * image.mean() + 0.5 * text.mean(), rel=1e-5)
    ours = logits(method, {"w": jnp.asarray(w, jnp.float32)}, data["task3"],
                  jnp.asarray(data["queries"], jnp.float32), hp)
    np.testing.assert_allclose(np.asarray(ours), TAU * _unit(data["queries"]) @ w.T,
                               rtol=1e-5, atol=1e-4)


@pytest.mark.oracle
def test_cross_modal_trajectory_and_early_stopping(data):
    """90 full-batch steps (warmup, then cosine): the last iterate; then, at lr 0.01 so that the
    validation accuracy moves, the checks every 10 updates (shrunk from 100) after updates 0,
    10, ..., 80 and the first best kept. (Compared where the gradients are not vanishing: Adam
    turns float32 rounding of ~0 gradients into whole steps.)"""
    steps, every = 90, 10
    method = methods.get("cross_modal_lp")
    method = dataclasses.replace(method, training=dataclasses.replace(method.training,
                                                                      eval_every=every))
    for lr in (1e-3, 1e-2):
        hp = _hp("cross_modal_lp", steps=steps, batch_size=16, lr=lr, weight_decay=0.01)
        history = numpy_cross_modal(_flat(data, 0), data["labels"], data["text"], steps, lr=lr)
        if lr == 1e-3:
            final, _ = jax.jit(functools.partial(fit, method.keeping_final(), batch_size=16,
                                                 max_epochs=steps))(
                jax.random.key(0), data["task1"], None, hp)
            np.testing.assert_allclose(np.asarray(final["w"]), history[-1], rtol=1e-3,
                                       atol=1e-4)
            continue
        chosen, info = jax.jit(functools.partial(fit, method, batch_size=16, max_epochs=steps))(
            jax.random.key(0), data["task1"], data["val1"], hp)
        checks = list(range(0, steps, every))
        accuracies = [np.mean((_flat(data, 1) @ history[t].T).argmax(1) == data["labels"])
                      for t in checks]
        best = checks[int(np.argmax(accuracies))]
        assert 0 < best < checks[-1]
        np.testing.assert_allclose(np.asarray(chosen["w"]), history[best], rtol=1e-3, atol=1e-4)
        assert int(info["best_epoch"]) == best  # one full-batch update per epoch
    assert methods.get("cross_modal_lp").training.eval_every == 100  # the official EVAL_FREQ


def test_clap_lambda_helper_ignores_padding(data):
    """λ over the real items only: a task padded with classes and shots gives the same λ."""
    task = data["task3"]
    padded = pad_task(task, C + 2, K + 2)
    lam = np.asarray(clap_lib.zero_shot_true_class_probability(task))
    lam_padded = np.asarray(clap_lib.zero_shot_true_class_probability(padded))
    np.testing.assert_allclose(lam_padded[:C], lam, rtol=1e-6)
    assert np.all(lam_padded[C:] == 0)


# --- on a CLIP-like task: every probe beats zero-shot CLIP and its own initialisation ---------

PROBES = ("zs_lp", "clap", "lp_pp", "taskres", "cross_modal_lp")


@pytest.mark.slow
def test_on_a_clip_like_task_every_probe_beats_zero_shot_and_its_initialisation(tmp_path):
    """A synthetic CLIP-like 16-shot feature set (``make_task``: image clusters in a narrow cone,
    text prototypes displaced from the class means along shared confusion directions, so
    zero-shot CLIP is imperfect): at their default settings, under ``fair`` and
    ``validation_free``, every probe is more accurate than zero-shot CLIP, and than its own
    initial parameters (for all but LP++ these are zero-shot CLIP)."""
    fs = synthetic.make_task(3, num_classes=8, dim=32, shots=16, views=5, val_per_class=8,
                             test_per_class=30)
    config = config_lib.ExperimentConfig(
        methods=tuple(config_lib.MethodConfig(m) for m in ("zero_shot",) + PROBES),
        data=config_lib.DataConfig(datasets=("synthetic",)),
        protocol=config_lib.ProtocolConfig(names=("fair", "validation_free")),
        grid=config_lib.GridConfig(shots=(16,), seeds=(1,)))
    run_experiment(config, RunDir(str(tmp_path)), progress=False, log=None,
                   sources=Sources(features=GivenFeatures({"synthetic": fs})))
    records = {(c.method, c.protocol): r for c, r in read_records(str(tmp_path)).items()}
    task = make_task(fs.train[:, support_index(fs, 16, 1)], fs.text, fs.logit_scale)
    test = make_evalset(fs.test, fs.test_labels)
    zero_shot = records["zero_shot", "fair"]["accuracy"]
    assert zero_shot < 90.0  # zero-shot CLIP leaves room to adapt
    for name in PROBES:
        method = methods.get(name)
        hp = as_arrays(method.defaults("synthetic", fs.dim))
        params = jax.jit(method.init)(jax.random.key(0), task, hp)
        initial = float(accuracy(logits(method, params, task, test.features, hp), test))
        for protocol in ("fair", "validation_free"):
            found = records[name, protocol]["accuracy"]
            assert found > zero_shot + 5.0 and found > initial + 5.0, (name, protocol, found,
                                                                       zero_shot, initial)
