"""Linear algebra that stays safe under ``vmap`` in sharded CPU programs.

jaxlib 0.10.0 - 0.11.0 split a *batched* LAPACK call (``eigh``, ``svd``,
``cholesky``, ``lu``, ``qr``, triangular solves ...) over XLA:CPU's intra-op
thread pool and then block the calling pool thread until the chunks finish
(``jax::ParallelBatchMap`` in ``jaxlib/cpu/lapack_kernels.cc``; later releases
compile that path out). When as many such calls run at once as the pool has
threads -- e.g. a sweep program's cell axis sharded over 2 devices on a
2-core machine, each device running its cells' ``eigh`` -- every pool thread
waits for chunks that no free thread can run: the program deadlocks with no
CPU used. A call whose batch is one matrix runs inline and never waits, so
:func:`one_matrix_at_a_time` makes every LAPACK call of a function see a
single matrix, whatever ``vmap`` s surround it. Each matrix is factorised by
the same LAPACK routine as in the batched call: the numbers are identical.

Only the CPU needs this: on GPUs and TPUs (cuSOLVER, XLA's own decompositions)
the batched call is safe and much faster than a loop of single matrices, so
there the vmapped function makes one batched call (``lax.platform_dependent``:
the program lowered for each platform holds only its own branch).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp


def one_matrix_at_a_time(fn: Callable[[jax.Array], Any]) -> Callable[[jax.Array], Any]:
    """``fn`` (of one matrix) under ``vmap``: on CPU a ``lax.map`` over the batch, not a batched
    call; elsewhere the batched call (module docstring).

    Nested ``vmap`` s give nested maps, so the LAPACK calls inside ``fn``
    always see one matrix. ``fn`` may return a pytree of arrays (``eigh``'s
    pair). (No reverse-mode autodiff: ``custom_vmap``.)
    """
    @jax.custom_batching.custom_vmap
    def unbatched(x):
        return fn(x)

    @unbatched.def_vmap
    def _rule(axis_size, in_batched, x):
        del axis_size
        if not in_batched[0]:
            out = unbatched(x)
            return out, jax.tree.map(lambda _: False, out)
        out = jax.lax.platform_dependent(x, cpu=lambda m: jax.lax.map(unbatched, m),
                                         default=jax.vmap(fn))
        return out, jax.tree.map(lambda _: True, out)

    return unbatched


#: ``jnp.linalg.pinv(x, hermitian=True)`` of one matrix, one ``eigh`` per matrix under ``vmap``.
pinv_hermitian = one_matrix_at_a_time(functools.partial(jnp.linalg.pinv, hermitian=True))

#: ``jnp.linalg.eigh(x)`` of one symmetric matrix -> ``(eigenvalues [n], eigenvectors [n, n])``
#: (ascending, eigenvectors in the columns), one ``eigh`` per matrix under ``vmap``.
eigh = one_matrix_at_a_time(lambda x: tuple(jnp.linalg.eigh(x)))


def spectral_filter(eigenvectors: jax.Array, weights: jax.Array, rhs: jax.Array) -> jax.Array:
    """``U diag(w) B``: a function of a symmetric matrix ``U diag(s) Uᵀ`` applied through
    its eigendecomposition, with ``B = Uᵀ Y`` computed once.

    Every ridge-type solve ``(G + λ I)⁻¹ Y = U diag(1 / (s + λ)) Uᵀ Y`` is this with
    ``w = 1 / (s + λ)``: one decomposition serves every strength λ, each a rescale of
    the eigenvalues (big_vision's few-shot evaluator, ``evaluators/fewshot_lsr.py``).

    Args:
      eigenvectors: U [n, r] (or any left factor ``L U``); weights: w [r]; rhs: B [r, C].
    """
    return eigenvectors @ (weights[:, None] * rhs)
