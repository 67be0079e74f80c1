"""LDC's model: tap choice, shapes, the ICD residual, and the loss vs a PyTorch oracle.

The oracle (``tests/ldc_oracle.py``) rebuilds the official modules from
``torch.nn`` (Conv2d / Linear / BatchNorm / LayerNorm / AvgPool2d in train
mode, ``F.cross_entropy`` and ``F.l1_loss`` as ``get_loss`` weights them),
loads our parameters, and must give our loss, logits, gradients and updated
BatchNorm statistics -- also when our batch carries zero-weight padding rows
the oracle never sees.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import load_clip
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features.taps import tap_shape
from jaxclip_fs.methods import ldc as ldc_lib
from jaxclip_fs import methods
from jaxclip_fs.methods.images import ImageInputs
from jaxclip_fs.methods.ldc import LDCModel
from jaxclip_fs.methods.search import grid_search
from jaxclip_fs.methods.task import EvalSet, Task
from jaxclip_fs.pipelines import images
from oracles import lazy

torch = lazy("torch")
ldc_oracle = lazy("ldc_oracle")

C, B, PAD = 5, 6, 2


def test_vit_tap_blocks_follow_depth_and_the_official_rule():
    assert ldc_lib.vit_tap_blocks(12) == (6, 8, 10, 12)
    assert ldc_lib.vit_tap_blocks(24) == (12, 16, 20, 24)
    assert ldc_lib.vit_tap_blocks(3) == (2, 2, 3, 3)
    assert ldc_lib.vit_tap_blocks(12, "official") == (6, 8, 10, 12)
    assert ldc_lib.vit_tap_blocks(24, "official") == (18, 20, 22, 24)
    with pytest.raises(ConfigError, match="needs >= 7 blocks"):
        ldc_lib.vit_tap_blocks(3, "official")
    with pytest.raises(ConfigError, match="unknown LDC fusion 'sum'"):
        ldc_lib.vit_config(8, 4, 3, fusion="sum")


class _Loaded:
    """Enough of a LoadedCLIP (config + model) to build an LDC model without weights."""

    def __init__(self, name):
        from jaxclip_fs.clip.model import CLIP

        self.config = get_config(name)
        self.model = CLIP(self.config)


def ldc_for_clip(clip, num_classes, **switches):
    """LDC's model for a CLIP, and the taps it reads (as the image pipeline binds it)."""
    spec = images.image_spec(clip)
    rule = switches.pop("vit_rule", "proportional")
    return (ldc_lib.model_for(spec, num_classes, vit_rule=rule, **switches),
            ldc_lib.tap_names(spec, rule))


def test_published_variants_get_the_paper_shapes():
    rn, rn_taps = ldc_for_clip(_Loaded("RN50"), 37)
    assert rn_taps == ("layer1", "layer2", "layer3", "layer4")
    assert rn.config.pools == (8, 4, 2, 1) and rn.config.fused_dim == 2048
    shapes = jax.eval_shape(rn.init, jax.random.key(0))[0]
    assert [shapes["maf"][f"adapter{i}"]["kernel"].shape for i in (1, 2, 3, 4)] == [
        (256, 2048), (512, 2048), (1024, 2048), (2048, 2048)]
    assert (shapes["head"]["fc1"].shape, shapes["head"]["fc2"].shape) == ((1024, 1024), (1024, 37))
    assert [shapes["icd"][g]["fc1"].shape + shapes["icd"][g]["fc2"].shape
            for g in ("g1", "g2", "g3")] == [(37, 1024, 1024, 1024), (1024, 1024, 1024, 1024),
                                             (1024, 1024, 1024, 37)]
    assert shapes["alf"]["fc2"].shape == (1024, 1)
    vit, vit_taps = ldc_for_clip(_Loaded("ViT-B/16"), 37)
    assert vit_taps == ("block6", "block8", "block10", "block12")
    shapes = jax.eval_shape(vit.init, jax.random.key(0))[0]
    assert shapes["maf"]["adapter1"]["kernel"].shape == (768, 768)
    assert (shapes["head"]["fc1"].shape, shapes["head"]["fc2"].shape) == ((512, 2048), (2048, 37))
    assert ldc_for_clip(_Loaded("ViT-L/14"), 2)[1] == (
        "block12", "block16", "block20", "block24")


