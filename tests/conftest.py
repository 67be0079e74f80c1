"""Test setup: 8 fake CPU devices (for sharding tests) before jax is imported, and fast compiles.

XLA's CPU backend spends most of a test's time optimising the machine code of
programs that then run for a fraction of a second (an LDC training program:
16 s to compile at the default level, 3 s at level 1, the same run time); the
tests check numbers, not speed, so they compile at level 1.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Compiled programs shared by the test processes (xdist workers compile the same LDC / sweep
# programs in different tests): JAX's persistent compilation cache, one per test session.
import tempfile  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXCLIP_FS_TEST_JIT_CACHE",
                                 os.path.join(tempfile.gettempdir(), "jaxclip-fs-test-jit-cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
