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

    q = group(sub, common, "bench").add_parser(
        "reliability", parents=[common],
        help="several devices recording at once (frames on disk / sent, RSS, main-thread stalls) "
             "and a decoder fuzz run")
    q.add_argument("--devices", type=int, default=4, help="virtual devices (default 4)")
    q.add_argument("--seconds", type=float, default=60.0, help="recording length (default 60)")
    q.add_argument("--fuzz-cases", type=int, default=20_000, help="mutated messages (default 20000)")
    add_json_flag(q)
    q.set_defaults(func=run_bench_reliability)

    q = group(sub, common, "bench").add_parser(
        "startup", parents=[common], help="seconds from launching the app to its window on screen")
    q.add_argument("--runs", type=int, default=5, help="measured launches (default 5)")
    add_json_flag(q)
    q.set_defaults(func=run_bench_startup)


def run_bench_startup(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.bench.startup import bench_startup

    return bench_startup(runs=args.runs)


def run_bench_reliability(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.bench.reliability import bench_reliability

    return bench_reliability(devices=args.devices, seconds=args.seconds, fuzz_cases=args.fuzz_cases)


def run_bench_capture(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.bench.capture import bench_capture

    rates = tuple(float(r) for r in args.rates.split(","))
    return bench_capture(seconds=args.seconds, rates=rates)
