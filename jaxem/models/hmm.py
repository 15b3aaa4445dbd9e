"""Hidden Markov models by EM (Baum-Welch): the data units, and the protocol for any emission.

The data units are sequences (`Sequences`: padded observations and lengths), so sample
weights are per sequence and chunked E-steps split the batch of sequences. The E-step runs
`hmm_inference.forward_backward` on every sequence (vmapped) and returns additive
statistics: expected initial-state counts, expected transition counts summed over time,
and the emission family's statistics of the marginals gamma_t(k), all weighted by the
sequence's weight and summed over sequences (`hmm_inference.batch_posterior`: with
method="auto" on CPU one scaled scan over the whole batch and one GEMM for the transition
counts). The M-step is closed form for the initial
distribution and the transition rows (Dirichlet MAP, hmmlearn's update) and the
family's own for the emissions.

`HMMModel` implements jaxem.protocol.Model for families that supply the emission hooks:
  log_emission(params, factors, X) -> (n, K)    log p(x | z=k) for rows X (n, D)
  emission_factors(params)                      per-E-step work (factorisations), or None
  emission_statistics(params, X, gamma)         additive statistics, gamma (n, K) weighted
  m_step_emission(stats, params) -> dict        new emission fields
  emission_log_prior(params) -> scalar          MAP term (0 for maximum likelihood)
  init_emission(key, X, row_weight, method) -> dict
  emission_from_dict(values, D, dtype) -> dict  validated user starting values
  emission_constraints() -> dict                jaxem.constraints names per emission field
  n_emission_parameters(params) -> int          for BIC/AIC
  sample_emission(key, params, states) -> (S, L, D)
  check_observations(observations)              eager domain checks on concrete values
The closed-form families are in jaxem/models/hmm_emissions.py, the generic `HMM` (any
emission log-density, gradient M-steps) in jaxem/models/hmm_generic.py.

Degenerate cases give no NaN: a state whose expected occupancy is below eps times the total
keeps its previous emission params, a transition row with no expected counts keeps its
previous values, and a zero probability (initial or transition) stays exactly 0.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import init as init_lib
from jaxem import validation
from jaxem.models import checks, hmm_inference
from jaxem.protocol import Model


class Sequences(NamedTuple):
    """A batch of padded sequences, the data units of an HMM.

    observations: (n_sequences, max_len, n_features); steps t >= lengths[s] are padding.
    lengths: (n_sequences,) int32, 1 <= lengths[s] <= max_len.
    """

    observations: jax.Array
    lengths: jax.Array


class HMMStats(NamedTuple):
    """initial: (K,) expected counts of z_0 = k; transitions: (K, K) expected counts of
    z_{t-1} = i, z_t = j; emission: the family's statistics. All weighted and summed over
    sequences."""

    initial: jax.Array
    transitions: jax.Array
    emission: Any


class Prepared(NamedTuple):
    """Params with the emission's per-E-step factors (`e_step_params`)."""

    params: Any
    factors: Any


# --- data -------------------------------------------------------------------------------------
def _check_lengths(lengths: Any, n_sequences: int | None) -> np.ndarray:
    array = np.asarray(lengths)
    if array.ndim != 1 or array.size == 0 or array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"lengths must be a non-empty 1-D array of positive integers, got {lengths!r}.")
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)) or np.any(array < 1):
        raise ValueError(f"lengths must be positive integers, got {array.tolist()}.")
    if n_sequences is not None and array.shape[0] != n_sequences:
        raise ValueError(f"lengths has {array.shape[0]} entries for {n_sequences} sequences.")
    return array.astype(np.int64)


def _fill_padding(observations: Any, lengths: Any) -> Any:
    """Padded steps set to their sequence's last valid observation (numpy or traced)."""
    xp = np if isinstance(observations, np.ndarray) and isinstance(lengths, np.ndarray) else jnp
    steps = xp.arange(observations.shape[1])
    source = xp.minimum(steps[None, :], xp.asarray(lengths)[:, None] - 1)
    return xp.take_along_axis(observations, source[:, :, None], axis=1)


