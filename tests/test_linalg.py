"""methods.linalg: under vmap every LAPACK call sees one matrix (batched ones can deadlock);
GPUs and TPUs keep the batched call.

jaxlib 0.10-0.11 split a batched LAPACK call over XLA:CPU's intra-op pool and
block a pool thread until it finishes; sharded sweep programs running such
calls on as many devices as the pool has threads hang (methods/linalg.py).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxclip_fs.methods import gda
from jaxclip_fs.methods.linalg import pinv_hermitian
from jaxclip_fs.methods.task import make_task, stack

LAPACK_RESULT = re.compile(r'= \(?\w+\[([\d,]*)\][^\n]*custom_call_target="lapack_')


def _lapack_matrix_shapes(jitted, *args):
    """Shapes of the first result (the matrix) of every LAPACK custom call of the compiled HLO."""
    text = jitted.lower(*args).compile().as_text()
    return [tuple(int(d) for d in dims.split(",")) for dims in LAPACK_RESULT.findall(text)]


def _spd(batch, dim, seed=0):
    x = np.random.default_rng(seed).standard_normal(batch + (dim + 3, dim)).astype(np.float32)
    return np.einsum("...nd,...ne->...de", x, x) + np.eye(dim, dtype=np.float32)


def test_pinv_hermitian_equals_jnp_pinv_under_nested_vmap():
    a = _spd((2, 3), 16)
    want = jax.jit(functools.partial(jnp.linalg.pinv, hermitian=True))(a)
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.vmap(pinv_hermitian)))(a), want)
    np.testing.assert_array_equal(jax.jit(pinv_hermitian)(a[1, 2]), want[1, 2])


def test_vmapped_pinv_hermitian_makes_unbatched_lapack_calls():
    a = _spd((2, 3), 16)
    plain = jax.jit(jax.vmap(jax.vmap(functools.partial(jnp.linalg.pinv, hermitian=True))))
    assert _lapack_matrix_shapes(plain, a) == [(2, 3, 16, 16)]  # what the check would catch
    assert _lapack_matrix_shapes(jax.jit(jax.vmap(jax.vmap(pinv_hermitian))), a) == [(16, 16)]


def test_gda_init_vmapped_over_cells_makes_unbatched_lapack_calls():
    rng = np.random.default_rng(0)
    tasks = stack([make_task(rng.standard_normal((2, 3, 2, 8)), np.eye(3, 8), 100.0)
                   for _ in range(4)])
    init = jax.jit(jax.vmap(gda.init, in_axes=(None, 0, None)))
    shapes = _lapack_matrix_shapes(init, jax.random.key(0), tasks, {})
    assert shapes and all(len(shape) == 2 for shape in shapes), shapes


def test_accelerators_keep_the_batched_decomposition():
    """Lowered for CUDA / TPU, the vmapped ``pinv_hermitian`` is one batched decomposition
    (no loop); for the CPU a loop of single-matrix LAPACK calls."""
    a = jax.ShapeDtypeStruct((2, 3, 16, 16), jnp.float32)
    program = jax.jit(jax.vmap(jax.vmap(pinv_hermitian)))
    for platform, target in (("cuda", "cusolver_syevd_ffi"), ("tpu", "Eigh"),
                             ("cpu", "lapack_ssyevd_ffi")):
        text = jax.export.export(program, platforms=(platform,))(a).mlir_module()
        calls = re.findall(r"custom_call @(\w+)\(%\w+\)[^\n]*: \((tensor<[\dx]+f32>)\)", text)
        batched = platform != "cpu"
        assert calls == [(target, "tensor<2x3x16x16xf32>" if batched else "tensor<16x16xf32>")], \
            (platform, calls)
        assert ("stablehlo.while" in text) != batched, platform
