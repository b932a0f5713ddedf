/* Conformance of every storage-manager backend to sm.h (SM-1..SM-6), plus the fault twin's own
 * controls. Every case runs once per backend ("dir", "faulty" with no faults, and the block
 * chunk store on an image file "file:") in a fresh temp directory under $TMPDIR (default /tmp;
 * it must support O_DIRECT: not tmpfs). Where a case looks at the layout on the medium, it does
 * so per kind: files for dir-like targets, the superblock for the block store. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/util.h"
#include "storemgr/sm.h"
#include "storemgr/sm_block_int.h"

#define CS (64 * 1024u) /* chunk size of the test targets */

struct backend {
	const char *scheme;
	const char *query; /* appended to every URL */
	bool image;	   /* a block target: the URL names an image file <dir>/img */
};

#define IMAGE_BYTES (96ull << 20) /* sparse */

static const struct backend backends[] = {
    {"dir", "", false},
    {"faulty", "?poll_ms=0", false},
    {"file", "", true},
};

struct fx {
	const struct backend *be;
	char dir[256];
	char url[600];
	struct sm_identity id;
	struct sm_target *t;
	char err[512];
};

/* ---------------------------------------------------------------------------------------- */
/* helpers */

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void rm_rf(const char *dir)
{
	nftw(dir, rm_cb, 64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

static void fx_url(struct fx *f, char *out, size_t len, const char *sub)
{
	if (f->be->image && !sub)
		sub = "img";
	snprintf(out, len, "%s:%s%s%s%s", f->be->scheme, f->dir, sub ? "/" : "", sub ? sub : "",
		 f->be->query);
}

static void fx_image_path(struct fx *f, char *out, size_t len)
{
	snprintf(out, len, "%s/img", f->dir);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->be = *state;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(f->dir, sizeof(f->dir), "%s/smtest.XXXXXX", tmp);
	if (!mkdtemp(f->dir))
		return -1;
	fx_url(f, f->url, sizeof(f->url), NULL);
	if (f->be->image) {
		char p[300];
		fx_image_path(f, p, sizeof(p));
		int fd = open(p, O_RDWR | O_CREAT | O_EXCL, 0600);
		if (fd < 0 || ftruncate(fd, (off_t)IMAGE_BYTES) < 0)
			return -1;
		close(fd);
	}
	f->id.format_version = SM_FORMAT_VERSION;
	f->id.target_id = 7;
	f->id.chunk_size = CS;
	uuid_generate_str(f->id.volume_uuid);
	uuid_generate_str(f->id.target_uuid);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	sm_close(f->t);
	rm_rf(f->dir);
	free(f);
	return 0;
}

static void fx_format_open(struct fx *f)
{
	int r = sm_format(f->url, &f->id, false, f->err, sizeof(f->err));
	if (r)
		fail_msg("format %s: %d %s", f->url, r, f->err);
	r = sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err));
	if (r)
		fail_msg("open %s: %d %s", f->url, r, f->err);
}

static void fx_reopen(struct fx *f)
{
	sm_close(f->t);
	f->t = NULL;
	assert_int_equal(sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), 0);
}

static void chunk_path(struct fx *f, uint64_t ino, uint32_t idx, char *out, size_t len)
{
	snprintf(out, len, "%s/chunks/%02x/%016llx.%08x", f->dir, (unsigned)(ino & 0xff),
		 (unsigned long long)ino, idx);
}

static bool chunk_exists(struct fx *f, uint64_t ino, uint32_t idx)
{
	if (f->be->image) {
		uint64_t len;
		return f->t->ops->chunk_length(f->t, ino, idx, &len) == 0;
	}
	char p[512];
	chunk_path(f, ino, idx, p, sizeof(p));
	return access(p, F_OK) == 0;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(pwrite_full(fd, text, strlen(text), 0), 0);
	close(fd);
}

