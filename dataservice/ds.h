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
 *   DS-5  (forward mode) A request the primary refused or could not be asked is retried on
 *         the primary of the chain as committed (chain_refresh), never on another member of
 *         a chain this ds merely remembers: the committed chain is the only one whose members
 *         all hold every acknowledged write. Retries of a mutation carry new write ids:
 *         re-applying the same bytes at the same place is harmless while the caller keeps
 *         writes of one inode from overlapping, whereas a write id already answered by a
 *         former secondary would not reach the members after it.
 *   DS-6  (forward mode, local_targets) A read goes to a member of this node other than the
 *         primary only in a strong chain, only at the epoch of the chain this ds holds, and
 *         that member's node serves it only if it is still a member at that epoch by a chain
 *         table it read lately (its read lease; the primary that removes a member holds its
 *         acknowledgements until that lease ran out: dataservice/fence.h). Any other answer
 *         than the read's own sends it to the primary (DS-5); a stale epoch re-reads the chain
 *         first. In a strong chain every member applied an acknowledged write before the
 *         acknowledgement, so a read after a write (of any client) sees it.
 *   DS-7  (async targets, META-19) An async target never delays or fails an acknowledgement and
 *         is never read: it gets each request after the members applied it, in the order of
 *         the chunk's stripe lock, through a bounded queue; every request it does not apply
 *         is reported (async_missed) so that a repair copies the chunk. Requests still queued
 *         when the process dies are reported by nobody: the caller accounts for them (the
 *         serve marks the async targets of such a chain for a rebuild, tools/node.c).
 *   DS-4  A replica read that fails its store's checksum (-EBADMSG) is NOT a replica failure:
 *         the chain is left as it is, and the read is served by the next in-chain replica
 *         whose copy verifies. Before the read returns, every copy that failed is rewritten
 *         from a replica that verifies (whole chunk, exact length, synced) under the chunk's
 *         lock (DS-3), after checking under that lock that it still fails; each copy found
 *         bad, repaired or left unrepaired is counted (ds_stats) and logged at warning level
 *         with target, inode, chunk and offset. When no replica verifies, the read fails with
 *         -EIO and is logged as unrecoverable.
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
	bool up;	      /* false: known offline, never used */
	struct sm_target *sm; /* already open (not owned: it outlives the ds), or NULL */
};

#define DS_MAX_KEEP (2 * DS_MAX_REPLICAS)

struct ds_chain_cfg {
	uint32_t id;
	uint64_t epoch;
	uint32_t nmembers;
	uint32_t members[DS_MAX_REPLICAS]; /* target ids, [0] = primary */
	/* Targets that are not members but hold chunks of the chain that must stay: syncing and
	 * away ones (META-13), whose copies a resync brings up to date instead of a full copy.
	 * ds never reads or writes them for the chain; ds_check and ds_purge_strays do not count
	 * or delete their chunks of the chain as strays. Unknown ids are ignored. */
	uint32_t nkeep;
	uint32_t keep[DS_MAX_KEEP];
	/* Syncing targets (META-13, DIST-6): every chunk request applied through the chain
	 * (ds_chunk_apply, ds_write, truncate, punch, allocate) also reaches them, in parallel
	 * with the members and under the same stripe lock, but they count for nothing: a write
	 * is acknowledged on the members' answers alone, and a syncing target that fails is
	 * reported through syncing_failed, never dropped by ds. Reads never go to them. Loaded
	 * with the members (ds_open, ds_chain_load). Unknown ids are ignored. */
	uint32_t nsyncing;
	uint32_t syncing[DS_MAX_REPLICAS];
	/* Async targets (META-19, DS-7): a copy kept beside the chain (a backup on external
	 * storage). Every chunk request this ds applies through the chain (not in forward mode)
	 * is queued to each of them once the members applied it, and applied in order by one
	 * thread per target: never waited for, never read, never counted. A request it failed,
	 * or that found its queue full (DS_ASYNC_QUEUE_MAX bytes), is reported through
	 * async_missed. Loaded with the members. Unknown ids are ignored. */
	uint32_t nasync;
	uint32_t async[DS_MAX_REPLICAS];
};

#define DS_ASYNC_QUEUE_MAX (64u << 20) /* bytes of requests waiting for one async target */

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

