"""The optax-through-a-fit example trains: its classification loss falls."""

import numpy as np

from benchmarks import example_projection


def test_training_through_a_fit_lowers_the_loss():
    losses = example_projection.train(n_steps=20)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
