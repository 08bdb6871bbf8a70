"""Image references → RGB :class:`PIL.Image.Image`, safely (multimodal CLIP/SigLIP embeddings).

Two front doors:

- :func:`load_image` for offline values: a PIL image, a numpy array, encoded
  bytes, a :class:`pathlib.Path` (or a ``str`` the caller declares to be a
  path), or a URL string.
- :func:`load_image_url` / :func:`aload_image_url` for the server's chat-style
  ``image_url`` strings: ``data:image/...;base64,...`` URIs, ``http(s)://``
  URLs, and — only when the operator allows a folder — ``file://`` URLs and
  absolute paths.

Every result is an RGB image (transparency composited onto white, as
transformers' ``image_transforms.convert_to_rgb`` does), and every failure is a
:class:`MediaError` (a ``ValueError``, so the server answers 400) whose message
names the problem and the limit, without a traceback.

Security choices
----------------
What reaches the server is untrusted: a few bytes of JSON can ask it to fetch,
read and decode anything. Each limit in :class:`MediaLimits` closes one door.

* **Pixel limit before decode.** An encoded image is small, its decoded form is
  ``width × height × channels`` bytes: a 50 kB PNG may declare 100000×100000
  pixels (30 GB as RGB), a *decompression bomb*. ``Image.open`` parses only the
  header, so the size is checked there, before ``load()`` allocates anything.
  Pixels are counted as ``PIL.Image.MAX_IMAGE_PIXELS`` counts them
  (``max(1, w) * max(1, h)``, refused when greater than the limit). Pillow's
  own process-wide guard (``Image.open`` refuses more than
  ``2 * MAX_IMAGE_PIXELS``) stays as a second fence and is reported the same
  way; this module never changes that global (other threads decode too).
* **Streaming byte limit.** A declared ``Content-Length`` over ``max_bytes`` is
  refused without reading the body; but the header is optional (chunked or
  close-delimited bodies) and may lie, so the body is read in chunks and the
  download aborted as soon as the count passes ``max_bytes``: memory held is
  at most ``max_bytes`` plus one network chunk. The request asks for
  ``Accept-Encoding: identity`` so that what is counted is what is held. Data
  URIs are measured before base64 decoding, files by ``fstat`` and by a bounded
  read (a file may grow while it is read).
* **Time limit.** ``timeout`` bounds connecting and each read, and the whole
  download is checked against it between chunks, so a server that answers one
  byte at a time cannot hold a worker for long.
* **Redirects are followed by hand** (at most ``max_redirects``), each hop
  checked like the first URL (scheme, ``allowed_media_domains``), so a redirect
  cannot lead to a target the first check would have refused.
* **Local files are opt-in.** A server that opens any path a client names lets
  anyone read the host's files (keys, ``/proc/self/environ``) or probe which
  exist. ``file://`` URLs and absolute paths are refused unless the operator
  names a folder (``--allowed-local-media-path``, as in vLLM), and the path
  must resolve — symlinks and ``..`` resolved — inside it. A path outside is
  refused before looking whether it exists; messages show the path as the
  client sent it, never where a symlink led. Only regular files are read (a
  FIFO or ``/dev/zero`` would block or never end): the file is opened
  non-blocking and without following a final symlink, then checked with
  ``fstat``.
* **Few decoders.** Pillow opens some 40 formats, some through rarely
  exercised parsers or external programs (EPS runs Ghostscript);
  ``image_formats`` restricts ``Image.open`` to the common web formats.
* **Quiet errors.** URLs are shown without credentials and shortened; data URIs
  and fetched bodies are never echoed back.

Offline values given to :func:`load_image` come from the caller itself: a
:class:`~pathlib.Path` is read wherever it is (with the byte limit); only the
size limits apply.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

try:
    from PIL import Image, ImageOps, UnidentifiedImageError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("poolkit.media needs Pillow for images: pip install pillow") from exc

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_IMAGE_FORMATS",
    "DEFAULT_LIMITS",
    "ImageSource",
    "MediaError",
    "MediaLimits",
    "aload_image_url",
    "check_byte_size",
    "check_image_size",
    "convert_to_rgb",
    "decode_image",
    "display_url",
    "load_image",
    "load_image_file",
    "load_image_url",
]

logger = logging.getLogger(__name__)

MiB = 1 << 20

#: Formats ``Image.open`` may try (Pillow's format ids). The web's image formats; no EPS (Ghostscript),
#: no scientific or legacy formats. Ids this Pillow does not know (e.g. AVIF on an old build) are skipped.
DEFAULT_IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP", "TIFF", "ICO", "AVIF")

_URL_SCHEMES = ("data", "http", "https", "file")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_REQUEST_HEADERS = {
    "Accept": "image/*,*/*;q=0.8",
    "Accept-Encoding": "identity",  # count what we hold: no transparent decompression
    "User-Agent": "poolkit-media",
}
# Content types that are certainly not an image: refused before the body is read.
_NOT_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml", "application/javascript")


@dataclass(frozen=True)
class MediaLimits:
    """What :func:`load_image` / :func:`load_image_url` accept (one instance per server or engine).

    Attributes:
        max_bytes: the largest encoded image, in bytes (default 20 MiB): a download, a decoded data
            URI, a file or a ``bytes`` value. Downloads stop as soon as they pass it.
        max_pixels: the largest ``width × height`` (default 50,000,000), checked from the image header
            before the pixels are decoded; ``None`` leaves only Pillow's own guard
            (``2 * PIL.Image.MAX_IMAGE_PIXELS``). Counted like ``PIL.Image.MAX_IMAGE_PIXELS``.
        timeout: seconds for an ``http(s)`` fetch (default 10): connecting, each read, and the whole
            download (checked between chunks).
        allowed_local_media_path: the folder under which ``file://`` URLs and absolute paths may be
            read (vLLM's ``--allowed-local-media-path``); ``None`` (default) refuses local files. It
            must exist and be a directory.
        allowed_schemes: URL schemes :func:`load_image_url` accepts, among ``data``, ``http``,
            ``https`` and ``file`` (default: all four; ``file`` still needs
            ``allowed_local_media_path``).
        allowed_media_domains: host names ``http(s)`` URLs (and their redirects) may name (vLLM's
            ``--allowed-media-domains``); ``None`` (default) allows any host.
        max_redirects: redirects followed per fetch (default 5).
        image_formats: Pillow format ids ``Image.open`` may try (default :data:`DEFAULT_IMAGE_FORMATS`);
            ``None`` allows every format this Pillow can read.
        exif_transpose: rotate decoded images by their EXIF orientation (as ``transformers.image_utils.
            load_image`` does). Off by default, as in vLLM and sentence-transformers, so that the same
            bytes embed the same way everywhere.
    """

    max_bytes: int = 20 * MiB
    max_pixels: int | None = 50_000_000
    timeout: float = 10.0
    allowed_local_media_path: Path | None = None
    allowed_schemes: frozenset[str] = frozenset(_URL_SCHEMES)
    allowed_media_domains: frozenset[str] | None = None
    max_redirects: int = 5
    image_formats: tuple[str, ...] | None = DEFAULT_IMAGE_FORMATS
    exif_transpose: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {self.max_bytes!r}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int) or self.max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive integer or None, got {self.max_pixels!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        if not isinstance(self.max_redirects, int) or self.max_redirects < 0:
            raise ValueError(f"max_redirects must be a non-negative integer, got {self.max_redirects!r}")
        schemes = frozenset(s.lower() for s in self.allowed_schemes)
        unknown = schemes - set(_URL_SCHEMES)
        if unknown:
            raise ValueError(f"allowed_schemes: unsupported {sorted(unknown)}; choose among {list(_URL_SCHEMES)}")
        object.__setattr__(self, "allowed_schemes", schemes)
        if self.allowed_media_domains is not None:
            domains = frozenset(_normalize_host(d) for d in self.allowed_media_domains)
            object.__setattr__(self, "allowed_media_domains", domains)
        if self.image_formats is not None:
            object.__setattr__(self, "image_formats", tuple(f.upper() for f in self.image_formats))
        if self.allowed_local_media_path is not None:
            folder = Path(self.allowed_local_media_path).expanduser()
            if not folder.is_dir():
                raise ValueError(f"allowed_local_media_path {str(folder)!r} is not an existing directory")
            object.__setattr__(self, "allowed_local_media_path", folder)


DEFAULT_LIMITS = MediaLimits()


class MediaError(ValueError):
    """An image reference that cannot or may not be loaded; the message is fit for an HTTP 400 body."""


#: What :func:`load_image` accepts.
ImageSource = Union[Image.Image, np.ndarray, bytes, bytearray, memoryview, "os.PathLike[str]", str]


# --------------------------------------------------------------------------- messages and checks


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def display_url(url: str) -> str:
    """``url`` as error messages and logs show it: no credentials, no data URI payload, shortened."""
    if url[:5].lower() == "data:":
        header = url[5:].split(",", 1)[0]
        return f"data URI (data:{_shorten(header, 60)},… {len(url)} characters)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return _shorten(repr(url))
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        url = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return _shorten(url)


def _human(num_bytes: int) -> str:
    return f"{num_bytes} bytes ({num_bytes / MiB:.1f} MiB)" if num_bytes >= MiB else f"{num_bytes} bytes"


def check_byte_size(num_bytes: int, limits: MediaLimits, *, source: str = "image", at_least: bool = False) -> None:
    """Raise :class:`MediaError` when ``num_bytes`` passes ``limits.max_bytes`` (``at_least``: a lower bound)."""
    if num_bytes > limits.max_bytes:
        size = f"at least {num_bytes} bytes" if at_least else _human(num_bytes)
        raise MediaError(f"{source} is too large: {size}, more than the limit of {_human(limits.max_bytes)}")


def check_image_size(width: int, height: int, limits: MediaLimits, *, source: str = "image") -> None:
    """Raise :class:`MediaError` when ``width × height`` passes ``limits.max_pixels`` or is empty.

    Pixels are counted as Pillow counts them for ``MAX_IMAGE_PIXELS``: ``max(1, w) * max(1, h)``.
    """
    if width < 1 or height < 1:
        raise MediaError(f"{source} has no pixels ({width}x{height})")
    if limits.max_pixels is None:
        return
    pixels = max(1, width) * max(1, height)
    if pixels > limits.max_pixels:
        raise MediaError(
            f"{source} is too large: {width}x{height} = {pixels} pixels exceeds the limit of "
            f"{limits.max_pixels} pixels"
        )


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


# --------------------------------------------------------------------------- decoding


def _open_formats(limits: MediaLimits) -> tuple[str, ...] | None:
    if limits.image_formats is None:
        return None
    Image.init()
    return tuple(f for f in limits.image_formats if f in Image.OPEN)


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in mode RGB, as transformers' ``image_transforms.convert_to_rgb`` makes it.

    Transparency (an alpha band, a palette with alpha, or a ``transparency`` key: Pillow's
    ``has_transparency_data``) is composited onto an opaque white background; every other mode
    (L, P, CMYK, I;16 …) is converted with ``Image.convert("RGB")``. An RGB image is returned as is.
    """
    try:
        has_alpha = image.has_transparency_data
    except AttributeError:  # Pillow < 10.1
        has_alpha = image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if image.mode == "RGB":
            return image
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise MediaError(f"cannot convert an image in mode {image.mode} to RGB: {exc}") from None


def decode_image(
    data: bytes, limits: MediaLimits = DEFAULT_LIMITS, *, source: str = "image data", content_type: str | None = None
) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, …) into an RGB image, within ``limits``.

    The byte and pixel limits are checked before any pixel is decoded. ``source`` and
    ``content_type`` only make error messages precise.
    """
    check_byte_size(len(data), limits, source=source)
    try:
        image: Image.Image = Image.open(BytesIO(data), formats=_open_formats(limits))
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{source} is too large: {exc}") from None
    except UnidentifiedImageError:
        received = f"{len(data)} bytes" + (f" of content type {content_type}" if content_type else "")
        formats = ", ".join(limits.image_formats) if limits.image_formats else "any format Pillow reads"
        raise MediaError(f"cannot identify image data from {source}: received {received}; supported formats: {formats}") from None
    except Exception as exc:  # a broken header: Pillow raises assorted errors
        raise MediaError(f"cannot identify image data from {source}: {type(exc).__name__}: {exc}") from None
    check_image_size(image.width, image.height, limits, source=source)
    try:
        image.load()
        if limits.exif_transpose:
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{source} is too large: {exc}") from None
    except Exception as exc:  # truncated or corrupt pixel data
        raise MediaError(f"cannot decode image from {source}: the data is truncated or corrupt ({exc})") from None
    return convert_to_rgb(image)


def _from_array(array: np.ndarray, limits: MediaLimits) -> Image.Image:
    """A channels-last numpy image (HxW, HxWx1, HxWx3, HxWx4; uint8, or float in [0, 1]) → PIL image."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            hint = " (channels first? pass array.transpose(1, 2, 0))"
        raise MediaError(
            f"numpy image arrays must be HxW, HxWx3 or HxWx4 (channels last), got shape {tuple(array.shape)}{hint}"
        )
    height, width = array.shape[:2]
    check_image_size(width, height, limits, source="numpy image array")
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise MediaError("float image arrays must hold finite values in [0, 1], got NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise MediaError(
                f"float image arrays must hold values in [0, 1], got values in [{low:g}, {high:g}] "
                "(for 0-255 values use dtype uint8)"
            )
        array = np.rint(array.astype(np.float32) * 255.0).astype(np.uint8)
    else:
        raise MediaError(f"numpy image arrays must be uint8 (0-255) or float (0-1), got dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _read_file(path: Path, limits: MediaLimits, *, shown: str, no_follow: bool = False) -> bytes:
    """The bytes of a regular file, at most ``limits.max_bytes`` of them.

    Opened non-blocking (a FIFO cannot hang the call) and, with ``no_follow``, refusing a symlink
    as the last component (the path was resolved just before); checked with ``fstat`` on the open
    file, so what is checked is what is read. Messages show ``shown``, never the resolved path.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if no_follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MediaError(f"image file not found: {shown}") from None
    except OSError as exc:
        raise MediaError(f"cannot open image file {shown}: {exc.strerror or type(exc).__name__}") from None
    chunks: list[bytes] = []
    size = 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(f"not a regular file: {shown}")
        check_byte_size(info.st_size, limits, source=f"image file {shown}")
        while size <= limits.max_bytes:
            chunk = os.read(fd, min(1 << 20, limits.max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise MediaError(f"cannot read image file {shown}: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    check_byte_size(len(data), limits, source=f"image file {shown}", at_least=True)  # it grew since fstat
    return data


def load_image_file(path: str | os.PathLike[str], limits: MediaLimits = DEFAULT_LIMITS) -> Image.Image:
    """Read and decode an image file the caller chose (offline use: no folder restriction)."""
    shown = _shorten(os.fsdecode(path))
    try:
        data = _read_file(Path(path), limits, shown=shown)
    except MediaError as exc:
        if isinstance(path, str) and _SCHEME_RE.match(path) and not os.path.isabs(path):
            raise MediaError(f"{exc} (this looks like a URL, not a path: load it with load_image_url)") from None
        raise
    return decode_image(data, limits, source=f"image file {shown}")


def load_image(
    source: ImageSource, limits: MediaLimits = DEFAULT_LIMITS, *, path_is_explicit: bool = False
) -> Image.Image:
    """Any offline image value → an RGB :class:`PIL.Image.Image`.

    - a PIL image: converted to RGB (transparency onto white); an RGB image is returned as is;
    - a numpy array: HxW, HxWx1, HxWx3 or HxWx4, channels last, ``uint8`` or float in [0, 1];
    - ``bytes`` / ``bytearray`` / ``memoryview``: an encoded image (PNG, JPEG, …);
    - a :class:`pathlib.Path` (any ``os.PathLike``): the file, wherever it is;
    - a ``str``: a path when ``path_is_explicit``, otherwise a URL for :func:`load_image_url`
      (data URI, http(s), or ``file://`` under ``allowed_local_media_path``).

    Raises :class:`MediaError` for anything else, or over the limits.
    """
    if isinstance(source, Image.Image):
        check_image_size(source.width, source.height, limits, source="PIL image")
        return convert_to_rgb(source)
    if isinstance(source, np.ndarray):
        return convert_to_rgb(_from_array(source, limits))
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        check_byte_size(size, limits, source="image bytes")
        return decode_image(source if isinstance(source, bytes) else bytes(source), limits, source="image bytes")
    if isinstance(source, os.PathLike):
        return load_image_file(source, limits)
    if isinstance(source, str):
        if path_is_explicit:
            return load_image_file(source, limits)
        return load_image_url(source, limits)
    raise MediaError(
        f"unsupported image input of type {type(source).__name__}: expected a PIL image, a numpy array, "
        "encoded image bytes, a pathlib.Path, or a data:/http(s):// URL string"
    )


# --------------------------------------------------------------------------- URLs: data, local, http


def _classify(url: Any, limits: MediaLimits) -> tuple[str, str]:
    """``(kind, url)`` with kind ``data`` | ``local`` | ``http``; raises for what is not accepted."""
    if not isinstance(url, str):
        raise MediaError(f"an image URL must be a string, got {type(url).__name__}")
    url = url.strip()
    if not url:
        raise MediaError("empty image URL")
    if os.path.isabs(url):
        return "local", url
    match = _SCHEME_RE.match(url)
    if match is None:
        raise MediaError(
            f"unsupported image reference {display_url(url)}: expected a data: URI, an http(s):// URL, or (when "
            "--allowed-local-media-path allows it) a file:// URL or an absolute path; offline, pass a "
            "pathlib.Path to load a local file"
        )
    scheme = match.group(1).lower()
    if scheme not in _URL_SCHEMES:
        raise MediaError(f"unsupported URL scheme {scheme!r} in {display_url(url)}; supported: data, http, https, file")
    if scheme not in limits.allowed_schemes:
        raise MediaError(f"URL scheme {scheme!r} is not allowed here (allowed: {', '.join(sorted(limits.allowed_schemes))})")
    if scheme == "data":
        return "data", url
    if scheme == "file":
        return "local", url
    return "http", url


def _decode_data_uri(url: str, limits: MediaLimits) -> tuple[bytes, str]:
    """``data:[<media type>][;base64],<data>`` → ``(bytes, media type)``; base64 only, measured before decoding."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise MediaError("malformed data URI: no ',' between the header and the data")
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0]
    if "base64" not in params[1:]:
        raise MediaError("data URIs must be base64-encoded (data:image/png;base64,...)")
    if media_type and not (media_type.startswith("image/") or media_type == "application/octet-stream"):
        raise MediaError(f"data URI media type {media_type!r} is not an image")
    payload = "".join(payload.split())  # line breaks inside the payload are tolerated
    check_byte_size(len(payload) // 4 * 3 - 2, limits, source="data URI", at_least=True)
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters
        raise MediaError(f"invalid base64 in data URI: {exc}") from None
    return data, media_type


def _load_data_uri(url: str, limits: MediaLimits) -> Image.Image:
    data, media_type = _decode_data_uri(url, limits)
    return decode_image(data, limits, source="data URI", content_type=media_type or None)


def _local_path(url: str) -> Path:
    if url[:5].lower() != "file:":
        return Path(url)
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(
            f"file URL {display_url(url)} names the host {parts.netloc!r}; only local files are supported "
            "(file:///absolute/path)"
        )
    path = Path(url2pathname(parts.path))
    if not path.is_absolute():
        raise MediaError(f"file URL {display_url(url)} must hold an absolute path (file:///absolute/path)")
    return path


def _read_local(url: str, limits: MediaLimits) -> bytes:
    """The bytes of a ``file://`` URL or absolute path, only under ``limits.allowed_local_media_path``."""
    shown = display_url(url)
    root = limits.allowed_local_media_path
    if root is None or "file" not in limits.allowed_schemes:
        raise MediaError(
            f"cannot load {shown}: loading local files is disabled; start the server with "
            "--allowed-local-media-path DIR (offline: MediaLimits(allowed_local_media_path=DIR)) "
            "to allow image files under DIR"
        )
    path = _local_path(url)
    try:
        allowed = root.resolve(strict=True)
        resolved = path.resolve()  # not strict: a missing file is reported after the containment check
    except (OSError, RuntimeError):  # a symlink loop, an unreadable folder
        raise MediaError(f"cannot resolve the local path {shown}") from None
    if not resolved.is_relative_to(allowed):
        raise MediaError(
            f"local path {shown} is outside the allowed local media path; only files under "
            f"--allowed-local-media-path {root} may be loaded"
        )
    return _read_file(resolved, limits, shown=shown, no_follow=True)


def _load_local(url: str, limits: MediaLimits) -> Image.Image:
    return decode_image(_read_local(url, limits), limits, source=display_url(url))


def _check_http_target(url: httpx.URL, limits: MediaLimits, *, redirect_from: str | None = None) -> None:
    """Scheme and host of an http(s) URL (the first one or a redirect target) against ``limits``."""
    where = f"redirect from {redirect_from} to {display_url(str(url))}" if redirect_from else display_url(str(url))
    scheme = url.scheme.lower()
    if scheme not in ("http", "https") or scheme not in limits.allowed_schemes:
        raise MediaError(f"refused {where}: scheme {scheme!r} is not allowed for downloads")
    host = _normalize_host(url.host or "")
    if not host:
        raise MediaError(f"refused {where}: the URL has no host")
    if limits.allowed_media_domains is not None and host not in limits.allowed_media_domains:
        raise MediaError(
            f"refused {where}: the domain {host!r} is not in --allowed-media-domains "
            f"({', '.join(sorted(limits.allowed_media_domains)) or 'none'})"
        )


def _check_response(response: httpx.Response, shown: str, limits: MediaLimits) -> str | None:
    """Status, content type and declared length of a final response; returns its content type."""
    if not 200 <= response.status_code < 300:
        reason = f" {response.reason_phrase}" if response.reason_phrase else ""
        raise MediaError(f"cannot fetch image from {shown}: HTTP {response.status_code}{reason}")
    content_type = response.headers.get("content-type")
    main_type = (content_type or "").split(";", 1)[0].strip().lower()
    if main_type.startswith(_NOT_IMAGE_TYPES):
        raise MediaError(f"cannot identify image data from {shown}: the server sent content type {main_type}, not an image")
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit():
        check_byte_size(int(declared), limits, source=f"image at {shown} (Content-Length)")
    return main_type or None


def _check_deadline(deadline: float, shown: str, limits: MediaLimits) -> None:
    if time.monotonic() > deadline:
        raise MediaError(f"timed out fetching image from {shown} (limit {limits.timeout:g} s)")


class _Download:
    """Chunks of one response body, refused as soon as they pass ``max_bytes`` or the deadline."""

    def __init__(self, shown: str, limits: MediaLimits, deadline: float) -> None:
        self.shown, self.limits, self.deadline = shown, limits, deadline
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        check_byte_size(self.size, self.limits, source=f"image at {self.shown}", at_least=True)
        self.chunks.append(chunk)
        _check_deadline(self.deadline, self.shown, self.limits)


    def data(self) -> bytes:
        return b"".join(self.chunks)


def _transport_error(exc: Exception, shown: str, limits: MediaLimits) -> MediaError:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return MediaError(f"timed out fetching image from {shown} (limit {limits.timeout:g} s)")
    if isinstance(exc, httpx.ConnectError):
        return MediaError(f"cannot fetch image from {shown}: connection failed ({exc or 'no reason given'})")
    return MediaError(f"cannot fetch image from {shown}: {type(exc).__name__}: {exc or 'no reason given'}")


def _fetch_http(url: str, limits: MediaLimits, client: httpx.Client | None) -> tuple[bytes, str | None]:
    import httpx

    shown = display_url(url)
    own = client is None
    http = httpx.Client() if client is None else client
    deadline = time.monotonic() + limits.timeout
    try:
        request = http.build_request("GET", url, headers=_REQUEST_HEADERS, timeout=limits.timeout)
        _check_http_target(request.url, limits)
        for _hop in range(limits.max_redirects + 1):
            _check_deadline(deadline, shown, limits)  # redirects count against the same time
            logger.debug("fetching image %s", display_url(str(request.url)))
            response = http.send(request, stream=True, follow_redirects=False)
            try:
                if response.next_request is not None:  # a redirect: check the target, then follow it
                    _check_http_target(response.next_request.url, limits, redirect_from=shown)
                    request = response.next_request
                    continue
                content_type = _check_response(response, shown, limits)
                download = _Download(shown, limits, deadline)
                for chunk in response.iter_bytes():
                    download.add(chunk)
                return download.data(), content_type
            finally:
                response.close()
        raise MediaError(f"cannot fetch image from {shown}: more than {limits.max_redirects} redirects")
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise _transport_error(exc, shown, limits) from None
    finally:
        if own:
            http.close()


async def _afetch_http(url: str, limits: MediaLimits, client: httpx.AsyncClient | None) -> tuple[bytes, str | None]:
    import httpx

    shown = display_url(url)
    own = client is None
    http = httpx.AsyncClient() if client is None else client
    deadline = time.monotonic() + limits.timeout
    try:
        request = http.build_request("GET", url, headers=_REQUEST_HEADERS, timeout=limits.timeout)
        _check_http_target(request.url, limits)
        for _hop in range(limits.max_redirects + 1):
            _check_deadline(deadline, shown, limits)  # redirects count against the same time
            logger.debug("fetching image %s", display_url(str(request.url)))
            response = await http.send(request, stream=True, follow_redirects=False)
            try:
                if response.next_request is not None:
                    _check_http_target(response.next_request.url, limits, redirect_from=shown)
                    request = response.next_request
                    continue
                content_type = _check_response(response, shown, limits)
                download = _Download(shown, limits, deadline)
                async for chunk in response.aiter_bytes():
                    download.add(chunk)
                return download.data(), content_type
            finally:
                await response.aclose()
        raise MediaError(f"cannot fetch image from {shown}: more than {limits.max_redirects} redirects")
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise _transport_error(exc, shown, limits) from None
    finally:
        if own:
            await http.aclose()


def load_image_url(
    url: str, limits: MediaLimits = DEFAULT_LIMITS, *, client: httpx.Client | None = None
) -> Image.Image:
    """An ``image_url`` string → an RGB image (blocking).

    Accepts ``data:image/...;base64,...`` URIs, ``http(s)://`` URLs (streamed with ``limits``' byte,
    time and redirect limits; ``client`` reuses an :class:`httpx.Client`, otherwise one is made for
    the call) and, only under ``limits.allowed_local_media_path``, ``file://`` URLs and absolute
    paths. Raises :class:`MediaError`.
    """
    kind, url = _classify(url, limits)
    if kind == "data":
        return _load_data_uri(url, limits)
    if kind == "local":
        return _load_local(url, limits)
    data, content_type = _fetch_http(url, limits, client)
    return decode_image(data, limits, source=display_url(url), content_type=content_type)


async def aload_image_url(
    url: str, limits: MediaLimits = DEFAULT_LIMITS, *, client: httpx.AsyncClient | None = None
) -> Image.Image:
    """:func:`load_image_url` for the event loop.

    Downloads with :class:`httpx.AsyncClient` (``client``, or one made for the call); base64
    decoding, file reads and image decoding run in a worker thread (``asyncio.to_thread``), so the
    loop never waits on CPU work or disk.
    """
    kind, url = _classify(url, limits)
    if kind == "data":
        return await asyncio.to_thread(_load_data_uri, url, limits)
    if kind == "local":
        return await asyncio.to_thread(_load_local, url, limits)
    data, content_type = await _afetch_http(url, limits, client)
    return await asyncio.to_thread(
        decode_image, data, limits, source=display_url(url), content_type=content_type
    )
