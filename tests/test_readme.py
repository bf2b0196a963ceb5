"""The documentation's Python example (docs/method.md, "Using the layers") runs and says what it claims."""

import contextlib
import io
import re
from pathlib import Path

METHOD = Path(__file__).resolve().parents[1] / "docs" / "method.md"


def test_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", METHOD.read_text(), flags=re.S)
    assert blocks, "docs/method.md has no python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "docs/method.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "torch.Size([2, 10, 26, 26])"
    errors = eval(lines[-1])
    assert set(errors) == {1, 2, 3} and max(errors.values()) < 1e-10
