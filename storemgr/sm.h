/* sm — the storage manager: targets that hold chunks.
 *
 * WHAT IT OWNS
 *   A *target* is one place that stores chunks: a directory (dir:/path, one file per chunk,
 *   for NAS mounts and tests), or a raw device or image file, an iSCSI LUN or an NBD export
 *   (one unified on-device chunk-store format). A chunk is named by (ino, idx) and holds up
 *   to chunk_size bytes; it may be sparse. The storage manager knows nothing of files, chains
 *   or replicas: that is the data service's job one layer up.
 *
 * BACKENDS
 *   One `struct sm_ops` table per kind of target, chosen by URL scheme via sm_format() and
 *   sm_open(). Call sites read `caps`, never the scheme. dir: is a directory (sm_dir.c); every
 *   block address space that storemgr/dev.h knows (file:, iscsi://, nbd://, nbd+unix://) is
 *   one chunk store with one on-device format (sm_block.c, docs/format.md).
 *
 * INVARIANTS (cited as SM-n)
 *   SM-1  A target carries an identity (format version, volume uuid, target uuid, target id)
 *         written by format(); open() refuses a target whose identity is missing, corrupt
 *         (checksum), of another format version, or (when expect is given) of another
 *         volume/target.
 *   SM-2  read() of bytes never written (holes, missing chunks, beyond a chunk's end) returns
 *         zeros: a chunk store never returns stale or foreign bytes.
 *   SM-3  A write() that returned is visible to every later read() on this target, and
 *         survives a crash of the calling process (not of the machine).
 *   SM-4  After sync_ino(ino) returns 0, every write() to chunks of ino that returned before
 *         the call survives a machine crash. sync_all() does the same for every chunk.
 *   SM-5  remove(ino, from) deletes every chunk of ino with idx >= from, including chunks
 *         the caller does not know of (left by a crash), so that SM-2 holds after it.
 *   SM-6  format() never destroys data: it refuses a location that already holds a target
 *         identity or any other file unless force is set.
 *
 * THREADS
 *   Every function may be called from any thread, concurrently, also for the same chunk
 *   (the caller orders overlapping writes). A backend keeps its own locks.
 *
 * ERRORS: 0 / byte count or -errno. -ENOSPC, -EIO, -EROFS pass up unchanged. -EBADMSG from
 *   read() means the store's own checksum of the bytes asked for did not match (silent
 *   corruption on the medium): the data service repairs that copy from another replica (DS-4)
 *   rather than treating the target as failed.
 */
#ifndef BRAIDFS_SM_H
#define BRAIDFS_SM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SM_FORMAT_VERSION 1

struct sm_identity {
	uint32_t format_version;
	uint32_t target_id;
	uint32_t chunk_size;
	char volume_uuid[37];
	char target_uuid[37];
};

struct sm_statfs {
	uint64_t total_bytes;
	uint64_t free_bytes; /* what writes can still use */
	uint64_t used_bytes; /* space the chunks take on the medium */
	uint64_t chunks;     /* number of chunks stored (may be an estimate: see caps) */
};

/* One chunk found by list(). */
struct sm_chunk_info {
	uint64_t ino;
	uint32_t idx;
	uint64_t length; /* logical length (highest written byte + 1, holes included) */
};
typedef int (*sm_chunk_cb)(void *ctx, const struct sm_chunk_info *ci);

#define SM_CAP_SPARSE	 0x1 /* holes cost no space; seek() can find them */
#define SM_CAP_PUNCH	 0x2 /* punch() frees space */
#define SM_CAP_EXACT_CNT 0x4 /* statfs.chunks is exact */

struct sm_target;

/* What a target counts as it runs (since open). A backend fills in what it knows, 0 else. */
struct sm_counters {
	uint64_t csum_errors;	/* blocks read whose stored checksum did not match (-EBADMSG) */
	uint64_t bytes_read;	/* payload returned by read() */
	uint64_t bytes_written; /* payload taken by write() */
	uint64_t syncs;		/* sync_ino() / sync_all() calls */
	uint64_t flushes;	/* device cache flushes they and the backend issued */
};

struct sm_ops {
	const char *scheme; /* "dir"; for a backend that serves a family of schemes, its name */
	unsigned caps;
	/* Optional: a backend that serves URLs of several schemes (the block chunk store serves
	 * every device URL: file:, iscsi://, nbd://) says here which; sm_ops_for() asks it when no
	 * backend's `scheme` is the URL's. */
	bool (*serves)(const char *url);

