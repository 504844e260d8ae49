"""The Rays besides the environment's own that ``scripts/test.sh`` installs, each alone in a
folder of the checkout (``pip install --no-deps --target``), for a job to put first on its
``PYTHONPATH``: one without token authentication, which must be refused, and the oldest Ray the
project supports (the floor of ``pyproject.toml``'s ``ray`` extra), which must work."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OLD_RAY = ROOT / ".ray-2.51"  # Ray 2.51.2: no token authentication
FLOOR_RAY = ROOT / ".ray-floor"  # the floor of the `ray` extra


def floor_version() -> str:
    """The floor ``pyproject.toml`` gives the ``ray`` extra (``ray[train]>=X.Y``)."""
    m = re.search(r'^ray = \["ray\[train\]>=([0-9.]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m, "pyproject.toml: no `ray = [\"ray[train]>=X.Y\"]` extra"
    return m.group(1)


def floor_ray() -> Path:
    """:data:`FLOOR_RAY`, checked to hold the floor ``pyproject.toml`` gives today."""
    floor = floor_version()
    assert [p for p in FLOOR_RAY.glob("ray-*.dist-info") if p.name in (f"ray-{floor}.dist-info", f"ray-{floor}.0.dist-info")], \
        f"{FLOOR_RAY} does not hold Ray {floor}, pyproject.toml's floor: scripts/test.sh installs it"
    return FLOOR_RAY


def ray_first(folder: Path, pythonpath: str) -> str:
    """``pythonpath`` with the Ray in ``folder`` first; fails if it is not there (scripts/test.sh)."""
    assert (folder / "ray" / "__init__.py").exists(), f"no Ray at {folder}: scripts/test.sh installs it"
    return os.pathsep.join([str(folder), pythonpath]).rstrip(os.pathsep)
