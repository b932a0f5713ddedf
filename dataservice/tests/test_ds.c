/* The data service over real dir (and faulty) targets in a temp directory: replication,
 * addressing, truncate/punch/seek/trim, weak mode, DS-1/DS-2 with injected faults, ds_check,
 * and a small benchmark of the replica write strategies. */
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "dataservice/ds.h"
#include "dataservice/ds_internal.h"

#define CS   (64 * 1024u)
#define MAXT 4

struct dfx {
	char dir[256];
	char volume[37];
	unsigned ntargets;
	struct ds_target_cfg targets[MAXT];
	unsigned nchains;
	struct ds_chain_cfg chains[MAXT];
	struct ds_config cfg;
	struct ds *ds;
	char err[512];

	pthread_mutex_t lock;
	unsigned want_chains; /* 0: as many chains as targets */
	uint32_t cs;	      /* 0: CS */
	int cb_calls;
	int cb_fail; /* the callback answers this error when set */
	uint32_t cb_chain, cb_failed, cb_nnew;
	uint64_t cb_epoch;
	int changed_calls; /* chain_changed (rebuild) */
	uint32_t changed_chain, changed_n, changed_last;
};

/* ---------------------------------------------------------------------------------------- */
/* fixture */

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int chain_failed_cb(void *ctx, uint32_t chain_id, uint64_t epoch, uint32_t failed_target,
			   const uint32_t *new_members, uint32_t nnew, uint64_t *ret_epoch)
{
	struct dfx *f = ctx;
	(void)new_members;
	pthread_mutex_lock(&f->lock);
	f->cb_calls++;
	f->cb_chain = chain_id;
	f->cb_failed = failed_target;
	f->cb_nnew = nnew;
	f->cb_epoch = epoch;
	int r = f->cb_fail;
	pthread_mutex_unlock(&f->lock);
	if (r)
		return r;
	*ret_epoch = epoch + 1;
	return 0;
}

static int chain_changed_cb(void *ctx, uint32_t chain_id, uint64_t epoch,
			    const uint32_t *new_members, uint32_t nnew, uint64_t *ret_epoch)
{
	struct dfx *f = ctx;
	pthread_mutex_lock(&f->lock);
	int r = f->cb_fail;
	if (!r) {
		f->changed_calls++;
		f->changed_chain = chain_id;
		f->changed_n = nnew;
		f->changed_last = new_members[nnew - 1];
	}
	pthread_mutex_unlock(&f->lock);
	if (r)
		return r;
	*ret_epoch = epoch + 1;
	return 0;
}

static int setup(void **state)
{
	struct dfx *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(f->dir, sizeof(f->dir), "%s/dstest.XXXXXX", tmp);
	if (!mkdtemp(f->dir))
		return -1;
	uuid_generate_str(f->volume);
	pthread_mutex_init(&f->lock, NULL);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct dfx *f = *state;
	ds_close(f->ds);
	nftw(f->dir, rm_cb, 64, FTW_DEPTH | FTW_PHYS);
	pthread_mutex_destroy(&f->lock);
	free(f);
	return 0;
}

static void tdir(struct dfx *f, unsigned i, char *out, size_t len)
{
	snprintf(out, len, "%s/t%u", f->dir, i);
}

/* n targets (schemes[i] or "dir"), n chains of `replicas` members rotating over them. */
static void make(struct dfx *f, unsigned n, unsigned replicas, const char *const *schemes,
		 enum ds_consistency mode)
{
	f->ntargets = n;
	f->nchains = f->want_chains ? f->want_chains : n;
	for (unsigned i = 0; i < n; i++) {
		char d[300];
		tdir(f, i, d, sizeof(d));
		assert_int_equal(mkdir(d, 0755), 0);
		struct ds_target_cfg *t = &f->targets[i];
		const char *s = schemes && schemes[i] ? schemes[i] : "dir";
		snprintf(t->url, sizeof(t->url), "%s:%s%s", s, d,
			 strcmp(s, "faulty") ? "" : "?poll_ms=0");
		t->id = 10 + i;
		t->up = true;
		struct sm_identity id = {.format_version = SM_FORMAT_VERSION,
					 .target_id = t->id,
					 .chunk_size = f->cs ? f->cs : CS};
		memcpy(id.volume_uuid, f->volume, 37);
		uuid_generate_str(id.target_uuid);
		assert_int_equal(sm_format(t->url, &id, false, f->err, sizeof(f->err)), 0);
	}
	for (unsigned c = 0; c < f->nchains; c++) {
		struct ds_chain_cfg *ch = &f->chains[c];
		ch->id = 100 + c;
		ch->epoch = 1;
		ch->nmembers = replicas;
		for (unsigned k = 0; k < replicas; k++)
			ch->members[k] = 10 + (c + k) % n;
	}
	f->cfg = (struct ds_config){.chunk_size = f->cs ? f->cs : CS,
				    .consistency = mode,
				    .targets = f->targets,
				    .ntargets = n,
				    .chains = f->chains,
				    .nchains = f->nchains,
				    .chain_failed = chain_failed_cb,
				    .chain_changed = chain_changed_cb,
				    .cb_ctx = f};
	memcpy(f->cfg.volume_uuid, f->volume, 37);
	int r = ds_open(&f->cfg, &f->ds, f->err, sizeof(f->err));
	if (r)
		fail_msg("ds_open: %d %s", r, f->err);
}

static void reopen(struct dfx *f, enum ds_consistency mode)
{
	ds_close(f->ds);
	f->ds = NULL;
	f->cfg.consistency = mode;
	assert_int_equal(ds_open(&f->cfg, &f->ds, f->err, sizeof(f->err)), 0);
}

