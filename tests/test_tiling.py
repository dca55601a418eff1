"""Tiling (flawscope.tiling): tile grids and windows with known answers, blending without seams, tiled fits that find
small defects a whole-image resize loses, the tiling saved with the model and honoured by the runtime, refusals."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import flawscope as fs
from flawscope.cli import app
from flawscope.data.datasets import ImageDataset, InMemoryDataset, Sample
from flawscope.data.io import ImageTile, load_image, read_image
from flawscope.data.synthetic import make_texture_set, texture
from flawscope.metrics import auroc
from flawscope.models.registry import model_entry
from flawscope.tiling import Tiling, score_in_tiles, tile_dataset

FAST_PATCHCORE = {"image_size": 64, "coreset_ratio": 0.25, "seed": 0}
runner = CliRunner()


def test_tiles_start_every_stride_and_the_last_one_ends_at_the_border():
    tiling = Tiling(256, 32)
    assert tiling.starts(1000) == [0, 224, 448, 672, 744]
    assert tiling.starts(256) == [0]
    assert tiling.starts(480) == [0, 224]
    assert Tiling(100).starts(300) == [0, 100, 200]


def test_the_window_is_one_inside_and_falls_linearly_across_the_overlap():
    window = Tiling(16, 4).window()
    np.testing.assert_allclose(window[:4], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(window[4:12], 1.0)
    np.testing.assert_allclose(window[12:], window[:4][::-1])
    np.testing.assert_array_equal(Tiling(16, 0).window(), np.ones(16))


def test_blending_tile_maps_of_one_image_gives_that_image_back_without_seams():
    """Each tile's map is the tile itself: the blend is a weighted mean of equal values, so any seam, shift or
    missed tile shows as a difference from the image."""
    image = np.random.default_rng(0).random((301, 517, 1)).astype(np.float32)

    def tiles_as_maps(tiles: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        return [(0.0, tile[..., 0]) for tile in tiles]

    for tiling, batch in ((Tiling(64, 16), 5), (Tiling(100, 0), 1), (Tiling(301, 150), 3)):
        score, anomaly_map = score_in_tiles(tiles_as_maps, image, tiling, batch)
        np.testing.assert_allclose(anomaly_map, image[..., 0], atol=1e-6)
        assert score == pytest.approx(float(image.max()))


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_an_eight_bit_image_held_as_uint8_is_tiled_as_its_floats_are(tmp_path, scale):
    """A tiled model keeps an 8-bit image as uint8 (a quarter of the floats) and converts a batch of tiles at a
    time: the tiles, the map and the score are those of the image read as floats."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(230, 310, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "part.png")
    compact = load_image(tmp_path / "part.png", eight_bit=True).pixels
    assert compact.dtype == np.uint8 and compact.shape == (230, 310, 3)
    seen: list[np.ndarray] = []

    def tiles_as_maps(tiles: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        seen.extend(tile.dtype for tile in tiles)
        return [(0.0, tile.mean(axis=2)) for tile in tiles]

    tiling = Tiling(64, 16, scale)
    score, anomaly_map = score_in_tiles(tiles_as_maps, compact, tiling, 4)
    expected_score, expected_map = score_in_tiles(tiles_as_maps, read_image(tmp_path / "part.png"), tiling, 4)
    assert set(seen) == {np.dtype(np.float32)}
    np.testing.assert_allclose(anomaly_map, expected_map, atol=1e-6)
    assert score == pytest.approx(expected_score, abs=1e-6)


def test_at_a_scale_the_map_comes_back_at_the_image_size():
    image = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (200, 1))[..., None]
    seen = []

    def tiles_as_maps(tiles: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        seen.extend(tile.shape for tile in tiles)
        return [(0.0, tile[..., 0]) for tile in tiles]

    _, anomaly_map = score_in_tiles(tiles_as_maps, image, Tiling(50, 10, 0.5), 4)
    assert set(seen) == {(50, 50, 1)}  # cut from the 100 x 200 image
    assert anomaly_map.shape == (200, 400)
    np.testing.assert_allclose(anomaly_map[100, 10:-10], image[100, 10:-10, 0], atol=0.01)


def test_tile_dataset_cuts_every_image_lazily_and_keeps_its_tiles_together(tmp_path):
    path = tmp_path / "part.png"
    pixels = (np.arange(200 * 300) % 251).reshape(200, 300).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    dataset = ImageDataset([Sample(path, "part", 0), Sample(pixels, "array", 0, group="lot 7")], "two")
    tiles = tile_dataset(dataset, Tiling(100, 20))
    assert len(tiles) == 2 * 3 * 4  # rows 0, 80, 100; columns 0, 80, 160, 200
    first = tiles.samples[0]
    assert isinstance(first.image, ImageTile) and first.group == "part" and first.name == "part@0,0"
    assert tiles.samples[-1].group == "lot 7"
    corner = read_image(tiles.samples[5].image)  # row 80, column 80
    np.testing.assert_allclose(corner[..., 0], pixels[80:180, 80:180] / 255.0, atol=1e-7)


def test_an_image_smaller_than_a_tile_is_refused_naming_it():
    small = ImageDataset([Sample(np.zeros((50, 300), np.uint8), "narrow strip", 0)], "small")
    with pytest.raises(fs.DataError, match="narrow strip is 300 x 50 px, smaller than one 64 px tile"):
        tile_dataset(small, Tiling(64))
    with pytest.raises(fs.DataError, match=r"at scale 0\.5"):
        tile_dataset(ImageDataset([Sample(np.zeros((100, 300), np.uint8), "x", 0)], "s"), Tiling(64, 0, 0.5))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tile": 64, "overlap": 40}, "from 0 to half the tile"),
        ({"tile": 8}, "tile size must be a whole number of pixels >= 16"),
        ({"tile": 64, "tile_scale": 9.0}, r"tile scale must be a number in \(0, 4.0\]"),
        ({"tile": 64.5}, "'tile' parameter of PatchCore must be None or an int"),
    ],
)
def test_bad_tiling_parameters_are_refused_at_fit(params, message):
    with pytest.raises(fs.ConfigError, match=message):
        fs.create("patchcore", **params).fit(make_texture_set(1, size=(96, 96)), progress=False)


