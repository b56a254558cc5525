"""Image decoding and preprocessing shared by export and serving (PIL + numpy, no torch)."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.core.errors import InvalidInput, PayloadTooLarge

SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# leading bytes of each format, to tell a damaged PNG or JPEG from something that is no image
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_format(data: bytes) -> str | None:
    """The image format `data` claims by its leading bytes, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in SIGNATURES.items() if data.startswith(magic)), None)


def declared_pixels(error: Exception) -> str:
    """The pixel count in PIL's decompression-bomb message ("Image size (N pixels) ...")."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return found.group(1) if found else f"more than {Image.MAX_IMAGE_PIXELS}"


def decode_image(data: bytes, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Bytes -> a fully decoded PIL image, refusing what is not an image or is too large.

    With `min_side`, a JPEG is decoded at a reduced scale (libjpeg's DCT scaling, 1/2, 1/4 or
    1/8: Image.draft) as long as its shorter side stays at least `min_side`: a 2048 px photo
    headed for a 256 px resize decodes 4-16x fewer pixels. Other formats decode in full. The
    size limit is checked on the declared size either way.
    """
    if not data:
        raise InvalidInput("empty image: send PNG or JPEG bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels} pixels"
                )
            if min_side is not None and image.format == "JPEG":
                reduce_jpeg(image, min_side)
            image.load()
    except PayloadTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # NOTE: PIL refuses huge declared sizes inside Image.open, before our own check
        raise PayloadTooLarge(
            f"image declares {declared_pixels(error)} pixels; the limit is {max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        claimed = sniff_format(data)
        if claimed is not None:
            raise InvalidInput(
                f"corrupt or truncated {claimed} image: its header does not parse"
            ) from None
        raise InvalidInput(
            f"not a decodable image; expected one of {', '.join(SUPPORTED_FORMATS)}"
        ) from None
    except Exception as error:  # NOTE: PIL's decoders raise many types on damaged data
        what = f"{sniff_format(data) or ''} image".lstrip()
        raise InvalidInput(f"corrupt or truncated {what}: {error}") from None
    if width < 1 or height < 1:
        raise InvalidInput("image has no pixels")
    return upright(image)


def reduce_jpeg(image: Image.Image, min_side: int) -> None:
    """Have a JPEG not yet loaded decode at the largest DCT scale-down (1/2, 1/4, 1/8) that keeps
    both sides at least `min_side` (Pillow picks the factor: floor(side / requested side))."""
    width, height = image.size
    if min(width, height) >= 2 * min_side:
        image.draft(image.mode, (min_side, min_side))


ORIENTATION = 0x0112  # the EXIF tag


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: EXIF Orientation applied (a camera stores a portrait
    photo as landscape pixels plus this tag). Images without the tag are returned as they are."""
    try:
        orientation = image.getexif().get(ORIENTATION, 1)
    except Exception:  # NOTE: a damaged EXIF block is ignored, as viewers ignore it
        return image
    if orientation in (None, 1):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:
        raise InvalidInput(f"EXIF orientation {orientation!r} cannot be applied: {error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent areas composited on black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # 16/32-bit, float
        array = np.nan_to_num(np.asarray(image, dtype=np.float64)).clip(0, None)
        scale = 255.0 / max(1.0, float(array.max()))
        return Image.fromarray(np.rint(array * scale).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """Shorter side to `resize` (bilinear), centre crop `crop` x `crop`: uint8 HWC RGB.

    Only the source region that becomes the crop is resampled, straight to `crop` x `crop`
    (the same geometry as resizing the whole image and cropping it), so memory is bounded by
    the output whatever the aspect ratio: resizing first made a 10000x1 PNG 2,560,000x256.
    """
    image = to_rgb(image)
    width, height = image.size
    scale = resize / min(width, height)
    # the whole image's size after the resize, and the crop's corner in it (never allocated)
    full_width, full_height = max(crop, round(width * scale)), max(crop, round(height * scale))
    left, top = (full_width - crop) // 2, (full_height - crop) // 2
    x, y = width / full_width, height / full_height  # source pixels per resized pixel
    box = (left * x, top * y, (left + crop) * x, (top + crop) * y)
    resized = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.uint8)


def resize_exact(image: Image.Image, size: int) -> np.ndarray:
    """Bilinear resize to size x size: uint8 HWC RGB."""
    resized = to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def digit_pixels(image: Image.Image, size: int = 28, invert_light: bool = True) -> np.ndarray:
    """A digit photo -> uint8 [size, size, 1], light digit on dark (the MNIST convention).

    A mostly light image (dark ink on paper) is inverted; the digit is fitted into the central
    20x20 box as MNIST digits are.
    """
    gray = np.asarray(to_rgb(image).convert("L"), dtype=np.float32)
    if invert_light and np.median(gray) > 127:
        gray = 255.0 - gray
    ink = gray > 0.25 * max(1.0, float(gray.max()))
    if ink.any():
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = gray.shape
    box = round(size * 20 / 28)
    scale = box / max(height, width)
    digit = Image.fromarray(gray.clip(0, 255).astype(np.uint8)).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
    )
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(digit, ((size - digit.width) // 2, (size - digit.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)[..., None]
