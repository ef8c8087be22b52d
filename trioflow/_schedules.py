"""Cron schedules: a run per fire time, once across every engine sharing the storage.

Fire times come from cronsim (a small, dependency-free, maintained cron evaluator that
follows Debian cron across daylight-saving changes) in the schedule's zoneinfo
timezone; trioflow writes no cron parser of its own. "Once" comes from the run id,
``"<schedule id>@<fire time, ISO 8601 UTC>"``: every engine that has the schedule tries
to store that run, and the storage keeps the first (the others find it stored). A
leader election was rejected: it adds a lease to renew and a failover delay, where the
unique run id already makes duplicates impossible.

Fire times follow trioflow's wall clock (`trioflow._clock.wall_time`); the waiting
between them is on Trio's clock, in chunks of at most `MAX_WAIT` seconds so a wall
clock that is set (NTP) is noticed. Under ``trioflow.testing``'s tied clock, a
MockClock that jumps a week sees every fire of that week at its exact virtual time.

What a schedule remembers between engines is stored (`ScheduleState`): whether it is
paused, and the time up to which its fire times have been handled, from which the
catch-up after downtime is counted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import trio
from cronsim import CronSim, CronSimError

from ._clock import wall_time
from ._errors import StorageError
from ._queues import DEFAULT_QUEUE, QueueEntry
from ._schema import convert
from .storage import ScheduleState

if TYPE_CHECKING:
    from ._queues import QueueLimits
    from ._run import Run
    from ._workflow import Workflow
    from .storage import RunRow, Storage

logger = logging.getLogger("trioflow")

CatchUp = Literal["none", "latest", "all"]
CATCH_UP_POLICIES = ("none", "latest", "all")
#: With ``catch_up="all"``, at most this many missed fires (the latest ones) are made up.
CATCH_UP_LIMIT = 100
#: The longest single wait on Trio's clock before the wall clock is read again.
MAX_WAIT = 60.0
#: How long the scheduler waits before trying again after a storage error.
RETRY_AFTER = 1.0


class Schedule:
    """Start a run of `workflow` with `input_data` at each time the `cron` expression
    gives in `timezone` (an IANA name such as ``"Europe/Berlin"``; daylight-saving
    changes follow cron's rules). Give it to ``open_engine(schedules=[...])``.

    Each fire time makes exactly one run across all engines sharing the storage, with
    run id ``"<id>@<fire time, ISO 8601 UTC>"``. `catch_up` says what happens to fire
    times missed while no engine with this schedule was open: ``"none"`` skips them,
    ``"latest"`` (the default) makes up the latest one, ``"all"`` makes up each one
    (at most `CATCH_UP_LIMIT`, the latest).

    Pausing a schedule (``engine.pause_schedule(id)``) stops new fires; it does not
    touch runs already started. To stop a run, cancel the run.
    """

    __slots__ = ("_zone", "catch_up", "cron", "id", "input_data", "timezone", "workflow")

    def __init__(
        self,
        id: str,
        *,
        workflow: Workflow | str,
        cron: str,
        timezone: str = "UTC",
        input_data: Any = None,
        catch_up: CatchUp = "latest",
    ) -> None:
        if not isinstance(id, str) or not id.strip() or "@" in id:
            raise ValueError(
                f"Schedule({id!r}): the id must be a non-empty string without '@' "
                "(its runs are named '<id>@<fire time>')"
            )
        if catch_up not in CATCH_UP_POLICIES:
            raise ValueError(
                f"Schedule({id!r}, catch_up={catch_up!r}): give 'none', 'latest' or 'all'"
            )
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(
                f"Schedule({id!r}, timezone={timezone!r}): not a known IANA timezone; "
                "give a name such as 'UTC' or 'Europe/Berlin'"
            ) from None
        try:
            CronSim(cron, dt.datetime.now(zone))
        except (CronSimError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"Schedule({id!r}, cron={cron!r}): not a cron expression ({exc}); give five "
                "fields 'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'"
            ) from None
        self.id = id
        self.workflow = workflow
        self.cron = cron
        self.timezone = timezone
        self.input_data = input_data
        self.catch_up: CatchUp = catch_up
        self._zone = zone

    def __repr__(self) -> str:
        return f"<trioflow.Schedule {self.id!r} {self.cron!r} in {self.timezone}>"

    @property
    def workflow_id(self) -> str:
        return self.workflow if isinstance(self.workflow, str) else self.workflow.id

    def next_fire(self, after: float) -> float:
        """The first fire time strictly after `after` (wall-clock seconds)."""
        start = dt.datetime.fromtimestamp(after, self._zone)
        return next(CronSim(self.cron, start)).timestamp()

    def missed(self, after: float, until: float) -> list[float]:
        """The fire times in ``(after, until]``, oldest first: the latest
        `CATCH_UP_LIMIT` of them at most (counted backwards, so a long downtime of a
        frequent schedule costs no more than that)."""
        start = dt.datetime.fromtimestamp(until, self._zone)
        # cronsim's reverse iteration yields times strictly before its start: nudge it.
        times: list[float] = []
        for fire in CronSim(self.cron, start + dt.timedelta(microseconds=1), reverse=True):
            at = fire.timestamp()
            if at <= after or len(times) == CATCH_UP_LIMIT:
                break
            if at <= until:
                times.append(at)
        return times[::-1]

    def state(self, now: float) -> ScheduleState:
        """The stored form of a schedule seen for the first time (nothing missed yet)."""
        return ScheduleState(
            schedule_id=self.id,
            workflow_id=self.workflow_id,
            cron=self.cron,
            timezone=self.timezone,
            catch_up=self.catch_up,
            paused=False,
            handled_until=now,
            updated_at=now,
        )


def catch_up_fires(policy: str, missed: list[float]) -> list[float]:
    """Which of the fire times missed during downtime (oldest first) to make up."""
    if policy == "none":
        return []
    if policy == "latest":
        return missed[-1:]
    return missed[-CATCH_UP_LIMIT:]


def fire_run_id(schedule_id: str, fire: float) -> str:
    """``"<schedule id>@<fire time, ISO 8601 UTC>"``, e.g. ``nightly@2030-01-01T02:00:00Z``
    (fractions of a second only for six-field, seconds-precise expressions)."""
    at = dt.datetime.fromtimestamp(round(fire, 6), dt.UTC)
    text = at.isoformat(timespec="microseconds" if at.microsecond else "seconds")
    return f"{schedule_id}@{text.replace('+00:00', 'Z')}"


def check_schedules(schedules: Iterable[Schedule]) -> dict[str, Schedule]:
    known: dict[str, Schedule] = {}
    for schedule in schedules:
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"open_engine(schedules=...) takes trioflow.Schedule objects, got {schedule!r}"
            )
        if schedule.id in known:
            raise ValueError(f"two schedules have the id {schedule.id!r}; give each its own id")
        known[schedule.id] = schedule
    return known


def check_workflows(schedules: dict[str, Schedule], workflows: Iterable[Workflow]) -> None:
    """At open, not at the first fire: `LookupError` for a schedule whose workflow the
    engine is not given, `ValidationError` for `input_data` that does not fit the
    workflow's input schema (every fire would fail)."""
    known = {workflow.id: workflow for workflow in workflows}
    for schedule in schedules.values():
        workflow = known.get(schedule.workflow_id)
        if workflow is None:
            raise LookupError(
                f"schedule {schedule.id!r} starts workflow {schedule.workflow_id!r}, which is "
                f"not in open_engine(workflows=[...]) (known: {sorted(known)})"
            )
        convert(
            schedule.input_data,
            workflow.input_schema,
            step_id=None,
            what=f"input_data of schedule {schedule.id!r}",
            workflow_id=workflow.id,
        )


# --- what an engine does for its schedules ----------------------------------------------


class ScheduleHost(Protocol):
    """What firing schedules needs of an engine (`_engine.Engine`). Written down here,
    where it is needed: the engine imports this module, so this one does not import
    the engine (not even for type checking)."""

    storage: Storage
    schedules: dict[str, Schedule]
    workers: int
    owner_id: str
    lease_seconds: float
    _served: list[QueueLimits]
    _live: dict[str, Run]

    async def _enqueue(
        self,
        workflow: str | Workflow,
        input_data: Any,
        entry: QueueEntry,
        run_id: str | None,
        initial_state: Any = None,
        version: str | None = None,
    ) -> tuple[Run, bool]: ...
    def _start_claimed(self, row: RunRow) -> None: ...


async def set_paused(engine: ScheduleHost, schedule_id: str, paused: bool) -> ScheduleState:
    """`Engine.pause_schedule` / `resume_schedule`: the stored flag every engine reads
    before each fire."""
    state = await engine.storage.set_schedule_paused(schedule_id, paused, wall_time())
    if state is None:
        raise LookupError(
            f"no schedule {schedule_id!r} is stored; open an engine with it in "
            "open_engine(schedules=[...]) first"
        )
    return state


async def trigger(engine: ScheduleHost, schedule_id: str) -> Run:
    """`Engine.trigger_schedule`: fire now."""
    schedule = engine.schedules.get(schedule_id)
    if schedule is None:
        raise LookupError(
            f"this engine has no schedule {schedule_id!r}; pass it in "
            f"open_engine(schedules=[...]) (known: {sorted(engine.schedules)})"
        )
    return await fire(engine, schedule, wall_time())


async def fire(engine: ScheduleHost, schedule: Schedule, at: float) -> Run:
    """The run of `schedule` for fire time `at`: stored once across all engines (its
    id names the fire), queued in the default queue. The engine that stored it starts
    it at once unless it serves the default queue itself (then it takes it from
    there); should it stop first, a worker takes it from the queue."""
    run_id = fire_run_id(schedule.id, at)
    entry = QueueEntry(queue=DEFAULT_QUEUE)
    run, new = await engine._enqueue(schedule.workflow, schedule.input_data, entry, run_id)
    serving = engine.workers > 0 and any(q.name == DEFAULT_QUEUE for q in engine._served)
    if new and not serving:
        now = wall_time()
        row = await engine.storage.claim(
            run_id, engine.owner_id, ("pending",), now, now + engine.lease_seconds
        )
        if row is not None:
            engine._start_claimed(row)
            return engine._live.get(run_id, run)
    return run


async def sleep_until_wall(when: float) -> None:
    """Wait on Trio's clock until trioflow's wall clock reads `when`: in chunks of at
    most `MAX_WAIT`, since the wall clock may be set meanwhile (nothing else wakes
    this wait, so polling the clock is the point, not a missed event)."""
    while (remaining := when - wall_time()) > 0:  # noqa: ASYNC110
        await trio.sleep(min(remaining, MAX_WAIT))


async def serve_schedules(
    engine: ScheduleHost,
    schedules: list[Schedule],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fire `schedules` for `engine` until cancelled: register them, make up what was
    missed while no engine had them (each by its catch-up policy; done when this has
    started), then fire each at its times."""
    now = wall_time()
    states = await engine.storage.register_schedules([s.state(now) for s in schedules], now)
    async with trio.open_nursery() as nursery:
        for schedule in schedules:
            state = states[schedule.id]
            if not state.paused:
                missed = schedule.missed(state.handled_until, now)
                for at in catch_up_fires(schedule.catch_up, missed):
                    await _fire_logged(engine, schedule, at)
                await _advance(engine, schedule, now)
            handled = max(state.handled_until, now)
            nursery.start_soon(_serve_one, engine, schedule, handled)
        task_status.started()


async def _serve_one(engine: ScheduleHost, schedule: Schedule, handled: float) -> None:
    """Fire `schedule` at each of its times after `handled`, unless it is paused then."""
    while True:
        at = schedule.next_fire(handled)
        await sleep_until_wall(at)
        handled = at
        try:
            current = await engine.storage.load_schedule(schedule.id)
        except StorageError as exc:
            logger.warning("schedule %s: cannot read its state (%s); firing", schedule.id, exc)
            current = None
        if current is not None and current.paused:
            continue
        await _fire_logged(engine, schedule, at)
        await _advance(engine, schedule, at)


async def _fire_logged(engine: ScheduleHost, schedule: Schedule, at: float) -> None:
    """Fire once. A storage that fails is tried again for a while (the run id makes a
    retry harmless); whatever else goes wrong is logged with the fire it lost, and the
    schedule goes on: one failed fire never stops the engine or the later fires."""
    run_id = fire_run_id(schedule.id, at)
    for attempt in range(3):
        try:
            await fire(engine, schedule, at)
            return
        except StorageError as exc:
            logger.warning("schedule %s: firing %s failed (%s)", schedule.id, run_id, exc)
            if attempt < 2:
                await trio.sleep(RETRY_AFTER)
        except Exception:
            logger.exception("schedule %s: firing %s failed; it is lost", schedule.id, run_id)
            return
    logger.error("schedule %s: gave up firing %s; it is lost", schedule.id, run_id)


async def _advance(engine: ScheduleHost, schedule: Schedule, until: float) -> None:
    try:
        await engine.storage.advance_schedule(schedule.id, until)
    except StorageError as exc:
        logger.warning("schedule %s: cannot store its progress (%s)", schedule.id, exc)
