"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022) as a method.

CoOp learns M context vectors ``ctx`` [M, W] shared by the classes, read by
the frozen text tower in place of a hand-written prompt
(``[SOS] ctx_1 .. ctx_M [class tokens] . [EOS]``)::

    logits = exp(logit_scale) · f̂ · t̂(ctx)ᵀ        loss = CE(logits, y)

with ``f`` the frozen image tower's embedding of an augmented view. The
training runs through the CLIP's text tower, so the engine's *tower program*
runs it (``engine/tower_program.py``, the recipe of
``train/prompt_learning.py``): all seeds and shot counts of a dataset in one
compiled program, each seed's context a small pytree, one copy of the CLIP.

Official settings (KaiyangZhou/CoOp ``configs/trainers/CoOp/*.yaml``,
``scripts/coop/README.md``; Dassl.pytorch ``dassl/optim``, ``dassl/config/defaults.py``):
SGD lr 0.002, momentum 0.9, weight decay 5e-4, one constant warm-up epoch
at 1e-5 then cosine per epoch, batch 32 (last partial batch dropped), epochs
by shot count (1 shot: 50; 2-4: 100; 8-16: 200; ImageNet 50), random
N(0, 0.02²) context with M = 16 (``init=a_photo_of_a``: the phrase's token
embeddings, M = 4), RandomResizedCrop(0.08-1) + flip, the final iterate
(``TEST.FINAL_MODEL = "last_step"``: no validation). Under every protocol
the final iterate is kept and nothing is selected (``fair`` too: no
hyperparameter is searched, so validation would choose nothing); the
records say so (``val_size`` 0).

Hyperparameters (``--hp coop.NAME=VALUE``): ``epochs`` (absent: the
official count by shots), ``batch_size``, ``lr``, ``momentum``,
``weight_decay``, ``warmup_lr``.
"""

from __future__ import annotations

from jaxclip_fs import catalogue
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.methods import hparams as hp_lib
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Official, Option, Training
from jaxclip_fs.methods.images import TowerTraining, needs_binding
from jaxclip_fs.methods.optimizers import Optimizer

CARD = catalogue.card("coop")
INITS = ("random", "a_photo_of_a")
LR = hp_lib.HParam("lr", "train", "SGD learning rate (cosine per epoch after the warm-up)",
                   minimum=0.0, strictly_positive=True)
MOMENTUM = hp_lib.HParam("momentum", "train", "SGD momentum", minimum=0.0, maximum=1.0)
WEIGHT_DECAY = hp_lib.HParam("weight_decay", "train", "SGD weight decay (added to the gradient)",
                             minimum=0.0)
WARMUP_LR = hp_lib.HParam("warmup_lr", "train", "constant learning rate of the warm-up epoch",
                          minimum=0.0)
#: The official values (module docstring); ``epochs`` is absent: the official count by shots.
DEFAULTS = {"batch_size": 32, "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
            "warmup_lr": 1e-5}
OFFICIAL = Official(
    source="KaiyangZhou/CoOp configs/trainers/CoOp/*.yaml, scripts/coop/README.md (epochs by "
           "shots: 50 / 100 / 200, ImageNet 50), trainers/coop.py; Dassl.pytorch dassl/optim, "
           "dassl/config/defaults.py (TEST.FINAL_MODEL last_step: no validation); fp16",
    search_on="none", epochs_on="final", reported="final", sampler="reseeded",
    seeds=(1, 2, 3), dtype="float16")
OPTIONS = (Option("init", INITS, "context initialisation: N(0, 0.02²) with 16 vectors, or the "
                                 "token embeddings of 'a photo of a' (4 vectors; CTX_INIT)"),)


def built_by_the_tower_program(hp, steps, params):
    """A tower method's optimizer is built by the engine's tower program from its
    hyperparameters (the official schedule reads the epoch length); never by the trainer."""
    del hp, steps, params
    raise ConfigError("this method trains through the CLIP's towers: the engine's tower program "
                      "builds its optimizer")


SGD_PER_EPOCH = Optimizer(built_by_the_tower_program, (LR, MOMENTUM, WEIGHT_DECAY, WARMUP_LR))


def coop(init: str = "random") -> Method:
    """CoOp as a :class:`Method` trained through the towers (module docstring)."""
    phrase = init.replace("_", " ") if init != "random" else None
    towers = TowerTraining("context", "features", (0.08, 1.0),
                           (("phrase", phrase), ("n_ctx", 16 if phrase is None else 4)))
    return Method(
        CARD, Compute(init=needs_binding, precompute=needs_binding),
        Hyperparameters((), lambda dataset, dim: dict(DEFAULTS)),
        Training(trainable=("ctx",), optimizer=SGD_PER_EPOCH, epoch_selection="final"),
        official=OFFICIAL, options=OPTIONS, option_values={"init": init}, towers=towers)
