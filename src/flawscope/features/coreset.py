"""Greedy k-center coreset selection (Roth et al. 2022, Algorithm 1; Sener & Savarese 2018).

The greedy rule picks, one at a time, the point farthest from everything chosen so far. The
paper makes each step cheaper with a Johnson-Lindenstrauss random projection of the features
(to 128 dimensions by default); flawscope keeps that and also skips, exactly, the distances that
cannot change the result (Elkan's triangle-inequality bound, as in accelerated k-means):

every point remembers its nearest chosen centre ``c_j`` and its distance ``r`` to it. A new centre
``c`` can only come closer to that point if ``d(c, c_j) < 2 r``, because otherwise
``d(x, c) >= d(c, c_j) - r >= r``. One matrix-vector product gives ``d(c, c_j)`` for all centres.
Points that fail this test get a second, cheap one: their distance to ``c`` within the top 16
principal axes of the data is a lower bound of the full distance (an orthonormal projection never
lengthens a vector), and only points whose bound is below ``r`` get the full distance. Early in the
selection, when the first test passes for many points, the 16-d bound is computed for every point
instead (a tenth of the memory traffic of a full 128-d pass). The selection is the same as the plain loop's
(up to float ties) while the work per step falls to a small fraction of N late in the selection.
Memory is O(N + coreset size): no N x N matrix is ever built.
"""

from __future__ import annotations

import torch

from flawscope._progress import progress_bar
from flawscope.errors import ConfigError, DataError

_TOLERANCE = 1.0 + 1e-4  # widens every bound so float rounding never skips a point wrongly
_SLACK = 2.0 * _TOLERANCE  # the factor 2 of the triangle-inequality test
_PRINCIPAL_AXES = 16


def projection_matrix(dim_in: int, dim_out: int, generator: torch.Generator) -> torch.Tensor | None:
    """A seeded Gaussian ``dim_in x dim_out`` Johnson-Lindenstrauss matrix, or None when ``dim_in <= dim_out``."""
    if dim_in <= dim_out:
        return None
    return torch.randn(dim_in, dim_out, generator=generator) / dim_out**0.5


def greedy_coreset(
    points: torch.Tensor,
    ratio: float,
    generator: torch.Generator,
    progress: bool = False,
) -> torch.Tensor:
    """Indices of a greedy k-center coreset of ``round(ratio * N)`` of the ``N x D`` ``points``.

    ``points`` are the (already projected) features; the first centre is drawn with
    ``generator``, so the same generator state gives the same indices.

    Returns
    -------
    torch.Tensor
        int64 indices into ``points``, in selection order.
    """
    return coreset_with_radius(points, ratio, generator, progress)[0]


def coreset_with_radius(
    points: torch.Tensor,
    ratio: float,
    generator: torch.Generator,
    progress: bool = False,
) -> tuple[torch.Tensor, float]:
    """:func:`greedy_coreset`'s indices and its coverage radius: the largest distance of a point of ``points``
    to its nearest selected point (0 when every point is selected)."""
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"The coreset ratio must be a float in (0, 1]. Got {ratio} instead.")
    count = points.shape[0]
    if count == 0:
        raise DataError("Memory bank is empty; cannot select a coreset.")
    n_select = max(1, round(ratio * count))
    first = int(torch.randint(count, (1,), generator=generator).item())
    if n_select >= count:
        return torch.arange(count), 0.0
    return _greedy_pruned(points.float().contiguous(), n_select, first, progress)


def _squared_distances(
    points: torch.Tensor, squared_norms: torch.Tensor, centre: torch.Tensor, centre_sq: torch.Tensor
) -> torch.Tensor:
    """``|x - c|^2`` for every row x of ``points`` as ``|x|^2 - 2 x.c + |c|^2`` (one GEMV), clamped at 0."""
    return torch.addmv(squared_norms, points, centre, alpha=-2.0).add_(centre_sq).clamp_(min=0.0)


def principal_axes(points: torch.Tensor, count: int) -> torch.Tensor:
    """``D x count`` orthonormal top principal axes of ``N x D`` points."""
    centred_gram = points.T @ points - points.shape[0] * torch.outer(points.mean(0), points.mean(0))
    _, vectors = torch.linalg.eigh(centred_gram.double())
    return vectors[:, -count:].flip(1).to(points.dtype).contiguous()


