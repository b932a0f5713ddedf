/* repair — the engine that brings a syncing target up to date from a source target.
 *
 * WHAT IT DOES
 *   Two kinds of run over a source and a destination `struct sm_target *` (any backend: local
 *   dir:/file:, or remote through rpc_target — the engine only calls sm_ops):
 *   - resync (DIST-6): the destination was out of the chain for a while and missed some
 *     writes; the caller hands it the refs of those chunks (dirty(chain, target) pages, in
 *     batches through `next`); each is copied, and once a batch is durable on the destination
 *     the caller is told (`done`) so that it can drop those refs (dirty_remove).
 *   - rebuild (DIST-8): the destination is new to the chain; every chunk of the chain on the
 *     source (sm list, filtered by `belongs`) is copied, then every chunk of the chain the
 *     destination holds and the source lacks is removed.
 *   A chunk is copied whole: the source's exact logical length, its bytes (all-zero 1 MiB
 *   runs punched, so holes stay holes), truncated to that length; a chunk that does not exist
 *   on the source is removed on the destination (truncate to 0). The destination is synced
 *   (sync_all) before `done` is called and before the run returns 0.
 *
 * RATE
 *   Every chunk costs its length in tokens of a token bucket (common/tbucket.h) of `rate`
 *   bytes/s; the engine sleeps for them before the chunk, outside any lock, so the long-run
 *   copy rate is at most `rate` (+ one burst) and applications keep the rest of the disk.
 *
 * CONCURRENT WRITES (why the per-chunk lock)
 *   The destination is `syncing` while this runs: it receives every new write of the chain
 *   (the primary forwards to it) while the engine copies older data. Without care a copy can
 *   read a chunk from the source, a write then lands on both targets, and the copy's older
 *   bytes overwrite the write's on the destination: a lost write. The engine therefore takes
 *   the caller's per-chunk lock (`lock`) around the copy of each chunk — the same lock the
 *   primary's write path holds while it applies a write to a chunk on every member (DS-3;
 *   ds.c's stripe lock, as ds_rebuild_chunk_locked uses it: ds_chunk_lock in ds.h is that
 *   lock as an rp_lock_fn, with the ds as ctx). A write is then applied entirely
 *   before the copy (the copy carries it) or entirely after (it reaches the destination by
 *   itself). The alternative, copying unlocked and copying again every chunk written during
 *   the copy, needs a per-chunk write counter from the write path and can livelock on a hot
 *   chunk; the lock costs a writer at most one chunk copy of waiting. With `lock` NULL the
 *   caller promises that nothing writes the chain (an offline rebuild).
 *
 * PROGRESS AND CANCEL
 *   `progress` runs on the calling thread with no lock held: once before the first chunk,
 *   then at most every `progress_ns` (0: after every chunk), and once at the end. It gets
 *   chunks and bytes done and total (resync: the total is the caller's hint, raised if more
 *   refs come), the measured rate and the ETA. When *cancel (read atomically) becomes
 *   non-zero the run stops before the next chunk (or during a rate wait) with -ECANCELED;
 *   every chunk copied so far is complete and, for resync, what was reported `done` is synced.
 *
 * THREADS
 *   rp_run() is synchronous: run it on a thread of its own. Callbacks run on that thread.
 *   Several runs may go at once (one per destination); each has its own bucket.
 */
#ifndef BRAIDFS_REPAIR_H
#define BRAIDFS_REPAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storemgr/sm.h"

enum rp_kind { RP_RESYNC = 0, RP_REBUILD = 1 };

#define RP_BATCH_MAX 1024 /* refs per `next` call */

/* One chunk. */
struct rp_ref {
	uint64_t ino;
	uint32_t idx;
};

