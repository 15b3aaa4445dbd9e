"""Tests run in float64 so results can be compared with references to tight tolerances."""

import jax

jax.config.update("jax_enable_x64", True)
