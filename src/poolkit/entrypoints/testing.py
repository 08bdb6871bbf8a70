"""Run a real ``poolkit serve`` process for tests and benchmarks (loopback only), or the app in-process
(:func:`serving`).

    with RemoteServer("default", ["--api-key", "k"]) as server:
        httpx.post(server.url_for("/v1/embeddings"), json={...}, headers=server.headers)

Several servers can start in parallel: ``start()`` them all, then ``wait_ready()``.

``RemoteServer(..., gated=True)`` starts the server with a *gate* on its model
worker (:class:`WorkerGate`): while the gate is held, every model batch blocks
before it runs, so a test can keep work in flight by construction instead of
hoping that the machine is slow enough. The same gate holds the async engine's
tokenizer lanes (``hold_lane("bulk")``), so a test can keep a large request
*being tokenized* while it checks that small ones are not waiting for it.

:class:`RawHTTP` speaks HTTP/1.1 over a plain socket, for what well-behaved
clients never do: slow headers, a stalled or endless body, a bad
``Content-Length``, closing the connection before the answer.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poolkit_command() -> list[str]:
    """The ``poolkit`` console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("poolkit")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("poolkit")
    return [found] if found else [sys.executable, "-m", "poolkit.entrypoints.cli"]


class WorkerGate:
    """A cross-process gate in front of the model worker's batches (test infrastructure only).

    The gated process appends a line to ``entered`` each time a batch reaches
    the model, then waits while the file ``hold`` exists. The test holds the
    gate, waits for :meth:`wait_entered`, does what must happen while work is
    in flight, then releases it.
    """

    LANES = ("express", "bulk")  # the async engine's tokenizer threads (named poolkit-tokenize-<lane>)

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.hold_path = self.directory / "hold"
        self.entered_path = self.directory / "entered"

    def hold(self) -> None:
        self.hold_path.touch()

    def release(self) -> None:
        self.hold_path.unlink(missing_ok=True)

    @property
    def entered(self) -> int:
        """Batches that have reached the model so far."""
        try:
            return len(self.entered_path.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def wait_entered(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` batches have reached the model in total."""
        wait_until(lambda: self.entered >= count, timeout, f"{count} batch(es) to reach the gated model")

    # -- the tokenizer lanes: each request (or slice of a large one) prepared on a lane passes here --

    def _lane_paths(self, lane: str) -> tuple[Path, Path]:
        if lane not in self.LANES:
            raise ValueError(f"unknown lane {lane!r}; lanes: {', '.join(self.LANES)}")
        return self.directory / f"hold-{lane}", self.directory / f"entered-{lane}"

    def hold_lane(self, lane: str) -> None:
        """Block the next ``Tasks.prepare`` calls on tokenizer ``lane`` (``"express"`` or ``"bulk"``)."""
        self._lane_paths(lane)[0].touch()

    def release_lane(self, lane: str) -> None:
        self._lane_paths(lane)[0].unlink(missing_ok=True)

    def lane_entered(self, lane: str) -> int:
        """Requests (or slices) that have reached tokenizer ``lane`` so far."""
        try:
            return len(self._lane_paths(lane)[1].read_text().splitlines())
        except FileNotFoundError:
            return 0

    def wait_lane_entered(self, lane: str, count: int, timeout: float = 60.0) -> None:
        wait_until(lambda: self.lane_entered(lane) >= count, timeout, f"{count} item(s) to reach the {lane} lane")

    def release_all(self) -> None:
        self.release()
        for lane in self.LANES:
            self.release_lane(lane)

    def install(self) -> None:
        """In the server process: make every engine batch, and every request prepared on a tokenizer lane,
        pass through this gate."""
        from poolkit.engine import PoolingEngine
        from poolkit.tasks import Tasks

        original = PoolingEngine.execute
        original_prepare = Tasks.prepare
        gate = self

        def wait(entered: Path, hold: Path) -> None:
            with open(entered, "a", encoding="utf-8") as fh:
                fh.write("entered\n")
            while hold.exists():
                time.sleep(0.005)

        def gated_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            wait(gate.entered_path, gate.hold_path)
            return original(self, *args, **kwargs)

        def gated_prepare(self: Any, *args: Any, **kwargs: Any) -> Any:
            thread = threading.current_thread().name
            for lane in gate.LANES:
                if thread.startswith(f"poolkit-tokenize-{lane}"):
                    hold, entered = gate._lane_paths(lane)
                    wait(entered, hold)
            return original_prepare(self, *args, **kwargs)

        PoolingEngine.execute = gated_execute  # type: ignore[method-assign]
        Tasks.prepare = gated_prepare  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def serving(llm: Any, settings: Any = None, **engine_options: Any) -> AsyncIterator[tuple[Any, Any]]:
    """The app in-process over ``llm`` (``settings``: its ``ServerArgs``): ``(engine, client)``, an httpx client
    on the ASGI transport; the engine is closed afterwards."""
    import httpx

    from ..async_engine import AsyncPoolingEngine
    from .server import build_app

    engine = AsyncPoolingEngine(llm, **engine_options)
    app = build_app(engine, settings)
    engine.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield engine, client
    finally:
        await engine.close()


async def until(condition: Any, what: str, timeout: float = 30.0) -> None:
    """Yield to the event loop until ``condition()`` holds (explicit synchronisation, not a guess at speed)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.001)


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll ``condition()`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(interval)


class RemoteServer:
    """A ``poolkit serve MODEL ARGS`` subprocess on a free loopback port."""

    def __init__(
        self,
        model: str = "default",
        args: Sequence[str] = (),
        *,
        api_key: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 240.0,
        gated: bool = False,
    ) -> None:
        self.model = model
        self.port = port or free_port()
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        # Gated: one model worker, so that holding the gate holds every batch and later work stays queued.
        one_worker = ["--model-workers", "1"] if gated else []
        self.args = ["serve", model, "--host", "127.0.0.1", "--port", str(self.port), *one_worker, *args]
        if api_key:
            self.args += ["--api-key", api_key]
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="poolkit-serve-", suffix=".log", delete=False)
        self._gate_dir = tempfile.mkdtemp(prefix="poolkit-gate-") if gated else None
        self.gate = WorkerGate(self._gate_dir) if self._gate_dir else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """For the openai client: ``OpenAI(base_url=server.base_url, api_key=...)``."""
        return self.url + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def url_for(self, path: str) -> str:
        return self.url + path

    def start(self) -> RemoteServer:
        command = poolkit_command() + self.args
        if self._gate_dir is not None:
            command = [sys.executable, "-m", __name__, "--gate", self._gate_dir, *self.args]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def wait_ready(self) -> RemoteServer:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"poolkit serve exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url_for("/health"), timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"poolkit serve not ready after {self.startup_timeout} s:\n{self.log()[-4000:]}")

    def requests_in_progress(self, endpoint: str) -> float:
        """The server's ``poolkit_requests_in_progress`` gauge for ``endpoint`` (from ``/metrics``)."""
        return self.metric("poolkit_requests_in_progress", endpoint=endpoint)

    def metrics_text(self) -> str:
        request = urllib.request.Request(self.url_for("/metrics"), headers=self.headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the server's ``/metrics`` (0 if absent): ``metric("poolkit_skipped_tokens_total",
        reason="cancelled")``; labels must be given in the order the metric declares them."""
        return parse_metric(self.metrics_text(), name, **labels)

    def rss_bytes(self) -> int:
        """The server process's resident memory (``VmRSS``, Linux)."""
        assert self.proc is not None, "start() first"
        return process_rss(self.proc.pid)

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        if self.gate is not None:
            self.gate.release_all()
        self.stop()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass
        if self._gate_dir is not None:
            shutil.rmtree(self._gate_dir, ignore_errors=True)

    def __enter__(self) -> RemoteServer:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()


def parse_metric(text: str, name: str, **labels: str) -> float:
    """A sample of Prometheus text: ``name{labels}`` (labels in declared order), 0 if absent."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + label_text + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def process_rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RawHTTP:
    """One HTTP/1.1 connection over a plain socket, sent exactly as written (no client library in between).

        with RawHTTP(server.port) as conn:
            conn.send(b"POST /v1/embeddings HTTP/1.1\\r\\nHost: x\\r\\n")   # and never finish the headers
            assert conn.closed_within(5)
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.received = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> None:
        """Send a whole request (``Content-Length`` set from ``body`` unless ``headers`` say otherwise)."""
        all_headers = {"Host": "127.0.0.1", **(headers or {})}
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k in all_headers):
            all_headers["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
        self.send(head.encode("latin-1") + b"\r\n" + (body or b""))

    def send_chunk(self, data: bytes) -> None:
        """One chunk of a ``Transfer-Encoding: chunked`` body (``b""``: the last one)."""
        self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def readable(self, timeout: float = 0.0) -> bool:
        import select

        return bool(select.select([self.sock], [], [], timeout)[0])

    def read_response(self, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of the next response (``Content-Length`` framed)."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._parse(self.received)
            if parsed is not None:
                status, headers, body, end = parsed
                self.received = self.received[end:]
                return status, headers, body
            if not self._recv(deadline):
                raise ConnectionError(f"connection closed before a whole response; got {self.received[:300]!r}")

    @classmethod
    def parse_response(cls, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """The first response in ``data`` (e.g. :attr:`received` once the server closed the connection)."""
        parsed = cls._parse(data)
        if parsed is None:
            raise ValueError(f"no whole response in {data[:300]!r}")
        return parsed[:3]

    @staticmethod
    def _parse(data: bytes) -> tuple[int, dict[str, str], bytes, int] | None:
        head, found, _ = data.partition(b"\r\n\r\n")
        if not found:
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        start = len(head) + 4
        end = start + int(headers.get("content-length", "0"))
        if len(data) < end:
            return None
        return int(lines[0].split()[1]), headers, data[start:end], end

    def closed_within(self, timeout: float) -> bool:
        """True if the server closes the connection within ``timeout`` seconds (what it sent is kept)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self._recv(deadline):
                    return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    def _recv(self, deadline: float) -> bool:
        """Read what came (False at end of stream); ``TimeoutError`` past ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.readable(remaining):
            raise TimeoutError("no data from the server in time")
        data = self.sock.recv(1 << 16)
        self.received += data
        return bool(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawHTTP:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _gated_main(argv: Sequence[str]) -> None:
    """``python -m poolkit.entrypoints.testing --gate DIR serve ...``: the CLI with a :class:`WorkerGate`."""
    if len(argv) < 2 or argv[0] != "--gate":
        raise SystemExit("usage: python -m poolkit.entrypoints.testing --gate DIR COMMAND ...")
    from poolkit.entrypoints.cli import main

    WorkerGate(argv[1]).install()
    sys.exit(main(argv[2:]))


if __name__ == "__main__":
    _gated_main(sys.argv[1:])
