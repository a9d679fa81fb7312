"""Interest discovery: cluster all item-modality tokens into K global interests.

MISSRec's reference used TorchPQ's mini-batch k-means, which replaces data and centroids by their absolute
values and stops after one pass, so clusters collapse (spec §4.2, §9 #2-#4). These are plain, correct
torch versions: a sign-preserving Lloyd k-means with k-means++ seeding and empty-cluster re-seeding, and
the DPC-KNN of the paper (spec §4.3) behind a size guard; ``reference_kmeans`` reproduces the reference's
quirks, to measure them. None modifies its input.

Exact Lloyd costs N*K*d per iteration, and K follows the token count (K = ratio * N), so for large
catalogues ``kmeans`` switches to a two-level scheme (``method="approx"``, ``CellIndex``): a coarse
k-means splits the points into cells (about 2 sqrt(K), each with at least CENTROIDS_PER_CELL centroids);
every centroid is filed under its PROBES nearest cells, and a Lloyd assignment compares a point only
with the centroids filed under its own cell and with its current centroid, so the inertia never rises.
Seeding is k-means++ inside each cell, with the centres spread over the cells as a global k-means++
would spread them, instead of K sequential draws over all points.
"""
import math

import torch
from tqdm.auto import tqdm

_DISTANCE_BUDGET = 1 << 24  # floats per chunk of the [chunk, K] distance matrix (64 MB)
_CACHE_BLOCK = 1 << 19  # floats per block of the approximate assignment's products (2 MB, stays in cache)
METHODS = ("auto", "exact", "approx")
# `auto` stays exact while one Lloyd iteration is at most this many multiply-adds (N*K*d), about two
# seconds on one CPU core: the model's defaults on the paper's downstream sets up to Instruments.
EXACT_BUDGET = 1 << 36
# The approximate scheme (CellIndex):
CENTROIDS_PER_CELL = 128  # at least this many centroids per coarse cell: fewer, larger cells stay closer to exact
PROBES = 4  # every centroid is filed under its PROBES nearest cells
COARSE_SAMPLE_PER_CELL = 64  # the coarse k-means is trained on at most this many points per cell
SEED_DRAWS = 2  # k-means++ draws per cell, as a multiple of its share of the points (at most all its points) ...
SEED_SAMPLE = 4  # ... among at most this many of its points per draw ...
SEED_WIDTH = 1024  # ... or this many, whichever is more


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


def _check_k(method, k, n):
    if not 1 <= k <= n:
        raise ValueError(f"{method} needs 1 <= k <= number of points, got k={k} for {n} points")


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
    """Means of the members; empty clusters are re-seeded at the points farthest from their centre.
    The means are divided in place, so that a huge K holds two [K, d] tables at most, not three."""
    k = centroids.shape[0]
    counts = torch.bincount(labels, minlength=k)
    new = torch.zeros_like(centroids).index_add_(0, labels, x)
    new /= counts.clamp_min(1)[:, None].to(x.dtype)
    empty = torch.nonzero(counts == 0).squeeze(1)
    if empty.numel():
        far = torch.argsort(min_dist, descending=True)[:empty.numel()]
        new[empty] = centroids[empty]
        new[empty[:far.numel()]] = x[far]
    return new


