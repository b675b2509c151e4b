"""docs/tutorial.md is executable: its python blocks run in order, in one namespace, in a fresh folder.
The tutorial asserts its own results (shapes, ordered phases, the 1/lr exponent)."""

import re
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_tutorial_runs(tmp_path, monkeypatch):
    blocks = python_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 6  # one run, reading, plotting, phases (2), sweep
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{TUTORIAL.name}[block {i + 1}]", "exec"), namespace)
    assert (tmp_path / "tutorial-runs" / "demo" / "my_figure.png").stat().st_size > 1000
    assert (tmp_path / "tutorial-runs" / "demo" / "phases.json").is_file()
