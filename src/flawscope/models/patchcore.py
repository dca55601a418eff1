"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Recipe: locally aware patch features from two mid-level backbone stages (3x3 neighbourhood
average, the deeper map upsampled to the finer one, concatenated); a memory bank of the patch
features of all good training images reduced by greedy k-center coreset selection (10 % by
default, on a 128-d random projection); each test patch scored by its Euclidean distance to the
nearest memory-bank patch; image score = the largest patch score (optionally re-weighted as in
eq. 7 of the paper); anomaly map = patch scores upsampled bilinearly to the input size and
smoothed with a Gaussian of sigma 4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from flawscope._memory import available_mib
from flawscope._progress import notice
from flawscope._validation import BOOLEAN, Check, Interval, Options
from flawscope.data.datasets import ImageDataset
from flawscope.data.io import image_size
from flawscope.data.sizes import aspect_size
from flawscope.data.transforms import ASPECT_FROM, INPUT_SHAPES, PHOTOMETRIC, photometric_normalise
from flawscope.errors import ConfigError, DataError
from flawscope.features.coreset import coreset_with_radius, greedy_extension, projection_matrix
from flawscope.features.extractor import ENGINES, local_patch_features, patch_rows
from flawscope.features.neighbours import SEARCH_BACKENDS, ClusteredSearch, GraphSearch, Search, make_search
from flawscope.maps import gaussian_blur, upsample_maps
from flawscope.models.base import BACKBONE_CONSTRAINTS, RUN_CONSTRAINTS, BackboneDetector
from flawscope.models.registry import UPDATABLE, register_detector
from flawscope.state import checked_tensor

CHUNK_BYTES = 256 * 2**20  # the most full-dimension patch features held for one coreset selection
FIT_BASELINE_MIB = 900  # what a fitting process holds beside the features (torch, the backbone, a batch): measured
OUT_OF_GROUP_NEIGHBOURS = 16  # nearest bank rows searched for one outside the query's own group
OUT_OF_GROUP_CHUNK = 256  # queries searched at once over the whole bank when none of those is outside it
ODD = Check(
    lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value % 2 == 1,
    "an odd int >= 1 (a window with a centre patch)",
)


def reweighted_scores(
    patch_features: torch.Tensor,
    patch_scores: torch.Tensor,
    nearest: torch.Tensor,
    memory_bank: torch.Tensor,
    search,
    neighbours: int,
) -> torch.Tensor:
    """Image scores with the paper's re-weighting (eq. 7).

    For each image, ``m_test`` is its most anomalous patch and ``m*`` its nearest memory-bank
    patch; with ``N_b(m*)`` the ``neighbours`` nearest bank patches of ``m*`` (``m*`` included),
    the score ``s* = |m_test - m*|`` becomes
    ``(1 - exp|m_test - m*| / sum_{m in N_b(m*)} exp|m_test - m|) * s*``.

    Args: ``patch_features`` B x P x D, ``patch_scores`` B x P, ``nearest`` B x P bank indices.
    Returns: ``(B,)`` scores.
    """
    best_score, best_patch = patch_scores.max(dim=1)
    rows = torch.arange(patch_features.shape[0], device=patch_features.device)
    test_patch = patch_features[rows, best_patch]  # B x D
    bank_patch = memory_bank[nearest[rows, best_patch]]  # B x D
    _, support = search.query(bank_patch, k=min(neighbours, memory_bank.shape[0]))  # B x b
    support_distance = (memory_bank[support] - test_patch[:, None, :]).norm(dim=2)  # B x b
    exp_all = torch.exp(support_distance - best_score[:, None]).sum(1)
    weight = 1.0 - 1.0 / exp_all  # exp(s*) / sum exp(d), computed stably relative to s*
    return weight * best_score


