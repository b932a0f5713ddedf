/* meta — the metadata engine interface: namespace + cluster tables.
 *
 * WHAT IT OWNS
 *   The namespace (inodes, directory entries, symlink targets, xattrs, hard links, sizes,
 *   times, modes, owners) and the cluster tables (volume, targets, chains). Chunk data is
 *   NOT here: a file's chunks are addressed by (ino, chunk index) and located by the data
 *   service from the chain table; there is no row per chunk.
 *
 * BACKENDS
 *   One `struct meta_ops` table per engine, chosen by URL scheme (meta_open() looks it up):
 *   sqlite:///abs/path.db (embedded default, meta_sqlite.c) and postgres://user@host:port/db
 *   (also postgresql://; shared by many nodes, meta_pg.c). Call sites never ask which engine
 *   they hold; they read `caps`.
 *
 * INVARIANTS (cited as META-n)
 *   META-1  Every namespace operation is exactly one transaction: it happens whole or not at
 *           all, also across a crash of the process.
 *   META-2  Inode numbers are never reused (the kernel may still cache an old one). Root is 1.
 *   META-3  An inode whose nlink reaches 0 keeps its row (an "orphan") until meta purge();
 *           the FUSE layer purges it once no process has it open. orphans() lists them so a
 *           mount after a crash can finish the job.
 *   META-4  An inode with META_IF_WDIRTY may hold chunk data beyond its recorded size (a
 *           writer was extending it). Whoever clears the flag must first have made sure no
 *           data lies beyond `size` (or that it is about to be trimmed).
 *   META-5  Committed transactions may live only in the OS cache until sync() returns;
 *           after sync() every committed transaction survives a power cut. An engine
 *           with META_CAP_DURABLE_COMMIT makes each commit durable before it returns.
 *   META-6  A chain changes only through chain_update(), which bumps its epoch in the same
 *           transaction and fails with -ESTALE if the caller's epoch is not the current one.
 *   META-7  A target that is drained or removed is a member of no chain: setting either state
 *           fails with -EBUSY while the target is in a chain, and chain_update() (or format())
 *           naming such a target fails with -EINVAL. Removed is final.
 *   META-8  Target ids are never reused (a removed target keeps its row); target_add() hands
 *           out the next id. One URL names at most one target that is not removed (-EEXIST).
 *   META-9  Directory quotas (project-quota style). A directory may be a quota root; every
 *           inode below it carries that root's ino in `qroot` (inherited from the parent at
 *           mknod; the root directory itself carries its own ino so that its children inherit
 *           it). Quota roots do not nest. A root's usage is kept in the same transaction as
 *           every change it counts, so it is exact after a crash:
 *             inodes_used = inodes below the root (the root itself not counted), counted until
 *                           their row is deleted (purge, rmdir);
 *             bytes_used  = sum over its regular files of max(size, qres), where qres is a
 *                           reservation the FUSE layer takes (quota_reserve) before data may
 *                           land beyond the recorded size; qres drops to 0 when
 *                           META_IF_WDIRTY is cleared (FS-3: no write in flight, size recorded).
 *           Sizes, not allocated blocks, are charged: they match statfs and need no chunk scan.
 *           quota_reserve and mknod fail with -EDQUOT rather than exceed a limit; link and
 *           rename between different quota roots fail with -EXDEV (mv then copies).
 *   META-10 (META_CAP_CLUSTER) Every time a lease, node lease or client registration is
 *           judged alive or expired, it is judged by the database's clock (now() in the same
 *           statement that reads or changes it), never by a caller's: the clocks of nodes do
 *           not matter. A caller that must act on its own (self-fencing, DIST-4) counts its
 *           lease as lost at (its monotonic time when it *sent* the successful acquire/renew)
 *           + ttl.
 *   META-11 A lease has at most one holder at a time. acquire/renew/release are each one
 *           conditional statement; acquire succeeds only when the lease is free, expired or
 *           already the caller's. `generation` grows by one every time a holder's tenure
 *           starts (a new holder, or the same one after expiry): a fencing token. renew and
 *           release succeed only for the current holder with the current generation before
 *           expiry, and answer -ESTALE otherwise.
 *   META-12 (clients) An exclusive client (fsck) is registered only when no other live client
 *           is, and no client registers while a live exclusive one exists; the check and the
 *           insert are one transaction. A client whose registration expired cannot renew it
 *           (-ESTALE): others may already have treated it as dead.
 *   META-13 (chain roles) A chain lists its targets in three disjoint roles: `members`
 *           (in-chain: serve reads, count for acknowledgements; [0] is the primary),
 *           `syncing` (receive new writes, serve no reads, do not count for acknowledgements:
 *           being resynced or rebuilt) and `away` (taken out after a failure, expected back).
 *           A target appears at most once in a chain, in one role. Every list is bounded by
 *           META_MAX_REPLICAS and `members` is never empty. Every change of any role is one
 *           epoch-conditional transaction that bumps the epoch (META-6 covers chain_set,
 *           chain_update and chain_promote alike). META-7 holds for all three roles.
 *   META-14 (away time) A target keeps the database time it went away for as long as it
 *           stays in `away`, whatever else a chain_set changes; a target that leaves `away`
 *           and comes back later starts a new time. chains_list reports the age of that time
 *           by the database's clock (META-10), so "away longer than replace_after_s" is one
 *           comparison that no node clock influences.
 *   META-15 (dirty chunks) dirty(chain, target) is a set of chunk refs (ino, idx): adding a
 *           ref twice keeps one row; a batch is added or removed whole (one transaction).
 *           Listing is paged in (ino, idx) order after a cursor, so a walk that removes what
 *           it copied and one that only reads both make progress.
 *   META-16 (catch-up, DIST-6) chain_promote makes a syncing target a full member and
 *           deletes its dirty rows and its repairs row in the same transaction as the epoch
 *           bump: no reader can see it in-chain while rows that say it is behind survive,
 *           and no row survives the promotion.
 *   META-17 (repairs) repairs has at most one row per (chain, target): progress of the
 *           resync or rebuild that brings that target up to date. It is advisory (status);
 *           nothing reads it to decide correctness.
 *   META-18 (file locks, META_CAP_LOCKS) A file lock row belongs to one live client
 *           registration (META-12), one lock owner of that client (the kernel's FUSE
 *           lock_owner) and one kind: POSIX record locks (fcntl, OFD) or flock. Kinds never
 *           conflict with each other (as on Linux). The byte ranges of one (ino, client,
 *           owner, kind) never overlap, and two adjacent or overlapping ranges of one type are
 *           one row (POSIX merge and split); an flock is one whole-file row. lock_set tests
 *           for a conflict and writes the owner's new rows in one transaction that holds the
 *           inode's row lock, so two conflicting locks are never both granted. A row whose
 *           client's registration expired (META-10: by the database's clock) is no conflict:
 *           it is ignored at once and deleted by the next lock_set on that inode or when the
 *           registration is reaped. Nothing queues waiters: a blocked F_SETLKW retries.
 *   META-19 (async) A fourth role, `async`: a copy kept beside a chain (a backup on external
 *           storage) that the chain's primary forwards every write to without waiting for
 *           it. It serves no reads, never counts for acknowledgements, is never the primary,
 *           and what it missed is recorded in dirty(chain, target) like an away target's.
 *           The same rules as the other roles: disjoint from them, bounded by
 *           META_MAX_REPLICAS, changed only by an epoch-conditional transaction; chain_update
 *           and chain_promote keep it as it is. Stored as role 3 (schema: sqlite 5,
 *           postgres 4; an older braidfs refuses the newer schema instead of dropping the
 *           rows it does not know on its next chain_set).
 *
 * THREADS
 *   A `struct meta` is safe to call from any number of threads at once; the engine serializes
 *   internally as it must. Callbacks (readdir, orphans, ...) run on the calling thread while
 *   the engine may hold its lock: they must not call back into the same `struct meta`.
 *
 * ERRORS
 *   Every function returns 0 (or a count) or -errno: -ENOENT, -EEXIST, -ENOTEMPTY, -ENOTDIR,
 *   -EISDIR, -ENODATA (xattr, no quota), -ERANGE (buffer), -EIO (engine failure, logged at debug
 *   with the engine's own message), -EBUSY (locked by another process), -EINVAL (bad URL or
 *   argument), -EDQUOT (a quota limit, META-9), -EXDEV (across quota roots, META-9),
 *   -EOPNOTSUPP (an optional op the engine lacks: see META_CALL_OPT).
 */
