"""The parts of ``deploy/gpu_check.py`` (``make gpu-check``): ``host`` (NVML facts, the GPU's
presence, the synthetic data), ``service`` (the whole service on a temp home), ``checks``."""
