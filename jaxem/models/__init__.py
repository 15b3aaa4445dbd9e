"""Model families, one per file."""

from jaxem.models.gaussian_mixture import GaussianMixture, GaussianMixtureParams, GaussianMixtureStats
from jaxem.models.latent_model import LatentModel

__all__ = ["GaussianMixture", "GaussianMixtureParams", "GaussianMixtureStats", "LatentModel"]
