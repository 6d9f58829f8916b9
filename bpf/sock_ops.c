/* sock_ops on the cgroup: find the two ends of each local TCP connection (IPv4 or IPv6) and pair
 * them.
 *
 * The connecting end is established first (it sends the final ACK of the handshake), so it
 * enters the sockhash at once and leaves its key in sock_helper_map; the accepting end looks it
 * up there by its own remote address and, if the rules agree, completes the pair. A connecting
 * end whose peer never shows up (remote server, server outside the cgroup, refused by a rule) is
 * taken out of the sockhash when the first segment after the handshake reaches it (an ACK of its
 * data, or data of a server that speaks first), so it stops paying for the sk_msg program after
 * its first flight. A local peer in the cgroup is always paired by then: it is established by
 * the handshake's last ACK, before it can send anything.
 */
#include "mdatui.h"

struct mda_view {
	const __u32 *ip[3]; /* connecting end's local, its original destination, accepting end's local */
	__u32 port[3];
	__u32 uid[2];   /* connecting end's owner, accepting end's owner */
	__u32 gid[2];
};

static __always_inline void mda_owner_of(struct bpf_sock_ops *skops, struct mda_owner *out)
{
	out->pid = MDA_UNKNOWN_ID;
	out->uid = MDA_UNKNOWN_ID;
	out->gid = MDA_UNKNOWN_ID;
	out->cpu = MDA_UNKNOWN_ID;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct mda_owner *o = sock_owner_map.sk_storage_get(sk, 0, 0);
	if (o)
		*out = *o;
}

static __always_inline int mda_port_in(struct mda_rule *r, __u32 port)
{
	return port >= r->port_lo && port <= r->port_hi;
}

/* Every option of a rule must hold; each holds when any end of the connection satisfies it. */
static __always_inline int mda_rule_matches(struct mda_rule *r, struct mda_view *v)
{
	if ((r->flags & MDA_RULE_IP) &&
	    !(mda_ip_in(v->ip[0], r->mask, r->ip) || mda_ip_in(v->ip[1], r->mask, r->ip) ||
	      mda_ip_in(v->ip[2], r->mask, r->ip)))
		return 0;
	if ((r->flags & MDA_RULE_PORT) &&
	    !(mda_port_in(r, v->port[0]) || mda_port_in(r, v->port[1]) || mda_port_in(r, v->port[2])))
		return 0;
	if ((r->flags & MDA_RULE_UID) && v->uid[0] != r->uid && v->uid[1] != r->uid)
		return 0;
	if ((r->flags & MDA_RULE_GID) && v->gid[0] != r->gid && v->gid[1] != r->gid)
		return 0;
	return 1;
}

/* 1: accelerate. 0: refused, *rule says by which rule (MDA_NO_RULE: no ACCEPT matched). */
static __always_inline int mda_judge(struct mda_view *v, __u32 *rule)
{
	__u32 zero = 0;
	__u32 *active = mda_active_set.lookup(&zero);
	if (!active)
		return 1;
	__u32 set = *active & 1;
	struct mda_ruleset *rs = sock_param_map.lookup(&set);
	if (!rs)
		return 1;
	__u32 count = rs->count;
	int accepted = 0;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < MDA_MAX_RULES; i++) {
		if (i >= count)
			break;
		struct mda_rule *r = &rs->rules[i];
		if (!mda_rule_matches(r, v))
			continue;
		if (r->flags & MDA_RULE_RETURN) {
			*rule = i;
			return 0;
		}
		accepted = 1;
	}
	if (rs->n_accept && !accepted) {
		*rule = MDA_NO_RULE;
		return 0;
	}
	return 1;
}

/* The connecting end sees its own source address; the accepting end sees it as remote. */
static __always_inline void mda_helper_key(struct mda_sock_key *hk, const __u32 *ip, __u32 port,
					   __u64 netns)
{
	hk->local_ip[0] = ip[0];
	hk->local_ip[1] = ip[1];
	hk->local_ip[2] = ip[2];
	hk->local_ip[3] = ip[3];
	hk->local_port = port;
	hk->netns = mda_is_loopback(ip) ? netns : 0;
}

/* Every segment of an end in the sockhash runs sock_ops: an unpaired connecting end leaves at
 * its first, and a paired end carries out a stop that user space asked for (an idle end sends
 * no message that could). Ends on the fast path receive no segments: this costs them nothing. */
#define MDA_WATCH_SEGMENTS (BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG)

