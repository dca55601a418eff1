import numpy as np
import pytest
import torch

import flawscope as fs
from flawscope.data.synthetic import make_texture_set
from flawscope.devices import native_bfloat16
from flawscope.features.coreset import projection_matrix
from flawscope.features.neighbours import ClusteredSearch, GraphSearch, TorchSearch
from flawscope.metrics import auroc, pixel_metrics
from flawscope.models.patchcore import reweighted_scores


def test_detects_synthetic_defects(fitted_patchcore, texture_test):
    prediction = fitted_patchcore.predict(texture_test, progress=False)
    assert auroc(texture_test.labels, prediction.scores) >= 0.95
    masks = [sample.read_mask(m.shape) for sample, m in zip(texture_test, prediction.anomaly_maps)]
    assert pixel_metrics(prediction.anomaly_maps, masks)["pixel_auroc"] >= 0.9


def test_maps_come_back_at_each_image_size(fitted_patchcore):
    images = [make_texture_set(1, 0, size=size, seed=5)[0].image for size in ((70, 130), (150, 60))]
    prediction = fitted_patchcore.predict(images, progress=False)
    assert [m.shape for m in prediction.anomaly_maps] == [(70, 130), (150, 60)]
    assert all(m.dtype == np.float32 for m in prediction.anomaly_maps)


def test_image_score_is_the_largest_patch_distance(fitted_patchcore, texture_test):
    batch = fitted_patchcore._to_tensor([np.asarray(texture_test[15].image, np.float32)[..., None] / 255])
    with torch.inference_mode():
        patches = fitted_patchcore._patch_features(batch)
        queries = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
        exact = torch.cdist(queries, fitted_patchcore.memory_bank_).min(1).values.max()
        score, _ = fitted_patchcore._score_batch(batch)
    assert float(score[0]) == pytest.approx(float(exact), rel=1e-4)


def test_the_neighbourhood_is_the_window_each_feature_map_is_averaged_over(texture_train, texture_test):
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.2, neighbourhood=5, device="cpu")
    model.fit(texture_train, progress=False)
    batch = model._to_tensor([np.asarray(texture_test[15].image, np.float32)[..., None] / 255])
    with torch.inference_mode():
        finer = model.extractor_(batch)[0]  # 1 x 40 x 8 x 8: the finer stage is not resampled
        patches = model._patch_features(batch)
    torch.testing.assert_close(patches[0, :40, 3, 4], finer[0, :, 1:6, 2:7].mean((1, 2)), rtol=1e-5, atol=1e-6)
    assert auroc(texture_test.labels, model.predict(texture_test, progress=False).scores) >= 0.9
    with pytest.raises(fs.ConfigError, match=r"neighbourhood.*odd"):
        fs.create("patchcore", image_size=64, neighbourhood=4).fit(texture_train, progress=False)


def test_search_backends_agree(texture_train, texture_test):
    scores = {}
    for backend in ("torch", "faiss"):
        model = fs.create("patchcore", image_size=64, coreset_ratio=0.2, search=backend, device="cpu")
        scores[backend] = model.fit(texture_train, progress=False).predict(texture_test, progress=False).scores
    np.testing.assert_allclose(scores["torch"], scores["faiss"], rtol=1e-4)


def test_faiss_search_is_exact_and_restores_its_setting():
    import faiss

    from flawscope.features.neighbours import FaissSearch

    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(3000, 16, generator=generator), torch.randn(500, 16, generator=generator)
    before = faiss.cvar.distance_compute_blas_threshold
    distance, nearest = FaissSearch().fit(bank).query(queries, k=2)
    assert faiss.cvar.distance_compute_blas_threshold == before
    expected = torch.cdist(queries, bank).topk(2, largest=False)
    torch.testing.assert_close(nearest, expected.indices)
    torch.testing.assert_close(distance, expected.values, rtol=1e-4, atol=1e-4)


def _clustered_points(count: int, generator: torch.Generator, centres: torch.Tensor) -> torch.Tensor:
    return centres[torch.randint(centres.shape[0], (count,), generator=generator)] + torch.randn(
        count, centres.shape[1], generator=generator
    )


