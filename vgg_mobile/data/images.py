"""Reading one image file into RGB pixels, and telling what is wrong with a file that fails.

Everything that decodes a user's image goes through `load_rgb`, so the checks that run before
training and the decoder inside the tf.data pipeline agree on what every file means.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

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


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # The pixel limit is ours (`max_pixels`); Pillow's own error still stops anything over
        # twice its default before the header check below runs.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{width}x{height} = {width * height:,} pixels is over the limit of "
                    f"{max_pixels:,} (possible decompression bomb)"
                )
            image.load()
        except Image.DecompressionBombError as err:
            raise ValueError(f"possible decompression bomb ({err})") from None
        except FileNotFoundError:
            raise ValueError("no such file") from None
        except PermissionError as err:
            raise ValueError(f"cannot read file ({err.strerror})") from None
        except UnidentifiedImageError:
            raise ValueError("not an image (Pillow cannot identify the format)") from None
        except (OSError, SyntaxError) as err:
            # Truncated files raise OSError("image file is truncated ...") on load().
            raise ValueError(f"corrupt or truncated image (Pillow: {err})") from None
    return image


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    transposed = ImageOps.exif_transpose(image)
    if transposed is not None and transposed is not image:
        orientation = image.getexif().get(0x0112)
        if orientation not in (None, 1):
            notes.append(f"rotated by EXIF orientation {orientation}")
        image = transposed
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the top 8 bits of a 16-bit range.
        array = np.asarray(image, dtype=np.int64)
        array = (np.clip(array, 0, 65535) >> 8).astype(np.uint8)
        notes.append(f"{mode} (16-bit) grayscale converted to 8-bit RGB")
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
        notes.append("floating-point grayscale converted to RGB")
        return Image.fromarray(array, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        # Transparent pixels become white, as an image viewer on a white page shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"{mode} with transparency composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    notes.append(f"{mode} converted to RGB")
    return image.convert("RGB")


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
        DataError: The file is not a readable image; the message names the file.
    """
    from vgg_mobile.core.errors import DataError

    path = Path(path)
    try:
        with _open_checked(path, max_pixels) as image:
            rgb = _to_rgb(image, [])
            return np.asarray(rgb, dtype=np.uint8)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None


def check_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> ImageCheck:
    """Checks that a file decodes to a usable RGB image, without raising.

    Args:
        path: The file to check.
        max_pixels: Images with more pixels are refused. Defaults to `MAX_PIXELS`.

    Returns:
        An `ImageCheck` with `problem` set if the file cannot be used.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return ImageCheck(path, problem=f"not an image file (suffix {path.suffix!r})")
    notes: list[str] = []
    try:
        with _open_checked(path, max_pixels) as image:
            rgb = _to_rgb(image, notes)
            width, height = rgb.size
    except ValueError as err:
        return ImageCheck(path, problem=str(err))
    except OSError as err:
        return ImageCheck(path, problem=f"cannot read file ({err.strerror or err})")
    if width < 1 or height < 1:
        return ImageCheck(path, problem=f"empty image ({width}x{height})")
    return ImageCheck(path, notes=tuple(notes), size=(width, height))
