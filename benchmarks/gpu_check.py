"""GPU check for a machine with NVIDIA GPUs: isolation, NVML, and training speed under the queue.

    python benchmarks/gpu_check.py [--steps 30] [--batch 8] [--seq 1024] [--json out.json]

1. NVML: prints every GPU (``gpuqueue.observability.nvml.read_gpus()``, or pynvml directly).
2. Isolation: an embedded queue (``QueueService``, real runner) with this machine's GPUs runs one
   1-GPU job per GPU at once (at most 4); each job reports ``CUDA_VISIBLE_DEVICES``, the number
   of devices torch sees and its device's UUID. Passes when every job sees exactly one device,
   the UUIDs differ and each UUID is the NVML UUID of the physical GPU the scheduler assigned.
3. Speed: GPT-2 small (124M, built from a config: no download) trained in bf16 autocast with
   AdamW on random tokens, bare and as a 1-GPU job with ``gpuqueue.log`` every step and a
   checkpoint at the end; prints tokens/s and MFU (model FLOPs utilisation) of both.

Without an NVIDIA GPU it says so and exits 0. ``--cpu-smoke`` runs the same pipeline on the CPU
with a tiny model (checks the script itself; its figures mean nothing).
Peak bf16 FLOP/s comes from the GPU name (H100/H200/A100/L4/...), or ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

# dense bf16 tensor-core peak, TFLOP/s, by a substring of the device name
PEAK_TFLOPS = [
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 125.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
]

SPEED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    import gpuqueue
    from transformers import GPT2Config, GPT2LMHeadModel

    steps, batch, seq, out, smoke = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
    dev = "cpu" if smoke else "cuda"
    torch.manual_seed(0)
    if smoke:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=seq, vocab_size=1024)
    else:
        cfg = GPT2Config(n_positions=seq)  # GPT-2 small: 12 layers, 768 wide, 50257 vocab
        torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT2LMHeadModel(cfg).to(dev)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=not smoke)
    x = torch.randint(0, cfg.vocab_size, (batch, seq), device=dev)
    ckpt = gpuqueue.Checkpointer(max_checkpoints=1)

    def step():
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):  # warm-up (kernels, allocator)
        step()
    if not smoke:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step()
        gpuqueue.log(step=i, loss=loss.detach())
    if not smoke:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    ckpt.save(steps, {"model": model.state_dict()})
    name = "cpu" if smoke else torch.cuda.get_device_name(0)
    json.dump({"seconds": dt, "tokens": steps * batch * seq, "params": params, "device": name,
               "layers": cfg.n_layer, "width": cfg.n_embd, "seq": seq}, open(out, "w"))
    """
)

