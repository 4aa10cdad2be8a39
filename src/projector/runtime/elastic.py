"""An elastic group member: heartbeats, the buckets it leases, and the tenures it projects them in.

A process joins with `ElasticMember` and keeps it for its whole run. Its heartbeat (every
``heartbeat`` seconds, on a connection of its own) renews its leases, reads which members are
alive, and computes the buckets it should own (`projector.model.buckets.assignment`). A tenure
is one fixed set of owned buckets, projected as a fixed runner projects a member; the member
ends it when:

- it should give buckets up (a member joined), or some bucket it should own is free (its owner
  left, released it, or let its lease expire): ``ending`` is set, and the runner drains the
  tenure (stops reading, lets submitted batches finish, commits) before `next_tenure` releases
  what it no longer should own and takes what is free. A joining member thus gets a bucket
  only once its previous owner has committed it: a graceful rebalance delivers nothing twice;
- a heartbeat finds a bucket of the tenure owned by someone else (this member was silent past
  its lease): ``lost`` is set, `until_lost` raises LeaseLostError and the tenure ends with nothing
  more committed. Its commits were fenced anyway (`projector.storage.buckets`).

Heartbeats go on between tenures and while one drains, so a long drain keeps its leases.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import anyio

from projector import cleanup
from projector.errors import DatabaseUnavailableError, LeaseLostError
from projector.model.buckets import target
from projector.model.events import FIRST_POSITION
from projector.model.share import Share
from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.storage import buckets, database
from projector.storage.buckets import Identity
from projector.storage.database import Connection, Pool
from projector.storage.held import BucketFence, HeldStreams
from projector.storage.message_store import MessageStore

logger = logging.getLogger(__name__)


@dataclass
class Tenure:
    """One set of buckets, projected from their checkpoints until ``ending`` or ``lost``."""

    member: ElasticMember
    owned: dict[int, int]  # bucket -> the generation it was taken at
    ending: anyio.Event = field(default_factory=anyio.Event)
    lost: anyio.Event = field(default_factory=anyio.Event)

    @property
    def connection(self) -> Connection:
        return self.member.connection

    @property
    def share(self) -> Share:
        """The streams of the tenure's buckets."""
        return Share.buckets(self.owned, self.member.buckets)

    async def until_lost(self) -> None:
        """Raise LeaseLostError once a heartbeat finds a bucket of this tenure taken, or once
        the leases may have run out unrenewed (see `ElasticMember.stop_by`)."""
        reason = "taken"
        while not self.lost.is_set():
            left = self.member.stop_by() - anyio.current_time()
            if left <= 0:
                reason = "expired"
                self.lost.set()
                break
            with anyio.move_on_after(left):
                await self.lost.wait()
        logger.warning(
            "%s lost buckets of %s (%s): starting over from the committed checkpoints",
            self.member.identity.member_id,
            self.member.group,
            "silent past its lease" if reason == "taken" else "no heartbeat renewed its lease",
            extra={
                "action": "buckets_lost",
                "group": self.member.group,
                "member": self.member.identity.member_id,
                "reason": reason,
            },
        )
        raise LeaseLostError(
            f"{self.member.identity.member_id} lost buckets of group {self.member.group!r} "
            "(silent past its lease): starting over from the committed checkpoints"
        )


class BucketCheckpoints:
    """A tenure's checkpoints: a category's completed position moves every owned bucket's
    checkpoint up to it (never down: a bucket may start past the read's lowest start)."""

    def __init__(self, tenure: Tenure, starts: Mapping[tuple[int, str], int]) -> None:
        self._tenure = tenure
        self._starts = dict(starts)
        self.name = tenure.member.group

    async def commit(self, positions: dict[str, int]) -> None:
        rows = {
            (bucket, category): max(self._starts.get((bucket, category), 0), position)
            for bucket in self._tenure.owned
            for category, position in positions.items()
        }
        member = self._tenure.member
        await member.reconnect()  # a commit is fenced by the lease rows, on any session
        try:
            await buckets.commit_fenced(
                member.connection,
                member.identity,
                size=member.buckets,
                owned=self._tenure.owned,
                positions=rows,
            )
        except LeaseLostError:
            logger.warning(
                "%s's checkpoint commit was refused: it no longer holds all its buckets",
                member.identity.member_id,
                extra={
                    "action": "checkpoint_fenced",
                    "group": member.group,
                    "member": member.identity.member_id,
                },
            )
            raise


