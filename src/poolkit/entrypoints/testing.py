"""Run a real ``poolkit serve`` process for tests and benchmarks (loopback only).

    with RemoteServer("default", ["--api-key", "k"]) as server:
        httpx.post(server.url_for("/v1/embeddings"), json={...}, headers=server.headers)

Several servers can start in parallel: ``start()`` them all, then ``wait_ready()``.
"""

from __future__ import annotations

import os
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
        self.proc = subprocess.Popen(
            poolkit_command() + self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )
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
        self.stop()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def __enter__(self) -> RemoteServer:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()
