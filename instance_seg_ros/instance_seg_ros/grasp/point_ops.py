"""The three point operations Contact-GraspNet needs at inference, in plain torch, and a ``torch_cluster`` stand-in.

``cgn_pytorch`` (a PointNet++ network) reaches the compiled ``torch-cluster`` package through ``torch_geometric.nn``:

* ``fps`` (farthest point sampling): picks the set-abstraction centres (``SAModule``, levels 2 and 3) and, in our
  adapter, the 2048 points the network predicts grasps at;
* ``radius`` (ball query, ``max_num_neighbors=64``): groups the points around each centre (``SAModule``);
* ``knn`` (k = 3 nearest): feature propagation, through ``torch_geometric.nn.knn_interpolate`` (``FPModule``).

Nothing else of torch-cluster is used (``global_max_pool`` and ``PointNetConv`` are plain torch in torch-geometric).
PyPI has torch-cluster only as source, a 15-minute CPU build here, so :func:`install_torch_cluster_fallback` puts a
small module named ``torch_cluster`` holding :func:`fps`, :func:`radius` and :func:`knn` into ``sys.modules``, **only
when the real package is not installed**; torch-geometric binds ``torch_cluster`` when it is first imported, so the
fallback must be installed before that (:mod:`.planner` does it before importing ``cgn_pytorch``). Any other
``torch_cluster`` attribute raises ImportError naming the real package.

Semantics (torch-cluster 1.6.3, read from its sources):

* ``fps``: per example, ``ceil(float32(n) * ratio)`` points; the first is index 0 (``random_start=False``) or a
  random index; then repeatedly the point with the largest squared distance to the points chosen so far (first
  index on ties). Ours uses the same torch operations as torch-cluster's CPU kernel, so the indices should be
  identical. With ``random_start=True`` the start comes from torch's global generator (torch-cluster's CPU kernel
  uses C ``rand()``), so seed torch to make it repeatable.
* ``radius``: for each query ``y[i]`` the points ``x[j]`` of the same example with squared distance ``< r*r``, at
  most ``max_num_neighbors`` of them; torch-cluster documents the choice among more as random. Ours keeps the
  first ones in index order, which is what torch-cluster's CUDA kernel does (its CPU kernel keeps the first ones a
  k-d tree visits). Output ``[2, E]``: row 0 the query index, row 1 the point index, sorted by query then point.
* ``knn``: for each query the ``min(k, n)`` nearest points of the same example, nearest first.

Our adapter feeds the network its points in random order, so "the first ones in index order" is a uniform random
choice among the neighbours, as the documented semantics say.

How: ``fps`` loops over the picks (0.1-0.2 s for 2048 of 20 000 points on one core); ``radius`` takes each query's
candidates from a uniform grid (cells ~r), except where a query has at least a block of candidates (large r in a
small cloud: 0.08 m balls in a 0.3 m region), where scanning the points in index order stops after about
``max_num_neighbors / density`` points; ``knn`` is brute force in chunks (its largest use here is 2048 x 512).
Work is chunked (about 4 M candidate pairs, under ~200 MB, at a time). On a busy 2-core CPU the three take ~0.5 s
of a ~2 s network call.

Still to check once against the real torch-cluster 1.6.3 (not built by ``make setup``: 15 CPU-minutes):
``test_grasp.py::test_point_ops_match_real_torch_cluster`` runs by itself where torch-cluster is installed and
compares ``fps`` indices (identical expected, also on a grid cloud full of distance ties and at ratios such as
``2048 / n``), ``radius`` neighbour sets (identical where a query has at most 64 neighbours, both a subset of the
true neighbours otherwise) and ``knn`` (same distances). Worth a look at the same time: the grasps of one scene with
either backend (same scores where no ball is capped; close otherwise).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import torch

__all__ = ["farthest_point_sampling", "fps", "install_torch_cluster_fallback", "knn", "radius"]

#: pairs (query, point) per chunk of the brute-force distance computations
_CHUNK_PAIRS = 1 << 22
#: radius: points per block of the index-order scan
_SCAN_BLOCK = 2048


def _ptr(batch: torch.Tensor | None, n: int, batch_size: int | None, device: torch.device) -> torch.Tensor:
    """CSR boundaries ``[B + 1]`` of a sorted batch vector (None: one example)."""
    if batch is None:
        return torch.tensor([0, n], device=device)
    if batch.dim() != 1 or batch.numel() != n:
        raise ValueError(f"batch must be a vector with one entry per point ({n}), got shape {list(batch.shape)}.")
    if n and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (the points of one example contiguous), as torch-cluster requires.")
    b = int(batch_size) if batch_size is not None else (int(batch.max()) + 1 if n else 1)
    deg = torch.zeros(b, dtype=torch.long, device=device).scatter_add_(0, batch.long(), torch.ones_like(batch.long()))
    ptr = torch.zeros(b + 1, dtype=torch.long, device=device)
    torch.cumsum(deg, 0, out=ptr[1:])
    return ptr


def _points(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(t).__name__} {getattr(t, 'dtype', '')}.")
    return t.view(-1, 1) if t.dim() == 1 else t.reshape(t.size(0), -1)


def _sq_dist(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[M, N]``, summed per coordinate in order (as torch-cluster's kernels do, no matmul trick)."""
    d = (y[:, None, 0] - x[None, :, 0]).square()
    for c in range(1, x.size(1)):
        d += (y[:, None, c] - x[None, :, c]).square()
    return d


