"""The planner: XLA's numbers (loops counted), plans per platform, memory-driven chunks, refusals.

Decisions that weigh work against compile time are tested on a fixed machine
(calibrated rates and compile time given), so they depend on XLA's counts
only, never on this machine's timing.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import methods
from jaxclip_fs.engine import batch as batch_lib
from jaxclip_fs.engine import cost as cost_lib
from jaxclip_fs.engine import estimate as estimate_lib
from jaxclip_fs.engine import hardware, planner, sharding
from jaxclip_fs.engine.run import RunDir, run_experiment
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment import protocol as protocol_lib
from jaxclip_fs.experiment.plan import Program, Variant, all_cells
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.pipelines.features import GivenFeatures
from jaxclip_fs.pipelines.ood import OODSet
from jaxclip_fs.pipelines.sizes import InputSizes, sizes_of

from test_sweep import FEATURES, SOURCES, assert_same_records, config, read_records

DEMO_SHOTS, DEMO_SEEDS = (1, 2, 4, 8, 16), (1, 2, 3)
RATES = hardware.Calibration(100e9, 20e9, "float32", "cpu", "cpu", 2048)


def test_loops_are_counted_over_their_trip_counts():
    """XLA's own count sees a scan body once; ours multiplies nested scans by their lengths."""
    def program(x, w):
        def outer(c, _):
            inner = jax.lax.scan(lambda d, _: (d @ w, None), c, None, length=3)[0]
            return inner, None
        return jax.lax.scan(outer, x, None, length=10)[0]

    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    matmul = 2 * 64 ** 3  # (+ a few FLOPs of loop counters)
    assert cost_lib.xla_numbers(jax.jit(program).lower(x, x)).flops == pytest.approx(matmul,
                                                                                     rel=1e-3)
    assert cost_lib.lowered_cost(program, x, x).flops == pytest.approx(30 * matmul, rel=1e-3)
    batched = jax.vmap(program, in_axes=(0, None))
    assert cost_lib.lowered_cost(batched, jax.ShapeDtypeStruct((4, 64, 64), jnp.float32),
                                 x).flops == pytest.approx(4 * 30 * matmul, rel=1e-3)


def test_abstract_batch_has_the_shapes_of_the_real_one():
    fs = FEATURES["dtd"]
    ood = [OODSet("shifted", "dtd", fs.test[:7], fs.test_labels[:7],
                  np.ones(fs.num_classes, np.float32), {})]
    pairs = dataclasses.replace(fs, train=np.concatenate([fs.train, fs.train], -1),
                                val=np.concatenate([fs.val, fs.val], -1),
                                test=np.concatenate([fs.test, fs.test], -1))
    for name, data, oods in (("tip_adapter_f", fs, ood), ("gda", fs, ()), ("ta_pp", pairs, ())):
        method = methods.get(name)
        resolved = {"dtd": Variant(name, method, {}).resolve("dtd", data.dim)}
        program = Program(name, ("dtd",), tuple(all_cells((name,), ("dtd",), (1, 4), (1, 2))))
        for policy in ("coop", "full"):
            real = batch_lib.build_batch(program, method, {"dtd": data}, resolved,
                                         val_rows=policy, pad_cells=lambda n: 8, ood=oods)
            abstract = batch_lib.abstract_batch(
                program, method, {"dtd": sizes_of(data)}, resolved, val_rows=policy,
                pad_cells=lambda n: 8, ood_test=[o.test.shape[0] for o in oods])
            shapes = lambda b: jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)),  # noqa: E731
                                            (b.shared, b.per_cell))
            assert shapes(real) == shapes(abstract), (name, policy)
            assert (real.slots, real.batch_size, real.max_epochs) == (
                abstract.slots, abstract.batch_size, abstract.max_epochs)


def _feature_measure(name, sizes, compile_seconds):
    """Real XLA numbers of the feature program on inputs of ``sizes``; a fixed compile time."""
    variant = Variant(name, methods.get(name), {})
    mesh = sharding.cell_mesh(1)

    def measure(program, mode):
        found = estimate_lib.feature_estimate(
            program, variant, {d: sizes for d in program.datasets},
            rules=protocol_lib.rules("fewshot", variant.method, "d"), mesh=mesh,
            keep_params=False, mode=None)
        return dataclasses.replace(found, compile_seconds=compile_seconds, analysis_seconds=0.0)
    return measure


