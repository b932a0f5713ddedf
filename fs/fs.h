/* fs — the POSIX layer: the FUSE low-level frontend over the metadata engine and the
 * data service.
 *
 * WHAT IT OWNS
 *   The kernel's view of inodes (lookup counts, open counts), the in-memory part of an inode
 *   that is newer than the metadata database (size, mtime, ctime written by the data path),
 *   and the translation of every FUSE request into metadata transactions and chunk I/O.
 *
 * INVARIANTS (cited as FS-n)
 *   FS-1  Every FUSE request gets exactly one reply, on every path.
 *   FS-2  An inode stays in the table while the kernel holds a lookup on it, a file handle
 *         is open on it, or a request is using it (refs). When all three reach zero and its
 *         nlink is 0, its chunks are deleted, and its row by the next batched purge
 *         (fs.purge_q; a crash leaves the row an orphan for recovery, META-3).
 *   FS-3  A regular file's size in memory (struct fs_inode.size) is the truth while the inode
 *         is in the table; the database catches up at flush/close, fsync and truncate. Before
 *         a write may put data beyond the size recorded in the database, the inode is marked
 *         META_IF_WDIRTY there (META-4), so a crash can never expose bytes beyond the size
 *         after a later extension; the mark is cleared only when no write or truncate is in
 *         flight and the size has been recorded.
 *   FS-4  fsync returns only after ds_fsync (every in-chain replica durable, DS-1) AND a
 *         durable metadata commit of the size (META-5). fsync of a directory makes every
 *         committed namespace operation durable.
 *   FS-5  Errors reach the application: every -errno from meta/ds is replied as is.
 *   FS-6  Directory quotas (META-9): before a write, fallocate or truncate may make a file
 *         under a quota root longer than what its root is charged for (max(db_size, qres)),
 *         the charge is raised with meta quota_reserve (by FS_QUOTA_STEP at a time, at
 *         least to the new end), which answers EDQUOT at the limit before any byte lands.
 *         statfs on an inode under a quota root reports the quota. The virtual xattr
 *         META_QUOTA_XATTR on a directory sets, reads and (removexattr) clears a quota
 *         while mounted; only root may use it (the kernel already limits trusted.* to
 *         CAP_SYS_ADMIN).
 *   FS-7  Shared engines (META_CAP_SHARED: several mounts of one volume) get close-to-open
 *         consistency, as NFS: a close records the size (FS-3 already does); an open reads
 *         the inode from the database, adopts it unless this mount has unrecorded changes
 *         (dirty or a write in flight), drops the kernel's cached attributes and the data
 *         service's cached chunk handles (ds_forget: the other mount may have replaced the
 *         chunk files) and opens without keep_cache, so the next read sees what the other
 *         mount closed. Names and
 *         attributes otherwise follow entry_timeout / attr_timeout. A file created here
 *         is never taken for "fresh" (another mount may write it).
 *   FS-8  With FUSE_HANDLE_KILLPRIV_V2 (fs_io.c asks for it when the kernel offers it; libfuse
 *         3.14 cannot), the kernel stops asking for security.capability before every write
 *         and the file system strips privileges itself, as the kernel would: a write or
 *         truncate the kernel flags (caller without CAP_FSETID) and every chown of a
 *         non-directory clear S_ISUID, S_ISGID when group-executable, and the
 *         security.capability xattr, in the database, before the request is answered.
 *   FS-9  File locks (fs_lock.c). With an engine that has META_CAP_LOCKS and a client
 *         registration (fs_options.client_id), fcntl record locks (F_SETLK, F_SETLKW,
 *         F_GETLK, OFD locks) and flock(2) live in the volume's lock table (META-18): a lock
 *         taken through one mount binds every mount of the volume. A process's POSIX locks
 *         of a file go when it closes any descriptor of that file (FLUSH), flock and OFD
 *         locks at the last close of the open file (RELEASE), all of a mount's at unmount,
 *         and a dead mount's when its registration expires. Without the cap, the kernel
 *         keeps locks per mount (exact for the one mount a one-node engine allows).
 *   FS-10 The kernel's getattr of the directory this mount changed last (it asks after
 *         every create, mkdir, unlink or rmdir there, before its next permission check)
 *         is answered from the attributes that change left, while no metadata commit came
 *         after it (fs.meta_gen); those equal what the database holds. Not on a shared
 *         engine. fs.dslot_lock is a leaf.
 *   FS-11 On a one-mount engine (not META_CAP_SHARED) every change to names and attributes
 *         passes this mount's kernel, which updates or drops its own caches on each reply;
 *         the few changes the file system makes on its own (FS-8's stripped mode bits) drop
 *         the kernel's attributes explicitly. So names and attributes are cached for
 *         FS_ONE_MOUNT_TIMEOUT unless the mount asks for less, and files opened read-only
 *         open with FOPEN_NOFLUSH: their close(2) sends no FLUSH (locks stay the
 *         kernel's; such an open changes nothing a close must record). An open for
 *         writing keeps FLUSH: close returns once the size is recorded, so a kill -9 of
 *         the mount after close keeps what was written. A shared engine keeps
 *         FS_SHARED_TIMEOUT and FLUSH on every close (FS-7, FS-9).
 *
 * THREADS AND LOCKS
 *   The request loop (fs_loop.c) calls the op handlers from many threads at once; a handler
 *   that may wait long calls wait_hint() (common/util.h) first, or the loop learns it. One
 *   metadata syncer thread (fs_new to fs_free) runs the metadata syncs fsync asks for
 *   (FS-4); fs.sync_lock is a leaf: nothing else is taken while it is held. One lock waiter
 *   thread (FS-9, fs_lock.c) retries blocked lock requests; its lock is a leaf too.
 *   Lock order: fs.itab_lock -> fs_inode.lock. fs_inode.io (rwlock) is taken before
 *   fs_inode.lock and never while holding itab_lock. No lock is held across a FUSE reply.
 */
