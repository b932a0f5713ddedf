/* What only the block chunk store has (sm_block.c, docs/format.md): its layout, format and
 * open refusals, damaged superblock copies, crash safety (kill -9 of a writing process, and
 * power cuts simulated by a device that drops or tears unflushed writes), corruption behind
 * its back, small-file space, log wrap-around, checkpoints and group commit.
 *
 * Images are sparse files in a temp dir under $TMPDIR (default /tmp; O_DIRECT is needed: not
 * tmpfs). BRAIDFS_SM_CRASH_ROUNDS sets the rounds of each crash test (default 50). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/util.h"
#include "storemgr/dev.h"
#include "storemgr/sm.h"
#include "storemgr/sm_block_int.h"

#define CS	   (64 * 1024u)
#define IMG_BYTES  (72ull << 20)
#define BS	   SM_BLOCK_BS
#define DEF_ROUNDS 50

struct fx {
	char dir[256];
	char img[300];
	char url[320];
	struct sm_identity id;
	struct sm_target *t;
	char err[512];
};

static unsigned rounds(void)
{
	const char *e = getenv("BRAIDFS_SM_CRASH_ROUNDS");
	long n = e ? strtol(e, NULL, 10) : DEF_ROUNDS;
	return n > 0 ? (unsigned)n : DEF_ROUNDS;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void make_image(const char *path, uint64_t bytes)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
	close(fd);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(f->dir, sizeof(f->dir), "%s/smblock.XXXXXX", tmp);
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->img, sizeof(f->img), "%s/img", f->dir);
	snprintf(f->url, sizeof(f->url), "file:%s", f->img);
	make_image(f->img, IMG_BYTES);
	f->id.format_version = SM_FORMAT_VERSION;
	f->id.target_id = 3;
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
	nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
	free(f);
	return 0;
}

static void fx_format(struct fx *f)
{
	int r = sm_format(f->url, &f->id, false, f->err, sizeof(f->err));
	if (r)
		fail_msg("format %s: %d %s", f->url, r, f->err);
}

static void fx_open(struct fx *f)
{
	int r = sm_open(f->url, &f->id, &f->t, f->err, sizeof(f->err));
	if (r)
		fail_msg("open %s: %d %s", f->url, r, f->err);
}

static void fx_format_open(struct fx *f)
{
	fx_format(f);
	fx_open(f);
}

static void fx_close(struct fx *f)
{
	sm_close(f->t);
	f->t = NULL;
}

static void expect_err(struct fx *f, int r, int want, const char *needle)
{
	if (r != want)
		fail_msg("got %d (%s), want %d; err '%s'", r, strerror(-r), want, f->err);
	if (!strstr(f->err, needle))
		fail_msg("message '%s' lacks '%s'", f->err, needle);
}

static void check_index(struct sm_target *t, bool data)
{
	char why[256] = "";
	int r = sm_block_check(t, data, why, sizeof(why));
	if (r)
		fail_msg("index check: %d %s", r, why);
}

static uint8_t pat(uint32_t seed, uint64_t i)
{
	uint64_t x = (uint64_t)seed * 0x9e3779b97f4a7c15ull + i * 0xbf58476d1ce4e5b9ull;
	return (uint8_t)(hash_mix64(x) >> 24);
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pat(seed, i);
}

static void file_rw(const char *path, void *buf, size_t len, uint64_t off, bool write)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	ssize_t n = write ? pwrite(fd, buf, len, (off_t)off) : pread(fd, buf, len, (off_t)off);
	assert_int_equal(n, (ssize_t)len);
	close(fd);
}

/* ---------------------------------------------------------------------------------------- */
/* layout, format, open */

static void test_layout(void **state)
{
	(void)state;
	struct sm_block_sb sb = {0};
	assert_int_equal(sm_block_layout((96ull << 20) / BS, &sb), 0);
	assert_int_equal(sb.log_start, 2);
	assert_int_equal(sb.log_blocks, 1024); /* docs/format.md: the 96 MiB example */
	assert_int_equal(sb.cp_blocks, 248);
	assert_int_equal(sb.data_blocks, 23054);
	assert_int_equal(sb.cp_start[0], 2 + 1024);
	assert_int_equal(sb.cp_start[1], sb.cp_start[0] + sb.cp_blocks);
	assert_int_equal(sb.data_start, sb.cp_start[1] + sb.cp_blocks);
	assert_true(sb.data_start + sb.data_blocks <= sb.dev_blocks);
	assert_true(sb.dev_blocks - sb.data_start - sb.data_blocks < 3); /* nothing wasted */
	/* FMT-12 for several sizes: the areas hold a full index, the regions fit */
	const uint64_t sizes[] = {64ull << 20, 1ull << 30, 100ull << 30, 16ull << 40};
	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		assert_int_equal(sm_block_layout(sizes[i] / BS, &sb), 0);
		assert_true(64 + 44 * sb.data_blocks <= sb.cp_blocks * BS);
		assert_true(sb.data_start + sb.data_blocks <= sb.dev_blocks);
		assert_true(sb.log_blocks >= 1024 && sb.log_blocks <= 262144);
		uint8_t blk[BS];
		sm_block_sb_render(&sb, blk);
	}
	assert_int_equal(sm_block_layout((64ull << 20) / BS - 1, &sb), -ENOSPC);
}

