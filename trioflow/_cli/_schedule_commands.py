"""``trioflow schedules list|pause|resume|trigger`` and ``trioflow queues list``.

They work on the storage directly (``--db`` or ``--dsn``), like ``runs``: listing,
pausing and resuming need no app. Pausing a schedule stops its fires in every engine
sharing the storage; it never cancels a run (``trioflow runs cancel`` does that).
``trigger`` stores the fire (a run named ``<id>@<now>``, in the default queue, for a
worker to execute), so it needs the module that defines the schedule.
"""

from __future__ import annotations

import argparse

from .._clock import wall_time
from .._engine import open_engine
from .._queues import DEFAULT_QUEUE, QueueEntry, QueueLimits
from .._schedules import Schedule, fire_run_id
from ..storage import ScheduleState
from ._common import EXIT_SUCCESS, CliError, app_objects, json_dumps, open_storage, place
from ._view import TextView, local_time


def _next_fire(state: ScheduleState) -> float | None:
    try:
        schedule = Schedule(
            state.schedule_id,
            workflow=state.workflow_id,
            cron=state.cron,
            timezone=state.timezone,
        )
    except ValueError:  # stored by a trioflow that knew more cron than this one
        return None
    return schedule.next_fire(max(state.handled_until, wall_time()))


# --- schedules -------------------------------------------------------------------------


async def schedules_list_command(args: argparse.Namespace) -> int:
    async with open_storage(args) as storage:
        states = await storage.list_schedules()
    rows = [(state, _next_fire(state)) for state in states]
    if args.json:
        print(
            json_dumps(
                [
                    {
                        "id": s.schedule_id,
                        "workflow_id": s.workflow_id,
                        "cron": s.cron,
                        "timezone": s.timezone,
                        "catch_up": s.catch_up,
                        "paused": s.paused,
                        "handled_until": s.handled_until,
                        "next_fire": None if s.paused else next_fire,
                    }
                    for s, next_fire in rows
                ]
            )
        )
        return EXIT_SUCCESS
    view = TextView()
    if not rows:
        view.line(f"no schedules in {place(args)} (engines store theirs when they open)")
        return EXIT_SUCCESS
    width = max(len("SCHEDULE"), *(len(s.schedule_id) for s, _ in rows))
    wf_width = max(len("WORKFLOW"), *(len(s.workflow_id) for s, _ in rows))
    cron_width = max(len("CRON"), *(len(s.cron) for s, _ in rows))
    view.line(
        f"{'SCHEDULE':<{width}}  {'WORKFLOW':<{wf_width}}  {'CRON':<{cron_width}}  "
        f"{'TIMEZONE':<16} {'STATE':<7} NEXT FIRE (local time)"
    )
    for s, next_fire in rows:
        state = "paused" if s.paused else "active"
        when = "-" if s.paused else local_time(next_fire)
        view.line(
            f"{s.schedule_id:<{width}}  {s.workflow_id:<{wf_width}}  {s.cron:<{cron_width}}  "
            f"{s.timezone:<16} {state:<7} {when}"
        )
    return EXIT_SUCCESS


async def _set_paused(args: argparse.Namespace, paused: bool) -> int:
    async with open_storage(args) as storage:
        state = await storage.set_schedule_paused(args.schedule_id, paused, wall_time())
        if state is None:
            known = [s.schedule_id for s in await storage.list_schedules()]
            raise CliError(
                f"no schedule {args.schedule_id!r} in {place(args)} (known: {known}); "
                "an engine stores its schedules when it opens"
            )
    if args.json:
        print(json_dumps({"id": state.schedule_id, "paused": state.paused}))
    elif paused:
        print(
            f"schedule {state.schedule_id} paused: no new runs until `trioflow schedules "
            "resume`; runs it already started go on (cancel those with `trioflow runs cancel`)"
        )
    else:
        print(f"schedule {state.schedule_id} resumed: it fires again from its next time")
    return EXIT_SUCCESS


