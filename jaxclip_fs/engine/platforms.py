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
    from jaxclip_fs.engine import jax_compat

    found = ["cpu"]
    try:
        plugins = jax_compat.registered_platforms()
        visible = jax_compat.visible_accelerators()
    except Exception:  # JAX internals, best effort: the message then says cpu only
        return found
    if plugins & {"cuda", "gpu"} and "cuda" in visible:
        found.append("cuda")
    if "tpu" in plugins and "tpu" in visible:
        found.append("tpu")
    return found


def platform_problem() -> str | None:
    """One line when JAX has no backend because the platforms it was asked for are absent,
    else None (the failure was something else)."""
    import jax

    from jaxclip_fs.engine import jax_compat

    if jax_compat.backend_started():
        return None  # a backend is up: not a platform problem
    wanted = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if not wanted:
        return None
    return (f"JAX_PLATFORMS={wanted}: this machine has no such platform (available: "
            f"{', '.join(available_platforms())}); unset JAX_PLATFORMS or name one of those")
