/* rpc_target — remote targets over a transport, and the server that runs their requests.
 * See rpc_target.h (RPC-n), proto.h (PROTO-n), transport.h (XP-n), docs/protocol.md.
 *
 * DEDUPLICATION (RPC-2, RPC-3)
 *   The server keeps, per origin (a client instance), a ring of `window` slots; write id w
 *   lives in slot w % window as {id, running|done, status}. A slot only ever moves to a larger
 *   id. So for a mutating request with id w:
 *     slot.id == w           a repeat: wait while it runs, answer its status;
 *     slot.id  > w           w fell out of the window: cannot tell (-EIO);
 *     slot.id  < w           w was never applied under this record (had it been, the slot
 *                            would hold w or more): apply it — unless it is a RETRY older
 *                            than the record itself (`floor`, the first id the record saw),
 *                            which an earlier record, since forgotten, may have applied.
 *   A RETRY from an origin without a record is refused (-EIO): the server restarted or forgot
 *   the origin, and the first attempt may have been applied. A record is forgotten only when
 *   idle for horizon_ms (RPC-3), longer than any client retries.
 */
#include "dataservice/rpc_target.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"

/* ---------------------------------------------------------------------------------------- */
/* client: a remote target */

struct rpc_target {
	struct sm_target base; /* first */
	struct xp_client *xc;
	bool own_xc;
	uint32_t target_id;
	struct sm_identity id;
	rpc_chain_fn chain_of;
	void *chain_ctx;
	bool local;	      /* rpc_target_set_local */
	uint64_t stale_epoch; /* __atomic */
};

static struct rpc_target *rt(struct sm_target *t)
{
	return (struct rpc_target *)t;
}

/* Does the request address one chunk (and so carry its chain's epoch)? */
static bool op_is_chunk(uint16_t op)
{
	return op == PROTO_OP_READ || op == PROTO_OP_WRITE || op == PROTO_OP_TRUNCATE ||
	       op == PROTO_OP_PUNCH || op == PROTO_OP_ALLOCATE || op == PROTO_OP_SEEK ||
	       op == PROTO_OP_CHUNK_LENGTH;
}

/* One request and its reply (RPC-4). 0 and *ret (xp_resp_fini it), or -errno: the transport's,
 * or the reply's status. */
static int rpc_call(struct rpc_target *t, uint16_t op, struct proto_body *b, struct xp_resp *ret)
{
	struct xp_msg m = {.op = op, .chain = PROTO_NO_CHAIN, .target = t->target_id, .body = b};
	if (t->chain_of && op_is_chunk(op)) {
		int r = t->chain_of(t->chain_ctx, b->ino, b->idx, &m.chain, &m.epoch);
		if (r < 0)
			return r;
	}
	if (t->local && proto_op_local_ok(op))
		m.flags |= PROTO_F_LOCAL;
	bool mut = proto_op_mutates(op);
	if (mut) {
		b->origin = t->xc->instance;
		b->write_id = xp_write_id(t->xc);
	}
	int r;
	for (int attempt = 0;; attempt++) {
		r = xp_call(t->xc, &m, ret);
		if (r != -ECONNRESET || attempt >= RPC_RETRIES)
			break;
		if (mut)
			m.flags |= PROTO_F_RETRY;
	}
	if (r < 0)
		return r;
	int st = ret->hdr.status;
	if (st < 0) {
		if (st == -ESTALE)
			__atomic_store_n(&t->stale_epoch, ret->hdr.epoch, __ATOMIC_RELAXED);
		log_debug("rpc: %s: %s: %s", t->base.url, proto_op_name(op), ret->body.reason);
		xp_resp_fini(ret);
	}
	return st;
}

/* A request whose reply carries nothing the caller needs. */
static int rpc_call0(struct rpc_target *t, uint16_t op, struct proto_body *b)
{
	struct xp_resp r;
	int st = rpc_call(t, op, b, &r);
	if (st == 0)
		xp_resp_fini(&r);
	return st;
}

static int rpc_format(const char *url, const struct sm_identity *id, bool force, char *err,
		      size_t errlen)
{
	set_err(err, errlen, "%s: a remote target is formatted on its own node", url);
	return -EOPNOTSUPP;
}

static int rpc_format_check(const char *url, bool force, char *err, size_t errlen)
{
	return rpc_format(url, NULL, force, err, errlen);
}

