"""Installing the built package (a wheel, as `pip install .` or an index would) enables the
server extension and the JupyterLab sidebar with no command after it (the README says so)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from gpuqueue.__about__ import __version__

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout (the sidebar as scripts/install.sh already built it)."""
    out = tmp_path_factory.mktemp("wheel")
    if not (ROOT / "jupyter_gpuqueue" / "labextension" / "static" / "style.js").exists():
        pytest.skip("the sidebar is not built: run scripts/install.sh (it builds it with Node)")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("jupyter_gpuqueue-*.whl")
    return whl


def test_the_wheel_holds_both_packages_the_sidebar_and_the_server_config(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "gpuqueue/cli.py" in names and "jupyter_gpuqueue/magics.py" in names
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert "etc/jupyter/jupyter_server_config.d/jupyter_gpuqueue.json" in data
    assert "share/jupyter/labextensions/jupyter-gpuqueue/package.json" in data
    assert any(n.startswith("share/jupyter/labextensions/jupyter-gpuqueue/static/remoteEntry.") for n in data)


def test_installing_the_wheel_enables_the_extension_and_the_sidebar(wheel: Path, tmp_path: Path) -> None:
    # a new environment holding only the wheel; the test environment's packages serve as its
    # dependencies (a .pth), but its prefix, and so its Jupyter config and labextension paths, are new
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    Path(site, "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env["HOME"] = str(tmp_path)  # no user-level Jupyter config either
    env["PATH"] = f"{env_dir / 'bin'}:/usr/bin:/bin"  # no jupyter-* script of the test environment

    def run(*args: str) -> str:
        p = subprocess.run([str(py), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        return re.sub(r"\x1b\[[0-9;]*m", "", p.stdout + p.stderr)  # no colour codes

    where = run("-c", "import gpuqueue, jupyter_gpuqueue; print(gpuqueue.__file__); print(jupyter_gpuqueue.__file__)")
    assert where.count(site) == 2, f"the wheel's packages are not the ones imported: {where}"
    # the server extension: enabled by the config file the wheel put in the new prefix, and it loads
    server = run("-m", "jupyter_server", "extension", "list")
    section = server.split(f"Config dir: {env_dir}/etc/jupyter", 1)
    assert len(section) == 2, server
    mine = section[1].split("Config dir:", 1)[0]
    assert "jupyter_gpuqueue enabled" in mine and f"jupyter_gpuqueue {__version__} OK" in mine, server
    # the sidebar: installed in the new prefix's labextensions, enabled
    lab = run("-m", "jupyterlab.labextensions", "list")
    section = lab.split(f"{env_dir}/share/jupyter/labextensions", 1)
    assert len(section) == 2, lab
    assert re.search(r"jupyter-gpuqueue v\S+ enabled OK", section[1]), lab
