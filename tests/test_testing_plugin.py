"""The pytest plugin, as users get it: registered by trioflow's ``pytest11`` entry point,
in a fresh pytest process (pytester), with pytest-trio's ``trio_mode = true`` and with
explicit ``@pytest.mark.trio``; and examples/test_my_workflow.py run the same two ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.slow  # each test starts a pytest process

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_my_workflow.py"

# The tests use every fixture; MARK is "" under trio_mode, "@pytest.mark.trio" otherwise.
USES_EVERY_FIXTURE = """
import datetime as dt

import pytest
import trio

import trioflow
from trioflow._clock import wall_time
from trioflow.testing import EPOCH, drive, virtual_datetime


async def work(ctx):
    await trio.sleep(2)
    return "done"


WORKFLOW = (
    trioflow.create_workflow(id="plugged")
    .sleep_until(virtual_datetime(3))
    .then(trioflow.create_step(id="work", execute=work))
    .commit()
)


@pytest.fixture
def trioflow_workflows():
    return [WORKFLOW]


MARK
async def test_clock_and_events(trioflow_clock, trioflow_events):
    assert wall_time() == EPOCH.timestamp()
    run = await WORKFLOW.create_run()
    recording = trioflow_events.record(run)
    result = await run.start()
    assert result.status == "success"
    assert trio.current_time() == 5
    assert recording.times("workflow-step-start", "work") == [3]
    assert result.steps["work"].started_at == EPOCH.timestamp() + 3


MARK
async def test_engine(trioflow_clock, trioflow_engine):
    run = await trioflow_engine.create_run("plugged")
    await run.start_soon()
    assert (await run.result()).status == "success"
    assert trio.current_time() == 5


MARK
async def test_engine_factory_and_driver(trioflow_clock, trioflow_engine_factory):
    engine = await trioflow_engine_factory([WORKFLOW])
    run = await engine.create_run(WORKFLOW)
    async with drive(run) as driver:
        await driver.until_step_starts("work")
        assert trio.current_time() == 3
        await run.cancel()
    assert (await driver.result()).status == "canceled"


def test_the_wall_clock_fixture_in_a_sync_test(trioflow_wall_clock):
    assert trioflow_wall_clock == EPOCH == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
"""

INI = {
    "trio_mode": "[pytest]\ntrio_mode = true\nfilterwarnings = error\n",
    "marker": "[pytest]\nfilterwarnings = error\n",
}
MARK = {"trio_mode": "", "marker": "@pytest.mark.trio"}


@pytest.mark.parametrize("mode", ["trio_mode", "marker"])
def test_the_fixtures_work_with_trio_mode_and_with_the_marker(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makeini(INI[mode])
    pytester.makepyfile(test_plugged=USES_EVERY_FIXTURE.replace("MARK\n", MARK[mode] + "\n"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_the_plugin_is_the_trioflow_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI["trio_mode"])
    pytester.makepyfile(test_plugged=USES_EVERY_FIXTURE.replace("MARK\n", ""))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trioflow")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*fixture 'trioflow_*' not found*"])


@pytest.mark.parametrize("mode", ["trio_mode", "marker"])
def test_the_example_test_file_passes(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeini(INI[mode])
    pytester.makepyfile(test_my_workflow=EXAMPLE.read_text(encoding="utf-8"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_trioflow_testing_does_not_need_pytest() -> None:
    code = (
        "import sys; sys.modules['pytest'] = sys.modules['_pytest'] = None\n"
        "import trioflow.testing\n"
        "assert trioflow.testing.cancellation_sweep.__module__ == 'trioflow.testing'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