def as_sequences(X: Any, allow_nan: bool = False) -> tuple[Sequences, np.ndarray | None]:
    """User data as padded `Sequences`, and the flat positions of the valid steps when X
    came flat (hmmlearn's layout), else None.

    Accepts: `Sequences`; a tuple (X3d, lengths) with X3d (n_sequences, max_len, D) (lengths
    None: all full); a tuple (X2d, lengths), X2d (n_samples, D) of sequences one after the
    other, lengths summing to n_samples (hmmlearn); a plain 2-D array (one sequence).
    Padded steps may hold anything; they are filled with the sequence's last valid
    observation. Observations may be traced (jax.grad with respect to them); lengths of
    flat data must be concrete.
    Raises:
      ValueError: bad lengths, non-finite observations in valid steps, bad shapes.
    """
    if isinstance(X, Sequences):
        observations, lengths = X
    elif isinstance(X, tuple):
        if len(X) != 2:
            raise ValueError("HMM data given as a tuple must be (observations, lengths).")
        observations, lengths = X
    else:
        observations, lengths = X, None
    traced = validation.is_traced(observations)
    if not traced:
        try:
            observations = np.asarray(observations)
        except (TypeError, ValueError) as err:
            raise ValueError(f"observations could not be read as a numeric array: {err}") from None
    ndim = observations.ndim
    if ndim not in (2, 3):
        raise ValueError(
            "HMM observations must be (n_samples, n_features) with lengths, or padded "
            f"(n_sequences, max_len, n_features); got shape {tuple(observations.shape)}."
        )
    flat_positions = None
    if ndim == 2:
        n_samples = observations.shape[0]
        lengths = np.array([n_samples]) if lengths is None else _check_lengths(lengths, None)
        if validation.is_traced(lengths) or lengths.sum() != n_samples:
            raise ValueError(f"lengths sum to {int(np.sum(lengths))}, but X has {n_samples} rows.")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        steps = np.arange(int(lengths.max()))
        valid = steps[None, :] < lengths[:, None]
        rows = starts[:, None] + np.minimum(steps[None, :], lengths[:, None] - 1)
        observations = observations[rows]
        flat_positions = np.flatnonzero(valid.ravel())
    if lengths is None:
        lengths = np.full(observations.shape[0], observations.shape[1])
    if not validation.is_traced(lengths):
        lengths = _check_lengths(lengths, observations.shape[0])
        if lengths.max() > observations.shape[1]:
            raise ValueError(f"lengths must be <= max_len={observations.shape[1]}, got {int(lengths.max())}.")
    n_sequences, max_len, n_features = observations.shape
    if n_sequences < 1 or max_len < 1 or n_features < 1:
        raise ValueError(f"HMM data needs a sequence, a step and a feature; got shape {observations.shape}.")
    if not traced and not validation.is_traced(lengths):
        if not (np.issubdtype(observations.dtype, np.number) or observations.dtype == bool):
            raise ValueError(f"observations must hold numbers, got dtype {observations.dtype}.")
        valid = np.arange(max_len)[None, :] < lengths[:, None]
        bad = (np.isinf(observations) if allow_nan else ~np.isfinite(observations)) & valid[:, :, None]
        if bad.any():
            seq, step, _ = (int(i[0]) for i in np.nonzero(bad))
            what = "infinite" if allow_nan else "NaN or infinite"
            hint = "" if allow_nan else ' (GaussianHMM: fit with missing="em" for NaN as missing values)'
            raise ValueError(
                f"observations contain {int(bad.sum())} {what} value(s) in valid steps; "
                f"the first is sequence {seq}, step {step}{hint}."
            )
    observations = _fill_padding(observations, lengths)
    rows = validation.as_data(observations.reshape(-1, n_features), "observations", allow_nan=allow_nan)
    data = Sequences(rows.reshape(n_sequences, max_len, n_features), jnp.asarray(lengths, jnp.int32))
    return data, flat_positions


def valid_steps(data: Sequences) -> jax.Array:
    """(n_sequences, max_len) bool, True for t < length."""
    return jnp.arange(data.observations.shape[1])[None, :] < data.lengths[:, None]