#ifndef BRAIDFS_META_H
#define BRAIDFS_META_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define META_ROOT_INO	    1
#define META_NAME_MAX	    255
#define META_SYMLINK_MAX    4095
#define META_XATTR_NAME_MAX 255
#define META_XATTR_SIZE_MAX 65536
#define META_MAX_REPLICAS   8
#define META_MAX_TARGETS    256	 /* target rows ever, removed ones included */
#define META_MAX_CHAINS	    4096 /* chains of a volume (fixed at format time) */
#define META_POOL_MAX	    32	 /* pool name + NUL: 1..31 of [a-z0-9._-] */
#define META_NODE_MAX	    65	 /* node (host) name + NUL */
#define META_MEDIA_MAX	    16	 /* media class + NUL: "nvme", "ssd", "hdd", "dir", ... */

#define META_QUOTA_XATTR "trusted.braidfs.quota" /* virtual xattr handled by fs_fuse.c */

/* inode flags (meta_attr.flags) */
#define META_IF_WDIRTY 0x1 /* META-4 */

struct meta_attr {
	uint64_t ino;
	uint32_t mode; /* type + permission bits, as st_mode */
	uint32_t nlink;
	uint32_t uid, gid;
	uint64_t rdev;
	uint64_t size;
	int64_t atime_ns, mtime_ns, ctime_ns, btime_ns; /* ns since the epoch */
	uint64_t generation;
	uint32_t flags; /* META_IF_* */
	uint64_t qroot; /* META-9: quota root accounting this inode, 0 if none (read-only here) */
	uint64_t qres;	/* META-9: bytes reserved beyond size (read-only; quota_reserve sets it) */
};

