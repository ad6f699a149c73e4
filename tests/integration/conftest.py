"""Shared parts of the end-to-end tests: the simulated vendor on loopback and the local engine on moto."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from harvester.local.engine import LocalEngine
from harvester.simulator.server import VendorServer
from harvester.spec import load_spec

API_KEY = "e2e-key"


@pytest.fixture
def vendor_factory():
    servers = []

    def make(**options) -> VendorServer:
        server = VendorServer(api_key=API_KEY, **options).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


def write_spec(tmp_path: Path, vendor: VendorServer, levels: list[dict], **top) -> Path:
    """A spec file for `vendor`; the key goes in through the environment, as a user would do it."""
    os.environ["E2E_API_KEY"] = API_KEY
    spec = {
        "name": top.pop("name", "e2e"),
        "base_url": vendor.url + "/v1",
        "auth": top.pop("auth", {"type": "header", "name": "X-Api-Key", "env": "E2E_API_KEY"}),
        "max_concurrency": top.pop("max_concurrency", 3),
        "levels": levels,
        **top,
    }
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def engine(tmp_path):
    """A local engine with its own state folder, and a helper to add a spec file."""
    with LocalEngine(tmp_path / "state") as eng:
        def add(path: Path):
            spec = load_spec(path)
            eng.add_source(path, spec)
            return spec

        eng.add = add  # type: ignore[attr-defined]
        yield eng


def demo_levels(pagination=None, warriors_path="/troops/{troop.id}/warriors", warriors_params=None):
    """The vendor's four levels with the given pagination per level (spec form)."""
    p = {
        "troops": {"type": "page_number", "page_param": "page", "size_param": "per_page", "size": 5, "total_path": "total"},
        "warriors": {"type": "offset", "limit": 7, "total_path": "total"},
        "datagroups": {"type": "cursor", "cursor_path": "next_cursor", "size_param": "limit", "size": 3},
        "points": {"type": "link_header", "size_param": "limit", "size": 40},
        **(pagination or {}),
    }
    records = {"page_number": "data", "offset": "items", "cursor": "results", "next_url": "data",
               "link_header": "$", "none": "$"}
    return [
        {"name": "troops", "alias": "troop", "path": "/troops", "records": records[p["troops"]["type"]],
         "primary_key": "id", "pagination": p["troops"]},
        {"name": "warriors", "alias": "warrior", "path": warriors_path, "params": warriors_params or {},
         "records": records[p["warriors"]["type"]], "primary_key": "id", "pagination": p["warriors"], "batch_size": 4},
        {"name": "datagroups", "alias": "datagroup", "path": "/warriors/{warrior.id}/datagroups",
         "records": records[p["datagroups"]["type"]], "primary_key": "id", "pagination": p["datagroups"], "batch_size": 6},
        {"name": "points", "path": "/datagroups/{datagroup.id}/points", "records": records[p["points"]["type"]],
         "pagination": p["points"], "batch_size": 8, "time_field": "ts"},
    ]