static void set_fault(struct dfx *f, unsigned t, const char *text)
{
	char d[300], p[400], tmp[410];
	tdir(f, t, d, sizeof(d));
	snprintf(p, sizeof(p), "%s/braidfs-fault", d);
	snprintf(tmp, sizeof(tmp), "%s.tmp", p);
	if (!text) {
		unlink(p);
		return;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(pwrite_full(fd, text, strlen(text), 0), 0);
	close(fd);
	assert_int_equal(rename(tmp, p), 0);
}

static void chunk_path(struct dfx *f, unsigned t, uint64_t ino, uint32_t idx, char *out, size_t len)
{
	char d[300];
	tdir(f, t, d, sizeof(d));
	snprintf(out, len, "%s/chunks/%02x/%016llx.%08x", d, (unsigned)(ino & 0xff),
		 (unsigned long long)ino, idx);
}

/* Contents of a chunk file; -1 when absent. */
static long slurp(const char *p, char **ret)
{
	int fd = open(p, O_RDONLY);
	if (fd < 0)
		return -1;
	struct stat st;
	fstat(fd, &st);
	char *b = malloc((size_t)st.st_size + 1);
	assert_int_equal(pread_full(fd, b, (size_t)st.st_size, 0), 0);
	close(fd);
	*ret = b;
	return (long)st.st_size;
}

static unsigned tindex(struct dfx *f, uint32_t id)
{
	for (unsigned i = 0; i < f->ntargets; i++)
		if (f->targets[i].id == id)
			return i;
	fail_msg("no target %u", id);
	return 0;
}

/* Every chunk of ino up to max_idx: byte-identical files (same length) on every member of its
 * current chain, and no file on any other target. Returns the number of chunks present. */
static unsigned check_replicas(struct dfx *f, uint64_t ino, uint32_t max_idx)
{
	struct ds_chain_cfg ch[MAXT];
	assert_int_equal(ds_chains(f->ds, ch, MAXT), (int)f->nchains);
	unsigned present = 0;
	for (uint32_t idx = 0; idx <= max_idx; idx++) {
		const struct ds_chain_cfg *c = &ch[((uint64_t)ds_ino_seed(ino) + idx) % f->nchains];
		char *ref = NULL;
		long reflen = -2;
		for (unsigned t = 0; t < f->ntargets; t++) {
			bool member = false;
			for (uint32_t k = 0; k < c->nmembers; k++)
				member |= tindex(f, c->members[k]) == t;
			char p[400], *b = NULL;
			chunk_path(f, t, ino, idx, p, sizeof(p));
			long n = slurp(p, &b);
			if (!member) {
				if (n >= 0)
					fail_msg("chunk %u of ino %llu on non-member target %u",
						 idx, (unsigned long long)ino, t);
				continue;
			}
			if (reflen == -2) {
				reflen = n;
				ref = b;
				continue;
			}
			if (n != reflen || (n > 0 && memcmp(ref, b, (size_t)n)))
				fail_msg(
				    "chunk %u of ino %llu differs on target %u (%ld vs %ld bytes)",
				    idx, (unsigned long long)ino, t, n, reflen);
			free(b);
		}
		if (reflen >= 0)
			present++;
		free(ref);
	}
	return present;
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

static void read_expect(struct dfx *f, uint64_t ino, const char *ref, uint64_t off, size_t len)
{
	char *b = malloc(len ? len : 1);
	assert_int_equal(ds_read(f->ds, ino, b, len, off), (ssize_t)len);
	assert_memory_equal(b, ref + off, len);
	free(b);
}

/* ---------------------------------------------------------------------------------------- */
/* replication and addressing */

static void random_writes(struct dfx *f, uint64_t ino, unsigned rounds, uint32_t seed)
{
	const size_t size = 16 * CS;
	char *ref = calloc(1, size), *buf = malloc(size);
	for (unsigned i = 0; i < rounds; i++) {
		seed = seed * 1103515245 + 12345;
		uint64_t off = (seed >> 4) % size;
		seed = seed * 1103515245 + 12345;
		size_t len = 1 + (seed >> 4) % (i % 8 == 0 ? 3 * CS : 9000);
		len = MIN(len, size - off);
		fill(buf, len, seed);
		assert_int_equal(ds_write(f->ds, ino, buf, len, off), (ssize_t)len);
		memcpy(ref + off, buf, len);
		if (i % 16 == 0) {
			seed = seed * 1103515245 + 12345;
			uint64_t ro = (seed >> 4) % size;
			read_expect(f, ino, ref, ro, MIN((size_t)(2 * CS + 17), size - ro));
		}
	}
	read_expect(f, ino, ref, 0, size);
	assert_int_equal(ds_fsync(f->ds, ino), 0);
	check_replicas(f, ino, 16);
	free(ref);
	free(buf);
}

static void test_replicas_2(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	random_writes(f, 42, 300, 1);
	random_writes(f, 43, 100, 2);
	assert_int_equal(ds_chunk_size(f->ds), CS);
}

static void test_replicas_3(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 3, NULL, DS_STRONG);
	random_writes(f, 7, 300, 3);
	/* every parallel/inline mix gives the same bytes */
	ds_set_parallel_min(f->ds, 0);
	random_writes(f, 8, 100, 4);
	ds_set_parallel_min(f->ds, SIZE_MAX);
	random_writes(f, 9, 100, 5);
}

static void test_addressing(void **state)
{
	struct dfx *f = *state;
	make(f, 4, 2, NULL, DS_STRONG);
	/* the seed spreads inodes: 4096 consecutive inodes hit every chain about evenly */
	unsigned hits[4] = {0};
	for (uint64_t ino = 1; ino <= 4096; ino++)
		hits[ds_ino_seed(ino) % 4]++;
	for (int i = 0; i < 4; i++)
		assert_true(hits[i] > 900 && hits[i] < 1150);
	assert_int_not_equal(ds_ino_seed(1), ds_ino_seed(2));
	/* and a chunk lands exactly on chains[(seed + idx) % nchains] */
	char data[100];
	fill(data, sizeof(data), 9);
	for (uint32_t idx = 0; idx < 8; idx++)
		assert_int_equal(ds_write(f->ds, 5, data, sizeof(data), (uint64_t)idx * CS + 10),
				 sizeof(data));
	assert_int_equal(check_replicas(f, 5, 8), 8);
}

static void test_read_holes(void **state)
{
	struct dfx *f = *state;
	make(f, 2, 2, NULL, DS_STRONG);
	char *ref = calloc(1, 4 * CS);
	fill(ref + 100, 100, 1);
	fill(ref + 3 * CS + 5, 1000, 2);
	assert_int_equal(ds_write(f->ds, 1, ref + 100, 100, 100), 100);
	assert_int_equal(ds_write(f->ds, 1, ref + 3 * CS + 5, 1000, 3 * CS + 5), 1000);
	read_expect(f, 1, ref, 0, 4 * CS);
	read_expect(f, 1, ref, CS - 10, CS + 20); /* spans three chunks, two of them missing */
	char b[100];
	assert_int_equal(ds_read(f->ds, 99, b, sizeof(b), 12345), sizeof(b));
	assert_true(all_zero(b, sizeof(b)));
	assert_int_equal(ds_read(f->ds, 1, b, 0, 0), 0);
	assert_int_equal(ds_write(f->ds, 1, b, 0, 0), 0);
	/* beyond the last addressable chunk */
	assert_int_equal(ds_write(f->ds, 1, b, 10, (uint64_t)CS * ((uint64_t)UINT32_MAX + 1)),
			 -EFBIG);
	assert_int_equal(check_replicas(f, 1, 4), 2);
	free(ref);
}

static void test_truncate(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	char *ref = malloc(6 * CS);
	fill(ref, 5 * CS, 11);
	memset(ref + 5 * CS, 0, CS);
	assert_int_equal(ds_write(f->ds, 3, ref, 5 * CS, 0), 5 * CS);
	assert_int_equal(check_replicas(f, 3, 5), 5);

	assert_int_equal(ds_truncate(f->ds, 3, 5 * CS, 2 * CS + CS / 2), 0);
	memset(ref + 2 * CS + CS / 2, 0, 3 * CS - CS / 2);
	assert_int_equal(check_replicas(f, 3, 5), 3);
	char p[400];
	struct stat st;
	struct ds_chain_cfg ch[MAXT];
	ds_chains(f->ds, ch, MAXT);
	const struct ds_chain_cfg *c = &ch[((uint64_t)ds_ino_seed(3) + 2) % 3];
	chunk_path(f, tindex(f, c->members[0]), 3, 2, p, sizeof(p));
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_size, CS / 2);
	read_expect(f, 3, ref, 0, 5 * CS);

	/* up: no data work, the new range reads as zeros */
	assert_int_equal(ds_truncate(f->ds, 3, 2 * CS + CS / 2, 6 * CS), 0);
	read_expect(f, 3, ref, 0, 6 * CS);

	/* down to a chunk boundary: whole chunks go */
	assert_int_equal(ds_truncate(f->ds, 3, 6 * CS, CS), 0);
	assert_int_equal(check_replicas(f, 3, 5), 1);
	memset(ref + CS, 0, 5 * CS);
	read_expect(f, 3, ref, 0, 6 * CS);
	assert_int_equal(ds_truncate(f->ds, 3, CS, 0), 0);
	assert_int_equal(check_replicas(f, 3, 5), 0);
	free(ref);
}

static void test_punch_allocate(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 3, NULL, DS_STRONG);
	char *ref = malloc(3 * CS);
	fill(ref, 3 * CS, 12);
	assert_int_equal(ds_write(f->ds, 4, ref, 3 * CS, 0), 3 * CS);
	assert_int_equal(ds_punch(f->ds, 4, CS - 1000, CS + 2000), 0);
	memset(ref + CS - 1000, 0, CS + 2000);
	read_expect(f, 4, ref, 0, 3 * CS);
	assert_int_equal(check_replicas(f, 4, 3), 3);
	for (unsigned t = 0; t < 3; t++) { /* KEEP_SIZE: chunk 1 keeps its length */
		char p[400];
		struct stat st;
		chunk_path(f, t, 4, 1, p, sizeof(p));
		assert_int_equal(stat(p, &st), 0);
		assert_int_equal(st.st_size, CS);
	}
	assert_int_equal(ds_allocate(f->ds, 6, CS / 2, 2 * CS), 0);
	assert_int_equal(check_replicas(f, 6, 3), 3);
	char z[4096];
	assert_int_equal(ds_read(f->ds, 6, z, sizeof(z), CS), sizeof(z));
	assert_true(all_zero(z, sizeof(z)));
	free(ref);
}

