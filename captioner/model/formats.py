"""Image formats told by their magic bytes, with nothing heavier than the standard library.

The HTTP layer sniffs raw bodies here to decide whether they are images; an ``api``-role replica, which never
loads a model, must be able to do so without importing torch (``model/preprocessing.py`` decodes, this names).
"""

from __future__ import annotations

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format the magic bytes name, decodable here or not; None when they name no image."""
    return sniff_supported(data) or sniff_unsupported(data)


def sniff_supported(data: bytes) -> str | None:
    """Name a format we decode when its signature is there, to tell "corrupt PNG" from "not an image"."""
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def sniff_unsupported(data: bytes) -> str | None:
    """Name a format we recognise but cannot decode, or None for plain garbage."""
    head = data[:8192]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf-"):
        return "PDF"
    # An SVG document, possibly behind an XML declaration, comments or a doctype; but an HTML page with
    # inline <svg> is not an image.
    preamble = text.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<html" not in text
    if text.startswith(b"<svg") or (preamble and b"<svg" in text):
        return "SVG"
    if head[4:8] == b"ftyp" and head[8:12] in (
        b"heic",
        b"heix",
        b"hevc",
        b"heim",
        b"heis",
        b"mif1",
        b"msf1",
        b"avif",
        b"avis",
    ):
        return "HEIC/HEIF"
    return None
