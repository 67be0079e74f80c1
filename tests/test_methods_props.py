"""Property tests over the method table (optax alias_test style): every method, same checks.

Tiny shapes (D = 8, C = 3-4, K = 2-3). Trainable methods are fitted with a
few short epochs so the trained path is covered too.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.methods import ape, ape_t, hparams, tip_adapter, tip_adapter_f
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.task import (
    make_evalset, make_task, stack, with_shots,
)
from jaxclip_fs.train import fit
from runs import pad_evalset, pad_task

# every registered method that reads CLIP features (image / paired methods have their own tests),
# and each other choice of its structural options (variant labels, e.g. clap[constraint=...])
NAMES = tuple(label for n in methods.names() if methods.get(n).inputs == "features"
              for label in [n] + [methods.get(n, **{o.name: choice}).label
                                  for o in methods.get(n).options for choice in o.choices[1:]])
D = 8
EPOCHS, BATCH = 3, 4


def _random_task(seed, num_classes=3, shots=3, views=3, rows=10):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, D))
    noise = rng.standard_normal((views, num_classes, shots, D))
    support = (centres[None, :, None, :] + 0.8 * noise) * 4.0
    text = centres + 0.7 * rng.standard_normal((num_classes, D))
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    labels = rng.integers(0, num_classes, rows)
    queries = (centres[labels] + 0.8 * rng.standard_normal((rows, D))) * 3.0
    return make_task(support, text, 100.0), make_evalset(queries, labels)


def _hp(method):
    """Defaults, the middle of each grid for search names without a default, short training."""
    values = dict(method.defaults(None, D))
    for name, grid in method.grid(None).items():
        values.setdefault(name, float(grid[len(grid) // 2]))
    if method.trainable:
        values.update(epochs=EPOCHS, batch_size=BATCH)
    return as_arrays(values)


def _logits_after_fit(method, key, task, val, hp, queries, query_mask=None):
    params = fit(method, key, task, val, hp, batch_size=BATCH, max_epochs=EPOCHS)[0]
    return logits(method, params, task, queries, hp, query_mask)


@functools.lru_cache(maxsize=None)
def _compiled(name, batched=False):
    """One jitted fit+logits per method (and one vmapped over tasks), shared by the tests."""
    run = functools.partial(_logits_after_fit, methods.get_variant(name))
    if batched:
        run = jax.vmap(run, in_axes=(0, 0, 0, None, 0, 0))
    return jax.jit(run)


@pytest.mark.parametrize("name", NAMES)
def test_jit_compiles_and_is_finite(name):
    task, val = _random_task(0)
    hp = _hp(methods.get_variant(name))
    out = _compiled(name)(jax.random.key(0), task, val, hp, val.features)
    assert out.shape == (10, 3)
    assert np.all(np.isfinite(np.asarray(out)))


# ``neutral`` is optional: the methods that declare values giving zero-shot's logits
NEUTRAL = tuple(n for n in NAMES if methods.get_variant(n).hyper.neutral is not None)


@pytest.mark.parametrize("name", NEUTRAL)
def test_neutral_hyperparameters_give_zero_shot(name):
    method = methods.get_variant(name)
    task, val = _random_task(1)
    hp = {**_hp(method), **as_arrays(method.hyper.neutral)}
    params = jax.jit(method.init)(jax.random.key(0), task, hp)  # APE-T's residual is 0 at init
    zero_shot = jax.jit(functools.partial(logits, methods.get("zero_shot")))
    expected = zero_shot({}, task, val.features, {})
    ours = jax.jit(functools.partial(logits, method))(params, task, val.features, hp)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-4)


def _padded_batch(name, pairs, keys):
    """Runs ``pairs`` (task, val) padded to 5 classes x 4 shots x 13 rows, vmapped together."""
    hp = _hp(methods.get_variant(name))
    tasks = stack([pad_task(task, 5, 4) for task, _ in pairs])
    vals = stack([pad_evalset(val, 13) for _, val in pairs])
    batched = _compiled(name, batched=True)(keys, tasks, vals, hp, vals.features, vals.mask)
    assert np.all(np.asarray(batched)[:, :10, 3:] < -1e8)  # padding classes are never predicted
    return hp, np.asarray(batched)[:, :10, :3]


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_padded_seeds_equals_python_loop(name):
    """Three seeds padded (classes, shots, eval rows) and vmapped = each unpadded task run alone."""
    pairs = [_random_task(seed) for seed in (2, 3, 4)]
    keys = jnp.stack([jax.random.fold_in(jax.random.key(0), s) for s in range(3)])
    hp, batched = _padded_batch(name, pairs, keys)
    for i, (task, val) in enumerate(pairs):
        single = _compiled(name)(keys[i], task, val, hp, val.features)
        np.testing.assert_allclose(batched[i], np.asarray(single), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_nested_shot_mask_equals_smaller_task(name):
    """The 3-shot support with a 2-shot mask is the 2-shot task: shot counts share one program."""
    task, val = _random_task(6)
    other, other_val = _random_task(9)
    key = jax.random.key(8)
    keys = jnp.stack([key, key, key])
    pairs = [(with_shots(task, 2), val), (task, val), (other, other_val)]
    hp, batched = _padded_batch(name, pairs, keys)
    small = task._replace(support=task.support[:, :, :2], support_mask=task.support_mask[:, :2])
    expected = _compiled(name)(key, small, val, hp, val.features)
    np.testing.assert_allclose(batched[0], np.asarray(expected), rtol=1e-4, atol=1e-3)
    full = _compiled(name)(key, task, val, hp, val.features)
    np.testing.assert_allclose(batched[1], np.asarray(full), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_declared_grids_and_defaults_are_valid(name):
    method = methods.get_variant(name)
    specs = method.hparam_specs
    search = set(method.names("search"))
    for dataset in (None, "imagenet", "eurosat", "not_a_dataset"):
        values, grid = method.resolve(dataset, 1024, ())
        assert set(grid) == search  # every search hyperparameter has a grid
        assert set(values) | search == set(specs)  # every other one has a default
        assert set(method.linear) <= search
        for g in grid.values():
            assert g.ndim == 1 and g.size >= 1 and np.all(np.isfinite(g))


def test_per_dataset_tables_use_registry_names():
    """A typo in a table key would silently give that dataset the generic settings."""
    for table in (tip_adapter.SETTINGS, ape.SETTINGS, ape_t.SETTINGS, tip_adapter_f.EPOCHS):
        assert set(table) <= set(hparams.DATASETS)
    assert set(tip_adapter.SETTINGS) == set(ape.SETTINGS) == set(hparams.DATASETS)
    # EuroSAT's own grid and epochs differ from the generic row
    ape_grid = methods.get("ape").grid
    assert ape_grid("eurosat")["beta"].max() > ape_grid(None)["beta"].max()
    assert methods.get("tip_adapter_f").defaults("eurosat", 1024)["epochs"] == 100