def _machine(parallel, memory=2**40):
    return planner.Machine("gpu" if parallel else "cpu", 1, memory, "test", parallel, RATES)


def _demo_grid(name):
    return Program(name, ("d",), tuple(all_cells((name,), ("d",), DEMO_SHOTS, DEMO_SEEDS)))


def test_the_demo_grid_runs_per_shots_on_a_cpu_and_as_one_program_in_parallel():
    """Shots 1-16 x seeds 1-3 of a trained method at Caltech101's size (100 classes, D=1024):
    each cell pads its training to 16 shots in one program. On a CPU the per-shot programs'
    saved work (XLA's FLOPs at 100 GFLOP/s) outweighs 4 more compilations of 5 s; where the
    devices run cells side by side, one program."""
    sizes = InputSizes(100, 1024, 10, 1649, 2465)
    program = _demo_grid("tip_adapter_f")
    measure = _feature_measure("tip_adapter_f", sizes, compile_seconds=5.0)
    serial = planner.decide(program, "auto", _machine(parallel=False), measure)
    assert serial.plan == "per-shots" and "saves about" in serial.reason
    assert [p.part for p in serial.parts] == [f"shots {k}" for k in DEMO_SHOTS]
    assert sum(e.cost.flops for e in serial.estimates) < 0.6 * measure(program, None).cost.flops
    parallel = planner.decide(program, "auto", _machine(parallel=True), measure)
    assert parallel.plan == "one" and parallel.parts == (program,)
    assert "side by side" in parallel.reason


def test_small_programs_stay_one_program_on_a_cpu():
    """At the demo's digits size (10 classes) the padding costs milliseconds, a compilation
    seconds (measured: the demo takes 3x longer per shot count); a single shot count or a
    training-free method never splits either."""
    digits = InputSizes(10, 512, 4, 359, 539)
    for name in ("tip_adapter_f", "tip_adapter"):
        decision = planner.decide(_demo_grid(name), "auto", _machine(parallel=False),
                                  _feature_measure(name, digits, compile_seconds=5.0))
        assert decision.plan == "one" and "extra programs would add" in decision.reason, name
    single = Program("tip_adapter_f", ("d",), tuple(all_cells(("tip_adapter_f",), ("d",), (16,),
                                                              DEMO_SEEDS)))
    decision = planner.decide(single, "auto", _machine(parallel=False),
                              _feature_measure("tip_adapter_f", digits, 5.0))
    assert decision.plan == "one" and decision.reason == "one shot count: one program"


def test_forced_plans_split_as_asked():
    measure = _feature_measure("tip_adapter", InputSizes(10, 64, 2, 40, 50), 1.0)
    program = _demo_grid("tip_adapter")
    for plan, parts in (("one", 1), ("per-shots", 5), ("chunk:4", 4)):
        decision = planner.decide(program, plan, _machine(parallel=False), measure)
        assert decision.plan == plan and len(decision.parts) == parts
        assert sorted(c for p in decision.parts for c in p.cells) == sorted(program.cells)
        assert planner.apply(program, plan) == list(decision.parts)
    assert planner.apply(program, "per-shots, chunk:2")[0].part == "shots 1, cells 1-2 of 3"


def _peak(cfg, cells):
    """XLA's memory analysis of the feature program of ``cells`` cells (test_sweep's data)."""
    program = Program("tip_adapter", ("oxford_pets",), tuple(all_cells(
        ("tip_adapter",), ("oxford_pets",), cfg.grid.shots, cfg.grid.seeds))[:cells])
    variant = Variant("tip_adapter", methods.get("tip_adapter"), {})
    found = estimate_lib.feature_estimate(
        program, variant, {"oxford_pets": sizes_of(FEATURES["oxford_pets"])},
        rules=protocol_lib.rules(cfg.protocol.names[0], variant.method, "oxford_pets"),
        mesh=sharding.cell_mesh(1), keep_params=False, mode="memory")
    return found.memory


