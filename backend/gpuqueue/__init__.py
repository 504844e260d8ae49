"""gpuqueue: the engine (job model, scheduler, store, executors, job-side API)."""
