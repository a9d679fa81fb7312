"""Interest discovery: cluster all item-modality tokens into K global interests.

MISSRec's reference used TorchPQ's mini-batch k-means, which replaces data and centroids by their absolute
values and stops after one pass, so clusters collapse (spec §4.2, §9 #2-#4). These are plain, correct
torch versions: a sign-preserving Lloyd k-means with k-means++ seeding and empty-cluster re-seeding, and
the DPC-KNN of the paper (spec §4.3) behind a size guard. Neither modifies its input.
"""
import math

import torch

_DISTANCE_BUDGET = 1 << 24  # floats per chunk of the [chunk, K] distance matrix (64 MB)


def num_interests(num_tokens, ratio=None, absolute=None):
    """K from an absolute count or a ratio of the token count (reference: ceil(ratio * tokens))."""
    if num_tokens < 1:
        raise ValueError("interest discovery needs at least one item-modality token")
    if absolute:
        k = int(absolute)
    elif ratio:
        k = math.ceil(num_tokens * float(ratio))
    else:
        raise ValueError("set `interest_ratio` or `num_interest` to choose the number of interests")
    return max(1, min(k, num_tokens))


def _chunk_rows(k):
    return max(1, _DISTANCE_BUDGET // max(k, 1))


def row_norms(x):
    """[n] squared norms of the rows of x; the points do not move, so callers compute them once. Computed
    in row blocks, so that the squares never take a second copy of x."""
    step = max(1, _DISTANCE_BUDGET // max(x.shape[1], 1))
    return torch.cat([block.pow(2).sum(1) for block in x.split(step)])


def squared_distances(x, centroids, x_norms=None):
    """[n, k] squared Euclidean distances, clamped at 0 against rounding. ``x_norms``: row_norms(x)."""
    if x_norms is None:
        x_norms = row_norms(x)
    dist = torch.addmm(x_norms.unsqueeze(1), x, centroids.T, alpha=-2)  # one GEMM, no scaled copy of x
    dist += centroids.pow(2).sum(1)
    return dist.clamp_min_(0)


def assign(x, centroids, x_norms=None):
    """Nearest centroid of every row of x, computed in chunks so memory stays at one [chunk, K] block.

    Returns (labels [n] long, squared distance to that centroid [n]).
    """
    if x_norms is None:
        x_norms = row_norms(x)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    best = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    step = _chunk_rows(centroids.shape[0])
    for start in range(0, x.shape[0], step):
        dist = squared_distances(x[start:start + step], centroids, x_norms[start:start + step])
        best[start:start + step], labels[start:start + step] = dist.min(dim=1)
    return labels, best


def kmeans_plus_plus(x, k, generator=None, x_norms=None):
    """k-means++ seeding: each new centre drawn with probability proportional to D(x)^2.

    The k draws are sequential, so each step is kept to one [n, d] matrix-vector product: the squared
    norms are computed once (``x_norms``: row_norms(x)), and the draw takes the unnormalised weights.
    """
    n = x.shape[0]
    norms = row_norms(x) if x_norms is None else x_norms

    def distances_to(row):  # [n] squared distances to x[row]
        return squared_distances(x, x[row:row + 1], norms).squeeze(1)

    pick = torch.randint(n, (1,), generator=generator, device="cpu").item()
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[pick]
    closest = distances_to(pick)
    for i in range(1, k):
        if closest.sum() > 0:
            weights = closest.cpu()
        else:  # every point already coincides with a centre: draw uniformly
            weights = torch.ones(n)
        pick = torch.multinomial(weights, 1, generator=generator).item()
        centroids[i] = x[pick]
        torch.minimum(closest, distances_to(pick), out=closest)
    return centroids


def _update_centroids(x, labels, centroids, min_dist):
    """Means of the members; empty clusters are re-seeded at the points farthest from their centre."""
    k = centroids.shape[0]
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)
    new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), centroids)
    empty = torch.nonzero(counts == 0).squeeze(1)
    if empty.numel():
        far = torch.argsort(min_dist, descending=True)[:empty.numel()]
        new[empty[:far.numel()]] = x[far]
    return new


