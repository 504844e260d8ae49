"""What running a training script under gpuqueue costs.

One plain-PyTorch training script (a small GPT-2 from a config, random tokens) is run
(a) bare: ``python script`` outside any queue, and (b) as a command job of a real embedded
queue (``QueueService``: scheduler, runner, event pipe, store tail loop), with
``gpuqueue.log`` every step, ``gpuqueue.progress`` every step and a ``Checkpointer`` saving
every ``--ckpt-every`` steps in both runs. Runs alternate and repeat; medians are reported:

* training-loop wall time, queued vs bare (goal: <= 2 % more);
* time spent inside ``gpuqueue.log`` per step as a share of the step time (goal: <= 1 %);
* end-to-end: submit -> succeeded vs the bare process's wall time (queue + start-up cost).

    python benchmarks/training_overhead.py [--steps 200] [--repeat 3] [--ckpt-every 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import gpuqueue
    from transformers import GPT2Config, GPT2LMHeadModel

    steps, every, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=2, n_head=4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = gpuqueue.Checkpointer(every_steps=every, max_checkpoints=2)
    x = torch.randint(0, 512, (8, 64))
    log_s = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        a = time.perf_counter()
        gpuqueue.log(step=step, loss=loss.detach(), lr=1e-3)
        gpuqueue.progress(step + 1, steps)
        log_s += time.perf_counter() - a
        ckpt.maybe_save(step, lambda: {"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
    loop_s, loop_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    gpuqueue.flush()
    with open(out, "w") as f:
        json.dump({"loop_s": loop_s, "loop_cpu_s": loop_cpu_s, "log_s": log_s, "steps": steps}, f)
    """
)


def run_bare(script: Path, steps: int, every: int, work: Path) -> dict[str, float]:
    """The script as a plain process; its own figures plus the process's wall time."""
    out = work / f"bare-{time.time_ns()}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQUEUE_")}
    env["GPUQUEUE_CHECKPOINT_DIR"] = str(work / "bare-ckpt")
    t = time.perf_counter()
    subprocess.run([sys.executable, str(script), str(steps), str(every), str(out)], check=True, env=env, cwd=work)
    rec = json.loads(out.read_text())
    rec["wall_s"] = time.perf_counter() - t
    return rec


async def run_queued(service, script: Path, steps: int, every: int, work: Path) -> dict[str, float]:  # noqa: ANN001
    """The same script as a command job of the embedded queue; figures plus submit->done."""
    from gpuqueue.queue.models import JobSpec, SubmitRequest
    from gpuqueue.queue.verbs import Caller

    out = work / f"queued-{time.time_ns()}.json"
    spec = JobSpec(kind="command", command=[sys.executable, str(script), str(steps), str(every), str(out)], cwd=str(work))
    caller = Caller("bench", admin=True)
    t = time.perf_counter()
    job, _ = await service.submit(caller, SubmitRequest(spec=spec, new=True))
    while True:
        rec = service.get_job(caller, job.id)
        if rec.state.is_terminal:
            break
        await asyncio.sleep(0.02)
    wall = time.perf_counter() - t
    if rec.state.value != "succeeded":
        raise SystemExit(f"the queued run ended {rec.state.value}: {rec.error}")
    events = service.events(caller, job.id)
    metrics = [e for e in events if e.type == "metrics"]
    ckpts = [e for e in events if e.type == "checkpoint"]
    if len(metrics) != steps or not ckpts:
        raise SystemExit(f"expected {steps} metrics events and checkpoints, got {len(metrics)} / {len(ckpts)}")
    res = json.loads(out.read_text())
    res["wall_s"] = wall
    return res


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    from gpuqueue.embedded.service import QueueService

    with tempfile.TemporaryDirectory(prefix="gpuqueue-bench-") as tmp:
        work = Path(tmp)
        script = work / "train.py"
        script.write_text(SCRIPT)
        service = QueueService(work / "state", gpus=1)
        await service.start()
        bare, queued = [], []
        try:
            run_bare(script, 5, 1000, work)  # warm the page cache (imports) once
            for i in range(args.repeat):
                bare.append(await asyncio.to_thread(run_bare, script, args.steps, args.ckpt_every, work))
                queued.append(await run_queued(service, script, args.steps, args.ckpt_every, work))
                print(f"run {i + 1}: loop bare {bare[-1]['loop_s']:.2f}s ({bare[-1]['loop_cpu_s']:.2f}s CPU) "
                      f"queued {queued[-1]['loop_s']:.2f}s ({queued[-1]['loop_cpu_s']:.2f}s CPU)", flush=True)
        finally:
            await service.stop()
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    loop_b, loop_q = med(bare, "loop_s"), med(queued, "loop_s")
    step_q = loop_q / args.steps
    return {
        "steps": args.steps,
        "repeat": args.repeat,
        "loop_bare_s": round(loop_b, 3),
        "loop_queued_s": round(loop_q, 3),
        "loop_overhead_pct": round(100 * (loop_q - loop_b) / loop_b, 2),
        "loop_cpu_bare_s": round(med(bare, "loop_cpu_s"), 3),
        "loop_cpu_queued_s": round(med(queued, "loop_cpu_s"), 3),
        "loop_cpu_overhead_pct": round(100 * (med(queued, "loop_cpu_s") / med(bare, "loop_cpu_s") - 1), 2),
        "load_average": round(os.getloadavg()[0], 1),
        "step_ms": round(1000 * step_q, 2),
        "log_us_per_step": round(1e6 * med(queued, "log_s") / args.steps, 1),
        "log_pct_of_step": round(100 * med(queued, "log_s") / loop_q, 3),
        "end_to_end_bare_s": round(med(bare, "wall_s"), 2),
        "end_to_end_queued_s": round(med(queued, "wall_s"), 2),
    }


def main() -> int:
    """Run the comparison and print the figures (and a JSON line)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ckpt-every", type=int, default=50)
    args = p.parse_args()
    r = asyncio.run(main_async(args))
    print(f"training loop: bare {r['loop_bare_s']}s, queued {r['loop_queued_s']}s "
          f"-> overhead {r['loop_overhead_pct']}% (goal <= 2%)")
    print(f"training loop CPU time (all threads of the job process): bare {r['loop_cpu_bare_s']}s, "
          f"queued {r['loop_cpu_queued_s']}s -> {r['loop_cpu_overhead_pct']}%  (load average {r['load_average']})")
    print(f"gpuqueue.log+progress: {r['log_us_per_step']} us per step = {r['log_pct_of_step']}% "
          f"of a {r['step_ms']} ms step (goal <= 1%)")
    print(f"end to end (submit -> succeeded vs bare process): {r['end_to_end_queued_s']}s vs {r['end_to_end_bare_s']}s")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
