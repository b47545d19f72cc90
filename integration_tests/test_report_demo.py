"""`make demo` ends with the perly-report command that prints its report again: running that command
gives the very report the demo printed and wrote (issue 11: it used another window and another net)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from destination_perly.report import main
from integration_tests import demo
from integration_tests.stripe_emulator import Emulator

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def test_the_command_the_demo_prints_reproduces_the_demos_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    with Emulator(customers=60, seed=3) as emulator:
        assert demo.demo(None, None, 7, top=5, realtime_days=1, workdir=workdir, emulator=emulator) == 0
    printed = capsys.readouterr().out
    demo_report = printed[printed.index("Perly churn-risk report") : printed.index("\nStore: ")].strip()
    (command,) = [line for line in printed.splitlines() if line.startswith("Report again any time: ")]
    args = shlex.split(command.removeprefix("Report again any time: "))
    assert args[0] == "perly-report"
    assert "--as-of" in args
    assert "--since" in args
    html_at = args.index("--html") + 1
    demo_html = Path(args[html_at])
    args[html_at] = str(tmp_path / "again.html")

    assert main(args[1:]) == 0
    again = capsys.readouterr().out

    assert again[: again.index("\nHTML report written")].strip() == demo_report
    assert (tmp_path / "again.html").read_text(encoding="utf-8") == demo_html.read_text(encoding="utf-8")
    assert "net" in demo_report  # the comparison covered the movements of the period
