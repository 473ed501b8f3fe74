"""Zeroconf (mDNS/DNS-SD) advertisement and discovery of capture devices.

Devices advertise ``_facestudio._tcp.local.`` with TXT keys ``pv`` (protocol version),
``name``, ``model``, ``sensor`` and ``id``. Tests and the virtual device restrict mDNS to
chosen interfaces (``["127.0.0.1"]``) so nothing leaves the machine.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from facestudio.capture.device import DeviceInfo
from facestudio.capture.protocol import PROTOCOL_VERSION, SERVICE_TYPE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoveredDevice:
    name: str
    host: str
    port: int
    model: str
    sensor: str
    device_id: str
    protocol: int
    service: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def as_dict(self) -> dict:
        return asdict(self)


def _zeroconf(interfaces: list[str] | None) -> Zeroconf:
    if interfaces:
        return Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    return Zeroconf(ip_version=IPVersion.V4Only)


def _service_name(info: DeviceInfo) -> str:
    label = "".join(c if c.isalnum() or c in " -_" else "-" for c in info.name)[:40] or "device"
    return f"{label} [{info.device_id}].{SERVICE_TYPE}"


class Advertisement:
    """Announce a device on mDNS until :meth:`close`."""

    def __init__(self, info: DeviceInfo, port: int, addresses: list[str],
                 interfaces: list[str] | None = None):
        self._zc = _zeroconf(interfaces)
        self.service = ServiceInfo(
            SERVICE_TYPE, _service_name(info),
            addresses=[socket.inet_aton(a) for a in addresses], port=port,
            properties={"pv": str(PROTOCOL_VERSION), "name": info.name, "model": info.model,
                        "sensor": info.sensor, "id": info.device_id},
            server=f"facestudio-{info.device_id}.local.")
        self._zc.register_service(self.service, allow_name_change=True)
        log.info("advertising %s on %s:%d", info.name, ",".join(addresses), port)

    def close(self) -> None:
        try:
            self._zc.unregister_service(self.service)
        finally:
            self._zc.close()


class DeviceBrowser:
    """Keep a live list of devices; ``on_change`` (called on zeroconf's thread) gets the list."""

    def __init__(self, interfaces: list[str] | None = None,
                 on_change: Callable[[list[DiscoveredDevice]], None] | None = None):
        self._zc = _zeroconf(interfaces)
        self._devices: dict[str, DiscoveredDevice] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._handle])

    def _handle(self, zeroconf: Zeroconf, service_type: str, name: str,
                state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            with self._lock:
                changed = self._devices.pop(name, None) is not None
        else:
            info = zeroconf.get_service_info(service_type, name, timeout=2000)
            device = _parse(info, name) if info else None
            if device is None:
                return
            with self._lock:
                changed = self._devices.get(name) != device
                self._devices[name] = device
        if changed and self._on_change is not None:
            self._on_change(self.devices())

    def devices(self) -> list[DiscoveredDevice]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: (d.name, d.device_id))

    def close(self) -> None:
        self._browser.cancel()
        self._zc.close()


def _parse(info: ServiceInfo, service: str) -> DiscoveredDevice | None:
    props = {k.decode(errors="replace"): (v or b"").decode(errors="replace")
             for k, v in (info.properties or {}).items()}
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses or not info.port:
        return None
    try:
        protocol = int(props.get("pv", "0"))
    except ValueError:
        protocol = 0
    return DiscoveredDevice(name=props.get("name", service.split(".")[0]), host=addresses[0],
                            port=int(info.port), model=props.get("model", ""),
                            sensor=props.get("sensor", ""), device_id=props.get("id", ""),
                            protocol=protocol, service=service)


def discover(timeout: float = 3.0, interfaces: list[str] | None = None,
             expect: int | None = None) -> list[DiscoveredDevice]:
    """Browse for ``timeout`` seconds (or until ``expect`` devices are seen)."""
    browser = DeviceBrowser(interfaces)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect is not None and len(browser.devices()) >= expect:
                break
            time.sleep(0.05)
        return browser.devices()
    finally:
        browser.close()
