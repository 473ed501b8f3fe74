"""`facestudio bench reliability`: several devices at once, memory, responsiveness, fuzzing.

- **Load:** N virtual devices (separate processes replaying pre-rendered 640x480 frames)
  stream to this process, which records all of them to takes at the same time for S
  seconds. Reported: frames on disk / frames the devices sent (must be 1.0: a recording
  never drops a frame), device-skipped frames, peak RSS of this process and its resident
  memory before and after (bounded memory: the end should be close to the start).
- **Responsiveness:** while recording, the main thread runs a 10 ms periodic tick — what a
  GUI event loop does — and records how late each tick fires (GIL and CPU contention from
  the receiver threads is what would freeze a GUI); p99 and max lateness are reported.
- **Fuzzing:** mutated FRAME messages (bit flips, truncation, extension, spliced headers)
  go through the desktop's decoder; anything but a clean ProtocolError is a failure.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from facestudio.capture.protocol import (ProtocolError, decode_message, encode_message,
                                         frame_to_message, message_to_frame)
from facestudio.capture.receiver import DeviceClient
from facestudio.capture.recorder import RecordRequest, record_take
from facestudio.capture.take import TakeReader

PIN = "135790"


def _start_devices(count: int, prerender: int) -> list[tuple[subprocess.Popen, int]]:
    procs = [subprocess.Popen([sys.executable, "-m", "facestudio", "simulate", "--host", "127.0.0.1",
                               "--port", "0", "--pin", PIN, "--no-advertise", "--fps", "30",
                               "--prerender", str(prerender), "--seed", str(i), "--name", f"bench-{i}",
                               "--json"], stdout=subprocess.PIPE, text=True) for i in range(count)]
    out = []
    for proc in procs:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError("a virtual device failed to start")
        out.append((proc, int(json.loads(line)["port"])))
    return out


def _rss_mb() -> float | None:
    """Current resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * resource.getpagesize() / 2**20, 1)


def load_run(devices: int = 4, seconds: float = 60.0, fps: float = 30.0, prerender: int = 30,
             library: Path | None = None) -> dict[str, Any]:
    """Record from ``devices`` devices at once; returns counts, RSS and main-thread lateness."""
    rss_start = _rss_mb()
    started = _start_devices(devices, prerender)
    tmp = tempfile.TemporaryDirectory(prefix="facestudio-reliability-") if library is None else None
    root = Path(tmp.name) if tmp else Path(library)  # type: ignore[arg-type]
    clients, results, errors = [], [None] * devices, []
    try:
        for _, port in started:
            client = DeviceClient("127.0.0.1", port, PIN)
            client.connect()
            clients.append(client)

        def record(i: int) -> None:
            try:
                results[i] = record_take(clients[i], root / f"device{i}", RecordRequest(
                    "bench", f"device{i}", seconds=seconds), fps=fps)
            except Exception as exc:  # reported, the run goes on
                errors.append(f"device {i}: {exc!r}")

        threads = [threading.Thread(target=record, args=(i,)) for i in range(devices)]
        for t in threads:
            t.start()
        lateness = _tick_until(lambda: not any(t.is_alive() for t in threads))
        for t in threads:
            t.join()
        sent = sum((c.stopped_report or {}).get("frames_sent", 0) for c in clients)
        on_disk = sum(len(TakeReader(root / f"device{i}")) for i in range(devices) if results[i])
    finally:
        for c in clients:
            c.close()
        for proc, _ in started:
            proc.terminate()
            proc.wait(timeout=10)
        if tmp:
            tmp.cleanup()
    late_ms = np.asarray(lateness) * 1000
    return {
        "devices": devices, "seconds": seconds, "target_fps": fps,
        "frames_sent": sent, "frames_on_disk": on_disk,
        "recorded_over_sent": round(on_disk / sent, 6) if sent else None,
        "device_skipped": sum(r["device_skipped"] for r in results if r),
        "takes_complete": sum(1 for r in results if r and r["status"] == "complete"),
        "errors": errors,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_start_mb": rss_start, "rss_end_mb": _rss_mb(),
        "tick_lateness_p50_ms": round(float(np.percentile(late_ms, 50)), 2),
        "tick_lateness_p99_ms": round(float(np.percentile(late_ms, 99)), 2),
        "tick_lateness_max_ms": round(float(late_ms.max()), 2),
    }


def _tick_until(done, period: float = 0.010) -> list[float]:
    """Sleep in ``period`` steps on this thread until ``done()``; how late each wake-up was."""
    late = []
    due = time.perf_counter() + period
    while not done():
        time.sleep(max(0.0, due - time.perf_counter()))
        now = time.perf_counter()
        late.append(max(0.0, now - due))
        due = max(due + period, now)
    return late or [0.0]


def fuzz_decoder(cases: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """Mutate valid FRAME messages; the decoder must answer each with a frame or ProtocolError."""
    from facestudio.capture.frame import EncodedDepth, Frame, Intrinsics

    rng = np.random.default_rng(seed)
    intr = Intrinsics(50.0, 50.0, 15.5, 11.5, 32, 24)
    valid = encode_message(frame_to_message(Frame(
        index=3, timestamp=1.0, color_jpeg=b"\xff\xd8" + bytes(200), color_intrinsics=intr,
        depth=EncodedDepth.encode(np.full((24, 32), 0.4, np.float32)), depth_intrinsics=intr,
        head_pose=np.eye(4), blendshapes=np.zeros(52, np.float32))))
    failures: list[str] = []
    rejected = accepted = 0
    for _ in range(cases):
        data = bytearray(valid)
        kind = rng.integers(4)
        if kind == 0:                                        # bit flips anywhere
            for pos in rng.integers(0, len(data), rng.integers(1, 8)):
                data[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:                                      # truncation
            data = data[:rng.integers(0, len(data))]
        elif kind == 2:                                      # random bytes appended or inserted
            pos = int(rng.integers(0, len(data)))
            data[pos:pos] = rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
        else:                                                # digits/quotes in the JSON header
            head_end = 5 + int.from_bytes(data[1:5], "big")
            for pos in rng.integers(5, max(6, min(head_end, len(data))), rng.integers(1, 4)):
                data[pos] = ord(rng.choice(list('0123456789"{}[],:-e.')))
        try:
            message_to_frame(decode_message(bytes(data)))
            accepted += 1
        except ProtocolError:
            rejected += 1
        except Exception as exc:  # the defect this fuzzer exists to find
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
    return {"cases": cases, "rejected": rejected, "accepted": accepted, "failures": len(failures),
            "failure_examples": failures[:5]}


def bench_reliability(devices: int = 4, seconds: float = 60.0, fuzz_cases: int = 20_000) -> dict[str, Any]:
    return {"benchmark": "reliability", "load": load_run(devices, seconds),
            "fuzz": fuzz_decoder(fuzz_cases)}
