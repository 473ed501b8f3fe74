"""The `facestudio` command line end to end, as a user (or a script) runs it.

A virtual device runs as its own process on 127.0.0.1 (mDNS restricted to loopback);
the capture commands run as other processes, so kill -9 hits a real recorder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facestudio import __version__

pytestmark = pytest.mark.network
PIN = "111111"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facestudio", *args], capture_output=True,
                          text=True, timeout=timeout)


def cli_json(*args: str, timeout: float = 120) -> dict:
    proc = cli(*args, "--json", timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def simulator(request):
    """`facestudio simulate` in a subprocess; yields its ready-line dict."""
    extra = getattr(request, "param", [])
    proc = subprocess.Popen([sys.executable, "-m", "facestudio", "simulate", "--host", "127.0.0.1",
                             "--pin", PIN, "--interface", "127.0.0.1", "--name", "Test iPad",
                             "--seed", "3", "--json", *extra], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, "simulator did not start"
    yield json.loads(line)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_version_and_help():
    proc = cli("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = cli("capture", "--help")
    assert proc.returncode == 0 and "--pin" in proc.stdout and "--frames" in proc.stdout


def test_discover_capture_and_inspect_a_take(simulator, library):
    devices = cli_json("devices", "--timeout", "8", "--interface", "127.0.0.1")
    assert any(d["name"] == "Test iPad" and d["port"] == simulator["port"] for d in devices["devices"])

    result = cli_json("capture", "--device", "Test iPad", "--interface", "127.0.0.1", "--timeout", "8",
                      "--pin", PIN, "--subject", "alice", "--take", "t1", "--expression", "mixed",
                      "--frames", "12")
    assert result["status"] == "complete" and result["frames"] == 12
    take = Path(result["path"])
    assert take == library / "takes" / "alice" / "t1"

    info = cli_json("take", "info", str(take))
    assert info["complete"] and info["frames"] == 12 and info["subject"] == "alice"
    listing = cli_json("library", "list")
    assert [(t["subject"], t["take"]) for t in listing["takes"]] == [("alice", "t1")]

    from facestudio.capture.take import TakeReader

    reader = TakeReader(take)
    frame = reader.frame(0)
    assert frame.color().shape == (480, 640, 3)
    depth = frame.depth_m()
    face = depth[depth > 0]
    assert face.size > 5000 and 0.25 < float(np.median(face)) < 0.6   # a face at selfie distance
    assert frame.ground_truth["exact"] is True and frame.blendshapes.shape == (52,)
    truth = reader.attachment("ground_truth")
    assert truth["vertices"].ndim == 3 and truth["vertices"].shape[0] == len(truth["labels"]) >= 3


def test_wrong_pin_and_existing_take_are_clear_errors(simulator):
    address = f"127.0.0.1:{simulator['port']}"
    proc = cli("capture", "--device", address, "--pin", "999999", "--subject", "bob", "--take", "t",
               "--frames", "3")
    assert proc.returncode == 2 and "wrong PIN" in proc.stderr
    cli_json("capture", "--device", address, "--pin", PIN, "--subject", "bob", "--take", "t", "--frames", "3")
    proc = cli("capture", "--device", address, "--pin", PIN, "--subject", "bob", "--take", "t", "--frames", "3")
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_kill_9_while_recording_keeps_the_take_readable(simulator, library):
    take = library / "takes" / "carol" / "t1"
    proc = subprocess.Popen([sys.executable, "-m", "facestudio", "capture", "--device",
                             f"127.0.0.1:{simulator['port']}", "--pin", PIN, "--subject", "carol",
                             "--take", "t1", "--seconds", "60"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lines = take / "frames.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lines.exists() and lines.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    from facestudio.capture.take import TakeReader

    reader = TakeReader(take)
    assert not reader.complete and len(reader) >= 10
    for i in range(len(reader)):
        frame = reader.frame(i)
        assert frame.color().shape == (480, 640, 3) and frame.depth_m().shape == (480, 640)
    recovered = cli_json("take", "recover", str(take))
    assert recovered["status"] == "incomplete" and recovered["frames"] == len(reader)


@pytest.mark.slow
def test_simulator_with_the_ict_face_model(ict_model, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "facestudio", "simulate", "--host", "127.0.0.1",
                             "--pin", PIN, "--no-advertise", "--face-model", str(ict_model), "--json"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        result = cli_json("capture", "--device", f"127.0.0.1:{port}", "--pin", PIN, "--subject", "ict",
                          "--take", "t1", "--frames", "5")
        from facestudio.capture.take import TakeReader

        truth = TakeReader(Path(result["path"])).attachment("ground_truth")
        assert str(truth["source"]) == "ict" and truth["vertices"].shape[1] == 26719
    finally:
        proc.terminate()
        proc.wait(timeout=10)
