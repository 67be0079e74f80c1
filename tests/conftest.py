"""Test setup: one CPU device, fast compiles, a shared compilation cache; ``devices(n)`` tests.

XLA's CPU backend spends most of a test's time optimising the machine code of
programs that then run for a fraction of a second (an LDC training program:
16 s to compile at the default level, 3 s at level 1, the same run time); the
tests check numbers, not speed, so they compile at level 1.

Every test sees ONE CPU device, as a user's laptop does -- except those marked
``@pytest.mark.devices(n)`` (the sharding tests): such a test runs in a fresh
``python -m pytest NODEID`` subprocess whose XLA_FLAGS give it ``n`` fake CPU
devices (the count is fixed when jax starts, so it cannot change within a
process). Its result is this test's result, so ``python -m pytest -n 2 tests``
stays the one command that runs everything.

Tests marked ``@pytest.mark.oracle`` compare against torch / torchvision /
open_clip / transformers (``tests/oracles.py``); where one of those is not
installed they are skipped with one reason line, and ``-m "not oracle"``
leaves them out.
"""

import os
import subprocess
import sys

#: Fake CPU devices of this test process (set by the parent of a ``devices(n)`` subprocess).
DEVICES_ENV = "JAXCLIP_FS_TEST_DEVICES"
DEVICES = int(os.environ.get(DEVICES_ENV, "1"))
#: Seconds a ``devices(n)`` subprocess may take.
DEVICES_TIMEOUT = 600


def xla_flags(devices: int) -> str:
    count = f"--xla_force_host_platform_device_count={devices} " if devices > 1 else ""
    return count + "--xla_backend_optimization_level=1"


os.environ.setdefault("XLA_FLAGS", xla_flags(DEVICES))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# one LAPACK thread inside XLA's pool, as the CLI (jaxclip_fs/cli.py): no oversubscription
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Compiled programs shared by the test processes (xdist workers compile the same LDC / sweep
# programs in different tests): JAX's persistent compilation cache, one per test session.
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

import oracles  # noqa: E402

oracles.hide_if_asked()  # (before any test module imports one)

JIT_CACHE = os.environ.get("JAXCLIP_FS_TEST_JIT_CACHE",
                           os.path.join(tempfile.gettempdir(), "jaxclip-fs-test-jit-cache"))
jax.config.update("jax_compilation_cache_dir", JIT_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "devices(n): runs with n fake CPU devices, in a subprocess of its own")
    config.addinivalue_line(
        "markers", "oracle: compares against torch / torchvision / open_clip / transformers' "
        "PyTorch CLIP; skipped when one is not installed")


def pytest_collection_modifyitems(config, items):
    """Oracle tests are skipped, with one reason line, where an oracle package is absent."""
    reason = oracles.skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("oracle") is not None:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A ``devices(n)`` test in a process with another device count: run it in a subprocess
    with ``n`` devices, and pass or fail (or skip) with it."""
    marker = pyfuncitem.get_closest_marker("devices")
    if marker is None:
        return None
    wanted = int(marker.args[0])
    if jax.device_count() == wanted:
        return None  # (the subprocess itself)
    env = dict(os.environ, XLA_FLAGS=xla_flags(wanted), JAX_PLATFORMS="cpu",
               JAXCLIP_FS_TEST_JIT_CACHE=JIT_CACHE, **{DEVICES_ENV: str(wanted)})
    env.pop("PYTEST_XDIST_WORKER", None)
    argv = [sys.executable, "-m", "pytest", pyfuncitem.nodeid, "-p", "no:xdist", "-p",
            "no:cacheprovider", "-q", "-rs", "--no-header"]
    proc = subprocess.run(argv, cwd=str(pyfuncitem.config.rootpath), env=env,
                          capture_output=True, text=True, timeout=DEVICES_TIMEOUT)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"with {wanted} devices, in a subprocess:\n{output[-6000:]}", pytrace=False)
    if " skipped" in output and " passed" not in output:
        pytest.skip(f"with {wanted} devices: {output.strip().splitlines()[-1]}")
    return True
