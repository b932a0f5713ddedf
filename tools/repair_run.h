/* repair_run — a resync or rebuild of one (chain, target) driven by the metadata database:
 * the repair engine (dataservice/repair.h) fed by and reporting into the cluster tables.
 *
 *   resync:  the chunk refs come from dirty(chain, target) (dirty_list pages after a
 *            cursor, total from dirty_count); every batch the engine reports copied and
 *            synced is deleted with dirty_remove (META-15), so a resync cut short resumes
 *            where it stopped and never forgets a chunk it did not copy.
 *   rebuild: every chunk of the chain on the source (`belongs` says which are the chain's).
 *   Both:    progress goes into repairs(chain, target) (repair_set, META-17) when the run
 *            starts, at most every `report_ns` (default 1 s), and at the end; and to the
 *            caller's `progress` callback.
 *
 * It does NOT change the chain: making the target a full member (chain_promote, which deletes
 * the repairs row and any dirty row left, DIST-6 / META-16) is the manager's decision after a
 * run that returned 0 — and only if no dirty row is left (writes that found the target away
 * again meanwhile add some).
 *
 * Threads: synchronous, like rp_run; callbacks on the calling thread. The meta handle may be
 * shared with other threads (meta.h THREADS).
 */
#ifndef BRAIDFS_REPAIR_RUN_H
#define BRAIDFS_REPAIR_RUN_H

#include "dataservice/repair.h"
#include "fs/meta/meta.h"

struct rr_opts {
	struct meta *meta;
	uint32_t chain, target; /* target: the destination's target id */
	enum rp_kind kind;
	struct sm_target *src, *dst;
	uint64_t rate;		 /* bytes/s; 0 = unlimited */
	rp_belongs_fn belongs;	 /* rebuild; NULL: every chunk of the source */
	rp_lock_fn lock;	 /* NULL: nothing writes meanwhile */
	rp_progress_fn progress; /* may be NULL */
	void *ctx;		 /* for belongs, lock and progress */
	const int *cancel;	 /* may be NULL */
	int64_t report_ns;	 /* repairs row updates; 0 = every second */
};

/* Run it. 0 when every chunk is copied and durable (resync: every dirty row listed at the
 * time is gone); else -errno (-ECANCELED) with a one-line reason in err. ret (may be NULL)
 * gets the engine's last progress. A failure to update the repairs row is not fatal (the
 * row is advisory): it is logged at debug level. */
int rr_run(const struct rr_opts *o, struct rp_progress *ret, char *err, size_t errlen);

#endif