def test_a_program_too_big_for_the_device_is_chunked_with_the_same_records(tmp_path,
                                                                           monkeypatch):
    cfg = config(methods=("tip_adapter",), datasets=("oxford_pets",), shots=(1, 2, 4),
                 seeds=(1, 2), devices=1, plan="auto")
    whole, half = _peak(cfg, 6), _peak(cfg, 3)
    assert half < whole
    budget = (whole + half) / 2  # the whole program does not fit, half of it does
    monkeypatch.setenv(hardware.MEMORY_ENV, str(int(budget / planner.FIT_FRACTION)))
    monkeypatch.setenv(hardware.PARALLEL_ENV, "1")  # no per-shots question: memory alone
    chunked = run_experiment(cfg, RunDir(tmp_path / "chunked"), sources=SOURCES, progress=False,
                             log=None)
    (decision,) = chunked.plans
    assert decision.plan == "chunk:3" and "to fit" in decision.reason
    assert [p.name for p in chunked.programs] == ["tip_adapter/oxford_pets [cells 1-3 of 6]",
                                                  "tip_adapter/oxford_pets [cells 4-6 of 6]"]
    assert all(e.memory <= budget for e in decision.estimates)
    monkeypatch.delenv(hardware.MEMORY_ENV)
    one = run_experiment(dataclasses.replace(cfg, execution=dataclasses.replace(
        cfg.execution, plan="one")), RunDir(tmp_path / "one"), sources=SOURCES,
        progress=False, log=None)
    assert [p.name for p in one.programs] == ["tip_adapter/oxford_pets"]
    chunked_records = read_records(str(tmp_path / "chunked"))
    assert_same_records(chunked_records, read_records(str(tmp_path / "one")))
    record = chunked_records[next(iter(chunked_records))]
    assert record["program"].startswith("tip_adapter/oxford_pets [cells ")
    manifest = json.loads((tmp_path / "chunked" / "manifest.json").read_text())
    (plan,) = manifest["invocations"][-1]["plans"]
    assert plan["plan"] == "chunk:3" and len(plan["parts"]) == 2
    assert plan["parts"][0]["memory"] == "XLA memory analysis"


def test_a_program_that_cannot_fit_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.MEMORY_ENV, "64KiB")
    calls = []

    class Watched(GivenFeatures):
        def __call__(self, *args):
            calls.append(args)
            return super().__call__(*args)

    from jaxclip_fs.engine.run import Sources

    cfg = config(methods=("tip_adapter",), datasets=("oxford_pets",), devices=1)
    with pytest.raises(ConfigError) as found:
        run_experiment(cfg, RunDir(tmp_path), sources=Sources(features=Watched(FEATURES)),
                       progress=False, log=None)
    message = str(found.value)
    assert "\n" not in message and "program tip_adapter/oxford_pets" in message
    assert "GiB per device" in message and "0.00 GiB (" + "$" + hardware.MEMORY_ENV in message
    assert not calls and not (tmp_path / "records").exists()
    for forced in ("one", "chunk:1"):
        cfg = config(methods=("tip_adapter",), datasets=("oxford_pets",), devices=1, plan=forced)
        with pytest.raises(ConfigError, match=f"with execution.plan {forced}|even in chunks"):
            run_experiment(cfg, RunDir(tmp_path), sources=SOURCES, progress=False, log=None)


@pytest.mark.parametrize("text, needle", [
    ("sometimes", "execution.plan must be one of auto, one, per-shots, chunk:N"),
    ("chunk:0", "got 'chunk:0'"), ("chunk:x", "got 'chunk:x'"),
])
def test_bad_plans_are_one_line_errors(text, needle):
    with pytest.raises(ConfigError, match=needle):
        config_lib.check(config(plan=text))


def test_configs_with_the_pre_1_0_program_per_shots_key_are_refused(tmp_path):
    raw = config().to_dict()
    raw["execution"].pop("plan")
    raw["execution"]["program_per_shots"] = True
    path = tmp_path / "old.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="execution.program_per_shots: unknown key"):
        config_lib.load(path)


