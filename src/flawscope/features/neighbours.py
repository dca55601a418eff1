"""Nearest-neighbour search over a memory bank, behind one small interface.

``TorchSearch`` computes exact Euclidean distances with one matrix product per chunk of queries;
the chunk size keeps the distance block under ``memory_budget_mb``, so memory stays bounded
whatever the bank size, and it runs on CPU and CUDA. ``FaissSearch`` uses a faiss
``IndexFlatL2`` (exact, CPU) with its BLAS kernel. ``"auto"`` picks faiss for a CPU model and torch
for a CUDA one. ``ClusteredSearch`` (``"ivf"``) is the one approximate search: an inverted file
searched cluster by cluster with matrix products. All answer ``query(x, k) -> (distances, indices)``.

faiss uses its BLAS kernel only from ``distance_compute_blas_threshold`` queries on (128,000 in
faiss 1.15); below, a per-query SIMD scan. For PatchCore's 784 queries of one 224 px image against
a 15,680-row bank of 152 dimensions the scan takes 134 ms and the BLAS kernel 31 ms on a 2-core CPU
(torch: 69 ms), so :class:`FaissSearch` asks for BLAS during its own searches and restores the
setting afterwards.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from flawscope.devices import native_bfloat16
from flawscope.errors import ConfigError

SEARCH_BACKENDS = ("auto", "torch", "faiss", "ivf")
KMEANS_ITERATIONS = 20  # Lloyd iterations clustering a bank for ClusteredSearch (faiss's IVF default: 10)
# The bfloat16 products run in oneDNN, which compiles a kernel for every new shape (0.5 ms, where the product takes
# 0.1): a cluster's queries and rows are padded to multiples of this, so a few dozen shapes serve every search.
BFLOAT16_PAD = 64
# Bank rows per chunk of an exported graph's search: one 224 px image's 784 queries against 1,024 rows is a 3 MB
# distance block, where the whole default bank's is 49 MB (392 MB at batch 8); the runtime's peak RSS fell from
# 617 to 238 MiB, and onnxruntime at batch 1 took 28-31 ms where the whole bank took 34-41 (2-core AVX2 CPU).
GRAPH_CHUNK_ROWS = 1024
MEASURED_QUERIES = 2048  # queries whose k found rows ClusteredSearch measures at once (2048 x 16 x 152 floats: 20 MB)


class Search(Protocol):
    """What PatchCore asks of a nearest-neighbour search."""

    def fit(self, bank: torch.Tensor) -> Search: ...

    def query(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchSearch:
    """Exact k-NN with chunked ``|x|^2 - 2 x.b + |b|^2`` distances (works on CPU and CUDA)."""

    def __init__(self, memory_budget_mb: int = 32) -> None:
        self.memory_budget_mb = memory_budget_mb

    def fit(self, bank: torch.Tensor) -> TorchSearch:
        """Index the ``M x D`` bank."""
        self.bank = bank.contiguous()
        self.bank_sq = bank.pow(2).sum(1)
        return self

    def query(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q x D`` queries -> ``(Q x k distances, Q x k bank indices)``, nearest first."""
        rows = max(1, (self.memory_budget_mb << 20) // (4 * self.bank.shape[0]))
        distances, indices = [], []
        for start in range(0, queries.shape[0], rows):
            chunk = queries[start : start + rows]
            squared = torch.addmm(self.bank_sq[None, :], chunk, self.bank.T, alpha=-2.0)
            squared += chunk.pow(2).sum(1, keepdim=True)
            value, index = _smallest(squared, k)
            distances.append(value.clamp_(min=0.0).sqrt_())
            indices.append(index)
        return torch.cat(distances), torch.cat(indices)


class GraphSearch:
    """Exact k-NN in ``|x|^2 - 2 x.b + |b|^2`` products against the bank in chunks of ``chunk_rows`` rows, each
    chunk's nearest rows kept, then the nearest of those: the form an exported graph holds (per chunk MatMul +
    ReduceMin / ArgMin, the chunk an initializer; a TopK where k > 1). The distance block of a chunk holds queries
    x ``chunk_rows`` floats, so memory grows with the queries, not with the bank."""

    def __init__(self, chunk_rows: int = GRAPH_CHUNK_ROWS) -> None:
        self.chunk_rows = chunk_rows

    def fit(self, bank: torch.Tensor) -> GraphSearch:
        """Index the ``M x D`` bank (each chunk held transposed and scaled by -2: the graph's initializer is the
        MatMul's operand as it is, with nothing to transpose or scale at run time)."""
        self.chunks = [((-2.0 * rows).T.contiguous(), rows.pow(2).sum(1)) for rows in bank.split(self.chunk_rows)]
        return self

    def query(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q x D`` queries -> ``(Q x k distances, Q x k bank indices)``, nearest first."""
        values, indices, first_row = [], [], 0
        for scaled_rows_t, rows_sq in self.chunks:
            value, index = _smallest(queries @ scaled_rows_t + rows_sq[None, :], min(k, rows_sq.shape[0]))
            values.append(value)
            indices.append(index + first_row)
            first_row += rows_sq.shape[0]
        value, position = _smallest(torch.cat(values, dim=1), k)  # k = 1: ReduceMin + ArgMin, far cheaper than TopK
        index = torch.cat(indices, dim=1).gather(1, position)
        return (value + queries.pow(2).sum(1, keepdim=True)).clamp(min=0.0).sqrt(), index


class FaissSearch:
    """Exact k-NN with a faiss ``IndexFlatL2`` on the CPU (results moved back to the queries' device)."""

    def fit(self, bank: torch.Tensor) -> FaissSearch:
        """Index the ``M x D`` bank."""
        try:
            import faiss
        except ImportError as error:
            raise ConfigError("search='faiss' needs faiss: pip install faiss-cpu==1.15.1") from error
        self.index = faiss.IndexFlatL2(bank.shape[1])
        self.index.add(bank.detach().float().cpu().contiguous().numpy())
        return self

    def query(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q x D`` queries -> ``(Q x k distances, Q x k bank indices)``, nearest first."""
        with _faiss_blas():
            squared, index = self.index.search(queries.detach().float().cpu().contiguous().numpy(), k)
        distances = torch.from_numpy(squared).clamp_(min=0.0).sqrt_().to(queries.device)
        return distances, torch.from_numpy(index).to(queries.device)


class ClusteredSearch:
    """Approximate k-NN through an inverted file (Jegou et al., "Product quantization for nearest neighbor search",
    TPAMI 2011; faiss's ``IndexIVFFlat``): the bank is split into about sqrt(rows) clusters by seeded k-means, and
    a query is compared with the rows of its ``probes`` nearest clusters only -- about ``(probes + 1) / sqrt(rows)``
    of the exact search's work. Unlike faiss, which scans a cluster's rows query by query, the search runs cluster
    by cluster: the queries probing a cluster against its rows as one matrix product, at the speed of the exact
    search's BLAS kernel (on a 2-core CPU, faiss's own IVF takes 4.3 ms for what this does in about 1).

    The products rank a cluster's rows by their distance to the query relative to the cluster's centroid
    (``|e|^2 - 2 (q - c).e`` for a row ``c + e``: small numbers, where ``|q|^2 - 2 q.r + |r|^2`` cancels large ones),
    in ``ranking_dtype``: bfloat16 where the CPU multiplies it in hardware (AVX512-BF16 or AMX; 3.7 times the
    float32 products on a 2-core AVX512-BF16 CPU), float32 elsewhere. The ``k`` rows ranked nearest are then
    measured exactly in float32, so a distance returned is always the true distance to the row returned; bfloat16
    can only swap rows whose distances differ by less than its rounding (about 0.4 %).

    A query whose true nearest row lies in a cluster it does not probe gets a farther row: its distance is an
    upper bound of the exact one. Where the probed clusters hold fewer than ``k`` rows, that query is searched
    exactly. ``centroids`` given (a saved model's) are used as they are instead of running k-means again.
    """

    def __init__(
        self,
        probes: int = 8,
        seed: int = 0,
        centroids: torch.Tensor | None = None,
        ranking_dtype: torch.dtype | None = None,
    ) -> None:
        self.probes = probes
        self.seed = seed
        self.given_centroids = centroids
        self.ranking_dtype = ranking_dtype

    def fit(self, bank: torch.Tensor) -> ClusteredSearch:
        """Cluster the ``M x D`` bank (k-means, unless centroids were given) and file each row under its nearest."""
        from flawscope.features.clustering import kmeans, pairwise_squared_distances

        self.bank = bank.contiguous()
        centroids = self.given_centroids
        if centroids is None:
            generator = torch.Generator().manual_seed(self.seed)
            clusters = max(1, min(round(math.sqrt(bank.shape[0])), bank.shape[0]))
            centroids = kmeans(bank.float().cpu(), clusters, generator, max_iter=KMEANS_ITERATIONS)
        self.centroids = centroids.to(bank.device, bank.dtype).contiguous()
        if self.ranking_dtype is None:
            self.ranking_dtype = torch.bfloat16 if bank.device.type == "cpu" and native_bfloat16() else torch.float32
        self.pad = BFLOAT16_PAD if self.ranking_dtype == torch.bfloat16 else 1
        assignment = torch.cat(
            [pairwise_squared_distances(part, self.centroids).argmin(1) for part in bank.split(4096)]
        )
        order = torch.argsort(assignment, stable=True)
        counts = torch.bincount(assignment, minlength=self.centroids.shape[0]).tolist()
        self.rows = list(order.split(counts))  # bank rows of each cluster
        # per cluster, D x rows: the products' operand (padded with zeros), and each row's |e|^2 (padding: inf)
        self.blocks, self.block_sq = [], []
        for rows, centroid in zip(self.rows, self.centroids):
            residual = bank[rows] - centroid
            self.blocks.append(_padded(-2.0 * residual, self.pad, 0.0).T.contiguous().to(self.ranking_dtype))
            self.block_sq.append(_padded(residual.pow(2).sum(1), self.pad, math.inf).to(self.ranking_dtype))
        self.exact = TorchSearch().fit(self.bank)
        self.coarse = TorchSearch().fit(self.centroids)
        return self

    def query(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q x D`` queries -> ``(Q x k distances, Q x k bank indices)``, nearest first.

        The (query, probed cluster) pairs are sorted by cluster, so the pairs of one cluster are a run of rows: its
        ``k`` nearest rows for each, ranked relative to its centroid, are written to that run of ``found``, which is
        put back in pair order at the end, and each query keeps the ``k`` nearest of its probes' candidates (no row
        is in two clusters), measured exactly."""
        count = queries.shape[0]
        probes = min(self.probes, self.centroids.shape[0])
        centroid_distance, probed = self.coarse.query(queries, k=probes)
        order = torch.argsort(probed.reshape(-1), stable=True)
        asking = order // probes  # the query of each pair, in cluster order
        per_cluster = torch.bincount(probed.reshape(-1), minlength=len(self.rows)).tolist()
        found = torch.full((count * probes, k), math.inf, device=queries.device, dtype=queries.dtype)
        found_index = torch.full((count * probes, k), -1, device=queries.device, dtype=torch.int64)
        end = 0
        for cluster, pairs in enumerate(per_cluster):
            start, end = end, end + pairs
            if pairs == 0 or self.rows[cluster].numel() == 0:
                continue
            relative = (queries[asking[start:end]] - self.centroids[cluster]).to(self.ranking_dtype)
            squared = torch.addmm(self.block_sq[cluster], _padded(relative, self.pad, 0.0), self.blocks[cluster])
            kept = min(k, self.rows[cluster].numel())
            value, where = _smallest(squared[:pairs], kept)
            found[start:end, :kept], found_index[start:end, :kept] = value, self.rows[cluster][where]
        found += centroid_distance.square().reshape(-1)[order, None]  # |q - c|^2: squared distances to the rows
        candidates = torch.empty_like(found).index_copy_(0, order, found).reshape(count, probes * k)
        candidate_index = torch.empty_like(found_index).index_copy_(0, order, found_index).reshape(count, probes * k)
        best_index = candidate_index.gather(1, _smallest(candidates, k)[1])
        short = (best_index < 0).any(dim=1).nonzero()[:, 0]
        if short.numel():
            best_index[short] = self.exact.query(queries[short], k)[1]
        return self._measured(queries, best_index)

    def _measured(self, queries: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The float32 distances of ``Q x k`` bank rows ``index`` to their queries, each query's nearest first."""
        distance = torch.empty(index.shape, device=queries.device, dtype=queries.dtype)
        for rows in torch.arange(queries.shape[0], device=queries.device).split(MEASURED_QUERIES):
            distance[rows] = (self.bank[index[rows]] - queries[rows, None, :]).norm(dim=2)
        if index.shape[1] == 1:
            return distance, index
        distance, nearest_first = distance.sort(dim=1)
        return distance, index.gather(1, nearest_first)


def _padded(rows: torch.Tensor, multiple: int, fill: float) -> torch.Tensor:
    """``rows`` with rows of ``fill`` appended up to a multiple of ``multiple`` rows (contiguous)."""
    missing = -rows.shape[0] % multiple
    if missing == 0:
        return rows.contiguous()
    return torch.cat([rows, rows.new_full((missing, *rows.shape[1:]), fill)])


def _smallest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest values of each row and their columns, smallest first (a minimum where k is 1: faster)."""
    if k == 1:
        return values.min(dim=1, keepdim=True)
    return values.topk(k, dim=1, largest=False)


_FAISS_SETTING = threading.Lock()
BLAS_FROM_QUERIES = 20  # faiss's own default before 1.8


@contextmanager
def _faiss_blas() -> Iterator[None]:
    """faiss's BLAS kernel from :data:`BLAS_FROM_QUERIES` queries on, for the searches in the block only."""
    import faiss

    with _FAISS_SETTING:
        before = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = before


def make_search(
    backend: str, device: torch.device, probes: int = 8, seed: int = 0, centroids: torch.Tensor | None = None
) -> Search:
    """The search object for ``backend`` ('auto', 'torch', 'faiss' or 'ivf') on ``device``; ``probes``, ``seed`` and
    ``centroids`` are the inverted file's (:class:`ClusteredSearch`)."""
    if backend == "ivf":
        return ClusteredSearch(probes, seed, centroids)
    if backend == "auto":
        backend = "torch" if device.type == "cuda" else "faiss"
    if backend == "torch":
        return TorchSearch()
    if backend == "faiss":
        return FaissSearch()
    raise ConfigError(f"Unknown search backend {backend!r}; choose one of {SEARCH_BACKENDS}.")