def step_rows(data: Sequences) -> jax.Array:
    """(max_len * n_sequences, D) the observations time-major (row t * S + s = step t of
    sequence s): the layout of the E-step's emissions and marginals (the scaled
    forward-backward scans over time, so it needs no transpose of a (S, T, K) array)."""
    return jnp.swapaxes(data.observations, 0, 1).reshape(-1, data.observations.shape[-1])


def rows_and_weights(data: Sequences, sample_weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every step as a row, (S * T, D), and its weight: the sequence's weight, 0 if padded."""
    n_features = data.observations.shape[-1]
    row_weight = jnp.where(valid_steps(data), sample_weight[:, None], 0.0)
    return data.observations.reshape(-1, n_features), row_weight.reshape(-1)


def safe_log(p: jax.Array) -> jax.Array:
    """log p with log 0 = -inf and a zero (not NaN) gradient there."""
    positive = p > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, p, 1.0)), -jnp.inf)


def dirichlet_update(counts: jax.Array, prior: Any, previous: jax.Array) -> jax.Array:
    """hmmlearn's MAP update of probabilities along the last axis, max(prior - 1 + counts, 0)
    normalised; entries that were 0 stay 0 and an axis without counts keeps `previous`."""
    pseudo = jnp.maximum(jnp.asarray(prior, counts.dtype) - 1.0 + counts, 0.0)
    pseudo = jnp.where(previous > 0, pseudo, 0.0)
    total = jnp.sum(pseudo, axis=-1, keepdims=True)
    positive = total > 0
    return jnp.where(positive, pseudo / jnp.where(positive, total, 1.0), previous)


def dirichlet_log_prior(probs: jax.Array, prior: Any) -> jax.Array:
    """sum (prior - 1) log p over the support (entries > 0), the Dirichlet MAP term."""
    alpha = jnp.asarray(prior, probs.dtype) - 1.0
    return jnp.sum(jnp.where(probs > 0, alpha * safe_log(probs), 0.0))


def occupied(counts: jax.Array) -> jax.Array:
    """(K,) bool: states whose expected occupancy exceeds eps times the total."""
    return counts > jnp.finfo(counts.dtype).eps * jnp.sum(counts)


def check_prior(value: Any, name: str) -> None:
    """A Dirichlet pseudo-count (hmmlearn's *_prior): >= 1 everywhere, 1 meaning none.

    Below 1 the prior's density is unbounded at the boundary and the MAP estimate is not
    defined; only Python numbers, lists and numpy arrays are checked (traced values and
    the placeholders of pytree unflattening pass)."""
    if not isinstance(value, (int, float, list, np.ndarray)) or isinstance(value, bool):
        return
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)) or np.any(array < 1.0):
        raise ValueError(f"{name} must be >= 1 (1 means no prior), got {value!r}.")


def check_method(method: str) -> None:
    validation.check_choice(method, "method", hmm_inference.METHODS)


def check_fixed(fixed: Any, fields: tuple[str, ...]) -> tuple[str, ...]:
    """`fixed` as a tuple of parameter names, each one of `fields`."""
    names = (fixed,) if isinstance(fixed, str) else tuple(fixed)
    unknown = sorted(set(names) - set(fields))
    if unknown:
        raise ValueError(f"fixed names {unknown}, which are not parameters; the parameters are {list(fields)}.")
    return names


