"""Model families, one per file."""

from jaxem.models.gaussian_mixture import GaussianMixture, GaussianMixtureParams, GaussianMixtureStats

__all__ = ["GaussianMixture", "GaussianMixtureParams", "GaussianMixtureStats"]
