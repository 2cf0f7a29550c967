"""``python -m recurrent``: the default run learns the digits, every dataset reports its
metric and writes its files, a saved run loads and evaluates again, and bad arguments end in
one line and exit code 2."""

import re
import subprocess
import sys
import time

import numpy as np
import pytest

import recurrent
from recurrent.app import cli, load_run


def _run(capsys, *argv):
    assert cli.main(list(argv)) == 0
    return capsys.readouterr()


def _error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_default_train_learns_the_digits(capsys, tmp_path):
    import jax
    import numpy as np

    from recurrent import checkpoint
    from recurrent.app import train

    out = _run(capsys, "train", "--out", str(tmp_path))
    last = out.out.strip().splitlines()[-1]
    match = re.fullmatch(r"test accuracy: (0\.\d{3}|1\.000)", last)
    assert match, last
    assert float(match.group(1)) >= 0.90
    assert "loss=" in out.err  # the progress bar, on stderr
    assert (tmp_path / "loss.png").stat().st_size > 0
    like = train.init_network(jax.random.PRNGKey(0), "lstm", 8, 64, 1, False, 10)
    restored = checkpoint.restore(tmp_path / "checkpoint", like)
    assert jax.tree.structure(restored) == jax.tree.structure(like)
    assert not np.allclose(restored["head"], like["head"])  # the trained params, not the init


@pytest.mark.parametrize("argv, metric, files", [
    (["--dataset", "co2", "--model", "gru"], r"test mse: \d+\.\d+ ppm\^2", ["forecast.png"]),
    (["--dataset", "pysource", "--hidden", "32", "--layers", "2"],
     r"test bits per character: \d+\.\d+", []),
    (["--dataset", "adding", "--model", "rnn", "--length", "20", "--bidirectional"],
     r"test mse: \d+\.\d+ \(always predicting 1: 0\.1\d+\)", []),
    (["--dataset", "digits", "--model", "minlstm", "--layers", "2"],
     r"test accuracy: \d\.\d{3}", []),
])
def test_every_dataset_reports_its_metric(capsys, tmp_path, argv, metric, files):
    out = _run(capsys, "train", *argv, "--steps", "3", "--out", str(tmp_path)).out
    lines = out.strip().splitlines()
    assert re.fullmatch(metric, lines[-1]), out
    if "pysource" in argv:  # a sample continues the prompt
        assert lines[lines.index("sample:") + 1].startswith("def ")
    for name in ["loss.png", *files]:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "checkpoint").is_dir()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["--hidden", "-3"], "--hidden must be a positive integer, got -3"),
    (["--layers", "0"], "--layers must be a positive integer, got 0"),
    (["--steps", "-1"], "--steps must be a positive integer"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
    (["--dataset", "adding", "--length", "1"], "--length must be at least 2"),
    (["--dataset", "pysource", "--bidirectional"], "--bidirectional does not apply"),
    (["--epochs", "two"], "invalid int value: 'two'"),
    (["--length", "10"], "--length does not apply to digits"),
])
def test_bad_arguments_end_in_one_line(capsys, argv, message):
    assert message in _error(capsys, "train", *argv)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "100000"], "--batch-size 100000 is larger than the training set "
                                 "(1438 examples)"),
    (["--dataset", "co2", "--length", "1000"], "--length 1000 is too long for the co2"),
    (["--dataset", "co2", "--length", "420"], "--batch-size 32 is larger than the training "
                                              "set (1 examples)"),
    (["--dataset", "pysource", "--length", "10000000"], "--length 10000000 is too long"),
])
def test_sizes_the_data_cannot_serve_end_in_one_line_before_training(capsys, tmp_path, argv,
                                                                     message):
    """These hung (no batch was ever drawn) or ended in a traceback."""
    start = time.monotonic()
    assert message in _error(capsys, "train", *argv, "--steps", "2", "--out", str(tmp_path))
    assert time.monotonic() - start < 60  # loading the data; nothing is trained
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_run_ends_in_one_line_and_saves_nothing(capsys, monkeypatch, tmp_path):
    from recurrent.app import tasks

    def nan_task(args, out, params=None):
        return tasks.Result(None, {"w": np.full(3, np.nan)}, np.array([1.0, np.inf, np.nan]),
                            [], ["test accuracy: 0.100"])

    monkeypatch.setitem(cli.TASKS, "digits", cli.TASKS["digits"]._replace(run=nan_task))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m recurrent train: training diverged: the loss is inf from step 2; "
                   "try a smaller --lr (nothing saved)"]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_ends_in_one_line(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "is not a writable directory" in _error(capsys, "train", "--out", str(blocker / "x"))


def test_module_entry_point_exits_2_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "recurrent", "train", "--dataset", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m recurrent train: error: argument --dataset: invalid choice: 'nope' "
        "(choose from 'digits', 'co2', 'pysource', 'adding') (see --help)"]


def test_help_documents_every_dataset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for word in ["digits", "co2", "pysource", "adding", "--model", "--bidirectional",
                 "--layers", "--hidden", "--epochs", "--steps", "--lr", "--seed", "--out"]:
        assert word in help_text


def test_a_saved_run_loads_and_evaluates_to_its_metric(capsys, tmp_path):
    import jax
    import numpy as np

    trained = _run(capsys, "train", "--dataset", "adding", "--model", "gru", "--hidden", "8",
                   "--length", "5", "--steps", "3", "--out", str(tmp_path)).out
    run = load_run(tmp_path)
    assert (run.args.dataset, run.network.kind, run.network.hidden) == ("adding", "gru", 8)
    like = run.network.init(jax.random.PRNGKey(0))
    assert jax.tree.structure(run.params) == jax.tree.structure(like)
    assert not np.allclose(run.params["head"], like["head"])  # the trained params
    evaluated = _run(capsys, "evaluate", "--run", str(tmp_path)).out
    assert evaluated.strip().splitlines()[-1] == trained.strip().splitlines()[-1]


def test_evaluate_without_a_run_ends_in_one_line(capsys, tmp_path):
    assert "no run.json in" in _error(capsys, "evaluate", "--run", str(tmp_path))


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == recurrent.__version__


def test_a_missing_examples_extra_ends_in_one_line_naming_it():
    hide = ("import runpy, sys; sys.modules['tqdm'] = None; "
            "runpy.run_module('recurrent', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", hide, "train"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "python -m recurrent needs tqdm, which comes with the examples extra: "
        'pip install "jax-recurrent[examples]"']
