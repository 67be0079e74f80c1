"""Every program lowers for GPU and TPU, checked on this CPU-only machine (``jax.export``).

JAX lowers a program for a platform it does not have: ``jax.export.export(fn,
platforms=(p,))`` runs that platform's lowering rules on abstract arguments.
What differs on an accelerator fails here, naming the program and the
platform: a custom call with no lowering there (LAPACK on CPU, cuSOLVER on
CUDA, XLA's own decompositions on TPU), a host callback (it cannot be
lowered for another platform), float64 (TPUs have none), a sharding the
platform cannot take. Nothing runs: the programs are lowered from
``jax.ShapeDtypeStruct`` arguments at tiny shapes.

The programs are the ones the engine runs, captured where the planner lowers
them (:mod:`~jaxclip_fs.engine.estimate`: the feature program of every
registered method -- a new method is covered without editing this file --,
the image programs' fit, select and streaming stages on both CLIP tower
kinds and both training paths), with the shardings of a multi-device run
(8 fake CPU devices, the cell axis split over them); extraction's encoders
(image towers with taps, text tower; float32 and bfloat16) and the IMO
adapters' training step. For each, the planner's own cost analysis is also
run on the program lowered for the accelerator, as it runs there: the
CUDA / TPU plugins refuse ``Lowered.cost_analysis`` (PJRT C API), so XLA's
CPU cost model reads the accelerator's HLO module instead.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.engine import cost as cost_lib
from jaxclip_fs.engine import estimate as estimate_lib
from jaxclip_fs.engine import sharding
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment import protocol as protocol_lib
from jaxclip_fs.experiment.plan import Program, Variant, all_cells
from jaxclip_fs.methods.precision import in_compute_dtype
from jaxclip_fs.pipelines.images import abstract_clip
from jaxclip_fs.pipelines.sizes import InputSizes

PLATFORMS = ("cuda", "tpu")
DEVICES = 8
#: float64 anywhere in a lowered module (an f64 tensor or scalar type).
FLOAT64 = re.compile(r"\bf64\b|xf64>")
#: Tiny sizes: C = 3 classes, D = 16 (paired: 2D), 2 views, 7 val / 5 test / 4 OOD rows.
FEATURE_SIZES = dict(num_classes=3, dim=16, views=2, val=7, test=5)
OOD_TEST = (4,)
SHOTS, SEEDS = (1, 2), (1, 2, 3)  # 6 cells: padded to 8, one per device


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, "sharding", None)),
                        tree)


@pytest.fixture
def as_on_accelerators(monkeypatch):
    """``Lowered.cost_analysis`` raises as behind the PJRT C API (the CUDA / TPU plugins).

    The planner's loop correction (each scan body lowered and costed again for its trip
    count, ``tests/test_planner.py``) is skipped: it lowers pieces of the same programs, and
    is most of the estimates' time.
    """
    monkeypatch.setattr(cost_lib, "loop_correction", lambda fn, *args: cost_lib.ZERO)

    def refuse(self):
        raise NotImplementedError("Lowered.cost_analysis is not implemented behind the PJRT C API")

    lowered = jax.jit(lambda x: x).lower(jax.ShapeDtypeStruct((1,), jnp.float32))
    monkeypatch.setattr(type(lowered), "cost_analysis", refuse)


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def lowering_problems(name: str, jitted, args, *, sharded: bool = False) -> list[str]:
    """What fails when ``jitted(*args)`` is lowered for :data:`PLATFORMS` (one line each,
    naming the program and the platform); [] when nothing does.

    Checks: ``jax.export`` lowers it for every platform (one multi-platform export; on
    failure, one per platform says which); no float64 in the module; with ``sharded``, the
    cell axis's sharding reaches the module; the planner's cost analysis of the program
    lowered for each platform (as a run there lowers it) counts some FLOPs.
    """
    try:
        text = jax.export.export(jitted, platforms=PLATFORMS)(*args).mlir_module()
    except Exception:  # noqa: BLE001 -- every failure is reported, named
        problems = []
        for platform in PLATFORMS:
            try:
                jax.export.export(jitted, platforms=(platform,))(*args)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{name} on {platform}: {_first_line(exc)}")
        return problems or [f"{name} on {' + '.join(PLATFORMS)} together: failed to lower"]
    problems = []
    everywhere = f"{name} on {' and '.join(PLATFORMS)}"
    if FLOAT64.search(text):
        problems.append(f"{everywhere}: float64 in the lowered program")
    if sharded and f'"{sharding.CELL_AXIS}"' not in text:
        problems.append(f"{everywhere}: the '{sharding.CELL_AXIS}' sharding is not in the program")
    traced = jitted.trace(*args)
    for platform in PLATFORMS:
        try:
            flops = cost_lib.xla_numbers(traced.lower(lowering_platforms=(platform,))).flops
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name} on {platform}: the planner's cost analysis failed: "
                            f"{_first_line(exc)}")
            continue
        if not flops > 0:
            problems.append(f"{name} on {platform}: the planner's cost analysis counts {flops} "
                            "FLOPs")
    return problems


def assert_lowers(programs) -> None:
    """``programs``: ``(name, jitted, args, sharded)``; fails listing every problem."""
    assert programs, "no programs were captured"
    problems = [p for name, jitted, args, sharded in programs
                for p in lowering_problems(name, jitted, args, sharded=sharded)]
    assert not problems, f"{len(problems)} lowering problem(s):\n" + "\n".join(problems)


class StageRecorder:
    """Captures every (jitted program, arguments) the planner's estimates lower."""

    def __init__(self, monkeypatch):
        self.stages = []
        original = estimate_lib._stage

        def recording(jitted, fn, args, *rest, **kwargs):
            self.stages.append((jitted, args))
            return original(jitted, fn, args, *rest, **kwargs)

        monkeypatch.setattr(estimate_lib, "_stage", recording)

    def take(self) -> list:
        found, self.stages = self.stages, []
        return found