@pytest.mark.parametrize("ranking_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3])
def test_the_inverted_file_finds_nearly_every_nearest_row_and_never_a_nearer_one_than_exists(k, ranking_dtype):
    """Known answers: probing every cluster is the exact search; probing a few finds the exact nearest rows for
    nearly every query, and a missed one is a farther row at its true distance (an upper bound). Rows ranked in
    bfloat16 are measured in float32: the distances are exact whatever the ranking's precision."""
    generator = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(40, 24, generator=generator)
    bank, queries = _clustered_points(3000, generator, centres), _clustered_points(700, generator, centres)
    expected = torch.cdist(queries, bank).topk(k, largest=False)
    search = ClusteredSearch(probes=4, seed=0, ranking_dtype=ranking_dtype).fit(bank)
    assert search.centroids.shape == (55, 24)  # about sqrt(3,000) clusters
    distance, nearest = search.query(queries, k)
    assert float((nearest[:, 0] == expected.indices[:, 0]).float().mean()) > 0.97
    torch.testing.assert_close(distance, torch.cdist(queries, bank).gather(1, nearest), rtol=1e-4, atol=1e-4)
    assert bool((distance >= expected.values - 1e-4).all())
    everything = ClusteredSearch(probes=55, seed=0, ranking_dtype=ranking_dtype).fit(bank).query(queries, k)
    if ranking_dtype == torch.float32:
        torch.testing.assert_close(everything[1], expected.indices)
        torch.testing.assert_close(everything[0], expected.values, rtol=1e-4, atol=1e-4)
    else:  # rows nearer than bfloat16's rounding of each other (0.4 % of a squared distance) may swap
        assert float((everything[1] == expected.indices).float().mean()) > 0.99
        torch.testing.assert_close(everything[0], expected.values, rtol=4e-3, atol=1e-4)


def test_the_inverted_file_searches_exactly_where_its_clusters_hold_fewer_than_k_rows():
    generator = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(50, 8, generator=generator), torch.randn(20, 8, generator=generator)
    distance, nearest = ClusteredSearch(probes=1, seed=0).fit(bank).query(queries, k=12)
    expected = torch.cdist(queries, bank).topk(12, largest=False)
    torch.testing.assert_close(nearest, expected.indices)
    torch.testing.assert_close(distance, expected.values, rtol=1e-4, atol=1e-4)


def test_an_ivf_patchcore_detects_like_the_exact_one_and_loads_its_clusters(texture_train, texture_test, tmp_path):
    exact = fs.create("patchcore", image_size=64, coreset_ratio=0.25, device="cpu").fit(texture_train, progress=False)
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.25, search="ivf", search_probes=2, device="cpu")
    model.fit(texture_train, progress=False)
    found, expected = model.predict(texture_test, progress=False), exact.predict(texture_test, progress=False)
    # never nearer than the exact search (up to float32 rounding of the exact search's |q|^2 - 2 q.r + |r|^2)
    assert bool((found.scores >= expected.scores * (1 - 1e-4)).all())
    assert auroc(texture_test.labels, found.scores) >= auroc(texture_test.labels, expected.scores) - 0.02
    model.save(tmp_path / "model")
    loaded = fs.load(tmp_path / "model")
    torch.testing.assert_close(loaded.search_index_.centroids, model.search_index_.centroids)
    np.testing.assert_array_equal(loaded.predict(texture_test, progress=False).scores, found.scores)


def test_the_openvino_engine_scores_as_torch_does_saves_loads_and_exports(texture_train, texture_test, tmp_path):
    """OpenVINO runs the backbone (features within 1e-4 of torch's), the model saves and loads with it, and the
    export traces the torch modules all the same."""
    pytest.importorskip("openvino", reason="the 'openvino' extra is not installed")
    params = {"image_size": 64, "coreset_ratio": 0.25, "device": "cpu"}
    torch_run = fs.create("patchcore", **params).fit(texture_train, progress=False)
    model = fs.create("patchcore", **params, engine="openvino").fit(texture_train, progress=False)
    assert model.extractor_.engine == "openvino"
    expected, found = torch_run.predict(texture_test, progress=False), model.predict(texture_test, progress=False)
    np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-3)
    model.save(tmp_path / "model")
    loaded = fs.load(tmp_path / "model")
    assert loaded.engine == "openvino" and loaded.extractor_.engine == "openvino"
    np.testing.assert_allclose(loaded.predict(texture_test, progress=False).scores, found.scores, rtol=1e-5)
    model.export(tmp_path / "export")
    assert model.extractor_.engine == "openvino"
    np.testing.assert_allclose(model.predict(texture_test, progress=False).scores, found.scores, rtol=1e-5)
    with pytest.raises(fs.ConfigError, match="engine must be one of"):
        model.extractor_.use_engine("tensorrt")


