"""What a queued cell costs on an idle embedded queue, against the same work run bare.

Starts a real ``jupyter server`` with the extension (in a temporary folder, one GPU declared),
then:

* light cell: N times, ``--gap`` seconds apart (a pause between cells), submits
  ``print('first line')`` through the REST API exactly as ``%%train`` does and times until
  that line arrives on the job's SSE stream; beside it, a bare ``python -c 'print(1)'`` timed
  from its start to reading its line (same run, same load). Then N more back to back (each
  finds the interpreter started for it still importing, so it starts cold);
* torch cell: ``import torch; print('ready')`` as a job against a bare ``python -c`` of it;
* training cell: an unmodified character-level GPT training script (``TRAIN_CELL``: ~40k
  parameters, plain PyTorch, on text this benchmark writes) run in a real kernel as a bare cell
  (a fresh kernel each time, so it imports torch as a notebook's first training cell does) and
  as ``%%train --gpus 1`` (a fresh kernel too), timed from the execute request to the kernel
  being idle with the names back; and, as a pessimistic baseline, bare in a kernel that
  imported torch in an earlier cell (untimed). Runs alternate.

For every queued run it prints the stages from the job's own records (seconds after the submit):
the attempt starting, the runner's start record, the first log line, the job's exit, and the
names being back in the kernel (training cell) or fetched (light cell).

    python benchmarks/submit_latency.py [--runs 20] [--torch-runs 5] [--train-runs 3] [--steps 500]

Prints JSON. Goals: light cell median <= 300 ms and <= 3x the bare ``python -c 'print(1)'``
(issues 2 and 16); torch cell <= 1.2x the bare import; training cell queued/bare <= 1.1x.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.servers import JupyterServer  # noqa: E402

from gpuqueue.job.payload import build_payload  # noqa: E402

TRAIN_CELL = """import time
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
text = open("input.txt").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
vocab, block, width, heads, layers, batch, steps = len(chars), 32, 32, 2, 2, 8, {steps}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.register_buffer("mask", torch.triu(torch.ones(block, block, dtype=torch.bool), 1))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.blocks = nn.Sequential(*[Block() for _ in range(layers)])
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.blocks(x))


