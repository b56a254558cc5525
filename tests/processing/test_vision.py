"""Image decoding of the server: what it refuses and how it says so, and every mode to RGB."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from service.core.errors import InvalidInput, PayloadTooLarge
from service.processing.vision import decode_image, resize_center_crop, to_rgb
from tests.conftest import ROOT


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


GRAY = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))  # full range


@pytest.mark.parametrize(
    ("data", "error", "needle"),
    [
        (png_declaring(100_000, 100_000), PayloadTooLarge, "declares 10000000000 pixels"),
        (png_declaring(3000, 2000), PayloadTooLarge, "3000x2000 = 6000000 pixels"),
        (b"\x89PNG\r\n\x1a\n", InvalidInput, "corrupt or truncated PNG"),
        (encode(Image.fromarray(GRAY))[:60], InvalidInput, "truncated PNG"),
        (encode(Image.fromarray(GRAY), "JPEG")[:200], InvalidInput, "truncated JPEG"),
        (b"<svg/>", InvalidInput, "not a decodable image"),
        (b"", InvalidInput, "empty image"),
    ],
)
def test_decode_image_says_what_is_wrong(data: bytes, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        decode_image(data, max_pixels=1_000_000)


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(GRAY.astype(np.uint16) * 257),  # I;16
        Image.fromarray(GRAY.astype(np.int32) * 1000),  # I
        Image.fromarray(GRAY.astype(np.float32) / 255),  # F
        Image.merge("LA", (Image.new("L", GRAY.shape[::-1], 255), Image.fromarray(GRAY))),
    ],
    ids=["16-bit", "32-bit", "float", "alpha"],
)
def test_every_mode_becomes_the_same_rgb(image: Image.Image) -> None:
    want = np.repeat(GRAY[..., None], 3, axis=2)
    got = np.asarray(to_rgb(decode_image(encode(image, "TIFF"), 10**6)))
    np.testing.assert_allclose(got, want, atol=1)
    # the centre crop used by 3-channel classifiers converts the same way (16-bit was white)
    crop = resize_center_crop(decode_image(encode(image, "TIFF"), 10**6), 48, 32)
    np.testing.assert_allclose(crop, resize_center_crop(Image.fromarray(GRAY), 48, 32), atol=1)


def resize_whole_then_crop(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """The reference: the whole image resized (shorter side to `resize`), then centre-cropped."""
    width, height = image.size
    scale = resize / min(width, height)
    whole = image.convert("RGB").resize(
        (max(crop, round(width * scale)), max(crop, round(height * scale))),
        Image.Resampling.BILINEAR,
    )
    left, top = (whole.width - crop) // 2, (whole.height - crop) // 2
    return np.asarray(whole.crop((left, top, left + crop, top + crop)))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (100, 60), (1024, 683)])
def test_cropping_before_resizing_gives_the_same_pixels(size: tuple[int, int]) -> None:
    """Same geometry as resizing the whole image first: trained models see the same input."""
    rng = np.random.default_rng(size[0])
    noise = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    got = resize_center_crop(noise, 256, 224).astype(int)
    want = resize_whole_then_crop(noise, 256, 224).astype(int)
    assert got.shape == want.shape == (224, 224, 3)
    assert np.abs(got - want).max() <= 1  # rounding only, even on noise


@pytest.mark.parametrize("size", [(10_000, 1), (1, 10_000), (40_000, 1), (2000, 1)])
def test_extreme_aspect_ratios_cost_no_more_than_the_output(size: tuple[int, int]) -> None:
    """A 10000x1 PNG (110 bytes) used to be resized to 2,560,000x256 first (+2.6 GB). Measured
    in a fresh process, whose peak memory is this resize's alone."""
    data = encode(Image.new("RGB", size, (200, 30, 30)))
    assert len(data) < 400
    script = (
        "import resource, sys\n"
        "from service.processing.vision import decode_image, resize_center_crop\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "pixels = resize_center_crop(decode_image(sys.stdin.buffer.read(), 40_000_000), 256, 224)\n"
        "assert pixels.shape == (224, 224, 3) and (pixels == [200, 30, 30]).all()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=data, capture_output=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    grown_mib = float(done.stdout)
    assert grown_mib < 100, f"peak memory grew {grown_mib:.0f} MiB"


def exif_rotated(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    """A camera stores a portrait photo as landscape pixels plus an Orientation tag."""
    upright = Image.new("RGB", (40, 60), (0, 0, 0))
    upright.paste((255, 255, 255), (0, 0, 40, 20))  # white band at the top
    stored = {3: upright.rotate(180), 6: upright.rotate(90, expand=True)}.get(orientation)
    stored = stored or upright.rotate(-90, expand=True)
    decoded = decode_image(exif_rotated(stored, orientation), 10**6)
    assert decoded.size == (40, 60)
    gray = np.asarray(decoded.convert("L"), dtype=float)
    assert gray[:15].mean() > 200 and gray[25:].mean() < 50


def test_damaged_exif_is_ignored() -> None:
    data = exif_rotated(Image.new("RGB", (8, 6)), 6).replace(b"Exif\x00\x00", b"Exif\x00\x00\xff")
    assert decode_image(data, 10**6).size in ((8, 6), (6, 8))


def encoded(fmt: str, width: int, height: int) -> bytes:
    rng = np.random.default_rng(width)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def test_a_big_jpeg_decodes_reduced_but_never_below_the_side_asked_for() -> None:
    data = encoded("JPEG", 1600, 1200)
    assert decode_image(data, 10**8).size == (1600, 1200)
    assert decode_image(data, 10**8, min_side=300).size == (400, 300)  # 1/4
    assert decode_image(data, 10**8, min_side=512).size == (800, 600)  # 1/2: 1/4 would be 300
    assert decode_image(data, 10**8, min_side=700).size == (1600, 1200)  # 1/2 would be 600


def test_draft_applies_to_jpeg_only_and_the_pixel_limit_to_the_declared_size() -> None:
    assert decode_image(encoded("PNG", 1600, 1200), 10**8, min_side=300).size == (1600, 1200)
    with pytest.raises(PayloadTooLarge):
        decode_image(encoded("JPEG", 1600, 1200), 1_000_000, min_side=300)
