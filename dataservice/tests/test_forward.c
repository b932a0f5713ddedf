/* Chains served by their primaries (ds.h DS-5, rpc_target.h forward; docs/distributed.md
 * DIST-2/3): three "nodes" in one process, each an rpc_server on 127.0.0.1 serving one dir
 * target and holding a ds of the whole volume through which its forward hook applies a
 * client's write to every member; a client ds in forward mode; the "database" is one chain in
 * memory that only conditional updates change.
 *
 * Checked: a client write reaches every member through the primary alone; a member that is
 * gone leaves the chain (epoch + 1) before the write returns and misses that write; a stale
 * epoch is refused and the client retries on the committed chain; a dead primary stalls the
 * client until the chain changes, then the write lands on the new primary; with no change the
 * client gives up with -EIO after stall_ms; a member fenced for a moment (no chain change)
 * delays a client's fsync, which then succeeds, and one fenced for good fails it after
 * stall_ms. DS-6: a client on a member's node reads from that
 * member only, and falls back to the primary when that node is dead or refuses the epoch.
 */
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
#include "dataservice/ds.h"
#include "dataservice/repair.h"
#include "dataservice/rpc_target.h"

#define VOL   "4a8d3f0e-6b1c-4f5e-9a2b-0c3d4e5f6a7b"
#define CS    (64 * 1024u)
#define NODES 3

struct fx;

struct node {
	struct fx *fx;
	uint32_t id; /* = its target's id */
	struct sm_target *local;
	struct rpc_server *rpc;
	struct xp_server *srv;
	struct ds *ds;
	unsigned forwarded, local_applied; /* __atomic */
	unsigned reads;			   /* __atomic: READ requests that reached this node */
	int fenced; /* __atomic: answer -ESHUTDOWN to every request that touches data */
};

struct fx {
	char dir[256];
	char err[512];
	struct node n[NODES];
	char addr[NODES][XP_URL_MAX]; /* tcp://127.0.0.1:PORT */
	struct ds *client;
	/* the "database": one chain, and the chunks async targets missed (dirty rows) */
	pthread_mutex_t lock;
	struct ds_chain_cfg chain; /* protected by lock */
	unsigned ndirty;	   /* protected by lock */
	struct rp_ref dirty[64];   /* protected by lock: of target 3 */
	/* a gate that holds node 3's copies of a primary's requests while closed */
	pthread_cond_t gate_cond;
	bool gate_closed; /* protected by lock */
};

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static struct ds_chain_cfg db_get(struct fx *f)
{
	pthread_mutex_lock(&f->lock);
	struct ds_chain_cfg c = f->chain;
	pthread_mutex_unlock(&f->lock);
	return c;
}

/* A conditional update (META-6): -ESTALE unless the chain is at epoch. */
static int db_set(struct fx *f, uint64_t epoch, const uint32_t *m, uint32_t n, uint64_t *ret)
{
	int r = 0;
	pthread_mutex_lock(&f->lock);
	if (f->chain.epoch != epoch) {
		r = -ESTALE;
	} else {
		f->chain.epoch++;
		f->chain.nmembers = n;
		memcpy(f->chain.members, m, n * sizeof(*m));
		if (ret)
			*ret = f->chain.epoch;
	}
	pthread_mutex_unlock(&f->lock);
	return r;
}

static int target_url(void *ctx, uint32_t id, char *url, size_t len)
{
	struct fx *f = ctx;
	if (id < 1 || id > NODES)
		return -ENOENT;
	if (!f->n[id - 1].srv)
		return -EHOSTUNREACH; /* the "nodes table" says down */
	snprintf(url, len, "%s/%u?timeout_ms=2000&dead_ms=2000", f->addr[id - 1], id);
	return 0;
}

static int chain_refresh(void *ctx, uint32_t chain_id, struct ds_chain_cfg *ret)
{
	*ret = db_get(ctx);
	return 0;
}

static int chain_failed(void *ctx, uint32_t chain_id, uint64_t epoch, uint32_t failed,
			const uint32_t *m, uint32_t n, uint64_t *ret_epoch)
{
	struct node *nd = ctx;
	return db_set(nd->fx, epoch, m, n, ret_epoch);
}

