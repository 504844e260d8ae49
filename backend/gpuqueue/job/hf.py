"""HuggingFace Transformers integration: a ``TrainerCallback`` that reports, checkpoints and
stops cleanly, attached to every ``Trainer`` created inside a job.

Inside a job nothing is needed: ``install_hook()`` (run by the job process before user code)
patches ``transformers.Trainer`` the moment user code imports it, never earlier, so that

* every ``Trainer`` gets a ``GpuqueueCallback``: loss, learning rate, grad norm and eval
  metrics go to the job's stream as ``metrics`` events, global step / max steps as ``progress``;
* every checkpoint the Trainer saves is copied into the job's checkpoint manager (atomic, with
  a completion marker; rotated; best kept by ``metric_for_best_model``);
* on a preempt, cancel or time-limit notice the Trainer saves at the current step and stops;
  the attempt then ends (``SystemExit``) instead of running the code after ``train()``;
* ``trainer.train()`` in the requeued attempt resumes from the latest complete checkpoint.

Outside a job (or with the hook off), use it explicitly::

    from gpuqueue.hf import GpuqueueCallback, resume_checkpoint
    trainer = Trainer(..., callbacks=[GpuqueueCallback()])
    trainer.train(resume_from_checkpoint=resume_checkpoint(trainer))
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import shutil
import sys
import time
from typing import Any, Literal, Optional, TypedDict

from . import jobapi

_TRAINER_MODULE = "transformers.trainer"
_counter = [0]


class _CheckpointOptions(TypedDict):
    """A callback's ``Checkpointer`` arguments, as given (None: from the Trainer's args)."""

    directory: Optional[str]
    max_checkpoints: Optional[int]
    monitor: Optional[str]
    mode: Optional[Literal["min", "max"]]


# -- the callback ----------------------------------------------------------------------------
def _make_callback_class() -> type:
    from transformers import TrainerCallback

    class GpuqueueCallback(TrainerCallback):
        """Streams Trainer logs/progress to the job, mirrors its saves into a ``Checkpointer``,
        and turns a stop notice into save-and-stop. ``name`` separates several Trainers in one
        job; ``every_s`` adds time-based saves to the Trainer's own ``save_steps``."""

        def __init__(
            self,
            name: Optional[str] = None,
            *,
            directory: Optional[str] = None,
            max_checkpoints: Optional[int] = None,
            monitor: Optional[str] = None,
            mode: Optional[Literal["min", "max"]] = None,
            every_s: Optional[float] = None,
        ):
            if name is None:
                name = f"trainer-{_counter[0]}"
                _counter[0] += 1
            self.name = name
            self._opts = _CheckpointOptions(directory=directory, max_checkpoints=max_checkpoints, monitor=monitor, mode=mode)
            self.every_s = every_s
            self._ckpt: Any = None
            self._last_save = time.monotonic()
            self.stopped_at: Optional[int] = None
            self.last_metrics: dict[str, Any] = {}
            jobapi.watch_stop()

        def checkpointer(self, args: Any = None) -> Any:
            """The ``Checkpointer`` this Trainer's saves go to (made on first use)."""
            if self._ckpt is None:
                from .checkpoint import Checkpointer

                monitor = self._opts["monitor"]
                mode = self._opts["mode"]
                if monitor is None and args is not None and getattr(args, "metric_for_best_model", None):
                    monitor = args.metric_for_best_model
                    if not monitor.startswith("eval_"):
                        monitor = "eval_" + monitor
                    if mode is None:
                        mode = "max" if getattr(args, "greater_is_better", False) else "min"
                max_ck = self._opts["max_checkpoints"]
                if max_ck is None and args is not None:
                    max_ck = getattr(args, "save_total_limit", None) or 3
                self._ckpt = Checkpointer(
                    self._opts["directory"], name=self.name, max_checkpoints=max_ck or 3,
                    monitor=monitor, mode=mode or "min",
                )
            return self._ckpt

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.checkpointer(args)
            if state.is_world_process_zero and state.max_steps:
                jobapi.progress(state.global_step, state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict[str, Any]] = None, **kw: Any) -> None:
            if not logs or not state.is_world_process_zero:
                return
            numeric = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if "learning_rate" in numeric:
                numeric["lr"] = numeric["learning_rate"]
            self.last_metrics.update(numeric)
            if numeric:
                jobapi.log(step=state.global_step, **numeric)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero and state.max_steps:
                jobapi.progress(state.global_step, state.max_steps)
            if self.every_s and time.monotonic() - self._last_save >= self.every_s:
                control.should_save = True
            if jobapi.should_stop():  # all ranks call this at the same step: they agree
                control.should_save = True
                control.should_training_stop = True
                if self.stopped_at is None:
                    self.stopped_at = state.global_step
                    if state.is_world_process_zero:
                        jobapi.info(f"stop notice: saving a checkpoint at step {state.global_step} and stopping")

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._last_save = time.monotonic()
            if not state.is_world_process_zero:
                return
            src = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if not os.path.isdir(src):
                return
            metrics = {k: v for k, v in self.last_metrics.items() if k.startswith("eval_") or k in ("loss", "lr")}

            def copy(dest: str) -> None:
                shutil.copytree(src, dest, dirs_exist_ok=True)

            self.checkpointer(args).save(state.global_step, writer=copy, metrics=metrics)

    return GpuqueueCallback


