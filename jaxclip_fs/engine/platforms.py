"""Which JAX platform the run was asked for, and which this machine has.

``JAX_PLATFORMS=cuda`` (or ``tpu``) on a machine without one makes JAX's first
device query fail with a bare ``AssertionError`` (or a ``RuntimeError`` naming
the plugin); :func:`platform_problem` turns that state into one line naming
the platform asked for and those available.
"""

from __future__ import annotations

import os


def available_platforms() -> list[str]:
    """The platforms JAX could start here (``cpu`` always; a GPU or TPU where its plugin
    is installed and the hardware is visible)."""
    found = ["cpu"]
    try:
        from jax._src import hardware_utils, xla_bridge

        plugins = set(getattr(xla_bridge, "_backend_factories", {}))
        if plugins & {"cuda", "gpu"} and hardware_utils.has_visible_nvidia_gpu():
            found.append("cuda")
        if "tpu" in plugins and hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0:
            found.append("tpu")
    except Exception:  # private API, best effort: the message then says cpu only
        pass
    return found


def platform_problem() -> str | None:
    """One line when JAX has no backend because the platforms it was asked for are absent,
    else None (the failure was something else)."""
    import jax
    from jax._src import xla_bridge

    if getattr(xla_bridge, "_default_backend", True) is not None:
        return None  # a backend is up: not a platform problem
    wanted = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if not wanted:
        return None
    return (f"JAX_PLATFORMS={wanted}: this machine has no such platform (available: "
            f"{', '.join(available_platforms())}); unset JAX_PLATFORMS or name one of those")
