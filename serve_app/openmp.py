"""OpenMP settings for a process that will run torch on CPU; torch must not be loaded yet.

OpenMP reads its environment once, when torch loads, so these are set before that or not
at all. Model replicas call this; so does the benchmark's in-process stand-in for them.
"""

from __future__ import annotations

import os
import sys


def configure_openmp(threads: int | None) -> bool:
    """Set OpenMP's thread count and wait policy for torch; False if torch is already loaded."""
    if "torch" in sys.modules:
        return False
    if threads:
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus; some kernels keep to it despite
        # set_num_threads.
        os.environ["OMP_NUM_THREADS"] = str(threads)
    # Idle OpenMP threads sleep instead of spinning. With replicas (or the ingress) sharing
    # cores, spinning threads starve the ones with work: two 2-thread workers on 2 cores ran
    # at 0.66 clips/s spinning and 1.31 sleeping, against 1.00 for one worker alone.
    # Sleeping makes many small kernels slow (Whisper's decoder steps), which
    # decode_threads: 1 avoids. An operator's own setting (runtime_env env_vars) wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