def choose_method(method, n, k, dim):
    """``exact`` or ``approx`` for a problem of n points, k centroids, dim dimensions. ``auto`` picks
    exact while one exact Lloyd iteration (n*k*dim multiply-adds) is within EXACT_BUDGET, and whenever
    the approximate search would not be several times cheaper (fewer than 4 * PROBES cells)."""
    if method not in METHODS:
        raise ValueError(f"unknown k-means method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "auto":
        cheaper = num_cells(k) >= 4 * PROBES
        return "approx" if cheaper and n * k * dim > EXACT_BUDGET else "exact"
    return method


def kmeans(x, k, max_iter=20, tol=1e-4, init_sample=50_000, generator=None, method="auto", show_progress=False):
    """Lloyd k-means. x: [n, d] (left untouched). Returns (centroids [k, d], labels [n] in 0..k-1).

    Stops when the relative drop of the inertia is below ``tol``. ``method``: ``exact`` compares every
    point with every centroid, seeded by k-means++ on a random sample of at most ``init_sample`` points (at
    least k) so that it stays cheap for millions of tokens; ``approx`` is the two-level scheme of
    ``CellIndex`` (an iteration costs about N*d*PROBES*K/cells + K*d*cells; ``init_sample`` unused);
    ``auto`` picks by cost (``choose_method``). ``show_progress``: tqdm bars over the seeding cells
    (approx) and the iterations.
    """
    _check_k("k-means", k, x.shape[0])
    x = x.detach().float()
    n = x.shape[0]
    norms = row_norms(x)
    if choose_method(method, n, k, x.shape[1]) == "exact":
        centroids = _sample_plus_plus(x, k, init_sample, generator, norms)

        def search(centroids, labels):
            return assign(x, centroids, norms)
    else:
        index = CellIndex(x, norms, k, generator)
        centroids = index.seed(k, generator, show_progress)
        search = index.assign
    labels, min_dist = search(centroids, None)
    inertia = min_dist.sum().item()
    with tqdm(total=max_iter, desc="k-means", unit="iter", disable=not show_progress) as bar:
        for _ in range(max_iter):
            centroids = _update_centroids(x, labels, centroids, min_dist)
            labels, min_dist = search(centroids, labels)
            previous, inertia = inertia, min_dist.sum().item()
            bar.update()
            bar.set_postfix(inertia=f"{inertia:.4g}")
            if previous - inertia <= tol * max(previous, 1e-12):
                break
    return centroids, labels


def _sample_plus_plus(x, k, init_sample, generator, norms):
    """k-means++ on all points, or on a random sample of ``init_sample`` of them (at least k)."""
    n = x.shape[0]
    sample_size = min(n, max(init_sample, k))
    if sample_size == n:
        return kmeans_plus_plus(x, k, generator, norms)
    sample = torch.randperm(n, generator=generator)[:sample_size].to(x.device)
    return kmeans_plus_plus(x[sample], k, generator, norms[sample])


def num_cells(k):
    """Coarse cells for K centroids: about 2 sqrt(K), to balance filing the centroids (K x cells per
    iteration) against the search (N x PROBES x K / cells), but with at least CENTROIDS_PER_CELL
    centroids per cell, as few large cells keep the approximate seeding and search close to exact."""
    return max(1, min(2 * math.isqrt(k), k // CENTROIDS_PER_CELL))


def allocate(sizes, k):
    """Split k centroids over cells in proportion to their sizes (largest remainders, exact integers):
    [cells] long, each at most its cell's size, summing to k (k <= sizes.sum())."""
    total = int(sizes.sum())
    quota = sizes * k // total
    remainder = sizes * k % total
    extra = k - int(quota.sum())
    quota[torch.argsort(remainder, descending=True, stable=True)[:extra]] += 1
    return quota


def _grouped(keys, num_groups):
    """Positions of ``keys`` sorted by key (stable) and the [num_groups + 1] offsets of each key's run."""
    order = torch.argsort(keys, stable=True)
    offsets = torch.zeros(num_groups + 1, dtype=torch.long, device=keys.device)
    offsets[1:] = torch.bincount(keys, minlength=num_groups).cumsum(0)
    return order, offsets.tolist()


class CellIndex:
    """Coarse partition of the points for the approximate k-means (an inverted file over the centroids).

    A coarse k-means (exact, on a sample) gives ``num_cells(k)`` cells, and every point its home cell:
    the nearest one, computed once, as the points never move. Assignment: every centroid is filed under
    its PROBES nearest cells, and a point is compared with the centroids filed under its home cell and
    with its current centroid; so one [cell points, filed centroids] product per cell, about
    N * PROBES * K / cells distances in all. Seeding: k-means++ inside every home cell (``seed``).

    Between Lloyd steps the index keeps, for every point, a lower bound on its distance to the filed
    centroids other than its own (Hamerly's bound): when the centroids move by at most delta, a point
    whose own centroid is still nearer than bound - delta keeps it without any product. A cell that gains
    a centroid it did not have has all its points compared again.
    """

    def __init__(self, x, norms, k, generator=None):
        self.x, self.norms = x, norms
        cells = num_cells(k)
        coarse_points = min(x.shape[0], COARSE_SAMPLE_PER_CELL * cells)
        sample = torch.randperm(x.shape[0], generator=generator)[:coarse_points].to(x.device)
        self.coarse, _ = kmeans(x[sample], cells, max_iter=10, generator=generator, method="exact")
        home = assign(x, self.coarse, norms)[0]
        self.home = home
        self.order, self.offsets = _grouped(home, cells)  # points by home cell
        self._last = None  # (centroids, labels, filed pairs, lower bounds) of the last assignment

    def cell_points(self, cell):
        return self.order[self.offsets[cell]:self.offsets[cell + 1]]

    def seed(self, k, generator=None, show_progress=False):
        """k centroids drawn by k-means++ inside each home cell, spread over the cells as a global
        k-means++ would spread them.

        D^2 sampling is local in effect (a point's D^2 is set by the centres around it), so drawing per
        cell keeps its spread at a cost of (draws per cell) x (cell size) instead of K x N. Every cell
        draws about twice its share of the points (``allocate``), on a random sample of SEED_SAMPLE times
        that many of its points, and records the D^2 mass it had left before each draw; ``_draw_counts``
        then keeps a prefix of every cell's draws, k in all, with the odds of a global k-means++ (a cell
        gets the next centre in proportion to its mass), so that spread-out cells get more centres.
        """
        cells = self.coarse.shape[0]
        sizes = torch.tensor([self.offsets[c + 1] - self.offsets[c] for c in range(cells)])
        draws = torch.minimum(sizes, SEED_DRAWS * allocate(sizes, k) + 1)
        samples = []
        for cell in range(cells):
            points = self.cell_points(cell)
            keep = min(len(points), max(SEED_SAMPLE * int(draws[cell]), SEED_WIDTH))
            samples.append(points[torch.randperm(len(points), generator=generator)[:keep].to(points.device)])
        by_size = sorted((c for c in range(cells) if draws[c]), key=lambda c: -len(samples[c]))
        rows, masses = {}, {}
        with tqdm(total=len(by_size), desc="k-means seeding", unit="cell", disable=not show_progress) as bar:
            for group in _cell_groups([len(samples[c]) for c in by_size]):
                chosen = [by_size[i] for i in group]
                picks, mass = _plus_plus_cells(self.x, self.norms, [samples[c] for c in chosen],
                                               [int(draws[c]) for c in chosen], generator)
                for c, cell_picks, cell_mass in zip(chosen, picks, mass):
                    rows[c], masses[c] = cell_picks, cell_mass * (int(sizes[c]) / len(samples[c]))
                bar.update(len(chosen))
        counts = _draw_counts([masses[c] for c in by_size], k, generator).tolist()
        return self.x[torch.cat([rows[c][:count] for c, count in zip(by_size, counts)])]

    def _file(self, centroids):
        """Centroid ids grouped by the cells they are filed under, the run offsets, and the sorted
        (cell * k + centroid) pairs."""
        cells, k = self.coarse.shape[0], centroids.shape[0]
        probes = min(PROBES, cells)
        filed = torch.cat([  # [k, probes] the cells every centroid is filed under
            squared_distances(block, self.coarse).topk(probes, dim=1, largest=False).indices
            for block in centroids.split(_chunk_rows(cells))
        ])
        by_cell, offsets = _grouped(filed.flatten(), cells)
        by_cell //= probes
        pairs = filed.flatten()[torch.argsort(filed.flatten(), stable=True)] * k + by_cell
        return by_cell, offsets, pairs

    def _stale(self, centroids, labels, pairs):
        """[n] bool: the points that need comparing again after the centroids moved (all of them when
        ``labels`` are not the last assignment's). Decays the kept lower bounds by the largest move of
        a centroid filed under the point's cell."""
        if self._last is None or labels is not self._last[1] or centroids.shape != self._last[0].shape:
            return None
        previous, _, previous_pairs, lower = self._last
        cells, k = self.coarse.shape[0], centroids.shape[0]
        step = max(1, _DISTANCE_BUDGET // centroids.shape[1])
        moved = torch.cat([(new - old).pow(2).sum(1).sqrt() for new, old in zip(centroids.split(step), previous.split(step))])
        cell_of_pair = pairs // k
        largest = torch.zeros(cells, dtype=moved.dtype, device=moved.device).scatter_reduce_(
            0, cell_of_pair, moved[pairs % k], reduce="amax")  # [cells]
        gained = torch.zeros(cells, dtype=torch.bool, device=moved.device)
        gained[cell_of_pair[~torch.isin(pairs, previous_pairs)]] = True
        lower -= largest[self.home]
        return gained[self.home] | (lower <= 0)

    def assign(self, centroids, labels):
        """Approximate nearest centroid of every point: (labels [n] long, squared distance [n]).

        ``labels`` (the previous assignment, or None) are candidates too, so a Lloyd step never raises
        the inertia. The products run in blocks of about _CACHE_BLOCK floats, which stay in the cache. A
        point with no candidate (its home cell has no centroid filed, first call) is compared with all.
        """
        x, norms = self.x, self.norms
        by_cell, offsets, pairs = self._file(centroids)
        stale = self._stale(centroids, labels, pairs)
        lower = self._last[3] if stale is not None else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        centroid_norms = row_norms(centroids)
        new_labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        best = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
        for cell in range(self.coarse.shape[0]):
            candidates = by_cell[offsets[cell]:offsets[cell + 1]]
            table, table_norms = centroids[candidates], centroid_norms[candidates]  # [c, d], [c]
            for block in self.cell_points(cell).split(max(1, _CACHE_BLOCK // max(candidates.numel(), 1))):
                points, point_norms = x[block], norms[block]
                if labels is None:
                    value = torch.full_like(point_norms, float("inf"))
                    label = torch.full_like(block, -1)
                else:
                    label = labels[block]
                    value = (point_norms + centroid_norms[label] - 2 * (points * centroids[label]).sum(1)).clamp_min_(0)
                if stale is not None:
                    recheck = stale[block] | (value > lower[block].clamp_min(0).pow(2))
                    best[block], new_labels[block] = value, label
                    block, points, point_norms = block[recheck], points[recheck], point_norms[recheck]
                    value, label = value[recheck], label[recheck]
                if candidates.numel() and block.numel():
                    value, label, lower[block] = _nearest_two(points, point_norms, table, table_norms, candidates,
                                                              value, label)
                best[block], new_labels[block] = value, label
        unreached = torch.nonzero(new_labels < 0).squeeze(1)
        if unreached.numel():
            new_labels[unreached], best[unreached] = assign(x[unreached], centroids, norms[unreached])
            lower[unreached] = 0
        self._last = (centroids, new_labels, pairs, lower)
        return new_labels, best


def _nearest_two(points, point_norms, table, table_norms, candidates, value, label):
    """The nearer of each point's current centroid (``value``: squared distance, ``label``) and its
    nearest candidate, and a lower bound (Euclidean) on its distance to every other candidate."""
    distance, nearest = torch.addmm(table_norms, points, table.T, alpha=-2).topk(
        min(2, candidates.numel()), dim=1, largest=False)  # [b, 2], ascending
    distance = (distance + point_norms[:, None]).clamp_min_(0)  # the point's own norm: not needed to rank
    nearest = candidates[nearest]
    better = distance[:, 0] < value
    label = torch.where(better, nearest[:, 0], label)
    value = torch.where(better, distance[:, 0], value)
    if distance.shape[1] < 2:  # a single candidate: nothing else to bound
        other = torch.where(nearest[:, 0] == label, float("inf"), distance[:, 0])
    else:
        other = torch.where(nearest[:, 0] == label, distance[:, 1], distance[:, 0])
    return value, label, other.sqrt()


def _cell_groups(widths):
    """Consecutive runs of cells (``widths`` sorted, largest first) whose [cells, width, width] distance
    blocks hold at most _DISTANCE_BUDGET floats together (one cell at least), for ``_plus_plus_cells``."""
    groups, start = [], 0
    while start < len(widths):
        fit = max(1, _DISTANCE_BUDGET // max(widths[start] ** 2, 1))
        groups.append(range(start, min(start + fit, len(widths))))
        start = groups[-1].stop
    return groups


def _plus_plus_cells(x, norms, members, draws, generator):
    """Sequential k-means++ inside several cells at once, one draw per cell per step.

    A cell's pairwise squared distances are computed up front with one batched product ([G, W, W], W =
    the largest cell), so a draw only reads one row of them: a step is a handful of [G, W] operations for
    all G cells, whatever the dimension. members: one index tensor per cell (cells with no point are not
    passed); draws: how many centres each draws (at most its points).
    Returns per cell (rows [draws] of x, mass [draws] double: its D^2 mass left before each draw, inf
    before the first).
    """
    device = x.device
    lengths = torch.tensor([len(m) for m in members], device=device)
    width = int(lengths.max())
    index = torch.stack([torch.cat([m, m[:1].expand(width - len(m))]) for m in members])  # [G, W], padded
    valid = torch.arange(width, device=device)[None, :] < lengths[:, None]  # [G, W]
    points, point_norms = x[index], norms[index]  # [G, W, d], [G, W]
    dist = torch.baddbmm(point_norms[:, :, None] + point_norms[:, None, :], points, points.transpose(1, 2), alpha=-2)
    del points
    dist = dist.clamp_min_(0).masked_fill_(~valid[:, None, :], 0)  # padding never weighs
    cells = torch.arange(len(members), device=device)
    pick = (torch.rand(len(members), generator=generator).to(device) * lengths).long()  # uniform first draw
    closest = dist[cells, pick].clone()  # [G, W] D^2 of every point
    picks, masses = [pick], [torch.full((len(members),), float("inf"), device=device)]
    for _ in range(1, max(draws)):
        cumulative = closest.cumsum(1)  # [G, W]
        total = cumulative[:, -1:]
        target = torch.rand(len(members), 1, generator=generator).to(device) * total
        pick = torch.minimum(torch.searchsorted(cumulative, target, right=True).squeeze(1), lengths - 1)
        picks.append(pick)
        masses.append(total.squeeze(1))
        torch.minimum(closest, dist[cells, pick], out=closest)
    rows = index.gather(1, torch.stack(picks, dim=1))  # [G, steps]
    masses = torch.stack(masses, dim=1).double().cpu()
    return [rows[c, :n] for c, n in enumerate(draws)], [masses[c, :n] for c, n in enumerate(draws)]


def _draw_counts(masses, k, generator):
    """How many of its draws each cell keeps: one each first, then the rest spread over the cells as a
    global k-means++ would spread them, each draw falling in a cell with probability proportional to the
    D^2 mass that cell has left. Drawn in rounds of one draw per cell (so about K / cells rounds), from
    each cell's recorded masses ([draws] each, inf first)."""
    limits = torch.tensor([len(m) for m in masses])
    curves = torch.zeros(len(masses), int(limits.max()), dtype=torch.double)  # [cells, most draws]
    for cell, mass in enumerate(masses):
        curves[cell, :len(mass)] = mass.double()
    counts = torch.minimum(limits, torch.ones_like(limits))
    if int(counts.sum()) > k:  # fewer centres than cells: k of them get one
        counts.zero_()[torch.randperm(len(masses), generator=generator)[:k]] = 1
    rows = torch.arange(len(masses))
    while int(counts.sum()) < k:
        open_cells = counts < limits
        weights = torch.where(open_cells, curves[rows, counts.clamp(max=curves.shape[1] - 1)], 0.0)
        if weights.sum() <= 0:  # no mass left anywhere: spread evenly over the cells with draws left
            weights = open_cells.double()
        draws = min(len(masses), k - int(counts.sum()))
        picked = torch.multinomial(weights, draws, replacement=True, generator=generator)
        counts = torch.minimum(counts + torch.bincount(picked, minlength=len(masses)), limits)
    return counts


def reference_kmeans(x, k, batch=2048, generator=None):
    """The reference's interest clustering as it behaves (TorchPQ ``MinibatchKMeans`` through its
    ``cluster_kmeans`` wrapper, spec §4.2), to measure what its quirks do to accuracy and to fine-tune
    a checkpoint whose frozen encoder was trained on its centroids. x: [n, d] (left untouched).

    One pass over the points in order, in chunks of ``batch`` (1.1 k when ``batch`` <= k; a remainder of
    at most k joins the last chunk). The centres start as k distinct random points of the first chunk.
    Per chunk: signed points go to their nearest centre, then, as the reference's in-place distance
    routine leaves them, the centres and the members become absolute values; every centre moves to
    c (1 - 1/n) + mean|members| / n with n its count so far (1 at the start, so the first chunk replaces
    it), and a centre no member chose shrinks toward 0. Final labels: signed points against the
    non-negative centres, where most points pile into a few clusters.
    Returns (centroids [k, d], labels [n] in 0..k-1).
    """
    _check_k("k-means", k, x.shape[0])
    x = x.detach().float()
    n = x.shape[0]
    if batch <= k:
        batch = int(1.1 * k)
    ends = []
    start = 0
    while start < n:
        end = n if n - (start + batch) <= k else start + batch
        ends.append((start, end))
        start = end
    first = x[:ends[0][1]]
    pick = torch.randperm(first.shape[0], generator=generator)[:k].to(x.device)
    centroids = first[pick].clone()
    counts = torch.ones(k, dtype=x.dtype, device=x.device)
    for start, end in ends:
        chunk = x[start:end]
        labels, _ = assign(chunk, centroids)
        members = torch.bincount(labels, minlength=k).to(x.dtype)
        means = torch.zeros_like(centroids).index_add_(0, labels, chunk.abs()) / members.clamp_min(1)[:, None]
        centroids = centroids.abs() * (1 - 1 / counts)[:, None] + means / counts[:, None]
        counts += members
    labels, _ = assign(x, centroids)
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
    _check_k("DPC-KNN", k, n)
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