static int check_epoch(void *ctx, const struct rpc_epoch_query *q, uint64_t *ret_current)
{
	struct node *nd = ctx;
	if (__atomic_load_n(&nd->fenced, __ATOMIC_ACQUIRE) && q->op != PROTO_OP_IDENTITY &&
	    q->op != PROTO_OP_HELLO && q->op != PROTO_OP_PING && q->op != PROTO_OP_STATFS)
		return -ESHUTDOWN; /* as a node whose lease lapsed (DIST-4) */
	if (q->op == PROTO_OP_READ)
		__atomic_add_fetch(&nd->reads, 1, __ATOMIC_RELAXED);
	if (q->chain == PROTO_NO_CHAIN)
		return 0;
	struct ds_chain_cfg c = db_get(nd->fx);
	ds_chain_load(nd->ds, &c);
	*ret_current = c.epoch;
	if (q->epoch != c.epoch)
		return -ESTALE;
	bool member = false; /* as tools/node.c: only a member serves reads (its table is fresh) */
	for (uint32_t i = 0; i < c.nmembers; i++)
		member |= c.members[i] == q->target;
	return member || q->op != PROTO_OP_READ ? 0 : -ESTALE;
}

static int forward(void *ctx, const struct xp_req *req)
{
	struct node *nd = ctx;
	struct fx *f = nd->fx;
	struct ds_chain_cfg c = db_get(nd->fx);
	if (c.members[0] != req->hdr.target) {
		pthread_mutex_lock(&f->lock);
		while (nd->id == 3 && f->gate_closed)
			pthread_cond_wait(&f->gate_cond, &f->lock);
		pthread_mutex_unlock(&f->lock);
		__atomic_add_fetch(&nd->local_applied, 1, __ATOMIC_RELAXED);
		return RPC_LOCAL;
	}
	__atomic_add_fetch(&nd->forwarded, 1, __ATOMIC_RELAXED);
	const struct proto_body *b = &req->body;
	return ds_chunk_apply(nd->ds, DS_CHUNK_WRITE, b->ino, b->idx, b->off, b->data_len, b->data);
}