def _greedy_pruned(points: torch.Tensor, n_select: int, first: int, progress: bool) -> tuple[torch.Tensor, float]:
    count = points.shape[0]
    full_pass_above = count // 4  # with more candidates than this, one GEMV over all points is cheaper than a gather
    squared_norms = torch.linalg.vector_norm(points, dim=1).pow_(2)  # no N x D temporary
    axes = principal_axes(points, min(_PRINCIPAL_AXES, points.shape[1]))
    coordinates = points @ axes  # N x 16: distances here are lower bounds of the full ones
    chosen = torch.empty(n_select, dtype=torch.long)
    centres = torch.empty(n_select, points.shape[1], dtype=points.dtype, device=points.device)
    centre_sq = torch.empty(n_select, dtype=points.dtype, device=points.device)
    nearest = torch.zeros(count, dtype=torch.int32, device=points.device)  # each point's nearest centre
    distance = _squared_distances(points, squared_norms, points[first], squared_norms[first]).sqrt_()
    bound = distance * _SLACK  # a centre closer than this to a point's centre may come closer to the point
    chosen[0], centres[0], centre_sq[0] = first, points[first], squared_norms[first]
    with progress_bar("coreset", n_select, progress) as bar:
        for step in range(1, n_select):
            new = int(torch.argmax(distance))
            centre, new_sq = points[new], squared_norms[new]
            chosen[step], centres[step], centre_sq[step] = new, centre, new_sq
            centre_gap = _squared_distances(centres[:step], centre_sq[:step], centre, new_sq).sqrt_()
            candidates = torch.nonzero(centre_gap[nearest] < bound).squeeze(1)
            if candidates.numel() > full_pass_above:  # early on: the 16-d bound over all points is cheaper
                low = (coordinates - coordinates[new]).pow_(2).sum(1)
                candidates = torch.nonzero(low < (distance * _TOLERANCE).pow_(2)).squeeze(1)
            else:
                low = (coordinates[candidates] - coordinates[new]).pow_(2).sum(1)
                candidates = candidates[low < (distance[candidates] * _TOLERANCE).pow_(2)]
            if candidates.numel() > full_pass_above:
                new_distance = _squared_distances(points, squared_norms, centre, new_sq).sqrt_()
                closer = new_distance < distance
                distance = torch.where(closer, new_distance, distance)
                bound = distance * _SLACK
                nearest[closer] = step
            elif candidates.numel():
                new_distance = _squared_distances(points[candidates], squared_norms[candidates], centre, new_sq).sqrt_()
                closer = new_distance < distance[candidates]
                moved = candidates[closer]
                distance[moved] = new_distance[closer]
                bound[moved] = distance[moved] * _SLACK
                nearest[moved] = step
            if step % 256 == 0:
                bar.advance(256)
        bar.advance(n_select - (n_select - 1) // 256 * 256)  # the first centre and the last partial block
    return chosen, float(distance.max())


def greedy_extension(
    points: torch.Tensor, distance: torch.Tensor, most: int, radius: float, progress: bool = False
) -> torch.Tensor:
    """Indices of the ``N x D`` ``points`` that greedy k-center selection adds to an existing coreset.

    ``distance`` holds each point's distance to its nearest row of the existing coreset. Points are
    picked farthest first, as in :func:`greedy_coreset`, until ``most`` are picked or every point
    lies within ``radius`` of the coreset (the existing coreset's own coverage radius: the new points
    are then covered as well as the ones it was selected from). A point is only measured in full when
    its distance within the top 16 principal axes (a lower bound) says the new pick may be closer.

    Returns
    -------
    torch.Tensor
        int64 indices into ``points``, in selection order (possibly none).
    """
    points = points.float().contiguous()
    distance = distance.float().clone()
    squared_norms = torch.linalg.vector_norm(points, dim=1).pow_(2)
    coordinates = points @ principal_axes(points, min(_PRINCIPAL_AXES, points.shape[1]))
    chosen: list[int] = []
    with progress_bar("coreset", most, progress) as bar:
        while len(chosen) < most:
            new = int(torch.argmax(distance))
            if float(distance[new]) <= radius:
                break
            chosen.append(new)
            low = (coordinates - coordinates[new]).pow_(2).sum(1)
            candidates = torch.nonzero(low < (distance * _TOLERANCE).pow_(2)).squeeze(1)
            new_distance = _squared_distances(
                points[candidates], squared_norms[candidates], points[new], squared_norms[new]
            ).sqrt_()
            distance[candidates] = torch.minimum(distance[candidates], new_distance)
            bar.advance(1)
    return torch.tensor(chosen, dtype=torch.long)
