/* sm_dir — a target that is a directory: one sparse file per chunk.
 *
 * For NAS mounts, tests, and any POSIX file system. The layout is fixed (integration tests
 * compare replicas by path; docs/target-layout.md is its description):
 *
 *   <dir>/braidfs-target                      identity, key=value lines + crc32c line (SM-1)
 *   <dir>/chunks/<ino & 0xff, %02x>/<ino %016llx>.<idx %08x>
 *
 * THE DATA PATH
 *   read/write are called for every FUSE request, so a chunk's fd is cached: 16 shards, each a
 *   hash of (ino, idx) -> fd with an LRU list, bounded (1024 fds per target by default, fewer
 *   when RLIMIT_NOFILE is small). Entries are refcounted: eviction skips an fd in use, and an
 *   entry dropped while in use (remove) is closed by its last user. A read of a missing chunk
 *   is zeros and creates nothing; only write/truncate/allocate create chunk files.
 *
 * DURABILITY (SM-4)
 *   A write marks (ino, idx) in the per-ino dirty set (once: the fd's dirty flag is the fast
 *   path). sync_ino(ino) fdatasyncs exactly the chunks in that set, and fsyncs the fanout
 *   directory when a chunk file of ino was created or unlinked since, so that the name is
 *   durable too. An fd evicted while dirty leaves its idx in the set; sync reopens it
 *   (fsync works on the inode, not on the fd). sync_all() is syncfs().
 *
 *   The dirty flag is cleared BEFORE the fdatasync that covers it, and a writer sets it AFTER
 *   its pwrite: a write that races with a sync is either covered by that sync or re-marks its
 *   chunk for the next one. Concurrent syncs of one ino wait for each other (sync_stripe), so
 *   that a second sync_ino never returns while the first still has its chunks in flight.
 */
#include "storemgr/sm_dir_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/log.h"
#include "common/util.h"

#define SM_DIR_ID_MAX	   4096 /* an identity file larger than this is corrupt */
#define SM_DIR_CHUNK_MIN   4096u
#define SM_DIR_CHUNK_MAX   (1u << 30)
#define SM_DIR_STAT_BUDGET 4096 /* chunk files statfs() looks at before it extrapolates */
#define SM_DIR_STAT_TTL_NS (5LL * 1000000000)
#define SM_DIR_NAME_LEN	   25 /* %016llx.%08x */

/* ---------------------------------------------------------------------------------------- */
/* names */

static void sm_dir_fanout_name(char out[4], uint64_t ino)
{
	snprintf(out, 4, "%02x", (unsigned)(ino & 0xff));
}

/* Relative to chunks_fd. */
static void sm_dir_chunk_name(char out[32], uint64_t ino, uint32_t idx)
{
	snprintf(out, 32, "%02x/%016llx.%08x", (unsigned)(ino & 0xff), (unsigned long long)ino,
		 idx);
}

static int sm_dir_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1; /* upper case is not ours: we never write it */
}

/* Strict: exactly "%016llx.%08x" in lower case. */
bool sm_dir_parse_name(const char *s, uint64_t *ret_ino, uint32_t *ret_idx)
{
	if (strlen(s) != SM_DIR_NAME_LEN || s[16] != '.')
		return false;
	uint64_t ino = 0;
	uint32_t idx = 0;
	for (int i = 0; i < 16; i++) {
		int h = sm_dir_hexval(s[i]);
		if (h < 0)
			return false;
		ino = ino << 4 | (uint64_t)h;
	}
	for (int i = 17; i < SM_DIR_NAME_LEN; i++) {
		int h = sm_dir_hexval(s[i]);
		if (h < 0)
			return false;
		idx = idx << 4 | (uint32_t)h;
	}
	*ret_ino = ino;
	*ret_idx = idx;
	return true;
}

/* ---------------------------------------------------------------------------------------- */
/* URL */

int sm_dir_url_parse(const char *url, const char *scheme, struct url *u, char *err, size_t errlen)
{
	char uerr[256];
	if (url_parse(url, u, uerr, sizeof(uerr)) < 0) {
		set_err(err, errlen, "bad target URL: %s", uerr);
		return -EINVAL;
	}
	if (strcmp(u->scheme, scheme) != 0) {
		set_err(err, errlen, "target URL '%s' is not a %s: URL", url, scheme);
		return -EINVAL;
	}
	if (u->has_authority && u->host[0]) {
		set_err(
		    err, errlen,
		    "target URL '%s' names a host; a %s target is local (expected %s:/abs/path)",
		    url, scheme, scheme);
		return -EINVAL;
	}
	if (u->path[0] != '/') {
		set_err(err, errlen, "target URL '%s' has a relative path (expected %s:/abs/path)",
			url, scheme);
		return -EINVAL;
	}
	size_t n = strlen(u->path);
	while (n > 1 && u->path[n - 1] == '/')
		u->path[--n] = '\0';
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* identity (SM-1) */

static bool sm_dir_chunk_size_ok(uint32_t cs)
{
	return cs >= SM_DIR_CHUNK_MIN && cs <= SM_DIR_CHUNK_MAX && cs % SM_DIR_CHUNK_MIN == 0;
}

static int sm_dir_id_render(const struct sm_identity *id, char *buf, size_t len)
{
	int n = snprintf(buf, len,
			 "format_version=%u\ntarget_id=%u\nchunk_size=%u\nvolume_uuid=%s\n"
			 "target_uuid=%s\n",
			 id->format_version, id->target_id, id->chunk_size, id->volume_uuid,
			 id->target_uuid);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	uint32_t crc = crc32c(0, buf, (size_t)n);
	int m = snprintf(buf + n, len - (size_t)n, "crc32c=%08x\n", crc);
	if (m < 0 || (size_t)(n + m) >= len)
		return -ENAMETOOLONG;
	return n + m;
}

static int sm_dir_parse_u32(const char *s, size_t n, uint32_t *ret)
{
	if (n == 0 || n > 10)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX)
		return -1;
	*ret = (uint32_t)v;
	return 0;
}