static void test_seek(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	char d[12288];
	fill(d, sizeof(d), 13);
	const uint64_t ino = 21, size = 5 * CS;
	assert_int_equal(ds_write(f->ds, ino, d, 4096, CS), 4096);
	assert_int_equal(ds_write(f->ds, ino, d, 4096, 3 * CS + 8192), 4096);
	uint64_t pos;
	assert_int_equal(ds_seek(f->ds, ino, size, 0, SEEK_DATA, &pos), 0);
	assert_int_equal(pos, CS);
	assert_int_equal(ds_seek(f->ds, ino, size, 0, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 0);
	assert_int_equal(ds_seek(f->ds, ino, size, CS, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, CS + 4096);
	assert_int_equal(ds_seek(f->ds, ino, size, CS + 4096, SEEK_DATA, &pos), 0);
	assert_int_equal(pos, 3 * CS + 8192);
	assert_int_equal(ds_seek(f->ds, ino, size, 3 * CS + 9000, SEEK_DATA, &pos), 0);
	assert_int_equal(pos, 3 * CS + 9000);
	assert_int_equal(ds_seek(f->ds, ino, size, 3 * CS + 8192, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 3 * CS + 12288);
	assert_int_equal(ds_seek(f->ds, ino, size, 3 * CS + 12288, SEEK_DATA, &pos), -ENXIO);
	assert_int_equal(ds_seek(f->ds, ino, size, size, SEEK_DATA, &pos), -ENXIO);
	assert_int_equal(ds_seek(f->ds, ino, size, size, SEEK_HOLE, &pos), -ENXIO);
	/* size is respected: data beyond it does not count */
	assert_int_equal(ds_seek(f->ds, ino, 3 * CS + 100, 2 * CS, SEEK_DATA, &pos), -ENXIO);
	/* a file full of data: the only hole is at its end */
	char *full = malloc(2 * CS);
	fill(full, 2 * CS, 14);
	assert_int_equal(ds_write(f->ds, 22, full, 2 * CS, 0), 2 * CS);
	assert_int_equal(ds_seek(f->ds, 22, 2 * CS, 10, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, 2 * CS);
	assert_int_equal(ds_seek(f->ds, 22, CS + 100, 10, SEEK_HOLE, &pos), 0);
	assert_int_equal(pos, CS + 100);
	assert_int_equal(ds_seek(f->ds, 22, 2 * CS, 10, SEEK_DATA, &pos), 0);
	assert_int_equal(pos, 10);
	assert_int_equal(ds_seek(f->ds, 22, 2 * CS, 0, SEEK_SET, &pos), -EINVAL);
	free(full);
}

static void test_trim_remove(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	char *ref = malloc(5 * CS);
	fill(ref, 5 * CS, 15);
	assert_int_equal(ds_write(f->ds, 30, ref, 5 * CS, 0), 5 * CS);
	/* a copy left on a former member (not in the chunk's chain now) */
	struct ds_chain_cfg ch[MAXT];
	ds_chains(f->ds, ch, MAXT);
	const struct ds_chain_cfg *c = &ch[((uint64_t)ds_ino_seed(30) + 4) % 3];
	unsigned stray = 0;
	while (stray == tindex(f, c->members[0]) || stray == tindex(f, c->members[1]))
		stray++;
	char src[400], dst[400], cmd[900];
	chunk_path(f, tindex(f, c->members[0]), 30, 4, src, sizeof(src));
	chunk_path(f, stray, 30, 4, dst, sizeof(dst));
	snprintf(cmd, sizeof(cmd), "cp %s %s", src, dst);
	assert_int_equal(system(cmd), 0);

	assert_int_equal(ds_trim(f->ds, 30, CS + 10), 0);
	assert_int_equal(access(dst, F_OK), -1); /* SM-5 on every target */
	assert_int_equal(check_replicas(f, 30, 5), 2);
	memset(ref + CS + 10, 0, 4 * CS - 10);
	read_expect(f, 30, ref, 0, 5 * CS);

	assert_int_equal(ds_remove(f->ds, 30), 0);
	assert_int_equal(check_replicas(f, 30, 5), 0);
	free(ref);
}

/* ---------------------------------------------------------------------------------------- */
/* weak mode */

static void test_weak(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 3, NULL, DS_WEAK);
	ds_set_weak_queue_max(f->ds, 256 * 1024); /* small: writers block on it */
	const size_t size = 16 * CS;
	char *ref = calloc(1, size), *buf = malloc(size);
	uint32_t seed = 77;
	for (int i = 0; i < 400; i++) {
		seed = seed * 1103515245 + 12345;
		uint64_t off = (seed >> 4) % size;
		size_t len = MIN((size_t)(1 + (seed >> 8) % 20000), size - off);
		fill(buf, len, seed);
		assert_int_equal(ds_write(f->ds, 50, buf, len, off), (ssize_t)len);
		memcpy(ref + off, buf, len);
		if (i == 200) { /* ordered after the queued writes on every replica */
			assert_int_equal(ds_truncate(f->ds, 50, size, 5 * CS + 3), 0);
			memset(ref + 5 * CS + 3, 0, size - 5 * CS - 3);
		}
		if (i == 300)
			assert_int_equal(ds_punch(f->ds, 50, 2 * CS, CS), 0),
			    memset(ref + 2 * CS, 0, CS);
	}
	read_expect(f, 50, ref, 0, size);
	assert_int_equal(ds_fsync(f->ds, 50), 0);
	struct ds_stats st;
	ds_stats(f->ds, &st);
	assert_true(st.repl_lag_bytes <= 256 * 1024 + 20000);
	ds_close(f->ds); /* drains */
	f->ds = NULL;
	reopen(f, DS_STRONG);
	ds_stats(f->ds, &st);
	assert_int_equal(st.repl_lag_bytes, 0);
	check_replicas(f, 50, 16);
	read_expect(f, 50, ref, 0, size);
	free(ref);
	free(buf);
}

static void test_weak_primary_fails(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"faulty", "dir"};
	make(f, 2, 2, s, DS_WEAK);
	char *data = malloc(4 * CS);
	fill(data, 4 * CS, 16);
	assert_int_equal(ds_write(f->ds, 60, data, 4 * CS, 0), 4 * CS);
	set_fault(f, 0, "write=EIO\nread=EIO\nsync=EIO\n");
	/* chunks whose primary is target 0 fail over to target 1, after it caught up */
	assert_int_equal(ds_write(f->ds, 60, data, 4 * CS, 0), 4 * CS);
	assert_true(f->cb_calls >= 1);
	read_expect(f, 60, data, 0, 4 * CS);
	assert_int_equal(ds_fsync(f->ds, 60), 0);
	free(data);
}

/* ---------------------------------------------------------------------------------------- */
/* DS-1, DS-2 */

/* n targets, all in the one chain */
static void one_chain(struct dfx *f, const char *const *schemes, unsigned n)
{
	f->want_chains = 1;
	make(f, n, n, schemes, DS_STRONG);
}

static void chain0(struct dfx *f, struct ds_chain_cfg *ret)
{
	struct ds_chain_cfg ch[MAXT];
	ds_chains(f->ds, ch, MAXT);
	*ret = ch[0];
}

static void test_ds1_write_eio(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"dir", "faulty"};
	make(f, 2, 2, s, DS_STRONG); /* chains {10,11} and {11,10} */
	set_fault(f, 1, "write=EIO\n");
	char data[5000];
	fill(data, sizeof(data), 17);
	/* write every chunk of a few chunks, so both chains see the failure */
	for (uint32_t idx = 0; idx < 4; idx++)
		assert_int_equal(ds_write(f->ds, 70, data, sizeof(data), (uint64_t)idx * CS),
				 sizeof(data));
	assert_int_equal(f->cb_calls, 2); /* once per chain, then it is out */
	assert_int_equal(f->cb_failed, 11);
	assert_int_equal(f->cb_nnew, 1);
	struct ds_chain_cfg ch[MAXT];
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 2);
	for (int c = 0; c < 2; c++) {
		assert_int_equal(ch[c].nmembers, 1);
		assert_int_equal(ch[c].members[0], 10);
		assert_int_equal(ch[c].epoch, 2);
	}
	for (uint32_t idx = 0; idx < 4; idx++) {
		char back[5000];
		assert_int_equal(ds_read(f->ds, 70, back, sizeof(back), (uint64_t)idx * CS),
				 sizeof(back));
		assert_memory_equal(back, data, sizeof(back));
	}
	assert_int_equal(ds_fsync(f->ds, 70), 0);
	struct ds_stats st;
	ds_stats(f->ds, &st);
	assert_true(st.replica_failures >= 2);
	/* the failed target is not asked again */
	assert_int_equal(ds_write(f->ds, 70, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(f->cb_calls, 2);
}

static void test_ds1_all_fail(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"faulty", "faulty"};
	one_chain(f, s, 2);
	set_fault(f, 0, "write=EIO\n");
	set_fault(f, 1, "write=EIO\n");
	char data[100] = {1};
	assert_int_equal(ds_write(f->ds, 71, data, sizeof(data), 0), -EIO);
	struct ds_chain_cfg c;
	chain0(f, &c);
	assert_int_equal(c.nmembers, 2); /* nothing to fall back to: no one is removed */
	assert_int_equal(f->cb_calls, 0);
}

static void test_ds1_enospc(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"faulty"};
	one_chain(f, s, 1);
	set_fault(f, 0, "write=ENOSPC\n");
	char data[100] = {1};
	assert_int_equal(ds_write(f->ds, 72, data, sizeof(data), 0), -ENOSPC);
	set_fault(f, 0, "sync=EIO\n");
	assert_int_equal(ds_fsync(f->ds, 72), -EIO);
	struct ds_chain_cfg c;
	chain0(f, &c);
	assert_int_equal(c.nmembers, 1);
	assert_int_equal(c.epoch, 1);
	set_fault(f, 0, NULL);
	assert_int_equal(ds_write(f->ds, 72, data, sizeof(data), 0), sizeof(data));
}

static void test_ds1_callback_fails(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"dir", "faulty"};
	one_chain(f, s, 2);
	set_fault(f, 1, "write=EIO\n");
	f->cb_fail = -ETIMEDOUT; /* the metadata database is unreachable */
	char data[100] = {1};
	assert_int_equal(ds_write(f->ds, 73, data, sizeof(data), 0), -EIO);
	struct ds_chain_cfg c;
	chain0(f, &c);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.epoch, 1);
	f->cb_fail = 0;
	assert_int_equal(ds_write(f->ds, 73, data, sizeof(data), 0), sizeof(data));
	chain0(f, &c);
	assert_int_equal(c.nmembers, 1);
	assert_int_equal(c.epoch, 2);
}

static void test_ds1_sync(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"dir", "faulty", "dir"};
	one_chain(f, s, 3);
	char data[100] = {1};
	assert_int_equal(ds_write(f->ds, 74, data, sizeof(data), 0), sizeof(data));
	set_fault(f, 1, "sync=EIO\n");
	assert_int_equal(ds_fsync(f->ds, 74), 0);
	struct ds_chain_cfg c;
	chain0(f, &c);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.members[0], 10);
	assert_int_equal(c.members[1], 12);
	assert_int_equal(f->cb_failed, 11);
	assert_int_equal(ds_sync_all(f->ds), 0);
}

static void test_ds2_read_failover(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"faulty", "faulty"};
	one_chain(f, s, 2);
	char data[3000], back[3000];
	fill(data, sizeof(data), 18);
	assert_int_equal(ds_write(f->ds, 75, data, sizeof(data), 100), sizeof(data));
	set_fault(f, 0, "read=EIO\n");
	assert_int_equal(ds_read(f->ds, 75, back, sizeof(back), 100), sizeof(back));
	assert_memory_equal(back, data, sizeof(back));
	struct ds_chain_cfg c;
	chain0(f, &c);
	assert_int_equal(c.nmembers, 1);
	assert_int_equal(c.members[0], 11);
	assert_int_equal(f->cb_calls, 1);
	/* a lone replica that cannot read: the error goes up */
	set_fault(f, 1, "read=EIO\n");
	assert_int_equal(ds_read(f->ds, 75, back, sizeof(back), 100), -EIO);
}

/* ---------------------------------------------------------------------------------------- */
/* DS-4: read repair */

#define RR_INO 77

static void stats(struct dfx *f, struct ds_stats *st)
{
	ds_stats(f->ds, st);
}

/* One chain of n faulty members; bad is a bit mask of members (by chain position) whose copy of
 * chunk 0 of RR_INO fails its checksum. */
static void read_repair_case(struct dfx *f, unsigned n, unsigned bad, enum ds_consistency mode)
{
	const char *const s[] = {"faulty", "faulty", "faulty"};
	f->want_chains = 1;
	make(f, n, n, s, mode);
	const size_t len = CS + 5000;
	char *data = malloc(len), *back = malloc(len);
	fill(data, len, 100 + bad);
	assert_int_equal(ds_write(f->ds, RR_INO, data, len, 0), (ssize_t)len);
	assert_int_equal(ds_fsync(f->ds, RR_INO), 0);
	for (unsigned k = 0; k < n; k++)
		if (bad & (1u << k))
			set_fault(f, k, "corrupt=1\nino=77\nidx=0\n");

	/* members are asked in chain order: the bad ones before the first good one are seen */
	unsigned seen = 0;
	while (seen < n && (bad & (1u << seen)))
		seen++;
	bool all_bad = seen == n;
	struct ds_stats st;
	for (int round = 0; round < 2; round++) {
		memset(back, 0, len);
		ssize_t r = ds_read(f->ds, RR_INO, back, len, 0); /* chunk 0 (bad) and 1 */
		stats(f, &st);
		if (all_bad) {
			assert_int_equal(r, -EIO);
			assert_int_equal(st.csum_errors_seen, (round + 1) * n);
			assert_int_equal(st.repair_failures, (round + 1) * n);
			assert_int_equal(st.repairs_done, 0);
		} else {
			/* the data is right; the second read meets no error: it was repaired */
			assert_int_equal(r, (ssize_t)len);
			assert_memory_equal(back, data, len);
			assert_int_equal(st.csum_errors_seen, seen);
			assert_int_equal(st.repairs_done, seen);
			assert_int_equal(st.repair_failures, 0);
		}
		assert_int_equal(st.replica_failures, 0);
	}
	/* never a replica failure: the chain is untouched */
	struct ds_chain_cfg c;
	chain0(f, &c);
	assert_int_equal(c.nmembers, n);
	assert_int_equal(c.epoch, 1);
	assert_int_equal(f->cb_calls, 0);
	if (all_bad) {
		/* the bytes on the media were never touched: with the corruption gone they read */
		for (unsigned k = 0; k < n; k++)
			set_fault(f, k, NULL);
		assert_int_equal(ds_read(f->ds, RR_INO, back, len, 0), (ssize_t)len);
		assert_memory_equal(back, data, len);
	}
	check_replicas(f, RR_INO, 1);
	free(data);
	free(back);
}

