"""poolkit.media: image references → RGB PIL images, within limits (offline values, data URIs, http, local files).

Images are drawn here; http cases run against a threaded ``http.server`` on 127.0.0.1. Nothing depends on
timing: the slow route blocks on an Event released at teardown, the unreachable URL is a bound socket that
does not listen, and byte counts are checked on an instrumented stream.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from poolkit import media
from poolkit.media import (
    MediaError,
    MediaLimits,
    aload_image_url,
    check_image_size,
    decode_image,
    load_image,
    load_image_url,
)

pytestmark = pytest.mark.unit

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
SIZE = (32, 16)  # the halves align with JPEG's 16-pixel blocks
LEFT, RIGHT = (4, 8), (27, 8)


# --------------------------------------------------------------------------- drawn images


def drawn() -> Image.Image:
    """32x16 RGB: left half red, right half blue."""
    image = Image.new("RGB", SIZE, RED)
    ImageDraw.Draw(image).rectangle([16, 0, 31, 15], fill=BLUE)
    return image


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` but which holds (almost) no pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple) and len(pixel) == 3
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def assert_pixels(image: Image.Image, left: tuple[int, int, int], right: tuple[int, int, int], tol: int = 0) -> None:
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == SIZE
    for xy, want in ((LEFT, left), (RIGHT, right)):
        got = rgb(image, xy)
        assert all(abs(g - w) <= tol for g, w in zip(got, want)), f"pixel {xy}: {got} != {want} (tol {tol})"


def assert_drawn(image: Image.Image, tol: int = 0) -> None:
    assert_pixels(image, RED, BLUE, tol)


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Sizes of the images whose pixels were decoded (``ImageFile.load`` calls)."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def recording_load(self: ImageFile.ImageFile) -> Any:
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    return calls


# --------------------------------------------------------------------------- offline values


def test_pil_rgb_passes_through() -> None:
    image = drawn()
    out = load_image(image)
    assert_drawn(out)


def test_pil_rgba_transparency_goes_onto_white() -> None:
    image = drawn().convert("RGBA")
    ImageDraw.Draw(image).rectangle([16, 0, 31, 15], fill=(0, 0, 255, 0))  # right half fully transparent
    image.putpixel((0, 0), (255, 0, 0, 128))  # half-transparent red
    out = load_image(image)
    assert_pixels(out, RED, WHITE)
    r, g, b = rgb(out, (0, 0))  # as transformers' convert_to_rgb: alpha * colour + (1 - alpha) * white
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_pil_l_and_p_become_rgb() -> None:
    gray = load_image(Image.new("L", SIZE, 100))
    assert gray.mode == "RGB" and gray.getpixel(LEFT) == (100, 100, 100)
    palette = drawn().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert palette.mode == "P"
    assert_drawn(load_image(palette))


def test_pil_p_with_transparency_goes_onto_white() -> None:
    palette = drawn().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = palette.getpixel(RIGHT)  # the blue entry is transparent
    reread = Image.open(io.BytesIO(encode(palette)))
    assert reread.mode == "P" and "transparency" in reread.info
    assert_pixels(load_image(reread), RED, WHITE)


def test_numpy_uint8_shapes() -> None:
    rgb = np.asarray(drawn())
    assert_drawn(load_image(rgb))
    gray = load_image(np.full((16, 32), 100, dtype=np.uint8))
    assert gray.mode == "RGB" and gray.size == SIZE and gray.getpixel(LEFT) == (100, 100, 100)
    one_channel = load_image(np.full((16, 32, 1), 7, dtype=np.uint8))
    assert one_channel.getpixel(RIGHT) == (7, 7, 7)
    rgba = np.zeros((16, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)
    rgba[:, 16:] = (0, 0, 255, 0)
    assert_pixels(load_image(rgba), RED, WHITE)
    assert_drawn(load_image(np.asfortranarray(rgb)))  # any memory layout


def test_numpy_float_in_unit_range() -> None:
    assert_drawn(load_image(np.asarray(drawn()).astype(np.float64) / 255.0))
    out = load_image(np.full((16, 32), 0.2, dtype=np.float32))
    assert out.mode == "RGB" and out.getpixel(LEFT) == (51, 51, 51)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((16, 32, 3), dtype=np.int64), "dtype int64"),
        (np.zeros((3, 16, 32), dtype=np.uint8), "channels first"),
        (np.zeros((16, 32, 2), dtype=np.uint8), "shape (16, 32, 2)"),
        (np.zeros((2, 16, 32, 3), dtype=np.uint8), "HxW, HxWx3 or HxWx4"),
        (np.linspace(-0.5, 2.0, 16 * 32).reshape(16, 32), "got values in [-0.5, 2]"),
        (np.full((16, 32), np.nan), "NaN"),
        (np.zeros((0, 32), dtype=np.uint8), "no pixels"),
    ],
)
def test_numpy_refused(array: np.ndarray, words: str) -> None:
    with pytest.raises(MediaError) as err:
        load_image(array)
    assert words in str(err.value)


def test_encoded_bytes_png_and_jpeg() -> None:
    png = encode(drawn())
    assert_drawn(load_image(png))
    assert_drawn(load_image(bytearray(png)))
    assert_drawn(load_image(memoryview(png)))
    jpeg = encode(drawn(), "JPEG", quality=95)
    assert_drawn(load_image(jpeg), tol=8)
    gray_jpeg = encode(Image.new("L", SIZE, 100), "JPEG")
    assert load_image(gray_jpeg).getpixel(LEFT) == pytest.approx((100, 100, 100), abs=2)


def test_paths(tmp_path: Path) -> None:
    path = tmp_path / "drawn.png"
    path.write_bytes(encode(drawn()))
    assert_drawn(load_image(path))
    assert_drawn(load_image(str(path), path_is_explicit=True))
    with pytest.raises(MediaError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(MediaError, match="too large"):
        load_image(path, MediaLimits(max_bytes=20))
    uri = data_uri(encode(drawn()))
    with pytest.raises(MediaError) as err:
        load_image(uri, path_is_explicit=True)  # declared a path: never parsed as a URL
    assert "image file not found" in str(err.value) and "looks like a URL" in str(err.value)
    assert uri not in str(err.value)  # long values are shortened


def test_plain_strings_are_urls_unless_declared_paths(tmp_path: Path) -> None:
    path = tmp_path / "drawn.png"
    path.write_bytes(encode(drawn()))
    with pytest.raises(MediaError, match="--allowed-local-media-path"):
        load_image(str(path))  # an absolute path without the caller saying so: a URL, and local files are off
    with pytest.raises(MediaError, match=r"unsupported image reference .*pathlib\.Path"):
        load_image("drawn.png")
    assert_drawn(load_image(data_uri(encode(drawn()))))


def test_bad_values() -> None:
    with pytest.raises(MediaError, match="unsupported image input of type int"):
        load_image(123)  # type: ignore[arg-type]
    with pytest.raises(MediaError, match="cannot identify image data from image bytes: received 5 bytes"):
        load_image(b"hello")
    png = encode(drawn())
    with pytest.raises(MediaError, match="truncated or corrupt"):
        load_image(png[: len(png) // 2])
    with pytest.raises(MediaError, match=rf"image bytes is too large: {len(png)} bytes, more than the limit of 20 bytes"):
        load_image(png, MediaLimits(max_bytes=20))
    with pytest.raises(MediaError, match="32x16 = 512 pixels exceeds the limit of 100 pixels"):
        load_image(drawn(), MediaLimits(max_pixels=100))


def test_eps_is_not_among_the_default_formats() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    with pytest.raises(MediaError, match="cannot identify image data"):
        load_image(eps)


def test_pixel_limit_is_checked_before_decoding(load_calls: list[tuple[int, int]]) -> None:
    big = encode(Image.new("RGB", (100, 100), RED))
    assert load_image(big).size == (100, 100)
    assert load_calls == [(100, 100)]  # the probe sees decoding
    load_calls.clear()
    with pytest.raises(MediaError) as err:
        load_image(big, MediaLimits(max_pixels=5000))
    assert "100x100 = 10000 pixels exceeds the limit of 5000 pixels" in str(err.value)
    assert load_calls == []  # refused from the header, nothing decoded


def test_decompression_bombs_are_refused_from_the_header(load_calls: list[tuple[int, int]]) -> None:
    with pytest.raises(MediaError, match="10000x6000 = 60000000 pixels exceeds the limit of 50000000 pixels"):
        decode_image(png_header(10_000, 6_000))  # under Pillow's own guard, over ours
    with pytest.raises(MediaError, match=r"too large: .*pixels"):
        decode_image(png_header(100_000, 100_000))  # Pillow's own guard (2 * MAX_IMAGE_PIXELS) answers first
    assert load_calls == []


def test_check_image_size_counts_like_pillow() -> None:
    limits = MediaLimits(max_pixels=100)
    check_image_size(10, 10, limits)
    with pytest.raises(MediaError, match="10x11 = 110 pixels"):
        check_image_size(10, 11, limits)
    check_image_size(10**6, 10**6, MediaLimits(max_pixels=None))


def test_limits_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        MediaLimits(max_bytes=0)
    with pytest.raises(ValueError, match="timeout"):
        MediaLimits(timeout=0)
    with pytest.raises(ValueError, match="allowed_schemes"):
        MediaLimits(allowed_schemes=frozenset({"ftp"}))
    with pytest.raises(ValueError, match="not an existing directory"):
        MediaLimits(allowed_local_media_path=tmp_path / "missing")
    limits = MediaLimits(allowed_local_media_path=str(tmp_path), allowed_schemes={"HTTP"})  # type: ignore[arg-type]
    assert limits.allowed_local_media_path == tmp_path
    assert limits.allowed_schemes == frozenset({"http"})
    assert MediaLimits().max_bytes == 20 * 1024 * 1024 and MediaLimits().max_pixels == 50_000_000


# --------------------------------------------------------------------------- data URIs and schemes


def test_data_uri() -> None:
    png = encode(drawn())
    assert_drawn(load_image_url(data_uri(png)))
    wrapped = "data:image/png;base64," + base64.encodebytes(png).decode()  # with line breaks
    assert_drawn(load_image_url(wrapped))
    assert_drawn(load_image_url(data_uri(png, "application/octet-stream")))


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("data:image/png;base64,!!!not*base64!!!", "invalid base64 in data URI"),
        ("data:image/png;base64,aGVsbG8", "invalid base64 in data URI"),  # bad padding
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "cannot identify image data from data URI: received 11 bytes"),
        ("data:image/png,rawdata", "must be base64-encoded"),
        ("data:text/plain;base64,aGVsbG8=", "'text/plain' is not an image"),
        ("data:image/png;base64", "malformed data URI"),
    ],
)
def test_bad_data_uris(uri: str, words: str) -> None:
    with pytest.raises(MediaError) as err:
        load_image_url(uri)
    assert words in str(err.value)


def test_data_uri_size_is_checked_before_decoding() -> None:
    uri = data_uri(b"\0" * 3000)
    with pytest.raises(MediaError) as err:
        load_image_url(uri, MediaLimits(max_bytes=1000))
    message = str(err.value)
    assert "data URI is too large: at least 2998 bytes" in message and "limit of 1000 bytes" in message
    assert "AAAA" not in message  # the payload is never echoed


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
        ("", "empty image URL"),
        ("aGVsbG8=", "unsupported image reference"),
    ],
)
def test_unsupported_references(url: str, words: str) -> None:
    with pytest.raises(MediaError) as err:
        load_image_url(url)
    assert words in str(err.value)


def test_schemes_can_be_restricted() -> None:
    limits = MediaLimits(allowed_schemes=frozenset({"data"}))
    with pytest.raises(MediaError, match="URL scheme 'http' is not allowed here"):
        load_image_url("http://127.0.0.1:1/a.png", limits)
    assert_drawn(load_image_url(data_uri(encode(drawn())), limits))


# --------------------------------------------------------------------------- local files


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    png = encode(drawn())
    (allowed / "img.png").write_bytes(png)
    (outside / "secret.png").write_bytes(png)
    (allowed / "escape.png").symlink_to(outside / "secret.png")
    (allowed / "inner.png").symlink_to(allowed / "img.png")
    return {"allowed": allowed, "outside": outside}


def test_local_files_are_refused_by_default(folders: dict[str, Path]) -> None:
    path = folders["allowed"] / "img.png"
    for url in (str(path), path.as_uri()):
        with pytest.raises(MediaError) as err:
            load_image_url(url)
        assert "loading local files is disabled" in str(err.value)
        assert "--allowed-local-media-path" in str(err.value)


def test_local_files_outside_the_folder_are_refused(folders: dict[str, Path]) -> None:
    allowed, outside = folders["allowed"], folders["outside"]
    limits = MediaLimits(allowed_local_media_path=allowed)
    attempts = [
        str(outside / "secret.png"),
        (outside / "secret.png").as_uri(),
        f"{allowed}/../outside/secret.png",  # traversal
        f"file://{allowed}/../outside/secret.png",
        str(allowed / "escape.png"),  # a symlink pointing out
        (allowed / "escape.png").as_uri(),
        str(outside / "missing.png"),  # refused as outside, not "not found": no probing
    ]
    for url in attempts:
        with pytest.raises(MediaError) as err:
            load_image_url(url, limits)
        message = str(err.value)
        assert "outside the allowed local media path" in message, url
        assert "--allowed-local-media-path" in message
    with pytest.raises(MediaError) as err:
        load_image_url(str(allowed / "escape.png"), limits)
    assert "secret" not in str(err.value)  # where the symlink leads is not revealed


def test_local_files_inside_the_folder_are_loaded(folders: dict[str, Path]) -> None:
    allowed = folders["allowed"]
    limits = MediaLimits(allowed_local_media_path=allowed)
    path = allowed / "img.png"
    for url in (str(path), path.as_uri(), f"file://localhost{path}", str(allowed / "inner.png"), f"{allowed}/./sub/../img.png"):
        assert_drawn(load_image_url(url, limits))
    assert_drawn(asyncio.run(aload_image_url(path.as_uri(), limits)))
    with pytest.raises(MediaError, match="image file not found"):
        load_image_url(str(allowed / "missing.png"), limits)
    with pytest.raises(MediaError, match="too large"):
        load_image_url(str(path), MediaLimits(allowed_local_media_path=allowed, max_bytes=20))


def test_local_special_cases(folders: dict[str, Path]) -> None:
    allowed = folders["allowed"]
    limits = MediaLimits(allowed_local_media_path=allowed)
    with pytest.raises(MediaError, match=r"names the host 'evil\.example'"):
        load_image_url("file://evil.example/etc/passwd", limits)
    with pytest.raises(MediaError, match="absolute path"):
        load_image_url("file:img.png", limits)
    no_file = MediaLimits(allowed_local_media_path=allowed, allowed_schemes=frozenset({"data", "http", "https"}))
    with pytest.raises(MediaError, match="loading local files is disabled"):
        load_image_url(str(allowed / "img.png"), no_file)
    if hasattr(os, "mkfifo"):
        os.mkfifo(allowed / "pipe.png")  # opening it must not block
        with pytest.raises(MediaError, match="not a regular file"):
            load_image_url(str(allowed / "pipe.png"), limits)


# --------------------------------------------------------------------------- http


LIMIT = 64 * 1024  # max_bytes for the streaming routes
STREAM_CAP = 256 * 1024 * 1024  # what a streaming route would send to a client that never stops reading


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up early is what the tests do
            super().handle_error(request, client_address)


class Site:
    """A threaded HTTP server on 127.0.0.1 with the routes the tests need."""

    def __init__(self) -> None:
        self.release = threading.Event()  # the slow route answers once this is set (teardown)
        self.streams: dict[str, dict[str, Any]] = {}
        self.good = encode(drawn())
        self.big_pixels = encode(Image.new("RGB", (100, 100), RED))
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: bytes, content_type: str = "image/png", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)

            def stream(self, chunked: bool) -> None:
                record: dict[str, Any] = {"done": threading.Event(), "sent": 0, "ended_by": "cap"}
                site.streams[self.path] = record  # registered before the client sees the headers
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\0" * 16384
                try:
                    while record["sent"] < STREAM_CAP:
                        self.wfile.write(b"4000\r\n" + chunk + b"\r\n" if chunked else chunk)
                        record["sent"] += len(chunk)
                except OSError:
                    record["ended_by"] = "client closed"
                finally:
                    record["done"].set()

            def do_GET(self) -> None:
                try:
                    self.route()
                except OSError:
                    self.close_connection = True

            def route(self) -> None:
                path = urlsplit(self.path).path
                if path == "/good.png":
                    self.reply(200, site.good)
                elif path == "/missing.png":
                    self.reply(404, b"not found", "text/plain")
                elif path == "/page.html":
                    self.reply(200, b"<html><body>not an image</body></html>", "text/html; charset=utf-8")
                elif path == "/blob":
                    self.reply(200, b"hello world", "application/octet-stream")
                elif path == "/declared-large.png":
                    self.reply(200, b"\0" * (LIMIT + 1))
                elif path == "/stream-close.png":
                    self.stream(chunked=False)
                elif path == "/stream-chunked.png":
                    self.stream(chunked=True)
                elif path == "/big-pixels.png":
                    self.reply(200, site.big_pixels)
                elif path == "/redirect":
                    self.reply(302, b"", "text/plain", Location="/good.png")
                elif path == "/loop":
                    self.reply(302, b"", "text/plain", Location="/loop")
                elif path == "/to-file":
                    self.reply(302, b"", "text/plain", Location="file:///etc/passwd")
                elif path == "/to-localhost":
                    self.reply(302, b"", "text/plain", Location=f"http://localhost:{site.port}/good.png")
                elif path == "/slow.png":
                    site.release.wait()
                    self.reply(200, site.good)
                else:
                    self.reply(404, b"no such route", "text/plain")

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="media-test-http", daemon=True)

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with Site() as running:
        yield running


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 that does not listen: connecting is refused, deterministically."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_http_good_and_redirect(site: Site) -> None:
    assert_drawn(load_image_url(f"{site.url}/good.png"))
    assert_drawn(load_image_url(f"{site.url}/redirect"))
    with httpx.Client() as client:  # a caller's client is used and left open
        assert_drawn(load_image_url(f"{site.url}/good.png", client=client))
        assert not client.is_closed


@pytest.mark.parametrize(
    ("route", "words"),
    [
        ("/missing.png", "HTTP 404"),
        ("/page.html", "cannot identify image data from {url}/page.html: the server sent content type text/html"),
        ("/blob", "cannot identify image data from {url}/blob: received 11 bytes of content type application/octet-stream"),
        ("/declared-large.png", "(Content-Length) is too large: 65537 bytes"),
        ("/loop", "more than 2 redirects"),
        ("/to-file", "scheme 'file' is not allowed"),
    ],
)
def test_http_errors(site: Site, route: str, words: str) -> None:
    with pytest.raises(MediaError) as err:
        load_image_url(site.url + route, MediaLimits(max_bytes=LIMIT, max_redirects=2))
    message = str(err.value)
    assert words.format(url=site.url) in message
    assert "Traceback" not in message


@pytest.mark.parametrize("route", ["/stream-close.png", "/stream-chunked.png"])
def test_http_body_without_content_length_is_cut_at_the_limit(site: Site, route: str) -> None:
    with pytest.raises(MediaError) as err:
        load_image_url(site.url + route, MediaLimits(max_bytes=LIMIT))
    assert f"image at {site.url}{route} is too large: at least" in str(err.value)
    assert "limit of 65536 bytes" in str(err.value)
    record = site.streams[route]
    assert record["done"].wait(30), "the server is still sending: the client kept the connection open"
    assert record["ended_by"] == "client closed"  # the client hung up long before the server's cap


def test_http_pixel_limit_before_decoding(site: Site, load_calls: list[tuple[int, int]]) -> None:
    with pytest.raises(MediaError, match="100x100 = 10000 pixels exceeds the limit of 5000 pixels"):
        load_image_url(f"{site.url}/big-pixels.png", MediaLimits(max_pixels=5000))
    assert load_calls == []


def test_http_unreachable(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/a.png"
    with pytest.raises(MediaError) as err:
        load_image_url(url)
    assert f"cannot fetch image from {url}: connection failed" in str(err.value)


def test_http_timeout(site: Site) -> None:
    with pytest.raises(MediaError) as err:
        load_image_url(f"{site.url}/slow.png", MediaLimits(timeout=0.3))
    assert f"timed out fetching image from {site.url}/slow.png (limit 0.3 s)" in str(err.value)


def test_http_domains(site: Site) -> None:
    only_local_ip = MediaLimits(allowed_media_domains=frozenset({"127.0.0.1"}))
    assert_drawn(load_image_url(f"{site.url}/good.png", only_local_ip))
    with pytest.raises(MediaError, match=r"redirect from .* the domain 'localhost' is not in --allowed-media-domains"):
        load_image_url(f"{site.url}/to-localhost", only_local_ip)
    with pytest.raises(MediaError, match=r"the domain '127\.0\.0\.1' is not in --allowed-media-domains"):
        load_image_url(f"{site.url}/good.png", MediaLimits(allowed_media_domains=frozenset({"example.com"})))


def test_http_credentials_are_not_shown(closed_port: int) -> None:
    with pytest.raises(MediaError) as err:
        load_image_url(f"http://user:hunter2@127.0.0.1:{closed_port}/a.png")
    assert "hunter2" not in str(err.value)


# --------------------------------------------------------------------------- exact byte budget (instrumented stream)

CHUNK = 4096


class Endless(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that never ends; counts what the client pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.pulled += CHUNK
            yield b"\0" * CHUNK

    async def __aiter__(self) -> Any:
        while True:
            self.pulled += CHUNK
            yield b"\0" * CHUNK


def endless_transport(body: Endless, **headers: str) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, headers={"Content-Type": "image/png", **headers}, stream=body))


def test_streaming_stops_right_after_the_limit() -> None:
    body = Endless()
    with httpx.Client(transport=endless_transport(body)) as client, pytest.raises(MediaError, match="too large"):
        load_image_url("http://images.example/endless.png", MediaLimits(max_bytes=10 * CHUNK + 1), client=client)
    assert body.pulled == 11 * CHUNK  # one chunk past the limit, never more

    declared = Endless()
    transport = endless_transport(declared, **{"Content-Length": str(10**9)})
    with httpx.Client(transport=transport) as client, pytest.raises(MediaError, match=r"\(Content-Length\) is too large"):
        load_image_url("http://images.example/declared.png", client=client)
    assert declared.pulled == 0  # refused from the header, body never read


def test_async_streaming_stops_right_after_the_limit() -> None:
    body = Endless()

    async def main() -> None:
        async with httpx.AsyncClient(transport=endless_transport(body)) as client:
            await aload_image_url("http://images.example/endless.png", MediaLimits(max_bytes=10 * CHUNK), client=client)

    with pytest.raises(MediaError, match="too large"):
        asyncio.run(main())
    assert body.pulled == 11 * CHUNK


# --------------------------------------------------------------------------- async


def test_async_good_and_redirect(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded_in: list[str] = []
    original = media.decode_image

    def recording_decode(*args: Any, **kwargs: Any) -> Image.Image:
        decoded_in.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(media, "decode_image", recording_decode)
    assert_drawn(asyncio.run(aload_image_url(f"{site.url}/good.png")))
    assert_drawn(asyncio.run(aload_image_url(f"{site.url}/redirect")))
    assert decoded_in and threading.main_thread().name not in decoded_in  # decoded off the event loop
    assert_drawn(asyncio.run(aload_image_url(data_uri(encode(drawn())))))


@pytest.mark.parametrize("route", ["/stream-chunked.png?async", "/stream-close.png?async", "/declared-large.png"])
def test_async_too_large(site: Site, route: str) -> None:
    with pytest.raises(MediaError, match=r"too large: .*limit of 65536 bytes"):
        asyncio.run(aload_image_url(site.url + route, MediaLimits(max_bytes=LIMIT)))
    if route in site.streams:
        assert site.streams[route]["done"].wait(30)
        assert site.streams[route]["ended_by"] == "client closed"


def test_async_errors(site: Site, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/a.png"
    with pytest.raises(MediaError, match=f"cannot fetch image from {url}: connection failed"):
        asyncio.run(aload_image_url(url))
    with pytest.raises(MediaError, match="HTTP 404"):
        asyncio.run(aload_image_url(f"{site.url}/missing.png"))
    with pytest.raises(MediaError, match="timed out"):
        asyncio.run(aload_image_url(f"{site.url}/slow.png", MediaLimits(timeout=0.3)))
    with pytest.raises(MediaError, match="invalid base64 in data URI"):
        asyncio.run(aload_image_url("data:image/png;base64,!!!"))
    with pytest.raises(MediaError, match="loading local files is disabled"):
        asyncio.run(aload_image_url("/etc/hostname"))
