"""jaxem.sklearn.GaussianHMM with missing="em": the fit is the jaxem.fit(..., missing="em")
call it makes, and score, predict_proba, decode, predict and impute on sequences with NaN
equal a numpy forward-backward / Viterbi whose emissions are the scipy Gaussian densities
of each step's observed coordinates. Float64 comes from tests/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

import jax  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402
from sklearn.base import clone  # noqa: E402

import jaxem  # noqa: E402
from jaxem import sklearn as jsk  # noqa: E402

LENGTHS = np.array([40, 25, 1])
N_ITER = 6
OPTIONS = dict(covariance_type="full", n_iter=N_ITER, tol=0.0, random_state=0)


def _steps(missing_fraction=0.2, seed=0):
    """(complete X (66, 3), X with NaN holes, one step missing every entry)."""
    rng = np.random.default_rng(seed)
    states = np.zeros(LENGTHS.sum(), int)
    for t in range(1, states.size):  # sticky chain
        states[t] = states[t - 1] if rng.random() < 0.85 else 1 - states[t - 1]
    X = np.array([[0.0, 0.0, 0.0], [3.0, 1.0, 2.0]])[states] + rng.normal(size=(states.size, 3)) @ [
        [1.0, 0.4, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]]
    holes = X.copy()
    holes[rng.random(X.shape) < missing_fraction] = np.nan
    holes[5] = np.nan
    return X, holes


# --- numpy references -----------------------------------------------------------------------------
def _log_emissions(x, means, covariances):
    """(T, K) log N(x_o | mu_k,o, Sigma_k,oo) of every step; 0 where a step observes nothing."""
    out = np.zeros((len(x), len(means)))
    for t, step in enumerate(x):
        o = ~np.isnan(step)
        if o.any():
            out[t] = [multivariate_normal(m[o], c[np.ix_(o, o)]).logpdf(step[o]) for m, c in zip(means, covariances)]
    return out


def _forward_backward(log_b, pi, A):
    """(log-likelihood, posteriors (T, K)) of one sequence, in log space."""
    alpha, beta = np.zeros_like(log_b), np.zeros_like(log_b)
    alpha[0] = np.log(pi) + log_b[0]
    for t in range(1, len(log_b)):
        alpha[t] = logsumexp(alpha[t - 1][:, None] + np.log(A), axis=0) + log_b[t]
    for t in range(len(log_b) - 2, -1, -1):
        beta[t] = logsumexp(np.log(A) + log_b[t + 1] + beta[t + 1], axis=1)
    log_lik = logsumexp(alpha[-1])
    return log_lik, np.exp(alpha + beta - log_lik)


def _viterbi(log_b, pi, A):
    """(max_z log p(x, z), the path) of one sequence."""
    delta, back = np.log(pi) + log_b[0], []
    for t in range(1, len(log_b)):
        scores = delta[:, None] + np.log(A)
        back.append(np.argmax(scores, axis=0))
        delta = np.max(scores, axis=0) + log_b[t]
    path = [int(np.argmax(delta))]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return float(np.max(delta)), np.array(path[::-1])


def _conditional_mean(x, mean, cov):
    """E[x | x_o] under N(mean, cov): x with its NaN entries filled."""
    o, m = ~np.isnan(x), np.isnan(x)
    filled = x.copy()
    filled[m] = mean[m] + (cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)], x[o] - mean[o]) if o.any() else 0.0)
    return filled


def _reference(est, X, lengths):
    """(total log-likelihood, posteriors (n, K), Viterbi log-probability, Viterbi path (n,))
    of X under the estimator's fitted attributes."""
    parts = [
        (_forward_backward(log_b, est.startprob_, est.transmat_), _viterbi(log_b, est.startprob_, est.transmat_))
        for log_b in (_log_emissions(x, est.means_, est.covars_) for x in np.split(X, np.cumsum(lengths)[:-1]))
    ]
    return (
        sum(fb[0] for fb, _ in parts), np.concatenate([fb[1] for fb, _ in parts]),
        sum(v[0] for _, v in parts), np.concatenate([v[1] for _, v in parts]),
    )


@pytest.fixture(scope="module")
def fitted():
    _, holes = _steps()
    return holes, jsk.GaussianHMM(2, missing="em", **OPTIONS).fit(holes, LENGTHS)


# --- tests ----------------------------------------------------------------------------------------
def test_fit_is_jaxem_fit_with_missing_em(fitted):
    holes, est = fitted
    model = jaxem.GaussianHMM(2, covariance_type="full", min_covar=1e-3, covars_prior=1e-2, covars_weight=1.0)
    separate = jaxem.fit(model, (holes, LENGTHS), key=jax.random.key(0), max_iter=N_ITER, tol=0.0, missing="em")
    for attribute, field in [("startprob_", "initial"), ("transmat_", "transition"), ("means_", "means"),
                             ("covars_", "covariances")]:
        np.testing.assert_array_equal(getattr(est, attribute), np.asarray(getattr(separate.params, field)))
    assert est.monitor_.iter == int(separate.n_iter) == N_ITER
    np.testing.assert_array_equal(list(est.monitor_.history), np.asarray(separate.trace) * len(LENGTHS))
    assert np.all(np.diff(est.monitor_.history) > 0)  # EM on the observed-data likelihood
    assert np.isfinite(est.means_).all() and np.isfinite(est.covars_).all()


