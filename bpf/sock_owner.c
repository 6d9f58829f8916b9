/* cgroup/sock_create: remember who made each TCP socket (IPv4 or IPv6).
 *
 * sock_ops callbacks run in softirq, where "current" is whoever the CPU happened to interrupt,
 * so the owner is taken here, in the creating process, and kept in socket-local storage.
 * Accepted sockets inherit their listener's record (BPF_F_CLONE), as iptables' owner match
 * attributes them to the listener's owner.
 */
#include "mdatui.h"

/* The loader takes task_struct.nr_cpus_allowed's offset from the running kernel's BTF: the
 * headers BCC compiles against may be another version's. */
static __always_inline __u32 mda_pinned_cpu(void)
{
#ifdef MDA_TASK_NR_CPUS_ALLOWED
	int allowed = 0;
	void *task = (void *)bpf_get_current_task();
	if (!bpf_probe_read_kernel(&allowed, sizeof(allowed), task + MDA_TASK_NR_CPUS_ALLOWED) &&
	    allowed == 1)
		return bpf_get_smp_processor_id();
#endif
	return MDA_UNKNOWN_ID;
}

int mda_sock_create(struct bpf_sock *sk)
{
	if ((sk->family != AF_INET && sk->family != AF_INET6) || sk->type != 1 /* SOCK_STREAM */)
		return 1;
	struct mda_owner *o = sock_owner_map.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (o) {
		__u64 ug = bpf_get_current_uid_gid();
		o->uid = (__u32)ug;
		o->gid = ug >> 32;
		o->pid = bpf_get_current_pid_tgid() >> 32;
		o->cpu = mda_pinned_cpu();
	}
	return 1; /* never refuse a socket */
}
