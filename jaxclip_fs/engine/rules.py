"""A config's protocol rules per cell, and what they ask of each dataset's inputs.

Shared by the planner (:mod:`~jaxclip_fs.engine.layout`, which lowers programs
as they will run) and the run (:mod:`~jaxclip_fs.engine.run`):

* :func:`rules_of` -- the :class:`~jaxclip_fs.experiment.protocol.Rules` of a
  variant's cells on a dataset under a protocol;
* :func:`as_trained` -- the method as those rules train it (``epochs_on="final"``:
  no epoch selection);
* :func:`keeps_params` -- whether a variant's fitted params are saved;
* :func:`requests_of` -- per input kind and dataset, the
  :class:`~jaxclip_fs.pipelines.features.Request` (shots, seeds, samplers,
  prompts) its providers must serve.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment import protocol as protocol_lib
from jaxclip_fs.experiment.plan import Variant
from jaxclip_fs.pipelines.features import Request

#: Input kinds run by the feature program (the rest are image programs).
FEATURE_KINDS = ("features", "paired")


def rules_of(config: config_lib.ExperimentConfig, protocol: str, variant: Variant,
             dataset: str) -> protocol_lib.Rules:
    """The rules of a variant's cells on ``dataset`` under ``protocol``."""
    return protocol_lib.rules(protocol, variant.method, dataset, sampler=config.protocol.sampler,
                              prompts=bool(config.protocol.prompts))


@functools.lru_cache(maxsize=64)
def _keeping_last_epoch(method):
    return method.keeping_final()  # (one instance per method: it keys compiled programs)


def as_trained(method, rules: protocol_lib.Rules):
    """``method`` as ``rules`` train it: keeping its final epoch when ``epochs_on="final"``."""
    return _keeping_last_epoch(method) if rules.epochs_on == "final" and method.trains else method


def keeps_params(config: config_lib.ExperimentConfig, variant: Variant) -> bool:
    """Whether a variant's fitted params are gathered to the host and saved
    (``execution.save_params``: ``all``, ``trained`` or ``none``)."""
    save = config.execution.save_params
    return save == "all" or (save == "trained" and variant.method.trains)


def requests_of(config: config_lib.ExperimentConfig, variants: Mapping[str, Variant],
                shots: Sequence[int], seeds: Sequence[int]) -> Callable[[str, str], Request]:
    """``requests(kind, dataset)``: what the cells of one input kind need of a dataset -- the
    ``shots`` and ``seeds`` (a run directory's whole grid, so its feature files serve every
    invocation), its samplers (nested always) and the prompt file when used."""

    def requests(kind: str, dataset: str) -> Request:
        found = [rules_of(config, protocol, v, dataset) for protocol in config.protocol.names
                 for v in variants.values() if v.method.inputs == kind]
        samplers = tuple(dict.fromkeys(["nested"] + [r.sampler for r in found]))
        prompts = config.protocol.prompts if any(r.prompts for r in found) else None
        return Request(tuple(shots), tuple(seeds), samplers, prompts)

    return requests
