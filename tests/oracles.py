"""The test oracles: PyTorch, torchvision, open_clip and transformers' PyTorch CLIP.

Tests that compare against them carry ``@pytest.mark.oracle`` (a whole module:
``pytestmark = pytest.mark.oracle``) and reach them through :func:`lazy` (imported
at first use) or, where the module needs one at import, :func:`need` (skips the
module), so the suite collects and runs without them: the conftest skips
every oracle test, with one reason line, when one of :data:`MODULES` is absent
(``pip install -e '.[test]'`` brings them; ``.[test-core]`` does not).

``JAXCLIP_FS_TEST_HIDE_ORACLES=1`` makes this process behave as if none were
installed (a ``sys.meta_path`` finder answers ``ModuleNotFoundError`` for them):
the check that the suite collects and runs without them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys

import pytest

#: The oracle packages (import names).
MODULES = ("torch", "torchvision", "open_clip", "transformers")
#: Set to 1: behave as if no oracle were installed.
HIDE_ENV = "JAXCLIP_FS_TEST_HIDE_ORACLES"


class _Hidden(importlib.abc.MetaPathFinder):
    """Finds the oracle packages (and their submodules) to be not installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in MODULES:
            raise ModuleNotFoundError(f"No module named {fullname!r} ({HIDE_ENV}=1)",
                                      name=fullname)
        return None


def hide_if_asked() -> None:
    """Under ``JAXCLIP_FS_TEST_HIDE_ORACLES=1``, make every oracle unimportable here."""
    if os.environ.get(HIDE_ENV) == "1":
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in MODULES)
        assert not loaded, f"imported before the oracles could be hidden: {loaded[:3]}"
        sys.meta_path.insert(0, _Hidden())


def missing() -> list[str]:
    """The oracle packages this process cannot import."""
    out = []
    for name in MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def skip_reason() -> str | None:
    """One line saying why oracle tests are skipped here, or None when they can run."""
    absent = missing()
    if not absent:
        return None
    return (f"oracle test: needs {', '.join(absent)} (pip install -e '.[oracle]'; "
            f"-m 'not oracle' runs only the rest)")


def _import(name: str):
    module = importlib.import_module(name)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)  # tests run 2 workers on 2 cores
    return module


def need(name: str):
    """The oracle module ``name``, or skip the calling module (at import) or test."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)
    return _import(name)


class lazy:  # noqa: N801 (stands for a module)
    """The module ``name``, imported at its first attribute access (``torch = lazy("torch")``)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(_import(self._name), attr)
