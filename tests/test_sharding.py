"""recurrent.sharding: training steps with the batch sharded over 8 host CPU devices give
the params of the same steps on one device (Linen and NNX).

XLA's device count is fixed when jax starts, so the steps run in a subprocess
(tests/sharded_training.py) with ``--xla_force_host_platform_device_count=8``.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sharded_and_unsharded_steps_give_the_same_params():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "tests.sharded_training"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result["devices"] == 8
    assert result["batch_devices"] == 8 and result["batch_spec"] == "P('data',)"
    assert result["params_replicated"]
    assert result["linen_change"] > 1e-3 and result["nnx_change"] > 1e-3  # params moved
    assert result["linen_difference"] < 1e-6
    assert result["nnx_difference"] < 1e-6
    assert "multiple of the 8 devices" in result["indivisible_error"]
