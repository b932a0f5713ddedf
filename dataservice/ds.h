/* ds — the data service: file bytes <-> replicated chunks.
 *
 * WHAT IT OWNS
 *   Cutting a file's byte range into chunks, finding each chunk's chain, and keeping every
 *   chunk on every target of its chain: writes go to all in-chain replicas (in parallel),
 *   reads come from one clean replica, fsync waits for every in-chain replica. It holds the
 *   open targets (storemgr) and the chain table; it knows nothing of names or inodes' sizes
 *   except what callers pass in.
 *
 * ADDRESSING (no metadata row per chunk)
 *   chunk idx of byte off = off / chunk_size. The chain of (ino, idx) is
 *   chains[(ds_ino_seed(ino) + idx) % nchains]: consecutive chunks of a file rotate over the
 *   chains, and different files start at different chains. Changing a chain's members
 *   (epoch bump) never moves a chunk to another chain.
 *
 * CONSISTENCY
 *   strong (default): ds_write() returns only when every in-chain replica applied it
 *   (SM-3); ds_fsync() only when every in-chain replica has it durable (SM-4).
 *   weak: ds_write() returns when the primary applied it; the other replicas are written by
 *   a background thread (their lag is ds_stats().repl_lag_bytes); ds_fsync() waits for the
 *   primary only.
 *
 * INVARIANTS (cited as DS-n)
 *   DS-1  Never acknowledge a write that a later read could miss: a replica that fails a
 *         write or sync is removed from the chain through the chain_failed callback (which
 *         commits the epoch bump in the metadata database) BEFORE the write is acknowledged.
 *         If the callback fails, or no replica is left, the operation fails with -EIO.
 *   DS-2  Reads go to the first in-chain replica (the primary) that is up; a replica that
 *         fails a read is reported like a failed write and the read is retried on the next.
 *   DS-3  Overlapping writes to one chunk are applied in the same order on every replica
 *         (the caller's per-inode ordering plus the per-chunk lock here).
 *
 * THREADS
 *   Every function is safe from any thread. The caller keeps writes and truncates of one
 *   inode from overlapping (the FUSE layer's per-inode rwlock); ds adds per-chunk ordering.
 */
#ifndef BRAIDFS_DS_H
#define BRAIDFS_DS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "storemgr/sm.h"

#define DS_MAX_REPLICAS 8
#define DS_MAX_TARGETS	256

enum ds_consistency { DS_STRONG = 0, DS_WEAK = 1 };

struct ds_target_cfg {
	uint32_t id;
	char url[1024];
	bool up; /* false: known offline, never used */
};

struct ds_chain_cfg {
	uint32_t id;
	uint64_t epoch;
	uint32_t nmembers;
	uint32_t members[DS_MAX_REPLICAS]; /* target ids, [0] = primary */
};

/* Called when a member of a chain failed (DS-1). The callee must commit, durably, the chain
 * without that member at epoch+1 and return 0 and the new epoch, or -errno. It is called with
 * no ds lock held that the callee could need; it may be called from any I/O thread. */
typedef int (*ds_chain_failed_fn)(void *ctx, uint32_t chain_id, uint64_t epoch,
				  uint32_t failed_target, const uint32_t *new_members,
				  uint32_t nnew, uint64_t *ret_epoch);

/* Called when ds_rebuild() adds a member to a chain. The callee must commit, durably, the chain
 * with new_members (the old members, then the rebuilt target last) at epoch+1 — failing with
 * -ESTALE when the chain's committed epoch is no longer `epoch` — and return 0 and the new
 * epoch, or -errno. Called with the chain's change_lock held: it must not call back into ds.
 * NULL: membership changes are kept in memory only (tests). */
typedef int (*ds_chain_changed_fn)(void *ctx, uint32_t chain_id, uint64_t epoch,
				   const uint32_t *new_members, uint32_t nnew, uint64_t *ret_epoch);

struct ds_config {
	uint32_t chunk_size;
	enum ds_consistency consistency;
	char volume_uuid[37];
	const struct ds_target_cfg *targets;
	unsigned ntargets;
	const struct ds_chain_cfg *chains;
	unsigned nchains;
	ds_chain_failed_fn chain_failed;
	ds_chain_changed_fn chain_changed; /* may be NULL */
	void *cb_ctx;
};

struct ds_stats {
	uint64_t bytes_written, bytes_read;
	uint64_t replica_failures;
	uint64_t repl_lag_bytes; /* weak: bytes not yet on every replica */
};

struct ds;

/* Opens every target (SM-1 identity checked against volume uuid and target id). A target
 * that is listed up but fails to open makes ds_open fail with a one-line reason in err,
 * naming the target URL. */
int ds_open(const struct ds_config *cfg, struct ds **ret, char *err, size_t errlen);
/* Drains weak-mode replication, then closes targets. NULL ok. */
void ds_close(struct ds *ds);

uint32_t ds_chunk_size(const struct ds *ds);
uint32_t ds_ino_seed(uint64_t ino);

/* Read [off, off+len) of ino; the caller clips len to the file size. Returns len or -errno.
 * Holes read as zeros. */