def test_the_bfloat16_openvino_engine_detects_where_the_cpu_has_bfloat16_and_is_refused_elsewhere(
    texture_train, texture_test
):
    """Features about 1 % off float32 (so scores within a few %), defects found as well; a CPU without bfloat16
    arithmetic refuses it before fitting rather than emulating it slowly."""
    pytest.importorskip("openvino", reason="the 'openvino' extra is not installed")
    params = {"image_size": 64, "coreset_ratio": 0.25, "device": "cpu"}
    model = fs.create("patchcore", **params, engine="openvino-bf16")
    if not native_bfloat16():
        with pytest.raises(fs.ConfigError, match="AVX512-BF16 or AMX"):
            model.fit(texture_train, progress=False)
        return
    found = model.fit(texture_train, progress=False).predict(texture_test, progress=False)
    expected = fs.create("patchcore", **params, engine="openvino").fit(texture_train, progress=False)
    expected_scores = expected.predict(texture_test, progress=False).scores
    np.testing.assert_allclose(found.scores, expected_scores, rtol=0.1)
    assert not np.allclose(found.scores, expected_scores, rtol=1e-5)  # it did compute in bfloat16
    assert auroc(texture_test.labels, found.scores) >= auroc(texture_test.labels, expected_scores) - 0.02


@pytest.mark.parametrize("k", [1, 4])
def test_graph_search_in_chunks_finds_the_exact_neighbours(k):
    """The exported graph's search takes the bank in chunks (the last one shorter, one shorter than k); each chunk's
    nearest rows, then the nearest of those, are the exact search's: same rows, same distances."""
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(203, 8, generator=generator), torch.randn(40, 8, generator=generator)
    expected_distance, expected_index = TorchSearch().fit(bank).query(queries, k=k)
    search = GraphSearch(chunk_rows=50).fit(bank)
    assert [len(rows_sq) for _, rows_sq in search.chunks] == [50, 50, 50, 50, 3]
    distance, index = search.query(queries, k=k)
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(distance, expected_distance, rtol=1e-5, atol=1e-5)


def test_reweighting_matches_equation_7():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 4, generator=generator)
    features = torch.randn(1, 6, 4, generator=generator)
    search = TorchSearch().fit(bank)
    distance, nearest = search.query(features[0], k=1)
    patch_scores, nearest = distance[:, 0][None], nearest[:, 0][None]
    score = reweighted_scores(features, patch_scores, nearest, bank, search, neighbours=3)
    worst = int(patch_scores.argmax())
    m_test, m_star = features[0, worst], bank[nearest[0, worst]]
    support = torch.cdist(m_star[None], bank)[0].topk(3, largest=False).indices
    exp_sum = torch.exp((bank[support] - m_test).norm(dim=1)).sum()
    expected = (1 - torch.exp((m_test - m_star).norm()) / exp_sum) * patch_scores.max()
    assert float(score[0]) == pytest.approx(float(expected), rel=1e-5)


def test_reweight_option_changes_scores_but_keeps_detection(texture_train, texture_test):
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.2, reweight=True, device="cpu")
    scores = model.fit(texture_train, progress=False).predict(texture_test, progress=False).scores
    assert auroc(texture_test.labels, scores) >= 0.9


def test_calibrated_prediction_has_labels_masks_and_boxes(texture_train, texture_test):
    model = fs.create("patchcore", image_size=96, coreset_ratio=0.25, device="cpu")
    model.fit(texture_train[:8], progress=False).calibrate(texture_train[8:], rule="sigma", k=3, progress=False)
    prediction = model.predict(texture_test, progress=False)
    assert prediction.labels.dtype == bool and prediction.threshold == model.threshold_
    defective = texture_test.labels == 1
    assert prediction.labels[defective].mean() >= 0.8
    found = [i for i in np.flatnonzero(defective) if prediction.boxes[i]]
    assert len(found) >= 8
    for i in found:  # the strongest box overlaps the true defect
        x0, y0, x1, y1, _ = prediction.boxes[i][0]
        assert texture_test[i].mask[y0:y1, x0:x1].any()