#ifndef BRAIDFS_FS_H
#define BRAIDFS_FS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dataservice/ds.h"
#include "fs/fs_loop.h"
#include "fs/meta/meta.h"

struct fs_options {
	/* seconds the kernel may cache attributes / names; negative: the default of FS-11
	 * (FS_SHARED_TIMEOUT on a shared engine, FS_ONE_MOUNT_TIMEOUT on a one-mount one) */
	double attr_timeout;
	double entry_timeout;
	unsigned max_threads;
	bool debug; /* FUSE request tracing */
	bool allow_other;
	bool ro;
	/* fs_loop.c SPIN: microseconds the only reader watches the device before it sleeps in
	 * read, up to FS_SPIN_US_MAX; negative: FS_SPIN_US_DEFAULT (fs_new resolves it) */
	int32_t spin_us;
	/* FS-4: write-time granularity (fs.time_grain_ns); unset: the kernel's clock tick */
	bool time_grain_set;
	uint32_t time_grain_ms; /* when set: 0 (every write stamps) .. FS_TIME_GRAIN_MAX_MS */
	/* FS-9: this mount's client registration (META-12), read at every lock request: the
	 * caller renews it and may replace an expired one. NULL: locks stay the kernel's. */
	const _Atomic uint64_t *client_id;
};

struct fs_inode {
	uint64_t ino;
	struct fs_inode *hnext; /* protected by fs.itab_lock */
	uint64_t nlookup;	/* protected by fs.itab_lock */
	uint32_t nopen;		/* protected by fs.itab_lock */
	uint32_t refs;		/* protected by fs.itab_lock */

	pthread_rwlock_t io; /* writes shared; truncate, punch exclusive */

