"""The docs (docs/ and the README) name only commands, flags, variables and metrics the code
has, and the tables generated from the code cover all of it (the log actions: test_logs.py).

Links, anchors and included files are checked by `mkdocs build --strict`, which the last test
runs as CI does (`make docs-build`).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from bench.cli import _parser as bench_parser
from docgen import reference
from projector.cli import main
from projector.settings import DEPRECATED_ENV, INVERTED_ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOCS = [*PAGES, ROOT / "README.md"]
SOURCE = "\n".join(
    path.read_text()
    for folder in ("src", "tests", "bench")
    for path in (ROOT / folder).rglob("*.py")
)
# Flags of other tools that the docs show beside projector's.
OTHER_TOOLS = {"--bindir": "pg_config", "--strict": "mkdocs build"}


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_lines(text: str) -> Iterator[str]:
    """The lines of the shell blocks (```sh, ```bash, ```console or a bare ```), continuation
    lines joined."""
    language: str | None = None  # None: outside a block
    block: list[str] = []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and language is None:
            language, block = fence.group(1), []
        elif fence:
            if language in {"", "sh", "bash", "console", "shell"}:
                yield from "\n".join(block).replace("\\\n", " ").splitlines()
            language = None
        elif language is not None:
            block.append(line)


def command_lines(text: str) -> Iterator[list[str]]:
    """Each `projector ...` command of a page's shell blocks, as its words (comments dropped)."""
    for line in fenced_lines(text):
        line = line.strip().removeprefix("$ ")
        if line.startswith("projector "):
            yield shlex.split(line, comments=True)[1:]


def inline_commands(text: str) -> Iterator[str]:
    """Each inline code span that is a `projector ...` command, perhaps with placeholders."""
    yield from re.findall(r"`projector ([^`]+)`", text)


def resolve(words: list[str]) -> tuple[click.Command, list[str], click.Context]:
    """The (sub)command the words name, the words left for it, and its parent's context."""
    command: click.Command = main
    context = click.Context(main, info_name="projector")
    while isinstance(command, click.Group) and words:
        sub = command.get_command(context, words[0])
        assert sub is not None, f"projector has no command {words[0]!r}"
        context = click.Context(sub, info_name=words[0], parent=context)
        command, words = sub, words[1:]
    return command, words, context


def flags_of(command: click.Command) -> set[str]:
    return {
        flag
        for param in command.params
        if isinstance(param, click.Option)
        for flag in (*param.opts, *param.secondary_opts)
    } | {"--help"}


ALL_FLAGS = set().union(*(flags_of(command) for _, command in reference.commands()))


@pytest.mark.parametrize("path", DOCS, ids=_relative)
def test_every_projector_command_line_in_the_docs_parses(path: Path) -> None:
    for words in command_lines(path.read_text()):
        command, rest, context = resolve(words)
        assert context.parent is not None
        # Raises on an unknown flag, a missing required one or a value of the wrong type.
        command.make_context(context.info_name, rest, parent=context.parent)


@pytest.mark.parametrize("path", DOCS, ids=_relative)
def test_every_inline_projector_command_names_a_command_and_its_own_flags(path: Path) -> None:
    for span in inline_commands(path.read_text()):
        words = [word for word in span.split() if re.fullmatch(r"[a-z][a-z-]*", word)]
        command, _, _ = resolve(words)
        named = set(re.findall(r"--[a-z][a-z-]*", span))
        unknown = named - flags_of(command)
        assert not unknown, f"`projector {span}`: {command.name} has no {sorted(unknown)}"


@pytest.mark.parametrize("path", DOCS, ids=_relative)
def test_every_flag_the_docs_name_is_one_a_command_has(
    path: Path, pytestconfig: pytest.Config
) -> None:
    bench = set(bench_parser()._option_string_actions)
    for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", path.read_text())):
        if flag in ALL_FLAGS or flag in bench or flag in OTHER_TOOLS:
            continue
        try:
            pytestconfig.getoption(flag)  # the test suite's own (--faults-duration, ...)
        except ValueError:
            pytest.fail(f"{_relative(path)} names {flag}, which no command has")


@pytest.mark.parametrize("path", DOCS, ids=_relative)
def test_every_environment_variable_the_docs_name_exists(path: Path) -> None:
    settings = {f"PROJECTOR_{name.upper()}" for name in Settings.model_fields}
    old = set(DEPRECATED_ENV) | set(INVERTED_ENV)
    for name in set(re.findall(r"\bPROJECTOR_[A-Z][A-Z_]*[A-Z]\b", path.read_text())):
        # Besides the settings: the tests' and the benchmarks' own, and `wait --timeout`'s.
        assert name in settings or name in old or f'"{name}"' in SOURCE, (
            f"{_relative(path)} names {name}, which is neither a setting nor read anywhere"
        )


@pytest.mark.parametrize("path", DOCS, ids=_relative)
def test_every_metric_the_docs_name_is_one_projector_serves(path: Path) -> None:
    served = reference.metric_series()
    for name in set(re.findall(r"\bprojector_[a-z_]*[a-z]\b", path.read_text())):
        if name in served:
            continue
        # Not a metric: one of projector's SQL names (projector_notify, projector_messages,
        # projector_member_3), which the source spells out.
        assert name in SOURCE, f"{_relative(path)} names {name}: no such metric or name"


def test_the_generated_tables_cover_every_setting_command_and_metric() -> None:
    tables = reference.GENERATED
    settings, cli, metrics = tables["settings"](), tables["cli"](), tables["metrics"]()

    for name in Settings.model_fields:
        assert f"`PROJECTOR_{name.upper()}`" in settings
    for path, _ in reference.commands():
        assert f"### `{path}`" in cli
    assert "`--until-caught-up`" in cli
    for metric in reference.metrics():
        assert f"`{metric.name}`" in metrics
    names = {metric.name for metric in reference.metrics()}
    assert {"projector_up", "projector_events_handled_total"} <= names


def test_every_generated_marker_in_the_pages_names_a_table() -> None:
    for path in PAGES:
        text = path.read_text()
        rendered = reference.render(text)  # raises on an unknown name
        assert "<!-- generated:" not in rendered, path


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    # What CI runs: a broken link or anchor, a missing page or included file fails it.
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "operating" / "settings" / "index.html").exists()
