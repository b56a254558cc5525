"""Image decoding of the server: what it refuses and how it says so, and every mode to RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidInput, PayloadTooLarge
from service.processing.vision import decode_image, resize_center_crop, to_rgb


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
