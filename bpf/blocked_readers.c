/* iter/task: the threads that sleep in a read of some fd, in processes of more than one thread.
 *
 * `mdatui serve` must find a thread blocked in recv() on a socket in the sockhash before tcp_bpf
 * wakes it without data (core/guard.py). Reading /proc/PID/task/TID/syscall for every thread of
 * the cgroup took some 5 µs of CPU a thread, at every look (10 a second): a quarter of a CPU for
 * 5,000 threads. One read of this iterator, pinned by the loader, walks every task of the host
 * in the kernel (some 0.4 µs each) and hands back only the few that matter. The guard still walks
 * /proc where that costs less (a few threads on a busy host), and where the loader could not
 * compile this: it does only when the kernel's BTF gives every member below (MDA_GUARD_ITER).
 */
#include "mdatui.h"

#ifdef MDA_GUARD_ITER
/* The iterator's context, as the kernel lays it out (it is not in the UAPI headers). */
struct bpf_iter_meta {
	void *seq;
	__u64 session_id;
	__u64 seq_num;
};
struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	void *task;
};

/* A blocked read sleeps so, and only a sleeping task's saved registers tell its system call. */
#define MDA_TASK_INTERRUPTIBLE 1
#define MDA_PF_KTHREAD 0x00200000 /* kernel threads have no system call in their registers */

int bpf_iter__task(struct bpf_iter__task *ctx)
{
	void *task = ctx->task;
	if (!task)
		return 0;
	__u32 state = 0, flags = 0;
	bpf_probe_read_kernel(&state, sizeof(state), task + MDA_OFF_TASK_STATE);
	bpf_probe_read_kernel(&flags, sizeof(flags), task + MDA_OFF_TASK_FLAGS);
	if (state != MDA_TASK_INTERRUPTIBLE || flags & MDA_PF_KTHREAD)
		return 0;
	void *regs = (void *)bpf_task_pt_regs(task);
	__u64 nr = 0, fd = 0;
	bpf_probe_read_kernel(&nr, sizeof(nr), regs + MDA_OFF_REGS_SYSCALL);
	if (nr != MDA_NR_READ && nr != MDA_NR_READV && nr != MDA_NR_RECVFROM && nr != MDA_NR_RECVMSG)
		return 0;
	/* A single-threaded reader cannot be woken by its own sends or shutdown(). */
	void *signal = (void *)mda_peek(task + MDA_OFF_TASK_SIGNAL);
	int threads = 0;
	bpf_probe_read_kernel(&threads, sizeof(threads), signal + MDA_OFF_SIGNAL_NR_THREADS);
	if (threads < 2)
		return 0;
	bpf_probe_read_kernel(&fd, sizeof(fd), regs + MDA_OFF_REGS_ARG0);
	struct mda_blocked_read r = { .fd = fd };
	bpf_probe_read_kernel(&r.pid, sizeof(r.pid), task + MDA_OFF_TASK_TGID);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}
#endif
