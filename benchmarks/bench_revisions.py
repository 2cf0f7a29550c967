"""recurrent at a git revision against the working tree, interleaved in one process.

    python benchmarks/bench_revisions.py REV [--repeats 11] [--cells lstm gru] [--quick]

Separate runs of ``bench_cpu.py`` differ by up to about 15% per row on a shared 2-core
machine, more than most changes gain; timing both versions in turns within one process
shows the change itself. ``REV``'s ``recurrent/`` is exported with ``git archive`` into a
temporary folder as the package ``recurrent_at_rev`` (its imports of itself renamed), and
both versions time the configurations of ``bench_cpu.py``, forward and forward+backward
(the gradient of ``sum(y)`` with respect to all params), with ``common.measure``. Prints
median ms and the ratio working tree / ``REV`` (below 1: the working tree is faster).
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import recurrent

from bench_cpu import CONFIGS, QUICK_CONFIGS, describe, layer_fns
from common import machine, measure

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "recurrent_at_rev"


def export(rev: str, where: Path):
    """``rev``'s ``recurrent`` package, importable as ``ALIAS`` from ``where``."""
    archive = where / "rev.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev, "recurrent"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    package = where / ALIAS
    (where / "recurrent").rename(package)
    own = re.compile(r"\b(from|import) recurrent\b")
    for source in package.rglob("*.py"):
        source.write_text(own.sub(rf"\1 {ALIAS}", source.read_text()))
    sys.path.insert(0, str(where))
    return importlib.import_module(ALIAS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the git revision to compare with, e.g. main or HEAD~2")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"],
                        choices=["lstm", "gru"])
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, to check that the script runs")
    args = parser.parse_args(argv)
    print(f"{machine()}; {args.rev} against the working tree, {args.repeats} repetitions")
    print("| cell | B, T, I, H | layers × dirs | pass | at rev | working tree | ratio |\n"
          "|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as where:
        old = export(args.rev, Path(where))
        for cell in args.cells:
            for config in QUICK_CONFIGS if args.quick else CONFIGS:
                pairs = {"rev": layer_fns(old, cell, config),
                         "tree": layer_fns(recurrent, cell, config)}
                for mode in (0, 1):
                    ms = measure({k: fns[mode] for k, fns in pairs.items()}, args.repeats)
                    print(f"{describe(cell, config, mode)} {ms['rev']:.1f} | {ms['tree']:.1f} | "
                          f"{ms['tree'] / ms['rev']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