struct rp_progress {
	enum rp_kind kind;
	uint64_t chunks_total; /* rebuild: chunks of the chain on the source; resync: hint */
	uint64_t chunks_done;
	uint64_t bytes_total;	/* rebuild: their logical lengths; resync: 0 (unknown) */
	uint64_t bytes_done;	/* logical bytes of the chunks copied (holes included) */
	uint64_t bytes_read;	/* bytes read from the source (what the rate bounds) */
	uint64_t bytes_written; /* non-zero bytes written to the destination */
	uint64_t removed;	/* chunks removed on the destination: the source lacks them */
	uint64_t rate;		/* bytes_read per second since the start */
	int64_t elapsed_ns;
	int64_t eta_ns; /* -1: unknown */
	bool finished;	/* the last call of a run that succeeded */
};

/* resync: up to max refs (<= RP_BATCH_MAX); returns the count, 0 at the end, or -errno. */
typedef int (*rp_next_fn)(void *ctx, struct rp_ref *ret, unsigned max);
/* resync: the refs of the last batch are copied and durable on the destination. -errno stops
 * the run. */
typedef int (*rp_done_fn)(void *ctx, const struct rp_ref *refs, unsigned n);
/* rebuild: does chunk (ino, idx) belong to the chain being rebuilt? */
typedef bool (*rp_belongs_fn)(void *ctx, uint64_t ino, uint32_t idx);
/* Take (lock true) or release the per-chunk lock writers of (ino, idx) hold. */
typedef void (*rp_lock_fn)(void *ctx, uint64_t ino, uint32_t idx, bool lock);
typedef void (*rp_progress_fn)(void *ctx, const struct rp_progress *p);

struct rp_opts {
	enum rp_kind kind;
	struct sm_target *src, *dst; /* the caller's; not closed */
	uint64_t rate;		     /* bytes/s read from the source; 0 = unlimited */
	uint64_t burst;		     /* tokens; 0 = the bucket's default (a tenth of a second) */
	/* resync */
	rp_next_fn next;
	rp_done_fn done; /* may be NULL */
	uint64_t chunks_hint;
	/* rebuild */
	rp_belongs_fn belongs; /* NULL: every chunk of the source */
	/* both */
	rp_lock_fn lock; /* NULL: nothing writes meanwhile */
	rp_progress_fn progress;
	int64_t progress_ns;
	void *ctx;
	const int *cancel; /* may be NULL */
};

/* One chunk copy, the step every repair shares (rp_run, ds_rebuild; read repair and ds_check
 * through rp_copy_range): make dst's (ino, idx) what src's is now — src's exact length, its
 * bytes read and written RP_PIECE at a time (all-zero pieces punched), dst truncated to that
 * length; absent on src -> truncated to 0 on dst. No lock taken, nothing synced: the caller
 * holds the chunk's lock and syncs. buf holds RP_PIECE bytes. ret (always filled) says what
 * happened and, on failure, which step. */
#define RP_PIECE (1024 * 1024)
struct rp_copy {
	uint64_t len;		/* src's logical length (0: absent) */
	bool absent;		/* src has no such chunk */
	uint64_t bytes_read;	/* from src */
	uint64_t bytes_written; /* non-zero bytes written to dst */
	const char *what;	/* on failure: "read the length of", "read", "write", "truncate" */
	bool dst_failed;	/* on failure: the step that failed was on dst */
};
int rp_copy_chunk(struct sm_target *src, struct sm_target *dst, uint64_t ino, uint32_t idx,
		  char *buf, struct rp_copy *ret);
/* rp_copy_chunk's copy once the length is known: dst's (ino, idx) becomes src's first len
 * bytes, exactly len long (len 0: removed). For a caller that copies up to a length of its
 * own (ds_check stops at the file's size). ret as for rp_copy_chunk (absent: false). */
int rp_copy_range(struct sm_target *src, struct sm_target *dst, uint64_t ino, uint32_t idx,
		  uint64_t len, char *buf, struct rp_copy *ret);

/* Run a resync or a rebuild. 0 when the destination holds every chunk as the source did
 * when each was copied, durable; -ECANCELED, or the first failing step's -errno with a
 * one-line reason in err naming the target (URL), the chunk and the step. ret (may be NULL)
 * gets the final progress either way. */
int rp_run(const struct rp_opts *o, struct rp_progress *ret, char *err, size_t errlen);

const char *rp_kind_name(enum rp_kind k); /* "resync", "rebuild" */

#endif
