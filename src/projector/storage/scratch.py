"""Throwaway databases, for tests (`projector.testing`): created from a template, pointed at,
and dropped.

``CREATE DATABASE ... TEMPLATE`` copies a prepared database file by file, far faster than
installing a message store and running migrations again, which is what makes one clean
database per test affordable. Names are quoted with ``psycopg.sql``, never formatted in.
"""

from __future__ import annotations

from typing import LiteralString
from urllib.parse import quote, urlsplit, urlunsplit

from psycopg import sql
from psycopg.conninfo import make_conninfo

from projector.storage import database

CREATE = "CREATE DATABASE {} TEMPLATE {}"
# FORCE: a test may leave connections (or a pool) open on its database.
DROP = "DROP DATABASE IF EXISTS {} WITH (FORCE)"


def url_for(admin_url: str, dbname: str) -> str:
    """``admin_url`` (a URL or libpq key=value settings) pointed at another database."""
    parts = urlsplit(admin_url)
    if parts.scheme in {"postgresql", "postgres"}:
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))
    return make_conninfo(admin_url, dbname=dbname)


def create_database(admin_url: str, name: str, *, template: str) -> None:
    """Create database ``name`` as a copy of ``template``, which nobody may be connected to."""
    _admin(admin_url, CREATE, name, template)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` (if it exists), closing the sessions still connected to it."""
    _admin(admin_url, DROP, name)


def _admin(admin_url: str, statement: LiteralString, *names: str) -> None:
    query = sql.SQL(statement).format(*(sql.Identifier(name) for name in names))
    with database.connect_sync(admin_url) as conn:
        conn.autocommit = True  # CREATE and DROP DATABASE refuse to run in a transaction
        conn.execute(query)
