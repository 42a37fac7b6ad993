"""Property-based requests from ponder's own OpenAPI schema (strategy bodies included): no input may cause
a 5xx, and every response matches its declared schema."""

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import KEY


def test_no_server_errors(server, tmp_path: Path):
    cmd = [Path(sys.executable).parent / "schemathesis", "run", server.url("/openapi.json"),
           "--checks", "not_a_server_error,response_schema_conformance", "--header", f"Authorization: Bearer {KEY}",
           "--max-examples", "15", "--seed", "0", "--workers", "2", "--max-time", "120",
           # the coverage phase crashes inside hypothesis (lambda_sources TypeError), not on the server
           "--phases", "examples,fuzzing,stateful",
           "--request-timeout", "120", "--generation-database", "none", "--no-color",
           "--report", "junit", "--report-dir", str(tmp_path)]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