def _variant(name: str, compute: str = "float32", **options) -> Variant:
    """A method variant, its training in ``compute`` (mixed precision)."""
    method = in_compute_dtype(methods.get(name, **options), compute)
    return Variant(method.label, method, {method.training.length: 2} if method.trains else {})


def _program(label: str) -> Program:
    return Program(label, ("d",), tuple(all_cells((label,), ("d",), SHOTS, SEEDS)))


def feature_programs(recorder: StageRecorder, mesh) -> list:
    """The feature program of every registered method reading features or paired features,
    as the planner lowers it: ``fair`` (params kept); trained methods also ``paper`` (epochs
    selected as their official code did; test logits kept, as ``evaluate`` runs it) and
    ``fair`` trained in bfloat16 (``--compute-dtype``)."""
    found = []
    for name in methods.names():
        if methods.get(name).inputs == "images":
            continue
        found += _feature_programs(recorder, mesh, _variant(name), ("fair", "paper"))
        if methods.get(name).trains:
            found += _feature_programs(recorder, mesh, _variant(name, "bfloat16"), ("fair",),
                                       " in bfloat16")
    return found


def _feature_programs(recorder: StageRecorder, mesh, variant: Variant, protocols,
                      suffix: str = "") -> list:
    """A feature program under each of ``protocols`` (``paper``: trained methods only)."""
    method = variant.method
    assert method.inputs in ("features", "paired"), f"{variant.label}: no lowering case " \
        f"for inputs '{method.inputs}': add one to tests/test_lowering.py"
    paired = method.inputs == "paired"
    sizes = InputSizes(**FEATURE_SIZES, feature_dim=2 * FEATURE_SIZES["dim"] if paired else None)
    cases = [("fair", dict(keep_params=True))]
    if method.trains and "paper" in protocols:  # (epochs on test, or the last, as official)
        cases.append(("paper", dict(keep_params=False, keep_logits=True)))
    found = []
    for protocol, keep in cases:
        estimate_lib.feature_estimate(
            _program(variant.label), variant, {"d": sizes},
            rules=protocol_lib.rules(protocol, method, "d"), ood_test=OOD_TEST, mesh=mesh, **keep)
        (jitted, args), = recorder.take()
        found.append((f"{variant.label} feature program ({protocol}){suffix}", jitted, args,
                      True))
    return found


