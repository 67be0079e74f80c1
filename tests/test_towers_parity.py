"""PyTorch parity of training through the towers: losses, gradients, optimisers and schedules.

* CoOp: a PyTorch restatement of the official ``PromptLearner`` (unified
  context, class token at the end) + ``TextEncoder`` on open_clip's CLIP
  (OpenAI layout); our loss and context gradient, loaded from the same
  checkpoint, must agree.
* CLIP-LoRA: transformers' ``CLIPModel`` with an explicit LoRA wrapper on
  the chosen q/k/v/o projections (``y = W x + b + s · x (B A)ᵀ``, as the
  official ``LinearLoRA``), dropout off; loss and every factor's gradient.
* The optimisers: PyTorch SGD + a restatement of Dassl's constant-warm-up
  wrapper around ``CosineAnnealingLR`` (stepped per epoch), and AdamW +
  ``CosineAnnealingLR(eta_min=1e-6)`` (stepped per iteration), against our
  optax transformations on the same gradient sequence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs.clip import prompts
from jaxclip_fs.clip.lora import LoraSpec, init_lora
from jaxclip_fs.clip.tokenizer import load_tokenizer
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert import load_clip
from jaxclip_fs.train import lora_tuning, prompt_learning
from jaxclip_fs.train.towers import StepCounts
from oracles import need
from clip_checkpoints import (hf_model, openai_layout_model, random_images, save_hf_dir,
                              save_state_dict)

pytestmark = pytest.mark.oracle
torch = need("torch")  # (the module subclasses torch classes)
F = need("torch.nn.functional")

NAMES = ("cat", "golden_retriever", "sea lion")
LABELS = np.array([0, 2, 1, 1, 2])
WEIGHTS = np.array([1, 1, 1, 0, 1], np.float32)  # row 3 is padding: not in the torch batch
REAL = WEIGHTS > 0
TOL = 1e-4


def assert_close(ours, ref, what, tol=TOL):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = max(1e-3, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol * scale:.3g}"


# --- CoOp -----------------------------------------------------------------------------------


def torch_coop_loss(model, ctx, tokens, features, labels):
    """The official PromptLearner ("end", unified) + TextEncoder + CustomCLIP logits, CE."""
    tokens = torch.from_numpy(tokens.astype(np.int64))
    n_ctx = ctx.shape[0]
    with torch.no_grad():
        embedding = model.token_embedding(tokens)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx:]
    prompts_ = torch.cat([prefix, ctx.unsqueeze(0).expand(len(tokens), -1, -1), suffix], dim=1)
    x = prompts_ + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    text = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
    image = torch.from_numpy(features)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * image @ text.t()
    return F.cross_entropy(logits, torch.from_numpy(labels))


def test_coop_loss_and_context_gradient_equal_the_official_restatement(tmp_path):
    config = get_config("tiny-vit")
    model = openai_layout_model(config, seed=3)
    loaded = load_clip("tiny-vit", save_state_dict(model, str(tmp_path / "vit.safetensors")))
    tokens = prompts.context_skeleton(load_tokenizer(), NAMES, n_ctx=4)  # cut after EOT
    full = load_tokenizer()([f"X X X X {n.replace('_', ' ')}." for n in NAMES])  # 77: official
    np.testing.assert_array_equal(full[:, :tokens.shape[1]], tokens)
    rng = np.random.default_rng(0)
    ctx = (0.02 * rng.standard_normal((4, config.text_width))).astype(np.float32)
    features = rng.standard_normal((5, config.embed_dim)).astype(np.float32)

    recipe = prompt_learning.recipe(loaded.model, n_ctx=4)
    frozen = {"clip": loaded.params, "tokens": jnp.asarray(tokens)}
    loss, grads = jax.jit(jax.value_and_grad(recipe.loss))(
        {"ctx": jnp.asarray(ctx)}, frozen, jnp.asarray(features), jnp.asarray(LABELS),
        jnp.asarray(WEIGHTS), jax.random.key(0))

    ctx_t = torch.tensor(ctx, requires_grad=True)
    want = torch_coop_loss(model, ctx_t, full, features[REAL], LABELS[REAL])
    want.backward()
    assert_close(loss, want.item(), "CoOp loss")
    assert_close(grads["ctx"], ctx_t.grad.numpy(), "CoOp context gradient")
    assert float(np.abs(ctx_t.grad.numpy()).max()) > 0


# --- CLIP-LoRA ------------------------------------------------------------------------------

HF_PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


class LoRALinear(torch.nn.Module):
    """``W x + b + s · x (B A)ᵀ`` with A [r, in], B [out, r] (the official ``LinearLoRA``)."""

    def __init__(self, base: torch.nn.Linear, a: np.ndarray, b: np.ndarray, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        self.lora_A = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(a.T)))
        self.lora_B = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(b.T)))

    def forward(self, x):
        return self.base(x) + torch.matmul(x, (self.lora_B @ self.lora_A).transpose(0, 1)) * \
            self.scale


def wrap_with_lora(model, factors, spec):
    """Replaces each adapted projection of the HF model; returns {(tower, block, p): module}."""
    layers = {"visual": model.vision_model.encoder.layers, "text": model.text_model.encoder.layers}
    wrapped = {}
    for tower, blocks in factors.items():
        for block, projections in blocks.items():
            attention = layers[tower][int(block[len("block"):]) - 1].self_attn
            for p, f in projections.items():
                module = LoRALinear(getattr(attention, HF_PROJECTIONS[p]), np.asarray(f["a"]),
                                    np.asarray(f["b"]), spec.alpha / math.sqrt(spec.rank))
                setattr(attention, HF_PROJECTIONS[p], module)
                wrapped[tower, block, p] = module
    return wrapped


def torch_lora_loss(model, tokens, images, labels):
    """CLIP-LoRA's step loss: 100 · cos(image, text) through the adapted towers, CE."""
    text = model.text_projection(model.text_model(
        input_ids=torch.from_numpy(tokens.astype(np.int64))).pooler_output)
    image = model.visual_projection(model.vision_model(
        pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).pooler_output)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return F.cross_entropy(100.0 * image @ text.t(), torch.from_numpy(labels))


