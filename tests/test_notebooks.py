"""The notebooks: each runs top to bottom in a fresh kernel in under two minutes, and is
saved with the outputs of its own code (by ``python notebooks/execute.py``), an "Open in
Colab" link to the repository in pyproject and the same first cell as the others."""

import importlib.util
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("execute", ROOT / "notebooks" / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)
by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)


def images(notebook) -> int:
    return sum(o.output_type == "display_data" and "image/png" in o.data
               for c in notebook.cells for o in c.get("outputs", []))


def test_the_six_notebooks_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


def test_every_notebook_has_the_same_first_cell():
    first = [nbformat.read(p, as_version=4).cells[0] for p in NOTEBOOKS]
    assert all(cell.cell_type == "code" for cell in first)
    assert len({cell.source for cell in first}) == 1, "edit the first cells together"


@by_name
def test_saved_outputs_come_from_the_saved_code(path):
    notebook = nbformat.read(path, as_version=4)
    stamped = notebook.metadata.get("recurrent", {}).get(execute.STAMP)
    assert stamped == execute.code_hashes(notebook), (
        f"{path.name}: its code changed since its outputs were made; run "
        f"`python notebooks/execute.py {path.name}` and commit the result")
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert images(notebook), "saved without its plots"


@by_name
def test_colab_link_opens_the_repository_in_pyproject(path):
    repository = execute.repository_url()  # pyproject's [project.urls] Source
    links = execute.colab_links(nbformat.read(path, as_version=4))
    owner_name = repository.removeprefix("https://github.com/")
    assert links == [f"https://colab.research.google.com/github/{owner_name}/blob/main/"
                     f"notebooks/{path.name}"]


@by_name
def test_notebook_runs_top_to_bottom(path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute(env=execute.kernel_env())  # raises CellExecutionError on failure
    assert time.perf_counter() - start < 120
    errors = [o for c in notebook.cells for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors
    assert images(notebook)  # it drew its plots
