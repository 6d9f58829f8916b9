/* Maps and records shared by the mdatui BPF programs.
 *
 * mdatui/core/kernel/abi.py mirrors every struct and constant here with ctypes: change both together.
 * The programs are compiled by BCC as one unit (see mdatui/core/kernel/loader.py), so the maps below
 * are created once and shared by sock_ops.c, sk_msg.c and sock_owner.c.
 */
#ifndef MDATUI_H
#define MDATUI_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/tcp.h>
#include <linux/socket.h>

/* Two ends per accelerated connection, plus headroom for ends that are still waiting for a peer:
 * 100,000 connections fit. `enable --max-sockets` overrides it. */
#ifndef MDA_MAX_SOCKS
#define MDA_MAX_SOCKS 262144
#endif
#define MDA_MAX_RULES 128
#define MDA_MAX_SNAPLEN 4096
#define MDA_UNKNOWN_ID 0xffffffff

/* A stream (MDA_STREAM_RUN sends in a row with no reply in between) whose writes average under
 * the size below goes back to the stack, losslessly, as plain TCP; request/response keeps the
 * fast path, since every reply ends the run. The sizes come from bench/datapath.py, the fast
 * path against plain TCP, two vCPUs unless said:
 * - Nagle: the stack coalesces small writes into large segments and beats handing the peer
 *   each one. Loopback: sockperf 64 B 0.24x, 1 KiB 0.28x, 4 KiB 0.84x, 8 KiB 1.27x, 16 KiB
 *   1.58x; iperf3, whose reader asks for one write's size at a time, 6 KiB 0.64x, 8 KiB 0.95x,
 *   12 KiB 0.95x, 16 KiB 1.38x. Over a veth a segment costs more: 64 B 0.74x, 256 B 2.6x,
 *   1 KiB 2.3-2.9x, 4 KiB 4.3x.
 * - TCP_NODELAY (Envoy's setting): the stack sends each write as it comes, and each redirected
 *   write wakes the reader, whose vCPU a guest wakes through its host. Runs of the same code
 *   on machines of the same kind found both: the fast path ahead at every size (1.2-1.8x,
 *   both topologies) and behind at every size (loopback 64 B 0.77x, 4 KiB 0.68x, 16 KiB
 *   0.51x, 60000 B 0.45x; veth 64 B 0.99x, 1 KiB 0.88x, 60000 B 0.50x). A program cannot
 *   tell which machine it runs on, so such a stream is handed back at any size, unless the
 *   operator measured the fast path ahead on this one (mda_policy, MDA_NODELAY_FAST).
 * - TCP_NODELAY with both ends' processes held to one CPU (taskset, a one-CPU cpuset:
 *   mda_owner.cpu): no vCPU is woken, and the fast path wins from 8 KiB over loopback (4 KiB
 *   0.86x, 8 KiB 1.34x, 12 KiB 1.82x) and over a veth below 128 B and from 4 KiB (64 B 2.5x,
 *   128 B-3 KiB 0.63-0.97x, 4 KiB 1.24x, 16 KiB 2.8x): there the stack moves writes under
 *   128 B some four times slower each than 128 B ones (sockperf, iperf3 alike). */
#define MDA_STREAM_RUN 64
#define MDA_STREAM_SMALL 12288          /* Nagle, loopback (either key has a netns cookie) */
#define MDA_STREAM_SMALL_VETH 256       /* Nagle, between namespaces */
#define MDA_STREAM_ANY (1ULL << 40)     /* TCP_NODELAY, not on one CPU: any size */
#define MDA_STREAM_PINNED 8192          /* TCP_NODELAY on one CPU, loopback */
#define MDA_STREAM_PINNED_VETH 4096     /* TCP_NODELAY on one CPU, between namespaces, down to: */
#define MDA_STREAM_TINY_VETH 128
/* mda_policy[0], set by `enable --nodelay-streams`: what becomes of a TCP_NODELAY stream whose
 * ends are not held to one CPU. */
#define MDA_NODELAY_STACK 0 /* handed back at any size (MDA_STREAM_ANY) */
#define MDA_NODELAY_FAST 1  /* kept on the fast path at any size */
/* A peer that holds more unread than TCP would let it (MDA_UNREAD_MAX, from the loader) and reads
 * nothing of it for this long (ms) does not read: see sk_msg.c. */
