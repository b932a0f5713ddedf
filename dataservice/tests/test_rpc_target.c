/* Remote targets (rpc_target.h, RPC-1..RPC-4) over the tcp transport on 127.0.0.1.
 *
 * The storage-manager contract through the wire: a remote target (served from dir target A)
 * and a local dir target B get the same random operations, and every answer — status, bytes,
 * lengths, seek positions, the final list — must be the same (B is the oracle; sm.h's
 * conformance test vouches for it). RPC_TEST_ROUNDS sets the number of operations (default
 * 3000). Then deduplication of retried writes, the epoch check, multi-page LIST, reads and
 * writes longer than one frame, concurrent clients, identity checks. */
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
#include <unistd.h>

#include "common/util.h"
#include "dataservice/rpc_target.h"
#include "dataservice/transport_int.h"

#define VOL	  "4a8d3f0e-6b1c-4f5e-9a2b-0c3d4e5f6a7b"
#define OTHER_VOL "11111111-2222-4333-8444-555555555555"
#define CS	  (64 * 1024u)
#define BIG_CS	  (8u << 20)

/* A local target that counts the writes and truncates that reach it, and can be slow: how a
 * test sees that a retry was not applied twice. Serves only what these tests send it. */
struct counting {
	struct sm_target base;
	struct sm_target *in;
	unsigned writes, truncates; /* __atomic */
	unsigned delay_ms;
};

static struct sm_target *inner(struct sm_target *t)
{
	return ((struct counting *)t)->in;
}

static int cnt_identity(struct sm_target *t, struct sm_identity *ret)
{
	return inner(t)->ops->identity(inner(t), ret);
}

static ssize_t cnt_read(struct sm_target *t, uint64_t ino, uint32_t idx, void *buf, size_t len,
			uint64_t off)
{
	return inner(t)->ops->read(inner(t), ino, idx, buf, len, off);
}

static ssize_t cnt_write(struct sm_target *t, uint64_t ino, uint32_t idx, const void *buf,
			 size_t len, uint64_t off)
{
	struct counting *c = (struct counting *)t;
	if (c->delay_ms)
		usleep(c->delay_ms * 1000);
	__atomic_add_fetch(&c->writes, 1, __ATOMIC_RELAXED);
	return c->in->ops->write(c->in, ino, idx, buf, len, off);
}

static int cnt_truncate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t len)
{
	struct counting *c = (struct counting *)t;
	__atomic_add_fetch(&c->truncates, 1, __ATOMIC_RELAXED);
	return c->in->ops->truncate(c->in, ino, idx, len);
}

static const struct sm_ops counting_ops = {
    .scheme = "counting",
    .identity = cnt_identity,
    .read = cnt_read,
    .write = cnt_write,
    .truncate = cnt_truncate,
};

/* ---------------------------------------------------------------------------------------- */
/* fixture: dir targets 1 (A, served), 2 (B, the local oracle), 3 (served, big chunks), 4 (C,
 * served through the counting wrapper); a server; a transport client; remote targets R1, R3,
 * R4 */

struct fx {
	char dir[256];
	struct sm_target *a, *b, *big, *c;
	struct counting cnt;
	struct rpc_server *rpc;
	struct xp_server *srv;
	struct xp_client *xc;
	struct sm_target *r1, *r3, *r4;
	char err[512];
	/* the epoch check */
	uint64_t chain7_epoch;
	int refuse;
	unsigned checks; /* __atomic */
};

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static struct sm_target *make_target(struct fx *f, const char *name, uint32_t id, uint32_t cs)
{
	char path[300], url[320];
	snprintf(path, sizeof(path), "%s/%s", f->dir, name);
	assert_int_equal(mkdir(path, 0755), 0);
	snprintf(url, sizeof(url), "dir:%s", path);
	struct sm_identity ident = {
	    .format_version = SM_FORMAT_VERSION, .target_id = id, .chunk_size = cs};
	strcpy(ident.volume_uuid, VOL);
	uuid_generate_str(ident.target_uuid);
	struct sm_target *t;
	assert_int_equal(sm_format(url, &ident, false, f->err, sizeof(f->err)), 0);
	assert_int_equal(sm_open(url, &ident, &t, f->err, sizeof(f->err)), 0);
	return t;
}

