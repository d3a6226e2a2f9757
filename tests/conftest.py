"""The order test files run in, and what a run of the suite reports at its end (never a
failure): the fast tier's tests over their budget; for the whole suite, the slowest tests
and each test process's peak memory and time in tests."""

from __future__ import annotations

import resource

import forked
import pytest

# pyproject.toml's [tool.pytest.ini_options] says how a test earns its place in the fast
# tier; one rule is this budget: seconds on the idle 2-core machine, set-up and tear-down
# included. Timings there are noisy, so a test over it is listed, not failed.
FAST_TEST_SECONDS = 10.0

SLOWEST_SHOWN = 15

SHOWN_FILES = 5

_seconds: dict[str, float] = {}
_busy: dict[str, float] = {}  # test process -> seconds its tests took
_peaks: dict[str, float] = {}  # test process -> its peak RSS, MB
_forked_peaks: dict[str, float] = {}  # test process -> its largest forked run's, MB
_raised: dict[str, float] = {}  # test file -> MB its tests raised their process's peak by
_last_peak: dict[str, float] = {}  # test process -> its peak after its last test


def pytest_collection_modifyitems(session: pytest.Session, config, items: list) -> None:
    """Files that run a pipeline first, the fast tier's files after them: the two test
    processes take files in this order (--dist loadfile), so what is left at the end is a
    queue of short files that evens out their finishing times, not a long file that one
    process runs while the other waits."""
    heavy = {
        item.path
        for item in items
        if item.get_closest_marker("pipeline_run") or item.get_closest_marker("slow")
    }
    items.sort(key=lambda item: item.path not in heavy)  # stable: files stay whole


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Its own peak only: a child forked from it counts the parent's pages as its own until
    # it execs, so the children's figure (RUSAGE_CHILDREN) says nothing of the programs run.
    peak = _peak_mb()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controlling process reports it
        workeroutput["peak_rss_mb"] = peak
        workeroutput["forked_peak_rss_mb"] = forked.largest_child_mb
    elif not _peaks:
        _peaks["this process"] = peak
        _forked_peaks["this process"] = forked.largest_child_mb


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    # pytest-xdist, in the controlling process, as each worker ends.
    output = getattr(node, "workeroutput", {})
    if output.get("peak_rss_mb"):
        _peaks[node.gateway.id] = output["peak_rss_mb"]
        _forked_peaks[node.gateway.id] = output.get("forked_peak_rss_mb", 0.0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when in ("setup", "teardown"):
        # Travels with the report to the controlling process (xdist serialises it).
        outcome.get_result().user_properties.append(("peak_rss_mb", _peak_mb()))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # With xdist this runs in the controlling process too, for every worker's reports.
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration
    node = getattr(report, "node", None)
    process = node.gateway.id if node is not None else "this process"
    _busy[process] = _busy.get(process, 0.0) + report.duration
    peak = dict(report.user_properties).get("peak_rss_mb")
    if peak is None:
        return
    # A process's first set-up sets where it starts: collection is no test file's doing.
    _last_peak.setdefault(process, peak)
    if report.when == "teardown":
        raised = peak - _last_peak[process]
        if raised > 0:
            test_file = report.nodeid.split("::")[0]
            _raised[test_file] = _raised.get(test_file, 0.0) + raised
            _last_peak[process] = peak


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if "not pipeline_run" not in (config.option.markexpr or ""):
        _whole_suite_summary(terminalreporter)
        return
    over = sorted(((s, n) for n, s in _seconds.items() if s > FAST_TEST_SECONDS), reverse=True)
    if not over:
        return
    terminalreporter.write_sep("-", f"fast tier: tests over {FAST_TEST_SECONDS:g} s")
    for seconds, nodeid in over:
        terminalreporter.write_line(f"{seconds:5.1f} s  {nodeid}")
    terminalreporter.write_line(
        "Make them cheaper or move them out of the fast tier (pyproject.toml says how)."
    )


def _whole_suite_summary(terminalreporter) -> None:
    slowest = sorted(((s, n) for n, s in _seconds.items()), reverse=True)[:SLOWEST_SHOWN]
    if slowest:
        terminalreporter.write_sep("-", f"the {len(slowest)} slowest tests")
        for seconds, nodeid in slowest:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")
    per_file: dict[str, float] = {}
    for nodeid, seconds in _seconds.items():
        per_file[nodeid.split("::")[0]] = per_file.get(nodeid.split("::")[0], 0.0) + seconds
    files = sorted(((s, n) for n, s in per_file.items()), reverse=True)[:SLOWEST_SHOWN]
    if files:
        # --dist loadfile runs each file in one process: the largest bound the suite's time.
        terminalreporter.write_sep("-", f"the {len(files)} slowest test files")
        for seconds, name in files:
            terminalreporter.write_line(f"{seconds:6.1f} s  {name}")
    if _peaks:
        terminalreporter.write_sep("-", "peak memory (RSS) and time in tests of each process")
        for who, peak in sorted(_peaks.items()):
            runs = _forked_peaks.get(who)
            forked_runs = f" (its largest forked run: {runs:,.0f} MB)" if runs else ""
            busy = f", {_busy[who]:,.0f} s in tests" if who in _busy else ""
            terminalreporter.write_line(f"{who}: {peak:,.0f} MB{forked_runs}{busy}")
    raisers = sorted(((mb, name) for name, mb in _raised.items()), reverse=True)[:SHOWN_FILES]
    if raisers:
        terminalreporter.write_sep("-", "test files that raised a test process's peak the most")
        for mb, name in raisers:
            terminalreporter.write_line(f"{mb:7,.0f} MB  {name}")