/* Bytes from disk: untrusted. 0, or -EBADMSG with the reason in why. */
int sm_dir_id_parse(const char *buf, size_t n, struct sm_identity *ret, char *why, size_t whylen)
{
	struct sm_identity id = {0};
	if (n == 0 || memchr(buf, '\0', n)) {
		snprintf(why, whylen, n ? "binary content" : "empty file");
		return -EBADMSG;
	}
	if (buf[n - 1] != '\n') {
		snprintf(why, whylen, "truncated (no final newline)");
		return -EBADMSG;
	}
	size_t last = n - 1;
	while (last > 0 && buf[last - 1] != '\n')
		last--;
	const size_t crclen = strlen("crc32c=") + 8 + 1;
	if (n - last != crclen || strncmp(buf + last, "crc32c=", 7) != 0) {
		snprintf(why, whylen, "no crc32c line at the end");
		return -EBADMSG;
	}
	uint32_t want = 0;
	for (size_t i = last + 7; i < n - 1; i++) {
		int h = sm_dir_hexval(buf[i]);
		if (h < 0) {
			snprintf(why, whylen, "bad crc32c line");
			return -EBADMSG;
		}
		want = want << 4 | (uint32_t)h;
	}
	uint32_t got = crc32c(0, buf, last);
	if (got != want) {
		snprintf(why, whylen, "checksum mismatch (stored %08x, computed %08x)", want, got);
		return -EBADMSG;
	}
	unsigned seen = 0;
	for (size_t p = 0; p < last;) {
		const char *line = buf + p;
		const char *nl = memchr(line, '\n', last - p);
		size_t ll = (size_t)(nl - line);
		p += ll + 1;
		const char *eq = memchr(line, '=', ll);
		if (!eq) {
			snprintf(why, whylen, "line without '='");
			return -EBADMSG;
		}
		size_t kl = (size_t)(eq - line), vl = ll - kl - 1;
		const char *v = eq + 1;
		unsigned bit = 0;
		int r = 0;
		if (kl == 14 && !strncmp(line, "format_version", kl)) {
			bit = 1;
			r = sm_dir_parse_u32(v, vl, &id.format_version);
		} else if (kl == 9 && !strncmp(line, "target_id", kl)) {
			bit = 2;
			r = sm_dir_parse_u32(v, vl, &id.target_id);
		} else if (kl == 10 && !strncmp(line, "chunk_size", kl)) {
			bit = 4;
			r = sm_dir_parse_u32(v, vl, &id.chunk_size);
		} else if (kl == 11 && !strncmp(line, "volume_uuid", kl)) {
			bit = 8;
			r = vl == 36 ? 0 : -1;
			if (!r) {
				memcpy(id.volume_uuid, v, 36);
				r = uuid_str_valid(id.volume_uuid) ? 0 : -1;
			}
		} else if (kl == 11 && !strncmp(line, "target_uuid", kl)) {
			bit = 16;
			r = vl == 36 ? 0 : -1;
			if (!r) {
				memcpy(id.target_uuid, v, 36);
				r = uuid_str_valid(id.target_uuid) ? 0 : -1;
			}
		} else {
			continue; /* a later minor revision may add keys; the crc covers them */
		}
		if (r < 0 || (seen & bit)) {
			snprintf(why, whylen, "bad or repeated value for '%.*s'", (int)kl, line);
			return -EBADMSG;
		}
		seen |= bit;
	}
	if (seen != 31) {
		snprintf(why, whylen, "missing keys");
		return -EBADMSG;
	}
	if (id.format_version == SM_FORMAT_VERSION && !sm_dir_chunk_size_ok(id.chunk_size)) {
		snprintf(why, whylen, "invalid chunk_size %u", id.chunk_size);
		return -EBADMSG;
	}
	*ret = id;
	return 0;
}

/* Read and parse <dfd>/braidfs-target. -ENOENT when absent, -EBADMSG (why) when corrupt. */
static int sm_dir_id_load(int dfd, struct sm_identity *ret, char *why, size_t whylen)
{
	int fd = openat(dfd, SM_DIR_ID_FILE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		int e = errno;
		snprintf(why, whylen, "%s", strerror(e));
		return -e;
	}
	char buf[SM_DIR_ID_MAX + 1];
	size_t n = 0;
	int r = 0;
	while (n < sizeof(buf)) {
		ssize_t k = read(fd, buf + n, sizeof(buf) - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = -errno;
			snprintf(why, whylen, "%s", strerror(errno));
			goto out;
		}
		if (k == 0)
			break;
		n += (size_t)k;
	}
	if (n > SM_DIR_ID_MAX) {
		snprintf(why, whylen, "file larger than %d bytes", SM_DIR_ID_MAX);
		r = -EBADMSG;
		goto out;
	}
	r = sm_dir_id_parse(buf, n, ret, why, whylen);
out:
	close(fd);
	return r;
}

static int sm_dir_id_store(int dfd, const struct sm_identity *id)
{
	char buf[512];
	int n = sm_dir_id_render(id, buf, sizeof(buf));
	if (n < 0)
		return n;
	static const char tmp[] = SM_DIR_ID_FILE ".tmp";
	int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	int r = pwrite_full(fd, buf, (size_t)n, 0);
	if (!r && fsync(fd) < 0)
		r = -errno;
	close(fd);
	if (!r && renameat(dfd, tmp, dfd, SM_DIR_ID_FILE) < 0)
		r = -errno;
	/* the rename is durable only once the directory is */
	if (!r && fsync(dfd) < 0)
		r = -errno;
	if (r)
		unlinkat(dfd, tmp, 0);
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* format (SM-6) */

static int sm_dir_count(int dfd, const char *ignore, unsigned *ret_n, bool *ret_has_id)
{
	int fd = dup(dfd);
	if (fd < 0)
		return -errno;
	DIR *dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return -errno;
	}
	unsigned n = 0;
	bool has_id = false;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(dir))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (ignore && !strcmp(de->d_name, ignore))
			continue;
		if (!strcmp(de->d_name, SM_DIR_ID_FILE))
			has_id = true;
		else
			n++;
	}
	int r = errno ? -errno : 0;
	closedir(dir);
	*ret_n = n;
	*ret_has_id = has_id;
	return r;
}

static int sm_dir_writable_err(const char *path, int e, char *err, size_t errlen)
{
	if (e == EROFS)
		set_err(err, errlen, "target directory %s is on a read-only file system", path);
	else if (e == EACCES || e == EPERM)
		set_err(err, errlen, "target directory %s is not writable (permission denied)",
			path);
	else
		set_err(err, errlen, "target directory %s is not writable: %s", path, strerror(e));
	return -e;
}