static int epoch_check(void *ctx, const struct rpc_epoch_query *q, uint64_t *ret_current)
{
	struct fx *f = ctx;
	__atomic_add_fetch(&f->checks, 1, __ATOMIC_RELAXED);
	if (f->refuse)
		return f->refuse;
	if (q->chain == 7 && q->epoch != f->chain7_epoch) {
		*ret_current = f->chain7_epoch;
		return -ESTALE;
	}
	return 0;
}

static void fx_serve(struct fx *f, const struct rpc_server_cfg *over, const char *url)
{
	struct sm_target *served[] = {f->a, f->big, &f->cnt.base};
	struct rpc_server_cfg rc = {
	    .targets = served, .ntargets = 3, .check_epoch = epoch_check, .ctx = f};
	if (over) {
		rc.origins = over->origins;
		rc.window = over->window;
		rc.horizon_ms = over->horizon_ms;
	}
	assert_int_equal(rpc_server_new(&rc, &f->rpc, f->err, sizeof(f->err)), 0);
	struct xp_server_cfg sc = {
	    .volume_uuid = VOL, .workers = 4, .handler = rpc_server_handle, .ctx = f->rpc};
	int r = xp_listen(url ? url : "tcp://127.0.0.1:0", &sc, &f->srv, f->err, sizeof(f->err));
	if (r)
		fail_msg("listen: %s", f->err);
}

static void fx_connect(struct fx *f)
{
	struct xp_client_cfg cc = {.volume_uuid = VOL, .reconnect_ms = 1};
	assert_int_equal(xp_connect(f->srv->url, &cc, &f->xc, f->err, sizeof(f->err)), 0);
	struct sm_identity want = {.target_id = 1, .chunk_size = CS};
	strcpy(want.volume_uuid, VOL);
	assert_int_equal(rpc_target_open(f->xc, 1, &want, &f->r1, f->err, sizeof(f->err)), 0);
	assert_int_equal(rpc_target_open(f->xc, 3, NULL, &f->r3, f->err, sizeof(f->err)), 0);
	assert_int_equal(rpc_target_open(f->xc, 4, NULL, &f->r4, f->err, sizeof(f->err)), 0);
}

/* One fixture for the whole group (formatting dir targets is what costs): test_oracle runs
 * first, on fresh targets; every other test uses inodes of its own and relative counts. */
static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(f->dir, sizeof(f->dir), "%s/rpctest.XXXXXX", tmp);
	if (!mkdtemp(f->dir))
		return -1;
	f->a = make_target(f, "a", 1, CS);
	f->b = make_target(f, "b", 2, CS);
	f->big = make_target(f, "big", 3, BIG_CS);
	f->c = make_target(f, "c", 4, CS);
	f->cnt = (struct counting){.base = {.ops = &counting_ops}, .in = f->c};
	f->chain7_epoch = 5;
	fx_serve(f, NULL, NULL);
	fx_connect(f);
	*state = f;
	return 0;
}

