"""The four named protocols: where each method selects and what its record reports (no jax).

The methods' formulas equal their official code; the *protocol* around them
decides what a number means. Every cell runs under one protocol, named in its
record, its run directory path and every report table:

``fair`` (the default) -- one honest rule for every method
    epochs and hyperparameters are chosen on the **whole validation split**
    (a split carved from train where the dataset has none, e.g. ImageNet),
    never on test; every method sees the same few-shot images (the nested
    sampler), views and prompts; each method's single final prediction is
    scored once on test.
``fewshot``
    ``fair`` with validation limited to CoOp's ``min(K, 4)`` images per class
    (drawn with the same seed, nested in K): for truly few-shot studies.
``paper``
    every method as its official code produced the published numbers
    (:class:`~jaxclip_fs.methods.base.Official`, declared in each method's
    module with the files it was read from): its validation rule (the whole
    val split), **selection on test** where the official code did it
    (datasets without an official val split -- ImageNet -- for every method;
    Tip-Adapter-F's and APE-T's best epoch for every dataset), its reported
    figure (LDC: the maximum over its heads on test; Tip-Adapter-F: the
    maximum of its best epoch's and its searched test accuracy), APE's
    CuPL-augmented text classifier, the official few-shot draws (Python's
    ``random``, Dassl's per-class ``random.sample``), and LDC's float16
    compute. Records say ``optimistic`` wherever test data chose or formed
    the figure.
``validation_free`` (CLAP's argument: a real few-shot user has no validation set)
    nothing is selected and **no validation row reaches any computation**:
    every method at fixed hyperparameters -- its official code's defaults,
    or where that has none the documented fixed choice its module declares
    (``Hyperparameters.validation_free``) -- trained methods keep their final
    epoch; the same images, views and prompts as ``fair``; the final
    prediction is scored once on test.

Why ``fair`` is the default: selecting on test inflates accuracy (by up to
several points on small datasets), and the official codes differ from each
other in what they select on, so their published numbers compare methods
*and* protocols at once. ``fair`` compares methods only; ``paper`` says how
much of a published gain is protocol and ``validation_free`` how much each
method owes to its validation set (``jaxclip-fs report`` shows ``paper - fair``
and ``fair - validation_free`` when both sides ran into one directory).
"""

from __future__ import annotations

import dataclasses

from jaxclip_fs.methods.base import Method

PROTOCOLS = ("fair", "fewshot", "paper", "validation_free")
DEFAULT_PROTOCOL = "fair"
#: Few-shot samplers: ours (nested: k-shot ⊂ 2k-shot, any call order) and the official
#: codes' (Dassl's draw after ``random.seed(seed)``; ``official_chained``: GDA / IMO's one
#: stream per seed over 1, 2, 4, 8, 16 shots).
SAMPLERS = ("nested", "official", "official_chained")
#: Datasets whose official splits have no validation set: every official code selects on test.
NO_OFFICIAL_VAL = ("imagenet",)
_OFFICIAL_SAMPLER = {"reseeded": "official", "chained": "official_chained", "nested": "nested"}


@dataclasses.dataclass(frozen=True)
class Rules:
    """How one cell (protocol, method, dataset) selects and what it reports.

    Attributes:
      protocol: one of :data:`PROTOCOLS`.
      val_rows: ``full`` (the whole val split), ``coop`` (``min(K, 4)`` per class) or
        ``none`` (no validation row at all).
      epochs_on: trained methods: ``val``, ``test`` or ``final`` (no selection);
        None for methods that do not train.
      search_on: ``val`` or ``test`` (the hyperparameter grid's split), or ``none``
        (hyperparameters fixed, nothing searched or scored before test).
      reported: the record's figure: ``final``, ``max_heads`` or ``max_epoch_or_search``
        (:class:`~jaxclip_fs.methods.base.Official`).
      sampler: one of :data:`SAMPLERS`.
      prompts: the text classifier adds the prompt sentences to the templates.
    """

    protocol: str
    val_rows: str
    epochs_on: str | None
    search_on: str
    reported: str
    sampler: str
    prompts: bool

    @property
    def searches(self) -> bool:
        """Hyperparameters are searched (else fixed: the method's ``validation_free`` values)."""
        return self.search_on != "none"

    @property
    def optimistic(self) -> bool:
        """Test data chose something or formed the figure."""
        return "test" in (self.epochs_on, self.search_on) or self.reported != "final"

    def describe(self) -> dict:
        """The record's ``selection`` field."""
        return {**dataclasses.asdict(self), "optimistic": self.optimistic}


def rules(protocol: str, method: Method, dataset: str, *, sampler: str | None = None,
          prompts: bool = False) -> Rules:
    """The rules of ``method`` on ``dataset`` under ``protocol``.

    Args:
      sampler: overrides the protocol's sampler (``fair`` / ``fewshot`` /
        ``validation_free``: nested; ``paper``: the method's official draw).
      prompts: a prompt file was given (``fair`` / ``fewshot`` / ``validation_free``:
        every method uses it; ``paper``: the methods whose official classifier does).

    Raises:
      ValueError: unknown protocol or sampler.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got '{protocol}'")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got '{sampler}'")
    own = ("val" if method.epoch_selection == "validation" else "final") if method.trains else None
    if protocol == "validation_free" or (method.towers is not None and protocol != "paper"):
        # (a method trained through the towers searches nothing and keeps its final iterate
        # under every protocol, as its official code: no validation row is read)
        return Rules(protocol, "none", "final" if method.trains else None, "none", "final",
                     sampler or "nested", prompts)
    official = method.official
    if protocol != "paper" or official is None:  # (a user's method: the fair rules, named paper)
        return Rules(protocol, "coop" if protocol == "fewshot" else "full", own, "val", "final",
                     sampler or "nested", prompts)
    no_val = dataset in NO_OFFICIAL_VAL
    epochs = official.epochs_on if method.trains else None
    if epochs == "val" and no_val:
        epochs = "test"
    if method.trains and method.inputs == "images":
        epochs = "final"  # (image methods cannot re-run the CLIP over a split every epoch)
    search = official.search_on
    if search != "none" and no_val:
        search = "test"
    # an official code that selects nothing reads no validation row (its fixed values)
    val_rows = "none" if search == "none" and epochs in (None, "final") else "full"
    return Rules("paper", val_rows, epochs, search, official.reported,
                 sampler or _OFFICIAL_SAMPLER[official.sampler], prompts and official.prompts)
