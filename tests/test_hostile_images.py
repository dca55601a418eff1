"""Hostile image files: each is scored (saying how it was converted) or refused with a DataError naming it --
never another exception, a hang or a silent wrong result. Random and damaged bytes are drawn by hypothesis."""

from __future__ import annotations

import csv
import dataclasses
import io
import resource
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import flawscope as fs
from flawscope.data.datasets import ImageDataset
from flawscope.data.io import DEFAULT_MAX_PIXELS, image_size, load_image, max_pixels, read_mask, set_max_pixels
from flawscope.errors import ConfigError, DataError
from flawscope.folders import predict_to_folder

FORMATS = {
    ".png": ("PNG", "RGB"),
    ".jpg": ("JPEG", "RGB"),
    ".bmp": ("BMP", "RGB"),
    ".tif": ("TIFF", "RGB"),
    ".webp": ("WEBP", "RGB"),
    ".gif": ("GIF", "P"),
    ".ppm": ("PPM", "RGB"),
}
HOSTILE = settings(
    max_examples=60,
    deadline=2000,  # ms: a hang is a failure
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def encoded(suffix: str, size: tuple[int, int] = (24, 16), seed: int = 0) -> bytes:
    """A valid image file of the format of ``suffix`` (width x height ``size``) as bytes."""
    image_format, mode = FORMATS[suffix]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=image_format)
    return buffer.getvalue()


def assert_image_or_data_error(source, name: str | None = None) -> None:
    """``source`` reads as a valid image (float32 H x W x 1|3 in [0, 1]) or raises DataError naming it."""
    try:
        loaded = load_image(source, name=name)
    except DataError as error:
        assert (name or str(source)) in str(error)
        return
    pixels = loaded.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 3 and pixels.shape[2] in (1, 3)
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


@HOSTILE
@given(data=st.binary(min_size=0, max_size=4096))
def test_random_bytes_are_an_image_or_a_data_error(data):
    assert_image_or_data_error(data, name="random.bin")


@HOSTILE
@given(suffix=st.sampled_from(sorted(FORMATS)), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_of_every_format(tmp_path, suffix, cut):
    data = encoded(suffix)
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: int(len(data) * cut)])
    assert_image_or_data_error(path)


@HOSTILE
@given(
    suffix=st.sampled_from(sorted(FORMATS)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8),
)
def test_bit_flipped_files_of_every_format(tmp_path, suffix, flips):
    data = bytearray(encoded(suffix))
    for where, bit in flips:
        data[int(len(data) * where)] ^= 1 << bit
    path = tmp_path / f"flipped{suffix}"
    path.write_bytes(bytes(data))
    assert_image_or_data_error(path)


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_every_format_reads(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    path.write_bytes(encoded(suffix))
    loaded = load_image(path)
    assert loaded.pixels.shape == (16, 24, 3) and loaded.format == FORMATS[suffix][0]


def test_empty_file_folder_and_missing_file_are_named(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "x.png"
    folder.mkdir()
    for path, reason in ((empty, "empty"), (folder, "is a folder"), (tmp_path / "gone.png", "does not exist")):
        with pytest.raises(DataError, match=reason) as caught:
            load_image(path)
        assert str(path) in str(caught.value)


def test_a_png_named_jpg_is_read_and_said(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encoded(".png"))
    loaded = load_image(path)
    assert loaded.pixels.shape == (16, 24, 3) and "PNG file named .jpg" in loaded.conversion


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_multi_frame_files_take_the_first_frame_and_say_so(tmp_path, suffix):
    frames = [Image.fromarray(np.full((8, 10), value, np.uint8)) for value in (0, 128, 255)]
    path = tmp_path / f"frames{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    loaded = load_image(path)
    assert loaded.pixels.shape[:2] == (8, 10) and loaded.pixels.max() == 0.0
    assert "first of 3 frames" in loaded.conversion


def test_modes_and_what_the_reader_says_about_them(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cases = {
        "palette.png": (Image.fromarray(grey).convert("P"), (12, 10, 3), ""),
        "cmyk.jpg": (Image.fromarray(grey).convert("CMYK"), (12, 10, 3), "CMYK converted to RGB"),
        "la.png": (Image.fromarray(grey).convert("LA"), (12, 10, 1), "alpha channel dropped"),
        "rgba.png": (Image.fromarray(grey).convert("RGBA"), (12, 10, 3), "alpha channel dropped"),
        "bilevel.png": (Image.fromarray(grey > 60), (12, 10, 1), ""),
        "deep.png": (Image.fromarray(grey.astype(np.uint16) * 257), (12, 10, 1), ""),
        "float.tif": (Image.fromarray(grey.astype(np.float32) / 255), (12, 10, 1), ""),
    }
    for name, (image, shape, note) in cases.items():
        image.save(tmp_path / name)
        loaded = load_image(tmp_path / name)
        assert loaded.pixels.shape == shape, name
        assert note in loaded.conversion and (note or not loaded.conversion), (name, loaded.conversion)
    np.testing.assert_allclose(load_image(tmp_path / "deep.png").pixels[..., 0], grey / 255, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "float.tif").pixels[..., 0], grey / 255, atol=1e-6)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 4095.0])
