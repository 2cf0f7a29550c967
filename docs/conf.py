"""Sphinx configuration of the documentation site (``bash .ci/docs.sh`` builds it).

Sphinx with MyST pages and notebooks (myst-nb), sphinx-book-theme and autodoc/autosummary,
as jax, flax and optax build theirs: a JAX user finds the same layout, the API reference
is generated from the docstrings (which are reStructuredText with Google-style sections,
read by napoleon), and the notebooks render with their saved outputs. (equinox's MkDocs
Material would need its own docstring renderer and notebook plugin.)
"""

import ast
import inspect
import shutil
import sys
import tomllib
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, whichever copy is installed

import recurrent  # noqa: E402

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

project = "recurrent"
author = "the recurrent authors"
release = recurrent.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

# The notebooks and the benchmark tables live where their scripts and tests use them; they
# are copied here at each build (the copies are ignored by git), so the toctrees pick up
# any file added there by glob, without an edit here.
GENERATED = {
    "notebooks": (ROOT / "notebooks", "*.ipynb"),
    "benchmarks/results": (ROOT / "benchmarks" / "results", "*.md"),
}
for target, (source, pattern) in GENERATED.items():
    (DOCS / target).mkdir(parents=True, exist_ok=True)
    sources = {path.name: path for path in source.glob(pattern)}
    for stale in (DOCS / target).glob(pattern):
        if stale.name not in sources:
            stale.unlink()
    for name, path in sources.items():
        copy = DOCS / target / name
        if not copy.exists() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)  # only when changed: Sphinx rebuilds what is newer

exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
# A class's page documents its own members (autosummary's default table also lists those
# it inherits, e.g. every method of flax's nnx.Module, which have no page here).
templates_path = ["_templates"]

# Notebooks render from their saved outputs: the test suite executes them, the site does not.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# The benchmark results are written by the benchmark scripts, which nest their run headings
# freely (a run's "#" then its "###"); MyST's check of heading levels does not apply to them.
suppress_warnings = ["myst.header"]

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Every cross-reference must resolve (-n): names outside this project (jax, flax, numpy,
# torch, the standard library's typing helpers) and the internal modules the public
# docstrings point into have no page here, so references to them are not checked.
nitpick_ignore_regex = [
    ("py:.*", r"(jax|jaxlib|flax|optax|numpy|np|jnp|torch|onnx|orbax)(\..*)?"),
    ("py:.*", r"(typing|collections\.abc|types|os)\..*"),
    ("py:.*", r"recurrent\.(fast|framing|vjp|layers|unroll|kernels\.layer)(\..*)?"),
    ("py:.*", r"recurrent\.\w+\.T"),  # the TypeVar of a pytree's type
    # internal helpers and constants a docstring names by their short name
    ("py:.*", r"(default_unroll|lstm_options|gru_options|mingru|minlstm|OPSET|IR_VERSION"
              r"|_\w+)"),
    ("py:.*", r"(Array|ArrayLike|DTypeLike|PRNGKeyArray|Mesh|Device|Sequence|Callable|Any)"),
]

html_theme = "sphinx_book_theme"
html_title = "recurrent"
html_theme_options = {
    "repository_url": PROJECT["urls"]["Source"],  # the one place the URL is kept
    "use_repository_button": True,
    "show_toc_level": 2,
}


def skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leaves out a NamedTuple field's generated "Alias for field number k": the class's
    docstring describes its fields (some in an "Attributes:" section, which would document
    the same names twice)."""
    if (obj.__doc__ or "").startswith("Alias for field number"):
        return True
    return skip


def alias_comment(app, what, name, obj, options, lines):
    """A type alias that a module imports (``recurrent.Params`` from ``recurrent.layers``)
    gets the ``#:`` comment it has where it is defined: autodoc reads such comments only in
    the module it documents, and would show the docstring of the alias's type instead."""
    module_name, _, short = name.rpartition(".")
    if what != "data" or module_name not in sys.modules:
        return
    source = Path(sys.modules[module_name].__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and any(
                (alias.asname or alias.name) == short for alias in node.names):
            comment = ModuleAnalyzer.for_module(node.module).find_attr_docs().get(("", short))
            if comment:
                lines[:] = list(comment)
            return


def init_signature(app, what, name, obj, options, signature, return_annotation):
    """An NNX module's signature is its ``__init__``'s: autodoc would show the
    ``(*args, **kwargs)`` of its metaclass's ``__call__``."""
    if what != "class" or not (signature or "").startswith("(*args"):
        return None
    init = inspect.signature(obj.__init__, eval_str=True)
    init = init.replace(parameters=list(init.parameters.values())[1:],  # without self
                        return_annotation=inspect.Signature.empty)
    return str(init), None


def setup(app):
    app.connect("autodoc-process-signature", init_signature)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    app.connect("autodoc-process-docstring", alias_comment)
