"""While a foreground %%train cell waits, the kernel imports the modules the cell's names bring
back (and nothing else), so that bringing them back does not start with ``import torch``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jupyter_gpuqueue.prefetch import modules_coming_back, prefetch

CELL = """import os.path
import torch.nn as nn
from torch import optim
from . import local_thing
import numpy
x = 1
def f():
    import json
"""


def test_only_the_imports_whose_names_come_back() -> None:
    # numpy is imported but its name does not come back (--outputs left it out); json is not top level
    assert modules_coming_back(CELL, ["os", "nn", "optim", "local_thing", "x"]) == ["os", "torch.nn", "torch"]
    assert modules_coming_back("def broken(:", ["x"]) == []


def test_prefetch_imports_in_the_background_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "prefetch_probe.py").write_text("import time\ntime.sleep(0.3)\nCOUNT = 1\n")
    (tmp_path / "prefetch_broken.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("prefetch_probe", "prefetch_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    t = prefetch(["prefetch_broken", "prefetch_probe", "not_installed_anywhere_xyz"])
    assert t is not None and t.daemon
    import prefetch_probe  # waits for the import under way (one module, imported once)

    assert prefetch_probe.COUNT == 1
    t.join(10)
    assert "prefetch_broken" not in sys.modules  # its error is left to the step that needs it
    assert prefetch(["prefetch_probe", "sys", "not_installed_anywhere_xyz"]) is None  # nothing left to do
