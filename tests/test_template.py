"""template.yaml: cfn-lint reports nothing, and the deployment keeps the runtime's promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from shared import handoff
from shared.infra import settings
from tests.aws import properties, template
from tests.conftest import ROOT

SECRET_VARIABLES = {
    "AGENT_RUNTIME_SECRET_ARN",
    "LLM_PROXY_SECRET_ARN",
    "MEMORY_ORCHESTRATOR_SECRET_ARN",
    "MESSAGING_SERVICE_SECRET_ARN",
}


def functions() -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def environment(function: str) -> dict[str, Any]:
    shared = template()["Globals"]["Function"]["Environment"]["Variables"]
    return {**shared, **functions()[function].get("Environment", {}).get("Variables", {})}


def test_cfn_lint_reports_nothing():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), "template.yaml"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_sam_python_312_and_the_outputs_operators_need():
    assert template()["Transform"] == "AWS::Serverless-2016-10-31"
    assert template()["Globals"]["Function"]["Runtime"] == "python3.12"
    assert {"ApiUrl", "InvocationQueueUrl"} <= set(template()["Outputs"])
    assert template()["Outputs"]["InvocationQueueUrl"]["Value"] == {"Ref": "InvocationQueue"}


def test_the_queue_feeds_invoke_in_batches_and_outlives_its_timeout():
    [queue_event] = [e for e in functions()["InvokeFunction"]["Events"].values() if e["Type"] == "SQS"]
    assert queue_event["Properties"]["Queue"] == {"Fn::GetAtt": ["InvocationQueue", "Arn"]}
    assert queue_event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert queue_event["Properties"]["BatchSize"] > 1

    queue = properties("InvocationQueue")
    timeout = functions()["InvokeFunction"].get("Timeout", template()["Globals"]["Function"]["Timeout"])
    assert queue["VisibilityTimeout"] > timeout
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert environment("InvokeFunction")["DEAD_LETTER_QUEUE_URL"] == {"Ref": "DeadLetterQueue"}


def test_the_environment_is_one_the_runtime_accepts():
    """Every variable the template sets is a setting the runtime knows, and the deadline fits the timeout."""
    parameters = template()["Parameters"]

    def sample(name: str, value: Any) -> str:
        if name in SECRET_VARIABLES:
            return ""  # resolved from Secrets Manager: tested in test_aws_lambda.py
        return value if isinstance(value, str) else str(parameters.get(value.get("Ref"), {}).get("Default", "x"))

    for function in functions():
        loaded = settings.load({name: sample(name, value) for name, value in environment(function).items()})
        assert loaded.idempotency.backend == "dynamodb"
        timeout = functions()[function].get("Timeout", template()["Globals"]["Function"]["Timeout"])
        if function != "HealthFunction":
            assert loaded.runtime.deadline_s < timeout


def test_secrets_come_from_secrets_manager_never_as_plain_text():
    parameters = template()["Parameters"]
    for function in functions():
        env = environment(function)
        assert SECRET_VARIABLES <= set(env)
        assert not [name for name in env if name.endswith("_SECRET")]  # only ARNs, resolved at run time
        for name in SECRET_VARIABLES:
            assert ":secretsmanager:" in parameters[env[name]["Ref"]]["AllowedPattern"]
    # the public API always has an inbound secret: its ARN is required
    assert "Default" not in parameters["AgentRuntimeSecretArn"]


def statements(function: str) -> list[dict[str, Any]]:
    return [s for policy in functions()[function]["Policies"] for s in policy.get("Statement", [])]


def actions(function: str) -> set[str]:
    return {a for s in statements(function) for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}


def test_policies_are_least_privilege():
    for function in functions():
        assert not any("*" in action for action in actions(function)), function
        assert all(s["Resource"] != "*" for s in statements(function)), function
    assert not any(a.startswith("dynamodb:") for a in actions("HealthFunction"))  # health never claims
    invoke = actions("InvokeFunction")
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "sqs:SendMessage"} <= invoke
    assert not {"dynamodb:Scan", "dynamodb:Query", "dynamodb:GetItem"} & invoke


def test_invoke_hands_off_to_the_invocation_queue_and_only_it_may_send_there():
    """InvokeFunction's handoffs go to InvocationQueue (the sqs sink, its URL from INVOCATION_QUEUE_URL),
    and sending is allowed there and to the dead letters, nowhere else."""
    env = environment("InvokeFunction")
    assert env["AGENT_RUNTIME__HANDOFF__SINK"] == "sqs"
    assert env["INVOCATION_QUEUE_URL"] == {"Ref": "InvocationQueue"}
    loaded = settings.load({**{k: v for k, v in env.items() if isinstance(v, str)}, "INVOCATION_QUEUE_URL": "q"})
    sink = handoff.build(loaded)
    assert sink is not None and sink.name == "sqs" and loaded.handoff.sqs_queue_url == "q"

    sends = [
        s["Resource"]
        for s in statements("InvokeFunction")
        if "sqs:SendMessage" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    ]
    queue, dead_letters = {"Fn::GetAtt": ["InvocationQueue", "Arn"]}, {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert sorted(sends, key=str) == sorted([queue, dead_letters], key=str)
    for function in ("TestChannelFunction", "HealthFunction"):  # no queue to send to: no handoff offered
        assert "AGENT_RUNTIME__HANDOFF__SINK" not in environment(function)
        assert "sqs:SendMessage" not in actions(function)
