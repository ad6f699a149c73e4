"""The IAM model of a local run, read from the template `cdk synth` makes of this very app.

The app is synthesized in-process (cdk-nag off, bundling skipped) with the stack name `harvester`, so the state
machines get the local engine's names (`harvester-harvest`, `harvester-query`); every CloudFormation intrinsic
in the policies (Ref, Fn::GetAtt, Fn::Join, Fn::Sub, Fn::Select, Fn::Split and the pseudo parameters) is then
resolved to the local engine's resource names and ARNs. The result (one JSON file) is cached under
`~/.cache/harvester/iam/` (or `$HARVESTER_CACHE_DIR/iam/`), keyed by a hash of everything the template depends
on, so a local run pays the ~10 s synth only when the app changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
#: everything the synthesized policies depend on (files or folders, relative to the repository root)
INPUTS = ("stacks", "statemachines", "sources", "cdk.json", "lambdas/requirements", "app.py",
          "harvester/definition.py", "harvester/functions.py", "harvester/local/iam/policies.py")
#: the stack name that gives the state machines the local engine's names (`{stack}-harvest`)
STACK_NAME = "harvester"


@dataclass
class IamModel:
    """Who may do what in a local run: role -> its identity policies, and who acts as which role."""

    roles: dict[str, list[dict]]
    functions: dict[str, str]  # function short name (plan, fetch, ...) -> role
    state_machines: dict[str, str]  # state machine name -> role
    resource_policies: dict[str, list[dict]] = field(default_factory=dict)  # bucket/topic/queue ARN -> policies
    schedules: list[dict] = field(default_factory=list)  # {"name", "target", "input", "role"} as synthesized
    alarms: list[str] = field(default_factory=list)  # ARNs of the alarms that publish to the alarm topic
    alarm_topic: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_file(cls, path: str | Path) -> IamModel:
        return cls(**json.loads(Path(path).read_text()))


# ------------------------------------------------------------------------------------------------------------
# intrinsics -> local names
# ------------------------------------------------------------------------------------------------------------
class Resolver:
    """Resolves the intrinsics of one template to the local engine's resource names."""

    def __init__(self, template: dict, names: dict[str, str], function_names: dict[str, str]):
        """`names`: REGION, ACCOUNT, BUCKET, TABLE of the engine; `function_names`: logical id -> local name."""
        self.resources = template["Resources"]
        self.region, self.account = names["REGION"], names["ACCOUNT"]
        self.names = names
        self.function_names = function_names
        self.pseudo = {"AWS::Partition": "aws", "AWS::Region": self.region, "AWS::AccountId": self.account,
                       "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": STACK_NAME, "AWS::NoValue": None,
                       "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account}:stack/{STACK_NAME}/"
                                       "0a1b2c3d-0000-4000-8000-000000000000"}

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"

    def attribute(self, lid: str, attr: str = "Ref") -> Any:
        res = self.resources[lid]
        kind, props = res["Type"], res.get("Properties", {})
        if kind == "AWS::S3::Bucket":
            name = self.names["BUCKET"] if lid == self.names["DATA_BUCKET_ID"] else f"{self.names['BUCKET']}-{lid.lower()}"
            return {"Ref": name, "Arn": f"arn:aws:s3:::{name}"}.get(attr, name)
        if kind == "AWS::DynamoDB::Table":
            return {"Ref": self.names["TABLE"]}.get(attr, self.arn("dynamodb", f"table/{self.names['TABLE']}"))
        if kind == "AWS::Lambda::Function":
            name = self.function_names[lid]
            return name if attr == "Ref" else self.arn("lambda", f"function:{name}")
        if kind in ("AWS::Lambda::Alias", "AWS::Lambda::Version"):
            function = self.resolve(props["FunctionName"])
            base = function if function.startswith("arn:") else self.arn("lambda", f"function:{function}")
            return f"{base}:{props.get('Name', '1')}"
        if kind == "AWS::StepFunctions::StateMachine":
            name = self.resolve(props["StateMachineName"])
            return name if attr == "Name" else self.arn("states", f"stateMachine:{name}")
        if kind in ("AWS::StepFunctions::StateMachineVersion", "AWS::StepFunctions::StateMachineAlias"):
            machine = self.resolve(props.get("StateMachineArn") or
                                   props["RoutingConfiguration"][0]["StateMachineVersionArn"]).rsplit(":", 1)
            base = machine[0] if kind.endswith("Alias") else ":".join(machine)
            return f"{base}:{props['Name']}" if kind.endswith("Alias") else f"{base}:1"
        if kind == "AWS::IAM::Role":
            return lid if attr == "Ref" else f"arn:aws:iam::{self.account}:role/{lid}"
        if kind == "AWS::SNS::Topic":
            return lid if attr == "TopicName" else self.arn("sns", lid)
        if kind == "AWS::SQS::Queue":
            url = f"https://sqs.{self.region}.amazonaws.com/{self.account}/{lid}"
            return {"Ref": url, "QueueName": lid, "QueueUrl": url}.get(attr, self.arn("sqs", lid))
        if kind == "AWS::SecretsManager::Secret":
            return self.arn("secretsmanager", f"secret:{self.resolve(props.get('Name', lid))}-AbCdEf")
        if kind == "AWS::Logs::LogGroup":
            name = self.resolve(props.get("LogGroupName", lid))
            return name if attr == "Ref" else self.arn("logs", f"log-group:{name}:*")
        if kind == "AWS::CloudWatch::Alarm":
            return lid if attr == "Ref" else self.arn("cloudwatch", f"alarm:{lid}")
        if kind == "AWS::KMS::Key":
            return lid if attr in ("Ref", "KeyId") else self.arn("kms", f"key/{lid}")
        return lid if attr == "Ref" else self.arn(kind.split("::")[1].lower(), lid)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(x) for x in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return self.pseudo[value] if value in self.pseudo else self.attribute(value)
            if key == "Fn::GetAtt":
                lid, attr = value if isinstance(value, list) else value.split(".", 1)
                return self.attribute(lid, attr)
            if key == "Fn::Join":
                return value[0].join(str(self.resolve(x)) for x in self.resolve(value[1]))
            if key == "Fn::Select":
                return self.resolve(value[1])[int(self.resolve(value[0]))]
            if key == "Fn::Split":
                return str(self.resolve(value[1])).split(value[0])
            if key == "Fn::Sub":
                return self._sub(value)
        return {k: self.resolve(v) for k, v in node.items()}

    def _sub(self, value: Any) -> str:
        text, extra = (value, {}) if isinstance(value, str) else (value[0], self.resolve(value[1]))

        def one(match: re.Match) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in extra:
                return str(extra[name])
            if name in self.pseudo:
                return str(self.pseudo[name])
            lid, _, attr = name.partition(".")
            return str(self.attribute(lid, attr or "Ref"))

        return re.sub(r"\$\{([^}]+)\}", one, text)