/* A new server on the same address (the client reconnects by itself); over: table sizes. */
static void fx_restart(struct fx *f, const struct rpc_server_cfg *over)
{
	char url[XP_URL_MAX];
	snprintf(url, sizeof(url), "%s", f->srv->url);
	xp_server_free(f->srv);
	rpc_server_free(f->rpc);
	fx_serve(f, over, url);
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	sm_close(f->r1);
	sm_close(f->r3);
	sm_close(f->r4);
	xp_client_free(f->xc);
	xp_server_free(f->srv);
	rpc_server_free(f->rpc);
	sm_close(f->a);
	sm_close(f->b);
	sm_close(f->big);
	sm_close(f->c);
	nftw(f->dir, rm_cb, 64, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static unsigned writes_of(struct fx *f)
{
	return __atomic_load_n(&f->cnt.writes, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------------------------------- */
/* the contract through the wire, against a local oracle */

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245 + 12345;
		p[i] = (uint8_t)(seed >> 16);
	}
}

struct seen {
	uint64_t ino;
	uint32_t idx;
	uint64_t length;
};

struct listing {
	struct seen *v;
	size_t n, cap;
};

static int collect(void *ctx, const struct sm_chunk_info *ci)
{
	struct listing *l = ctx;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->n++] = (struct seen){ci->ino, ci->idx, ci->length};
	return 0;
}

static int seen_cmp(const void *a, const void *b)
{
	const struct seen *x = a, *y = b;
	if (x->ino != y->ino)
		return x->ino < y->ino ? -1 : 1;
	if (x->idx != y->idx)
		return x->idx < y->idx ? -1 : 1;
	return 0;
}

static void sorted_list(struct sm_target *t, struct listing *l)
{
	memset(l, 0, sizeof(*l));
	assert_int_equal(t->ops->list(t, collect, l), 0);
	qsort(l->v, l->n, sizeof(*l->v), seen_cmp);
}

/* One random operation on both targets; the answers must agree. */
static void same_op(struct fx *f, uint32_t *seed, unsigned round)
{
	static uint8_t wbuf[CS + 8192], ra[CS + 8192], rb[CS + 8192];
	struct sm_target *r = f->r1, *b = f->b;
	*seed = *seed * 1103515245 + 12345;
	uint32_t s = *seed >> 4;
	uint64_t ino = 1 + s % 4;
	uint32_t idx = (s >> 3) % 3;
	/* offsets and lengths around the chunk's edges, out of range now and then */
	uint64_t off = (s >> 6) % 7 == 0 ? CS - (s >> 9) % 64 : (s >> 9) % CS;
	uint64_t len = (s >> 5) % 5 == 0 ? (s >> 12) % 64 : (s >> 12) % (CS / 2);
	if ((s >> 20) % 31 == 0)
		off = CS + 1;
	uint64_t pa = 1, pb = 2;
	int op = (int)((s >> 24) % 11);
	switch (op) {
	case 0:
	case 1:
	case 2:
		fill(wbuf, len, s);
		assert_int_equal(r->ops->write(r, ino, idx, wbuf, len, off),
				 b->ops->write(b, ino, idx, wbuf, len, off));
		break;
	case 3:
	case 4: {
		memset(ra, 0x55, len);
		memset(rb, 0xaa, len);
		ssize_t x = r->ops->read(r, ino, idx, ra, len, off);
		assert_int_equal(x, b->ops->read(b, ino, idx, rb, len, off));
		if (x > 0)
			assert_memory_equal(ra, rb, (size_t)x);
		break;
	}
	case 5:
		assert_int_equal(r->ops->truncate(r, ino, idx, off),
				 b->ops->truncate(b, ino, idx, off));
		break;
	case 6:
		assert_int_equal(r->ops->punch(r, ino, idx, off, len),
				 b->ops->punch(b, ino, idx, off, len));
		break;
	case 7:
		assert_int_equal(r->ops->allocate(r, ino, idx, off, len),
				 b->ops->allocate(b, ino, idx, off, len));
		break;
	case 8: {
		int wh = s & 1 ? SEEK_DATA : SEEK_HOLE;
		int x = r->ops->seek(r, ino, idx, off, wh, &pa);
		assert_int_equal(x, b->ops->seek(b, ino, idx, off, wh, &pb));
		if (!x)
			assert_int_equal(pa, pb);
		break;
	}
	case 9: {
		int x = r->ops->chunk_length(r, ino, idx, &pa);
		assert_int_equal(x, b->ops->chunk_length(b, ino, idx, &pb));
		if (!x)
			assert_int_equal(pa, pb);
		break;
	}
	case 10:
		if (round % 4 == 0)
			assert_int_equal(r->ops->remove(r, ino, idx), b->ops->remove(b, ino, idx));
		else
			assert_int_equal(r->ops->sync_ino(r, ino), b->ops->sync_ino(b, ino));
		break;
	}
}

static void test_oracle(void **state)
{
	struct fx *f = *state;
	const char *env = getenv("RPC_TEST_ROUNDS");
	unsigned rounds = env ? (unsigned)atoi(env) : 3000;
	uint32_t seed = 12345;
	int64_t t0 = now_monotonic_ns();
	for (unsigned i = 0; i < rounds; i++)
		same_op(f, &seed, i);
	struct listing la, lb;
	sorted_list(f->r1, &la);
	sorted_list(f->b, &lb);
	assert_int_equal(la.n, lb.n);
	for (size_t i = 0; i < la.n; i++) {
		assert_int_equal(la.v[i].ino, lb.v[i].ino);
		assert_int_equal(la.v[i].idx, lb.v[i].idx);
		assert_int_equal(la.v[i].length, lb.v[i].length);
	}
	/* every byte of every chunk, in one last pass */
	static uint8_t ra[CS], rb[CS];
	for (size_t i = 0; i < la.n; i++) {
		assert_int_equal(f->r1->ops->read(f->r1, la.v[i].ino, la.v[i].idx, ra, CS, 0), CS);
		assert_int_equal(f->b->ops->read(f->b, la.v[i].ino, la.v[i].idx, rb, CS, 0), CS);
		assert_memory_equal(ra, rb, CS);
	}
	struct sm_statfs sa, sb;
	assert_int_equal(f->r1->ops->statfs(f->r1, &sa), 0);
	assert_int_equal(f->a->ops->statfs(f->a, &sb), 0);
	assert_int_equal(sa.chunks, sb.chunks);
	assert_int_equal(sa.total_bytes, sb.total_bytes);
	assert_int_equal(f->r1->ops->sync_all(f->r1), 0);
	print_message("%u random operations, remote and local agreed; %zu chunks at the end "
		      "(%.1f ms)\n",
		      rounds, la.n, (now_monotonic_ns() - t0) / 1e6);
	free(la.v);
	free(lb.v);
}

/* SM-2 and errors that must come through as they are */
static void test_edges(void **state)
{
	struct fx *f = *state;
	struct sm_target *r = f->r1;
	uint8_t buf[4096];
	memset(buf, 0x55, sizeof(buf));
	const uint64_t ino = 777;
	assert_int_equal(r->ops->read(r, ino, 0, buf, sizeof(buf), 0), sizeof(buf));
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], 0);
	uint64_t len = 7;
	assert_int_equal(r->ops->chunk_length(r, ino, 0, &len), -ENOENT);
	assert_int_equal(r->ops->seek(r, ino, 0, 0, SEEK_DATA, &len), -ENXIO);
	assert_int_equal(r->ops->seek(r, ino, 0, 0, SEEK_SET, &len), -EINVAL);
	assert_int_equal(r->ops->write(r, ino, 0, buf, 2, CS - 1), -EINVAL);
	assert_int_equal(r->ops->read(r, ino, 0, buf, 1, UINT64_MAX), -EINVAL);
	assert_int_equal(r->ops->write(r, ino, 0, buf, 0, 0), 0);
	assert_int_equal(r->ops->read(r, ino, 0, buf, 0, 0), 0);
	assert_int_equal(r->ops->chunk_length(r, ino, 0, &len), -ENOENT); /* nothing created */
	/* the highest chunk name, and the file lands where the dir layout says */
	assert_int_equal(r->ops->write(r, UINT64_MAX, UINT32_MAX, "xyz", 3, 0), 3);
	char p[512];
	snprintf(p, sizeof(p), "%s/a/chunks/ff/ffffffffffffffff.ffffffff", f->dir);
	assert_int_equal(access(p, F_OK), 0);
	assert_int_equal(r->ops->read(r, UINT64_MAX, UINT32_MAX, buf, 3, 0), 3);
	assert_memory_equal(buf, "xyz", 3);
	assert_true(r->ops->caps & SM_CAP_SPARSE);
	assert_string_equal(r->url + strlen(r->url) - 2, "/1");
}

