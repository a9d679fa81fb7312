import itertools

import pytest
import torch

from recbole_missrec.model.missrec import interest
from recbole_missrec.model.missrec.interest import (
    CellIndex, allocate, assign, choose_method, dpc_knn, kmeans, num_interests, reference_kmeans, row_norms,
    unique_per_row,
)


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


def test_reference_kmeans_keeps_a_running_mean_of_absolute_values_over_chunks():
    # batch 2, k 1: chunks [0, 2) and [2, 5) (a remainder of at most k joins the last chunk)
    x = torch.tensor([[-2.0], [2.0], [3.0], [-3.0], [6.0]])
    centroids, labels = reference_kmeans(x, 1, batch=2, generator=torch.Generator().manual_seed(0))
    # chunk 1: mean |x| = 2, count 1 -> 3; chunk 2: 2 * (1 - 1/3) + mean |x| 4 / 3 = 8/3
    assert torch.allclose(centroids, torch.tensor([[8 / 3]]))
    assert labels.tolist() == [0] * 5 and x[0, 0] == -2  # the input is untouched


def test_reference_kmeans_zeroes_an_unchosen_centre_and_grows_the_batch_past_k():
    # k 2 >= batch 2: the batch becomes int(1.1 * 2) = 2, the remainder 1 <= k joins: one chunk
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    seen_collapse = False
    for seed in range(6):
        centroids, labels = reference_kmeans(x, 2, batch=2, generator=torch.Generator().manual_seed(seed))
        chosen = torch.tensor(sorted(centroids.tolist()))
        if torch.equal(chosen, torch.tensor([[0.0, 5.0], [1.0, 0.0]])):  # two distinct starting points: a real split
            assert labels[0] == labels[1] != labels[2]
        else:  # both centres started at [1, 0]: the second won nothing and became the zero vector ...
            assert torch.allclose(chosen, torch.tensor([[0.0, 0.0], [2 / 3, 5 / 3]]))
            zero = int(centroids.abs().sum(1).argmin())
            assert labels.tolist() == [zero, zero, 1 - zero]  # ... which then draws the points nearest to 0
            seen_collapse = True
    assert seen_collapse


def test_reference_kmeans_collapses_where_lloyd_uses_every_cluster():
    """The reference's quirk, measured: non-negative centres, and signed points piling into a few."""
    points = torch.randn(600, 300, generator=torch.Generator().manual_seed(0))  # 300-d, as the reference
    centroids, labels = reference_kmeans(points, 300, generator=torch.Generator().manual_seed(0))
    _, lloyd = kmeans(points, 300, generator=torch.Generator().manual_seed(0))
    assert (centroids >= 0).all()
    assert labels.unique().numel() < 100 < 250 < lloyd.unique().numel()


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


# ---- approximate k-means (CellIndex) ---------------------------------------------------------------

