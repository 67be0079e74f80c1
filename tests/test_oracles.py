"""The suite without its oracles (torch, torchvision, open_clip, transformers): it collects,
and oracle tests are skipped with one reason line while the others run."""

import subprocess
import sys

import oracles
from helpers import REPO, subprocess_env


def _pytest_without_oracles(*args):
    env = subprocess_env(**{oracles.HIDE_ENV: "1"})
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_the_whole_suite_collects_without_the_oracles():
    proc = _pytest_without_oracles("--collect-only", "-q", "tests")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(collected) > 300, out[-2000:]
    assert "tests/test_jax_compat.py::test_only_the_compat_module_imports_jax_internals" in \
        proc.stdout


def test_oracle_tests_are_skipped_with_one_reason_and_the_rest_run():
    proc = _pytest_without_oracles("-rs", "tests/test_preprocess.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 passed" in out and " skipped" in out, out[-2000:]
    reasons = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all("oracle test: needs torch, torchvision, open_clip, transformers"
                           in line for line in reasons), reasons