static int rpc_identity(struct sm_target *t, struct sm_identity *ret)
{
	*ret = rt(t)->id;
	return 0;
}

/* SM-1 against what the caller expects. */
static int identity_check(const char *url, const struct sm_identity *id,
			  const struct sm_identity *expect, char *err, size_t errlen)
{
	if (!expect)
		return 0;
	if (expect->volume_uuid[0] && strcmp(expect->volume_uuid, id->volume_uuid)) {
		set_err(err, errlen, "target %s belongs to volume %s, not to volume %s", url,
			id->volume_uuid, expect->volume_uuid);
		return -EINVAL;
	}
	if (expect->target_id != id->target_id) {
		set_err(err, errlen, "target %s is target id %u, expected target id %u", url,
			id->target_id, expect->target_id);
		return -EINVAL;
	}
	if (expect->target_uuid[0] && strcmp(expect->target_uuid, id->target_uuid)) {
		set_err(err, errlen, "target %s has target UUID %s, expected %s", url,
			id->target_uuid, expect->target_uuid);
		return -EINVAL;
	}
	if (expect->chunk_size && expect->chunk_size != id->chunk_size) {
		set_err(err, errlen, "target %s has chunk size %u, the volume has %u", url,
			id->chunk_size, expect->chunk_size);
		return -EINVAL;
	}
	return 0;
}

int rpc_target_open(struct xp_client *xc, uint32_t target_id, const struct sm_identity *expect,
		    struct sm_target **ret, char *err, size_t errlen)
{
	struct rpc_target *t = calloc(1, sizeof(*t));
	if (!t) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	t->base.ops = &rpc_target_ops;
	snprintf(t->base.url, sizeof(t->base.url), "%s/%u", xc->url, target_id);
	t->xc = xc;
	t->target_id = target_id;
	struct proto_body b;
	memset(&b, 0, sizeof(b));
	struct xp_resp r;
	int st = rpc_call(t, PROTO_OP_IDENTITY, &b, &r);
	if (st < 0) {
		set_err(err, errlen, "target %s: %s", t->base.url,
			st == -ENODEV ? "the node serves no such target" : strerror(-st));
		free(t);
		return st;
	}
	t->id = r.body.ident;
	xp_resp_fini(&r);
	if (t->id.target_id != target_id) {
		set_err(err, errlen, "target %s answered as target id %u", t->base.url,
			t->id.target_id);
		free(t);
		return -EBADMSG;
	}
	st = identity_check(t->base.url, &t->id, expect, err, errlen);
	if (st < 0) {
		free(t);
		return st;
	}
	*ret = &t->base;
	return 0;
}

/* tcp://HOST:PORT/TARGET_ID[?timeout_ms=N&dead_ms=N] */
static int rpc_open(const char *url, const struct sm_identity *expect, struct sm_target **ret,
		    char *err, size_t errlen)
{
	struct url u;
	char why[128], v[32];
	if (url_parse(url, &u, why, sizeof(why)) < 0) {
		set_err(err, errlen, "%s", why);
		return -EINVAL;
	}
	char *end;
	unsigned long id = strtoul(u.path[0] == '/' ? u.path + 1 : "", &end, 10);
	if (!u.has_authority || u.port <= 0 || u.path[0] != '/' || !u.path[1] || *end ||
	    id > UINT32_MAX) {
		set_err(err, errlen, "'%s' is not a remote target URL (tcp://HOST:PORT/TARGET_ID)",
			url);
		return -EINVAL;
	}
	struct xp_client_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	if (expect)
		memcpy(cfg.volume_uuid, expect->volume_uuid, sizeof(cfg.volume_uuid));
	if (url_query_get(&u, "timeout_ms", v, sizeof(v)) == 0)
		cfg.timeout_ms = (unsigned)strtoul(v, NULL, 10);
	if (url_query_get(&u, "dead_ms", v, sizeof(v)) == 0)
		cfg.dead_ms = (unsigned)strtoul(v, NULL, 10);
	char xurl[XP_URL_MAX];
	snprintf(xurl, sizeof(xurl), strchr(u.host, ':') ? "%s://[%s]:%d" : "%s://%s:%d", u.scheme,
		 u.host, u.port);
	struct xp_client *xc;
	int r = xp_connect(xurl, &cfg, &xc, err, errlen);
	if (r < 0)
		return r;
	r = rpc_target_open(xc, (uint32_t)id, expect, ret, err, errlen);
	if (r < 0) {
		xp_client_free(xc);
		return r;
	}
	struct rpc_target *t = rt(*ret);
	t->own_xc = true;
	snprintf(t->base.url, sizeof(t->base.url), "%s", url);
	return 0;
}