/* Reads and writes longer than one frame (PROTO_MAX_DATA) are cut into several. */
static void test_big_io(void **state)
{
	struct fx *f = *state;
	size_t n = 6u << 20;
	uint8_t *w = malloc(n), *back = malloc(n);
	fill(w, n, 77);
	assert_int_equal(f->r3->ops->write(f->r3, 9, 0, w, n, 1u << 20), (ssize_t)n);
	assert_int_equal(f->big->ops->read(f->big, 9, 0, back, n, 1u << 20), (ssize_t)n);
	assert_memory_equal(w, back, n);
	memset(back, 0, n);
	assert_int_equal(f->r3->ops->read(f->r3, 9, 0, back, n, 1u << 20), (ssize_t)n);
	assert_memory_equal(w, back, n);
	free(w);
	free(back);
}

struct worker {
	struct fx *f;
	int k;
	int bad;
};

/* 4 threads, one shared connection: each owns the 4 KiB blocks b % 4 == k of inode 5 */
static void *conc_main(void *arg)
{
	struct worker *w = arg;
	struct sm_target *r = w->f->r1;
	uint8_t buf[4096], back[4096];
	for (uint32_t i = 0; i < 150; i++) {
		uint32_t blk = (i * 4 + (uint32_t)w->k) % (3 * CS / 4096);
		uint32_t idx = blk / (CS / 4096), off = (blk % (CS / 4096)) * 4096;
		memset(buf, (int)(blk ^ 0x5a), sizeof(buf));
		if (r->ops->write(r, 5, idx, buf, sizeof(buf), off) != sizeof(buf) ||
		    r->ops->read(r, 5, idx, back, sizeof(back), off) != sizeof(back) ||
		    memcmp(buf, back, sizeof(buf)))
			w->bad++;
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	struct fx *f = *state;
	pthread_t th[4];
	struct worker w[4];
	for (int k = 0; k < 4; k++) {
		w[k] = (struct worker){f, k, 0};
		assert_int_equal(pthread_create(&th[k], NULL, conc_main, &w[k]), 0);
	}
	for (int k = 0; k < 4; k++) {
		pthread_join(th[k], NULL);
		assert_int_equal(w[k].bad, 0);
	}
}

static int stop_at_3(void *ctx, const struct sm_chunk_info *ci)
{
	(void)ci;
	return ++*(int *)ctx == 3 ? 42 : 0;
}

static void test_list_pages(void **state)
{
	struct fx *f = *state;
	const uint32_t n = PROTO_LIST_MAX_PAGE + 500; /* two pages */
	struct listing l;
	sorted_list(f->r1, &l);
	size_t before = l.n;
	free(l.v);
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(f->a->ops->write(f->a, 1000 + i % 37, i, &i, sizeof(i), i % 100),
				 sizeof(i));
	sorted_list(f->r1, &l);
	assert_int_equal(l.n, before + n);
	for (size_t i = 1; i < l.n; i++)
		assert_int_not_equal(seen_cmp(&l.v[i - 1], &l.v[i]), 0);
	free(l.v);
	/* a callback that stops: its value comes back, and the connection goes on */
	int calls = 0;
	assert_int_equal(f->r1->ops->list(f->r1, stop_at_3, &calls), 42);
	assert_int_equal(calls, 3);
	uint64_t len;
	assert_int_equal(f->r1->ops->chunk_length(f->r1, 1000, 0, &len), 0);
	assert_int_equal(len, 4);
}

/* ---------------------------------------------------------------------------------------- */
/* identity, opening, refusals */

static void test_open(void **state)
{
	struct fx *f = *state;
	struct sm_identity id;
	assert_int_equal(f->r3->ops->identity(f->r3, &id), 0);
	assert_int_equal(id.target_id, 3);
	assert_int_equal(id.chunk_size, BIG_CS);
	assert_string_equal(id.volume_uuid, VOL);
	struct sm_identity want = {.target_id = 1};
	strcpy(want.volume_uuid, OTHER_VOL);
	struct sm_target *t;
	assert_int_equal(rpc_target_open(f->xc, 1, &want, &t, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "belongs to volume " VOL ", not to volume " OTHER_VOL));
	strcpy(want.volume_uuid, VOL);
	want.target_id = 4;
	assert_int_equal(rpc_target_open(f->xc, 1, &want, &t, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "expected target id 4"));
	want.target_id = 1;
	want.chunk_size = CS * 2;
	assert_int_equal(rpc_target_open(f->xc, 1, &want, &t, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "chunk size"));
	assert_int_equal(rpc_target_open(f->xc, 9, NULL, &t, f->err, sizeof(f->err)), -ENODEV);
	assert_non_null(strstr(f->err, "/9: the node serves no such target"));

	/* by URL, sm-style: a private connection */
	char url[300];
	snprintf(url, sizeof(url), "%s/3?timeout_ms=2000", f->srv->url);
	want = (struct sm_identity){.target_id = 3};
	strcpy(want.volume_uuid, VOL);
	assert_int_equal(rpc_target_ops.open(url, &want, &t, f->err, sizeof(f->err)), 0);
	assert_string_equal(t->url, url);
	assert_int_equal(t->ops->write(t, 1, 0, "abc", 3, 0), 3);
	sm_close(t);
	strcpy(want.volume_uuid, OTHER_VOL); /* refused by HELLO already */
	assert_int_equal(rpc_target_ops.open(url, &want, &t, f->err, sizeof(f->err)), -EXDEV);
	assert_non_null(strstr(f->err, "serves volume"));
	const char *bad[] = {"tcp://127.0.0.1:5/", "tcp://127.0.0.1/1", "tcp://127.0.0.1:5/x",
			     "tcp://127.0.0.1:5/1/2", "tcp:/1"};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		assert_int_equal(rpc_target_ops.open(bad[i], NULL, &t, f->err, sizeof(f->err)),
				 -EINVAL);
		assert_non_null(strstr(f->err, "tcp://HOST:PORT/TARGET_ID"));
	}
	assert_int_equal(rpc_target_ops.format(url, &want, false, f->err, sizeof(f->err)),
			 -EOPNOTSUPP);
	assert_non_null(strstr(f->err, "formatted on its own node"));
	assert_int_equal(rpc_target_ops.format_check(url, false, f->err, sizeof(f->err)),
			 -EOPNOTSUPP);
	assert_int_equal(rpc_target_set_chain_fn(f->a, NULL, NULL), -EINVAL);

	/* a server refuses two targets with one id */
	struct sm_target *two[] = {f->a, f->a};
	struct rpc_server_cfg rc = {.targets = two, .ntargets = 2};
	struct rpc_server *s;
	assert_int_equal(rpc_server_new(&rc, &s, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "are both target id 1"));
	rc = (struct rpc_server_cfg){.targets = two, .ntargets = 1, .window = 100};
	assert_int_equal(rpc_server_new(&rc, &s, f->err, sizeof(f->err)), -EINVAL);
	assert_non_null(strstr(f->err, "not a power of 2"));
}