# ------------------------------------------------------------------------------------------------------------
# template -> model
# ------------------------------------------------------------------------------------------------------------
def _of_type(template: dict, kind: str) -> list[tuple[str, dict]]:
    return [(lid, r.get("Properties", {})) for lid, r in template["Resources"].items() if r["Type"] == kind]


def _role_of(value: Any) -> str:
    """The role logical id in a `Fn::GetAtt [Role, Arn]`."""
    return value["Fn::GetAtt"][0]


def build_model(template: dict, names: dict[str, str], function_names: dict[str, str]) -> IamModel:
    """`function_names`: the Lambda functions' logical id -> local function name (`harvester-fetch`)."""
    r = Resolver(template, names, function_names)
    roles: dict[str, list[dict]] = {lid: [] for lid, _ in _of_type(template, "AWS::IAM::Role")}
    for lid, props in _of_type(template, "AWS::IAM::Role"):
        roles[lid] += [r.resolve(p["PolicyDocument"]) for p in props.get("Policies", [])]
    for _, props in _of_type(template, "AWS::IAM::Policy"):
        for role in props.get("Roles", []):
            roles[role["Ref"]].append(r.resolve(props["PolicyDocument"]))
    functions = {function_names[lid].removeprefix("harvester-"): _role_of(props["Role"])
                 for lid, props in _of_type(template, "AWS::Lambda::Function") if lid in function_names}
    machines = {r.resolve(props["StateMachineName"]): _role_of(props["RoleArn"])
                for _, props in _of_type(template, "AWS::StepFunctions::StateMachine")}
    resource_policies: dict[str, list[dict]] = {}
    for _, props in _of_type(template, "AWS::S3::BucketPolicy"):
        bucket = r.resolve(props["Bucket"])
        resource_policies.setdefault(f"arn:aws:s3:::{bucket}", []).append(r.resolve(props["PolicyDocument"]))
    for _, props in _of_type(template, "AWS::SNS::TopicPolicy"):
        for topic in props["Topics"]:
            resource_policies.setdefault(r.resolve(topic), []).append(r.resolve(props["PolicyDocument"]))
    schedules = [{"name": lid, "target": r.resolve(p["Target"]["Arn"]), "input": p["Target"].get("Input", "{}"),
                  "role": _role_of(p["Target"]["RoleArn"]), "state": p.get("State", "ENABLED")}
                 for lid, p in _of_type(template, "AWS::Scheduler::Schedule")]
    topics = [lid for lid, _ in _of_type(template, "AWS::SNS::Topic")]
    alarms = [r.attribute(lid, "Arn") for lid, p in _of_type(template, "AWS::CloudWatch::Alarm") if p.get("AlarmActions")]
    return IamModel(roles=roles, functions=functions, state_machines=machines, resource_policies=resource_policies,
                    schedules=schedules, alarms=alarms,
                    alarm_topic=r.attribute(topics[0], "Ref") if topics else None)


