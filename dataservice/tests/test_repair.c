/* The repair engine (dataservice/repair.h) over two real dir: targets in a temp directory:
 * resync copies exactly the dirty chunks, rebuild makes the destination identical for the
 * chain and removes its stale chunks, the rate bound holds (a lower bound on the time only),
 * cancel stops it, and writes that race the copy are not lost. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "dataservice/repair.h"
#include "dataservice/rpc_target.h"

#define CS	(256 * 1024u) /* chunk size */
#define NLOCKS	64
#define MAXREFS 4096
#define VOLUME	"11111111-2222-4333-8444-555555555555"

struct rfx {
	char dir[256];
	struct sm_target *src, *dst;
	/* the per-chunk locks a writer and the repair share */
	pthread_mutex_t locks[NLOCKS];
	/* resync's source of refs */
	struct rp_ref refs[MAXREFS];
	unsigned nrefs, next_at, batch;
	struct rp_ref done[MAXREFS];
	unsigned ndone;
	/* progress */
	unsigned progress_calls;
	uint64_t last_done;
	int cancel;
	uint64_t cancel_at; /* set cancel once chunks_done reaches it (0: never) */
};

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static struct sm_target *open_target(struct rfx *f, const char *name, uint32_t id)
{
	struct sm_identity ident = {
	    .format_version = SM_FORMAT_VERSION, .target_id = id, .chunk_size = CS};
	char url[512], err[512] = "";
	struct sm_target *t = NULL;

	snprintf(ident.volume_uuid, sizeof(ident.volume_uuid), "%s", VOLUME);
	snprintf(ident.target_uuid, sizeof(ident.target_uuid),
		 "00000000-0000-4000-8000-00000000000%u", id);
	snprintf(url, sizeof(url), "%s/%s", f->dir, name);
	if (mkdir(url, 0700) < 0)
		return NULL;
	snprintf(url, sizeof(url), "dir:%s/%s", f->dir, name);
	if (sm_format(url, &ident, false, err, sizeof(err)) < 0 ||
	    sm_open(url, NULL, &t, err, sizeof(err)) < 0) {
		fprintf(stderr, "target %s: %s\n", url, err);
		return NULL;
	}
	return t;
}

static int setup(void **state)
{
	struct rfx *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/braidfs-repair-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(f->dir))
		return -1;
	f->src = open_target(f, "src", 1);
	f->dst = open_target(f, "dst", 2);
	if (!f->src || !f->dst)
		return -1;
	for (int i = 0; i < NLOCKS; i++)
		pthread_mutex_init(&f->locks[i], NULL);
	f->batch = 3;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct rfx *f = *state;

	sm_close(f->src);
	sm_close(f->dst);
	nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* ---- helpers ---- */

static void fill(char *buf, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)(hash_mix64(seed + i / 8) >> (8 * (i % 8)));
}

/* Write a chunk of `len` bytes of pattern `seed` (len 0: remove it) to t. */
static void put(struct sm_target *t, uint64_t ino, uint32_t idx, size_t len, uint64_t seed)
{
	char *buf = malloc(CS);

	assert_non_null(buf);
	assert_int_equal(t->ops->truncate(t, ino, idx, 0), 0);
	if (len) {
		fill(buf, len, seed);
		assert_int_equal(t->ops->write(t, ino, idx, buf, len, 0), (ssize_t)len);
	}
	free(buf);
}

/* A chunk with a 64 KiB hole in the middle (sparse), then data. */
static void put_sparse(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t seed)
{
	char *buf = malloc(CS);

	assert_non_null(buf);
	fill(buf, 4096, seed);
	assert_int_equal(t->ops->truncate(t, ino, idx, 0), 0);
	assert_int_equal(t->ops->write(t, ino, idx, buf, 4096, 0), 4096);
	assert_int_equal(t->ops->write(t, ino, idx, buf, 4096, 4096 + 65536), 4096);
	free(buf);
}

struct listing {
	struct sm_chunk_info v[MAXREFS];
	unsigned n;
};

static int list_cb(void *ctx, const struct sm_chunk_info *ci)
{
	struct listing *l = ctx;

	if (l->n < MAXREFS)
		l->v[l->n++] = *ci;
	return 0;
}

