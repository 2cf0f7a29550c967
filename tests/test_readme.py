"""The README's Python examples run, in order, as one script (they carry their own asserts);
the documentation pages' examples run the same way in tests/test_docs.py."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run_in_order():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README lost its quickstart"
    namespace = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {k}", "exec"), namespace)
        if k == 0:  # what the quickstart promises in its shape comments
            assert namespace["y"].shape == (4, 10, 64)
            assert namespace["h_n"].shape == namespace["c_n"].shape == (4, 4, 32)
            assert namespace["y_gru"].shape == (4, 10, 32)
            assert namespace["h_gru"].shape == (1, 4, 32)
