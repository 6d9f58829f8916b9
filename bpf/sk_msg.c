/* sk_msg verdict on sock_ops_map: hand each sendmsg straight to the peer's receive queue.
 *
 * This runs for every message of every end in the sockhash, so it does the hash lookups of both
 * ends and the counters; the dump copy costs only while an operator has dump switched on, the
 * look at the peer's backlog once a MiB.
 */
#include "mdatui.h"

static __always_inline int mda_dump_wanted(struct mda_control *ctl, struct mda_sock_key *k)
{
	if ((ctl->dump_mask[0] | ctl->dump_mask[1] | ctl->dump_mask[2] | ctl->dump_mask[3]) &&
	    !mda_ip_in(k->local_ip, ctl->dump_mask, ctl->dump_ip) &&
	    !mda_ip_in(k->remote_ip, ctl->dump_mask, ctl->dump_ip))
		return 0;
	if (ctl->dump_port && k->local_port != ctl->dump_port && k->remote_port != ctl->dump_port)
		return 0;
	return 1;
}

static __always_inline void mda_dump_msg(struct sk_msg_md *msg, struct mda_sock_key *self,
					 __u32 active)
{
	__u32 zero = 0;
	struct mda_control *ctl = mda_control.lookup(&zero);
	if (!ctl || !ctl->dump_on || !mda_dump_wanted(ctl, self))
		return;
	struct mda_dump_event *ev = mda_dump_scratch.lookup(&zero);
	if (!ev)
		return;
	__u32 len = ctl->snaplen;
	if (len > msg->size)
		len = msg->size;
	if (len > MDA_MAX_SNAPLEN)
		len = MDA_MAX_SNAPLEN;
	/* A message spans several pages; the copy needs its first len bytes in one piece. */
	if (len && bpf_msg_pull_data(msg, 0, len, 0))
		len = 0;
	void *data = (void *)(long)msg->data;
	void *end = (void *)(long)msg->data_end;
	if (data + len > end)
		len = end - data;
	len &= 0x1fff;
	if (len > MDA_MAX_SNAPLEN)
		len = MDA_MAX_SNAPLEN;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->key = *self;
	ev->len = msg->size;
	ev->caplen = len;
	ev->active = active;
	if (len)
		bpf_probe_read_kernel(ev->data, len, data);
	if (mda_dump.perf_submit(msg, ev, sizeof(*ev) - MDA_MAX_SNAPLEN + len))
		mda_count(MDA_STAT_DUMP_LOST);
}

/* Plain TCP stops a sender once its peer's receive buffer is full; redirected bytes are charged
 * to the peer and nothing stops the sender, so a peer that reads slowly or never holds ever more
 * kernel memory. A reader that keeps reading is left alone up to MDA_UNREAD_CAP (a quarter of
 * what puts TCP under memory pressure): a fast sender runs far ahead on the fast path (iperf3 -l
 * 128K: up to 200 MB on two CPUs, 1.1 GB with both ends on one, measured). A peer more than TCP
 * would let it hold (MDA_UNREAD_MAX, the largest receive buffer) behind that reads nothing for
 * MDA_BEHIND_MS does not read. Either way the connection goes back to the stack, losslessly, and
 * its back pressure stops the sender. The peer is the socket this message was just redirected to
 * (sk_redir of the kernel's struct sk_msg behind the context); what waits there is its psock's
 * msg_tot_len, the count FIONREAD gives. Offsets: see loader.py. */
static __always_inline int mda_peer_behind(struct sk_msg_md *msg, struct mda_conn *c)
{
#if defined(MDA_OFF_SK_MSG_SK_REDIR) && defined(MDA_OFF_SOCK_USER_DATA) && \
	defined(MDA_OFF_PSOCK_MSG_TOT_LEN)
	__u64 psock = mda_psock(mda_peek((void *)msg + MDA_OFF_SK_MSG_SK_REDIR));
	__u32 unread = mda_psock_u32(psock, MDA_OFF_PSOCK_MSG_TOT_LEN);
	if (unread <= MDA_UNREAD_MAX) {
		c->behind_ms = 0;
		return 0;
	}
	if (unread > MDA_UNREAD_CAP)
		return 1;
	__u32 now = bpf_ktime_get_ns() / 1000000 | 1, read = c->bytes - unread;  /* 0: not behind */
	if (!c->behind_ms || read != c->peer_read) {
		c->behind_ms = now;
		c->peer_read = read;
		return 0;
	}
	return now - c->behind_ms >= MDA_BEHIND_MS;
#else
	return 0;
#endif
}

/* The average write under which a stream of this end goes back (see MDA_STREAM_RUN), and the one
 * under which it stays after all (*tiny). */
