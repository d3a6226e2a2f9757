"""What a run of the suite reports at its end (never a failure): the fast tier's tests over
their budget; for the whole suite, the slowest tests and each test process's peak memory."""

from __future__ import annotations

import resource

import pytest

# pyproject.toml's [tool.pytest.ini_options] says how a test earns its place in the fast
# tier; one rule is this budget: seconds on the idle 2-core machine, set-up and tear-down
# included. Timings there are noisy, so a test over it is listed, not failed.
FAST_TEST_SECONDS = 10.0

SLOWEST_SHOWN = 15

_seconds: dict[str, float] = {}
_peaks: dict[str, float] = {}  # test process -> its peak RSS, MB


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Its own peak only: a child forked from it counts the parent's pages as its own until
    # it execs, so the children's figure (RUSAGE_CHILDREN) says nothing of the programs run.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controlling process reports it
        workeroutput["peak_rss_mb"] = peak
    elif not _peaks:
        _peaks["this process"] = peak


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    # pytest-xdist, in the controlling process, as each worker ends.
    peak = getattr(node, "workeroutput", {}).get("peak_rss_mb")
    if peak:
        _peaks[node.gateway.id] = peak


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # With xdist this runs in the controlling process too, for every worker's reports.
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


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
    if _peaks:
        terminalreporter.write_sep("-", "peak memory (RSS) of each test process")
        for who, peak in sorted(_peaks.items()):
            terminalreporter.write_line(f"{who}: {peak:,.0f} MB")
