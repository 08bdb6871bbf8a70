"""Run a real ``poolkit serve`` process for tests and benchmarks (loopback only).

    with RemoteServer("default", ["--api-key", "k"]) as server:
        httpx.post(server.url_for("/v1/embeddings"), json={...}, headers=server.headers)

Several servers can start in parallel: ``start()`` them all, then ``wait_ready()``.

``RemoteServer(..., gated=True)`` starts the server with a *gate* on its model
worker (:class:`WorkerGate`): while the gate is held, every model batch blocks
before it runs, so a test can keep work in flight by construction instead of
hoping that the machine is slow enough.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
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

    def install(self) -> None:
        """In the server process: make every engine batch pass through this gate."""
        from poolkit.engine import PoolingEngine

        original = PoolingEngine.execute
        gate = self

        def gated_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            with open(gate.entered_path, "a", encoding="utf-8") as fh:
                fh.write("batch\n")
            while gate.hold_path.exists():
                time.sleep(0.005)
            return original(self, *args, **kwargs)

        PoolingEngine.execute = gated_execute  # type: ignore[method-assign]


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
        self.args = ["serve", model, "--host", "127.0.0.1", "--port", str(self.port), *args]
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
        request = urllib.request.Request(self.url_for("/metrics"), headers=self.headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        pattern = rf'^poolkit_requests_in_progress{{endpoint="{re.escape(endpoint)}"}} (\S+)$'
        match = re.search(pattern, text, re.M)
        return float(match.group(1)) if match else 0.0

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
            self.gate.release()
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


def _gated_main(argv: Sequence[str]) -> None:
    """``python -m poolkit.entrypoints.testing --gate DIR serve ...``: the CLI with a :class:`WorkerGate`."""
    if len(argv) < 2 or argv[0] != "--gate":
        raise SystemExit("usage: python -m poolkit.entrypoints.testing --gate DIR COMMAND ...")
    from poolkit.entrypoints.cli import main

    WorkerGate(argv[1]).install()
    sys.exit(main(argv[2:]))


if __name__ == "__main__":
    _gated_main(sys.argv[1:])