/* setattr mask */
#define META_SET_MODE  0x01
#define META_SET_UID   0x02
#define META_SET_GID   0x04
#define META_SET_SIZE  0x08
#define META_SET_ATIME 0x10
#define META_SET_MTIME 0x20
#define META_SET_CTIME 0x40
#define META_SET_FLAGS 0x80 /* replace attr.flags */

enum meta_consistency { META_STRONG = 0, META_WEAK = 1 };

struct meta_volume {
	char name[64];
	char uuid[37];
	uint32_t format_version;
	uint32_t chunk_size; /* bytes, power of two */
	uint32_t replicas;
	enum meta_consistency consistency;
	int64_t created_ns;
};

/* Target states (META-7):
 *   up ----(a write failed: DS-1)----> offline ----(fsck --repair rebuilt it)----> up
 *   up | offline ----(device drain)----> draining ----(every chain moved off)----> drained
 *   drained, or any state holding no chain ----(device remove)----> removed (final)
 * The data service uses up and draining targets; offline ones only when a rebuild asks. */
enum meta_target_state {
	META_TARGET_UP = 0,
	META_TARGET_OFFLINE = 1,
	META_TARGET_DRAINING = 2, /* its chains are being moved to other targets */
	META_TARGET_DRAINED = 3,  /* in no chain; still attached, identity kept */
	META_TARGET_REMOVED = 4,  /* detached; the row stays so that its id is never reused */
};
#define META_TARGET_NSTATES 5

struct meta_target {
	uint32_t id; /* 1.. */
	char url[1024];
	char uuid[37];
	enum meta_target_state state;
	/* Placement (dataservice/placement.h): a chain's members come from one pool, on distinct
	 * nodes where the pool spans enough of them. Empty strings: not recorded. */
	char pool[META_POOL_MAX];   /* 1..31 of [a-z0-9._-] */
	char node[META_NODE_MAX];   /* the host that owns it (gethostname) */
	char media[META_MEDIA_MAX]; /* media class, lower case: nvme, ssd, hdd, virtual, remote,
				       dir, file, unknown */
};

/* target_update() mask */
#define META_TSET_STATE 0x1
#define META_TSET_POOL	0x2
#define META_TSET_NODE	0x4
#define META_TSET_MEDIA 0x8

/* A chain and its four roles (META-13, META-19). format() writes `members` and `async` only
 * (a new chain has nothing syncing or away) and ignores the rest. */
struct meta_chain {
	uint32_t id; /* 0..nchains-1 */
	uint64_t epoch;
	uint32_t nmembers;
	uint32_t members[META_MAX_REPLICAS]; /* target ids; [0] is the primary */
	uint32_t nsyncing;
	uint32_t syncing[META_MAX_REPLICAS]; /* receive writes, serve no reads, no acks */
	uint32_t naway;
	uint32_t away[META_MAX_REPLICAS]; /* out after a failure, expected back */
	uint32_t nasync;
	uint32_t async[META_MAX_REPLICAS]; /* META-19: get writes unwaited; no reads, no acks */
	/* chains_list: how long away[i] has been away (META-14: now() - the time it went, by the
	 * database's clock, as of the read). Ignored by chain_set. */
	int64_t away_ns[META_MAX_REPLICAS];
};

/* One chunk of one file: the unit of dirty tracking and of repair. */
struct meta_chunk_ref {
	uint64_t ino; /* 1..INT64_MAX */
	uint64_t idx; /* chunk index, 0..INT64_MAX */
};

#define META_DIRTY_BATCH_MAX 4096 /* refs per dirty_add / dirty_remove call */
#define META_PURGE_BATCH_MAX 256  /* inodes per purge_batch call */

