"""Shadows any installed ``pynvml`` so a subprocess of a test takes the nvidia-smi path (as without the library)."""

raise ImportError("pynvml is blocked by the test (tests/gpu/nonvml)")
