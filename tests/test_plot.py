"""Figures (jaxem.plot): they render, and their artists hold the data they should."""

import io
import sys

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

import jaxem  # noqa: E402
from jaxem import plot  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def render_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    return data


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(80, 2)), rng.normal(size=(60, 2)) * 0.5 + [3.0, 1.0]])
    model = jaxem.GaussianMixture(2)
    return model, X, jaxem.fit(model, X, key=jax.random.key(3), n_restarts=5, max_iter=40, init="random")


def test_trace_has_one_line_per_restart_and_highlights_the_best(fitted):
    _, _, result = fitted
    fig = plot.plot_trace(result)
    render_png(fig)
    (ax,) = fig.axes
    traces = np.asarray(result.restarts.trace)
    assert len(ax.lines) == traces.shape[0] == 5
    drawn = sorted(line.get_ydata().tobytes() for line in ax.lines)
    assert drawn == sorted(row.tobytes() for row in traces)
    (selected,) = [line for line in ax.lines if line.get_label().startswith("selected")]
    assert selected.get_ydata().tobytes() == traces[int(result.best_restart)].tobytes()
    assert selected.get_linewidth() > max(line.get_linewidth() for line in ax.lines if line is not selected)


def test_trace_of_a_single_run_and_onto_given_axes(fitted):
    _, _, result = fitted
    single = result._replace(restarts=None, best_restart=None)
    fig, axes = plt.subplots(1, 2)
    assert plot.plot_trace(single, ax=axes[1]) is fig
    assert len(axes[1].lines) == 1 and len(axes[0].lines) == 0
    np.testing.assert_array_equal(axes[1].lines[0].get_ydata(), np.asarray(result.trace))


def random_covariances(rng, K, D):
    """Reference covariances of each type and the full (K, D, D) matrices they mean."""
    A = rng.normal(size=(K, D, D))
    full = A @ A.transpose(0, 2, 1) + 0.3 * np.eye(D)
    tied = full[0]
    diag = rng.uniform(0.2, 2.0, size=(K, D))
    spherical = rng.uniform(0.2, 2.0, size=K)
    return {
        "full": (full, full),
        "tied": (tied, np.stack([tied] * K)),
        "diag": (diag, np.stack([np.diag(d) for d in diag])),
        "spherical": (spherical, np.stack([s * np.eye(D) for s in spherical])),
    }


def ellipse_points(patch: Ellipse) -> np.ndarray:
    """Points on the boundary of an Ellipse patch, in data coordinates: the unit circle
    through the patch's own transform (the path's vertices include Bezier control points)."""
    t = np.linspace(0, 2 * np.pi, 37)
    return patch.get_patch_transform().transform(np.column_stack([np.cos(t), np.sin(t)]))


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_component_ellipses_are_the_marginal_covariance_contours(covariance_type):
    rng = np.random.default_rng(1)
    K, D, features = 3, 3, (2, 0)
    covariances, full_reference = random_covariances(rng, K, D)[covariance_type]
    params = jaxem.GaussianMixtureParams(np.array([0.5, 0.3, 0.2]), rng.normal(size=(K, D)) * 3, covariances)
    model = jaxem.GaussianMixture(K, covariance_type=covariance_type)
    X, _ = model.sample(jax.random.key(0), params, 150)
    X = np.asarray(X)
    fig = plot.plot_components(model, params, X, features=features)
    render_png(fig)
    (ax,) = fig.axes
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2 * K
    f = list(features)
    for k in range(K):
        marginal = full_reference[k][np.ix_(f, f)]
        for patch, n_sigma in zip(ellipses[2 * k: 2 * k + 2], (1.0, 2.0)):
            np.testing.assert_allclose(patch.center, params.means[k, f], rtol=1e-12)
            offsets = ellipse_points(patch) - params.means[k, f]
            mahalanobis = np.einsum("ni,ij,nj->n", offsets, np.linalg.inv(marginal), offsets)
            np.testing.assert_allclose(mahalanobis, n_sigma**2, rtol=1e-9)
            axes = sorted([patch.width, patch.height])
            np.testing.assert_allclose(axes, 2 * n_sigma * np.sqrt(np.linalg.eigvalsh(marginal)), rtol=1e-12)
    (points,) = ax.collections
    np.testing.assert_array_equal(points.get_offsets(), X[:, f])
    labels = np.asarray(model.predict(params, X))
    colours = points.get_facecolors()
    for k in range(K):
        expected = to_rgba(f"C{k}", points.get_alpha())
        np.testing.assert_allclose(colours[labels == k], np.broadcast_to(expected, ((labels == k).sum(), 4)))