def kmeans(x, k, max_iter=20, tol=1e-4, init_sample=50_000, generator=None):
    """Lloyd k-means. x: [n, d] (left untouched). Returns (centroids [k, d], labels [n] in 0..k-1).

    Stops when the relative drop of the inertia is below ``tol``. The seeding runs on a random sample of
    at most ``init_sample`` points (at least k) so that it stays cheap for millions of tokens.
    """
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {x.shape[0]} points")
    x = x.detach().float()
    n = x.shape[0]
    norms = row_norms(x)
    sample_size = min(n, max(init_sample, k))
    if sample_size == n:
        centroids = kmeans_plus_plus(x, k, generator, norms)
    else:
        sample = torch.randperm(n, generator=generator)[:sample_size].to(x.device)
        centroids = kmeans_plus_plus(x[sample], k, generator, norms[sample])
    labels, min_dist = assign(x, centroids, norms)
    inertia = min_dist.sum().item()
    for _ in range(max_iter):
        centroids = _update_centroids(x, labels, centroids, min_dist)
        labels, min_dist = assign(x, centroids, norms)
        previous, inertia = inertia, min_dist.sum().item()
        if previous - inertia <= tol * max(previous, 1e-12):
            break
    return centroids, labels


def dpc_knn(x, k, num_neighbours, max_tokens=20_000):
    """Density-peak clustering with k-nearest neighbours (TCFormer's routine, spec §4.3).

    Needs the dense [n, n] distance matrix, so it refuses above ``max_tokens`` instead of running the
    machine out of memory. Returns (centroids [k, d], labels [n]).
    """
    n, dim = x.shape
    if n > max_tokens:
        need_gb = 3 * n * n * 4 / 1e9
        raise MemoryError(
            f"DPC-KNN over {n} tokens needs dense {n}x{n} matrices (about {need_gb:.1f} GB); the limit "
            f"`dpc_max_tokens` is {max_tokens}. Use `interest_method: kmeans`, or raise the limit if the "
            f"memory is really there."
        )
    if not 1 <= k <= n:
        raise ValueError(f"DPC-KNN needs 1 <= k <= number of points, got k={k} for {n} points")
    x = x.detach().float()
    dist = torch.cdist(x, x) / math.sqrt(dim)  # [n, n]
    num_neighbours = max(1, min(int(num_neighbours), n))
    nearest = dist.topk(num_neighbours, dim=1, largest=False).values
    density = torch.exp(-nearest.pow(2).mean(dim=1))  # [n]
    denser = density[None, :] > density[:, None]  # [n, n]: j denser than i
    delta = dist.masked_fill(~denser, float("inf")).min(dim=1).values
    delta = torch.where(torch.isinf(delta), dist.max(), delta)
    centres = torch.topk(delta * density, k).indices  # [k]
    labels = dist[:, centres].argmin(dim=1)
    labels[centres] = torch.arange(k, device=x.device)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    sums = torch.zeros(k, dim, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    return sums / (counts[:, None] + 1e-4), labels


def unique_per_row(ids):
    """Distinct non-zero values of each row, ascending, right-padded with 0 (no loop over rows).

    ids: [B, T] long with 0 meaning "no interest". Returns [B, Q], Q = the largest distinct count (>= 1).
    """
    values, _ = ids.sort(dim=1)
    keep = values > 0
    keep[:, 1:] &= values[:, 1:] != values[:, :-1]
    width = max(int(keep.sum(dim=1).max().item()), 1) if ids.numel() else 1
    slot = keep.long().cumsum(dim=1) - 1
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(values)
    out = ids.new_zeros(ids.shape[0], width)
    out[rows[keep], slot[keep]] = values[keep]
    return out