static void rpc_close(struct sm_target *st)
{
	if (!st)
		return;
	struct rpc_target *t = rt(st);
	if (t->own_xc)
		xp_client_free(t->xc);
	free(t);
}

int rpc_target_set_chain_fn(struct sm_target *st, rpc_chain_fn fn, void *ctx)
{
	if (!st || st->ops != &rpc_target_ops)
		return -EINVAL;
	rt(st)->chain_of = fn;
	rt(st)->chain_ctx = ctx;
	return 0;
}

int rpc_target_set_local(struct sm_target *st)
{
	if (!st || st->ops != &rpc_target_ops)
		return -EINVAL;
	rt(st)->local = true;
	return 0;
}

uint64_t rpc_target_stale_epoch(struct sm_target *st)
{
	return __atomic_load_n(&rt(st)->stale_epoch, __ATOMIC_RELAXED);
}

static ssize_t rpc_read(struct sm_target *st, uint64_t ino, uint32_t idx, void *buf, size_t len,
			uint64_t off)
{
	struct rpc_target *t = rt(st);
	for (size_t done = 0; done < len || (len == 0 && done == 0);) {
		size_t n = MIN(len - done, (size_t)PROTO_MAX_DATA);
		struct proto_body b = {.ino = ino, .idx = idx, .off = off + done, .len = n};
		struct xp_resp r;
		int s = rpc_call(t, PROTO_OP_READ, &b, &r);
		if (s < 0)
			return s;
		bool ok = r.body.data_len == n;
		if (ok && n)
			memcpy((char *)buf + done, r.body.data, n);
		xp_resp_fini(&r);
		if (!ok) /* SM-2: a read is never short, so a short reply is a broken peer */
			return -EBADMSG;
		if (n == 0)
			break;
		done += n;
	}
	return (ssize_t)len;
}

static ssize_t rpc_write(struct sm_target *st, uint64_t ino, uint32_t idx, const void *buf,
			 size_t len, uint64_t off)
{
	struct rpc_target *t = rt(st);
	for (size_t done = 0; done < len || (len == 0 && done == 0);) {
		size_t n = MIN(len - done, (size_t)PROTO_MAX_DATA);
		struct proto_body b = {.ino = ino,
				       .idx = idx,
				       .off = off + done,
				       .data = (const uint8_t *)buf + done,
				       .data_len = (uint32_t)n};
		int s = rpc_call0(t, PROTO_OP_WRITE, &b);
		if (s < 0)
			return s;
		if (n == 0)
			break;
		done += n;
	}
	return (ssize_t)len;
}

static int rpc_truncate(struct sm_target *st, uint64_t ino, uint32_t idx, uint64_t len)
{
	struct proto_body b = {.ino = ino, .idx = idx, .len = len};
	return rpc_call0(rt(st), PROTO_OP_TRUNCATE, &b);
}

static int rpc_punch(struct sm_target *st, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len)
{
	struct proto_body b = {.ino = ino, .idx = idx, .off = off, .len = len};
	return rpc_call0(rt(st), PROTO_OP_PUNCH, &b);
}

static int rpc_allocate(struct sm_target *st, uint64_t ino, uint32_t idx, uint64_t off,
			uint64_t len)
{
	struct proto_body b = {.ino = ino, .idx = idx, .off = off, .len = len};
	return rpc_call0(rt(st), PROTO_OP_ALLOCATE, &b);
}

static int rpc_remove(struct sm_target *st, uint64_t ino, uint32_t from_idx)
{
	struct proto_body b = {.ino = ino, .idx = from_idx};
	return rpc_call0(rt(st), PROTO_OP_REMOVE, &b);
}

/* A request answered with one number (proto_body.value). */
static int rpc_value(struct sm_target *st, uint16_t op, struct proto_body *b, uint64_t *ret)
{
	struct xp_resp r;
	int s = rpc_call(rt(st), op, b, &r);
	if (s < 0)
		return s;
	*ret = r.body.value;
	xp_resp_fini(&r);
	return 0;
}

