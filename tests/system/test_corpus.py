"""The bad-input corpus: every kind of body a client can send, through real HTTP, with its exact status and code.

The server is the real ``python -m captioner serve`` in a child process (tiny untrained BLIP, cache off so that
every pass really decodes and captions), so that the last test can also show the process is still alive and
its resident memory did not grow by more than 200 MB over three passes of the whole corpus.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import importlib.util
import io
import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.images import black_png, photo
from tests.support.processes import ServerProcess

CAPTION = "/api/v1/caption"
MAX_BODY = 1536 * 1024  # 1.5 MiB: above the 1 MB random-bytes case, small enough to cross quickly
MAX_CAPTIONS = 3
MB = 1024 * 1024

# ---------------------------------------------------------------------------------------------- payloads


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@functools.cache
def scene(width: int = 96, height: int = 64) -> Image.Image:
    base = Image.open(io.BytesIO(photo(7, (96, 64)))).convert("RGB")
    return base if (width, height) == base.size else base.resize((width, height))


def png_rgba() -> bytes:
    rgba = scene().convert("RGBA")
    alpha = np.random.default_rng(1).integers(0, 256, (64, 96), dtype=np.uint8)
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def png_palette_transparency() -> bytes:
    paletted = scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    paletted.info["transparency"] = int(np.asarray(paletted)[0, 0])
    return encode(paletted, "PNG")


def png_grey16() -> bytes:
    ramp = np.linspace(0, 65535, 96 * 64).reshape(64, 96).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")  # mode I;16


def jpeg_exif_orientation_6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return encode(scene(), "JPEG", quality=90, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [scene(), scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid all-black 1-bit PNG, streamed through zlib: 900 megapixels in about 100 KB."""
    return black_png(width, height)