#define MDA_BEHIND_MS 1000
/* Setting a connection up on the fast path and taking it down (two psocks, the map updates,
 * sock_ops at each state change) costs more than a few messages gain. bench.datapath's
 * mesh-close (wrk > haproxy > nginx over loopback, a new connection every n requests, a request
 * being a message each way): n = 1 0.89x, 2 0.95x, 4 1.07x, 8 1.18x, 16 1.32x. So new
 * connections to a destination (the connecting end's remote address and port, and netns where
 * loopback) whose accelerated connections lately carried fewer than MDA_SHORT_MSGS messages
 * each, both ways, stay on the stack, but for one in MDA_SHORT_PROBE, whose count at close keeps
 * the average current. The sums are halved every MDA_SHORT_WINDOW connections, so a destination
 * whose connections grow longer is accelerated again after a few probes. */
#ifndef MDA_SHORT_MSGS /* the loader passes abi.py's values of these two */
#define MDA_SHORT_MSGS 6
#endif
#ifndef MDA_SHORT_MIN
#define MDA_SHORT_MIN 8    /* connections counted before any is left to the stack */
#endif
#define MDA_SHORT_WINDOW 16
#define MDA_SHORT_PROBE 16
#define MDA_MAX_DESTS 16384
/* bpf_getsockopt() arguments (netinet/tcp.h, which a BPF program cannot include) */
#define MDA_SOL_TCP 6
#define MDA_TCP_NODELAY 1
#define MDA_O_NONBLOCK 04000 /* a file's f_flags, x86-64's value (the only JIT this targets) */

/* One end of a TCP connection, as that end sees it. Addresses are IPv6, network byte order; an
 * IPv4 address is kept IPv4-mapped (::ffff:a.b.c.d), the form a dual-stack socket sees it in, so
 * that an IPv4 client of a dual-stack server pairs with it. netns is the network namespace
 * cookie, set only when one of the addresses is loopback: 127.0.0.1 in two pods must not collide,
 * while the two ends of a pod-to-pod connection over a veth live in different namespaces and
 * must still find each other by address alone. */
struct mda_sock_key {
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;  /* host byte order */
	__u32 remote_port; /* host byte order */
	__u64 netns;
};

/* Who created a socket, recorded in process context at socket() (accepted sockets inherit the
 * listener's record through BPF_F_CLONE). The kernel has no upstream getsockopt for this. */
struct mda_owner {
	__u32 pid;
	__u32 uid;
	__u32 gid;
	__u32 cpu; /* the one CPU the creator may run on (taskset, a one-CPU cpuset), or MDA_UNKNOWN_ID */
};

/* sock_proxy_map value: this end's peer and what its sends did. `paired` is written only by the
 * peer's sock_ops callback and `tainted` only by this end's sk_msg program, so neither needs a
 * compare-and-swap: an end that sent anything before pairing never redirects, because its first
 * bytes may still be unread in the peer's TCP queue and redirected bytes would overtake them. */
struct mda_conn {
	struct mda_sock_key peer;
	__u64 msgs;    /* messages redirected to the peer */
	__u64 bytes;   /* bytes redirected to the peer */
	__u64 passed;  /* messages that went through the normal stack */
	__u64 since_ns;
	struct mda_owner owner;
	__u32 paired;
	__u32 tainted;
	__u32 active;  /* 1: this end called connect() */
	__u32 run;     /* sends since the peer last sent (ends that may be handed back) */
	__u64 run_bytes;
	__u32 reason;  /* enum mda_leave: why it stopped redirecting (with tainted) */
	__u32 nodelay; /* TCP_NODELAY was set when it was established: see MDA_STREAM_RUN */
	/* Since when (ms of bpf_ktime) its peer has held more than MDA_UNREAD_MAX and read nothing,
	 * and the low bits of what the peer had read of it then (bytes - unread): 32 bits each, or
	 * sock_ops, which builds a record on its stack, outgrows the BPF stack. */
	__u32 behind_ms;
	__u32 peer_read;
	__u64 sk;      /* this end's struct sock, for its peer's sock_ops (mda_own_fin); 0: unknown */
};

