"""Encode test inputs the way clients send them (PNG images, 16 kHz PCM WAV audio)."""

from loadtests.payloads import png, wav

__all__ = ["png", "wav"]
