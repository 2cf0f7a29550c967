"""The documentation site's pages: their Python examples run, as the README's do, and
every public name has a page in the API reference (``bash .ci/docs.sh`` builds the site
and fails on a reference to a name without one)."""

import importlib
import re
import types
from pathlib import Path

import pytest

import recurrent

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Pages whose examples continue another page's (its models, params and training steps).
CONTINUES = {"guide/checkpoints.md": "guide/flax.md", "guide/data_parallel.md":
             "guide/checkpoints.md"}
# Copies of the notebooks and benchmark results (docs/conf.py), and the build.
GENERATED = ("_build/", "notebooks/", "benchmarks/results/", "api/_autosummary/")


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def pages() -> list[str]:
    return sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")
                  if not str(path.relative_to(DOCS)).startswith(GENERATED))


def chains() -> list[list[str]]:
    """Each page that starts a script, with the pages that continue it, in order."""
    out = []
    for page in pages():
        if page in CONTINUES or not python_blocks(page):
            continue
        chain = [page]
        while (nxt := next((p for p, q in CONTINUES.items() if q == chain[-1]), None)):
            chain.append(nxt)
        out.append(chain)
    return out


def test_the_pages_with_examples_are_found():
    found = {page for chain in chains() for page in chain}
    assert {"guide/functional.md", "guide/flax.md", "guide/checkpoints.md",
            "guide/data_parallel.md", "guide/training.md", "guide/migrating.md"} <= found
    assert set(CONTINUES) <= set(pages())


@pytest.mark.parametrize("chain", chains(), ids=lambda chain: chain[0])
def test_docs_python_blocks_run_in_order(chain):
    namespace = {}
    for page in chain:
        for k, block in enumerate(python_blocks(page)):
            exec(compile(block, f"docs/{page} python block {k}", "exec"), namespace)


def public_names() -> set[str]:
    """``recurrent.__all__``, and each public submodule's ``__all__`` (or, without one,
    the functions and classes it defines that do not start with ``_``)."""
    names = {"recurrent"}
    for name in recurrent.__all__:
        value = getattr(recurrent, name)
        if not isinstance(value, types.ModuleType):
            names.add(f"recurrent.{name}")
            continue
        module = importlib.import_module(f"recurrent.{name}")
        names.add(module.__name__)
        exported = getattr(module, "__all__", None)
        if exported is None:
            exported = [n for n, v in vars(module).items() if not n.startswith("_")
                        and getattr(v, "__module__", None) == module.__name__]
        names.update(f"{module.__name__}.{n}" for n in exported)
    return names


def documented_names() -> set[str]:
    """Modules with an ``automodule`` and the names in the ``autosummary`` after it, on
    the pages of docs/api/."""
    names = set()
    for page in (DOCS / "api").glob("*.md"):
        module = None
        for line in page.read_text().splitlines():
            if match := re.match(r"\.\. (?:auto|current)module:: (\S+)", line.strip()):
                module = match.group(1)
                names.add(module)
            elif module and re.fullmatch(r"   [A-Za-z_]\w*", line):
                names.add(f"{module}.{line.strip()}")
    return names


def test_every_public_name_has_an_api_page():
    missing = public_names() - documented_names()
    assert not missing, f"public names without a page in docs/api/: {sorted(missing)}"
    extra = documented_names() - public_names()
    assert not extra, f"docs/api/ documents names that are not public: {sorted(extra)}"
