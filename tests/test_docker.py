"""The cluster files under docker/: the Dockerfile passes hadolint, the compose file
validates against the Compose specification, the KubeRay manifests' built-in kinds (and
the pod templates inside the RayCluster) against Kubernetes' schemas. Docker itself cannot
run on the test machines; docs/cluster.md says what is verified instead.

Each check is also shown to fail on a broken copy, so a passing check means something.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlsweep.search.config import load_sweep_config

DOCKER = Path(__file__).parents[1] / "docker"
KUBERAY = DOCKER / "kuberay"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return str(path)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    ok = _run(_tool("hadolint"), str(DOCKER / "Dockerfile"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text((DOCKER / "Dockerfile").read_text() + "RUN cd /tmp && pip install requests\n")
    assert _run(_tool("hadolint"), str(broken)).returncode != 0


def test_dockerfile_runs_as_a_non_root_user_and_pins_its_versions() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "--constraint constraints.txt" in text
    pins = [line for line in (DOCKER / "constraints.txt").read_text().splitlines() if "==" in line]
    names = {line.split("==")[0].lower() for line in pins}
    assert {"torch", "ray", "optuna", "transformers", "peft", "psycopg2-binary"} <= names
    assert all(line.count("==") == 1 for line in pins)


def test_compose_file_validates_against_the_compose_specification(tmp_path: Path) -> None:
    check = [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    ok = _run(*check, str(DOCKER / "compose.yaml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    doc["services"]["dashboard"]["ports"] = {"8080": "8080"}  # a mapping where a list belongs
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(doc))
    assert _run(*check, str(broken)).returncode != 0


def test_compose_keeps_secrets_out_and_the_dashboard_on_loopback() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert set(services) >= {"postgres", "ray-head", "ray-worker", "dashboard", "submit"}
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    assert all(p.startswith("127.0.0.1:") for p in services["ray-head"]["ports"])
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    gpu = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert "/docker/.env" in (DOCKER.parent / ".gitignore").read_text().splitlines()
    assert not (DOCKER / ".env").exists() or "change-me" in (DOCKER / ".env").read_text()


def _manifests() -> list[dict]:
    return [doc for f in sorted(KUBERAY.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text()) if doc]


def test_kuberay_manifests_validate_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    """Built-in kinds as they are; the RayCluster's pod templates as v1 PodTemplates."""
    docs = _manifests()
    assert {d["kind"] for d in docs} >= {
        "RayCluster",
        "RayJob",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
    }
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    templates = [cluster["spec"]["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    templates += [next(d for d in docs if d["kind"] == "RayJob")["spec"]["submitterPodTemplate"]]
    builtin = [d for d in docs if d["apiVersion"] == "v1"]
    builtin += [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"ray-{i}"}, "template": t}
        for i, t in enumerate(templates)
    ]
    files = []
    for i, doc in enumerate(builtin):
        files.append(tmp_path / f"{i}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    ok = _run(_tool("kubernetes-validate"), "--strict", *map(str, files))
    assert ok.returncode == 0 and ok.stdout.count("passed") == len(files), ok.stdout + ok.stderr

    templates[0]["spec"]["containers"][0]["imagePullPolice"] = "Always"  # a misspelt field
    head = len(builtin) - len(templates)  # the head's template, made a PodTemplate above
    files[head].write_text(yaml.safe_dump(builtin[head]))
    assert _run(_tool("kubernetes-validate"), "--strict", str(files[head])).returncode != 0


def test_kuberay_job_runs_the_configmaps_sweep_with_the_secrets_storage(tmp_path: Path) -> None:
    docs = {d["kind"]: d for d in _manifests()}
    job, cluster = docs["RayJob"], docs["RayCluster"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert job["spec"]["entrypoint"] == "vlsweep launch /sweeps/sweep.yaml"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["VLSWEEP_STORAGE"]["valueFrom"]["secretKeyRef"]["name"] == docs["Secret"]["metadata"]["name"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts["/sweeps"]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The sweep file itself is a valid sweep config (its data lives on the cluster).
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(docs["ConfigMap"]["data"]["sweep.yaml"])
    cfg, _ = load_sweep_config(sweep)
    assert cfg.ray.shared_storage and cfg.output_dir.startswith("/shared/")


def _talks_to_ray(service: dict) -> bool:
    return str(service.get("command", "")).startswith("ray ")


def _ray_auth_problems(compose: dict, manifests: list[dict], files: dict[str, str]) -> list[str]:
    """Where the shipped cluster setups would turn Ray's token auth off or carry a token."""
    problems = []
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if "RAY_AUTH_TOKEN" in env:
            problems.append(f"compose service {name}: a token written into the file")
        if not _talks_to_ray(service):
            continue
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"compose service {name}: RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE')!r}")
        path = env.get("RAY_AUTH_TOKEN_PATH", "")
        secrets = service.get("secrets", [])
        if not any(path == f"/run/secrets/{s}" for s in secrets):
            problems.append(f"compose service {name}: the token is not read from a compose secret")
    for secret in compose.get("secrets", {}).values():
        if "file" not in secret:
            problems.append(f"compose secret {secret}: not read from a file")
    containers = []
    for doc in manifests:
        if doc["kind"] == "RayCluster":
            groups = [doc["spec"]["headGroupSpec"], *doc["spec"]["workerGroupSpecs"]]
            containers += [c for g in groups for c in g["template"]["spec"]["containers"]]
        if doc["kind"] == "RayJob":
            containers += doc["spec"].get("submitterPodTemplate", {}).get("spec", {}).get("containers", [])
    for c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
            problems.append(f"container {c['name']}: RAY_AUTH_MODE is not token")
        if "secretKeyRef" not in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}):
            problems.append(f"container {c['name']}: RAY_AUTH_TOKEN does not come from a Secret")
    for name, text in files.items():
        # A token in a file: 32 or more hex digits (what `secrets.token_hex` and most
        # generators give), or Ray's auth turned off anywhere.
        if re.search(r"\b[0-9a-f]{32,}\b", text) or re.search(r"RAY_AUTH_MODE\W+disabled", text):
            problems.append(f"{name}: a token, or Ray's auth turned off")
    return problems


