"""The fast tier's per-test budget, reported at the end of a run (never a failure)."""

from __future__ import annotations

import pytest

# pyproject.toml's [tool.pytest.ini_options] says how a test earns its place in the fast
# tier; one rule is this budget: seconds on the idle 2-core machine, set-up and tear-down
# included. Timings there are noisy, so a test over it is listed, not failed.
FAST_TEST_SECONDS = 10.0

_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # With xdist this runs in the controlling process too, for every worker's reports.
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if "not pipeline_run" not in (config.option.markexpr or ""):
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
