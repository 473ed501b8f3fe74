"""Readable summaries of library rows: status words, take facts and segment quality reports.

Pure functions from the catalog's plain dicts to short strings and small HTML tables, so
the Library panel stays about widgets and the wording can be checked without a window.
"""

from __future__ import annotations

from html import escape
from typing import Any


def take_status(take: dict[str, Any], in_model: bool) -> str:
    """raw / fused / in model, with what is wrong with the take when something is."""
    if take["status"] == "unreadable":
        return "unreadable"
    if take["status"] == "recording":
        return "recording…"
    stage = "in model" if in_model else ("fused" if take["segments"] else "raw")
    return stage if take["status"] == "complete" else f"{stage} · incomplete"


def segment_status(segment: dict[str, Any], models: list[str]) -> str:
    if segment["problem"]:
        return "unreadable"
    if models:
        return "in model"
    return "fused · check quality" if segment["quality"].get("warnings") else "fused"


def labels_text(take: dict[str, Any]) -> str:
    return ", ".join(label.replace("_", " ") for label in take["labels"]) or "—"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><td class='k'>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table cellspacing='0' cellpadding='2'>{cells}</table>"


_STYLE = ("<style>td.k { color: #8b93a1; padding-right: 14px; } .warn { color: #f0b35a; } "
          ".ok { color: #59c48a; } .bad { color: #f07178; }</style>")


def take_html(take: dict[str, Any], info: dict[str, Any] | None, in_model: bool,
              expressions: str) -> str:
    """The facts a user checks before fusing: length, rate, completeness and why not."""
    fps = info.get("fps") if info else None
    if take["status"] == "complete":
        state = "<span class='ok'>complete</span>"
    elif take["status"] == "unreadable":
        state = f"<span class='bad'>unreadable</span>: {escape(take['problem'] or '')}"
    else:
        message = (info or {}).get("message") or take["problem"] or "no reason recorded"
        state = f"<span class='warn'>{escape(take['status'])}</span>: {escape(message)}"
    frames = f"{take['frames']}"
    if info and info.get("skipped"):
        frames += f" ({info['skipped']} skipped by the device)"
    rows = [("Subject", escape(take["subject"])), ("Expression", escape(expressions)),
            ("Frames", frames), ("Duration", f"{take['duration_s']:.1f} s"),
            ("Frame rate", f"{fps:.1f} fps" if fps else "—"), ("Recording", state),
            ("Library status", escape(take_status(take, in_model))),
            ("Segments", str(take["segments"]) if take["segments"] else "not fused yet"),
            ("Source", escape(take["source"])), ("Size", _size(take["size_bytes"]))]
    if take["created"]:
        rows.append(("Recorded", escape(take["created"].replace("T", " ")[:19])))
    problems = (info or {}).get("problems") or []
    html = _STYLE + _table(rows)
    if problems:
        shown = "".join(f"<li>{escape(p)}</li>" for p in problems[:5])
        more = f"<li>… and {len(problems) - 5} more</li>" if len(problems) > 5 else ""
        html += f"<p class='warn'>Problems found when reading the take:</p><ul>{shown}{more}</ul>"
    return html


def _range(values: list[float] | None) -> str:
    if not values:
        return "—"
    lo, hi = values
    return f"{lo:+.0f}° to {hi:+.0f}° ({hi - lo:.0f}° range)"


def segment_html(segment: dict[str, Any], models: list[str]) -> str:
    """The segment's quality report: is it a usable training object, and if not, why."""
    if segment["problem"]:
        return _STYLE + f"<p class='bad'>This segment cannot be read: {escape(segment['problem'])}</p>"
    q = segment["quality"]
    residual = q.get("registration_rmse_mm")
    pose = ("ARKit face anchor" if q.get("pose_source") == "anchor"
            else f"registration, residual {residual:.2f} mm" if residual is not None
            else escape(str(q.get("pose_source") or "—")))
    rows = [("Expression", escape(segment["label"] or "—")),
            ("Frames used", f"{q.get('frames_used', '—')} of {q.get('frames', '—')}"),
            ("Training views", str(segment["views"])),
            ("Head yaw", _range(q.get("yaw_range_deg"))),
            ("Head pitch", _range(q.get("pitch_range_deg"))),
            ("Head pose", pose)]
    if q.get("mesh_vertices") is not None:
        rows.append(("Mesh", f"{q['mesh_vertices']:,} vertices, {q.get('mesh_triangles', 0):,} triangles"))
    if q.get("blurred_fraction") is not None:
        rows.append(("Blurred frames", f"{100 * q['blurred_fraction']:.0f}%"))
    if q.get("lost_fraction") is not None:
        rows.append(("Face lost", f"{100 * q['lost_fraction']:.0f}% of frames"))
    rows.append(("Used by", escape(", ".join(models)) if models else "no trained model yet"))
    warnings = q.get("warnings") or []
    verdict = ("".join(f"<p class='warn'>⚠ {escape(w)}</p>" for w in warnings) if warnings
               else "<p class='ok'>✓ No quality warnings: a good training object.</p>")
    return _STYLE + _table(rows) + verdict
