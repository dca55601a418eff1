"""Seeded k-means, principal components and dense-covariance Gaussian mixtures in torch.

Used by the CNN Feature Dictionary (PCA + k-means) and the GMM Texture Inspection model; every
random step draws from the ``torch.Generator`` passed in, so the same seed gives the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flawscope.chunks import in_passes
from flawscope.errors import DataError


def pairwise_squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``N x K`` squared Euclidean distances, clamped at 0."""
    return (points.square().sum(1, keepdim=True) - 2.0 * points @ centres.T + centres.square().sum(1)).clamp_min(0.0)


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``k x D`` initial centres drawn from ``points``."""
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centres = [points[first]]
    nearest = pairwise_squared_distances(points, points[first : first + 1])[:, 0]
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 0.0:  # fewer distinct points than centres: repeat one
            index = int(torch.randint(points.shape[0], (1,), generator=generator))
        else:
            index = int(torch.multinomial((nearest / total).cpu(), 1, generator=generator))
        centres.append(points[index])
        nearest = torch.minimum(nearest, pairwise_squared_distances(points, points[index : index + 1])[:, 0])
    return torch.stack(centres)


def kmeans(
    points: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 100, tolerance: float = 1e-6
) -> torch.Tensor:
    """Lloyd's k-means from a k-means++ start; returns the ``k x D`` centres.

    Stops when the centres move less than ``tolerance`` times the data's total variance. An
    emptied cluster is restarted at the point farthest from its centre.
    """
    if points.shape[0] < k:
        raise DataError(f"k-means with {k} centres needs at least {k} points; got {points.shape[0]}.")
    centres = kmeans_plus_plus(points, k, generator)
    scale = float(points.var(dim=0).sum()) * tolerance
    for _ in range(max_iter):
        distances = pairwise_squared_distances(points, centres)
        assignment = distances.argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).to(points.dtype)
        updated = sums / counts.clamp_min(1.0)[:, None]
        empty = counts == 0
        if empty.any():
            farthest = distances.gather(1, assignment[:, None])[:, 0].topk(int(empty.sum())).indices
            updated[empty] = points[farthest]
        shift = float((updated - centres).square().sum())
        centres = updated
        if shift <= scale:
            break
    return centres


@dataclass
class PCA:
    """Principal components keeping a fraction of the variance (data centred on ``mean``)."""

    mean: torch.Tensor  # D
    components: torch.Tensor  # D x d, orthonormal columns

    @classmethod
    def fit(cls, points: torch.Tensor, variance: float) -> PCA:
        """Keep the fewest components whose explained variance reaches ``variance`` (e.g. 0.95)."""
        mean = points.mean(dim=0)
        centred = (points - mean).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0.0), eigenvectors.flip(1)
        explained = eigenvalues.cumsum(0) / eigenvalues.sum().clamp_min(1e-300)
        keep = int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype))) + 1
        keep = min(keep, points.shape[1])
        return cls(mean, eigenvectors[:, :keep].to(points.dtype).contiguous())

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.mean) @ self.components


@dataclass
class GaussianMixture:
    """A Gaussian mixture with full covariances, fitted by EM (Dempster et al. 1977).

    ``precision_cholesky[k]`` is the upper-triangular ``U`` with ``Sigma_k^-1 = U U^T``, so the
    Mahalanobis term of a point is ``|(x - mu_k) U|^2`` (scikit-learn's convention).
    """

    weights: torch.Tensor  # K
    means: torch.Tensor  # K x D
    precision_cholesky: torch.Tensor  # K x D x D

    @classmethod
    def fit(
        cls,
        points: torch.Tensor,
        n_components: int,
        generator: torch.Generator,
        max_iter: int = 100,
        tolerance: float = 1e-3,
        regularisation: float = 1e-6,
    ) -> GaussianMixture:
        """EM from a k-means start, in float64; stops when the mean log-likelihood gains < ``tolerance``.

        ``regularisation`` is added to every covariance's diagonal so it stays invertible.
        """
        data = points.double()
        centres = kmeans(data, n_components, generator, max_iter=20)
        responsibilities = torch.nn.functional.one_hot(
            pairwise_squared_distances(data, centres).argmin(1), n_components
        ).double()
        previous = -math.inf
        mixture = cls._maximise(data, responsibilities, regularisation)
        for _ in range(max_iter):
            log_joint = mixture._log_joint(data)
            log_likelihood = torch.logsumexp(log_joint, dim=1)
            mean_log_likelihood = float(log_likelihood.mean())
            if mean_log_likelihood - previous < tolerance:
                break
            previous = mean_log_likelihood
            mixture = cls._maximise(data, torch.exp(log_joint - log_likelihood[:, None]), regularisation)
        return mixture.to(points.dtype)

    @classmethod
    def _maximise(cls, data: torch.Tensor, responsibilities: torch.Tensor, regularisation: float) -> GaussianMixture:
        counts = responsibilities.sum(0) + 10 * torch.finfo(data.dtype).eps
        means = (responsibilities.T @ data) / counts[:, None]
        eye = torch.eye(data.shape[1], dtype=data.dtype, device=data.device)
        chol = []
        for component in range(means.shape[0]):
            # E[x x^T] - mu mu^T: one weighted product per component, no centred copy of the data
            # (float64 keeps the subtraction accurate).
            second_moment = (data * responsibilities[:, component, None]).T @ data / counts[component]
            covariance = second_moment - torch.outer(means[component], means[component])
            lower = torch.linalg.cholesky(covariance + regularisation * eye)
            chol.append(torch.linalg.solve_triangular(lower, eye, upper=False).T)  # U = L^-T
        return cls(counts / counts.sum(), means, torch.stack(chol))

    def _log_joint(self, points: torch.Tensor, chunk_rows: int = 32768) -> torch.Tensor:
        """``N x K``: ``log pi_k + log N(x | mu_k, Sigma_k)``, ``chunk_rows`` points at a time.

        All components' whitening is one matrix product: ``x [U_1 .. U_K] - [mu_1 U_1 .. mu_K U_K]``.
        """
        count, dim = self.means.shape
        log_det = torch.log(torch.diagonal(self.precision_cholesky, dim1=1, dim2=2)).sum(1)  # = -0.5 log|Sigma|
        constant = log_det + torch.log(self.weights) - 0.5 * dim * math.log(2.0 * math.pi)
        whitening = self.precision_cholesky.permute(1, 0, 2).reshape(dim, count * dim)  # D x (K D)
        shift = torch.einsum("ki,kij->kj", self.means, self.precision_cholesky).reshape(1, count * dim)

        def log_joint(rows: torch.Tensor) -> torch.Tensor:
            projected = torch.addmm(shift, rows, whitening, alpha=1.0, beta=-1.0)
            return constant - 0.5 * projected.square().reshape(-1, count, dim).sum(2)

        return in_passes(log_joint, points, chunk_rows)

    def negative_log_likelihood(self, points: torch.Tensor) -> torch.Tensor:
        """``-log p(x)`` of every row of ``points``."""
        return -torch.logsumexp(self._log_joint(points), dim=1)

    def to(self, dtype: torch.dtype) -> GaussianMixture:
        return GaussianMixture(self.weights.to(dtype), self.means.to(dtype), self.precision_cholesky.to(dtype))