enum meta_repair_kind {
	META_REPAIR_RESYNC = 0,	 /* copy the dirty chunks of a returning target */
	META_REPAIR_REBUILD = 1, /* copy every chunk of the chain to a new target */
};

/* META-17: progress of one resync or rebuild, for status. */
struct meta_repair {
	uint32_t chain, target; /* the target being brought up to date */
	enum meta_repair_kind kind;
	uint64_t chunks_total; /* 0: not known yet */
	uint64_t chunks_done;
	uint64_t bytes_done;
	uint64_t rate;	    /* bytes/s, as the engine measured it lately */
	int64_t started_ns; /* repairs_list: when it started, ns since the epoch (database clock) */
	int64_t elapsed_ns; /* repairs_list: now() - started, database clock */
	int64_t updated_ns; /* repairs_list: now() - its last repair_set, database clock */
};

/* META-9: one quota root. A limit of 0 means "no limit" for that resource. */
struct meta_quota {
	uint64_t ino; /* the quota root directory */
	uint64_t bytes_limit, inodes_limit;
	uint64_t bytes_used, inodes_used;
};

/* Cluster membership (META_CAP_CLUSTER). Ages and remaining times are computed by the database
 * (META-10); they are as of the statement that read them. */
enum meta_node_state { META_NODE_UP = 0, META_NODE_DOWN = 1 };

struct meta_node {
	uint32_t id; /* 1.., assigned by node_register */
	char name[64];
	char address[256];
	enum meta_node_state state;
	int64_t heartbeat_age_ns;   /* now() - last heartbeat, database clock */
	int64_t lease_remaining_ns; /* its lease_until - now() (DIST-4); <= 0: expired */
};

#define META_LEASE_NAME_MAX 63

struct meta_lease {
	char name[META_LEASE_NAME_MAX + 1];
	uint32_t holder;      /* node id; 0: free (released or never taken) */
	uint64_t generation;  /* META-11: fencing token, +1 per tenure */
	int64_t remaining_ns; /* expiry - now(), database clock; <= 0: expired */
};

struct meta_client {
	uint64_t id; /* assigned by client_register */
	char host[256];
	int32_t pid;
	char mountpoint[1024]; /* "" for a tool (fsck) */
	bool exclusive;	       /* META-12 */
	bool alive;	       /* registration not expired, database clock */
	int64_t remaining_ns;  /* expiry - now(); <= 0: expired */
};

struct meta_statfs {
	uint64_t inodes; /* live inodes */
	uint64_t bytes;	 /* sum of file sizes */
};

/* File locks (META-18). A range is inclusive; META_LOCK_EOF as its end reaches the end of the
 * file, whatever it becomes. */
#define META_LOCK_EOF	     INT64_MAX
#define META_LOCK_RANGES_MAX 1024 /* ranges one owner may hold on one inode (-ENOLCK beyond) */

enum meta_lock_kind { META_LOCK_POSIX = 0, META_LOCK_FLOCK = 1 };
enum meta_lock_type { META_LOCK_UN = 0, META_LOCK_RD = 1, META_LOCK_WR = 2 };

struct meta_lock {
	uint64_t ino;
	uint64_t client; /* the holder's client registration (META-12) */
	uint64_t owner;	 /* the kernel's lock owner (FUSE lock_owner), opaque */
	enum meta_lock_kind kind;
	enum meta_lock_type type; /* META_LOCK_UN: lock_set unlocks the range */
	uint64_t start, end;	  /* inclusive, 0..META_LOCK_EOF; an flock is 0..META_LOCK_EOF */
	int32_t pid;		  /* the holder's process, on its client's host */
	bool local; /* lock_get: the holder's client registered from the host of in->client */
	bool alive; /* locks_list: its client's registration has not expired (META-10) */
};

/* readdir: one entry; `off` is the offset to resume *after* this entry. Stable across
 * inserts and deletes of other entries (entries get a monotonic id). Return non-zero to stop. */
typedef int (*meta_dirent_cb)(void *ctx, const char *name, uint64_t ino, uint32_t mode,
			      uint64_t off);
/* readdirplus flavour: attr of the entry's inode. */
typedef int (*meta_direntplus_cb)(void *ctx, const char *name, const struct meta_attr *attr,
				  uint64_t off);
typedef int (*meta_inode_cb)(void *ctx, const struct meta_attr *attr);

/* fsck findings are reported through this; `repaired` says whether it was fixed. */
typedef void (*meta_report_cb)(void *ctx, const char *what, uint64_t ino, bool repaired);

struct meta;

/* Open flags */
#define META_O_CREATE 0x1 /* create the database if missing (format) */
#define META_O_RDONLY 0x2