# --- the protocol --------------------------------------------------------------------------------
class HMMModel(Model):
    """jaxem.protocol.Model for hidden Markov models, given a family's emission hooks.

    Subclasses are dataclasses with the fields n_states (static), initial_prior,
    transition_prior (leaves), method and fixed (static), and `params_class`, a NamedTuple
    whose first two fields are initial (K,) and transition (K, K).
    """

    additive_statistics = True
    params_class: Any
    allows_missing = False  # NaN observations are missing values (GaussianHMM.missing_width)

    def check_common(self) -> None:
        validation.check_positive_int(self.n_states, "n_states")
        check_prior(self.initial_prior, "initial_prior")
        check_prior(self.transition_prior, "transition_prior")
        check_method(self.method)
        object.__setattr__(self, "fixed", check_fixed(self.fixed, self.params_class._fields))

    # --- eager, at jaxem.fit's boundary ---------------------------------------------------------
    def as_data(self, X: Any) -> Sequences:
        """Validated `Sequences` (see `as_sequences`), checked against the family's domain."""
        data, _ = as_sequences(X, self.allows_missing)
        if not validation.is_traced(data.observations):
            self.check_observations(np.asarray(data.observations))
        return data

    def check_observations(self, observations: np.ndarray) -> None:
        """Family-specific eager checks on concrete (S, T, D) observations (padding filled)."""

    def start_params(self, values: dict, data: Sequences) -> Any:
        """Params from a dict with initial (K,), transition (K, K) and the emission fields."""
        k = self.n_states
        arrays = checks.arrays_from_dict(values, {"initial": (k,), "transition": (k, k)})
        checks.check_probabilities(arrays["initial"], "initial")
        checks.check_probabilities(arrays["transition"], "transition")
        dtype = data.observations.dtype
        emission = self.emission_from_dict(values, data.observations.shape[-1], dtype)
        return self.params_class(
            jnp.asarray(arrays["initial"], dtype), jnp.asarray(arrays["transition"], dtype), **emission
        )

    # --- traced, once per fit ------------------------------------------------------------------
    def init_params(self, key, data: Sequences, sample_weight, method, chunk_size=None) -> Any:
        """Emission params from `method` (jaxem.init on every step as a row), then initial and
        transition probabilities from the per-step state posteriors under them (as if
        independent), with one pseudo-count per entry; chunk_size does not apply."""
        rows, row_weight = rows_and_weights(data, sample_weight)
        emission = self.init_emission(key, rows, row_weight, method)
        k, dtype = self.n_states, rows.dtype
        uniform = self.params_class(jnp.full(k, 1.0 / k, dtype), jnp.full((k, k), 1.0 / k, dtype), **emission)
        return self.params_from_emission(uniform, data, sample_weight)

    def params_from_emission(self, params: Any, data: Sequences, sample_weight: jax.Array) -> Any:
        """params with initial and transition re-estimated from per-step posteriors."""
        rows, _ = rows_and_weights(data, sample_weight)
        n_sequences, max_len, _ = data.observations.shape
        log_em = self.log_emission(params, self.emission_factors(params), rows).reshape(n_sequences, max_len, -1)
        resp = jax.nn.softmax(log_em, axis=-1)
        resp = jnp.where(jnp.isfinite(resp), resp, 1.0 / resp.shape[-1])
        initial = jnp.sum(sample_weight[:, None] * resp[:, 0], axis=0) + 1.0
        pair_weight = jnp.where(valid_steps(data)[:, 1:], sample_weight[:, None], 0.0)
        pairs = jnp.einsum("st,sti,stj->ij", pair_weight, resp[:, :-1], resp[:, 1:]) + 1.0
        return params._replace(
            initial=initial / jnp.sum(initial), transition=pairs / jnp.sum(pairs, axis=1, keepdims=True)
        )

    def precompute(self, data: Sequences) -> Sequences:
        return data

    def precompute_chunks(self, chunks: Sequences) -> Sequences:
        return chunks

    def init_m_state(self, params: Any) -> Any:
        return ()

    def param_constraints(self, params: Any = None) -> Any:
        """simplex for initial and for every transition row, then the emission's names."""
        return self.params_class("simplex", "simplex", **self.emission_constraints())

    # --- traced, every iteration -----------------------------------------------------------
    def e_step_params(self, params: Any) -> Prepared:
        """params with the emission's factors (Cholesky factors), once per chunked E-step."""
        return Prepared(params, self.emission_factors(params))

    def _prepared(self, params: Any) -> Prepared:
        return params if isinstance(params, Prepared) else self.e_step_params(params)

    def _time_major_posterior(self, params: Any, data: Sequences, pair_weight: jax.Array | None):
        """(params, step_rows(data), batch_posterior with time-major (T, S, K) marginals):
        the E-step's forward-backward; pair_weight (S,) as batch_posterior's, None for ones."""
        p, factors = self._prepared(params)
        n_sequences, max_len, _ = data.observations.shape
        rows = step_rows(data)
        log_em = self.log_emission(p, factors, rows).reshape(max_len, n_sequences, -1)
        if pair_weight is None:
            pair_weight = jnp.ones(n_sequences, log_em.dtype)
        post = hmm_inference.batch_posterior(
            safe_log(p.initial), safe_log(p.transition), log_em, data.lengths, pair_weight, self.method, time_major=True
        )
        return p, rows, post

    def posterior(self, params: Any, data: Sequences) -> hmm_inference.Posterior:
        """Forward-backward on the batch (the E-step's kernel, hmm_inference.batch_posterior):
        marginals (S, T, K), transitions (K, K) expected counts summed over the sequences,
        log_likelihood (S,)."""
        _, _, post = self._time_major_posterior(params, data, None)
        return post._replace(marginals=jnp.swapaxes(post.marginals, 0, 1))

    def e_step(self, params: Any, data: Sequences, sample_weight: jax.Array) -> tuple[HMMStats, jax.Array]:
        """Weighted, summed statistics and sum_s w_s log p(sequence_s); a sequence of weight 0
        (a chunk's padding) adds exactly nothing."""
        used = sample_weight > 0
        w = jnp.where(used, sample_weight, 0.0)
        p, rows, post = self._time_major_posterior(params, data, w)
        gamma = jnp.where(used[:, None], post.marginals, 0.0) * w[:, None]
        log_lik = jnp.sum(jnp.where(used, w * post.log_likelihood, 0.0))
        emission = self.emission_statistics(p, rows, gamma.reshape(rows.shape[0], -1))
        return HMMStats(jnp.sum(gamma[0], axis=0), post.transitions, emission), log_lik

    def log_prior(self, params: Any) -> jax.Array:
        """Dirichlet terms of the initial distribution and transition rows, plus the emission's."""
        return (
            dirichlet_log_prior(params.initial, self.initial_prior)
            + dirichlet_log_prior(params.transition, self.transition_prior)
            + self.emission_log_prior(params)
        )

    def maximize(self, stats: HMMStats, params: Any, m_state: Any, data: Any, sample_weight: Any):
        """Closed-form M-step; the `fixed` params keep their values (Q separates into initial,
        transition and emission terms, so this is an exact conditional maximisation)."""
        new = params._replace(
            initial=dirichlet_update(stats.initial, self.initial_prior, params.initial),
            transition=dirichlet_update(stats.transitions, self.transition_prior, params.transition),
            **self.m_step_emission(stats.emission, params),
        )
        return new._replace(**{name: getattr(params, name) for name in self.fixed}), m_state

    # --- prediction and model selection ---------------------------------------------------------
    def _layout(self, X: Any) -> tuple[Sequences, np.ndarray | None]:
        data, flat = as_sequences(X, self.allows_missing)
        if not validation.is_traced(data.observations):
            self.check_observations(np.asarray(data.observations))
        return data, flat

    @staticmethod
    def _output(values: jax.Array, flat: np.ndarray | None) -> jax.Array:
        """Per-step values (S, T, ...) in the input's layout: flat rows when X was flat."""
        if flat is None:
            return values
        return values.reshape((-1,) + values.shape[2:])[flat]

    def viterbi(self, params: Any, data: Sequences) -> tuple[jax.Array, jax.Array]:
        """Viterbi on every sequence: (paths (S, T) with -1 at padded steps, log_prob (S,))."""
        p, factors = self._prepared(params)
        n_sequences, max_len, n_features = data.observations.shape
        log_em = self.log_emission(p, factors, data.observations.reshape(-1, n_features))
        log_em = log_em.reshape(n_sequences, max_len, -1)
        log_initial, log_transition = safe_log(p.initial), safe_log(p.transition)
        run = lambda e, n: hmm_inference.viterbi(log_initial, log_transition, e, n)
        paths, log_prob = jax.vmap(run)(log_em, data.lengths)
        return jnp.where(valid_steps(data), paths, -1), log_prob

    def predict_proba(self, params: Any, X: Any) -> jax.Array:
        """p(z_t = k | sequence): (S, T, K) (0 at padded steps), or (n_samples, K) for flat X."""
        data, flat = self._layout(X)
        return self._output(_posterior(self, params, data).marginals, flat)

    def decode(self, params: Any, X: Any) -> tuple[jax.Array, jax.Array]:
        """Viterbi: (sum over sequences of max_z log p(x, z), paths as in `predict`)."""
        data, flat = self._layout(X)
        paths, log_prob = _viterbi(self, params, data)
        return jnp.sum(log_prob), self._output(paths, flat)

    def predict(self, params: Any, X: Any) -> jax.Array:
        """Most likely state path (Viterbi): (S, T) int with -1 at padded steps, or
        (n_samples,) for flat X (hmmlearn's predict)."""
        return self.decode(params, X)[1]

    def score_samples(self, params: Any, X: Any) -> jax.Array:
        """log p(sequence_s | params) per sequence: (n_sequences,)."""
        data, _ = self._layout(X)
        return _log_likelihood(self, params, data)

    def score(self, params: Any, X: Any) -> jax.Array:
        """Total log-likelihood of all sequences (hmmlearn's score), a scalar."""
        return jnp.sum(self.score_samples(params, X))

    def count_parameters(self, params: Any) -> int:
        """Free parameters as hmmlearn counts them (K - 1, K (K - 1), emission), less fixed ones."""
        k = self.n_states
        sizes = {"initial": k - 1, "transition": k * (k - 1)}
        sizes.update(self.n_emission_parameters(params))
        return sum(size for name, size in sizes.items() if name not in self.fixed)

    def bic(self, params: Any, X: Any) -> jax.Array:
        """-2 log L + p log(n_observations) (lower is better)."""
        data, _ = self._layout(X)
        n = jnp.sum(data.lengths)
        return -2.0 * self.score(params, data) + self.count_parameters(params) * jnp.log(n)

    def aic(self, params: Any, X: Any) -> jax.Array:
        """-2 log L + 2 p (lower is better)."""
        return -2.0 * self.score(params, X) + 2.0 * self.count_parameters(params)

    def sample(self, key: jax.Array, params: Any, n_sequences: int, length: int) -> tuple[jax.Array, jax.Array]:
        """n_sequences sequences of `length` steps: (observations (S, L, D), states (S, L))."""
        validation.check_positive_int(n_sequences, "n_sequences")
        validation.check_positive_int(length, "length")
        return _sample(self, key, params, n_sequences, length)

    def sample_sequences(self, key, params, n_sequences: int, length: int) -> tuple[jax.Array, jax.Array]:
        state_key, emission_key = jax.random.split(key)
        keys = jax.random.split(state_key, n_sequences)
        states = jax.vmap(lambda k: hmm_inference.sample_states(k, params.initial, params.transition, length))(keys)
        return self.sample_emission(emission_key, params, states), states


