/* fs_io — the session's /dev/fuse reads and writes, through libfuse's custom-io hooks.
 *
 * WHY
 *   Without FUSE_HANDLE_KILLPRIV_V2 the kernel cannot know that a file carries no
 *   security.capability xattr, so before EVERY write(2) it asks with a GETXATTR request: two
 *   round trips through the daemon per write instead of one (measured: one GETXATTR per WRITE
 *   during fio's 4 KiB random writes). With V2 it marks the super block SB_NOSEC, checks once
 *   per inode, and hands the job of killing setuid/setgid/capabilities to the file system:
 *   WRITE carries FUSE_WRITE_KILL_SUIDGID and SETATTR (truncate) FATTR_KILL_SUIDGID when the
 *   caller lacks CAP_FSETID, and chown leaves the clearing to us.
 *
 *   libfuse 3.14 (Debian 12) knows neither the flag nor the two request bits. So:
 *   - io_read notes the unique id and the offered flags of FUSE_INIT, and for WRITE and SETATTR
 *     the kernel's kill bit, in a thread-local the handler reads (libfuse's worker reads a
 *     request and runs its handler on the same thread, before it reads the next one);
 *   - io_writev adds FUSE_HANDLE_KILLPRIV_V2 to libfuse's INIT reply when the kernel offered it.
 *   A kernel that does not offer it keeps the old behaviour (the kernel strips the bits).
 *
 * Nothing here reads beyond the length read() returned (arg_flag checks each word); a request
 * too short to hold its fixed part is left to libfuse, which rejects it.
 */
#include "fs/fs_int.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static _Thread_local bool tl_kill;

bool fs_io_kill_requested(void)
{
	return tl_kill;
}

/* Does the request's argument (alen bytes) reach the 32-bit word at off, with bit set? */
static bool arg_flag(const char *arg, size_t alen, size_t off, uint32_t bit)
{
	uint32_t v;
	if (alen < off + sizeof(v))
		return false;
	memcpy(&v, arg + off, sizeof(v));
	return (v & bit) != 0;
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	struct fs *fs = userdata;
	ssize_t n = read(fd, buf, len);
	tl_kill = false;
	if (n < (ssize_t)sizeof(struct fuse_in_header))
		return n;
	const struct fuse_in_header *h = buf;
	const char *arg = (const char *)buf + sizeof(*h);
	size_t alen = (size_t)n - sizeof(*h);
	switch (h->opcode) {
	case FUSE_INIT:
		if (arg_flag(arg, alen, offsetof(struct fuse_init_in, flags),
			     FUSE_HANDLE_KILLPRIV_V2))
			atomic_store(&fs->init_unique, h->unique);
		break;
	case FUSE_WRITE:
		tl_kill = arg_flag(arg, alen, offsetof(struct fuse_write_in, write_flags),
				   FUSE_WRITE_KILL_SUIDGID);
		break;
	case FUSE_SETATTR:
		tl_kill = arg_flag(arg, alen, offsetof(struct fuse_setattr_in, valid),
				   FATTR_KILL_SUIDGID);
		break;
	default:
		break;
	}
	return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct fs *fs = userdata;
	uint64_t iu = atomic_load(&fs->init_unique);
	if (iu && count >= 2 && iov[0].iov_len == sizeof(struct fuse_out_header) &&
	    iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
		struct fuse_out_header *oh = iov[0].iov_base;
		if (oh->unique == iu) {
			atomic_store(&fs->init_unique, 0);
			if (oh->error == 0) {
				struct fuse_init_out *out = iov[1].iov_base;
				out->flags |= FUSE_HANDLE_KILLPRIV_V2;
				out->flags &= ~(uint32_t)FUSE_HANDLE_KILLPRIV;
				fs->killpriv = true;
			}
		}
	}
	return writev(fd, iov, count);
}

int fs_io_attach(struct fs *fs)
{
	static const struct fuse_custom_io io = {.read = io_read, .writev = io_writev};
	int r = fuse_session_custom_io(fs->se, &io, fuse_session_fd(fs->se));
	return r < 0 ? -EIO : 0;
}