def test_float_files_outside_0_1_are_refused(tmp_path, value):
    pixels = np.full((6, 6), 0.5, np.float32)
    pixels[2, 3] = value
    path = tmp_path / "float.tif"
    Image.fromarray(pixels).save(path)
    with pytest.raises(DataError, match=r"outside \[0, 1\] \(or NaN / inf\)") as caught:
        load_image(path)
    assert str(path) in str(caught.value)


def test_32_bit_integers_beyond_16_bit_are_refused(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 70_000]], np.int32)).save(path)
    with pytest.raises(DataError, match="up to 16 bit"):
        load_image(path)
    within = tmp_path / "int32_small.tif"
    Image.fromarray(np.array([[0, 65_535]], np.int32)).save(within)
    np.testing.assert_allclose(load_image(within).pixels[0, :, 0], [0.0, 1.0])


def test_exif_rotation_is_applied_and_said(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 8
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.pixels.shape[:2] == (20, 10) and "EXIF orientation 8 applied" in loaded.conversion
    assert image_size(path) == (20, 10)


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header declares ``width x height`` grey pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("side", "said"),
    [
        (9_000, "9000 x 9000 = 81,000,000 pixels, more than the limit of 50,000,000"),  # flawscope's limit
        (30_000, "900000000 pixels"),  # beyond twice Pillow's own limit, which Pillow checks first
    ],
)
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, side, said):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(side, side))  # as float32 grey: 324 MB and 3.6 GB
    assert path.stat().st_size < 100_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(DataError, match="refused before decoding") as caught:
        load_image(path)
    assert time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50_000  # kB: nothing decoded
    assert said in str(caught.value) and str(path) in str(caught.value) and "--max-pixels" in str(caught.value)


def test_the_pixel_limit_is_the_users(tmp_path):
    path = tmp_path / "large.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(path)
    assert max_pixels() == DEFAULT_MAX_PIXELS
    try:
        set_max_pixels(10_000)
        with pytest.raises(DataError, match="300 x 300 = 90,000 pixels"):
            load_image(path)
        assert load_image(path, limit=100_000).pixels.shape == (300, 300, 1)
        with pytest.raises(ConfigError, match="positive whole number"):
            set_max_pixels(0)
    finally:
        set_max_pixels(DEFAULT_MAX_PIXELS)
    assert load_image(path).pixels.shape == (300, 300, 1)