def test_student_t_components_use_scale_matrices_and_other_families_are_refused():
    rng = np.random.default_rng(2)
    scales = random_covariances(rng, 2, 2)["full"][0]
    params = jaxem.StudentTMixtureParams(np.array([0.6, 0.4]), np.array([[0.0, 0.0], [4.0, 4.0]]), scales, np.array([4.0, 9.0]))
    model = jaxem.StudentTMixture(2)
    X = rng.normal(size=(50, 2)) * 2
    ax = plot.plot_components(model, params, X).axes[0]
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 4
    offsets = ellipse_points(ellipses[3]) - params.means[1]
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", offsets, np.linalg.inv(scales[1]), offsets), 4.0, rtol=1e-9)
    poisson = jaxem.PoissonMixtureParams(np.array([0.5, 0.5]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="means and covariances"):
        plot.plot_components(jaxem.PoissonMixture(2), poisson, X)
    with pytest.raises(ValueError, match="two different columns"):
        plot.plot_components(model, params, X, features=(0, 2))
    with pytest.raises(ValueError, match="D >= 2"):
        plot.plot_components(model, params, X[:, :1])


def test_criterion_lines_follow_sorted_k_and_mark_each_minimum():
    rng = np.random.default_rng(3)
    values = {k: {"BIC": float(v), "AIC": float(a)} for k, v, a in zip([3, 1, 4, 2], rng.normal(size=4), rng.normal(size=4))}
    fig = plot.plot_criterion(values)
    render_png(fig)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["BIC", "AIC"]
    for line, name in zip(ax.lines, ["BIC", "AIC"]):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(line.get_ydata(), [values[k][name] for k in (1, 2, 3, 4)])
    for marker, name in zip(ax.collections, ["BIC", "AIC"]):
        k_min = min(values, key=lambda k: values[k][name])
        np.testing.assert_array_equal(marker.get_offsets(), [[k_min, values[k_min][name]]])
    single = plot.plot_criterion({2: 10.0, 1: 12.0}).axes[0]
    assert len(single.lines) == 1 and list(single.lines[0].get_ydata()) == [12.0, 10.0]


@pytest.mark.parametrize(
    "table, message",
    [({}, "non-empty"), ({0: 1.0}, "positive integers"), ({1: {"BIC": 1.0}, 2: {"AIC": 1.0}}, "same criteria"),
     ({1: "low"}, "must be numbers")],
)
def test_criterion_rejects_bad_tables(table, message):
    with pytest.raises(ValueError, match=message):
        plot.plot_criterion(table)


def test_states_step_plot_below_the_observations():
    rng = np.random.default_rng(4)
    states = np.repeat(rng.integers(0, 3, size=10), 7)
    values = rng.normal(size=(states.size, 2)) + states[:, None]
    fig = plot.plot_states(states, values)
    render_png(fig)
    value_ax, state_ax = fig.axes
    assert value_ax.get_position().y0 > state_ax.get_position().y0  # observations above
    assert len(value_ax.lines) == 2
    for d, line in enumerate(value_ax.lines):
        np.testing.assert_array_equal(line.get_ydata(), values[:, d])
    (step,) = state_ax.lines
    assert step.get_drawstyle().startswith("steps")
    np.testing.assert_array_equal(step.get_ydata(), states)
    np.testing.assert_array_equal(step.get_xdata(), np.arange(states.size))
    alone = plot.plot_states(states)
    assert len(alone.axes) == 1 and len(alone.axes[0].lines) == 1


def test_states_rejects_bad_inputs():
    with pytest.raises(ValueError, match="integer"):
        plot.plot_states(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="T=3"):
        plot.plot_states(np.array([0, 1, 1]), np.zeros(4))
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="pair"):
        plot.plot_states(np.array([0, 1, 1]), np.zeros(3), ax=ax)


def test_missing_matplotlib_names_the_extra(monkeypatch, fitted):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install jaxem\[plot\]"):
        plot.plot_trace(fitted[2])