@pytest.mark.parametrize(("name", "reason"), [("padim", "Gaussians are per position"), ("cam_classifier", "labelled")])
def test_position_bound_and_supervised_methods_refuse_tiling_with_the_reason(name, reason):
    with pytest.raises(fs.ConfigError, match=f"cannot be tiled: .*{reason}"):
        fs.create(name, tile=64).fit(make_texture_set(2, 2, size=(96, 96)), progress=False)


def _panels(count: int, defective: bool, seed: int) -> InMemoryDataset:
    """Wide textures (192 x 576) each with, when ``defective``, a 3 px spot brighter by half the range somewhere."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(count):
        image = texture(rng, (192, 576))
        mask = np.zeros(image.shape, dtype=bool)
        if defective:
            top, left = int(rng.integers(20, 167)), int(rng.integers(20, 551))
            mask[top : top + 3, left : left + 3] = True
            image = np.where(mask, np.clip(image + 0.5, 0.0, 1.0), image)
        images.append(np.round(image * 255).astype(np.uint8))
        masks.append(mask)
    return InMemoryDataset(images, [int(defective)] * count, masks, names=[f"{seed}-{i}" for i in range(count)])


def test_a_tiled_model_finds_small_defects_that_resizing_the_whole_image_loses():
    train = _panels(4, False, seed=1)
    good, defective = _panels(6, False, seed=2), _panels(6, True, seed=3)
    test = ImageDataset(good.samples + defective.samples, "test")
    tiled = fs.create("patchcore", **FAST_PATCHCORE, tile=64, overlap=16).fit(train, progress=False)
    whole = fs.create("patchcore", **FAST_PATCHCORE).fit(train, progress=False)
    tiled_prediction = tiled.predict(test, progress=False)
    tiled_auroc = auroc(test.labels, tiled_prediction.scores)
    assert tiled_auroc >= 0.95
    assert auroc(test.labels, whole.predict(test, progress=False).scores) < 0.75  # 3 px of 576 become 1/3 px of 64
    for sample, anomaly_map in zip(defective.samples, tiled_prediction.anomaly_maps[6:]):
        assert anomaly_map.shape == (192, 576)
        top, left = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
        rows, columns = np.nonzero(sample.mask)
        assert abs(top - rows.mean()) < 12 and abs(left - columns.mean()) < 12  # the peak is at the spot


TILEABLE = [name for name in fs.list_models() if name not in ("padim", "cam_classifier")]


@pytest.mark.parametrize("name", TILEABLE)
def test_every_position_free_method_learns_and_scores_in_tiles(name):
    params = {**model_entry(name).test_params, "tile": 96, "overlap": 16}
    model = fs.create(name, **params).fit(_panels(1, False, seed=1), progress=False)
    assert model.lineage_[0]["tiles"] == 3 * 7  # rows at 0, 80, 96; columns every 80 px to 480
    prediction = model.predict(_panels(2, True, seed=3), progress=False)
    assert [anomaly_map.shape for anomaly_map in prediction.anomaly_maps] == [(192, 576)] * 2
    assert np.isfinite(prediction.scores).all()
    assert prediction.scores.tolist() == [float(anomaly_map.max()) for anomaly_map in prediction.anomaly_maps]


def test_a_tiled_model_saves_loads_and_predicts_alike_with_tiles_in_its_lineage(tmp_path):
    train = _panels(2, False, seed=1)
    model = fs.create("patchcore", **FAST_PATCHCORE, tile=96, overlap=24).fit(train, progress=False)
    assert model.lineage_[0] == {"event": "fit", "images": 2, "tiles": 2 * 3 * 8}
    model.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert {key: config["params"][key] for key in ("tile", "overlap", "tile_scale")} == {
        "tile": 96,
        "overlap": 24,
        "tile_scale": 1.0,
    }
    loaded = fs.load(tmp_path / "model")
    assert loaded.tiling == Tiling(96, 24) and loaded.clone().tiling == Tiling(96, 24)
    test = _panels(2, True, seed=3)
    np.testing.assert_array_equal(
        loaded.predict(test, progress=False).scores, model.predict(test, progress=False).scores
    )


def test_predict_skips_an_image_smaller_than_a_tile_and_scores_the_rest():
    model = fs.create("patchcore", **FAST_PATCHCORE, tile=96).fit(_panels(1, False, seed=1), progress=False)
    images = [np.zeros((64, 64), np.uint8), _panels(1, False, seed=2).samples[0].image]
    prediction = model.predict(images, on_error="skip", progress=False)
    assert len(prediction.scores) == 1
    assert "smaller than one 96 px tile" in next(iter(prediction.errors.values()))


def test_out_of_fold_calibration_of_a_tiled_full_bank_refits_the_folds():
    model = fs.create("patchcore", image_size=64, coreset_ratio=1.0, tile=96, overlap=16)
    model.fit_out_of_fold(_panels(4, False, seed=1), n_folds=2, progress=False)
    assert model.calibration_["scores_from"] == "out of fold, 2 folds" and model.calibration_["n_images"] == 4
    assert model.tiling == Tiling(96, 16)


def test_an_exported_tiled_model_tiles_in_the_runtime_as_the_detector_does(tmp_path):
    pytest.importorskip("onnxruntime")
    from flawscope import runtime

    model = fs.create("patchcore", **FAST_PATCHCORE, tile=96, overlap=24).fit(_panels(2, False, seed=1), progress=False)
    model.export(tmp_path / "export")
    exported = runtime.load(tmp_path / "export")
    assert exported.tiling == Tiling(96, 24)
    test = _panels(2, True, seed=3)
    expected, found = model.predict(test, progress=False), exported.predict(test, progress=False)
    np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-4)
    for theirs, ours in zip(found.anomaly_maps, expected.anomaly_maps):
        assert theirs.shape == ours.shape == (192, 576)
        np.testing.assert_allclose(theirs, ours, atol=1e-3 * float(ours.max()))


def test_the_cli_fits_in_tiles_and_predict_says_so(tmp_path):
    good = tmp_path / "data" / "good"
    good.mkdir(parents=True)
    for sample in _panels(4, False, seed=1).samples:
        Image.fromarray(sample.image).save(good / f"{sample.name}.png")
    fit_options = ["--val-fraction", "0.5", "--param", "image_size=64", "--tile", "96", "--overlap", "16"]
    fit_options += ["--device", "cpu", "--quiet"]
    fitted = runner.invoke(
        app, ["fit", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "model"), *fit_options]
    )
    assert fitted.exit_code == 0, fitted.output
    assert "in 96 px tiles, 16 px overlap, at native resolution" in " ".join(fitted.output.split())
    predicted = runner.invoke(
        app, ["predict", str(tmp_path / "model"), str(good), "--out", str(tmp_path / "out"), "--quiet"]
    )
    assert predicted.exit_code == 0, predicted.output
    assert "scored 4 images, in 96 px tiles" in " ".join(predicted.output.split())
    refused = runner.invoke(
        app, ["fit", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "p"), "--model", "padim", *fit_options]
    )
    assert refused.exit_code != 0 and "PaDiM cannot be tiled" in " ".join(refused.output.split())


LARGE_SIDE = 8192
PREDICT_LARGE = f"""
import json, sys
import flawscope as fs
from flawscope._memory import peak_rss_mib
fs.set_max_pixels({LARGE_SIDE} * {LARGE_SIDE})
prediction = fs.load(sys.argv[1]).predict([sys.argv[2]], progress=False)
peak = peak_rss_mib()  # this process's own: ru_maxrss would carry the test process's peak into it
print(json.dumps({{"peak_mib": peak, "shape": list(prediction.anomaly_maps[0].shape), "masks": len(prediction.masks)}}))
"""


@pytest.mark.slow
def test_an_8192_px_colour_image_scores_in_tiles_within_2_gib(tmp_path):
    """Memory is bounded by one image (201 MB as uint8 RGB, 805 MB as floats), its map and a batch of tiles, not
    by its 324 tiles."""
    rng = np.random.default_rng(0)
    train = [np.round(texture(rng, (1024, 1024)) * 255).astype(np.uint8) for _ in range(3)]
    model = fs.create("patchcore", tile=512, overlap=64, device="cpu").fit(train[:2], progress=False)
    model.calibrate(train[1:], rule="sigma", progress=False)
    model.save(tmp_path / "model")
    grain = rng.integers(0, 256, size=(LARGE_SIDE // 8, LARGE_SIDE, 3), dtype=np.uint8)
    Image.fromarray(np.tile(grain, (8, 1, 1))).save(tmp_path / "large.bmp")
    run = subprocess.run(
        [sys.executable, "-c", PREDICT_LARGE, str(tmp_path / "model"), str(tmp_path / "large.bmp")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["shape"] == [LARGE_SIDE, LARGE_SIDE] and measured["masks"] == 1
    assert measured["peak_mib"] < 2048, measured


def test_the_station_inspects_in_the_tiles_the_model_was_fitted_with(tmp_path):
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient

    from flawscope.service import open_station
    from flawscope.service.app import create_app

    model = fs.create("patchcore", **FAST_PATCHCORE, tile=96, overlap=16).fit(_panels(2, False, seed=1), progress=False)
    model.calibrate(_panels(3, False, seed=4), rule="sigma", progress=False)
    model.save(tmp_path / "tiled")
    part = _panels(1, True, seed=3).samples[0].image
    client = TestClient(create_app(open_station([tmp_path / "tiled"], tmp_path / "log.sqlite", tmp_path / "store")))
    buffer = io.BytesIO()
    Image.fromarray(part).save(buffer, format="PNG")
    answer = client.post("/v1/inspect", files={"image": ("part.png", buffer.getvalue(), "image/png")}).json()
    expected = model.predict([part], progress=False)
    assert answer["score"] == pytest.approx(float(expected.scores[0]), rel=1e-5)
    assert answer["label"] == ("NOT OK" if expected.labels[0] else "OK")
