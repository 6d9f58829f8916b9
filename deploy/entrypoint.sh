#!/bin/bash
# The mdatui node agent: what the DaemonSet's container runs (deploy/kubernetes/daemonset.yaml).
#
#   1. kernel headers for BCC: the node's own when they are mounted at /host, else the kernel's
#      built-in archive (CONFIG_IKHEADERS), else the image's Debian headers (deploy/Containerfile);
#   2. `mdatui enable --no-serve` on the pods' cgroup (never the cgroup2 root) with the rules file;
#   3. `mdatui serve` (the drain service, and the metrics endpoint) and `mdatui rules watch` on the
#      rules file (a mounted ConfigMap: each change is loaded live);
#   4. SIGTERM (pod deleted, rolled or failing its liveness probe): `mdatui disable`, then wait
#      for what still drains. If serve or the watcher ends by itself, the other is stopped and
#      the agent exits 1 without disabling: the kubelet restarts it, and `enable` attaches
#      nothing twice, so acceleration goes on through the restart.
#
# Environment (defaults in brackets):
#   MDATUI_CGROUP          cgroup v2 directory to attach to [kubepods.slice or kubepods under
#                          MDATUI_CGROUP_ROOT, whichever exists]
#   MDATUI_CGROUP_ROOT     the host's cgroup2 mount as the container sees it [/sys/fs/cgroup]
#   MDATUI_CONFIG          rules file [/etc/mdatui/rules/oncn-mda.conf]
#   MDATUI_PIN_DIR         [/sys/fs/bpf/mdatui]
#   MDATUI_METRICS         HOST:PORT of the Prometheus endpoint, empty for none [0.0.0.0:9432]
#   MDATUI_RULES_INTERVAL  seconds between looks at the rules file [2]
#   MDATUI_DRAIN_SECONDS   how long to wait after disable for ends still draining [90]
#   MDATUI_HEADERS         auto, or none to leave /lib/modules alone [auto]
#   MDATUI_NODELAY_STREAMS stack, or fast where bench.datapath showed the fast path ahead for
#                          TCP_NODELAY streams on these nodes (`mdatui enable --nodelay-streams`) [stack]
set -euo pipefail

cgroup_root=${MDATUI_CGROUP_ROOT:-/sys/fs/cgroup}
cgroup=${MDATUI_CGROUP:-}
config=${MDATUI_CONFIG:-/etc/mdatui/rules/oncn-mda.conf}
pin_dir=${MDATUI_PIN_DIR:-/sys/fs/bpf/mdatui}
metrics=${MDATUI_METRICS-0.0.0.0:9432}
interval=${MDATUI_RULES_INTERVAL:-2}
drain_seconds=${MDATUI_DRAIN_SECONDS:-90}
headers=${MDATUI_HEADERS:-auto}
nodelay_streams=${MDATUI_NODELAY_STREAMS:-stack}

say() { echo "mdatui-node: $*" >&2; }

# A host symlink (/host/lib/modules/REL/build -> /usr/src/...) as a path inside the container.
host_path() {
    local link=$1 target
    target=$(readlink "$link") || return 1
    case $target in
        /*) echo "/host$target" ;;
        *) echo "$(dirname "$link")/$target" ;;
    esac
}

link_headers() {
    local release kdir build source
    release=$(uname -r)
    kdir=/lib/modules/$release
    if [ -e "$kdir/build/include" ]; then
        return 0
    fi
    mkdir -p "$kdir"
    if build=$(host_path "/host$kdir/build") && [ -e "$build/include" ]; then
        say "kernel headers: the node's, $build"
        ln -sfn "$build" "$kdir/build"
        if source=$(host_path "/host$kdir/source") && [ -d "$source" ]; then
            ln -sfn "$source" "$kdir/source"
        fi
    elif [ -e /sys/kernel/kheaders.tar.xz ]; then
        say "kernel headers: the kernel's own archive (/sys/kernel/kheaders.tar.xz)"
    else
        build=$(ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture)" 2>/dev/null | sort -V | tail -n 1)
        source=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
        if [ -z "$build" ]; then
            say "no kernel headers for $release: mount the node's /lib/modules and /usr/src at /host"
            return 0  # enable's preflight says the same and stops
        fi
        say "kernel headers: none for $release on the node; the image's $(basename "$build")"
        ln -sfn "$build" "$kdir/build"
        if [ -n "$source" ]; then ln -sfn "$source" "$kdir/source"; fi
    fi
}

if [ "$headers" = auto ]; then
    link_headers
fi

if [ -z "$cgroup" ]; then
    for name in kubepods.slice kubepods; do
        if [ -d "$cgroup_root/$name" ]; then
            cgroup=$cgroup_root/$name
            break
        fi
    done
    if [ -z "$cgroup" ]; then
        say "no kubepods.slice or kubepods cgroup under $cgroup_root: set MDATUI_CGROUP to the kubelet's pods cgroup"
        exit 1
    fi
fi
# Only the root of a cgroup2 hierarchy lacks cgroup.type; attached there, the accelerator would
# take every TCP connection of the node, the node's own daemons included.
if [ ! -d "$cgroup" ]; then
    say "$cgroup is not a directory: set MDATUI_CGROUP to the kubelet's pods cgroup"
    exit 1
fi
if [ ! -e "$cgroup/cgroup.type" ]; then
    say "$cgroup is the root of a cgroup2 hierarchy (or not a cgroup): refusing to accelerate every connection of the node; set MDATUI_CGROUP to the kubelet's pods cgroup"
    exit 1
fi

mdatui enable --no-serve --cgroup "$cgroup" --config "$config" --pin-dir "$pin_dir" \
    --nodelay-streams "$nodelay_streams"

stopping=0
trap 'stopping=1' TERM INT

serve_args=(serve --pin-dir "$pin_dir")
if [ -n "$metrics" ]; then
    serve_args+=(--metrics "$metrics")
fi
mdatui "${serve_args[@]}" &
serve=$!
mdatui rules watch "$config" --pin-dir "$pin_dir" --interval "$interval" &
watch=$!

# Returns when either ends, or at once when a signal arrives (the trap has run by then).
wait -n "$serve" "$watch" || true

kill -TERM "$watch" 2>/dev/null || true
wait "$watch" 2>/dev/null || true
if [ "$stopping" = 0 ]; then
    say "mdatui serve or the rules watcher ended by itself: exiting 1 (left enabled; the restarted agent takes over)"
    kill -TERM "$serve" 2>/dev/null || true
    wait "$serve" 2>/dev/null || true
    exit 1
fi

status=0
mdatui disable --pin-dir "$pin_dir" || status=$?
# disable stops serve; it may hand ends that still drain to a service of its own, which holds
# the maps until the last has left. The container must outlive it, or those ends lose bytes.
kill -TERM "$serve" 2>/dev/null || true
wait "$serve" 2>/dev/null || true
# The pid file that service locks while it runs: /run/mdatui/serve-<first 12 hex digits of the
# SHA-1 of the pin dir's real path>.pid (mdatui's service_status.pidfile).
tag=$(printf %s "$(readlink -m "$pin_dir")" | sha1sum | cut -c1-12)
lock=/run/mdatui/serve-$tag.pid
deadline=$((SECONDS + drain_seconds))
while [ -e "$lock" ] && ! flock --nonblock --shared "$lock" true 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "ends still draining after ${drain_seconds}s: leaving them"
        break
    fi
    sleep 0.5
done
exit "$status"
