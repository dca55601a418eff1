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

from flawscope.errors import ConfigError

SEARCH_BACKENDS = ("auto", "torch", "faiss", "ivf")
KMEANS_ITERATIONS = 20  # Lloyd iterations clustering a bank for ClusteredSearch (faiss's IVF default: 10)


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
            if k == 1:
                value, index = squared.min(dim=1, keepdim=True)
            else:
                value, index = squared.topk(k, dim=1, largest=False)
            distances.append(value.clamp_(min=0.0).sqrt_())
            indices.append(index)
        return torch.cat(distances), torch.cat(indices)


class GraphSearch:
    """Exact k-NN in one ``|x|^2 - 2 x.b + |b|^2`` product, then the minimum (k = 1) or a top-k, without chunks:
    the form an exported graph holds (MatMul + ReduceMin / ArgMin, the bank an initializer). Memory grows with
    queries x bank rows."""

    def fit(self, bank: torch.Tensor) -> GraphSearch:
        """Index the ``M x D`` bank (held transposed and scaled by -2: the graph's initializer is the MatMul's
        operand as it is, with nothing to transpose or scale at run time)."""
        self.scaled_bank_t = (-2.0 * bank).T.contiguous()
        self.bank_sq = bank.pow(2).sum(1)
        return self

    def query(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q x D`` queries -> ``(Q x k distances, Q x k bank indices)``, nearest first."""
        squared = queries @ self.scaled_bank_t + self.bank_sq[None, :]
        if k == 1:  # ReduceMin + ArgMin: TopK over every bank row costs far more in onnxruntime
            value, index = squared.min(dim=1, keepdim=True)
        else:
            value, index = squared.topk(k, dim=1, largest=False)
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

    A query whose true nearest row lies in a cluster it does not probe gets a farther row: its distance is an
    upper bound of the exact one. Where the probed clusters hold fewer than ``k`` rows, that query is searched
    exactly. ``centroids`` given (a saved model's) are used as they are instead of running k-means again.
    """

    def __init__(self, probes: int = 8, seed: int = 0, centroids: torch.Tensor | None = None) -> None:
        self.probes = probes
        self.seed = seed
        self.given_centroids = centroids

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
        assignment = torch.cat(
            [pairwise_squared_distances(part, self.centroids).argmin(1) for part in bank.split(4096)]
        )
        order = torch.argsort(assignment, stable=True)
        counts = torch.bincount(assignment, minlength=self.centroids.shape[0]).tolist()
        self.rows = list(order.split(counts))  # bank rows of each cluster
        self.blocks = [(-2.0 * bank[rows]).T.contiguous() for rows in self.rows]  # D x rows: the products' operand
        self.block_sq = [bank[rows].pow(2).sum(1) for rows in self.rows]
        self.exact = TorchSearch().fit(self.bank)
        self.coarse = TorchSearch().fit(self.centroids)
        return self

    def query(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q x D`` queries -> ``(Q x k distances, Q x k bank indices)``, nearest first."""
        count = queries.shape[0]
        _, probed = self.coarse.query(queries, k=min(self.probes, self.centroids.shape[0]))
        flat_clusters = probed.reshape(-1)
        order = torch.argsort(flat_clusters, stable=True)
        probing = torch.arange(count, device=queries.device).repeat_interleave(probed.shape[1])[order]
        per_cluster = torch.bincount(flat_clusters, minlength=len(self.rows)).tolist()
        best = torch.full((count, k), math.inf, device=queries.device, dtype=queries.dtype)
        best_index = torch.full((count, k), -1, device=queries.device, dtype=torch.int64)
        query_sq = queries.pow(2).sum(1)
        for cluster, asking in enumerate(probing.split(per_cluster)):
            if asking.numel() == 0 or self.rows[cluster].numel() == 0:
                continue
            squared = torch.mm(queries[asking], self.blocks[cluster])
            squared += self.block_sq[cluster]
            squared += query_sq[asking, None]
            if k == 1:
                found, where = squared.min(dim=1, keepdim=True)
                nearer = found[:, 0] < best[asking, 0]
                asking, found, where = asking[nearer], found[nearer], where[nearer]
                best[asking], best_index[asking] = found, self.rows[cluster][where]
                continue
            found, where = squared.topk(min(k, squared.shape[1]), dim=1, largest=False)
            merged = torch.cat([best[asking], found], dim=1)
            merged_index = torch.cat([best_index[asking], self.rows[cluster][where]], dim=1)
            kept, position = merged.topk(k, dim=1, largest=False)
            best[asking], best_index[asking] = kept, merged_index.gather(1, position)
        short = (best_index < 0).any(dim=1).nonzero()[:, 0]
        if short.numel():
            best[short], best_index[short] = self.exact.query(queries[short], k)
            best[short] = best[short].square()
        return best.clamp_(min=0.0).sqrt_(), best_index


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