/* mda_dest_map key: where connecting ends connect to. */
struct mda_dest {
	__u32 ip[4];
	__u32 port;
	__u32 pad;
	__u64 netns;
};

/* mda_dest_map value: the destination's accelerated connections that closed lately (sums halved
 * every MDA_SHORT_WINDOW connections). */
struct mda_dest_stat {
	__u32 conns;
	__u32 msgs;    /* sent by either end, redirected or passed */
	__u32 decided; /* new connections judged while the sums said short (some were probes) */
	__u32 pad;
};

/* sock_drain_map value. User space never writes a sock_proxy_map value (its whole-value write
 * would undo counters the programs add meanwhile): it asks for a stop here (requested = 1) and
 * the programs carry it out at the end's next message or segment. */
struct mda_drain {
	__u64 since_ns;  /* when the end stopped redirecting, or was asked to */
	__u32 reason;    /* enum mda_leave */
	__u32 requested;
};

/* What blocked_readers.c hands `mdatui serve` for each thread asleep in a read. */
struct mda_blocked_read {
	__u32 pid; /* its process */
	__u32 fd;
};

/* sock_helper_map value: what the connecting end leaves for the accepting end, keyed by the
 * connecting end's local address (which the accepting end sees as its remote address, also
 * behind an iptables REDIRECT, where the destination changes but the source does not). */
struct mda_pending {
	struct mda_sock_key key;
	struct mda_owner owner;
};

/* Why an end stopped redirecting. Its messages go through the stack from then on; it leaves the
 * sockhash (plain TCP again) once its reader has taken every redirected byte, since the kernel
 * frees a socket's unread redirected bytes when it leaves. User space (mdatui serve) sees that
 * through FIONREAD and takes it out; the programs cannot see a receive queue. */
enum mda_leave {
	MDA_LEAVE_NONE = 0,
	MDA_LEAVE_SENT_EARLY = 1,  /* sent before it was paired */
	MDA_LEAVE_STREAM = 2,      /* a stream of small writes: the stack is faster */
	MDA_LEAVE_PEER_GONE = 3,   /* the peer closed or left the sockhash */
	MDA_LEAVE_RULE = 4,        /* a live rule change refused the connection */
	MDA_LEAVE_DISABLE = 5,     /* the accelerator is being disabled */
	MDA_LEAVE_BLOCKING = 6,    /* a thread blocks reading it while another uses it (core/guard.py) */
	MDA_LEAVE_UNREAD = 7,      /* its peer did not keep up with what it sent (sk_msg.c) */
	MDA_LEAVE_OWN_FIN = 8,     /* it shut its sending side down (sock_ops.c, mda_own_fin) */
};

#define MDA_RULE_IP     (1 << 0)
#define MDA_RULE_PORT   (1 << 1)
#define MDA_RULE_UID    (1 << 2)
#define MDA_RULE_GID    (1 << 3)
#define MDA_RULE_RETURN (1 << 4)

/* An IPv4 CIDR a.b.c.d/N is kept as the IPv4-mapped ::ffff:a.b.c.d/(96+N), like the keys. */
struct mda_rule {
	__u32 flags;
	__u32 ip[4];   /* network byte order */
	__u32 mask[4]; /* network byte order */
	__u16 port_lo;
	__u16 port_hi;
	__u32 uid;
	__u32 gid;
};

/* sock_param_map holds two rule sets; mda_active_set (a map of its own, so that dump settings
 * written meanwhile cannot undo a flip) says which one is live. User space fills the idle set and
 * then flips the index, so each connection is judged by one whole set. */
struct mda_ruleset {
	__u32 count;
	__u32 n_accept;
	struct mda_rule rules[MDA_MAX_RULES];
};

struct mda_control {
	__u32 dump_on;
	__u32 dump_ip[4];   /* network byte order, as the keys; with dump_mask 0 any address */
	__u32 dump_mask[4];
	__u32 dump_port;  /* 0: any port */
	__u32 snaplen;
};

/* What `enable` was asked, kept beside the pins so that any later command can find it. */
struct mda_meta {
	char cgroup[256];
	char config[256];
	__u64 enabled_at; /* unix seconds */
};