async def schedules_pause_command(args: argparse.Namespace) -> int:
    return await _set_paused(args, True)


async def schedules_resume_command(args: argparse.Namespace) -> int:
    return await _set_paused(args, False)


async def schedules_trigger_command(args: argparse.Namespace) -> int:
    _, schedules = app_objects([args.app])
    found = {s.id: s for s in schedules}
    schedule = found.get(args.schedule_id)
    if schedule is None:
        raise CliError(
            f"{args.app} defines no schedule {args.schedule_id!r} at module level "
            f"(it defines: {sorted(found)}); name the module that defines it"
        )
    if isinstance(schedule.workflow, str):
        raise CliError(
            f"schedule {schedule.id!r} names its workflow by id ({schedule.workflow!r}); "
            "give it the workflow object so this command can store its run"
        )
    async with open_engine(storage=open_storage(args), workflows=[schedule.workflow]) as engine:
        now = wall_time()
        entry = QueueEntry(queue=DEFAULT_QUEUE)
        run, _ = await engine._enqueue(
            schedule.workflow, schedule.input_data, entry, fire_run_id(schedule.id, now)
        )
    if args.json:
        print(json_dumps({"run_id": run.run_id, "queue": DEFAULT_QUEUE}))
    else:
        print(f"{run.run_id} queued in the default queue; a worker executes it")
    return EXIT_SUCCESS


# --- queues ----------------------------------------------------------------------------


async def queues_list_command(args: argparse.Namespace) -> int:
    async with open_storage(args) as storage:
        stats = await storage.queue_stats(wall_time())
    if args.json:
        print(json_dumps(stats))
        return EXIT_SUCCESS
    view = TextView()
    width = max(len("QUEUE"), *(len(s.name) for s in stats))
    view.line(f"{'QUEUE':<{width}}  {'WAITING':>7}  {'EXECUTING':>9}  LIMITS")
    for s in stats:
        limits = describe_limits(s.limits)
        view.line(f"{s.name:<{width}}  {s.waiting:>7}  {s.executing:>9}  {limits}")
    return EXIT_SUCCESS


def describe_limits(limits: QueueLimits | None) -> str:
    return "no limits" if limits is None else limits.describe()


# --- the parsers -----------------------------------------------------------------------


def add_schedule_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    epilog: str,
) -> None:
    def sub(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name,
            help=text,
            description=text,
            parents=[common],
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    schedules = commands.add_parser(
        "schedules",
        help="List, pause, resume and trigger cron schedules.",
        description="List, pause, resume and trigger the cron schedules engines stored. "
        "Pausing a schedule stops new runs; it never cancels a run.",
        parents=[common],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = schedules.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub(actions, "list", "List the stored schedules and their next fire.").set_defaults(
        handler=schedules_list_command
    )
    pause = sub(
        actions, "pause", "Stop a schedule's fires everywhere (its runs go on) until resumed."
    )
    pause.add_argument("schedule_id", metavar="SCHEDULE_ID")
    pause.set_defaults(handler=schedules_pause_command)
    resume = sub(actions, "resume", "Let a paused schedule fire again from its next time.")
    resume.add_argument("schedule_id", metavar="SCHEDULE_ID")
    resume.set_defaults(handler=schedules_resume_command)
    trigger = sub(actions, "trigger", "Fire a schedule now: queue its run for a worker.")
    trigger.add_argument("schedule_id", metavar="SCHEDULE_ID")
    trigger.add_argument(
        "app", metavar="MODULE_OR_FILE", help="the module or .py file that defines the schedule"
    )
    trigger.set_defaults(handler=schedules_trigger_command)

    queues = commands.add_parser(
        "queues",
        help="List the queues: waiting and executing runs, limits.",
        description="List the queues: how many runs wait and execute, and their limits.",
        parents=[common],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    queue_actions = queues.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub(queue_actions, "list", "List the queues.").set_defaults(handler=queues_list_command)