/* DS-7: a node records what an async target missed (the "dirty" table; target 3 only here). */
static int async_missed(void *ctx, uint32_t chain_id, uint32_t target, uint64_t ino, uint32_t idx,
			int err)
{
	struct fx *f = ((struct node *)ctx)->fx;
	(void)chain_id;
	(void)err;
	pthread_mutex_lock(&f->lock);
	bool have = target != 3;
	for (unsigned i = 0; i < f->ndirty; i++)
		have |= f->dirty[i].ino == ino && f->dirty[i].idx == idx;
	if (!have && f->ndirty < ARRAY_SIZE(f->dirty))
		f->dirty[f->ndirty++] = (struct rp_ref){.ino = ino, .idx = idx};
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static void node_listen(struct fx *f, unsigned i, const char *url)
{
	struct node *nd = &f->n[i];
	struct rpc_server_cfg rc = {.targets = &nd->local,
				    .ntargets = 1,
				    .check_epoch = check_epoch,
				    .forward = forward,
				    .ctx = nd};
	assert_int_equal(rpc_server_new(&rc, &nd->rpc, f->err, sizeof(f->err)), 0);
	struct xp_server_cfg sc = {
	    .volume_uuid = VOL, .workers = 4, .handler = rpc_server_handle, .ctx = nd->rpc};
	if (xp_listen(url, &sc, &nd->srv, f->err, sizeof(f->err)))
		fail_msg("listen: %s", f->err);
	snprintf(f->addr[i], sizeof(f->addr[i]), "%s", nd->srv->url);
}

static void node_kill(struct fx *f, unsigned i)
{
	xp_server_free(f->n[i].srv);
	f->n[i].srv = NULL;
	rpc_server_free(f->n[i].rpc);
	f->n[i].rpc = NULL;
}

/* A node's ds has the node as its callbacks' context. */
static int node_target_url(void *ctx, uint32_t id, char *url, size_t len)
{
	return target_url(((struct node *)ctx)->fx, id, url, len);
}

static int node_chain_refresh(void *ctx, uint32_t chain_id, struct ds_chain_cfg *ret)
{
	return chain_refresh(((struct node *)ctx)->fx, chain_id, ret);
}

/* A node's ds (nd), or a client's (fwd) running on node `local` (0: none) of a volume of
 * consistency mode. */
static struct ds *open_ds_on(struct fx *f, struct node *nd, bool fwd, uint32_t local,
			     enum ds_consistency mode)
{
	struct ds_target_cfg t[NODES];
	memset(t, 0, sizeof(t));
	for (unsigned i = 0; i < NODES; i++) {
		t[i].id = i + 1;
		t[i].up = true;
		snprintf(t[i].url, sizeof(t[i].url), "node%u", i + 1);
		if (nd && nd->id == i + 1)
			t[i].sm = nd->local;
	}
	struct ds_chain_cfg c = db_get(f);
	struct ds_config cfg = {.chunk_size = CS,
				.targets = t,
				.ntargets = NODES,
				.chains = &c,
				.nchains = 1,
				.chain_failed = fwd ? NULL : chain_failed,
				.cb_ctx = fwd ? (void *)f : (void *)nd,
				.forward = fwd,
				.chain_refresh = fwd ? chain_refresh : node_chain_refresh,
				.stall_ms = 1500,
				.lazy_open = true,
				.target_url = fwd ? target_url : node_target_url,
				.consistency = mode,
				.async_missed = fwd ? NULL : async_missed,
				.local_targets = &local,
				.nlocal = local ? 1 : 0};
	strcpy(cfg.volume_uuid, VOL);
	struct ds *ds;
	if (ds_open(&cfg, &ds, f->err, sizeof(f->err)))
		fail_msg("ds_open: %s", f->err);
	return ds;
}

static struct ds *open_ds(struct fx *f, struct node *nd, bool fwd)
{
	return open_ds_on(f, nd, fwd, 0, DS_STRONG);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(f->dir, sizeof(f->dir), "%s/fwdtest.XXXXXX", tmp);
	if (!mkdtemp(f->dir))
		return -1;
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->gate_cond, NULL);
	f->chain = (struct ds_chain_cfg){.id = 0, .epoch = 1, .nmembers = 3, .members = {1, 2, 3}};
	for (unsigned i = 0; i < NODES; i++) {
		struct node *nd = &f->n[i];
		nd->fx = f;
		nd->id = i + 1;
		char url[512], path[300];
		snprintf(path, sizeof(path), "%s/t%u", f->dir, i + 1);
		assert_int_equal(mkdir_p(path, 0755), 0);
		struct sm_identity ident = {
		    .format_version = SM_FORMAT_VERSION, .target_id = i + 1, .chunk_size = CS};
		strcpy(ident.volume_uuid, VOL);
		snprintf(ident.target_uuid, sizeof(ident.target_uuid),
			 "00000000-0000-4000-8000-00000000000%u", i + 1);
		snprintf(url, sizeof(url), "dir:%s", path);
		assert_int_equal(sm_format(url, &ident, false, f->err, sizeof(f->err)), 0);
		assert_int_equal(sm_open(url, &ident, &nd->local, f->err, sizeof(f->err)), 0);
		node_listen(f, i, "tcp://127.0.0.1:0");
	}
	for (unsigned i = 0; i < NODES; i++)
		f->n[i].ds = open_ds(f, &f->n[i], false);
	f->client = open_ds(f, NULL, true);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	ds_close(f->client);
	for (unsigned i = 0; i < NODES; i++) {
		if (f->n[i].srv)
			node_kill(f, i);
		ds_close(f->n[i].ds);
		sm_close(f->n[i].local);
	}
	nftw(f->dir, rm_cb, 64, FTW_DEPTH | FTW_PHYS);
	pthread_mutex_destroy(&f->lock);
	pthread_cond_destroy(&f->gate_cond);
	free(f);
	return 0;
}

static void fill(char *buf, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)(seed * 31 + i * 7 + (i >> 9));
}

