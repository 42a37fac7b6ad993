"""Shared test helpers: the committed model and a `ponder serve` subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ponder.server.config import DEFAULT_MODEL, default_models

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path(DEFAULT_MODEL)
NAME = MODEL.name  # the id the default model is served under


def dies_at_call(fn, n: int):
    """fn, except that its n-th call raises KeyboardInterrupt: a training run killed mid-way."""
    calls = 0

    def wrapper(*a, **k):
        nonlocal calls
        calls += 1
        if calls == n:
            raise KeyboardInterrupt
        return fn(*a, **k)

    return wrapper


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
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
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

