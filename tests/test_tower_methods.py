"""CoOp and CLIP-LoRA as methods run from the CLI: each method's cells of a dataset in one
program (seeds x shots vmapped), every record written, the report, resume; the vmapped cells
equal their runs alone; predictions recomputed independently; the refusals; the dry run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import cli, methods
from jaxclip_fs.clip import prompts
from jaxclip_fs.convert import load_clip
from jaxclip_fs.data import get_dataset
from jaxclip_fs.engine import estimate as estimate_lib
from jaxclip_fs.experiment import protocol as protocol_lib
from jaxclip_fs.features.image_encoder import load_views
from jaxclip_fs.io.checkpoints import restore_tree
from jaxclip_fs.methods import hparams
from jaxclip_fs.pipelines.images import abstract_clip, normalize_pixels, to_pixels
from jaxclip_fs.train import prompt_learning, tower_methods, towers

from test_sweep import read_records


#: Fewer steps than the official ones (tiny tests).
LENGTHS = {"coop": "coop.epochs=2", "clip_lora": "clip_lora.steps=3"}


def _run(out, methods_, shots, seeds, *extra):
    return cli.main(["run", "--dataset", "digits", "--backbone", "tiny-vit", "--weights",
                     "random", "--method", methods_, "--shots", shots, "--seeds", seeds,
                     "--out", str(out), "--cache-dir", str(out) + "-cache", "--quiet",
                     "--no-report", *extra,
                     *[a for m in methods_.split(",") for a in ("--hp", LENGTHS[m])]])


def _context(out, record) -> np.ndarray:
    """A CoOp cell's trained context from its params checkpoint."""
    tree, _ = restore_tree(os.path.join(out, record["params_checkpoint"]))
    return np.asarray(tree["ctx"])[tuple(record["params_row"])]


def _test_split():
    return get_dataset("digits").split("test")


def test_coop_cells_vmapped_in_one_program_equal_a_cell_alone_and_predict_as_recomputed(
        tmp_path):
    """6 CoOp cells (shots 1, 4 x seeds 1-3) in one program: the (1 shot, seed 2) cell --
    padded to 4 shots and masked, vmapped with 5 others -- has the losses, context and
    accuracy of that cell run alone; the (4 shots, seed 2) cell's accuracy equals the logits
    ``exp(logit_scale) f̂ t̂(ctx)ᵀ`` recomputed from its saved context on the test images."""
    assert _run(tmp_path / "all", "coop", "1,4", "1,2,3") == 0
    found = read_records(tmp_path / "all")
    assert len(found) == 6 and {r["program_cells"] for r in found.values()} == {6}
    assert _run(tmp_path / "one", "coop", "1", "2") == 0
    (alone,) = read_records(tmp_path / "one").values()
    masked = next(r for r in found.values() if (r["shots"], r["seed"]) == (1, 2))
    np.testing.assert_allclose(masked["epoch_losses"], alone["epoch_losses"], rtol=1e-5)
    assert masked["accuracy"] == alone["accuracy"]
    np.testing.assert_allclose(_context(tmp_path / "all", masked),
                               _context(tmp_path / "one", alone), rtol=1e-5, atol=1e-7)
    together = next(r for r in found.values() if (r["shots"], r["seed"]) == (4, 2))
    for record in found.values():  # nothing selected: the final iterate, no validation row
        assert record["val_size"] == 0 and record["val_accuracy"] is None
        assert record["hyperparameters"]["epochs"] == 2 and record["searched"] == []
        assert record["selection"]["search_on"] == "none"
        assert len(record["epoch_losses"]) == 2 and record["best_epoch"] == 1

    ctx = _context(tmp_path / "all", together)
    clip = load_clip("tiny-vit", "random")
    from jaxclip_fs.clip.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(clip.source_dir, required=False)
    split = _test_split()
    tokens = prompts.context_skeleton(tokenizer, get_dataset("digits").classnames)
    size = clip.config.image_size
    pixels = np.stack([to_pixels(load_views(split, i, size, 1, 0, (0.8, 1.0)))[0]
                       for i in range(len(split))])
    features = clip.model.apply(clip.params, normalize_pixels(jnp.asarray(pixels)),
                                method="encode_image")[0]
    logits = prompt_learning.feature_logits(clip.model, clip.params, jnp.asarray(ctx), tokens,
                                            features)
    want = 100.0 * np.mean(np.argmax(np.asarray(logits), -1) == split.labels)
    assert together["accuracy"] == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