/* The twin's control file, replaced atomically (a test on a live mount would do the same). */
static void set_fault(struct fx *f, const char *text)
{
	char p[512], tmp[520];
	snprintf(p, sizeof(p), "%s/braidfs-fault", f->dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", p);
	if (!text) {
		unlink(p);
		return;
	}
	write_file(tmp, text);
	assert_int_equal(rename(tmp, p), 0);
}

static void expect_err(struct fx *f, int r, int want, const char *needle)
{
	if (r != want)
		fail_msg("got %d (%s), want %d; err '%s'", r, strerror(-r), want, f->err);
	if (!strstr(f->err, needle))
		fail_msg("message '%s' lacks '%s'", f->err, needle);
}

static void fill(void *buf, size_t len, uint32_t seed)
{
	uint8_t *p = buf;
	for (size_t i = 0; i < len; i++) {
		seed = seed * 1103515245 + 12345;
		p[i] = (uint8_t)(seed >> 16);
	}
}

static bool all_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

static ssize_t t_write(struct fx *f, uint64_t ino, uint32_t idx, const void *buf, size_t len,
		       uint64_t off)
{
	return f->t->ops->write(f->t, ino, idx, buf, len, off);
}

static ssize_t t_read(struct fx *f, uint64_t ino, uint32_t idx, void *buf, size_t len, uint64_t off)
{
	return f->t->ops->read(f->t, ino, idx, buf, len, off);
}

static uint64_t t_len(struct fx *f, uint64_t ino, uint32_t idx, int want_rc)
{
	uint64_t l = 12345;
	assert_int_equal(f->t->ops->chunk_length(f->t, ino, idx, &l), want_rc);
	return l;
}

/* ---------------------------------------------------------------------------------------- */
/* format / open (SM-1, SM-6) */

static void test_format_identity(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	if (f->be->image) {
		/* both superblock copies hold the identity (FMT-2) */
		char p[300];
		fx_image_path(f, p, sizeof(p));
		int fd = open(p, O_RDONLY);
		assert_true(fd >= 0);
		uint8_t blk[2][SM_BLOCK_BS];
		assert_int_equal(pread(fd, blk, sizeof(blk), 0), sizeof(blk));
		close(fd);
		for (int i = 0; i < 2; i++) {
			struct sm_block_sb sb;
			char why[160];
			assert_int_equal(
			    sm_block_sb_parse(blk[i], SM_BLOCK_BS, &sb, why, sizeof(why)), 0);
			assert_memory_equal(blk[i], "BRAIDSB", 8);
			assert_int_equal(sb.copy, i);
			assert_int_equal(sb.id.target_id, 7);
			assert_int_equal(sb.id.chunk_size, CS);
			assert_string_equal(sb.id.volume_uuid, f->id.volume_uuid);
			assert_string_equal(sb.id.target_uuid, f->id.target_uuid);
			assert_int_equal(sb.dev_blocks, IMAGE_BYTES / SM_BLOCK_BS);
		}
		goto common;
	}

	char p[512];
	snprintf(p, sizeof(p), "%s/braidfs-target", f->dir);
	char buf[1024] = {0};
	int fd = open(p, O_RDONLY);
	assert_true(fd >= 0);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	char want[512];
	int w = snprintf(want, sizeof(want),
			 "format_version=1\ntarget_id=7\nchunk_size=%u\nvolume_uuid=%s\n"
			 "target_uuid=%s\n",
			 CS, f->id.volume_uuid, f->id.target_uuid);
	assert_int_equal(strncmp(buf, want, (size_t)w), 0);
	char crcline[32];
	snprintf(crcline, sizeof(crcline), "crc32c=%08x\n", crc32c(0, want, (size_t)w));
	assert_string_equal(buf + w, crcline);

	for (unsigned i = 0; i < 256; i++) {
		struct stat st;
		snprintf(p, sizeof(p), "%s/chunks/%02x", f->dir, i);
		assert_int_equal(stat(p, &st), 0);
		assert_true(S_ISDIR(st.st_mode));
	}
common:;
	struct sm_identity got;
	assert_int_equal(f->t->ops->identity(f->t, &got), 0);
	assert_int_equal(got.target_id, 7);
	assert_int_equal(got.chunk_size, CS);
	assert_int_equal(got.format_version, SM_FORMAT_VERSION);
	assert_string_equal(got.volume_uuid, f->id.volume_uuid);
	assert_string_equal(got.target_uuid, f->id.target_uuid);
	assert_string_equal(f->t->url, f->url);
	assert_ptr_equal(sm_ops_for(f->url), f->t->ops);

	/* no expectations at all is fine too */
	struct sm_target *t2;
	if (f->be->image) {
		/* one open at a time: a second index over the same blocks would corrupt both */
		expect_err(f, sm_open(f->url, NULL, &t2, f->err, sizeof(f->err)), -EBUSY, "in use");
		fx_reopen(f);
		sm_close(f->t);
		f->t = NULL;
	}
	assert_int_equal(sm_open(f->url, NULL, &t2, f->err, sizeof(f->err)), 0);
	sm_close(t2);
	sm_close(NULL);
}

static void test_format_missing_dir(void **state)
{
	struct fx *f = *state;
	char url[700];
	fx_url(f, url, sizeof(url), "nope");
	int r = sm_format(url, &f->id, false, f->err, sizeof(f->err));
	expect_err(f, r, -ENOENT, "does not exist");
	assert_non_null(strstr(f->err, "nope"));
}

static void test_bad_urls(void **state)
{
	struct fx *f = *state;
	char url[700];
	snprintf(url, sizeof(url), "%s:relative/dir", f->be->scheme);
	expect_err(f, sm_format(url, &f->id, false, f->err, sizeof(f->err)), -EINVAL, "relative");
	struct sm_target *t;
	expect_err(f, sm_open(url, NULL, &t, f->err, sizeof(f->err)), -EINVAL, "relative");

	expect_err(f, sm_format("xyz:/tmp/x", &f->id, false, f->err, sizeof(f->err)), -EINVAL,
		   "unknown target URL scheme 'xyz' (expected dir:/path, file:/dev/NAME or "
		   "file:/path/image)");
	expect_err(f, sm_open("XYZ:/tmp/x", NULL, &t, f->err, sizeof(f->err)), -EINVAL,
		   "unknown target URL scheme 'xyz'");
	assert_null(sm_ops_for("nosuch:/x"));
	assert_null(sm_ops_for("noscheme"));
	assert_non_null(sm_ops_for("DIR:/x"));
	assert_ptr_equal(sm_ops_for("file:/dev/x"), &sm_block_ops); /* a device URL */
	assert_ptr_equal(sm_ops_for("FILE:/x.img"), &sm_block_ops);

	struct sm_identity bad = f->id;
	bad.chunk_size = 1000;
	expect_err(f, sm_format(f->url, &bad, false, f->err, sizeof(f->err)), -EINVAL,
		   "chunk size");
}

static void test_format_not_empty(void **state)
{
	struct fx *f = *state;
	char p[512];
	if (f->be->image) {
		fx_image_path(f, p, sizeof(p));
		int fd = open(p, O_WRONLY);
		assert_true(fd >= 0);
		assert_int_equal(pwrite(fd, "x", 1, 60000), 1); /* inside the first 64 KiB */
		close(fd);
		int r = sm_format(f->url, &f->id, false, f->err, sizeof(f->err));
		expect_err(f, r, -ENOTEMPTY,
			   "is not empty (holds data: its first bytes are not zero)");
		assert_int_equal(sm_format_check(f->url, false, f->err, sizeof(f->err)),
				 -ENOTEMPTY);
		assert_int_equal(sm_format_check(f->url, true, f->err, sizeof(f->err)), 0);
		assert_int_equal(sm_format(f->url, &f->id, true, f->err, sizeof(f->err)), 0);
		assert_int_equal(sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), 0);
		return;
	}
	snprintf(p, sizeof(p), "%s/a", f->dir);
	write_file(p, "x");
	snprintf(p, sizeof(p), "%s/b", f->dir);
	write_file(p, "y");
	int r = sm_format(f->url, &f->id, false, f->err, sizeof(f->err));
	expect_err(f, r, -ENOTEMPTY, "is not empty (holds 2 other files)");
	assert_non_null(strstr(f->err, f->dir));
	/* force formats, and still deletes nothing that is not a chunk */
	assert_int_equal(sm_format(f->url, &f->id, true, f->err, sizeof(f->err)), 0);
	assert_int_equal(access(p, F_OK), 0);
	assert_int_equal(sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), 0);
}

