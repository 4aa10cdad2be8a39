"""The layers hold: each package imports only what its docstring allows, SQL lives in storage,
and rich renders only in the CLI (docs: How it is built).

Checked on the source with `ast`, so a forbidden edge fails here before anyone runs it.
Imports under ``if TYPE_CHECKING:`` are types only, and do not count.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "projector"

# What each part of projector may import of projector (its own modules always).
LEAVES = {"projector.errors", "projector.cleanup", "projector.reconnecting"}
ALLOWED: dict[str, set[str]] = {
    "projector.errors": set(),
    "projector.cleanup": set(),
    "projector.reconnecting": {"projector.model", "projector.errors"},
    "projector.model": {"projector.errors"},
    "projector.pipeline": {"projector.model", "projector.errors", "projector.reconnecting"},
    "projector.storage": {"projector.model", *LEAVES},
    "projector.runtime": {"projector.model", "projector.pipeline", "projector.storage", *LEAVES},
    "projector.admin": {"projector.model", "projector.storage", "projector.runtime", *LEAVES},
    "projector.telemetry": {
        "projector.model",
        "projector.pipeline",
        "projector.storage",
        "projector.runtime",
        "projector.settings",
        *LEAVES,
    },
    "projector.settings": {"projector.model", "projector.storage", "projector.errors"},
    "projector.localpg": {"projector.errors"},
}
# Libraries that do I/O (or drive it): the model imports none of them, the pipeline no driver.
IO_LIBRARIES = {
    "psycopg",
    "psycopg_pool",
    "sqlalchemy",
    "alembic",
    "aiohttp",
    "anyio",
    "socket",
    "subprocess",
    "prometheus_client",
    "opentelemetry",
    "rich",
    "click",
}
FORBIDDEN_LIBRARIES = {
    "projector.model": IO_LIBRARIES,
    "projector.pipeline": IO_LIBRARIES - {"anyio"},
}
# What a statement looks like: a string constant holding one (docstrings excluded). ROLLBACK
# only in capitals: in lower case it is the name of a command (`projector rebuild rollback`).
SQL = re.compile(
    r"\b(SELECT\s.+\bFROM\b|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX"
    r"|DATABASE)|ALTER\s+TABLE|pg_advisory\w*|pg_try_advisory\w*|(?-i:ROLLBACK)|LISTEN\s|NOTIFY\s)",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def part(self) -> str:
        """The part of the house it belongs to: its package, or itself at the top level."""
        parts = self.name.split(".")
        return ".".join(parts[:2])

    def imports(self) -> list[tuple[str, int]]:
        """(module imported, line) for every import that runs (not TYPE_CHECKING-only)."""
        found: list[tuple[str, int]] = []
        for node in _runtime_nodes(self.tree):
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                assert node.level == 0, f"{self.name}: use absolute imports"
                found.append((node.module, node.lineno))
                # `from projector import x` may name a submodule
                if node.module == "projector":
                    found.extend((f"projector.{a.name}", node.lineno) for a in node.names)
        return found

    def strings(self) -> list[tuple[str, int]]:
        """String (and bytes) constants that are not docstrings, with their line."""
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(self.tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        found: list[tuple[str, int]] = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Constant) or id(node) in docstrings:
                continue
            if isinstance(node.value, bytes):
                found.append((node.value.decode(errors="replace"), node.lineno))
            elif isinstance(node.value, str):
                found.append((node.value, node.lineno))
        return found


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _modules() -> list[Module]:
    modules = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules.append(Module(name, path, ast.parse(path.read_text(), str(path))))
    return modules


MODULES = _modules()


def _part_of(imported: str) -> str | None:
    if imported != "projector" and not imported.startswith("projector."):
        return None
    return ".".join(imported.split(".")[:2])


def _imports(importer: Callable[[str], bool], imported: Callable[[str], bool]) -> list[str]:
    """Every import, as ``module:line imports name``, of a module whose part ``importer``
    accepts, of a name ``imported`` accepts."""
    return [
        f"{module.name}:{line} imports {name}"
        for module in MODULES
        if importer(module.part)
        for name, line in module.imports()
        if imported(name)
    ]


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(part: str) -> None:
    def forbidden(name: str) -> bool:
        target = _part_of(name)
        return target not in (None, "projector", part) and target not in ALLOWED[part]

    wrong = _imports(lambda importer: importer == part, forbidden)
    assert wrong == [], f"{part} may import only {sorted(ALLOWED[part])}"


@pytest.mark.parametrize("part", sorted(FORBIDDEN_LIBRARIES))
def test_the_model_does_no_io_and_the_pipeline_has_no_driver(part: str) -> None:
    libraries = FORBIDDEN_LIBRARIES[part]
    assert _imports(lambda importer: importer == part, lambda n: n.split(".")[0] in libraries) == []


def test_nothing_below_the_runner_imports_the_runner_or_the_cli() -> None:
    above = {"projector.runner", "projector.process", "projector.cli", "projector.demo"}
    assert _imports(lambda importer: importer in ALLOWED, lambda n: _part_of(n) in above) == []


def test_the_runner_does_no_administration() -> None:
    """A run is watched by telemetry; administration (status, checkpoints, rebuilds) is what
    operators ask of a group from outside it, and the runner never calls it."""
    administration = _imports(
        lambda part: part == "projector.runner", lambda n: _part_of(n) == "projector.admin"
    )
    assert administration == []


def test_nothing_in_projector_imports_the_testing_kit() -> None:
    """The testing kit (a pytest plugin) sits above the runner, like the CLI: a running
    projector never imports it, nor pytest with it."""
    users = _imports(
        lambda importer: importer != "projector.testing",
        lambda n: _part_of(n) == "projector.testing" or n.split(".")[0] == "pytest",
    )
    assert users == []


def test_only_storage_speaks_to_the_driver() -> None:
    """Driver errors become projector's in storage only, so nothing else can name (and so
    catch) psycopg's or the pool's error types (the demo's handler, which keeps a read-model
    pool of its own as a user's would, aside)."""
    speakers = {"projector.storage", "projector.demo"}
    drivers = {"psycopg", "psycopg_pool"}
    assert (
        _imports(lambda importer: importer not in speakers, lambda n: n.split(".")[0] in drivers)
        == []
    )


# Exceptions a handler raises to steer its own retries (`projector.model.failures`) are part
# of the handler API, not errors projector reports; private ones never leave their module.
SIGNALS = {"projector.model.failures"}


def test_every_error_type_lives_in_the_errors_module() -> None:
    """The README's promise: `projector.errors` holds every error projector raises, so a user
    catches them from one place."""
    errors = next(module for module in MODULES if module.name == "projector.errors")
    known = {node.name for node in errors.tree.body if isinstance(node, ast.ClassDef)}
    elsewhere = [
        f"{module.name}:{node.lineno} defines {node.name}"
        for module in MODULES
        if module.name != "projector.errors" and module.name not in SIGNALS
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ClassDef)
        and not node.name.startswith("_")
        and any(
            ast.unparse(base).split(".")[-1] in known | {"Exception", "BaseException"}
            or ast.unparse(base).endswith("Error")
            for base in node.bases
        )
    ]
    assert elsewhere == []