#: (CLIP, training path, compute dtype of encoding and training).
IMAGE_CASES = (("tiny-vit", "trunk", "float32"), ("tiny-rn", "cache", "bfloat16"))
#: The tower x path pairs IMAGE_CASES leave out, in bfloat16.
OTHER_IMAGE_CASES = (("tiny-vit", "cache", "bfloat16"), ("tiny-rn", "trunk", "bfloat16"))
STAGE_NAMES = ("fit", "select stream", "select", "test stream", "OOD stream")


def image_programs(recorder: StageRecorder, mesh, cases, every_option: bool = False) -> list:
    """Every stage of the image programs (fit, select, the streams) of every registered image
    method, per (CLIP variant, training path, dtype) in ``cases``; with ``every_option``
    also each of the method's other option values (their fit and test stream: the stages
    that hold the heads' training and eval-mode forward pass)."""
    found = []
    for name in methods.names():
        method = methods.get(name)
        if method.inputs != "images" or method.towers is not None:
            continue  # (tower methods: tower_programs)
        options = [{}] + ([{o.name: c} for o in method.options for c in o.choices[1:]]
                          if every_option else [])
        for option in options:
            for backbone, path, dtype in cases:
                variant = _variant(name, dtype, **option)
                sizes = estimate_lib.ImageSizes(num_classes=3, pool=6, selection=5, test=7,
                                                ood_test=OOD_TEST, path=path, views=2,
                                                cache_bytes=0, budget=0)
                estimate_lib.image_estimate(
                    _program(variant.label), variant, abstract_clip(backbone, dtype), sizes,
                    rules=protocol_lib.rules("fair", variant.method, "d"),
                    settings=config_lib.ImagesConfig(), batch_images=4, mesh=mesh)
                stages = recorder.take()
                assert len(stages) == len(STAGE_NAMES), [type(j) for j, _ in stages]
                for stage, (jitted, args) in zip(STAGE_NAMES, stages):
                    if option and stage not in ("fit", "test stream"):
                        continue
                    found.append((f"{variant.label} {stage} ({backbone}, {path} path, {dtype})",
                                  jitted, args, stage == "fit"))
    return found


@pytest.mark.devices(DEVICES)
def test_every_methods_feature_program_lowers_for_gpu_and_tpu(monkeypatch, as_on_accelerators):
    assert jax.device_count() == DEVICES
    recorder = StageRecorder(monkeypatch)
    programs = feature_programs(recorder, sharding.cell_mesh())
    names = {name.split(" ")[0] for name, *_ in programs}
    assert names == {n for n in methods.names() if methods.get(n).inputs != "images"}
    assert_lowers(programs)


@pytest.mark.devices(DEVICES)
def test_image_programs_lower_for_gpu_and_tpu(monkeypatch, as_on_accelerators):
    """Both tower kinds, both training paths, both compute dtypes (ViT in-step trunk in
    float32, ResNet tap cache in bfloat16)."""
    recorder = StageRecorder(monkeypatch)
    assert_lowers(image_programs(recorder, sharding.cell_mesh(), IMAGE_CASES))


@pytest.mark.slow
@pytest.mark.devices(DEVICES)
def test_image_program_variants_lower_for_gpu_and_tpu(monkeypatch, as_on_accelerators):
    """Every option value of every image method (on the ResNet: the tiny ViT has too few blocks
    for LDC's official ViT taps), and the defaults on the (tower, path) pairs the fast test
    leaves out, in bfloat16."""
    recorder = StageRecorder(monkeypatch)
    mesh = sharding.cell_mesh()
    programs = image_programs(recorder, mesh, (("tiny-rn", "trunk", "float32"),),
                              every_option=True)
    programs += image_programs(recorder, mesh, OTHER_IMAGE_CASES)
    assert_lowers(programs)


def tower_programs(recorder: StageRecorder, mesh) -> list:
    """The stages of every method trained through the towers (training through them, the
    test and OOD streams) on the tiny ViT, in float32 and bfloat16."""
    found = []
    for name in methods.names():
        method = methods.get(name)
        if method.towers is None:
            continue
        for dtype in ("float32", "bfloat16"):
            variant = _variant(name)
            sizes = estimate_lib.ImageSizes(num_classes=3, pool=6, selection=0, test=7,
                                            ood_test=OOD_TEST, path="trunk", views=2,
                                            cache_bytes=0, budget=0)
            estimate_lib.tower_estimate(
                _program(variant.label), variant, abstract_clip("tiny-vit"), sizes,
                rules=protocol_lib.rules("fair", variant.method, "d"), train_dtype=dtype,
                batch_images=4, mesh=mesh)
            stages = recorder.take()
            assert len(stages) == 2 + len(OOD_TEST)
            for stage, (jitted, args) in zip(("train", "test stream", "OOD stream"), stages):
                found.append((f"{variant.label} {stage} (tiny-vit, {dtype})", jitted, args,
                              stage == "train"))
    return found


