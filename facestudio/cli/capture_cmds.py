"""Capture commands: `simulate` (the virtual device), `devices`, `capture`, `take info|recover`."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from facestudio.cli.console import end_progress, show_progress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    p = sub.add_parser("simulate", parents=[common], help="run the built-in virtual TrueDepth device",
                       description="Serve a synthetic face over the real capture protocol "
                                   "(zeroconf advertisement, PIN pairing, encryption).")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    p.add_argument("--pin", help="6-digit PIN (default: a random one, printed)")
    p.add_argument("--fps", type=float, default=30.0, help="maximum frame rate (default 30)")
    p.add_argument("--name", default="Virtual iPad", help="device name shown to desktops")
    p.add_argument("--face-model", metavar="PATH",
                   help="ICT face model .npz (default: the library's imported one, else a built-in head)")
    p.add_argument("--seed", type=int, default=0, help="identity seed (default 0)")
    p.add_argument("--no-advertise", action="store_true", help="do not announce on zeroconf")
    p.add_argument("--interface", action="append", metavar="IP",
                   help="mDNS interface address (repeatable; e.g. 127.0.0.1 keeps it on this machine)")
    p.add_argument("--duration", type=float, help="exit after this many seconds")
    p.add_argument("--prerender", type=int, metavar="N",
                   help="render N frames up front and loop them (a steady rate on slow machines)")
    p.add_argument("--allow-insecure-benchmark", action="store_true", help=argparse.SUPPRESS)
    add_json_flag(p)
    p.set_defaults(func=run_simulate)

    p = sub.add_parser("devices", parents=[common], help="list capture devices on the network")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument("--interface", action="append", metavar="IP", help="mDNS interface (repeatable)")
    add_json_flag(p)
    p.set_defaults(func=run_devices)

    p = sub.add_parser("capture", parents=[common], help="record a take from a device into the library")
    p.add_argument("--device", required=True, help="device name (as listed by `devices`) or HOST:PORT")
    p.add_argument("--pin", required=True, help="the 6-digit PIN the device shows")
    p.add_argument("--subject", required=True, help="person being captured")
    p.add_argument("--take", required=True, help="take name (unique per subject)")
    p.add_argument("--expression", help="expression prompt/label, e.g. neutral, smile")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--frames", type=int, help="number of frames to record")
    budget.add_argument("--seconds", type=float, help="seconds to record")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate to request (default 30)")
    p.add_argument("--timeout", type=float, default=3.0, help="discovery time for a device name")
    p.add_argument("--interface", action="append", metavar="IP", help="mDNS interface (repeatable)")
    add_json_flag(p)
    p.set_defaults(func=run_capture)

    take_sub = group(sub, common, "take")
    q = take_sub.add_parser("info", parents=[common], help="summarise a take")
    q.add_argument("path", type=Path)
    add_json_flag(q)
    q.set_defaults(func=run_take_info)
    q = take_sub.add_parser("recover", parents=[common],
                            help="mark a take left 'recording' by a crash as incomplete and tidy it")
    q.add_argument("path", type=Path)
    add_json_flag(q)
    q.set_defaults(func=run_take_recover)


def run_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.capture.virtual_device import ReplayFrameSource, SyntheticFrameSource, VirtualDevice

    from facestudio.paths import face_model_for, library_root

    face_model = face_model_for(library_root(args.library), args.face_model)
    source = SyntheticFrameSource(face_model, seed=args.seed, max_fps=args.fps)
    if args.prerender:
        source = ReplayFrameSource.prerender(source, args.prerender, args.fps)
    device = VirtualDevice(source, name=args.name, pin=args.pin, host=args.host, port=args.port,
                           advertise=not args.no_advertise, interfaces=args.interface,
                           allow_insecure=args.allow_insecure_benchmark)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    host, port = device.address
    ready = {"event": "ready", "name": args.name, "host": host, "port": port, "pin": device.pin,
             "advertised": not args.no_advertise}
    if args.json:
        import json

        print(json.dumps(ready), flush=True)
    else:
        print(f"{args.name} listening on {host}:{port} — PIN {device.pin}"
              f"{'' if args.no_advertise else ' (advertised on zeroconf)'}; Ctrl+C stops", flush=True)
    started = time.monotonic()
    try:
        while not stop.wait(0.2):
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
    finally:
        device.close()
    return {"event": "stopped", "frames_sent": device.server.frames_sent,
            "uptime_s": round(time.monotonic() - started, 2)}


def run_devices(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.capture.discovery import discover

    found = discover(args.timeout, args.interface)
    if not args.json:
        if not found:
            print("no devices found (same network? device app open? firewall allows mDNS?)")
        for d in found:
            print(f"{d.name}\t{d.address}\t{d.model}\t{d.sensor}")
        return None  # type: ignore[return-value]
    return {"devices": [d.as_dict() for d in found], "count": len(found)}


def resolve_device(spec: str, timeout: float, interfaces: list[str] | None) -> tuple[str, int]:
    """HOST:PORT as given, or look a device name up on zeroconf."""
    host, sep, port = spec.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    from facestudio.capture.discovery import discover

    found = discover(timeout, interfaces)
    matches = [d for d in found if spec in (d.name, d.device_id, d.service)]
    if not matches:
        names = ", ".join(d.name for d in found) or "none"
        raise ValueError(f"no device named {spec!r} found in {timeout:g} s (found: {names})")
    return matches[0].host, matches[0].port


def run_capture(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.capture.receiver import DeviceClient
    from facestudio.capture.recorder import RecordRequest, record_take
    from facestudio.library.catalog import Catalog
    from facestudio.paths import library_root, take_dir

    request = RecordRequest(args.subject, args.take, args.expression, args.frames, args.seconds)
    root = library_root(args.library)
    path = take_dir(root, args.subject, args.take)
    if path.exists() and any(path.iterdir()):
        raise ValueError(f"take {args.subject}/{args.take} already exists at {path}")
    host, port = resolve_device(args.device, args.timeout, args.interface)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def progress(p: dict[str, Any]) -> None:
        if not args.json:
            show_progress(f"{p['frames']} frames  {p['fps']:.1f} fps  latency p95 {p['latency_p95_ms'] or 0:.1f} ms"
                          f"  {p['bandwidth_mbps']:.1f} Mbit/s  skipped {p['device_skipped']}")

    try:
        with DeviceClient(host, port, args.pin) as client:
            client.connect()
            result = record_take(client, path, request, stop=stop, progress=progress, fps=args.fps)
    finally:
        end_progress()
    Catalog(root).index_take(args.subject, args.take)
    return result


def run_take_info(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.capture.take import TakeReader

    return TakeReader(args.path).info()


def run_take_recover(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.capture.take import recover_take

    return recover_take(args.path)