/* Unlink the regular files under chunks/ (two levels; nothing else is ours to delete). */
static int sm_dir_wipe_chunks(int dfd)
{
	int cfd = openat(dfd, SM_DIR_CHUNKS, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (cfd < 0)
		return errno == ENOENT ? 0 : -errno;
	int r = 0;
	for (unsigned i = 0; i < SM_DIR_FANOUT; i++) {
		char fan[4];
		snprintf(fan, sizeof(fan), "%02x", i);
		int ffd = openat(cfd, fan, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (ffd < 0)
			continue;
		DIR *dir = fdopendir(ffd);
		if (!dir) {
			close(ffd);
			r = -errno;
			continue;
		}
		struct dirent *de;
		while ((de = readdir(dir))) {
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			if (unlinkat(dirfd(dir), de->d_name, 0) < 0 && errno != ENOENT &&
			    errno != EISDIR)
				r = -errno;
		}
		closedir(dir);
	}
	close(cfd);
	return r;
}

int sm_dir_wipe_path(const char *path, char *err, size_t errlen)
{
	int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		int e = errno;
		set_err(err, errlen, "cannot open target directory %s: %s", path, strerror(e));
		return -e;
	}
	/* the identity first: a crash half way leaves a directory no volume claims */
	int r = 0;
	if (unlinkat(dfd, SM_DIR_ID_FILE, 0) < 0 && errno != ENOENT)
		r = -errno;
	if (r == 0 && fsync(dfd) < 0)
		r = -errno;
	if (r == 0)
		r = sm_dir_wipe_chunks(dfd);
	for (unsigned i = 0; r == 0 && i < SM_DIR_FANOUT; i++) {
		char fan[16];
		snprintf(fan, sizeof(fan), "%s/%02x", SM_DIR_CHUNKS, i);
		if (unlinkat(dfd, fan, AT_REMOVEDIR) < 0 && errno != ENOENT)
			r = -errno;
	}
	if (r == 0 && unlinkat(dfd, SM_DIR_CHUNKS, AT_REMOVEDIR) < 0 && errno != ENOENT)
		r = -errno;
	if (r == 0 && fsync(dfd) < 0)
		r = -errno;
	close(dfd);
	if (r < 0)
		set_err(err, errlen, "cannot wipe target directory %s: %s", path, strerror(-r));
	return r;
}

int sm_dir_format_path(const char *path, const struct sm_identity *id, bool force, bool dry_run,
		       const char *ignore, char *err, size_t errlen)
{
	int dfd = -1, cfd = -1, r;
	if (!dry_run && (!id || !sm_dir_chunk_size_ok(id->chunk_size))) {
		set_err(err, errlen, "invalid chunk size %u (a multiple of 4 KiB, at most 1 GiB)",
			id ? id->chunk_size : 0);
		return -EINVAL;
	}
	if (!dry_run && (!uuid_str_valid(id->volume_uuid) || !uuid_str_valid(id->target_uuid))) {
		set_err(err, errlen, "invalid volume or target UUID for target %s", path);
		return -EINVAL;
	}
	struct stat st;
	if (stat(path, &st) < 0) {
		r = -errno;
		if (r == -ENOENT)
			set_err(err, errlen, "target directory %s does not exist", path);
		else
			set_err(err, errlen, "cannot access target directory %s: %s", path,
				strerror(-r));
		return r;
	}
	if (!S_ISDIR(st.st_mode)) {
		set_err(err, errlen, "target %s is not a directory", path);
		return -ENOTDIR;
	}
	dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		r = -errno;
		set_err(err, errlen, "cannot open target directory %s: %s", path, strerror(-r));
		return r;
	}

	unsigned nother = 0;
	bool has_id = false;
	r = sm_dir_count(dfd, ignore, &nother, &has_id);
	if (r < 0) {
		set_err(err, errlen, "cannot list target directory %s: %s", path, strerror(-r));
		goto out;
	}
	if (!force && has_id) {
		struct sm_identity old;
		char why[160];
		if (sm_dir_id_load(dfd, &old, why, sizeof(why)) == 0)
			set_err(err, errlen,
				"target directory %s is not empty (holds a braidfs target of "
				"volume %s)",
				path, old.volume_uuid);
		else
			set_err(err, errlen,
				"target directory %s is not empty (holds a damaged braidfs "
				"target identity: %s)",
				path, why);
		r = -EEXIST;
		goto out;
	}
	if (!force && nother) {
		set_err(err, errlen, "target directory %s is not empty (holds %u other file%s)",
			path, nother, nother == 1 ? "" : "s");
		r = -ENOTEMPTY;
		goto out;
	}

	/* Root passes access(W_OK) everywhere except on a read-only mount, so also try. */
	if (access(path, W_OK) < 0) {
		r = sm_dir_writable_err(path, errno, err, errlen);
		goto out;
	}
	char probe[64];
	snprintf(probe, sizeof(probe), ".braidfs-probe.%d", (int)getpid());
	int pfd = openat(dfd, probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (pfd < 0) {
		r = sm_dir_writable_err(path, errno, err, errlen);
		goto out;
	}
	close(pfd);
	unlinkat(dfd, probe, 0);
	if (dry_run)
		goto out;

	if (force) {
		/* SM-2: chunks of a previous target must not be read back as this one's. */
		r = sm_dir_wipe_chunks(dfd);
		if (r < 0) {
			set_err(err, errlen, "cannot delete old chunks in %s: %s", path,
				strerror(-r));
			goto out;
		}
	}
	if (mkdirat(dfd, SM_DIR_CHUNKS, 0755) < 0 && errno != EEXIST) {
		r = -errno;
		set_err(err, errlen, "cannot create %s/%s: %s", path, SM_DIR_CHUNKS, strerror(-r));
		goto out;
	}
	cfd = openat(dfd, SM_DIR_CHUNKS, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (cfd < 0) {
		r = -errno;
		set_err(err, errlen, "cannot open %s/%s: %s", path, SM_DIR_CHUNKS, strerror(-r));
		goto out;
	}
	for (unsigned i = 0; i < SM_DIR_FANOUT; i++) {
		char fan[4];
		snprintf(fan, sizeof(fan), "%02x", i);
		if (mkdirat(cfd, fan, 0755) < 0 && errno != EEXIST) {
			r = -errno;
			set_err(err, errlen, "cannot create %s/%s/%s: %s", path, SM_DIR_CHUNKS, fan,
				strerror(-r));
			goto out;
		}
	}
	if (fsync(cfd) < 0 || fsync(dfd) < 0) {
		r = -errno;
		set_err(err, errlen, "cannot sync %s: %s", path, strerror(-r));
		goto out;
	}
	/* The identity goes last: a target that has one has its whole layout. */
	struct sm_identity nid = *id;
	nid.format_version = SM_FORMAT_VERSION;
	r = sm_dir_id_store(dfd, &nid);
	if (r < 0)
		set_err(err, errlen, "cannot write %s/%s: %s", path, SM_DIR_ID_FILE, strerror(-r));
out:
	if (cfd >= 0)
		close(cfd);
	close(dfd);
	return r;
}

static int sm_dir_format(const char *url, const struct sm_identity *id, bool force, char *err,
			 size_t errlen)
{
	struct url u;
	int r = sm_dir_url_parse(url, "dir", &u, err, errlen);
	if (r < 0)
		return r;
	return sm_dir_format_path(u.path, id, force, false, NULL, err, errlen);
}

static int sm_dir_format_check(const char *url, bool force, char *err, size_t errlen)
{
	struct url u;
	int r = sm_dir_url_parse(url, "dir", &u, err, errlen);
	if (r < 0)
		return r;
	return sm_dir_format_path(u.path, NULL, force, true, NULL, err, errlen);
}

/* ---------------------------------------------------------------------------------------- */
/* open / close */

static unsigned sm_dir_default_fd_max(void)
{
	/* Several targets share the process' fd limit with FUSE and the metadata engine. */
	struct rlimit rl;
	unsigned cap = SM_DIR_FD_MAX;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur / 8 < cap)
		cap = MAX((unsigned)(rl.rlim_cur / 8), SM_DIR_SHARDS * 4);
	return cap;
}

int sm_dir_open_path(const struct sm_ops *ops, const char *url, const char *path,
		     const struct sm_identity *expect, size_t size, unsigned fd_max,
		     struct sm_dir **ret, char *err, size_t errlen)
{
	int r, dfd, cfd = -1;
	dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		r = -errno;
		if (r == -ENOENT)
			set_err(err, errlen, "target directory %s does not exist", path);
		else if (r == -ENOTDIR)
			set_err(err, errlen, "target %s is not a directory", path);
		else
			set_err(err, errlen, "cannot open target directory %s: %s", path,
				strerror(-r));
		return r;
	}
	struct sm_identity id;
	char why[160];
	r = sm_dir_id_load(dfd, &id, why, sizeof(why));
	if (r == -ENOENT) {
		set_err(err, errlen,
			"target directory %s holds no braidfs target (no %s file; format it first)",
			path, SM_DIR_ID_FILE);
		goto fail;
	}
	if (r < 0) {
		set_err(err, errlen, "target %s: identity file %s is corrupt (%s)", path,
			SM_DIR_ID_FILE, why);
		goto fail;
	}
	if (id.format_version != SM_FORMAT_VERSION) {
		set_err(err, errlen,
			"target %s has on-disk format version %u; this braidfs reads version %d",
			path, id.format_version, SM_FORMAT_VERSION);
		r = -EPROTONOSUPPORT;
		goto fail;
	}
	r = sm_identity_expect(path, &id, expect, err, errlen);
	if (r < 0)
		goto fail;
	cfd = openat(dfd, SM_DIR_CHUNKS, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (cfd < 0) {
		r = -errno;
		set_err(err, errlen, "target %s has no usable %s directory: %s", path,
			SM_DIR_CHUNKS, strerror(-r));
		if (r == -ENOENT)
			r = -EBADMSG;
		goto fail;
	}

	struct sm_dir *d = calloc(1, MAX(size, sizeof(struct sm_dir)));
	if (!d) {
		r = -ENOMEM;
		set_err(err, errlen, "out of memory");
		goto fail;
	}
	d->base.ops = ops;
	snprintf(d->base.url, sizeof(d->base.url), "%s", url);
	d->id = id;
	snprintf(d->path, sizeof(d->path), "%s", path);
	d->root_fd = dfd;
	d->chunks_fd = cfd;
	if (!fd_max)
		fd_max = sm_dir_default_fd_max();
	pthread_rwlock_init(&d->sync_rw, NULL);
	for (unsigned i = 0; i < SM_DIR_SYNC_STRIPES; i++)
		pthread_mutex_init(&d->sync_stripe[i], NULL);
	pthread_mutex_init(&d->dirty_lock, NULL);
	pthread_mutex_init(&d->stat_lock, NULL);
	unsigned shard_cap = MAX(1u, fd_max / SM_DIR_SHARDS);
	for (unsigned i = 0; i < SM_DIR_SHARDS; i++) {
		struct sm_dir_shard *s = &d->shards[i];
		pthread_mutex_init(&s->lock, NULL);
		s->cap = shard_cap;
		s->nbuckets = 1;
		while (s->nbuckets < shard_cap * 2)
			s->nbuckets <<= 1;
		s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
		if (!s->buckets) {
			sm_dir_close(&d->base);
			set_err(err, errlen, "out of memory");
			return -ENOMEM;
		}
	}
	*ret = d;
	return 0;
fail:
	if (cfd >= 0)
		close(cfd);
	close(dfd);
	return r;
}

static void sm_dir_dirty_free(struct sm_dir_dirty *r)
{
	if (r) {
		free(r->slots);
		free(r);
	}
}

void sm_dir_close(struct sm_target *t)
{
	if (!t)
		return;
	struct sm_dir *d = sm_dir_of(t);
	for (unsigned i = 0; i < SM_DIR_SHARDS; i++) {
		struct sm_dir_shard *s = &d->shards[i];
		if (!s->buckets)
			continue;
		struct sm_dir_fd *e = s->lru_head, *next;
		for (; e; e = next) {
			next = e->lnext;
			close(e->fd);
			free(e);
		}
		free(s->buckets);
		pthread_mutex_destroy(&s->lock);
	}
	for (unsigned i = 0; i < SM_DIR_DIRTY_BUCKETS; i++) {
		struct sm_dir_dirty *r = d->dirty[i], *next;
		for (; r; r = next) {
			next = r->next;
			sm_dir_dirty_free(r);
		}
	}
	pthread_rwlock_destroy(&d->sync_rw);
	for (unsigned i = 0; i < SM_DIR_SYNC_STRIPES; i++)
		pthread_mutex_destroy(&d->sync_stripe[i]);
	pthread_mutex_destroy(&d->dirty_lock);
	pthread_mutex_destroy(&d->stat_lock);
	close(d->chunks_fd);
	close(d->root_fd);
	free(d);
}

static int sm_dir_open(const char *url, const struct sm_identity *expect, struct sm_target **ret,
		       char *err, size_t errlen)
{
	struct url u;
	int r = sm_dir_url_parse(url, "dir", &u, err, errlen);
	if (r < 0)
		return r;
	unsigned fd_max = 0;
	char v[32];
	if (url_query_get(&u, "fds", v, sizeof(v)) == 0)
		fd_max = (unsigned)strtoul(v, NULL, 10);
	struct sm_dir *d;
	r = sm_dir_open_path(&sm_dir_ops, url, u.path, expect, sizeof(*d), fd_max, &d, err, errlen);
	if (r < 0)
		return r;
	*ret = &d->base;
	return 0;
}

int sm_dir_identity(struct sm_target *t, struct sm_identity *ret)
{
	*ret = sm_dir_of(t)->id;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the fd cache */

static uint64_t sm_dir_key(uint64_t ino, uint32_t idx)
{
	return hash_mix64(ino * 0x9e3779b97f4a7c15ULL ^ idx);
}

static struct sm_dir_shard *sm_dir_shard_of(struct sm_dir *d, uint64_t h)
{
	return &d->shards[h % SM_DIR_SHARDS];
}

static unsigned sm_dir_bucket(const struct sm_dir_shard *s, uint64_t h)
{
	return (unsigned)((h / SM_DIR_SHARDS) & (s->nbuckets - 1));
}

static void sm_dir_lru_unlink(struct sm_dir_shard *s, struct sm_dir_fd *e)
{
	if (e->lprev)
		e->lprev->lnext = e->lnext;
	else
		s->lru_head = e->lnext;
	if (e->lnext)
		e->lnext->lprev = e->lprev;
	else
		s->lru_tail = e->lprev;
	e->lprev = e->lnext = NULL;
}

static void sm_dir_lru_push(struct sm_dir_shard *s, struct sm_dir_fd *e)
{
	e->lprev = NULL;
	e->lnext = s->lru_head;
	if (s->lru_head)
		s->lru_head->lprev = e;
	s->lru_head = e;
	if (!s->lru_tail)
		s->lru_tail = e;
}

static struct sm_dir_fd *sm_dir_lookup(struct sm_dir_shard *s, uint64_t h, uint64_t ino,
				       uint32_t idx)
{
	for (struct sm_dir_fd *e = s->buckets[sm_dir_bucket(s, h)]; e; e = e->hnext)
		if (e->ino == ino && e->idx == idx)
			return e;
	return NULL;
}

/* Take e out of the hash and the LRU (called with the shard lock). */
static void sm_dir_unhash(struct sm_dir_shard *s, struct sm_dir_fd *e)
{
	struct sm_dir_fd **pp = &s->buckets[sm_dir_bucket(s, sm_dir_key(e->ino, e->idx))];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	e->hnext = NULL;
	sm_dir_lru_unlink(s, e);
	e->hashed = false;
	s->count--;
}

/* Evict idle entries from the LRU tail while the shard is over its cap (or all idle ones when
 * all is set). Returns them chained by hnext, to be closed without the lock. */
static struct sm_dir_fd *sm_dir_evict(struct sm_dir_shard *s, bool all)
{
	struct sm_dir_fd *victims = NULL, *e = s->lru_tail, *prev;
	for (; e && (all || s->count > s->cap); e = prev) {
		prev = e->lprev;
		if (e->refs)
			continue;
		sm_dir_unhash(s, e);
		e->hnext = victims;
		victims = e;
	}
	return victims;
}

static void sm_dir_free_chain(struct sm_dir_fd *e)
{
	while (e) {
		struct sm_dir_fd *next = e->hnext;
		close(e->fd);
		free(e);
		e = next;
	}
}

/* EMFILE: give back every idle cached fd. */
static void sm_dir_shed(struct sm_dir *d)
{
	for (unsigned i = 0; i < SM_DIR_SHARDS; i++) {
		struct sm_dir_shard *s = &d->shards[i];
		pthread_mutex_lock(&s->lock);
		struct sm_dir_fd *v = sm_dir_evict(s, true);
		pthread_mutex_unlock(&s->lock);
		sm_dir_free_chain(v);
	}
}

static int sm_dir_open_chunk(struct sm_dir *d, uint64_t ino, uint32_t idx, bool create,
			     bool *ret_created)
{
	char name[32];
	sm_dir_chunk_name(name, ino, idx);
	int e = EIO;
	for (int attempt = 0; attempt < 4; attempt++) {
		int fd = openat(d->chunks_fd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0)
			return fd;
		e = errno;
		if (e == ENOENT && create) {
			fd = openat(d->chunks_fd, name,
				    O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
			if (fd >= 0) {
				*ret_created = true;
				return fd;
			}
			e = errno;
			if (e == EEXIST)
				continue; /* raced with another creator: open theirs */
			if (e == ENOENT) {
				/* the fanout dir is gone (damaged target): make it again */
				char fan[4];
				sm_dir_fanout_name(fan, ino);
				if (mkdirat(d->chunks_fd, fan, 0755) == 0)
					fsync(d->chunks_fd);
				continue;
			}
		}
		if (e == EMFILE || e == ENFILE) {
			sm_dir_shed(d);
			continue;
		}
		return -e;
	}
	return -e;
}

/* A referenced fd for chunk (ino, idx): from the cache, else opened (and created when create;
 * *ret_created then tells whether this call made the file). -ENOENT when missing and !create. */
static int sm_dir_get(struct sm_dir *d, uint64_t ino, uint32_t idx, bool create,
		      struct sm_dir_fd **ret, bool *ret_created)
{
	uint64_t h = sm_dir_key(ino, idx);
	struct sm_dir_shard *s = sm_dir_shard_of(d, h);
	bool created = false;

	pthread_mutex_lock(&s->lock);
	struct sm_dir_fd *e = sm_dir_lookup(s, h, ino, idx);
	if (e) {
		e->refs++;
		if (s->lru_head != e) {
			sm_dir_lru_unlink(s, e);
			sm_dir_lru_push(s, e);
		}
		pthread_mutex_unlock(&s->lock);
		goto done;
	}
	pthread_mutex_unlock(&s->lock);

	uint64_t gen = __atomic_load_n(&d->remove_gen, __ATOMIC_SEQ_CST);
	int fd = sm_dir_open_chunk(d, ino, idx, create, &created);
	if (fd < 0)
		return fd;
	e = calloc(1, sizeof(*e));
	if (!e) {
		close(fd);
		return -ENOMEM;
	}
	e->ino = ino;
	e->idx = idx;
	e->fd = fd;
	e->refs = 1;

	struct sm_dir_fd *victims = NULL;
	pthread_mutex_lock(&s->lock);
	struct sm_dir_fd *other = sm_dir_lookup(s, h, ino, idx);
	if (other) {
		other->refs++;
		pthread_mutex_unlock(&s->lock);
		close(fd);
		free(e);
		e = other;
		goto done;
	}
	/* Cache only when no remove() ran since we opened: else the file may be unlinked. */
	if (__atomic_load_n(&d->removing, __ATOMIC_SEQ_CST) == 0 &&
	    __atomic_load_n(&d->remove_gen, __ATOMIC_SEQ_CST) == gen) {
		unsigned b = sm_dir_bucket(s, h);
		e->hnext = s->buckets[b];
		s->buckets[b] = e;
		e->hashed = true;
		sm_dir_lru_push(s, e);
		s->count++;
		victims = sm_dir_evict(s, false);
	}
	pthread_mutex_unlock(&s->lock);
	sm_dir_free_chain(victims);
done:
	*ret = e;
	if (ret_created)
		*ret_created = created;
	return 0;
}

/* A referenced fd for chunk (ino, idx) only if it is cached. */
static struct sm_dir_fd *sm_dir_peek(struct sm_dir *d, uint64_t ino, uint32_t idx)
{
	uint64_t h = sm_dir_key(ino, idx);
	struct sm_dir_shard *s = sm_dir_shard_of(d, h);
	pthread_mutex_lock(&s->lock);
	struct sm_dir_fd *e = sm_dir_lookup(s, h, ino, idx);
	if (e)
		e->refs++;
	pthread_mutex_unlock(&s->lock);
	return e;
}

static void sm_dir_put(struct sm_dir *d, struct sm_dir_fd *e)
{
	struct sm_dir_shard *s = sm_dir_shard_of(d, sm_dir_key(e->ino, e->idx));
	struct sm_dir_fd *victims = NULL;
	pthread_mutex_lock(&s->lock);
	e->refs--;
	if (e->refs == 0) {
		if (!e->hashed) {
			e->hnext = NULL;
			victims = e;
		} else if (s->count > s->cap) {
			victims = sm_dir_evict(s, false);
		}
	}
	pthread_mutex_unlock(&s->lock);
	sm_dir_free_chain(victims);
}

/* Drop cached fds of ino with idx in [from, to] (before their files are unlinked). */
static void sm_dir_drop(struct sm_dir *d, uint64_t ino, uint32_t from, uint32_t to)
{
	for (unsigned i = 0; i < SM_DIR_SHARDS; i++) {
		struct sm_dir_shard *s = &d->shards[i];
		struct sm_dir_fd *victims = NULL, *e, *next;
		pthread_mutex_lock(&s->lock);
		for (e = s->lru_head; e; e = next) {
			next = e->lnext;
			if (e->ino != ino || e->idx < from || e->idx > to)
				continue;
			sm_dir_unhash(s, e);
			if (e->refs == 0) {
				e->hnext = victims;
				victims = e;
			}
		}
		pthread_mutex_unlock(&s->lock);
		sm_dir_free_chain(victims);
	}
}

/* ---------------------------------------------------------------------------------------- */
/* the dirty set (SM-4) */

static unsigned sm_dir_dirty_bucket(uint64_t ino)
{
	return (unsigned)(sm_dir_key(ino, 0) % SM_DIR_DIRTY_BUCKETS);
}

/* Called with dirty_lock. */
static struct sm_dir_dirty *sm_dir_dirty_find(struct sm_dir *d, uint64_t ino, bool create)
{
	struct sm_dir_dirty **pp = &d->dirty[sm_dir_dirty_bucket(ino)];
	for (struct sm_dir_dirty *r = *pp; r; r = r->next)
		if (r->ino == ino)
			return r;
	if (!create)
		return NULL;
	struct sm_dir_dirty *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->ino = ino;
	r->next = *pp;
	*pp = r;
	return r;
}

/* Called with dirty_lock. */
static struct sm_dir_dirty *sm_dir_dirty_detach(struct sm_dir *d, uint64_t ino)
{
	struct sm_dir_dirty **pp = &d->dirty[sm_dir_dirty_bucket(ino)];
	for (; *pp; pp = &(*pp)->next) {
		struct sm_dir_dirty *r = *pp;
		if (r->ino == ino) {
			*pp = r->next;
			r->next = NULL;
			return r;
		}
	}
	return NULL;
}

static uint32_t sm_dir_slot_hash(uint64_t idx, uint32_t nslots)
{
	return (uint32_t)((idx * 0x9e3779b97f4a7c15ULL) >> 32) & (nslots - 1);
}

static bool sm_dir_set_put(uint64_t *slots, uint32_t nslots, uint64_t idx)
{
	uint32_t i = sm_dir_slot_hash(idx, nslots);
	while (slots[i] != SM_DIR_NOIDX) {
		if (slots[i] == idx)
			return false;
		i = (i + 1) & (nslots - 1);
	}
	slots[i] = idx;
	return true;
}

static int sm_dir_dirty_add(struct sm_dir_dirty *r, uint64_t idx)
{
	if ((r->n + 1) * 2 > r->nslots) {
		uint32_t ns = r->nslots ? r->nslots * 2 : 8;
		uint64_t *slots = malloc(ns * sizeof(*slots));
		if (!slots)
			return -ENOMEM;
		memset(slots, 0xff, ns * sizeof(*slots));
		for (uint32_t i = 0; i < r->nslots; i++)
			if (r->slots[i] != SM_DIR_NOIDX)
				sm_dir_set_put(slots, ns, r->slots[i]);
		free(r->slots);
		r->slots = slots;
		r->nslots = ns;
	}
	if (sm_dir_set_put(r->slots, r->nslots, idx))
		r->n++;
	return 0;
}

/* After a change to chunk (ino, idx) through e (NULL: no fd). created: the chunk file was
 * created or unlinked, so its directory entry must be synced too. If the change cannot be
 * recorded (no memory), it is made durable right away instead. */
static int sm_dir_mark(struct sm_dir *d, struct sm_dir_fd *e, uint64_t ino, uint32_t idx, bool data,
		       bool created)
{
	if (!created && e && __atomic_load_n(&e->dirty, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&d->dirty_lock);
	struct sm_dir_dirty *r = sm_dir_dirty_find(d, ino, true);
	int rc = r ? 0 : -ENOMEM;
	if (r && data)
		rc = sm_dir_dirty_add(r, idx);
	if (r && created)
		r->dir_dirty = true;
	if (!rc && e && data)
		__atomic_store_n(&e->dirty, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&d->dirty_lock);
	if (rc < 0) {
		if (e && fdatasync(e->fd) < 0)
			return -errno;
		if (syncfs(d->root_fd) < 0)
			return -errno;
	}
	return 0;
}

/* Called with dirty_lock: clear the fast-path flag of (ino, idx) if cached. */
static void sm_dir_clear_flag(struct sm_dir *d, uint64_t ino, uint32_t idx)
{
	uint64_t h = sm_dir_key(ino, idx);
	struct sm_dir_shard *s = sm_dir_shard_of(d, h);
	pthread_mutex_lock(&s->lock);
	struct sm_dir_fd *e = sm_dir_lookup(s, h, ino, idx);
	if (e)
		__atomic_store_n(&e->dirty, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->lock);
}

/* A failed sync: put what it took back, so that the next sync tries again. */
static void sm_dir_dirty_merge(struct sm_dir *d, struct sm_dir_dirty *old)
{
	pthread_mutex_lock(&d->dirty_lock);
	struct sm_dir_dirty *r = sm_dir_dirty_find(d, old->ino, true);
	if (r) {
		r->dir_dirty |= old->dir_dirty;
		for (uint32_t i = 0; i < old->nslots; i++)
			if (old->slots[i] != SM_DIR_NOIDX)
				sm_dir_dirty_add(r, old->slots[i]);
	}
	pthread_mutex_unlock(&d->dirty_lock);
}

static int sm_dir_sync_fanout(struct sm_dir *d, uint64_t ino)
{
	char fan[4];
	sm_dir_fanout_name(fan, ino);
	int fd = openat(d->chunks_fd, fan, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

int sm_dir_sync_ino(struct sm_target *t, uint64_t ino)
{
	struct sm_dir *d = sm_dir_of(t);
	pthread_mutex_t *stripe = &d->sync_stripe[ino % SM_DIR_SYNC_STRIPES];
	int err = 0;

	pthread_rwlock_rdlock(&d->sync_rw);
	pthread_mutex_lock(stripe);
	pthread_mutex_lock(&d->dirty_lock);
	struct sm_dir_dirty *r = sm_dir_dirty_detach(d, ino);
	for (uint32_t i = 0; r && i < r->nslots; i++)
		if (r->slots[i] != SM_DIR_NOIDX)
			sm_dir_clear_flag(d, ino, (uint32_t)r->slots[i]);
	pthread_mutex_unlock(&d->dirty_lock);
	if (!r)
		goto out;

	for (uint32_t i = 0; i < r->nslots; i++) {
		if (r->slots[i] == SM_DIR_NOIDX)
			continue;
		struct sm_dir_fd *e;
		int k = sm_dir_get(d, ino, (uint32_t)r->slots[i], false, &e, NULL);
		if (k == -ENOENT)
			continue; /* removed since: nothing to make durable but its unlink */
		if (k == 0) {
			if (fdatasync(e->fd) < 0)
				k = -errno;
			sm_dir_put(d, e);
		}
		if (k < 0 && !err)
			err = k;
	}
	if (r->dir_dirty) {
		int k = sm_dir_sync_fanout(d, ino);
		if (k < 0 && !err)
			err = k;
	}
	if (err)
		sm_dir_dirty_merge(d, r);
	sm_dir_dirty_free(r);
out:
	pthread_mutex_unlock(stripe);
	pthread_rwlock_unlock(&d->sync_rw);
	return err;
}

int sm_dir_sync_all(struct sm_target *t)
{
	struct sm_dir *d = sm_dir_of(t);
	struct sm_dir_dirty *taken = NULL;

	pthread_rwlock_wrlock(&d->sync_rw);
	pthread_mutex_lock(&d->dirty_lock);
	for (unsigned i = 0; i < SM_DIR_DIRTY_BUCKETS; i++) {
		while (d->dirty[i]) {
			struct sm_dir_dirty *r = d->dirty[i];
			d->dirty[i] = r->next;
			r->next = taken;
			taken = r;
		}
	}
	for (unsigned i = 0; i < SM_DIR_SHARDS; i++) {
		struct sm_dir_shard *s = &d->shards[i];
		pthread_mutex_lock(&s->lock);
		for (struct sm_dir_fd *e = s->lru_head; e; e = e->lnext)
			__atomic_store_n(&e->dirty, 0, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&d->dirty_lock);

	int err = syncfs(d->root_fd) < 0 ? -errno : 0;
	while (taken) {
		struct sm_dir_dirty *r = taken;
		taken = r->next;
		if (err)
			sm_dir_dirty_merge(d, r);
		sm_dir_dirty_free(r);
	}
	pthread_rwlock_unlock(&d->sync_rw);
	return err;
}

/* ---------------------------------------------------------------------------------------- */
/* chunk I/O */

static int sm_dir_check_range(struct sm_dir *d, uint64_t off, uint64_t len)
{
	if (off > d->id.chunk_size || len > d->id.chunk_size - off)
		return -EINVAL;
	return 0;
}

ssize_t sm_dir_read(struct sm_target *t, uint64_t ino, uint32_t idx, void *buf, size_t len,
		    uint64_t off)
{
	struct sm_dir *d = sm_dir_of(t);
	if (sm_dir_check_range(d, off, len) < 0)
		return -EINVAL;
	struct sm_dir_fd *e;
	int r = sm_dir_get(d, ino, idx, false, &e, NULL);
	if (r == -ENOENT) {
		memset(buf, 0, len); /* SM-2 */
		return (ssize_t)len;
	}
	if (r < 0)
		return r;
	size_t done = 0;
	if (tl_wait_hook) {
		/* A FUSE loop's reader (wait_hint): take what the page cache holds without waiting,
		 * and hand the reader's place on before the device read for the rest. */
		struct iovec v = {.iov_base = buf, .iov_len = len};
		ssize_t n = preadv2(e->fd, &v, 1, (off_t)off, RWF_NOWAIT);
		if (n > 0)
			done = (size_t)n;
		if (n != 0 && done < len) /* 0: the chunk ends at off, nothing to wait for */
			wait_hint();
	}
	while (done < len) {
		ssize_t n = pread(e->fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	sm_dir_put(d, e);
	if (r < 0)
		return r;
	memset((char *)buf + done, 0, len - done); /* SM-2: past the chunk's end */
	return (ssize_t)len;
}

ssize_t sm_dir_write(struct sm_target *t, uint64_t ino, uint32_t idx, const void *buf, size_t len,
		     uint64_t off)
{
	struct sm_dir *d = sm_dir_of(t);
	if (sm_dir_check_range(d, off, len) < 0)
		return -EINVAL;
	if (len == 0)
		return 0;
	struct sm_dir_fd *e;
	bool created;
	int r = sm_dir_get(d, ino, idx, true, &e, &created);
	if (r < 0)
		return r;
	r = pwrite_full(e->fd, buf, len, (off_t)off);
	/* mark even after a failed write: part of it may have landed */
	int m = sm_dir_mark(d, e, ino, idx, true, created);
	sm_dir_put(d, e);
	if (r < 0)
		return r;
	if (m < 0)
		return m;
	return (ssize_t)len;
}

/* Unlink one chunk (truncate to 0). */
static int sm_dir_unlink_chunk(struct sm_dir *d, uint64_t ino, uint32_t idx)
{
	char name[32];
	sm_dir_chunk_name(name, ino, idx);
	__atomic_add_fetch(&d->removing, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&d->remove_gen, 1, __ATOMIC_SEQ_CST);
	sm_dir_drop(d, ino, idx, idx);
	int r = 0;
	if (unlinkat(d->chunks_fd, name, 0) < 0)
		r = errno == ENOENT ? 1 : -errno;
	__atomic_add_fetch(&d->remove_gen, 1, __ATOMIC_SEQ_CST);
	__atomic_sub_fetch(&d->removing, 1, __ATOMIC_SEQ_CST);
	if (r == 0)
		r = sm_dir_mark(d, NULL, ino, idx, false, true);
	return r > 0 ? 0 : r;
}

int sm_dir_truncate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t len)
{
	struct sm_dir *d = sm_dir_of(t);
	if (len > d->id.chunk_size)
		return -EINVAL;
	if (len == 0) /* a chunk of length 0 and a missing one read the same (SM-2) */
		return sm_dir_unlink_chunk(d, ino, idx);
	struct sm_dir_fd *e;
	bool created;
	int r = sm_dir_get(d, ino, idx, true, &e, &created);
	if (r < 0)
		return r;
	if (ftruncate(e->fd, (off_t)len) < 0)
		r = -errno;
	int m = sm_dir_mark(d, e, ino, idx, true, created);
	sm_dir_put(d, e);
	return r < 0 ? r : m;
}

/* Where the file system cannot punch: write zeros over [off, off+len) within the file. */
static int sm_dir_zero_fill(int fd, uint64_t off, uint64_t len)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	uint64_t size = (uint64_t)st.st_size;
	if (off >= size)
		return 0;
	len = MIN(len, size - off);
	static const char zeros[65536];
	while (len) {
		size_t n = (size_t)MIN(len, sizeof(zeros));
		int r = pwrite_full(fd, zeros, n, (off_t)off);
		if (r < 0)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

int sm_dir_punch(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len)
{
	struct sm_dir *d = sm_dir_of(t);
	if (off >= d->id.chunk_size || len == 0)
		return 0;
	len = MIN(len, d->id.chunk_size - off);
	struct sm_dir_fd *e;
	int r = sm_dir_get(d, ino, idx, false, &e, NULL);
	if (r == -ENOENT)
		return 0; /* all hole already */
	if (r < 0)
		return r;
	if (fallocate(e->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) <
	    0) {
		r = -errno;
		if (r == -EOPNOTSUPP)
			r = sm_dir_zero_fill(e->fd, off, len);
	}
	int m = sm_dir_mark(d, e, ino, idx, true, false);
	sm_dir_put(d, e);
	return r < 0 ? r : m;
}

int sm_dir_allocate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len)
{
	struct sm_dir *d = sm_dir_of(t);
	if (sm_dir_check_range(d, off, len) < 0)
		return -EINVAL;
	if (len == 0)
		return 0;
	struct sm_dir_fd *e;
	bool created;
	int r = sm_dir_get(d, ino, idx, true, &e, &created);
	if (r < 0)
		return r;
	if (fallocate(e->fd, 0, (off_t)off, (off_t)len) < 0) {
		r = -errno;
		if (r == -EOPNOTSUPP) {
			/* no reservation on this file system; at least the length is right */
			struct stat st;
			r = fstat(e->fd, &st) < 0 ? -errno : 0;
			if (!r && (uint64_t)st.st_size < off + len &&
			    ftruncate(e->fd, (off_t)(off + len)) < 0)
				r = -errno;
		}
	}
	int m = sm_dir_mark(d, e, ino, idx, true, created);
	sm_dir_put(d, e);
	return r < 0 ? r : m;
}

int sm_dir_remove(struct sm_target *t, uint64_t ino, uint32_t from_idx)
{
	struct sm_dir *d = sm_dir_of(t);
	char fan[4];
	sm_dir_fanout_name(fan, ino);
	int r = 0;
	bool any = false;

	__atomic_add_fetch(&d->removing, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&d->remove_gen, 1, __ATOMIC_SEQ_CST);
	sm_dir_drop(d, ino, from_idx, UINT32_MAX);

	/* SM-5: the directory, not the caller, says which chunks exist. Only this inode's
	 * fanout dir can hold them, so the scan costs 1/256 of the target. */
	int fd = openat(d->chunks_fd, fan, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		r = errno == ENOENT ? 0 : -errno;
		goto out;
	}
	DIR *dir = fdopendir(fd);
	if (!dir) {
		r = -errno;
		close(fd);
		goto out;
	}
	struct dirent *de;
	while ((de = readdir(dir))) {
		uint64_t cino;
		uint32_t cidx;
		if (!sm_dir_parse_name(de->d_name, &cino, &cidx) || cino != ino || cidx < from_idx)
			continue;
		if (unlinkat(dirfd(dir), de->d_name, 0) < 0) {
			if (errno != ENOENT && !r)
				r = -errno;
			continue;
		}
		any = true;
	}
	closedir(dir);
out:
	__atomic_add_fetch(&d->remove_gen, 1, __ATOMIC_SEQ_CST);
	__atomic_sub_fetch(&d->removing, 1, __ATOMIC_SEQ_CST);
	if (any) {
		int m = sm_dir_mark(d, NULL, ino, 0, false, true);
		if (!r)
			r = m;
	}
	return r;
}

int sm_dir_seek(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, int whence,
		uint64_t *ret)
{
	struct sm_dir *d = sm_dir_of(t);
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	struct sm_dir_fd *e;
	int r = sm_dir_get(d, ino, idx, false, &e, NULL);
	if (r == -ENOENT) {
		if (whence == SEEK_DATA)
			return -ENXIO;
		*ret = off; /* a missing chunk is all hole */
		return 0;
	}
	if (r < 0)
		return r;
	struct stat st;
	if (fstat(e->fd, &st) < 0) {
		r = -errno;
		goto out;
	}
	if (off >= (uint64_t)st.st_size) {
		/* past the chunk's length all is hole (SM-2) */
		if (whence == SEEK_DATA)
			r = -ENXIO;
		else
			*ret = off;
		goto out;
	}
	/* The fd's file offset is never used for I/O (pread/pwrite), so moving it is harmless. */
	off_t o = lseek(e->fd, (off_t)off, whence);
	if (o < 0)
		r = -errno;
	else
		*ret = (uint64_t)o;
out:
	sm_dir_put(d, e);
	return r;
}

int sm_dir_chunk_stat(struct sm_target *t, uint64_t ino, uint32_t idx, struct stat *ret)
{
	struct sm_dir *d = sm_dir_of(t);
	int r = 0;
	struct sm_dir_fd *e = sm_dir_peek(d, ino, idx);
	if (e) {
		if (fstat(e->fd, ret) < 0)
			r = -errno;
		sm_dir_put(d, e);
	} else {
		char name[32];
		sm_dir_chunk_name(name, ino, idx);
		if (fstatat(d->chunks_fd, name, ret, AT_SYMLINK_NOFOLLOW) < 0)
			r = -errno;
	}
	return r;
}

int sm_dir_chunk_length(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t *ret)
{
	struct stat st;
	int r = sm_dir_chunk_stat(t, ino, idx, &st);
	*ret = r < 0 ? 0 : (uint64_t)st.st_size;
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* statfs / list */

/* Count chunk files and their blocks; past SM_DIR_STAT_BUDGET files, extrapolate from the
 * fanout dirs seen (inodes spread evenly over them by construction). */
static void sm_dir_estimate(struct sm_dir *d, uint64_t *ret_chunks, uint64_t *ret_used)
{
	uint64_t files = 0, blocks = 0;
	unsigned dirs = 0;
	for (unsigned i = 0; i < SM_DIR_FANOUT; i++) {
		char fan[4];
		snprintf(fan, sizeof(fan), "%02x", i);
		int fd = openat(d->chunks_fd, fan, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		dirs++;
		if (fd < 0)
			continue;
		DIR *dir = fdopendir(fd);
		if (!dir) {
			close(fd);
			continue;
		}
		struct dirent *de;
		while ((de = readdir(dir))) {
			uint64_t ino;
			uint32_t idx;
			struct stat st;
			if (!sm_dir_parse_name(de->d_name, &ino, &idx))
				continue;
			if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				continue;
			files++;
			blocks += (uint64_t)st.st_blocks;
		}
		closedir(dir);
		if (files >= SM_DIR_STAT_BUDGET)
			break;
	}
	*ret_chunks = files * SM_DIR_FANOUT / dirs;
	*ret_used = blocks * 512 * SM_DIR_FANOUT / dirs;
}

int sm_dir_statfs(struct sm_target *t, struct sm_statfs *ret)
{
	struct sm_dir *d = sm_dir_of(t);
	struct statvfs v;
	if (fstatvfs(d->root_fd, &v) < 0)
		return -errno;
	struct sm_statfs s = {
	    .total_bytes = (uint64_t)v.f_blocks * v.f_frsize,
	    .free_bytes = (uint64_t)v.f_bavail * v.f_frsize,
	};
	pthread_mutex_lock(&d->stat_lock);
	int64_t now = now_monotonic_ns();
	if (!d->stat_time_ns || now - d->stat_time_ns > SM_DIR_STAT_TTL_NS) {
		sm_dir_estimate(d, &d->stat_cache.chunks, &d->stat_cache.used_bytes);
		d->stat_time_ns = now;
	}
	s.chunks = d->stat_cache.chunks;
	s.used_bytes = d->stat_cache.used_bytes;
	pthread_mutex_unlock(&d->stat_lock);
	*ret = s;
	return 0;
}

int sm_dir_list(struct sm_target *t, sm_chunk_cb cb, void *ctx)
{
	struct sm_dir *d = sm_dir_of(t);
	for (unsigned i = 0; i < SM_DIR_FANOUT; i++) {
		char fan[4];
		snprintf(fan, sizeof(fan), "%02x", i);
		int fd = openat(d->chunks_fd, fan, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0) {
			if (errno == ENOENT) {
				log_debug("target %s: fanout dir %s/%s missing", d->path,
					  SM_DIR_CHUNKS, fan);
				continue;
			}
			return -errno;
		}
		DIR *dir = fdopendir(fd);
		if (!dir) {
			int r = -errno;
			close(fd);
			return r;
		}
		struct dirent *de;
		int r = 0;
		errno = 0;
		while ((de = readdir(dir))) {
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			struct sm_chunk_info ci;
			struct stat st;
			if (!sm_dir_parse_name(de->d_name, &ci.ino, &ci.idx) ||
			    (ci.ino & 0xff) != i) {
				log_debug("target %s: skipping %s/%s/%s: not a chunk name", d->path,
					  SM_DIR_CHUNKS, fan, de->d_name);
				continue;
			}
			if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				continue; /* removed meanwhile */
			if (!S_ISREG(st.st_mode)) {
				log_debug("target %s: skipping %s/%s/%s: not a regular file",
					  d->path, SM_DIR_CHUNKS, fan, de->d_name);
				continue;
			}
			ci.length = (uint64_t)st.st_size;
			r = cb(ctx, &ci);
			if (r)
				break;
		}
		closedir(dir);
		if (r)
			return r;
	}
	return 0;
}

void sm_dir_forget(struct sm_target *t, uint64_t ino)
{
	sm_dir_drop(sm_dir_of(t), ino, 0, UINT32_MAX);
}

const struct sm_ops sm_dir_ops = {
    .scheme = "dir",
    .caps = SM_CAP_SPARSE | SM_CAP_PUNCH,
    .format = sm_dir_format,
    .format_check = sm_dir_format_check,
    .open = sm_dir_open,
    .close = sm_dir_close,
    .identity = sm_dir_identity,
    .read = sm_dir_read,
    .write = sm_dir_write,
    .truncate = sm_dir_truncate,
    .punch = sm_dir_punch,
    .allocate = sm_dir_allocate,
    .remove = sm_dir_remove,
    .seek = sm_dir_seek,
    .chunk_length = sm_dir_chunk_length,
    .sync_ino = sm_dir_sync_ino,
    .sync_all = sm_dir_sync_all,
    .statfs = sm_dir_statfs,
    .list = sm_dir_list,
    .forget = sm_dir_forget,
};