def icon_around(embedded: bytes) -> bytes:
    """An ICO whose one directory entry says 256x256 (a 0 byte) but holds ``embedded``, which can be any size:
    Pillow decodes it inside ``Image.open``."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(embedded), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + embedded


def wrapped_base64(name: str) -> str:
    """base64 broken into 76-character lines, as MIME writes it."""
    return base64.encodebytes(payload(name)).decode()


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@functools.cache
def payload(name: str) -> bytes:
    """Built once per session: some (the bomb) take a moment to make."""
    builders: dict[str, Callable[[], bytes]] = {
        "png-rgb": lambda: encode(scene(), "PNG"),
        "png-rgba": png_rgba,
        "png-palette-transparency": png_palette_transparency,
        "png-grey16": png_grey16,
        "jpeg-baseline": lambda: encode(scene(), "JPEG", quality=90),
        "jpeg-progressive": lambda: encode(scene(), "JPEG", quality=90, progressive=True),
        "jpeg-cmyk": lambda: encode(scene().convert("CMYK"), "JPEG", quality=90),
        "jpeg-grey": lambda: encode(scene().convert("L"), "JPEG", quality=90),
        "jpeg-exif-orientation-6": jpeg_exif_orientation_6,
        "gif-animated": animated_gif,
        "webp": lambda: encode(scene(), "WEBP", quality=80),
        "bmp": lambda: encode(scene(), "BMP"),
        "tiff": lambda: encode(scene(), "TIFF", compression="tiff_lzw"),
        "png-1x1": lambda: encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "png-4000x10": lambda: encode(scene(4000, 10), "PNG"),
        "png-10x4000": lambda: encode(scene(10, 4000), "PNG"),
        "text": lambda: b"this is a plain sentence, not a picture\n" * 20,
        "html": lambda: b"<!doctype html><html><body><img src='cat.png'></body></html>",
        "pdf": lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        "svg": lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "heic": lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        "jpeg-truncated": lambda: payload("jpeg-baseline")[: len(payload("jpeg-baseline")) // 2],
        "png-truncated": lambda: payload("png-rgb")[: len(payload("png-rgb")) - 40],
        "png-bad-crc": lambda: (
            payload("png-rgb")[:18] + bytes([payload("png-rgb")[18] ^ 0xFF]) + payload("png-rgb")[19:]
        ),
        "gif-signature-only": lambda: b"GIF89a",
        "tga-no-signature": lambda: encode(scene(), "TGA"),
        "random-1mb": lambda: random_bytes(MB),
        "bomb-30000x30000": png_bomb,
        "ico": lambda: encode(scene(), "ICO", sizes=[(64, 64)]),
        # 49 M pixels (over max_pixels, under Pillow's own default limit) behind an icon directory: before, it
        # was decoded inside Image.open, ahead of the pixel check.
        "ico-bomb": lambda: icon_around(png_bomb(7000, 7000)),
        "over-limit": lambda: random_bytes(MAX_BODY + 1, seed=1),
    }
    return builders[name]()


# ---------------------------------------------------------------------------------------------- requests


def raw(name: str, content_type: str = "image/png", query: str = "") -> dict[str, Any]:
    return {"url": CAPTION + query, "content": payload(name), "headers": {"Content-Type": content_type}}


def multipart(name: str, field: str = "image", data: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "url": CAPTION,
        "files": {field: ("upload.bin", payload(name), "application/octet-stream")},
        "data": data or {},
    }


def json_body(value: Any) -> dict[str, Any]:
    return {"url": CAPTION, "json": value}


def b64(name: str) -> str:
    return base64.b64encode(payload(name)).decode()


def chunked(data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    """A body with no Content-Length (Transfer-Encoding: chunked): the cap must hold while streaming."""

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    return {"url": CAPTION, "content": chunks(), "headers": {"Content-Type": content_type}}


def multipart_with_boundary(declared: str, used: str) -> dict[str, Any]:
    body = (
        (
            f"--{used}\r\n"
            'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + payload("png-rgb")
        + f"\r\n--{used}--\r\n".encode()
    )
    content_type = "multipart/form-data" + (f"; boundary={declared}" if declared else "")
    return {"url": CAPTION, "content": body, "headers": {"Content-Type": content_type}}


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    code: str | None  # None: a success
    request: Callable[[], dict[str, Any]]
    method: str = "POST"
    streamed: bool = False  # the body is a sync generator: only for the sync client


VALID_IMAGES = [
    "png-rgb",
    "png-rgba",
    "png-palette-transparency",
    "png-grey16",
    "jpeg-baseline",
    "jpeg-progressive",
    "jpeg-cmyk",
    "jpeg-grey",
    "jpeg-exif-orientation-6",
    "gif-animated",
    "webp",
    "bmp",
    "tiff",
    "png-1x1",
    "png-4000x10",
    "png-10x4000",
]

CASES: list[Case] = [
    *(Case(f"valid-{name}", 200, None, functools.partial(raw, name)) for name in VALID_IMAGES),
    Case("valid-multipart", 200, None, lambda: multipart("jpeg-baseline")),
    Case("valid-json-base64", 200, None, lambda: json_body({"image": b64("webp")})),
    Case("valid-json-data-url", 200, None, lambda: json_body({"image": "data:image/png;base64," + b64("png-rgba")})),
    Case("valid-octet-stream", 200, None, lambda: raw("bmp", "application/octet-stream")),
    Case("valid-ico", 200, None, lambda: raw("ico", "image/x-icon")),
    Case("valid-json-base64-in-lines", 200, None, lambda: json_body({"image": wrapped_base64("png-rgb")})),
    Case("valid-num-captions-3", 200, None, lambda: raw("png-rgb", query="?num_captions=3")),
    # -- not an image, or a broken one: 400 invalid_image
    Case(
        "empty-body",
        400,
        "invalid_image",
        lambda: {"url": CAPTION, "content": b"", "headers": {"Content-Type": "image/png"}},
    ),
    Case("zero-length-file", 400, "invalid_image", lambda: {"url": CAPTION, "files": {"image": ("a.png", b"")}}),
    Case("text", 400, "invalid_image", lambda: raw("text")),
    Case("html", 400, "invalid_image", lambda: raw("html", "image/jpeg")),
    Case("jpeg-truncated", 400, "invalid_image", lambda: raw("jpeg-truncated", "image/jpeg")),
    Case("png-truncated", 400, "invalid_image", lambda: raw("png-truncated")),
    Case("png-bad-crc", 400, "invalid_image", lambda: raw("png-bad-crc")),
    Case("gif-signature-only", 400, "invalid_image", lambda: raw("gif-signature-only", "image/gif")),
    Case("tga-no-signature", 400, "invalid_image", lambda: raw("tga-no-signature")),
    Case("random-1mb", 400, "invalid_image", lambda: raw("random-1mb", "application/octet-stream")),
    Case("random-1mb-multipart", 400, "invalid_image", lambda: multipart("random-1mb")),
    Case("json-base64-of-text", 400, "invalid_image", lambda: json_body({"image": b64("text")})),
    # -- recognised, but not a format we decode: 415
    Case("pdf", 415, "unsupported_media_type", lambda: raw("pdf", "application/octet-stream")),
    Case("svg", 415, "unsupported_media_type", lambda: raw("svg", "image/svg+xml")),
    Case("heic", 415, "unsupported_media_type", lambda: raw("heic", "image/heic")),
    Case("content-type-text-plain", 415, "unsupported_media_type", lambda: raw("png-rgb", "text/plain")),
    Case("content-type-xml", 415, "unsupported_media_type", lambda: raw("png-rgb", "application/xml")),
    # No Content-Type: read as an image when the magic bytes say so (DESIGN.md, raw-body sniffing), else 415.
    Case("content-type-missing", 200, None, lambda: {"url": CAPTION, "content": payload("png-rgb")}),
    Case(
        "content-type-missing-text",
        415,
        "unsupported_media_type",
        lambda: {"url": CAPTION, "content": payload("text")},
    ),
    # -- too big: 413
    Case("bomb-30000x30000", 413, "too_large", lambda: raw("bomb-30000x30000")),
    Case("bomb-in-json", 413, "too_large", lambda: json_body({"image": b64("bomb-30000x30000")})),
    Case("body-over-limit", 413, "too_large", lambda: raw("over-limit", "application/octet-stream")),
    Case("body-over-limit-chunked", 413, "too_large", lambda: chunked(payload("over-limit")), streamed=True),
    Case("multipart-file-over-limit", 413, "too_large", lambda: multipart("over-limit")),
    Case("ico-bomb", 413, "too_large", lambda: raw("ico-bomb", "image/x-icon")),
    Case("ico-bomb-in-json", 413, "too_large", lambda: json_body({"image": b64("ico-bomb")})),
    # -- malformed requests: 422 invalid_request
    Case("wrong-form-field", 422, "invalid_request", lambda: multipart("png-rgb", field="picture")),
    Case("urlencoded-image-is-text", 422, "invalid_request", lambda: {"url": CAPTION, "data": {"image": "abc"}}),
    Case(
        "form-image-is-text",
        422,
        "invalid_request",
        lambda: {"url": CAPTION, "files": {"other": ("a", b"x")}, "data": {"image": "not a file"}},
    ),
    Case("multipart-wrong-boundary", 422, "invalid_request", lambda: multipart_with_boundary("abc", "xyz")),
    Case("multipart-no-boundary", 422, "invalid_request", lambda: multipart_with_boundary("", "xyz")),
    Case(
        "multipart-garbage",
        422,
        "invalid_request",
        lambda: {
            "url": CAPTION,
            "content": b"--b\r\nno headers at all",
            "headers": {"Content-Type": "multipart/form-data; boundary=b"},
        },
    ),
    Case(
        "invalid-json",
        422,
        "invalid_request",
        lambda: {"url": CAPTION, "content": b'{"image": "abc', "headers": {"Content-Type": "application/json"}},
    ),
    Case(
        "json-not-utf8",
        422,
        "invalid_request",
        lambda: {"url": CAPTION, "content": b'{"image": "\xff\xfe"}', "headers": {"Content-Type": "application/json"}},
    ),
    Case("json-array", 422, "invalid_request", lambda: json_body([b64("png-rgb")])),
    Case("json-no-image", 422, "invalid_request", lambda: json_body({"picture": b64("png-rgb")})),
    Case("json-image-not-string", 422, "invalid_request", lambda: json_body({"image": 12345})),
    Case("invalid-base64", 422, "invalid_request", lambda: json_body({"image": "this is *not* base64!"})),
    Case("base64-bad-padding", 422, "invalid_request", lambda: json_body({"image": b64("png-rgb")[:-3]})),
    *(
        Case(
            f"num-captions-{value}",
            422,
            "invalid_request",
            functools.partial(raw, "png-rgb", query=f"?num_captions={value}"),
        )
        for value in ("0", "-1", "99", "abc", "1.5")
    ),
    Case("num-captions-form-0", 422, "invalid_request", lambda: multipart("png-rgb", data={"num_captions": "0"})),
    Case(
        "num-captions-json-true",
        422,
        "invalid_request",
        lambda: json_body({"image": b64("png-rgb"), "num_captions": True}),
    ),
    Case(
        "num-captions-json-99", 422, "invalid_request", lambda: json_body({"image": b64("png-rgb"), "num_captions": 99})
    ),
    Case(
        "json-image-and-url",
        422,
        "invalid_request",
        lambda: json_body({"image": b64("png-rgb"), "url": "https://a.b/c"}),
    ),
    Case(
        "num-captions-json-string",
        422,
        "invalid_request",
        lambda: json_body({"image": b64("png-rgb"), "num_captions": "2"}),
    ),
    # -- odd inputs that were a 500 once (issue 13): now each a 422
    *(
        Case(
            f"num-captions-{name}",
            422,
            "invalid_request",
            functools.partial(raw, "png-rgb", query=f"?num_captions={value}"),
        )
        for name, value in [
            ("superscript-two", "%C2%B2"),
            ("arabic-indic-one", "%D9%A1"),
            ("fullwidth-two", "%EF%BC%92"),
            ("5000-digits", "9" * 5000),
        ]
    ),
    Case(
        "num-captions-form-superscript",
        422,
        "invalid_request",
        lambda: multipart("png-rgb", data={"num_captions": "\u00b2"}),
    ),
    Case(
        "json-nested-100000",
        422,
        "invalid_request",
        lambda: {
            "url": CAPTION,
            "content": b"[" * 100_000 + b"]" * 100_000,
            "headers": {"Content-Type": "application/json"},
        },
    ),
    Case(
        "json-image-nested-100000",
        422,
        "invalid_request",
        lambda: {
            "url": CAPTION,
            "content": b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
    ),
    Case(
        "json-num-captions-5000-digits",
        422,
        "invalid_request",
        lambda: {
            "url": CAPTION,
            "content": b'{"image": "' + b64("png-rgb").encode() + b'", "num_captions": ' + b"9" * 5000 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
    ),
    Case("base64-non-ascii", 422, "invalid_request", lambda: json_body({"image": "\u00c5" * 64})),
    Case(
        "base64-unicode-line-separator", 422, "invalid_request", lambda: json_body({"image": b64("png-rgb") + "\u2028"})
    ),
    # -- URLs the server must refuse to fetch (refused before any connection: no network needed)
    *(
        Case(f"url-{name}", 400, "url_not_allowed", functools.partial(json_body, {"url": url}))
        for name, url in [
            ("file-scheme", "file:///etc/passwd"),
            ("ftp-scheme", "ftp://example.com/cat.png"),
            ("loopback", "http://127.0.0.1:8000/healthz"),
            ("metadata-service", "http://169.254.169.254/latest/meta-data/"),
            ("decimal-loopback", "http://2130706433/"),
            ("ipv4-mapped-ipv6", "http://[::ffff:127.0.0.1]/"),
            ("private-10", "http://10.0.0.1/cat.png"),
            # A name resolving to a private address gets the answer an unknown name gets (from /etc/hosts: no DNS).
            ("name-resolving-to-loopback", "http://localhost/cat.png"),
        ]
    ),
    # -- the wrong route or method
    Case("get-caption", 405, "method_not_allowed", lambda: {"url": CAPTION}, method="GET"),
    Case("unknown-route", 404, "not_found", lambda: {"url": "/api/v1/nothing-here", "content": b"x"}),
]


def send(client: httpx.Client, case: Case) -> httpx.Response:
    return client.request(case.method, **case.request())


def check(case: Case, response: httpx.Response) -> None:
    assert response.status_code == case.status, f"{case.name}: {response.status_code} {response.text[:300]}"
    body = response.json()
    if case.code is None:
        assert body["status"] == "success"
        assert body["captions"] and all(0 < c["confidence"] <= 1 for c in body["captions"])
        assert len(body["image_sha256"]) == 64
    else:
        assert body["status"] == "error"
        assert body["error"]["code"] == case.code, f"{case.name}: {body}"
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert "Traceback" not in body["error"]["message"]


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    env = {
        "CAPTIONER_LIMITS__MAX_BODY_BYTES": str(MAX_BODY),
        "CAPTIONER_CACHE__MAX_ENTRIES": "0",  # every pass decodes and captions again
        "CAPTIONER_GENERATION__MAX_NUM_CAPTIONS": str(MAX_CAPTIONS),
        "CAPTIONER_BATCHING__MAX_WAIT_MS": "10",
    }
    with ServerProcess(tiny_model_dir, env=env) as process:
        process.baseline_rss = process.rss()  # type: ignore[attr-defined]
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)
    assert len(payload("bomb-30000x30000")) < 200_000  # a real bomb: tiny on the wire, 900 MP decoded


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(client: httpx.Client, case: Case) -> None:
    check(case, send(client, case))


def test_success_reports_the_hash_of_the_decoded_bytes(client: httpx.Client) -> None:
    response = send(client, Case("", 200, None, lambda: json_body({"image": b64("tiff")})))
    assert response.json()["image_sha256"] == hashlib.sha256(payload("tiff")).hexdigest()


def test_exif_orientation_is_applied_before_captioning(client: httpx.Client) -> None:
    """The EXIF-rotated JPEG must caption exactly like its pixels stored upright in a PNG."""

    def caption(data: bytes) -> str:
        response = client.post(CAPTION, content=data, headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 200, response.text
        return str(response.json()["captions"][0]["text"])

    rotated = payload("jpeg-exif-orientation-6")
    upright = Image.open(io.BytesIO(rotated)).transpose(Image.Transpose.ROTATE_270)  # what a viewer shows
    assert upright.size == (64, 96)
    assert caption(rotated) == caption(encode(upright, "PNG"))


def raw_exchange(port: int, request: bytes, *, piece: int = 0, timeout: float = 10) -> bytes:
    """Send bytes on a fresh socket (in ``piece``-sized writes if set) and return the one response that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for start in range(0, len(request), piece or len(request)):
                sock.sendall(request[start : start + (piece or len(request))])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything; its answer is still there
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                head, _, rest = received.partition(b"\r\n\r\n")
                lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if lengths and len(rest) >= int(lengths[0].split(b":")[1]):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return received


