/* sm_dir_int — internals of the directory target, shared with its fault-injecting twin.
 *
 * Only storemgr/ includes this file; it is not part of the storage manager's contract (sm.h).
 * sm_dir.c implements `struct sm_dir` and its operations; sm_faulty.c embeds a `struct sm_dir`
 * as the first member of its own target and wraps the same operations, so the twin runs the
 * real code and differs only where a fault is injected.
 *
 * LOCKS (lock order, outermost first)
 *   sync_rw (rwlock: sync_ino readers, sync_all writer)
 *     -> sync_stripe[i] (one sync_ino(ino) at a time per stripe)
 *       -> dirty_lock -> shard[i].lock
 *   stat_lock is a leaf. No lock is held across a system call that waits for the disk, except
 *   sync_rw / sync_stripe, which exist to make concurrent syncs wait for each other.
 */
#ifndef BRAIDFS_SM_DIR_INT_H
#define BRAIDFS_SM_DIR_INT_H

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "common/url.h"
#include "storemgr/sm.h"
#include "storemgr/sm_int.h"

#define SM_DIR_ID_FILE	     "braidfs-target"
#define SM_DIR_CHUNKS	     "chunks"
#define SM_DIR_FANOUT	     256
#define SM_DIR_SHARDS	     16
#define SM_DIR_FD_MAX	     1024 /* cached chunk fds per target (default) */
#define SM_DIR_DIRTY_BUCKETS 256
#define SM_DIR_SYNC_STRIPES  64

/* One cached open chunk file. */
struct sm_dir_fd {
	uint64_t ino;
	uint32_t idx;
	int fd;
	unsigned refs; /* protected by the shard lock */
	bool hashed;   /* in the shard's hash + LRU; protected by the shard lock */
	int dirty;     /* hint: (ino, idx) is in the dirty set; __atomic, set under dirty_lock */
	struct sm_dir_fd *hnext;	 /* protected by the shard lock */
	struct sm_dir_fd *lprev, *lnext; /* LRU, most recent first; protected by shard lock */
};

struct sm_dir_shard {
	pthread_mutex_t lock;
	struct sm_dir_fd **buckets; /* protected by lock */
	unsigned nbuckets;
	struct sm_dir_fd *lru_head, *lru_tail; /* protected by lock */
	unsigned count, cap;		       /* count protected by lock */
};

/* Chunks of one inode changed since its last sync (the per-ino dirty set). */
struct sm_dir_dirty {
	uint64_t ino;
	bool dir_dirty;	 /* a chunk file of ino was created or unlinked: fsync the fanout dir */
	uint64_t *slots; /* open-addressing set of idx; SM_DIR_NOIDX = empty */
	uint32_t nslots, n;
	struct sm_dir_dirty *next;
};
#define SM_DIR_NOIDX UINT64_MAX

struct sm_dir {
	struct sm_target base; /* first: a struct sm_target * is a struct sm_dir * */
	struct sm_identity id;
	char path[PATH_MAX];
	int root_fd;   /* the target directory (O_DIRECTORY) */
	int chunks_fd; /* <dir>/chunks */

	struct sm_dir_shard shards[SM_DIR_SHARDS];

	/* A remove()/unlink of chunks is in progress (count) / has happened (gen): a chunk fd
	 * opened concurrently is used once and never cached, so the cache never keeps an fd of
	 * an unlinked file. __atomic. */
	unsigned removing;
	uint64_t remove_gen;

	pthread_rwlock_t sync_rw;
	pthread_mutex_t sync_stripe[SM_DIR_SYNC_STRIPES];
	pthread_mutex_t dirty_lock;
	struct sm_dir_dirty *dirty[SM_DIR_DIRTY_BUCKETS]; /* protected by dirty_lock */

	pthread_mutex_t stat_lock;
	struct sm_statfs stat_cache; /* protected by stat_lock */
	int64_t stat_time_ns;	     /* protected by stat_lock; 0 = never */
};

static inline struct sm_dir *sm_dir_of(struct sm_target *t)
{
	return (struct sm_dir *)t;
}

/* "<scheme>:/abs/path[?query]" -> *ret, its path absolute and without a trailing '/'.
 * -EINVAL with a message for anything else (relative path, a host, another scheme). */
int sm_dir_url_parse(const char *url, const char *scheme, struct url *ret, char *err,
		     size_t errlen);

/* format() of a dir-like target at path. ignore: one more file name that does not make the
 * directory "not empty" (the twin's control file), or NULL. */
/* Remove the identity, every chunk file, the fanout dirs and chunks/: what format made.
 * Anything else in the directory stays (a rmdir that finds more fails with -ENOTEMPTY). */
int sm_dir_wipe_path(const char *path, char *err, size_t errlen);
int sm_dir_format_path(const char *path, const struct sm_identity *id, bool force, bool dry_run,
		       const char *ignore, char *err, size_t errlen);
/* open() of a dir-like target: allocates `size` (>= sizeof(struct sm_dir)) zeroed bytes, sets
 * base.ops = ops, and fills in the struct sm_dir part. fd_max 0 = default. */
int sm_dir_open_path(const struct sm_ops *ops, const char *url, const char *path,
		     const struct sm_identity *expect, size_t size, unsigned fd_max,
		     struct sm_dir **ret, char *err, size_t errlen);

void sm_dir_close(struct sm_target *t);
int sm_dir_identity(struct sm_target *t, struct sm_identity *ret);
ssize_t sm_dir_read(struct sm_target *t, uint64_t ino, uint32_t idx, void *buf, size_t len,
		    uint64_t off);
ssize_t sm_dir_write(struct sm_target *t, uint64_t ino, uint32_t idx, const void *buf, size_t len,
		     uint64_t off);
int sm_dir_truncate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t len);
int sm_dir_punch(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len);
int sm_dir_allocate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len);
int sm_dir_remove(struct sm_target *t, uint64_t ino, uint32_t from_idx);
void sm_dir_forget(struct sm_target *t, uint64_t ino);
int sm_dir_seek(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, int whence,
		uint64_t *ret);
int sm_dir_chunk_length(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t *ret);
/* stat(2) of the chunk's file (the twin looks at its ctime): 0, -ENOENT, -errno. */
int sm_dir_chunk_stat(struct sm_target *t, uint64_t ino, uint32_t idx, struct stat *ret);
int sm_dir_sync_ino(struct sm_target *t, uint64_t ino);
int sm_dir_sync_all(struct sm_target *t);
int sm_dir_statfs(struct sm_target *t, struct sm_statfs *ret);
int sm_dir_list(struct sm_target *t, sm_chunk_cb cb, void *ctx);

/* The fault-injecting twin (sm_faulty.c), scheme "faulty". */
extern const struct sm_ops sm_faulty_ops;

/* Parsers of bytes read from a target (untrusted; fuzzed by storemgr/fuzz/). */
/* The identity file: 0, or -EBADMSG with the reason in why. */
int sm_dir_id_parse(const char *buf, size_t n, struct sm_identity *ret, char *why, size_t whylen);
/* A chunk file name "%016llx.%08x" (lower case only). */
bool sm_dir_parse_name(const char *s, uint64_t *ret_ino, uint32_t *ret_idx);

#endif