/* Does target i hold exactly buf at ino, chunk 0? */
static bool holds(struct fx *f, unsigned i, uint64_t ino, const char *buf, size_t n)
{
	char *got = malloc(n);
	struct sm_target *t = f->n[i].local;
	bool ok = t->ops->read(t, ino, 0, got, n, 0) == (ssize_t)n && !memcmp(got, buf, n);
	free(got);
	return ok;
}

static void test_forwarding(void **state)
{
	struct fx *f = *state;
	char buf[20000];

	/* 1. through the primary to every member; the others applied copies only */
	fill(buf, sizeof(buf), 1);
	assert_int_equal(ds_write(f->client, 10, buf, sizeof(buf), 0), sizeof(buf));
	for (unsigned i = 0; i < NODES; i++)
		assert_true(holds(f, i, 10, buf, sizeof(buf)));
	assert_int_equal(f->n[0].forwarded, 1);
	assert_int_equal(f->n[0].local_applied, 0);
	assert_int_equal(f->n[1].forwarded + f->n[2].forwarded, 0);
	assert_int_equal(f->n[1].local_applied, 1);
	assert_int_equal(f->n[2].local_applied, 1);
	char rd[sizeof(buf)];
	assert_int_equal(ds_read(f->client, 10, rd, sizeof(rd), 0), sizeof(rd));
	assert_memory_equal(rd, buf, sizeof(buf));

	/* 2. a member is gone: it leaves the chain before the write returns, and misses it */
	node_kill(f, 2);
	fill(buf, sizeof(buf), 2);
	assert_int_equal(ds_write(f->client, 11, buf, sizeof(buf), 0), sizeof(buf));
	struct ds_chain_cfg c = db_get(f);
	assert_int_equal(c.epoch, 2);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.members[0], 1);
	assert_int_equal(c.members[1], 2);
	assert_true(holds(f, 0, 11, buf, sizeof(buf)) && holds(f, 1, 11, buf, sizeof(buf)));
	assert_false(holds(f, 2, 11, buf, sizeof(buf)));

	/* 3. the chain moved on without the client: -ESTALE, re-read, retry */
	uint32_t same[] = {1, 2};
	assert_int_equal(db_set(f, 2, same, 2, NULL), 0);
	fill(buf, sizeof(buf), 3);
	assert_int_equal(ds_write(f->client, 12, buf, sizeof(buf), 0), sizeof(buf));
	assert_int_equal(ds_chunk_chain(f->client, 12, 0, &c), 0);
	assert_int_equal(c.epoch, 3);
	assert_true(holds(f, 0, 12, buf, sizeof(buf)) && holds(f, 1, 12, buf, sizeof(buf)));
}

struct later {
	struct fx *f;
	unsigned delay_ms;
};

static void *manager_later(void *arg)
{
	struct later *l = arg;
	usleep(l->delay_ms * 1000);
	struct ds_chain_cfg c = db_get(l->f);
	uint32_t m[] = {2};
	assert_int_equal(db_set(l->f, c.epoch, m, 1, NULL), 0);
	return NULL;
}

static void test_dead_primary(void **state)
{
	struct fx *f = *state;
	char buf[9000];
	/* the primary dies; the "manager" removes it after a while: the client waits for it */
	node_kill(f, 0);
	pthread_t th;
	struct later l = {.f = f, .delay_ms = 300};
	pthread_create(&th, NULL, manager_later, &l);
	fill(buf, sizeof(buf), 4);
	assert_int_equal(ds_write(f->client, 13, buf, sizeof(buf), 0), sizeof(buf));
	pthread_join(th, NULL);
	assert_true(holds(f, 1, 13, buf, sizeof(buf)));
	assert_false(holds(f, 0, 13, buf, sizeof(buf)));
	char rd[sizeof(buf)];
	assert_int_equal(ds_read(f->client, 13, rd, sizeof(rd), 0), sizeof(rd));
	assert_memory_equal(rd, buf, sizeof(buf));

	/* the last member dies and nothing changes: -EIO after stall_ms, not a hang */
	node_kill(f, 1);
	assert_int_equal(ds_write(f->client, 14, buf, sizeof(buf), 0), -EIO);
}

