"""Mixed precision (``--compute-dtype bfloat16``): what runs in bfloat16, and how far it moves.

Tolerances, and why. bfloat16 keeps 8 significant bits (unit roundoff
2^-9 ~ 0.2 %), float32's exponent range, and GPUs / TPUs accumulate its
products in float32, so a network's outputs move by a small multiple of that
per layer:

* **Encoding** -- the embeddings of the same images in bfloat16 and float32
  have cosine similarity >= 0.999 (measured here with random weights: 1 - cos
  <= 1e-4 for tiny-vit, ViT-B/16 and RN50, a 10x margin), and each image's
  bfloat16 embedding is nearest to its own float32 one (what few-shot methods
  read of a feature: which images it resembles).
* **Training** -- the trained heads see forward and backward passes perturbed
  by 0.2 %-sized errors; logits of 20-30 (CLIP's scale 100 times cosines) are
  rounded to steps of 0.125, so the mean epoch losses stay within 5 % of
  float32's (measured: at most 1.8 %), and a test prediction can only change
  where its top two logits are that close -- a near-tie. So per cell the test
  accuracy may move by at most 2 points (6 of 300 test images; measured: at
  most 0.33 here, 0.67 in a 27-cell sweep), and by at most 0.5 on average
  over the cells (measured 0.02).
* **LDC's step** (cached CLIP taps through its heads) -- loss within 1 %
  and gradients aligned (cosine >= 0.9; measured 0.97 on the tiny random
  ResNet, whose nearly constant activations BatchNorm divides by their tiny
  spread, and 0.997 on the tiny ViT).
"""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import cli, methods
from jaxclip_fs.clip.preprocess import preprocess
from jaxclip_fs.convert import load_clip
from jaxclip_fs.engine.image_program import _task, bind
from jaxclip_fs.engine.run import RunDir, Sources, run_experiment
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.features.image_encoder import make_image_encoder
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.methods.base import as_arrays, training_loss
from jaxclip_fs.methods.precision import in_compute_dtype
from jaxclip_fs.methods.task import make_task as task_of
from jaxclip_fs.pipelines import images as images_lib
from jaxclip_fs.pipelines.features import GivenFeatures

from test_sweep import read_records

TRAINED_FEATURE_METHODS = tuple(n for n in methods.names() if methods.get(n).trains
                                and methods.get(n).inputs != "images")
#: (methods trained through the towers compute in their CLIP's dtype: tests/test_towers.py)
IMAGE_METHODS = tuple(n for n in methods.names() if methods.get(n).inputs == "images"
                      and methods.get(n).towers is None)


