"""Missing values (jaxem.fit(..., missing="em")) against an independent numpy EM.

The reference is the textbook algorithm (Ghahramani & Jordan 1994; Little & Rubin 2002,
ch. 11), written row by row with explicit index sets: per row and component, the observed
block Sigma_oo is inverted directly, the conditional mean and covariance of the missing
block come from the regression of x_m on x_o, and the M-step uses the expected moments.
jaxem factorises only the missing block of the precision matrix and splits complete rows
onto the GEMM path, so agreement tests the algebra, the split and the bookkeeping.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.models import conditional_gaussian as cg

N_ROWS, N_FEATURES, N_COMPONENTS = 60, 3, 2
REG = 1e-6


def _data(missing_fraction=0.2, seed=0, n_rows=N_ROWS):
    rng = np.random.RandomState(seed)
    half = n_rows // 2
    X = np.concatenate([rng.randn(half, N_FEATURES), rng.randn(n_rows - half, N_FEATURES) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]] + 3])
    holes = X.copy()
    holes[rng.rand(*X.shape) < missing_fraction] = np.nan
    empty = np.isnan(holes).all(axis=1)
    holes[empty, 0] = X[empty, 0]
    return X, holes


def _start(cov_type):
    covariances = {
        "full": np.stack([np.eye(3), [[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 1.5]]]),
        "tied": np.array([[1.5, 0.2, 0.0], [0.2, 1.0, 0.1], [0.0, 0.1, 1.2]]),
        "diag": np.array([[1.0, 2.0, 1.5], [0.5, 1.0, 2.0]]),
        "spherical": np.array([1.0, 2.0]),
    }[cov_type]
    return {"weights": np.array([0.4, 0.6]), "means": np.array([[0.5, 0.0, 0.0], [2.0, 2.5, 3.0]]), "covariances": covariances}


def _full_covariances(cov, cov_type, k):
    if cov_type == "full":
        return cov
    if cov_type == "tied":
        return np.stack([cov] * k)
    if cov_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(N_FEATURES) for c in cov])


def _log_normal(x, mean, cov):
    diff = x - mean
    _, log_det = np.linalg.slogdet(cov)
    return -0.5 * (len(x) * np.log(2 * np.pi) + log_det + diff @ np.linalg.solve(cov, diff))


def _conditional(x, mean, cov):
    """(log p(x_o), x_hat, C) for one row and one Gaussian, by regression on x_o."""
    o, m = ~np.isnan(x), np.isnan(x)
    x_hat, c = x.copy(), np.zeros((len(x), len(x)))
    log_p = _log_normal(x[o], mean[o], cov[np.ix_(o, o)])
    if m.any():
        regression = cov[np.ix_(m, o)] @ np.linalg.inv(cov[np.ix_(o, o)])
        x_hat[m] = mean[m] + regression @ (x[o] - mean[o])
        c[np.ix_(m, m)] = cov[np.ix_(m, m)] - regression @ cov[np.ix_(o, m)]
    return log_p, x_hat, c


def _reference_e_step(X, weights, log_w, means, covs):
    """Per-component (counts, sums of x_hat, sums of E[x x^T]) and the summed log-likelihood."""
    k = len(log_w)
    counts, sums, squares, total = np.zeros(k), np.zeros((k, X.shape[1])), np.zeros((k, X.shape[1], X.shape[1])), 0.0
    for x, w in zip(X, weights):
        parts = [_conditional(x, means[j], covs[j]) for j in range(k)]
        log_joint = np.array([log_w[j] + parts[j][0] for j in range(k)])
        log_p = np.logaddexp.reduce(log_joint)
        total += w * log_p
        for j in range(k):
            r = w * np.exp(log_joint[j] - log_p)
            x_hat, c = parts[j][1], parts[j][2]
            counts[j] += r
            sums[j] += r * x_hat
            squares[j] += r * (np.outer(x_hat, x_hat) + c)
    return counts, sums, squares, total


def _reference_gmm(X, start, cov_type, n_iter, weights=None):
    """n_iter EM iterations; returns (weights, means, covariances, trace of mean log-lik)."""
    weights = np.ones(len(X)) if weights is None else weights
    w, mu, cov = start["weights"], start["means"], start["covariances"]
    trace = []
    for _ in range(n_iter):
        counts, sums, squares, total = _reference_e_step(X, weights, np.log(w), mu, _full_covariances(cov, cov_type, len(w)))
        trace.append(total / weights.sum())
        counts = counts + 10 * np.finfo(float).eps
        mu = sums / counts[:, None]
        scatter = squares / counts[:, None, None] - np.einsum("kd,ke->kde", mu, mu)
        if cov_type == "full":
            cov = scatter + REG * np.eye(N_FEATURES)
        elif cov_type == "tied":
            cov = np.einsum("k,kde->de", counts, scatter) / counts.sum() + REG * np.eye(N_FEATURES)
        elif cov_type == "diag":
            cov = np.stack([np.diag(s) for s in scatter]) + REG
        else:
            cov = np.array([np.trace(s) / N_FEATURES for s in scatter]) + REG
        w = counts / counts.sum()
    return w, mu, cov, np.array(trace)


def _fit(model, X, **kwargs):
    options = dict(key=jax.random.PRNGKey(0), missing="em", tol=0.0, diff=None)
    options.update(kwargs)
    return jaxem.fit(model, X, **options)


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_gaussian_mixture_matches_the_numpy_reference_from_the_same_start(cov_type):
    _, holes = _data()
    start = _start(cov_type)
    result = _fit(jaxem.GaussianMixture(N_COMPONENTS, cov_type), holes, init=start, max_iter=6)
    w, mu, cov, trace = _reference_gmm(holes, start, cov_type, 6)
    np.testing.assert_allclose(result.params.weights, w, rtol=1e-9)
    np.testing.assert_allclose(result.params.means, mu, rtol=1e-9)
    np.testing.assert_allclose(result.params.covariances, cov, rtol=1e-9)
    np.testing.assert_allclose(result.trace, trace, rtol=1e-11)
    assert np.all(np.diff(trace) > 0)


def test_float32_per_row_path_matches_the_numpy_reference():
    """The per-row E-step in float32 (its row quadratics are sums of slices there, a
    reduction in float64) against the float64 numpy reference, to float32 accuracy."""
    _, holes = _data()
    model = jaxem.GaussianMixture(N_COMPONENTS, "full")
    wrapped, _, _ = jaxem.missing.prepare(model, holes, None)
    assert wrapped.groups and not wrapped.block_size  # the per-row path, in groups of one width
    start = _start("full")
    result = _fit(model, holes.astype(np.float32), init={k: v.astype(np.float32) for k, v in start.items()}, max_iter=6)
    assert result.params.means.dtype == np.float32
    w, mu, cov, trace = _reference_gmm(holes, start, "full", 6)
    for got, want in zip(result.params, (w, mu, cov)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.trace, trace, rtol=1e-6)


def test_width_e_step_in_chunks_equals_one_pass():
    """A group of rows run in chunks (conditional_gaussian.width_e_step's chunk_rows, the
    last chunk padded with weight-0 rows) sums to the same moments as in one pass."""
    _, holes = _data()
    wrapped, ordered, _ = jaxem.missing.prepare(jaxem.GaussianMixture(N_COMPONENTS, "full"), holes, None)
    split = wrapped.precompute(wrapped.as_data(ordered))
    (_, _, table, _, _), group = wrapped.width_groups()[0], split.incomplete[0]
    start = _start("full")
    components = cg.gaussian_components(np.log(start["weights"]), start["means"], start["covariances"])
    weights = np.random.default_rng(2).uniform(0.5, 2.0, group.values.shape[0])
    assert group.values.shape[0] % 7
    one_pass, chunked = (cg.width_e_step(components, group, weights, table, chunk_rows) for chunk_rows in (None, 7))
    for got, want in zip(jax.tree.leaves(chunked), jax.tree.leaves(one_pass)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def _rows_missing(X, widths_and_counts, seed):
    """X with rows deleted pattern by pattern: for (W, n) every W-subset of the columns is
    missing from n consecutive rows; the rest stay complete."""
    holes, row = X.copy(), 0
    for width, count in widths_and_counts:
        for columns in itertools.combinations(range(X.shape[1]), width):
            holes[row : row + count, list(columns)] = np.nan
            row += count
    return holes[np.random.RandomState(seed).permutation(len(X))]


@pytest.mark.parametrize("form", ["per-pattern coefficients", "low rank"])
@pytest.mark.parametrize("layout", ["blocks for one width, per row for the other", "blocks for all widths"])
def test_rows_in_blocks_of_one_pattern_match_the_numpy_reference(layout, form, monkeypatch):
    """Patterns with many rows run as padded blocks of one pattern (blocked_e_step, or
    low_rank_e_step for patterns of few rows: forced here), all of them (prepare's
    block_size: per-pattern coefficients only, in a table of two widths whose one-entry
    patterns have a padding slot; low rank: a group per width) or those of one width
    (group_blocks) beside per-row groups; with sample weights, which the padding rows must
    not take."""
    low_rank = form == "low rank"
    monkeypatch.setattr(jaxem.missing, "LOW_RANK_ROWS_PER_FEATURE", 10**6 if low_rank else 0)
    monkeypatch.setattr(jaxem.missing, "LOW_RANK_WASTE", jaxem.missing.BLOCK_WASTE)
    few = 3 if layout.startswith("blocks for one") else 240
    X, _ = _data(n_rows=3 * 240 + 3 * few + 40)
    holes = _rows_missing(X, [(1, 240), (2, few)], seed=1)
    model = jaxem.GaussianMixture(N_COMPONENTS, "full")
    wrapped, _, _ = jaxem.missing.prepare(model, holes, None)
    if few == 3:
        assert not wrapped.block_size and wrapped.group_blocks[0] > 0 and wrapped.group_blocks[1] == 0
        assert wrapped.groups[0][1] % wrapped.group_blocks[0] == 0
        assert wrapped.low_rank == ((True, False) if low_rank else ())
    elif low_rank:
        assert not wrapped.block_size and all(wrapped.group_blocks) and wrapped.low_rank == (True, True)
    else:
        assert wrapped.block_size and not wrapped.groups and not wrapped.low_rank
    weights = np.random.RandomState(2).uniform(0.5, 2.0, len(X))
    start = _start("full")
    result = _fit(model, holes, init=start, max_iter=6, sample_weight=weights)
    w, mu, cov, trace = _reference_gmm(holes, start, "full", 6, weights)
    for got, want in zip(result.params, (w, mu, cov)):
        np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(result.trace, trace, rtol=1e-11)


def test_low_rank_blocks_with_padding_slots_equal_per_pattern_coefficients():
    """A table of two widths (one-entry patterns carry a padding slot, which prepare never
    gives low-rank blocks): low_rank_e_step sums to blocked_e_step's statistics, which the
    test above checks against the numpy reference."""
    X, _ = _data(n_rows=6 * 32 + 8)
    holes = _rows_missing(X, [(1, 32), (2, 32)], seed=1)
    wrapped, ordered, _ = jaxem.missing.prepare(jaxem.GaussianMixture(N_COMPONENTS, "full"), holes, None)
    assert wrapped.block_size and wrapped.width == 2 and not wrapped.low_rank
    rows = jax.tree.map(lambda leaf: leaf[wrapped.n_complete :], wrapped.as_data(ordered))
    start = _start("full")
    components = cg.gaussian_components(np.log(start["weights"]), start["means"], start["covariances"])
    weights = np.random.default_rng(2).uniform(0.5, 2.0, rows.values.shape[0]).reshape(-1, wrapped.block_size)
    table = wrapped.pattern_table()
    want = cg.blocked_e_step(components, cg.pattern_blocks(rows.values, rows.pattern, wrapped.block_size), weights, table)
    got = cg.low_rank_e_step(components, cg.low_rank_blocks(rows.values, rows.pattern, wrapped.block_size), weights, table)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-10, atol=1e-12)


def test_pattern_order_pads_each_pattern_to_its_own_block_size():
    group = np.array([2, 0, 1, 2, 1, 1, 0, 2, 1])  # pattern 0: complete rows, never padded
    order, is_pad = jaxem.missing.pattern_order(group, np.array([4, 3, 0]))
    np.testing.assert_array_equal(order, [1, 6, 2, 4, 5, 8, 8, 8, 0, 3, 7])
    np.testing.assert_array_equal(is_pad, [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0])


def test_chunks_weights_jit_and_acceleration_give_the_same_fit():
    """Chunks with complete, mixed and incomplete rows; integer weights = repeated rows;
    a fit inside jit (every row on the conditional E-step, W = D); SQUAREM to the optimum."""
    _, holes = _data()
    model = jaxem.GaussianMixture(N_COMPONENTS, "full")
    start = _start("full")
    plain = _fit(model, holes, init=start, max_iter=6)
    chunked = _fit(model, holes, init=start, max_iter=6, chunk_size=16)
    jitted = jax.jit(lambda X: _fit(model, X, init=start, max_iter=6).params)(jnp.asarray(holes))
    for params in (chunked.params, jitted):
        for got, want in zip(params, plain.params):
            np.testing.assert_allclose(got, want, rtol=1e-11)

    counts = np.random.RandomState(1).randint(0, 3, size=N_ROWS)
    weighted = _fit(model, holes, init=start, max_iter=6, sample_weight=counts.astype(float))
    w, mu, cov, _ = _reference_gmm(np.repeat(holes, counts, axis=0), start, "full", 6)
    for got, want in zip(weighted.params, (w, mu, cov)):
        np.testing.assert_allclose(got, want, rtol=1e-9)

    converged = _fit(model, holes, init=start, max_iter=2000, tol=1e-13)
    fast = _fit(model, holes, init=start, max_iter=2000, tol=1e-13, accelerate="squarem")
    assert converged.converged and fast.converged and converged.n_decreases == 0
    assert fast.n_evals < converged.n_evals
    np.testing.assert_allclose(fast.log_likelihood, converged.log_likelihood, rtol=1e-9)


def test_one_gaussian_with_nothing_missing_is_the_closed_form_mle():
    X, _ = _data()
    result = _fit(jaxem.GaussianMixture(1, "full"), X, max_iter=3)
    np.testing.assert_allclose(result.params.means[0], X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.params.covariances[0], np.cov(X.T, bias=True) + REG * np.eye(3), rtol=1e-10)


def test_estimates_approach_the_full_data_fit_as_fewer_entries_are_missing():
    """N = 600 rows; the fitted means move towards the complete data's as the share of
    deleted entries falls from 30% to 3%, and EM's trace never decreases."""
    model = jaxem.GaussianMixture(N_COMPONENTS, "full")
    X, _ = _data(n_rows=600)
    full = _fit(model, X, missing=None, max_iter=300, tol=1e-10, n_restarts=2)
    errors = []
    for fraction in (0.3, 0.03):
        _, holes = _data(fraction, n_rows=600)
        fit = _fit(model, holes, init={k: np.asarray(v) for k, v in full.params._asdict().items()}, max_iter=300, tol=1e-10)
        assert fit.converged and fit.n_decreases == 0
        valid = fit.trace[~np.isnan(fit.trace)]
        assert np.all(np.diff(valid) >= -1e-12)
        errors.append(np.abs(np.asarray(fit.params.means) - np.asarray(full.params.means)).max())
    assert errors[0] > errors[1]
    assert errors[1] < 0.05