/* ---------------------------------------------------------------------------------------- */
/* RPC-1: epochs */

static int chain_of(void *ctx, uint64_t ino, uint32_t idx, uint32_t *ret_chain, uint64_t *ret_epoch)
{
	(void)ino;
	(void)idx;
	*ret_chain = 7;
	*ret_epoch = *(uint64_t *)ctx;
	return 0;
}

static void test_epoch(void **state)
{
	struct fx *f = *state;
	uint64_t mine = 4;
	assert_int_equal(rpc_target_set_chain_fn(f->r4, chain_of, &mine), 0);
	unsigned w0 = writes_of(f);
	assert_int_equal(f->r4->ops->write(f->r4, 1, 0, "old", 3, 0), -ESTALE);
	assert_int_equal(rpc_target_stale_epoch(f->r4), 5);
	assert_int_equal(writes_of(f), w0); /* RPC-1: nothing reached the target */
	mine = 5;
	assert_int_equal(f->r4->ops->write(f->r4, 1, 0, "new", 3, 0), 3);
	assert_int_equal(writes_of(f), w0 + 1);
	/* requests bound to no chain are asked about too, and pass */
	unsigned c0 = __atomic_load_n(&f->checks, __ATOMIC_RELAXED);
	struct sm_statfs st;
	assert_int_equal(f->r1->ops->statfs(f->r1, &st), 0);
	assert_int_equal(__atomic_load_n(&f->checks, __ATOMIC_RELAXED), c0 + 1);
	/* any other refusal comes back as it is */
	f->refuse = -EROFS;
	assert_int_equal(f->r4->ops->write(f->r4, 1, 0, "new", 3, 0), -EROFS);
	f->refuse = 0;
	assert_int_equal(rpc_target_set_chain_fn(f->r4, NULL, NULL), 0);
}

