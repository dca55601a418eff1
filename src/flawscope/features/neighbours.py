"""Nearest-neighbour search over a memory bank, behind one small interface.

``TorchSearch`` computes exact Euclidean distances with one matrix product per chunk of queries;
the chunk size keeps the distance block under ``memory_budget_mb``, so memory stays bounded
whatever the bank size, and it runs on CPU and CUDA. ``FaissSearch`` uses a faiss
``IndexFlatL2`` (exact, CPU) with its BLAS kernel. ``"auto"`` picks faiss for a CPU model and torch
for a CUDA one. Both answer ``query(x, k) -> (distances, indices)``.

faiss uses its BLAS kernel only from ``distance_compute_blas_threshold`` queries on (128,000 in
faiss 1.15); below, a per-query SIMD scan. For PatchCore's 784 queries of one 224 px image against
a 15,680-row bank of 152 dimensions the scan takes 134 ms and the BLAS kernel 31 ms on a 2-core CPU
(torch: 69 ms), so :class:`FaissSearch` asks for BLAS during its own searches and restores the
setting afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from flawscope.errors import ConfigError

SEARCH_BACKENDS = ("auto", "torch", "faiss")


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


def make_search(backend: str, device: torch.device) -> Search:
    """The search object for ``backend`` ('auto', 'torch' or 'faiss') on ``device``."""
    if backend == "auto":
        backend = "torch" if device.type == "cuda" else "faiss"
    if backend == "torch":
        return TorchSearch()
    if backend == "faiss":
        return FaissSearch()
    raise ConfigError(f"Unknown search backend {backend!r}; choose one of {SEARCH_BACKENDS}.")
