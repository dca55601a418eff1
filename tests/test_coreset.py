import pytest
import torch

from flawscope.errors import ConfigError
from flawscope.features.coreset import _squared_distances, greedy_coreset, projection_matrix


def plain_greedy(points: torch.Tensor, n_select: int, first: int) -> torch.Tensor:
    """The paper's loop: every step recomputes the distance of every point to the new centre."""
    norms = torch.linalg.vector_norm(points, dim=1).pow(2)
    distance = _squared_distances(points, norms, points[first], norms[first]).sqrt()
    chosen = [first]
    for _ in range(1, n_select):
        new = int(torch.argmax(distance))
        chosen.append(new)
        distance = torch.minimum(distance, _squared_distances(points, norms, points[new], norms[new]).sqrt())
    return torch.tensor(chosen)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_selection_equals_the_plain_greedy_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    # clustered data, as patch features are: the pruning must skip many points and still agree
    centres = torch.randn(20, 16, generator=generator) * 4
    points = centres[torch.randint(20, (3000,), generator=generator)] + torch.randn(3000, 16, generator=generator)
    selected = greedy_coreset(points, 0.05, torch.Generator().manual_seed(seed))
    first = int(torch.randint(3000, (1,), generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(selected, plain_greedy(points, len(selected), first))


def test_coreset_is_seeded_and_sized():
    points = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
    a = greedy_coreset(points, 0.1, torch.Generator().manual_seed(3))
    b = greedy_coreset(points, 0.1, torch.Generator().manual_seed(3))
    c = greedy_coreset(points, 0.1, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 100 and len(set(a.tolist())) == 100
    assert torch.equal(greedy_coreset(points, 1.0, torch.Generator()), torch.arange(1000))


def test_coreset_covers_better_than_random():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2000, 8, generator=generator) * torch.linspace(0.1, 3, 8)
    selected = greedy_coreset(points, 0.05, torch.Generator().manual_seed(0))
    random_pick = torch.randperm(2000, generator=generator)[: len(selected)]

    def radius(idx):
        return torch.cdist(points, points[idx]).min(1).values.max()

    assert radius(selected) < 0.8 * radius(random_pick)


def test_projection_and_bad_ratio():
    generator = torch.Generator().manual_seed(0)
    assert projection_matrix(100, 128, generator) is None
    assert projection_matrix(300, 128, generator).shape == (300, 128)
    with pytest.raises(ConfigError, match=r"must be a float in \(0, 1\]. Got 1.5"):
        greedy_coreset(torch.zeros(10, 2), 1.5, generator)
