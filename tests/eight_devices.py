"""Runs a script of the tests on 8 host CPU devices, in a subprocess: XLA's device count is
fixed when jax starts, so it cannot change inside the test process."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_on_eight_devices(module: str) -> dict:
    """Runs ``python -m module`` (e.g. ``"tests.sharded_training"``) from the repository
    root with ``--xla_force_host_platform_device_count=8`` on the CPU; fails the test if it
    exits with an error, else returns the JSON of the last line it prints."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