static unsigned reads_at(struct fx *f, unsigned i)
{
	return __atomic_load_n(&f->n[i].reads, __ATOMIC_RELAXED);
}

static void read_equals(struct ds *ds, uint64_t ino, const char *buf, size_t n)
{
	char *rd = malloc(n);
	assert_int_equal(ds_read(ds, ino, rd, n, 0), n);
	assert_memory_equal(rd, buf, n);
	free(rd);
}

/* DS-6: a mount on node 2 (or 3) reads from its own member, never the primary; a read right
 * after its own write sees it; a weak volume reads the primary; a dead local node and a member
 * dropped from the chain send the read to the primary, with the new data, not the old copy. */
static void test_local_reads(void **state)
{
	struct fx *f = *state;
	struct ds *on2 = open_ds_on(f, NULL, true, 2, DS_STRONG);
	struct ds *on3 = open_ds_on(f, NULL, true, 3, DS_STRONG);
	struct ds *weak2 = open_ds_on(f, NULL, true, 2, DS_WEAK);
	char buf[20000];
	struct ds_stats st;

	/* 1. served by node 2's member: the primary sees no read */
	fill(buf, sizeof(buf), 5);
	assert_int_equal(ds_write(f->client, 20, buf, sizeof(buf), 0), sizeof(buf));
	read_equals(on2, 20, buf, sizeof(buf));
	assert_int_equal(reads_at(f, 0), 0);
	assert_int_equal(reads_at(f, 1), 1);
	ds_stats(on2, &st);
	assert_int_equal(st.local_reads, 1);
	assert_int_equal(st.local_fallbacks, 0);

	/* 2. its own write, then its read: every member applied it before the acknowledgement */
	for (unsigned k = 0; k < 20; k++) {
		fill(buf, sizeof(buf), 100 + k);
		assert_int_equal(ds_write(on2, 21, buf, sizeof(buf), 0), sizeof(buf));
		read_equals(on2, 21, buf, sizeof(buf));
	}
	assert_int_equal(reads_at(f, 0), 0);
	assert_int_equal(f->n[0].forwarded, 21);

	/* 3. a weak volume: secondaries lag, so the primary answers */
	read_equals(weak2, 21, buf, sizeof(buf));
	assert_int_equal(reads_at(f, 0), 1);
	ds_stats(weak2, &st);
	assert_int_equal(st.local_reads, 0);

	/* 4. node 2 is gone: the read falls back to the primary */
	node_kill(f, 1);
	read_equals(on2, 21, buf, sizeof(buf));
	assert_int_equal(reads_at(f, 0), 2);
	ds_stats(on2, &st);
	assert_int_equal(st.local_fallbacks, 1);

	/* 5. node 3's member leaves the chain (epoch 2); a write lands on the others only (node 2
	 * is dead too: epoch 3, the primary alone). on3 still holds epoch 1 and asks node 3, which
	 * refuses the old epoch: on3 re-reads the chain and the primary answers the new bytes,
	 * though node 3 still holds the old ones. */
	read_equals(on3, 20, (fill(buf, sizeof(buf), 5), buf), sizeof(buf));
	assert_int_equal(reads_at(f, 2), 1);
	uint32_t m12[] = {1, 2};
	assert_int_equal(db_set(f, 1, m12, 2, NULL), 0);
	char nbuf[sizeof(buf)];
	fill(nbuf, sizeof(nbuf), 6);
	assert_int_equal(ds_write(f->client, 20, nbuf, sizeof(nbuf), 0), sizeof(nbuf));
	assert_true(holds(f, 2, 20, buf, sizeof(buf))); /* the old copy */
	unsigned before = reads_at(f, 0);
	read_equals(on3, 20, nbuf, sizeof(nbuf));
	assert_int_equal(reads_at(f, 2), 2); /* asked, refused */
	assert_int_equal(reads_at(f, 0), before + 1);
	ds_stats(on3, &st);
	assert_int_equal(st.local_reads, 1);
	assert_int_equal(st.local_fallbacks, 1);
	/* the next read goes to the primary at once: node 3 is no member any more */
	read_equals(on3, 20, nbuf, sizeof(nbuf));
	assert_int_equal(reads_at(f, 2), 2);

	ds_close(on2);
	ds_close(on3);
	ds_close(weak2);
}

