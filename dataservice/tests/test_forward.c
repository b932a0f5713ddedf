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
 * client gives up with -EIO after stall_ms.
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
};

struct fx {
	char dir[256];
	char err[512];
	struct node n[NODES];
	char addr[NODES][XP_URL_MAX]; /* tcp://127.0.0.1:PORT */
	struct ds *client;
	/* the "database": one chain */
	pthread_mutex_t lock;
	struct ds_chain_cfg chain; /* protected by lock */
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
	if (q->chain == PROTO_NO_CHAIN)
		return 0;
	struct ds_chain_cfg c = db_get(nd->fx);
	ds_chain_load(nd->ds, &c);
	*ret_current = c.epoch;
	return q->epoch == c.epoch ? 0 : -ESTALE;
}

static int forward(void *ctx, const struct xp_req *req)
{
	struct node *nd = ctx;
	struct ds_chain_cfg c = db_get(nd->fx);
	if (c.members[0] != req->hdr.target) {
		__atomic_add_fetch(&nd->local_applied, 1, __ATOMIC_RELAXED);
		return RPC_LOCAL;
	}
	__atomic_add_fetch(&nd->forwarded, 1, __ATOMIC_RELAXED);
	const struct proto_body *b = &req->body;
	return ds_chunk_apply(nd->ds, DS_CHUNK_WRITE, b->ino, b->idx, b->off, b->data_len, b->data);
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

static struct ds *open_ds(struct fx *f, struct node *nd, bool fwd)
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
				.target_url = fwd ? target_url : node_target_url};
	strcpy(cfg.volume_uuid, VOL);
	struct ds *ds;
	if (ds_open(&cfg, &ds, f->err, sizeof(f->err)))
		fail_msg("ds_open: %s", f->err);
	return ds;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(f->dir, sizeof(f->dir), "%s/fwdtest.XXXXXX", tmp);
	if (!mkdtemp(f->dir))
		return -1;
	pthread_mutex_init(&f->lock, NULL);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_forwarding),
	    cmocka_unit_test(test_dead_primary),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