ssize_t ds_read(struct ds *ds, uint64_t ino, void *buf, size_t len, uint64_t off);
/* Write; returns len or -errno (never short). */
ssize_t ds_write(struct ds *ds, uint64_t ino, const void *buf, size_t len, uint64_t off);
/* Durable on every in-chain replica (strong) / on the primary (weak). */
int ds_fsync(struct ds *ds, uint64_t ino);
/* The file's size goes from old_size to new_size: drops everything at or beyond new_size
 * when shrinking (SM-5 for whole chunks, truncate for the boundary chunk). Growing needs no
 * data work. */
int ds_truncate(struct ds *ds, uint64_t ino, uint64_t old_size, uint64_t new_size);
/* Zeros [off, off+len) (FALLOC_FL_PUNCH_HOLE / ZERO_RANGE semantics: space freed). */
int ds_punch(struct ds *ds, uint64_t ino, uint64_t off, uint64_t len);
/* Reserve space for [off, off+len) on every replica (fallocate mode 0). */
int ds_allocate(struct ds *ds, uint64_t ino, uint64_t off, uint64_t len);
/* Delete every chunk of ino (SM-5 from idx 0) on every target. */
int ds_remove(struct ds *ds, uint64_t ino);
/* Forget what is cached of ino's chunks on every open target (sm_ops.forget): another process
 * sharing the targets may have replaced their files (FS-6). Never fails. */
void ds_forget(struct ds *ds, uint64_t ino);
/* Trim after a crash: delete everything of ino at or beyond size (META-4 recovery). */
int ds_trim(struct ds *ds, uint64_t ino, uint64_t size);
/* lseek SEEK_DATA / SEEK_HOLE over a file of `size` bytes: *ret as lseek(2) would return;
 * -ENXIO as lseek(2). */
int ds_seek(struct ds *ds, uint64_t ino, uint64_t size, uint64_t off, int whence, uint64_t *ret);
/* Sync every target (syncfs, unmount). */
int ds_sync_all(struct ds *ds);

/* Space as the file system sees it: total/free divided by the replica count. */
int ds_statfs(struct ds *ds, uint64_t *ret_total, uint64_t *ret_free);
void ds_stats(struct ds *ds, struct ds_stats *ret);

/* Current chain table snapshot (for status / tests). Returns count. */
int ds_chains(struct ds *ds, struct ds_chain_cfg *ret, unsigned max);

/* fsck / verification. For every chunk present on any target: compare the bytes of every
 * in-chain replica; report mismatches, chunks on a target outside their chain, and chunks of
 * inodes for which keep() says no or beyond the inode's size. With repair, copy the
 * primary's chunk over differing replicas and delete the strays. Returns the number of
 * problems (remaining after repair when repair). */
typedef bool (*ds_keep_fn)(void *ctx, uint64_t ino, uint64_t *ret_size);
typedef void (*ds_report_fn)(void *ctx, const char *what, uint64_t ino, uint32_t idx,
			     uint32_t target_id, bool repaired);
struct ds_check_result {
	uint64_t chunks; /* distinct (ino, idx) examined */
	uint64_t bytes_compared;
	uint64_t mismatches, missing, strays, beyond_eof;
	uint64_t repaired;
};
int ds_check(struct ds *ds, bool repair, ds_keep_fn keep, ds_report_fn report, void *ctx,
	     struct ds_check_result *ret);

/* Rebuild (repair after DS-1). Make target_id, which must NOT be a member of chain_id, an exact
 * replica of the chain's data and append it to the chain as its last member:
 *   1. open the target if it is not open (a target configured up = false is opened on demand,
 *      identity checked as in ds_open, SM-1);
 *   2. every chunk of the chain on its primary (the first member that is open; chunks are
 *      those whose ds_chain_of is this chain) is copied onto the target under its stripe
 *      lock: same bytes, same length (all-zero 1 MiB runs are punched, so holes stay holes);
 *   3. every chunk of the chain on the target that the primary lacks is deleted (stale data
 *      from before it left is never served: SM-2, DS-1);
 *   4. the target is synced (sync_all);
 *   5. the chain with the target appended is committed through chain_changed (epoch+1) and
 *      then becomes the in-memory chain; the target counts as up from then on.
 * Writers must be kept away for the whole run (fsck holds the volume lock): a write to the
 * chain between steps 2 and 5 would not reach the target. The chain's epoch is checked at
 * step 5: if its membership changed meanwhile, nothing is committed and -ESTALE is returned.
 * progress (may be NULL) is called after every chunk. Returns 0 or -errno with a one-line
 * reason in err (naming the target's URL when it cannot be opened or written):
 * -ENOENT unknown chain or target, -EEXIST already a member, -E2BIG chain full, -EIO no
 * member of the chain is open to copy from, else the error of the failing step. */
struct ds_rebuild_progress {
	uint64_t chunks_done, chunks_total; /* chunks of the chain on the primary */
	uint64_t bytes_done, bytes_total;   /* their logical lengths */
	uint64_t bytes_written;		    /* non-zero bytes written to the target */
	uint64_t stale_removed;		    /* chunks deleted from the target (step 3) */
};
typedef void (*ds_progress_fn)(void *ctx, const struct ds_rebuild_progress *p);
int ds_rebuild(struct ds *ds, uint32_t chain_id, uint32_t target_id, ds_progress_fn progress,
	       void *ctx, struct ds_rebuild_progress *ret, char *err, size_t errlen);

#endif