def test_predictions_on_missing_data_match_numpy(fitted):
    holes, est = fitted
    log_lik, posteriors, viterbi_log_prob, path = _reference(est, holes, LENGTHS)
    np.testing.assert_allclose(est.score(holes, LENGTHS), log_lik, rtol=1e-9)
    np.testing.assert_allclose(est.predict_proba(holes, LENGTHS), posteriors, rtol=1e-9, atol=1e-12)
    score, proba = est.score_samples(holes, LENGTHS)
    np.testing.assert_allclose(score, log_lik, rtol=1e-9)
    np.testing.assert_allclose(proba, posteriors, rtol=1e-9, atol=1e-12)
    log_prob, states = est.decode(holes, LENGTHS)
    np.testing.assert_allclose(log_prob, viterbi_log_prob, rtol=1e-9)
    np.testing.assert_array_equal(states, path)
    np.testing.assert_array_equal(est.predict(holes, LENGTHS), path)
    map_log_prob, map_states = est.decode(holes, LENGTHS, algorithm="map")
    np.testing.assert_array_equal(map_states, np.argmax(posteriors, axis=1))
    np.testing.assert_allclose(map_log_prob, np.max(posteriors, axis=1).sum(), rtol=1e-9)
    imputed = np.stack([
        sum(p * _conditional_mean(x, mean, cov) for p, mean, cov in zip(row, est.means_, est.covars_))
        for x, row in zip(holes, posteriors)
    ])
    np.testing.assert_allclose(est.impute(holes, LENGTHS), imputed, rtol=1e-9, atol=1e-12)
    k, d = 2, holes.shape[1]
    n_params = (k - 1) + k * (k - 1) + k * d + k * d * (d + 1) // 2
    np.testing.assert_allclose(est.bic(holes, LENGTHS), -2 * log_lik + n_params * np.log(len(holes)), rtol=1e-9)
    np.testing.assert_allclose(est.aic(holes, LENGTHS), -2 * log_lik + 2 * n_params, rtol=1e-9)


def test_partial_user_start_with_missing_em(fitted):
    """Starting probabilities given, means and covariances drawn from the data with its
    holes (init_params="mc"): a fit from them, jaxem.fit(init=..., missing="em")."""
    holes, _ = fitted
    partial = jsk.GaussianHMM(2, missing="em", init_params="mc", **OPTIONS)
    partial.startprob_, partial.transmat_ = np.array([0.6, 0.4]), np.array([[0.8, 0.2], [0.3, 0.7]])
    partial.fit(holes, LENGTHS)
    assert partial.monitor_.iter == N_ITER and np.all(np.diff(partial.monitor_.history) > 0)
    assert np.isfinite(partial.means_).all() and np.isfinite(partial.covars_).all()


def test_without_missing_entries_em_is_the_plain_fit():
    X, _ = _steps()
    em = jsk.GaussianHMM(2, missing="em", **OPTIONS).fit(X, LENGTHS)
    plain = jsk.GaussianHMM(2, **OPTIONS).fit(X, LENGTHS)
    for attribute in ("startprob_", "transmat_", "means_", "covars_"):
        np.testing.assert_array_equal(getattr(em, attribute), getattr(plain, attribute))
    assert list(em.monitor_.history) == list(plain.monitor_.history)
    assert em.score(X, LENGTHS) == plain.score(X, LENGTHS)
    np.testing.assert_array_equal(em.predict(X, LENGTHS), plain.predict(X, LENGTHS))


def test_parameter_tags_and_errors(fitted):
    holes, est = fitted
    assert est.get_params()["missing"] == "em" and clone(est).get_params() == est.get_params()
    assert est.__sklearn_tags__().input_tags.allow_nan
    assert not jsk.GaussianHMM(2).__sklearn_tags__().input_tags.allow_nan
    assert jsk.GaussianHMM(2).get_params()["missing"] is None
    with pytest.raises(ValueError, match='missing="em"'):
        jsk.GaussianHMM(2, **OPTIONS).fit(holes, LENGTHS)
    with pytest.raises(ValueError, match="missing"):
        jsk.GaussianHMM(2, missing="mean").fit(holes, LENGTHS)
    plain = clone(est).set_params(missing=None)
    for name in ("startprob_", "transmat_", "means_", "covars_", "n_features_in_"):
        setattr(plain, name, getattr(est, name))
    with pytest.raises(ValueError, match='missing="em"'):
        plain.score(holes, LENGTHS)
    empty = holes.copy()
    empty[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] with every entry missing"):
        jsk.GaussianHMM(2, missing="em", **OPTIONS).fit(empty, LENGTHS)
    infinite = holes.copy()
    infinite[3, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        jsk.GaussianHMM(2, missing="em", **OPTIONS).fit(infinite, LENGTHS)