static void test_format_refusals(void **state)
{
	struct fx *f = *state;
	/* too small */
	char small[320], url[340];
	snprintf(small, sizeof(small), "%s/small", f->dir);
	make_image(small, 32ull << 20);
	snprintf(url, sizeof(url), "file:%s", small);
	expect_err(f, sm_format(url, &f->id, false, f->err, sizeof(f->err)), -ENOSPC,
		   "too small for a braidfs target (32.0 MiB; at least 64 MiB)");
	/* not a file */
	snprintf(url, sizeof(url), "file:%s", f->dir);
	expect_err(f, sm_format(url, &f->id, false, f->err, sizeof(f->err)), -EINVAL,
		   "not a block device or regular file");

	/* a formatted target: refused, says whose; force formats anew (a new volume) */
	fx_format(f);
	struct sm_identity id2 = f->id;
	uuid_generate_str(id2.volume_uuid);
	char want[128];
	snprintf(want, sizeof(want), "holds a braidfs target of volume %s", f->id.volume_uuid);
	expect_err(f, sm_format(f->url, &id2, false, f->err, sizeof(f->err)), -EEXIST, want);
	expect_err(f, sm_format_check(f->url, false, f->err, sizeof(f->err)), -EEXIST, want);

	/* one damaged copy: the other still names the volume */
	uint8_t junk[16];
	memset(junk, 0xee, sizeof(junk));
	file_rw(f->img, junk, sizeof(junk), 100, true);
	expect_err(f, sm_format(f->url, &id2, false, f->err, sizeof(f->err)), -EEXIST, want);
	/* both damaged: still not empty */
	file_rw(f->img, junk, sizeof(junk), BS + 100, true);
	expect_err(f, sm_format(f->url, &id2, false, f->err, sizeof(f->err)), -EEXIST,
		   "holds a damaged braidfs target: superblock checksum mismatch");

	/* data at the last byte of the probe is seen; force takes it */
	uint8_t z[2 * BS] = {0};
	file_rw(f->img, z, sizeof(z), 0, true);
	uint8_t one = 1;
	file_rw(f->img, &one, 1, SM_BLOCK_PROBE_BYTES - 1, true);
	expect_err(f, sm_format(f->url, &id2, false, f->err, sizeof(f->err)), -ENOTEMPTY,
		   "holds data: its first bytes are not zero");
	assert_int_equal(sm_format(f->url, &id2, true, f->err, sizeof(f->err)), 0);
	f->id = id2;
	fx_open(f);
}

/* A file system without O_DIRECT: ramfs (tmpfs has it since Linux 6.6). */
static void test_no_direct_io_refused(void **state)
{
	struct fx *f = *state;
	if (geteuid() != 0)
		skip();
	char mnt[320], img[340], url[360];
	snprintf(mnt, sizeof(mnt), "%s/ramfs", f->dir);
	assert_int_equal(mkdir(mnt, 0755), 0);
	if (mount("ramfs", mnt, "ramfs", 0, NULL) < 0) {
		print_message("cannot mount ramfs (%s): skipped\n", strerror(errno));
		skip();
	}
	snprintf(img, sizeof(img), "%s/img", mnt);
	make_image(img, 70ull << 20);
	snprintf(url, sizeof(url), "file:%s", img);
	int r = sm_format(url, &f->id, false, f->err, sizeof(f->err));
	umount2(mnt, MNT_DETACH);
	expect_err(f, r, -EINVAL, "does not support O_DIRECT");
}

static void test_open_refusals(void **state)
{
	struct fx *f = *state;
	struct sm_target *t;
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -ENOENT,
		   "holds no braidfs target (no superblock; format it first)");
	fx_format_open(f);
	/* another process: in use (the lock goes with the process that holds it) */
	pid_t pid = fork();
	if (pid == 0) {
		char err[256] = "";
		int r = sm_open(f->url, NULL, &t, err, sizeof(err));
		_exit(r == -EBUSY && strstr(err, "in use by another process") ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	fx_close(f);
	/* a device smaller than the target it holds */
	assert_int_equal(truncate(f->img, (off_t)(IMG_BYTES - (4 << 20))), 0);
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -EBADMSG,
		   "is smaller (68.0 MiB) than the target it holds (72.0 MiB)");
}

/* Write data, close; damage superblock copy `which` (0, 1) by a torn write (the second half
 * of the block from elsewhere); the open uses the other copy and the data is there. */
static void torn_copy(struct fx *f, int which)
{
	uint8_t garbage[BS / 2];
	fill(garbage, sizeof(garbage), 77);
	file_rw(f->img, garbage, sizeof(garbage), (uint64_t)which * BS + BS / 2, true);
	fx_open(f);
	uint8_t back[5000], data[5000];
	fill(data, sizeof(data), 5);
	assert_int_equal(f->t->ops->read(f->t, 1, 0, back, sizeof(back), 100), sizeof(back));
	assert_memory_equal(back, data, sizeof(back));
	struct sm_identity id;
	assert_int_equal(f->t->ops->identity(f->t, &id), 0);
	assert_string_equal(id.volume_uuid, f->id.volume_uuid);
	fx_close(f);
}

static void test_torn_superblock(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	uint8_t data[5000];
	fill(data, sizeof(data), 5);
	assert_int_equal(f->t->ops->write(f->t, 1, 0, data, sizeof(data), 100), sizeof(data));
	fx_close(f);
	torn_copy(f, 0); /* copy A torn: B serves (and the open rewrites one of them) */
	torn_copy(f, 1);
	torn_copy(f, 0);
	/* both copies bad: a clear error naming both reasons */
	uint8_t garbage[BS / 2];
	fill(garbage, sizeof(garbage), 78);
	file_rw(f->img, garbage, sizeof(garbage), BS / 2, true);
	file_rw(f->img, garbage, 8, BS, true); /* B: magic gone too */
	struct sm_target *t;
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -EBADMSG,
		   "both superblock copies are corrupt (A: superblock checksum mismatch");
	assert_non_null(strstr(f->err, "B: no superblock magic)"));
}

