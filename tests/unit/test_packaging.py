"""The wheel installs one `ponder` namespace with its models, and works from any directory."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
MAX_WHEEL_MB = 40


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True)
    return next(out.glob("ponder-*.whl"))


def test_wheel_holds_only_the_ponder_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"ponder", wheel.name.split("-py")[0] + ".dist-info"}
    for sub in ("server", "strategies", "tasks", "trainers", "nas", "clients"):
        assert f"ponder/{sub}/__init__.py" in names
    assert "ponder/__main__.py" in names and "ponder/engine/protocol.py" in names
    shipped = {n.split("/")[2] for n in names if n.startswith("ponder/models/") and n.endswith("/model.safetensors")}
    assert shipped == {"ponder-small", "ponder-small-pos", "ponder-small-neg"}  # the default and its pair, no more
    assert wheel.stat().st_size < MAX_WHEEL_MB * 2**20, f"{wheel.stat().st_size / 2**20:.1f} MB"


def test_installed_wheel_works_beside_a_users_tasks_py(wheel, tmp_path):
    """A fresh environment: the wheel, plus this venv's dependencies (not its editable ponder)."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(env), str(wheel)],
                   check=True)
    deps = sysconfig.get_paths()["purelib"]
    user = tmp_path / "project"
    (user / "server").mkdir(parents=True)
    (user / "server" / "__init__.py").write_text("raise ImportError('the user server package')\n")
    (user / "tasks.py").write_text("raise ImportError('the user tasks.py')\n")
    check = (
        f"import sys; sys.path[1:1] = [{str(env)!r}, {deps!r}]\n"
        "import ponder.tasks.arith, ponder.models as c\n"
        "from pathlib import Path\n"
        f"assert ponder.tasks.arith.__file__.startswith({str(env)!r}), ponder.tasks.arith.__file__\n"
        f"assert Path(c.DEFAULT_MODEL, 'config.json').exists() and c.DEFAULT_MODEL.startswith({str(env)!r})\n"
        "try:\n    import server\nexcept ImportError as e:\n    assert 'user' in str(e)\n"
    )
    # -S: no site-packages, so neither this venv's editable finder nor anything else leaks in.
    r = subprocess.run([sys.executable, "-S", "-c", check], cwd=user, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[1:1] = [{str(env)!r}, {deps!r}]\n"
                        "import server"], cwd=tmp_path, capture_output=True, text=True)
    assert "No module named 'server'" in r.stderr