static void gate(struct fx *f, bool closed)
{
	pthread_mutex_lock(&f->lock);
	f->gate_closed = closed;
	pthread_cond_broadcast(&f->gate_cond);
	pthread_mutex_unlock(&f->lock);
}

/* rp_next_fn over the recorded dirty chunks (each handed out once) */
static int next_dirty(void *ctx, struct rp_ref *ret, unsigned max)
{
	struct fx *f = ctx;
	pthread_mutex_lock(&f->lock);
	unsigned n = MIN(max, f->ndirty);
	memcpy(ret, f->dirty, n * sizeof(*ret));
	memmove(f->dirty, f->dirty + n, (f->ndirty - n) * sizeof(*ret));
	f->ndirty -= n;
	pthread_mutex_unlock(&f->lock);
	return (int)n;
}

/* the lock a node's catch-up of async target 3 takes (tools/node.c node_rp_lock) */
static void async_lock(void *ctx, uint64_t ino, uint32_t idx, bool lock)
{
	struct fx *f = ctx;
	ds_chunk_lock(f->n[0].ds, ino, idx, lock);
	if (lock)
		ds_async_drain(f->n[0].ds, 3);
}

/* DS-7: target 3 is async beside members 1 and 2. A write is acknowledged while node 3 is held
 * (it was not waited for), and lands there once released; with node 3 down writes are still
 * acknowledged, the chain does not change, and the chunks it missed are recorded; a catch-up
 * from those records makes its copy whole. */
static void test_async_target(void **state)
{
	struct fx *f = *state;
	char buf[20000], b2[sizeof(buf)];
	struct ds_stats st;

	pthread_mutex_lock(&f->lock);
	f->chain = (struct ds_chain_cfg){
	    .id = 0, .epoch = 2, .nmembers = 2, .members = {1, 2}, .nasync = 1, .async = {3}};
	pthread_mutex_unlock(&f->lock);

	/* 1. held: acknowledged anyway; then it arrives, in order after an overwrite */
	gate(f, true);
	fill(buf, sizeof(buf), 7);
	assert_int_equal(ds_write(f->client, 30, buf, sizeof(buf), 0), sizeof(buf));
	fill(b2, sizeof(b2), 8);
	assert_int_equal(ds_write(f->client, 30, b2, 5000, 0), 5000);
	memcpy(buf, b2, 5000);
	assert_true(holds(f, 0, 30, buf, sizeof(buf)) && holds(f, 1, 30, buf, sizeof(buf)));
	assert_false(holds(f, 2, 30, buf, sizeof(buf)));
	ds_stats(f->n[0].ds, &st);
	assert_true(st.async_lag_bytes > 0);
	gate(f, false);
	assert_int_equal(ds_async_drain(f->n[0].ds, 3), 0);
	assert_true(holds(f, 2, 30, buf, sizeof(buf)));
	ds_stats(f->n[0].ds, &st);
	assert_int_equal(st.async_lag_bytes, 0);
	assert_int_equal(st.async_missed, 0);
	/* never read: a client on node 3 reads from the primary */
	struct ds *on3 = open_ds_on(f, NULL, true, 3, DS_STRONG);
	read_equals(on3, 30, buf, sizeof(buf));
	assert_int_equal(reads_at(f, 2), 0);
	ds_close(on3);

	/* 2. down: acknowledged, the chain unchanged, the misses recorded */
	node_kill(f, 2);
	for (unsigned k = 0; k < 3; k++) {
		fill(buf, sizeof(buf), 9 + k);
		assert_int_equal(ds_write(f->client, 31 + k, buf, sizeof(buf), 0), sizeof(buf));
	}
	assert_int_equal(ds_async_drain(f->n[0].ds, 3), 0);
	struct ds_chain_cfg c = db_get(f);
	assert_int_equal(c.epoch, 2);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.nasync, 1);
	ds_stats(f->n[0].ds, &st);
	assert_int_equal(st.async_missed, 3);
	pthread_mutex_lock(&f->lock);
	assert_int_equal(f->ndirty, 3);
	for (unsigned k = 0; k < 3; k++)
		assert_int_equal(f->dirty[k].ino, 31 + k);
	pthread_mutex_unlock(&f->lock);
	assert_false(holds(f, 2, 33, buf, sizeof(buf)));

	/* 3. back (a serve restarts on its listen address): what it missed is copied from the
	 * records, including a write that came while its client was still reconnecting */
	char addr[XP_URL_MAX];
	snprintf(addr, sizeof(addr), "%s", f->addr[2]);
	node_listen(f, 2, addr);
	fill(b2, sizeof(b2), 20);
	assert_int_equal(ds_write(f->client, 34, b2, sizeof(b2), 0), sizeof(b2));
	assert_int_equal(ds_async_drain(f->n[0].ds, 3), 0);
	pthread_mutex_lock(&f->lock);
	unsigned recorded = f->ndirty;
	pthread_mutex_unlock(&f->lock);
	struct rp_opts o = {.kind = RP_RESYNC,
			    .src = f->n[0].local,
			    .dst = f->n[2].local,
			    .next = next_dirty,
			    .lock = async_lock,
			    .ctx = f};
	struct rp_progress p;
	assert_int_equal(rp_run(&o, &p, f->err, sizeof(f->err)), 0);
	assert_int_equal(p.chunks_done, recorded);
	for (unsigned k = 0; k < 3; k++) {
		fill(buf, sizeof(buf), 9 + k);
		assert_true(holds(f, 2, 31 + k, buf, sizeof(buf)));
	}
	assert_true(holds(f, 2, 34, b2, sizeof(b2)));
	/* and new writes reach it by forwarding again (once its client reconnected) */
	bool arrived = false;
	for (unsigned k = 0; k < 100 && !arrived; k++) {
		fill(b2, sizeof(b2), 40 + k);
		assert_int_equal(ds_write(f->client, 35, b2, sizeof(b2), 0), sizeof(b2));
		assert_int_equal(ds_async_drain(f->n[0].ds, 3), 0);
		arrived = holds(f, 2, 35, b2, sizeof(b2));
		if (!arrived)
			usleep(20000);
	}
	assert_true(arrived);
}

