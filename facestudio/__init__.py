"""FaceStudio: iPad TrueDepth capture -> fused face datasets -> latent 3D diffusion -> meshes.

Everything in this package except :mod:`facestudio.gui` is Qt-free, so the CLI, the tests
and the GUI share one core.
"""

__version__ = "0.1.0"