static void test_ds4_primary_bad(void **state)
{
	read_repair_case(*state, 2, 0x1, DS_STRONG);
}

static void test_ds4_secondary_bad(void **state)
{
	/* reads go to the primary: a bad secondary is not seen (scrub finds it) */
	read_repair_case(*state, 2, 0x2, DS_STRONG);
}

static void test_ds4_both_bad(void **state)
{
	read_repair_case(*state, 2, 0x3, DS_STRONG);
}

static void test_ds4_three_replicas(void **state)
{
	struct dfx *f = *state;
	for (unsigned bad = 1; bad < 8; bad++) {
		read_repair_case(f, 3, bad, DS_STRONG);
		teardown(state);
		setup(state);
		f = *state;
	}
}

static void test_ds4_weak(void **state)
{
	read_repair_case(*state, 2, 0x1, DS_WEAK);
}

/* The bad copy cannot be rewritten (its target refuses writes): the read is still served,
 * the failure counted, the chain untouched, and the next read tries again. */
static void test_ds4_repair_fails(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"faulty", "faulty"};
	one_chain(f, s, 2);
	char data[3000], back[3000];
	fill(data, sizeof(data), 7);
	assert_int_equal(ds_write(f->ds, 78, data, sizeof(data), 0), sizeof(data));
	set_fault(f, 0, "corrupt=1\nwrite=EIO\npunch=EIO\n");
	struct ds_stats st;
	for (uint64_t round = 1; round <= 2; round++) {
		assert_int_equal(ds_read(f->ds, 78, back, sizeof(back), 0), sizeof(back));
		assert_memory_equal(back, data, sizeof(back));
		stats(f, &st);
		assert_int_equal(st.csum_errors_seen, round);
		assert_int_equal(st.repair_failures, round);
		assert_int_equal(st.repairs_done, 0);
	}
	struct ds_chain_cfg c;
	chain0(f, &c);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(f->cb_calls, 0);
	/* a chunk that is absent everywhere reads as zeros, corrupt=1 or not (SM-2) */
	assert_int_equal(ds_read(f->ds, 79, back, sizeof(back), 0), sizeof(back));
	assert_true(all_zero(back, sizeof(back)));
}