enum mda_stat {
	MDA_STAT_SOCKHASH_FULL,
	MDA_STAT_PROXY_FULL,
	MDA_STAT_HELPER_FULL,
	MDA_STAT_UNPAIRED_REMOVED,
	MDA_STAT_TAINTED,
	MDA_STAT_REFUSED,
	MDA_STAT_REDIRECT_FAILED,
	MDA_STAT_DUMP_LOST,
	MDA_STAT_ACCELERATED,
	MDA_STAT_CLOSED_MSGS,
	MDA_STAT_CLOSED_BYTES,
	MDA_STAT_DEMOTED,
	MDA_STAT_DRAINED,   /* ends that left the sockhash with an empty queue (user space) */
	MDA_STAT_BLOCKING,  /* connections kept off: blocking full-duplex readers (user space) */
	MDA_STAT_CLOSED_PASSED, /* passed of the ends that left sock_proxy_map */
	MDA_STAT_EVENTS_LOST,   /* mda_events records a reader's full ring refused */
	MDA_STAT_UNREAD,        /* ends stopped because their peer fell too far behind */
	MDA_STAT_SHORT,         /* connections left to the stack: their destination's are short */
	MDA_STAT_LISTED,        /* ends newly put in sock_drain_map (user space adds its own),
	                         * each after its write: a sweep that finds it unmoved skips it */
	MDA_STAT_MAX,
};

enum mda_event_type {
	MDA_EV_ACCELERATED = 1,
	MDA_EV_REFUSED = 2,
	MDA_EV_CLOSED = 3,
	MDA_EV_REDIRECT_FAILED = 4,
	MDA_EV_DEMOTED = 5,
};

/* bpf_perf_event_output's answer when no reader has a ring on this CPU: nobody listens, so
 * nothing is lost. */
#define MDA_ENOENT 2

#define MDA_NO_RULE 0xffffffff /* refused because no ACCEPT rule matched */

struct mda_event {
	__u64 ts_ns;
	__u32 type;
	__u32 rule;
	struct mda_sock_key key;
	struct mda_sock_key peer;
	struct mda_owner owner;
	struct mda_owner peer_owner;
	__u64 msgs;
	__u64 bytes;
	__u64 passed;
};

struct mda_dump_event {
	__u64 ts_ns;
	struct mda_sock_key key;
	__u32 len;      /* bytes of the whole message */
	__u32 caplen;   /* bytes copied into data */
	__u32 active;   /* 1: sent by the connecting end (client to server) */
	__u32 pad;
	__u8 data[MDA_MAX_SNAPLEN];
};

BPF_SOCKHASH(sock_ops_map, struct mda_sock_key, MDA_MAX_SOCKS);
BPF_F_TABLE("hash", struct mda_sock_key, struct mda_conn, sock_proxy_map, MDA_MAX_SOCKS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct mda_sock_key, struct mda_pending, sock_helper_map, MDA_MAX_SOCKS, BPF_F_NO_PREALLOC);
BPF_ARRAY(sock_param_map, struct mda_ruleset, 2);
BPF_ARRAY(mda_active_set, __u32, 1);
/* A map of its own for the same reason as mda_active_set: dump settings are written whole. */
BPF_ARRAY(mda_policy, __u32, 1);
BPF_ARRAY(mda_control, struct mda_control, 1);
BPF_PERCPU_ARRAY(mda_stats, __u64, MDA_STAT_MAX);
BPF_PERCPU_ARRAY(mda_dump_scratch, struct mda_dump_event, 1);
BPF_F_TABLE("lru_hash", struct mda_dest, struct mda_dest_stat, mda_dest_map, MDA_MAX_DESTS, 0);
BPF_F_TABLE("sk_storage", int, struct mda_owner, sock_owner_map, 0, BPF_F_NO_PREALLOC | BPF_F_CLONE);
BPF_ARRAY(mda_meta, struct mda_meta, 1);
/* Ends that stopped redirecting (or were asked to) and still sit in the sockhash: whoever takes
 * them out (sock_ops at their next segment, or user space) walks this, not every end. */
