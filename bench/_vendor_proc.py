"""The simulated vendor in its own process, for the benchmarks: ``python -m harvester.simulator`` plus a clock.

Same arguments and the same first output line as ``python -m harvester.simulator``. The vendor's own books
(``/_stats``) count per calendar second; the benchmarks also want the exact arrival time of every request
(first-to-last span, sliding 1-second windows), so this wrapper records ``(time.time(), status, level)`` when each
/v1 request arrives (the moment the vendor takes its rate-limit token) and serves the list at
``GET /_bench/times`` (``?clear=1`` empties it). Nothing else changes: the request pipeline is the vendor's.
"""

from __future__ import annotations

import sys
import time

from aiohttp import web

from harvester.simulator import __main__ as vendor_main
from harvester.simulator import server

TIMES: list[tuple[float, int, str]] = []

_handle = server.VendorApp._handle
_build_app = server.VendorApp._build_app


async def _timed_handle(self, request, route, lister):
    t = time.time()
    response = await _handle(self, request, route, lister)
    # the level a request belongs to: the last alphabetic path segment (/v1/datagroups/g1/points -> points)
    level = next((p for p in reversed(request.path.split("/")) if p.isalpha()), "")
    TIMES.append((round(t, 6), response.status, level))
    return response


async def _times(request: web.Request) -> web.Response:
    out = list(TIMES)
    if request.query.get("clear"):
        del TIMES[: len(out)]
    return web.json_response(out)


def _timed_build_app(self) -> web.Application:
    app = _build_app(self)
    app.router.add_get("/_bench/times", _times)
    return app


server.VendorApp._handle = _timed_handle
server.VendorApp._build_app = _timed_build_app

if __name__ == "__main__":
    sys.exit(vendor_main.main(sys.argv[1:]))
