"""The README's Python examples run as written, in order, on small data."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def three_blobs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 2)) + 4.0 * rng.integers(3, size=(300, 1))


def test_readme_examples_run_in_order():
    """Each block sees what the blocks before it imported, as a reader's session would;
    X is a small 2-D data set and is restored before every block."""
    namespace = {"np": np}
    for index, block in enumerate(BLOCKS):
        namespace["X"] = three_blobs()
        exec(compile(block, f"README.md python block {index}", "exec"), namespace)


def test_the_london_deaths_example_reaches_the_published_optimum():
    (block,) = [b for b in BLOCKS if "deaths" in b]
    namespace = {"np": np}
    exec("import jax, jaxem\n" + block, namespace)
    assert abs(float(-namespace["res"].log_likelihood * namespace["days"].sum()) - 1989.9459) < 1e-3
