// Test-time only (AGPL-3.0 devDependency, never bundled): @cloud-copilot/iam-simulate behind a JSON-lines pipe.
// request line: {"policies": [policyDoc, ...], "action": "s3:GetObject", "resource": arn, "account": "123456789012",
//                "principal": arn, "context": {"s3:prefix": "raw/"}}
// answer line:  {"result": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "error", "errors"?: ...}
import { runSimulation } from '@cloud-copilot/iam-simulate'
import readline from 'node:readline'

async function evaluate(req) {
  const simulation = {
    request: {
      principal: req.principal,
      action: req.action,
      resource: { resource: req.resource, accountId: req.account },
      contextVariables: req.context || {},
    },
    identityPolicies: req.policies.map((policy, i) => ({ name: `p${i}`, policy })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
  }
  const r = await runSimulation(simulation, { simulationMode: 'Strict' })
  if (r.resultType === 'error') return { result: 'error', errors: r.errors }
  return { result: r.overallResult }
}

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  let answer
  try {
    answer = await evaluate(JSON.parse(line))
  } catch (e) {
    answer = { result: 'exception', message: String(e) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
