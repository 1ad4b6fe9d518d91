"""Reading one image file into RGB pixels, and telling what is wrong with a file that fails.

The check that runs before training (`check_image`) and the decoder inside the tf.data
pipeline (`load_rgb`) open, decode and convert a file the same way, so they agree on what every
file means; the check converts only a corner of the decoded image, and decodes a JPEG at a
reduced scale, to keep its memory small.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from vgg_mobile.core.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The formats of `IMAGE_SUFFIXES` as Pillow names its openers (a JPEG that carries a second
# picture, as many cameras write, opens through "JPEG" as format MPO). Every other format Pillow
# knows is refused as "not an image" from its first bytes: their plugins are less exercised
# than these, and some run other programs (EPS calls Ghostscript when it is installed).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, GIF, BMP, WebP or TIFF"

# Pillow's own default. Above it an image is refused as a possible decompression bomb: a
# small file that would expand to gigabytes of pixels.
MAX_PIXELS = 89_478_485


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    """The result of checking one file.

    Attributes:
        path: The file.
        problem: Why the file cannot be used, or `None` if it can.
        notes: Conversions applied when it is read (e.g. "CMYK converted to RGB").
        size: `(width, height)` after EXIF rotation, when readable.
    """

    path: Path
    problem: str | None = None
    notes: tuple[str, ...] = ()
    size: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class DecodeBudget:
    """Bytes of decoded pixels that threads may hold at once.

    A thread waits while the images being decoded would not fit in `limit`; an image larger
    than the limit is decoded alone.
    """

    def __init__(self, limit: int):
        self._limit = limit
        self._used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, amount: int):
        with self._changed:
            self._changed.wait_for(lambda: self._used == 0 or self._used + amount <= self._limit)
            self._used += amount
        try:
            yield
        finally:
            with self._changed:
                self._used -= amount
                self._changed.notify_all()


# Why an image could not be read, as `ImageError.reason` holds it.
NOT_AN_IMAGE, CORRUPT, TOO_MANY_PIXELS, UNREADABLE = (
    "not_an_image", "corrupt_image", "too_many_pixels", "unreadable")


class ImageError(DataError):
    """An image that cannot be read; `reason` tells which way it failed (`NOT_AN_IMAGE`,
    `CORRUPT`, `TOO_MANY_PIXELS` or `UNREADABLE`), for callers that answer each differently."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class _Unusable(ValueError):
    """Why a file or a buffer cannot be read, before its name is put in front of the message."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@contextlib.contextmanager
def _reading():
    """Turns what Pillow and the OS raise while reading a file into a `ValueError` saying why."""
    with warnings.catch_warnings():
        # The pixel limit is ours (`max_pixels`); Pillow's own error still stops anything over
        # twice its default before our header check runs.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombError as err:
            raise _Unusable(f"possible decompression bomb ({err})", TOO_MANY_PIXELS) from None
        except FileNotFoundError:
            raise _Unusable("no such file", UNREADABLE) from None
        except PermissionError as err:
            raise _Unusable(f"cannot read file ({err.strerror})", UNREADABLE) from None
        except UnidentifiedImageError:
            raise _Unusable(f"not an image in a format read here ({FORMAT_NAMES})",
                            NOT_AN_IMAGE) from None
        except (OSError, SyntaxError) as err:
            # Truncated files raise OSError("image file is truncated ...") on load().
            raise _Unusable(f"corrupt or truncated image (Pillow: {err})", CORRUPT) from None


def _open(path: Path | BinaryIO, max_pixels: int,
          draft: bool = False) -> tuple[Image.Image, tuple[int, int] | None]:
    """Opens an image (its header only), refusing one over `max_pixels` before decoding.

    With `draft`, a JPEG is set to decode at up to 1/8 of its size: every byte of the file is
    still read, so a truncated or corrupt file fails the same way, for a fraction of the memory.

    Returns:
        The image, not yet decoded, and its full `(width, height)` if it was reduced, else `None`.
    """
    with _reading():
        image = Image.open(path, formats=IMAGE_FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _Unusable(f"{width}x{height} = {width * height:,} pixels is over the limit of "
                        f"{max_pixels:,} (possible decompression bomb)", TOO_MANY_PIXELS)
    if draft and image.format == "JPEG" and image.draft(
            None, (max(1, width // 8), max(1, height // 8))) is not None:
        return image, (width, height)
    return image, None


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read before any pixel is decoded.

    Attributes:
        format: Pillow's name of the format (`IMAGE_FORMATS`).
        mode: Pillow's mode of the decoded pixels (`RGB`, `RGBA`, `1`, `I;16`, ...).
        width: Width in pixels, as stored (before EXIF rotation).
        height: Height in pixels, as stored.
        transparent: Whether the pixels carry transparency (an alpha band, or a palette or
            grayscale image with a transparent colour), which costs a composite on white.
    """

    format: str
    mode: str
    width: int
    height: int
    transparent: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes | BinaryIO, max_pixels: int = MAX_PIXELS,
                name: str = "image") -> ImageHeader:
    """Reads an image's format, mode and size from its header, decoding no pixel.

    Pillow parses only the header when it opens a file, so this costs the same for a 16-bit
    6300 x 6300 PNG as for a thumbnail, and the caller can tell what decoding will cost first.

    Args:
        data: The encoded image: bytes, or a binary file object positioned at its start.
        max_pixels: Images with more pixels are refused. Defaults to `MAX_PIXELS`.
        name: What to call the image in messages. Defaults to `"image"`.

    Returns:
        The `ImageHeader`.

    Raises:
        ImageError: Not an image of `IMAGE_FORMATS`, a header that cannot be parsed, or more
            pixels than `max_pixels` (`TOO_MANY_PIXELS`); the message names `name`.
    """
    source = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        image, _ = _open(source, max_pixels)
    except _Unusable as err:
        raise ImageError(f"{name}: {err}", err.reason) from None
    with image:
        # The same test as `_convert`'s: these are composited on white.
        transparent = image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info)
        return ImageHeader(image.format, image.mode, image.width, image.height, transparent)


