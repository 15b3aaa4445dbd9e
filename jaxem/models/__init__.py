"""Model families, one per file."""

from jaxem.models.bernoulli_mixture import BernoulliMixture, BernoulliMixtureParams, BernoulliMixtureStats
from jaxem.models.categorical_mixture import CategoricalMixture, CategoricalMixtureParams, CategoricalMixtureStats
from jaxem.models.factor_analysis import PPCA, FactorAnalysis, FactorAnalysisParams, FactorAnalysisStats, PPCAParams
from jaxem.models.gaussian_mixture import GaussianMixture, GaussianMixtureParams, GaussianMixtureStats
from jaxem.models.hmm import HMMStats, Sequences
from jaxem.models.hmm_emissions import (
    CategoricalHMM,
    CategoricalHMMParams,
    GaussianHMM,
    GaussianHMMParams,
    GaussianHMMStats,
    PoissonHMM,
    PoissonHMMParams,
)
from jaxem.models.hmm_generic import HMM, HMMParams
from jaxem.models.latent_model import LatentModel
from jaxem.models.mixture_of_factor_analyzers import (
    MixtureOfFactorAnalyzers,
    MixtureOfFactorAnalyzersParams,
    MixtureOfFactorAnalyzersStats,
)
from jaxem.models.mixture_of_regressions import (
    MixtureOfRegressions,
    MixtureOfRegressionsParams,
    MixtureOfRegressionsStats,
)
from jaxem.models.poisson_mixture import PoissonMixture, PoissonMixtureParams, PoissonMixtureStats
from jaxem.models.student_t_mixture import StudentTMixture, StudentTMixtureParams, StudentTMixtureStats

__all__ = [
    "BernoulliMixture",
    "BernoulliMixtureParams",
    "BernoulliMixtureStats",
    "CategoricalHMM",
    "CategoricalHMMParams",
    "CategoricalMixture",
    "CategoricalMixtureParams",
    "CategoricalMixtureStats",
    "FactorAnalysis",
    "FactorAnalysisParams",
    "FactorAnalysisStats",
    "GaussianHMM",
    "GaussianHMMParams",
    "GaussianHMMStats",
    "GaussianMixture",
    "GaussianMixtureParams",
    "GaussianMixtureStats",
    "HMM",
    "HMMParams",
    "HMMStats",
    "LatentModel",
    "MixtureOfFactorAnalyzers",
    "MixtureOfFactorAnalyzersParams",
    "MixtureOfFactorAnalyzersStats",
    "MixtureOfRegressions",
    "MixtureOfRegressionsParams",
    "MixtureOfRegressionsStats",
    "PPCA",
    "PPCAParams",
    "PoissonHMM",
    "PoissonHMMParams",
    "PoissonMixture",
    "PoissonMixtureParams",
    "PoissonMixtureStats",
    "Sequences",
    "StudentTMixture",
    "StudentTMixtureParams",
    "StudentTMixtureStats",
]