/* ---------------------------------------------------------------------------------------- */
/* RPC-2, RPC-3, RPC-4: a retry never applies twice */

static int raw_write(struct fx *f, uint64_t origin, uint64_t id, bool retry, const char *text)
{
	struct proto_body b = {.ino = 3,
			       .idx = 0,
			       .origin = origin,
			       .write_id = id,
			       .data = (const uint8_t *)text,
			       .data_len = (uint32_t)strlen(text)};
	struct xp_msg m = {.op = PROTO_OP_WRITE,
			   .flags = retry ? PROTO_F_RETRY : 0,
			   .chain = PROTO_NO_CHAIN,
			   .target = 4,
			   .body = &b};
	struct xp_resp r;
	int e = xp_call(f->xc, &m, &r);
	if (e)
		return e;
	int st = r.hdr.status;
	if (st == -EIO)
		assert_non_null(strstr(r.body.reason, "cannot tell whether write"));
	xp_resp_fini(&r);
	return st;
}

static void expect_chunk(struct fx *f, const char *text)
{
	char back[16] = {0};
	assert_int_equal(f->c->ops->read(f->c, 3, 0, back, strlen(text), 0), (ssize_t)strlen(text));
	assert_memory_equal(back, text, strlen(text));
}

static void test_dedupe(void **state)
{
	struct fx *f = *state;
	unsigned w0 = writes_of(f);
	assert_int_equal(raw_write(f, 0xa1, 5, false, "AAAA"), 0);
	assert_int_equal(raw_write(f, 0xa1, 6, false, "BBBB"), 0);
	/* the reply of 5 was lost; it comes again: answered, not applied over BBBB */
	assert_int_equal(raw_write(f, 0xa1, 5, true, "AAAA"), 0);
	assert_int_equal(raw_write(f, 0xa1, 5, false, "AAAA"), 0); /* a plain duplicate too */
	expect_chunk(f, "BBBB");
	assert_int_equal(writes_of(f), w0 + 2);
	/* a retry the server has no record of: refused, nothing applied */
	assert_int_equal(raw_write(f, 0xb2, 1, true, "CCCC"), -EIO);
	expect_chunk(f, "BBBB");
	/* a retry of an id from before the record began (floor) */
	assert_int_equal(raw_write(f, 0xc3, 100, false, "DDDD"), 0);
	assert_int_equal(raw_write(f, 0xc3, 50, true, "EEEE"), -EIO);
	/* ... but a first attempt out of order is new */
	assert_int_equal(raw_write(f, 0xc3, 60, false, "FFFF"), 0);
	expect_chunk(f, "FFFF");
	assert_int_equal(raw_write(f, 0xc3, 60, true, "FFFF"), 0);
	assert_int_equal(writes_of(f), w0 + 4);
	/* write id 0: no deduplication asked, applied every time */
	assert_int_equal(raw_write(f, 0, 0, false, "GGGG"), 0);
	assert_int_equal(raw_write(f, 0, 0, false, "GGGG"), 0);
	assert_int_equal(writes_of(f), w0 + 6);
}

