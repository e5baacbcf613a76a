"""The README's Python snippets run as written, in order, in one namespace (as a reader would paste them)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_snippets_run_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102  (our own documentation)
    printed = capsys.readouterr().out
    assert "12 19 31" in printed  # the first snippet's sorted answer
    assert "leftmost" in namespace["dllm"].samplers.available()