struct meta_ops {
	const char *scheme; /* "sqlite" */
	unsigned caps;	    /* META_CAP_* */

	/* err: a one-line reason fit for a user when it fails (missing file, not a database,
	 * not a braidfs database, corrupted, locked). */
	int (*open)(const char *url, int flags, struct meta **ret, char *err, size_t errlen);
	void (*close)(struct meta *m); /* NULL ok */

	/* Cluster tables. format() creates the schema, the volume row, the targets, the chains
	 * and the root directory (mode 0755|S_IFDIR, uid/gid given) in one transaction.
	 * -EEXIST if a volume already exists. */
	int (*format)(struct meta *m, const struct meta_volume *vol, const struct meta_target *t,
		      unsigned ntargets, const struct meta_chain *c, unsigned nchains, uid_t uid,
		      gid_t gid);
	int (*volume_get)(struct meta *m, struct meta_volume *ret); /* -ENOENT: not formatted */
	/* Fill up to max entries; return the count (which may exceed max: call again bigger). */
	int (*targets_list)(struct meta *m, struct meta_target *ret, unsigned max);
	int (*target_set_state)(struct meta *m, uint32_t id, enum meta_target_state state);
	/* Add a target (t->id is ignored): META-8 gives it the next id, returned in *ret_id.
	 * -EEXIST: its URL names a target that is not removed; -EINVAL: a bad field; -ENOSPC:
	 * META_MAX_TARGETS rows exist. */
	int (*target_add)(struct meta *m, const struct meta_target *t, uint32_t *ret_id);
	/* Change the fields of target id named by mask (META_TSET_*) to those of in, in one
	 * transaction. -ENOENT unknown id; -EBUSY drained/removed while in a chain (META-7);
	 * -EINVAL a bad value, or any change to a removed target. */
	int (*target_update)(struct meta *m, uint32_t id, unsigned mask,
			     const struct meta_target *in);
	int (*chains_list)(struct meta *m, struct meta_chain *ret, unsigned max);
	/* META-6: replace members if the chain's epoch equals expect_epoch; epoch+1. A target of
	 * the new members leaves syncing / away; the rest of those two roles is kept. */
	int (*chain_update)(struct meta *m, uint32_t chain_id, uint64_t expect_epoch,
			    const uint32_t *members, uint32_t nmembers, uint64_t *ret_epoch);
	/* META-6, META-13: set members, syncing and away of chain_id to those of `in` (its id,
	 * epoch and away_ns are ignored) if its epoch equals expect_epoch; epoch+1. A target
	 * that was away already keeps the time it went (META-14); a newly away one gets now().
	 * -EINVAL: no member, a list longer than META_MAX_REPLICAS, a target twice, an unknown,
	 * drained or removed target; -ESTALE: another epoch; -ENOENT: no such chain. */
	int (*chain_set)(struct meta *m, uint32_t chain_id, uint64_t expect_epoch,
			 const struct meta_chain *in, uint64_t *ret_epoch);
	/* META-16 (DIST-6): move syncing target `target` to the end of members, delete its
	 * dirty rows and its repairs row of this chain, epoch+1: one transaction. -EINVAL if it
	 * is not syncing in this chain (or members is full); -ESTALE, -ENOENT as chain_set. */
	int (*chain_promote)(struct meta *m, uint32_t chain_id, uint64_t expect_epoch,
			     uint32_t target, uint64_t *ret_epoch);

	/* Dirty chunks (META-15, DIST-7): what `target` missed of `chain` while it was out.
	 * add: 1..META_DIRTY_BATCH_MAX refs, duplicates (in the batch or stored) ignored, one
	 * transaction; -EINVAL for an unknown chain or target, or a ref out of range. list: up to
	 * max refs greater than *after (NULL: from the start) in (ino, idx) order; returns the
	 * count (< max: the end). count: the number of rows. remove: the given refs (absent ones
	 * ignored), one transaction. clear: every row of (chain, target). */
	int (*dirty_add)(struct meta *m, uint32_t chain, uint32_t target,
			 const struct meta_chunk_ref *refs, unsigned n);
	int (*dirty_list)(struct meta *m, uint32_t chain, uint32_t target,
			  const struct meta_chunk_ref *after, struct meta_chunk_ref *ret,
			  unsigned max);
	int (*dirty_count)(struct meta *m, uint32_t chain, uint32_t target, uint64_t *ret);
	int (*dirty_remove)(struct meta *m, uint32_t chain, uint32_t target,
			    const struct meta_chunk_ref *refs, unsigned n);
	int (*dirty_clear)(struct meta *m, uint32_t chain, uint32_t target);

