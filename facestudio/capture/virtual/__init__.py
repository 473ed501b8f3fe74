"""The virtual capture device: a scripted synthetic face rendered as TrueDepth-like RGB-D with exact ground truth."""

from facestudio.capture.virtual.script import EXPRESSIONS, Script, Segment
from facestudio.capture.virtual.source import SyntheticFaceSource, SyntheticView, truedepth_intrinsics

__all__ = ["EXPRESSIONS", "Script", "Segment", "SyntheticFaceSource", "SyntheticView", "truedepth_intrinsics"]
