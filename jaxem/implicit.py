"""Implicit differentiation of a fixed point, as a decorator separate from the solver.

A solver returns params θ* with θ* = T(θ*, φ), where T is a fixed-point map such as one
EM step and φ are the differentiable inputs (the model's continuous hyperparameters, the
data, the sample weights). By the implicit function theorem

    dθ*/dφ = (I - ∂T/∂θ)^-1 ∂T/∂φ,

so the vector-Jacobian product of a cotangent v on θ* is (∂T/∂φ)^T u, where u solves the
adjoint system u = v + (∂T/∂θ)^T u. Only VJPs of T are needed: T is linearised once at θ*
and its transpose applied to as many vectors as the solver asks for. Solvers:

- "dense": the p x p matrix (∂T/∂θ)^T for p parameters from p VJPs, vmapped in batches
  of DENSE_BATCH (so one pass over the data serves many columns), then one LU solve.
  A direct solve: its cost does not depend on how slowly EM converges, and it ignores
  tol and max_iter. For small p the cheapest (benchmarks/bench_implicit.py: N=5000,
  3 full components, p=21: backward 0.08x the forward fit at tol 1e-6, BiCGSTAB 0.25x).
- "bicgstab", "gmres": Krylov solvers, at most about p products, one at a time; for
  large p.
- "fixed_point": iterates u <- v + J^T u, which converges because EM near a strict local
  maximum is a contraction (rate matrix of spectral radius < 1), but only at EM's own
  rate: slow where EM is slow.
- "auto" (the default): "dense" up to DENSE_MAX_PARAMS parameters, "bicgstab" above.

The starting point the solver was given gets a zero gradient (the fixed point does not
depend on it), and the solver's auxiliary outputs (iteration counts, status, trace) carry
no gradient. An adjoint solve that stops at max_iter returns its last iterate (in low
precision the residual can stall just above the tolerance, and a nearly converged
gradient is what an optimiser needs); one that diverged, ending with a residual larger
than that of u = 0 (a fit stopped at a saddle point or far from convergence, where
I - ∂T/∂θ is singular or not a contraction), gives a NaN gradient rather than a wrong one.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.scipy.sparse import linalg as sparse_linalg

from jaxem.precision import full_precision

ADJOINT_SOLVERS = ("auto", "dense", "fixed_point", "gmres", "bicgstab")

# "auto" solves densely up to this many parameters, with a Krylov solver above it.
DENSE_MAX_PARAMS = 128

# Jacobian columns computed per vmapped VJP when solving densely (bounds memory to this
# many VJPs' intermediates at once).
DENSE_BATCH = 32

# Krylov subspace size between GMRES restarts; dim(θ) is often smaller.
GMRES_RESTART = 20


def tree_norm(tree: Any) -> jax.Array:
    """Euclidean norm of all leaves of a pytree taken together."""
    return jnp.sqrt(optax.tree.vdot(tree, tree))


def default_tol(dtype: Any) -> float:
    """Relative residual the adjoint is solved to: sqrt(eps) (1.5e-8 in float64, 3.5e-4 in float32)."""
    return float(jnp.finfo(dtype).eps) ** 0.5


def solve_adjoint(
    transpose_jacobian: Callable[[Any], Any],
    v: Any,
    *,
    solver: str,
    tol: float,
    max_iter: int,
) -> tuple[Any, jax.Array]:
    """Solve u = v + J^T u for u given the map u -> J^T u.

    Args:
      transpose_jacobian: u -> (∂T/∂θ)^T u, a linear map on params-shaped pytrees.
      v: cotangent of the fixed point, a params-shaped pytree.
      solver: one of ADJOINT_SOLVERS.
      tol: stop when ||u - J^T u - v|| <= tol * ||v|| (iterative solvers; "dense" solves directly).
      max_iter: bound on the number of products with J^T (about; Krylov solvers round it;
        "dense" always takes p, the number of parameters).
    Returns:
      (u, diverged) where diverged is a () bool: the final residual exceeds ||v||, the
      residual of u = 0.
    """
    v_norm = tree_norm(v)
    threshold = tol * v_norm

    def residual(u):
        return jax.tree.map(lambda a, b, c: a - b - c, u, transpose_jacobian(u), v)

    solver = resolve_solver(solver, v)
    if solver == "dense":
        u = dense_adjoint(transpose_jacobian, v)
    elif solver == "fixed_point":

        def keep_going(carry):
            _, gap, n_iter = carry
            return (gap > threshold) & (n_iter < max_iter)

        def step(carry):
            u, _, n_iter = carry
            new_u = jax.tree.map(jnp.add, v, transpose_jacobian(u))
            # new_u - u is minus the residual at u, so this gap is the residual norm at u.
            gap = tree_norm(jax.tree.map(jnp.subtract, new_u, u))
            return new_u, gap, n_iter + 1

        u, _, _ = jax.lax.while_loop(keep_going, step, (v, jnp.asarray(jnp.inf, v_norm.dtype), 0))
    else:
        operator = lambda u: jax.tree.map(jnp.subtract, u, transpose_jacobian(u))
        if solver == "gmres":
            restart = GMRES_RESTART
            u, _ = sparse_linalg.gmres(
                operator, v, x0=v, tol=tol, atol=0.0, restart=restart, maxiter=max(1, max_iter // restart)
            )
        else:
            # Each BiCGSTAB iteration applies the operator twice.
            u, _ = sparse_linalg.bicgstab(operator, v, x0=v, tol=tol, atol=0.0, maxiter=max(1, max_iter // 2))
    return u, ~(tree_norm(residual(u)) <= v_norm)


def resolve_solver(solver: str, v: Any) -> str:
    """The solver "auto" stands for given the cotangent v (other names pass through)."""
    if solver != "auto":
        return solver
    return "dense" if ravel_pytree(v)[0].size <= DENSE_MAX_PARAMS else "bicgstab"


def dense_adjoint(transpose_jacobian: Callable[[Any], Any], v: Any) -> Any:
    """Solve u = v + J^T u directly: J^T materialised column by column from vmapped VJPs
    (DENSE_BATCH per pass over the data), then one LU solve of I - J^T, (p, p) for p
    parameters. Costs p VJPs, batched, however slowly EM converges."""
    flat_v, unravel = ravel_pytree(v)
    n_params = flat_v.size
    apply_flat = lambda e: ravel_pytree(transpose_jacobian(unravel(e)))[0]
    # Row i of the map's output is J^T e_i, i.e. column i of J^T.
    jacobian = jax.lax.map(apply_flat, jnp.eye(n_params, dtype=flat_v.dtype), batch_size=DENSE_BATCH)
    system = jnp.eye(n_params, dtype=flat_v.dtype) - jacobian.T
    return unravel(jnp.linalg.solve(system, flat_v))


def custom_fixed_point(
    fixed_point_map: Callable[..., Any],
    *,
    solver: str = "auto",
    tol: float | None = None,
    max_iter: int = 1000,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate `solve(init, *args) -> (solution, aux)` with implicit-function gradients.

    `fixed_point_map(solution, aux, *args) -> solution` must hold at the solver's output:
    solution = fixed_point_map(solution, aux, *args). Gradients with respect to `args`
    (pytrees of float arrays) flow through that equation; `init` gets zeros and `aux`
    outputs carry no gradient. `solution` and `init` must share one pytree structure.

    Args:
      fixed_point_map: T(θ, aux, *args) -> θ.
      solver: adjoint solver, one of ADJOINT_SOLVERS.
      tol: relative residual of the adjoint solve; None for `default_tol` of θ's dtype.
      max_iter: bound on adjoint iterations.
    """
    if solver not in ADJOINT_SOLVERS:
        raise ValueError(f"adjoint solver must be one of {ADJOINT_SOLVERS}, got {solver!r}.")

    def decorate(solve: Callable[..., Any]) -> Callable[..., Any]:
        @jax.custom_vjp
        def solved(init, *args):
            return solve(init, *args)

        # JAX traces both rules lazily, when it differentiates, outside the fit's own
        # full_precision() context; each enters it again.
        def forward(init, *args):
            with full_precision():
                solution, aux = solve(init, *args)
            return (solution, aux), (solution, aux, args)

        def backward(residuals, cotangents):
            with full_precision():
                return _backward(residuals, cotangents)

        def _backward(residuals, cotangents):
            solution, aux, args = residuals
            v = cotangents[0]
            _, vjp = jax.vjp(lambda theta, *a: fixed_point_map(theta, aux, *a), solution, *args)
            # A separate linearisation in θ alone keeps the data's cotangent out of the loop.
            _, vjp_params = jax.vjp(lambda theta: fixed_point_map(theta, aux, *args), solution)
            dtype = jax.tree.leaves(solution)[0].dtype
            u, diverged = solve_adjoint(
                lambda w: vjp_params(w)[0],
                v,
                solver=solver,
                tol=default_tol(dtype) if tol is None else tol,
                max_iter=max_iter,
            )
            # A zero cotangent has a zero VJP; testing it explicitly keeps runs that were not
            # selected (vmapped restarts) from turning NaN residuals into NaN gradients.
            is_zero = tree_norm(v) == 0
            args_cotangent = jax.tree.map(
                lambda g: g if _is_symbolic_zero(g) else jnp.where(is_zero, jnp.zeros_like(g), jnp.where(diverged, jnp.nan, g)),
                vjp(u)[1:],
            )
            init_cotangent = jax.tree.map(jnp.zeros_like, solution)
            return (init_cotangent, *args_cotangent)

        solved.defvjp(forward, backward)
        return solved

    return decorate


def _is_symbolic_zero(cotangent: Any) -> bool:
    """The cotangent of an integer argument (e.g. the lengths of padded sequences): float0,
    which has no values to mask."""
    return cotangent.dtype == jax.dtypes.float0
