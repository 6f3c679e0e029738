"""ops/ checked with real tools: promtool for the rules, Kubernetes schemas for the manifests, and every
metric named in the rules and the dashboard defined in topology/metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from marketswarm.agents import catalog
from marketswarm.topology.metrics import Metrics

OPS = Path(__file__).resolve().parents[3] / "ops"
METRIC = re.compile(r"\bmarketswarm_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def defined_metrics() -> set[str]:
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        for sample in family.samples:
            names.add(sample.name)
    return names


def used_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for path in [*OPS.glob("alerts/*.yml"), *OPS.glob("dashboards/*.json")]:
        for name in METRIC.findall(path.read_text()):
            base = name
            for suffix in SUFFIXES:
                base = base.removesuffix(suffix)
            used.setdefault(base, set()).add(path.name)
    return used


def test_every_metric_in_rules_and_dashboards_exists() -> None:
    defined = defined_metrics()
    used = used_metrics()
    assert len(used) > 10
    missing = {m: files for m, files in used.items() if m not in defined}
    assert not missing, missing


@pytest.mark.timeout(600)  # the first run may install promtool
def test_alert_rules_pass_promtool(debian_tools: Callable[[str, str], str]) -> None:
    rules = sorted(OPS.glob("alerts/*.yml"))
    promtool = debian_tools("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "rules", *map(str, rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    names = {r["alert"] for g in yaml.safe_load(rules[0].read_text())["groups"] for r in g["rules"]}
    assert {"MarketSwarmLagGrowing", "MarketSwarmModelStale", "MarketSwarmDeadLetters"} <= names
    assert {"MarketSwarmWebSocketDisconnected", "MarketSwarmChainPollerFailing"} <= names


def manifests() -> list[tuple[Path, dict]]:  # type: ignore[type-arg]
    docs = []
    for path in sorted((OPS / "k8s").rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    checked = 0
    for _, doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked by test_keda_scales_every_stateless_agent
        kubernetes_validate.validate(doc, "1.30", strict=True)
        checked += 1
    assert checked > 20


def test_every_agent_has_a_deployment_with_probes_and_a_drain_period() -> None:
    deployments = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "Deployment"}
    for spec in catalog.agents():
        d = deployments[f"marketswarm-{spec.name.replace('.', '-')}"]
        pod = d["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["args"] == ["agent", spec.name]
        assert container["livenessProbe"]["exec"]["command"] == ["marketswarm", "check", spec.name]
        assert "--ready" in container["readinessProbe"]["exec"]["command"]
        assert pod["terminationGracePeriodSeconds"] > 10  # > MARKETSWARM_SHUTDOWN_GRACE_S
        assert container["resources"]["requests"]["cpu"]
        assert d["spec"]["replicas"] >= (2 if spec.stateful else 1)  # stateful: a standby holds no lease
    gateway = deployments["marketswarm-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    kinds = {d["kind"] for _, d in manifests()}
    assert {"Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ScaledObject"} <= kinds


def test_keda_scales_every_stateless_agent() -> None:
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for _, d in manifests() if d["kind"] == "ScaledObject"}
    for spec in catalog.agents():
        name = f"marketswarm-{spec.name.replace('.', '-')}"
        if spec.stateful:
            assert name not in scaled  # one owner per underlying: more replicas would only stand by
            continue
        triggers = scaled[name]["spec"]["triggers"]
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {spec.name}
        assert all(t["type"] == "redis-streams" and int(t["metadata"]["lagCount"]) > 0 for t in triggers)


def test_kustomization_lists_every_file_and_renders_when_a_tool_exists(tmp_path: Path) -> None:
    base = OPS / "k8s" / "base"
    listed = set(yaml.safe_load((base / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    tool = shutil.which("kubectl") or shutil.which("kustomize")
    if tool is None:
        return  # no renderer on this machine; the listing above is what it would read
    tree = tmp_path / "k8s"
    shutil.copytree(OPS / "k8s", tree)
    for example in tree.glob("overlays/*/*.env.example"):  # what a user creates from the examples
        shutil.copy(example, example.with_suffix(""))
    for root in [tree / "base", *sorted((tree / "overlays").iterdir())]:
        cmd = [tool, "kustomize", str(root)] if tool.endswith("kubectl") else [tool, "build", str(root)]
        rendered = subprocess.run(cmd, capture_output=True, text=True)
        assert rendered.returncode == 0, f"{root.name}: {rendered.stderr}"
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        assert {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"} == {
            "marketswarm-secrets",
            "marketswarm-redis",
        }


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads((OPS / "dashboards" / "marketswarm.json").read_text())
    assert dash["panels"] and all(p["targets"] for p in dash["panels"])
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("lag", "latency", "errors", "events in"):
        assert word in titles


def test_cluster_overlay_reads_lag_from_whichever_node_holds_each_stream() -> None:
    overlay = yaml.safe_load((OPS / "k8s" / "overlays" / "cluster" / "kustomization.yaml").read_text())
    patched = {p["target"]["name"]: yaml.safe_load(p["patch"]) for p in overlay["patches"]}
    config = {op["path"]: op["value"] for op in patched["marketswarm-config"]}
    assert config["/data/MARKETSWARM_MIN_REPLICAS_ACK"] == "1"
    urls = {op["path"]: op["value"] for op in patched["marketswarm-redis"]}
    assert urls == {f"/stringData/{role}": "redis://valkey-cluster:6379/0" for role in ("source", "agent", "gateway")}
    base = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "ScaledObject" and "k8s/base" in str(_)}
    for name, doc in base.items():
        [op] = patched[name]
        triggers = op["value"]
        assert {t["metadata"]["stream"] for t in triggers} == {t["metadata"]["stream"] for t in doc["spec"]["triggers"]}
        for t in triggers:
            assert t["type"] == "redis-cluster-streams" and len(t["metadata"]["addresses"].split(",")) >= 3


ROLES = {"source": "ms-source", "agent": "ms-agent", "gateway": "ms-gateway"}


def test_redis_urls_come_from_a_secret_one_least_privilege_user_per_role() -> None:
    docs = manifests()
    for _, doc in docs:
        if doc["kind"] == "ConfigMap":  # a URL may carry a password: never in a ConfigMap
            assert not [k for k in doc.get("data", {}) if re.search(r"URL|TOKEN|KEY|PASSWORD", k)], doc["data"]
    [secret] = [d for _, d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "marketswarm-redis"]
    assert set(secret["stringData"]) == set(ROLES)
    users = {line.split()[1] for line in (OPS / "redis" / "users.acl").read_text().splitlines() if line.strip()}
    assert set(ROLES.values()) <= users
    example = (OPS / "k8s" / "overlays" / "example" / "redis.env.example").read_text()
    for role, user in ROLES.items():
        assert f"{role}=redis://{user}:" in example
    deployments = [d for _, d in docs if d["kind"] == "Deployment"]
    assert len(deployments) >= 12
    for d in deployments:
        [container] = d["spec"]["template"]["spec"]["containers"]
        [url] = [e for e in container["env"] if e["name"] == "MARKETSWARM_REDIS_URL"]
        ref = url["valueFrom"]["secretKeyRef"]
        args = container["args"]
        role = "agent" if args[0] in ("agent", "alerts") else args[0]  # the courier reads and writes as an agent
        assert ref == {"name": "marketswarm-redis", "key": role}, d["metadata"]["name"]


def test_an_age_is_never_negative() -> None:
    from marketswarm.ops.inspection import age_s

    now_ms = 1_800_000_000_000
    assert age_s(now_ms, (now_ms - 1500) * 1_000_000) == 1.5
    assert age_s(now_ms, (now_ms + 86_400_000) * 1_000_000) == 0.0  # event time ahead of this clock


def test_the_gateway_manifest_cannot_start_open_to_the_network() -> None:
    """It binds beyond loopback and takes its token from the Secret, whose placeholder is empty: with
    the base as it ships, the gateway refuses to start; with a token from an overlay, it starts."""
    from pydantic import SecretStr

    from marketswarm.agents.gateway.access import ExposedWithoutTokenError, check_exposure
    from marketswarm.topology.settings import Settings

    docs = manifests()
    [gw] = [d for _, d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "marketswarm-gateway"]
    env = {e["name"]: e for e in gw["spec"]["template"]["spec"]["containers"][0]["env"]}
    host = env["MARKETSWARM_GATEWAY_HOST"]["value"]
    assert env["MARKETSWARM_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "marketswarm-secrets",
        "key": "MARKETSWARM_API_TOKEN",
    }
    assert "MARKETSWARM_GATEWAY_NO_AUTH" not in env
    [secret] = [d for _, d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "marketswarm-secrets"]
    placeholder = secret["stringData"]["MARKETSWARM_API_TOKEN"]
    with pytest.raises(ExposedWithoutTokenError):
        check_exposure(Settings(gateway_host=host, api_token=SecretStr(placeholder)))
    check_exposure(Settings(gateway_host=host, api_token=SecretStr("from-the-overlay")))
