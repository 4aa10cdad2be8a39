"""What users import: the examples of the README and the docs import only from ``projector``
itself (and its testing kit, ``projector.testing``), and every name they use is there."""

from __future__ import annotations

import re
from pathlib import Path

import projector
import projector.testing

PUBLIC = {"projector": projector, "projector.testing": projector.testing}

ROOT = Path(__file__).resolve().parents[2]


def test_the_examples_import_only_names_the_package_exports() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    # Every python block, titled ones (```python title="conftest.py") included.
    code = "\n".join(re.findall(r"```python[^\n]*\n(.*?)```", text, flags=re.DOTALL))
    # Imports on one line, or in parentheses over several.
    imports = re.findall(
        r"^from (projector[\w.]*) import (\([^)]*\)|.+)$", code, flags=re.MULTILINE
    )
    names: dict[str, set[str]] = {module: set() for module in PUBLIC}
    for module, listed in imports:
        assert module in PUBLIC, f"an example reaches into an internal module: {module}"
        names[module] |= {name.strip() for name in listed.strip("()").split(",") if name.strip()}

    for module, used in names.items():
        assert used, f"the examples import nothing from {module}"
        exported = set(PUBLIC[module].__all__)
        assert sorted(used - exported) == []
        assert all(hasattr(PUBLIC[module], name) for name in exported)
