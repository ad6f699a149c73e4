"""Run the simulated vendor standalone: ``python -m harvester.simulator --port 8080 --rate 20 --burst 5``.

Prints one line ``vendor listening on http://127.0.0.1:PORT`` (flushed) once it accepts connections,
so scripts can wait for it, then serves until interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from .data import DataConfig
from .server import DEFAULT_PAGINATION, VendorServer, vendor_config

#: the name usage lines and errors give the command; `harvest vendor` passes its own
PROG = "python -m harvester.simulator"


def _pagination(text: str) -> dict[str, str]:
    """``troops=page,points=link`` -> {"troops": "page", "points": "link"}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError("expected route=style[,route=style...]")
    return {route.strip(): style.strip() for route, style in pairs}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run the simulated vendor standalone (until Ctrl-C or "
                                "SIGTERM): it prints `vendor listening on URL` once it accepts connections.",
                                epilog=f"example: {prog} --port 8080 --rate 20 --burst 5")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 = any free port")
    p.add_argument("--troops", type=int, default=DataConfig.troops)
    p.add_argument("--warriors-per-troop", type=int, default=DataConfig.warriors_per_troop)
    p.add_argument("--datagroups-per-warrior", type=int, default=DataConfig.datagroups_per_warrior)
    p.add_argument("--points-per-datagroup", type=int, default=DataConfig.points_per_datagroup)
    p.add_argument("--seed", type=int, default=DataConfig.seed)
    p.add_argument("--interval-seconds", type=int, default=DataConfig.interval_seconds)
    p.add_argument("--variation", type=float, default=DataConfig.variation)
    p.add_argument("--rate", type=float, default=None, help="requests/s per key (default: unlimited)")
    p.add_argument("--burst", type=int, default=5)
    p.add_argument("--retry-after", choices=("int", "float", "none"), default="int")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--api-key", default="test-key")
    p.add_argument("--auth", choices=("header", "bearer", "query", "none"), default="header")
    p.add_argument("--pagination", type=_pagination, default={},
                   help=f"route=style,... (default {','.join(f'{k}={v}' for k, v in DEFAULT_PAGINATION.items())})")
    p.add_argument("--page-size", type=int, default=None, help="default page size for every route")
    return p


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    # every other option is a VendorConfig or DataConfig field of the same name; None: the config's default
    options = {k: v for k, v in vars(args).items() if k not in ("host", "port") and v is not None}
    config = vendor_config(**options)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with VendorServer(config, host=args.host, port=args.port) as server:
        print(f"vendor listening on {server.url} counts={server.data.counts()}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
