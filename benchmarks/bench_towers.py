"""Training through CLIP's towers: S seeds in one vmapped program vs the official PyTorch step.

For one CLIP variant (random weights: speed does not depend on the values)
and each method, a support set of C x K items is trained for ``--steps``
optimiser steps per seed, S seeds:

* **ours**: :func:`jaxclip_fs.train.towers.train_seeds` -- the S seeds'
  adaptations vmapped in one compiled program (``lax.scan`` over the steps),
  the frozen CLIP shared; compilation timed apart.
* **PyTorch**: a restatement of the official training step on open_clip's
  CLIP with the same weights (OpenAI layout, as the official codes load it),
  one seed after the other (S runs), each from a fresh adaptation and optimiser:

  - CoOp (``trainers/coop.py``): the frozen image encoder on the batch,
    ``PromptLearner`` (16 context vectors, class token at the end) +
    ``TextEncoder`` over all C prompts, CE, backward, SGD (its per-epoch schedule
    costs nothing and is left out).
  - CLIP-LoRA (``lora.py``): ``PlainMultiheadAttentionLoRA`` in every block
    of both towers (q, k, v as separate ``LinearLoRA``: ``x W + s · x (B A)ᵀ``
    with dropout 0.25 on x), text features of "a photo of a {}." recomputed
    each step, image features of the batch, CE, backward, AdamW + cosine.
    (The official code runs it under CUDA fp16 autocast; on CPU both sides are float32.)

PyTorch runs with 1 thread or one per core, whichever is faster on the
machine's load at the time (OpenMP threads suffer most from other
processes). Ours runs the text tower on the prompts cut after their longest
EOT (``trim_after_eot``: the same features, causal attention), the official
code on all 77 positions; ours draws LoRA dropout masks with a counter hash,
PyTorch with its generator. Both sides read pre-made batches (no image
decoding, no augmentation), so the model step is what is timed. Our CoOp trains on image features
computed once per view (its image tower is frozen); the time to encode the
views the run reads is printed beside it (PyTorch's CoOp step encodes its
batch every step). Timings alternate ``--repeats`` times, best kept; the
machine's load average is printed (other processes slow both sides).
FLOPs are XLA's count of our program; the PyTorch line divides the same
count by PyTorch's time (useful work, not the extra work it does).

  python -m benchmarks.bench_towers [--quick] [--variant ViT-B/16] [--seeds 3] [--steps 4]
      [--method coop,clip_lora] [--remat] [--dtype bfloat16] [--memory]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.efficiency import count_flops, fraction, measured_peak
from jaxclip_fs.clip import prompts
from jaxclip_fs.clip.lora import LoraSpec, tower_blocks
from jaxclip_fs.clip.model import CLIP, abstract_variables
from jaxclip_fs.clip.tokenizer import load_tokenizer
from jaxclip_fs.clip.variants import get_config
from jaxclip_fs.convert.assemble import assemble
from jaxclip_fs.convert.layouts import OPENAI
from jaxclip_fs.convert.tensors import state_dict_to_numpy
from jaxclip_fs.engine.cost import compiled_memory
from jaxclip_fs.train import lora_tuning, prompt_learning, towers

# the tests' open_clip builder (same architecture numbers as our variant table)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from clip_checkpoints import openai_layout_model  # noqa: E402

N_CTX = 16


def _timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def class_names(classes: int) -> list[str]:
    return [f"class number {i}" for i in range(classes)]


# --- PyTorch: the official steps, restated ------------------------------------------------


class LinearLoRA(torch.nn.Module):
    """The official ``LinearLoRA`` forward with dropout: ``x W + b + s · drop(x) (B A)ᵀ``."""

    def __init__(self, weight, bias, rank, scale, dropout):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.lora_A = torch.nn.Parameter(torch.empty(rank, weight.shape[1]))
        self.lora_B = torch.nn.Parameter(torch.zeros(weight.shape[0], rank))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale, self.dropout = scale, torch.nn.Dropout(dropout)

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        return out + torch.matmul(self.dropout(x), (self.lora_B @ self.lora_A).t()) * self.scale


class MultiheadAttentionLoRA(torch.nn.Module):
    """``PlainMultiheadAttentionLoRA``: separate q, k, v (LoRA) and the output projection."""

    def __init__(self, mha: torch.nn.MultiheadAttention, spec: LoraSpec):
        super().__init__()
        width, self.heads = mha.embed_dim, mha.num_heads
        w, b = mha.in_proj_weight, mha.in_proj_bias
        for i, name in enumerate("qkv"):
            setattr(self, f"{name}_proj", LinearLoRA(w[i * width:(i + 1) * width],
                                                     b[i * width:(i + 1) * width], spec.rank,
                                                     spec.scale, spec.dropout))
        self.proj = mha.out_proj

    def forward(self, query, key, value, need_weights=False, attn_mask=None):
        batch, tokens, width = query.shape
        split = lambda x: x.view(batch, -1, self.heads, width // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width)), None


def torch_lora_model(model, spec: LoraSpec):
    """A deep copy of the open_clip model with LoRA attention in every block of both towers."""
    import copy

    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for resblocks in (model.transformer.resblocks, model.visual.transformer.resblocks):
        for block in resblocks:
            block.attn = MultiheadAttentionLoRA(block.attn, spec)
    return model


def torch_coop_run(model, tokens, images, labels, steps):
    """One seed of the official CoOp loop: ``steps`` steps of (image encoder, prompts, SGD)."""
    tokens = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        embedding = model.token_embedding(tokens)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + N_CTX:]
    ctx = torch.nn.Parameter(0.02 * torch.randn(N_CTX, embedding.shape[-1]))
    opt = torch.optim.SGD([ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    for t in range(steps):
        x_img, y = images[t % len(images)], labels[t % len(labels)]
        with torch.no_grad():
            image = model.encode_image(x_img)
        prompt = torch.cat([prefix, ctx.unsqueeze(0).expand(len(tokens), -1, -1), suffix], 1)
        x = model.transformer(prompt + model.positional_embedding, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        text = x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ model.text_projection
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ctx.detach()


def torch_lora_run(model, tokens, images, labels, steps):
    """One seed of the official CLIP-LoRA loop (fresh factors, AdamW, cosine per iteration)."""
    for module in model.modules():  # fresh factors for this seed
        if isinstance(module, LinearLoRA):
            torch.nn.init.kaiming_uniform_(module.lora_A, a=math.sqrt(5))
            torch.nn.init.zeros_(module.lora_B)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-6)
    tokens = torch.from_numpy(tokens.astype(np.int64))
    model.train()
    for t in range(steps):
        text = F.normalize(model.encode_text(tokens), dim=-1)
        image = F.normalize(model.encode_image(images[t % len(images)]), dim=-1)
        loss = F.cross_entropy(100.0 * image @ text.t(), labels[t % len(labels)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return params


# --- the benchmark ---------------------------------------------------------------------------


def bench_method(method, config, torch_model, variables, *, seeds, classes, shots, steps, batch,
                 repeats, dtype, remat, memory):
    model = CLIP(config, dtype, remat)
    tokenizer = load_tokenizer()
    names = class_names(classes)
    rng = np.random.default_rng(0)
    items = classes * shots
    size = config.image_size
    index = np.arange(items, dtype=np.int32)[None].repeat(seeds, 0).reshape(seeds, classes, shots)
    for s in range(seeds):  # each seed its own order of the shared pool (as its own draw)
        index[s] = rng.permutation(items).reshape(classes, shots)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(jnp.arange(1, seeds + 1))
    tasks = towers.TowerTask(jnp.asarray(index), jnp.ones((seeds, classes, shots), jnp.float32),
                             keys)
    torch_images = [torch.randn(batch, 3, size, size) for _ in range(2)]
    torch_labels = [torch.randint(0, classes, (batch,)) for _ in range(2)]
    extra = {}
    if method == "coop":
        tokens = prompts.context_skeleton(tokenizer, names, N_CTX)  # ours: cut after the EOT
        official = tokenizer([" ".join(["X"] * N_CTX) + f" {n}." for n in names])  # 77
        per_epoch = int(towers.epoch_counts(jnp.ones((classes, shots)), batch, 1, True).total)
        epochs = -(-steps // per_epoch)
        recipe = prompt_learning.recipe(model, n_ctx=N_CTX, epochs=epochs, batch_size=batch)
        views = epochs + 1  # view 0 + one fresh view per epoch
        chunks = -(-views * items // batch)  # whole batches: one compiled shape
        pixels = rng.standard_normal((chunks * batch, size, size, 3)).astype(np.float32)
        encode = jax.jit(lambda v, x: CLIP(config, dtype).apply(v, x, method="encode_image")[0])
        encode(variables, pixels[:batch])  # compile
        start = time.perf_counter()
        feats = [encode(variables, pixels[i:i + batch]) for i in range(0, len(pixels), batch)]
        pool = jnp.concatenate(feats)[:views * items].reshape(views, items, -1)
        jax.block_until_ready(pool)
        extra["features_s"] = time.perf_counter() - start
        extra["feature_images"] = views * items

        def torch_run():
            return torch_coop_run(torch_model, official, torch_images, torch_labels, steps)
    else:
        spec = LoraSpec()
        tower_blocks(spec, config)
        tokens = lora_tuning.template_tokens(tokenizer, names)  # ours: cut after the EOT
        official = tokenizer([lora_tuning.TEMPLATE.format(n) for n in names])  # 77 positions
        recipe = lora_tuning.recipe(model, spec, total=steps, batch_size=batch, augment=False)
        pool = jnp.asarray(rng.standard_normal((1, items, size, size, 3)).astype(np.float32))
        lora_model = torch_lora_model(torch_model, spec)

        def torch_run():
            return torch_lora_run(lora_model, official, torch_images, torch_labels, steps)

    frozen = {"clip": variables, "tokens": jnp.asarray(tokens)}
    scan = towers.max_steps(recipe, tasks.mask)
    start_adapt = towers.init_seeds(recipe, tasks)

    def ours(t, a):
        return towers.train_seeds(recipe, frozen, pool, t, a, steps=scan)

    if memory:
        lowered = jax.jit(lambda f, p, t, a: towers.train_seeds(recipe, f, p, t, a, steps=scan)
                          ).lower(frozen, pool, tasks, start_adapt)
        extra["memory"] = compiled_memory(lowered)[1]
    first = _timed(ours, tasks, start_adapt)
    threads = {}
    for count in sorted({1, os.cpu_count() or 1}):  # PyTorch's best thread count on this load
        torch.set_num_threads(count)
        _timed(torch_run)
        threads[count] = _timed(torch_run)
    extra["torch_threads"] = min(threads, key=threads.get)
    torch.set_num_threads(extra["torch_threads"])
    mine, theirs = [], []
    for _ in range(repeats):  # alternate; keep the best of each (the machine is shared)
        mine.append(_timed(ours, tasks, start_adapt))
        theirs.append(sum(_timed(torch_run) for _ in range(seeds)))
    flops = count_flops(lambda f, p, t, a: towers.train_seeds(recipe, f, p, t, a, steps=scan),
                        frozen, pool, tasks, start_adapt)
    return {"method": method, "first": first, "ours": min(mine), "torch": min(theirs),
            "steps": scan, "flops": flops, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="tiny-vit", help="tiny-vit, or e.g. ViT-B/16")
    parser.add_argument("--method", default="coop,clip_lora")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="official: 32")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per seed")
    parser.add_argument("--repeats", type=int, default=2, help="timings alternate; best kept")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--remat", action="store_true", help="rematerialise the blocks (ours)")
    parser.add_argument("--memory", action="store_true",
                        help="also compile once more for XLA's memory analysis of our program")
    parser.add_argument("--quick", action="store_true",
                        help="tiny-vit, 2 seeds, 2 steps, 1 repeat (a few minutes on 2 cores)")
    args = parser.parse_args()
    if args.quick:
        args.variant, args.seeds, args.steps, args.repeats = "tiny-vit", 2, 2, 1
    config = get_config(args.variant)
    torch_model = openai_layout_model(config, seed=0)
    variables = jax.device_put(assemble(abstract_variables(config),
                                        state_dict_to_numpy(torch_model.state_dict()), OPENAI,
                                        args.variant, "open_clip model"))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores), torch "
          f"{torch.__version__}; {args.variant} random weights; {args.seeds} seeds x "
          f"{args.classes} classes x {args.shots} shots, batch {args.batch}, {args.steps} steps "
          f"per seed; compute {args.dtype}{', remat' if args.remat else ''}; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    peak = measured_peak(args.dtype)
    lines = []
    for method in args.method.split(","):
        r = bench_method(method, config, torch_model, variables, seeds=args.seeds,
                         classes=args.classes, shots=args.shots, steps=args.steps,
                         batch=args.batch, repeats=args.repeats,
                         dtype=jnp.dtype(args.dtype), remat=args.remat, memory=args.memory)
        s = args.seeds
        threads = f"{r['torch_threads']} thread{'s' if r['torch_threads'] > 1 else ''}"
        print(f"{method}: {r['steps']} steps per seed | ours, {s} seeds vmapped: {r['ours']:.3f} s "
              f"(first call with compile {r['first']:.1f} s) | PyTorch float32 official step, "
              f"{s} runs one by one ({threads}, its faster): {r['torch']:.3f} s | ours is "
              f"{r['torch'] / r['ours']:.2f}x faster", flush=True)
        if "features_s" in r:
            total = r["ours"] + r["features_s"]
            print(f"  + encoding the {r['feature_images']} views it reads once (shared by the "
                  f"seeds): {r['features_s']:.3f} s -> {total:.3f} s in all, "
                  f"{r['torch'] / total:.2f}x faster than PyTorch")
        if "memory" in r:
            m = r["memory"]
            print(f"  our program's memory (XLA): arguments {m.arguments / 2**20:.1f} MiB, "
                  f"temporaries {m.temporaries / 2**20:.1f} MiB")
        lines += [fraction(f"{args.variant} {method}, ours ({s} seeds vmapped)", r["flops"],
                           r["ours"], peak),
                  fraction(f"{args.variant} {method}, PyTorch ({s} runs; XLA's count of our "
                           "program)", r["flops"], r["torch"], peak)]
    print("\n".join(lines))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