def test_input_shape_keeps_the_aspect_ratio_of_long_parts(texture_train):
    long_images = [sample.image[:, :40].repeat(3, axis=1) for sample in texture_train.samples[:6]]  # 96 x 120
    wide = [np.concatenate([image, image], axis=1) for image in long_images]  # 96 x 240: 2.5 times wider
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.5, input_shape="auto", device="cpu")
    model.fit(wide, progress=False)
    assert model.input_shape_ == "aspect" and model._input_size(96, 240) == (64, 160)
    squashed = fs.create("patchcore", image_size=64, device="cpu").fit(wide, progress=False)  # the default
    assert squashed.input_shape_ == "square" and squashed.memory_bank_.shape[0] < model.memory_bank_.shape[0]
    prediction = model.predict([wide[0], texture_train.samples[0].image], progress=False)  # two input sizes
    assert [m.shape for m in prediction.anomaly_maps] == [(96, 240), (96, 96)]
    square_images = fs.create("patchcore", image_size=64, input_shape="auto", device="cpu")
    assert square_images.fit(texture_train, progress=False).input_shape_ == "square"  # "auto" keeps squares square
    with pytest.raises(fs.ConfigError, match="needs training images of one size"):
        fs.create("patchcore", image_size=64, input_shape="aspect").fit(wide + long_images, progress=False)


def _projection(model) -> torch.Tensor:
    """The random projection a PatchCore fit selected its coreset in."""
    return projection_matrix(model.memory_bank_.shape[1], model.projection_dim, model._generator())


def test_a_streamed_coreset_covers_every_training_patch_within_its_radius(texture_train):
    params = {"image_size": 64, "coreset_ratio": 0.1, "seed": 0, "batch_size": 4}
    streamed = fs.create("patchcore", **params, coreset_chunk=200).fit(texture_train, progress=False)
    whole = fs.create("patchcore", **params).fit(texture_train, progress=False)
    with torch.inference_mode():
        chunks = list(streamed._feature_chunks(texture_train, len(texture_train), False))
    patches = chunks[0][2] @ _projection(streamed)
    assert streamed._chunk_rows(patches.shape[1]) == 200  # several chunks of 4 images (64 patches each)
    assert abs(streamed.memory_bank_.shape[0] - whole.memory_bank_.shape[0]) <= len(texture_train) // 4
    nearest = torch.cdist(patches, streamed.memory_bank_ @ _projection(streamed)).min(dim=1).values
    assert float(nearest.max()) <= streamed.coverage_radius_ * (1 + 1e-4) + 1e-5
    assert float(nearest.max()) > 0.5 * streamed.coverage_radius_  # the radius is attained, not a loose bound


def test_a_streamed_full_bank_keeps_every_patch_of_every_image(texture_train):
    params = {"image_size": 64, "coreset_ratio": 1.0, "seed": 0, "batch_size": 4}
    streamed = fs.create("patchcore", **params, coreset_chunk=100).fit(texture_train, progress=False)
    whole = fs.create("patchcore", **params).fit(texture_train, progress=False)
    assert torch.equal(streamed.memory_bank_, whole.memory_bank_)
    assert torch.equal(streamed._bank_sources, torch.arange(len(texture_train)).repeat_interleave(64))


def test_the_fit_says_its_memory_and_refuses_one_that_cannot_fit_before_extracting(texture_train, monkeypatch, capsys):
    import flawscope.models.patchcore as patchcore

    fs.create("patchcore", image_size=64).fit(texture_train[:4], progress=True)
    assert "4 images x 64 patches -> memory bank of about 26 x 152" in capsys.readouterr().err
    monkeypatch.setattr(patchcore, "available_mib", lambda: 100.0)
    monkeypatch.setattr(patchcore.PatchCore, "_feature_chunks", lambda *_: pytest.fail("features were extracted"))
    with pytest.raises(
        fs.ConfigError, match=r"would need about .* MiB .* but 100 MiB are available\. Lower coreset_ratio"
    ):
        fs.create("patchcore", image_size=64).fit(texture_train, progress=False)
