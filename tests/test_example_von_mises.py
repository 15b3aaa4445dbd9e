"""The worked example benchmarks/example_von_mises.py: its density and a short run of main."""

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
from scipy.stats import vonmises as sp_vonmises

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "example_von_mises.py"
spec = importlib.util.spec_from_file_location("example_von_mises", PATH)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def test_log_joint_matches_scipy_von_mises():
    params = {name: jnp.asarray(value) for name, value in example.TRUE_PARAMS.items()}
    for angle in (-3.0, 0.1, 2.0):
        expected = np.log(example.TRUE_PARAMS["weights"]) + sp_vonmises.logpdf(
            angle, example.TRUE_PARAMS["concentrations"], loc=example.TRUE_PARAMS["locs"]
        )
        np.testing.assert_allclose(example.log_joint(params, jnp.array([angle])), expected, rtol=1e-12)


def test_main_runs_and_its_trace_is_the_monotone_chain(capsys):
    result, chains = example.main(n_samples=150, n_iter=3, n_restarts=2)
    assert "ELBO" in capsys.readouterr().out
    assert int(result.n_decreases) == 0
    for chain in chains:
        slack = 1e-10 * abs(float(chain.log_likelihood_old))
        assert abs(float(chain.elbo_old - chain.log_likelihood_old)) < slack
        assert float(chain.elbo_old) <= float(chain.elbo_new) + slack
        assert float(chain.elbo_new) <= float(chain.log_likelihood_new) + slack
