"""The trainer: optimiser and schedule vs PyTorch, per-task step counts, sampling, selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs.train.trainer import class_major_data, epoch_plan, train
from oracles import lazy

torch = lazy("torch")

GRAD = np.array([0.5, -2.0, 1e-3])


def _torch_trajectory(steps_per_epoch, epochs, lr, eps, weight_decay):
    """PyTorch AdamW + CosineAnnealingLR (per batch), constant gradient; params after each epoch."""
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64))
    opt = torch.optim.AdamW([theta], lr=lr, eps=eps, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps_per_epoch * epochs)
    out = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            opt.zero_grad()
            theta.grad = torch.tensor(GRAD, dtype=torch.float64)
            opt.step()
            sched.step()
        out.append(theta.detach().numpy().copy())
    return np.stack(out)


def _linear_loss(params, inputs, labels, weights):
    """Weighted mean of θ·g over the batch: gradient g whatever the batch holds."""
    per_item = jnp.full(labels.shape, jnp.dot(params["theta"], jnp.asarray(GRAD, jnp.float32)))
    return jnp.sum(weights * per_item) / jnp.sum(weights), {}


@pytest.mark.oracle
def test_adamw_cosine_and_per_task_step_counts_match_pytorch():
    """Two tasks of different sizes and epochs in one vmapped program, each equal to PyTorch."""
    batch, lr, eps, wd = 5, 0.05, 1e-4, 0.1
    inputs = jnp.zeros((3, 3, 4, 1))  # V=3, C=3, K=4
    full = jnp.ones((3, 4))
    partial = full.at[:, 2:].set(0.0).at[0, 2].set(1.0)  # 7 real items
    target = {}
    for name, mask, epochs in (("full", full, 4), ("partial", partial, 3)):
        n = int(mask.sum())
        traj = _torch_trajectory(-(-n // batch), epochs, lr, eps, wd)
        target[name] = traj[len(traj) // 2]  # validation peaks mid-training

    def run(mask, epochs, goal):
        def score(p):
            return -jnp.sum((p["theta"] - goal) ** 2)
        settings = {"epochs": epochs, "lr": lr, "eps": eps, "weight_decay": wd}
        return train(_linear_loss, score, {"theta": jnp.asarray([0.3, -0.1, 0.2])}, ("theta",),
                     class_major_data(inputs, mask), jax.random.key(0), settings, batch_size=batch,
                     max_epochs=4)

    params, info = jax.jit(jax.vmap(run))(
        jnp.stack([full, partial]), jnp.asarray([4, 3]),
        jnp.asarray(np.stack([target["full"], target["partial"]])))
    for i, (name, mask, epochs) in enumerate((("full", full, 4), ("partial", partial, 3))):
        traj = _torch_trajectory(-(-int(mask.sum()) // batch), epochs, lr, eps, wd)
        best = len(traj) // 2
        assert int(info["best_epoch"][i]) == best
        np.testing.assert_allclose(np.asarray(params["theta"][i]), traj[best], rtol=1e-4, atol=1e-5)
        scores = np.asarray(info["scores"][i])
        assert np.all(np.isnan(scores[epochs:])) and np.all(np.isfinite(scores[:epochs]))
        assert int(np.argmax(scores[:epochs])) == best


def test_epoch_plan_visits_each_real_item_once_with_augmented_views():
    mask = jnp.ones((4, 5)).at[1, 3:].set(0.0).at[3].set(0.0)
    real = set(int(i) for i in np.flatnonzero(np.asarray(mask).reshape(-1)))
    orders = []
    for epoch in range(3):
        order, views = epoch_plan(jax.random.key(1), mask, 4, epoch)
        order, views = np.asarray(order), np.asarray(views)
        assert set(order[:len(real)].tolist()) == real  # each real item once, padding last
        assert views.min() >= 1 and views.max() <= 3  # augmented views only (view 0 is clean)
        orders.append(order[:len(real)].tolist())
    assert orders[0] != orders[1]  # reshuffled every epoch
    single_view = np.asarray(epoch_plan(jax.random.key(1), mask, 1, 0)[1])
    assert np.all(single_view == 0)


def test_epoch_plan_gives_each_epoch_a_fresh_view_when_the_pool_has_enough():
    """V - 1 >= epochs augmented views: epoch e reads view 1 + e of every item (the official
    codes' fresh augmentation per epoch); fewer: each item draws one of them."""
    mask = jnp.ones((3, 4))
    for epoch in range(5):
        views = np.asarray(epoch_plan(jax.random.key(3), mask, 6, epoch, epochs=5)[1])
        assert np.all(views == 1 + epoch)
    drawn = np.stack([np.asarray(epoch_plan(jax.random.key(3), mask, 6, e, epochs=6)[1])
                      for e in range(6)])
    assert drawn.min() >= 1 and drawn.max() <= 5 and len(np.unique(drawn[0])) > 1
    np.testing.assert_array_equal(drawn, np.stack(
        [np.asarray(epoch_plan(jax.random.key(3), mask, 6, e)[1]) for e in range(6)]))
    traced = jax.jit(lambda e, n: epoch_plan(jax.random.key(3), mask, 6, e, n)[1])
    assert np.all(np.asarray(traced(2, 5)) == 3)  # epochs may be a traced per-task count


def test_epoch_plan_does_not_depend_on_padding():
    mask = jnp.ones((3, 2))
    padded = jnp.zeros((6, 5)).at[:3, :2].set(1.0)
    order, views = epoch_plan(jax.random.key(2), mask, 5, 7)
    order_p, views_p = epoch_plan(jax.random.key(2), padded, 5, 7)
    as_items = [(int(i) // 2, int(i) % 2) for i in np.asarray(order)]
    as_items_p = [(int(i) // 5, int(i) % 5) for i in np.asarray(order_p)[:6]]
    assert as_items == as_items_p
    np.testing.assert_array_equal(np.asarray(views).reshape(3, 2),
                                  np.asarray(views_p).reshape(6, 5)[:3, :2])


@pytest.mark.parametrize("batch", [4, 64])
def test_minibatches_are_weighted_means_over_real_items(batch):
    """With loss = mean of per-item values, an epoch's mean loss is the mean of its batches."""
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.standard_normal((2, 3, 4, 1)), jnp.float32)
    mask = jnp.ones((3, 4)).at[2, 1:].set(0.0)  # 9 real items

    def loss(params, x, labels, weights):
        return jnp.sum(weights * (x[:, 0] + 0.0 * params["theta"])) / jnp.sum(weights), {}

    settings = {"epochs": 1, "lr": 1e-3, "eps": 1e-8, "weight_decay": 0.0}
    _, info = train(loss, lambda p: 0.0, {"theta": jnp.zeros(())}, ("theta",),
                    class_major_data(inputs, mask), jax.random.key(0), settings, batch_size=batch,
                    max_epochs=1)
    order, views = epoch_plan(jax.random.key(0), mask, 2, 0)
    flat = np.asarray(inputs)[:, :, :, 0].reshape(2, -1)
    picked = flat[np.asarray(views)[np.asarray(order)[:9]], np.asarray(order)[:9]]
    steps = [picked[i:i + batch] for i in range(0, 9, batch)]
    np.testing.assert_allclose(float(info["losses"][0]), np.mean([s.mean() for s in steps]),
                               rtol=1e-5)


def _sgd(lr):
    """``steps -> optax.sgd(lr)`` (the trainer's optimizer argument)."""
    import optax
    return lambda steps: optax.sgd(lr)


def test_steps_mode_takes_exactly_its_steps_and_cuts_the_last_epoch_short():
    """Loss θ·g has gradient g whatever the batch: after n SGD steps of size lr, θ = θ0 - n lr g.
    Tasks of 7 and 12 real items (2 and 3 batches of 5 per epoch) with 5 and 8 steps, vmapped
    in one 8-step scan: each takes its own count (mid-epoch stops), per-epoch mean losses
    cover the epochs it touched, and the kept iterate is the final one."""
    inputs = jnp.zeros((1, 3, 4, 1))
    full = jnp.ones((3, 4))
    partial = full.at[:, 2:].set(0.0).at[0, 2].set(1.0)  # 7 real items
    theta0 = jnp.asarray([0.3, -0.1, 0.2])

    def run(mask, steps):
        return train(_linear_loss, None, {"theta": theta0}, ("theta",),
                     class_major_data(inputs, mask), jax.random.key(1), {"steps": steps},
                     batch_size=5, max_epochs=8, selection="final", unit="steps",
                     optimizer=_sgd(0.1))

    params, info = jax.jit(jax.vmap(run))(jnp.stack([partial, full]), jnp.asarray([5, 8]))
    for i, (steps, per_epoch) in enumerate(((5, 2), (8, 3))):
        np.testing.assert_allclose(np.asarray(params["theta"][i]),
                                   np.asarray(theta0) - steps * 0.1 * GRAD, rtol=1e-5)
        epochs = -(-steps // per_epoch)
        assert int(info["best_epoch"][i]) == epochs - 1
        losses = np.asarray(info["losses"][i])
        assert np.all(np.isfinite(losses[:epochs])) and np.all(np.isnan(losses[epochs:]))
    with pytest.raises(ValueError, match="final iterate"):
        train(_linear_loss, lambda p: 0.0, {"theta": theta0}, ("theta",),
              class_major_data(inputs, full), jax.random.key(1), {"steps": 3}, batch_size=5,
              max_epochs=3, unit="steps")


def test_steps_mode_validated_every_k_updates_keeps_the_best_check():
    """``eval_every = 4``: the iterates after updates 0, 4, 8 (0-based) are scored -- an
    iteration loop's ``if i % 4 == 0`` after its update -- and the best kept (θ after update t
    is θ0 - (t + 1) lr g under the constant gradient). Two tasks vmapped with their own step
    counts: a check past a task's steps is never scored; updates after the last check of the
    scan are not run."""
    inputs = jnp.zeros((1, 3, 4, 1))
    full = jnp.ones((3, 4))  # 12 items, batches of 5: 3 steps per epoch
    theta0 = jnp.asarray([0.3, -0.1, 0.2])

    def after(t):
        return np.asarray(theta0) - (t + 1) * 0.1 * GRAD

    def run(steps, goal):
        return train(_linear_loss, lambda p: -jnp.sum((p["theta"] - goal) ** 2),
                     {"theta": theta0}, ("theta",), class_major_data(inputs, full),
                     jax.random.key(1), {"steps": steps}, batch_size=5, max_epochs=10,
                     unit="steps", optimizer=_sgd(0.1), eval_every=4)

    goals = jnp.asarray(np.stack([after(4) + 0.01, after(9)]))  # best: update 4; update 8
    params, info = jax.jit(jax.vmap(run))(jnp.asarray([10, 6]), goals)
    np.testing.assert_allclose(np.asarray(params["theta"][0]), after(4), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(params["theta"][1]), after(4), rtol=1e-5)
    assert [int(e) for e in info["best_epoch"]] == [4 // 3, 4 // 3]
    scores = np.asarray(info["scores"])
    assert scores.shape == (2, 3) and np.all(np.isfinite(scores[0]))
    assert np.isfinite(scores[1, :2]).all() and np.isnan(scores[1, 2])  # check 8 >= 6 steps
    np.testing.assert_allclose(scores[0, 2], -np.sum((after(8) - np.asarray(goals[0])) ** 2),
                               rtol=1e-4)
    with pytest.raises(ValueError, match="epoch_end"):
        train(_linear_loss, None, {"theta": theta0}, ("theta",), class_major_data(inputs, full),
              jax.random.key(1), {"steps": 3}, batch_size=5, max_epochs=3, selection="final",
              unit="steps", optimizer=_sgd(0.1), epoch_end=lambda p: {})


def test_epoch_end_updates_state_after_each_of_a_tasks_own_epochs():
    """``epoch_end`` runs after every epoch's updates of each task (vmapped tasks with 2 and 4
    epochs): here it records θ and counts the epochs in the auxiliary state."""
    inputs = jnp.zeros((1, 3, 4, 1))
    mask = jnp.ones((3, 4))  # 12 items, batch 5: 3 steps per epoch
    theta0 = jnp.asarray([0.3, -0.1, 0.2])

    def epoch_end(params):
        return {"count": params["count"] + 1.0, "seen": params["theta"]}

    def run(epochs):
        return train(_linear_loss, None, {"theta": theta0, "count": jnp.zeros(()),
                                          "seen": jnp.zeros(3)}, ("theta",),
                     class_major_data(inputs, mask), jax.random.key(0), {"epochs": epochs},
                     batch_size=5, max_epochs=4, selection="final", optimizer=_sgd(0.1),
                     aux=("count", "seen"), epoch_end=epoch_end)

    params, _ = jax.jit(jax.vmap(run))(jnp.asarray([2, 4]))
    for i, epochs in enumerate((2, 4)):
        assert float(params["count"][i]) == epochs
        expected = np.asarray(theta0) - 3 * epochs * 0.1 * GRAD
        np.testing.assert_allclose(np.asarray(params["seen"][i]), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(params["theta"][i]), expected, rtol=1e-5, atol=1e-6)


def test_steps_mode_equals_epochs_mode_on_whole_epochs():
    """``steps = epochs · steps_per_epoch``: the same batches, views and updates as epochs."""
    rng = np.random.default_rng(2)
    inputs = jnp.asarray(rng.standard_normal((3, 3, 4, 2)), jnp.float32)
    mask = jnp.ones((3, 4)).at[1, 3].set(0.0)  # 11 real items: 3 batches of 4

    def loss(params, x, labels, weights):
        per_item = jnp.sum((x @ params["w"] - jax.nn.one_hot(labels, 3)) ** 2, axis=-1)
        return jnp.sum(weights * per_item) / jnp.sum(weights), {}

    settings = {"epochs": 4, "steps": 12, "lr": 1e-2, "eps": 1e-8, "weight_decay": 0.01}
    common = (loss, None, {"w": jnp.zeros((2, 3))}, ("w",), class_major_data(inputs, mask),
              jax.random.key(3), settings)
    by_epochs, a = train(*common, batch_size=4, max_epochs=4, selection="final")
    by_steps, b = train(*common, batch_size=4, max_epochs=12, selection="final", unit="steps")
    np.testing.assert_allclose(np.asarray(by_steps["w"]), np.asarray(by_epochs["w"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b["losses"][:4]), np.asarray(a["losses"]), rtol=1e-6)


def test_full_batch_is_one_step_over_every_real_item():
    """``batch_size=0``: one step per epoch on the weighted mean over all real items -- the same
    as a batch as large as the pool."""
    rng = np.random.default_rng(4)
    inputs = jnp.asarray(rng.standard_normal((1, 3, 4, 2)), jnp.float32)
    mask = jnp.ones((3, 4)).at[2, 1:].set(0.0)  # 9 real items

    def loss(params, x, labels, weights):
        per_item = jnp.sum((x @ params["w"] - jax.nn.one_hot(labels, 3)) ** 2, axis=-1)
        return jnp.sum(weights * per_item) / jnp.sum(weights), {}

    settings = {"epochs": 3, "lr": 0.05}
    common = (loss, None, {"w": jnp.zeros((2, 3))}, ("w",), class_major_data(inputs, mask),
              jax.random.key(0), settings)
    full, _ = train(*common, batch_size=0, max_epochs=3, selection="final", optimizer=_sgd(0.05))
    whole, _ = train(*common, batch_size=12, max_epochs=3, selection="final",
                     optimizer=_sgd(0.05))
    x = np.asarray(inputs)[0].reshape(12, 2)[np.asarray(mask).reshape(-1) > 0]
    y = np.eye(3)[np.repeat(np.arange(3), 4)[np.asarray(mask).reshape(-1) > 0]]
    w = np.zeros((2, 3))
    for _ in range(3):  # gradient descent on the mean squared error, by hand
        w = w - 0.05 * 2 * x.T @ (x @ w - y) / len(x)
    for found in (full, whole):
        np.testing.assert_allclose(np.asarray(found["w"]), w, rtol=1e-5, atol=1e-6)
