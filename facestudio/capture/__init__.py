"""Capture stage: the device link (protocol, pairing, discovery), the virtual device and takes on disk."""
