"""Tests run in float64 so results can be compared with references to tight tolerances,
and compile with XLA:CPU's quickest settings when this XLA has them (`_quick_compiles`)."""

import os
import subprocess
import sys

# Elemental rather than MLIR fusion emitters, and no LLVM optimisation of the generated code.
QUICK_COMPILES = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"


def _quick_compiles() -> None:
    """Add QUICK_COMPILES to XLA_FLAGS (before jax starts; subprocesses inherit it).

    Compilation is ~90% of the suite's time (jax.monitoring, 2026-12-07: 2793 of 3990
    worker-seconds), and the suite's programs are small: compiled quickly, they give the
    same results to rounding. A fresh clone's whole suite took 2162 s with XLA's defaults,
    1738 s with the elemental emitters and 938 s with both flags (one run each, the first
    in the session before, on this 2-core machine; 2 workers). An XLA without these flags
    would abort on them, so a subprocess tries them first (~2 s per pytest process).
    JAXEM_TEST_XLA_DEFAULTS=1 in the environment keeps XLA's defaults.
    """
    if os.environ.get("JAXEM_TEST_XLA_DEFAULTS") == "1":
        return
    flags = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_COMPILES}".strip()
    probe = [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"]
    accepted = subprocess.run(probe, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True).returncode == 0
    if accepted:
        os.environ["XLA_FLAGS"] = flags


_quick_compiles()

import jax  # noqa: E402  (XLA_FLAGS first)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


def _memory_maps() -> int | None:
    """How many memory mappings this process holds (Linux), else None."""
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def _map_limit() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 65530  # Linux's default


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Free the compiled programs once they hold half the kernel's memory-map limit, when
    a test module ends.

    Every XLA:CPU executable keeps memory mappings alive; hundreds of them in one process
    approach the kernel's map-count limit, and the compiler then crashed mid-suite. A
    module leaves 3000-8000 maps; clearing after every module made the next recompile
    what they share (8 model modules in one process: 133 s, 121 s clearing at the limit;
    the whole suite's summed test time 2044 s, 2001 s: within its noise).
    """
    yield
    maps = _memory_maps()
    if maps is None or maps > _map_limit() // 2:
        jax.clear_caches()