/* A syncing target of chain_id (ds_chain_cfg.syncing) failed request op on chunk (ino, idx)
 * with error err, at chain epoch `epoch`. The callee takes it out of syncing and makes sure the
 * chunk will be copied to it again (docs/distributed.md: away + dirty); 0, or -errno when it
 * could do neither — the request then fails with -EIO rather than be acknowledged with a
 * syncing target silently behind. Called with the chunk's stripe lock held: it may call
 * ds_chain_load, nothing else of ds. NULL: syncing failures are only counted. */
typedef int (*ds_syncing_failed_fn)(void *ctx, uint32_t chain_id, uint64_t epoch, uint32_t target,
				    uint64_t ino, uint32_t idx, int err);

/* DS-7: async target `target` of chain_id did not get a request on chunk (ino, idx) (err: its
 * error, or -ENOBUFS: its queue was full). The callee records the chunk for its catch-up
 * (docs/distributed.md: dirty) and returns 0, or -errno. Called by the target's queue thread
 * with no ds lock held (an error is then only logged), or by the writer, with the chunk's
 * stripe lock held, when the queue was full (an error then fails the request: the copy would
 * be behind with no record of it). It may call ds_chain_load, nothing else of ds. NULL: misses
 * are only counted. */
typedef int (*ds_async_missed_fn)(void *ctx, uint32_t chain_id, uint32_t target, uint64_t ino,
				  uint32_t idx, int err);

/* Forwarding mode: read chain chain_id from where it is committed (the metadata database) into
 * *ret. 0 or -errno. Any thread; no ds lock held. */
typedef int (*ds_chain_refresh_fn)(void *ctx, uint32_t chain_id, struct ds_chain_cfg *ret);

struct ds_config {
	uint32_t chunk_size;
	enum ds_consistency consistency;
	char volume_uuid[37];
	const struct ds_target_cfg *targets;
	unsigned ntargets;
	const struct ds_chain_cfg *chains;
	unsigned nchains;
	ds_chain_failed_fn chain_failed;
	ds_chain_changed_fn chain_changed;   /* may be NULL */
	ds_syncing_failed_fn syncing_failed; /* may be NULL */
	ds_async_missed_fn async_missed;     /* may be NULL */
	void *cb_ctx;
	/* Served chains (docs/distributed.md, DS-5). forward: every chunk request goes to the
	 * chain's primary only, whose node applies it to every member; this ds never changes a
	 * chain (chain_failed is not called): when the primary fails or answers that the epoch
	 * is stale or that it is fenced, the chain is re-read through chain_refresh and the
	 * request retried on the new primary, for at most stall_ms (default 20000) without a
	 * change before -EIO. Weak consistency is then the primaries' business: this ds acts
	 * strong (fsync reaches every in-chain member). */
	bool forward;
	ds_chain_refresh_fn chain_refresh;
	unsigned stall_ms;
	/* A target that does not open is left closed (ds_open does not fail) and opening it is
	 * tried again, at most once a second, when it is used: remote targets whose node is down
	 * now may come back. */
	bool lazy_open;
	/* Optional: the URL to open target id with now (e.g. through its node's current
	 * address), asked before every attempt to open it; 0 or -errno (no attempt). */
	int (*target_url)(void *ctx, uint32_t id, char *url, size_t len);
	/* Forward mode, optional (DS-6): the targets of the node this process runs on. A read,
	 * seek or chunk length whose chain lists one of them as a member after the primary goes
	 * to that member instead of the primary when `consistency` is DS_STRONG (a weak chain's
	 * secondaries lag); on any failure or refusal it goes to the primary as usual (DS-5). */
	const uint32_t *local_targets;
	unsigned nlocal;
	/* Tests only (DS-7): while a file of this path exists, async queue threads apply nothing
	 * (requests stay queued, as at a primary that is about to die). NULL or "": none. */
	const char *test_async_hold;
};

