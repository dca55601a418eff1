"""Greedy k-center coreset selection (Roth et al. 2022, Algorithm 1; Sener & Savarese 2018).

The greedy rule picks, one at a time, the point farthest from everything chosen so far. The
paper makes each step cheaper with a Johnson-Lindenstrauss random projection of the features
(to 128 dimensions by default); flawscope keeps that and also makes the steps themselves cheap
with an exact triangle-inequality pruning, which gives the same selection as the plain loop:

every point remembers its nearest chosen centre and the distance ``r`` to it; every centre
keeps the radius ``R`` of its points. A new centre ``c`` can only come closer to a point of
centre ``j`` if ``d(c, c_j) < 2 R_j`` (for that point, ``d(x, c) >= d(c, c_j) - r_x >= r_x``
otherwise), so whole groups of points are skipped without computing any distance. Late in the
selection almost every group is skipped, which turns the O(N) work per step into a small fraction
of it. Memory is O(N): no N x N matrix is ever built.
"""

from __future__ import annotations

import torch

from flawscope._progress import progress_bar
from flawscope.errors import ConfigError, DataError

_SLACK = 2.0 * (1.0 + 1e-5)  # the factor 2 of the pruning rule, widened so float rounding never prunes wrongly


def random_projection(features: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Project ``N x D`` features to ``N x dim`` with a seeded Gaussian matrix (no-op when D <= dim)."""
    if features.shape[1] <= dim:
        return features
    matrix = torch.randn(features.shape[1], dim, generator=generator, dtype=features.dtype) / dim**0.5
    return features @ matrix.to(features.device)


def greedy_coreset(
    features: torch.Tensor,
    ratio: float,
    generator: torch.Generator,
    projection_dim: int = 128,
    progress: bool = False,
) -> torch.Tensor:
    """Indices of a greedy k-center coreset of ``ratio * N`` of the ``N x D`` ``features``.

    The first centre is drawn with ``generator``; the same generator state gives the same indices.

    Returns
    -------
    torch.Tensor
        ``(round(ratio * N),)`` int64 indices into ``features``, in selection order.
    """
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"The coreset ratio must be a float in (0, 1]. Got {ratio} instead.")
    count = features.shape[0]
    if count == 0:
        raise DataError("Memory bank is empty; cannot select a coreset.")
    n_select = max(1, round(ratio * count))
    if n_select >= count:
        return torch.arange(count)
    points = random_projection(features.float(), projection_dim, generator).contiguous()
    first = int(torch.randint(count, (1,), generator=generator).item())
    return _greedy_pruned(points, n_select, first, progress)


def _greedy_pruned(points: torch.Tensor, n_select: int, first: int, progress: bool) -> torch.Tensor:
    count = points.shape[0]
    chosen = torch.empty(n_select, dtype=torch.long)
    centres = torch.empty(n_select, points.shape[1], dtype=points.dtype, device=points.device)
    radius = torch.zeros(n_select, dtype=points.dtype, device=points.device)  # max distance of each centre's points
    nearest = torch.zeros(count, dtype=torch.long, device=points.device)  # index of each point's nearest centre
    distance = (points - points[first]).pow(2).sum(1).sqrt()  # distance of each point to its nearest centre
    chosen[0], centres[0], radius[0] = first, points[first], distance.max()
    with progress_bar("coreset", n_select, progress) as bar:
        for step in range(1, n_select):
            new = int(torch.argmax(distance))
            chosen[step], centres[step] = new, points[new]
            centre_gap = (centres[:step] - points[new]).pow(2).sum(1).sqrt()
            touched_groups = centre_gap < _SLACK * radius[:step]
            candidates = torch.nonzero(touched_groups[nearest]).squeeze(1)
            new_distance = (points[candidates] - points[new]).pow(2).sum(1).sqrt()
            closer = new_distance < distance[candidates]
            moved = candidates[closer]
            distance[moved] = new_distance[closer]
            nearest[moved] = step
            radius[:step][touched_groups] = 0.0
            radius.scatter_reduce_(0, nearest[candidates], distance[candidates], reduce="amax")
            if step % 256 == 0:
                bar.advance(256)
        bar.advance((n_select - 1) % 256)
    return chosen