def test_cli_runs_coop_and_clip_lora_reports_them_and_resumes(tmp_path, capsys):
    """The acceptance command (fewer steps): each method's 6 cells in one program, 12
    records, ``report`` shows both, a rerun computes nothing and rewrites no record."""
    out = tmp_path / "run"
    assert _run(out, "coop,clip_lora", "1,4", "1,2,3") == 0
    found = read_records(out)
    assert {(r["method"], r["shots"], r["seed"]) for r in found.values()} == {
        (m, k, s) for m in ("coop", "clip_lora") for k in (1, 4) for s in (1, 2, 3)}
    assert {r["program"]: r["program_cells"] for r in found.values()} == {
        "coop/digits": 6, "clip_lora/digits": 6}
    for record in found.values():
        assert np.isfinite(record["accuracy"]) and all(np.isfinite(record["epoch_losses"]))
    lora = [r for r in found.values() if r["method"] == "clip_lora"]
    assert {r["hyperparameters"]["steps"] for r in lora} == {3}
    assert {r["input_details"]["pool"] for r in lora} == {"pixels"}
    stamps = {p: os.stat(p).st_mtime_ns for p in _files(out / "records")}
    capsys.readouterr()
    assert cli.main(["report", str(out), "--no-plots"]) == 0
    report = open(out / "report" / "report.md").read()
    assert "CoOp" in report and "CLIP-LoRA" in report
    assert _run(out, "coop,clip_lora", "1,4", "1,2,3") == 0
    assert "already have records" in capsys.readouterr().err
    assert {p: os.stat(p).st_mtime_ns for p in _files(out / "records")} == stamps