struct ds_stats {
	uint64_t bytes_written, bytes_read;
	uint64_t replica_failures;
	uint64_t repl_lag_bytes; /* weak: bytes not yet on every replica */
	/* DS-4, by reads and by ds_scrub: replica copies that failed their checksum, copies
	 * rewritten from a good replica, copies that could not be (no good replica, or the
	 * rewrite failed) */
	uint64_t csum_errors_seen, repairs_done, repair_failures;
	/* DS-6: chunk reads answered by a member of this node, and those that went on to the
	 * primary after it failed or refused */
	uint64_t local_reads, local_fallbacks;
	/* DS-7: bytes queued to async targets and not applied yet; requests they missed */
	uint64_t async_lag_bytes, async_missed;
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
 * sharing the targets may have replaced their files (FS-7). Never fails. */
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

/* One target as this process sees it (status of a mounted volume asks the mount for these:
 * a block target can be open in one process only). */
struct ds_target_stat {
	uint32_t id;
	bool open;	   /* open in this process */
	bool has_counters; /* its backend keeps counters (sm_ops.counters) */
	struct sm_counters counters;
	bool has_statfs; /* its statfs answered */
	struct sm_statfs statfs;
};
/* Every configured target, in configuration order; returns the count (at most max). */
int ds_target_stats(struct ds *ds, struct ds_target_stat *ret, unsigned max);

/* Install chain c (its id names it) when its epoch is newer than the one held: a chain table
 * re-read from the database (DIST-2). 0 (also when not newer), -ENOENT unknown chain or a
 * member this ds does not know. */
int ds_chain_load(struct ds *ds, const struct ds_chain_cfg *c);
/* The chain of chunk (ino, idx) as held now: 0 and *ret, or -ENOENT (no chains). */
int ds_chunk_chain(struct ds *ds, uint64_t ino, uint32_t idx, struct ds_chain_cfg *ret);
/* One chunk request applied through its chain, as a chain's primary node does for a client
 * (DIST-3): under the chunk's stripe lock, on every member, DS-1 for those that fail. */
enum ds_chunk_kind { DS_CHUNK_WRITE, DS_CHUNK_TRUNCATE, DS_CHUNK_PUNCH, DS_CHUNK_ALLOCATE };
int ds_chunk_apply(struct ds *ds, enum ds_chunk_kind kind, uint64_t ino, uint32_t idx, uint64_t off,
		   uint64_t len, const void *data);
/* The lock a repair running beside this ds takes around each chunk copy (repair.h's
 * rp_lock_fn: pass the ds as ctx): lock takes the cut lock shared, then the chunk's stripe lock
 * — what every mutation of the chunk holds while it applies to all replicas (DS-3), and what
 * a whole-chunk delete (remove, trim, shrinking truncate) excludes — and unlock releases
 * both. A write to the chunk then lands wholly before or wholly after the copy, and a chunk
 * a concurrent remove deleted is never brought back. Held for one chunk copy at a time; the
 * caller must not call into ds while holding it. */
void ds_chunk_lock(void *ds, uint64_t ino, uint32_t idx, bool lock);

/* DS-7: wait until async target target_id applied (or reported missed) every request queued
 * to it before this call. A repair copying a chunk to it calls this under the chunk's lock
 * (ds_chunk_lock), so no older queued request lands on top of the copy. Any thread; 0, or
 * -ENOENT for an unknown target. */
int ds_async_drain(struct ds *ds, uint32_t target_id);

/* Current chain table snapshot (for status / tests). Returns count. */
int ds_chains(struct ds *ds, struct ds_chain_cfg *ret, unsigned max);

/* fsck / verification. For every chunk present on any target: read every in-chain replica
 * (the store verifies its checksums, DS-4) and compare the ones that read; report copies that
 * fail their checksum, mismatches, chunks on a target outside their chain, and chunks of
 * inodes for which keep() says no or beyond the inode's size. With repair: a copy that failed
 * its checksum is rewritten from the first replica that verified, a differing copy from the
 * first verified one (the primary when it verifies), strays are deleted and data beyond EOF
 * truncated. Nothing may write the volume meanwhile (fsck holds the volume lock). Returns the
 * number of problems (copies; remaining after repair when repair), or -errno.
 * report's `what`: "checksum", "mismatch", "missing", "unreadable", "unrecoverable" (no copy of
 * the chunk verifies; target = the primary), "stray", "orphan", "beyond_eof". */
typedef bool (*ds_keep_fn)(void *ctx, uint64_t ino, uint64_t *ret_size);
typedef void (*ds_report_fn)(void *ctx, const char *what, uint64_t ino, uint32_t idx,
			     uint32_t target_id, bool repaired);
struct ds_check_result {
	uint64_t chunks;	 /* distinct (ino, idx) examined */
	uint64_t chunks_total;	 /* distinct (ino, idx) listed */
	uint64_t bytes_compared; /* bytes read from replicas */
	uint64_t bytes_total;	 /* bytes the listing said would be read (in use: an estimate) */
	uint64_t mismatches, missing, strays, beyond_eof;
	uint64_t csum_errors;	/* copies that failed their checksum */
	uint64_t unreadable;	/* copies that failed to read for another reason */
	uint64_t unrecoverable; /* chunks no open in-chain copy of which reads */
	uint64_t repaired;	/* copies repaired (every kind) */
	/* in-chain copies not read because their target is not open (a served volume: its
	 * node is down or unreachable); not counted as problems here (the chain is the
	 * caller's to judge) */
	uint64_t unreached;
};
int ds_check(struct ds *ds, bool repair, ds_keep_fn keep, ds_report_fn report, void *ctx,
	     struct ds_check_result *ret);
/* ds_check with a progress callback (after every chunk and once before the first, on the
 * calling thread, no lock held).
 *
 * Served chains (forward mode): copies are read from each member's node, with the chain's
 * epoch; a chunk whose copies answer that the epoch is old (the manager or a primary changed
 * the chain meanwhile) is checked again after the chain is re-read (chain_refresh), at most 3
 * times. A repair never writes a member directly: the chosen copy's bytes are written through
 * the chain's primary, whose node applies them to every member and syncing target under its
 * chunk lock (DIST-3), then every member syncs. A stray on a served target is reported but not
 * deleted (its node refuses a chunk request for a target outside the chain). */
typedef void (*ds_check_progress_fn)(void *ctx, const struct ds_check_result *sofar);
struct ds_check_opts {
	bool repair;
	ds_keep_fn keep;
	ds_report_fn report;
	ds_check_progress_fn progress; /* may be NULL */
	void *ctx;
};
int ds_check_with(struct ds *ds, const struct ds_check_opts *opts, struct ds_check_result *ret);

/* Scrub: ds_check's replica reading and comparing, safe while the volume is in use (DS-3):
 * only in-chain copies are read (no stray / orphan / EOF work: that needs the namespace quiet,
 * it is fsck's), each chunk under the cut lock (shared) and its stripe lock, its lengths taken
 * under the lock, and the reads paced by a token bucket of `rate` bytes/s OUTSIDE the locks,
 * so that writers wait for one chunk at most and applications keep their bandwidth. Checksum
 * errors found and repaired count in ds_stats like read repairs (DS-4). report runs with the
 * chunk's locks held (it must not block: a writer of that chunk waits); progress runs after
 * every chunk (and once before the first) with no lock held, on the calling thread. cancel: when
 * *cancel becomes non-zero (atomic), the scrub stops before the next chunk with -ECANCELED (ret
 * holds what was done). Returns as ds_check. */
struct ds_scrub_opts {
	bool repair;
	uint64_t rate;		       /* bytes per second read from targets; 0 = unlimited */
	ds_report_fn report;	       /* may be NULL */
	ds_check_progress_fn progress; /* may be NULL */
	void *ctx;
	const int *cancel; /* may be NULL */
};
int ds_scrub(struct ds *ds, const struct ds_scrub_opts *opts, struct ds_check_result *ret);

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

/* Reorder or shrink a chain without moving data: new_members must be distinct current members
 * (at least one), in the order wanted, [0] the primary. Used after ds_rebuild made a new
 * member a full replica, to drop the member it replaces (device add / drain: placement.h), and
 * to move primaries. Under the chain's change_lock: -ESTALE when expect_epoch is not 0 and
 * not the chain's epoch; else the chain is committed through chain_changed (epoch+1) and
 * becomes the in-memory chain. A dropped member keeps its chunks of the chain until
 * ds_purge_strays. Returns 0, or -ENOENT (no such chain), -EINVAL (not a subset, a duplicate,
 * empty), -ESTALE, or chain_changed's error (nothing changed), with a one-line reason in err. */
int ds_chain_set(struct ds *ds, uint32_t chain_id, uint64_t expect_epoch,
		 const uint32_t *new_members, uint32_t n, char *err, size_t errlen);

/* Delete from target_id every chunk whose chain does not list target_id (chunks a member
 * dropped by ds_chain_set still holds, or strays), each under its stripe lock. The target is
 * opened on demand like ds_rebuild. *ret_removed gets the count. Writers must be kept away.
 * -ENOENT unknown target; else the failing step's error with a one-line reason in err. */
int ds_purge_strays(struct ds *ds, uint32_t target_id, uint64_t *ret_removed, char *err,
		    size_t errlen);

#endif