def random_factors(config, spec, seed):
    """Factors with A and B both non-zero (B = 0 would give A a zero gradient)."""
    factors = init_lora(jax.random.key(seed), config, spec)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(
        np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32)), factors)


def check_lora_parity(variant, spec, tmp_path, seed=0):
    config = get_config(variant)
    model = hf_model(config, seed=3)
    loaded = load_clip(variant, save_hf_dir(model, str(tmp_path / "hf")))
    tokens = lora_tuning.template_tokens(load_tokenizer(), NAMES)  # cut after the EOT
    full = load_tokenizer()([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])  # 77
    images = random_images(config, 5, seed=1)
    factors = random_factors(config, spec, seed)

    recipe = lora_tuning.recipe(loaded.model, spec, augment=False)
    frozen = {"clip": loaded.params, "tokens": jnp.asarray(tokens)}
    loss, grads = jax.jit(jax.value_and_grad(recipe.loss))(
        factors, frozen, jnp.asarray(images), jnp.asarray(LABELS), jnp.asarray(WEIGHTS),
        jax.random.key(0))

    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = wrap_with_lora(model, factors, spec)
    want = torch_lora_loss(model, full, images[REAL], LABELS[REAL])
    want.backward()
    assert_close(loss, want.item(), f"{variant} CLIP-LoRA loss")
    for (tower, block, p), module in wrapped.items():
        ours = grads[tower][block][p]
        assert_close(ours["a"], module.lora_A.grad.numpy().T, f"dL/dA {tower} {block} {p}")
        assert_close(ours["b"], module.lora_B.grad.numpy().T, f"dL/dB {tower} {block} {p}")
    assert len(wrapped) == sum(len(b) * len(spec.params) for b in factors.values())


def test_clip_lora_loss_and_factor_gradients_equal_a_torch_lora_wrapper(tmp_path):
    """Official defaults (q, k, v of every block of both towers, r 2, alpha 1), dropout off."""
    check_lora_parity("tiny-vit", LoraSpec(dropout=0.0), tmp_path)


@pytest.mark.slow
def test_clip_lora_parity_with_the_output_projection_and_rank_4(tmp_path):
    spec = LoraSpec(rank=4, alpha=2.0, dropout=0.0, params=("q", "v", "o"), position="up")
    check_lora_parity("tiny-vit", spec, tmp_path, seed=1)


@pytest.mark.slow
def test_clip_lora_parity_at_vit_b16_size(tmp_path):
    check_lora_parity("ViT-B/16", LoraSpec(dropout=0.0), tmp_path)


# --- optimisers and schedules ---------------------------------------------------------------


class DasslConstantWarmup(torch.optim.lr_scheduler.LRScheduler):
    """Restatement of Dassl's ``ConstantWarmupScheduler`` (``dassl/optim/lr_scheduler.py``)."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def run_both(torch_optimizer, after_step, optax_optimizer, steps, seed=0):
    """Applies the same gradient sequence with both; returns the two parameter trajectories."""
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((4, 3)).astype(np.float32)
    grads = rng.standard_normal((steps, 4, 3)).astype(np.float32)
    p_t = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = torch_optimizer([p_t])
    p_j, state = jnp.asarray(start), None
    state = optax_optimizer.init(p_j)
    ours, theirs = [], []
    for t in range(steps):
        p_t.grad = torch.from_numpy(grads[t])
        opt.step()
        after_step(t)
        updates, state = optax_optimizer.update(jnp.asarray(grads[t]), state, p_j)
        p_j = p_j + updates
        ours.append(np.asarray(p_j))
        theirs.append(p_t.detach().numpy().copy())
    return np.stack(ours), np.stack(theirs)


def test_coop_optimizer_equals_dassl_sgd_with_constant_warmup_and_cosine():
    epochs, per_epoch = 4, 3
    scheduler = {}

    def sgd(params):
        opt = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(epochs))
        scheduler["s"] = DasslConstantWarmup(opt, cosine, 1, 1e-5)
        return opt

    def after_step(t):
        if (t + 1) % per_epoch == 0:  # Dassl steps its scheduler after each epoch
            scheduler["s"].step()

    counts = StepCounts(jnp.int32(per_epoch), jnp.int32(epochs), jnp.int32(epochs * per_epoch))
    ours, theirs = run_both(sgd, after_step, prompt_learning.optimizer(counts),
                            epochs * per_epoch)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert not np.allclose(ours[per_epoch - 1], ours[per_epoch])  # epoch 1 moved after warm-up


def test_clip_lora_optimizer_equals_adamw_with_cosine_annealing():
    total = 7
    scheduler = {}

    def adamw(params):
        opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2)
        scheduler["s"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=1e-6)
        return opt

    counts = StepCounts(jnp.int32(2), jnp.int32(4), jnp.int32(total))
    ours, theirs = run_both(adamw, lambda t: scheduler["s"].step(),
                            lora_tuning.optimizer(counts), total)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