def test_device_memory_and_parallelism_settings(monkeypatch):
    monkeypatch.setenv(hardware.MEMORY_ENV, "1.5GiB")
    assert hardware.device_memory() == (int(1.5 * 2**30), "$" + hardware.MEMORY_ENV)
    monkeypatch.setenv(hardware.MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match=hardware.MEMORY_ENV + " must be a size"):
        hardware.device_memory()
    monkeypatch.delenv(hardware.MEMORY_ENV)
    memory, source = hardware.device_memory(jax.devices("cpu")[0])
    assert memory > 0 and "host memory" in source
    assert not hardware.cells_in_parallel("cpu") and hardware.cells_in_parallel("tpu")
    monkeypatch.setenv(hardware.PARALLEL_ENV, "1")
    assert hardware.cells_in_parallel("cpu")


def test_table_sizes_match_the_shipped_coop_split_files():
    from jaxclip_fs.data.sizes import BENCHMARK_SIZES

    root = os.path.join(os.path.dirname(__file__), "data", "coop_splits")
    for name, file in (("dtd", "split_zhou_DescribableTextures.json"),
                       ("oxford_pets", "split_zhou_OxfordPets.json")):
        splits = json.load(open(os.path.join(root, file)))
        sizes = BENCHMARK_SIZES[name]
        assert (sizes.train, sizes.val, sizes.test) == tuple(len(splits[k]) for k in
                                                             ("train", "val", "test"))
        assert sizes.num_classes == len({item[1] for item in splits["train"]})
    with open(os.path.join(root, "images_variant_train.txt")) as f:
        assert BENCHMARK_SIZES["fgvc_aircraft"].train == sum(1 for line in f if line.strip())
    imagenet = BENCHMARK_SIZES["imagenet"]
    assert imagenet.val == imagenet.test == 50_000  # val carved from train, 50 per class
    assert len(BENCHMARK_SIZES) == 15


def test_synthetic_sizes_helper_is_exact():
    fs = make_task(0, num_classes=3, dim=8, shots=2, views=2, val_per_class=4, test_per_class=4)
    found = sizes_of(fs)
    assert (found.num_classes, found.dim, found.views, found.val, found.test) == (3, 8, 2, 12, 12)
    assert found.val_rows("coop", 16) == 12 and found.val_rows("coop", 2) == 6


def test_plan_flag_is_checked_and_the_pre_1_0_alias_is_gone():
    from jaxclip_fs import cli
    from jaxclip_fs.commands import flags

    namespace = cli.build_parser().parse_args(["run", "--out", "o", "--plan", "chunk:4"])
    assert flags.field_values(namespace)["execution.plan"] == "chunk:4"
    with pytest.raises(ConfigError, match="--plan must be one of"):
        flags.field_values(cli.build_parser().parse_args(["run", "--out", "o", "--plan", "fast"]))
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--out", "o", "--program-per-shots"])


def test_backends_without_lowered_cost_analysis_are_costed_on_the_cpu(monkeypatch):
    """The CUDA / TPU plugins (PJRT C API) raise on ``Lowered.cost_analysis``: the planner
    then reads the same HLO module's cost on the CPU backend -- the same numbers here."""
    def program(x, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]

    x = jax.ShapeDtypeStruct((32, 32), jnp.float32)
    expected = cost_lib.lowered_cost(program, x, x)
    lowered_type = type(jax.jit(program).lower(x, x))

    def refuse(self):
        raise NotImplementedError("Lowered.cost_analysis not implemented on platform 'gpu'")

    monkeypatch.setattr(lowered_type, "cost_analysis", refuse)
    with pytest.raises(NotImplementedError):
        jax.jit(program).lower(x, x).cost_analysis()
    found = cost_lib.lowered_cost(program, x, x)
    assert found.flops == pytest.approx(expected.flops) and found.flops > 5 * 2 * 32 ** 3 * 0.99
    assert found.bytes_accessed == pytest.approx(expected.bytes_accessed)