	/* Prepare the location named by url to hold chunks, write the identity. SM-6.
	 * err gets a one-line reason on failure ("target directory /x is not empty", ...). */
	int (*format)(const char *url, const struct sm_identity *id, bool force, char *err,
		      size_t errlen);
	/* Would format() succeed? Every check it makes, nothing written (so that a command
	 * formatting several targets can refuse before it touches any). */
	int (*format_check)(const char *url, bool force, char *err, size_t errlen);
	/* Open for I/O; expect may be NULL, else SM-1 checks volume uuid and target id. */
	int (*open)(const char *url, const struct sm_identity *expect, struct sm_target **ret,
		    char *err, size_t errlen);
	void (*close)(struct sm_target *t); /* syncs nothing; NULL ok */
	int (*identity)(struct sm_target *t, struct sm_identity *ret);

	/* Read len bytes at off within chunk (ino, idx); off + len <= chunk_size. Returns len
	 * (SM-2: missing bytes are zeros) or -errno. */
	ssize_t (*read)(struct sm_target *t, uint64_t ino, uint32_t idx, void *buf, size_t len,
			uint64_t off);
	/* Write; creates the chunk if needed. Returns len or -errno (never short). */
	ssize_t (*write)(struct sm_target *t, uint64_t ino, uint32_t idx, const void *buf,
			 size_t len, uint64_t off);
	/* Set the chunk's logical length (shrink drops the bytes, grow adds a hole). A missing
	 * chunk with len 0 stays missing. Truncating to 0 may delete the chunk (dir does):
	 * chunk_length() then answers -ENOENT and list() no longer shows it. */
	int (*truncate)(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t len);
	/* Turn [off, off+len) of the chunk into a hole (zeros). */
	int (*punch)(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len);
	/* Reserve space for [off, off+len) (fallocate mode 0), extending the chunk's length. */
	int (*allocate)(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off,
			uint64_t len);
	/* SM-5 */
	int (*remove)(struct sm_target *t, uint64_t ino, uint32_t from_idx);
	/* Within chunk (ino, idx), from off: SEEK_DATA / SEEK_HOLE semantics. *ret = offset of
	 * the next data (or hole) within the chunk; -ENXIO when there is no more data in this
	 * chunk (SEEK_DATA) — a missing chunk is all hole. SEEK_HOLE at or past the chunk's
	 * length returns its length. */
	int (*seek)(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, int whence,
		    uint64_t *ret);
	/* Logical length of a chunk; 0 and -ENOENT when it does not exist. */
	int (*chunk_length)(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t *ret);

	int (*sync_ino)(struct sm_target *t, uint64_t ino); /* SM-4 */
	int (*sync_all)(struct sm_target *t);		    /* SM-4 */
	int (*statfs)(struct sm_target *t, struct sm_statfs *ret);
	/* Every chunk on the target, in no particular order. cb returning non-zero stops. */
	int (*list)(struct sm_target *t, sm_chunk_cb cb, void *ctx);
	/* Optional (NULL: the backend counts nothing). Never fails on an open target. */
	int (*counters)(struct sm_target *t, struct sm_counters *ret);
	/* Optional (NULL: nothing is cached). Drop what is cached of ino's chunks (open file
	 * handles), because another process that shares the target may have replaced or removed
	 * their files: two mounts of one volume on one machine (FS-7 in fs/fs.h). Data stays:
	 * a dropped handle with unsynced writes is synced by the next sync_ino (SM-4). */
	void (*forget)(struct sm_target *t, uint64_t ino);
};

/* The generic handle every backend's target starts with. */
struct sm_target {
	const struct sm_ops *ops;
	char url[1024];
};

/* Find the backend for url's scheme (NULL: unknown scheme). */
const struct sm_ops *sm_ops_for(const char *url);
int sm_format(const char *url, const struct sm_identity *id, bool force, char *err, size_t errlen);
int sm_format_check(const char *url, bool force, char *err, size_t errlen);
int sm_open(const char *url, const struct sm_identity *expect, struct sm_target **ret, char *err,
	    size_t errlen);
void sm_close(struct sm_target *t);
/* Undo format(): the identity and every chunk go, the location is as format found it (a dir:
 * target's directory empty again; a file: device or image gets its first 8 KiB — both
 * superblock copies — zeroed and flushed). The caller must know the target belongs to no
 * volume any more (braidfs device remove --wipe). -EOPNOTSUPP for kinds it cannot wipe. */
int sm_wipe(const char *url, char *err, size_t errlen);

extern const struct sm_ops sm_dir_ops;
extern const struct sm_ops sm_block_ops; /* every device URL: see storemgr/dev.h */

#endif
