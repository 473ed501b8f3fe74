"""The FaceStudio desktop GUI: a thin Qt layer over the Qt-free core.

Only this package imports Qt. Panels call the same core API the CLI calls; anything that
blocks (network, disk, rendering) runs in :mod:`facestudio.gui.workers` jobs.
"""