# Predictions compiled once per model configuration and data shape (the model is a pytree:
# its static fields key the cache, its leaves are traced).
_posterior = jax.jit(lambda model, params, data: model.posterior(params, data))
_viterbi = jax.jit(lambda model, params, data: model.viterbi(params, data))


@jax.jit
def _log_likelihood(model, params, data):
    p, factors = model._prepared(params)
    n_sequences, max_len, n_features = data.observations.shape
    log_em = model.log_emission(p, factors, data.observations.reshape(-1, n_features))
    log_em = log_em.reshape(n_sequences, max_len, -1)
    return hmm_inference.batch_log_likelihood(safe_log(p.initial), safe_log(p.transition), log_em, data.lengths, model.method)


_sample = jax.jit(
    lambda model, key, params, n_sequences, length: model.sample_sequences(key, params, n_sequences, length),
    static_argnums=(3, 4),
)


def initial_resp(key, rows, row_weight, n_states, method, features=None) -> jax.Array:
    """Weighted starting responsibilities (n, K) of every row by a jaxem.init method,
    clustering `features` (default the rows themselves)."""
    features = rows if features is None else features
    resp_t = init_lib.initial_responsibilities(key, features, row_weight, n_states, method or "kmeans++")
    return resp_t.T * row_weight[:, None]
