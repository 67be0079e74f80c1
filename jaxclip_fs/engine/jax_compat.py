"""The one module that reaches into JAX's private modules (``jax._src``).

The package uses JAX's public API everywhere else. Three needs have no public
API; each is met here, isolated, for every JAX the package allows
(``jax>=0.4.30``, see ``pyproject.toml``), and each degrades softly where an
internal moved:

* :func:`distributed_client` -- the coordination service's key-value client of
  a process started with ``jax.distributed.initialize`` (the multi-process
  heartbeat of :mod:`jaxclip_fs.engine.hosts`):
  ``jax._src.distributed.global_state.client``.
* :func:`cost_on_cpu` -- XLA's ``HloCostAnalysis`` of a lowered program on the
  CPU backend, for backends behind the PJRT C API (the CUDA and TPU plugins)
  whose public ``Lowered.cost_analysis()`` refuses. The HLO module
  (``Lowered.compiler_ir("hlo")``) and the CPU backend
  (``jax.extend.backend.get_backend``, jax >= 0.4.34) are public; the analysis
  binding is not: ``jaxlib._jax.hlo_module_cost_analysis`` (jax >= 0.7), before
  that the same function of ``xla_extension``.
* :func:`registered_platforms`, :func:`visible_accelerators` and
  :func:`backend_started` -- which platforms JAX has plugins for and whether a
  backend came up, asked without starting one (``jax.devices()`` would fail on
  the very misconfiguration :mod:`jaxclip_fs.engine.platforms` explains).
"""

from __future__ import annotations

import importlib
from typing import Any


def distributed_client() -> Any | None:
    """The key-value client of this process's ``jax.distributed`` run (``key_value_set``,
    ``key_value_dir_get``, ``wait_at_barrier``), or None when none was started."""
    from jax._src import distributed

    return getattr(getattr(distributed, "global_state", None), "client", None)


def _cost_analysis_binding(lib=None):
    """jaxlib's ``hlo_module_cost_analysis(client, hlo_module)`` (looked up in the module
    ``lib``, by default ``jax._src.lib``), or None."""
    lib = lib if lib is not None else importlib.import_module("jax._src.lib")
    for name in ("_jax", "xla_extension"):  # renamed in jax 0.7
        found = getattr(getattr(lib, name, None), "hlo_module_cost_analysis", None)
        if found is not None:
            return found
    return None


def _cpu_backend():
    try:
        from jax.extend.backend import get_backend
    except ImportError:  # jax < 0.4.34
        from jax._src.xla_bridge import get_backend
    return get_backend("cpu")


def cost_on_cpu(lowered) -> dict:
    """XLA's cost analysis (``{"flops": ..., "bytes accessed": ...}``) of a lowered program's
    HLO module on the CPU backend; ``{}`` for anything else (a compiled program) or where this
    JAX has no such binding."""
    import jax

    if not isinstance(lowered, jax.stages.Lowered):
        return {}
    analyse = _cost_analysis_binding()
    if analyse is None:
        return {}
    return dict(analyse(_cpu_backend(), lowered.compiler_ir("hlo").as_hlo_module()))


def registered_platforms() -> set[str]:
    """Platforms JAX has a backend factory (plugin) for -- none of them started here."""
    from jax._src import xla_bridge

    return set(getattr(xla_bridge, "_backend_factories", {}))


def visible_accelerators() -> dict[str, int]:
    """``{"cuda": 1}`` where an NVIDIA GPU is visible, ``{"tpu": chips}`` where TPU chips are
    (best effort: an internal that moved counts as none)."""
    found = {}
    try:
        from jax._src import hardware_utils
    except ImportError:
        return found
    try:
        if hardware_utils.has_visible_nvidia_gpu():
            found["cuda"] = 1
    except Exception:  # (absent before jax 0.4.31)
        pass
    try:
        chips = hardware_utils.num_available_tpu_chips_and_device_id()[0]
        if chips > 0:
            found["tpu"] = int(chips)
    except Exception:
        pass
    return found


def backend_started() -> bool:
    """Whether JAX has a default backend up (False before one started, or when none could);
    True where this JAX keeps no such record."""
    from jax._src import xla_bridge

    return getattr(xla_bridge, "_default_backend", True) is not None