	/* Repair progress (META-17). set: insert or update the row of (in->chain, in->target)
	 * with kind and counters; `started` is now() for a new row or a change of kind, else
	 * kept (the *_ns fields of in are ignored). -EINVAL for an unknown chain or target or a
	 * bad kind. list: as targets_list, by (chain, target). delete: -ENOENT if no row. */
	int (*repair_set)(struct meta *m, const struct meta_repair *in);
	int (*repairs_list)(struct meta *m, struct meta_repair *ret, unsigned max);
	int (*repair_delete)(struct meta *m, uint32_t chain, uint32_t target);

	/* Namespace. name is a NUL-terminated component (1..META_NAME_MAX bytes, no '/'). */
	int (*lookup)(struct meta *m, uint64_t parent, const char *name, struct meta_attr *ret);
	int (*getattr)(struct meta *m, uint64_t ino, struct meta_attr *ret);
	/* Update the fields named by mask from in; ret gets the full new attr (ret may be NULL).
	 * Does not touch ctime unless META_SET_CTIME is given. */
	int (*setattr)(struct meta *m, uint64_t ino, unsigned mask, const struct meta_attr *in,
		       struct meta_attr *ret);
	/* Create a regular file, directory, symlink (link != NULL), fifo, socket or device node.
	 * `in` gives mode, uid, gid, rdev and the times; the engine assigns ino, nlink and
	 * generation, bumps the parent's mtime/ctime (to in->ctime_ns) and, for a directory, the
	 * parent's nlink. In a setgid directory the new inode takes the directory's group instead
	 * of in->gid, and a new directory its setgid bit too (as Linux does). -EEXIST if the name
	 * exists. */
	int (*mknod)(struct meta *m, uint64_t parent, const char *name, const struct meta_attr *in,
		     const char *link, struct meta_attr *ret);
	/* New name for an existing non-directory inode: nlink+1, ctime = now_ns. */
	int (*link)(struct meta *m, uint64_t ino, uint64_t newparent, const char *newname,
		    int64_t now_ns, struct meta_attr *ret);
	/* Remove a non-directory name (-EISDIR for a directory). ret = the inode after the
	 * change (nlink may be 0: an orphan, META-3). */
	int (*unlink)(struct meta *m, uint64_t parent, const char *name, int64_t now_ns,
		      struct meta_attr *ret);
	/* Remove an empty directory (-ENOTEMPTY, -ENOTDIR). The directory's row is deleted
	 * (its nlink becomes 0; ret->ino says which it was). */
	int (*rmdir)(struct meta *m, uint64_t parent, const char *name, int64_t now_ns,
		     struct meta_attr *ret);
	/* rename(2) semantics incl. flags RENAME_NOREPLACE / RENAME_EXCHANGE. When an existing
	 * entry is replaced, *ret_replaced gets its inode after the change (ino 0 if none);
	 * its nlink may have dropped to 0 (orphan). Checks: EISDIR/ENOTDIR type mismatches,
	 * ENOTEMPTY for a non-empty replaced directory, EINVAL for moving a directory into its
	 * own subtree. */
	int (*rename)(struct meta *m, uint64_t parent, const char *name, uint64_t newparent,
		      const char *newname, unsigned flags, int64_t now_ns,
		      struct meta_attr *ret_replaced);
	/* Copies the target (NUL-terminated) into buf; returns its length or -ERANGE/-EINVAL. */
	int (*readlink)(struct meta *m, uint64_t ino, char *buf, size_t size);
	/* Entries with offset > off, in offset order, without "." and "..". Offsets start > 2
	 * so that the FUSE layer can use 1 and 2 for "." and "..". */
	int (*readdir)(struct meta *m, uint64_t dir, uint64_t off, meta_dirent_cb cb, void *ctx);
	int (*readdirplus)(struct meta *m, uint64_t dir, uint64_t off, meta_direntplus_cb cb,
			   void *ctx);

	/* xattrs; flags: XATTR_CREATE / XATTR_REPLACE. get/list with size 0 return the size. */
	int (*setxattr)(struct meta *m, uint64_t ino, const char *name, const void *value,
			size_t size, int flags);
	int (*getxattr)(struct meta *m, uint64_t ino, const char *name, void *buf, size_t size);
	int (*listxattr)(struct meta *m, uint64_t ino, char *buf, size_t size);
	int (*removexattr)(struct meta *m, uint64_t ino, const char *name);