def synthesize(extra_context: dict | None = None) -> tuple[dict, dict[str, str], str]:
    """The app's template as `cdk synth` makes it (minus bundling and cdk-nag), in-process; returns (template,
    function logical id -> local name, data bucket logical id)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    import aws_cdk as cdk  # noqa: PLC0415 - only when the cache misses

    from stacks.app import build_app  # noqa: PLC0415

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    context.update({"nag": False, "aws:cdk:bundling-stacks": [], "stackName": STACK_NAME, **(extra_context or {})})
    app = cdk.App(context=context)
    stack = build_app(app)
    template = app.synth().get_stack_by_name(stack.stack_name).template
    functions = {stack.get_logical_id(fn.node.default_child): f"harvester-{name}" for name, fn in stack.functions.items()}
    return template, functions, stack.get_logical_id(stack.bucket.node.default_child)


def _cdk_version() -> str:
    try:
        return metadata.version("aws-cdk-lib")
    except metadata.PackageNotFoundError:
        raise RuntimeError("IAM enforcement of local runs reads the policies of the CDK app: install it with "
                           "`pip install -e '.[cdk]'` (and Node.js for cdk synth), or run with --no-iam") from None


def _deploy_settings() -> list[str]:
    """The environment variables the CDK app reads (HARVESTER_ + each deploy setting), from stacks/settings.py:
    no CDK in it, so importing it does not start the CDK's Node runtime on every local run."""
    from stacks.settings import environment_variables  # noqa: PLC0415 - the app's, next to the package

    return environment_variables()


def inputs_hash() -> str:
    if not (ROOT / "stacks").is_dir():
        raise RuntimeError(f"IAM enforcement of local runs needs the CDK app (stacks/) next to the package, in {ROOT}: "
                           "run from a checkout of the repository, or with --no-iam")
    digest = hashlib.sha256(f"aws-cdk-lib {_cdk_version()}\n".encode())  # the library version is an input too
    # deploy settings from the environment (stacks/config.py reads HARVESTER_<KEY>) shape the template too
    digest.update(repr(sorted((k, os.environ.get(k)) for k in _deploy_settings())).encode())
    for name in INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
        for f in files:
            if f.exists():
                digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def cache_dir() -> Path:
    base = os.environ.get("HARVESTER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "harvester")
    return Path(base) / "iam"


def model_file(names: dict[str, str]) -> Path:
    """The resolved model of this app's current sources for the engine's `names`: from the cache, or synthesized
    and written there (atomically: parallel test runs may race)."""
    key = hashlib.sha256((inputs_hash() + json.dumps(names, sort_keys=True)).encode()).hexdigest()[:24]
    path = cache_dir() / f"model-{key}.json"
    if path.exists():
        return path
    template, functions, bucket_id = synthesize()
    model = build_model(template, {**names, "DATA_BUCKET_ID": bucket_id}, functions)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        out.write(model.to_json())
    os.replace(tmp, path)
    return path