def farthest_point_sampling(pos: torch.Tensor, num_samples: int, *, start: int = 0) -> torch.Tensor:
    """Farthest point sampling of one cloud.

    Args:
        pos (Tensor[N, D] float): the points.
        num_samples: how many to pick (at most N).
        start: index of the first pick (torch-cluster's ``random_start=False`` is 0).

    Returns:
        LongTensor[num_samples]: indices into ``pos``, in pick order; each next pick is the point farthest (squared
        Euclidean) from all picks so far, the lowest index on ties.
    """
    pos = _points(pos, "pos")
    n = pos.size(0)
    if not 0 <= num_samples <= n:
        raise ValueError(f"num_samples must be in 0..{n} (the number of points), got {num_samples}.")
    if num_samples and not 0 <= start < n:
        raise ValueError(f"start must be an index in 0..{n - 1}, got {start}.")
    out = torch.empty(num_samples, dtype=torch.long, device=pos.device)
    if num_samples == 0:
        return out
    # one contiguous row per coordinate: each step's ops then stay on N elements (serial below torch's parallel grain,
    # which matters on a busy CPU) and give bit-identical distances to ``(pos - pos[i]).pow(2).sum(1)``
    cols = pos.t().contiguous()
    idx = torch.tensor(start, device=pos.device)

    def dist_to(i: torch.Tensor) -> torch.Tensor:
        c = cols[:, i]
        d = (cols[0] - c[0]).square()
        for k in range(1, cols.size(0)):
            d += (cols[k] - c[k]).square()
        return d

    out[0] = idx
    dist = dist_to(idx)
    for i in range(1, num_samples):
        idx = dist.argmax()  # stays on the device: no synchronisation per pick
        out[i] = idx
        dist = torch.minimum(dist, dist_to(idx))
    return out


def fps(
    src: torch.Tensor,
    batch: torch.Tensor | None = None,
    ratio: float | torch.Tensor = 0.5,
    random_start: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """torch_cluster.fps: farthest point sampling per example (``batch`` sorted).

    Takes ``ceil(float32(n_b) * ratio)`` points of each example ``b``, starting at its first point, or at a random one
    (torch's global generator) when ``random_start``. Returns LongTensor indices into ``src``, example by example.
    """
    src = _points(src, "src")
    ptr = _ptr(batch, src.size(0), batch_size, src.device)
    r = ratio if isinstance(ratio, torch.Tensor) else torch.tensor(float(ratio), dtype=src.dtype, device=src.device)
    deg = ptr[1:] - ptr[:-1]
    counts = (deg.to(torch.float32) * r).ceil().long().clamp_(max=deg).tolist()
    out = []
    for b, count in enumerate(counts):
        lo, n = int(ptr[b]), int(deg[b])
        if count <= 0 or n == 0:
            continue
        start = int(torch.randint(n, (1,))) if random_start else 0
        out.append(lo + farthest_point_sampling(src[lo : lo + n], count, start=start))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=src.device)