static int rpc_seek(struct sm_target *st, uint64_t ino, uint32_t idx, uint64_t off, int whence,
		    uint64_t *ret)
{
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	struct proto_body b = {.ino = ino,
			       .idx = idx,
			       .off = off,
			       .whence = whence == SEEK_DATA ? PROTO_SEEK_DATA : PROTO_SEEK_HOLE};
	return rpc_value(st, PROTO_OP_SEEK, &b, ret);
}

static int rpc_chunk_length(struct sm_target *st, uint64_t ino, uint32_t idx, uint64_t *ret)
{
	struct proto_body b = {.ino = ino, .idx = idx};
	return rpc_value(st, PROTO_OP_CHUNK_LENGTH, &b, ret);
}

static int rpc_sync_ino(struct sm_target *st, uint64_t ino)
{
	struct proto_body b = {.ino = ino};
	return rpc_call0(rt(st), PROTO_OP_SYNC_INO, &b);
}

static int rpc_sync_all(struct sm_target *st)
{
	struct proto_body b = {.ino = 0};
	return rpc_call0(rt(st), PROTO_OP_SYNC_ALL, &b);
}

static int rpc_statfs(struct sm_target *st, struct sm_statfs *ret)
{
	struct proto_body b = {.ino = 0};
	struct xp_resp r;
	int s = rpc_call(rt(st), PROTO_OP_STATFS, &b, &r);
	if (s < 0)
		return s;
	*ret = r.body.statfs;
	xp_resp_fini(&r);
	return 0;
}

struct list_ctx {
	sm_chunk_cb cb;
	void *ctx;
};

static int list_page(void *ctx, const struct xp_resp *r)
{
	struct list_ctx *l = ctx;
	for (uint32_t i = 0; i < r->body.count; i++) {
		struct sm_chunk_info ci;
		proto_list_get(&r->body, i, &ci);
		int s = l->cb(l->ctx, &ci);
		if (s)
			return s;
	}
	return 0;
}

static int rpc_list(struct sm_target *st, sm_chunk_cb cb, void *ctx)
{
	struct rpc_target *t = rt(st);
	struct proto_body b = {.count = PROTO_LIST_MAX_PAGE};
	struct xp_msg m = {
	    .op = PROTO_OP_LIST, .chain = PROTO_NO_CHAIN, .target = t->target_id, .body = &b};
	struct list_ctx l = {cb, ctx};
	/* not retried: the callback has seen part of the list already */
	return xp_call_stream(t->xc, &m, list_page, &l);
}

const struct sm_ops rpc_target_ops = {
    .scheme = "tcp",
    .caps = SM_CAP_SPARSE | SM_CAP_PUNCH,
    .format = rpc_format,
    .format_check = rpc_format_check,
    .open = rpc_open,
    .close = rpc_close,
    .identity = rpc_identity,
    .read = rpc_read,
    .write = rpc_write,
    .truncate = rpc_truncate,
    .punch = rpc_punch,
    .allocate = rpc_allocate,
    .remove = rpc_remove,
    .seek = rpc_seek,
    .chunk_length = rpc_chunk_length,
    .sync_ino = rpc_sync_ino,
    .sync_all = rpc_sync_all,
    .statfs = rpc_statfs,
    .list = rpc_list,
};

/* ---------------------------------------------------------------------------------------- */
/* server */

enum { DD_EMPTY = 0, DD_RUNNING, DD_DONE };

struct dd_slot {
	uint64_t id;
	int32_t status;
	uint8_t state;
};

struct dd_origin {
	uint64_t origin;
	uint64_t floor; /* the first write id this record saw */
	int64_t last_use;
	struct dd_slot *slots;
	struct dd_origin *hnext;
};

struct rpc_server {
	struct rpc_server_cfg cfg;
	struct sm_target **targets;
	uint32_t *target_ids;

	pthread_mutex_t dd_lock;
	pthread_cond_t dd_cv; /* a running write finished */
	struct dd_origin **dd_hash;
	unsigned dd_mask, dd_count;
};

#define DD_BUCKETS 256

