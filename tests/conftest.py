"""Tests run in float64 so results can be compared with references to tight tolerances."""

import jax
import pytest

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
