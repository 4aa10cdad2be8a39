"""What users import: the examples of the README and the docs import only from ``projector``
itself, and every name they use is there."""

from __future__ import annotations

import re
from pathlib import Path

import projector

ROOT = Path(__file__).resolve().parents[2]


def test_the_examples_import_only_names_the_package_exports() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))
    deep = re.findall(r"^from (projector\.[\w.]+) import", code, flags=re.MULTILINE)
    names = {
        name.strip()
        for names in re.findall(r"^from projector import (.+)$", code, flags=re.MULTILINE)
        for name in names.split(",")
    }

    assert deep == [], "an example reaches into internal modules"
    assert names, "the examples import nothing from projector"
    assert sorted(names - set(projector.__all__)) == []
    assert all(hasattr(projector, name) for name in projector.__all__)
