"""A tiny HF Trainer run: a 2-layer GPT-2 from a config, trained on text made here.

Plain user code: nothing gpuqueue-specific. Under the queue the hook attaches the callback,
checkpoints go to the job's manager and a preempted attempt resumes on its own.
usage: hf_train.py OUT_DIR [MAX_STEPS]
"""

import os
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

out = sys.argv[1]
max_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
torch.manual_seed(0)
torch.set_num_threads(1)

text = " ".join(f"the {w} sat on the {v} number {i}." for i, (w, v) in enumerate(
    [("cat", "mat"), ("dog", "log"), ("bird", "wire"), ("fox", "box")] * 40))
ids = [ord(c) % 128 for c in text]
block = 32
samples = [ids[i:i + block] for i in range(0, len(ids) - block, block)]
train = [{"input_ids": s, "labels": s} for s in samples[:64]]
evals = [{"input_ids": s, "labels": s} for s in samples[64:72]]

config = GPT2Config(vocab_size=128, n_positions=block, n_embd=32, n_layer=2, n_head=2,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
model = GPT2LMHeadModel(config)


def collate(batch):
    t = torch.tensor([b["input_ids"] for b in batch])
    return {"input_ids": t, "labels": t.clone()}


class Slow(TrainerCallback):
    """Gives a test time to preempt mid-run (does not touch the training)."""

    def on_step_end(self, args, state, control, **kw):
        time.sleep(float(os.environ.get("STEP_SLEEP", "0")))


args = TrainingArguments(
    output_dir=os.path.join(out, "hf"), max_steps=max_steps, per_device_train_batch_size=4,
    learning_rate=3e-3, logging_steps=1, save_strategy="steps", save_steps=10,
    eval_strategy="steps", eval_steps=10, metric_for_best_model="eval_loss", save_total_limit=2,
    seed=0, data_seed=0, report_to=[], use_cpu=True, dataloader_num_workers=0,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evals,
                  data_collator=collate, callbacks=[Slow()])
trainer.train()
torch.save(model.state_dict(), os.path.join(out, "final.pt"))
print("done", trainer.state.global_step)