int rpc_server_new(const struct rpc_server_cfg *cfg, struct rpc_server **ret, char *err,
		   size_t errlen)
{
	unsigned window = cfg->window ? cfg->window : 1024;
	if (window & (window - 1)) {
		set_err(err, errlen, "deduplication window %u is not a power of 2", window);
		return -EINVAL;
	}
	struct rpc_server *s = calloc(1, sizeof(*s));
	if (!s) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	s->cfg = *cfg;
	s->cfg.window = window;
	s->cfg.origins = cfg->origins ? cfg->origins : 1024;
	s->cfg.horizon_ms = cfg->horizon_ms ? cfg->horizon_ms : 120000;
	s->targets = calloc(cfg->ntargets ? cfg->ntargets : 1, sizeof(*s->targets));
	s->target_ids = calloc(cfg->ntargets ? cfg->ntargets : 1, sizeof(*s->target_ids));
	s->dd_hash = calloc(DD_BUCKETS, sizeof(*s->dd_hash));
	s->dd_mask = DD_BUCKETS - 1;
	if (!s->targets || !s->target_ids || !s->dd_hash) {
		rpc_server_free(s);
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < cfg->ntargets; i++) {
		struct sm_identity id;
		int r = cfg->targets[i]->ops->identity(cfg->targets[i], &id);
		if (r < 0) {
			set_err(err, errlen, "target %s: identity: %s", cfg->targets[i]->url,
				strerror(-r));
			rpc_server_free(s);
			return r;
		}
		for (unsigned j = 0; j < i; j++) {
			if (s->target_ids[j] == id.target_id) {
				set_err(err, errlen, "targets %s and %s are both target id %u",
					cfg->targets[j]->url, cfg->targets[i]->url, id.target_id);
				rpc_server_free(s);
				return -EINVAL;
			}
		}
		s->targets[i] = cfg->targets[i];
		s->target_ids[i] = id.target_id;
	}
	s->cfg.targets = s->targets;
	pthread_mutex_init(&s->dd_lock, NULL);
	pthread_cond_init(&s->dd_cv, NULL);
	*ret = s;
	return 0;
}

void rpc_server_free(struct rpc_server *s)
{
	if (!s)
		return;
	if (s->dd_hash) {
		for (unsigned i = 0; i <= s->dd_mask; i++) {
			while (s->dd_hash[i]) {
				struct dd_origin *o = s->dd_hash[i];
				s->dd_hash[i] = o->hnext;
				free(o->slots);
				free(o);
			}
		}
		pthread_mutex_destroy(&s->dd_lock);
		pthread_cond_destroy(&s->dd_cv);
	}
	free(s->dd_hash);
	free(s->targets);
	free(s->target_ids);
	free(s);
}

static struct sm_target *find_target(struct rpc_server *s, uint32_t id)
{
	for (unsigned i = 0; i < s->cfg.ntargets; i++)
		if (s->target_ids[i] == id)
			return s->targets[i];
	return NULL;
}

static struct dd_origin **dd_find(struct rpc_server *s, uint64_t origin)
{
	struct dd_origin **pp = &s->dd_hash[(origin ^ (origin >> 17)) & s->dd_mask];
	while (*pp && (*pp)->origin != origin)
		pp = &(*pp)->hnext;
	return pp;
}

/* RPC-3: forget the least recently used origin idle for horizon_ms. false: none is. */
static bool dd_evict_locked(struct rpc_server *s, int64_t now)
{
	struct dd_origin **victim = NULL;
	for (unsigned i = 0; i <= s->dd_mask; i++)
		for (struct dd_origin **pp = &s->dd_hash[i]; *pp; pp = &(*pp)->hnext)
			if (!victim || (*pp)->last_use < (*victim)->last_use)
				victim = pp;
	if (!victim || now - (*victim)->last_use < (int64_t)s->cfg.horizon_ms * 1000000LL)
		return false;
	struct dd_origin *o = *victim;
	*victim = o->hnext;
	free(o->slots);
	free(o);
	s->dd_count--;
	return true;
}

enum dd_verdict { DD_NEW, DD_REPEAT, DD_UNKNOWN, DD_BUSY };