ISOLATION_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    info = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": torch.cuda.device_count()}
    if info["count"]:
        info["uuid"] = str(torch.cuda.get_device_properties(0).uuid)
        torch.ones(1, device="cuda")  # hold a context so NVML shows the process
    time.sleep(float(sys.argv[2]))
    json.dump(info, open(sys.argv[1], "w"))
    """
)


def read_nvml() -> list[dict[str, Any]]:
    """GPUs as NVML sees them (gpuqueue.observability.nvml if present, else pynvml)."""
    try:
        from gpuqueue.observability.nvml import read_gpus

        return read_gpus()
    except ImportError:
        pass
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            out.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                "memory_total_bytes": mem.total, "memory_used_bytes": mem.used,
                "utilization_gpu_pct": pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
            })
    finally:
        pynvml.nvmlShutdown()
    return out


def peak_flops(name: str, override: Optional[float]) -> Optional[float]:
    """Peak dense bf16 FLOP/s of a device, from ``--peak-tflops`` or its name."""
    if override:
        return override * 1e12
    for key, tf in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tf * 1e12
    return None


def model_flops_per_token(r: dict[str, Any]) -> float:
    """Training FLOPs per token: 6N for the weights + 12·L·d·T for attention (PaLM's formula)."""
    return 6 * r["params"] + 12 * r["layers"] * r["width"] * r["seq"]


def summarise(r: dict[str, Any], peak: Optional[float]) -> dict[str, Any]:
    tps = r["tokens"] / r["seconds"]
    mfu = tps * model_flops_per_token(r) / peak if peak else None
    return {"tokens_per_s": round(tps, 1), "mfu_pct": round(100 * mfu, 2) if mfu is not None else None,
            "seconds": round(r["seconds"], 3), "device": r["device"]}


async def _wait(service: Any, caller: Any, job_id: str, timeout: float = 900) -> Any:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        rec = service.get_job(caller, job_id)
        if rec.state.is_terminal:
            return rec
        await asyncio.sleep(0.05)
    raise SystemExit(f"job {job_id} did not finish in {timeout}s")


async def run(args: argparse.Namespace, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    from gpuqueue.queue.models import JobSpec, SubmitRequest
    from gpuqueue.embedded.service import QueueService
    from gpuqueue.queue.verbs import Caller

    report: dict[str, Any] = {"nvml": gpus}
    caller = Caller("gpu-check", admin=True)
    with tempfile.TemporaryDirectory(prefix="gpuqueue-gpucheck-") as tmp:
        work = Path(tmp)
        (work / "iso.py").write_text(ISOLATION_SCRIPT)
        (work / "speed.py").write_text(SPEED_SCRIPT)
        n = len(gpus) if not args.cpu_smoke else 2
        service = QueueService(work / "state", gpus=n)
        await service.start()
        try:
            # -- isolation: one 1-GPU job per GPU, all at once
            jobs = []
            for i in range(min(n, 4)):
                spec = JobSpec(kind="command", gpus=1, cwd=str(work),
                               command=[sys.executable, str(work / "iso.py"), str(work / f"iso-{i}.json"), "3"])
                jobs.append((await service.submit(caller, SubmitRequest(spec=spec, new=True)))[0].id)
            seen = []
            for jid in jobs:
                rec = await _wait(service, caller, jid)
                if rec.state.value != "succeeded":
                    raise SystemExit(f"isolation job {jid} {rec.state.value}: {rec.error}")
                seen.append((rec.attempts[-1].gpu_ids, rec))
            results = [json.loads((work / f"iso-{i}.json").read_text()) for i in range(len(jobs))]
            by_index = {g["index"]: g.get("uuid") for g in gpus}
            checks = []
            for (ids, _), res in zip(seen, results):
                ok = res["cuda_visible_devices"] == ",".join(map(str, ids))
                if not args.cpu_smoke:
                    ok = ok and res["count"] == 1 and res.get("uuid") is not None
                    want = by_index.get(ids[0])
                    ok = ok and (want is None or str(want).replace("GPU-", "") == res["uuid"].replace("GPU-", ""))
                checks.append({"assigned": ids, **res, "ok": ok})
            uuids = [c.get("uuid") for c in checks if c.get("uuid")]
            iso_ok = all(c["ok"] for c in checks) and len(set(uuids)) == len(uuids)
            report["isolation"] = {"ok": iso_ok, "jobs": checks}
            print(f"isolation: {'PASS' if iso_ok else 'FAIL'}")
            for c in checks:
                print(f"  job on GPU {c['assigned']}: CUDA_VISIBLE_DEVICES={c['cuda_visible_devices']} "
                      f"torch sees {c['count']} device(s) {c.get('uuid', '')}")

            # -- speed: bare vs queued
            argv = [str(work / "speed.py"), str(args.steps), str(args.batch), str(args.seq)]
            smoke = "1" if args.cpu_smoke else "0"
            env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQUEUE_")}
            env["GPUQUEUE_CHECKPOINT_DIR"] = str(work / "bare-ckpt")
            if not args.cpu_smoke:
                env["CUDA_VISIBLE_DEVICES"] = "0"
            subprocess.run([sys.executable, *argv, str(work / "bare.json"), smoke], check=True, env=env, cwd=work)
            spec = JobSpec(kind="command", gpus=1 if not args.cpu_smoke else 0, cwd=str(work),
                           command=[sys.executable, *argv, str(work / "queued.json"), smoke])
            jid = (await service.submit(caller, SubmitRequest(spec=spec, new=True)))[0].id
            rec = await _wait(service, caller, jid)
            if rec.state.value != "succeeded":
                logs = [e.data.get("line") for e in service.events(caller, jid) if e.type == "log"]
                raise SystemExit(f"queued speed job {rec.state.value}: {rec.error}\n" + "\n".join(logs[-30:]))
            metrics = [e for e in service.events(caller, jid) if e.type == "metrics"]
            bare = json.loads((work / "bare.json").read_text())
            queued = json.loads((work / "queued.json").read_text())
        finally:
            await service.stop()
    peak = peak_flops(bare["device"], args.peak_tflops)
    b, q = summarise(bare, peak), summarise(queued, peak)
    report["speed"] = {"bare": b, "queued": q, "metrics_events": len(metrics),
                       "params": bare["params"], "batch": args.batch, "seq": args.seq, "steps": args.steps,
                       "peak_tflops": peak / 1e12 if peak else None,
                       "queued_vs_bare_pct": round(100 * (q["tokens_per_s"] / b["tokens_per_s"] - 1), 2)}
    print(f"GPT-2 small bf16 on {b['device']} ({bare['params'] / 1e6:.0f}M params, batch {args.batch} x {args.seq}):")
    for label, s in (("bare", b), ("queued", q)):
        mfu = f"{s['mfu_pct']}%" if s["mfu_pct"] is not None else "n/a (give --peak-tflops)"
        print(f"  {label:7s} {s['tokens_per_s']:>12,.0f} tokens/s   MFU {mfu}")
    print(f"  queued vs bare: {report['speed']['queued_vs_bare_pct']:+.2f}% tokens/s; "
          f"{len(metrics)} metrics events streamed")
    return report


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; 0 when there is no GPU (with a message), 1 when a check fails."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s of the GPU")
    p.add_argument("--json", help="write the report here as JSON")
    p.add_argument("--cpu-smoke", action="store_true", help="run the pipeline on the CPU with a tiny model")
    args = p.parse_args(argv)
    gpus = read_nvml()
    if not args.cpu_smoke:
        try:
            import torch

            has_cuda = torch.cuda.is_available()
        except ImportError:
            has_cuda = False
        if not gpus or not has_cuda:
            print("gpu_check: no NVIDIA GPU here (NVML sees "
                  f"{len(gpus)} GPU(s), torch.cuda.is_available()={has_cuda}); nothing to check. "
                  "Run it on a GPU machine, or with --cpu-smoke to test the script itself.")
            return 0
    else:
        args.steps, args.batch, args.seq = min(args.steps, 3), min(args.batch, 2), min(args.seq, 32)
    report = asyncio.run(run(args, gpus))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["isolation"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