def matmul_dtypes(jaxpr) -> list[tuple[str, str]]:
    """The operand dtypes of every ``dot_general`` of a jaxpr, its sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    found += matmul_dtypes(inner)
    return found


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --- what runs in bfloat16 -------------------------------------------------------------------


#: Relative loss tolerance of one mixed-precision step (default 1e-2). LP++'s logits add
#: ``α_c · x·t_c`` with α initialised at 250 x the mean text score (tens here), so bfloat16's
#: rounding of logits of that size (2^-9 relative) moves its loss by up to about 2 %.
LOSS_REL_TOL = {"lp_pp": 2.5e-2}


@pytest.mark.parametrize("name", TRAINED_FEATURE_METHODS)
def test_training_steps_multiply_in_bfloat16_and_keep_float32_parameters(name):
    """Every matrix product of the mixed-precision step (forward and backward) takes bfloat16
    operands; the loss and the gradients the optimiser sees are float32."""
    fs = make_task(0, num_classes=5, dim=16, shots=4, views=3)
    task = task_of(fs.train[:, support_index(fs, 4, 1)], fs.text, fs.logit_scale)
    plain = methods.get(name)
    mixed = in_compute_dtype(plain, "bfloat16")
    hp = as_arrays(plain.resolve(None, 16)[0])
    params = plain.init(jax.random.key(0), task, hp)
    batch = (jnp.asarray(fs.train[1, :8]), jnp.arange(8) % 5, jnp.ones(8))

    def step(method):
        return jax.jit(jax.value_and_grad(lambda p: training_loss(method, p, task, *batch,
                                                                  hp)[0]))

    products = matmul_dtypes(jax.make_jaxpr(step(mixed))(params).jaxpr)
    assert products and set(products) == {("bfloat16", "bfloat16")}, products
    value, grads = step(mixed)(params)
    assert value.dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    want_value, want = step(plain)(params)
    assert float(value) == pytest.approx(float(want_value), rel=LOSS_REL_TOL.get(name, 1e-2))
    assert float(value) != float(want_value)  # really computed in bfloat16
    for key in plain.trainable:
        assert _cosine(grads[key], want[key]) > 0.99, key


@pytest.mark.parametrize("backbone", ["tiny-vit", pytest.param("tiny-rn", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_image_method_steps_run_their_heads_in_bfloat16(name, backbone):
    """An image method (LDC) on cached taps of digits images: its heads multiply in bfloat16
    (the frozen CLIP projector keeps the encoding dtype, float32 here), its BatchNorm
    statistics, loss and gradients stay float32, and loss and gradients stay close."""
    from jaxclip_fs.data import get_dataset

    clip = load_clip(backbone, "random")
    spec = images_lib.image_spec(clip)
    plain = bind(methods.get(name), spec)
    mixed = bind(in_compute_dtype(methods.get(name), "bfloat16"), spec)
    split = get_dataset("digits").split("train")
    size = clip.config.image_size
    pixels = images_lib.to_pixels(np.stack([preprocess(split.image(i), size) for i in range(16)]))
    text = np.random.default_rng(0).standard_normal((10, clip.config.embed_dim))
    frozen = images_lib.frozen_arrays(clip, text / np.linalg.norm(text, axis=1, keepdims=True))
    inputs = jax.jit(images_lib.trunk_fetch(clip.model, plain.taps, augment_views=False))(
        frozen, None, pixels)
    task = _task(frozen, jnp.ones((10, 2)))
    hp = as_arrays(methods.get(name).resolve(None, clip.config.embed_dim)[0])
    params = plain.init(jax.random.key(0), task, hp)
    batch = (inputs, jnp.asarray(split.labels[:16], jnp.int32), jnp.ones(16))

    def step(method):
        return jax.jit(jax.value_and_grad(
            lambda p: training_loss(method, p, task, *batch, hp), has_aux=True))

    products = matmul_dtypes(jax.make_jaxpr(step(mixed))(params).jaxpr)
    low = products.count(("bfloat16", "bfloat16"))
    assert low > 2 * (len(products) - low), products  # the heads; the rest: the projector
    (value, state), grads = step(mixed)(params)
    (want_value, _), want = step(plain)(params)
    leaves = jax.tree.leaves((value, state, grads))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    assert float(value) == pytest.approx(float(want_value), rel=1e-2)
    assert _cosine(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]),
                   np.concatenate([np.ravel(g) for g in jax.tree.leaves(want)])) > 0.9


def test_float32_and_untrained_methods_are_left_as_they_are():
    for name in methods.names():
        method = methods.get(name)
        assert in_compute_dtype(method, "float32") is method
        if not method.trains:
            assert in_compute_dtype(method, "bfloat16") is method
    trained = methods.get("tip_adapter_f")
    assert in_compute_dtype(trained, "bfloat16") is in_compute_dtype(trained, "bfloat16")
    with pytest.raises(ConfigError, match="compute dtype must be one of float32, bfloat16"):
        in_compute_dtype(trained, "float16")


def test_a_method_keeping_its_own_weights_in_half_precision_refuses_a_compute_dtype():
    """LDC's ``dtype`` option (the official code's float16 weights, *stored* so) and the
    mixed-precision compute dtype would mix: one or the other."""
    with pytest.raises(ConfigError, match=r"ldc\[dtype=float16\] keeps its own weights in "
                                          r"float16.*train_dtype, not both"):
        in_compute_dtype(methods.get("ldc", dtype="float16"), "bfloat16")
    assert in_compute_dtype(methods.get("ldc", dtype="float16"), "float32").label == \
        "ldc[dtype=float16]"


# --- parity on the run's own path ------------------------------------------------------------

PARITY_METHODS = ("zero_shot",) + TRAINED_FEATURE_METHODS
PARITY_FEATURES = {"synthetic": make_task(3, num_classes=10, dim=64, shots=16, views=5,
                                          val_per_class=10, test_per_class=30,
                                          dataset="synthetic")}


def _short(name: str) -> dict[str, float]:
    """A method counted in steps trains 40 of them (the others 5 epochs, the config's hp)."""
    training = methods.get(name).training
    return {"steps": 40.0} if training is not None and training.length == "steps" else {}


def _parity_config(train_dtype: str) -> config_lib.ExperimentConfig:
    return config_lib.ExperimentConfig(
        methods=tuple(config_lib.MethodConfig(m, hp=_short(m)) for m in PARITY_METHODS),
        data=config_lib.DataConfig(datasets=("synthetic",)),
        grid=config_lib.GridConfig(shots=(1, 16), seeds=(1, 2)), hp={"epochs": 5.0},
        train_dtype=train_dtype)


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory):
    sources = Sources(features=GivenFeatures(PARITY_FEATURES))
    found = {}
    for dtype in ("float32", "bfloat16"):
        out = str(tmp_path_factory.mktemp(dtype))
        run_experiment(_parity_config(dtype), RunDir(out), sources=sources, progress=False,
                       log=None)
        found[dtype] = (out, read_records(out))
    return found