static void test_down_target(void **state)
{
	struct dfx *f = *state;
	make(f, 2, 2, NULL, DS_STRONG);
	ds_close(f->ds);
	f->ds = NULL;
	f->targets[1].up = false; /* known offline: not opened, leaves its chains on first write */
	assert_int_equal(ds_open(&f->cfg, &f->ds, f->err, sizeof(f->err)), 0);
	char data[100] = {2};
	assert_int_equal(ds_write(f->ds, 76, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(ds_read(f->ds, 76, data, sizeof(data), 0), sizeof(data));
	assert_true(f->cb_calls >= 1);
	assert_int_equal(f->cb_failed, 11);
}

static void test_open_errors(void **state)
{
	struct dfx *f = *state;
	make(f, 2, 2, NULL, DS_STRONG);
	ds_close(f->ds);
	f->ds = NULL;
	struct ds *ds = NULL;
	struct ds_config cfg = f->cfg;
	uuid_generate_str(cfg.volume_uuid);
	assert_int_equal(ds_open(&cfg, &ds, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "belongs to volume"));
	assert_non_null(strstr(f->err, f->targets[0].url));

	struct ds_target_cfg t[2];
	memcpy(t, f->targets, sizeof(t));
	snprintf(t[1].url, sizeof(t[1].url), "dir:%s/nope", f->dir);
	cfg = f->cfg;
	cfg.targets = t;
	assert_int_equal(ds_open(&cfg, &ds, f->err, sizeof(f->err)), -ENOENT);
	assert_non_null(strstr(f->err, "does not exist"));

	struct ds_chain_cfg c[2];
	memcpy(c, f->chains, sizeof(c));
	c[1].members[1] = 99;
	cfg = f->cfg;
	cfg.chains = c;
	assert_int_equal(ds_open(&cfg, &ds, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "unknown target 99"));
	cfg = f->cfg;
	cfg.chunk_size = 1000;
	assert_int_equal(ds_open(&cfg, &ds, f->err, sizeof(f->err)), -EINVAL);
	cfg = f->cfg;
	cfg.chunk_size = CS * 2; /* the targets say CS */
	assert_int_equal(ds_open(&cfg, &ds, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "chunk size"));
	assert_null(ds);
	ds_close(NULL);
}

static void test_statfs(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	uint64_t total, avail;
	assert_int_equal(ds_statfs(f->ds, &total, &avail), 0);
	struct sm_target *t;
	assert_int_equal(sm_open(f->targets[0].url, NULL, &t, f->err, sizeof(f->err)), 0);
	struct sm_statfs st;
	assert_int_equal(t->ops->statfs(t, &st), 0);
	sm_close(t);
	/* three targets (all on one file system here), each in 2 of 3 chains: x 3/2 */
	assert_int_equal(total, st.total_bytes * 3 / 2);
	assert_true(avail <= total);
	assert_true(avail > st.free_bytes); /* 1.5 x, minus what others wrote meanwhile */
}

/* ---------------------------------------------------------------------------------------- */
/* ds_check */

struct report_ctx {
	int n;
	char what[16][24];
	uint32_t target[16];
	uint64_t size_of_81;
};

static bool keep_cb(void *ctx, uint64_t ino, uint64_t *ret_size)
{
	struct report_ctx *r = ctx;
	if (ino == 82)
		return false; /* deleted */
	*ret_size = ino == 81 ? r->size_of_81 : UINT64_MAX;
	return true;
}

static void report_cb(void *ctx, const char *what, uint64_t ino, uint32_t idx, uint32_t target,
		      bool repaired)
{
	struct report_ctx *r = ctx;
	(void)ino, (void)idx, (void)repaired;
	if (r->n < 16) {
		snprintf(r->what[r->n], sizeof(r->what[0]), "%s", what);
		r->target[r->n] = target;
	}
	r->n++;
}

static void flip_byte(const char *p, off_t off)
{
	int fd = open(p, O_RDWR);
	assert_true(fd >= 0);
	char c;
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x40;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static void test_check(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	char *data = malloc(3 * CS);
	fill(data, 3 * CS, 19);
	for (uint64_t ino = 80; ino < 83; ino++)
		assert_int_equal(ds_write(f->ds, ino, data, 3 * CS, 0), 3 * CS);
	struct report_ctx rc = {.size_of_81 = 3 * CS};
	struct ds_check_result res;
	assert_int_equal(ds_check(f->ds, false, NULL, report_cb, &rc, &res), 0);
	assert_int_equal(res.chunks, 9);
	assert_true(res.bytes_compared >= 9 * 2 * (uint64_t)CS);
	assert_int_equal(rc.n, 0);

	/* a flipped byte on a secondary */
	struct ds_chain_cfg ch[MAXT];
	ds_chains(f->ds, ch, MAXT);
	const struct ds_chain_cfg *c = &ch[((uint64_t)ds_ino_seed(80) + 1) % 3];
	char sec[400], pri[400];
	chunk_path(f, tindex(f, c->members[1]), 80, 1, sec, sizeof(sec));
	chunk_path(f, tindex(f, c->members[0]), 80, 1, pri, sizeof(pri));
	flip_byte(sec, 12345);
	assert_int_equal(ds_check(f->ds, false, NULL, report_cb, &rc, &res), 1);
	assert_int_equal(res.mismatches, 1);
	assert_string_equal(rc.what[0], "mismatch");
	rc.n = 0;
	assert_int_equal(ds_check(f->ds, true, NULL, report_cb, &rc, &res), 0);
	assert_int_equal(res.repaired, 1);
	check_replicas(f, 80, 3);

	/* a missing replica, and an all-zero one that equals a missing one (SM-2); reopen so
	 * that no cached fd hides the unlink done behind the target's back */
	unlink(sec);
	reopen(f, DS_STRONG);
	rc.n = 0;
	assert_int_equal(ds_check(f->ds, false, NULL, report_cb, &rc, &res), 1);
	assert_int_equal(res.missing, 1);
	assert_string_equal(rc.what[0], "missing");
	assert_int_equal(ds_check(f->ds, true, NULL, NULL, NULL, &res), 0);
	check_replicas(f, 80, 3);
	/* missing on the primary: the secondary's copy is the one restored, never the absence
	 * copied over it */
	unlink(pri);
	reopen(f, DS_STRONG);
	rc.n = 0;
	assert_int_equal(ds_check(f->ds, false, NULL, report_cb, &rc, &res), 1);
	assert_int_equal(res.missing, 1);
	assert_int_equal(rc.target[0], c->members[0]);
	assert_int_equal(ds_check(f->ds, true, NULL, NULL, NULL, &res), 0);
	assert_int_equal(res.repaired, 1);
	assert_int_equal(access(pri, F_OK), 0);
	check_replicas(f, 80, 3);
	char back1[4096];
	assert_int_equal(ds_read(f->ds, 80, back1, sizeof(back1), CS), sizeof(back1));
	assert_memory_equal(back1, data + CS, sizeof(back1));
	const struct ds_chain_cfg *c5 = &ch[((uint64_t)ds_ino_seed(85) + 0) % 3];
	char zp[400];
	chunk_path(f, tindex(f, c5->members[0]), 85, 0, zp, sizeof(zp));
	int fd = open(zp, O_WRONLY | O_CREAT, 0644);
	assert_int_equal(ftruncate(fd, 8192), 0);
	close(fd);
	assert_int_equal(ds_check(f->ds, false, NULL, NULL, NULL, &res), 0);

	/* a stray, an orphan inode, data beyond EOF */
	unsigned stray = 0;
	while (stray == tindex(f, c->members[0]) || stray == tindex(f, c->members[1]))
		stray++;
	char sp[400], cmd[900];
	chunk_path(f, stray, 80, 1, sp, sizeof(sp));
	snprintf(cmd, sizeof(cmd), "cp %s %s", pri, sp);
	assert_int_equal(system(cmd), 0);
	rc = (struct report_ctx){.size_of_81 = CS + 100};
	int problems = ds_check(f->ds, false, keep_cb, report_cb, &rc, &res);
	assert_int_equal(res.strays, 1);
	/* ino 82: 3 chunks x 2 copies; ino 81: chunk 1 (2 copies) and chunk 2 (2 copies) */
	assert_int_equal(res.beyond_eof, 6 + 4);
	assert_int_equal(problems, 11);
	assert_int_equal(ds_check(f->ds, true, keep_cb, NULL, &rc, &res), 0);
	assert_int_equal(res.repaired, 11);
	assert_int_equal(access(sp, F_OK), -1);
	assert_int_equal(check_replicas(f, 82, 3), 0);
	assert_int_equal(check_replicas(f, 81, 3), 2);
	assert_int_equal(ds_check(f->ds, false, keep_cb, NULL, &rc, &res), 0);
	char back[200];
	assert_int_equal(ds_read(f->ds, 81, back, sizeof(back), CS), sizeof(back));
	assert_memory_equal(back, data + CS, 100);
	assert_true(all_zero(back + 100, 100));
	free(data);
}

/* Three copies: the primary's lost, member 1's failing its checksum, member 2 the only good
 * one. The good copy must be the source of both repairs: neither the absent primary copied over
 * member 1 (a bad copy's repair) nor the absence copied over member 2 (a "missing" repair). */
static void test_check_lost_primary_bad_secondary(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"faulty", "faulty", "faulty"};
	one_chain(f, s, 3); /* members 10, 11, 12 in that order */
	const size_t len = CS / 2 + 321;
	char *data = malloc(len);
	fill(data, len, 29);
	assert_int_equal(ds_write(f->ds, 87, data, len, 0), (ssize_t)len);
	assert_int_equal(ds_fsync(f->ds, 87), 0);
	char pri[400];
	chunk_path(f, 0, 87, 0, pri, sizeof(pri));
	assert_int_equal(unlink(pri), 0);
	reopen(f, DS_STRONG); /* no cached fd hides the unlink */
	set_fault(f, 1, "corrupt=1\nino=87\nidx=0\n");

	struct report_ctx rc = {0};
	struct ds_check_result res;
	assert_int_equal(ds_check(f->ds, true, NULL, report_cb, &rc, &res), 0);
	assert_int_equal(res.csum_errors, 1);
	assert_int_equal(res.missing, 1);
	assert_int_equal(res.mismatches, 0);
	assert_int_equal(res.unrecoverable, 0);
	assert_int_equal(res.repaired, 2);
	assert_int_equal(rc.n, 2);
	/* the data is on all three, byte for byte */
	for (unsigned t = 0; t < 3; t++) {
		char p[400], *b = NULL;
		chunk_path(f, t, 87, 0, p, sizeof(p));
		assert_int_equal(slurp(p, &b), (long)len);
		assert_memory_equal(b, data, len);
		free(b);
	}
	check_replicas(f, 87, 0);
	assert_int_equal(ds_check(f->ds, false, NULL, NULL, NULL, &res), 0);
	assert_int_equal(res.csum_errors, 0);
	set_fault(f, 1, NULL);
	char *back = malloc(len);
	assert_int_equal(ds_read(f->ds, 87, back, len, 0), (ssize_t)len);
	assert_memory_equal(back, data, len);
	free(back);
	free(data);
}

/* ---------------------------------------------------------------------------------------- */
/* concurrency and a benchmark */

struct cw {
	struct dfx *f;
	uint64_t ino;
	int rc;
};

static void *conc_main(void *arg)
{
	struct cw *w = arg;
	char buf[20000];
	uint32_t seed = (uint32_t)w->ino;
	for (int i = 0; i < 300; i++) {
		seed = seed * 1103515245 + 12345;
		uint64_t off = (seed >> 4) % (8 * CS);
		size_t len = 1 + (seed >> 9) % sizeof(buf);
		fill(buf, len, seed);
		if (ds_write(w->f->ds, w->ino, buf, len, off) != (ssize_t)len)
			w->rc = 1;
		if (i % 64 == 0 && ds_fsync(w->f->ds, w->ino))
			w->rc = 2;
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	pthread_t th[4];
	struct cw w[4];
	for (int i = 0; i < 4; i++) {
		/* two threads per inode: overlapping writes from threads, ordered per chunk */
		w[i] = (struct cw){f, 90 + (uint64_t)(i / 2), 0};
		pthread_create(&th[i], NULL, conc_main, &w[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].rc, 0);
	}
	check_replicas(f, 90, 9);
	check_replicas(f, 91, 9);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double bench_writes(struct dfx *f, uint64_t ino, size_t bs, size_t par_min, double secs)
{
	char *buf = malloc(bs);
	fill(buf, bs, 20);
	ds_set_parallel_min(f->ds, par_min);
	uint64_t span = 64ULL << 20;
	unsigned long ops = 0;
	double t0 = now_s(), t;
	do {
		for (int i = 0; i < 64; i++, ops++)
			assert_int_equal(ds_write(f->ds, ino, buf, bs, (ops * bs) % span),
					 (ssize_t)bs);
		t = now_s();
	} while (t - t0 < secs);
	free(buf);
	ds_set_parallel_min(f->ds, DS_PAR_MIN_DEFAULT);
	return (double)ops / (t - t0);
}

static double bench_fsync(struct dfx *f, uint64_t ino, bool parallel, double secs)
{
	char buf[4096];
	fill(buf, sizeof(buf), 21);
	ds_set_parallel_sync(f->ds, parallel);
	unsigned long ops = 0;
	double t0 = now_s(), t;
	do {
		assert_int_equal(ds_write(f->ds, ino, buf, sizeof(buf), (ops % 64) * 4096), 4096);
		assert_int_equal(ds_fsync(f->ds, ino), 0);
		ops++;
		t = now_s();
	} while (t - t0 < secs);
	ds_set_parallel_sync(f->ds, true);
	return (double)ops / (t - t0);
}

static void test_bench(void **state)
{
	struct dfx *f = *state;
	f->cs = 4 << 20; /* a production-like chunk: a 1 MiB write is one piece per replica */
	make(f, 2, 2, NULL, DS_STRONG);
	double secs = getenv("DS_BENCH_SECS") ? atof(getenv("DS_BENCH_SECS")) : 0.5;
	/* warm the chunk files and the fd cache */
	bench_writes(f, 1, 4096, SIZE_MAX, 0.1);
	bench_writes(f, 2, 1 << 20, SIZE_MAX, 0.1);
	double in4 = bench_writes(f, 1, 4096, SIZE_MAX, secs);
	double po4 = bench_writes(f, 1, 4096, 0, secs);
	double in1m = bench_writes(f, 2, 1 << 20, SIZE_MAX, secs);
	double po1m = bench_writes(f, 2, 1 << 20, 0, secs);
	print_message(
	    "bench 2 replicas, 4 MiB chunks, 4 KiB writes: inline %.0f ops/s, pool %.0f ops/s\n",
	    in4, po4);
	print_message("bench 2 replicas, 1 MiB writes: inline %.0f MiB/s, pool %.0f MiB/s\n", in1m,
		      po1m);
	double in128 = bench_writes(f, 2, 128 << 10, SIZE_MAX, secs);
	double po128 = bench_writes(f, 2, 128 << 10, 0, secs);
	print_message("bench 2 replicas, 128 KiB writes: inline %.0f MiB/s, pool %.0f MiB/s\n",
		      in128 / 8, po128 / 8);
	double fi = bench_fsync(f, 3, false, secs);
	double fp = bench_fsync(f, 3, true, secs);
	print_message("bench 2 replicas, 4 KiB write+fsync: inline %.0f ops/s, pool %.0f ops/s\n",
		      fi, fp);
	f->cfg.consistency = DS_WEAK;
	reopen(f, DS_WEAK);
	double wk4 = bench_writes(f, 1, 4096, SIZE_MAX, secs);
	print_message("bench 2 replicas, 4 KiB writes, weak: %.0f ops/s\n", wk4);
}

/* ---------------------------------------------------------------------------------------- */
/* rebuild */

struct prog_seen {
	unsigned calls;
	struct ds_rebuild_progress last;
};

static void prog_cb(void *ctx, const struct ds_rebuild_progress *p)
{
	struct prog_seen *ps = ctx;
	assert_true(p->chunks_done <= p->chunks_total);
	assert_true(p->bytes_done <= p->bytes_total);
	if (ps->calls)
		assert_true(p->chunks_done >= ps->last.chunks_done);
	ps->calls++;
	ps->last = *p;
}

static void wr(struct dfx *f, uint64_t ino, char *ref, uint64_t off, size_t len, uint32_t seed)
{
	char *b = malloc(len);
	fill(b, len, seed);
	assert_int_equal(ds_write(f->ds, ino, b, len, off), (ssize_t)len);
	memcpy(ref + off, b, len);
	free(b);
}

static unsigned files_on(struct dfx *f, unsigned t, uint64_t ino, uint32_t max_idx)
{
	unsigned n = 0;
	for (uint32_t idx = 0; idx <= max_idx; idx++) {
		char p[400];
		chunk_path(f, t, ino, idx, p, sizeof(p));
		n += access(p, F_OK) == 0;
	}
	return n;
}

static void test_rebuild(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"dir", "dir", "faulty"};
	make(f, 3, 2, s, DS_STRONG); /* chains 100 {10,11}, 101 {11,12}, 102 {12,10} */
	const size_t size = 8 * CS;
	char *a = calloc(1, size), *b = calloc(1, size), *c = calloc(1, size), *d = calloc(1, size);
	for (uint32_t i = 0; i < 8; i++) {
		wr(f, 90, a, (uint64_t)i * CS, CS, 100 + i);
		wr(f, 91, b, (uint64_t)i * CS + 100, 3000, 200 + i);
		wr(f, 92, c, (uint64_t)i * CS, CS / 2, 300 + i);
	}
	for (uint64_t ino = 90; ino <= 92; ino++)
		assert_int_equal(ds_fsync(f->ds, ino), 0);

	/* target 12 fails a write: it leaves chains 101 and 102 (8 consecutive chunks of 90 hit
	 * every chain) */
	set_fault(f, 2, "write=EIO\n");
	for (uint32_t i = 0; i < 8; i++)
		wr(f, 90, a, (uint64_t)i * CS + 1000, 5000, 400 + i);
	struct ds_chain_cfg ch[MAXT];
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 3);
	for (int k = 1; k < 3; k++) {
		assert_int_equal(ch[k].nmembers, 1);
		assert_int_equal(ch[k].epoch, 2);
	}
	/* while it is out it misses everything, removes and truncates included: it keeps stale
	 * chunks of 92, stale tails of 91, and lacks 93 */
	set_fault(f, 2, "all=EIO\n");
	assert_true(files_on(f, 2, 92, 7) > 0);
	assert_int_equal(ds_remove(f->ds, 92), 0);
	memset(c, 0, size);
	assert_int_equal(ds_truncate(f->ds, 91, size, 3 * CS + 50), 0);
	memset(b + 3 * CS + 50, 0, size - (3 * CS + 50));
	for (uint32_t i = 0; i < 8; i++)
		wr(f, 93, d, (uint64_t)i * CS, i == 5 ? 700 : CS, 500 + i);
	char *zeros = calloc(1, CS);
	/* overwritten with zeros: a hole on the copy, same length */
	assert_int_equal(ds_write(f->ds, 93, zeros, CS, 2 * CS), CS);
	memset(d + 2 * CS, 0, CS);
	assert_int_equal(ds_write(f->ds, 93, zeros, 10, 7 * CS - 10), 10);
	memset(d + 7 * CS - 10, 0, 10);
	free(zeros);
	for (uint64_t ino = 90; ino <= 93; ino++)
		assert_int_equal(ds_fsync(f->ds, ino), 0);
	assert_true(files_on(f, 2, 92, 7) > 0);
	set_fault(f, 2, NULL);

	struct ds_rebuild_progress res, total = {0};
	for (uint32_t chain = 101; chain <= 102; chain++) {
		struct prog_seen ps = {0};
		int r = ds_rebuild(f->ds, chain, 12, prog_cb, &ps, &res, f->err, sizeof(f->err));
		if (r)
			fail_msg("ds_rebuild(%u): %d %s", chain, r, f->err);
		assert_true(ps.calls >= 2);
		assert_true(res.chunks_total > 0);
		assert_int_equal(ps.last.chunks_done, res.chunks_total);
		assert_int_equal(res.chunks_done, res.chunks_total);
		assert_int_equal(res.bytes_done, res.bytes_total);
		assert_int_equal(f->changed_chain, chain);
		assert_int_equal(f->changed_n, 2);
		assert_int_equal(f->changed_last, 12);
		total.stale_removed += res.stale_removed;
	}
	assert_int_equal(f->changed_calls, 2);
	assert_true(total.stale_removed > 0);
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 3);
	for (int k = 1; k < 3; k++) {
		assert_int_equal(ch[k].nmembers, 2);
		assert_int_equal(ch[k].members[1], 12); /* appended last */
		assert_int_equal(ch[k].epoch, 3);
	}
	/* byte-identical (same lengths) on every member, nothing stale left anywhere */
	check_replicas(f, 90, 7);
	assert_int_equal(check_replicas(f, 91, 7), 4);
	assert_int_equal(check_replicas(f, 92, 7), 0);
	assert_int_equal(files_on(f, 2, 92, 7), 0);
	assert_int_equal(check_replicas(f, 93, 7), 8);
	read_expect(f, 90, a, 0, size);
	read_expect(f, 91, b, 0, 3 * CS + 50);
	read_expect(f, 93, d, 0, size);
	struct ds_check_result cr;
	assert_int_equal(ds_check(f->ds, false, NULL, NULL, NULL, &cr), 0);
	assert_true(cr.bytes_compared > 0);
	/* the rejoined target takes writes again */
	wr(f, 90, a, 10, 20000, 600);
	assert_int_equal(ds_fsync(f->ds, 90), 0);
	check_replicas(f, 90, 7);
	assert_int_equal(ds_rebuild(f->ds, 101, 12, NULL, NULL, NULL, f->err, sizeof(f->err)),
			 -EEXIST);
	free(a);
	free(b);
	free(c);
	free(d);
}

static void test_rebuild_errors(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"dir", "dir", "faulty"};
	make(f, 3, 2, s, DS_STRONG);
	char *a = calloc(1, 4 * CS);
	for (uint32_t i = 0; i < 4; i++)
		wr(f, 94, a, (uint64_t)i * CS, CS, 700 + i);
	set_fault(f, 2, "write=EIO\n");
	for (uint32_t i = 0; i < 4; i++)
		wr(f, 94, a, (uint64_t)i * CS + 7, 100, 800 + i);
	set_fault(f, 2, NULL);
	assert_int_equal(ds_fsync(f->ds, 94), 0);

	/* reopen as a mount would: 12 configured down, chains without it */
	assert_int_equal(ds_chains(f->ds, f->chains, MAXT), 3);
	char good[1024];
	snprintf(good, sizeof(good), "%s", f->targets[2].url);
	f->targets[2].up = false;
	snprintf(f->targets[2].url, sizeof(f->targets[2].url), "dir:%s/gone", f->dir);
	reopen(f, DS_STRONG);
	f->err[0] = '\0';
	assert_true(ds_rebuild(f->ds, 101, 12, NULL, NULL, NULL, f->err, sizeof(f->err)) < 0);
	assert_non_null(strstr(f->err, "/gone"));
	/* SM-1: another target's identity is refused */
	tdir(f, 0, good + 600, 300);
	snprintf(f->targets[2].url, sizeof(f->targets[2].url), "dir:%s", good + 600);
	reopen(f, DS_STRONG);
	assert_int_equal(ds_rebuild(f->ds, 101, 12, NULL, NULL, NULL, f->err, sizeof(f->err)),
			 -EINVAL);
	assert_non_null(strstr(f->err, good + 600));
	struct ds_chain_cfg ch[MAXT];
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 3);
	assert_int_equal(ch[1].nmembers, 1);
	assert_int_equal(ch[1].epoch, 2);
	assert_int_equal(f->changed_calls, 0);
	/* bad arguments */
	assert_int_equal(ds_rebuild(f->ds, 999, 12, NULL, NULL, NULL, f->err, sizeof(f->err)),
			 -ENOENT);
	assert_int_equal(ds_rebuild(f->ds, 101, 99, NULL, NULL, NULL, f->err, sizeof(f->err)),
			 -ENOENT);
	assert_int_equal(ds_rebuild(f->ds, 100, 10, NULL, NULL, NULL, NULL, 0), -EEXIST);

	/* reachable but configured down: opened on demand; a failed commit changes nothing */
	snprintf(f->targets[2].url, sizeof(f->targets[2].url), "%s", good);
	reopen(f, DS_STRONG);
	f->cb_fail = -ETIMEDOUT;
	assert_int_equal(ds_rebuild(f->ds, 101, 12, NULL, NULL, NULL, f->err, sizeof(f->err)),
			 -ETIMEDOUT);
	assert_non_null(strstr(f->err, "commit"));
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 3);
	assert_int_equal(ch[1].nmembers, 1);
	f->cb_fail = 0;
	for (uint32_t chain = 101; chain <= 102; chain++)
		assert_int_equal(
		    ds_rebuild(f->ds, chain, 12, NULL, NULL, NULL, f->err, sizeof(f->err)), 0);
	check_replicas(f, 94, 3);
	read_expect(f, 94, a, 0, 4 * CS);
	free(a);
}

