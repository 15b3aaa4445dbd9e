"""jaxem: JAX-accelerated, differentiable Expectation-Maximization."""

from jaxem.api import fit
from jaxem.core import FitResult, Method, Status, method_name, run_em, status_message
from jaxem.diagnostics import ElboDecomposition, elbo_decomposition, monotonicity_chain
from jaxem.models import (
    BernoulliMixture,
    BernoulliMixtureParams,
    CategoricalMixture,
    CategoricalMixtureParams,
    GaussianMixture,
    GaussianMixtureParams,
    LatentModel,
    MixtureOfRegressions,
    MixtureOfRegressionsParams,
    PoissonMixture,
    PoissonMixtureParams,
    StudentTMixture,
    StudentTMixtureParams,
)
from jaxem.mstep import freeze
from jaxem.selection import Selection, select

__all__ = [
    "BernoulliMixture",
    "BernoulliMixtureParams",
    "CategoricalMixture",
    "CategoricalMixtureParams",
    "ElboDecomposition",
    "FitResult",
    "GaussianMixture",
    "GaussianMixtureParams",
    "LatentModel",
    "Method",
    "MixtureOfRegressions",
    "MixtureOfRegressionsParams",
    "PoissonMixture",
    "PoissonMixtureParams",
    "Selection",
    "Status",
    "StudentTMixture",
    "StudentTMixtureParams",
    "elbo_decomposition",
    "fit",
    "freeze",
    "method_name",
    "monotonicity_chain",
    "run_em",
    "select",
    "status_message",
]
__version__ = "0.1.0"


def data_path(name: str) -> str:
    """Path of a data file bundled with jaxem (e.g. "old_faithful.csv")."""
    import importlib.resources

    return str(importlib.resources.files("jaxem") / "data" / name)