class ElasticMember:
    """This process's membership of an elastic group; use as ``async with``, and run
    `heartbeats` in a task for as long as it is held."""

    def __init__(
        self,
        url: str,
        group: str,
        *,
        buckets: int,
        heartbeat: float,
        lease: float,
        connect_timeout: float = database.DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        host, pid = socket.gethostname(), os.getpid()
        self.identity = Identity(group, f"{host}-{pid}-{uuid.uuid4().hex[:6]}", host, pid)
        self.group = group
        self.buckets = buckets
        self._url = url
        self._heartbeat = heartbeat
        self._lease = lease
        self._connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._connecting = anyio.Lock()  # the heartbeat and a commit may both find it broken
        self._tenure: Tenure | None = None
        self._renewed_at = -math.inf  # when the last heartbeat that renewed the leases was sent
        self.rebalances = 0

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the elastic member has not joined")
        return self._conn

    def stop_by(self) -> float:
        """When (``anyio.current_time()``) this member must have stopped projecting its
        buckets unless a heartbeat renews them first.

        A lease runs for ``lease`` seconds from when the server renewed it, which is after the
        heartbeat was sent, so another member can take a bucket no sooner than ``lease`` after
        the send. Stopping a heartbeat interval before that leaves the tenure time to cancel
        its handlers: without it, a member cut off from the database (a restart, a network
        partition) would go on handling what it had read beside the bucket's next owner."""
        return self._renewed_at + self._lease - min(self._heartbeat, self._lease / 4)

    async def _renew(self, conn: Connection) -> dict[int, int]:
        """A heartbeat: the buckets this member still holds, with their generations."""
        sent = anyio.current_time()
        renewed = await buckets.heartbeat(conn, self.identity, lease=self._lease)
        self._renewed_at = sent
        return renewed

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._tenure.owned) if self._tenure is not None else frozenset()

    async def __aenter__(self) -> Self:
        conn = await self._connect()
        async with database.closed_on_failure(
            conn, f"closing the connection of {self.identity.member_id}"
        ):
            await buckets.register(conn, self.group, self.buckets)
            await self._renew(conn)
        self._conn = conn
        return self

    async def _connect(self) -> Connection:
        return await database.own_session(
            self._url,
            connect_timeout=self._connect_timeout,
            application_name=f"projector {self.identity.member_id}",
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is None:
            return
        with cleanup.shielded(f"leaving {self.group}", cleanup.LEASE_RELEASE):
            owned = self._tenure.owned if self._tenure is not None else {}
            await self.reconnect()  # the buckets are released by member id, on any session
            try:
                await buckets.leave(self._conn, self.identity, owned)
                self._released(owned, reason="left")
            except DatabaseUnavailableError as exc:
                logger.warning(
                    "could not release the buckets of %s (they are taken once their lease "
                    "expires): %s",
                    self.identity.member_id,
                    exc,
                    extra={"action": "bucket_release_failed", "group": self.group},
                )
            await self._conn.close()

    async def heartbeats(self) -> None:
        """Beat every ``heartbeat`` seconds, forever (cancel to stop). A beat that fails
        because the database is away is tried again at the next one, on a new connection;
        the first failure of a run of them is a warning, and the beat that succeeds again
        says how many failed (a beat every fraction of a second would flood the log)."""
        failed = 0
        while True:
            await anyio.sleep(self._heartbeat)
            try:
                # Uninterrupted: the last tenure's final commit and the leave need the
                # connection once the run is cancelled.
                with database.uninterrupted(self._lease):
                    await self._beat()
            except (DatabaseUnavailableError, TimeoutError) as exc:
                failed += 1
                logger.log(
                    logging.WARNING if failed == 1 else logging.DEBUG,
                    "heartbeat of %s failed: %s",
                    self.identity.member_id,
                    str(exc) or f"no answer within {self._lease:g} s",
                    extra={"action": "heartbeat_failed", "group": self.group, "failed": failed},
                )
                await self.reconnect()
                continue
            if failed:
                logger.info(
                    "heartbeat of %s succeeded again after %d failed",
                    self.identity.member_id,
                    failed,
                    extra={"action": "heartbeat_resumed", "group": self.group, "failed": failed},
                )
                failed = 0

    async def reconnect(self) -> None:
        """Open the member's connection again if it broke (its leases are by member id, not
        by session); while the database is away it stays broken, and the next try opens it."""
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return
            try:
                self._conn = await self._connect()
            except DatabaseUnavailableError:
                return

    async def _beat(self) -> None:
        conn, tenure = self.connection, self._tenure
        renewed = await self._renew(conn)
        if tenure is None:
            return
        if any(renewed.get(bucket) != generation for bucket, generation in tenure.owned.items()):
            tenure.lost.set()
            return
        if tenure.ending.is_set() or not await self._should_change(conn, tenure):
            return
        self.rebalances += 1
        logger.info(
            "%s: rebalancing group %s (owns %d bucket(s))",
            self.identity.member_id,
            self.group,
            len(tenure.owned),
            extra={
                "action": "rebalance_started",
                "group": self.group,
                "member": self.identity.member_id,
                "owned": sorted(tenure.owned),
            },
        )
        tenure.ending.set()

    async def _should_change(self, conn: Connection, tenure: Tenure) -> bool:
        """Whether a new tenure would differ: buckets to give up, or wanted ones now free."""
        wanted = await self._target(conn)
        if set(tenure.owned) - wanted:
            return True
        free = {lease.bucket for lease in await buckets.leases(conn, self.group) if lease.free}
        return bool((wanted - set(tenure.owned)) & free)

    async def _target(self, conn: Connection) -> frozenset[int]:
        live = await buckets.live_members(conn, self.group, lease=self._lease)
        return target(self.buckets, live, self.identity.member_id)

    async def next_tenure(self) -> Tenure:
        """Release what this member should no longer own, take what it should and is free, and
        start a tenure with the result (perhaps short of its target: owners still draining
        release later, and a later heartbeat starts the tenure that takes them)."""
        previous = self._tenure
        conn = self.connection
        held = await self._renew(conn)
        if previous is not None and previous.lost.is_set():
            # What the lost tenure held and still is ours: kept, reloaded from the database.
            held = {b: g for b, g in held.items() if previous.owned.get(b) == g}
        wanted = await self._target(conn)
        giving_up = {b: g for b, g in held.items() if b not in wanted}
        await buckets.release(conn, self.identity, giving_up)
        self._released(giving_up, reason="rebalance")
        taken = await buckets.acquire(conn, self.identity, wanted - set(held), lease=self._lease)
        self._acquired(taken)
        owned = {**{b: g for b, g in held.items() if b in wanted}, **taken}
        self._tenure = Tenure(self, owned)
        if previous is not None and previous.ending.is_set():
            logger.info(
                "%s: rebalanced group %s, owns %d bucket(s) of %d wanted",
                self.identity.member_id,
                self.group,
                len(owned),
                len(wanted),
                extra={
                    "action": "rebalance_finished",
                    "group": self.group,
                    "member": self.identity.member_id,
                    "owned": sorted(owned),
                    "wanted": sorted(wanted),
                },
            )
        return self._tenure

    def _acquired(self, taken: Mapping[int, int]) -> None:
        if taken:
            logger.info(
                "%s acquired %d bucket(s) of %s",
                self.identity.member_id,
                len(taken),
                self.group,
                extra={
                    "action": "bucket_acquired",
                    "group": self.group,
                    "member": self.identity.member_id,
                    "buckets": sorted(taken),
                    "generations": [taken[b] for b in sorted(taken)],
                },
            )

    def _released(self, given_up: Mapping[int, int], *, reason: str) -> None:
        if given_up:
            logger.info(
                "%s released %d bucket(s) of %s (%s)",
                self.identity.member_id,
                len(given_up),
                self.group,
                reason,
                extra={
                    "action": "bucket_released",
                    "group": self.group,
                    "member": self.identity.member_id,
                    "buckets": sorted(given_up),
                    "reason": reason,
                },
            )


async def start_positions(
    tenure: Tenure, categories: Sequence[str], heads: Mapping[str, int | None], *, from_tail: bool
) -> dict[tuple[int, str], int]:
    """Where each owned bucket starts in each category: its checkpoint, else the beginning (or
    the tail with ``from_tail``), written at once so that a restart does not replay history."""
    member = tenure.member
    loaded = await buckets.load(tenure.connection, member.group, tenure.owned)
    missing = {}
    for bucket in tenure.owned:
        for category in categories:
            if (bucket, category) not in loaded:
                head = heads[category]
                tail = FIRST_POSITION if head is None else head + 1
                missing[(bucket, category)] = tail if from_tail else FIRST_POSITION
    if missing:
        await buckets.commit_fenced(
            tenure.connection,
            member.identity,
            size=member.buckets,
            owned=tenure.owned,
            positions=missing,
        )
    return {**loaded, **missing}


@dataclass(frozen=True, slots=True)
class TenureStart:
    """What a tenure projects with: checkpoints per owned bucket, a reader of its buckets that
    starts each where its checkpoint is, and the care of its buckets' held streams."""

    writer: CheckpointWriter
    store: MessageStore
    held: HeldStreams


async def start_tenure(
    tenure: Tenure,
    pool: Pool,
    heads: Mapping[str, int | None],
    *,
    from_tail: bool,
    checkpoint_interval: float,
) -> TenureStart:
    """Settle where the tenure's buckets start in each category of ``heads`` (the categories'
    last positions), and assemble what projects them."""
    member = tenure.member
    starts = await start_positions(tenure, list(heads), heads, from_tail=from_tail)
    writer = CheckpointWriter(BucketCheckpoints(tenure, starts), interval=checkpoint_interval)
    by_category = {
        category: {bucket: starts[(bucket, category)] for bucket in tenure.owned}
        for category in heads
    }
    for category, positions in by_category.items():
        writer.start_at(category, _read_start(tenure, category, positions, heads[category]))
    store = MessageStore(pool, tenure.share, starts=by_category)
    fence = BucketFence(member.identity.member_id, member.buckets, dict(tenure.owned))
    return TenureStart(writer, store, HeldStreams(pool, member.group, tenure.share, fence))


def _read_start(
    tenure: Tenure, category: str, positions: Mapping[int, int], head: int | None
) -> int:
    """A category's read starts at the lowest start of the owned buckets; with none owned, at
    the head (there is nothing to read for this tenure)."""
    position = min(positions.values(), default=FIRST_POSITION if head is None else head + 1)
    member = tenure.member
    logger.info(
        "%s starts %s at %d with %d bucket(s)",
        member.identity.member_id,
        category,
        position,
        len(positions),
        extra={
            "action": "source_started",
            "group": member.group,
            "category": category,
            "position": position,
            "origin": "checkpoint",
            "buckets": sorted(positions),
        },
    )
    return position