static __always_inline __u64 mda_stream_small(struct mda_sock_key *self, struct mda_conn *c,
					      struct mda_conn *peer, __u64 *tiny)
{
	/* Either key carries a netns cookie when the connection runs over loopback; behind a
	 * REDIRECT only the sidecar's end has one. */
	int loopback = self->netns || c->peer.netns;
	*tiny = 0;
	if (!c->nodelay)
		return loopback ? MDA_STREAM_SMALL : MDA_STREAM_SMALL_VETH;
	if (c->owner.cpu != MDA_UNKNOWN_ID && c->owner.cpu == peer->owner.cpu) {
		*tiny = loopback ? 0 : MDA_STREAM_TINY_VETH;
		return loopback ? MDA_STREAM_PINNED : MDA_STREAM_PINNED_VETH;
	}
	__u32 zero = 0;
	__u32 *policy = mda_policy.lookup(&zero);
	return policy && *policy == MDA_NODELAY_FAST ? 0 : MDA_STREAM_ANY;
}

/* See MDA_STREAM_RUN: send a stream the stack moves faster back to it. The sizes are looked at
 * once a run, not at every message. */
static __always_inline void mda_watch_stream(struct sk_msg_md *msg, struct mda_sock_key *self,
					     struct mda_conn *c, struct mda_conn *peer, __u32 size)
{
	if (peer->run) {
		peer->run = 0;
		peer->run_bytes = 0;
	}
	c->run++;
	c->run_bytes += size;
	if (c->run < MDA_STREAM_RUN)
		return;
	__u64 tiny;
	__u64 small = mda_stream_small(self, c, peer, &tiny);
	if (c->run_bytes >= MDA_STREAM_RUN * small || c->run_bytes < MDA_STREAM_RUN * tiny) {
		c->run = 0; /* the fast path is faster at this size: look again later */
		c->run_bytes = 0;
		return;
	}
	/* The peer reads what was redirected before what now comes through the stack, so the
	 * order of the bytes holds; both ends leave the sockhash once their queues are empty. */
	mda_leave(self, c, MDA_LEAVE_STREAM);
	mda_count(MDA_STAT_DEMOTED);
	mda_emit(msg, MDA_EV_DEMOTED, 0, self, &c->peer, &c->owner, 0, c);
}

int mda_sk_msg(struct sk_msg_md *msg)
{
	struct mda_sock_key self = {};
	MDA_KEY_FROM_CTX(&self, msg);
	struct mda_conn *c = sock_proxy_map.lookup(&self);
	if (!c)
		return SK_PASS;
	mda_honour(&self, c);
	if (c->paired && !c->tainted) {
		struct mda_conn *peer = sock_proxy_map.lookup(&c->peer);
		if (peer)
			mda_honour(&c->peer, peer);
		__u32 size = msg->size;
		/* A peer that stopped redirecting is leaving: so does this end, or the peer could
		 * never leave (its queue would keep filling). */
		int peer_stopped = peer && peer->tainted;
		if (peer && !peer_stopped) {
			/* BCC rewrites this method call into a statement: it cannot sit in the if. */
			long verdict = sock_ops_map.msg_redirect_hash(msg, &c->peer, BPF_F_INGRESS);
			if (verdict == SK_PASS) {
				lock_xadd(&c->msgs, 1);
				lock_xadd(&c->bytes, size);
				mda_dump_msg(msg, &self, c->active);
				/* Looked at once a MiB sent: the peer can fall behind no faster. */
				__u64 sent = c->bytes;
				if ((sent >> 20) != ((sent - size) >> 20) && mda_peer_behind(msg, c)) {
					/* What it sends next goes through the stack, read after what
					 * waits: the order of the bytes holds. */
					mda_leave(&self, c, MDA_LEAVE_UNREAD);
					mda_count(MDA_STAT_UNREAD);
					return SK_PASS;
				}
				mda_watch_stream(msg, &self, c, peer, size);
				return SK_PASS;
			}
		}
		/* From now on this end talks through the stack too. A peer that closed or left the
		 * sockhash unannounced made the redirect fail, and that is said once. */
		mda_leave(&self, c, MDA_LEAVE_PEER_GONE);
		if (!peer_stopped) {
			mda_count(MDA_STAT_REDIRECT_FAILED);
			mda_emit(msg, MDA_EV_REDIRECT_FAILED, 0, &self, &c->peer, &c->owner, 0, c);
		}
	} else if (!c->tainted) {
		mda_stop(&self, c, MDA_LEAVE_SENT_EARLY);
		mda_count(MDA_STAT_TAINTED);
	}
	lock_xadd(&c->passed, 1);
	return SK_PASS;
}