BPF_F_TABLE("hash", struct mda_sock_key, struct mda_drain, sock_drain_map, MDA_MAX_SOCKS, BPF_F_NO_PREALLOC);
/* Non-zero while sock_drain_map holds requests from user space: only then does a message look
 * there, so the fast path pays one array read for it. */
BPF_ARRAY(mda_stop_req, __u32, 1);
BPF_PERF_OUTPUT(mda_events);
BPF_PERF_OUTPUT(mda_dump);
static __always_inline void mda_count(int stat)
{
	__u64 *v = mda_stats.lookup(&stat);
	if (v)
		(*v)++;
}

/* A pointer-sized kernel member at an offset the loader took from the kernel's BTF. */
static __always_inline __u64 mda_peek(void *at)
{
	__u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), at);
	return v;
}

#ifdef MDA_OFF_SOCK_USER_DATA
/* A socket's psock (struct sk_psock) as a number, 0 if it has none: sk_user_data carries flag
 * bits below the pointer (SK_USER_DATA_PTRMASK). */
static __always_inline __u64 mda_psock(__u64 sk)
{
	return sk ? mda_peek((void *)sk + MDA_OFF_SOCK_USER_DATA) & ~7UL : 0;
}
#endif

/* A 32-bit member of a psock: how many hold it (its sockhash entry, and each call inside
 * tcp_bpf's sendmsg or recvmsg, which holds it from before its verdict until the bytes are
 * queued at the peer), or how many redirected bytes wait in it unread. No psock: 0. */
static __always_inline __u32 mda_psock_u32(__u64 psock, __u32 off)
{
	__u32 v = 0;
	if (psock)
		bpf_probe_read_kernel(&v, sizeof(v), (void *)psock + off);
	return v;
}

static __always_inline __u32 mda_port_host(__u32 be_port)
{
	/* remote_port is the big-endian 16-bit port; older kernels shift it into the upper half. */
	return be_port > 0xffff ? bpf_ntohl(be_port) : bpf_ntohs((__u16)be_port);
}

static __always_inline int mda_is_v4(const __u32 *ip)
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff);
}

/* 127.0.0.0/8 (IPv4-mapped) or ::1 */
static __always_inline int mda_is_loopback(const __u32 *ip)
{
	if (mda_is_v4(ip))
		return (bpf_ntohl(ip[3]) >> 24) == 127;
	return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == bpf_htonl(1);
}

static __always_inline int mda_ip_in(const __u32 *ip, const __u32 *mask, const __u32 *net)
{
	return (ip[0] & mask[0]) == net[0] && (ip[1] & mask[1]) == net[1] &&
	       (ip[2] & mask[2]) == net[2] && (ip[3] & mask[3]) == net[3];
}

/* One record on mda_events, from either program. peer_owner 0: not known; counts 0: none.
 * The record is built in a per-CPU slot, not on the 512-byte BPF stack (with IPv6 keys it does
 * not fit beside a pairing's own variables); a program that interrupts another on the same CPU
 * (softirq over process context) takes the next slot, as the kernel's own perf output does. */
#define MDA_EVENT_NEST 4
BPF_PERCPU_ARRAY(mda_event_slots, struct mda_event, MDA_EVENT_NEST);
BPF_PERCPU_ARRAY(mda_event_depth, __u32, 1);