/* The reply of an applied write is lost on the way (the connection is cut right after the
 * server ran it): the remote target retries on a new connection and the server answers from
 * its table. */
static void test_cut_reply(void **state)
{
	struct fx *f = *state;
	unsigned w0 = writes_of(f);
	xp_tcp_fault_cut_reply(f->srv, PROTO_OP_WRITE, 1);
	assert_int_equal(f->r4->ops->write(f->r4, 8, 0, "once", 4, 0), 4);
	assert_int_equal(writes_of(f), w0 + 1);
	unsigned t0 = __atomic_load_n(&f->cnt.truncates, __ATOMIC_RELAXED);
	xp_tcp_fault_cut_reply(f->srv, PROTO_OP_TRUNCATE, 2);
	assert_int_equal(f->r4->ops->truncate(f->r4, 8, 0, 2), 0);
	assert_int_equal(__atomic_load_n(&f->cnt.truncates, __ATOMIC_RELAXED), t0 + 1);
	uint64_t len;
	assert_int_equal(f->c->ops->chunk_length(f->c, 8, 0, &len), 0);
	assert_int_equal(len, 2);
	/* a read is simply asked again */
	xp_tcp_fault_cut_reply(f->srv, PROTO_OP_READ, 1);
	char back[2];
	assert_int_equal(f->r4->ops->read(f->r4, 8, 0, back, 2, 0), 2);
	assert_memory_equal(back, "on", 2);
	/* more cuts than retries: the error comes up */
	xp_tcp_fault_cut_reply(f->srv, PROTO_OP_WRITE, RPC_RETRIES + 1);
	assert_int_equal(f->r4->ops->write(f->r4, 8, 0, "x", 1, 0), -ECONNRESET);
	xp_tcp_fault_cut_reply(f->srv, 0, 0);
}