/* Is (ino, idx) the same on both targets (length, bytes; absent = absent)? */
static bool same_chunk(struct rfx *f, uint64_t ino, uint32_t idx)
{
	uint64_t ls = 0, ld = 0;
	int rs = f->src->ops->chunk_length(f->src, ino, idx, &ls);
	int rd = f->dst->ops->chunk_length(f->dst, ino, idx, &ld);
	char *a, *b;
	bool ok;

	if (rs == -ENOENT)
		ls = 0;
	if (rd == -ENOENT)
		ld = 0;
	if (ls != ld)
		return false;
	if (ls == 0)
		return true;
	a = malloc(ls);
	b = malloc(ls);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(f->src->ops->read(f->src, ino, idx, a, ls, 0), (ssize_t)ls);
	assert_int_equal(f->dst->ops->read(f->dst, ino, idx, b, ls, 0), (ssize_t)ls);
	ok = memcmp(a, b, ls) == 0;
	free(a);
	free(b);
	return ok;
}

/* Every chunk either target holds (of the chain, when belongs says so): the same on both.
 * Returns how many chunks were compared. */
static unsigned compare_all(struct rfx *f, bool (*belongs)(void *, uint64_t, uint32_t))
{
	static struct listing ls, ld;
	unsigned n = 0;

	ls.n = ld.n = 0;
	assert_int_equal(f->src->ops->list(f->src, list_cb, &ls), 0);
	assert_int_equal(f->dst->ops->list(f->dst, list_cb, &ld), 0);
	for (unsigned i = 0; i < ls.n; i++) {
		if (belongs && !belongs(f, ls.v[i].ino, ls.v[i].idx))
			continue;
		if (!same_chunk(f, ls.v[i].ino, ls.v[i].idx))
			fail_msg("chunk %llu.%u differs", (unsigned long long)ls.v[i].ino,
				 ls.v[i].idx);
		n++;
	}
	for (unsigned i = 0; i < ld.n; i++) {
		if (belongs && !belongs(f, ld.v[i].ino, ld.v[i].idx))
			continue;
		if (!same_chunk(f, ld.v[i].ino, ld.v[i].idx))
			fail_msg("chunk %llu.%u differs (on the destination only?)",
				 (unsigned long long)ld.v[i].ino, ld.v[i].idx);
	}
	return n;
}

/* ---- callbacks ---- */

static int next_cb(void *ctx, struct rp_ref *ret, unsigned max)
{
	struct rfx *f = ctx;
	unsigned n = 0;

	while (n < max && n < f->batch && f->next_at < f->nrefs)
		ret[n++] = f->refs[f->next_at++];
	return (int)n;
}

static int done_cb(void *ctx, const struct rp_ref *refs, unsigned n)
{
	struct rfx *f = ctx;

	for (unsigned i = 0; i < n && f->ndone < MAXREFS; i++)
		f->done[f->ndone++] = refs[i];
	return 0;
}

static void lock_cb(void *ctx, uint64_t ino, uint32_t idx, bool lock)
{
	struct rfx *f = ctx;
	pthread_mutex_t *m = &f->locks[(ino * 31 + idx) % NLOCKS];

	if (lock)
		pthread_mutex_lock(m);
	else
		pthread_mutex_unlock(m);
}

static void progress_cb(void *ctx, const struct rp_progress *p)
{
	struct rfx *f = ctx;

	assert_true(p->chunks_done >= f->last_done); /* never goes back */
	f->last_done = p->chunks_done;
	f->progress_calls++;
	if (f->cancel_at && p->chunks_done >= f->cancel_at)
		__atomic_store_n(&f->cancel, 1, __ATOMIC_RELEASE);
}

/* the chain under rebuild: odd inodes */
static bool odd_belongs(void *ctx, uint64_t ino, uint32_t idx)
{
	(void)ctx;
	(void)idx;
	return ino % 2 == 1;
}

static struct rp_opts opts(struct rfx *f, enum rp_kind kind)
{
	struct rp_opts o = {.kind = kind,
			    .src = f->src,
			    .dst = f->dst,
			    .next = next_cb,
			    .done = done_cb,
			    .lock = lock_cb,
			    .progress = progress_cb,
			    .ctx = f,
			    .cancel = &f->cancel};
	return o;
}

/* ---- cases ---- */

/* A target that missed writes to a few chunks gets exactly those: the bytes read are the
 * dirty chunks' bytes, not the volume's. */