static void test_format_twice(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	char data[100];
	fill(data, sizeof(data), 1);
	assert_int_equal(t_write(f, 3, 0, data, sizeof(data), 0), sizeof(data));
	sm_close(f->t);
	f->t = NULL;

	struct sm_identity id2 = f->id;
	uuid_generate_str(id2.volume_uuid);
	int r = sm_format(f->url, &id2, false, f->err, sizeof(f->err));
	char want[128];
	snprintf(want, sizeof(want), "(holds a braidfs target of volume %s)", f->id.volume_uuid);
	expect_err(f, r, -EEXIST, want);

	/* SM-6 refused; the old target still opens */
	assert_int_equal(sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), 0);
	sm_close(f->t);
	f->t = NULL;

	/* with force: a new target, and SM-2: the old volume's chunk reads as zeros */
	assert_int_equal(sm_format(f->url, &id2, true, f->err, sizeof(f->err)), 0);
	expect_err(f, sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), -EINVAL,
		   "belongs to volume");
	f->t = NULL;
	assert_int_equal(sm_open(f->url, &id2, &f->t, f->err, sizeof(f->err)), 0);
	char back[100];
	assert_int_equal(t_read(f, 3, 0, back, sizeof(back), 0), sizeof(back));
	assert_true(all_zero(back, sizeof(back)));
	assert_false(chunk_exists(f, 3, 0));
}

static void test_format_readonly(void **state)
{
	struct fx *f = *state;
	if (geteuid() != 0 || f->be->image) /* a read-only image file: see test_sm_block.c */
		skip();
	char ro[512];
	snprintf(ro, sizeof(ro), "%s/ro", f->dir);
	assert_int_equal(mkdir(ro, 0755), 0);
	if (mount("tmpfs", ro, "tmpfs", MS_RDONLY, "size=1m") < 0) {
		print_message("cannot mount a read-only tmpfs (%s): skipped\n", strerror(errno));
		skip();
	}
	char url[700];
	fx_url(f, url, sizeof(url), "ro");
	int r = sm_format(url, &f->id, false, f->err, sizeof(f->err));
	umount2(ro, MNT_DETACH);
	expect_err(f, r, -EROFS, "read-only");
	assert_non_null(strstr(f->err, ro));
}

static void rewrite_identity(struct fx *f, const char *body)
{
	char p[512], text[1024];
	snprintf(p, sizeof(p), "%s/braidfs-target", f->dir);
	snprintf(text, sizeof(text), "%scrc32c=%08x\n", body, crc32c(0, body, strlen(body)));
	write_file(p, text);
}

static void test_open_errors(void **state)
{
	struct fx *f = *state;
	struct sm_target *t = NULL;
	char url[700];
	fx_url(f, url, sizeof(url), "nope");
	expect_err(f, sm_open(url, NULL, &t, f->err, sizeof(f->err)), -ENOENT, "does not exist");

	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -ENOENT,
		   "holds no braidfs target");

	assert_int_equal(sm_format(f->url, &f->id, false, f->err, sizeof(f->err)), 0);

	struct sm_identity other = f->id;
	uuid_generate_str(other.volume_uuid);
	expect_err(f, sm_open(f->url, &other, &t, f->err, sizeof(f->err)), -EINVAL,
		   "belongs to volume");
	other = f->id;
	other.target_id = 8;
	expect_err(f, sm_open(f->url, &other, &t, f->err, sizeof(f->err)), -EINVAL,
		   "expected target id 8");
	other = f->id;
	other.chunk_size = CS * 2;
	expect_err(f, sm_open(f->url, &other, &t, f->err, sizeof(f->err)), -EINVAL, "chunk size");
	if (f->be->image) {
		/* damaged superblocks: test_sm_block.c */
		assert_int_equal(sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), 0);
		return;
	}

	/* one flipped byte: the checksum catches it */
	char p[512];
	snprintf(p, sizeof(p), "%s/braidfs-target", f->dir);
	int fd = open(p, O_RDWR);
	assert_true(fd >= 0);
	char c;
	assert_int_equal(pread(fd, &c, 1, 10), 1);
	c ^= 0x01;
	assert_int_equal(pwrite(fd, &c, 1, 10), 1);
	close(fd);
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -EBADMSG, "corrupt");

	/* a truncated file */
	write_file(p, "format_version=1\ntarget_id=7\n");
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -EBADMSG, "corrupt");

	/* a good checksum over a missing key */
	rewrite_identity(f, "format_version=1\ntarget_id=7\n");
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -EBADMSG, "missing keys");

	/* a newer format */
	char body[512];
	snprintf(body, sizeof(body),
		 "format_version=2\ntarget_id=7\nchunk_size=%u\nvolume_uuid=%s\ntarget_uuid=%s\n",
		 CS, f->id.volume_uuid, f->id.target_uuid);
	rewrite_identity(f, body);
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -EPROTONOSUPPORT,
		   "format version 2");

	/* and back to a valid one, with an extra key a later minor revision might add */
	snprintf(body, sizeof(body),
		 "format_version=1\ntarget_id=7\nchunk_size=%u\nvolume_uuid=%s\ntarget_uuid=%s\n"
		 "future_key=1\n",
		 CS, f->id.volume_uuid, f->id.target_uuid);
	rewrite_identity(f, body);
	assert_int_equal(sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), 0);
}

/* ---------------------------------------------------------------------------------------- */
/* data (SM-2, SM-3) */

static void test_zeros(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	char buf[8192];
	memset(buf, 0x55, sizeof(buf));
	assert_int_equal(t_read(f, 1, 0, buf, sizeof(buf), 0), sizeof(buf));
	assert_true(all_zero(buf, sizeof(buf)));
	assert_false(chunk_exists(f, 1, 0)); /* a read creates nothing */
	t_len(f, 1, 0, -ENOENT);

	char data[10];
	fill(data, sizeof(data), 2);
	assert_int_equal(t_write(f, 1, 0, data, sizeof(data), 100), 10);
	assert_true(chunk_exists(f, 1, 0));
	assert_int_equal(t_len(f, 1, 0, 0), 110);
	memset(buf, 0x55, sizeof(buf));
	assert_int_equal(t_read(f, 1, 0, buf, sizeof(buf), 0), sizeof(buf));
	assert_true(all_zero(buf, 100));
	assert_memory_equal(buf + 100, data, 10);
	assert_true(all_zero(buf + 110, sizeof(buf) - 110));
	/* wholly past the chunk's length */
	memset(buf, 0x55, sizeof(buf));
	assert_int_equal(t_read(f, 1, 0, buf, 4096, CS - 4096), 4096);
	assert_true(all_zero(buf, 4096));
	/* zero-length operations */
	assert_int_equal(t_read(f, 1, 0, buf, 0, 0), 0);
	assert_int_equal(t_write(f, 2, 0, buf, 0, 0), 0);
	assert_false(chunk_exists(f, 2, 0));
}