def test_extreme_shapes_are_scored_at_their_own_size(fitted_patchcore):
    for shape in ((1, 1), (1, 65_535), (65_535, 1)):
        prediction = fitted_patchcore.predict([np.full(shape, 0.5, np.float32)], progress=False)
        assert prediction.anomaly_maps[0].shape == shape and np.isfinite(prediction.scores).all()


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ((0, 255), [False, True, True]),  # 0 / 255
        ((0, 1), [False, True, True]),  # 0 / 1: a label mask; every non-zero pixel is defective
        ((0, 65_535), [False, True, True]),  # 16 bit
        ((0, 0), [False, False, False]),  # empty
    ],
)
def test_two_level_masks_mark_every_non_zero_pixel(tmp_path, levels, expected):
    pixels = np.array([[levels[0], levels[1], levels[1]]], np.uint16 if max(levels) > 255 else np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(pixels).save(path)
    assert read_mask(path).tolist() == [expected]


def test_masks_of_many_levels_are_cut_at_half_their_maximum(tmp_path):
    path = tmp_path / "soft.png"
    Image.fromarray(np.array([[0, 3, 90, 100, 200]], np.uint8)).save(path)
    assert read_mask(path).tolist() == [[False, False, False, True, True]]


def test_an_empty_mask_on_a_defective_image_is_noted(fitted_patchcore, texture_test, tmp_path):
    samples = list(texture_test.samples)
    first_defective = next(i for i, sample in enumerate(samples) if sample.label == 1)
    victim = samples[first_defective]
    mask_path = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros(np.asarray(victim.mask).shape, np.uint8)).save(mask_path)
    samples[first_defective] = dataclasses.replace(victim, mask=mask_path)
    data = ImageDataset(samples, "one empty mask")
    report = fs.evaluate(fitted_patchcore, data, worst_cases=0, progress=False)
    assert any("1 defective images have an empty mask" in note for note in report.metrics["notes"])
    assert report.metrics["image_auroc"] > 0.8 and report.metrics["pixel_auroc"] > 0.8


def test_predict_scores_what_it_can_and_names_the_rest(fitted_patchcore, tmp_path):
    folder = tmp_path / "line"
    folder.mkdir()
    good = encoded(".png", (96, 96))
    (folder / "a_good.png").write_bytes(good)
    (folder / "b_named_wrong.jpg").write_bytes(good)
    (folder / "c_truncated.png").write_bytes(good[:300])
    (folder / "d_empty.png").write_bytes(b"")
    (folder / "e_bomb.png").write_bytes(png_declaring(40_000, 40_000))
    (folder / "f_random.tif").write_bytes(np.random.default_rng(0).bytes(2000))
    (folder / "g_folder.png").mkdir()
    written = predict_to_folder(fitted_patchcore, [folder], tmp_path / "out", progress=False)
    with open(written.csv_path, newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert set(rows) == {
        "a_good.png",
        "b_named_wrong.jpg",
        "c_truncated.png",
        "d_empty.png",
        "e_bomb.png",
        "f_random.tif",
    }
    assert rows["a_good.png"]["score"] and not rows["a_good.png"]["conversion"]
    assert rows["b_named_wrong.jpg"]["score"] == rows["a_good.png"]["score"]
    assert rows["b_named_wrong.jpg"]["conversion"] == "PNG file named .jpg"
    for name, reason in (
        ("c_truncated.png", "cannot be decoded"),
        ("d_empty.png", "empty"),
        ("e_bomb.png", "refused before decoding"),
        ("f_random.tif", "not in a format Pillow reads"),
    ):
        assert not rows[name]["score"] and reason in rows[name]["error"] and name in rows[name]["error"]
    assert written.n_scored == 2 and len(written.failed) == 4


@settings(HOSTILE, max_examples=12, deadline=None)
@given(
    files=st.lists(
        st.tuples(st.sampled_from(sorted(FORMATS)), st.binary(max_size=600), st.floats(0.0, 1.0)), max_size=4
    )
)
def test_predict_over_hostile_files_writes_a_row_for_each_and_never_raises(fitted_patchcore, tmp_path, files):
    """A folder of one good image and damaged ones (a valid file's head, then random bytes): predict writes one row
    per file -- a score, or the reason it could not read it -- and scores the good image as it scores it alone."""
    folder = tmp_path / "line"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    good = encoded(".png", (96, 96))
    (folder / "good.png").write_bytes(good)
    for index, (suffix, tail, keep) in enumerate(files):
        head = encoded(suffix)
        (folder / f"hostile_{index}{suffix}").write_bytes(head[: int(len(head) * keep)] + tail)
    written = predict_to_folder(fitted_patchcore, [folder], tmp_path / "out", progress=False)
    with open(written.csv_path, newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert len(rows) == 1 + len(files)
    assert all(bool(row["score"]) != bool(row["error"]) for row in rows.values())
    alone = fitted_patchcore.predict([folder / "good.png"], progress=False).scores[0]
    assert float(rows["good.png"]["score"]) == pytest.approx(alone, rel=1e-5)
