"""Model selection in one program: every number of components fitted by one vmapped fit.

`select(model_factory, X, n_components=range(1, 9))` builds the mixture with the largest
number of components K_max and fits it once per candidate K, vmapped over K, with only
the first K components taking part (`MaskedMixture`): the others have weight exactly 0,
so they get no responsibility, add nothing to the statistics or the likelihood, and the
M-step's weights are renormalised over the active ones. Everything else about the fit is
that of `jaxem.fit(model_factory(K), X, ...)`: the first K k-means++ centers do not
depend on K_max, so with init="kmeans++" each K's fit equals its separate fit, to rounding
(tested). One compiled program serves every K; vmapped fits retire each K at its own stop.

With `missing="em"` the masked mixture is wrapped as `jaxem.fit` wraps a model
(jaxem.missing.prepare, outside the program, so that the rows are ordered and their
missingness patterns known once for every K), and the criteria use the observed-data
log-likelihood.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import missing as missing_lib
from jaxem import parallel, units, validation
from jaxem.api import fit
from jaxem.core import FitResult
from jaxem.models.mixture import MixtureModel
from jaxem.protocol import Model
from jaxem.pytrees import register_model

CRITERIA = ("bic", "aic")


@register_model
@dataclasses.dataclass(frozen=True)
class MaskedMixture(Model):
    """`model` (a MixtureModel of K_max components) with only its first n_active taking part.

    n_active: () int, a leaf (so one program serves every value). component_leaves: per
    params leaf (in tree order), whether it has a leading component axis. Inactive
    components keep weight 0 and the other params of component 0, so their densities stay
    finite while their responsibilities are exactly 0.
    """

    model: Any
    n_active: jax.Array
    component_leaves: tuple = dataclasses.field(metadata=dict(static=True))

    additive_statistics = True

    def active(self) -> jax.Array:
        """(K_max,) bool: the components that take part."""
        return jnp.arange(self.model.n_components) < self.n_active

    def restrict(self, params: Any) -> Any:
        """params with inactive components at weight 0 and component 0's other params."""
        active = self.active()
        leaves, treedef = jax.tree.flatten(params)

        def keep_active(leaf, has_components):
            if not has_components:
                return leaf
            mask = active.reshape((-1,) + (1,) * (leaf.ndim - 1))
            return jnp.where(mask, leaf, leaf[:1])

        params = jax.tree.unflatten(treedef, [keep_active(l, c) for l, c in zip(leaves, self.component_leaves)])
        weights = jnp.where(active, params.weights, 0.0)
        return params._replace(weights=weights / jnp.sum(weights))

    # --- jaxem.protocol.Model: the model's own, with inactive components held out -----------
    def as_data(self, X):
        return self.model.as_data(X)

    def start_params(self, values, data):
        return self.restrict(self.model.start_params(values, data))

    def init_params(self, key, data, sample_weight, method, chunk_size):
        return self.restrict(self.model.init_params_among(key, data, sample_weight, method, chunk_size, self.active()))

    def precompute(self, data):
        return self.model.precompute(data)

    def precompute_chunks(self, chunks):
        return self.model.precompute_chunks(chunks)

    def init_m_state(self, params):
        return self.model.init_m_state(params)

    def param_constraints(self, params):
        return self.model.param_constraints(params)

    def e_step_params(self, params):
        return self.model.e_step_params(params)

    def e_step(self, params, data, sample_weight):
        return self.model.e_step(params, data, sample_weight)

    def log_prior(self, params):
        return self.model.log_prior(params)

    def maximize(self, stats, params, m_state, data, sample_weight):
        new_params, m_state = self.model.maximize(stats, params, m_state, data, sample_weight)
        return self.restrict(new_params), m_state

    # --- jaxem.missing's hooks, for models that have them (select checks) -----------------------
    def check_data(self, X):
        self.model.check_data(X)

    def gaussian_components(self, params):
        return self.model.gaussian_components(params)

    def statistics_from_moments(self, counts, centred_sums, centred_squares):
        return self.model.statistics_from_moments(counts, centred_sums, centred_squares)

    @property
    def diagonal_covariances(self) -> bool:
        return bool(getattr(self.model, "diagonal_covariances", False))


class Selection(NamedTuple):
    """Outcome of `select`.

    n_components: (n_candidates,) the candidate K, ascending. bic, aic: (n_candidates,)
    criteria at each K's best restart (lower is better). log_likelihood: (n_candidates,)
    mean per-sample log-likelihood there. n_iter, converged: of each K's best restart.
    fits: (n_candidates,) tuple, each K's FitResult (params and restarts with K components,
    as `jaxem.fit(model_factory(K), ...)` returns). best_n_components: the K the criterion
    picks. best: its FitResult. model: model_factory(best_n_components).
    """

    n_components: np.ndarray
    bic: np.ndarray
    aic: np.ndarray
    log_likelihood: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    fits: tuple[FitResult, ...]
    best_n_components: int
    best: FitResult
    model: Any