/* A membership move as device add/drain runs it: rebuild onto the new target, drop the old
 * member (ds_chain_set), delete what it kept (ds_purge_strays). Every replica byte-identical,
 * ds_check clean, and the chain never below its replica count. */
static void test_chain_move(void **state)
{
	struct dfx *f = *state;
	make(f, 4, 2, NULL, DS_STRONG); /* chains 100 {10,11} 101 {11,12} 102 {12,13} 103 {13,10} */
	const size_t size = 16 * CS;
	char *a = calloc(1, size);
	for (uint32_t i = 0; i < 16; i++)
		wr(f, 77, a, (uint64_t)i * CS + 3 * i, CS - 7 * i, 900 + i);
	assert_int_equal(ds_fsync(f->ds, 77), 0);
	unsigned on10 = files_on(f, 0, 77, 15);
	assert_true(on10 > 0);

	/* chain 100 {10, 11}: 12 replaces 10, and becomes the primary */
	struct ds_rebuild_progress res;
	assert_int_equal(ds_rebuild(f->ds, 100, 12, NULL, NULL, &res, f->err, sizeof(f->err)), 0);
	struct ds_chain_cfg ch[MAXT];
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 4);
	assert_int_equal(ch[0].nmembers, 3); /* three replicas while both are there */
	uint32_t want[2] = {12, 11};
	assert_int_equal(ds_chain_set(f->ds, 100, ch[0].epoch, want, 2, f->err, sizeof(f->err)), 0);
	assert_int_equal(f->changed_chain, 100);
	assert_int_equal(f->changed_n, 2);
	assert_int_equal(f->changed_last, 11);
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 4);
	assert_int_equal(ch[0].nmembers, 2);
	assert_int_equal(ch[0].members[0], 12);
	assert_int_equal(ch[0].members[1], 11);
	assert_int_equal(ch[0].epoch, 3);
	read_expect(f, 77, a, 0, size);

	/* target 10 still holds its chunks of chain 100: strays, until purged */
	struct ds_check_result cr;
	assert_true(ds_check(f->ds, false, NULL, NULL, NULL, &cr) > 0);
	assert_true(cr.strays > 0);
	uint64_t removed = 0;
	assert_int_equal(ds_purge_strays(f->ds, 10, &removed, f->err, sizeof(f->err)), 0);
	assert_int_equal(removed, cr.strays);
	assert_int_equal(ds_check(f->ds, false, NULL, NULL, NULL, &cr), 0);
	assert_true(files_on(f, 0, 77, 15) < on10); /* its chunks of chain 103 stay */
	assert_true(files_on(f, 0, 77, 15) > 0);
	check_replicas(f, 77, 15);
	/* the new member takes writes; a purge with nothing to do removes nothing */
	wr(f, 77, a, 5, 2 * CS, 999);
	assert_int_equal(ds_fsync(f->ds, 77), 0);
	check_replicas(f, 77, 15);
	assert_int_equal(ds_purge_strays(f->ds, 12, &removed, f->err, sizeof(f->err)), 0);
	assert_int_equal(removed, 0);

	/* errors change nothing */
	uint32_t bad[3] = {12, 13};
	assert_int_equal(ds_chain_set(f->ds, 100, 0, bad, 2, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "13"));
	bad[1] = 12;
	assert_int_equal(ds_chain_set(f->ds, 100, 0, bad, 2, f->err, sizeof(f->err)), -EINVAL);
	assert_int_equal(ds_chain_set(f->ds, 100, 0, bad, 0, f->err, sizeof(f->err)), -EINVAL);
	assert_int_equal(ds_chain_set(f->ds, 100, 2, want, 2, f->err, sizeof(f->err)), -ESTALE);
	assert_int_equal(ds_chain_set(f->ds, 555, 0, want, 2, f->err, sizeof(f->err)), -ENOENT);
	assert_int_equal(ds_purge_strays(f->ds, 99, &removed, f->err, sizeof(f->err)), -ENOENT);
	f->cb_fail = -EIO;
	uint32_t one[1] = {11};
	assert_int_equal(ds_chain_set(f->ds, 100, 0, one, 1, NULL, 0), -EIO);
	f->cb_fail = 0;
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 4);
	assert_int_equal(ch[0].nmembers, 2);
	assert_int_equal(ch[0].epoch, 3);
	/* shrink to one: allowed (the caller keeps the replica count) */
	assert_int_equal(ds_chain_set(f->ds, 100, 0, one, 1, NULL, 0), 0);
	assert_int_equal(ds_chains(f->ds, ch, MAXT), 4);
	assert_int_equal(ch[0].nmembers, 1);
	read_expect(f, 77, a, 0, size);
	free(a);
}

