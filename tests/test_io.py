import numpy as np
import pytest
from PIL import Image

from flawscope.data.io import as_float, load_image, read_image, read_mask
from flawscope.errors import DataError


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_grey_8bit_round_trip(tmp_path, suffix):
    pixels = (np.arange(48 * 32) % 256).astype(np.uint8).reshape(48, 32)
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(pixels).save(path, quality=100) if suffix == ".jpg" else Image.fromarray(pixels).save(path)
    image = read_image(path)
    assert image.shape == (48, 32, 1) and image.dtype == np.float32
    tolerance = 6 / 255 if suffix == ".jpg" else 1e-6
    np.testing.assert_allclose(image[..., 0], pixels / 255.0, atol=tolerance)


def test_eight_bit_images_can_be_kept_as_uint8_and_others_stay_floats(tmp_path):
    """``eight_bit=True`` (how a tiled model holds a large image) keeps 8-bit pixels as uint8 -- the same image
    once :func:`as_float` converts it -- and reads any other image as floats all the same."""
    rgba = np.random.default_rng(0).integers(0, 256, size=(6, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    kept = load_image(tmp_path / "rgba.png", eight_bit=True)
    assert kept.pixels.dtype == np.uint8 and kept.pixels.shape == (6, 9, 3) and kept.notes == ("alpha channel dropped",)
    np.testing.assert_array_equal(as_float(kept.pixels), read_image(tmp_path / "rgba.png"))
    assert load_image(rgba[..., 0], eight_bit=True).pixels.shape == (6, 9, 1)
    Image.fromarray(np.array([[0, 40000]], dtype=np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png", eight_bit=True).pixels.dtype == np.float32
    with pytest.raises(DataError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8), eight_bit=True)


def test_16bit_png_keeps_precision(tmp_path):
    pixels = np.array([[0, 1000, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_allclose(read_image(path)[0, :, 0], pixels[0] / 65535.0, rtol=1e-6)


def test_rgba_drops_alpha_and_rgb_is_kept(tmp_path):
    pixels = np.zeros((5, 7, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 3] = 255, 10
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, "RGBA").save(path)
    image = read_image(path)
    assert image.shape == (5, 7, 3)
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0])


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert read_image(path).shape[:2] == (20, 10)


def test_arrays_of_each_dtype():
    assert read_image(np.full((4, 4), 255, np.uint8)).max() == 1.0
    assert read_image(np.full((4, 4, 3), 65535, np.uint16)).shape == (4, 4, 3)
    assert read_image(np.ones((4, 4), bool)).min() == 1.0
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        read_image(np.full((4, 4), 2.0))
    with pytest.raises(DataError, match="shape"):
        read_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(DataError, match="empty"):
        read_image(np.zeros((0, 4), np.uint8))


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png at all")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    for path, reason in (
        (empty, "empty"),
        (garbage, "not in a format Pillow reads"),
        (truncated, "cannot be decoded"),
        (tmp_path / "missing.png", "does not exist"),
    ):
        with pytest.raises(DataError, match=reason) as caught:
            read_image(path)
        assert str(path) in str(caught.value)


def test_mask_size_must_match(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(path)
    assert read_mask(path, (8, 6)).shape == (8, 6)
    with pytest.raises(DataError, match="masks must have the size of their image"):
        read_mask(path, (8, 7))
