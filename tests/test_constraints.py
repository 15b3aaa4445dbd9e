"""jaxem.constraints.Interval: bounds a model's M-step keeps, as unconstrained coordinates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxem import constraints
from jaxem.constraints import Interval

INTERVALS = {
    "linear": Interval(-2.0, 3.0),
    "log": Interval(0.1, 1000.0, log=True),
    "floor": Interval(1e-10),
    "floor_zero": Interval(0.0),
}
INSIDE = {
    "linear": np.array([-1.999, -0.5, 0.0, 2.5, 2.9999]),
    "log": np.array([0.1001, 1.0, 30.0, 999.0]),
    "floor": np.array([2e-10, 1e-3, 1.0, 1e6]),
    "floor_zero": np.array([1e-300, 1e-3, 1.0, 1e6]),
}


@pytest.mark.parametrize("kind", sorted(INTERVALS))
def test_round_trip_inside(kind):
    interval, x = INTERVALS[kind], jnp.asarray(INSIDE[kind])
    u = constraints.inverse(interval, x)
    assert np.all(np.isfinite(u))
    scale = abs(interval.low) + abs(interval.high or 0.0)  # rounding of low + (high - low) f
    np.testing.assert_allclose(constraints.forward(interval, u), x, rtol=1e-12, atol=1e-14 * scale)


@pytest.mark.parametrize("kind", ["linear", "log", "floor"])
def test_points_outside_come_back_onto_the_bounds(kind):
    interval = INTERVALS[kind]
    low = interval.low
    beyond = [low - 1.0 if not interval.log else low / 2, low]
    targets = [low, low]
    if interval.high is not None:
        beyond += [interval.high * 1.5, interval.high]
        targets += [interval.high, interval.high]
    u = constraints.inverse(interval, jnp.asarray(beyond))
    assert np.all(np.isfinite(u))
    back = constraints.forward(interval, u)
    np.testing.assert_allclose(back, targets, rtol=1e-13, atol=1e-13 * abs(low))
    assert np.all((back >= low) & (back <= (interval.high or np.inf)))


def test_every_coordinate_maps_inside():
    u = jnp.linspace(-60.0, 60.0, 241)
    for interval in INTERVALS.values():
        x = constraints.forward(interval, u)
        high = interval.high if interval.high is not None else np.inf
        assert np.all((x >= interval.low) & (x <= high)), interval


def test_a_floor_of_zero_is_positive():
    x = jnp.array([1e-3, 1.0, 7.5])
    np.testing.assert_allclose(
        constraints.inverse(Interval(0.0), x), constraints.inverse("positive", x), rtol=1e-15
    )


def test_bounds_may_be_traced_and_broadcast():
    @jax.jit
    def round_trip(low, high, x):
        interval = Interval(low, high, log=True)
        return constraints.forward(interval, constraints.inverse(interval, x))

    low, high = jnp.array([0.5, 1.0]), jnp.array([10.0, 2.0])
    x = jnp.array([[0.25, 1.5], [5.0, 3.0]])
    np.testing.assert_allclose(round_trip(low, high, x), [[0.5, 1.5], [5.0, 2.0]], rtol=1e-13)


def test_gradients_through_the_map_are_finite_at_the_bounds():
    interval = INTERVALS["log"]
    u = constraints.inverse(interval, jnp.array([0.1, 1000.0]))
    grad = jax.grad(lambda v: jnp.sum(jnp.log(constraints.forward(interval, v))))(u)
    assert np.all(np.isfinite(grad))


def test_pytrees_free_size_and_checks():
    names = {"rate": Interval(1e-10), "dof": Interval(0.1, 1000.0, log=True), "w": "simplex"}
    params = {"rate": jnp.array([0.5, 2.0]), "dof": jnp.array(4.0), "w": jnp.array([0.25, 0.75])}
    back = constraints.from_unconstrained(names, constraints.to_unconstrained(names, params))
    for key in params:
        np.testing.assert_allclose(back[key], params[key], rtol=1e-12)
    assert constraints.free_size(names["rate"], (2,)) == 2
    with pytest.raises(ValueError, match="finite high"):
        Interval(1.0, log=True)