static void t_resync_copies_dirty_only(void **state)
{
	struct rfx *f = *state;
	uint64_t volume_bytes = 0, dirty_bytes = 0;
	struct rp_progress p;
	char err[512] = "";

	/* 48 chunks on both (the target was in the chain) */
	for (uint64_t ino = 1; ino <= 12; ino++)
		for (uint32_t idx = 0; idx < 4; idx++) {
			size_t len = idx == 3 ? 1000 * ino : CS;
			put(f->src, ino, idx, len, ino * 100 + idx);
			put(f->dst, ino, idx, len, ino * 100 + idx);
			volume_bytes += len;
		}
	/* while it was away: rewritten, extended, shortened, sparse, removed, created */
	struct {
		uint64_t ino;
		uint32_t idx;
		size_t len;
	} w[] = {{2, 0, CS}, {3, 3, CS},    {5, 1, 777}, {7, 3, 0},
		 {9, 2, 0},  {13, 0, 5000}, {4, 2, 1}};
	for (unsigned i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
		put(f->src, w[i].ino, w[i].idx, w[i].len, 9999 + i);
		f->refs[f->nrefs++] = (struct rp_ref){w[i].ino, w[i].idx};
		dirty_bytes += w[i].len;
	}
	put_sparse(f->src, 11, 1, 4242);
	f->refs[f->nrefs++] = (struct rp_ref){11, 1};
	dirty_bytes += 4096 + 65536 + 4096;
	assert_false(same_chunk(f, 2, 0));
	assert_false(same_chunk(f, 9, 2));

	struct rp_opts o = opts(f, RP_RESYNC);
	o.chunks_hint = f->nrefs;
	assert_int_equal(rp_run(&o, &p, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	assert_true(p.finished);
	assert_int_equal(p.chunks_done, f->nrefs);
	assert_int_equal(p.chunks_total, f->nrefs);
	assert_int_equal(p.bytes_done, dirty_bytes);
	assert_int_equal(p.bytes_read, dirty_bytes);
	assert_int_equal(p.removed, 2);
	assert_int_equal(f->ndone, f->nrefs); /* every batch reported once synced */
	assert_memory_equal(f->done, f->refs, f->nrefs * sizeof(f->refs[0]));
	assert_true(f->progress_calls >= 2);
	assert_int_equal(compare_all(f, NULL), 48 - 2 + 1);
	print_message("resync: %llu bytes copied for %u dirty chunks of a %llu-byte volume\n",
		      (unsigned long long)p.bytes_read, f->nrefs, (unsigned long long)volume_bytes);
}

/* A new target gets every chunk of the chain, identical; its stale chunks of the chain go;
 * chunks of other chains are left alone. */
static void t_rebuild_identical(void **state)
{
	struct rfx *f = *state;
	struct rp_progress p;
	char err[512] = "";
	uint64_t chain_bytes = 0;
	unsigned chain_chunks = 0;

	for (uint64_t ino = 1; ino <= 20; ino++)
		for (uint32_t idx = 0; idx < 3; idx++) {
			size_t len = (ino * 7919 + idx * 104729) % CS + 1;
			put(f->src, ino, idx, len, ino * 10 + idx);
			if (ino % 2) {
				chain_bytes += len;
				chain_chunks++;
			}
		}
	put_sparse(f->src, 21, 0, 77);
	chain_bytes += 4096 + 65536 + 4096;
	chain_chunks++;
	char *zeros = calloc(1, CS);
	assert_int_equal(f->src->ops->write(f->src, 23, 0, zeros, CS, 0), CS); /* all zero */
	free(zeros);
	chain_bytes += CS;
	chain_chunks++;
	/* the destination: stale chunks of the chain (old bytes, chunks the source lost), and a
	 * chunk of another chain that must stay */
	put(f->dst, 1, 0, 100, 1);
	put(f->dst, 3, 7, 5000, 2);
	put(f->dst, 101, 0, 300, 3);
	put(f->dst, 2, 9, 400, 4);

	struct rp_opts o = opts(f, RP_REBUILD);
	o.belongs = odd_belongs;
	int64_t t0 = now_monotonic_ns();
	assert_int_equal(rp_run(&o, &p, err, sizeof(err)), 0);
	int64_t ns = now_monotonic_ns() - t0;
	assert_true(p.finished);
	assert_int_equal(p.bytes_total, chain_bytes);
	assert_int_equal(p.bytes_done, chain_bytes);
	assert_int_equal(p.removed, 2);			   /* 3.7 and 101.0 */
	assert_int_equal(p.chunks_done, chain_chunks + 2); /* + the two stale ones */
	assert_int_equal(compare_all(f, odd_belongs), chain_chunks);
	uint64_t len = 0;
	assert_int_equal(f->dst->ops->chunk_length(f->dst, 2, 9, &len), 0); /* other chain */
	assert_int_equal(len, 400);
	assert_int_equal(f->dst->ops->chunk_length(f->dst, 2, 0, &len), -ENOENT);
	print_message("rebuild: %u chunks, %llu bytes, %llu written (holes punched), %.3f s, "
		      "%.1f MiB/s, unlimited rate, synced\n",
		      chain_chunks, (unsigned long long)p.bytes_done,
		      (unsigned long long)p.bytes_written, ns / 1e9,
		      p.bytes_read / 1048576.0 / (ns / 1e9));
}

/* The byte rate bounds the copy: at least (bytes - burst) / rate seconds. Only a lower bound
 * is asserted (a busy machine is slower, never faster). */
static void t_rate_bound(void **state)
{
	struct rfx *f = *state;
	const uint64_t rate = 4 << 20, burst = 64 << 10;
	struct rp_progress p;
	char err[512] = "";

	for (uint32_t idx = 0; idx < 12; idx++) /* 3 MiB */
		put(f->src, 1, idx, CS, idx);
	struct rp_opts o = opts(f, RP_REBUILD);
	o.rate = rate;
	o.burst = burst;
	int64_t t0 = now_monotonic_ns();
	assert_int_equal(rp_run(&o, &p, err, sizeof(err)), 0);
	int64_t elapsed = now_monotonic_ns() - t0;
	int64_t floor_ns = (int64_t)((double)(p.bytes_read - burst) / (double)rate * 1e9);
	print_message("rate %llu B/s asked: %llu bytes in %.3f s (%.2f MiB/s measured), floor "
		      "%.3f s\n",
		      (unsigned long long)rate, (unsigned long long)p.bytes_read, elapsed / 1e9,
		      p.rate / 1048576.0, floor_ns / 1e9);
	assert_int_equal(p.bytes_read, 12ull * CS);
	/* the last chunk's tokens are paid before it is read, so the whole run is paced */
	assert_true(elapsed >= floor_ns * 9 / 10);
	assert_true(p.rate <= rate * 11 / 10 + burst);
	assert_int_equal(compare_all(f, NULL), 12);
}

static void *cancel_later(void *arg)
{
	struct rfx *f = arg;

	usleep(200 * 1000);
	__atomic_store_n(&f->cancel, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Cancel stops a run before the next chunk: -ECANCELED, what was copied is whole; a resync
 * reports done only for the batches that finished. */
static void t_cancel(void **state)
{
	struct rfx *f = *state;
	struct rp_progress p;
	char err[512] = "";

	for (uint32_t idx = 0; idx < 10; idx++) {
		put(f->src, 5, idx, CS, idx + 1);
		f->refs[f->nrefs++] = (struct rp_ref){5, idx};
	}
	f->cancel_at = 4; /* the progress callback cancels after the fourth chunk */
	struct rp_opts o = opts(f, RP_RESYNC);
	o.chunks_hint = f->nrefs;
	assert_int_equal(rp_run(&o, &p, err, sizeof(err)), -ECANCELED);
	assert_non_null(strstr(err, "cancelled"));
	assert_false(p.finished);
	assert_int_equal(p.chunks_done, 4);
	assert_int_equal(f->ndone, 3); /* batch 1 (3 chunks) synced and reported; batch 2 not */
	for (uint32_t idx = 0; idx < 4; idx++)
		assert_true(same_chunk(f, 5, idx));
	assert_false(same_chunk(f, 5, 4));
	/* again, nothing cancelled: it finishes what is left */
	f->cancel = 0;
	f->cancel_at = 0;
	f->last_done = 0;
	f->next_at = f->ndone;
	assert_int_equal(rp_run(&o, &p, err, sizeof(err)), 0);
	assert_int_equal(f->ndone, 10);
	assert_int_equal(compare_all(f, NULL), 10);

	/* a rebuild cancelled by another thread during a rate wait (the first chunk alone
	 * costs 256 s at this rate): it stops in the wait, having copied nothing */
	f->cancel = 0;
	struct rp_opts r = opts(f, RP_REBUILD);
	r.rate = 1024;
	r.burst = 1;
	f->last_done = 0;
	pthread_t th;
	int64_t t0 = now_monotonic_ns();
	assert_int_equal(pthread_create(&th, NULL, cancel_later, f), 0);
	assert_int_equal(rp_run(&r, &p, err, sizeof(err)), -ECANCELED);
	pthread_join(th, NULL);
	assert_int_equal(p.chunks_done, 0);
	print_message("cancel during a rate wait: stopped after %.3f s\n",
		      (now_monotonic_ns() - t0) / 1e9);
}

/* A writer that applies writes to both targets under the per-chunk lock, as a primary with a
 * syncing member does, while a rebuild copies the same chunks: no write is lost. */
struct writer {
	struct rfx *f;
	int stop;
	unsigned writes;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct rfx *f = w->f;
	char buf[8192];
	uint64_t seq = 1;

	while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
		uint64_t h = hash_mix64(seq++);
		uint64_t ino = 1 + h % 4;
		uint32_t idx = (uint32_t)(h >> 8) % 4;
		size_t len = 1 + (size_t)(h >> 16) % sizeof(buf);
		uint64_t off = (h >> 32) % (CS - len);

		memset(buf, (int)(seq & 0xff) | 1, len);
		lock_cb(f, ino, idx, true);
		assert_int_equal(f->src->ops->write(f->src, ino, idx, buf, len, off), (ssize_t)len);
		assert_int_equal(f->dst->ops->write(f->dst, ino, idx, buf, len, off), (ssize_t)len);
		lock_cb(f, ino, idx, false);
		w->writes++;
	}
	return NULL;
}

/* The destination as the repair thread sees it: its writes sleep 1 ms first. That widens the
 * window between the copy's read of the source and its write of the destination, so that an
 * engine that took no lock would lose racing writes within a pass (checked by hand: with
 * o.lock = NULL this case fails). */
struct slow_target {
	struct sm_target base;
	struct sm_target *inner;
};

static struct sm_ops slow_ops;

static struct sm_target *slow_inner(struct sm_target *t)
{
	return ((struct slow_target *)t)->inner;
}

static ssize_t slow_write(struct sm_target *t, uint64_t ino, uint32_t idx, const void *buf,
			  size_t len, uint64_t off)
{
	struct sm_target *in = slow_inner(t);

	usleep(1000);
	return in->ops->write(in, ino, idx, buf, len, off);
}

static ssize_t slow_read(struct sm_target *t, uint64_t ino, uint32_t idx, void *buf, size_t len,
			 uint64_t off)
{
	struct sm_target *in = slow_inner(t);

	return in->ops->read(in, ino, idx, buf, len, off);
}

static int slow_punch(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len)
{
	struct sm_target *in = slow_inner(t);

	return in->ops->punch(in, ino, idx, off, len);
}

static int slow_truncate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t len)
{
	struct sm_target *in = slow_inner(t);

	return in->ops->truncate(in, ino, idx, len);
}

static int slow_length(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t *ret)
{
	struct sm_target *in = slow_inner(t);

	return in->ops->chunk_length(in, ino, idx, ret);
}

static int slow_sync_all(struct sm_target *t)
{
	struct sm_target *in = slow_inner(t);

	return in->ops->sync_all(in);
}

static int slow_list(struct sm_target *t, sm_chunk_cb cb, void *ctx)
{
	struct sm_target *in = slow_inner(t);

	return in->ops->list(in, cb, ctx);
}

static void t_concurrent_writes(void **state)
{
	struct rfx *f = *state;
	struct writer w = {.f = f};
	struct rp_progress p;
	pthread_t th;
	char err[512] = "";
	struct slow_target slow = {.inner = f->dst};

	slow_ops = (struct sm_ops){.scheme = "slow",
				   .read = slow_read,
				   .write = slow_write,
				   .punch = slow_punch,
				   .truncate = slow_truncate,
				   .chunk_length = slow_length,
				   .sync_all = slow_sync_all,
				   .list = slow_list};
	slow.base.ops = &slow_ops;
	snprintf(slow.base.url, sizeof(slow.base.url), "slow:%.1000s", f->dst->url);

	for (uint64_t ino = 1; ino <= 4; ino++)
		for (uint32_t idx = 0; idx < 4; idx++)
			put(f->src, ino, idx, CS, ino * 4 + idx);
	assert_int_equal(pthread_create(&th, NULL, writer_main, &w), 0);
	/* several passes, paced so that they overlap the writer for a while */
	for (int pass = 0; pass < 4; pass++) {
		struct rp_opts o = opts(f, RP_REBUILD);
		o.dst = &slow.base;
		o.rate = 16 << 20;
		f->last_done = 0;
		assert_int_equal(rp_run(&o, &p, err, sizeof(err)), 0);
		/* right after each pass, with the writer still running, compare chunk by chunk
		 * under the lock: every chunk must match */
		for (uint64_t ino = 1; ino <= 4; ino++)
			for (uint32_t idx = 0; idx < 4; idx++) {
				lock_cb(f, ino, idx, true);
				bool same = same_chunk(f, ino, idx);
				lock_cb(f, ino, idx, false);
				if (!same)
					fail_msg("pass %d: chunk %llu.%u lost a write", pass,
						 (unsigned long long)ino, idx);
			}
	}
	__atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	assert_int_equal(compare_all(f, NULL), 16);
	print_message("%u writes raced 4 rebuild passes; none lost\n", w.writes);
	assert_true(w.writes > 0);
}

/* The same engine onto a destination on another "node": the destination target served over
 * TCP on loopback (rpc_target), the engine holding only its remote sm_target. */
static void t_remote_destination(void **state)
{
	struct rfx *f = *state;
	struct sm_target *served[] = {f->dst};
	struct rpc_server_cfg rc = {.targets = served, .ntargets = 1};
	struct xp_server_cfg sc = {.workers = 2, .handler = rpc_server_handle};
	struct xp_client_cfg cc = {.reconnect_ms = 1};
	struct sm_identity want = {.target_id = 2, .chunk_size = CS};
	struct rpc_server *rpc = NULL;
	struct xp_server *srv = NULL;
	struct xp_client *xc = NULL;
	struct sm_target *remote = NULL;
	struct rp_progress p;
	char err[512] = "";
	uint64_t bytes = 0;

	snprintf(sc.volume_uuid, sizeof(sc.volume_uuid), "%s", VOLUME);
	snprintf(cc.volume_uuid, sizeof(cc.volume_uuid), "%s", VOLUME);
	snprintf(want.volume_uuid, sizeof(want.volume_uuid), "%s", VOLUME);
	assert_int_equal(rpc_server_new(&rc, &rpc, err, sizeof(err)), 0);
	sc.ctx = rpc;
	assert_int_equal(xp_listen("tcp://127.0.0.1:0", &sc, &srv, err, sizeof(err)), 0);
	assert_int_equal(xp_connect(srv->url, &cc, &xc, err, sizeof(err)), 0);
	assert_int_equal(rpc_target_open(xc, 2, &want, &remote, err, sizeof(err)), 0);

	for (uint32_t idx = 0; idx < 6; idx++) {
		put(f->src, 8, idx, idx == 5 ? 12345 : CS, 800 + idx);
		bytes += idx == 5 ? 12345 : CS;
		f->refs[f->nrefs++] = (struct rp_ref){8, idx};
	}
	put(f->dst, 8, 9, 100, 1); /* dirty too, and gone from the source: removed remotely */
	f->refs[f->nrefs++] = (struct rp_ref){8, 9};
	struct rp_opts o = opts(f, RP_RESYNC);
	o.dst = remote;
	o.chunks_hint = f->nrefs;
	int64_t t0 = now_monotonic_ns();
	assert_int_equal(rp_run(&o, &p, err, sizeof(err)), 0);
	int64_t ns = now_monotonic_ns() - t0;
	assert_int_equal(p.chunks_done, 7);
	assert_int_equal(p.removed, 1);
	assert_int_equal(p.bytes_read, bytes);
	print_message("resync over TCP loopback: %llu bytes in %.3f s (%.1f MiB/s)\n",
		      (unsigned long long)bytes, ns / 1e9, bytes / 1048576.0 / (ns / 1e9));
	sm_close(remote);
	xp_client_free(xc);
	xp_server_free(srv);
	rpc_server_free(rpc);
	assert_int_equal(compare_all(f, NULL), 6);
}

/* Bad arguments and a failing source of refs: a clear error, nothing copied. */
static void t_errors(void **state)
{
	struct rfx *f = *state;
	char err[512] = "";
	struct rp_opts o = opts(f, RP_RESYNC);

	o.dst = o.src;
	assert_int_equal(rp_run(&o, NULL, err, sizeof(err)), -EINVAL);
	o = opts(f, RP_RESYNC);
	o.next = NULL;
	assert_int_equal(rp_run(&o, NULL, err, sizeof(err)), -EINVAL);
	o = opts(f, (enum rp_kind)9);
	assert_int_equal(rp_run(&o, NULL, err, sizeof(err)), -EINVAL);
	assert_string_equal(rp_kind_name(RP_REBUILD), "rebuild");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(t_resync_copies_dirty_only, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_rebuild_identical, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_rate_bound, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_cancel, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_concurrent_writes, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_remote_destination, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