/* RPC-2: may (origin, id) run? DD_REPEAT: *status is the first run's. */
static enum dd_verdict dd_begin(struct rpc_server *s, uint64_t origin, uint64_t id, bool retry,
				int *status)
{
	int64_t now = now_monotonic_ns();
	enum dd_verdict v = DD_NEW;
	pthread_mutex_lock(&s->dd_lock);
	struct dd_origin **pp = dd_find(s, origin), *o = *pp;
	if (!o) {
		if (retry) {
			v = DD_UNKNOWN;
			goto out;
		}
		if (s->dd_count >= s->cfg.origins && !dd_evict_locked(s, now)) {
			v = DD_BUSY;
			goto out;
		}
		o = calloc(1, sizeof(*o));
		if (o && !(o->slots = calloc(s->cfg.window, sizeof(*o->slots)))) {
			free(o);
			o = NULL;
		}
		if (!o) {
			v = DD_BUSY;
			goto out;
		}
		o->origin = origin;
		o->floor = id;
		pp = dd_find(s, origin); /* eviction may have changed the chain */
		*pp = o;
		s->dd_count++;
	}
	o->last_use = now;
	struct dd_slot *sl = &o->slots[id & (s->cfg.window - 1)];
	if (sl->id == id && sl->state != DD_EMPTY) {
		while (sl->id == id && sl->state == DD_RUNNING)
			pthread_cond_wait(&s->dd_cv, &s->dd_lock);
		/* the slot cannot move past id while we wait: ids after it in the same slot are
		 * window ids away, and a client never has that many writes in flight */
		v = sl->id == id ? DD_REPEAT : DD_UNKNOWN;
		*status = sl->status;
	} else if (sl->id > id || (retry && id < o->floor)) {
		v = DD_UNKNOWN;
	} else if (sl->state == DD_RUNNING) {
		v = DD_BUSY; /* an older id of this slot still runs: more in flight than window */
	} else {
		sl->id = id;
		sl->state = DD_RUNNING;
	}
out:
	pthread_mutex_unlock(&s->dd_lock);
	return v;
}

static void dd_end(struct rpc_server *s, uint64_t origin, uint64_t id, int status)
{
	pthread_mutex_lock(&s->dd_lock);
	struct dd_origin *o = *dd_find(s, origin);
	if (o) {
		struct dd_slot *sl = &o->slots[id & (s->cfg.window - 1)];
		if (sl->id == id) {
			sl->state = DD_DONE;
			sl->status = status;
		}
	}
	pthread_cond_broadcast(&s->dd_cv);
	pthread_mutex_unlock(&s->dd_lock);
}

struct srv_list {
	struct xp_req *req;
	uint8_t *page;
	uint32_t n, max;
};

static int srv_list_cb(void *ctx, const struct sm_chunk_info *ci)
{
	struct srv_list *l = ctx;
	proto_list_put(l->page, l->n++, ci);
	if (l->n < l->max)
		return 0;
	struct proto_body b = {
	    .count = l->n, .data = l->page, .data_len = l->n * PROTO_LIST_ENTRY_SIZE};
	l->n = 0;
	int r = xp_reply_more(l->req, &b);
	return r < 0 ? r : 0; /* the peer is gone or stalled: stop listing */
}

static void srv_list(struct sm_target *t, struct xp_req *req)
{
	struct srv_list l = {.req = req, .max = req->body.count};
	l.page = malloc((size_t)l.max * PROTO_LIST_ENTRY_SIZE);
	if (!l.page) {
		xp_reply_err(req, -ENOMEM, "out of memory");
		return;
	}
	int r = t->ops->list(t, srv_list_cb, &l);
	if (r < 0) {
		xp_reply_err(req, r, "list of target %u: %s", req->hdr.target, strerror(-r));
	} else {
		struct proto_body b = {
		    .count = l.n, .data = l.page, .data_len = l.n * PROTO_LIST_ENTRY_SIZE};
		xp_reply(req, 0, 0, &b);
	}
	free(l.page);
}

/* Run one request against t; fills *out for replies with a body. Returns 0 or -errno. */
static int srv_exec(struct sm_target *t, const struct xp_req *req, struct proto_body *out,
		    void **ret_buf)
{
	const struct proto_body *b = &req->body;
	const struct sm_ops *o = t->ops;
	ssize_t n;
	int r = 0;
	switch (req->hdr.op) {
	case PROTO_OP_IDENTITY:
		r = o->identity(t, &out->ident);
		break;
	case PROTO_OP_READ:
		*ret_buf = xp_buf_alloc(b->len);
		if (!*ret_buf)
			return -ENOMEM;
		n = o->read(t, b->ino, b->idx, *ret_buf, b->len, b->off);
		if (n < 0)
			return (int)n;
		if ((uint64_t)n != b->len)
			return -EIO; /* sm.h: never short */
		out->data = *ret_buf;
		out->data_len = (uint32_t)n;
		break;
	case PROTO_OP_WRITE:
		n = o->write(t, b->ino, b->idx, b->data, b->data_len, b->off);
		r = n < 0 ? (int)n : 0;
		break;
	case PROTO_OP_TRUNCATE:
		r = o->truncate(t, b->ino, b->idx, b->len);
		break;
	case PROTO_OP_PUNCH:
		r = o->punch(t, b->ino, b->idx, b->off, b->len);
		break;
	case PROTO_OP_ALLOCATE:
		r = o->allocate(t, b->ino, b->idx, b->off, b->len);
		break;
	case PROTO_OP_REMOVE:
		r = o->remove(t, b->ino, b->idx);
		break;
	case PROTO_OP_SEEK:
		r = o->seek(t, b->ino, b->idx, b->off,
			    b->whence == PROTO_SEEK_DATA ? SEEK_DATA : SEEK_HOLE, &out->value);
		break;
	case PROTO_OP_CHUNK_LENGTH:
		r = o->chunk_length(t, b->ino, b->idx, &out->value);
		break;
	case PROTO_OP_SYNC_INO:
		r = o->sync_ino(t, b->ino);
		break;
	case PROTO_OP_SYNC_ALL:
		r = o->sync_all(t);
		break;
	case PROTO_OP_STATFS:
		r = o->statfs(t, &out->statfs);
		break;
	default:
		r = -EOPNOTSUPP;
	}
	return r;
}

