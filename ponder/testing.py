"""Helpers for tests and benchmarks: a free port, and `ponder serve` in a subprocess.

It starts the server through the CLI and talks to it over HTTP only, so it
imports nothing of ponder's packages (bench and tests stand on it, not on each
other).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ponder.models import DEFAULT_MODEL, default_models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PonderServer:
    """`ponder serve` in a subprocess, like vLLM's RemoteOpenAIServer."""

    def __init__(self, *args: str, api_key: str | None = None, contrast: bool = True, timeout: float = 300,
                 models: list[str] | None = None):
        self.port = free_port()
        self.api_key = api_key
        models = models or (default_models() if contrast else [DEFAULT_MODEL])  # contrast: its -pos/-neg too
        cmd = [sys.executable, "-m", "ponder", "serve", *[a for m in models for a in ("--model", m)],
               "--host", "127.0.0.1", "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="ponder-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ponder serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url("/health"), timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError("ponder serve did not become healthy")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def base_url(self) -> str:
        return self.url("/v1")

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url("/metrics"), timeout=10).text.splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

