/* dev — block address spaces under the chunk store: image files and raw devices, iSCSI LUNs,
 * NBD exports.
 *
 * WHAT IT OWNS
 *   Moving aligned blocks between memory and one linear address space, and making them
 *   durable. It knows nothing of chunks: the chunk store (sm_block.c, docs/format.md) lays its
 *   one on-device format over any struct sm_dev. One `struct sm_dev_ops` table per kind, one
 *   file each, chosen by URL scheme:
 *     file:/dev/XXX, file:/path/image        dev_file.c   liburing, O_DIRECT
 *     iscsi://HOST[:PORT]/IQN/LUN             dev_iscsi.c  libiscsi (userspace initiator)
 *     nbd://HOST[:PORT]/EXPORT                dev_nbd.c    libnbd
 *     nbd+unix:///EXPORT?socket=PATH          dev_nbd.c    libnbd
 *
 * RULES (cited as DEV-n)
 *   DEV-1 Every offset and length is a multiple of SM_DEV_ALIGN (4096) and every buffer is
 *         aligned to SM_DEV_ALIGN; anything else is -EINVAL. `size` is rounded down to it.
 *   DEV-2 A read or write either transfers the whole length or fails with -errno (short
 *         transfers are retried inside the backend; EINTR/EAGAIN never reach the caller).
 *   DEV-3 A write that returned is visible to every later read from any thread, and survives
 *         a crash of this process (it left the process: the kernel, the device or the server
 *         has it).
 *   DEV-4 flush() returns 0 only when every write that returned before the call is durable
 *         (fdatasync / SCSI SYNCHRONIZE CACHE / NBD_CMD_FLUSH). A write with SM_DEV_FUA is
 *         durable when it returns (FUA where the device offers it, else write + flush).
 *   DEV-5 Every function may be called from any thread, concurrently; a backend gives real
 *         parallelism (a queue depth > 1: rings, several sessions or connections), never one
 *         global lock held across an I/O.
 *   DEV-6 A failed I/O is reported, never dropped or retried forever: transport errors are
 *         retried a bounded number of times (reconnect for network backends) and then
 *         answer -EIO (or the specific errno).
 *
 * ERRORS: 0 or -errno; open() puts a one-line reason into err ("iscsi://h/iqn/0: login failed:
 *   ...", "file:/x: not a block device or regular file").
 */
#ifndef BRAIDFS_DEV_H
#define BRAIDFS_DEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SM_DEV_ALIGN 4096u

/* open() flags */
#define SM_DEV_RDONLY 0x1 /* no writes (device list, status of an unmounted volume) */
#define SM_DEV_EXCL   0x2 /* file: O_EXCL on a block device / flock on an image file */

/* write flags */
#define SM_DEV_FUA 0x1

/* one I/O of a batch */
enum sm_dev_opcode { SM_DEV_READ = 0, SM_DEV_WRITE = 1 };
struct sm_dev_io {
	enum sm_dev_opcode op;
	unsigned flags; /* SM_DEV_FUA for writes */
	void *buf;
	size_t len;
	uint64_t off;
	int result; /* out: 0 or -errno */
};

struct sm_dev;

struct sm_dev_ops {
	const char *scheme; /* "file", "iscsi", "nbd", "nbd+unix" */
	int (*open)(const char *url, unsigned flags, struct sm_dev **ret, char *err, size_t errlen);
	void (*close)(struct sm_dev *d); /* syncs nothing */
	int (*pread)(struct sm_dev *d, void *buf, size_t len, uint64_t off);
	int (*pwrite)(struct sm_dev *d, const void *buf, size_t len, uint64_t off, unsigned flags);
	/* Run n I/Os at once (in any order, as parallel as the backend can) and wait for all.
	 * Each io gets its own result; returns 0 when all succeeded, else the first error. */
	int (*submit)(struct sm_dev *d, struct sm_dev_io *ios, unsigned n);
	int (*flush)(struct sm_dev *d); /* DEV-4 */
	/* Tell the device that [off, off+len) holds nothing (TRIM / UNMAP / NBD_CMD_TRIM /
	 * punch hole). Advisory: -EOPNOTSUPP is fine; the range's content is undefined after. */
	int (*discard)(struct sm_dev *d, uint64_t off, uint64_t len);
};

/* The generic handle every backend's device starts with. */
struct sm_dev {
	const struct sm_dev_ops *ops;
	uint64_t size;	 /* bytes, a multiple of SM_DEV_ALIGN */
	uint32_t lbs;	 /* the device's logical block size (512 or 4096) */
	bool rotational; /* an HDD behind it, when the backend can tell */
	char url[1024];
	char desc[256]; /* one line for status: "image file /x (direct I/O, io_uring qd 32)" */
};

/* DEV-1 and the device's range for [off, off+len): aligned and inside. Every entry point checks
 * with these (the registry, and each backend's own, which callers may reach directly). */
static inline bool sm_dev_span_ok(const struct sm_dev *d, uint64_t off, uint64_t len)
{
	return off % SM_DEV_ALIGN == 0 && len % SM_DEV_ALIGN == 0 && off <= d->size &&
	       len <= d->size - off;
}
static inline bool sm_dev_io_ok(const struct sm_dev *d, const void *buf, uint64_t off, size_t len)
{
	return (uintptr_t)buf % SM_DEV_ALIGN == 0 && sm_dev_span_ok(d, off, len);
}

/* Registry (sm_dev.c). */
const struct sm_dev_ops *sm_dev_ops_for(const char *url); /* NULL: not a device scheme */
int sm_dev_open(const char *url, unsigned flags, struct sm_dev **ret, char *err, size_t errlen);
void sm_dev_close(struct sm_dev *d); /* NULL ok */
int sm_dev_pread(struct sm_dev *d, void *buf, size_t len, uint64_t off);
int sm_dev_pwrite(struct sm_dev *d, const void *buf, size_t len, uint64_t off, unsigned flags);
int sm_dev_submit(struct sm_dev *d, struct sm_dev_io *ios, unsigned n);
int sm_dev_flush(struct sm_dev *d);
int sm_dev_discard(struct sm_dev *d, uint64_t off, uint64_t len);
/* An aligned buffer for I/O (free with free()). NULL on ENOMEM. */
void *sm_dev_alloc(size_t len);

extern const struct sm_dev_ops sm_dev_file_ops;
extern const struct sm_dev_ops sm_dev_iscsi_ops;
extern const struct sm_dev_ops sm_dev_nbd_ops;
extern const struct sm_dev_ops sm_dev_nbd_unix_ops;

#endif