def test_bfloat16_training_matches_float32_within_its_tolerance(parity_runs):
    """The sweep of every trained feature method in both dtypes (module docstring)."""
    (_, f32), (_, bf16) = parity_runs["float32"], parity_runs["bfloat16"]
    assert f32.keys() == bf16.keys() and len(f32) == len(PARITY_METHODS) * 4
    moved, differs = [], False
    for cell, want in f32.items():
        got = bf16[cell]
        moved.append(abs(got["accuracy"] - want["accuracy"]))
        if cell.method == "zero_shot":
            assert got["accuracy"] == want["accuracy"]  # nothing trained: nothing changed
            continue
        np.testing.assert_allclose(got["epoch_losses"], want["epoch_losses"], rtol=5e-2)
        differs |= got["epoch_losses"] != want["epoch_losses"]
    assert differs, "bfloat16 training gave float32's losses bit for bit: was it applied?"
    assert max(moved) <= 2.0 and float(np.mean(moved)) <= 0.5, moved


def test_every_record_says_how_it_was_computed(parity_runs):
    for dtype, (_, records) in parity_runs.items():
        for cell, record in records.items():
            trained = methods.get(cell.method).trains
            assert record["compute_dtype"] == {"encoding": "unknown",
                                               "training": dtype if trained else None}, cell


def test_a_rerun_with_another_compute_dtype_is_refused(parity_runs):
    sources = Sources(features=GivenFeatures(PARITY_FEATURES))
    for dtype, other in (("float32", "bfloat16"), ("bfloat16", "float32")):
        out = parity_runs[dtype][0]
        with pytest.raises(ConfigError, match="train_dtype"):
            run_experiment(_parity_config(other), RunDir(out), sources=sources, progress=False,
                           log=None)


