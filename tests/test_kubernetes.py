"""docs/kubernetes.yaml against the Kubernetes API's object models (the
official Python client's), and against what the trainer expects."""

import json
import os
import re

import pytest

kubernetes = pytest.importorskip("kubernetes", reason="pip install -r requirements-dev.txt")
yaml = pytest.importorskip("yaml")

from conftest import REPO  # noqa: E402

import main  # noqa: E402

MANIFEST = os.path.join(REPO, "docs", "kubernetes.yaml")
MODELS = {
    "Service": "V1Service",
    "Job": "V1Job",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
}


def documents():
    with open(MANIFEST) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def test_every_document_is_a_valid_object_and_nothing_is_dropped():
    client = kubernetes.client.ApiClient()
    for doc in documents():
        model = client.deserialize(json.dumps(doc), MODELS[doc["kind"]], "application/json")
        back = client.sanitize_for_serialization(model)
        # A misspelt or misplaced field is dropped by the model: the round trip shows it.
        assert back == doc, f"{doc['kind']}: fields the API does not know"


def job():
    return next(d for d in documents() if d["kind"] == "Job")


def test_the_job_survives_evictions_and_retries_only_what_may_succeed():
    spec = job()["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    codes = {r["action"]: r["onExitCodes"]["values"] for r in rules if "onExitCodes" in r}
    assert codes == {"FailJob": [2], "Ignore": [129, 130, 143]}
    assert any(c["type"] == "DisruptionTarget" for r in rules for c in r.get("onPodConditions", []))
    for key in ("backoffLimitPerIndex", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert key in spec
    service = next(d for d in documents() if d["kind"] == "Service")
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_the_containers_flags_are_the_trainers():
    container = job()["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent" and not container["image"].endswith(
        ":latest"
    )
    env = {e["name"] for e in container["env"]} | {"JOB_COMPLETION_INDEX"}
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: "0" if m.group(1) in env else m.group(0), a)
        for a in container["args"]
    ]
    assert not [a for a in args if "$(" in a], "an unknown variable in the args"
    parsed = main.build_parser().parse_args(args)
    assert parsed.nnodes == "1:2" and parsed.resume and parsed.max_restarts > 0
    assert parsed.rdzv_endpoint.startswith("mnist-hogwild-0.mnist-hogwild:")
