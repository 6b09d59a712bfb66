"""The deployment files agree with each other and with the CLI, without any engine or cluster.

Every command line in deploy/docker-compose.yml and deploy/k8s/ is parsed by the real `downpour`
click command (its options checked, nothing run); names, ports, mounts and counts are cross-
checked between the compose file, the manifests, the Dockerfile and the job config.
"""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import click
import pytest
import yaml

from downpour.ps import config as job_config
from downpour.ps.cli import main as cli
from downpour.ps.role_env import HEAP, ONE_THREAD

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COORDINATOR = "tcp://coordinator:5555"
# Values the downward API fills in at run time, for parsing the args that use them.
DOWNWARD_SAMPLES = {"status.podIP": "10.0.0.7", "metadata.labels['apps.kubernetes.io/pod-index']": "1"}


def parse_cli(argv: list[str]) -> click.Context:
    """Parse `downpour ARGV` exactly as the console script would, without running the command."""
    group_ctx = click.Context(cli, info_name="downpour")
    name, *rest = argv
    command = cli.get_command(group_ctx, name)
    if command is None:
        raise click.UsageError(f"no such command {name!r}")
    return command.make_context(name, rest, parent=group_ctx)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [dict(doc, _file=path.name) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def find(kind: str, name: str) -> dict:
    matches = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def workloads() -> list[dict]:
    return [d for d in manifests() if d["kind"] in ("Job", "StatefulSet", "Deployment")]


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def expand_downward(container: dict) -> list[str]:
    """The container's args with $(VAR) replaced as Kubernetes would, from its env's fieldRefs."""
    env = {e["name"]: DOWNWARD_SAMPLES[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in container.get("env", [])}

    def substitute(arg: str) -> str:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in env, f"{container['name']}: $({var}) is not defined in its env"
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
    return [substitute(str(a)) for a in container["args"]]


def with_defaults(text: str) -> str:
    """Compose's `${NAME:-default}` interpolation, with every variable unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def job_file() -> dict:
    return job_config.load(str(DEPLOY / "job.yaml"), ())


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ---- the job config ---------------------------------------------------------------------------

def test_deploy_job_is_the_digits_mlp_with_two_shards_and_two_workers():
    job = job_file()
    quickstart = job_config.load(str(ROOT / "configs" / "digits_mlp.yaml"), ())
    for section in ("data", "model", "optimizer", "train", "target", "consistency", "seed"):
        assert job[section] == quickstart[section], f"deploy/job.yaml's {section} differs from digits_mlp.yaml"
    assert job["shards"]["count"] == 2 and job["workers"]["count"] == 2


def test_configmap_carries_deploy_job_yaml_verbatim():
    assert find("ConfigMap", "downpour-job")["data"]["job.yaml"] == (DEPLOY / "job.yaml").read_text()


# ---- docker compose ----------------------------------------------------------------------------

def test_compose_runs_every_role_from_one_image_on_one_network():
    services = compose()["services"]
    assert set(services) == {"coordinator", "shard", "evaluator", "worker"}
    assert {s["image"] for s in services.values()} == {"${DOWNPOUR_IMAGE:-downpour:latest}"}
    assert {s["build"]["dockerfile"] for s in services.values()} == {"deploy/Dockerfile"}
    assert all(s["networks"] == ["downpour"] for s in services.values())
    assert [s["command"][0] for s in services.values()] == list(services)  # the service is the role


@pytest.mark.parametrize("service", ["coordinator", "shard", "evaluator", "worker"])
def test_compose_command_is_accepted_by_the_cli(service):
    ctx = parse_cli(compose()["services"][service]["command"])
    assert ctx.command.name == service


def test_compose_tells_every_role_only_the_coordinators_address():
    services = compose()["services"]
    coordinator = parse_cli(services["coordinator"]["command"]).params
    assert port_of(coordinator["bind"]) == port_of(COORDINATOR)
    assert str(port_of(COORDINATOR)) in services["coordinator"]["expose"]
    for name in ("shard", "evaluator", "worker"):
        params = parse_cli(services[name]["command"]).params
        assert params["coordinator_address"] == COORDINATOR
        assert params.get("advertise") is None, "shards must advertise their own address, not a fixed one"
        assert services[name]["environment"]["DOWNPOUR_COORDINATOR"] == COORDINATOR
    assert COORDINATOR.removeprefix("tcp://").split(":")[0] in services  # the host is the service name


def test_compose_scales_match_the_job_and_shards_bind_an_exposed_port():
    services, job = compose()["services"], job_file()
    assert services["shard"]["scale"] == job["shards"]["count"]
    assert services["worker"]["scale"] == job["workers"]["count"]
    shard = parse_cli(services["shard"]["command"]).params
    assert str(port_of(shard["bind"])) in services["shard"]["expose"]


def test_compose_mounts_the_job_read_only_and_the_run_directory_on_a_volume():
    spec = compose()
    coordinator = parse_cli(spec["services"]["coordinator"]["command"]).params
    mounts = [with_defaults(m).split(":") for m in spec["services"]["coordinator"]["volumes"]]
    assert ["./job.yaml", coordinator["config_path"], "ro"] in mounts  # relative to deploy/
    run_volume = [m for m in mounts if m[1] == coordinator["run_dir"]]
    assert run_volume and run_volume[0][0] in spec["volumes"]
    shard = parse_cli(spec["services"]["shard"]["command"]).params
    assert f"{run_volume[0][0]}:{shard['run_dir']}" in spec["services"]["shard"]["volumes"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_config_validates_the_file():
    done = subprocess.run(["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---- the image ---------------------------------------------------------------------------------

def test_dockerfile_runs_downpour_unprivileged_with_a_status_healthcheck():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    assert 'ENTRYPOINT ["downpour"]' in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    healthcheck = next(line for line in lines if line.startswith("CMD downpour status"))
    parse_cli(["status", "tcp://coordinator:5555"])  # what it runs, with the default address
    assert '"$DOWNPOUR_COORDINATOR"' in healthcheck
    assert 'downpour = "downpour.ps.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_the_image_starts_every_role_in_the_environment_the_launcher_gives_it():
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env = dict(pair.split("=", 1) for line in text.splitlines() if line.startswith("ENV ")
               for pair in line.split()[1:])
    assert ONE_THREAD.items() <= env.items() and HEAP.items() <= env.items()


# ---- Kubernetes ------------------------------------------------------------------------------

@pytest.mark.parametrize("workload", [w["metadata"]["name"] for w in workloads()])
def test_manifest_args_and_probes_are_accepted_by_the_cli(workload):
    for container in containers(next(w for w in workloads() if w["metadata"]["name"] == workload)):
        assert container["image"] == "downpour:latest"  # the image's entry point is `downpour`
        ctx = parse_cli(expand_downward(container))
        assert ctx.command.name == container["name"]
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["downpour", "status"]
        parse_cli(probe[1:])


def test_every_role_dials_the_coordinator_service():
    service = find("Service", "coordinator")
    coordinator = find("Job", "downpour-coordinator")
    pod = coordinator["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == port_of(COORDINATOR)
    (container,) = containers(coordinator)
    assert port_of(parse_cli(container["args"]).params["bind"]) == container["ports"][0]["containerPort"] \
        == port_of(COORDINATOR)
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    for workload in workloads():
        for c in containers(workload):
            if c["name"] != "coordinator":
                assert parse_cli(expand_downward(c)).params["coordinator_address"] == COORDINATOR
                assert c["readinessProbe"]["exec"]["command"][2] == COORDINATOR


def test_shards_are_a_statefulset_with_stable_ranks_own_volumes_and_their_pod_ip_advertised():
    shards, service, job = find("StatefulSet", "shard"), find("Service", "shard"), job_file()
    assert shards["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert shards["spec"]["replicas"] == job["shards"]["count"]
    labels = shards["spec"]["template"]["metadata"]["labels"]
    assert shards["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = containers(shards)
    params = parse_cli(expand_downward(container)).params
    assert params["advertise"] == DOWNWARD_SAMPLES["status.podIP"]
    assert params["rank"] == int(DOWNWARD_SAMPLES["metadata.labels['apps.kubernetes.io/pod-index']"])
    assert port_of(params["bind"]) == container["ports"][0]["containerPort"] == service["spec"]["ports"][0]["port"]
    claims = [t["metadata"]["name"] for t in shards["spec"]["volumeClaimTemplates"]]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert claims and mounts[claims[0]] == params["run_dir"]


def test_coordinator_reads_the_configmap_and_writes_the_run_to_a_claim():
    coordinator = find("Job", "downpour-coordinator")
    (container,) = containers(coordinator)
    params = parse_cli(container["args"]).params
    volumes = {v["name"]: v for v in coordinator["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_dir, config_name = params["config_path"].rsplit("/", 1)
    assert mounts[config_dir]["readOnly"] is True
    config_map = volumes[mounts[config_dir]["name"]]["configMap"]["name"]
    assert config_name in find("ConfigMap", config_map)["data"]
    claim = volumes[mounts[params["run_dir"]]["name"]]["persistentVolumeClaim"]["claimName"]
    find("PersistentVolumeClaim", claim)


def test_workers_are_a_scalable_job_sized_by_the_config():
    workers = find("Job", "downpour-worker")
    assert workers["spec"]["parallelism"] == job_file()["workers"]["count"]
    assert "completions" not in workers["spec"]  # any number of pods may run: scale by parallelism
    assert workers["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_every_pod_runs_unprivileged():
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in pod["containers"])


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert {d["_file"] for d in manifests()} == files | {"kustomization.yaml"}


def test_cli_parsing_rejects_what_a_typo_in_a_manifest_would_contain():
    with pytest.raises(click.NoSuchOption):
        parse_cli(["shard", "--coordinator", COORDINATOR, "--advertize", "10.0.0.7"])
    with pytest.raises(click.MissingParameter):
        parse_cli(["worker"])
    with pytest.raises(click.BadParameter):
        parse_cli(["shard", "--coordinator", COORDINATOR, "--rank", "$(SHARD_RANK)"])
