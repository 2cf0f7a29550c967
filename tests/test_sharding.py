"""recurrent.sharding: training steps with the batch sharded over 8 host CPU devices give
the params of the same steps on one device (Linen and NNX).

XLA's device count is fixed when jax starts, so the steps run in a subprocess
(tests/sharded_training.py) with ``--xla_force_host_platform_device_count=8``.
"""

from tests.eight_devices import run_on_eight_devices


def test_sharded_and_unsharded_steps_give_the_same_params():
    result = run_on_eight_devices("tests.sharded_training")

    assert result["devices"] == 8
    assert result["batch_devices"] == 8 and result["batch_spec"] == "P('data',)"
    assert result["params_replicated"]
    assert result["linen_change"] > 1e-3 and result["nnx_change"] > 1e-3  # params moved
    assert result["linen_difference"] < 1e-6
    assert result["nnx_difference"] < 1e-6
    assert "multiple of the 8 devices" in result["indivisible_error"]