def _files(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def test_clip_lora_on_a_resnet_is_refused_in_one_line(tmp_path, capsys):
    code = cli.main(["run", "--dataset", "digits", "--backbone", "tiny-rn", "--weights",
                     "random", "--method", "clip_lora", "--shots", "1", "--seeds", "1",
                     "--out", str(tmp_path / "rn"), "--quiet", "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert any("CLIP-LoRA adapts the attention of ViT image towers" in line
               and "tiny-rn is a ResNet" in line for line in err)
    assert not os.path.exists(tmp_path / "rn" / "records")


@pytest.mark.parametrize("name", ["coop", "clip_lora"])
def test_declared_defaults_are_valid_on_every_dataset(name):
    """(The method-protocol property suite's declaration check; its numeric properties --
    neutral = zero-shot, vmapped seeds = loop, nested masks -- are the towers' own tests,
    tests/test_towers.py, and the one-program test above.)"""
    method = methods.get(name)
    for dataset in (None,) + hparams.DATASETS:
        values, grid = method.resolve(dataset, 512)
        assert grid == {} and set(values) <= set(method.hparam_specs)
        assert method.names("search") == ()
    assert method.trains and method.epoch_selection == "final"
    assert method.official.search_on == "none" and method.official.epochs_on == "final"


def test_rules_select_nothing_under_every_protocol():
    for name in ("coop", "clip_lora"):
        method = methods.get(name)
        for protocol in ("fair", "paper", "validation_free", "fewshot"):
            rules = protocol_lib.rules(protocol, method, "dtd")
            found = (rules.val_rows, rules.search_on, rules.epochs_on)
            assert found == ("none", "none", "final"), protocol


def test_recipes_follow_the_official_settings_and_the_users_overrides():
    """The recipe the engine builds: CoOp's SGD per epoch, epochs by shots (1: 50, 4: 100,
    16: 200; ImageNet 50), batch 32 with the last partial batch dropped; CLIP-LoRA's 500 · K
    iterations; ``--hp`` overrides them."""
    clip = abstract_clip("tiny-vit")
    model = towers.tower_model(clip.config)
    coop = methods.get("coop")
    values = coop.resolve("dtd", clip.config.embed_dim)[0]
    recipe = tower_methods.recipe(coop.towers, model, values)
    mask = lambda k, c=10: jnp.ones((c, k), jnp.float32)  # noqa: E731
    assert [int(recipe.counts(mask(k)).epochs) for k in (1, 4, 16)] == [50, 100, 200]
    assert int(recipe.counts(mask(4)).steps_per_epoch) == 1  # 40 items, batch 32, drop_last
    imagenet = tower_methods.recipe(coop.towers, model, values, imagenet=True)
    assert int(imagenet.counts(mask(16)).epochs) == 50
    fixed = tower_methods.recipe(coop.towers, model, {**values, "epochs": 3})
    assert int(fixed.counts(mask(16)).epochs) == 3
    lora = methods.get("clip_lora")
    lvalues = lora.resolve("dtd", clip.config.embed_dim)[0]
    assert lvalues == {"batch_size": 32, "lr": 2e-4, "weight_decay": 1e-2, "min_lr": 1e-6}
    lrecipe = tower_methods.recipe(lora.towers, model, lvalues)
    assert int(lrecipe.counts(mask(4)).total) == 2000
    assert tower_methods.lora_spec(lora.towers) == tower_methods.LoraSpec()
    # equal settings give the same recipe object (it keys the compiled program)
    assert tower_methods.recipe(lora.towers, model, dict(lvalues)) is lrecipe


def test_the_estimate_prices_the_backward_pass_through_the_towers():
    """A tower program's estimate counts forward and backward through the towers every step
    (XLA's FLOPs grow with the steps) and its memory; the planner's figures for a tiny
    program, with the per-cell adaptation size in the notes."""
    from jaxclip_fs.engine import sharding
    from jaxclip_fs.experiment.plan import Cell, Program, Variant

    clip = abstract_clip("tiny-vit")
    cells = tuple(Cell("clip_lora", "d", k, s, "fair") for k in (1, 2) for s in (1, 2))
    program = Program("clip_lora", ("d",), cells)
    sizes = estimate_lib.ImageSizes(num_classes=3, pool=12, selection=0, test=7, ood_test=(),
                                    path="trunk", views=1, cache_bytes=0, budget=0)

    def estimate(steps, mode=None):
        variant = Variant("clip_lora", methods.get("clip_lora"), {"steps": steps})
        return estimate_lib.tower_estimate(
            program, variant, clip, sizes, rules=protocol_lib.rules("fair", variant.method, "d"),
            train_dtype="float32", batch_images=4, mesh=sharding.cell_mesh(), mode=mode)

    short, long = estimate(2, "memory"), estimate(4)  # (only the first compiled)
    per_step = (long.cost.flops - short.cost.flops) / 2  # 4 cells' steps, vmapped
    assert 0 < 2 * per_step < short.cost.flops  # (the rest: the test stream)
    # a step is forward and backward through both towers for 4 cells: more than 1.5x the
    # forward pass of the image tower alone on those 4 x 32 images
    forward = estimate_lib.extraction_cost(clip, 32, 32).flops
    assert per_step > 1.5 * 4 * forward
    assert short.memory > 0 and short.exact
    assert any("forward and backward every step" in n for n in short.notes)


def test_the_engines_chunked_training_equals_one_go(monkeypatch):
    """A long training runs as equal chunks with a progress bar (the engine's
    ``train_in_chunks``): the same adaptations and losses as one program."""
    from jaxclip_fs.clip.model import CLIP
    from jaxclip_fs.engine import tower_program
    from test_towers import CONFIG, NAMES, mixed_masks, tasks, tokenizer, variables

    recipe = prompt_learning.recipe(CLIP(CONFIG), n_ctx=4, epochs=5, batch_size=4)
    frozen = {"clip": variables(),
              "tokens": jnp.asarray(prompts.context_skeleton(tokenizer(), NAMES, 4))}
    pool = np.random.default_rng(0).standard_normal((3, 18, CONFIG.embed_dim)).astype(np.float32)
    all_tasks = tasks(mixed_masks())
    start = towers.init_seeds(recipe, all_tasks)
    steps = towers.max_steps(recipe, all_tasks.mask)
    assert steps == 5
    whole, losses = tower_program.train_in_chunks(recipe, (frozen, pool), all_tasks, start,
                                                  steps, "one", None, False)
    monkeypatch.setattr(tower_program, "CHUNK_STEPS", 2)  # 3 chunks of 2: one step idle
    chunked, chunk_losses = tower_program.train_in_chunks(recipe, (frozen, pool), all_tasks,
                                                          start, steps, "chunks", None, False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 whole, chunked)
    assert chunk_losses.shape == (3, steps)
    np.testing.assert_allclose(chunk_losses, losses, rtol=1e-6)


def test_coop_initialised_with_a_phrase_starts_at_that_templates_zero_shot_classifier():
    """``coop[init=a_photo_of_a]``: every seed starts at the phrase's token embeddings, so
    the engine's class embeddings are the frozen text tower's on "a photo of a {class}."."""
    from jaxclip_fs.clip.model import CLIP
    from test_towers import CONFIG, NAMES, tasks, tokenizer, variables

    declared = methods.get("coop", init="a_photo_of_a").towers
    model = CLIP(CONFIG)
    values = methods.get("coop").resolve("dtd", CONFIG.embed_dim)[0]
    recipe = tower_methods.recipe(declared, model, values)
    tokens = tower_methods.tokens(declared, tokenizer(), NAMES)
    start = tower_methods.initial(declared, recipe, tasks(np.ones((3, 3, 2))), variables(),
                                  tokenizer())
    assert start["ctx"].shape == (3, 4, CONFIG.text_width)
    text = tower_methods.classifiers(declared, model, variables(), start, tokens,
                                     np.zeros((3, CONFIG.embed_dim), np.float32))
    plain = tokenizer()([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    want = model.apply(variables(), jnp.asarray(plain), method="encode_text")
    want = want / jnp.linalg.norm(want, axis=-1, keepdims=True)
    for s in range(3):
        np.testing.assert_allclose(text[s], want, atol=2e-5)


def test_the_planner_rematerialises_a_tower_program_where_memory_demands(monkeypatch):
    """A tower program whose compiled memory exceeds the budget is measured again with its
    blocks rematerialised and runs so (``options``); one that fits is measured once."""
    from types import SimpleNamespace

    from jaxclip_fs.engine import layout, planner
    from jaxclip_fs.experiment.plan import Cell, Program, Variant

    calls = []

    def fake(program, variant, clip, image, *, remat, mode, **_):
        calls.append(remat)
        return planner.Estimate(program, estimate_lib.cost_lib.ZERO, 60 if remat else 100,
                                exact=True, notes=("n",))

    monkeypatch.setattr(estimate_lib, "tower_estimate", fake)
    monkeypatch.setattr(estimate_lib, "image_sizes", lambda *a, **k: None)
    source = SimpleNamespace(abstract_clip=lambda: None)
    sizes = layout.Sizes(SimpleNamespace(provider=lambda kind, label: source))
    config = SimpleNamespace(train_dtype="float32", extraction=SimpleNamespace(batch_size=4),
                             protocol=SimpleNamespace(sampler=None, prompts=None))
    variant = Variant("clip_lora", methods.get("clip_lora"), {})
    program = Program("clip_lora", ("d",), (Cell("clip_lora", "d", 1, 1, "fair"),))
    monkeypatch.setattr(layout, "rules_of", lambda *a: protocol_lib.rules(
        "fair", variant.method, "d"))
    for budget, want, measured in ((80, (("remat", True),), [False, True]),
                                   (100, (), [False])):
        calls.clear()
        measure = layout._measure(program, variant, sizes, config, None, {},
                                  lambda kind, d: None, False, False, budget=budget)
        found = measure(program, "memory")
        assert found.options == want and calls == measured
        if want:
            assert found.memory == 60 and "100" not in found.notes[0]
            assert "per device without" in found.notes[-1]
