"""Tests run in float64 so results can be compared with references to tight tolerances.

Compiled programs go to JAX's persistent compilation cache (a folder under the system's
temporary directory, unless JAX_COMPILATION_CACHE_DIR names another), shared by the
pytest-xdist workers and the subprocesses that tests start: each module's in-memory
programs are freed when it ends (`release_compiled_programs`), and compilation dominates
the suite, so a program that another module or process compiled before is read back
instead of compiled again. The cache is keyed on the program, JAX's version and flags.
"""

import os
import tempfile

_user = getattr(os, "getuid", lambda: "user")()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"jaxem-tests-{_user}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402 - after the cache settings, which JAX reads when imported
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Free each test module's compiled programs when it ends.

    Every XLA:CPU executable keeps memory mappings alive; hundreds of them in one process
    approach the kernel's map-count limit, and the compiler then crashed mid-suite.
    """
    yield
    jax.clear_caches()