static void test_checkpoint_corrupt(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	uint8_t data[4096];
	fill(data, sizeof(data), 9);
	assert_int_equal(f->t->ops->write(f->t, 4, 0, data, sizeof(data), 0), sizeof(data));
	fx_close(f); /* a checkpoint */
	uint8_t sbb[BS];
	file_rw(f->img, sbb, BS, 0, false);
	struct sm_block_sb a, b;
	char why[160];
	assert_int_equal(sm_block_sb_parse(sbb, BS, &a, why, sizeof(why)), 0);
	file_rw(f->img, sbb, BS, BS, false);
	assert_int_equal(sm_block_sb_parse(sbb, BS, &b, why, sizeof(why)), 0);
	const struct sm_block_sb *cur = a.generation > b.generation ? &a : &b;
	uint8_t x = 0x5a;
	file_rw(f->img, &x, 1, cur->cp_start[cur->cp_area] * BS + 70, true);
	struct sm_target *t;
	expect_err(f, sm_open(f->url, NULL, &t, f->err, sizeof(f->err)), -EBADMSG,
		   "its checkpoint is corrupt (checksum");
}

/* A real block device: a loop device over the image (root only). */
static void test_loop_device(void **state)
{
	struct fx *f = *state;
	if (geteuid() != 0)
		skip();
	char cmd[600], dev[64] = "";
	snprintf(cmd, sizeof(cmd), "losetup --find --show %s 2>/dev/null", f->img);
	FILE *p = popen(cmd, "r");
	if (!p || !fgets(dev, sizeof(dev), p) || strncmp(dev, "/dev/loop", 9) != 0) {
		if (p)
			pclose(p);
		print_message("no loop device (%s): skipped\n", dev);
		skip();
	}
	pclose(p);
	dev[strcspn(dev, "\n")] = '\0';
	char url[80];
	snprintf(url, sizeof(url), "file:%s", dev);
	int r = sm_format(url, &f->id, false, f->err, sizeof(f->err));
	if (r == 0)
		r = sm_open(url, &f->id, &f->t, f->err, sizeof(f->err));
	struct sm_target *t2 = NULL;
	char err2[256] = "";
	int r2 = r ? 0 : sm_open(url, &f->id, &t2, err2, sizeof(err2)); /* O_EXCL: refused */
	uint8_t data[3 * BS + 100], back[sizeof(data)];
	fill(data, sizeof(data), 21);
	ssize_t w = r ? -1 : f->t->ops->write(f->t, 2, 1, data, sizeof(data), 50);
	ssize_t rd = r ? -1 : f->t->ops->read(f->t, 2, 1, back, sizeof(back), 50);
	struct sm_statfs sf = {0};
	if (!r)
		f->t->ops->statfs(f->t, &sf);
	fx_close(f);
	sm_close(t2);
	snprintf(cmd, sizeof(cmd), "losetup -d %s", dev);
	if (system(cmd) != 0)
		print_message("losetup -d %s failed\n", dev);
	if (r)
		fail_msg("%s: %d %s", url, r, f->err);
	assert_int_equal(r2, -EBUSY);
	assert_non_null(strstr(err2, "in use by another process"));
	assert_int_equal(w, sizeof(data));
	assert_int_equal(rd, sizeof(back));
	assert_memory_equal(back, data, sizeof(data));
	struct sm_block_sb sb = {0};
	assert_int_equal(sm_block_layout(IMG_BYTES / BS, &sb), 0);
	assert_int_equal(sf.total_bytes, sb.data_blocks * BS); /* BLKGETSIZE64 saw the image */
}

/* ---------------------------------------------------------------------------------------- */
/* corruption behind the store's back (FMT-11) */