class PatchCore(BackboneDetector):
    """PatchCore: nearest-neighbour distance of patch features to a coreset memory bank.

    Parameters
    ----------
    backbone : str
        timm architecture; ``tf_efficientnet_lite0`` (default) has offline ImageNet weights.
    layers : sequence of int
        timm ``out_indices`` of the two mid-level stages (EfficientNet-Lite: 2 and 3, strides 8
        and 16; ResNet/WRN-50: 2 and 3 = layer2 and layer3).
    weights : str or None
        ``None`` for the offline weights of the EfficientNet-Lite backbones, a weights file, or
        ``"hub"`` (download).
    neighbourhood : int
        Side ``p`` of the window each feature map is averaged over (the paper's patch size; odd, default 3 as the
        paper; 1 = no aggregation).
    image_size : int
        Images are resized to ``image_size x image_size`` (nothing cropped), or with ``input_shape``
        keeping their aspect ratio, to a short side of ``image_size``.
    coreset_ratio : float in (0, 1]
        Fraction of training patches kept in the memory bank (paper: 0.1, 0.01 or 0.25).
    coreset_chunk : int
        Training patches per coreset selection: the patches of the training images stream through the selection
        in chunks of about this many (whole images; fewer where their features would exceed 256 MiB), and the
        memory bank is the union of each chunk's ``coreset_ratio``. Fit time then grows linearly with the number
        of images and memory is bounded by one chunk and the bank. A training set of fewer patches gets one
        selection over all of them, as in the paper.
    projection_dim : int
        Dimension of the random projection used only while selecting the coreset (paper: 128).
    reweight : bool
        Apply the paper's image-score re-weighting (eq. 7) with ``reweight_neighbours`` neighbours.
    smoothing_sigma : float
        Gaussian sigma, in pixels of the input size, for the anomaly map (paper: 4; 0 = none).
    search : {'auto', 'torch', 'faiss', 'ivf'}
        Nearest-neighbour search. ``auto`` (faiss on CPU, torch on CUDA), ``torch`` and ``faiss`` are exact;
        ``ivf`` is approximate and several times faster: the bank split into about sqrt(rows) clusters by seeded
        k-means, each patch compared with the rows of its ``search_probes`` nearest clusters only
        (:class:`~flawscope.features.neighbours.ClusteredSearch`). A patch whose nearest row it misses scores
        a little higher (its distance to a farther row). A model with an ``ivf`` search is not exported.
    search_probes : int
        Clusters an ``ivf`` search compares each patch with (more: closer to exact, slower).
    engine : {'torch', 'openvino', 'openvino-bf16'}
        What runs the backbone: torch, or OpenVINO's CPU runtime (the ``openvino`` extra; CPU only), 2 to 3 times
        faster on a 2-core CPU, with features within 1e-4 of torch's. Converting the backbone takes about 2 s at
        each fit and load. ``openvino-bf16``: OpenVINO computing in bfloat16, about twice as fast again with features
        about 1 % off (image AUROC within 0.003 of float32 on ELPV and magnetic tile); only on a CPU with AVX512-BF16
        or AMX (refused elsewhere).
    score_top_k : int
        Image score = the mean of the ``score_top_k`` largest patch scores (1, the default: the
        largest, as the paper; with ``reweight``, the paper's re-weighted largest).
    input_shape : {'auto', 'square', 'aspect'}
        ``square`` (default): every image squashed to ``image_size`` squared (the paper). ``aspect``:
        the short side at ``image_size``, the long side the nearest multiple of 32 of the aspect
        ratio, so thin defects of long parts keep their pixels (training images must share one
        size). ``auto``: ``aspect`` when every training image has one size at least 1.5 times longer
        than wide. Measured on bsdata (1130 x 460 px, tiny pits): ``aspect`` raises AUPRO from 0.776
        to 0.833 but lowers image AUROC from 0.870 to 0.851 and fits 5.5 times slower (2.4 times
        the patches), so it is not the default.
    photometric : {'none', 'standardise', 'equalise'}
        Per-image brightness and contrast normalisation before the backbone
        (:func:`flawscope.data.transforms.photometric_normalise`).
    batch_size : int
        Images per forward pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the coreset's start point and random projection.
    """

    # fast: the inverted-file search and the OpenVINO backbone, within 0.005 image and pixel AUROC of the exact
    # default on ELPV mono and magnetic tile at 2.5 to 6 times its images/s (benchmarks/patchcore_frontier.py)
    presets = {"fast": {"search": "ivf", "engine": "openvino"}}

    coverage_radius_: float | None  # None in models saved before flawscope 0.2
    _bank_sources: torch.Tensor | None

    _parameter_constraints = {
        **BACKBONE_CONSTRAINTS,
        "neighbourhood": [ODD],
        "image_size": [Interval(int, 32, 4096)],
        "coreset_ratio": [Interval(float, 0.0, 1.0, "right")],
        "coreset_chunk": [Interval(int, 1, None)],
        "projection_dim": [Interval(int, 1, None)],
        "reweight": [BOOLEAN],
        "reweight_neighbours": [Interval(int, 1, None)],
        "smoothing_sigma": [Interval(float, 0.0, None)],
        "score_top_k": [Interval(int, 1, None)],
        "photometric": [Options(PHOTOMETRIC)],
        "input_shape": [Options(INPUT_SHAPES)],
        "search": [Options(SEARCH_BACKENDS)],
        "search_probes": [Interval(int, 1, None)],
        "engine": [Options(ENGINES)],
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (2, 3),
        weights: str | None = None,
        neighbourhood: int = 3,
        image_size: int = 224,
        coreset_ratio: float = 0.1,
        coreset_chunk: int = 16_384,
        projection_dim: int = 128,
        reweight: bool = False,
        reweight_neighbours: int = 9,
        smoothing_sigma: float = 4.0,
        search: str = "auto",
        search_probes: int = 8,
        engine: str = "torch",
        score_top_k: int = 1,
        photometric: str = "none",
        input_shape: str = "square",
        batch_size: int = 16,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.neighbourhood = neighbourhood
        self.weights = weights
        self.image_size = image_size
        self.coreset_ratio = coreset_ratio
        self.coreset_chunk = coreset_chunk
        self.projection_dim = projection_dim
        self.reweight = reweight
        self.reweight_neighbours = reweight_neighbours
        self.smoothing_sigma = smoothing_sigma
        self.search = search
        self.search_probes = search_probes
        self.engine = engine
        self.score_top_k = score_top_k
        self.photometric = photometric
        self.input_shape = input_shape
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _backbone_engine(self) -> str:
        return self.engine

    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        return super()._model_input(photometric_normalise(images, self.photometric))

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        if getattr(self, "input_shape_", "square") == "aspect":
            return aspect_size(height, width, self.image_size)
        return self.image_size, self.image_size

    def _resolve_input_shape(self, dataset: ImageDataset) -> str:
        """``"square"`` or ``"aspect"`` for these training images (``input_shape="auto"``: the aspect ratio is
        kept when every training image has one size at least ``ASPECT_FROM`` times longer than wide)."""
        if self.input_shape == "square":
            return "square"
        sizes = {image_size(sample.image) for sample in dataset.samples}
        uniform = len(sizes) == 1
        if self.input_shape == "aspect":
            if not uniform:
                raise ConfigError(
                    f"input_shape='aspect' needs training images of one size; these have {len(sizes)} sizes "
                    "(e.g. {}). Use input_shape='square'.".format(", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3]))
                )
            return "aspect"
        height, width = next(iter(sizes))
        return "aspect" if uniform and max(height, width) >= ASPECT_FROM * min(height, width) else "square"

    # ------------------------------------------------------------------ features
    def _patch_features(self, batch: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` -> ``B x D x h x w`` locally aware patch features."""
        return local_patch_features(self.extractor_(batch), self.neighbourhood).float()

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        """Stream the training patches through the coreset selection, one chunk of images at a time.

        The patch features of up to ``coreset_chunk`` patches of whole images (fewer where their full-dimension
        features would take more than ``CHUNK_BYTES``) are extracted, projected, and reduced to ``coreset_ratio``
        of themselves by greedy k-center selection; the memory bank is the union of the chunks' selections -- a
        composable coreset (Indyk et al., PODS 2014): every training patch lies within the largest of the chunks'
        coverage radii of the bank. Each selection is quadratic in its chunk only, so the fit's time grows
        linearly with the number of images, and memory holds one chunk and the bank. Training images that fit in
        one chunk get the paper's single selection.
        """
        self.input_shape_ = self._resolve_input_shape(dataset)
        first = image_size(dataset.samples[0].image)
        # the input size of the training images (one size when the aspect ratio is kept): an exported graph's
        self.input_size_ = list(self._input_size(*first)) if self.input_shape_ == "aspect" else None
        self._build_extractor()
        generator = self._generator()
        dim = sum(self.extractor_.channels)
        matrix = projection_matrix(dim, self.projection_dim, generator)
        per_image = self._patches_per_image(*self._input_size(*first))
        chunk_images = max(1, self._chunk_rows(dim) // per_image)
        self._check_memory(len(dataset), per_image, chunk_images, dim, progress)
        bank, sources, radius = [], [], 0.0
        with torch.inference_mode():
            for first_image, n_images, features in self._feature_chunks(dataset, chunk_images, progress):
                projected = features if matrix is None else features @ matrix.to(features.device)
                selected, chunk_radius = coreset_with_radius(projected, self.coreset_ratio, generator)
                bank.append(features[selected.to(features.device)])
                sources.append(first_image + selected.cpu() // (features.shape[0] // n_images))
                radius = max(radius, chunk_radius)
        self.memory_bank_ = torch.cat(bank).contiguous()
        del bank
        self.coverage_radius_ = radius
        # the training image of each bank row, for out-of-fold scores right after the fit (not saved)
        self._bank_sources = torch.cat(sources).to(torch.int64)
        self.search_index_ = self._search().fit(self.memory_bank_)

    def _search(self, centroids: torch.Tensor | None = None) -> Search:
        """The configured nearest-neighbour search (not yet fitted); ``centroids`` are a saved ``ivf`` search's."""
        return make_search(self.search, self.device_, self.search_probes, self.seed, centroids)

    def _chunk_rows(self, dim: int) -> int:
        """Patches per coreset selection: ``coreset_chunk``, fewer where their features would exceed ``CHUNK_BYTES``."""
        return min(self.coreset_chunk, max(1, CHUNK_BYTES // (4 * dim)))

    def _patches_per_image(self, height: int, width: int) -> int:
        """Patches of an input of this size: positions of the finest feature map used."""
        stride = self.extractor_.reductions[0]
        return -(-height // stride) * -(-width // stride)

    def _check_memory(self, n_images: int, per_image: int, chunk_images: int, dim: int, progress: bool) -> None:
        """Say what the fit will hold in memory; ConfigError, before any feature is extracted, when more than
        the memory available (:func:`flawscope._memory.available_mib`)."""
        bank_rows = max(1, round(self.coreset_ratio * n_images * per_image))
        bank_mib = bank_rows * dim * 4 / 2**20
        chunk_mib = min(chunk_images, n_images) * per_image * dim * 4 * 2 / 2**20  # its batches and their concatenation
        needed_mib = 3 * bank_mib + chunk_mib + FIT_BASELINE_MIB  # the bank, its parts while joined, its search index
        notice(
            f"PatchCore: {n_images} images x {per_image} patches -> memory bank of about {bank_rows:,} x {dim} "
            f"({bank_mib:,.0f} MiB); peak memory about {needed_mib:,.0f} MiB",
            progress,
        )
        available = available_mib()
        if available is not None and needed_mib > available:
            raise ConfigError(
                f"PatchCore would need about {needed_mib:,.0f} MiB to fit on {n_images} images (a memory bank of "
                f"{bank_rows:,} patches x {dim} features, its search index, and chunks of {chunk_images} images), but "
                f"{available:,.0f} MiB are available. Lower coreset_ratio (now {self.coreset_ratio}), image_size "
                f"(now {self.image_size}) or coreset_chunk (now {self.coreset_chunk}), or fit on fewer images."
            )

    def _feature_chunks(
        self, dataset: ImageDataset, chunk_images: int, progress: bool
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(index of its first image, its number of images, patch features (rows x D))`` of chunks of at least
        ``chunk_images`` whole images (whole batches), in order."""
        pending: list[torch.Tensor] = []
        first = count = 0
        for batch in self._training_batches(dataset, "memory bank", progress):
            pending.append(patch_rows(self._patch_features(batch)))
            count += batch.shape[0]
            if count >= chunk_images:
                yield first, count, torch.cat(pending)
                pending, first, count = [], first + count, 0
        if pending:
            yield first, count, torch.cat(pending)

    def _update(self, dataset: ImageDataset, progress: bool) -> dict[str, Any]:
        """Add the new images' patches that the memory bank covers worst.

        Greedy k-center selection continues from the present bank, in the fit's random projection: the new
        patch farthest from the bank and from every patch added so far is added next, until every new patch
        lies within the fit's coverage radius of the bank -- the largest distance any training patch was left
        from it, so the new images end up covered as well as the training images were (and score like them).
        The bank grows only where the new images show something it did not cover: by nothing for images it
        covers already, by up to every patch of an image unlike anything it holds. With ``coreset_ratio=1``
        (radius 0) every new patch is added and the model equals a fit on all the images. A model saved
        before the radius was kept adds ``coreset_ratio`` of the new patches, farthest first.
        """
        matrix = projection_matrix(self.memory_bank_.shape[1], self.projection_dim, self._generator())
        with torch.inference_mode():
            new_patches = torch.cat([rows for _, _, rows in self._feature_chunks(dataset, len(dataset), progress)])
        projection = None if matrix is None else matrix.to(self.device_)
        projected_bank = self.memory_bank_ if projection is None else self.memory_bank_ @ projection
        projected_new = new_patches if projection is None else new_patches @ projection
        distance, _ = self._search().fit(projected_bank).query(projected_new, k=1)
        if self.coverage_radius_ is None:
            most, radius = max(1, round(self.coreset_ratio * new_patches.shape[0])), 0.0
        else:
            most, radius = new_patches.shape[0], self.coverage_radius_
        added = greedy_extension(projected_new, distance[:, 0], most, radius, progress).to(self.device_)
        self.memory_bank_ = torch.cat([self.memory_bank_, new_patches[added]]).contiguous()
        self.search_index_ = self._search().fit(self.memory_bank_)
        self._bank_sources = None
        return {"bank_rows_added": int(added.numel()), "bank_rows": int(self.memory_bank_.shape[0])}

    # ------------------------------------------------------------------ predict
    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self._patch_features(batch)
        queries = patch_rows(patches)
        distance, nearest = self.search_index_.query(queries, k=1)
        return self._scores_and_maps(patches, queries, distance[:, 0], nearest[:, 0], batch.shape[2:])

    def _scores_and_maps(
        self,
        patches: torch.Tensor,
        queries: torch.Tensor,
        distance: torch.Tensor,
        nearest: torch.Tensor,
        size: tuple[int, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores and smoothed maps at ``size`` from each patch's distance to (and index of) its
        nearest memory-bank patch; ``patches`` is ``B x D x h x w``, ``queries`` its rows."""
        count, dim, height, width = patches.shape
        patch_scores = distance.reshape(count, height * width)
        if self.reweight:
            scores = reweighted_scores(
                queries.reshape(count, height * width, dim),
                patch_scores,
                nearest.reshape(count, -1),
                self.memory_bank_,
                self.search_index_,
                self.reweight_neighbours,
            )
        else:
            scores = patch_scores.topk(min(self.score_top_k, patch_scores.shape[1]), dim=1).values.mean(dim=1)
        maps = upsample_maps(patch_scores.reshape(count, height, width), (size[0], size[1]))
        return scores, gaussian_blur(maps, self.smoothing_sigma)

    def _out_of_fold_scores(
        self, dataset: ImageDataset, groups: list[str], n_folds: int, progress: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every training image scored as if its group had not been seen.

        With the full memory bank (``coreset_ratio=1``) exactly and without a refit: against the bank
        without the patches of its group's images (``n_folds`` plays no part: every group is its own
        fold; map maxima at the model's input size). With a coreset, leaving a group's rows out of it
        is not the same -- the coreset kept few rows where the group's own rows covered the feature
        space, so the group scores as if it had holes around it (measured on ELPV mono: thresholds far
        above those of modules never seen) -- and the folds are fitted again instead.
        """
        if self.coreset_ratio < 1.0 or self.tile is not None:  # a tiled bank's rows come from tiles, not images
            return super()._out_of_fold_scores(dataset, groups, n_folds, progress)
        sources = getattr(self, "_bank_sources", None)
        if sources is None or sources.shape[0] != self.memory_bank_.shape[0] or int(sources.max()) >= len(dataset):
            raise ConfigError("Out-of-fold scores need the training images this PatchCore was just fitted on.")
        index_of = {group: index for index, group in enumerate(dict.fromkeys(groups))}
        image_groups = torch.tensor([index_of[group] for group in groups])
        bank_groups = image_groups[sources].to(self.device_)
        scores, map_maxima = [], []
        first = 0
        with torch.inference_mode():
            for batch in self._training_batches(dataset, "calibrating", progress):
                patches = self._patch_features(batch)
                queries = patch_rows(patches)
                own = image_groups[first : first + batch.shape[0]].to(self.device_)
                own = own.repeat_interleave(patches.shape[2] * patches.shape[3])
                distance, nearest = self._nearest_outside_group(queries, own, bank_groups)
                batch_scores, maps = self._scores_and_maps(patches, queries, distance, nearest, batch.shape[2:])
                scores.append(batch_scores.cpu())
                map_maxima.append(maps.flatten(1).max(dim=1).values.cpu())
                first += batch.shape[0]
        return torch.cat(scores).double().numpy(), torch.cat(map_maxima).double().numpy()

    def _nearest_outside_group(
        self, queries: torch.Tensor, own: torch.Tensor, bank_groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to and index of each query's nearest bank row of another group than ``own``: the
        first such row of its ``OUT_OF_GROUP_NEIGHBOURS`` nearest, else (all of them in its group, as for
        the patches of an image with augmented views of it) an exact search over the other groups' rows,
        ``OUT_OF_GROUP_CHUNK`` queries at a time."""
        k = min(OUT_OF_GROUP_NEIGHBOURS, self.memory_bank_.shape[0])
        distance, index = self.search_index_.query(queries, k=k)
        outside = bank_groups[index] != own[:, None]
        first = outside.to(torch.int8).argmax(dim=1)
        rows = torch.arange(queries.shape[0], device=queries.device)
        best_distance, best_index = distance[rows, first].clone(), index[rows, first].clone()
        for chunk in torch.nonzero(~outside.any(dim=1)).flatten().split(OUT_OF_GROUP_CHUNK):
            gaps = torch.cdist(queries[chunk], self.memory_bank_, compute_mode="donot_use_mm_for_euclid_dist")
            gaps[bank_groups[None, :] == own[chunk, None]] = torch.inf
            best_distance[chunk], best_index[chunk] = gaps.min(dim=1)
            if torch.isinf(best_distance[chunk]).any():
                raise DataError("Out-of-fold scores need at least 2 groups of training images.")
        return best_distance, best_index

    # ------------------------------------------------------------------ export
    def _export_refusal(self, graph_format: str) -> str | None:
        if self.search != "ivf":
            return None
        return (
            "its search is the approximate inverted file (search='ivf'), which an exported graph does not hold: the "
            "graph searches the bank exactly and would not give this model's scores. Fit it with an exact search "
            "(search='auto') to export it."
        )

    @contextlib.contextmanager
    def _export_context(self) -> Iterator[None]:
        """The exported graph searches the bank in chunks of rows, a MatMul + ReduceMin / ArgMin each
        (:class:`GraphSearch`), and runs the backbone's torch modules (whatever engine runs them here)."""
        search = self.search_index_
        self.search_index_ = GraphSearch().fit(self.memory_bank_)
        try:
            with self.extractor_.running_torch():
                yield
        finally:
            self.search_index_ = search

    def _export_input(self) -> dict[str, Any]:
        if self.input_shape_ != "aspect":
            return super()._export_input()
        if self.input_size_ is None:
            raise ConfigError(
                "This PatchCore keeps the aspect ratio but was saved by an older flawscope without the size of its "
                "training images, which its exported graph takes; fit it again to export it."
            )
        return {"size": self.input_size_, "aspect_short_side": self.image_size}

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"memory_bank": self.memory_bank_}
        if isinstance(self.search_index_, ClusteredSearch):  # the clusters, so a loaded model searches the same rows
            tensors["search_centroids"] = self.search_index_.centroids
        return tensors

    def _state_meta(self) -> dict[str, Any]:
        return {
            **super()._state_meta(),
            "feature_dim": int(self.memory_bank_.shape[1]),
            "input_shape": self.input_shape_,
            "input_size": self.input_size_,
            "coverage_radius": self.coverage_radius_,
        }

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._restore_extractor(meta)
        self.input_shape_ = meta.get("input_shape", "square")  # models of flawscope 0.1 squashed every image
        self.input_size_ = meta.get("input_size")
        self.coverage_radius_ = meta.get("coverage_radius")  # absent in older models: see _update
        bank = checked_tensor(tensors, "memory_bank", (None, sum(self.extractor_.channels)))
        self.memory_bank_ = bank.to(self.device_).contiguous()
        centroids = checked_tensor(tensors, "search_centroids", (None, bank.shape[1])) if self.search == "ivf" else None
        self.search_index_ = self._search(centroids).fit(self.memory_bank_)


register_detector(
    "patchcore", PatchCore, test_params={"image_size": 64, "coreset_ratio": 0.25}, capabilities=[UPDATABLE]
)
