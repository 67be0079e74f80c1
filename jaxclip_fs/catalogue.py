"""The shipped methods' cards, without jax: the registry's list, display names, published figures.

Every shipped method has one :class:`Card` in :data:`CARDS` -- its name,
display name, what it reads, its paper, its formula line and the figures
papers published for it -- and that card is its registration: the registry
(``jaxclip_fs.methods``) builds each card's factory from it
(``jaxclip_fs.methods.<name>.<name>``), and the jax-free readers (the report,
the reproduction configs, the CLI's listings) read the same cards. So a method
is named in its own module and here, nowhere else.

A *variant* of a method is the method with structural options
(``ldc[ablation=maf_only,fusion=concat]``): :func:`variant_label` writes
that label, :func:`split_label` reads it, :func:`display_name` shows it.

Published figures: each card cites its source; today the 16-shot RN50 table
of Li et al., "Logits DeConfusion with CLIP for Few-Shot Learning" (CVPR
2025), which restates its baselines next to LDC, plus LDC's ViT-B/16 average.
They are OpenAI's CLIP weights on the CoOp splits; :func:`published` never
answers for random weights.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

#: What a method reads (``Method.inputs``): CLIP features; the paired
#: ``[adapted | original]`` features of an IMO-adapted and the original
#: encoder; or images through the frozen CLIP (taps, zero-shot logits).
INPUT_KINDS = ("features", "paired", "images")


@dataclasses.dataclass(frozen=True)
class Published:
    """Figures a paper published for a method.

    Attributes:
      source: the paper (and table) they come from.
      figures: ``(backbone, shots, dataset or AVERAGE) -> top-1 accuracy in %``.
    """

    source: str
    figures: Mapping[tuple[str, int, str], float]


@dataclasses.dataclass(frozen=True)
class Card:
    """A method's identity, without jax: what the registry, the report and the CLI read.

    A shipped method's card is its one line in :data:`CARDS` (the registry reads
    the factory from it); a method registered at run time carries its own card.

    Attributes:
      name: registry name (``tip_adapter``); also the method's module and factory
        (``jaxclip_fs.methods.<name>.<name>``) unless ``factory`` says otherwise.
      display: the papers' name for tables (default: ``name``).
      inputs: what it reads, one of :data:`INPUT_KINDS`.
      paper: where it comes from.
      summary: one line, its formula.
      published: figures papers published for it.
      factory: ``"package.module:function"`` building it (default: by ``name``).
    """

    name: str
    display: str = ""
    inputs: str = "features"
    paper: str = ""
    summary: str = ""
    published: tuple[Published, ...] = ()
    factory: str = ""

    def __post_init__(self):
        if not self.name or "[" in self.name:
            raise ValueError(f"a method name must be non-empty, without '[': {self.name!r}")
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"method '{self.name}': inputs must be one of {INPUT_KINDS}, "
                             f"got '{self.inputs}'")

    @property
    def shown(self) -> str:
        return self.display or self.name

    @property
    def factory_path(self) -> tuple[str, str]:
        """(module, function) of the factory."""
        module, _, function = (self.factory or f"jaxclip_fs.methods.{self.name}:{self.name}"
                               ).partition(":")
        return module, function


# --- the published figures the cards cite ---------------------------------------------------

#: The papers' 11 benchmark sets (dataset registry names), in their tables' column order.
BENCHMARK_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                      "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
#: Column order of the published tables (dataset registry names) and their last column.
PUBLISHED_DATASETS = BENCHMARK_DATASETS
AVERAGE = "average"
LDC_TABLE = ("Li et al., Logits DeConfusion with CLIP for Few-Shot Learning, CVPR 2025 "
             "(16-shot RN50 table with its baselines; ViT-B/16 average)")


def ldc_table(*row: float, vit_b16_average: float | None = None) -> tuple[Published, ...]:
    """A row of the LDC paper's 16-shot RN50 table (the 11 datasets in
    :data:`PUBLISHED_DATASETS` order, then the average) and its ViT-B/16 average."""
    if len(row) != len(PUBLISHED_DATASETS) + 1:
        raise ValueError(f"a row of the LDC table has {len(PUBLISHED_DATASETS) + 1} figures")
    figures = {("RN50", 16, d): v for d, v in zip(PUBLISHED_DATASETS + (AVERAGE,), row)}
    if vit_b16_average is not None:
        figures[("ViT-B/16", 16, AVERAGE)] = vit_b16_average
    return (Published(LDC_TABLE, figures),)


# --- the shipped methods: one card each, in the tables' order -------------------------------
# (IN, Cal, Pets, Cars, Flo, Food, FGVC, SUN, DTD, Euro, UCF, avg)

CARDS: tuple[Card, ...] = (
    Card("zero_shot", "ZS-CLIP", paper="Radford et al., ICML 2021",
         summary="zero-shot CLIP: logit_scale · f Wᵀ",
         published=ldc_table(60.32, 85.92, 85.83, 55.74, 66.02, 77.32, 17.10, 58.52, 42.20,
                             37.52, 61.35, 58.89, vit_b16_average=65.52)),
    Card("tip_adapter", "Tip-Adapter", paper="Zhang et al., ECCV 2022",
         summary="Tip-Adapter: s + alpha · exp(-beta (1 - f Fᵀ)) L",
         published=ldc_table(62.01, 90.18, 88.14, 66.77, 89.89, 77.83, 29.76, 66.85, 60.93,
                             70.54, 70.58, 70.32)),
    Card("tip_adapter_f", "Tip-Adapter-F", paper="Zhang et al., ECCV 2022",
         summary="Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned",
         published=ldc_table(65.51, 92.86, 89.70, 75.74, 94.80, 79.43, 35.55, 71.47, 66.55,
                             84.54, 78.03, 75.83)),
    Card("tip_x", "Tip-X", paper="Udandarao et al., ICCV 2023",
         summary="Tip-X: s - gamma · KL-term + alpha · exp(-beta (1 - f Fᵀ)) L"),
    Card("ape", "APE", paper="Zhu et al., ICCV 2023",
         summary="APE: refined channels, s + alpha · exp(-beta (1 - f' F'ᵀ)) (L ⊙ exp(gamma · KL))",
         published=ldc_table(63.42, 92.49, 88.88, 70.31, 91.96, 78.50, 31.26, 69.72, 67.73,
                             78.16, 74.49, 73.36)),
    Card("ape_t", "APE-T", paper="Zhu et al., ICCV 2023",
         summary="APE-T: APE with a learned category residual and learned cache values",
         published=ldc_table(66.07, 93.14, 90.24, 76.53, 96.14, 79.53, 39.62, 72.73, 69.66,
                             86.70, 79.73, 77.28)),
    Card("gda", "GDA", paper="Wang et al., ICLR 2024",
         summary="GDA: s + alpha · (f Σ⁻¹ μᵀ + b), shrunk shared covariance",
         published=ldc_table(63.82, 92.55, 88.81, 75.12, 95.72, 79.05, 40.61, 70.70, 66.51,
                             86.12, 77.53, 76.05)),
    Card("clip_adapter", "CLIP-Adapter", paper="Gao et al., IJCV 2023",
         summary="CLIP-Adapter: residual bottleneck MLP on the image feature"),
    Card("ldc", "LDC", "images", paper="Li et al., CVPR 2025",
         summary="LDC: multi-level adapters + inter-class deconfusion; beta·mlp + (1-beta)·ada",
         published=ldc_table(66.63, 93.63, 90.54, 81.21, 96.39, 79.28, 53.47, 72.72, 71.39,
                             90.20, 82.08, 79.78, vit_b16_average=82.87)),
    # (trained through CLIP's towers; their papers' tables could not be read here: no figures)
    Card("coop", "CoOp", "images", paper="Zhou et al., IJCV 2022",
         summary="CoOp: exp(logit_scale) · f̂ · t̂(ctx)ᵀ, 16 context vectors learned through the "
                 "frozen text tower"),
    Card("clip_lora", "CLIP-LoRA", "images", paper="Zanella & Ben Ayed, CVPR-W 2024",
         summary="CLIP-LoRA: 100 · f̂ t̂ᵀ, rank-2 LoRA on q, k, v of both towers, trained "
                 "through them"),
    Card("ta_pp", "TA++", "paired", paper="Kravets & Namboodiri, BMVC 2024",
         summary="TA++: s (original) + alpha · exp(-beta (1 - f' F'ᵀ)) L (IMO-adapted features)"),
    Card("tx_pp", "TX++", "paired", paper="Kravets & Namboodiri, BMVC 2024",
         summary="TX++: s - gamma · KL-term (original) + alpha · exp(-beta (1 - f' F'ᵀ)) L"),
    Card("zs_lp", "ZS-LP", paper="Silva-Rodríguez et al., CVPR 2024",
         summary="ZS-LP: tau · cos(f, w_c), w initialised at the text embeddings, SGD"),
    Card("clap", "CLAP", paper="Silva-Rodríguez et al., CVPR 2024",
         summary="CLAP: ZS-LP + (1/C) Σ_c lambda_c ‖w_c - t_c‖², lambda_c = zero-shot "
                 "true-class probability"),
    Card("lp_pp", "LP++", paper="Huang et al., CVPR 2024",
         summary="LP++: f Wᵀ + b + alpha_c · f t_cᵀ, full batch, Lipschitz step sizes"),
    Card("taskres", "TaskRes", paper="Yu et al., CVPR 2023",
         summary="TaskRes: tau · f · norm(t + alpha · R)ᵀ, residual R learned from 0"),
    Card("cross_modal_lp", "Cross-Modal LP", paper="Lin et al., CVPR 2023",
         summary="Cross-modal linear probe: tau · f Wᵀ, W from T, trained on images and texts"),
    # (ProKeR's own tables could not be read here: no published figures are encoded)
    Card("proker", "ProKeR", paper="Bendou et al., CVPR 2025",
         summary="ProKeR: s + K_xS (K_SS / lambda + I)⁻¹ (L - S), K = exp(-beta (1 - x x'ᵀ))"),
    Card("ridge", "Ridge (LSR)",
         paper="big_vision few-shot evaluator (Beyer, Zhai & Kolesnikov 2022)",
         summary="ridge: [x̃, 100] (XᵀX + l2_reg I)⁻¹ Xᵀ (2L - 1), whitened support features"),
)
_BY_NAME: Mapping[str, Card] = {c.name: c for c in CARDS}
NAMES = tuple(_BY_NAME)
if len(NAMES) != len(CARDS):
    raise ValueError("two cards in CARDS share a name")


def card(name: str) -> Card | None:
    """The shipped method ``name``'s card (a variant label's method), or None for a user's
    method."""
    return _BY_NAME.get(split_label(name)[0])


entry = card  # (the former name)


def variant_label(name: str, options: Mapping[str, str] | None = None) -> str:
    """``name`` or ``name[k1=v1,k2=v2]`` (options sorted; pass only non-default ones)."""
    if not options:
        return name
    return name + "[" + ",".join(f"{k}={options[k]}" for k in sorted(options)) + "]"


def split_label(label: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`variant_label`:
    ``"ldc[fusion=concat]"`` -> ``("ldc", {"fusion": "concat"})``."""
    name, bracket, rest = label.partition("[")
    if not bracket:
        return label, {}
    pairs = [p.partition("=") for p in rest.rstrip("]").split(",") if p]
    return name, {k: v for k, _, v in pairs}  # (a record's label may lack the '=')