	pthread_mutex_t lock; /* protects everything below */
	uint32_t mode;	      /* type bits never change; permission bits as last replied (FS-8) */
	uint32_t nlink;	      /* last value seen; 0 means purge when unused (FS-2) */
	uint64_t size;	      /* FS-3 */
	uint64_t db_size;     /* size as last recorded in the database */
	int64_t mtime_ns, ctime_ns;
	bool dirty;  /* size/mtime/ctime newer than the database */
	bool wmark;  /* META_IF_WDIRTY set in the database */
	bool purged; /* chunks and row deleted */
	bool fresh;  /* created by this mount and never given data: holds no chunk anywhere, so
		      * purging it needs no data-service work */
	uint32_t inflight; /* writes/truncates under way that may put data beyond db_size */
	uint64_t qroot;	   /* META-9 quota root, 0 if none (as loaded; see fs/README.md) */
	uint64_t qres;	   /* FS-6: bytes reserved in the database beyond db_size, 0 if none */
	int8_t caps;	   /* FS-8: security.capability xattr: -1 unknown, 0 none, 1 present */
	uint64_t size_gen; /* FS-4: fs.meta_gen once db_size was committed (or the entry loaded):
			    * fdatasync needs no metadata sync when meta_synced reached it */
	bool lk_posix;	   /* FS-9: a POSIX lock was taken on it through this mount */
};

/* An open file: fuse_file_info.fh. */
struct fs_file {
	struct fs_inode *ip; /* holds a ref for the handle's lifetime */
	int flags;	     /* open(2) flags */
	/* FS-9, protected by ip->lock: the lock owners that took POSIX locks through this handle
	 * and have not flushed it since (RELEASE drops theirs: OFD locks) */
	uint64_t *lk_owners;
	uint32_t lk_nowners, lk_cap;
};

/* FS-6: how far beyond a write's end a quota reservation reaches, so that a stream of
 * appends costs one metadata transaction per step, not one per write. */
#define FS_QUOTA_STEP (4u << 20)

/* FUSE opcodes are below this; the request counters of struct fs cover them. */
#define FS_REQ_KINDS LF_KINDS

/* FS-4: the longest write-time granularity taken from the kernel's coarse clock by default
 * (HZ=100), and the longest a mount may ask for. */
#define FS_TIME_GRAIN_MAX_NS (10 * 1000000LL)
#define FS_TIME_GRAIN_MAX_MS 1000u

/* fs_loop.c SPIN: the default, and the most a mount may ask for. */
#define FS_SPIN_US_DEFAULT 50
#define FS_SPIN_US_MAX	   1000

/* FS-11: the kernel's name and attribute cache time unless the mount sets one. */
#define FS_SHARED_TIMEOUT    1.0
#define FS_ONE_MOUNT_TIMEOUT 86400.0

/* FS-2: how many forgotten orphans one purge transaction deletes at most, and how long the
 * first of a batch waits for company. */
#define FS_PURGE_BATCH	  64
#define FS_PURGE_DELAY_MS 100

struct fs {
	struct meta *meta;
	struct ds *ds;
	struct meta_volume vol;
	struct fs_options opt;
	struct fuse_session *se;
	bool shared; /* FS-7: the engine has META_CAP_SHARED (immutable after fs_new) */
	/* FS-4: the engine has META_CAP_DURABLE_COMMIT: a metadata sync is a no-op, so fsync
	 * neither calls it nor hands it to the syncer (immutable after fs_new) */
	bool commit_durable;
	/* FS-4: a write within this many ns after an inode's last mtime/ctime stamp leaves the
	 * times as they are, as a local file system's do within one clock tick: the kernel's
	 * coarse clock resolution (fs_new; 4 ms at HZ=250). Saves fsync the metadata sync. */
	int64_t time_grain_ns;

	pthread_mutex_t itab_lock;
	struct fs_inode **itab; /* protected by itab_lock */
	size_t itab_size;	/* buckets, power of two */
	size_t itab_count;	/* protected by itab_lock */

	/* Metadata durability without a database sync per fsync: meta_gen counts mutating
	 * metadata calls, meta_synced the value covered by the last sync. */
	_Atomic uint64_t meta_gen, meta_synced;

