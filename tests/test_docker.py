"""The cluster files under docker/: the Dockerfile passes hadolint, the compose file
validates against the Compose specification, the KubeRay manifests' built-in kinds (and
the pod templates inside the RayCluster) against Kubernetes' schemas. Docker itself cannot
run on the test machines; docs/cluster.md says what is verified instead.

Each check is also shown to fail on a broken copy, so a passing check means something.
"""

from __future__ import annotations

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
    files[-2].write_text(yaml.safe_dump(builtin[-2]))
    assert _run(_tool("kubernetes-validate"), "--strict", str(files[-2])).returncode != 0


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