def display_name(label: str) -> str:
    """The papers' name of a method or variant (``LDC [fusion=concat]``); the label otherwise."""
    name, options = split_label(label)
    found = _BY_NAME.get(name)
    shown = found.display if found else name
    if options:
        shown += " [" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "]"
    return shown


def order_key(label: str) -> tuple:
    """Sort key: shipped methods in catalogue order, then others by name; variants after plain."""
    name, options = split_label(label)
    position = NAMES.index(name) if name in _BY_NAME else len(NAMES)
    return (position, name, sorted(options.items()))


# --- weights --------------------------------------------------------------------------------

#: The weights id of randomly initialised CLIPs (loader ids such as ``random(seed=0)``).
RANDOM_WEIGHTS = "random"


def is_random_weights(weights: str) -> bool:
    """True for ``"random"`` and loader ids such as ``"random(seed=0)"``."""
    return str(weights).startswith(RANDOM_WEIGHTS)


# --- published figures, gathered from the cards ---------------------------------------------

#: (backbone, shots, method, dataset or "average") -> published top-1 accuracy in %.
PUBLISHED: dict[tuple[str, int, str, str], float] = {
    (backbone, shots, c.name, dataset): value
    for c in CARDS for p in c.published for (backbone, shots, dataset), value in p.figures.items()
}
#: Where the published figures come from (every source a card cites, in card order).
PUBLISHED_SOURCE = "; ".join(dict.fromkeys(p.source for c in CARDS for p in c.published))


def published(backbone: str, weights: str, shots: int, method: str, dataset: str) -> float | None:
    """The published accuracy for this setting, or None (no such number, or random weights).

    Only the plain method has published figures (not its variants).

    Args:
      dataset: a registry name, or :data:`AVERAGE` for the 11-dataset average.
    """
    if is_random_weights(weights):
        return None
    return PUBLISHED.get((backbone, int(shots), method, dataset))