/* Read once, when the end is established: an application that sets TCP_NODELAY later (after
 * accept() rather than on the listener) is taken for a Nagle one, and at worst handed back to
 * the stack it asked for. */
static __always_inline __u32 mda_nodelay(struct bpf_sock_ops *skops)
{
	int on = 0;
	if (bpf_getsockopt(skops, MDA_SOL_TCP, MDA_TCP_NODELAY, &on, sizeof(on)))
		return 0;
	return on != 0;
}

/* The connecting end's key names the destination for both ends. */
static __always_inline void mda_dest_of(struct mda_dest *d, const struct mda_sock_key *active)
{
	d->ip[0] = active->remote_ip[0];
	d->ip[1] = active->remote_ip[1];
	d->ip[2] = active->remote_ip[2];
	d->ip[3] = active->remote_ip[3];
	d->port = active->remote_port;
	d->netns = active->netns;
}

/* 1: leave this new connection to the stack (see MDA_SHORT_MSGS). */
static __always_inline int mda_short(const struct mda_sock_key *self)
{
	struct mda_dest d = {};
	mda_dest_of(&d, self);
	struct mda_dest_stat *s = mda_dest_map.lookup(&d);
	if (!s || s->conns < MDA_SHORT_MIN || s->msgs >= MDA_SHORT_MSGS * s->conns)
		return 0;
	/* Racing increments may repeat or skip a probe: either is harmless. */
	return ++s->decided % MDA_SHORT_PROBE != 0;
}

/* A paired end closed: what it sent goes into its destination's sums; the connecting end counts
 * the connection. */
static __always_inline void mda_count_dest(const struct mda_sock_key *self, const struct mda_conn *c)
{
	struct mda_dest d = {};
	mda_dest_of(&d, c->active ? self : &c->peer);
	struct mda_dest_stat fresh = {};
	struct mda_dest_stat *s = mda_dest_map.lookup_or_try_init(&d, &fresh);
	if (!s)
		return;
	__u64 sent = c->msgs + c->passed;
	s->msgs += sent > 0xffff ? 0xffff : (__u32)sent; /* one endless stream must not swamp it */
	if (!c->active)
		return;
	s->conns++;
	if (s->conns >= MDA_SHORT_WINDOW) {
		s->conns >>= 1;
		s->msgs >>= 1;
	}
}

/* The struct sock behind the context, as a number to read kernel memory at (the verifier
 * allows no arithmetic on a socket pointer); 0 where the kernel's BTF does not say where. */
static __always_inline __u64 mda_sock_of(struct bpf_sock_ops *skops)
{
#ifdef MDA_OFF_SOCK_OPS_SK
	return mda_peek((void *)skops + MDA_OFF_SOCK_OPS_SK);
#else
	return 0;
#endif
}

static __always_inline void mda_active_established(struct bpf_sock_ops *skops)
{
	struct mda_sock_key self = {}, hk = {};
	MDA_KEY_FROM_CTX(&self, skops);
	if (mda_short(&self)) {
		mda_count(MDA_STAT_SHORT);
		return;
	}
	/* BCC rewrites this method call into a statement: it cannot sit inside the if. */
	int err = sock_ops_map.sock_hash_update(skops, &self, BPF_ANY);
	if (err) {
		mda_count(MDA_STAT_SOCKHASH_FULL);
		return;
	}
	struct mda_conn c = {};
	c.since_ns = bpf_ktime_get_ns();
	c.active = 1;
	c.nodelay = mda_nodelay(skops);
	c.sk = mda_sock_of(skops);
	mda_owner_of(skops, &c.owner);
	if (sock_proxy_map.update(&self, &c)) {
		sock_ops_map.delete(&self);
		mda_count(MDA_STAT_PROXY_FULL);
		return;
	}
	struct mda_pending p = {};
	p.key = self;
	p.owner = c.owner;
	mda_helper_key(&hk, self.local_ip, self.local_port, self.netns);
	if (sock_helper_map.update(&hk, &p)) {
		sock_proxy_map.delete(&self);
		sock_ops_map.delete(&self);
		mda_count(MDA_STAT_HELPER_FULL);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, MDA_WATCH_SEGMENTS);
}

