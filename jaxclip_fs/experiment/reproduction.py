"""A paper reproduction: an experiment config wrapped with what its numbers are compared to.

A reproduction is a JSON object::

    {"name": ..., "description": ...,
     "experiment": {...},              an experiment config (without weights and data root)
     "add_published_methods": true,    also run every method publishing a figure for it
     "compare_shots": [...], "bands": {method: tolerance}}

``jaxclip-fs run --config FILE`` runs its experiment (the weights and the data
root come from ``--weights`` / ``--data-root``: a file that leaves a field
unset takes its flag); ``python -m benchmarks.reproduce`` runs it and compares
the records with the published numbers. A reproduction run under the
``paper`` protocol has a ``fair`` twin (:func:`fair_twin`, ``<name>_fair``):
the same grid under the fair protocol, derived here rather than kept as a copy.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

FAIR_SUFFIX = "_fair"


def is_reproduction(raw: Any) -> bool:
    """Is the JSON object ``raw`` a reproduction (it wraps an ``experiment``)?"""
    return isinstance(raw, Mapping) and "experiment" in raw and "format" not in raw


def published_methods(backbone: str, shots, datasets, ood=()) -> list[str]:
    """The methods whose cards publish a figure for ``backbone`` at one of ``shots`` on one of
    ``datasets`` or ``ood`` or (several datasets) their average, in catalogue order (no jax)."""
    from jaxclip_fs import catalogue

    wanted = set(datasets) | set(ood) | ({catalogue.AVERAGE} if len(datasets) > 1 else set())
    return [card.name for card in catalogue.CARDS
            if any(b == backbone and k in shots and d in wanted
                   for published in card.published for b, k, d in published.figures)]


def method_names(experiment: Mapping[str, Any]) -> list[str]:
    """The method names of an experiment object (a method is a name or ``{"name": ...}``)."""
    return [m if isinstance(m, str) else m["name"] for m in experiment.get("methods", [])]


def experiment(raw: Mapping[str, Any]) -> dict:
    """The experiment object of a reproduction, completed with the published methods
    (``add_published_methods``) after the listed ones."""
    out = copy.deepcopy(dict(raw["experiment"]))
    if raw.get("add_published_methods"):
        data, listed = out.get("data", {}), method_names(out)
        added = [m for m in published_methods(out.get("model", {}).get("backbone"),
                                              raw.get("compare_shots", []),
                                              data.get("datasets", []), data.get("ood", []))
                 if m not in listed]
        out["methods"] = list(out.get("methods", [])) + added
    return out


def fair_twin(raw: Mapping[str, Any]) -> dict:
    """The ``fair`` twin of a ``paper`` reproduction: the same grid with every method selecting
    on the whole validation split, compared with the published numbers as reported."""
    twin = copy.deepcopy(dict(raw))
    twin["name"] = raw["name"] + FAIR_SUFFIX
    twin["description"] = (
        f"The fair twin of {raw['name']}: the same grid with every method selecting on the "
        "whole validation split (never test), the same images, views and prompts for all; "
        "compared with the published numbers as 'reported' (the difference is the protocol gap).")
    twin["experiment"].setdefault("protocol", {})["names"] = ["fair"]
    return twin
