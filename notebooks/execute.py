"""Run the notebooks and save them with their outputs: ``python notebooks/execute.py [NAME...]``.

Each notebook (all of ``notebooks/*.ipynb``, or those named) runs top to bottom in a fresh
kernel against this checkout's ``recurrent``, one after the other. Before it runs, its
"Open in Colab" link is rebuilt from the repository URL in pyproject's ``[project.urls]``;
after, the SHA-256 of each code cell's source is stamped in its metadata, so that
``tests/test_notebooks.py`` fails on a saved notebook whose code changed since its outputs
were made. Prints each notebook's execution time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import time
import tomllib
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_LINK = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\((?P<url>[^)]*)\)\n*")
STAMP = "code_sha256"  # notebook.metadata["recurrent"][STAMP]: one hash per code cell


def repository_url() -> str:
    """The repository's URL, ``https://github.com/OWNER/NAME``, from pyproject's Source."""
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"pyproject's [project.urls] Source is {url!r}; expected "
                         "https://github.com/OWNER/NAME, which Colab opens notebooks from")
    return url


def colab_url(path: Path) -> str:
    """Where Colab opens the notebook at ``path`` from the repository's main branch."""
    repo = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name}"


def colab_links(notebook) -> list[str]:
    """The URLs of every "Open in Colab" badge in the notebook's markdown cells."""
    return [m["url"] for cell in notebook.cells if cell.cell_type == "markdown"
            for m in COLAB_LINK.finditer(cell.source)]


def code_hashes(notebook) -> list[str]:
    """The SHA-256 of each code cell's source, in order."""
    return [hashlib.sha256(cell.source.encode()).hexdigest()
            for cell in notebook.cells if cell.cell_type == "code"]


def set_colab_link(notebook, path: Path) -> None:
    """Put the one "Open in Colab" badge at the top of the first markdown cell."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = COLAB_LINK.sub("", cell.source)
    title = next(cell for cell in notebook.cells if cell.cell_type == "markdown")
    title.source = f"[![Open In Colab]({BADGE})]({colab_url(path)})\n\n{title.source}"


def kernel_env() -> dict[str, str]:
    """The environment for a notebook's kernel: this one, with this checkout first on
    PYTHONPATH, so that the notebooks import the ``recurrent`` they are saved with."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def execute(path: Path, timeout: int = 600) -> float:
    """Run the notebook at ``path`` in a fresh kernel, stamp and save it; returns seconds."""
    notebook = nbformat.read(path, as_version=4)
    set_colab_link(notebook, path)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timestamps of an earlier run
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            record_timing=False,  # nor of this one: re-runs change less
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute(env=kernel_env())  # raises CellExecutionError, with the cell and traceback
    seconds = time.perf_counter() - start
    notebook.metadata.setdefault("recurrent", {})[STAMP] = code_hashes(notebook)
    nbformat.write(notebook, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook files or names (default: all)")
    args = parser.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.name.startswith(Path(n).name) for n in args.names)]
        if not paths:
            parser.error(f"no notebook in {NOTEBOOKS} matches {args.names}")
    for path in paths:
        print(f"{path.name}: {execute(path):.1f} s", flush=True)


if __name__ == "__main__":
    main()
