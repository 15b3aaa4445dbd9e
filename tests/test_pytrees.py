"""jaxem.pytrees.register_model: model classes whose tree structures know their class."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import jaxem
from jaxem.pytrees import register_model


def test_models_with_equal_static_fields_have_unequal_structures():
    # jax 0.10.2's register_dataclass compares these equal; jax.jit's cache then gave a PPCA
    # fit the FactorAnalysis program (tests/test_sklearn_missing.py failed in the full suite).
    factor, ppca = jax.tree.structure(jaxem.FactorAnalysis(1)), jax.tree.structure(jaxem.PPCA(1))
    assert factor != ppca
    assert jax.tree.structure(jaxem.FactorAnalysis(1)) == factor
    assert jax.tree.structure(jaxem.PoissonMixture(2)) != jax.tree.structure(jaxem.BernoulliMixture(2))


def _classes(n):
    classes = []
    for i in range(n):
        cls = dataclasses.make_dataclass(f"Model{i}", [("scale", float)], frozen=True)
        classes.append(register_model(cls))
    return classes


def test_jit_runs_each_class_own_program():
    # Classes with identical fields: with register_dataclass, some got another class's cached
    # program (46 of 300 did; 120 fail in every run tried), each must get its own.
    @jax.jit
    def class_number(model, x):
        return jnp.asarray(int(type(model).__name__.removeprefix("Model"))) + 0 * x

    classes = _classes(120)
    got = [int(class_number(cls(1.0), jnp.zeros(()))) for cls in classes]
    assert got == list(range(len(classes)))


def test_static_fields_are_structure_and_the_rest_named_leaves():
    @register_model
    @dataclasses.dataclass(frozen=True)
    class Scaled:
        size: int = dataclasses.field(metadata=dict(static=True))
        scale: float = 1.0
        checked: list = dataclasses.field(default_factory=list, metadata=dict(static=True), compare=False)

        def __post_init__(self):
            self.checked.append(self.size)

    model = Scaled(3, 2.0, [])
    paths, structure = jax.tree_util.tree_flatten_with_path(model)
    assert [(jax.tree_util.keystr(path), leaf) for path, leaf in paths] == [(".scale", 2.0)]
    assert structure != jax.tree.structure(Scaled(4, 2.0, []))
    rebuilt = jax.tree.map(lambda leaf: leaf * 5, model)
    assert (rebuilt.size, rebuilt.scale) == (3, 10.0)
    assert model.checked == [3, 3]  # unflattening ran __post_init__, as cls(**fields) does


def test_register_model_refuses_a_class_that_is_not_a_dataclass():
    with pytest.raises(TypeError, match="dataclass"):
        register_model(type("Plain", (), {}))


def test_no_jaxem_class_is_registered_with_register_dataclass():
    import pathlib
    import re

    registers = re.compile(r"register_dataclass\s*\(|^\s*@.*register_dataclass\s*$", re.MULTILINE)
    package = pathlib.Path(jaxem.__file__).parent
    using = [path.name for path in package.rglob("*.py") if registers.search(path.read_text())]
    assert using == [], f"register these with jaxem.register_model (jaxem/pytrees.py): {using}"