	/* FS-4: the metadata syncer thread (fs_fuse.c) runs an fsync's metadata sync while the
	 * fsync's own thread syncs the data; one round covers every caller that asked before
	 * it began. */
	pthread_mutex_t sync_lock;
	pthread_cond_t sync_work; /* a round was asked for, or stop */
	pthread_cond_t sync_done; /* a round finished */
	bool sync_pending;	  /* protected by sync_lock: a round was asked for, not begun */
	uint64_t sync_begun;	  /* protected by sync_lock: rounds begun */
	uint64_t sync_ended;	  /* protected by sync_lock: rounds finished */
	uint64_t sync_failed;	  /* protected by sync_lock: last round that failed, 0 if none */
	int sync_err;		  /* protected by sync_lock: its error */
	bool sync_stop;		  /* protected by sync_lock */
	pthread_t sync_thread;

	/* FS-2: rows of forgotten orphans wait here for one batched purge (their chunks are
	 * deleted already). The syncer purges them FS_PURGE_DELAY_MS after the first one came,
	 * a full queue is purged by the thread that filled it, and statfs, a quota read, an
	 * EDQUOT and unmount purge at once. A crash leaves them as orphans for recovery. */
	uint64_t purge_q[FS_PURGE_BATCH]; /* protected by sync_lock */
	unsigned purge_n;		  /* protected by sync_lock */
	int64_t purge_due;		  /* protected by sync_lock: monotonic ns it is due at */

	/* FS-8 (fs_io.c): the unique id of FUSE_INIT while its reply is pending, and whether
	 * the kernel runs with FUSE_HANDLE_KILLPRIV_V2 (set while INIT is answered, before the
	 * kernel sends anything else). */
	_Atomic uint64_t init_unique;
	_Atomic bool killpriv;

	struct fs_locks *locks; /* FS-9 (fs_lock.c); NULL: the kernel keeps locks */

	/* FS-10 (fs_fuse.c, dir_change_*): the directory this mount changed last, as that
	 * change left it, true while meta_gen is dslot_gen. */
	pthread_mutex_t dslot_lock;
	uint64_t dslot_ino;	     /* protected by dslot_lock; 0: none */
	uint64_t dslot_gen;	     /* protected by dslot_lock */
	unsigned dslot_busy;	     /* protected by dslot_lock: tracked changes under way */
	struct meta_attr dslot;	     /* protected by dslot_lock */
	_Atomic uint64_t dslot_hits; /* getattrs it answered */

	/* Requests handled since mount, by FUSE opcode: the loop counts them (fs_req_stats) */
	struct lf_kind_count req[FS_REQ_KINDS];
};

/* What the requests of one kind (FUSE opcode) cost since mount: how many were handled, and
 * the wall time their handlers took, reply included (a request that waits on a device, the
 * network or a lock counts its wait). */
struct fs_req_stat {
	uint64_t count;
	uint64_t busy_ns;
};
/* out[k] for every opcode k below FS_REQ_KINDS. Any thread, at any time while fs lives. */
void fs_req_stats(struct fs *fs, struct fs_req_stat out[FS_REQ_KINDS]);
/* The lowercase name of FUSE opcode k ("lookup", "write"), NULL if it has none. */
const char *fs_req_name(unsigned k);

/* fs_lock.c (FS-9). new: start the lock waiter when the engine shares locks (0 and no
 * handlers otherwise); stop: end every blocked lock request (EINTR) and drop this mount's
 * locks, before the session goes; ops: add the lock handlers to a FUSE ops table. flush:
 * close(2) by owner; release: the last close of f (flock_release and owner as the kernel
 * sent them), which also frees f's lock bookkeeping. */
int fs_lock_new(struct fs *fs);
void fs_lock_stop(struct fs *fs);
struct fuse_lowlevel_ops;
void fs_lock_ops(const struct fs *fs, struct fuse_lowlevel_ops *ops);
int fs_lock_flush(struct fs *fs, struct fs_file *f, uint64_t owner);
int fs_lock_release(struct fs *fs, struct fs_file *f, bool flock_release, uint64_t owner);