static void test_edges(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	char data[CS], back[CS];
	fill(data, sizeof(data), 3);
	assert_int_equal(t_write(f, 5, 1, data, 10, CS - 10), 10);
	assert_int_equal(t_len(f, 5, 1, 0), CS);
	assert_int_equal(t_read(f, 5, 1, back, 20, CS - 20), 20);
	assert_true(all_zero(back, 10));
	assert_memory_equal(back + 10, data, 10);

	assert_int_equal(t_write(f, 5, 1, data, 1, CS), -EINVAL);
	assert_int_equal(t_write(f, 5, 1, data, 2, CS - 1), -EINVAL);
	assert_int_equal(t_read(f, 5, 1, back, 2, CS - 1), -EINVAL);
	assert_int_equal(t_read(f, 5, 1, back, 1, UINT64_MAX), -EINVAL);

	assert_int_equal(t_write(f, 5, 2, data, CS, 0), CS);
	assert_int_equal(t_read(f, 5, 2, back, CS, 0), CS);
	assert_memory_equal(back, data, CS);
	/* highest index and inode */
	assert_int_equal(t_write(f, UINT64_MAX, UINT32_MAX, data, 7, 0), 7);
	assert_int_equal(t_read(f, UINT64_MAX, UINT32_MAX, back, 7, 0), 7);
	assert_memory_equal(back, data, 7);
	assert_true(chunk_exists(f, UINT64_MAX, UINT32_MAX));

	/* SM-3 across a close and reopen */
	fx_reopen(f);
	assert_int_equal(t_read(f, 5, 2, back, CS, 0), CS);
	assert_memory_equal(back, data, CS);
}

static void test_truncate(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	const struct sm_ops *o = f->t->ops;
	assert_int_equal(o->truncate(f->t, 1, 0, 0), 0);
	assert_false(chunk_exists(f, 1, 0)); /* missing + 0 stays missing */

	char data[1000], back[2000];
	fill(data, sizeof(data), 4);
	assert_int_equal(t_write(f, 1, 0, data, 1000, 0), 1000);
	assert_int_equal(o->truncate(f->t, 1, 0, 500), 0);
	assert_int_equal(t_len(f, 1, 0, 0), 500);
	assert_int_equal(o->truncate(f->t, 1, 0, 2000), 0);
	assert_int_equal(t_len(f, 1, 0, 0), 2000);
	assert_int_equal(t_read(f, 1, 0, back, 2000, 0), 2000);
	assert_memory_equal(back, data, 500);
	assert_true(all_zero(back + 500, 1500)); /* the dropped bytes do not come back */

	assert_int_equal(o->truncate(f->t, 1, 0, CS + 1), -EINVAL);
	assert_int_equal(o->truncate(f->t, 1, 0, CS), 0);
	assert_int_equal(t_len(f, 1, 0, 0), CS);

	assert_int_equal(o->truncate(f->t, 1, 0, 0), 0);
	t_len(f, 1, 0, -ENOENT);
	assert_int_equal(t_read(f, 1, 0, back, 2000, 0), 2000);
	assert_true(all_zero(back, 2000));

	/* a missing chunk grown is a hole */
	assert_int_equal(o->truncate(f->t, 1, 1, 4096), 0);
	assert_int_equal(t_len(f, 1, 1, 0), 4096);
}

static void test_punch_allocate(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	const struct sm_ops *o = f->t->ops;
	char *data = malloc(CS), *back = malloc(CS);
	memset(data, 0xaa, CS);
	assert_int_equal(t_write(f, 2, 0, data, CS, 0), CS);
	assert_int_equal(o->punch(f->t, 2, 0, 4096, 8192 + 100), 0);
	assert_int_equal(t_len(f, 2, 0, 0), CS); /* KEEP_SIZE */
	assert_int_equal(t_read(f, 2, 0, back, CS, 0), CS);
	assert_memory_equal(back, data, 4096);
	assert_true(all_zero(back + 4096, 8192 + 100));
	assert_memory_equal(back + 4096 + 8192 + 100, data, CS - 4096 - 8192 - 100);
	/* punching a missing chunk, or past the end, creates nothing */
	assert_int_equal(o->punch(f->t, 2, 1, 0, 4096), 0);
	assert_false(chunk_exists(f, 2, 1));
	assert_int_equal(o->punch(f->t, 2, 0, CS, 4096), 0);

	assert_int_equal(o->allocate(f->t, 2, 2, 0, 8192), 0);
	assert_int_equal(t_len(f, 2, 2, 0), 8192);
	assert_int_equal(t_read(f, 2, 2, back, 8192, 0), 8192);
	assert_true(all_zero(back, 8192));
	assert_int_equal(o->allocate(f->t, 2, 2, CS - 4096, 8192), -EINVAL);
	/* allocating inside keeps the data */
	assert_int_equal(o->allocate(f->t, 2, 0, 0, CS), 0);
	assert_int_equal(t_read(f, 2, 0, back, 4096, 0), 4096);
	assert_memory_equal(back, data, 4096);
	free(data);
	free(back);
}

