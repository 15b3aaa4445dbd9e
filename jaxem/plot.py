"""Matplotlib figures of fits: traces, components, model selection, decoded states.

matplotlib is optional (`pip install jaxem[plot]`) and imported inside each function.
Every function draws on `ax` when given (so figures can be composed) or on a new figure,
and returns the matplotlib Figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SIGMAS = (1.0, 2.0)  # Mahalanobis radii of the drawn covariance ellipses


def _require_matplotlib() -> None:
    """Import matplotlib, or raise an ImportError that says how to install it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError("jaxem.plot needs matplotlib: pip install jaxem[plot]") from err


def _pyplot():
    """matplotlib.pyplot (only imported to make new figures)."""
    _require_matplotlib()
    import matplotlib.pyplot as plt

    return plt


def _call_predict(model, params, X):
    return model.predict(params, X)


def predict_labels(model: Any, params: Any, X: np.ndarray) -> np.ndarray:
    """(n_samples,) model.predict, compiled as one program for pytree models (the built-in
    families; eagerly it dispatches dozens of small programs), else eager."""
    import jax

    try:
        labels = jax.jit(_call_predict)(model, params, X)
    except TypeError:  # a model that is not a pytree of arrays
        labels = model.predict(params, X)
    return np.asarray(labels)


def _axes(ax, **subplots):
    """(figure, ax): `ax`'s figure, or a new figure with one Axes."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = _pyplot().subplots(**subplots)
    return fig, ax


# --- traces -----------------------------------------------------------------------------
def restart_traces(result: Any) -> tuple[np.ndarray, int]:
    """(traces (n_restarts, max_iter) NaN-padded, index of the best restart) of a FitResult;
    a result without `.restarts` counts as one restart."""
    if getattr(result, "restarts", None) is not None:
        traces = np.asarray(result.restarts.trace, dtype=float)
        best = int(result.best_restart) if result.best_restart is not None else int(np.nanargmax(traces.max(axis=1)))
    else:
        traces, best = np.asarray(result.trace, dtype=float)[None], 0
    if traces.ndim != 2 or traces.shape[1] == 0:
        raise ValueError(f"result.trace must be (max_iter,) or (n_restarts, max_iter), got shape {traces.shape}")
    if not 0 <= best < traces.shape[0]:
        raise ValueError(f"best_restart={best} is not one of the {traces.shape[0]} restarts")
    return traces, best


def plot_trace(result: Any, ax=None):
    """Objective (mean per-sample log-likelihood) per iteration of every restart.

    result: a FitResult; its `restarts.trace` (n_restarts, max_iter), NaN-padded after
      each run's stop, gives one line per restart; the selected restart is drawn on top
      in colour, the others in grey.
    Returns the Figure.
    """
    traces, best = restart_traces(result)
    fig, ax = _axes(ax)
    iterations = np.arange(traces.shape[1])
    for r, trace in enumerate(traces):
        if r != best:
            ax.plot(iterations, trace, color="0.6", linewidth=0.8, alpha=0.8)
    ax.plot(iterations, traces[best], color="C3", linewidth=2.0, label=f"selected restart ({best})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("log-likelihood per sample")
    ax.set_title(f"EM traces of {traces.shape[0]} restart{'s' * (traces.shape[0] > 1)}")
    ax.legend(loc="lower right")
    return fig


# --- components -------------------------------------------------------------------------
def _covariance_type(model: Any, covariances: np.ndarray) -> str:
    covariance_type = getattr(model, "covariance_type", None)
    if covariance_type is not None:
        return covariance_type
    if covariances.ndim == 3:  # StudentTMixture: full scale matrices
        return "full"
    raise ValueError(f"{type(model).__name__} has no covariance_type; cannot read covariances of shape {covariances.shape}")


def pair_covariances(covariances: Any, covariance_type: str, n_components: int, features: tuple[int, int]) -> np.ndarray:
    """(K, 2, 2) marginal covariances of a pair of features, from covariances in
    scikit-learn's shapes: full (K, D, D), tied (D, D), diag (K, D), spherical (K,)."""
    cov = np.asarray(covariances, dtype=float)
    i, j = features
    if covariance_type == "full":
        return cov[:, [i, j]][:, :, [i, j]]
    if covariance_type == "tied":
        return np.broadcast_to(cov[np.ix_([i, j], [i, j])], (n_components, 2, 2)).copy()
    if covariance_type == "diag":
        return cov[:, [i, j]][:, :, None] * np.eye(2)
    if covariance_type == "spherical":
        return cov[:, None, None] * np.eye(2)
    raise ValueError(f"unknown covariance_type {covariance_type!r}")