struct dup_arg {
	struct fx *f;
	bool retry;
	int r;
};

static void *dup_main(void *arg)
{
	struct dup_arg *d = arg;
	d->r = raw_write(d->f, 0xd4, 7, d->retry, "SLOW");
	return NULL;
}

/* A retry that arrives while the first attempt still runs waits for it (RPC-2). */
static void test_dedupe_running(void **state)
{
	struct fx *f = *state;
	unsigned w0 = writes_of(f);
	f->cnt.delay_ms = 300;
	struct dup_arg first = {f, false, 1}, second = {f, true, 1};
	pthread_t a, b;
	int64_t t0 = now_monotonic_ns();
	assert_int_equal(pthread_create(&a, NULL, dup_main, &first), 0);
	usleep(50000);
	assert_int_equal(pthread_create(&b, NULL, dup_main, &second), 0);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	f->cnt.delay_ms = 0;
	assert_int_equal(first.r, 0);
	assert_int_equal(second.r, 0);
	assert_int_equal(writes_of(f), w0 + 1);
	assert_true(now_monotonic_ns() - t0 < 600 * 1000000LL);
}

/* A small table: 2 origins, 8 write ids each, forgotten after 300 ms idle. */
static void test_dedupe_bounds(void **state)
{
	struct fx *f = *state;
	struct rpc_server_cfg small = {.origins = 2, .window = 8, .horizon_ms = 300};
	fx_restart(f, &small);
	for (uint64_t id = 1; id <= 20; id++)
		assert_int_equal(raw_write(f, 0xe1, id, false, "WWWW"), 0);
	assert_int_equal(raw_write(f, 0xe1, 20, true, "WWWW"), 0); /* still in the window */
	assert_int_equal(raw_write(f, 0xe1, 13, true, "WWWW"), 0);
	assert_int_equal(raw_write(f, 0xe1, 12, true, "WWWW"), -EIO); /* fell out of it */
	assert_int_equal(raw_write(f, 0xe2, 1, false, "WWWW"), 0);
	/* a third origin while both records are fresh */
	assert_int_equal(raw_write(f, 0xe3, 1, false, "WWWW"), -EBUSY);
	usleep(350000);
	assert_int_equal(raw_write(f, 0xe2, 2, false, "WWWW"), 0);    /* keeps 0xe2 fresh */
	assert_int_equal(raw_write(f, 0xe3, 1, false, "WWWW"), 0);    /* 0xe1 is forgotten */
	assert_int_equal(raw_write(f, 0xe1, 20, true, "WWWW"), -EIO); /* so it cannot tell */
	fx_restart(f, NULL);
}

/* raw_write, called again (up to 3 calls) while it finds a connection that a restart of the
 * server reset */
static int raw_write_reconnect(struct fx *f, uint64_t origin, uint64_t id, bool retry,
			       const char *text)
{
	int r = -ECONNRESET;
	for (int i = 0; i < 3 && r == -ECONNRESET; i++)
		r = raw_write(f, origin, id, retry, text);
	return r;
}

/* The server restarts: a retry of a write from before cannot be told apart (RPC-2). */
static void test_restart(void **state)
{
	struct fx *f = *state;
	/* the test before restarted the server too: the first call may find that connection gone */
	assert_int_equal(raw_write_reconnect(f, 0xf1, 3, false, "RRRR"), 0);
	fx_restart(f, NULL);
	/* the first call finds the old connection gone */
	assert_int_equal(raw_write_reconnect(f, 0xf1, 3, true, "RRRR"), -EIO);
	assert_int_equal(raw_write(f, 0xf1, 4, false, "SSSS"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_oracle), /* first: on fresh targets */
	    cmocka_unit_test(test_edges),	   cmocka_unit_test(test_big_io),
	    cmocka_unit_test(test_concurrent),	   cmocka_unit_test(test_list_pages),
	    cmocka_unit_test(test_open),	   cmocka_unit_test(test_epoch),
	    cmocka_unit_test(test_dedupe),	   cmocka_unit_test(test_cut_reply),
	    cmocka_unit_test(test_dedupe_running), cmocka_unit_test(test_dedupe_bounds),
	    cmocka_unit_test(test_restart),
	};
	return cmocka_run_group_tests(tests, fx_setup, fx_teardown);
}
