"""`facestudio bench capture`: the capture link on loopback, encrypted vs plain (the baseline).

The virtual device runs in its own process with pre-rendered 640x480 frames (so the
renderer's speed does not limit the link); this process is the desktop receiver. For each
frame rate and encryption setting it measures sustained fps, capture->receipt latency
percentiles, the receiver's CPU use as a share of one core, bytes per frame and frames the
device had to skip. Receiving includes decryption, validation and handing every frame to a
never-dropping recorder queue; the plain and encrypted runs consume it without storing (the
link alone, plain being the baseline), and a third run per rate also writes every frame to
a take on disk (the whole desktop side of a recording).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from facestudio.capture.receiver import DeviceClient, FrameQueue
from facestudio.capture.take import TakeWriter

PIN = "246810"


def _start_device(prerender: int, seed: int) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "facestudio", "simulate", "--host", "127.0.0.1", "--port", "0",
           "--pin", PIN, "--no-advertise", "--fps", "120", "--prerender", str(prerender),
           "--seed", str(seed), "--allow-insecure-benchmark", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("virtual device process failed to start")
    return proc, int(json.loads(line)["port"])


def _measure(port: int, fps: float, encrypted: bool, seconds: float, warmup: float,
             record_dir: Path | None = None) -> dict[str, Any]:
    """One run; with ``record_dir`` every frame is also written to a take there (the recorder's work)."""
    client = DeviceClient("127.0.0.1", port, PIN if encrypted else None, insecure=not encrypted)
    writer = TakeWriter(record_dir, {"subject": "bench", "take": record_dir.name}) if record_dir else None
    client.connect()
    q = client.subscribe(FrameQueue(240))
    lat: list[float] = []
    counting = threading.Event()
    done = threading.Event()
    counts = {"frames": 0}

    def consume() -> None:
        while not done.is_set():
            try:
                f = q.get(timeout=0.2)
            except queue.Empty:
                continue
            if f is None:
                return
            if counting.is_set():
                if f.latency_s is not None:
                    lat.append(f.latency_s)
                counts["frames"] += 1
            if writer is not None:
                writer.append(f)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    client.start(fps=fps, ground_truth=False)
    time.sleep(warmup)
    bytes0, skipped0 = client.stats.bytes, client.stats.device_skipped
    cpu0, t0 = os.times(), time.monotonic()
    counting.set()
    time.sleep(seconds)
    counting.clear()
    cpu1, t1 = os.times(), time.monotonic()
    bytes1, skipped1 = client.stats.bytes, client.stats.device_skipped
    client.stop()
    done.set()
    client.close()
    consumer.join(timeout=5)
    if writer is not None:
        writer.close()
    n = counts["frames"]
    lat_ms = np.asarray(lat) * 1000 if lat else np.array([np.nan])
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"target_fps": fps, "encrypted": encrypted, "recording": writer is not None, "frames": n,
            "fps": round(n / (t1 - t0), 2),
            "latency_p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
            "latency_p95_ms": round(float(np.percentile(lat_ms, 95)), 3),
            "receiver_cpu_share_of_one_core": round(cpu / (t1 - t0), 4),
            "bytes_per_frame": int((bytes1 - bytes0) / max(n, 1)),
            "device_skipped": skipped1 - skipped0}


def bench_capture(seconds: float = 5.0, warmup: float = 1.0, rates: tuple[float, ...] = (30, 60),
                  prerender: int = 60, seed: int = 0) -> dict[str, Any]:
    proc, port = _start_device(prerender, seed)
    try:
        with tempfile.TemporaryDirectory(prefix="facestudio-bench-") as tmp:
            runs = []
            for fps in rates:
                runs += [_measure(port, fps, enc, seconds, warmup) for enc in (False, True)]
                runs.append(_measure(port, fps, True, seconds, warmup, Path(tmp) / f"take{fps:g}"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    ratios = {}
    for fps in rates:
        plain = next(r for r in runs if r["target_fps"] == fps and not r["encrypted"])
        enc = next(r for r in runs if r["target_fps"] == fps and r["encrypted"] and not r["recording"])
        ratios[f"{fps:g}fps_encrypted_over_plain_cpu"] = round(
            enc["receiver_cpu_share_of_one_core"] / max(plain["receiver_cpu_share_of_one_core"], 1e-9), 3)
    return {"benchmark": "capture", "resolution": "640x480 color JPEG + 640x480 float16 depth",
            "seconds_per_run": seconds, "runs": runs, "ratios": ratios,
            "cpu_count": os.cpu_count()}
