"""`facestudio bench ...`: performance measurements printed as JSON (see BENCHMARKS.md)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    q = group(sub, common, "bench").add_parser("capture", parents=[common],
                         help="capture link on loopback: fps, latency, CPU, bytes/frame, +-encryption")
    q.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    q.add_argument("--rates", default="30,60", help="frame rates to test (default 30,60)")
    add_json_flag(q)
    q.set_defaults(func=run_bench_capture)


def run_bench_capture(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.bench.capture import bench_capture

    rates = tuple(float(r) for r in args.rates.split(","))
    return bench_capture(seconds=args.seconds, rates=rates)
