/* dev_file — a block address space that is a raw block device or an image file.
 *
 *   file:/dev/nvme0n1     a block device: size by BLKGETSIZE64, logical block size by BLKSSZGET,
 *                         rotational from sysfs; SM_DEV_EXCL is O_EXCL (the kernel refuses a
 *                         device that is mounted or opened exclusively by anyone else)
 *   file:/srv/t1.img      a regular file: size = st_size rounded down to 4096; SM_DEV_EXCL is
 *                         flock(LOCK_EX | LOCK_NB), held until close
 *
 * Always O_DIRECT: the chunk store keeps its own checksums and its own cache policy, and the
 * page cache would hide from it what the device really holds. A file system without O_DIRECT
 * (tmpfs) is refused with a message that says so.
 *
 * I/O goes through io_uring (liburing), one ring per thread: a thread's first I/O on a device
 * gives it a slot and sets up that slot's ring, so SM_DEV_FILE_SLOTS threads each run their
 * batches without waiting for anyone (DEV-5). A ring has its own lock all the same: threads
 * beyond SM_DEV_FILE_SLOTS share the slots (slot % SM_DEV_FILE_SLOTS), and a ring is held by
 * one caller across its batch (submit + wait). Rings live until the device is closed.
 *
 * DEV-2: a short transfer or -EAGAIN/-EINTR is resubmitted for the rest, at most
 * SM_DEV_FILE_RETRIES times per I/O; then -EIO (DEV-6).
 * DEV-4: flush is IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (fdatasync); SM_DEV_FUA writes
 * carry RWF_DSYNC.
 */
#include "storemgr/dev.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common/url.h"
#include "common/util.h"

#define SM_DEV_FILE_SLOTS   64	 /* threads with a ring of their own, per device */
#define SM_DEV_FILE_QD	    64	 /* queue depth of each ring */
#define SM_DEV_FILE_RETRIES 16	 /* resubmissions of one I/O before -EIO */
#define SM_DEV_FILE_BUSY_MS 1000 /* how long an exclusive open waits for a dying holder */

struct sm_dev_file_ring {
	pthread_mutex_t lock;
	bool ready;	      /* __atomic (acquire/release): ring is set up */
	struct io_uring ring; /* protected by lock */
};

struct sm_dev_file {
	struct sm_dev base; /* first: a struct sm_dev * is a struct sm_dev_file * */
	int fd;
	bool blockdev;
	bool rdonly;	    /* opened with SM_DEV_RDONLY: writes and discards answer -EROFS */
	uint64_t id;	    /* unique per open: a thread's slot cache key */
	unsigned next_slot; /* __atomic: the slot the next new thread gets */
	pthread_mutex_t setup_lock; /* sets up rings */
	struct sm_dev_file_ring rings[SM_DEV_FILE_SLOTS];
};

static uint64_t sm_dev_file_ids; /* __atomic */

static struct sm_dev_file *sm_dev_file_of(struct sm_dev *d)
{
	return (struct sm_dev_file *)d;
}

/* ---------------------------------------------------------------------------------------- */
/* open / close */

/* "1" in /sys/dev/block/MAJ:MIN/queue/rotational, or in the parent's for a partition. */
static bool sm_dev_file_rotational(dev_t rdev)
{
	char p[128];
	const char *const fmts[] = {"/sys/dev/block/%u:%u/queue/rotational",
				    "/sys/dev/block/%u:%u/../queue/rotational"};
	for (size_t i = 0; i < ARRAY_SIZE(fmts); i++) {
		snprintf(p, sizeof(p), fmts[i], major(rdev), minor(rdev));
		FILE *f = fopen(p, "re");
		if (!f)
			continue;
		int c = fgetc(f);
		fclose(f);
		return c == '1';
	}
	return false;
}

static void sm_dev_file_close(struct sm_dev *d)
{
	if (!d)
		return;
	struct sm_dev_file *f = sm_dev_file_of(d);
	for (unsigned i = 0; i < SM_DEV_FILE_SLOTS; i++) {
		if (f->rings[i].ready)
			io_uring_queue_exit(&f->rings[i].ring);
		pthread_mutex_destroy(&f->rings[i].lock);
	}
	pthread_mutex_destroy(&f->setup_lock);
	if (f->fd >= 0)
		close(f->fd); /* also drops the flock */
	free(f);
}

