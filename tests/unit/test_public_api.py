"""What users import: the README's examples import only from ``projector`` itself, and every
name they use is there."""

from __future__ import annotations

import re
from pathlib import Path

import projector

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_imports_only_names_the_package_exports() -> None:
    readme = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL))
    deep = re.findall(r"^from (projector\.[\w.]+) import", code, flags=re.MULTILINE)
    names = {
        name.strip()
        for names in re.findall(r"^from projector import (.+)$", code, flags=re.MULTILINE)
        for name in names.split(",")
    }

    assert deep == [], "the README reaches into internal modules"
    assert names, "the README's examples import nothing from projector"
    assert sorted(names - set(projector.__all__)) == []
    assert all(hasattr(projector, name) for name in projector.__all__)