def _load(image: Image.Image) -> None:
    """Decodes an opened image, failing with the reason."""
    with _reading():
        image.load()


def _decoded_bytes(image: Image.Image) -> int:
    """The memory Pillow takes to hold the opened image's pixels once it is decoded."""
    mode = image.mode
    depth = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return image.width * image.height * depth


# EXIF orientation -> the transpose that shows the picture as a viewer does (as
# `ImageOps.exif_transpose`); 5 to 8 swap width and height.
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
_SIDEWAYS = {_ORIENTATIONS[k] for k in (5, 6, 7, 8)}

# Pixels converted at a time from 16-bit, 32-bit or floating-point grayscale: the int64 and
# float intermediates of a whole image near `MAX_PIXELS` would take gigabytes.
_BAND_PIXELS = 1 << 20


def _orientation(image: Image.Image, notes: list[str]) -> Image.Transpose | None:
    """The transpose that the image's EXIF orientation asks for, noted in `notes`, or `None`."""
    orientation = image.getexif().get(0x0112)
    try:
        transpose = _ORIENTATIONS.get(orientation)
    except TypeError:  # an unhashable value: not an orientation
        transpose = None
    if transpose is not None:
        notes.append(f"rotated by EXIF orientation {orientation}")
    return transpose


def _gray_to_8_bit(image: Image.Image, scale) -> Image.Image:
    """A grayscale image of any depth as 8-bit "L", converted a band of rows at a time."""
    width, height = image.size
    out = np.empty((height, width), np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        out[top:top + rows] = scale(np.asarray(band))
    return Image.fromarray(out)


def _top_8_bits(band: np.ndarray) -> np.ndarray:
    return (np.clip(band.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _clip_to_8_bits(band: np.ndarray) -> np.ndarray:
    return np.clip(band.astype(np.float32), 0, 255).astype(np.uint8)


def _convert(image: Image.Image, notes: list[str]) -> Image.Image:
    """Converts an (already oriented) image to "RGB", or to "L" for gray that `_rgb_array`
    replicates to three channels, the same pixels as Pillow's own "L" to "RGB"."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the top 8 bits of a 16-bit range.
        notes.append(f"{mode} (16-bit) grayscale converted to 8-bit RGB")
        return _gray_to_8_bit(image, _top_8_bits)
    if mode == "F":
        notes.append("floating-point grayscale converted to RGB")
        return _gray_to_8_bit(image, _clip_to_8_bits)
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        # Transparent pixels become white, as an image viewer on a white page shows them.
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"{mode} with transparency composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    notes.append(f"{mode} converted to RGB")
    return image if mode == "L" else image.convert("RGB")


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    transpose = _orientation(image, notes)
    return _convert(image if transpose is None else image.transpose(transpose), notes)


def _rgb_array(image: Image.Image) -> np.ndarray:
    """The pixels of an "RGB" or "L" image as a `uint8` `(height, width, 3)` array."""
    array = np.asarray(image, dtype=np.uint8)
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def _decode(source: Path | BinaryIO, max_pixels: int) -> np.ndarray:
    image, _ = _open(source, max_pixels)
    with image:
        _load(image)
        return _rgb_array(_to_rgb(image, []))


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Reads an image file as RGB pixels.

    EXIF orientation is applied; grayscale, palette, 16-bit, CMYK and transparent images are
    converted to 8-bit RGB (transparency over white).

    Args:
        path: The image file.
        max_pixels: Images with more pixels are refused. Defaults to `MAX_PIXELS`.

    Returns:
        A `uint8` array of shape `(height, width, 3)`.

    Raises:
        ImageError: The file is not a readable image (a `DataError`); the message names the
            file.
    """
    path = Path(path)
    try:
        return _decode(path, max_pixels)
    except _Unusable as err:
        raise ImageError(f"{path}: {err}", err.reason) from None


def shown_size(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """`(height, width)` of an image file as `load_rgb` returns it (after its EXIF
    orientation), read from its header alone.

    Raises:
        ImageError: The file is not a readable image; the message names it.
    """
    path = Path(path)
    try:
        image, _ = _open(path, max_pixels)
        with image, _reading():
            sideways = _orientation(image, []) in _SIDEWAYS
            return (image.width, image.height) if sideways else (image.height, image.width)
    except _Unusable as err:
        raise ImageError(f"{path}: {err}", err.reason) from None


def decode_rgb(data: bytes | BinaryIO, max_pixels: int = MAX_PIXELS,
               name: str = "image") -> np.ndarray:
    """Decodes an image held in memory (or in an open binary file) as RGB pixels, exactly as
    `load_rgb` reads a file.

    Args:
        data: The encoded image: bytes, or a binary file object positioned at its start.
        max_pixels: Images with more pixels are refused before they are decoded. Defaults to
            `MAX_PIXELS`.
        name: What to call the image in messages (an upload's file name). Defaults to
            `"image"`.

    Returns:
        A `uint8` array of shape `(height, width, 3)`.

    Raises:
        ImageError: Not a readable image; `reason` says why, the message names `name`.
    """
    source = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return _decode(source, max_pixels)
    except _Unusable as err:
        raise ImageError(f"{name}: {err}", err.reason) from None


def check_image(path: str | Path, max_pixels: int = MAX_PIXELS,
                budget: DecodeBudget | None = None) -> ImageCheck:
    """Checks that a file decodes to a usable RGB image, without raising.

    The whole file is decoded (a JPEG at a reduced scale), but the conversion to RGB runs on
    a small corner of it: the conversion depends on the mode, not on the pixels, and on a
    whole image it would need several times the memory of the decoded file.

    Args:
        path: The file to check.
        max_pixels: Images with more pixels are refused. Defaults to `MAX_PIXELS`.
        budget: Shared by threads that check files at once, to bound the memory they hold.
            Defaults to `None` (no bound).

    Returns:
        An `ImageCheck` with `problem` set if the file cannot be used; its `size` is the
        full size after EXIF rotation, as `load_rgb` returns it.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return ImageCheck(path, problem=f"not an image file (suffix {path.suffix!r})")
    notes: list[str] = []
    try:
        image, full_size = _open(path, max_pixels, draft=True)
        holding = budget.hold(_decoded_bytes(image)) if budget else contextlib.nullcontext()
        with holding, image:  # closed (its pixels freed) before the budget is given back
            _load(image)
            # A TIFF applies its orientation while loading: its size is the one after `load()`.
            width, height = full_size or image.size
            transpose = _orientation(image, notes)
            _convert(image.crop((0, 0, min(image.width, 64), min(image.height, 64))), notes)
    except ValueError as err:
        return ImageCheck(path, problem=str(err))
    except OSError as err:
        return ImageCheck(path, problem=f"cannot read file ({err.strerror or err})")
    if width < 1 or height < 1:
        return ImageCheck(path, problem=f"empty image ({width}x{height})")
    if transpose in _SIDEWAYS:
        width, height = height, width
    return ImageCheck(path, notes=tuple(notes), size=(width, height))
