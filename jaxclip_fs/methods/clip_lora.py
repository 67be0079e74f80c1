"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
CVPR-W 2024) as a method.

CLIP-LoRA adds low-rank factors to the attention projections of both towers,
``y = x W + b + (alpha / sqrt(r)) · (Dropout_p(x) A) B`` with B = 0 at the
start, and trains them on the one template "a photo of a {}."::

    logits = 100 · f̂(crop(x); LoRA) · t̂("a photo of a {c}."; LoRA)ᵀ     loss = CE(logits, y)

Both towers run every step, so the engine's *tower program* runs it
(``engine/tower_program.py``, the recipe of ``train/lora_tuning.py``): all
seeds and shot counts of a dataset in one compiled program, each seed's
factors a small pytree, one copy of the CLIP.

Official settings (MaxZanella/CLIP-LoRA ``main.py``, ``lora.py``,
``run_utils.py``, ``loralib/utils.py``): q, k, v of every block of both
towers, rank 2, alpha 1, dropout 0.25; AdamW lr 2e-4, betas (0.9, 0.999),
weight decay 1e-2, cosine per iteration to 1e-6 over 500 · K iterations,
batch 32, RandomResizedCrop(0.08-1) + flip, the final iterate
(``VALIDATION = False``). ViT backbones only: on a ResNet the image tower
has no attention projections to adapt, and the method refuses in one line.
Under every protocol the final iterate is kept and nothing is selected
(``val_size`` 0 in the records).

Hyperparameters (``--hp clip_lora.NAME=VALUE``): ``steps`` (absent: the
official 500 · K), ``batch_size``, ``lr``, ``weight_decay``, ``min_lr``.
"""

from __future__ import annotations

from jaxclip_fs import catalogue
from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official, Option, Training
from jaxclip_fs.methods.coop import built_by_the_tower_program
from jaxclip_fs.methods.images import TowerTraining, needs_binding
from jaxclip_fs.methods.optimizers import Optimizer

CARD = catalogue.card("clip_lora")
MIN_LR = hp_lib.HParam("min_lr", "train", "the cosine schedule's final learning rate",
                       minimum=0.0)
#: The official values (module docstring); ``steps`` is absent: 500 · K.
DEFAULTS = {"batch_size": 32, "lr": 2e-4, "weight_decay": 1e-2, "min_lr": 1e-6}
ITERATIONS_PER_SHOT = 500
OFFICIAL = Official(
    source="MaxZanella/CLIP-LoRA main.py, lora.py (n_iters 500 x shots, VALIDATION False: the "
           "final iterate), run_utils.py (r 2, alpha 1, dropout 0.25, q k v, both encoders), "
           "loralib/utils.py; torch.autocast float16",
    search_on="none", epochs_on="final", reported="final", sampler="reseeded",
    seeds=(1, 2, 3), dtype="float16")
ADAMW_COSINE = Optimizer(built_by_the_tower_program,
                         (hp_lib.LR, hp_lib.WEIGHT_DECAY, MIN_LR))
OPTIONS = (
    Option("rank", ("2", "1", "4", "8", "16"), "rank r of every factor pair (--r)"),
    Option("encoder", ("both", "vision", "text"), "the towers adapted (--encoder)"),
    Option("params", ("qkv", "qkvo", "q", "v", "qv"),
           "the attention projections adapted (--params)"),
)


def clip_lora(rank: str = "2", encoder: str = "both", params: str = "qkv") -> Method:
    """CLIP-LoRA as a :class:`Method` trained through the towers (module docstring)."""
    towers = TowerTraining("lora", "pixels", (0.08, 1.0),
                           (("rank", int(rank)), ("alpha", 1.0), ("dropout", 0.25),
                            ("params", tuple(params)), ("position", "all"),
                            ("encoder", encoder), ("iterations_per_shot", ITERATIONS_PER_SHOT)))
    return Method(
        CARD, Compute(init=needs_binding, precompute=needs_binding),
        Hyperparameters((), lambda dataset, dim: dict(DEFAULTS)),
        Training(trainable=("lora",), optimizer=ADAMW_COSINE, unit="steps",
                 epoch_selection="final"),
        official=OFFICIAL, options=OPTIONS,
        option_values={"rank": rank, "encoder": encoder, "params": params}, towers=towers)