def _reference_factor_analysis(X, start, n_iter, isotropic):
    """Rubin & Thayer's EM for factor analysis (Tipping & Bishop's for PPCA: isotropic)
    with the expected moments of the rows (x_m latent as well as z), in numpy."""
    mean, W = start["mean"], start["loadings"]
    psi = np.full(X.shape[1], start["noise_variance"]) if isotropic else start["noise_variances"]
    trace = []
    for _ in range(n_iter):
        cov = W @ W.T + np.diag(psi)
        n, sums, squares, total = _reference_e_step(X, np.ones(len(X)), np.zeros(1), mean[None], cov[None])
        trace.append(total / len(X))
        mean = sums[0] / n[0]
        C = squares[0] / n[0] - np.outer(mean, mean)
        beta = W.T @ np.linalg.inv(cov)
        G = np.eye(W.shape[1]) - beta @ W
        W = C @ beta.T @ np.linalg.inv(G + beta @ C @ beta.T)
        psi = np.diag(C - W @ beta @ C)
        psi = np.full_like(psi, psi.mean()) if isotropic else psi
    return mean, W, psi, np.array(trace)


@pytest.mark.parametrize("isotropic", [False, True], ids=["factor_analysis", "ppca"])
def test_factor_models_match_the_numpy_reference(isotropic):
    _, holes = _data()
    start = {"mean": np.array([1.0, 1.0, 1.5]), "loadings": np.array([[1.0], [0.8], [1.2]])}
    if isotropic:
        model, start["noise_variance"] = jaxem.PPCA(1), 0.6
    else:
        model, start["noise_variances"] = jaxem.FactorAnalysis(1), np.array([0.5, 0.6, 0.7])
    result = _fit(model, holes, init=start, max_iter=5)
    mean, W, psi, trace = _reference_factor_analysis(holes, start, 5, isotropic)
    np.testing.assert_allclose(result.params.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(result.params.loadings @ result.params.loadings.T, W @ W.T, rtol=1e-9)
    np.testing.assert_allclose(np.broadcast_to(result.params[2], psi.shape), psi, rtol=1e-9)
    np.testing.assert_allclose(result.trace, trace, rtol=1e-11)
    imputed, _ = model.impute(result.params, holes)
    cov = np.asarray(model.covariance(result.params))
    for x, got in zip(holes[:6], np.asarray(imputed)):
        np.testing.assert_allclose(got, _conditional(x, np.asarray(result.params.mean), cov)[1], rtol=1e-10)


def test_impute_gives_the_mixture_conditional_mean_and_covariance():
    _, holes = _data()
    model = jaxem.GaussianMixture(N_COMPONENTS, "full")
    params = _fit(model, holes, init=_start("full"), max_iter=4).params
    imputed, covariances = model.impute(params, holes)
    w, mu, cov = (np.asarray(p) for p in params)
    for x, got, got_cov in zip(holes[:12], np.asarray(imputed), np.asarray(covariances)):
        parts = [_conditional(x, mu[j], cov[j]) for j in range(N_COMPONENTS)]
        log_joint = np.log(w) + np.array([p[0] for p in parts])
        mean, cov_x = _mixed_moments(np.exp(log_joint - np.logaddexp.reduce(log_joint)), parts)
        np.testing.assert_allclose(got, mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got_cov, cov_x, atol=1e-10)
        assert np.all(got[~np.isnan(x)] == x[~np.isnan(x)])


def test_gradient_with_respect_to_observed_entries_matches_finite_differences():
    _, holes = _data()
    model = jaxem.GaussianMixture(N_COMPONENTS, "diag")
    start = _start("diag")

    def fitted_mean(X):
        return _fit(model, X, init=start, max_iter=500, tol=1e-14, diff="implicit").params.means[1, 0]

    gradient = jax.grad(fitted_mean)(jnp.asarray(holes))
    assert np.all(np.asarray(gradient)[np.isnan(holes)] == 0)
    row, col = np.argwhere(~np.isnan(holes) & (np.arange(N_ROWS)[:, None] >= N_ROWS // 2))[0]
    step = 1e-5
    up, down = holes.copy(), holes.copy()
    up[row, col] += step
    down[row, col] -= step
    numeric = (fitted_mean(up) - fitted_mean(down)) / (2 * step)
    np.testing.assert_allclose(gradient[row, col], numeric, rtol=1e-5)


def test_invalid_missing_data_is_rejected_before_compiling():
    _, holes = _data()
    model = jaxem.GaussianMixture(N_COMPONENTS)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match='missing="em"'):
        jaxem.fit(model, holes, key=key)
    empty_row = holes.copy()
    empty_row[3] = np.nan
    with pytest.raises(ValueError, match="row\\(s\\) with every entry missing"):
        jaxem.fit(model, empty_row, key=key, missing="em")
    empty_column = _data(missing_fraction=0.0)[1]
    empty_column[:, 1] = np.nan
    with pytest.raises(ValueError, match="column\\(s\\) \\[1\\] with every entry missing"):
        jaxem.fit(model, empty_column, key=key, missing="em")
    infinite = holes.copy()
    infinite[0, 0] = np.inf
    with pytest.raises(ValueError, match="1 infinite value"):
        jaxem.fit(model, infinite, key=key, missing="em")
    with pytest.raises(ValueError, match="missing"):
        jaxem.fit(model, holes, key=key, missing="mean")
    with pytest.raises(TypeError, match="Gaussian components"):
        jaxem.fit(jaxem.PoissonMixture(2), np.abs(holes), key=key, missing="em")


# --- Gaussian HMM ----------------------------------------------------------------------------------
HMM_LENGTHS = np.array([12, 8, 1])


def _reference_posterior(x, pi, A, mu, cov):
    """Forward-backward in log space for one sequence x (T, D) with NaN entries: marginals
    (T, K), summed transition posteriors (K, K), log-likelihood, and per step and state the
    (log p(x_o), x_hat, C) of `_conditional`."""
    k = len(pi)
    parts = [[_conditional(step, mu[j], cov[j]) for j in range(k)] for step in x]
    log_b = np.array([[p[0] for p in row] for row in parts])
    alpha, beta = np.zeros_like(log_b), np.zeros_like(log_b)
    alpha[0] = np.log(pi) + log_b[0]
    for t in range(1, len(x)):
        alpha[t] = np.logaddexp.reduce(alpha[t - 1][:, None] + np.log(A), axis=0) + log_b[t]
    for t in range(len(x) - 2, -1, -1):
        beta[t] = np.logaddexp.reduce(np.log(A) + log_b[t + 1] + beta[t + 1], axis=1)
    log_lik = np.logaddexp.reduce(alpha[-1])
    pairs = sum(
        (np.exp(alpha[t][:, None] + np.log(A) + log_b[t + 1] + beta[t + 1] - log_lik) for t in range(len(x) - 1)),
        np.zeros((k, k)),
    )
    return np.exp(alpha + beta - log_lik), pairs, log_lik, parts


def _reference_hmm(sequences, start, n_iter):
    """Baum-Welch with emissions marginalised over each step's missing entries and the
    expected moments in the M-step (maximum likelihood, full covariances)."""
    pi, A, mu, cov = (np.asarray(start[k], float) for k in ("initial", "transition", "means", "covariances"))
    k = len(pi)
    trace = []
    for _ in range(n_iter):
        first, pairs = np.zeros(k), np.zeros((k, k))
        counts, sums, squares, total = np.zeros(k), np.zeros_like(mu), np.zeros_like(cov), 0.0
        for x in sequences:
            gamma, xi, log_lik, parts = _reference_posterior(x, pi, A, mu, cov)
            total += log_lik
            first += gamma[0]
            pairs += xi
            for t in range(len(x)):
                for j in range(k):
                    x_hat, c = parts[t][j][1], parts[t][j][2]
                    counts[j] += gamma[t, j]
                    sums[j] += gamma[t, j] * x_hat
                    squares[j] += gamma[t, j] * (np.outer(x_hat, x_hat) + c)
        trace.append(total / len(sequences))
        pi, A = first / first.sum(), pairs / pairs.sum(axis=1, keepdims=True)
        mu = sums / counts[:, None]
        cov = squares / counts[:, None, None] - np.einsum("kd,ke->kde", mu, mu)
    return pi, A, mu, cov, np.array(trace)


def _mixed_moments(resp, parts):
    """Mean and covariance of x given resp (K,) over components with (_, x_hat, C) parts."""
    mean = sum(r * p[1] for r, p in zip(resp, parts))
    second = sum(r * (p[2] + np.outer(p[1], p[1])) for r, p in zip(resp, parts))
    return mean, second - np.outer(mean, mean)


def test_gaussian_hmm_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    states = rng.integers(2, size=HMM_LENGTHS.sum())
    X = np.array([[0.0, 0.0, 0.0], [3.0, 1.0, 2.0]])[states] + rng.normal(size=(HMM_LENGTHS.sum(), 3))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[5] = np.nan  # a step with nothing observed still propagates the chain
    start = dict(
        initial=np.array([0.6, 0.4]), transition=np.array([[0.8, 0.2], [0.3, 0.7]]),
        means=np.array([[0.5, 0.0, 0.2], [2.5, 1.5, 2.0]]), covariances=np.stack([np.eye(3), 1.5 * np.eye(3)]),
    )
    model = jaxem.GaussianHMM(2, covars_prior=0.0)
    result = _fit(model, (X, HMM_LENGTHS), init=start, max_iter=4)
    sequences = np.split(X, np.cumsum(HMM_LENGTHS)[:-1])
    pi, A, mu, cov, trace = _reference_hmm(sequences, start, 4)
    for got, want in zip(result.params, (pi, A, mu, cov)):
        np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(result.trace, trace, rtol=1e-11)
    with pytest.raises(ValueError, match='missing="em"'):
        jaxem.fit(model, (X, HMM_LENGTHS), key=jax.random.PRNGKey(0))
    no_column = X.copy()
    no_column[:, 1] = np.nan  # nothing to fit its mean and variance to
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] with every entry missing"):
        jaxem.fit(model, (no_column, HMM_LENGTHS), key=jax.random.PRNGKey(0), missing="em")

    # impute: the conditional moments given every observed entry of the sequence.
    imputed, covariances = model.impute(result.params, (X, HMM_LENGTHS))
    gamma, _, _, parts = _reference_posterior(sequences[0], *(np.asarray(p) for p in result.params))
    for t in range(HMM_LENGTHS[0]):
        mean, cov = _mixed_moments(gamma[t], parts[t])
        np.testing.assert_allclose(imputed[t], mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(covariances[t], cov, atol=1e-10)
