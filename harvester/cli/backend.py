"""Where the commands act: the local engine (moto, state folder) or the deployed stack (found from its CloudFormation
outputs). Both are the same `Backend`: boto3 clients, the ledger, the bucket and the `live` aliases; the commands
never ask which one they have, except for what only one mode can do (stop a local fleet, the state folder path)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvester.cli.codes import BadInput
from harvester.ledger import Ledger

#: the stack outputs the CLI reads (stacks/harvester_stack.py `_outputs`); the first three it cannot do without
REQUIRED_OUTPUTS = ("StateMachineAliasArn", "BucketName", "LedgerTableName")
OPTIONAL_OUTPUTS = ("QueryStateMachineAliasArn", "Sources")

#: the app's stack name (stacks/app.py), unless HARVESTER_STACK_NAME or --stack says otherwise
DEFAULT_STACK = "Harvester"
DEFAULT_STATE = Path("harvest-state")


@dataclass
class Backend:
    sfn: Any
    s3: Any
    ledger: Ledger
    bucket: str
    harvest_arn: str | None = None  # the harvest workflow's `live` alias
    query_arn: str | None = None  # the query workflow's `live` alias
    where: str = ""  # for messages: "stack Harvester (eu-west-1)" or "state folder harvest-state"
    resume_flags: str = ""  # what `harvest resume RUN_ID` needs to reach the same place
    outputs: dict[str, str] = field(default_factory=dict)
    region: str = "us-east-1"  # where the prices of a run's cost are taken (the local engine: us-east-1)
    poll: float = 2.0  # seconds between two looks at a running execution
    stop: Callable[[str, str, str], None] | None = None  # local only: stop the execution and its worker fleet

    def start(self, execution_input: dict[str, Any], name: str | None = None) -> str:
        return self.sfn.start_execution(stateMachineArn=self.harvest_arn, name=name or uuid.uuid4().hex,
                                        input=_json(execution_input))["executionArn"]

    def describe(self, arn: str) -> dict[str, Any]:
        desc = self.sfn.describe_execution(executionArn=arn)
        if desc["status"] == "SUCCEEDED" and "output" not in desc:  # moto sets the output a moment later
            time.sleep(self.poll)
            desc = self.sfn.describe_execution(executionArn=arn)
        return desc

    def run_item(self, run_id: str, source: str | None = None) -> dict[str, Any]:
        """The run item of RUN_ID (of SOURCE, or of whichever source has it); BadInput when there is none."""
        if source:
            run = self.ledger.get_run(source, run_id)
            if run is None:
                raise BadInput(f"no run {run_id!r} of source {source!r} in {self.where}")
            return run
        found = self.ledger.find_runs(run_id)
        if not found:
            raise BadInput(f"no run {run_id!r} in {self.where} (`harvest runs` lists the sources, "
                           "`harvest runs SOURCE` their runs)")
        if len(found) > 1:
            names = ", ".join(sorted(r["source"] for r in found))
            raise BadInput(f"run id {run_id!r} exists for several sources ({names}): add --source")
        return self.ledger.get_run(found[0]["source"], run_id) or found[0]  # the GSI copy may lag: read the item


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# --- the deployed stack ---------------------------------------------------------------------------------------
def stack_outputs(session, stack: str) -> dict[str, str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        stacks = session.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        raise BadInput(f"stack {stack!r}: {exc.response['Error'].get('Message', exc)} (deploy it with "
                       "`npx cdk deploy`, or name it with --stack / HARVESTER_STACK_NAME, its region with "
                       "--region)") from None
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable
        raise BadInput(f"stack {stack!r}: {exc} (set --profile/--region or AWS_PROFILE/AWS_REGION, or use "
                       "--local)") from None
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def aws_backend(stack: str | None, region: str | None, profile: str | None) -> Backend:
    """The deployed stack, found from its CloudFormation outputs (stacks/harvester_stack.py `_outputs`)."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    stack = stack or os.environ.get("HARVESTER_STACK_NAME") or DEFAULT_STACK
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound as exc:
        raise BadInput(str(exc)) from None
    outputs = stack_outputs(session, stack)
    missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
    if missing:
        raise BadInput(f"stack {stack!r} has no output {', '.join(missing)}: is it a harvester stack?")
    flags = " ".join(f"--{k} {v}" for k, v in (("stack", stack), ("region", region), ("profile", profile))
                     if v and not (k == "stack" and v == DEFAULT_STACK))
    return Backend(
        sfn=session.client("stepfunctions"),
        s3=session.client("s3"),
        ledger=Ledger(session.resource("dynamodb").Table(outputs["LedgerTableName"])),
        bucket=outputs["BucketName"],
        harvest_arn=outputs["StateMachineAliasArn"],
        query_arn=outputs.get("QueryStateMachineAliasArn"),
        where=f"stack {stack} ({session.region_name})",
        resume_flags=flags,
        outputs=outputs,
        region=session.region_name or "us-east-1",
    )


# --- the local engine -----------------------------------------------------------------------------------------
def engine_backend(engine, state: Path) -> Backend:
    """A running LocalEngine as a Backend (its moto clients, its aliases)."""
    from harvester.local.engine import BUCKET

    def stop(arn: str, error: str, cause: str) -> None:
        engine.stop(arn, error=error, cause=cause)

    return Backend(sfn=engine.sfn, s3=engine.s3, ledger=engine.ledger, bucket=BUCKET,
                   harvest_arn=engine.alias_arn, query_arn=engine.query_alias_arn,
                   where=f"state folder {state}", resume_flags=f"--local --state {state}", poll=0.5, stop=stop)


@contextmanager
def local_reader(state: Path) -> Iterator[Backend]:
    """The state folder's ledger in moto, for the commands that only read (runs, status, failures): no lock, no
    workflow, no bucket copy, so it works during a run in the same folder."""
    import boto3
    from moto import mock_aws

    from harvester.ledger import create_table_kwargs
    from harvester.local.engine import BUCKET, REGION, TABLE
    from harvester.local.state import LocalState

    folder = LocalState(state)
    if not (folder.ledger_db.exists() or (state / "ledger.jsonl").exists()):
        raise BadInput(f"no local ledger at {folder.ledger_db} (run `harvest run --local SPEC` first, or give --state)")
    items = folder.typed_items()  # StateError (exit 4) names a damaged file
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"})
    os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        with mock_aws():
            dynamodb = boto3.client("dynamodb", region_name=REGION)
            dynamodb.create_table(**create_table_kwargs(TABLE))
            for start in range(0, len(items), 25):
                dynamodb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": i}} for i in items[start:start + 25]]})
            table = boto3.resource("dynamodb", region_name=REGION).Table(TABLE)
            s3 = boto3.client("s3", region_name=REGION)
            s3.create_bucket(Bucket=BUCKET)
            for spec in folder.bucket_dir.glob("runs/*/*/spec.json"):  # what status and failures name levels by
                s3.put_object(Bucket=BUCKET, Key=spec.relative_to(folder.bucket_dir).as_posix(), Body=spec.read_bytes())
            yield Backend(sfn=None, s3=s3, ledger=Ledger(table), bucket=BUCKET,
                          where=f"state folder {state}", resume_flags=f"--local --state {state}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
