"""Record a take from a connected device into the library (the core of `facestudio capture`).

The recorder drains a never-dropping :class:`FrameQueue` into a :class:`TakeWriter`; a stop
request, a frame/second budget, or the device vanishing all end the take cleanly with its
manifest saying why. Progress is reported as plain dicts, so the CLI prints it and the GUI
shows it without either knowing about the other.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facestudio.capture.receiver import DeviceClient, DeviceError, FrameQueue
from facestudio.capture.take import TakeWriter

log = logging.getLogger(__name__)


@dataclass
class RecordRequest:
    subject: str
    take: str
    expression: str | None = None
    frames: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.seconds is None):
            raise ValueError("give exactly one of frames or seconds")
        if (self.frames is not None and self.frames <= 0) or (self.seconds is not None and self.seconds <= 0):
            raise ValueError("frames/seconds must be positive")


def truth_arrays(truth: dict[str, Any]) -> dict[str, np.ndarray]:
    """A virtual device's ground truth as the arrays stored in a take's ground_truth.npz."""
    segs = truth["segments"]
    return {
        "triangles": np.asarray(truth["triangles"], np.int32),
        "face_vertex_mask": np.asarray(truth["face_vertex_mask"], bool),
        "vertices": np.stack([s["vertices"] for s in segs]).astype(np.float32),
        "blendshapes": np.stack([s["blendshapes"] for s in segs]).astype(np.float32),
        "labels": np.array([s["label"] for s in segs]),
        "starts": np.array([s["start"] for s in segs], np.float64),
        "ends": np.array([s["end"] for s in segs], np.float64),
        "identity_weights": np.asarray(truth.get("identity_weights", []), np.float32),
        "seed": np.array(truth.get("seed", -1)),
        "source": np.array(truth.get("source", "")),
    }


def record_take(client: DeviceClient, take_path: Path, request: RecordRequest,
                stop: threading.Event | None = None,
                progress: Callable[[dict[str, Any]], None] | None = None,
                fps: float = 30.0, queue_size: int = 240) -> dict[str, Any]:
    """Stream from an already connected ``client`` into a new take; returns a summary dict.

    If the client is not streaming yet (CLI), the stream is started here and stopped at the
    end; if it already streams (the GUI's live preview), the take taps the running stream and
    leaves it running. Frames that arrive are never dropped; frames the device skipped during
    the take are counted in the manifest.
    """
    stop = stop or threading.Event()
    frames_q = client.subscribe(FrameQueue(queue_size))
    manifest = {"subject": request.subject, "take": request.take, "expression": request.expression,
                "device": client.device}
    kept: list[int] = []             # frame indices written, in order
    status, message = "complete", ""
    t_start = time.monotonic()
    last_report = 0.0
    with TakeWriter(take_path, manifest) as writer:

        def keep(frame) -> bool:
            """Write a frame unless the requested frame count is already reached."""
            if request.frames is not None and len(kept) >= request.frames:
                return False
            writer.append(frame, received=frame.received)
            kept.append(frame.index)
            return True

        try:
            owns_stream = not client.streaming
            if owns_stream:
                client.start(fps=fps, ground_truth=True)
            ended = False
            while not ended:
                if request.frames is not None and len(kept) >= request.frames:
                    break
                if request.seconds is not None and time.monotonic() - t_start >= request.seconds:
                    break
                if stop.is_set():
                    message = "stopped by the user"
                    break
                try:
                    frame = frames_q.get(timeout=0.2)
                except queue.Empty:
                    continue
                if frame is None:
                    ended = True
                    break
                keep(frame)
                now = time.monotonic()
                if progress is not None and now - last_report >= 0.25:
                    last_report = now
                    progress({"frames": len(kept), "elapsed_s": now - t_start,
                              "target_frames": request.frames, "target_seconds": request.seconds,
                              **client.stats.as_dict()})
            if ended:
                status = "incomplete"
                message = client.error or "the device ended the stream"
            elif owns_stream:
                client.stop()
                # Frames already received before STOPPED still belong to the take.
                while True:
                    try:
                        frame = frames_q.get(timeout=0.5)
                    except queue.Empty:
                        break
                    if frame is None:
                        break
                    keep(frame)
            if client.truth is not None:
                writer.add_attachment("ground_truth", truth_arrays(client.truth))
        except DeviceError as exc:
            status, message = "incomplete", str(exc)
        finally:
            client.unsubscribe(frames_q)
        final = writer.close(status=status, message=message, extra={"link": client.stats.as_dict()})
    if status != "complete":
        log.warning("take %s ended early after %d frames: %s", take_path, len(kept), message)
    return {"path": str(take_path), "status": status, "message": message, "frames": len(kept),
            "first_index": kept[0] if kept else None, "last_index": kept[-1] if kept else None,
            "device_skipped": final["skipped"],
            "duration_s": round(time.monotonic() - t_start, 3), "link": client.stats.as_dict()}
