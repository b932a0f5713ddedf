/* fs_loop — the request loop of a mount: one reader of /dev/fuse at a time (leader/follower).
 *
 * The loop itself knows nothing of FUSE: lf_run drives any source of requests through the
 * lf_ops callbacks, so that tests can feed it from a pipe. fs_fuse.c binds it to a libfuse
 * session (fs_loop). See fs_loop.c for why and how.
 */
#ifndef BRAIDFS_FS_LOOP_H
#define BRAIDFS_FS_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LF_KINDS 64 /* request kinds with a cost of their own (FUSE opcodes are below 64) */

struct lf_ops {
	/* Read the next request into buf (the calling worker's own, buf_size bytes, zeroed
	 * before its first use). >0: a request; 0: the session ended; -EINTR, -EAGAIN: try
	 * again; other -errno: the device failed (the loop ends with it). The only place a
	 * worker may be cancelled when the loop ends. */
	int (*receive)(void *ctx, void *buf);
	/* The kind of the request in buf: below LF_KINDS its cost is learned; from LF_KINDS
	 * up it is always handled off the reader's place. */
	unsigned (*kind)(void *ctx, const void *buf);
	/* Handle the request (reply included). */
	void (*process)(void *ctx, void *buf);
	/* Was the session told to end (by a signal)? Polled by the thread in lf_run. */
	bool (*ended)(void *ctx);
	/* Free what receive allocated in buf (NULL: nothing). */
	void (*buf_free)(void *ctx, void *buf);
	/* Is a request there for receive to take at once (or has the session ended)? Never
	 * waits. NULL: the loop never spins (lf_config.spin_ns). */
	bool (*ready)(void *ctx);
};

/* What the requests of one kind cost so far: how many process() handled and the wall time
 * it took for them. Updated by the workers with relaxed atomics; readable at any time. */
struct lf_kind_count {
	_Atomic uint64_t count;
	_Atomic uint64_t ns;
};

struct lf_config {
	unsigned max_threads; /* workers at most, >= 1 */
	/* A request whose kind took longer than this on average (wall clock, running mean of
	 * the last 8 or so) is handed off before it is handled. */
	uint32_t inline_ns;
	uint64_t always_off; /* bit k: kind k is always handed off */
	size_t buf_size;     /* bytes of each worker's request buffer */
	/* After a request of a kind in spin_kinds (bit k: kind k), the only reader, with no
	 * request waiting off its place, asks ready() for up to spin_ns before it calls
	 * receive (which sleeps): a request that comes meanwhile wakes no thread. 0: never. */
	uint32_t spin_ns;
	uint64_t spin_kinds;
	/* LF_KINDS entries the loop adds every handled request below LF_KINDS to; NULL: none.
	 * Owned by the caller, who may read it while the loop runs. */
	struct lf_kind_count *counts;
};

struct lf_stats {
	uint64_t requests;
	uint64_t handed_off; /* by kind or cost, before they were handled */
	uint64_t hinted;     /* by wait_hint() while they were handled */
	uint64_t woken;	     /* parked workers woken (or started) to take a reader's place */
	uint64_t spun;	     /* receives that found their request while the reader spun */
	unsigned threads;    /* workers started */
};

/* Serve requests until receive returns 0 or fails, or ended() says so; then stop every
 * worker (a worker handling a request finishes it first) and return 0 or receive's -errno.
 * stats (NULL ok) gets the counts. Signals the mount handles (SIGINT, SIGTERM, SIGHUP,
 * SIGPIPE) stay blocked in the workers, so they reach the calling thread. */
int lf_run(const struct lf_ops *ops, void *ctx, const struct lf_config *cfg,
	   struct lf_stats *stats);

#endif