def test_compute_dtype_flag_sets_encoding_and_training(tmp_path):
    from jaxclip_fs.commands.run import config_from_args

    base = ["run", "--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random",
            "--out", str(tmp_path)]
    parser = cli.build_parser()
    for extra, encoding, training in (([], "float32", "float32"),
                                      (["--compute-dtype", "bfloat16"], "bfloat16", "bfloat16"),
                                      (["--compute-dtype", "bfloat16", "--dtype", "float32"],
                                       "float32", "bfloat16"),
                                      (["--dtype", "bfloat16"], "bfloat16", "float32")):
        config = config_from_args(parser.parse_args(base + extra))
        assert (config.extraction.dtype, config.train_dtype) == (encoding, training), extra
        settings = config.fixed_settings()
        assert settings.get("train_dtype", "float32") == training
        assert settings["extraction"]["dtype"] == encoding
    saved = tmp_path / "config.json"
    config_lib.save(saved, dataclasses.replace(config, train_dtype="bfloat16"))
    assert config_lib.load(saved).train_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="train_dtype must be one of float32, bfloat16"):
        config_lib.check(dataclasses.replace(config, train_dtype="float16"))


# --- encoding ---------------------------------------------------------------------------------


def assert_encoding_parity(backbone: str, images: int = 12) -> None:
    """The image encoder in bfloat16 vs float32 on digits images (module docstring)."""
    from jaxclip_fs.data import get_dataset

    clip = load_clip(backbone, "random")
    split = get_dataset("digits").split("test")
    x = np.stack([preprocess(split.image(i), clip.config.image_size) for i in range(images)])
    found = {dtype: np.asarray(make_image_encoder(clip, dtype=dtype,
                                                  batch_size=images).batches(x)["features"])
             for dtype in ("float32", "bfloat16")}
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in found.items()}
    cosine = np.sum(unit["float32"] * unit["bfloat16"], axis=1)
    assert found["bfloat16"].dtype == np.float32
    assert cosine.min() >= 0.999 and not np.array_equal(found["float32"], found["bfloat16"])
    nearest = np.argmax(unit["bfloat16"] @ unit["float32"].T, axis=1)
    np.testing.assert_array_equal(nearest, np.arange(images))


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn"])
def test_bfloat16_encoding_keeps_the_embeddings(backbone):
    assert_encoding_parity(backbone)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["ViT-B/16", "RN50"])
def test_bfloat16_encoding_keeps_the_embeddings_at_real_sizes(backbone):
    assert_encoding_parity(backbone, images=4)


def test_embed_computes_in_the_given_dtype_and_says_so(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    found = {}
    for dtype in ("float32", "bfloat16"):
        out = str(tmp_path / f"{dtype}.npz")
        assert cli.main(["embed", "--backbone", "tiny-vit", "--weights", "random", "--image",
                         *paths, "--text", "a photo of a dog.", "--compute-dtype", dtype,
                         "--out", out]) == 0
        data = np.load(out)
        assert '"compute_dtype": "%s"' % dtype in str(data["meta"])
        found[dtype] = data
    for key in ("image", "text"):
        a, b = found["float32"][key], found["bfloat16"][key]
        assert b.dtype == np.float32 and not np.array_equal(a, b)
        assert np.sum(a * b, axis=1).min() >= 0.999, key


def test_image_methods_encode_in_the_extraction_dtype(tmp_path):
    """The frozen CLIP of image methods (trunk, streams, tap cache) computes in
    ``extraction.dtype``, as the planner lowers it."""
    from jaxclip_fs.pipelines.session import ClipSession

    config = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("ldc"),), data=config_lib.DataConfig(("digits",)),
        model=config_lib.ModelConfig("tiny-rn", "random"),
        extraction=config_lib.ExtractionConfig(dtype="bfloat16"))
    session = ClipSession(config, progress=False, banner=False)
    source = images_lib.ImageSource(session, config.images)
    assert session.clip().model.dtype == jnp.bfloat16
    assert source.abstract_clip().model.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(session.clip().params)} == {jnp.dtype(jnp.float32)}
    shutil.rmtree(tmp_path, ignore_errors=True)