def ellipse_geometry(covariance: np.ndarray, n_sigma: float) -> tuple[float, float, float]:
    """(width, height, angle in degrees) of the ellipse {x: x^T C^-1 x = n_sigma^2} of a
    (2, 2) covariance C; width lies along the principal axis."""
    values, vectors = np.linalg.eigh(covariance)
    major = vectors[:, 1]
    angle = float(np.degrees(np.arctan2(major[1], major[0])))
    return 2 * n_sigma * float(np.sqrt(values[1])), 2 * n_sigma * float(np.sqrt(max(values[0], 0.0))), angle


def plot_components(model: Any, params: Any, X: Any, features: tuple[int, int] = (0, 1), ax=None, feature_names=None):
    """Data coloured by predicted component, with each component's 1 and 2 sigma ellipses.

    model, params: a Gaussian (any covariance type) or Student-t mixture and its params
      (Student-t: the ellipses are of the scale matrices).
    X: (n_samples, D) data, D >= 2; `features`: the pair of columns drawn (for D > 2 the
      ellipses are of that pair's marginal covariance).
    feature_names: optional D names for the axis labels.
    Returns the Figure.
    """
    _require_matplotlib()
    from matplotlib.patches import Ellipse

    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] < 2:
        raise ValueError(f"plot_components needs X of shape (n_samples, D >= 2), got {X.shape}")
    if not hasattr(params, "means") or not hasattr(params, "covariances"):
        raise ValueError(f"plot_components needs params with means and covariances, got {type(params).__name__}")
    features = tuple(int(f) for f in features)
    if len(features) != 2 or features[0] == features[1] or not all(0 <= f < X.shape[1] for f in features):
        raise ValueError(f"features must be two different columns of X in [0, {X.shape[1]}), got {features}")
    means = np.asarray(params.means, dtype=float)
    covariances = np.asarray(params.covariances)
    K = means.shape[0]
    pairs = pair_covariances(covariances, _covariance_type(model, covariances), K, features)
    labels = predict_labels(model, params, X)
    fig, ax = _axes(ax)
    colours = [f"C{k % 10}" for k in range(K)]
    ax.scatter(X[:, features[0]], X[:, features[1]], c=[colours[k] for k in labels], s=8, alpha=0.6, linewidths=0)
    for k in range(K):
        centre = means[k, list(features)]
        for n_sigma in SIGMAS:
            width, height, angle = ellipse_geometry(pairs[k], n_sigma)
            ax.add_patch(Ellipse(centre, width, height, angle=angle, fill=False, edgecolor=colours[k],
                                 linewidth=2.0 if n_sigma == SIGMAS[0] else 1.0, linestyle="-" if n_sigma == SIGMAS[0] else "--"))
        ax.plot(*centre, marker="x", color="k", markersize=7)
    names = feature_names if feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
    ax.set_xlabel(names[features[0]])
    ax.set_ylabel(names[features[1]])
    ax.set_title(f"{K} components (ellipses: {' and '.join(f'{s:g}' for s in SIGMAS)} sigma)")
    ax.autoscale_view()
    return fig