static int sm_dev_file_open(const char *url, unsigned flags, struct sm_dev **ret, char *err,
			    size_t errlen)
{
	*ret = NULL;
	struct url u;
	char uerr[256];
	if (url_parse(url, &u, uerr, sizeof(uerr)) < 0) {
		set_err(err, errlen, "bad device URL: %s", uerr);
		return -EINVAL;
	}
	if (strcmp(u.scheme, "file") != 0 || (u.has_authority && u.host[0]) || u.path[0] != '/') {
		set_err(err, errlen,
			"%s: %s (expected file:/dev/NAME or file:/ABSOLUTE/PATH/IMAGE)", url,
			u.path[0] != '/' ? "relative path" : "not a local file");
		return -EINVAL;
	}
	const char *path = u.path;
	bool rdonly = flags & SM_DEV_RDONLY, excl = flags & SM_DEV_EXCL;
	struct stat st;
	if (stat(path, &st) < 0) {
		int e = errno;
		if (e == ENOENT)
			set_err(err, errlen, "%s: %s does not exist", url, path);
		else
			set_err(err, errlen, "%s: cannot access %s: %s", url, path, strerror(e));
		return -e;
	}
	bool blockdev = S_ISBLK(st.st_mode);
	if (!blockdev && !S_ISREG(st.st_mode)) {
		set_err(err, errlen, "%s: not a block device or regular file", url);
		return -EINVAL;
	}

	struct sm_dev_file *f = calloc(1, sizeof(*f));
	if (!f) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	f->fd = -1;
	f->base.ops = &sm_dev_file_ops;
	f->id = __atomic_add_fetch(&sm_dev_file_ids, 1, __ATOMIC_RELAXED);
	pthread_mutex_init(&f->setup_lock, NULL);
	for (unsigned i = 0; i < SM_DEV_FILE_SLOTS; i++)
		pthread_mutex_init(&f->rings[i].lock, NULL);
	f->blockdev = blockdev;
	f->rdonly = rdonly;
	snprintf(f->base.url, sizeof(f->base.url), "%s", url);
	int oflags = (rdonly ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC;
	if (blockdev && excl)
		oflags |= O_EXCL;
	int r;
	/* A process killed while it held the device keeps it until the kernel has torn down its
	 * rings (asynchronously, after the process is reaped): an exclusive open waits for that
	 * a little, so that a crashed mount can be restarted at once. */
	for (int ms = 0;; ms += 10) {
		f->fd = open(path, oflags);
		if (f->fd >= 0 && (blockdev || !excl || flock(f->fd, LOCK_EX | LOCK_NB) == 0))
			break;
		int e = errno;
		if (f->fd >= 0) {
			close(f->fd);
			f->fd = -1;
			if (e == EWOULDBLOCK)
				e = EBUSY;
		}
		if (e != EBUSY || ms >= SM_DEV_FILE_BUSY_MS) {
			errno = e;
			break;
		}
		usleep(10000);
	}
	if (f->fd < 0) {
		r = -errno;
		if (r == -EINVAL)
			set_err(
			    err, errlen,
			    "%s: the file system under %s does not support O_DIRECT (tmpfs?); put "
			    "the image on a disk file system",
			    url, path);
		else if (r == -EBUSY)
			set_err(err, errlen,
				"%s: in use by another process (mounted, or opened "
				"exclusively)",
				url);
		else if (r == -EACCES || r == -EPERM || r == -EROFS)
			set_err(err, errlen, "%s: cannot open %s for %s: %s", url, path,
				rdonly ? "reading" : "writing", strerror(-r));
		else
			set_err(err, errlen, "%s: cannot open %s: %s", url, path, strerror(-r));
		goto fail;
	}
	if (blockdev) {
		uint64_t bytes = 0;
		int lbs = 0;
		if (ioctl(f->fd, BLKGETSIZE64, &bytes) < 0 || ioctl(f->fd, BLKSSZGET, &lbs) < 0) {
			r = -errno;
			set_err(err, errlen, "%s: cannot read the size of %s: %s", url, path,
				strerror(-r));
			goto fail;
		}
		f->base.size = bytes / SM_DEV_ALIGN * SM_DEV_ALIGN;
		f->base.lbs = (uint32_t)lbs;
		f->base.rotational = sm_dev_file_rotational(st.st_rdev);
	} else {
		f->base.size = (uint64_t)st.st_size / SM_DEV_ALIGN * SM_DEV_ALIGN;
		f->base.lbs = SM_DEV_ALIGN; /* we never do less; the file system handles the rest */
		f->base.rotational = false;
	}
	if (f->base.lbs > SM_DEV_ALIGN || f->base.lbs == 0) {
		set_err(err, errlen, "%s: logical block size %u is not supported (at most %u)", url,
			f->base.lbs, SM_DEV_ALIGN);
		r = -EINVAL;
		goto fail;
	}
	/* the first ring now: a system without io_uring is refused at open, not at first I/O */
	r = io_uring_queue_init(SM_DEV_FILE_QD, &f->rings[0].ring, 0);
	if (r < 0) {
		set_err(err, errlen, "%s: cannot set up io_uring: %s", url, strerror(-r));
		goto fail;
	}
	f->rings[0].ready = true;
	snprintf(f->base.desc, sizeof(f->base.desc),
		 "%s %.160s (direct I/O, io_uring per thread, qd %u%s)",
		 blockdev ? "block device" : "image file", path, SM_DEV_FILE_QD,
		 f->base.rotational ? ", rotational" : "");
	*ret = &f->base;
	return 0;
fail:
	sm_dev_file_close(&f->base);
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* the ring pool */

/* This thread's ring, locked. Setting up a ring can fail (-errno); then the thread uses ring 0,
 * which open set up. */
static struct sm_dev_file_ring *sm_dev_file_ring_get(struct sm_dev_file *f)
{
	/* a few devices' slots per thread, keyed by the device's id (never reused, unlike its
	 * address) */
	static __thread struct {
		uint64_t id;
		unsigned slot;
	} cache[4];
	static __thread unsigned victim;
	unsigned slot = UINT32_MAX;
	for (unsigned i = 0; i < ARRAY_SIZE(cache); i++)
		if (cache[i].id == f->id)
			slot = cache[i].slot;
	if (slot == UINT32_MAX) {
		slot = __atomic_fetch_add(&f->next_slot, 1, __ATOMIC_RELAXED) % SM_DEV_FILE_SLOTS;
		unsigned v = victim++ % ARRAY_SIZE(cache);
		cache[v].id = f->id;
		cache[v].slot = slot;
	}
	struct sm_dev_file_ring *rg = &f->rings[slot];
	if (!__atomic_load_n(&rg->ready, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&f->setup_lock);
		if (!rg->ready) {
			if (io_uring_queue_init(SM_DEV_FILE_QD, &rg->ring, 0) == 0)
				__atomic_store_n(&rg->ready, true, __ATOMIC_RELEASE);
			else
				rg = &f->rings[0];
		}
		pthread_mutex_unlock(&f->setup_lock);
	}
	pthread_mutex_lock(&rg->lock);
	return rg;
}

/* One I/O in a ring: what is left of it. */
struct sm_dev_file_op {
	struct sm_dev_io *io;
	size_t done;
	unsigned tries;
	bool queued;
	bool fsync;
};

static void sm_dev_file_prep(struct sm_dev_file *f, struct io_uring_sqe *sqe,
			     struct sm_dev_file_op *op)
{
	if (op->fsync) {
		io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
	} else {
		struct sm_dev_io *io = op->io;
		char *p = (char *)io->buf + op->done;
		unsigned n = (unsigned)(io->len - op->done);
		if (io->op == SM_DEV_READ) {
			io_uring_prep_read(sqe, f->fd, p, n, io->off + op->done);
		} else {
			io_uring_prep_write(sqe, f->fd, p, n, io->off + op->done);
			if (io->flags & SM_DEV_FUA)
				sqe->rw_flags = RWF_DSYNC;
		}
	}
	io_uring_sqe_set_data(sqe, op);
	op->queued = true;
}

/* Run ops[0..n) (n <= SM_DEV_FILE_QD) on one ring until each is done or failed. */
static int sm_dev_file_run(struct sm_dev_file *f, struct io_uring *ring, struct sm_dev_file_op *ops,
			   unsigned n)
{
	unsigned pending = 0;
	for (unsigned i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
		if (!sqe) /* cannot happen: n <= the ring's size and the ring is ours */
			return -EBUSY;
		sm_dev_file_prep(f, sqe, &ops[i]);
		pending++;
	}
	int first = 0;
	wait_hint(); /* O_DIRECT: every I/O goes to the device */
	while (pending) {
		int r = io_uring_submit_and_wait(ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN) {
			/* the ring itself failed: nothing we queued can be trusted to complete */
			for (unsigned i = 0; i < n; i++)
				if (ops[i].queued && ops[i].io)
					ops[i].io->result = r;
			return r;
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(ring, head, cqe)
		{
			struct sm_dev_file_op *op = io_uring_cqe_get_data(cqe);
			int res = cqe->res;
			seen++;
			pending--;
			op->queued = false;
			int result = 0;
			bool again = false;
			if (op->fsync) {
				if (res == -EINTR || res == -EAGAIN)
					again = true;
				else if (res < 0)
					result = res;
			} else if (res == -EINTR || res == -EAGAIN) {
				again = true;
			} else if (res < 0) {
				result = res;
			} else if (res == 0) {
				result = -EIO; /* end of file inside the device's size: it shrank */
			} else {
				op->done += (size_t)res;
				again = op->done < op->io->len; /* DEV-2: a short transfer */
			}
			if (again && ++op->tries > SM_DEV_FILE_RETRIES) {
				again = false;
				result = -EIO; /* DEV-6 */
			}
			if (again) {
				struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
				if (sqe) {
					sm_dev_file_prep(f, sqe, op);
					pending++;
					continue;
				}
				result = -EIO;
			}
			if (op->io)
				op->io->result = result;
			if (result && !first)
				first = result;
		}
		io_uring_cq_advance(ring, seen);
	}
	return first;
}

/* DEV-1 and the range, also when a caller reaches the ops table without the registry. */
static int sm_dev_file_check(struct sm_dev_file *f, const struct sm_dev_io *io)
{
	if (!sm_dev_io_ok(&f->base, io->buf, io->off, io->len))
		return -EINVAL;
	if (io->op == SM_DEV_WRITE && f->rdonly)
		return -EROFS;
	return 0;
}

static int sm_dev_file_submit(struct sm_dev *d, struct sm_dev_io *ios, unsigned n)
{
	struct sm_dev_file *f = sm_dev_file_of(d);
	for (unsigned i = 0; i < n; i++) {
		int r = sm_dev_file_check(f, &ios[i]);
		if (r < 0)
			return r;
	}
	struct sm_dev_file_op ops[SM_DEV_FILE_QD];
	struct sm_dev_file_ring *rg = sm_dev_file_ring_get(f);
	int first = 0;
	for (unsigned i = 0; i < n; i += SM_DEV_FILE_QD) {
		unsigned k = MIN(n - i, SM_DEV_FILE_QD);
		for (unsigned j = 0; j < k; j++) {
			ops[j] = (struct sm_dev_file_op){.io = &ios[i + j]};
			ios[i + j].result = 0;
		}
		int r = sm_dev_file_run(f, &rg->ring, ops, k);
		if (r && !first)
			first = r;
	}
	pthread_mutex_unlock(&rg->lock);
	return first;
}

static int sm_dev_file_pread(struct sm_dev *d, void *buf, size_t len, uint64_t off)
{
	struct sm_dev_io io = {.op = SM_DEV_READ, .buf = buf, .len = len, .off = off};
	return sm_dev_file_submit(d, &io, 1);
}

static int sm_dev_file_pwrite(struct sm_dev *d, const void *buf, size_t len, uint64_t off,
			      unsigned flags)
{
	struct sm_dev_io io = {
	    .op = SM_DEV_WRITE, .flags = flags, .buf = (void *)buf, .len = len, .off = off};
	return sm_dev_file_submit(d, &io, 1);
}

static int sm_dev_file_flush(struct sm_dev *d)
{
	struct sm_dev_file *f = sm_dev_file_of(d);
	struct sm_dev_file_op op = {.fsync = true};
	struct sm_dev_file_ring *rg = sm_dev_file_ring_get(f);
	int r = sm_dev_file_run(f, &rg->ring, &op, 1);
	pthread_mutex_unlock(&rg->lock);
	return r;
}

static int sm_dev_file_discard(struct sm_dev *d, uint64_t off, uint64_t len)
{
	struct sm_dev_file *f = sm_dev_file_of(d);
	if (f->rdonly)
		return -EROFS;
	if (!sm_dev_span_ok(d, off, len))
		return -EINVAL;
	if (len == 0)
		return 0;
	if (f->blockdev) {
		uint64_t range[2] = {off, len};
		return ioctl(f->fd, BLKDISCARD, range) < 0 ? -errno : 0;
	}
	if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) <
	    0)
		return -errno;
	return 0;
}

const struct sm_dev_ops sm_dev_file_ops = {
    .scheme = "file",
    .open = sm_dev_file_open,
    .close = sm_dev_file_close,
    .pread = sm_dev_file_pread,
    .pwrite = sm_dev_file_pwrite,
    .submit = sm_dev_file_submit,
    .flush = sm_dev_file_flush,
    .discard = sm_dev_file_discard,
};
