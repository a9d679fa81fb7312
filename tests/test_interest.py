import itertools

import pytest
import torch

from recbole_missrec.model.missrec import interest
from recbole_missrec.model.missrec.interest import assign, dpc_knn, kmeans, num_interests, unique_per_row


def blobs(n_per=6, k=3, dim=5, spread=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=generator) * 3
    points = centres.repeat_interleave(n_per, 0) + spread * torch.randn(k * n_per, dim, generator=generator)
    return points, torch.arange(k).repeat_interleave(n_per)


def inertia(points, labels, k):
    total = 0.0
    for cluster in range(k):
        members = points[labels == cluster]
        if len(members):
            total += ((members - members.mean(0)) ** 2).sum().item()
    return total


def test_kmeans_reaches_the_brute_force_optimum():
    points, _ = blobs(n_per=3, k=3, dim=4, spread=0.6, seed=3)  # 9 points: 3^9 partitions
    best = min(inertia(points, torch.tensor(labels), 3) for labels in itertools.product(range(3), repeat=9))
    _, labels = kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    assert inertia(points, labels, 3) == pytest.approx(best, rel=1e-5)


def test_kmeans_recovers_separated_blobs_and_keeps_signs():
    points, truth = blobs(n_per=20, k=4, dim=6)
    centroids, labels = kmeans(points, 4, generator=torch.Generator().manual_seed(1))
    for cluster in range(4):  # every found cluster is exactly one true blob
        assert truth[labels == cluster].unique().numel() == 1
    assert labels.unique().numel() == 4
    assert (centroids < 0).any()  # no absolute-value quirk


def test_kmeans_never_alters_its_input():
    points, _ = blobs()
    before = points.clone()
    kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(points, before)


def test_kmeans_is_deterministic_under_a_seed():
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(5))
    first = kmeans(points, 20, generator=torch.Generator().manual_seed(9))
    second = kmeans(points, 20, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_kmeans_with_k_equal_to_distinct_points_uses_every_cluster():
    points = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    _, labels = kmeans(points, 50, generator=torch.Generator().manual_seed(0))
    assert labels.unique().numel() == 50


def test_empty_clusters_are_reseeded():
    points = torch.tensor([[0.0], [0.1], [10.0], [10.1], [20.0]])
    centroids = torch.tensor([[0.05], [10.05], [100.0]])  # the third centre wins nothing
    labels, min_dist = assign(points, centroids)
    updated = interest._update_centroids(points, labels, centroids, min_dist)
    assert updated[2].item() in points.squeeze(1).tolist()  # moved onto a real point
    assert (assign(points, updated)[0] == 2).any()


def test_chunked_assignment_equals_brute_force(monkeypatch):
    monkeypatch.setattr(interest, "_DISTANCE_BUDGET", 7)  # forces many tiny chunks
    generator = torch.Generator().manual_seed(0)
    points, centroids = torch.randn(37, 5, generator=generator), torch.randn(4, 5, generator=generator)
    labels, dist = assign(points, centroids)
    brute = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert torch.equal(labels, brute.argmin(1))
    assert torch.allclose(dist, brute.min(1).values, atol=1e-5)


def test_kmeans_rejects_impossible_k():
    with pytest.raises(ValueError, match="1 <= k"):
        kmeans(torch.randn(3, 2), 4)


def test_num_interests_from_ratio_or_absolute():
    assert num_interests(8770, ratio=0.5) == 4385  # Scientific, spec §4.1
    assert num_interests(893950, ratio=0.02) == 17879  # FHCKM
    assert num_interests(100, ratio=0.5, absolute=7) == 7
    assert num_interests(5, absolute=50) == 5
    with pytest.raises(ValueError, match="interest_ratio"):
        num_interests(10)


def test_dpc_knn_finds_the_blobs():
    points, truth = blobs(n_per=10, k=3, dim=4)
    centroids, labels = dpc_knn(points, 3, num_neighbours=5)
    assert centroids.shape == (3, 4)
    for cluster in range(3):
        assert truth[labels == cluster].unique().numel() == 1


def test_dpc_knn_refuses_more_tokens_than_its_limit():
    with pytest.raises(MemoryError, match="dpc_max_tokens"):
        dpc_knn(torch.randn(101, 3), 4, num_neighbours=3, max_tokens=100)


def test_unique_per_row_matches_python_sets():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (50, 9), generator=generator)
    out = unique_per_row(ids)
    assert out.shape[1] == max(len(set(row.tolist()) - {0}) for row in ids)
    for row, result in zip(ids, out):
        expected = sorted(set(row.tolist()) - {0})
        assert result.tolist() == expected + [0] * (out.shape[1] - len(expected))


def test_unique_per_row_all_padding_keeps_one_column():
    assert unique_per_row(torch.zeros(3, 4, dtype=torch.long)).tolist() == [[0], [0], [0]]