static __always_inline void mda_passive_established(struct bpf_sock_ops *skops)
{
	struct mda_sock_key self = {}, hk = {};
	MDA_KEY_FROM_CTX(&self, skops);
	mda_helper_key(&hk, self.remote_ip, self.remote_port, self.netns);
	struct mda_pending *found = sock_helper_map.lookup(&hk);
	if (!found)
		return; /* the other end is not ours: stay on the normal path, pay nothing */
	/* The connecting end's key goes straight into this end's record: the BPF stack is
	 * small. */
	struct mda_conn c = {};
	c.peer = found->key;
	struct mda_owner their = found->owner;
	sock_helper_map.delete(&hk);
	struct mda_conn *peer = sock_proxy_map.lookup(&c.peer);
	if (!peer || peer->tainted)
		return; /* gone, or it sent before it could be paired: it stays on the stack */

	mda_owner_of(skops, &c.owner);
	struct mda_view v = {
		.ip = { c.peer.local_ip, c.peer.remote_ip, self.local_ip },
		.port = { c.peer.local_port, c.peer.remote_port, self.local_port },
		.uid = { their.uid, c.owner.uid },
		.gid = { their.gid, c.owner.gid },
	};
	__u32 rule = 0;
	if (!mda_judge(&v, &rule)) {
		mda_count(MDA_STAT_REFUSED);
		mda_emit(skops, MDA_EV_REFUSED, rule, &c.peer, &self, &their, &c.owner, 0);
		return;
	}
	int err = sock_ops_map.sock_hash_update(skops, &self, BPF_ANY);
	if (err) {
		mda_count(MDA_STAT_SOCKHASH_FULL);
		return;
	}
	c.since_ns = bpf_ktime_get_ns();
	c.paired = 1;
	c.nodelay = mda_nodelay(skops);
	c.sk = mda_sock_of(skops);
	if (sock_proxy_map.update(&self, &c)) {
		sock_ops_map.delete(&self);
		mda_count(MDA_STAT_PROXY_FULL);
		return;
	}
	peer->peer = self;
	/* The peer's sk_msg reads paired and then peer: the key must be visible before the flag.
	 * BPF has no fence instruction; a compiler barrier keeps the store order, which x86
	 * (the only JIT this targets) preserves. */
	asm volatile("" ::: "memory");
	peer->paired = 1;
	bpf_sock_ops_cb_flags_set(skops, MDA_WATCH_SEGMENTS);
	mda_count(MDA_STAT_ACCELERATED);
	mda_emit(skops, MDA_EV_ACCELERATED, 0, &c.peer, &self, &their, &c.owner, 0);
}

/* Drop this end's records; tell user space what it did if it had an entry. The sockhash entry
 * is the caller's: see mda_sock_ops. */
static __always_inline void mda_forget(struct bpf_sock_ops *skops, int report)
{
	struct mda_sock_key self = {}, hk = {};
	MDA_KEY_FROM_CTX(&self, skops);
	struct mda_conn *c = sock_proxy_map.lookup(&self);
	if (c) {
		if (report) {
			if (c->paired)
				mda_count_dest(&self, c);
			mda_emit(skops, MDA_EV_CLOSED, 0, &self, &c->peer, &c->owner, 0, c);
			__u32 k = MDA_STAT_CLOSED_MSGS;
			__u64 *v = mda_stats.lookup(&k);
			if (v)
				*v += c->msgs;
			k = MDA_STAT_CLOSED_BYTES;
			v = mda_stats.lookup(&k);
			if (v)
				*v += c->bytes;
		}
		/* Unpaired ends too: what went through the stack stays counted when an end goes. */
		__u32 gone = MDA_STAT_CLOSED_PASSED;
		__u64 *passed = mda_stats.lookup(&gone);
		if (passed)
			*passed += c->passed;
		if (c->active && !c->paired) {
			mda_helper_key(&hk, self.local_ip, self.local_port, self.netns);
			sock_helper_map.delete(&hk);
		}
		/* Nothing is redirected into the peer any more: it leaves once it has read what
		 * this end sent, or a reader of it that never sends would stay in the sockhash. */
		struct mda_conn *peer = sock_proxy_map.lookup(&c->peer);
		if (c->paired && peer)
			mda_stop(&c->peer, peer, MDA_LEAVE_PEER_GONE);
		sock_proxy_map.delete(&self);
	}
	sock_drain_map.delete(&self);
}

#if defined(MDA_OFF_SOCK_OPS_SK) && defined(MDA_OFF_SOCK_USER_DATA) && \
	defined(MDA_OFF_PSOCK_REFCNT) && defined(MDA_OFF_PSOCK_MSG_TOT_LEN) && \
	defined(MDA_OFF_SOCK_SK_SOCKET) && defined(MDA_OFF_SOCKET_FILE) && defined(MDA_OFF_FILE_F_FLAGS)