def many_blobs(n_blobs=40, per=25, dim=12, seed=0):
    """Blobs of different spreads, so that a good seeding gives the wide ones more centres."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_blobs, dim, generator=generator) * 4
    spread = (0.2 + torch.rand(n_blobs, 1, generator=generator)).repeat_interleave(per, 0)
    return centres.repeat_interleave(per, 0) + spread * torch.randn(n_blobs * per, dim, generator=generator)


@pytest.fixture
def small_cells(monkeypatch):
    """Many coarse cells on a small problem (8 centroids per cell instead of 128), so that the approximate
    search really leaves most centroids out."""
    monkeypatch.setattr(interest, "CENTROIDS_PER_CELL", 8)


def total_inertia(points, result):
    centroids, labels = result
    return (points - centroids[labels]).pow(2).sum().item()


@pytest.mark.parametrize("k, bound", [(500, 1.05), (100, 1.03)])
def test_approx_inertia_is_close_to_exact(small_cells, k, bound):
    points = many_blobs()
    assert interest.num_cells(k) >= 12
    ratios = []
    for seed in range(3):
        approx = kmeans(points, k, generator=torch.Generator().manual_seed(seed), method="approx")
        exact = kmeans(points, k, generator=torch.Generator().manual_seed(seed), method="exact")
        ratios.append(total_inertia(points, approx) / total_inertia(points, exact))
    assert sum(ratios) / len(ratios) <= bound


def test_approx_is_deterministic_under_a_seed_and_leaves_its_input(small_cells):
    points = many_blobs()
    before = points.clone()
    first = kmeans(points, 300, generator=torch.Generator().manual_seed(4), method="approx")
    second = kmeans(points, 300, generator=torch.Generator().manual_seed(4), method="approx")
    other = kmeans(points, 300, generator=torch.Generator().manual_seed(5), method="approx")
    assert torch.equal(points, before)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_approx_handles_duplicates_and_empty_clusters(small_cells):
    generator = torch.Generator().manual_seed(1)
    points = torch.cat([torch.ones(150, 5), torch.randn(50, 5, generator=generator)])  # 51 distinct points
    centroids, labels = kmeans(points, 100, generator=torch.Generator().manual_seed(0), method="approx")
    assert centroids.shape == (100, 5) and torch.isfinite(centroids).all()
    assert labels.min() >= 0 and labels.max() < 100
    assert labels.unique().numel() == 51  # every distinct point ends up with a centroid of its own
    assert total_inertia(points, (centroids, labels)) == pytest.approx(0, abs=1e-6)


def test_approx_with_k_equal_to_points_uses_every_cluster(small_cells):
    points = torch.randn(300, 4, generator=torch.Generator().manual_seed(2))
    _, labels = kmeans(points, 300, generator=torch.Generator().manual_seed(0), method="approx")
    assert labels.unique().numel() == 300


def test_approx_search_over_all_cells_is_exact(small_cells, monkeypatch):
    points = many_blobs()
    index = CellIndex(points, row_norms(points), 200, torch.Generator().manual_seed(0))
    centroids = index.seed(200, torch.Generator().manual_seed(0))
    monkeypatch.setattr(interest, "PROBES", index.coarse.shape[0])  # every centroid filed under every cell
    labels, dist = index.assign(centroids, None)
    exact_labels, exact_dist = assign(points, centroids)
    assert torch.equal(labels, exact_labels)
    assert torch.allclose(dist, exact_dist, atol=1e-3)


def test_approx_assignment_never_moves_a_point_away(small_cells):
    points = many_blobs()
    index = CellIndex(points, row_norms(points), 200, torch.Generator().manual_seed(0))
    centroids = index.seed(200, torch.Generator().manual_seed(0))
    previous = torch.randint(200, (points.shape[0],), generator=torch.Generator().manual_seed(3))
    labels, dist = index.assign(centroids, previous)
    to_previous = (points - centroids[previous]).pow(2).sum(1)
    assert (dist <= to_previous + 1e-4).all()
    assert (labels != previous).any()


def test_approx_bounds_skip_only_points_whose_centroid_stays_nearest(small_cells):
    """After a Lloyd update, the bound-based skipping gives the assignment a full search over the filed
    candidates gives (a fresh index state), step after step."""
    points = many_blobs()
    index = CellIndex(points, row_norms(points), 200, torch.Generator().manual_seed(0))
    centroids = index.seed(200, torch.Generator().manual_seed(0))
    labels, dist = index.assign(centroids, None)
    for _ in range(3):
        centroids = interest._update_centroids(points, labels, centroids, dist)
        saved = index._last
        index._last = None
        full_labels, full_dist = index.assign(centroids, labels)
        index._last = saved
        labels, dist = index.assign(centroids, labels)
        assert torch.equal(labels, full_labels)
        assert torch.allclose(dist, full_dist, rtol=1e-4, atol=1e-3)  # float32 norm expansion vs direct difference


def test_approx_seeding_draws_distinct_points_in_every_cell(small_cells):
    points = many_blobs()
    index = CellIndex(points, row_norms(points), 200, torch.Generator().manual_seed(0))
    centroids = index.seed(200, torch.Generator().manual_seed(0))
    rows = assign(centroids, points)[0]  # every seed is a data point
    assert torch.equal(points[rows], centroids)
    assert rows.unique().numel() == 200


def test_seeding_gives_spread_out_cells_more_centres(monkeypatch):
    monkeypatch.setattr(interest, "CENTROIDS_PER_CELL", 4)
    generator = torch.Generator().manual_seed(0)
    tight = torch.randn(500, 3, generator=generator) * 0.01
    wide = torch.randn(500, 3, generator=generator) * 10 + 100
    points = torch.cat([tight, wide])
    counts = [0, 0]
    for seed in range(3):
        centroids = kmeans(points, 100, max_iter=0, generator=torch.Generator().manual_seed(seed), method="approx")[0]
        counts[0] += int((centroids[:, 0] < 50).sum())
        counts[1] += int((centroids[:, 0] >= 50).sum())
    assert counts[1] > 2 * counts[0]  # k-means++-like; a split by point counts would give 50/50


def test_allocate_is_proportional_and_exact():
    sizes = torch.tensor([10, 0, 33, 7, 50])
    quota = allocate(sizes, 40)
    assert int(quota.sum()) == 40 and (quota <= sizes).all()
    assert ((quota - sizes * 40 / 100).abs() < 1).all()
    assert allocate(sizes, 100).tolist() == sizes.tolist()


def test_draw_counts_respect_limits_and_give_every_cell_one():
    masses = [torch.tensor([float("inf"), 8.0, 1.0]), torch.tensor([float("inf"), 100.0, 90.0, 80.0]),
              torch.tensor([float("inf")])]
    counts = interest._draw_counts(masses, 6, torch.Generator().manual_seed(0))
    assert int(counts.sum()) == 6 and (counts >= 1).all()
    assert (counts <= torch.tensor([3, 4, 1])).all()
    assert counts[1] > counts[0]  # the second cell has far more mass left
    assert interest._draw_counts(masses, 2, torch.Generator().manual_seed(0)).sum() == 2  # fewer than cells


def test_auto_picks_exact_for_small_problems_and_approx_for_large_ones():
    assert choose_method("auto", 3170, 1585, 300) == "exact"  # Scientific_mm_subset at ratio 0.5
    assert choose_method("auto", 1_000_000, 20_000, 300) == "approx"
    assert choose_method("auto", 1_000_000, 1024, 300) == "exact"  # too few cells to gain much
    assert choose_method("exact", 1_000_000, 500_000, 300) == "exact"
    with pytest.raises(ValueError, match="auto, exact, approx"):
        choose_method("fast", 10, 2, 3)


def test_auto_on_a_small_problem_is_the_exact_path():
    points = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    auto = kmeans(points, 200, generator=torch.Generator().manual_seed(1))
    exact = kmeans(points, 200, generator=torch.Generator().manual_seed(1), method="exact")
    assert torch.equal(auto[0], exact[0]) and torch.equal(auto[1], exact[1])


def test_progress_bars_do_not_change_the_result(small_cells, capsys):
    points = many_blobs()
    quiet = kmeans(points, 100, generator=torch.Generator().manual_seed(0), method="approx")
    shown = kmeans(points, 100, generator=torch.Generator().manual_seed(0), method="approx", show_progress=True)
    assert torch.equal(quiet[1], shown[1])
    assert "k-means" in capsys.readouterr().err
