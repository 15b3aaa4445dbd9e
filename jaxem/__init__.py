"""jaxem: JAX-accelerated, differentiable Expectation-Maximization."""

from jaxem.api import fit
from jaxem.core import FitResult, Method, Status, method_name, run_em, status_message
from jaxem.diagnostics import ElboDecomposition, elbo_decomposition, monotonicity_chain
from jaxem.models import (
    HMM,
    PPCA,
    BernoulliMixture,
    BernoulliMixtureParams,
    CategoricalHMM,
    CategoricalHMMParams,
    CategoricalMixture,
    CategoricalMixtureParams,
    FactorAnalysis,
    FactorAnalysisParams,
    GaussianHMM,
    GaussianHMMParams,
    GaussianMixture,
    GaussianMixtureParams,
    HMMParams,
    LatentModel,
    MixtureOfFactorAnalyzers,
    MixtureOfFactorAnalyzersParams,
    MixtureOfRegressions,
    MixtureOfRegressionsParams,
    PoissonHMM,
    PoissonHMMParams,
    PoissonMixture,
    PoissonMixtureParams,
    PPCAParams,
    Sequences,
    StudentTMixture,
    StudentTMixtureParams,
)
from jaxem.mstep import freeze
from jaxem.pytrees import register_model
from jaxem.selection import Selection, select
from jaxem.io import load, save
from jaxem.stream import fit_online, fit_stream
from jaxem.distributed import fit_sharded, shard_rows

__all__ = [
    "BernoulliMixture",
    "BernoulliMixtureParams",
    "CategoricalHMM",
    "CategoricalHMMParams",
    "CategoricalMixture",
    "CategoricalMixtureParams",
    "ElboDecomposition",
    "FactorAnalysis",
    "FactorAnalysisParams",
    "FitResult",
    "GaussianHMM",
    "GaussianHMMParams",
    "GaussianMixture",
    "GaussianMixtureParams",
    "HMM",
    "HMMParams",
    "LatentModel",
    "Method",
    "MixtureOfFactorAnalyzers",
    "MixtureOfFactorAnalyzersParams",
    "MixtureOfRegressions",
    "MixtureOfRegressionsParams",
    "PPCA",
    "PPCAParams",
    "PoissonHMM",
    "PoissonHMMParams",
    "PoissonMixture",
    "PoissonMixtureParams",
    "Selection",
    "Sequences",
    "Status",
    "StudentTMixture",
    "StudentTMixtureParams",
    "elbo_decomposition",
    "fit",
    "freeze",
    "method_name",
    "monotonicity_chain",
    "register_model",
    "run_em",
    "select",
    "save",
    "load",
    "fit_stream",
    "fit_online",
    "fit_sharded",
    "shard_rows",
    "status_message",
]
__version__ = "0.1.0"


def data_path(name: str) -> str:
    """Path of a data file bundled with jaxem (e.g. "old_faithful.csv")."""
    import importlib.resources

    return str(importlib.resources.files("jaxem") / "data" / name)
