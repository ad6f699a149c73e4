"""The simulated vendor: a seeded monitoring hierarchy served over real HTTP on 127.0.0.1.

    from harvester.simulator import VendorServer, FaultConfig, FaultRule
    with VendorServer(troops=3, rate=20, burst=5) as vendor:
        httpx.get(f"{vendor.url}/v1/troops", headers=vendor.auth_headers())
        vendor.stats().served

See ``server.py`` for the request pipeline and the stats, ``paging.py`` for the response shapes,
``faults.py`` for fault injection and ``data.py`` for the data.
"""

from .data import DataConfig, VendorData
from .faults import FAULT_KINDS, FaultConfig, FaultRule
from .paging import STYLES
from .server import ROUTES, VendorConfig, VendorServer, VendorStats

__all__ = [
    "DataConfig",
    "VendorData",
    "FAULT_KINDS",
    "FaultConfig",
    "FaultRule",
    "STYLES",
    "ROUTES",
    "VendorConfig",
    "VendorServer",
    "VendorStats",
]
