"""helm lint and helm template of every supported variant, and what the rendered objects promise."""

from __future__ import annotations

import base64
import json

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as promv1

from tests.chart.conftest import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    VALUES_DIR,
    VARIANTS,
    Chart,
    Rendered,
    run,
)

COMPONENTS = ("broker", "streamer", "collector", "gateway")
CRD_MODELS = {"ServiceMonitor": promv1.ServiceMonitor, "PrometheusRule": promv1.PrometheusRule}
# kubernetes-validate bundles the schemas; check the oldest supported minor and the newest.
SCHEMA_VERSIONS = ("1.27.0", "1.37.0")


def name(component: str) -> str:
    return f"gputel-{component}"


def lint_args(variant: str) -> list[str]:
    values, sets = VARIANTS[variant]
    args: list[str] = []
    for v in values:
        args += ["-f", str(VALUES_DIR / v)]
    for s in sets:
        args += ["--set-string", s]
    return args


def test_helm_lint_strict(chart: Chart, variant: str) -> None:
    proc = run(
        [
            chart.helm,
            "lint",
            "--strict",
            str(chart.root),
            "--kube-version",
            KUBE_VERSION,
            *lint_args(variant),
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_real_chart_declares_the_influxdb2_dependency(helm: str) -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dep,) = meta["dependencies"]
    assert dep["name"] == "influxdb2"
    assert dep["condition"] == "influxdb2.enabled"
    assert dep["version"] and dep["repository"].startswith("https://")
    # Without the fetched subchart helm lint only warns (offline, this is all it can say).
    proc = run([helm, "lint", str(CHART), "-f", str(VALUES_DIR / "external-secret.yaml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_object_validates_strictly(chart: Chart, variant: str) -> None:
    for obj in chart.render(variant).objects:
        if obj["kind"] in CRD_MODELS:
            continue
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (k8s {version}): {e}")


def _unknown_fields(given: object, known: object, path: str = "") -> list[str]:
    """Keys present in the manifest but absent after a round trip through the typed model."""
    if isinstance(given, dict):
        known = known if isinstance(known, dict) else {}
        out = []
        for k, v in given.items():
            if k not in known:
                out.append(f"{path}.{k}")
            else:
                out += _unknown_fields(v, known[k], f"{path}.{k}")
        return out
    if isinstance(given, list) and isinstance(known, list):
        pairs = zip(given, known, strict=True)
        return [f for g, k in pairs for f in _unknown_fields(g, k, path + "[]")]
    return []


def test_operator_objects_validate_against_the_crd_models(chart: Chart, variant: str) -> None:
    for obj in chart.render(variant).objects:
        model = CRD_MODELS.get(obj["kind"])
        if model is None:
            continue
        parsed = model.model_validate(obj)
        dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
        assert not _unknown_fields(obj, dumped), f"{obj['kind']}: unknown fields"


def test_default_renders_every_component_and_monitoring_object(chart: Chart) -> None:
    r = chart.render("default")
    assert {o["metadata"]["name"] for o in r.of_kind("Deployment")} == {
        name(c) for c in COMPONENTS if c != "broker"
    }
    assert [o["metadata"]["name"] for o in r.of_kind("StatefulSet")] == [name("broker")]
    everyone = {name(c) for c in COMPONENTS}
    assert {o["metadata"]["name"] for o in r.of_kind("ServiceMonitor")} == everyone
    assert {o["metadata"]["name"] for o in r.of_kind("PodDisruptionBudget")} == everyone
    assert len(r.of_kind("PrometheusRule")) == 1
    # NetworkPolicy is on by default (docs/security.md), also for the influxdb2 subchart's pod.
    assert {o["metadata"]["name"] for o in r.of_kind("NetworkPolicy")} == everyone | {
        name("influx-init"),
        name("influxdb2"),
    }


@pytest.mark.parametrize("variant_name", ["default", "scaled"])
def test_broker_statefulset_pvc_headless_service_grpc_probes(
    chart: Chart, variant_name: str
) -> None:
    r = chart.render(variant_name)
    sts = r.get("StatefulSet", name("broker"))
    svc = r.get("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in svc["spec"]["ports"]} == {"grpc", "metrics"}
    pod = sts["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    (c,) = pod["containers"]
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # kubelet's gRPC probe cannot speak TLS (on by default): /metrics answers once serving.
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    assert any(a == f"--listen=0.0.0.0:{grpc_port}" for a in c["args"])
    data_dir = c["args"][c["args"].index("--data-dir") + 1]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == data_dir
    if variant_name == "scaled":
        assert claim["spec"]["storageClassName"] == "fast-ssd"
        assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
        assert "--retention-policy=drop-oldest" in c["args"]
        assert "--retention-bytes=20000000000" in c["args"]
        assert "--partitions=64" in c["args"] and "--fsync=interval" in c["args"]
        assert "--topic=telemetry:64" in c["args"]
    else:
        assert "--topic=telemetry:16" in c["args"] and "--topic=telemetry.dlq:4" in c["args"]
        assert "storageClassName" not in claim["spec"]


def test_every_pod_is_hardened(chart: Chart, variant: str) -> None:
    for where, pod in chart.render(variant).pod_specs():
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc["runAsUser"] != 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in writable, f"{where}: no writable /tmp"


def test_long_running_containers_have_probes(chart: Chart, variant: str) -> None:
    r = chart.render(variant)
    for obj in r.of_kind("Deployment"):
        (c,) = obj["spec"]["template"]["spec"]["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        ports = {p["name"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["port"] in ports


def test_components_get_their_commands_and_broker_address(chart: Chart) -> None:
    r = chart.render("external-secret")
    expected = {
        "streamer": ["gputel-streamer", "--csv=/data/dcgm.csv", "--forever"],
        "collector": ["gputel-collector", "--group=collectors", "--store=influx"],
        "gateway": ["gputel-gateway", "--store=influx", "--bind=0.0.0.0:8080", "--workers=2"],
    }
    for component, args in expected.items():
        (c,) = r.get("Deployment", name(component))["spec"]["template"]["spec"]["containers"]
        assert c["args"][0] == args[0]
        assert set(args) <= set(c["args"]), c["args"]
        assert "command" not in c, "the image's tini entrypoint must stay PID 1"
        if component != "gateway":
            assert f"--broker={name('broker')}:7070" in c["args"]


def test_streamer_in_scrape_mode_scrapes_the_exporters_and_may_reach_them(chart: Chart) -> None:
    r = chart.render("scrape")
    (c,) = r.get("Deployment", name("streamer"))["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert "--targets-dns=nvidia-dcgm-exporter-pods.gpu-operator.svc.cluster.local:9400" in args
    assert "--scrape=http://10.0.0.7:9400/metrics" in args
    assert {
        "--scrape-interval-s=15", "--scrape-timeout-s=4", "--scrape-concurrency=64",
        "--scrape-max-series=50000",
    } <= set(args)  # fmt: skip
    assert not any(a.startswith("--csv") for a in args)
    policy = r.get("NetworkPolicy", name("streamer"))
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]
    assert 9400 in ports
    (c,) = chart.render("external-secret").get("Deployment", name("streamer"))["spec"][
        "template"]["spec"]["containers"]  # fmt: skip
    assert not any(a.startswith("--scrape") or a.startswith("--targets") for a in c["args"])
    failed = chart.template(
        ["external-secret.yaml"], ["streamer.mode=scrape"], ["--set", "streamer.scrape.dns=null"]
    )
    assert failed.returncode != 0 and "needs streamer.scrape.dns" in failed.stderr


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize(
    ("variant_name", "secret", "key", "url"),
    [
        (
            "default",
            "gputel-influxdb2-auth",
            "admin-token",
            f"http://gputel-influxdb2.{NAMESPACE}.svc:80",
        ),
        (
            "external-secret",
            "influx-credentials",
            "gputel-token",
            "https://influxdb.example.internal",
        ),
        ("external-token", "gputel-influx-token", "token", "http://influxdb.example.internal:8086"),
    ],
)
def test_influx_token_always_comes_from_a_secret(
    chart: Chart, variant_name: str, secret: str, key: str, url: str
) -> None:
    r = chart.render(variant_name)
    consumers = [r.get("Deployment", name("collector")), r.get("Deployment", name("gateway"))]
    consumers.append(r.get("Job", "gputel-influx-init"))
    for obj in consumers:
        (c,) = obj["spec"]["template"]["spec"]["containers"]
        env = _env(c)
        ref = env["GPUTEL_INFLUX_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret, "key": key}
        assert "value" not in env["GPUTEL_INFLUX_TOKEN"]
        assert env["GPUTEL_INFLUX_URL"]["value"] == url
    made = [s["metadata"]["name"] for s in r.of_kind("Secret") if "influx" in s["metadata"]["name"]]
    assert made == (["gputel-influx-token"] if variant_name == "external-token" else [])


def test_collector_writes_and_gateway_reads_with_tokens_of_their_own(chart: Chart) -> None:
    """influx.auth.writer / .reader: each component its scoped Secret, the init Job the admin's."""
    sets = [
        "influx.auth.writer.existingSecret=influx-writer",
        "influx.auth.reader.existingSecret=influx-reader",
        "influx.auth.reader.existingSecretKey=read-token",
    ]
    proc = chart.template(["external-secret.yaml"], sets)
    assert proc.returncode == 0, proc.stderr
    r = Rendered([d for d in yaml.safe_load_all(proc.stdout) if d], proc.stdout)
    wanted = {
        ("Deployment", name("collector")): {"name": "influx-writer", "key": "token"},
        ("Deployment", name("gateway")): {"name": "influx-reader", "key": "read-token"},
        ("Job", "gputel-influx-init"): {"name": "influx-credentials", "key": "gputel-token"},
    }
    for (kind, obj_name), ref in wanted.items():
        (c,) = r.get(kind, obj_name)["spec"]["template"]["spec"]["containers"]
        assert _env(c)["GPUTEL_INFLUX_TOKEN"]["valueFrom"]["secretKeyRef"] == ref, obj_name


def test_token_given_on_the_cli_lands_only_in_the_secret(chart: Chart) -> None:
    r = chart.render("external-token")
    token = "TEST-ONLY-token-from-the-cli"
    secret = r.get("Secret", "gputel-influx-token")
    assert secret["stringData"] == {"token": token}
    assert r.text.count(token) == 1


EXTERNAL_WITH_SECRET = ["--set", "influxdb2.enabled=false", "--set", "influx.auth.existingSecret=s"]


@pytest.mark.parametrize(
    ("values", "extra", "message"),
    [
        (["external.yaml"], [], "influx.auth.token (or influx.auth.existingSecret) is required"),
        ([], EXTERNAL_WITH_SECRET, "influx.url is required"),
        (
            [],
            ["--set", "influx.org=other"],
            "influx.org must equal influxdb2.adminUser.organization",
        ),
        (
            [],
            ["--set", "influx.bucket=other"],
            "influx.bucket must equal influxdb2.adminUser.bucket",
        ),
    ],
)
def test_missing_or_inconsistent_settings_fail_with_a_clear_message(
    chart: Chart, values: list[str], extra: list[str], message: str
) -> None:
    proc = chart.template(values, [], extra)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        (["--set", "broker.replicas=2"], "/broker/replicas"),
        (["--set", "broker.fsync=sometimes"], "/broker/fsync"),
        (["--set", "broker.retention.policy=drop-newest"], "/broker/retention/policy"),
        (["--set", "influx.url=influxdb:8086"], "/influx/url"),
        (["--set", "colector.replicas=2"], "colector"),
    ],
)
def test_values_schema_rejects_bad_values(chart: Chart, extra: list[str], path: str) -> None:
    proc = chart.template(["external-secret.yaml"], [], extra)
    assert proc.returncode != 0
    assert path in proc.stderr, proc.stderr


def test_kube_version_below_minimum_is_refused(chart: Chart) -> None:
    proc = chart.template(["external-secret.yaml"], [], ["--kube-version", "1.26.0"])
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or "incompatible" in proc.stderr, proc.stderr


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_pdbs_and_monitors_select_real_pods(chart: Chart, variant: str) -> None:
    r = chart.render(variant)
    pods = [
        (o["metadata"]["name"], o["spec"]["template"])
        for o in r.objects
        if o["kind"] in ("Deployment", "StatefulSet", "Job")
    ]
    for svc in r.of_kind("Service"):
        sel = svc["spec"]["selector"]
        matched = [(n, t) for n, t in pods if _selects(sel, t["metadata"]["labels"])]
        assert len(matched) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in matched[0][1]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    for pdb in r.of_kind("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(_selects(sel, t["metadata"]["labels"]) for _, t in pods), pdb["metadata"]["name"]
    for sm in r.of_kind("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        services = [s for s in r.of_kind("Service") if _selects(sel, s["metadata"]["labels"])]
        assert len(services) == 1, sm["metadata"]["name"]
        (ep,) = sm["spec"]["endpoints"]
        assert ep["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
        assert ep["path"] == "/metrics"
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for np in r.of_kind("NetworkPolicy"):
        sel = np["spec"]["podSelector"]["matchLabels"]
        if np["metadata"]["name"] == name("influxdb2"):  # the subchart's pod: not rendered here
            assert sel == {
                "app.kubernetes.io/name": "influxdb2",
                "app.kubernetes.io/instance": "gputel",
            }
            continue
        assert any(_selects(sel, t["metadata"]["labels"]) for _, t in pods), np["metadata"]["name"]


def test_networkpolicy_variant(chart: Chart) -> None:
    r = chart.render("networkpolicy")
    policies = {p["metadata"]["name"]: p["spec"] for p in r.of_kind("NetworkPolicy")}
    assert set(policies) == {name(c) for c in (*COMPONENTS, "influx-init")}
    broker_in = policies[name("broker")]["ingress"]
    grpc_rule = next(rule for rule in broker_in if rule["ports"][0]["port"] == 7070)
    component = "app.kubernetes.io/component"
    allowed = {p["podSelector"]["matchLabels"][component] for p in grpc_rule["from"]}
    assert allowed == {"streamer", "collector", "gateway", "admin"}
    collector_out = policies[name("collector")]["egress"]
    to_influx = {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    assert to_influx in collector_out
    gateway_in = policies[name("gateway")]["ingress"]
    assert gateway_in[0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress", "Egress"]


def test_scaled_variant_sets_replicas_and_pdb(chart: Chart) -> None:
    r = chart.render("scaled")
    replicas = {o["metadata"]["name"]: o["spec"]["replicas"] for o in r.of_kind("Deployment")}
    assert replicas == {name("streamer"): 4, name("collector"): 6, name("gateway"): 3}
    assert r.get("PodDisruptionBudget", name("collector"))["spec"] == {
        "minAvailable": 4,
        "selector": r.get("Deployment", name("collector"))["spec"]["selector"],
    }
    assert r.get("Service", name("gateway"))["spec"]["type"] == "NodePort"


def test_minimal_variant_has_no_monitoring_objects(chart: Chart) -> None:
    kinds = {o["kind"] for o in chart.render("minimal").objects}
    absent = {"ServiceMonitor", "PrometheusRule", "Job", "PodDisruptionBudget", "ConfigMap"}
    assert kinds.isdisjoint(absent)
    assert {"StatefulSet", "Deployment", "Service"} <= kinds


def test_init_job_is_a_hook_with_its_script(chart: Chart) -> None:
    r = chart.render("external-secret")
    job = r.get("Job", "gputel-influx-init")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    script = r.get("ConfigMap", "gputel-influx-init")["data"]["init.sh"]
    assert "influx bucket create" in script and "influx v1 dbrp create" in script
    env = _env(job["spec"]["template"]["spec"]["containers"][0])
    assert env["CREATE_DBRP"]["value"] == "true"
    assert env["GPUTEL_INFLUX_BUCKET"]["value"] == "gpu"


def test_dashboard_configmap_carries_the_sidecar_label_and_the_json(chart: Chart) -> None:
    maps = chart.render("default").of_kind("ConfigMap")
    (cm,) = [c for c in maps if "dashboard" in c["metadata"]["name"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (body,) = cm["data"].values()
    source = (CHART / "dashboards" / "gputel-pipeline.json").read_text()
    assert json.loads(body) == json.loads(source)


def test_gateway_policy_with_gateway_from_still_admits_prometheus(chart: Chart) -> None:
    # Prometheus scrapes the gateway's /metrics on its HTTP port: restricting the port to
    # gatewayFrom must not shut the metrics peers (the other components' metrics rules) out.
    r = chart.render("networkpolicy")
    policies = {p["metadata"]["name"]: p["spec"] for p in r.of_kind("NetworkPolicy")}
    broker_metrics = next(
        rule for rule in policies[name("broker")]["ingress"] if rule["ports"][0]["port"] == 9101
    )
    port = [{"protocol": "TCP", "port": 8080}]
    gateway_in = policies[name("gateway")]["ingress"]
    assert {"from": broker_metrics["from"], "ports": port} in gateway_in
    assert broker_metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert len(gateway_in) == 2 and all(rule.get("from") for rule in gateway_in)
    # Without gatewayFrom the port is open to anyone, Prometheus included.
    (rule,) = chart.render("default").get("NetworkPolicy", name("gateway"))["spec"]["ingress"]
    assert rule == {"ports": port}


@pytest.mark.parametrize(
    ("sets", "secret", "key"),
    [
        ([], "gputel-api-token", "token"),
        (["auth.existingSecret=my-tokens"], "my-tokens", "api.token"),
    ],
)
def test_gateway_service_monitor_sends_a_token_when_its_metrics_need_one(
    chart: Chart, sets: list[str], secret: str, key: str
) -> None:
    proc = chart.template(["external-secret.yaml"], sets, ["--set", "auth.gatewayMetrics=true"])
    assert proc.returncode == 0, proc.stderr
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceMonitor"}
    gateway = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name("gateway")
    )
    assert "--auth-metrics" in gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    (ep,) = monitors[name("gateway")]["spec"]["endpoints"]
    assert ep["authorization"] == {"type": "Bearer", "credentials": {"name": secret, "key": key}}
    assert ep["scheme"] == "https"
    made = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    assert (secret in made) == (not sets)  # the chart's own api token, or the user's Secret
    for component in ("broker", "streamer", "collector"):
        (ep,) = monitors[name(component)]["spec"]["endpoints"]
        assert "authorization" not in ep
    # Off by default: /metrics is open and the ServiceMonitor sends nothing.
    (ep,) = chart.render("default").get("ServiceMonitor", name("gateway"))["spec"]["endpoints"]
    assert "authorization" not in ep


def test_missing_external_token_suggests_a_secret_not_a_command_line_token(chart: Chart) -> None:
    proc = chart.template(["external.yaml"])
    assert proc.returncode != 0
    assert "set influx.auth.existingSecret=influx-credentials" in proc.stderr, proc.stderr
    assert "--from-file=token=/dev/stdin" in proc.stderr
    assert "--set influx.auth.token" not in proc.stderr


@pytest.mark.parametrize("command", ["delete-topic", "delete-group", "reset-offsets", "replay"])
def test_admin_job_refuses_mutating_subcommands_unless_allowed(chart: Chart, command: str) -> None:
    # The Job is a post-upgrade hook: a replay or reset would run again at every upgrade.
    job = ["--set", "admin.job.enabled=true", "--set", f"admin.job.args={{{command},collectors}}"]
    proc = chart.template(["external-secret.yaml"], [], job)
    assert proc.returncode != 0
    assert f'admin.job.args runs "{command}"' in proc.stderr, proc.stderr
    assert "admin.job.allowMutating=true" in proc.stderr
    allowed = chart.template(
        ["external-secret.yaml"], [], [*job, "--set", "admin.job.allowMutating=true"]
    )
    assert allowed.returncode == 0, allowed.stderr
    (c,) = next(
        o
        for o in yaml.safe_load_all(allowed.stdout)
        if o and o["kind"] == "Job" and o["metadata"]["name"] == name("admin")
    )["spec"]["template"]["spec"]["containers"]
    assert c["args"][-2:] == [command, "collectors"]


@pytest.mark.parametrize("args", ["{groups}", "{describe-group,collectors}", "{topics}"])
def test_admin_job_runs_read_only_subcommands(chart: Chart, args: str) -> None:
    job = ["--set", "admin.job.enabled=true", "--set", f"admin.job.args={args}"]
    proc = chart.template(["external-secret.yaml"], [], job)
    assert proc.returncode == 0, proc.stderr


def test_broker_topics_reach_streamer_collector_and_token_scopes(chart: Chart) -> None:
    topics = "broker.topics[0].name=gpu,broker.topics[1].name=gpu.dlq,broker.topics[1].partitions=2"
    proc = chart.template(["external-secret.yaml"], [], ["--set", topics])
    assert proc.returncode == 0, proc.stderr
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]

    def args(kind: str, component: str) -> list[str]:
        obj = next(
            o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name(component)
        )
        return obj["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--topic=gpu" in args("Deployment", "streamer")
    assert "--topic=gpu" in args("Deployment", "collector")
    assert {"--topic=gpu:16", "--topic=gpu.dlq:2"} <= set(args("StatefulSet", "broker"))
    secret = next(o for o in objects if o["metadata"]["name"] == "gputel-broker-auth")
    table = base64.b64decode(secret["data"]["tokens"]).decode()
    assert " topic=gpu group=streamers" in table
    assert " consume:topic=gpu consume:group=collectors produce:topic=gpu.dlq" in table
    assert "telemetry" not in table
    # The defaults: telemetry and telemetry.dlq.
    r = chart.render("default")
    for component in ("streamer", "collector"):
        (c,) = r.get("Deployment", name(component))["spec"]["template"]["spec"]["containers"]
        assert "--topic=telemetry" in c["args"]


@pytest.mark.parametrize(
    ("topics", "message"),
    [
        ("broker.topics[0].name=gpu", "broker.topics must also list gpu.dlq"),
        ("broker.topics=null", "broker.topics is empty"),
    ],
)
def test_broker_topics_without_the_dead_letter_topic_fail(
    chart: Chart, topics: str, message: str
) -> None:
    proc = chart.template(["external-secret.yaml"], [], ["--set", topics])
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_influxdb2_subchart_pod_admits_only_its_clients(chart: Chart) -> None:
    r = chart.render("default")
    spec = r.get("NetworkPolicy", name("influxdb2"))["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    port = [{"protocol": "TCP", "port": 8086}]
    clients, metrics = spec["ingress"]
    assert clients["ports"] == port and metrics["ports"] == port
    component = "app.kubernetes.io/component"
    allowed = {p["podSelector"]["matchLabels"][component] for p in clients["from"]}
    assert allowed == {"collector", "gateway", "influx-init"}
    broker_metrics = r.get("NetworkPolicy", name("broker"))["spec"]["ingress"][1]
    assert metrics["from"] == broker_metrics["from"]
    # The subchart's Service port is 80, its pod's 8086: the clients' egress allows 8086.
    collector_out = r.get("NetworkPolicy", name("collector"))["spec"]["egress"]
    assert {"ports": port} in collector_out
    # More peers by value; none without the subchart or without NetworkPolicy.
    extra = {"podSelector": {"matchLabels": {"app": "grafana"}}}
    proc = chart.template(
        [], [], ["--set-json", f"networkPolicy.influxdb2From=[{json.dumps(extra)}]"]
    )
    assert proc.returncode == 0, proc.stderr
    policy = next(
        o
        for o in yaml.safe_load_all(proc.stdout)
        if o and o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name("influxdb2")
    )
    assert extra in policy["spec"]["ingress"][0]["from"]
    for variant in ("external-secret", "minimal"):
        names = {o["metadata"]["name"] for o in chart.render(variant).of_kind("NetworkPolicy")}
        assert name("influxdb2") not in names
    off = chart.template([], [], ["--set", "networkPolicy.enabled=false"])
    assert off.returncode == 0 and "kind: NetworkPolicy" not in off.stdout
