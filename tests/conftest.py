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
_peaks: dict[str, tuple[float, float]] = {}  # test process -> (its peak, its children's) MB


def _peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def pytest_sessionfinish(session: pytest.Session) -> None:
    peaks = (_peak_rss_mb(resource.RUSAGE_SELF), _peak_rss_mb(resource.RUSAGE_CHILDREN))
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controlling process reports it
        workeroutput["peak_rss_mb"] = peaks
    elif not _peaks:
        _peaks["this process"] = peaks


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    # pytest-xdist, in the controlling process, as each worker ends.
    peaks = getattr(node, "workeroutput", {}).get("peak_rss_mb")
    if peaks:
        _peaks[node.gateway.id] = tuple(peaks)


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
        for who, (own, children) in sorted(_peaks.items()):
            terminalreporter.write_line(
                f"{who}: {own:,.0f} MB; the largest program it started: {children:,.0f} MB"
            )