def _pair_inputs(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_x: torch.Tensor | None,
    batch_y: torch.Tensor | None,
    batch_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Checked ``x [N, D]``, ``y [M, D]`` and per-example boundaries of both (as lists)."""
    x, y = _points(x, "x"), _points(y, "y")
    if x.size(1) != y.size(1):
        raise ValueError(f"x and y must have the same dimension, got {x.size(1)} and {y.size(1)}.")
    if batch_size is None:
        batch_size = 1 + max([int(b.max()) for b in (batch_x, batch_y) if b is not None and b.numel()], default=0)
    ptr_x = _ptr(batch_x, x.size(0), batch_size, x.device).tolist()
    ptr_y = _ptr(batch_y, y.size(0), batch_size, y.device).tolist()
    return x, y, ptr_x, ptr_y


def _grid_candidates(x: torch.Tensor, y: torch.Tensor, cell: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, where its candidate points lie: the points of the 3^D grid cells around it (cells >= ``cell``).

    Returns ``order`` (LongTensor[N]: point indices sorted by cell, index order inside a cell) and ``start, count``
    (LongTensor[M, 3^D]): query ``i``'s candidates are ``order[start[i, c] : start[i, c] + count[i, c]]``.
    """
    dim = x.size(1)
    lo = torch.minimum(x.min(0).values, y.min(0).values)
    hi = torch.maximum(x.max(0).values, y.max(0).values)
    # cells a little larger than r, so that float round-off never puts two points closer than r two cells apart;
    # and large enough that the cell keys fit in int64
    cell = max(cell * 1.001, float((hi - lo).max()) / 2**18, 1e-12)
    ix = ((x - lo) / cell).floor().long() + 1  # +1: a margin of empty cells for the -1 offsets
    iy = ((y - lo) / cell).floor().long() + 1
    radix = (torch.maximum(ix.max(0).values, iy.max(0).values) + 2).tolist()
    weights = [1] * dim
    for d in range(dim - 2, -1, -1):
        weights[d] = weights[d + 1] * radix[d + 1]
    w = torch.tensor(weights, device=x.device)
    key_x = (ix * w).sum(1)
    key_y = (iy * w).sum(1)
    sorted_keys, order = key_x.sort(stable=True)
    offsets = torch.cartesian_prod(*[torch.tensor([-1, 0, 1], device=x.device)] * dim).reshape(-1, dim)
    near = key_y[:, None] + (offsets * w).sum(1)[None, :]
    start = torch.searchsorted(sorted_keys, near)
    count = torch.searchsorted(sorted_keys, near, right=True) - start
    return order, start, count


def _radius_grid(
    x: torch.Tensor,
    y: torch.Tensor,
    queries: torch.Tensor,
    grid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    r2: torch.Tensor,
    max_num: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """radius for ``queries`` whose grid candidates are few: test every candidate, keep the lowest max_num indices."""
    order, start, count = grid[0], grid[1].index_select(0, queries), grid[2].index_select(0, queries)
    n, k = x.size(0), start.size(1)
    per_query = count.sum(1).tolist()
    xcols, ycols = x.t().contiguous(), y.t().contiguous()  # 1-D gathers per coordinate are the fast ones
    rows, cols = [], []
    a = 0
    while a < queries.numel():  # queries in chunks of about _CHUNK_PAIRS candidate pairs
        b, pairs = a, 0
        while b < queries.numel() and (b == a or pairs + per_query[b] <= _CHUNK_PAIRS):
            pairs += per_query[b]
            b += 1
        c = count[a:b].reshape(-1)
        seg = torch.repeat_interleave(torch.arange(c.numel(), device=x.device), c)  # candidate -> (query, cell)
        at = (start[a:b].reshape(-1) - torch.cumsum(c, 0) + c).index_select(0, seg)
        cand = order.index_select(0, at + torch.arange(seg.numel(), device=x.device))
        q = queries.index_select(0, a + torch.div(seg, k, rounding_mode="floor"))
        d = (ycols[0].index_select(0, q) - xcols[0].index_select(0, cand)).square()
        for j in range(1, x.size(1)):
            d += (ycols[j].index_select(0, q) - xcols[j].index_select(0, cand)).square()
        inside = d < r2
        # sort by (query, point index), then keep the first max_num of each query
        key = (q[inside] * n + cand[inside]).sort().values
        group_start = torch.searchsorted(key, torch.div(key, n, rounding_mode="floor") * n)
        key = key[torch.arange(key.numel(), device=x.device) - group_start < max_num]
        rows.append(torch.div(key, n, rounding_mode="floor"))
        cols.append(key % n)
        a = b
    return torch.cat(rows), torch.cat(cols)


def _radius_scan(
    x: torch.Tensor, y: torch.Tensor, queries: torch.Tensor, r2: torch.Tensor, max_num: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """radius for ``queries`` with many candidates: scan the points in index order, block by block, as
    torch-cluster's CUDA kernel does, and retire a query once it has max_num neighbours."""
    found = torch.zeros(y.size(0), dtype=torch.long, device=x.device)
    rows, cols = [], []
    active = queries
    for s in range(0, x.size(0), _SCAN_BLOCK):
        if active.numel() == 0:
            break
        inside = _sq_dist(y.index_select(0, active), x[s : s + _SCAN_BLOCK]) < r2
        keep = inside & (inside.cumsum(1) + found.index_select(0, active)[:, None] <= max_num)
        i, j = keep.nonzero(as_tuple=True)
        rows.append(active.index_select(0, i))
        cols.append(j + s)
        found.index_add_(0, active, keep.sum(1))
        active = active[found.index_select(0, active) < max_num]
    return torch.cat(rows), torch.cat(cols)


def _use_scan(candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Which queries to scan: those with at least a block's worth of grid candidates (a scan costs at least one
    block of ``min(_SCAN_BLOCK, n)`` points, and usually no more when the candidates are that many)."""
    return candidates >= min(_SCAN_BLOCK, n)


def _radius_one(x: torch.Tensor, y: torch.Tensor, r: float, max_num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """radius for one example: (query indices, point indices), sorted by query then point.

    A uniform grid (cells ~r) gives each query its candidates. Where a query has many (a large r over a small
    cloud, Contact-GraspNet's 0.08 m balls in a 0.3 m region), scanning the points in index order stops much
    earlier, after about ``max_num / density`` points: those queries are scanned instead.
    """
    r2 = torch.tensor(r, dtype=x.dtype, device=x.device) ** 2  # torch-cluster compares with r * r in this precision
    grid = _grid_candidates(x, y, r)
    dense = _use_scan(grid[2].sum(1), x.size(0))
    rows, cols = [], []
    for use_scan in (False, True):
        queries = (dense if use_scan else ~dense).nonzero().view(-1)
        if queries.numel():
            if use_scan:
                i, j = _radius_scan(x, y, queries, r2, max_num)
            else:
                i, j = _radius_grid(x, y, queries, grid, r2, max_num)
            rows.append(i)
            cols.append(j)
    key = (torch.cat(rows) * x.size(0) + torch.cat(cols)).sort().values
    return torch.div(key, x.size(0), rounding_mode="floor"), key % x.size(0)


def radius(
    x: torch.Tensor,
    y: torch.Tensor,
    r: float,
    batch_x: torch.Tensor | None = None,
    batch_y: torch.Tensor | None = None,
    max_num_neighbors: int = 32,
    num_workers: int = 1,
    batch_size: int | None = None,
) -> torch.Tensor:
    """torch_cluster.radius: for each ``y[i]`` the points of ``x`` (same example) with squared distance ``< r*r``.

    At most ``max_num_neighbors`` per query: the lowest point indices. Points up to 3-D (a uniform grid of cells of
    size ~r limits the candidates). ``num_workers`` is accepted and ignored.

    Returns:
        LongTensor[2, E]: ``[query index into y, point index into x]``, sorted by query, then point.
    """
    x, y, px, py = _pair_inputs(x, y, batch_x, batch_y, batch_size)
    if x.size(1) > 3:
        raise ValueError(f"radius supports points with up to 3 coordinates here, got {x.size(1)}.")
    if not r > 0:
        raise ValueError(f"r must be positive, got {r}.")
    if max_num_neighbors < 1:
        raise ValueError(f"max_num_neighbors must be >= 1, got {max_num_neighbors}.")
    rows, cols = [], []
    for b in range(len(px) - 1):
        if px[b + 1] > px[b] and py[b + 1] > py[b]:
            i, j = _radius_one(x[px[b] : px[b + 1]], y[py[b] : py[b + 1]], float(r), int(max_num_neighbors))
            rows.append(i + py[b])
            cols.append(j + px[b])
    if not rows:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    return torch.stack([torch.cat(rows), torch.cat(cols)])


def knn(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    batch_x: torch.Tensor | None = None,
    batch_y: torch.Tensor | None = None,
    cosine: bool = False,
    num_workers: int = 1,
    batch_size: int | None = None,
) -> torch.Tensor:
    """torch_cluster.knn: for each ``y[i]`` its ``min(k, n)`` nearest points of ``x`` (same example), nearest first.

    Brute force in chunks of queries (Contact-GraspNet's largest call is 2048 queries x 512 points).
    ``cosine=True`` is not supported; ``num_workers`` is accepted and ignored. ``batch_size`` (int, optional): the
    number of examples, computed from the batch vectors when not given.

    Returns:
        LongTensor[2, E]: ``[query index into y, point index into x]``.
    """
    if cosine:
        raise NotImplementedError("knn(cosine=True) is not in instance_seg_ros's stand-in; install torch-cluster.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    x, y, px, py = _pair_inputs(x, y, batch_x, batch_y, batch_size)
    rows, cols = [], []
    for b in range(len(px) - 1):
        x0, x1, y0, y1 = px[b], px[b + 1], py[b], py[b + 1]
        if x1 == x0 or y1 == y0:
            continue
        kk = min(k, x1 - x0)
        step = max(1, _CHUNK_PAIRS // (x1 - x0))
        for s in range(y0, y1, step):
            e = min(s + step, y1)
            j = _sq_dist(y[s:e], x[x0:x1]).topk(kk, dim=1, largest=False, sorted=True).indices
            rows.append(torch.arange(s, e, device=y.device).repeat_interleave(kk))
            cols.append(j.reshape(-1) + x0)
    if not rows:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    return torch.stack([torch.cat(rows), torch.cat(cols)])


def _missing(name: str):
    if name.startswith("__"):  # probes such as __file__ / __path__ must see a plain missing attribute
        raise AttributeError(name)
    raise ImportError(
        f"torch_cluster.{name} is not provided by instance_seg_ros's pure-torch stand-in (only fps, radius and knn); "
        "install the real torch-cluster package."
    )


def install_torch_cluster_fallback() -> bool:
    """Register the pure-torch ``torch_cluster`` module in ``sys.modules`` when torch-cluster is not installed.

    Call before torch_geometric is first imported. If torch_geometric was imported already (without torch-cluster),
    its pooling module is pointed at the stand-in too. Idempotent.

    Returns:
        True when the stand-in is (now) in use, False when the real torch-cluster is installed.
    """
    current = sys.modules.get("torch_cluster")
    if current is not None:
        return bool(getattr(current, "__isr_fallback__", False))
    if importlib.util.find_spec("torch_cluster") is not None:
        return False
    mod = types.ModuleType("torch_cluster", "instance_seg_ros.grasp.point_ops: pure-torch fps, radius, knn.")
    # a spec, so that importlib.util.find_spec("torch_cluster") answers instead of raising ValueError
    mod.__spec__ = importlib.machinery.ModuleSpec("torch_cluster", None, origin=__name__)
    # torch_geometric.typing passes batch_size when the word is in knn's docstring (it is, as in torch-cluster 1.6.3)
    mod.fps, mod.radius, mod.knn = fps, radius, knn
    mod.__version__ = "0.0.0+instance_seg_ros"
    mod.__isr_fallback__ = True
    mod.__getattr__ = _missing  # any other op: a clear ImportError
    sys.modules["torch_cluster"] = mod
    pool = sys.modules.get("torch_geometric.nn.pool")
    if pool is not None:  # torch_geometric already imported without torch-cluster: it holds a placeholder
        pool.torch_cluster = mod
        typing_mod = sys.modules["torch_geometric.typing"]
        typing_mod.torch_cluster = mod
        typing_mod.WITH_TORCH_CLUSTER = True
        typing_mod.WITH_TORCH_CLUSTER_BATCH_SIZE = True
    return True