	/* Orphans and recovery (META-3, META-4). purge() deletes an inode with nlink 0 and its
	 * xattrs; -EBUSY if nlink > 0. orphans() calls cb for every inode with nlink 0 or with
	 * META_IF_WDIRTY set. */
	int (*purge)(struct meta *m, uint64_t ino);
	/* purge() of n inodes (1..META_PURGE_BATCH_MAX) in one transaction, so that a stream of
	 * unlinks costs one commit per batch instead of one per file. An inode that purge()
	 * would refuse as gone or not an orphan (-ENOENT, -EBUSY, -ENOTEMPTY) is skipped; any
	 * other error rolls the whole batch back. Returns the number of rows deleted. */
	int (*purge_batch)(struct meta *m, const uint64_t *inos, unsigned n);
	int (*orphans)(struct meta *m, meta_inode_cb cb, void *ctx);
	/* Every inode, in ino order (fsck, scrub). */
	int (*inodes)(struct meta *m, meta_inode_cb cb, void *ctx);

	/* META-5: make every committed transaction durable. */
	int (*sync)(struct meta *m);
	int (*statfs)(struct meta *m, struct meta_statfs *ret);
	/* Directory quotas (META-9). quota_set makes directory `dir` a quota root with these
	 * limits, or changes the limits of an existing root (a limit below the usage is allowed:
	 * it only stops growth). Making a root walks dir's subtree, tags every inode and counts
	 * the usage, in one transaction. -ENOTDIR, -EINVAL if dir is inside another quota root or
	 * holds one (no nesting). quota_get answers for the root that accounts `ino` (any inode
	 * below a root, or the root itself); -ENODATA if none. quota_clear removes a root
	 * (-ENODATA if dir is not one) and untags its inodes. */
	int (*quota_set)(struct meta *m, uint64_t dir, uint64_t bytes_limit, uint64_t inodes_limit);
	int (*quota_get)(struct meta *m, uint64_t ino, struct meta_quota *ret);
	int (*quota_clear)(struct meta *m, uint64_t dir);
	/* Before data may land beyond the recorded size of regular file ino: set META_IF_WDIRTY
	 * (META-4) and, if ino is under a quota root, raise its reservation qres to at most
	 * `want` and at least `need` bytes (need <= want), charging the root. -EDQUOT if `need`
	 * does not fit. *ret_reserved = the bytes now covered (max(size, qres)); UINT64_MAX when
	 * ino has no quota root (nothing to reserve). One transaction. */
	int (*quota_reserve)(struct meta *m, uint64_t ino, uint64_t need, uint64_t want,
			     uint64_t *ret_reserved);

	/* Namespace consistency: nlink vs entries, entries naming missing inodes, directories
	 * unreachable from the root. Returns the number of problems found (after repair, if
	 * repair). */
	int (*check)(struct meta *m, bool repair, meta_report_cb cb, void *ctx);

	/* ---- Optional (META_CAP_CLUSTER): nodes, leases and clients, for several nodes and
	 * several mounts of one volume. NULL in an engine without the cap; call them through
	 * META_CALL_OPT, which answers -EOPNOTSUPP then. ttl_ms: 1..META_TTL_MAX_MS. */

	/* Nodes (serve daemons, docs/distributed.md). register: insert, or update the row of the
	 * same name (a node that restarts keeps its id): address, state UP, heartbeat now(),
	 * lease_until now() + ttl. heartbeat: the same two times (-ENOENT: unknown id); a node
	 * stops acknowledging writes ttl after it *sent* its last successful heartbeat (META-10).
	 */
	int (*node_register)(struct meta *m, const char *name, const char *address, uint32_t ttl_ms,
			     uint32_t *ret_id);
	int (*node_heartbeat)(struct meta *m, uint32_t id, uint32_t ttl_ms);
	int (*node_set_state)(struct meta *m, uint32_t id, enum meta_node_state state);
	int (*nodes_list)(struct meta *m, struct meta_node *ret, unsigned max); /* as targets */

	/* Leases (META-11), e.g. "manager". holder is a registered node (-EINVAL otherwise).
	 * acquire: -EBUSY if another node holds it unexpired; ret (may be NULL) gets the lease
	 * as it stands after the call, also on -EBUSY/-ESTALE. get: -ENOENT if never taken. */
	int (*lease_acquire)(struct meta *m, const char *name, uint32_t holder, uint32_t ttl_ms,
			     struct meta_lease *ret);
	int (*lease_renew)(struct meta *m, const char *name, uint32_t holder, uint64_t generation,
			   uint32_t ttl_ms, struct meta_lease *ret);
	int (*lease_release)(struct meta *m, const char *name, uint32_t holder,
			     uint64_t generation);
	int (*lease_get)(struct meta *m, const char *name, struct meta_lease *ret);