static void test_seek(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	const struct sm_ops *o = f->t->ops;
	uint64_t pos = 1;
	assert_int_equal(o->seek(f->t, 3, 0, 0, SEEK_DATA, &pos), -ENXIO);
	assert_int_equal(o->seek(f->t, 3, 0, 100, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 100);

	char data[4096];
	fill(data, sizeof(data), 5);
	assert_int_equal(t_write(f, 3, 0, data, 4096, 0), 4096);
	assert_int_equal(t_write(f, 3, 0, data, 4096, 32768), 4096);
	assert_int_equal(o->seek(f->t, 3, 0, 0, SEEK_DATA, &pos), 0);
	assert_int_equal(pos, 0);
	assert_int_equal(o->seek(f->t, 3, 0, 0, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 4096);
	assert_int_equal(o->seek(f->t, 3, 0, 4096, SEEK_DATA, &pos), 0);
	assert_int_equal(pos, 32768);
	assert_int_equal(o->seek(f->t, 3, 0, 32768, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 36864); /* the chunk's length */
	assert_int_equal(o->seek(f->t, 3, 0, 36864, SEEK_DATA, &pos), -ENXIO);
	assert_int_equal(o->seek(f->t, 3, 0, 36864, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 36864);
	assert_int_equal(o->seek(f->t, 3, 0, 40000, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 40000);
	assert_int_equal(o->seek(f->t, 3, 0, 0, SEEK_SET, &pos), -EINVAL);
}

/* ---------------------------------------------------------------------------------------- */
/* remove (SM-5), list */

static void test_remove(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	const struct sm_ops *o = f->t->ops;
	const uint64_t A = 0x1234, B = A + 256; /* same fanout dir */
	char data[64], back[64];
	fill(data, sizeof(data), 6);
	for (uint32_t i = 0; i < 6; i++) {
		assert_int_equal(t_write(f, A, i, data, sizeof(data), 0), sizeof(data));
		assert_int_equal(t_write(f, B, i, data, sizeof(data), 0), sizeof(data));
	}
	/* a chunk the caller does not know of: written behind the target's back (a dir target), or
	 * by a write the caller forgot (any target) */
	char p[512];
	if (f->be->image) {
		assert_int_equal(t_write(f, A, 1000, "stale", 5, 0), 5);
	} else {
		chunk_path(f, A, 1000, p, sizeof(p));
		write_file(p, "stale");
	}
	/* keep an fd of chunk 4 cached */
	assert_int_equal(t_read(f, A, 4, back, sizeof(back), 0), sizeof(back));

	assert_int_equal(o->remove(f->t, A, 3), 0);
	for (uint32_t i = 0; i < 6; i++) {
		assert_int_equal(chunk_exists(f, A, i), i < 3);
		assert_true(chunk_exists(f, B, i));
	}
	assert_false(chunk_exists(f, A, 1000));
	assert_int_equal(t_read(f, A, 1000, back, 5, 0), 5);
	assert_true(all_zero(back, 5));
	assert_int_equal(t_read(f, A, 4, back, sizeof(back), 0), sizeof(back));
	assert_true(all_zero(back, sizeof(back)));

	/* the cached fd of chunk 4 is gone: a new write lands in a new, visible file */
	char data2[64];
	fill(data2, sizeof(data2), 7);
	assert_int_equal(t_write(f, A, 4, data2, sizeof(data2), 0), sizeof(data2));
	assert_true(chunk_exists(f, A, 4));
	if (f->be->image) {
		assert_int_equal(t_read(f, A, 4, back, sizeof(back), 0), sizeof(back));
	} else {
		int fd = open((chunk_path(f, A, 4, p, sizeof(p)), p), O_RDONLY);
		assert_true(fd >= 0);
		assert_int_equal(pread(fd, back, sizeof(back), 0), sizeof(back));
		close(fd);
	}
	assert_memory_equal(back, data2, sizeof(back));
	assert_int_equal(o->sync_ino(f->t, A), 0);

	assert_int_equal(o->remove(f->t, A, 0), 0);
	for (uint32_t i = 0; i < 6; i++)
		assert_false(chunk_exists(f, A, i));
	assert_int_equal(o->remove(f->t, 999, 0), 0); /* nothing there: fine */
	assert_int_equal(o->sync_ino(f->t, A), 0);
}

struct seen {
	uint64_t ino;
	uint32_t idx;
	uint64_t length;
	int hits;
};

struct list_ctx {
	struct seen *want;
	size_t n;
	int extra;
};

static int list_cb(void *ctx, const struct sm_chunk_info *ci)
{
	struct list_ctx *l = ctx;
	for (size_t i = 0; i < l->n; i++) {
		if (l->want[i].ino == ci->ino && l->want[i].idx == ci->idx) {
			l->want[i].hits++;
			assert_int_equal(l->want[i].length, ci->length);
			return 0;
		}
	}
	l->extra++;
	return 0;
}

static int list_stop_cb(void *ctx, const struct sm_chunk_info *ci)
{
	(void)ci;
	++*(int *)ctx;
	return 42;
}

static void test_list(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	struct seen want[] = {
	    {1, 0, 100, 0},
	    {1, 7, 5000, 0},
	    {257, 0, 1, 0},
	    {0xabcdef, 3, CS, 0},
	    {UINT64_MAX, UINT32_MAX, 42, 0},
	};
	char *data = calloc(1, CS);
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		assert_int_equal(t_write(f, want[i].ino, want[i].idx, data, want[i].length, 0),
				 (ssize_t)want[i].length);
	free(data);
	if (f->be->image)
		goto listed; /* no files to plant junk among */
	/* things list() must skip */
	char p[512];
	snprintf(p, sizeof(p), "%s/chunks/00/junk", f->dir);
	write_file(p, "x");
	snprintf(p, sizeof(p), "%s/chunks/01/0000000000000002.00000001", f->dir); /* wrong dir */
	write_file(p, "x");
	snprintf(p, sizeof(p), "%s/chunks/0a/000000000000000A.00000000", f->dir); /* upper case */
	write_file(p, "x");
	snprintf(p, sizeof(p), "%s/chunks/02/0000000000000002.0000000", f->dir); /* short */
	write_file(p, "x");
	snprintf(p, sizeof(p), "%s/chunks/03/0000000000000003.00000000", f->dir); /* a dir */
	assert_int_equal(mkdir(p, 0755), 0);

listed:;
	struct list_ctx l = {want, ARRAY_SIZE(want), 0};
	assert_int_equal(f->t->ops->list(f->t, list_cb, &l), 0);
	assert_int_equal(l.extra, 0);
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		assert_int_equal(want[i].hits, 1);

	int calls = 0;
	assert_int_equal(f->t->ops->list(f->t, list_stop_cb, &calls), 42);
	assert_int_equal(calls, 1);
}

/* ---------------------------------------------------------------------------------------- */
/* the fd cache, concurrency, sync, statfs */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void test_fd_cache(void **state)
{
	struct fx *f = *state;
	int before = count_fds();
	fx_format_open(f);
	int base = count_fds();
	const uint32_t N = 1500;
	for (uint32_t i = 0; i < N; i++) {
		uint32_t v = i * 2654435761u;
		/* half the chunks in one inode, half spread over many */
		uint64_t ino = i % 2 ? 77 : 1000 + i;
		assert_int_equal(t_write(f, ino, i, &v, sizeof(v), i % 4096), sizeof(v));
	}
	int peak = count_fds();
	assert_true(peak - base <= 1024 + 16);
	for (uint32_t i = 0; i < N; i++) {
		uint32_t v = 0;
		uint64_t ino = i % 2 ? 77 : 1000 + i;
		assert_int_equal(t_read(f, ino, i, &v, sizeof(v), i % 4096), sizeof(v));
		assert_int_equal(v, i * 2654435761u);
	}
	/* evicted while dirty: sync still finds them */
	assert_int_equal(f->t->ops->sync_ino(f->t, 77), 0);
	assert_int_equal(f->t->ops->sync_ino(f->t, 77), 0);
	assert_int_equal(f->t->ops->sync_all(f->t), 0);
	assert_true(count_fds() - base <= 1024 + 16);
	sm_close(f->t);
	f->t = NULL;
	assert_int_equal(count_fds(), before); /* close gives every fd back */
}

struct worker {
	struct fx *f;
	int k;
};

#define CW_CHUNKS 8
#define CW_ROUNDS 400

/* Thread k owns the 4 KiB blocks b with b % 4 == k of inode 9's first CW_CHUNKS chunks. */
static void *conc_worker(void *arg)
{
	struct worker *w = arg;
	char buf[4096], back[4096];
	uint32_t seed = (uint32_t)w->k * 7919 + 1;
	for (int i = 0; i < CW_ROUNDS; i++) {
		seed = seed * 1103515245 + 12345;
		uint32_t blocks = CS / 4096 * CW_CHUNKS;
		uint32_t b = ((seed >> 8) % (blocks / 4)) * 4 + (uint32_t)w->k;
		uint32_t idx = b / (CS / 4096), off = (b % (CS / 4096)) * 4096;
		memset(buf, (int)(b & 0xff) ^ 0x5a, sizeof(buf));
		if (w->f->t->ops->write(w->f->t, 9, idx, buf, sizeof(buf), off) != sizeof(buf))
			return (void *)1;
		if (w->f->t->ops->read(w->f->t, 9, idx, back, sizeof(back), off) != sizeof(back) ||
		    memcmp(buf, back, sizeof(buf)))
			return (void *)2;
		/* plus a private chunk per thread, to churn creations */
		if (w->f->t->ops->write(w->f->t, 100 + (uint64_t)w->k, (uint32_t)i, buf, 16, 0) !=
		    16)
			return (void *)3;
		if (i % 50 == 0 && w->f->t->ops->sync_ino(w->f->t, 9) != 0)
			return (void *)4;
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	pthread_t th[4];
	struct worker w[4];
	for (int k = 0; k < 4; k++) {
		w[k] = (struct worker){f, k};
		assert_int_equal(pthread_create(&th[k], NULL, conc_worker, &w[k]), 0);
	}
	for (int k = 0; k < 4; k++) {
		void *rv;
		pthread_join(th[k], &rv);
		assert_null(rv);
	}
	assert_int_equal(f->t->ops->sync_all(f->t), 0);
	/* every block is either untouched (zeros) or holds its own pattern */
	char back[4096];
	for (uint32_t b = 0; b < CS / 4096 * CW_CHUNKS; b++) {
		uint32_t idx = b / (CS / 4096), off = (b % (CS / 4096)) * 4096;
		assert_int_equal(t_read(f, 9, idx, back, sizeof(back), off), sizeof(back));
		if (!all_zero(back, sizeof(back)))
			for (int i = 0; i < 4096; i++)
				assert_int_equal((uint8_t)back[i], (uint8_t)((b & 0xff) ^ 0x5a));
	}
	for (int k = 0; k < 4; k++)
		for (int i = 0; i < CW_ROUNDS; i += 97)
			assert_true(chunk_exists(f, 100 + (uint64_t)k, (uint32_t)i));
}

static void test_sync_statfs(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	const struct sm_ops *o = f->t->ops;
	assert_int_equal(o->sync_ino(f->t, 1), 0); /* nothing dirty */
	char data[8192];
	fill(data, sizeof(data), 8);
	for (uint32_t i = 0; i < 10; i++)
		assert_int_equal(t_write(f, 1, i, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(o->sync_ino(f->t, 1), 0);
	assert_int_equal(o->sync_all(f->t), 0);
	struct sm_statfs st;
	assert_int_equal(o->statfs(f->t, &st), 0);
	assert_true(st.total_bytes > 0);
	assert_true(st.free_bytes <= st.total_bytes);
	assert_int_equal(st.chunks, 10); /* few chunks: counted, not estimated */
	assert_true(st.used_bytes >= 10 * 8192);
	assert_int_equal(!!(o->caps & SM_CAP_EXACT_CNT), f->be->image);
	assert_true(o->caps & SM_CAP_SPARSE);
}

/* A backend that keeps counters (sm_ops.counters) counts at least the bytes it moved and no
 * checksum error on clean data. */
static void test_counters(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	if (!f->t->ops->counters)
		return; /* optional: nothing to conform to */
	struct sm_counters c0, c1;
	assert_int_equal(f->t->ops->counters(f->t, &c0), 0);
	char data[5000], back[5000];
	fill(data, sizeof(data), 3);
	assert_int_equal(t_write(f, 9, 0, data, sizeof(data), 100), sizeof(data));
	assert_int_equal(t_read(f, 9, 0, back, sizeof(back), 100), sizeof(back));
	assert_memory_equal(back, data, sizeof(back));
	assert_int_equal(f->t->ops->counters(f->t, &c1), 0);
	assert_true(c1.bytes_written - c0.bytes_written >= sizeof(data));
	assert_true(c1.bytes_read - c0.bytes_read >= sizeof(back));
	assert_int_equal(c1.csum_errors, c0.csum_errors);
}

/* ---------------------------------------------------------------------------------------- */
/* the fault twin itself */

static void test_faulty_write(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	char data[16] = "hello", back[16];
	set_fault(f, "# comment\nwrite = EIO\n");
	assert_int_equal(t_write(f, 1, 0, data, sizeof(data), 0), -EIO);
	assert_false(chunk_exists(f, 1, 0)); /* nothing of it landed */
	assert_int_equal(t_read(f, 1, 0, back, sizeof(back), 0), sizeof(back));
	set_fault(f, NULL);
	assert_int_equal(t_write(f, 1, 0, data, sizeof(data), 0), sizeof(data));

	set_fault(f, "write=ENOSPC\nafter=2\n");
	assert_int_equal(t_write(f, 1, 1, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(t_write(f, 1, 2, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(t_write(f, 1, 3, data, sizeof(data), 0), -ENOSPC);
	assert_int_equal(t_write(f, 1, 4, data, sizeof(data), 0), -ENOSPC);
	assert_int_equal(t_read(f, 1, 1, back, sizeof(back), 0), sizeof(back));

	set_fault(f, "read=EIO\nino=5\ntimes=1\n");
	assert_int_equal(t_read(f, 6, 0, back, sizeof(back), 0), sizeof(back));
	assert_int_equal(t_read(f, 5, 0, back, sizeof(back), 0), -EIO);
	assert_int_equal(t_read(f, 5, 0, back, sizeof(back), 0), sizeof(back));

	set_fault(f, "sync=5\n"); /* a number works too */
	assert_int_equal(f->t->ops->sync_ino(f->t, 1), -EIO);
	assert_int_equal(f->t->ops->sync_all(f->t), -EIO);
	set_fault(f, "all=EROFS\n");
	assert_int_equal(f->t->ops->truncate(f->t, 1, 0, 1), -EROFS);
	assert_int_equal(f->t->ops->remove(f->t, 1, 0), -EROFS);
	set_fault(f, "");
	assert_int_equal(f->t->ops->sync_all(f->t), 0);
}

static struct sm_counters counters(struct fx *f)
{
	struct sm_counters c;
	assert_non_null(f->t->ops->counters);
	assert_int_equal(f->t->ops->counters(f->t, &c), 0);
	return c;
}

/* corrupt=1: reads of an existing matching chunk answer EBADMSG until it is rewritten. */
static void test_faulty_corrupt(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	char data[3][6000], back[6000];
	for (int i = 0; i < 3; i++)
		fill(data[i], sizeof(data[i]), 40 + (uint32_t)i);
	assert_int_equal(t_write(f, 5, 0, data[0], sizeof(data[0]), 0), sizeof(data[0]));
	assert_int_equal(t_write(f, 5, 1, data[1], sizeof(data[1]), 0), sizeof(data[1]));
	assert_int_equal(t_write(f, 6, 0, data[2], sizeof(data[2]), 0), sizeof(data[2]));
	struct sm_counters c = counters(f);
	assert_int_equal(c.csum_errors, 0);
	assert_int_equal(c.bytes_written, 3 * sizeof(data[0]));
	assert_int_equal(c.bytes_read, 0);

	set_fault(f, "corrupt=1\nino=5\nidx=1\n");
	memset(back, 0, sizeof(back));
	assert_int_equal(t_read(f, 5, 1, back, 100, 10), -EBADMSG);
	assert_int_equal((uint8_t)back[0], 0xbd); /* junk, never the caller's old bytes */
	assert_int_equal(t_read(f, 5, 1, back, sizeof(back), 0), -EBADMSG); /* it stays bad */
	assert_int_equal(t_read(f, 5, 0, back, sizeof(back), 0), sizeof(back));
	assert_memory_equal(back, data[0], sizeof(back));
	assert_int_equal(t_read(f, 6, 0, back, sizeof(back), 0), sizeof(back));
	assert_int_equal(t_read(f, 5, 2, back, 10, 0), 10); /* absent: nothing to be bad */
	assert_true(all_zero(back, 10));
	c = counters(f);
	assert_int_equal(c.csum_errors, 2);
	assert_int_equal(c.bytes_read, 2 * sizeof(back) + 10);

	/* a write heals it: the store rewrote the block */
	assert_int_equal(t_write(f, 5, 1, data[1], 10, 0), 10);
	assert_int_equal(t_read(f, 5, 1, back, sizeof(back), 0), sizeof(back));
	assert_memory_equal(back, data[1], sizeof(back));
	assert_int_equal(counters(f).csum_errors, 2);

	/* a new control file is a new event; several inodes; truncate and punch heal too */
	set_fault(f, "corrupt=1\nino=5,6\n");
	assert_int_equal(t_read(f, 5, 1, back, 1, 0), -EBADMSG);
	assert_int_equal(t_read(f, 5, 0, back, 1, 0), -EBADMSG);
	assert_int_equal(t_read(f, 6, 0, back, 1, 0), -EBADMSG);
	assert_int_equal(f->t->ops->truncate(f->t, 6, 0, sizeof(data[2])), 0);
	assert_int_equal(t_read(f, 6, 0, back, sizeof(back), 0), sizeof(back));
	assert_memory_equal(back, data[2], sizeof(back));
	assert_int_equal(f->t->ops->punch(f->t, 5, 0, 0, 4096), 0);
	assert_int_equal(t_read(f, 5, 0, back, 1, 4096), 1);
	/* a removed chunk holds nothing bad; written again it is healthy */
	assert_int_equal(f->t->ops->remove(f->t, 5, 1), 0);
	assert_int_equal(t_read(f, 5, 1, back, 10, 0), 10);
	assert_true(all_zero(back, 10));
	assert_int_equal(counters(f).csum_errors, 5);

	/* no filter: every chunk; deleting the file ends the corruption */
	set_fault(f, "corrupt = 1   # everything\n");
	assert_int_equal(t_read(f, 6, 0, back, 1, 0), -EBADMSG);
	set_fault(f, NULL);
	assert_int_equal(t_read(f, 6, 0, back, 1, 0), 1);
	set_fault(f, "corrupt=0\n");
	assert_int_equal(t_read(f, 6, 0, back, 1, 0), 1);
	assert_int_equal(counters(f).csum_errors, 6);
}

/* Healing lasts across opens (a scrub of an unmounted volume is another process than the mount
 * that comes next): the chunk file's ctime is the record. */
static void test_faulty_corrupt_reopen(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	char data[100], back[100];
	fill(data, sizeof(data), 9);
	assert_int_equal(t_write(f, 5, 0, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(t_write(f, 5, 1, data, sizeof(data), 0), sizeof(data));
	set_fault(f, "corrupt=1\nino=5\n");
	usleep(30 * 1000); /* file times tick coarsely: the rewrite must come a tick later */
	assert_int_equal(t_write(f, 5, 0, data, sizeof(data), 0), sizeof(data));
	fx_reopen(f);
	assert_int_equal(t_read(f, 5, 0, back, sizeof(back), 0), sizeof(back));
	assert_memory_equal(back, data, sizeof(back));
	assert_int_equal(t_read(f, 5, 1, back, sizeof(back), 0), -EBADMSG);
	assert_int_equal(counters(f).csum_errors, 1); /* counted since this open */
}

/* idx= filters error faults as well; bad filter lists are ignored (with a warning). */
static void test_faulty_filters(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	char data[16] = "abc", back[16];
	set_fault(f, "write=EIO\nidx=3,4\n");
	assert_int_equal(t_write(f, 1, 2, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(t_write(f, 1, 3, data, sizeof(data), 0), -EIO);
	assert_int_equal(t_write(f, 2, 4, data, sizeof(data), 0), -EIO);
	set_fault(f, "sync=EIO\nidx=3\n"); /* sync_ino names no chunk: an idx filter spares it */
	assert_int_equal(f->t->ops->sync_ino(f->t, 1), 0);
	set_fault(f, "read=EIO\nino=7,8\nidx=0\n");
	assert_int_equal(t_read(f, 7, 0, back, sizeof(back), 0), -EIO);
	assert_int_equal(t_read(f, 8, 0, back, sizeof(back), 0), -EIO);
	assert_int_equal(t_read(f, 8, 1, back, sizeof(back), 0), sizeof(back));
	assert_int_equal(t_read(f, 9, 0, back, sizeof(back), 0), sizeof(back));
	set_fault(f, "read=EIO\nino=7,x\ncorrupt=2\n"); /* bad list and value: ignored */
	assert_int_equal(t_read(f, 9, 0, back, sizeof(back), 0), -EIO);
	set_fault(f, "corrupt=1\nidx=99999999999\n"); /* out of range: no filter, all corrupt */
	assert_int_equal(t_read(f, 1, 2, back, sizeof(back), 0), -EBADMSG);
}

static void test_faulty_poll(void **state)
{
	struct fx *f = *state;
	/* the default: the control file is looked at every 100 ms at most */
	snprintf(f->url, sizeof(f->url), "faulty:%s", f->dir);
	fx_format_open(f);
	char data[16] = "x";
	assert_int_equal(t_write(f, 1, 0, data, sizeof(data), 0), sizeof(data));
	set_fault(f, "write=EIO\n");
	usleep(150 * 1000);
	assert_int_equal(t_write(f, 1, 0, data, sizeof(data), 0), -EIO);
	set_fault(f, NULL);
	usleep(150 * 1000);
	assert_int_equal(t_write(f, 1, 0, data, sizeof(data), 0), sizeof(data));
}

static void test_faulty_open(void **state)
{
	struct fx *f = *state;
	set_fault(f, "open=EIO\n"); /* before format: the control file does not count */
	assert_int_equal(sm_format(f->url, &f->id, false, f->err, sizeof(f->err)), 0);
	expect_err(f, sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), -EIO, "injected");
	f->t = NULL;
	set_fault(f, NULL);
	assert_int_equal(sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err)), 0);
}

/* ---------------------------------------------------------------------------------------- */

struct tcase {
	const char *name;
	CMUnitTestFunction fn;
};

static const struct tcase conformance[] = {
    {"format_identity", test_format_identity},
    {"format_missing_dir", test_format_missing_dir},
    {"bad_urls", test_bad_urls},
    {"format_not_empty", test_format_not_empty},
    {"format_twice", test_format_twice},
    {"format_readonly", test_format_readonly},
    {"open_errors", test_open_errors},
    {"zeros", test_zeros},
    {"edges", test_edges},
    {"truncate", test_truncate},
    {"punch_allocate", test_punch_allocate},
    {"seek", test_seek},
    {"remove", test_remove},
    {"list", test_list},
    {"fd_cache", test_fd_cache},
    {"concurrent", test_concurrent},
    {"sync_statfs", test_sync_statfs},
    {"counters", test_counters},
};

static const struct tcase faulty_only[] = {
    {"faulty_write", test_faulty_write},
    {"faulty_poll", test_faulty_poll},
    {"faulty_open", test_faulty_open},
    {"faulty_corrupt", test_faulty_corrupt},
    {"faulty_corrupt_reopen", test_faulty_corrupt_reopen},
    {"faulty_filters", test_faulty_filters},
};

int main(void)
{
	/* the fd cache test wants its 1024 fds per target */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 8192 && rl.rlim_max >= 8192) {
		rl.rlim_cur = 8192;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	const size_t nb = ARRAY_SIZE(backends);
	const size_t n = nb * ARRAY_SIZE(conformance) + ARRAY_SIZE(faulty_only);
	struct CMUnitTest *tests = calloc(n, sizeof(*tests));
	size_t k = 0;
	for (size_t b = 0; b < nb; b++) {
		for (size_t i = 0; i < ARRAY_SIZE(conformance); i++) {
			char *name;
			if (asprintf(&name, "%s/%s", backends[b].scheme, conformance[i].name) < 0)
				return 1;
			tests[k++] = (struct CMUnitTest){name, conformance[i].fn, setup, teardown,
							 (void *)&backends[b]};
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(faulty_only); i++)
		tests[k++] = (struct CMUnitTest){faulty_only[i].name, faulty_only[i].fn, setup,
						 teardown, (void *)&backends[1]};
	int r = _cmocka_run_group_tests("sm_conformance", tests, k, NULL, NULL);
	for (size_t i = 0; i < nb * ARRAY_SIZE(conformance); i++)
		free((char *)tests[i].name);
	free(tests);
	return r;
}
