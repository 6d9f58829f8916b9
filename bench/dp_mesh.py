"""The mesh of issue #11 in a lab: wrk -> iptables REDIRECT -> haproxy (sidecar, uid 1337) -> nginx.

    pod netns                                                    peer netns (cross-pod only)
    wrk --(nat OUTPUT REDIRECT, not uid 1337)--> haproxy :1500x --> nginx
    same-pod:  http://127.0.0.1:9080/        -> 127.0.0.1:15001 -> nginx 127.0.0.1:9080 (pod)
    cross-pod: http://198.18.S.2:9081/       -> 127.0.0.1:15002 -> nginx 198.18.S.2:9081 (peer, over the veth)

One haproxy process (one thread) serves both topologies' frontends; one nginx per server netns
(single process: `daemon off; master_process off;`, so its pid is all there is to kill). Their
configs, logs and the page live in a temp dir the caller removes; the processes belong to the lab,
which kills them by pid when it closes; the iptables rules go with the lab's netns.
tests/test_programs.py builds the same mesh (with nginx's sendfile on, as Debian ships it) and a
tcp sidecar in front of redis (`sidecar`).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.dp_tools import RunFailed, wait_listening
from mdatui.lab import run

SIDECAR_UID = 1337  # Istio's proxy uid: its own connections are not redirected back to it
# nginx's default index.html is 615 bytes; the page served is that size.
PAGE = b"<!DOCTYPE html>\n<html><head><title>mdatui bench</title></head><body>\n" + \
    b"x" * 520 + b"\n</body></html>\n"


@dataclass(frozen=True)
class Service:
    client_ns: str   # where wrk runs
    url: str
    ports: tuple[int, ...]  # the ports of its connections, to find their ends in the maps
    tmp: Path        # its configurations and logs, wrk's scripts


def _nginx_conf(tmp: Path, tag: str, listen: str, sendfile: bool) -> Path:
    conf = tmp / f"nginx-{tag}.conf"
    conf.write_text(f"""daemon off;
master_process off;
pid {tmp}/nginx-{tag}.pid;
error_log {tmp}/nginx-{tag}.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile {"on" if sendfile else "off"};
    client_body_temp_path {tmp}/body-{tag};
    proxy_temp_path {tmp}/proxy-{tag};
    fastcgi_temp_path {tmp}/fastcgi-{tag};
    uwsgi_temp_path {tmp}/uwsgi-{tag};
    scgi_temp_path {tmp}/scgi-{tag};
    server {{
        listen {listen} backlog=1024;
        root {tmp}/www;
        location / {{ index index.html; }}
    }}
}}
""")
    return conf


def _haproxy_conf(tmp: Path, routes: list[tuple[int, str]], mode: str, options: tuple[str, ...]) -> Path:
    """routes: (frontend port on 127.0.0.1, backend address:port); options: more `defaults` lines."""
    text = f"""global
    nbthread 1
    maxconn 4096
defaults
    mode {mode}
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""
    text += "".join(f"    {line}\n" for line in options)
    for port, backend in routes:
        text += f"""frontend in{port}
    bind 127.0.0.1:{port}
    default_backend out{port}
backend out{port}
    server app {backend}
"""
    conf = tmp / "haproxy.cfg"
    conf.write_text(text)
    return conf


def sidecar(lab, tmp: Path, pod: str, routes: list[tuple[str, int, int]], mode: str = "http",
            options: tuple[str, ...] = ()) -> None:
    """haproxy as the pod's sidecar (uid 1337): for each (ip, port, sidecar port), the pod's
    connections to ip:port, but the sidecar's own, are redirected to 127.0.0.1:sidecar port,
    and haproxy forwards them to ip:port."""
    tmp.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o755)  # haproxy runs as uid 1337 and reads its config here
    for ip, port, to in routes:
        lab.iptables(pod, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", ip, "--dport", str(port),
                     "-m", "owner", "!", "--uid-owner", str(SIDECAR_UID),
                     "-j", "REDIRECT", "--to-ports", str(to))
    conf = _haproxy_conf(tmp, [(to, f"{ip}:{port}") for ip, port, to in routes], mode, options)
    out = open(tmp / "haproxy.out", "wb")
    haproxy = lab.spawn(["haproxy", "-db", "-f", str(conf)], netns=pod, uid=SIDECAR_UID,
                        gid=SIDECAR_UID, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    for _ip, _port, to in routes:
        _started(haproxy, to, "haproxy", tmp / "haproxy.out")


def build(lab, tmp: Path, pod: str, peer: str, peer_ip: str, sendfile: bool = False,
          haproxy_options: tuple[str, ...] = ()) -> dict[str, Service]:
    """nginx, haproxy and the REDIRECT rules in the lab; returns the service per topology."""
    for ns in (pod, peer):
        # haproxy closes its connections to nginx first when the client asked to close: without
        # reusing TIME_WAIT ports (the kernel does so by itself over loopback only), thousands
        # of new connections a second over the veth use up the ports in seconds, and connect()
        # then searches for a free one for tens of ms, plain and accelerated alike.
        run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
    (tmp / "www").mkdir(parents=True, exist_ok=True)
    (tmp / "www" / "index.html").write_bytes(PAGE)
    plan = {  # topology -> (nginx netns, nginx ip, port, sidecar port)
        "same-pod": (pod, "127.0.0.1", 9080, 15001),
        "cross-pod": (peer, peer_ip, 9081, 15002),
    }
    for topo, (ns, ip, port, _sidecar) in plan.items():
        tag = topo.split("-")[0]
        conf = _nginx_conf(tmp, tag, f"{ip}:{port}", sendfile)
        err = open(tmp / f"nginx-{tag}.out", "wb")
        nginx = lab.spawn(["nginx", "-p", str(tmp), "-e", str(tmp / f"nginx-{tag}.err"), "-c", str(conf)],
                          netns=ns, stdout=err, stderr=subprocess.STDOUT)
        err.close()
        _started(nginx, port, "nginx", tmp / f"nginx-{tag}.err")
    sidecar(lab, tmp, pod, [(ip, port, to) for _ns, ip, port, to in plan.values()],
            options=haproxy_options)
    return {topo: Service(pod, f"http://{ip}:{port}/", (port, to), tmp)
            for topo, (_ns, ip, port, to) in plan.items()}


def _started(proc: subprocess.Popen, port: int, what: str, log: Path) -> None:
    try:
        wait_listening(proc, port, what)
    except RunFailed as e:
        text = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise RuntimeError(f"{e}:\n{text}") from None