	/* Clients (mounts and tools that need the volume; META-12). register: -EBUSY on a
	 * conflict, with the conflicting client in *ret_conflict (may be NULL). Expired rows are
	 * removed by the next register. heartbeat: -ESTALE once expired or removed. list: every
	 * row, expired ones too (alive = false), by id. */
	int (*client_register)(struct meta *m, const struct meta_client *in, uint32_t ttl_ms,
			       uint64_t *ret_id, struct meta_client *ret_conflict);
	int (*client_heartbeat)(struct meta *m, uint64_t id, uint32_t ttl_ms);
	int (*client_unregister)(struct meta *m, uint64_t id); /* -ENOENT: no such row */
	int (*clients_list)(struct meta *m, struct meta_client *ret, unsigned max);

	/* ---- Optional (META_CAP_LOCKS): file locks shared by every client of the volume
	 * (META-18). NULL in an engine without the cap (META_CALL_OPT: -EOPNOTSUPP).
	 * lock_set: in names ino, client, owner, kind, type, range and pid. A conflicting lock of
	 * another owner (same kind, overlapping, one of them a write lock, its client alive)
	 * answers -EAGAIN with it in *ret_conflict (may be NULL) and changes nothing; otherwise
	 * the owner's rows of ino become what POSIX says (type META_LOCK_UN unlocks the range;
	 * an flock replaces the owner's flock whole). -ESTALE: in->client is not a live
	 * registration; -ENOENT: no inode ino; -ENOLCK: the owner would hold more than
	 * META_LOCK_RANGES_MAX ranges of ino; -EINVAL: a bad field. One transaction. */
	int (*lock_set)(struct meta *m, const struct meta_lock *in, struct meta_lock *ret_conflict);
	/* F_GETLK: the first lock (lowest start) that would make lock_set(in) fail with -EAGAIN,
	 * into *ret; ret->type is META_LOCK_UN when there is none. */
	int (*lock_get)(struct meta *m, const struct meta_lock *in, struct meta_lock *ret);
	/* Delete every lock of (ino, client, owner, kind): close(2) (posix), the last close of
	 * a file (flock, OFD). Returns the number of rows deleted. */
	int (*lock_release)(struct meta *m, uint64_t ino, uint64_t client, uint64_t owner,
			    enum meta_lock_kind kind);
	/* Delete every lock of a client (unmount). Returns the number of rows deleted. */
	int (*locks_release_client)(struct meta *m, uint64_t client);
	/* The locks of ino, dead clients' too (alive = false), ordered by client, owner, kind,
	 * start; as targets_list. */
	int (*locks_list)(struct meta *m, uint64_t ino, struct meta_lock *ret, unsigned max);
};

#define META_CAP_SHARED	 0x1 /* many nodes may open it at once (postgres) */
#define META_CAP_CLUSTER 0x2 /* nodes, leases and clients ops are there */
#define META_CAP_LOCKS	 0x4 /* file lock ops are there (META-18) */
/* META-5: every commit is durable when its call returns, so sync() is a no-op (postgres):
 * callers may skip it. */
#define META_CAP_DURABLE_COMMIT 0x8

#define META_TTL_MAX_MS (24u * 3600 * 1000)

/* "resync", "rebuild" ("?" for anything else). */
const char *meta_repair_kind_name(enum meta_repair_kind k);
/* "up", "offline", "draining", "drained", "removed" ("?" for anything else). */
const char *meta_target_state_name(enum meta_target_state s);
/* Is s a valid pool name (1..META_POOL_MAX-1 of [a-z0-9._-], not starting with '.' or '-')? */
bool meta_pool_name_ok(const char *s);

/* Look up the engine by the URL's scheme and open it. On -EINVAL/-ENOENT/-EIO, err gets a
 * one-line reason fit for a user ("no such file", "not a braidfs metadata database", ...). */
int meta_open(const char *url, int flags, struct meta **ret, char *err, size_t errlen);
void meta_close(struct meta *m);
/* The engine a URL names by its scheme, without opening anything (NULL: none). */
const struct meta_ops *meta_ops_for(const char *url);
/* The ops table behind an open handle (every backend's struct meta starts with it). */
const struct meta_ops *meta_ops_of(const struct meta *m);

/* Every handle starts with this, so the generic wrappers can dispatch. */
struct meta {
	const struct meta_ops *ops;
};

/* Convenience wrappers: m->ops->fn(m, ...). */
#define META_CALL(m, fn, ...) ((m)->ops->fn((m), ##__VA_ARGS__))
/* The same for an optional op: -EOPNOTSUPP when the engine has none. */
#define META_CALL_OPT(m, fn, ...) ((m)->ops->fn ? (m)->ops->fn((m), ##__VA_ARGS__) : -EOPNOTSUPP)

extern const struct meta_ops meta_sqlite_ops;
extern const struct meta_ops meta_pg_ops;

#endif
