"""What operators and users watch: Prometheus metrics, NVML readings, structured logs and the
GPU map / share standing shown by the sidebar and ``gpuqueue queue``."""
