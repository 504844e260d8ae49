"""How a failed process's exit and last stderr lines read (gpuqueue.attempt.failtext): the pure
rules behind the errors that tests/training/test_rank_errors.py shows end to end."""

from __future__ import annotations

from gpuqueue.attempt.failtext import StderrTail, clean_tail, process_error, rank_error, why_line

CHAINED = """Traceback (most recent call last):
  File "train.py", line 3, in <module>
    load()
KeyError: 'label'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "train.py", line 5, in <module>
    raise RuntimeError("no labels")
RuntimeError: no labels
continued on a second line
""".splitlines()


def test_the_exception_line_of_the_last_traceback_is_the_reason() -> None:
    assert why_line(CHAINED) == "RuntimeError: no labels"
    syntax = ['  File "t.py", line 1', "    foo(", "       ^", "SyntaxError: '(' was never closed"]
    assert why_line(["Traceback (most recent call last):", *syntax]) == "SyntaxError: '(' was never closed"
    # the traceback's head cut off by the bound: the last line that reads as an exception
    assert why_line(['  File "t.py", line 1', "torch.OutOfMemoryError: CUDA out of memory", "  note"]) \
        == "torch.OutOfMemoryError: CUDA out of memory"
    assert why_line(["step 3", "fatal: no data"]) == "fatal: no data"
    assert why_line(["", "  "]) is None


def test_exits_in_words() -> None:
    assert process_error(3, []) == "the job process exited with code 3"
    assert process_error(2, ["usage: train.py", "train.py: error: --lr is required"]) == \
        "the job process exited with code 2: train.py: error: --lr is required"
    assert process_error(-11, []) == "the job process was killed by signal 11 (SIGSEGV)"
    assert rank_error(-9, ["allocating"]) == ("killed by signal 9 (SIGKILL), e.g. the kernel's out-of-memory "
                                              "killer; its last line on stderr: allocating")
    assert rank_error(1, ["ValueError: \x1b[2Jx"]) == "ValueError: \\x1b[2Jx (exit code 1)"
    assert rank_error(-200, []) == "killed by signal 200"


def test_what_is_kept_is_bounded() -> None:
    tail = StderrTail()
    for i in range(100):
        tail.add(f"line {i}")
    assert tail.lines() == [f"line {i}" for i in range(92, 100)]
    tail = StderrTail()
    for i in range(3):
        tail.add(str(i) * 5000)
    kept = tail.lines()
    assert len(kept) == 3 and all(len(x) == 1000 + len(" …[cut]") for x in kept)
    tail.add("y" * 990)  # 4011 characters: the oldest line goes
    assert [x[0] for x in tail.lines()] == ["1", "2", "y"] and sum(map(len, tail.lines())) <= 4000
    assert clean_tail(["a", 3, None, "", "b"]) == ["a", "b"] and clean_tail("not a list") == []