def test_the_cluster_setups_keep_ray_auth_on_with_the_token_outside_them():
    """compose and KubeRay run Ray with token auth, the token from a compose secret / a
    Kubernetes Secret; no file under docker/ holds a token or turns auth off. The check
    is shown to catch each way of getting it wrong."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    manifests = _manifests()
    files = {str(f): f.read_text() for f in DOCKER.rglob("*") if f.is_file()}
    assert _ray_auth_problems(compose, manifests, files) == []
    cluster = next(d for d in manifests if d["kind"] == "RayCluster")
    job = next(d for d in manifests if d["kind"] == "RayJob")
    assert job["spec"]["submitterPodTemplate"]["spec"]["containers"], "the submitter needs the token too"
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # token-gated
    assert "/docker/ray_token" in (DOCKER.parent / ".gitignore").read_text().splitlines()

    off = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    off["services"]["ray-head"]["environment"] = {"RAY_AUTH_MODE": "disabled"}
    assert any("ray-head: RAY_AUTH_MODE is 'disabled'" in p for p in _ray_auth_problems(off, manifests, {}))
    plain = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    plain["services"]["submit"]["environment"] = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"}
    assert any("submit: a token written" in p for p in _ray_auth_problems(plain, manifests, {}))
    literal = [yaml.safe_load(yaml.safe_dump(d)) for d in manifests]
    head = next(d for d in literal if d["kind"] == "RayCluster")["spec"]["headGroupSpec"]
    env = head["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "RAY_AUTH_TOKEN").update(value="t", valueFrom={})
    assert any("does not come from a Secret" in p for p in _ray_auth_problems(compose, literal, {}))
    leaked = {"docker/x.yaml": "RAY_AUTH_TOKEN: " + "ab12" * 8}
    assert _ray_auth_problems(compose, manifests, leaked) == [
        "docker/x.yaml: a token, or Ray's auth turned off"
    ]


RAY_TOKEN, DATABASE = "Ray's token", "the database password"
HUB, STORE = "the Hub token", "the artifact store's keys"
# The Kubernetes Secrets of the manifests, by what they hold.
K8S_SECRETS = {"vlsweep-ray-token": RAY_TOKEN, "vlsweep-storage": DATABASE}
# What each kind of container needs, and what it may be given besides (a Hub token and
# the store's keys are the user's to add, where they use them).
RAY_NODE = ({RAY_TOKEN}, {HUB, STORE})
ROLES = {
    "database": ({DATABASE}, set()),
    # A Ray head runs the sweep's driver (sent with `ray job submit`), which opens the study.
    "ray head": ({RAY_TOKEN, DATABASE}, {HUB, STORE}),
    "ray worker": RAY_NODE,
    "submitter": ({RAY_TOKEN}, set()),  # `ray job submit` to the head's Jobs API
    "dashboard": ({DATABASE}, {STORE}),  # optuna-dashboard on the study and the trials' files
}


def _compose_role(service: dict) -> str:
    command = str(service.get("command", ""))
    if "postgres" in str(service.get("image", "")):
        return "database"
    if command.startswith("ray start"):
        return "ray head" if "--head" in command else "ray worker"
    if command.startswith("ray "):
        return "submitter"
    if command.startswith("vlsweep dashboard"):
        return "dashboard"
    raise AssertionError(f"a compose service whose role the test does not know: {command!r}")


def _compose_given(service: dict) -> set[str]:
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    given = {RAY_TOKEN if s == "ray_token" else s for s in service.get("secrets", [])}
    if service.get("env_file"):
        given |= {DATABASE, HUB, STORE}  # docker/.env holds them: an env_file hands all of it over
    written = [*env.values(), str(service.get("command", "")), str(service.get("entrypoint", ""))]
    if any("POSTGRES_PASSWORD" in v for v in written):
        given.add(DATABASE)
    if "HF_TOKEN" in env:
        given.add(HUB)
    if any(k.startswith("AWS_") for k in env):
        given.add(STORE)
    return given


def _k8s_given(container: dict, pod: dict) -> set[str]:
    refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    refs += [f["secretRef"]["name"] for f in container.get("envFrom", []) if "secretRef" in f]
    refs += [v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v]
    return {K8S_SECRETS.get(r, r) for r in refs}


def _k8s_places(manifests: list[dict]) -> dict[str, tuple[set[str], str]]:
    """(what each container is given, its role), by kind, group and container name."""
    found = {}
    for doc in manifests:
        clusters = [doc["spec"]] if doc["kind"] == "RayCluster" else []
        if doc["kind"] == "RayJob":
            clusters += [doc["spec"]["rayClusterSpec"]] if "rayClusterSpec" in doc["spec"] else []
            pod = doc["spec"].get("submitterPodTemplate", {}).get("spec", {})
            for c in pod.get("containers", []):
                found[f"RayJob submitter/{c['name']}"] = (_k8s_given(c, pod), "submitter")
        for spec in clusters:
            groups = [("head", "ray head", spec["headGroupSpec"])]
            groups += [(g["groupName"], "ray worker", g) for g in spec["workerGroupSpecs"]]
            for group, role, g in groups:
                pod = g["template"]["spec"]
                for c in pod.get("containers", []):
                    found[f"{doc['kind']} {group}/{c['name']}"] = (_k8s_given(c, pod), role)
    return found


def _secret_problems(compose: dict, manifests: list[dict]) -> list[str]:
    places = {
        f"compose service {n}": (_compose_given(s), _compose_role(s)) for n, s in compose["services"].items()
    }
    places |= {f"container {n}": v for n, v in _k8s_places(manifests).items()}
    problems = []
    for where, (given, role) in places.items():
        needs, may = ROLES[role]
        problems += [f"{where}: given {s}, which a {role} does not use" for s in sorted(given - needs - may)]
        problems += [f"{where}: needs {s}, not given" for s in sorted(needs - given)]
    return problems


def test_each_container_gets_only_the_secrets_it_uses():
    """Ray's token to what talks to Ray, the database password to what opens the study, the
    Hub token and the store's keys to what loads models or reads the store; the dashboard
    gets no Ray token, the Ray workers and the submitter no database password. Shown to
    catch a secret given where it is not used, one missing where it is, and one handed
    over in a command or through an env_file."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    manifests = _manifests()
    assert _secret_problems(compose, manifests) == []
    assert _compose_given(compose["services"]["dashboard"]) == {DATABASE, STORE}
    assert _compose_given(compose["services"]["ray-worker"]) == {RAY_TOKEN, HUB, STORE}
    assert _compose_given(compose["services"]["submit"]) == {RAY_TOKEN}

    extra = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    extra["services"]["dashboard"]["secrets"] = ["ray_token"]
    extra["services"]["ray-worker"]["env_file"] = [".env"]
    extra["services"]["submit"]["command"] += " --password ${POSTGRES_PASSWORD}"
    assert _secret_problems(extra, manifests) == [
        f"compose service ray-worker: given {DATABASE}, which a ray worker does not use",
        f"compose service dashboard: given {RAY_TOKEN}, which a dashboard does not use",
        f"compose service submit: given {DATABASE}, which a submitter does not use",
    ]
    missing = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    del missing["services"]["ray-head"]["environment"]["VLSWEEP_STORAGE"]
    assert _secret_problems(missing, manifests) == [f"compose service ray-head: needs {DATABASE}, not given"]
    k8s = [yaml.safe_load(yaml.safe_dump(d)) for d in manifests]
    cluster = next(d for d in k8s if d["kind"] == "RayCluster")["spec"]
    cluster["workerGroupSpecs"].append(yaml.safe_load(yaml.safe_dump(cluster["workerGroupSpecs"][0])))
    cluster["workerGroupSpecs"][1]["groupName"] = "cpu"
    cluster["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "vlsweep-storage"}}
    ]
    assert _secret_problems(compose, k8s) == [
        f"container RayCluster cpu/ray-worker: given {DATABASE}, which a ray worker does not use"
    ], "a second worker group with the same container name is checked too"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker here")
def test_compose_config_resolves_with_docker(tmp_path: Path) -> None:
    """Where a docker CLI exists: `docker compose config` accepts the file."""
    if _run("docker", "compose", "version").returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=x\n")
    out = _run(
        "docker", "compose", "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env), "config", "--quiet"
    )
    assert out.returncode == 0, out.stderr