# --- model selection --------------------------------------------------------------------
def criterion_table(table: Mapping) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sorted K values, {criterion name: values in that order}) of a mapping
    K -> number (one series, "criterion") or K -> {name: number} (e.g. "BIC", "AIC")."""
    if not isinstance(table, Mapping) or not table:
        raise ValueError("table must be a non-empty mapping of K -> value or K -> {name: value}")
    ks = sorted(table)
    if not all(isinstance(k, (int, np.integer)) and k >= 1 for k in ks):
        raise ValueError(f"table keys must be positive integers (K), got {ks}")
    rows = [table[k] if isinstance(table[k], Mapping) else {"criterion": table[k]} for k in ks]
    names = list(rows[0])
    if any(list(row) != names for row in rows):
        raise ValueError(f"every K must have the same criteria; K={ks[0]} has {names}")
    try:
        series = {name: np.array([float(row[name]) for row in rows]) for name in names}
    except (TypeError, ValueError) as err:
        raise ValueError(f"criterion values must be numbers ({err})") from None
    return np.asarray(ks), series


def plot_criterion(table: Mapping, ax=None):
    """BIC/AIC (or any criterion, lower is better) against the number of components K.

    table: mapping K -> value, or K -> {"BIC": value, "AIC": value, ...}; one line per
      criterion, its minimum marked.
    Returns the Figure.
    """
    ks, series = criterion_table(table)
    fig, ax = _axes(ax)
    for i, (name, values) in enumerate(series.items()):
        ax.plot(ks, values, marker="o", color=f"C{i}", label=name)
        if np.isfinite(values).any():
            best = int(np.nanargmin(values))
            ax.scatter([ks[best]], [values[best]], s=150, facecolors="none", edgecolors=f"C{i}", linewidths=2, zorder=3)
    ax.set_xticks(ks)
    ax.set_xlabel("number of components K")
    ax.set_ylabel(" / ".join(series) + " (lower is better)")
    ax.legend()
    return fig


# --- hidden states ----------------------------------------------------------------------
def _is_sequence(ax) -> bool:
    return isinstance(ax, (Sequence, np.ndarray))


def plot_states(states: Any, values: Any = None, ax=None):
    """Decoded hidden states over time as a step plot, optionally below the observed series.

    states: (T,) integer state per time step.
    values: None, or (T,) / (T, D) observations drawn in a panel above the states.
    ax: one Axes (values None) or a pair (values Axes, states Axes); None makes them.
    Returns the Figure.
    """
    states = np.asarray(states)
    if states.ndim != 1 or states.size == 0 or not np.issubdtype(states.dtype, np.integer):
        raise ValueError(f"states must be a non-empty (T,) integer array, got {states.dtype}{list(states.shape)}")
    time = np.arange(states.size)
    if values is not None:
        values = np.asarray(values, dtype=float)
        values = values[:, None] if values.ndim == 1 else values
        if values.ndim != 2 or values.shape[0] != states.size:
            raise ValueError(f"values must be (T,) or (T, D) with T={states.size}, got shape {values.shape}")
    if ax is None:
        if values is None:
            fig, state_ax = _pyplot().subplots(figsize=(8, 2.5))
        else:
            fig, (value_ax, state_ax) = _pyplot().subplots(2, 1, sharex=True, figsize=(8, 5), height_ratios=(2, 1))
    elif values is None:
        if _is_sequence(ax):
            raise ValueError("without values, ax must be one Axes")
        fig, state_ax = ax.figure, ax
    else:
        if not (_is_sequence(ax) and len(ax) == 2):
            raise ValueError("with values, ax must be a pair (values Axes, states Axes)")
        (value_ax, state_ax), fig = ax, ax[0].figure
    if values is not None:
        for d in range(values.shape[1]):
            value_ax.plot(time, values[:, d], linewidth=1.0, color=f"C{d % 10}")
        value_ax.set_ylabel("observed")
    state_ax.step(time, states, where="mid", color="k", linewidth=1.2)
    state_ax.set_yticks(np.unique(states))
    state_ax.set_xlabel("time step")
    state_ax.set_ylabel("state")
    return fig