void rpc_server_handle(void *ctx, struct xp_req *req)
{
	struct rpc_server *s = ctx;
	const struct proto_hdr *h = &req->hdr;
	const struct proto_body *b = &req->body;
	const char *opn = proto_op_name(h->op);
	struct sm_target *t = find_target(s, h->target);
	if (!t) {
		xp_reply_err(req, -ENODEV, "this node serves no target %u", h->target);
		return;
	}
	if (s->cfg.check_epoch) { /* RPC-1 */
		struct rpc_epoch_query q = {.op = h->op,
					    .flags = h->flags,
					    .target = h->target,
					    .chain = h->chain,
					    .epoch = h->epoch,
					    .ino = b->ino,
					    .idx = b->idx};
		uint64_t cur = 0;
		int r = s->cfg.check_epoch(s->cfg.ctx, &q, &cur);
		if (r == -ESTALE) {
			struct proto_body e;
			memset(&e, 0, sizeof(e));
			snprintf(e.reason, sizeof(e.reason), "chain %u is at epoch %llu, not %llu",
				 h->chain, (unsigned long long)cur, (unsigned long long)h->epoch);
			xp_reply(req, -ESTALE, cur, &e);
			return;
		}
		if (r < 0) {
			xp_reply_err(req, r, "%s refused: %s", opn, strerror(-r));
			return;
		}
	}
	if (h->op == PROTO_OP_LIST) {
		srv_list(t, req);
		return;
	}
	bool dedupe = proto_op_mutates(h->op) && b->write_id;
	if (dedupe) { /* RPC-2 */
		int st = 0;
		switch (dd_begin(s, b->origin, b->write_id, h->flags & PROTO_F_RETRY, &st)) {
		case DD_NEW:
			break;
		case DD_REPEAT:
			if (st < 0)
				xp_reply_err(req, st, "%s (answered again): %s", opn,
					     strerror(-st));
			else
				xp_reply(req, 0, 0, NULL);
			return;
		case DD_UNKNOWN:
			xp_reply_err(req, -EIO,
				     "cannot tell whether %s %llu of client %016llx was applied "
				     "(this server has no record of it)",
				     opn, (unsigned long long)b->write_id,
				     (unsigned long long)b->origin);
			return;
		case DD_BUSY:
			xp_reply_err(req, -EBUSY, "too many clients or writes in flight");
			return;
		}
	}
	struct proto_body out;
	memset(&out, 0, sizeof(out));
	void *buf = NULL;
	int r = RPC_LOCAL;
	if (s->cfg.forward && h->chain != PROTO_NO_CHAIN &&
	    (h->op == PROTO_OP_WRITE || h->op == PROTO_OP_TRUNCATE || h->op == PROTO_OP_PUNCH ||
	     h->op == PROTO_OP_ALLOCATE))
		r = s->cfg.forward(s->cfg.ctx, req);
	if (r == RPC_LOCAL)
		r = srv_exec(t, req, &out, &buf);
	if (dedupe)
		dd_end(s, b->origin, b->write_id, r);
	if (r < 0)
		xp_reply_err(req, r, "%s on target %u: %s", opn, h->target, strerror(-r));
	else
		xp_reply(req, 0, 0, &out);
	xp_buf_free(buf);
}
