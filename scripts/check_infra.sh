#!/usr/bin/env bash
# Infrastructure checks CI runs (and anyone can, offline, without AWS credentials or Docker):
#   1. cdk synth with cdk-nag's AwsSolutions checks: any unacknowledged finding fails the synth (exit 1);
#   2. cfn-lint on every synthesized template (W3005, CDK's redundant DependsOn, is ignored);
#   3. asl-validator on every workflow definition in statemachines/.
# Needs: `pip install -e .[dev]` and `npm ci`. Extra arguments go to `cdk synth` (e.g. -c arch=x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="${JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION:-20}"
export CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true

out="${CDK_OUT:-cdk.out}"
status=0

echo "-- cdk synth (cdk-nag AwsSolutions on) -> $out"
log="$(mktemp)"
if ! npx cdk synth --quiet --output "$out" -c nag=true "$@" >"$log" 2>&1; then
  grep -v '^!!' "$log" >&2 || true
  echo "FAIL: cdk synth (a cdk-nag finding without acknowledgment, or an error above)" >&2
  rm -f "$log"
  exit 1
fi
if grep -q "Acknowledge with" "$log"; then
  grep -B2 "Acknowledge with" "$log" >&2
  echo "FAIL: cdk-nag findings" >&2
  status=1
fi
rm -f "$log"
python3 - "$out" <<'PY'
import json, sys, pathlib
report = pathlib.Path(sys.argv[1]) / "validation-report.json"
if report.exists():
    data = json.loads(report.read_text())
    for plugin in data.get("pluginReports", []):
        print(f"   {plugin['pluginName']}: {plugin['conclusion']}, {len(plugin.get('violations', []))} findings, "
              f"{len(plugin.get('suppressedViolations', []))} acknowledged")
PY

echo "-- cfn-lint"
templates=("$out"/*.template.json)
if ! cfn-lint --ignore-checks W3005 -- "${templates[@]}"; then
  echo "FAIL: cfn-lint" >&2
  status=1
fi

echo "-- asl-validator"
shopt -s nullglob
definitions=(statemachines/*.asl.json statemachines/*.json)
declare -A seen=()
for f in "${definitions[@]}"; do
  [[ -n "${seen[$f]:-}" ]] && continue
  seen[$f]=1
  if ! npx --no-install asl-validator --json-path "$f"; then
    echo "FAIL: asl-validator $f" >&2
    status=1
  fi
done
[[ ${#seen[@]} -gt 0 ]] || { echo "FAIL: no definition in statemachines/" >&2; status=1; }

[[ $status -eq 0 ]] && echo "infrastructure checks passed"
exit $status