struct unfence {
	struct node *nd;
	unsigned delay_ms;
};

static void *unfence_later(void *arg)
{
	struct unfence *u = arg;
	usleep(u->delay_ms * 1000u);
	__atomic_store_n(&u->nd->fenced, 0, __ATOMIC_RELEASE);
	return NULL;
}

/* A member that fences itself for a moment and comes back without any chain change (its lease
 * lapsed while it was busy, then it renewed): a client's fsync, which asks every member, waits
 * for it and succeeds — it neither fails nor waits for a chain change that never comes. */
static void test_member_fenced_for_a_moment(void **state)
{
	struct fx *f = *state;
	char buf[9000];
	fill(buf, sizeof(buf), 7);
	assert_int_equal(ds_write(f->client, 21, buf, sizeof(buf), 0), sizeof(buf));
	struct ds_chain_cfg before = db_get(f);
	struct node *member = &f->n[before.members[before.nmembers - 1] - 1];
	__atomic_store_n(&member->fenced, 1, __ATOMIC_RELEASE);
	pthread_t th;
	struct unfence u = {.nd = member, .delay_ms = 300};
	pthread_create(&th, NULL, unfence_later, &u);
	assert_int_equal(ds_fsync(f->client, 21), 0);
	pthread_join(th, NULL);
	assert_int_equal(db_get(f).epoch, before.epoch);

	/* fenced for good and never taken out: -EIO after stall_ms, not a hang */
	__atomic_store_n(&member->fenced, 1, __ATOMIC_RELEASE);
	assert_int_equal(ds_fsync(f->client, 21), -EIO);
	__atomic_store_n(&member->fenced, 0, __ATOMIC_RELEASE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_forwarding),
	    cmocka_unit_test(test_member_fenced_for_a_moment),
	    cmocka_unit_test(test_dead_primary),
	    cmocka_unit_test_setup_teardown(test_local_reads, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_async_target, setup, teardown),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