_callback_cls: Optional[type] = None


def __getattr__(name: str) -> Any:
    """``GpuqueueCallback`` is built on first use, so importing this module needs no transformers."""
    global _callback_cls
    if name == "GpuqueueCallback":
        if _callback_cls is None:
            _callback_cls = _make_callback_class()
        return _callback_cls
    raise AttributeError(name)


def _find_callback(trainer: Any) -> Any:
    cls = _callback_cls
    if cls is None:
        return None
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, cls):
            return cb
    return None


def resume_checkpoint(trainer: Any) -> Optional[str]:
    """A local folder to pass as ``resume_from_checkpoint``: the latest complete checkpoint of
    this trainer's run in the job (or ``GPUQUEUE_RESUME_FROM``), or None to start fresh."""
    cb = _find_callback(trainer)
    if cb is None:
        return None
    ck = cb.checkpointer(trainer.args)
    point = ck.resume_point()
    if point is None:
        return None
    if jobapi.is_main_process():
        jobapi.emit("info", {"message": f"resuming from checkpoint step {point.step}: {point.path}",
                             "resumed_step": point.step})
    return ck.local_path(point)


# -- applying job options and patching Trainer -----------------------------------------------
def apply_job_options(args: Any) -> None:
    """Apply ``--precision`` and ``--grad-checkpointing`` (``GPUQUEUE_PRECISION``,
    ``GPUQUEUE_GRAD_CHECKPOINTING``) to a ``TrainingArguments``."""
    prec = os.environ.get("GPUQUEUE_PRECISION")
    if prec in ("bf16", "fp16", "fp32") and args is not None:
        args.bf16 = prec == "bf16"
        args.fp16 = prec == "fp16"
    if os.environ.get("GPUQUEUE_GRAD_CHECKPOINTING") == "1" and args is not None:
        args.gradient_checkpointing = True


def _patch(trainer_cls: Any) -> None:
    """Wrap ``Trainer.__init__`` (attach the callback, apply job options) and ``Trainer.train``
    (resume; end the attempt after a stop notice)."""
    if getattr(trainer_cls, "_gpuqueue_patched", False):
        return
    orig_init = trainer_cls.__init__
    orig_train = trainer_cls.train

    @functools.wraps(orig_init)
    def __init__(self: Any, *a: Any, **kw: Any) -> None:
        args = kw.get("args") if "args" in kw else (a[1] if len(a) > 1 else None)
        apply_job_options(args)
        orig_init(self, *a, **kw)
        if _find_callback(self) is None:
            self.add_callback(__getattr__("GpuqueueCallback")())

    @functools.wraps(orig_train)
    def train(self: Any, resume_from_checkpoint: Any = None, *a: Any, **kw: Any) -> Any:
        if resume_from_checkpoint is None or resume_from_checkpoint is True:
            found = resume_checkpoint(self)
            if found is not None:
                resume_from_checkpoint = found
        out = orig_train(self, resume_from_checkpoint, *a, **kw)
        cb = _find_callback(self)
        if cb is not None and cb.stopped_at is not None:
            jobapi.flush()
            raise SystemExit(
                f"gpuqueue: stopped at step {cb.stopped_at} after a stop notice; "
                "the checkpoint is saved and the job resumes from it when it runs again"
            )
        return out

    trainer_cls.__init__ = __init__
    trainer_cls.train = train
    trainer_cls._gpuqueue_patched = True


class _TrainerImportHook(importlib.abc.MetaPathFinder):
    """Patches ``transformers.trainer.Trainer`` right after that module is first imported."""

    _busy = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TRAINER_MODULE or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        orig_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            orig_exec(module)
            try:
                _patch(module.Trainer)
            except Exception as e:  # noqa: BLE001 - never break the user's import
                print(f"gpuqueue: could not attach to transformers.Trainer: {e}", file=sys.stderr)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_hook() -> None:
    """Attach to every ``Trainer`` the job creates; imports nothing from transformers itself.
    Off with ``GPUQUEUE_HF_HOOK=0``."""
    if os.environ.get("GPUQUEUE_HF_HOOK", "1") == "0":
        return
    mod = sys.modules.get(_TRAINER_MODULE)
    if mod is not None and hasattr(mod, "Trainer"):
        _patch(mod.Trainer)
        return
    if not any(isinstance(f, _TrainerImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TrainerImportHook())
