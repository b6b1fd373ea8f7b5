"""configure_openmp: the replica's OpenMP settings take effect only before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = """
import json, os, sys
from serve_app.openmp import configure_openmp
first = configure_openmp(1)
import torch
print(json.dumps({"first": first, "again": configure_openmp(2),
                  "threads": torch.get_num_threads(),
                  "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sets_threads_and_sleeping_threads_before_torch_loads() -> None:
    # Whatever OMP_NUM_THREADS Ray gave the actor is overridden. (torch caps the count at
    # the cores there are, so the probe asks for fewer.)
    assert _probe(OMP_NUM_THREADS="2") == {
        "first": True, "again": False, "threads": 1, "policy": "PASSIVE"
    }


def test_an_operators_wait_policy_wins() -> None:
    assert _probe(OMP_WAIT_POLICY="ACTIVE")["policy"] == "ACTIVE"
