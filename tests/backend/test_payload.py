"""Cell packaging: which names a cell reads and assigns, the preflight, results."""

from __future__ import annotations

import threading

import pytest

from gpuqueue.job.payload import PreflightError, analyze_cell, build_payload, pack_results, unpack_results


def test_reads_and_top_level_writes():
    src = (
        "import numpy as np\n"
        "from math import sqrt as root\n"
        "def helper(v):\n    inner = v * scale\n    return inner\n"
        "for i in range(n):\n    total = helper(i)\n"
        "with open(path) as fh:\n    text = fh.read()\n"
        "class Model: pass\n"
        "counter += 1\n"
        "_private = 3\n"
        "if (m := 4):\n    pass\n"
    )
    names = analyze_cell(src)
    assert {"scale", "n", "path", "counter", "helper", "range", "open"} <= names.reads
    assert names.writes == ["np", "root", "helper", "i", "total", "fh", "text", "Model", "counter", "m"]
    assert "inner" not in names.writes and "_private" not in names.writes


def test_inputs_are_what_the_cell_reads_from_the_namespace():
    import json

    ns = {"x": [1, 2], "unused": object(), "json": json, "f": lambda v: v + 1}
    payload, inputs, outputs = build_payload("y = f(len(x))\nz = json.dumps(y)", ns)
    assert inputs == ["f", "json", "x"]
    assert outputs == ["y", "z"]
    assert isinstance(payload, bytes)


def test_preflight_names_the_variable_that_cannot_travel():
    with pytest.raises(PreflightError) as e:
        build_payload("print(lock)", {"lock": threading.Lock()})
    msg = str(e.value)
    assert "input 'lock'" in msg and "cannot be sent" in msg and "--inputs" in msg


def test_preflight_names_the_largest_inputs_when_too_big():
    ns = {"big": b"x" * 3000, "small": b"y" * 10, "medium": b"z" * 1000}
    with pytest.raises(PreflightError) as e:
        build_payload("print(big, small, medium)", ns, max_bytes=2000)
    msg = str(e.value)
    assert msg.index("big") < msg.index("medium") < msg.index("small")
    assert "file" in msg


def test_inputs_override_and_unknown_input():
    payload, inputs, _ = build_payload("print(a, b)", {"a": 1, "b": 2}, inputs=["a"])
    assert inputs == ["a"]
    with pytest.raises(PreflightError, match="ghost"):
        build_payload("print(a)", {"a": 1}, inputs=["ghost"])


def test_results_round_trip_and_unreturnable_are_listed():
    import json

    ns = {"model": {"w": [1.0]}, "lock": threading.Lock(), "json": json}
    blob, unreturnable = pack_results(ns, ["model", "lock", "json", "missing"])
    assert list(unreturnable) == ["lock"]
    values, failed = unpack_results(blob)
    assert values["model"] == {"w": [1.0]} and values["json"] is json
    assert "lock" in failed and "missing" not in values
