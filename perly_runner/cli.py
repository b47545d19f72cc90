"""The `perly` command: `perly sync` (source piped into destination, then the report) and
`perly schedule` (one PyAirbyte-driven sync, for cron)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from connector_spec import print_line
from destination_perly.config import ConfigError, load_json_object
from destination_perly.private_files import write_private
from perly_runner import schedule
from perly_runner.pipeline import (
    SyncFailed,
    configured_catalog,
    discover,
    exclusive_run,
    load_state,
    print_notice,
    print_progress,
    run_sync,
)


def read_config(path: Path) -> dict[str, Any]:
    try:
        return load_json_object(path)
    except ConfigError as exc:
        raise SyncFailed(str(exc)) from None


def sync(source_config: Path, destination_config: Path, state_path: Path, top: int, html: Path | None) -> int:
    """One sync (a real account, or anything the configs name), then the report; skipped while
    another sync with the same state runs."""
    with exclusive_run(state_path.with_name(state_path.name + ".lock")) as acquired:
        if not acquired:
            print_line(f"perly sync: another sync with the state {state_path} is still running; skipped")
            return 0
        return sync_and_report(source_config, destination_config, state_path, top, html)


def sync_and_report(
    source_config: Path, destination_config: Path, state_path: Path, top: int, html: Path | None
) -> int:
    from destination_perly.report import (
        StoreUnavailable,
        open_report_store,
        read_report,
        render_at_risk,
        render_html,
        render_summary,
    )

    source = read_config(source_config)
    destination = read_config(destination_config)
    catalog = configured_catalog(discover(source_config))
    mode = "incremental, from the saved state" if load_state(state_path) else "full"
    print_line(f"Sync ({mode}): {', '.join(s['stream']['name'] for s in catalog['streams'])}")
    workdir = state_path.parent / "sync-run"  # the run's files (catalog, stderr) beside its state
    result = run_sync(workdir, source, destination, catalog, state_path, print_progress, notice=print_notice)
    print_line(f"   {result.total:,} records in {result.seconds:.1f}s; state saved to {state_path}")
    try:
        with open_report_store(destination) as opened:
            report = read_report(opened.query)
    except StoreUnavailable as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    if html:
        write_private(html, render_html(report).encode())  # names and emails: owner-only
    print_line("\n" + render_summary(report) + "\n")
    print_line(render_at_risk(report, top))
    if html:
        print_line(f"\nHTML report: {html}")
    return 0


def scheduled(args: argparse.Namespace) -> int:
    settings = schedule.Settings(
        source_config=read_config(args.source_config),
        destination_config=read_config(args.destination_config),
        bin_dir=args.bin_dir,
        state_dir=args.state_dir,
        full_refresh=args.full_refresh,
    )
    return schedule.sync(schedule.load_airbyte(), settings)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="perly", description="Perly for Stripe outside Airbyte: one sync now, or one for cron."
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="{sync,schedule}")

    def configs(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--source-config", type=Path, required=True, help="source config JSON (api_key, ...)"
        )
        command.add_argument(
            "--destination-config", type=Path, required=True, help="destination config JSON (store, ...)"
        )

    run = commands.add_parser(
        "sync",
        help="source read | destination write, keeping the acknowledged state; then the report",
        description="One sync: full the first time, then incremental from the state the destination "
        "acknowledged. Then the summary and the at-risk customers.",
    )
    configs(run)
    run.add_argument(
        "--state",
        type=Path,
        default=Path("var/state.json"),
        help="where the acknowledged state is kept between runs (default var/state.json)",
    )
    run.add_argument("--html", type=Path, help="also write the HTML report here")
    run.add_argument("--top", type=int, default=15, help="at-risk customers to print (default 15)")

    cron = commands.add_parser(
        "schedule",
        help="one sync driven by PyAirbyte, for cron every 6 hours (needs perly-stripe[pyairbyte])",
        description=schedule.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configs(cron)
    cron.add_argument(
        "--bin-dir",
        type=Path,
        help="where the connectors' console scripts are (default: beside this Python, else PATH)",
    )
    cron.add_argument(
        "--state-dir",
        type=Path,
        default=Path("var/pyairbyte-state"),
        help="where the acknowledged state is kept (default var/pyairbyte-state)",
    )
    cron.add_argument(
        "--full-refresh", action="store_true", help="ignore the saved state and read everything"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "schedule":
            return scheduled(args)
        return sync(args.source_config, args.destination_config, args.state, args.top, args.html)
    except (SyncFailed, schedule.PyAirbyteMissing) as exc:
        print(f"perly {args.command} failed: {exc}", file=sys.stderr)
        return 1
