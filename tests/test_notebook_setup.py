"""The notebooks' first cell, run by IPython in a cold Python: no jax-recurrent installed,
an unrelated `recurrent` in the way. Nothing is downloaded: pip is configured through its own
environment variables (no index, wheels from a local folder), as a user could configure it.

The cold Python is a virtual environment without pip or site-packages of its own whose
PYTHONPATH is a copy (of links) of this Python's site-packages without jax-recurrent, so jax,
IPython and pip import, and pip installs into the virtual environment only.
"""

import json
import os
import site
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_CELL = nbformat.read(next((ROOT / "notebooks").glob("01_*.ipynb")), as_version=4).cells[0]
OURS = ("recurrent", "jax_recurrent", "__editable__")  # this Python's copy, left out

# Runs the cell (from stdin) the way a notebook does, then reports what `recurrent` is.
RUN_CELL = textwrap.dedent("""
    import importlib.metadata, json, sys
    from IPython.core.interactiveshell import InteractiveShell
    {before}
    imported = sys.modules.get("recurrent")
    shell = InteractiveShell.instance()
    shell.run_cell(sys.stdin.read())
    module = sys.modules.get("recurrent")
    names = {{d.metadata["Name"] for d in importlib.metadata.distributions()}}
    print(json.dumps({{"file": getattr(module, "__file__", None),
                      "ours": hasattr(module, "init_lstm"),
                      "same_in_notebook": shell.user_ns.get("recurrent") is module,
                      "kept": module is imported,
                      "unrelated_installed": "recurrent" in names}}))
""")


def _wheel(folder: Path, name: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel of `name` 0.0.1 holding `files` (path -> text)."""
    info = f"{name}-0.0.1.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    path = folder / f"{name}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """Wheels of jax-recurrent (built from this checkout, offline) and of an unrelated
    `recurrent`, each in a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheels")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "recurrent"):
        os.symlink(ROOT / name, source / name)
    ours = tmp / "ours"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", ours, source],
                   check=True, cwd=tmp, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    unrelated = tmp / "unrelated"
    unrelated.mkdir()
    _wheel(unrelated, "recurrent", {"recurrent/__init__.py": "UNRELATED = True\n"})
    return {"ours": ours, "unrelated": unrelated, "empty": tmp_path_factory.mktemp("empty")}


@pytest.fixture(scope="module")
def site_view(tmp_path_factory):
    """This Python's site-packages as a folder of links, without jax-recurrent."""
    view = tmp_path_factory.mktemp("site")
    for folder in map(Path, site.getsitepackages()):
        for entry in folder.iterdir():
            if not entry.name.startswith(OURS) and not (view / entry.name).exists():
                os.symlink(entry, view / entry.name)
    return view


@pytest.fixture
def cold(tmp_path, site_view):
    """run(find_links, before=..., repo=..., path=..., installed=...) runs the first cell in
    a fresh virtual environment (where the wheel `installed` is installed first) and returns
    what `recurrent` is then, the cell's output and the environment's folder."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    work = tmp_path / "work"  # the current folder: empty
    work.mkdir()

    def run(find_links, before="", repo="", path=(), installed=None):
        if installed:
            subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", installed],
                           check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull,
                                            "PYTHONPATH": str(site_view)})
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
               "PIP_FIND_LINKS": str(find_links),
               "PYTHONPATH": os.pathsep.join([*map(str, path), str(site_view)])}
        source = FIRST_CELL.source.replace('REPO = ""', f"REPO = {str(repo)!r}", 1)
        done = subprocess.run([python, "-c", RUN_CELL.format(before=before)], input=source,
                              capture_output=True, text=True, cwd=work, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        *output, report = done.stdout.strip().splitlines()
        return json.loads(report), "\n".join(output), env_dir

    return run


def test_first_cell_sets_repo_to_nothing():
    assert FIRST_CELL.cell_type == "code"
    assert FIRST_CELL.source.count('REPO = ""') == 1  # the package index, unless a user sets it


def test_first_cell_replaces_an_imported_unrelated_recurrent(cold, wheels):
    # The unrelated project, installed and already imported, as on a runtime that has it:
    report, output, env_dir = cold(wheels["ours"], installed=next(wheels["unrelated"].glob("*")),
                                   before="import recurrent\nassert recurrent.UNRELATED")
    assert report["ours"] and report["same_in_notebook"], output
    assert not report["unrelated_installed"]  # uninstalled
    assert report["file"].startswith(str(env_dir))  # ours, installed from the wheel folder
    assert "Traceback" not in output


def test_first_cell_installs_from_repo_and_shadows_a_folder(cold, wheels, tmp_path):
    folder = tmp_path / "elsewhere"
    (folder / "recurrent").mkdir(parents=True)
    (folder / "recurrent" / "__init__.py").write_text("UNRELATED = True\n")
    wheel = next(wheels["ours"].glob("*.whl"))
    # No wheels to find: what is installed comes from REPO.
    report, output, env_dir = cold(wheels["empty"], repo=wheel, path=[folder])
    assert report["ours"] and report["same_in_notebook"], output
    assert report["file"].startswith(str(env_dir))


def test_first_cell_fails_with_one_sentence(cold, wheels):
    report, output, _ = cold(wheels["empty"])  # nothing to install from
    assert not report["ours"]
    last = output.strip().splitlines()[-1]
    assert last.startswith("SetupError: `pip install jax-recurrent[examples]` failed ("), output
    assert last.endswith("run this cell again"), output
    assert "Traceback" not in output and "/bin/" not in output


def test_first_cell_run_again_keeps_the_imported_recurrent(cold, wheels):
    # Params made before would not be the re-imported module's LSTMParams; nothing to install.
    report, output, _ = cold(wheels["empty"], before="import recurrent", path=[ROOT])
    assert report["ours"] and report["kept"], output
