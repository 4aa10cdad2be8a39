"""The MkDocs hook (``hooks:`` in mkdocs.yml) that writes the generated tables into the pages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# MkDocs loads a hook by its path, with only the hook's own folder on sys.path: the repository's
# root makes `docgen` importable as the package it is, the way the tests import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docgen import reference


def on_page_markdown(markdown: str, **_: Any) -> str:
    return reference.render(markdown)
