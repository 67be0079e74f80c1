"""The JAX compatibility module: the only ``jax._src`` user, its fallbacks on this JAX and on
the older layout of JAX's internals."""

import ast
import os
import types

import jax
import jax.numpy as jnp
import pytest

from jaxclip_fs.engine import cost as cost_lib
from jaxclip_fs.engine import jax_compat, platforms

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxclip_fs")
COMPAT = os.path.join(PACKAGE, "engine", "jax_compat.py")


def _private_jax_imports(path):
    """``jax._src...`` modules imported by the file ``path`` (lazily too)."""
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [n for n in names if n == "jax._src" or n.startswith("jax._src.")]
    return found


def test_only_the_compat_module_imports_jax_internals():
    users = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and _private_jax_imports(path):
                users[os.path.relpath(path, PACKAGE)] = _private_jax_imports(path)
    assert set(users) == {os.path.relpath(COMPAT, PACKAGE)}, users


def _matmul(n):
    x = jax.ShapeDtypeStruct((n, n), jnp.float32)
    return jax.jit(lambda a, b: a @ b).lower(x, x)


def test_cost_on_cpu_counts_a_matmul_as_xla_does():
    lowered = _matmul(16)
    found = jax_compat.cost_on_cpu(lowered)
    assert found["flops"] == 2 * 16 ** 3  # n^2 outputs, n multiply-adds each
    assert found["flops"] == lowered.cost_analysis()["flops"]
    assert found["bytes accessed"] == 3 * 16 * 16 * 4  # two inputs, one output, float32
    assert jax_compat.cost_on_cpu(lowered.compile()) == {}  # a compiled program: not analysed


def test_xla_numbers_falls_back_to_the_cpu_analysis(monkeypatch):
    """Backends behind the PJRT C API refuse ``Lowered.cost_analysis``: the same numbers come
    from the CPU backend's analysis of the same HLO module."""
    lowered = _matmul(8)
    want = cost_lib.xla_numbers(lowered)

    def refuse(self):
        raise NotImplementedError("cost analysis is not supported by the PJRT C API")

    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", refuse)
    assert cost_lib.xla_numbers(lowered) == want
    assert want.flops == 2 * 8 ** 3


def test_cost_binding_found_under_the_pre_0_7_name(monkeypatch):
    """Before jax 0.7 the binding lived in ``jax._src.lib.xla_extension`` (no ``_jax``)."""
    binding = jax_compat._cost_analysis_binding()
    assert binding is not None
    before_0_7 = types.SimpleNamespace(xla_extension=types.SimpleNamespace(
        hlo_module_cost_analysis=binding))
    assert jax_compat._cost_analysis_binding(before_0_7) is binding
    assert jax_compat._cost_analysis_binding(types.SimpleNamespace()) is None
    monkeypatch.setattr(jax_compat, "_cost_analysis_binding", lambda: None)
    assert jax_compat.cost_on_cpu(_matmul(4)) == {}  # no binding: no numbers, no crash


def test_no_distributed_client_in_a_single_process():
    assert jax.process_count() == 1
    assert jax_compat.distributed_client() is None


def test_platform_queries_on_this_machine():
    jax.devices()  # (a backend is up)
    assert "cpu" in jax_compat.registered_platforms()
    assert jax_compat.backend_started()
    assert platforms.platform_problem() is None
    assert platforms.available_platforms()[0] == "cpu"
    assert set(jax_compat.visible_accelerators()) <= {"cuda", "tpu"}


@pytest.mark.parametrize("broken", ["registered_platforms", "visible_accelerators"])
def test_available_platforms_says_cpu_when_the_internals_moved(monkeypatch, broken):
    def moved():
        raise AttributeError("moved in this JAX")

    monkeypatch.setattr(jax_compat, broken, moved)
    assert platforms.available_platforms() == ["cpu"]