#define MDA_OWN_FIN
/* Whether the socket's file is non-blocking: then no read of it ever waits in tcp_bpf_recvmsg. */
static __always_inline int mda_nonblocking(__u64 sk)
{
	__u64 sock = sk ? mda_peek((void *)sk + MDA_OFF_SOCK_SK_SOCKET) : 0;
	__u64 file = sock ? mda_peek((void *)sock + MDA_OFF_SOCKET_FILE) : 0;
	__u32 flags = 0;
	if (file)
		bpf_probe_read_kernel(&flags, sizeof(flags), (void *)file + MDA_OFF_FILE_F_FLAGS);
	return (flags & MDA_O_NONBLOCK) != 0;
}
#endif

/* This end shut its sending side down (its own FIN; close() takes a socket out of the sockhash
 * before it gets here). A blocking read of it from now on returns EAGAIN where TCP would wait
 * on: the peer acknowledges the FIN at the next timer tick (no data has crossed TCP, so the
 * delayed ACK never grew, measured 1.2-3.6 ms against TCP's 41) and the move to FIN_WAIT2
 * wakes the reader with nothing to read (tcp_bpf_recvmsg does not wait again). So a blocking
 * socket's connection leaves the fast path, and this end leaves the sockhash here, inside
 * shutdown(), before the application can read again: plain TCP from its next read on. That
 * loses nothing only while no redirected byte waits in it and none is on its way: nobody but
 * its sockhash entry holds its psock or its peer's (a peer's sendmsg takes its own before its
 * verdict, which then sees the stop flags stored here, and holds it until the bytes are queued
 * at this end). Otherwise it leaves as every end does, drained by `mdatui serve`. */
static __always_inline void mda_own_fin(struct bpf_sock_ops *skops)
{
#ifdef MDA_OWN_FIN
	struct mda_sock_key self = {};
	MDA_KEY_FROM_CTX(&self, skops);
	struct mda_conn *c = sock_proxy_map.lookup(&self);
	if (!c || !c->paired || c->tainted)
		return;
	__u64 sk = mda_sock_of(skops);
	if (mda_nonblocking(sk))
		return;
	struct mda_conn *peer = sock_proxy_map.lookup(&c->peer);
	if (!peer)
		return;
	mda_leave(&self, c, MDA_LEAVE_OWN_FIN);
	/* A locked instruction: the stop flags are seen by every CPU before the holders are read
	 * (x86 may let a load pass an earlier store, but not a locked instruction). */
	lock_xadd(&c->passed, 0);
	__u64 own = mda_psock(sk);
	if (mda_psock_u32(own, MDA_OFF_PSOCK_REFCNT) != 1 ||
	    mda_psock_u32(own, MDA_OFF_PSOCK_MSG_TOT_LEN) != 0 ||
	    mda_psock_u32(mda_psock(peer->sk), MDA_OFF_PSOCK_REFCNT) != 1)
		return;
	if (sock_ops_map.delete(&self) == 0) {
		sock_drain_map.delete(&self);
		mda_count(MDA_STAT_DRAINED);
	}
#endif
}

static __always_inline void mda_segment(struct bpf_sock_ops *skops)
{
	struct mda_sock_key self = {};
	MDA_KEY_FROM_CTX(&self, skops);
	struct mda_conn *c = sock_proxy_map.lookup(&self);
	if (c && c->paired) {
		mda_honour(&self, c);
		/* Stopped and out of sock_drain_map: it has left the sockhash, stop watching. */
		if (c->tainted && !sock_drain_map.lookup(&self))
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		return;
	}
	/* The peer would have been paired before it could send this: it never will be. Nothing
	 * was redirected into this end, so leaving the sockhash loses nothing. */
	mda_forget(skops, 0);
	sock_ops_map.delete(&self);
	mda_count(MDA_STAT_UNPAIRED_REMOVED);
	bpf_sock_ops_cb_flags_set(skops, 0);
}

int mda_sock_ops(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 0;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		mda_active_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		mda_passive_established(skops);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		mda_segment(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* A closed end stays in the sockhash: the application may still hold it, and taking
		 * it out would free the redirected bytes it has not read (an end that shut its
		 * sending side down reaches CLOSE as soon as its peer's FIN comes, however much of
		 * what the peer sent before still waits). The kernel takes it out when the
		 * application closes the socket. */
		if (skops->args[1] == BPF_TCP_CLOSE)
			mda_forget(skops, 1);
		else if (skops->args[1] == BPF_TCP_FIN_WAIT1)
			mda_own_fin(skops);
		break;
	}
	return 0;
}