static void test_corruption(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	const struct sm_ops *o = f->t->ops;
	uint8_t data[3 * BS], back[3 * BS];
	fill(data, sizeof(data), 11);
	assert_int_equal(o->write(f->t, 8, 2, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(o->sync_ino(f->t, 8), 0);
	uint64_t pb = sm_block_phys(f->t, 8, 2, 1);
	assert_true(pb > 0);
	uint8_t x;
	file_rw(f->img, &x, 1, pb * BS + 1234, false);
	x ^= 0x10;
	file_rw(f->img, &x, 1, pb * BS + 1234, true);

	struct sm_counters c0, c1;
	assert_int_equal(o->counters(f->t, &c0), 0);
	/* any read that touches the block fails; the others still work */
	assert_int_equal(o->read(f->t, 8, 2, back, 10, BS + 4000), -EBADMSG);
	assert_int_equal(o->read(f->t, 8, 2, back, sizeof(back), 0), -EBADMSG);
	assert_int_equal(o->read(f->t, 8, 2, back, BS, 0), BS);
	assert_memory_equal(back, data, BS);
	assert_int_equal(o->read(f->t, 8, 2, back, BS, 2 * BS), BS);
	assert_memory_equal(back, data + 2 * BS, BS);
	assert_int_equal(o->counters(f->t, &c1), 0);
	assert_int_equal(c1.csum_errors - c0.csum_errors, 2);
	/* a partial write into it cannot merge: refused, counted */
	assert_int_equal(o->write(f->t, 8, 2, data, 10, BS + 5), -EBADMSG);
	/* a whole-block write replaces it (copy-on-write: the bad block is left behind) */
	assert_int_equal(o->write(f->t, 8, 2, data + BS, BS, BS), BS);
	assert_int_equal(o->read(f->t, 8, 2, back, sizeof(back), 0), sizeof(back));
	assert_memory_equal(back, data, sizeof(back));
	assert_int_equal(o->counters(f->t, &c1), 0);
	assert_int_equal(c1.csum_errors - c0.csum_errors, 3);
	assert_true(c1.bytes_read >= 2 * BS);
	check_index(f->t, true);
}

/* ---------------------------------------------------------------------------------------- */
/* space, log, checkpoints, group commit */

#define SF_THREADS 4
struct sf_arg {
	struct sm_target *t;
	unsigned k, n;
};

static void *sf_worker(void *p)
{
	struct sf_arg *a = p;
	uint8_t data[BS];
	for (unsigned i = a->k; i < a->n; i += SF_THREADS) {
		fill(data, sizeof(data), i);
		if (a->t->ops->write(a->t, 1000 + i, 0, data, sizeof(data), 0) != sizeof(data))
			return (void *)1;
	}
	return NULL;
}

static void test_small_files(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	const struct sm_ops *o = f->t->ops;
	const unsigned N = 10000;
	uint8_t data[BS];
	struct sm_statfs s0, s1;
	assert_int_equal(o->statfs(f->t, &s0), 0);
	size_t heap0 = mallinfo2().uordblks;
	/* four writers, as a file system would have: their log records share log blocks */
	pthread_t th[SF_THREADS];
	struct sf_arg a[SF_THREADS];
	for (int k = 0; k < SF_THREADS; k++) {
		a[k] = (struct sf_arg){f->t, (unsigned)k, N};
		assert_int_equal(pthread_create(&th[k], NULL, sf_worker, &a[k]), 0);
	}
	for (int k = 0; k < SF_THREADS; k++) {
		void *rv;
		pthread_join(th[k], &rv);
		assert_null(rv);
	}
	assert_int_equal(o->sync_all(f->t), 0);
	assert_int_equal(o->statfs(f->t, &s1), 0);
	uint64_t used = s1.used_bytes - s0.used_bytes;
	size_t heap = mallinfo2().uordblks - heap0;
	assert_int_equal(sm_block_checkpoint(f->t), 0);
	struct sm_block_stats st;
	sm_block_stats(f->t, &st);
	print_message("10,000 files of 4 KiB use %llu bytes (%.3fx their size); index memory "
		      "%zu bytes per file; a checkpoint of %llu bytes held writers %.2f ms\n",
		      (unsigned long long)used, (double)used / (N * (double)BS), heap / N,
		      (unsigned long long)st.cp_bytes, (double)st.cp_freeze_ns / 1e6);
	assert_true(heap / N < 400); /* memory grows with what is stored */
	assert_true(used < 2ull * N * BS);
	assert_int_equal(s1.chunks, N);
	assert_int_equal(s1.used_bytes + s1.free_bytes, s1.total_bytes);
	fx_close(f);
	fx_open(f);
	assert_int_equal(f->t->ops->statfs(f->t, &s1), 0);
	assert_int_equal(s1.chunks, N);
	for (unsigned i = 0; i < N; i += 997) {
		fill(data, sizeof(data), i);
		uint8_t back[BS];
		assert_int_equal(f->t->ops->read(f->t, 1000 + i, 0, back, BS, 0), BS);
		assert_memory_equal(back, data, BS);
	}
	check_index(f->t, false);
}

/* Many more log blocks than the log has: it wraps, checkpoints free it, nothing is lost; a
 * crash (a child that never closes) replays across the wrap. */
static void test_log_wrap(void **state)
{
	struct fx *f = *state;
	fx_format(f);
	pid_t pid = fork();
	if (pid == 0) {
		struct sm_target *t;
		char err[256];
		if (sm_open(f->url, &f->id, &t, err, sizeof(err)))
			_exit(2);
		uint8_t d[100];
		for (unsigned i = 0; i < 2200; i++) { /* 2200 log blocks; the log has 1024 */
			fill(d, sizeof(d), i);
			if (t->ops->write(t, 5, i % 16, d, sizeof(d),
					  (i / 16) * 100 % (CS - 100)) != sizeof(d))
				_exit(3);
		}
		struct sm_block_stats st;
		sm_block_stats(t, &st);
		_exit(st.checkpoints >= 2 ? 0 : 4); /* no close: what is left must replay */
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	fx_open(f);
	struct sm_block_stats st;
	sm_block_stats(f->t, &st);
	print_message("after the crash: %llu records replayed\n", (unsigned long long)st.replayed);
	check_index(f->t, true);
	uint8_t d[100], back[100];
	for (unsigned i = 2100; i < 2200; i++) { /* the last write to each spot wins */
		unsigned spot = i % 16;
		uint64_t off = (i / 16) * 100 % (CS - 100);
		bool later = false;
		for (unsigned j = i + 1; j < 2200; j++)
			if (j % 16 == spot && (j / 16) * 100 % (CS - 100) == off)
				later = true;
		if (later)
			continue;
		fill(d, sizeof(d), i);
		assert_int_equal(f->t->ops->read(f->t, 5, spot, back, sizeof(back), off),
				 sizeof(back));
		assert_memory_equal(back, d, sizeof(d));
	}
}

struct gc_arg {
	struct sm_target *t;
	int k;
};

static void *gc_worker(void *p)
{
	struct gc_arg *a = p;
	uint8_t d[BS];
	for (unsigned i = 0; i < 400; i++) {
		fill(d, sizeof(d), (unsigned)a->k * 1000 + i);
		if (a->t->ops->write(a->t, 50 + (uint64_t)a->k, i % 8, d, BS, (i / 8) * BS % CS) !=
		    BS)
			return (void *)1;
		if (i % 50 == 49 && a->t->ops->sync_ino(a->t, 50 + (uint64_t)a->k))
			return (void *)2;
	}
	return NULL;
}

static void test_group_commit(void **state)
{
	struct fx *f = *state;
	fx_format_open(f);
	enum { T = 4 };
	pthread_t th[T];
	struct gc_arg a[T];
	for (int k = 0; k < T; k++) {
		a[k] = (struct gc_arg){f->t, k};
		assert_int_equal(pthread_create(&th[k], NULL, gc_worker, &a[k]), 0);
	}
	for (int k = 0; k < T; k++) {
		void *rv;
		pthread_join(th[k], &rv);
		assert_null(rv);
	}
	struct sm_block_stats st;
	sm_block_stats(f->t, &st);
	print_message("%d threads, %llu records in %llu log blocks, %llu syncs, %llu flushes\n", T,
		      (unsigned long long)st.log_records, (unsigned long long)st.log_blocks,
		      (unsigned long long)st.syncs, (unsigned long long)st.flushes);
	assert_int_equal(st.log_records, T * 400);
	assert_true(st.log_blocks <= st.log_records);
	assert_true(st.flushes <= st.syncs + 2 * st.checkpoints);
	check_index(f->t, true);
	fx_close(f);
	fx_open(f);
	uint8_t d[BS], back[BS];
	for (int k = 0; k < T; k++)
		for (unsigned i = 400 - 64; i < 400; i++) {
			fill(d, sizeof(d), (unsigned)k * 1000 + i);
			assert_int_equal(f->t->ops->read(f->t, 50 + (uint64_t)k, i % 8, back, BS,
							 (i / 8) * BS % CS),
					 BS);
			assert_memory_equal(back, d, BS);
		}
}

/* ---------------------------------------------------------------------------------------- */
/* a model of what chunks must hold, for the crash tests */

#define M_INOS	 2
#define M_CHUNKS 4

struct model {
	uint8_t data[M_INOS][M_CHUNKS][CS];
	uint32_t len[M_INOS][M_CHUNKS];
	bool exists[M_INOS][M_CHUNKS];
	/* the power-cut test: touched since the last sync (per 4 KiB block; len per chunk) */
	bool touched[M_INOS][M_CHUNKS][CS / BS];
	bool len_touched[M_INOS][M_CHUNKS];
};

enum { OP_WRITE = 1, OP_TRUNC, OP_PUNCH, OP_REMOVE, OP_SYNC, OP_CHECKPOINT };
struct op {
	uint8_t type, ino, idx;
	uint32_t off, len, seed;
};

static void model_touch(struct model *m, int i, int c, uint64_t from, uint64_t to)
{
	for (uint64_t b = from / BS; b < (to + BS - 1) / BS && b < CS / BS; b++)
		m->touched[i][c][b] = true;
}

static void model_apply(struct model *m, const struct op *op)
{
	int i = op->ino, c = op->idx;
	switch (op->type) {
	case OP_WRITE:
		for (uint32_t k = 0; k < op->len; k++)
			m->data[i][c][op->off + k] = pat(op->seed, k);
		m->len[i][c] = MAX(m->len[i][c], op->off + op->len);
		m->exists[i][c] = true;
		model_touch(m, i, c, op->off, op->off + op->len);
		m->len_touched[i][c] = true;
		break;
	case OP_TRUNC:
		if (op->len < m->len[i][c]) {
			memset(m->data[i][c] + op->len, 0, m->len[i][c] - op->len);
			model_touch(m, i, c, op->len, m->len[i][c]);
		}
		m->len[i][c] = op->len;
		m->exists[i][c] = op->len > 0;
		m->len_touched[i][c] = true;
		break;
	case OP_PUNCH: {
		uint32_t end = MIN(op->off + op->len, m->len[i][c]);
		if (op->off < end) {
			memset(m->data[i][c] + op->off, 0, end - op->off);
			model_touch(m, i, c, op->off, end);
		}
		break;
	}
	case OP_REMOVE:
		for (int k = c; k < M_CHUNKS; k++) {
			if (m->exists[i][k])
				model_touch(m, i, k, 0, m->len[i][k]);
			memset(m->data[i][k], 0, CS);
			m->len[i][k] = 0;
			m->exists[i][k] = false;
			m->len_touched[i][k] = true;
		}
		break;
	}
}

static void model_untouch(struct model *m)
{
	memset(m->touched, 0, sizeof(m->touched));
	memset(m->len_touched, 0, sizeof(m->len_touched));
}

static uint64_t ino_of(int base, int i)
{
	return (uint64_t)base + (uint64_t)i;
}

static int run_op(struct sm_target *t, int base, const struct op *op)
{
	const struct sm_ops *o = t->ops;
	uint64_t ino = ino_of(base, op->ino);
	switch (op->type) {
	case OP_WRITE: {
		static __thread uint8_t buf[CS];
		for (uint32_t k = 0; k < op->len; k++)
			buf[k] = pat(op->seed, k);
		return o->write(t, ino, op->idx, buf, op->len, op->off) == (ssize_t)op->len ? 0
											    : -1;
	}
	case OP_TRUNC:
		return o->truncate(t, ino, op->idx, op->len);
	case OP_PUNCH:
		return o->punch(t, ino, op->idx, op->off, op->len);
	case OP_REMOVE:
		return o->remove(t, ino, op->idx);
	case OP_SYNC:
		return o->sync_ino(t, ino);
	case OP_CHECKPOINT:
		return sm_block_checkpoint(t);
	}
	return -1;
}

static struct op random_op(uint32_t *rng)
{
	struct op op = {0};
#define RND() (*rng = *rng * 1103515245u + 12345u, (*rng >> 8) & 0xffffff)
	unsigned p = RND() % 100;
	op.ino = (uint8_t)(RND() % M_INOS);
	op.idx = (uint8_t)(RND() % M_CHUNKS);
	op.seed = RND();
	if (p < 70) {
		op.type = OP_WRITE;
		op.off = RND() % CS;
		op.len = 1 + RND() % MIN(20000u, CS - op.off);
	} else if (p < 78) {
		op.type = OP_TRUNC;
		op.len = RND() % 10 == 0 ? 0 : RND() % (CS + 1);
	} else if (p < 86) {
		op.type = OP_PUNCH;
		op.off = RND() % CS;
		op.len = 1 + RND() % 30000;
	} else if (p < 88) {
		op.type = OP_REMOVE;
	} else if (p < 99) {
		op.type = OP_SYNC;
	} else {
		op.type = OP_CHECKPOINT;
	}
#undef RND
	return op;
}

/* Does the target hold exactly m's chunks of inodes base..? (only_untouched: only what was
 * not touched since the last sync.) On a mismatch, where into why. */
static bool model_matches(struct sm_target *t, int base, const struct model *m, bool only_untouched,
			  char *why, size_t whylen)
{
	static uint8_t back[CS];
	for (int i = 0; i < M_INOS; i++)
		for (int c = 0; c < M_CHUNKS; c++) {
			uint64_t len = 0;
			int r = t->ops->chunk_length(t, ino_of(base, i), (uint32_t)c, &len);
			if (!(only_untouched && m->len_touched[i][c]) &&
			    (r != (m->exists[i][c] ? 0 : -ENOENT) || len != m->len[i][c])) {
				snprintf(why, whylen, "chunk %d.%d: length %d/%llu, model %d/%u", i,
					 c, r, (unsigned long long)len, m->exists[i][c],
					 m->len[i][c]);
				return false;
			}
			if (t->ops->read(t, ino_of(base, i), (uint32_t)c, back, CS, 0) != CS) {
				snprintf(why, whylen, "chunk %d.%d: read failed", i, c);
				return false;
			}
			for (uint32_t k = 0; k < CS; k++) {
				if (only_untouched && m->touched[i][c][k / BS])
					continue;
				if (back[k] != m->data[i][c][k]) {
					snprintf(why, whylen,
						 "chunk %d.%d byte %u: %02x, model %02x", i, c, k,
						 back[k], m->data[i][c][k]);
					return false;
				}
			}
		}
	return true;
}

/* The model from what the target holds (after a crash: the unsynced ops that survived). */
static void model_load(struct sm_target *t, int base, struct model *m)
{
	for (int i = 0; i < M_INOS; i++)
		for (int c = 0; c < M_CHUNKS; c++) {
			uint64_t len = 0;
			m->exists[i][c] =
			    t->ops->chunk_length(t, ino_of(base, i), (uint32_t)c, &len) == 0;
			m->len[i][c] = (uint32_t)len;
			assert_int_equal(
			    t->ops->read(t, ino_of(base, i), (uint32_t)c, m->data[i][c], CS, 0),
			    CS);
		}
	model_untouch(m);
}

/* ---------------------------------------------------------------------------------------- */
/* crash 1: kill -9 of a process writing from two threads (SM-3: every write that returned
 * survives; the one in flight is all there or not at all) */

#define KT_THREADS 2
#define KT_MAXOPS  200000

struct kshared {
	volatile int opened;
	uint64_t started[KT_THREADS], done[KT_THREADS]; /* __atomic */
	struct op ops[KT_THREADS][KT_MAXOPS];
};

struct kt_arg {
	struct sm_target *t;
	struct kshared *sh;
	int k;
	uint32_t rng;
};

static void *kt_worker(void *p)
{
	struct kt_arg *a = p;
	for (uint64_t n = 0; n < KT_MAXOPS; n++) {
		struct op op = random_op(&a->rng);
		a->sh->ops[a->k][n] = op;
		__atomic_store_n(&a->sh->started[a->k], n + 1, __ATOMIC_RELEASE);
		if (run_op(a->t, 100 * (a->k + 1), &op) != 0)
			_exit(10 + a->k); /* the parent sees a wrong exit, not a kill */
		__atomic_store_n(&a->sh->done[a->k], n + 1, __ATOMIC_RELEASE);
	}
	for (;;)
		pause();
	return NULL;
}

static void test_crash_kill9(void **state)
{
	struct fx *f = *state;
	fx_format(f);
	struct kshared *sh =
	    mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	struct model *m = calloc(KT_THREADS, sizeof(*m));
	struct model *alt = malloc(sizeof(*alt));
	unsigned n = rounds(), inflight_applied = 0, inflight = 0;
	uint64_t total_ops = 0, replayed = 0;
	int64_t t0 = now_monotonic_ns(), worst = 0;
	srand(42);
	for (unsigned round = 0; round < n; round++) {
		int64_t r0 = now_monotonic_ns();
		memset(sh, 0, offsetof(struct kshared, ops));
		pid_t pid = fork();
		if (pid == 0) {
			struct sm_target *t;
			char err[256];
			if (sm_open(f->url, &f->id, &t, err, sizeof(err)))
				_exit(2);
			sh->opened = 1;
			pthread_t th[KT_THREADS];
			struct kt_arg a[KT_THREADS];
			for (int k = 0; k < KT_THREADS; k++) {
				a[k] = (struct kt_arg){t, sh, k, round * 7919u + (unsigned)k};
				pthread_create(&th[k], NULL, kt_worker, &a[k]);
			}
			for (;;)
				pause();
		}
		while (!sh->opened) {
			int st;
			if (waitpid(pid, &st, WNOHANG) == pid)
				fail_msg("round %u: the writer died before it opened (%d)", round,
					 st);
			usleep(200);
		}
		usleep(10000 + (useconds_t)(rand() % 80000));
		kill(pid, SIGKILL);
		int st;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		if (!WIFSIGNALED(st))
			fail_msg("round %u: the writer exited with %d before the kill", round,
				 WEXITSTATUS(st));
		fx_open(f);
		struct sm_block_stats bs;
		sm_block_stats(f->t, &bs);
		replayed += bs.replayed;
		check_index(f->t, true);
		for (int k = 0; k < KT_THREADS; k++) {
			uint64_t done = __atomic_load_n(&sh->done[k], __ATOMIC_ACQUIRE);
			uint64_t started = __atomic_load_n(&sh->started[k], __ATOMIC_ACQUIRE);
			total_ops += done;
			for (uint64_t i = 0; i < done; i++)
				model_apply(&m[k], &sh->ops[k][i]);
			char why[256], why2[256] = "";
			if (model_matches(f->t, 100 * (k + 1), &m[k], false, why, sizeof(why)))
				continue;
			if (started > done) {
				/* the op in flight when the kill came: all of it landed */
				*alt = m[k];
				model_apply(alt, &sh->ops[k][done]);
				if (model_matches(f->t, 100 * (k + 1), alt, false, why2,
						  sizeof(why2))) {
					m[k] = *alt;
					inflight_applied++;
					continue;
				}
			}
			fail_msg(
			    "round %u thread %d after %llu ops (%llu started): %s; with the op "
			    "in flight: %s",
			    round, k, (unsigned long long)done, (unsigned long long)started, why,
			    why2);
		}
		for (int k = 0; k < KT_THREADS; k++)
			inflight += sh->started[k] > sh->done[k];
		fx_close(f);
		worst = MAX(worst, now_monotonic_ns() - r0);
	}
	print_message("%u kill -9 rounds, %llu ops, %llu records replayed, %u of %u ops in flight "
		      "landed; %.0f ms per round (worst %.0f ms)\n",
		      n, (unsigned long long)total_ops, (unsigned long long)replayed,
		      inflight_applied, inflight, (double)(now_monotonic_ns() - t0) / 1e6 / n,
		      (double)worst / 1e6);
	munmap(sh, sizeof(*sh));
	free(m);
	free(alt);
}

/* ---------------------------------------------------------------------------------------- */
/* crash 2: power cuts. A device in memory keeps what a power cut would leave (what was
 * flushed) apart from what reads see; at a cut, every 4 KiB block written since the last
 * flush lands, or not, or lands torn (a prefix of its 512-byte sectors). SM-4: every byte
 * that was synced and not changed since is intact; the index is consistent (FMT-4, -5, -7). */

struct memdev {
	struct sm_dev base;
	pthread_mutex_t lock;
	uint8_t *vol;	 /* what reads see */
	uint8_t *dur;	 /* what survives a cut */
	uint64_t *dirty; /* blocks written since the last flush */
	size_t ndirty, cap;
	uint64_t writes, flushes;
	bool dead; /* after a cut: writes and flushes go nowhere */
};

static struct memdev *memdev_of(struct sm_dev *d)
{
	return (struct memdev *)d;
}

static void md_close(struct sm_dev *d)
{
	(void)d; /* the test owns it: a target's close must not free it */
}

static int md_pread(struct sm_dev *d, void *buf, size_t len, uint64_t off)
{
	struct memdev *m = memdev_of(d);
	pthread_mutex_lock(&m->lock);
	memcpy(buf, m->vol + off, len);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int md_pwrite(struct sm_dev *d, const void *buf, size_t len, uint64_t off, unsigned flags)
{
	struct memdev *m = memdev_of(d);
	pthread_mutex_lock(&m->lock);
	if (m->dead) {
		pthread_mutex_unlock(&m->lock);
		return 0;
	}
	memcpy(m->vol + off, buf, len);
	if (flags & SM_DEV_FUA) {
		memcpy(m->dur + off, buf, len);
	} else {
		for (uint64_t b = off / BS; b < (off + len) / BS; b++) {
			if (m->ndirty == m->cap) {
				m->cap = m->cap ? m->cap * 2 : 1024;
				m->dirty = realloc(m->dirty, m->cap * sizeof(*m->dirty));
			}
			m->dirty[m->ndirty++] = b;
		}
	}
	m->writes++;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int md_submit(struct sm_dev *d, struct sm_dev_io *ios, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		ios[i].result =
		    ios[i].op == SM_DEV_READ
			? md_pread(d, ios[i].buf, ios[i].len, ios[i].off)
			: md_pwrite(d, ios[i].buf, ios[i].len, ios[i].off, ios[i].flags);
	return 0;
}

static int md_flush(struct sm_dev *d)
{
	struct memdev *m = memdev_of(d);
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->ndirty && !m->dead; i++)
		memcpy(m->dur + m->dirty[i] * BS, m->vol + m->dirty[i] * BS, BS);
	m->ndirty = 0;
	m->flushes++;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static const struct sm_dev_ops memdev_ops = {
    .scheme = "memdev",
    .close = md_close,
    .pread = md_pread,
    .pwrite = md_pwrite,
    .submit = md_submit,
    .flush = md_flush,
};

static struct memdev *memdev_new(uint64_t bytes)
{
	struct memdev *m = calloc(1, sizeof(*m));
	m->base.ops = &memdev_ops;
	m->base.size = bytes;
	m->base.lbs = 512;
	snprintf(m->base.url, sizeof(m->base.url), "memdev:");
	pthread_mutex_init(&m->lock, NULL);
	m->vol = calloc(1, bytes);
	m->dur = calloc(1, bytes);
	return m;
}

static void memdev_free(struct memdev *m)
{
	free(m->vol);
	free(m->dur);
	free(m->dirty);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* A power cut, in place: every block written since the last flush lands, or not, or lands
 * torn (a prefix of its 512-byte sectors); reads then see what the device kept. From then on
 * the device ignores writes and flushes (the target that was running is gone with the power)
 * until memdev_revive(). */
static void memdev_cut(struct memdev *m, uint32_t *rng, unsigned *torn)
{
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->ndirty; i++) {
		*rng = *rng * 1103515245u + 12345u;
		unsigned p = (*rng >> 8) % 10;
		uint64_t off = m->dirty[i] * BS;
		if (p < 4) {
			memcpy(m->dur + off, m->vol + off, BS);
		} else if (p < 6) {
			unsigned sectors = 1 + (*rng >> 20) % 7;
			memcpy(m->dur + off, m->vol + off, sectors * 512);
			(*torn)++;
		}
		memcpy(m->vol + off, m->dur + off, BS);
	}
	m->ndirty = 0;
	m->dead = true;
	pthread_mutex_unlock(&m->lock);
}

static void memdev_revive(struct memdev *m)
{
	pthread_mutex_lock(&m->lock);
	m->dead = false;
	pthread_mutex_unlock(&m->lock);
}

static void test_crash_power_cut(void **state)
{
	struct fx *f = *state;
	const uint64_t bytes = 64ull << 20;
	struct memdev *dev = memdev_new(bytes);
	assert_int_equal(sm_block_format_dev(&dev->base, "memdev:", &f->id, false, false, f->err,
					     sizeof(f->err)),
			 0);
	md_flush(&dev->base);
	struct sm_target *t;
	assert_int_equal(
	    sm_block_open_dev(&dev->base, "memdev:", &f->id, &t, f->err, sizeof(f->err)), 0);
	struct model *m = calloc(1, sizeof(*m));
	uint32_t rng = 12345;
	unsigned n = rounds(), torn = 0;
	uint64_t ops = 0, dropped = 0, replayed = 0;
	int64_t t0 = now_monotonic_ns();
	for (unsigned round = 0; round < n; round++) {
		unsigned nops = 50 + (rng >> 8) % 300;
		for (unsigned i = 0; i < nops; i++) {
			struct op op = random_op(&rng);
			assert_int_equal(run_op(t, 10, &op), 0);
			if (op.type == OP_SYNC || op.type == OP_CHECKPOINT)
				model_untouch(m); /* one log: a sync covers every inode */
			else
				model_apply(m, &op);
		}
		ops += nops;
		memdev_cut(dev, &rng, &torn);
		sm_close(t); /* its checkpoint at close goes nowhere: the power is gone */
		memdev_revive(dev);
		int r =
		    sm_block_open_dev(&dev->base, "memdev:", &f->id, &t, f->err, sizeof(f->err));
		if (r)
			fail_msg("round %u: open after the cut: %d %s", round, r, f->err);
		struct sm_block_stats st;
		sm_block_stats(t, &st);
		dropped += st.dropped;
		replayed += st.replayed;
		check_index(t, true);
		char why[256];
		if (!model_matches(t, 10, m, true, why, sizeof(why)))
			fail_msg("round %u: synced data lost: %s", round, why);
		model_load(t, 10, m);
	}
	print_message("%u power cuts after %llu ops: %llu records replayed, %llu dropped (data "
		      "not on disk), %u blocks torn; %.1f ms per round\n",
		      n, (unsigned long long)ops, (unsigned long long)replayed,
		      (unsigned long long)dropped, torn,
		      (double)(now_monotonic_ns() - t0) / 1e6 / n);
	sm_close(t);
	memdev_free(dev);
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_layout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_format_refusals, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_direct_io_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_open_refusals, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_torn_superblock, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_checkpoint_corrupt, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_loop_device, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corruption, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_small_files, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_log_wrap, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_crash_kill9, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_crash_power_cut, setup, teardown),
	};
	return cmocka_run_group_tests_name("sm_block", tests, NULL, NULL);
}
