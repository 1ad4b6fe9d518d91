"""Reading real files of every awkward kind: each is written here with Pillow, then checked."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vgg_mobile.core.errors import DataError
from vgg_mobile.data.images import (NOT_AN_IMAGE, TOO_MANY_PIXELS, ImageError, check_image,
                                    load_rgb, read_header)


def _halves(width=40, height=20, mode="RGB"):
    """Left half red, right half blue: shows which way an image was rotated."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(array, "RGB").convert(mode)


def test_rgb_jpeg_and_png_read_as_uint8_rgb(tmp_path):
    for name in ("a.jpg", "a.png"):
        _halves().save(tmp_path / name)
        pixels = load_rgb(tmp_path / name)
        assert pixels.shape == (20, 40, 3) and pixels.dtype == np.uint8
        assert pixels[10, 5, 0] > 200 and pixels[10, 35, 2] > 200
        assert check_image(tmp_path / name).ok
        assert check_image(tmp_path / name).notes == ()


def test_exif_orientation_is_applied(tmp_path):
    image = _halves()
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    pixels = load_rgb(tmp_path / "rotated.jpg")
    assert pixels.shape == (40, 20, 3)
    # The left (red) half of the stored image is the top half once displayed.
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60
    assert pixels[35, 10, 2] > 200
    check = check_image(tmp_path / "rotated.jpg")
    assert check.ok and any("EXIF orientation 6" in n for n in check.notes)
    assert check.size == (20, 40)


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("L", ".jpg"), ("CMYK", ".jpg"),
                                         ("P", ".png"), ("RGBA", ".png"), ("LA", ".png")])
def test_other_colour_modes_are_converted_to_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"img{suffix}"
    _halves(mode=mode).save(path)
    assert Image.open(path).mode == mode
    pixels = load_rgb(path)
    assert pixels.shape == (20, 40, 3)
    check = check_image(path)
    assert check.ok and check.notes, check
    if mode in ("CMYK", "P", "RGBA"):
        assert pixels[10, 5, 0] > 180 and pixels[10, 35, 2] > 180  # colours survive


def test_transparent_pixels_become_white(tmp_path):
    array = np.zeros((8, 8, 4), np.uint8)
    array[:, :4] = (255, 0, 0, 255)  # opaque red, then fully transparent black
    Image.fromarray(array, "RGBA").save(tmp_path / "alpha.png")
    pixels = load_rgb(tmp_path / "alpha.png")
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[0, 7]) == (255, 255, 255)


def test_16_bit_png_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = load_rgb(tmp_path / "deep.png")
    assert pixels.shape == (8, 64, 3)
    assert pixels.min() == 0 and pixels.max() == 255  # scaled, not clipped to white
    assert any("16-bit" in n for n in check_image(tmp_path / "deep.png").notes)


def _jpeg_bytes():
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("name,content,reason", [
    ("truncated.jpg", _jpeg_bytes()[:700], "truncated"),
    ("garbage.jpg", bytes(range(256)) * 4, "not an image"),
    ("text.png", b"hello, I am not a picture\n", "not an image"),
    ("empty.jpg", b"", "not an image"),
    ("notes.txt", b"some notes", "not an image file"),
])
def test_bad_files_are_reported_with_a_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    check = check_image(path)
    assert not check.ok
    assert reason in check.problem
    if path.suffix != ".txt":
        with pytest.raises(DataError, match=name):
            load_rgb(path)


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    # 10,000 x 10,000 one-bit pixels: a small file that would decode to 300 MB of RGB.
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    check = check_image(tmp_path / "bomb.png")
    assert not check.ok and "decompression bomb" in check.problem
    assert check_image(tmp_path / "bomb.png", max_pixels=200_000_000).ok


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rgb(tmp_path / "absent.jpg")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_convert_a_band_at_a_time_and_read_the_same_in_the_pipeline(
        tmp_path, monkeypatch, suffix):
    from vgg_mobile.data import dataset, images

    monkeypatch.setattr(images, "_BAND_PIXELS", 40)  # bands of 2 rows of 20 pixels
    values = np.random.default_rng(0).integers(0, 65536, (20, 20), dtype=np.uint16)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values).save(path)
    expected = np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(load_rgb(path), expected)
    check = check_image(path)
    assert check.ok and check.size == (20, 20) and "16-bit" in check.notes[0]
    # The tf.data decoder reads the file through `load_rgb`; at the file's own size the
    # resize leaves every pixel as it is.
    examples = (dataset.Example(path, 0),)
    (batch, _), = dataset.make_dataset(examples, 20, 1, 2, one_hot=False)
    np.testing.assert_array_equal(batch.numpy()[0], expected.astype(np.float32))


def test_a_jpeg_is_checked_at_a_reduced_scale_but_reports_its_full_size(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg")
    check = check_image(tmp_path / "photo.jpg")
    assert check.ok and check.size == (400, 300)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated" in check_image(tmp_path / "cut.jpg").problem


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PPM", "QOI", "EPS", "TGA", "PCX"])
def test_formats_training_does_not_read_are_refused_from_their_first_bytes(tmp_path, fmt):
    # Pillow decodes all of these (EPS by running Ghostscript, when it is installed); the
    # decoder reads only the documented formats, under any file name.
    data = _encoded(_halves(), fmt)
    path = tmp_path / "disguised.png"
    path.write_bytes(data)
    check = check_image(path)
    assert not check.ok and "not an image in a format read here (JPEG, PNG" in check.problem
    with pytest.raises(ImageError, match="disguised.png: not an image") as caught:
        load_rgb(path)
    assert caught.value.reason == NOT_AN_IMAGE
    with pytest.raises(ImageError) as caught:
        read_header(data, name="upload")
    assert caught.value.reason == NOT_AN_IMAGE


def test_a_camera_jpeg_with_a_second_picture_still_reads(tmp_path):
    # MPO: what many cameras write as .jpg; Pillow opens it through its JPEG opener.
    data = _encoded(_halves(), "MPO", save_all=True, append_images=[_halves(20, 10)])
    (tmp_path / "camera.jpg").write_bytes(data)
    assert Image.open(tmp_path / "camera.jpg").format == "MPO"
    assert load_rgb(tmp_path / "camera.jpg").shape == (20, 40, 3)
    assert check_image(tmp_path / "camera.jpg").ok


def test_the_header_tells_size_and_mode_without_decoding():
    # 6000 x 6000 one-bit pixels in a few kilobytes; truncated after the header, so any
    # attempt to decode would fail.
    data = _encoded(Image.new("1", (6000, 6000)), "PNG")[:200]
    header = read_header(data, max_pixels=40_000_000)
    assert (header.format, header.mode, header.width, header.height) == ("PNG", "1", 6000, 6000)
    assert header.pixels == 36_000_000 and not header.transparent
    assert read_header(_encoded(_halves(mode="RGBA"), "PNG")).transparent
    with pytest.raises(ImageError, match="over the limit of 1,000,000") as caught:
        read_header(data, max_pixels=1_000_000, name="big.png")
    assert caught.value.reason == TOO_MANY_PIXELS
