"""jaxem: JAX-accelerated, differentiable Expectation-Maximization."""

from jaxem.api import fit
from jaxem.core import FitResult, Status, run_em, status_message
from jaxem.models import GaussianMixture, GaussianMixtureParams
from jaxem.models import (
    BernoulliMixture,
    BernoulliMixtureParams,
    CategoricalMixture,
    CategoricalMixtureParams,
    MixtureOfRegressions,
    MixtureOfRegressionsParams,
    PoissonMixture,
    PoissonMixtureParams,
    StudentTMixture,
    StudentTMixtureParams,
)

__all__ = ["FitResult", "GaussianMixture", "GaussianMixtureParams", "Status", "fit", "run_em", "status_message"]
__all__ += [
    "BernoulliMixture",
    "BernoulliMixtureParams",
    "CategoricalMixture",
    "CategoricalMixtureParams",
    "MixtureOfRegressions",
    "MixtureOfRegressionsParams",
    "PoissonMixture",
    "PoissonMixtureParams",
    "StudentTMixture",
    "StudentTMixtureParams",
]
__version__ = "0.1.0"


def data_path(name: str) -> str:
    """Path of a data file bundled with jaxem (e.g. "old_faithful.csv")."""
    import importlib.resources

    return str(importlib.resources.files("jaxem") / "data" / name)