def select(
    model_factory: Callable[[int], MixtureModel],
    X: Any,
    *,
    key: jax.Array,
    n_components: Any = range(1, 9),
    criterion: str = "bic",
    n_restarts: int = 1,
    sample_weight: Any = None,
    missing: str | None = None,
    **fit_options,
) -> Selection:
    """Fit model_factory(K) for every K in n_components as one program; pick K by criterion.

    Args:
      model_factory: K -> a mixture with K components (e.g.
        `lambda k: jaxem.GaussianMixture(k, covariance_type="diag")`).
      X: data, as for jaxem.fit; key, n_restarts, sample_weight and fit_options (max_iter,
        tol, init, chunk_size, ...) as jaxem.fit takes them, used for every K.
      n_components: candidate numbers of components (positive ints).
      criterion: "bic" or "aic", computed from the plain log-likelihood (no prior term).
      missing: None or "em", as jaxem.fit takes it: with "em", NaN entries of X are missing
        values, every K is fitted as `jaxem.fit(model_factory(K), X, missing="em")` and the
        criteria use the observed-data log-likelihood (n: the rows of X).
    Returns:
      Selection. With init="kmeans++" (the default) each K's fit equals its separate fit.
    Raises:
      ValueError: bad candidates or criterion, a factory that does not make mixtures, or
        any error jaxem.fit raises.
    """
    candidates = sorted({validation.check_positive_int(k, "n_components entries") for k in n_components})
    if not candidates:
        raise ValueError("n_components needs at least one candidate.")
    validation.check_choice(criterion, "criterion", CRITERIA)
    largest = model_factory(candidates[-1])
    if not isinstance(largest, MixtureModel) or largest.n_components != candidates[-1]:
        raise ValueError("model_factory(K) must return a mixture (jaxem.models.mixture.MixtureModel) of K components.")
    if missing_lib.check_missing(missing) == "em":
        wrapped, ordered, sample_weight = missing_lib.prepare(largest, X, sample_weight)
        data = wrapped.as_data(ordered)  # ordered may hold padding copies of rows (weight 0)
        n_samples, n_features = np.shape(X)[0], data.values.shape[1]
        # as jaxem.fit: blocks of one pattern bound the memory, chunks would be per row
        if fit_options.get("chunk_size", "auto") == "auto":
            fit_options["chunk_size"] = None
    else:
        wrapped, data = None, largest.as_data(X)
        n_samples, n_features = data.shape
    weights = validation.as_sample_weight(sample_weight, units.n_units(data), units.float_dtype(data))
    values = data if wrapped is None else data.values
    masked = MaskedMixture(largest, jnp.asarray(candidates[-1]), component_leaves(model_factory, candidates[-1], values))

    def masked_model(n_active):
        model = dataclasses.replace(masked, n_active=n_active)
        return model if wrapped is None else dataclasses.replace(wrapped, base=model)

    def fit_all(data, weights, key):
        def fit_k(n_active):
            model = masked_model(n_active)
            result = fit(model, data, key=key, n_restarts=n_restarts, sample_weight=weights, **fit_options)
            _, total = parallel.e_step(model, result.params, data, weights)
            return result, total

        results, totals = jax.vmap(fit_k)(jnp.asarray(candidates))
        # Each K's own FitResult, cut inside the program: eager slicing would dispatch (and
        # compile) one small program per leaf and candidate.
        fits = tuple(
            first_components(jax.tree.map(lambda leaf: leaf[i], results), masked.component_leaves, k)
            for i, k in enumerate(candidates)
        )
        return fits, totals

    fits, totals = jax.jit(fit_all)(data, weights, key)
    params_counts = np.array([model_factory(k).n_parameters(n_features) for k in candidates])
    totals = np.asarray(totals)
    bic = -2.0 * totals + params_counts * np.log(n_samples)
    aic = -2.0 * totals + 2.0 * params_counts
    chosen = int(np.argmin(bic if criterion == "bic" else aic))
    best_k = candidates[chosen]
    return Selection(
        n_components=np.asarray(candidates),
        bic=bic,
        aic=aic,
        log_likelihood=np.array([np.asarray(f.log_likelihood) for f in fits]),
        n_iter=np.array([np.asarray(f.n_iter) for f in fits]),
        converged=np.array([np.asarray(f.converged) for f in fits]),
        fits=fits,
        best_n_components=best_k,
        best=fits[chosen],
        model=model_factory(best_k),
    )


def component_leaves(model_factory: Callable, n_components: int, data: jax.Array) -> tuple:
    """Per params leaf of model_factory(n_components): whether it has a component axis
    (its shape changes with the number of components)."""

    def shapes(k):
        model = model_factory(k)
        params = jax.eval_shape(
            lambda: model.init_params(jax.random.key(0), data, jnp.ones(data.shape[0], data.dtype), "random", None)
        )
        return [leaf.shape for leaf in jax.tree.leaves(params)]

    return tuple(a != b for a, b in zip(shapes(n_components), shapes(n_components + 1)))


def first_components(result: FitResult, has_components: tuple, n_components: int) -> FitResult:
    """result with the params of its best run and of every restart cut to n_components."""

    def cut(params, axis):
        leaves, treedef = jax.tree.flatten(params)
        cut_leaves = [
            jax.lax.slice_in_dim(leaf, 0, n_components, axis=axis) if has else leaf
            for leaf, has in zip(leaves, has_components)
        ]
        return jax.tree.unflatten(treedef, cut_leaves)

    restarts = result.restarts._replace(params=cut(result.restarts.params, 1))
    return result._replace(params=cut(result.params, 0), restarts=restarts)