@pytest.mark.devices(DEVICES)
def test_tower_programs_lower_for_gpu_and_tpu(monkeypatch, as_on_accelerators):
    """CoOp and CLIP-LoRA: training through the towers and their prediction streams."""
    recorder = StageRecorder(monkeypatch)
    programs = tower_programs(recorder, sharding.cell_mesh())
    assert {name.split(" ")[0] for name, *_ in programs} == {
        n for n in methods.names() if methods.get(n).towers is not None}
    assert_lowers(programs)


def test_extraction_encoders_lower_for_gpu_and_tpu(as_on_accelerators):
    """The image encoder of both tower kinds (with taps, as LDC's tap cache encodes), and the
    text encoder, in float32 and bfloat16: the programs extraction compiles."""
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.features.image_encoder import make_image_encoder
    from jaxclip_fs.features.text_classifier import text_encoder

    programs = []
    for backbone, taps in (("tiny-vit", ("block1", "block2")), ("tiny-rn", ("layer1", "layer4"))):
        clip = load_clip(backbone, "random")
        for dtype in ("float32", "bfloat16"):
            for tapped in ((), taps):
                encoder = make_image_encoder(clip, taps=tapped, dtype=dtype, batch_size=2)
                programs.append((f"{backbone} image encoder ({dtype}, taps {list(tapped)})",
                                 *encoder.batches.program(), False))
            encoder = text_encoder(clip, clip.config.context_length, dtype=dtype, batch_size=2)
            programs.append((f"{backbone} text encoder ({dtype})", *encoder.program(), False))
    assert_lowers(programs)


def test_imo_training_step_lowers_for_gpu_and_tpu(as_on_accelerators):
    """The IMO adapters' training step (``train-imo``, TA++ / TX++'s adapters)."""
    from jaxclip_fs.clip.model import add_adapters
    from jaxclip_fs.convert import load_clip
    from jaxclip_fs.train import imo
    from jaxclip_fs.train.trainer import TrainState

    clip = load_clip("tiny-vit", "random")
    settings = imo.IMOSettings(batch_size=2)
    config, variables = add_adapters(clip.params, clip.config, jax.random.key(0),
                                     settings.adapter_dim, settings.scale, settings.dropout)
    base, adapters = imo.split_adapters(variables)
    trainable = {"adapters": adapters, "head": imo.head_init(jax.random.key(1), config.embed_dim,
                                                             3)}
    optimizer, step = imo.make_step(clip.model.clone(config=config), settings)
    state = TrainState(trainable, {}, optimizer.init(trainable))
    size = config.image_size
    args = (_abstract(state), _abstract(base),
            jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32), jax.random.key(2))
    assert_lowers([("IMO training step (tiny-vit)", step, args, False)])


def test_a_program_that_cannot_lower_is_named_with_its_platform():
    """The check itself: a host callback cannot be lowered for another platform; float64 is
    reported; a program without FLOPs is reported."""
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x @ x

    x = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    problems = lowering_problems("callback program", jax.jit(with_callback), (x,))
    assert len(problems) == 2 and all(p.startswith("callback program on ") for p in problems)
    assert {p.split(" ")[3].rstrip(":") for p in problems} == set(PLATFORMS)

    with jax.enable_x64(True):
        wide = jax.ShapeDtypeStruct((4, 4), np.float64)
        problems = lowering_problems("f64 program", jax.jit(lambda a: a @ a), (wide,))
    assert problems == ["f64 program on cuda and tpu: float64 in the lowered program"]
    problems = lowering_problems("copy", jax.jit(lambda a: a), (x,))
    assert problems == [f"copy on {p}: the planner's cost analysis counts 0.0 FLOPs"
                        for p in PLATFORMS]
