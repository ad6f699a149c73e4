"""Build the CDK app once per test session, without bundling (no pip, no Docker) and without cdk-nag."""

from __future__ import annotations

import pytest

from .helpers import HarvesterApp, make_app, render_definition


def pytest_configure(config):
    config.addinivalue_line("markers", "packaging: builds the real Lambda bundles with pip (needs PyPI, ~1 minute)")


@pytest.fixture(scope="session")
def harvester_app() -> HarvesterApp:
    from aws_cdk.assertions import Template

    app, stack = make_app()
    template = Template.from_stack(stack)
    cfn = template.to_json()
    harvest = cfn["Resources"][stack.get_logical_id(stack.state_machine.node.default_child)]
    return HarvesterApp(app=app, stack=stack, template=template, cfn=cfn, definition=render_definition(harvest))