model = GPT()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
t0 = time.time()
for step in range(steps):
    ix = torch.randint(len(data) - block - 1, (batch,))
    x = torch.stack([data[i : i + block] for i in ix])
    y = torch.stack([data[i + 1 : i + block + 1] for i in ix])
    loss = F.cross_entropy(model(x).view(-1, vocab), y.view(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0 or step == steps - 1:
        print(f"step {step} loss {loss.item():.3f}")
final_loss = loss.item()
threads = torch.get_num_threads()
train_s = time.time() - t0
"""

WORDS = ("the queue runs a cell on a free gpu and brings the names back to the notebook "
         "while the kernel waits for the job to end").split()


def write_text(folder: Path, lines: int = 4000) -> None:
    """The training text: short random sentences over a small vocabulary (seeded)."""
    rng = random.Random(1)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(lines))
    (folder / "input.txt").write_text(text)


def stages(client, job_id: str, t_submit: float, state_dir: Path) -> dict[str, object]:
    """Seconds after ``t_submit`` (wall clock) at which the job's records say each stage came;
    ``warm``: whether its interpreter was started ahead."""
    out: dict[str, float] = {}
    warm = None
    for path in sorted(state_dir.glob(f"jobs/{job_id}/**/events.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "runner" and "pid" in rec.get("data", {}):
                out.setdefault("job_process_started", rec["t"])
                warm = rec["data"].get("warm")
    for ev in client.events(job_id):
        t, kind, data = ev["time"], ev["type"], ev["data"]
        if kind == "state" and data.get("state") == "starting":
            out.setdefault("attempt_starting", t)
        elif kind == "log":
            out.setdefault("first_log_line", t)
        elif kind == "result":
            out.setdefault("result_written", t)
        elif kind == "state" and data.get("state") in ("succeeded", "failed", "cancelled"):
            out.setdefault("job_ended", t)
    res: dict[str, object] = {k: round(v - t_submit, 3) for k, v in sorted(out.items(), key=lambda kv: kv[1])}
    res["warm"] = warm
    return res


def first_line_latency(client, source: str, marker: str, state_dir: Path) -> tuple[float, dict[str, float]]:
    """Seconds from the submit call to the first log line containing ``marker``, and the
    job's stages (up to its names fetched back)."""
    payload, inputs, outputs = build_payload(source, {})
    spec = {"kind": "cell", "python": sys.executable, "inputs": inputs, "outputs": outputs}
    w0 = time.time()
    t0 = time.perf_counter()
    job = client.submit(spec, payload)
    for ev in client.follow(job["id"]):
        if ev["type"] == "log" and marker in ev["data"].get("line", ""):
            dt = time.perf_counter() - t0
            break
    else:
        raise RuntimeError(f"job {job['id']} ended without printing {marker!r}")
    for _ in client.follow(job["id"]):  # let it finish before the next run
        pass
    client.result(job["id"])
    st = stages(client, job["id"], w0, state_dir)
    st["names_back"] = round(time.time() - w0, 3)
    return dt, st


def bare_first_line(code: str, expect: bytes) -> float:
    """Seconds from starting ``python -u -c CODE`` to reading its first line (the same end
    point as the queued measure: the first line, not the process exit)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    dt = time.perf_counter() - t0
    p.wait()
    assert line.strip() == expect, line
    return dt


def train_run(server: JupyterServer, source: str, queued: bool, torch_first: bool = False) -> dict[str, object]:
    """One training cell in a fresh kernel: seconds from execute to idle, and for a queued
    run the job's stages. ``torch_first``: the kernel imports torch before (untimed)."""
    k = server.start_kernel()
    try:
        if queued:
            res = k.run("%load_ext jupyter_gpuqueue")
            assert res.error is None, res.error
        if torch_first:
            assert k.run("import torch").error is None
        cell = ("%%train --gpus 1\n" if queued else "") + source
        w0 = time.time()
        t0 = time.perf_counter()
        res = k.run(cell, timeout=1800)
        dt = time.perf_counter() - t0
        assert res.error is None, (res.error, res.stderr[-2000:])
        check = k.run("print('THREADS', threads, 'LOSS', round(final_loss, 3), 'TRAIN_S', round(train_s, 2))")
        assert check.error is None, check.error
        out: dict[str, object] = {"cell_s": round(dt, 3), "check": check.stdout.strip()}
        if queued:
            client = server.client()
            job = client.list()[0]
            st = stages(client, job["id"], w0, server.state_dir)
            st["names_back"] = round(dt, 3)
            out["stages"] = st
        return out
    finally:
        k.close()
        server.kernels.remove(k)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--torch-runs", type=int, default=5)
    ap.add_argument("--train-runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500, help="training steps of the training cell")
    ap.add_argument("--gap", type=float, default=3.0, help="seconds between light cells (a pause between cells)")
    args = ap.parse_args()
    med = statistics.median
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = JupyterServer(Path(tmp), gpus=1).start()
        try:
            client = server.client()
            first_line_latency(client, "print('warm-up')", "warm-up", server.state_dir)
            light, light_stages, bare1, b2b = [], [], [], []
            for _ in range(args.runs):  # alternate, so both see the same load
                time.sleep(args.gap)  # a pause between cells: the next interpreter gets ready
                dt, st = first_line_latency(client, "print('first line')", "first line", server.state_dir)
                light.append(dt)
                light_stages.append(st)
                bare1.append(bare_first_line("print(1)", b"1"))
            for _ in range(args.runs):  # back to back: each finds its interpreter still importing
                b2b.append(first_line_latency(client, "print('first line')", "first line", server.state_dir)[0])
            torch_q, bare_t = [], []
            for _ in range(args.torch_runs):
                torch_q.append(first_line_latency(client, "import torch\nprint('ready')", "ready", server.state_dir)[0])
                bare_t.append(bare_first_line("import torch; print('ready')", b"ready"))
            write_text(server.work_dir)
            source = TRAIN_CELL.replace("{steps}", str(args.steps))
            bare_runs, queued_runs, warm_kernel = [], [], []
            for _ in range(args.train_runs):
                bare_runs.append(train_run(server, source, queued=False))
                queued_runs.append(train_run(server, source, queued=True))
                warm_kernel.append(train_run(server, source, queued=False, torch_first=True))
        finally:
            server.stop()
            server.kill_jobs()
    ms = lambda xs: round(med(xs) * 1000, 1)  # noqa: E731
    out["light_cell_first_line_ms"] = {
        "median": ms(light), "p90": round(sorted(light)[int(0.9 * (len(light) - 1))] * 1000, 1),
        "min": round(min(light) * 1000, 1), "runs": len(light),
        "stages_s_median_run": light_stages[sorted(range(len(light)), key=light.__getitem__)[len(light) // 2]],
        "warm_runs": sum(1 for st in light_stages if st.get("warm")), "gap_s": args.gap,
    }
    out["light_cell_back_to_back_ms"] = {"median": ms(b2b), "min": round(min(b2b) * 1000, 1), "runs": len(b2b)}
    out["bare_python_print1_first_line_ms"] = ms(bare1)
    out["light_ratio_to_bare_python"] = round(med(light) / med(bare1), 2)
    out["torch_cell_first_line_s"] = round(med(torch_q), 3)
    out["bare_import_torch_s"] = round(med(bare_t), 3)
    out["torch_ratio"] = round(med(torch_q) / med(bare_t), 3)
    if bare_runs:
        b = [r["cell_s"] for r in bare_runs]
        q = [r["cell_s"] for r in queued_runs]
        out["training_cell"] = {
            "steps": args.steps,
            "bare_s": b, "queued_s": q,
            "bare_median_s": round(med(b), 3), "queued_median_s": round(med(q), 3),
            "queued_bare_ratio": round(med(q) / med(b), 3),
            # the pessimistic baseline: a kernel that imported torch in an earlier cell
            "bare_torch_already_imported_s": [r["cell_s"] for r in warm_kernel],
            "queued_to_torch_already_imported_ratio": round(med(q) / med([r["cell_s"] for r in warm_kernel]), 3),
            "bare_check": [r["check"] for r in bare_runs],
            "queued_check": [r["check"] for r in queued_runs],
            "queued_stages_s": [r["stages"] for r in queued_runs],
        }
    out["goals"] = {"light_median_ms": 300, "light_ratio_to_bare_python": 3, "torch_ratio": 1.2,
                    "training_queued_bare_ratio": 1.1}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
