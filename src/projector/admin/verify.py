"""``projector rebuild verify``: a version compared with the live one before readers are
cut over to it: the row count of every table both have, and a check of the operator's (one
query run with each version's schema first on the ``search_path``, whose results must match;
or one query per version, for a known transformation).

Both versions are read in one read-only snapshot. They project independently, so a snapshot
can catch one a few events ahead of the other: a comparison that differs is made again,
ATTEMPTS times in all, before the difference is reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import anyio

from projector.admin.rebuild_status import in_state, pick_version
from projector.errors import ConfigurationError, RebuildRefusedError
from projector.model.events import validate_group
from projector.model.versions import Version, VersionState
from projector.runtime.versions import tables_of
from projector.storage import versions
from projector.storage.database import Connection

ATTEMPTS = 3
PAUSE = 1.0  # seconds between attempts
SHOWN = 3  # differing rows named in a message


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    live: int
    new: int


@dataclass(frozen=True, slots=True)
class QueryCheck:
    """The operator's check: the rows each version returned, and those only one of them did
    (as text, at most SHOWN of each)."""

    live_rows: int
    new_rows: int
    only_live: list[str]
    only_new: list[str]

    @property
    def matches(self) -> bool:
        return not (self.only_live or self.only_new)


@dataclass(frozen=True, slots=True)
class Verification:
    live: Version
    new: Version
    counts: list[TableCount]
    query: QueryCheck | None

    @property
    def matches(self) -> bool:
        return all(c.live == c.new for c in self.counts) and (
            self.query is None or self.query.matches
        )

    def differences(self) -> list[str]:
        found = [
            f"table {c.table} has {c.live} row(s) in version {self.live.version} and {c.new} in "
            f"version {self.new.version}"
            for c in self.counts
            if c.live != c.new
        ]
        if self.query is not None and not self.query.matches:
            found.append(
                f"the query returned {self.query.live_rows} row(s) in version "
                f"{self.live.version} and {self.query.new_rows} in version {self.new.version}; "
                f"only in {self.live.version}: {_rows(self.query.only_live)}; only in "
                f"{self.new.version}: {_rows(self.query.only_new)}"
            )
        return found

    def first_difference(self) -> str:
        found = self.differences()
        return found[0] if found else "none"


async def verify(
    conn: Connection,
    name: str,
    *,
    version: int | None = None,
    query: str | None = None,
    query_live: str | None = None,
    query_new: str | None = None,
) -> Verification:
    """Compare version ``version`` (default: the newest building one) with the live one."""
    if query is not None and (query_live is not None or query_new is not None):
        raise ConfigurationError("give --query, or --query-live and --query-new, not both")
    if (query_live is None) != (query_new is None):
        raise ConfigurationError("give --query-live and --query-new together")
    async with conn.transaction():
        recorded = await versions.versions(conn, validate_group(name))
    new = pick_version(name, recorded, version, default=VersionState.BUILDING)
    live = in_state(recorded, VersionState.LIVE)
    if live is None:
        raise RebuildRefusedError(f"projection {name} has no live version to compare with")
    if new.state in (VersionState.LIVE, VersionState.RETIRED):
        raise RebuildRefusedError(f"{new.label} is {new.state.value}: nothing to compare")
    queries = None if query_live is None and query is None else (
        query_live or query or "", query_new or query or ""
    )
    for attempt in range(1, ATTEMPTS + 1):
        found = await _compare(conn, live, new, queries)
        if found.matches or attempt == ATTEMPTS:
            return found
        await anyio.sleep(PAUSE)
    raise AssertionError("unreachable")


async def _compare(
    conn: Connection, live: Version, new: Version, queries: tuple[str, str] | None
) -> Verification:
    async with conn.transaction():
        await versions.one_snapshot(conn)
        live_tables = set(await tables_of(conn, live, new))
        common = [t for t in await tables_of(conn, new, live) if t in live_tables]
        counts = [
            TableCount(
                table,
                await versions.row_count(conn, live.schema or "public", table),
                await versions.row_count(conn, new.schema or "public", table),
            )
            for table in common
        ]
        check = None
        if queries is not None:
            await versions.use_schema(conn, live.schema)
            live_rows = await versions.user_query(conn, queries[0])
            await versions.use_schema(conn, new.schema)
            new_rows = await versions.user_query(conn, queries[1])
            check = _check(live_rows, new_rows)
    return Verification(live, new, counts, check)


def _check(live_rows: list[tuple[object, ...]], new_rows: list[tuple[object, ...]]) -> QueryCheck:
    """The rows as multisets (the order is the query's business), compared as text."""
    live, new = Counter(map(repr, live_rows)), Counter(map(repr, new_rows))
    only_live = sorted((live - new).elements())[:SHOWN]
    only_new = sorted((new - live).elements())[:SHOWN]
    return QueryCheck(len(live_rows), len(new_rows), only_live, only_new)


def _rows(rows: list[str]) -> str:
    return ", ".join(rows) if rows else "none"