static __always_inline void mda_emit(void *ctx, __u32 type, __u32 rule, struct mda_sock_key *self,
				     struct mda_sock_key *peer, struct mda_owner *owner,
				     struct mda_owner *peer_owner, struct mda_conn *counts)
{
	__u32 zero = 0;
	__u32 *depth = mda_event_depth.lookup(&zero);
	if (!depth)
		return;
	__u32 slot = *depth;
	*depth = slot + 1;
	struct mda_event *ev = mda_event_slots.lookup(&slot);
	if (!ev) {
		mda_count(MDA_STAT_EVENTS_LOST);
		goto out;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->type = type;
	ev->rule = rule;
	ev->key = *self;
	ev->peer = *peer;
	ev->owner = *owner;
	if (peer_owner) {
		ev->peer_owner = *peer_owner;
	} else {
		ev->peer_owner.pid = MDA_UNKNOWN_ID;
		ev->peer_owner.uid = MDA_UNKNOWN_ID;
		ev->peer_owner.gid = MDA_UNKNOWN_ID;
		ev->peer_owner.cpu = MDA_UNKNOWN_ID;
	}
	ev->msgs = counts ? counts->msgs : 0;
	ev->bytes = counts ? counts->bytes : 0;
	ev->passed = counts ? counts->passed : 0;
	int err = mda_events.perf_submit(ctx, ev, sizeof(*ev));
	if (err && err != -MDA_ENOENT)
		mda_count(MDA_STAT_EVENTS_LOST);
out:
	*depth = slot;
}

/* This end stops redirecting; it leaves the sockhash once drained (see mda_conn). */
static __always_inline void mda_stop(struct mda_sock_key *key, struct mda_conn *c, __u32 reason)
{
	if (c->tainted)
		return;
	c->tainted = 1;
	c->reason = reason;
	struct mda_drain d = { .since_ns = bpf_ktime_get_ns(), .reason = reason };
	/* Counted once an end: one user space asked to stop is listed already. */
	if (sock_drain_map.insert(key, &d) == 0)
		mda_count(MDA_STAT_LISTED);
	else
		sock_drain_map.update(key, &d);
}

/* A connection leaves the fast path as a whole: each end may only leave the sockhash once the
 * other stopped redirecting into it. */
static __always_inline void mda_leave(struct mda_sock_key *self, struct mda_conn *c, __u32 reason)
{
	mda_stop(self, c, reason);
	struct mda_conn *peer = sock_proxy_map.lookup(&c->peer);
	if (peer)
		mda_stop(&c->peer, peer, reason);
}

/* Carry out what user space asked for this end, if anything. */
static __always_inline void mda_honour(struct mda_sock_key *key, struct mda_conn *c)
{
	__u32 zero = 0;
	__u32 *asked = mda_stop_req.lookup(&zero);
	if (!asked || !*asked || c->tainted)
		return;
	struct mda_drain *d = sock_drain_map.lookup(key);
	if (d && d->requested)
		mda_leave(key, c, d->reason);
}

/* One context field, loaded where it is written: otherwise the compiler may merge the IPv4 and
 * IPv6 loads below into one load through a computed pointer, which the verifier refuses for a
 * context ("dereference of modified ctx ptr"). */
#define MDA_CTX(ctx, field) ({ __u32 __v = (ctx)->field; asm volatile("" : "+r"(__v)); __v; })

/* Fills the key from a context that has the address fields of struct bpf_sock_ops / sk_msg_md
 * (each context field read directly, hence macros). The netns cookie costs a helper call, so it
 * is fetched only where an address is loopback. */
#define MDA_KEY_FROM_CTX(key, ctx) do {						\
	if (MDA_CTX(ctx, family) == AF_INET6) {					\
		(key)->local_ip[0] = MDA_CTX(ctx, local_ip6[0]);		\
		(key)->local_ip[1] = MDA_CTX(ctx, local_ip6[1]);		\
		(key)->local_ip[2] = MDA_CTX(ctx, local_ip6[2]);		\
		(key)->local_ip[3] = MDA_CTX(ctx, local_ip6[3]);		\
		(key)->remote_ip[0] = MDA_CTX(ctx, remote_ip6[0]);		\
		(key)->remote_ip[1] = MDA_CTX(ctx, remote_ip6[1]);		\
		(key)->remote_ip[2] = MDA_CTX(ctx, remote_ip6[2]);		\
		(key)->remote_ip[3] = MDA_CTX(ctx, remote_ip6[3]);		\
	} else {								\
		(key)->local_ip[2] = bpf_htonl(0xffff);				\
		(key)->local_ip[3] = MDA_CTX(ctx, local_ip4);			\
		(key)->remote_ip[2] = bpf_htonl(0xffff);			\
		(key)->remote_ip[3] = MDA_CTX(ctx, remote_ip4);			\
	}									\
	(key)->local_port = MDA_CTX(ctx, local_port);				\
	(key)->remote_port = mda_port_host(MDA_CTX(ctx, remote_port));		\
	(key)->netns = 0;							\
	if (mda_is_loopback((key)->local_ip) || mda_is_loopback((key)->remote_ip))	\
		(key)->netns = bpf_get_netns_cookie(ctx);			\
} while (0)

#endif
