"""The ``projector`` command: thin commands over the modules, no logic of their own, and the
only place that renders for people (rich tables and the progress bar).

It may import anything in projector; nothing imports it but the entry point (and the demo,
for the progress bar).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click
from click.exceptions import NoArgsIsHelpError

from projector import DISTRIBUTION
from projector.cli import failing, groups, rebuild, running
from projector.cli.options import fail
from projector.process import stop_now
from projector.settings import requested_log_format
from projector.telemetry import logs


@click.group()
@click.version_option(
    package_name=DISTRIBUTION, message="%(prog)s %(version)s (distribution %(package)s)"
)
def main() -> None:
    """projector keeps read models up to date from a Message DB-style event store in Postgres."""


for command in (
    running.run,
    running.migrate_command,
    running.demo_command,
    groups.rebalance,
    groups.status_command,
    groups.wait_command,
    groups.checkpoints,
    failing.failing,
    failing.parked,
    groups.group_command,
    rebuild.rebuild,
    rebuild.replay_command,
):
    main.add_command(command)


def entry() -> None:
    """The ``projector`` executable: SIGINT and SIGTERM stop it from the start, whatever the
    disposition it inherited (a script's ``cmd &`` starts it with SIGINT ignored), until a
    running loop listens for them itself (`projector.process.serve`). A bad flag or argument
    is one line and exit 2, as every other bad input is."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_while_starting)
    logs.report_errors_as(requested_log_format(sys.argv[1:]))
    try:
        code = main(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()  # the help, as click prints it
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        fail(f"{exc.format_message().rstrip('.')}{where}", exc.exit_code)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        fail("aborted: nothing done", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    stop_now(signum, f"received {signal.Signals(signum).name}: stopping now")
