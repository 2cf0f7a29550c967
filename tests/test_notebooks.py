"""Every notebook in notebooks/ runs top to bottom, in a fresh kernel, in under two minutes."""

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# Installs from the repository only when this project's recurrent is missing (PyPI's
# "recurrent" is an unrelated package, so the guard also checks for recurrent.lstm).
INSTALL_GUARD = ('try:\n    import recurrent\n    if not hasattr(recurrent, "lstm"):',
                 "except ImportError:\n    %pip install -q \"jax-recurrent[examples] @ {REPO}\"")


def test_the_four_notebooks_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path):
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "code"  # Colab-ready:
    assert all(part in first.source for part in INSTALL_GUARD)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure
    assert time.perf_counter() - start < 120
    errors = [o for c in notebook.cells for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors
    assert any(o.output_type == "display_data" and "image/png" in o.data
               for c in notebook.cells for o in c.get("outputs", []))  # it drew its plots
