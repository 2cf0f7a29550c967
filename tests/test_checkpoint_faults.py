"""recurrent.checkpoint under faults: a failed or killed save never loses the previous
checkpoint, nothing but a checkpoint is ever replaced, and a damaged checkpoint restores
bit for bit or raises an error naming its path."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from recurrent import checkpoint

TREE = {"w": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.arange(4, dtype=jnp.int32)}}


def _assert_equal(a, b):
    np.testing.assert_array_equal(a["w"], b["w"])
    np.testing.assert_array_equal(a["b"]["c"], b["b"]["c"])


def _files(directory):
    return sorted(os.path.relpath(os.path.join(root, f), directory)
                  for root, _, files in os.walk(directory) for f in files)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "ckpt"
    checkpoint.save(path, TREE)
    return path


def test_a_failed_overwrite_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, TREE)
    with pytest.raises(TypeError, match="leaf s is a str"):
        checkpoint.save(path, {"w": jnp.ones(3), "s": "text"}, overwrite=True)
    _assert_equal(checkpoint.restore(path, TREE), TREE)
    assert os.listdir(tmp_path) == ["ckpt"]  # no staging directory left behind


def test_a_failing_orbax_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    checkpoint.save(path, TREE)

    def fail(self, directory, *args, **kwargs):
        os.makedirs(directory)  # a half-written staging directory
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.ocp.StandardCheckpointer, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"w": jnp.ones(3)}, overwrite=True)
    monkeypatch.undo()
    _assert_equal(checkpoint.restore(path, TREE), TREE)
    assert os.listdir(tmp_path) == ["ckpt"]


@pytest.mark.parametrize("make", ["file", "directory"])
def test_overwrite_refuses_what_is_not_a_checkpoint(tmp_path, make):
    path = tmp_path / "target"
    if make == "file":
        path.write_text("notes")
    else:
        path.mkdir()
        (path / "mine.txt").write_text("notes")
    with pytest.raises(FileExistsError, match=f"{path} exists and is not a checkpoint"):
        checkpoint.save(path, TREE, overwrite=True)
    assert (path.read_text() if make == "file" else (path / "mine.txt").read_text()) == "notes"


def test_a_save_under_a_regular_file_fails_at_once(tmp_path):
    """orbax waited 300 s on a barrier before failing; the process must end in seconds."""
    (tmp_path / "afile").write_text("x")
    script = textwrap.dedent(f"""
        import jax.numpy as jnp
        from recurrent import checkpoint
        try:
            checkpoint.save({str(tmp_path / "afile" / "ckpt")!r}, {{"w": jnp.ones(3)}})
        except NotADirectoryError as e:
            print(e)
    """)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(f"{tmp_path / 'afile'} is not a directory"), out.stdout
    assert time.monotonic() - start < 30


def test_restore_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty} is not a complete checkpoint: "
                                         f"_CHECKPOINT_METADATA, _METADATA missing"):
        checkpoint.restore(empty, TREE)
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path / 'none'}"):
        checkpoint.restore(tmp_path / "none", TREE)


@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_a_damaged_checkpoint_restores_exactly_or_names_its_path(saved, tmp_path, how):
    """Each file of a checkpoint in turn deleted or truncated to half its size."""
    names = _files(saved)
    assert "_METADATA" in names and len(names) > 5
    for i, name in enumerate(names):
        path = tmp_path / f"ckpt{i}"
        shutil.copytree(saved, path)
        target = path / name
        if how == "delete":
            target.unlink()
        else:
            with open(target, "r+b") as f:
                f.truncate(os.path.getsize(target) // 2)
        try:
            restored = checkpoint.restore(path, TREE)
        except ValueError as error:
            assert str(path) in str(error), (name, str(error))
        else:
            _assert_equal(restored, TREE)


_SAVER = """
import sys
import jax.numpy as jnp
from recurrent import checkpoint
path = sys.argv[1]
for version in range(1, 10**6):
    tree = {"w": jnp.full((256, 256), float(version)), "v": jnp.int32(version)}
    checkpoint.save(path, tree, overwrite=True)
    print(version, flush=True)
"""


def test_a_killed_save_leaves_a_whole_checkpoint(tmp_path):
    """A process saving new versions over one path is killed at several moments; each
    time the path holds one whole earlier version."""
    path = tmp_path / "ckpt"
    like = {"w": jnp.zeros((256, 256)), "v": jnp.int32(0)}
    last = 0
    for delay in (0.05, 0.13, 0.29):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], cwd=os.getcwd(),
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # one version saved by this process at least
        assert first.strip(), "the saver printed nothing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        restored = checkpoint.restore(path, like)
        version = int(restored["v"])
        assert version >= 1
        np.testing.assert_array_equal(restored["w"], np.full((256, 256), float(version)))
        last = version
    assert last >= 1
