"""Tests run in float64 so results can be compared with references to tight tolerances."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Free each test module's compiled programs when it ends.

    Every XLA:CPU executable keeps memory mappings alive; hundreds of them in one process
    approach the kernel's map-count limit, and the compiler then crashed mid-suite.
    """
    yield
    jax.clear_caches()