# Over captioner.runtime.header_limits.MAX_HEAD_BYTES (64 KiB): our capped httptools protocol answers 431; without
# httptools, uvicorn's h11 protocol (given the same cap) answers 400.
REFUSED = 431 if importlib.util.find_spec("httptools") else 400


def head_request(padding: int) -> bytes:
    image = payload("png-rgb")
    return (
        f"POST {CAPTION} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(image)}\r\nX-Padding: {'a' * padding}\r\n\r\n"
    ).encode() + image


@pytest.mark.parametrize(
    ("padding", "piece", "status"),
    [
        (100 * 1024, 0, REFUSED),
        (4 * MB, 0, REFUSED),
        (100 * 1024, 1500, REFUSED),
        (60 * 1024, 0, 200),
        (60 * 1024, 1500, 200),
    ],
    ids=["100KiB", "4MiB", "100KiB-trickled", "60KiB-under-the-cap", "60KiB-trickled"],
)
def test_huge_header_is_refused_and_the_server_lives(
    server: ServerProcess, padding: int, piece: int, status: int
) -> None:
    answer = raw_exchange(server.port, head_request(padding), piece=piece)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    if status == 431:
        assert b'"code":"headers_too_large"' in answer.replace(b" ", b"")
    assert server.alive()
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_garbage_on_the_socket_is_a_4xx(server: ServerProcess) -> None:
    answer = raw_exchange(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + random_bytes(300))  # TLS hello
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert server.alive()


async def corpus_pass(url: str, concurrency: int = 8) -> list[tuple[Case, httpx.Response]]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(case: Case) -> tuple[Case, httpx.Response]:
            async with limit:
                return case, await client.request(case.method, **case.request())

        return await asyncio.gather(*(one(case) for case in CASES if not case.streamed))


def test_alive_and_memory_bounded_after_three_passes(server: ServerProcess) -> None:
    baseline: int = server.baseline_rss  # type: ignore[attr-defined]
    after: list[int] = []
    for _ in range(3):
        for case, response in asyncio.run(corpus_pass(server.url)):
            check(case, response)
        after.append(server.rss())
    assert server.alive()
    assert httpx.get(server.url + "/readyz").status_code == 200
    growth_mb = (after[-1] - baseline) / MB
    print(f"RSS baseline {baseline / MB:.0f} MB, after passes {[round(a / MB) for a in after]} MB")
    assert growth_mb < 200, f"RSS grew by {growth_mb:.0f} MB over three passes"