# Ways to open a connection or a pool that would not be a translating one.
_OPENERS = re.compile(
    r"\b(psycopg\.(connect|Connection\.connect|AsyncConnection\.connect)|"
    r"(Async)?ConnectionPool)\("
)


def test_storage_opens_connections_only_through_its_database_module() -> None:
    """Every connection storage opens translates the driver's errors: `storage.database` opens
    them all (its connection classes, its pool), so no other module may open one itself."""
    opened = [
        f"{module.name}:{node.lineno}: {ast.unparse(node)[:60]}"
        for module in MODULES
        if module.part == "projector.storage" and module.name != "projector.storage.database"
        for node in _runtime_nodes(module.tree)
        if isinstance(node, ast.Call) and _OPENERS.search(ast.unparse(node).split("(")[0] + "(")
    ]
    assert opened == []


def test_every_sql_statement_is_in_the_storage_package() -> None:
    wrong = [
        f"{module.name}:{line}: {text!r:.60}"
        for module in MODULES
        if module.part != "projector.storage"
        for text, line in module.strings()
        if SQL.search(text)
    ]
    assert wrong == []


def test_only_the_cli_renders_with_rich() -> None:
    outside_cli = _imports(
        lambda importer: importer != "projector.cli", lambda n: n.split(".")[0] == "rich"
    )
    assert outside_cli == []


def test_no_public_function_takes_its_callers_task_group_or_exit_stack() -> None:
    """Lifetimes have two shapes (docs: How it is built): a thing with a lifetime is an async
    context manager, a loop is ``run(..., task_status)``; nothing public borrows its caller's
    task group or exit stack to hang its own work on."""
    borrowed = {"TaskGroup", "AsyncExitStack"}
    wrong = [
        f"{module.name}:{node.lineno} {node.name}({arg.arg})"
        for module in MODULES
        for node in ast.walk(module.tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
        for arg in [*node.args.args, *node.args.kwonlyargs]
        if arg.annotation is not None and ast.unparse(arg.annotation) in borrowed
    ]
    assert wrong == []


def test_every_package_says_what_may_import_it() -> None:
    silent = [
        module.name
        for module in MODULES
        if module.path.name == "__init__.py"
        and module.name != "projector"
        and "import" not in (ast.get_docstring(module.tree) or "")
    ]
    assert silent == []


def test_the_checks_see_the_whole_house() -> None:
    """The checks above are only as good as what they walk: every part has modules."""
    parts = {module.part for module in MODULES}
    assert set(ALLOWED) <= parts
    assert any(imported == "psycopg" for m in MODULES for imported, _ in m.imports())
