"""deploy/: the Kubernetes manifests validated offline (kubernetes-validate) and held to what
the agent needs; the image's entrypoint run with a stand-in mdatui, and for real on a lab cgroup."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mdatui.core import rules

from .kubelet import ConfigMapDir, Lines

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((str(path.relative_to(REPO)), doc))
    return found


def one(kind: str) -> dict:
    (doc,) = [d for _, d in documents() if d["kind"] == kind]
    return doc


def agent() -> tuple[dict, dict]:
    """The DaemonSet's pod spec and its mdatui container."""
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def mount_of(pod: dict, container: dict, mount_path: str) -> tuple[dict, dict]:
    """(volumeMount, volume) of what the container has at mount_path."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == mount_path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_deploy_holds_the_agent_s_objects():
    kinds = sorted(d["kind"] for _, d in documents())
    assert kinds == ["ConfigMap", "DaemonSet", "Namespace", "ServiceAccount"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("where,doc", documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_document_validates(where, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field


def test_objects_live_in_the_namespace_deploy_makes():
    ns = one("Namespace")["metadata"]["name"]
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for _, doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == ns, doc["kind"]
    pod, _ = agent()
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]


def test_the_agent_is_privileged_on_the_node_s_pids_and_network():
    pod, container = agent()
    assert container["securityContext"]["privileged"] is True
    assert pod["hostPID"] is True  # serve takes sockets of the pods' processes (pidfd_getfd)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in pod["tolerations"]


def test_bpffs_and_the_cgroup2_root_of_the_node_are_mounted_where_mdatui_looks():
    pod, container = agent()
    mount, volume = mount_of(pod, container, "/sys/fs/bpf")
    assert volume["hostPath"]["path"] == "/sys/fs/bpf"
    assert mount["mountPropagation"] == "Bidirectional"
    assert env(container)["MDATUI_PIN_DIR"].startswith("/sys/fs/bpf/")
    _, volume = mount_of(pod, container, "/sys/fs/cgroup")
    assert volume["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}
    # Found under that mount at start (kubepods.slice or kubepods); never the root.
    assert env(container)["MDATUI_CGROUP"] == ""


def test_liveness_asks_the_metrics_endpoint_on_the_metrics_port():
    pod, container = agent()
    (port,) = container["ports"]
    assert port == {"name": "mdatui-metrics", "containerPort": 9432, "protocol": "TCP"}
    assert env(container)["MDATUI_METRICS"].endswith(":9432")
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "mdatui-metrics"}
    annotations = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9432"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_rules_configmap_is_mounted_where_the_watcher_reads():
    pod, container = agent()
    config = env(container)["MDATUI_CONFIG"]
    mount, volume = mount_of(pod, container, os.path.dirname(config))
    assert "subPath" not in mount  # a subPath mount is never updated by the kubelet
    assert mount["readOnly"] is True
    cm = one("ConfigMap")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert os.path.basename(config) in cm["data"]


def test_the_configmap_s_rules_pass_rules_check_and_are_the_istio_preset(tmp_path):
    (text,) = one("ConfigMap")["data"].values()
    path = tmp_path / "oncn-mda.conf"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "mdatui.cli.main", "rules", "check", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}: 7 rules, no errors\n"
    assert text == (REPO / "etc" / "istio.conf").read_text()
    assert len(rules.parse(text).rules) == 7


def test_the_image_is_bookworm_with_debian_s_bcc_headers_and_the_wheel():
    text = (DEPLOY / "Containerfile").read_text()
    assert "ARG DEBIAN=debian:bookworm-slim" in text
    for needed in ("python3-bpfcc", "linux-headers-$(dpkg --print-architecture)", "--system-site-packages",
                   "pip wheel --no-deps", "pip install --no-cache-dir --disable-pip-version-check /wheels/mdatui-*.whl",
                   "COPY deploy/entrypoint.sh /usr/local/bin/mdatui-node",
                   'ENTRYPOINT ["/usr/local/bin/mdatui-node"]'):
        assert needed in text, needed


# ------------------------------------------------------------------ the entrypoint, mdatui faked

FAKE = textwrap.dedent("""\
    #!/bin/bash
    echo "$*" >> "$FAKE_LOG"
    case "$1 $2" in
        "serve "*|"rules watch")
            if [ "$1" = "${FAKE_CRASH:-}" ]; then sleep 0.3; exit 3; fi
            sleep 600 &
            trap 'echo "$1 got TERM" >> "$FAKE_LOG"; kill $!; exit 0' TERM
            wait ;;
    esac
    exit 0
    """)


@pytest.fixture
def fake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mdatui").write_text(FAKE)
    (bin_dir / "mdatui").chmod(0o755)
    cg = tmp_path / "cgroup2"
    (cg / "kubepods.slice").mkdir(parents=True)
    (cg / "kubepods.slice" / "cgroup.type").write_text("domain\n")
    log = tmp_path / "calls"
    log.write_text("")
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "MDATUI_HEADERS": "none",
            "MDATUI_CGROUP_ROOT": str(cg), "MDATUI_PIN_DIR": str(tmp_path / "pins"),
            "MDATUI_DRAIN_SECONDS": "1"}
    return base, log, cg


def start(environ: dict) -> subprocess.Popen:
    return subprocess.Popen([str(ENTRYPOINT)], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def calls_when(log: Path, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(lines := log.read_text().splitlines()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def ended(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def test_entrypoint_enables_on_kubepods_serves_watches_and_disables_on_sigterm(fake):
    base, log, cg = fake
    proc = start(base)
    calls = calls_when(log, 3)
    proc.send_signal(signal.SIGTERM)
    code, out = ended(proc)
    assert code == 0, out
    pins = base["MDATUI_PIN_DIR"]
    conf = "/etc/mdatui/rules/oncn-mda.conf"
    assert calls[0] == (f"enable --no-serve --cgroup {cg}/kubepods.slice --config {conf} --pin-dir {pins} "
                        "--nodelay-streams stack")
    assert sorted(calls[1:3]) == [f"rules watch {conf} --pin-dir {pins} --interval 2",
                                  f"serve --pin-dir {pins} --metrics 0.0.0.0:9432"]
    after = log.read_text().splitlines()[3:]
    assert after[0] == "rules got TERM"               # the watcher is stopped first,
    assert after[1] == f"disable --pin-dir {pins}"   # then the accelerator disabled


def test_entrypoint_takes_the_cgroupfs_driver_s_kubepods_and_env_overrides(fake, tmp_path):
    base, log, cg = fake
    (cg / "kubepods.slice" / "cgroup.type").unlink()
    (cg / "kubepods.slice").rmdir()
    (cg / "kubepods" / "burstable").mkdir(parents=True)
    (cg / "kubepods" / "burstable" / "cgroup.type").write_text("domain\n")
    proc = start({**base, "MDATUI_CGROUP": str(cg / "kubepods" / "burstable"), "MDATUI_METRICS": "",
                  "MDATUI_CONFIG": "/r.conf", "MDATUI_RULES_INTERVAL": "0.5",
                  "MDATUI_NODELAY_STREAMS": "fast"})
    calls = calls_when(log, 3)
    proc.send_signal(signal.SIGTERM)
    assert ended(proc)[0] == 0
    assert calls[0].startswith(f"enable --no-serve --cgroup {cg}/kubepods/burstable --config /r.conf ")
    assert calls[0].endswith(" --nodelay-streams fast")
    assert f"serve --pin-dir {base['MDATUI_PIN_DIR']}" in calls  # no --metrics when it is empty
    assert f"rules watch /r.conf --pin-dir {base['MDATUI_PIN_DIR']} --interval 0.5" in calls


def test_entrypoint_never_attaches_to_a_cgroup2_root(fake):
    base, log, cg = fake
    with open("/proc/mounts") as f:
        roots = [line.split()[1] for line in f if line.split()[2] == "cgroup2"]
    for root in [*roots, str(cg)]:                     # the host's real root, and a fake one
        code, out = ended(start({**base, "MDATUI_CGROUP": root}))
        assert code == 1
        assert f"{root} is the root of a cgroup2 hierarchy (or not a cgroup): refusing" in out
    (cg / "kubepods.slice" / "cgroup.type").unlink()
    (cg / "kubepods.slice").rmdir()
    code, out = ended(start(base))                      # no kubepods cgroup: says what to set
    assert code == 1 and "set MDATUI_CGROUP to the kubelet's pods cgroup" in out
    assert log.read_text() == ""                        # mdatui was never run


def test_entrypoint_exits_1_without_disabling_when_serve_dies(fake):
    base, log, _ = fake
    code, out = ended(start({**base, "FAKE_CRASH": "serve"}))
    assert code == 1
    assert "left enabled; the restarted agent takes over" in out
    assert not any(c.startswith("disable") for c in log.read_text().splitlines())


# ---------------------------------------------------------------- the entrypoint, for real

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.kernel
def test_entrypoint_runs_the_agent_on_a_lab_cgroup_loads_a_configmap_swap_and_disables(
        lab, pin_dir, tmp_path):
    cm = ConfigMapDir(tmp_path / "rules")
    cm.write({"oncn-mda.conf": "chain --port 7000 -j RETURN\n"})
    config = cm.path("oncn-mda.conf")
    port = free_port()
    environ = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "MDATUI_CGROUP": lab.cgroup, "MDATUI_PIN_DIR": pin_dir, "MDATUI_CONFIG": config,
               "MDATUI_METRICS": f"127.0.0.1:{port}", "MDATUI_RULES_INTERVAL": "0.1",
               "MDATUI_HEADERS": "none", "MDATUI_DRAIN_SECONDS": "10"}
    proc = subprocess.Popen([str(ENTRYPOINT)], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = Lines(proc)
    try:
        i, _ = out.wait_for(f"enabled on {lab.cgroup}", timeout=120)
        i, _ = out.wait_for(f"{config}: 1 rules, as the kernel runs them already", after=i)
        query = json.loads(subprocess.run([sys.executable, "-m", "mdatui.cli.main", "query", "--json",
                                           "--pin-dir", pin_dir], capture_output=True, text=True,
                                          timeout=60, check=True).stdout)
        assert (query["enabled"], query["cgroup"]) == (True, lab.cgroup)
        assert query["service"]["running"] is True
        deadline = time.monotonic() + 15
        while True:  # what the liveness probe asks
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    assert r.status == 200 and b"mdatui_" in r.read()
                break
            except OSError:
                assert time.monotonic() < deadline, out.text()
                time.sleep(0.2)

        cm.write({"oncn-mda.conf": "chain --port 7000-7010 -j RETURN\nchain --uid-owner 1337 -j ACCEPT\n"})
        i, _ = out.wait_for(f"applied 2 rules from {config}", after=i)

        proc.send_signal(signal.SIGTERM)
        assert out.finish(timeout=60) == 0, out.text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out.wait_for(f"disabled on {lab.cgroup}", timeout=1)
    assert not os.path.exists(pin_dir)
    assert "Traceback" not in out.text()
