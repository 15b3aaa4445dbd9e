"""progress=: the values reported from inside the compiled loop are the fit's own trace."""

import collections
import jax
import numpy as np
import pytest

import jaxem
from jaxem import progress


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(120, 2)) + 4.0 * rng.integers(2, size=(120, 1))


@pytest.mark.parametrize("accelerate", [None, "squarem"])
def test_callback_reports_every_iteration_of_every_restart(accelerate):
    calls = []
    record = lambda n_iter, value, change: calls.append((int(n_iter), float(value), float(change)))  # noqa: E731
    result = jaxem.fit(
        jaxem.GaussianMixture(2), data(), key=jax.random.key(0), n_restarts=2, max_iter=12, tol=0.0,
        accelerate=accelerate, progress=record,
    )
    traces = np.asarray(result.restarts.trace)
    assert len(calls) == 2 * 12
    # The callback does not name the restart; two restarts that reach the same value at the
    # same iteration share a key, so each key holds the changes of all restarts reporting it.
    changes = collections.defaultdict(list)
    for n, value, change in calls:
        changes[(n, value)].append(change)
    for trace in traces:
        # EM reports at iteration n the objective at the params entering it; SQUAREM the
        # objective at the iterate cycle n accepts.
        first = 1 if accelerate is None else 0
        for n in range(1, 12):
            reported = np.asarray(changes[(n + first, trace[n])])
            # the same subtraction up to rounding (XLA may fuse it with the division)
            error = np.abs(reported - (trace[n] - trace[n - 1]))
            assert reported.size and error.min() <= 4e-16 * abs(trace[n]), (n, reported, trace[n] - trace[n - 1])


def test_quasi_newton_reports_its_lbfgs_iterations_too():
    calls = collections.defaultdict(list)
    record = lambda n_iter, value, change: calls[int(n_iter)].append((float(value), float(change)))  # noqa: E731
    rng = np.random.default_rng(0)
    overlapping = rng.normal(size=(120, 2)) + 1.5 * rng.integers(2, size=(120, 1))  # slow EM: L-BFGS takes over
    result = jaxem.fit(
        jaxem.GaussianMixture(2), overlapping, key=jax.random.key(0), n_restarts=2, max_iter=60, tol=1e-12,
        accelerate="quasi_newton", progress=record,
    )
    assert np.all(np.asarray(result.restarts.method) == jaxem.Method.QUASI_NEWTON)
    n_iters = np.asarray(result.restarts.n_iter)
    # every iteration of every restart reported once, EM's and L-BFGS's alike
    for n in range(1, int(n_iters.max()) + 1):
        assert len(calls[n]) == int(np.sum(n_iters >= n)), n
    assert set(calls) == set(range(1, int(n_iters.max()) + 1))
    finals = {float(v) for v in np.asarray(result.restarts.log_likelihood)}
    last = {value for n in calls for value, _ in calls[n]}
    assert all(np.isclose(last_value, list(last), rtol=1e-12, atol=0).any() for last_value in finals)
    # the objective never decreases, whichever phase reports it
    assert min(change for n in calls for _, change in calls[n]) >= -1e-12


def test_restarts_of_an_iteration_make_one_host_call_and_stopped_runs_are_not_reported():
    # A `batched` callable sees the host calls themselves: one per iteration, with arrays
    # over the restarts still running. Restarts that stop early (tol > 0) are stepped on,
    # discarded, by the vmapped loop (and by diff="unroll"'s scan up to max_iter); those
    # steps are not reported, so each restart reports exactly its own n_iter iterations.
    for diff in ("implicit", "unroll"):
        batches, calls = [], []

        def record(n_iter, value, change):
            batches.append((np.array(n_iter), np.array(value)))

        record.batched = True
        options = dict(key=jax.random.key(0), n_restarts=3, max_iter=50, tol=1e-6, diff=diff)
        result = jaxem.fit(jaxem.GaussianMixture(2), data(), progress=record, **options)
        n_iter = np.asarray(result.restarts.n_iter)
        assert len(set(n_iter)) > 1 and n_iter.max() < 50  # the restarts stop at different iterations
        assert len(batches) == n_iter.max()
        assert [len(n) for n, _ in batches] == [int(np.sum(n_iter >= i)) for i in range(1, n_iter.max() + 1)]
        for i, (n, values) in enumerate(batches, start=1):
            assert (n == i).all()
            np.testing.assert_array_equal(values, np.asarray(result.restarts.trace)[n_iter >= i, i - 1])
        # A callable for scalars gets the same reports one run at a time, in restart order.
        scalars = lambda n_iter, value, change: calls.append((int(n_iter), float(value)))  # noqa: E731
        jaxem.fit(jaxem.GaussianMixture(2), data(), progress=scalars, **options)
        assert calls == [(int(n[j]), float(values[j])) for n, values in batches for j in range(len(n))]


def test_printer_prints_to_its_stream_at_most_once_per_interval():
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

    printer = progress.Printer(interval=3600.0, stream=Stream())
    for n in range(1, 50):
        printer(n, -1.0 / n, 1.0 / n**2)
    assert "".join(lines).count("\n") == 1  # the first iteration only, within the interval
    printer = progress.Printer(interval=0.0, stream=Stream())
    lines.clear()
    for n in range(1, 5):
        printer(n, -1.0, 0.0)
    assert "".join(lines).count("iter") == 4
    # Called with the runs of an iteration (batched), it prints the best finite one.
    lines.clear()
    printer(np.array([7, 7, 7]), np.array([-2.0, np.nan, -1.5]), np.array([1e-3, np.nan, 2e-3]))
    assert "".join(lines) == "iter      7  objective -1.5  change  0.002  (best of 3 running)\n"


def test_progress_true_prints_and_bad_progress_raises(capfd):
    jaxem.fit(jaxem.GaussianMixture(2), data(), key=jax.random.key(0), max_iter=3, tol=0.0, progress=True)
    assert "iter      1  objective" in capfd.readouterr().err
    jaxem.fit(jaxem.GaussianMixture(2), data(), key=jax.random.key(0), n_restarts=2, max_iter=3, tol=0.0, progress=True)
    err = capfd.readouterr().err
    assert err.count("iter      1  objective") == 1 and "(best of 2 running)" in err
    with pytest.raises(ValueError, match="progress"):
        jaxem.fit(jaxem.GaussianMixture(2), data(), key=jax.random.key(0), progress="yes")


def test_a_callable_with_an_interval_is_paced_and_sees_the_fit_trace():
    # With a positive `interval` the loop calls the host again only after a stride of
    # iterations, at most doubling from call to call: an interval of 1e9 s makes the
    # doubling the rule (iterations 1, 2, 4, 8, ...), whatever the machine's speed, and one
    # of 1e-9 s asks for stride 1 (every iteration).
    for interval, expected in ((1e9, [1, 2, 4, 8, 16, 32]), (1e-9, list(range(1, 41)))):
        for diff in ("implicit", "unroll")[: 2 if interval > 1 else 1]:
            batches = []

            def record(n_iter, value, change):
                batches.append((np.array(n_iter), np.array(value)))

            record.batched, record.interval = True, interval
            result = jaxem.fit(jaxem.GaussianMixture(2), data(), key=jax.random.key(0), n_restarts=3, max_iter=40,
                               tol=0.0, diff=diff, progress=record)
            assert [int(n[0]) for n, _ in batches] == expected, (interval, diff)
            for n, values in batches:
                assert len(n) == 3 and (n == n[0]).all()
                np.testing.assert_array_equal(values, np.asarray(result.restarts.trace)[:, n[0] - 1])