/* fs_io.c: route the session's /dev/fuse I/O through our hooks (after fs_mount's mount). */
int fs_io_attach(struct fs *fs);
/* FS-8: the request this thread is handling asked to kill setuid/setgid/capabilities. */
bool fs_io_kill_requested(void);

/* After a mutating metadata call (fs_fuse.c): returns the generation that commit made. */
uint64_t fs_meta_touched(struct fs *fs);
/* META-5 only when something was committed since the last sync (never with
 * META_CAP_DURABLE_COMMIT). */
int fs_meta_sync(struct fs *fs);

/* Lifecycle. fs_new takes over nothing: meta and ds stay the caller's and must outlive fs. */
int fs_new(struct meta *meta, struct ds *ds, const struct fs_options *opt, struct fs **ret);
/* Finish what a crash left: purge orphans, trim data beyond the size of inodes marked
 * META_IF_WDIRTY (FS-3). Returns the number of inodes fixed, or -errno. */
int fs_recover(struct fs *fs);
/* Create the FUSE session and mount at mountpoint. err gets a one-line reason. */
int fs_mount(struct fs *fs, const char *mountpoint, char *err, size_t errlen);
/* Serve until unmounted or signalled. Returns 0 or -errno. */
int fs_loop(struct fs *fs);
/* Flush every dirty inode, purge unused orphans, sync data and metadata, unmount if still
 * mounted, free. NULL ok. */
void fs_free(struct fs *fs);

/* fs_inode.c: the inode table (FS-2). */
int fs_itab_init(struct fs *fs);
void fs_itab_fini(struct fs *fs);
/* Find or insert ino; takes a ref. attr (may be NULL) seeds a new entry; without it a new
 * entry is loaded from the database. */
int fs_inode_get(struct fs *fs, uint64_t ino, const struct meta_attr *attr, struct fs_inode **ret);
/* Existing entry or NULL; takes a ref when found. */
struct fs_inode *fs_inode_find(struct fs *fs, uint64_t ino);
void fs_inode_put(struct fs *fs, struct fs_inode *ip);
void fs_inode_lookup_add(struct fs *fs, struct fs_inode *ip, uint64_t n);
void fs_inode_forget(struct fs *fs, uint64_t ino, uint64_t n);
void fs_inode_open_add(struct fs *fs, struct fs_inode *ip, int delta);
/* Record the size/mtime/ctime of a dirty inode in the database (FS-3); with durable, also
 * make it durable (META-5). */
int fs_inode_flush(struct fs *fs, struct fs_inode *ip, bool durable);
/* Overlay the in-memory fields of a cached inode onto attr (from the database); with a
 * shared engine, a clean cached inode adopts attr instead (FS-7). */
void fs_inode_overlay(struct fs *fs, struct meta_attr *attr);
/* Note a new nlink for ino (after unlink/rename/link); purges at once if nlink is 0 and
 * the inode is not in use. */
void fs_inode_set_nlink(struct fs *fs, const struct meta_attr *attr);
/* Delete chunks and row of an unused inode with nlink 0 (FS-2): the chunks now, the row in
 * the next batched purge (fs.purge_q). */
int fs_purge(struct fs *fs, uint64_t ino, uint32_t mode, bool has_data);
/* Purge the rows queued by fs_purge now. Returns how many were deleted, or -errno. */
int fs_purge_flush(struct fs *fs);
/* The syncer: take the queued purges when the oldest waited FS_PURGE_DELAY_MS (or at once
 * with force). Called with fs.sync_lock held; returns how many were copied into batch. */
unsigned fs_purge_take(struct fs *fs, uint64_t *batch, bool force);
/* Delete the rows of n forgotten orphans in one transaction; logs a failure. */
int fs_purge_run(struct fs *fs, const uint64_t *batch, unsigned n);
/* Flush every dirty inode and purge unused orphans (unmount). */
void fs_itab_flush_all(struct fs *fs);

#endif