@pytest.fixture(scope="module", params=["tiny-rn", "tiny-vit"])
def tiny(request):
    """A tiny CLIP, its LDC model, and the LDC inputs of B random images."""
    clip = load_clip(request.param, "random")
    model, taps = ldc_for_clip(clip, C)
    rng = np.random.default_rng(0)
    size = clip.config.image_size
    text = rng.standard_normal((C, clip.config.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    frozen = images.frozen_arrays(clip, text)
    fetch = images.trunk_fetch(clip.model, taps, augment_views=False)
    pixels = rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8)
    inputs = jax.jit(fetch)(frozen, None, pixels)
    return clip, model, taps, inputs


def test_tap_adapter_shapes_and_zero_icd_residual(tiny):
    """Every tap and adapter has its shape; with g3's last layer at zero, ada is exactly s."""
    clip, model, taps, inputs = tiny
    for name, x in zip(taps, inputs.taps):
        assert x.shape == (B, *tap_shape(clip.config, name))

    @jax.jit
    def forward(variables, inputs):
        params, stats = model.init(jax.random.key(0))
        ones = jnp.ones(B)
        adapted, _ = model.adapt_taps(params, stats, inputs.taps, train=False, weights=ones)
        z, _ = model.maf(params, stats, variables, inputs.taps, train=False, weights=ones)
        out = model.apply(params, stats, variables, inputs, train=False)[0]
        params["icd"]["g3"]["fc2"] = jnp.zeros_like(params["icd"]["g3"]["fc2"])
        zeroed = [model.apply(params, stats, variables, inputs, train=train)[0].ada
                  for train in (False, True)]
        return adapted, z, out, zeroed

    adapted, z, out, zeroed = forward(clip.params, inputs)
    if clip.config.is_vit:
        assert [a.shape for a in adapted] == [(B, clip.config.vision_width)] * 4
    else:
        side = tap_shape(clip.config, "layer4")[0]
        assert [a.shape for a in adapted] == [(B, side, side, model.config.fused_dim)] * 4
    assert z.shape == (B, clip.config.embed_dim)
    assert [x.shape for x in out] == [(B, C), (B, C), (B, C), (B,)]
    assert np.all(np.isfinite(np.asarray(out.tot)))
    assert not np.allclose(np.asarray(out.ada), np.asarray(inputs.s))
    for ada in zeroed:
        np.testing.assert_array_equal(np.asarray(ada), np.asarray(inputs.s))


def _linear_projector(proj, x):
    return (jnp.mean(x, axis=(1, 2)) if x.ndim == 4 else x) @ proj


CASES = [("resnet", "fixed", "full"), ("resnet", "concat", "full"),
         ("vit", "concat", "full"), ("vit", "learned", "maf_only"),
         ("resnet", "average", "icd_only")]


@pytest.mark.oracle
@pytest.mark.parametrize("tower, fusion, ablation", CASES)
def test_loss_logits_grads_and_batchnorm_match_pytorch(tower, fusion, ablation):
    rng = np.random.default_rng(7)
    e = 6
    if tower == "resnet":
        config = ldc_lib.resnet_config([(8, 8, 3), (4, 4, 5), (2, 2, 7), (1, 1, 4)], e, C,
                                       fusion=fusion, ablation=ablation)
        taps = [rng.standard_normal((B + PAD, h, h, c)).astype(np.float32)
                for h, c in ((8, 3), (4, 5), (2, 7), (1, 4))]
        proj = rng.standard_normal((config.fused_dim, e)).astype(np.float32)
    else:
        config = ldc_lib.vit_config(8, e, C, head_hidden=12, fusion=fusion, ablation=ablation)
        taps = [rng.standard_normal((B + PAD, 5, 8)).astype(np.float32) for _ in range(4)]
        proj = rng.standard_normal((8, e)).astype(np.float32)
    model = LDCModel(config, _linear_projector)
    params, stats = model.init(jax.random.key(3))
    if "fusion_logits" in params.get("maf", {}):
        params["maf"]["fusion_logits"] = jnp.asarray([0.3, -0.2, 0.5, 0.1])
    s = (10 * rng.standard_normal((B + PAD, C))).astype(np.float32)
    features = rng.standard_normal((B + PAD, e)).astype(np.float32)
    labels = rng.integers(0, C, B + PAD)
    weights = np.r_[np.ones(B), np.zeros(PAD)].astype(np.float32)
    inputs = ImageInputs(tuple(jnp.asarray(t) for t in taps), jnp.asarray(s), jnp.asarray(features))

    (value, (out, new_stats)), grads = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(
        params, stats, jnp.asarray(proj), inputs, jnp.asarray(labels), jnp.asarray(weights))

    oracle = ldc_oracle.Oracle(config, params, stats, proj).train()
    t_taps = [torch.tensor(x[:B]).permute(0, 3, 1, 2) if x.ndim == 4 else torch.tensor(x[:B])
              for x in taps]
    for t in t_taps:
        t.requires_grad_(False)
    t_value, t_out = oracle.loss(t_taps, torch.tensor(s[:B]), torch.tensor(features[:B]),
                                 torch.tensor(labels[:B]))
    t_value.backward()
    np.testing.assert_allclose(float(value), t_value.item(), rtol=1e-5)
    for ours, theirs in zip((out.mlp, out.ada, out.tot), t_out):
        np.testing.assert_allclose(np.asarray(ours)[:B], theirs.detach().numpy(), rtol=1e-4,
                                   atol=1e-4)
    # gradients of the first and last trainable kernels
    if ablation != "icd_only":
        first = oracle.adapters[0][0].weight.grad.numpy().reshape(config.fused_dim, -1).T
        np.testing.assert_allclose(np.asarray(grads["maf"]["adapter1"]["kernel"]), first,
                                   rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(np.asarray(grads["head"]["fc2"]),
                                   oracle.head[3].weight.grad.numpy().T, rtol=1e-3, atol=1e-5)
    else:
        np.testing.assert_allclose(np.asarray(grads["icd"]["g3"]["fc2"]),
                                   oracle.g[2][3].weight.grad.numpy().T, rtol=1e-3, atol=1e-5)
    # the running statistics PyTorch updated in train mode
    bns = {"head": oracle.head[1]} if ablation != "icd_only" else {"g1": oracle.g[0][1]}
    for name, bn in bns.items():
        ours = new_stats[name]["bn"] if name == "head" else new_stats["icd"]["g1"]["bn"]
        np.testing.assert_allclose(np.asarray(ours["mean"]), bn.running_mean.numpy(), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(ours["var"]), bn.running_var.numpy(), rtol=1e-4)
    if tower == "resnet" and ablation != "icd_only":
        bn = oracle.adapters[2][1]
        np.testing.assert_allclose(np.asarray(new_stats["maf"]["adapter3"]["bn"]["var"]),
                                   bn.running_var.numpy(), rtol=1e-4)
    # eval mode with the updated statistics
    evaluated = jax.jit(lambda *a: model.apply(*a, train=False)[0])(
        params, new_stats, jnp.asarray(proj), inputs)
    oracle.eval()
    with torch.no_grad():
        t_eval = oracle(t_taps, torch.tensor(s[:B]), torch.tensor(features[:B]))
    np.testing.assert_allclose(np.asarray(evaluated.tot)[:B], t_eval[2].numpy(), rtol=1e-4,
                               atol=1e-4)


def test_beta_search_is_the_official_first_best_loop():
    """LDC's β goes through the library's grid search (linear in β): the official loop's pick."""
    rng = np.random.default_rng(0)
    mlp, ada = rng.standard_normal((2, 40, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 40)
    grid = ldc_lib.beta_grid()
    method = methods.get("ldc")
    task = Task(None, jnp.ones((4, 1)), jnp.ones(4), jnp.zeros((4, 8)), jnp.asarray(100.0))
    found = grid_search(method, {}, task, EvalSet(None, jnp.asarray(labels), jnp.ones(40)), {},
                        {"beta": jnp.asarray(grid, jnp.float32)},
                        pre={"mlp": jnp.asarray(mlp), "ada": jnp.asarray(ada)})
    best_acc, best_beta, loop_counts = 0, 0.0, []
    for beta in grid:  # official search_hp: beta_list, `if acc > best_acc`
        logits = beta * mlp.astype(np.float64) + (1 - beta) * ada
        hits = int(np.sum(np.argmax(logits, -1) == labels))
        loop_counts.append(hits)
        if hits > best_acc:
            best_acc, best_beta = hits, beta
    np.testing.assert_array_equal(np.asarray(found["counts"]), loop_counts)
    assert grid[int(found["index"]["beta"])] == best_beta and len(grid) == 51 and grid[1] == 0.02
    base, residuals = ldc_lib.terms({"mlp": jnp.asarray(mlp), "ada": jnp.asarray(ada)}, None,
                                    None, None)
    np.testing.assert_allclose(np.asarray(base + 0.3 * residuals["beta"]), 0.3 * mlp + 0.7 * ada,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
def test_update_bn_is_pytorchs_swa_update_bn():
    """``ldc(bn_stats="update_bn")`` through the trainer == ``torch.optim.swa_utils.update_bn``.

    15 real items of a [C, 4] pool (nested: 3 shots), batches of 6 -> 6, 6, 3
    rows (the last one padded to 6 on our side), no training step (0 epochs):
    every BatchNorm layer's reset-then-cumulative-average statistics must agree.
    """
    from jaxclip_fs.methods.images import ImageSpec
    from jaxclip_fs.train.trainer import TrainData, epoch_plan, train

    rng = np.random.default_rng(11)
    e, shots, real_shots, batch = 6, 4, 3, 6
    sides = ((8, 3), (4, 5), (2, 7), (1, 4))
    spec = ImageSpec("resnet", tuple((f"layer{i}", (h, h, c)) for i, (h, c) in enumerate(sides, 1)),
                     e, _linear_projector)
    method = methods.get("ldc", bn_stats="update_bn").bind(spec)
    config = ldc_lib.model_for(spec, C).config
    params, stats = ldc_lib.model_for(spec, C).init(jax.random.key(4))
    n = C * shots
    pool = {"taps": tuple(rng.standard_normal((1, n, h, h, c)).astype(np.float32)
                          for h, c in sides),
            "s": (10 * rng.standard_normal((1, n, C))).astype(np.float32),
            "features": rng.standard_normal((1, n, e)).astype(np.float32)}
    proj = rng.standard_normal((config.fused_dim, e)).astype(np.float32)
    index = rng.permutation(n).reshape(C, shots).astype(np.int32)
    mask = np.broadcast_to(np.arange(shots) < real_shots, (C, shots)).astype(np.float32)
    task = Task(None, jnp.asarray(mask), jnp.ones(C), jnp.zeros((C, e)), jnp.asarray(100.0),
                {"projector": jnp.asarray(proj)})
    hp = {"epochs": 0.0, "lr": 1e-3, "eps": 1e-4, "weight_decay": 0.0}
    key = jax.random.key(9)
    trained, _ = train(
        lambda p, x, y, w: method.loss(p, task, x, y, w, hp), None,
        {"heads": params, "batch_stats": stats}, ("heads",),
        TrainData(jax.tree.map(jnp.asarray, pool), jnp.asarray(index), jnp.asarray(mask)), key,
        hp, batch_size=batch, max_epochs=1, aux=("batch_stats",),
        fetch=lambda k, rows: ImageInputs(tuple(rows["taps"]), rows["s"], rows["features"]),
        selection="final",
        aux_estimate=lambda p, x, y, w: method.state_estimate(p, task, x, y, w, hp))
    ours = trained["batch_stats"]

    order, _ = epoch_plan(key, jnp.asarray(mask), 1, 0)  # epoch `epochs` = 0: the pass's loader
    flat = np.asarray(order)[:C * real_shots]  # real items first
    loader = []
    for start in range(0, len(flat), batch):
        items = flat[start:start + batch]
        rows = index[items // shots, items % shots]
        loader.append({"taps": [torch.tensor(t[0, rows]).permute(0, 3, 1, 2) for t in pool["taps"]],
                       "s": torch.tensor(pool["s"][0, rows]),
                       "features": torch.tensor(pool["features"][0, rows])})
    assert [len(b["s"]) for b in loader] == [6, 6, 3]
    oracle = ldc_oracle.Oracle(config, params, stats, proj)
    torch.optim.swa_utils.update_bn(loader, ldc_oracle.DictInput(oracle))
    theirs = {"maf": {f"adapter{i}": {"bn": oracle.adapters[i - 1][1]} for i in range(1, 5)},
              "head": {"bn": oracle.head[1]},
              "icd": {g: {"bn": oracle.g[j][1]} for j, g in enumerate(("g1", "g2", "g3"))},
              "alf": {"bn": oracle.gw[0][1]}}
    for path, bn in jax.tree_util.tree_flatten_with_path(
            theirs, is_leaf=lambda x: isinstance(x, torch.nn.Module))[0]:
        mine = ours
        for p in path:
            mine = mine[p.key]
        assert int(bn.num_batches_tracked) == 3
        np.testing.assert_allclose(np.asarray(mine["mean"]), bn.running_mean.numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=str(path))
        np.testing.assert_allclose(np.asarray(mine["var"]), bn.running_var.numpy(), rtol=1e-4,
                                   atol=1e-7, err_msg=str(path))
