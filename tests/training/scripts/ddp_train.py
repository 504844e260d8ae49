"""A plain PyTorch DDP loop using the job-side API (the docs' example, made small).

usage: ddp_train.py OUT_DIR [STEPS]. Each rank writes OUT_DIR/rank-<r>.txt when it ends.
"""

import os
import sys
import time

import torch

import gpuqueue
from gpuqueue.distributed import init

out = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
torch.set_num_threads(1)
distributed = init()  # gloo on CPU, from torchrun's / Ray's RANK, WORLD_SIZE, MASTER_ADDR
rank = torch.distributed.get_rank() if distributed else 0
world = torch.distributed.get_world_size() if distributed else 1

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
opt = torch.optim.SGD(net.parameters(), lr=0.05)
ckpt = gpuqueue.Checkpointer(every_steps=5, max_checkpoints=2, monitor="loss", mode="min")

start = 0
state = ckpt.load()  # every rank reads the same complete checkpoint
if state:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = state["step"] + 1
target = torch.arange(8, dtype=torch.float32)
stopped = None
for step in range(start, steps):
    g = torch.Generator().manual_seed(step * 100 + rank)
    x = torch.randn(16, 8, generator=g)
    loss = ((net(x).squeeze(1) - x @ target) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    gpuqueue.log(step=step, loss=loss.detach(), world=world)
    gpuqueue.progress(step + 1, steps)
    snapshot = lambda: {"step": step, "model": model.state_dict(), "opt": opt.state_dict()}  # noqa: E731
    if gpuqueue.should_stop():  # a collective: every rank gets the same answer at this step
        ckpt.save(step, snapshot, metrics={"loss": loss.item()})
        stopped = step
        break
    ckpt.maybe_save(step, snapshot, metrics={"loss": loss.item()})
    time.sleep(float(os.environ.get("STEP_SLEEP", "0")))

with open(os.path.join(out, f"rank-{rank}-{os.environ.get('GPUQUEUE_ATTEMPT')}.txt"), "w") as f:
    f.write(f"world={world} start={start} stopped={stopped} cuda={os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
if distributed:
    torch.distributed.destroy_process_group()
print(f"rank {rank}/{world} finished (stopped={stopped})")
sys.exit(0)
