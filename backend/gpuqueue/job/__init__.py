"""Code that runs inside the job's own process: the job-side API (``gpuqueue.log``, progress,
stop requests), checkpoints, the HuggingFace callback, distributed start-up, the cell job's
main program and the cell payload it unpacks (packed in the notebook by the same module)."""