/* ---------------------------------------------------------------------------------------- */
/* scrub */

struct scrub_log {
	int reports, progress_calls;
	int checksum, mismatch, missing, unrecoverable, repaired;
	struct ds_check_result last;
	int cancel_after; /* chunks; 0 = never */
	int cancel;
};

static void scrub_report(void *ctx, const char *what, uint64_t ino, uint32_t idx, uint32_t target,
			 bool repaired)
{
	struct scrub_log *l = ctx;
	(void)ino, (void)idx, (void)target;
	l->reports++;
	l->checksum += !strcmp(what, "checksum");
	l->mismatch += !strcmp(what, "mismatch");
	l->missing += !strcmp(what, "missing");
	l->unrecoverable += !strcmp(what, "unrecoverable");
	l->repaired += repaired;
}

static void scrub_progress(void *ctx, const struct ds_check_result *p)
{
	struct scrub_log *l = ctx;
	l->progress_calls++;
	assert_true(p->chunks <= p->chunks_total);
	assert_true(p->chunks >= l->last.chunks);
	l->last = *p;
	if (l->cancel_after && (int)p->chunks >= l->cancel_after)
		__atomic_store_n(&l->cancel, 1, __ATOMIC_RELEASE);
}

static int scrub(struct dfx *f, bool repair, uint64_t rate, struct scrub_log *l,
		 struct ds_check_result *res)
{
	*l = (struct scrub_log){.cancel_after = l->cancel_after};
	struct ds_scrub_opts o = {.repair = repair,
				  .rate = rate,
				  .report = scrub_report,
				  .progress = scrub_progress,
				  .ctx = l,
				  .cancel = &l->cancel};
	return ds_scrub(f->ds, &o, res);
}

/* Members (target index) of the chain of (ino, idx). */
static bool on_target(struct dfx *f, uint64_t ino, uint32_t idx, unsigned t)
{
	struct ds_chain_cfg ch[MAXT];
	ds_chains(f->ds, ch, MAXT);
	const struct ds_chain_cfg *c = &ch[((uint64_t)ds_ino_seed(ino) + idx) % f->nchains];
	for (uint32_t k = 0; k < c->nmembers; k++)
		if (tindex(f, c->members[k]) == t)
			return true;
	return false;
}

static void test_scrub(void **state)
{
	struct dfx *f = *state;
	const char *const s[] = {"faulty", "faulty", "faulty"};
	make(f, 3, 2, s, DS_STRONG); /* 3 chains of 2 over 3 targets */
	const size_t len = 5 * CS + 777;
	char *data = malloc(len), *back = malloc(len);
	fill(data, len, 23);
	for (uint64_t ino = 200; ino < 206; ino++)
		assert_int_equal(ds_write(f->ds, ino, data, len, 0), (ssize_t)len);
	assert_int_equal(ds_sync_all(f->ds), 0);
	struct scrub_log l = {0};
	struct ds_check_result res;
	assert_int_equal(scrub(f, true, 0, &l, &res), 0);
	assert_int_equal(res.chunks, 6 * 6);
	assert_int_equal(res.chunks_total, 6 * 6);
	assert_int_equal(res.bytes_total, 2 * 6 * (uint64_t)len); /* two copies of each byte */
	assert_int_equal(res.bytes_compared, res.bytes_total);
	assert_int_equal(l.reports, 0);
	assert_int_equal(l.progress_calls, 6 * 6 + 1);

	/* target 0 corrupt for inodes 200 and 203; a flipped byte and a lost copy elsewhere */
	set_fault(f, 0, "corrupt=1\nino=200,203\n");
	unsigned want_csum = 0;
	for (uint32_t idx = 0; idx < 6; idx++)
		want_csum += on_target(f, 200, idx, 0) + on_target(f, 203, idx, 0);
	assert_true(want_csum >= 2);
	struct ds_chain_cfg ch[MAXT];
	ds_chains(f->ds, ch, MAXT);
	const struct ds_chain_cfg *c = &ch[((uint64_t)ds_ino_seed(201) + 2) % 3];
	char p1[400], p2[400];
	chunk_path(f, tindex(f, c->members[1]), 201, 2, p1, sizeof(p1));
	flip_byte(p1, 100);
	c = &ch[((uint64_t)ds_ino_seed(202) + 1) % 3];
	chunk_path(f, tindex(f, c->members[1]), 202, 1, p2, sizeof(p2));
	unlink(p2);
	reopen(f, DS_STRONG); /* no cached fd hides the unlink */
	set_fault(f, 0, "corrupt=1\nino=200,203\n");

	/* --no-repair: everything found, nothing changed; found again the next time */
	for (int round = 0; round < 2; round++) {
		assert_int_equal(scrub(f, false, 0, &l, &res), (int)want_csum + 2);
		assert_int_equal(res.csum_errors, want_csum);
		assert_int_equal(res.mismatches, 1);
		assert_int_equal(res.missing, 1);
		assert_int_equal(res.repaired, 0);
		assert_int_equal(res.unrecoverable, 0);
		assert_int_equal(l.checksum, (int)want_csum);
		assert_int_equal(l.repaired, 0);
	}
	struct ds_stats st;
	ds_stats(f->ds, &st);
	assert_int_equal(st.csum_errors_seen, 2 * want_csum);
	assert_int_equal(st.repairs_done, 0);

	/* repair: every problem fixed; a second scrub is clean; every replica identical */
	assert_int_equal(scrub(f, true, 0, &l, &res), 0);
	assert_int_equal(res.csum_errors, want_csum);
	assert_int_equal(res.repaired, want_csum + 2);
	assert_int_equal(l.repaired, (int)want_csum + 2);
	ds_stats(f->ds, &st);
	assert_int_equal(st.csum_errors_seen, 3 * want_csum);
	assert_int_equal(st.repairs_done, want_csum);
	assert_int_equal(st.repair_failures, 0);
	assert_int_equal(scrub(f, false, 0, &l, &res), 0);
	assert_int_equal(l.reports, 0);
	for (uint64_t ino = 200; ino < 206; ino++) {
		check_replicas(f, ino, 6);
		assert_int_equal(ds_read(f->ds, ino, back, len, 0), (ssize_t)len);
		assert_memory_equal(back, data, len);
	}
	ds_stats(f->ds, &st);
	assert_int_equal(st.csum_errors_seen, 3 * want_csum); /* reads met no bad copy */
	/* the targets' own counters: target 0 answered every one of those EBADMSGs */
	struct ds_target_stat ts[MAXT];
	assert_int_equal(ds_target_stats(f->ds, ts, MAXT), 3);
	for (unsigned t = 0; t < 3; t++) {
		assert_int_equal(ts[t].id, f->targets[t].id);
		assert_true(ts[t].open && ts[t].has_counters && ts[t].has_statfs);
		assert_int_equal(ts[t].counters.csum_errors, t == 0 ? 3 * want_csum : 0);
		assert_true(ts[t].counters.bytes_read > 0 && ts[t].statfs.total_bytes > 0);
	}

	/* both copies bad: unrecoverable, not repaired, the chain untouched */
	c = &ch[((uint64_t)ds_ino_seed(204) + 0) % 3];
	set_fault(f, tindex(f, c->members[0]), "corrupt=1\nino=204\nidx=0\n");
	set_fault(f, tindex(f, c->members[1]), "corrupt=1\nino=204\nidx=0\n");
	unsigned other = 3 - tindex(f, c->members[0]) - tindex(f, c->members[1]);
	set_fault(f, other, NULL);
	assert_int_equal(scrub(f, true, 0, &l, &res), 2);
	assert_int_equal(res.csum_errors, 2);
	assert_int_equal(res.unrecoverable, 1);
	assert_int_equal(res.repaired, 0);
	assert_int_equal(l.unrecoverable, 1);
	assert_int_equal(f->cb_calls, 0);
	free(data);
	free(back);
}

/* Strays are fsck's: a scrub reads only in-chain copies. Cancel stops between chunks. */
static void test_scrub_stray_cancel(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	char data[3 * CS];
	fill(data, sizeof(data), 5);
	assert_int_equal(ds_write(f->ds, 210, data, sizeof(data), 0), sizeof(data));
	assert_int_equal(ds_write(f->ds, 211, data, sizeof(data), 0), sizeof(data));
	unsigned stray = 0;
	while (on_target(f, 210, 0, stray))
		stray++;
	char sp[400];
	chunk_path(f, stray, 210, 0, sp, sizeof(sp));
	int fd = open(sp, O_WRONLY | O_CREAT, 0644);
	assert_int_equal(pwrite_full(fd, "junk", 4, 0), 0);
	close(fd);
	struct scrub_log l = {0};
	struct ds_check_result res;
	assert_int_equal(scrub(f, true, 0, &l, &res), 0);
	assert_int_equal(res.strays, 0);
	assert_int_equal(access(sp, F_OK), 0);
	assert_int_equal(res.chunks, 6);

	l.cancel_after = 2;
	assert_int_equal(scrub(f, false, 0, &l, &res), -ECANCELED);
	assert_int_equal(res.chunks, 2);
	assert_int_equal(res.chunks_total, 6);
}

/* The token bucket bounds the rate: 2 MiB of replica bytes at 4 MiB/s take at least
 * (2 MiB - burst - last chunk) / rate. */
static void test_scrub_rate(void **state)
{
	struct dfx *f = *state;
	make(f, 2, 2, NULL, DS_STRONG);
	char *data = malloc(16 * CS);
	fill(data, 16 * CS, 6);
	assert_int_equal(ds_write(f->ds, 220, data, 16 * CS, 0), 16 * CS);
	struct scrub_log l = {0};
	struct ds_check_result res;
	const uint64_t rate = 4 << 20;
	int64_t t0 = now_monotonic_ns();
	assert_int_equal(scrub(f, false, rate, &l, &res), 0);
	double secs = (double)(now_monotonic_ns() - t0) / 1e9;
	assert_int_equal(res.bytes_compared, 2 * 16 * CS);
	double floor = (double)(res.bytes_compared - rate / 10 - 2 * CS) / (double)rate;
	printf("scrub of %llu bytes at %llu B/s: %.3f s (at least %.3f s)\n",
	       (unsigned long long)res.bytes_compared, (unsigned long long)rate, secs, floor);
	assert_true(secs >= floor);
	assert_true(secs < 10 * floor);
	t0 = now_monotonic_ns();
	assert_int_equal(scrub(f, false, 0, &l, &res), 0);
	printf("unlimited: %.3f s\n", (double)(now_monotonic_ns() - t0) / 1e9);
	free(data);
}

/* Scrubbing while writers run: the chunk lock keeps it from seeing a half-applied write (no
 * false mismatch), and its repairs never undo a write; strong and weak mode. */
struct scrub_bg {
	struct dfx *f;
	int stop;
	int runs, problems, errors;
};

static void *scrub_bg_main(void *arg)
{
	struct scrub_bg *b = arg;
	while (!__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE)) {
		struct ds_check_result res;
		struct ds_scrub_opts o = {.repair = true};
		int r = ds_scrub(b->f->ds, &o, &res);
		if (r < 0)
			b->errors++;
		else
			b->problems += r + (int)res.repaired;
		b->runs++;
	}
	return NULL;
}

static void scrub_concurrent(struct dfx *f, enum ds_consistency mode)
{
	make(f, 3, 2, NULL, mode);
	struct scrub_bg bg = {.f = f};
	pthread_t sth, th[3];
	struct cw w[3];
	assert_int_equal(pthread_create(&sth, NULL, scrub_bg_main, &bg), 0);
	for (int i = 0; i < 3; i++) {
		w[i] = (struct cw){.f = f, .ino = 230 + (uint64_t)i};
		assert_int_equal(pthread_create(&th[i], NULL, conc_main, &w[i]), 0);
	}
	for (int i = 0; i < 3; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].rc, 0);
	}
	__atomic_store_n(&bg.stop, 1, __ATOMIC_RELEASE);
	pthread_join(sth, NULL);
	printf("%d scrub run(s) while 3 writers ran\n", bg.runs);
	assert_true(bg.runs >= 1);
	assert_int_equal(bg.errors, 0);
	assert_int_equal(bg.problems, 0);
	ds_close(f->ds); /* weak: drained */
	f->ds = NULL;
	reopen(f, mode);
	for (int i = 0; i < 3; i++)
		check_replicas(f, 230 + (uint64_t)i, 8);
}

static void test_scrub_concurrent(void **state)
{
	scrub_concurrent(*state, DS_STRONG);
}

static void test_scrub_concurrent_weak(void **state)
{
	scrub_concurrent(*state, DS_WEAK);
}

/* A syncing or away target's chunks of a chain (ds_chain_cfg.keep) are not strays: fsck and
 * ds_purge_strays leave them for the resync that brings them up to date. */
static void test_keep_not_stray(void **state)
{
	struct dfx *f = *state;
	make(f, 3, 2, NULL, DS_STRONG);
	char *data = malloc(CS);
	fill(data, CS, 23);
	assert_int_equal(ds_write(f->ds, 90, data, CS, 0), CS);
	unsigned ci = (unsigned)(((uint64_t)ds_ino_seed(90) + 0) % 3);
	struct ds_chain_cfg *c = &f->chains[ci];
	uint32_t z = 0;
	for (unsigned t = 0; t < 3; t++)
		if (f->targets[t].id != c->members[0] && f->targets[t].id != c->members[1])
			z = f->targets[t].id;
	/* z holds an old copy of chunk 90.0: it was a member before it went away */
	struct sm_target *zt = NULL;
	assert_int_equal(sm_open(f->targets[tindex(f, z)].url, NULL, &zt, f->err, sizeof(f->err)),
			 0);
	assert_int_equal(zt->ops->write(zt, 90, 0, data, 4096, 0), 4096);
	sm_close(zt);

	struct ds_check_result res;
	uint64_t removed = 9;
	for (int keep = 1; keep >= 0; keep--) {
		c->nkeep = (uint32_t)keep;
		c->keep[0] = z;
		reopen(f, DS_STRONG);
		assert_int_equal(ds_check(f->ds, false, NULL, NULL, NULL, &res), keep ? 0 : 1);
		assert_int_equal(res.strays, keep ? 0 : 1);
	}
	c->nkeep = 1;
	reopen(f, DS_STRONG);
	assert_int_equal(ds_purge_strays(f->ds, z, &removed, f->err, sizeof(f->err)), 0);
	assert_int_equal(removed, 0);
	char p[400];
	struct stat st;
	chunk_path(f, tindex(f, z), 90, 0, p, sizeof(p));
	assert_int_equal(stat(p, &st), 0);
	free(data);
}

/* ds_chunk_lock: the lock a repair takes around a chunk copy holds off writes to that chunk
 * and whole-chunk deletes of its inode until it is released. */
struct locked_op {
	struct dfx *f;
	bool remove;
	int done;
	ssize_t r;
};

static void *locked_op_main(void *arg)
{
	struct locked_op *op = arg;
	char buf[4096];

	memset(buf, 'w', sizeof(buf));
	op->r = op->remove ? ds_remove(op->f->ds, 5) : ds_write(op->f->ds, 5, buf, sizeof(buf), 0);
	__atomic_store_n(&op->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void test_chunk_lock(void **state)
{
	struct dfx *f = *state;
	make(f, 2, 2, NULL, DS_STRONG);
	for (int k = 0; k < 2; k++) {
		struct locked_op op = {.f = f, .remove = k == 1};
		pthread_t th;

		ds_chunk_lock(f->ds, 5, 0, true);
		assert_int_equal(pthread_create(&th, NULL, locked_op_main, &op), 0);
		usleep(100 * 1000);
		/* still waiting (a machine too slow to have started it proves nothing, but never
		 * fails) */
		assert_int_equal(__atomic_load_n(&op.done, __ATOMIC_ACQUIRE), 0);
		ds_chunk_lock(f->ds, 5, 0, false);
		pthread_join(th, NULL);
		assert_int_equal(op.done, 1);
		assert_true(op.r >= 0);
	}
}

/* ---------------------------------------------------------------------------------------- */

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_replicas_2),
	    T(test_replicas_3),
	    T(test_addressing),
	    T(test_read_holes),
	    T(test_truncate),
	    T(test_punch_allocate),
	    T(test_seek),
	    T(test_trim_remove),
	    T(test_weak),
	    T(test_weak_primary_fails),
	    T(test_ds1_write_eio),
	    T(test_ds1_all_fail),
	    T(test_ds1_enospc),
	    T(test_ds1_callback_fails),
	    T(test_ds1_sync),
	    T(test_ds2_read_failover),
	    T(test_ds4_primary_bad),
	    T(test_ds4_secondary_bad),
	    T(test_ds4_both_bad),
	    T(test_ds4_three_replicas),
	    T(test_ds4_weak),
	    T(test_ds4_repair_fails),
	    T(test_scrub),
	    T(test_scrub_stray_cancel),
	    T(test_scrub_rate),
	    T(test_scrub_concurrent),
	    T(test_scrub_concurrent_weak),
	    T(test_down_target),
	    T(test_open_errors),
	    T(test_statfs),
	    T(test_check),
	    T(test_check_lost_primary_bad_secondary),
	    T(test_concurrent),
	    T(test_rebuild),
	    T(test_rebuild_errors),
	    T(test_chain_move),
	    T(test_chunk_lock),
	    T(test_keep_not_stray),
	    T(test_bench),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
