/* node — the engine of `braidfs serve`. See node.h; docs/distributed.md is the design
 * (DIST-1..8) this file implements.
 *
 * A REQUEST (rpc_server, on a transport worker)
 *   1. check_epoch (RPC-1): a fenced node refuses everything that reads or changes data with
 *      -ESHUTDOWN (DIST-4); a request that names a chain must carry the epoch this node holds
 *      for it — a newer one makes the node re-read its chains first (DIST-2) — and address a
 *      member of it, else -ESTALE with the current epoch.
 *   2. forward (DIST-3): a mutating chunk request addressed to the chain's primary (a client's)
 *      goes through the node's data service: under the chunk's lock, to the local target and
 *      to every other member's node in parallel. A member that fails leaves the chain by an
 *      epoch-conditional chain_set committed here, the primary being the one that saw it
 *      fail, the database the witness (node_chain_failed); then the chunk is recorded dirty
 *      for it (DIST-7); then the write is acknowledged. A request addressed to another member
 *      (a primary's copy) is applied to the local target only.
 *   3. Before acknowledging, the lease is checked again: a node that fenced itself meanwhile
 *      answers -ESHUTDOWN (the client retries on the new primary; re-applying is harmless).
 *
 * WHY THE PRIMARY COMMITS A FAILED MEMBER'S REMOVAL ITSELF
 *   The manager may be the node that failed, or cut off, and a write must not wait for a new
 *   manager. The change is one conditional transaction on the epoch the primary holds: if
 *   the manager (or anyone) changed the chain meanwhile it fails with -ESTALE, the primary
 *   re-reads, and the client retries. A primary acts only while its lease is valid (checked
 *   before and after), so a cut-off primary cannot remove healthy members for long: it
 *   fences itself within lease_ms and the manager then removes it.
 *
 * THE MANAGER (DIST-1), in the heartbeat thread of the node holding the `manager` lease:
 *   every round, a node whose lease expired more than grace ago (or that marked itself down)
 *   is marked down and each of its targets leaves every chain (members and syncing) for
 *   `away`, one chain_set per chain, each checked against the manager's own fence first.
 */
#include "tools/node.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "dataservice/ds.h"
#include "dataservice/fence.h"
#include "dataservice/rpc_target.h"
#include "dataservice/transport.h"
#include "fs/meta/meta.h"
#include "storemgr/sm.h"
#include "tools/tools.h"

#define NODE_MANAGER_LEASE "manager"
#define NODE_DIRTY_CACHE   4096

struct node_dirty_slot {
	uint32_t chain, target;
	uint64_t ino;
	uint32_t idx;
	bool used;
};

struct node {
	struct cfg_node cfg;
	uint32_t id;
	struct meta *meta;
	struct meta_volume vol;

	struct meta_target *targets; /* the volume's targets as read at start */
	unsigned ntargets;

	/* this node's targets, opened once */
	struct sm_target *local[CFG_MAX_TARGETS];
	uint32_t local_id[CFG_MAX_TARGETS];
	unsigned nlocal;

	pthread_mutex_t chains_lock;
	struct meta_chain *chains; /* protected by chains_lock: the last chain table read */
	unsigned nchains;

	struct ds *ds;
	struct rpc_server *rpc;
	struct xp_server *xs;

	struct fence fence;	/* DIST-4 */
	struct fence mgr_fence; /* the manager lease, by the same rule */
	uint64_t mgr_generation;
	bool manager; /* heartbeat thread only */

	pthread_mutex_t dirty_lock;
	struct node_dirty_slot dirty[NODE_DIRTY_CACHE]; /* protected by dirty_lock */

	pthread_t hb;
	bool hb_running;
	pthread_mutex_t hb_lock;
	pthread_cond_t hb_cond;
	bool hb_stop; /* protected by hb_lock */
};

/* The chunk a forwarding worker is applying, for node_chain_failed's dirty record (DIST-7):
 * ds calls chain_failed on the thread that called ds_chunk_apply. */
static __thread struct {
	bool set;
	uint64_t ino;
	uint32_t idx;
} node_cur_chunk;

uint32_t node_id(const struct node *n)
{
	return n->id;
}

/* ---------------------------------------------------------------------------------------- */
/* the chain table */

static void chain_cfg_from(const struct meta_chain *m, struct ds_chain_cfg *c)
{
	memset(c, 0, sizeof(*c));
	c->id = m->id;
	c->epoch = m->epoch;
	c->nmembers = m->nmembers;
	memcpy(c->members, m->members, m->nmembers * sizeof(m->members[0]));
}

/* Re-read every chain from the database and install the newer ones (DIST-2). */
static int node_reload_chains(struct node *n)
{
	struct meta_chain *c = calloc(META_MAX_CHAINS, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int r = META_CALL(n->meta, chains_list, c, META_MAX_CHAINS);
	if (r < 0) {
		free(c);
		return r;
	}
	unsigned nc = (unsigned)MIN(r, META_MAX_CHAINS);
	for (unsigned i = 0; n->ds && i < nc; i++) {
		struct ds_chain_cfg dc;
		chain_cfg_from(&c[i], &dc);
		ds_chain_load(n->ds, &dc);
	}
	pthread_mutex_lock(&n->chains_lock);
	free(n->chains);
	n->chains = c;
	n->nchains = nc;
	pthread_mutex_unlock(&n->chains_lock);
	return 0;
}

/* chain id's roles as last read. */
static int node_chain_get(struct node *n, uint32_t chain, struct meta_chain *ret)
{
	int r = -ENOENT;
	pthread_mutex_lock(&n->chains_lock);
	for (unsigned i = 0; i < n->nchains; i++)
		if (n->chains[i].id == chain) {
			*ret = n->chains[i];
			r = 0;
			break;
		}
	pthread_mutex_unlock(&n->chains_lock);
	return r;
}

static bool list_has(const uint32_t *l, uint32_t n, uint32_t id)
{
	for (uint32_t i = 0; i < n; i++)
		if (l[i] == id)
			return true;
	return false;
}

static void list_del(uint32_t *l, uint32_t *n, uint32_t id)
{
	uint32_t k = 0;
	for (uint32_t i = 0; i < *n; i++)
		if (l[i] != id)
			l[k++] = l[i];
	*n = k;
}

/* Take target out of chain c (members and syncing) into away: one conditional chain_set.
 * 0 and *ret_epoch, -ESTALE (the chain moved on), -EINVAL (it is the last member), -errno. */
static int node_chain_away(struct node *n, const struct meta_chain *c, uint32_t target,
			   uint64_t *ret_epoch)
{
	struct meta_chain nc = *c;
	list_del(nc.members, &nc.nmembers, target);
	list_del(nc.syncing, &nc.nsyncing, target);
	if (!nc.nmembers)
		return -EINVAL;
	if (!list_has(nc.away, nc.naway, target) && nc.naway < META_MAX_REPLICAS)
		nc.away[nc.naway++] = target;
	return META_CALL_OPT(n->meta, chain_set, c->id, c->epoch, &nc, ret_epoch);
}

/* ---------------------------------------------------------------------------------------- */
/* DIST-7: dirty chunks of away targets */

static bool node_dirty_seen(struct node *n, uint32_t chain, uint32_t target, uint64_t ino,
			    uint32_t idx)
{
	uint64_t h = hash_mix64(ino ^ ((uint64_t)idx << 32) ^ ((uint64_t)chain << 48) ^ target);
	struct node_dirty_slot *s = &n->dirty[h % NODE_DIRTY_CACHE];
	pthread_mutex_lock(&n->dirty_lock);
	bool seen =
	    s->used && s->chain == chain && s->target == target && s->ino == ino && s->idx == idx;
	pthread_mutex_unlock(&n->dirty_lock);
	return seen;
}

static void node_dirty_remember(struct node *n, uint32_t chain, uint32_t target, uint64_t ino,
				uint32_t idx)
{
	uint64_t h = hash_mix64(ino ^ ((uint64_t)idx << 32) ^ ((uint64_t)chain << 48) ^ target);
	struct node_dirty_slot *s = &n->dirty[h % NODE_DIRTY_CACHE];
	pthread_mutex_lock(&n->dirty_lock);
	*s = (struct node_dirty_slot){
	    .chain = chain, .target = target, .ino = ino, .idx = idx, .used = true};
	pthread_mutex_unlock(&n->dirty_lock);
}

/* Record (ino, idx) dirty for every away target of chain c, committed before the caller
 * acknowledges. A chunk recorded lately is not sent again (the table keeps one row anyway). */
static int node_dirty_note(struct node *n, const struct meta_chain *c, uint64_t ino, uint32_t idx)
{
	for (uint32_t i = 0; i < c->naway; i++) {
		if (node_dirty_seen(n, c->id, c->away[i], ino, idx))
			continue;
		struct meta_chunk_ref ref = {.ino = ino, .idx = idx};
		int r = META_CALL_OPT(n->meta, dirty_add, c->id, c->away[i], &ref, 1);
		if (r < 0) {
			log_err("chain %u: cannot record chunk %llu:%u dirty for target %u: %s",
				c->id, (unsigned long long)ino, idx, c->away[i], strerror(-r));
			return -EIO;
		}
		node_dirty_remember(n, c->id, c->away[i], ino, idx);
	}
	return 0;
}

/* ds chain_failed (DIST-3): commit the chain without the failed member, the member away. */
static int node_chain_failed(void *ctx, uint32_t chain_id, uint64_t epoch, uint32_t failed,
			     const uint32_t *members, uint32_t nm, uint64_t *ret_epoch)
{
	struct node *n = ctx;
	struct meta_chain c;
	if (!fence_valid(&n->fence, now_monotonic_ns()))
		return -ESHUTDOWN; /* a fenced node changes nothing */
	int r = node_reload_chains(n);
	if (r == 0)
		r = node_chain_get(n, chain_id, &c);
	if (r == 0 && c.epoch != epoch)
		r = -ESTALE;
	if (r == 0)
		r = node_chain_away(n, &c, failed, ret_epoch);
	if (r == 0 && node_cur_chunk.set) {
		c.epoch = *ret_epoch;
		struct meta_chain away = c;
		away.naway = 1;
		away.away[0] = failed;
		r = node_dirty_note(n, &away, node_cur_chunk.ino, node_cur_chunk.idx);
	}
	if (r < 0) {
		log_err("chain %u: cannot take failed target %u out (epoch %llu): %s", chain_id,
			failed, (unsigned long long)epoch, strerror(-r));
		if (r == -ESTALE)
			node_reload_chains(n);
		return r;
	}
	log_warn("target %u failed and left chain %u (epoch %llu); its chunks written from now "
		 "on are recorded for its resync",
		 failed, chain_id, (unsigned long long)*ret_epoch);
	node_reload_chains(n);
	(void)members;
	(void)nm;
	return 0;
}

static int node_chain_refresh(void *ctx, uint32_t chain_id, struct ds_chain_cfg *ret)
{
	struct node *n = ctx;
	struct meta_chain c;
	int r = node_reload_chains(n);
	if (r == 0)
		r = node_chain_get(n, chain_id, &c);
	if (r == 0)
		chain_cfg_from(&c, ret);
	return r;
}

/* ds target_url: a target of another node is reached through that node's address, with
 * timeouts of a lease: a member that does not answer for that long is failed (DIST-3). */
static int node_target_url(void *ctx, uint32_t id, char *url, size_t len)
{
	struct node *n = ctx;
	char q[64];
	snprintf(q, sizeof(q), "?timeout_ms=%u&dead_ms=%u", n->cfg.lease_ms, n->cfg.lease_ms);
	return vol_resolve_target(n->meta, n->targets, n->ntargets, id, q, url, len);
}

/* ---------------------------------------------------------------------------------------- */
/* requests */

static bool op_touches_data(uint16_t op)
{
	return op != PROTO_OP_IDENTITY && op != PROTO_OP_STATFS && op != PROTO_OP_PING &&
	       op != PROTO_OP_HELLO;
}

static int node_check_epoch(void *ctx, const struct rpc_epoch_query *q, uint64_t *ret_current)
{
	struct node *n = ctx;
	if (op_touches_data(q->op) && !fence_valid(&n->fence, now_monotonic_ns()))
		return -ESHUTDOWN; /* DIST-4 */
	if (q->chain == PROTO_NO_CHAIN)
		return 0;
	struct meta_chain c;
	if (node_chain_get(n, q->chain, &c) < 0)
		return -ENOENT;
	if (q->epoch > c.epoch) { /* DIST-2: someone knows better: re-read */
		node_reload_chains(n);
		if (node_chain_get(n, q->chain, &c) < 0)
			return -ENOENT;
	}
	*ret_current = c.epoch;
	if (q->epoch != c.epoch)
		return -ESTALE;
	if (!list_has(c.members, c.nmembers, q->target) &&
	    !list_has(c.syncing, c.nsyncing, q->target))
		return -ESTALE; /* it left this chain: the sender's table is old */
	if (q->op == PROTO_OP_READ && !list_has(c.members, c.nmembers, q->target))
		return -ESTALE; /* DIST-6: a syncing target serves no reads */
	return 0;
}

static int node_forward(void *ctx, const struct xp_req *req)
{
	struct node *n = ctx;
	const struct proto_hdr *h = &req->hdr;
	const struct proto_body *b = &req->body;
	struct meta_chain c;
	if (node_chain_get(n, h->chain, &c) < 0)
		return -ENOENT;
	if (!c.nmembers || c.members[0] != h->target)
		return RPC_LOCAL; /* a primary's copy to this member */
	enum ds_chunk_kind kind;
	uint64_t off = b->off, len = b->len;
	const void *data = NULL;
	switch (h->op) {
	case PROTO_OP_WRITE:
		kind = DS_CHUNK_WRITE;
		len = b->data_len;
		data = b->data;
		break;
	case PROTO_OP_TRUNCATE:
		kind = DS_CHUNK_TRUNCATE;
		off = 0;
		break;
	case PROTO_OP_PUNCH:
		kind = DS_CHUNK_PUNCH;
		break;
	case PROTO_OP_ALLOCATE:
		kind = DS_CHUNK_ALLOCATE;
		break;
	default:
		return RPC_LOCAL;
	}
	node_cur_chunk.set = true;
	node_cur_chunk.ino = b->ino;
	node_cur_chunk.idx = b->idx;
	int r = ds_chunk_apply(n->ds, kind, b->ino, b->idx, off, len, data);
	node_cur_chunk.set = false;
	if (r == 0 && node_chain_get(n, h->chain, &c) == 0)
		r = node_dirty_note(n, &c, b->ino, b->idx); /* DIST-7 */
	if (r == 0 && !fence_valid(&n->fence, now_monotonic_ns()))
		r = -ESHUTDOWN; /* DIST-4: applied, but this node may no longer acknowledge */
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* the manager (DIST-1) */

static int node_manager_round(struct node *n)
{
	struct meta_node *nodes = calloc(256, sizeof(*nodes));
	struct meta_target *tg = calloc(META_MAX_TARGETS, sizeof(*tg));
	int r = nodes && tg ? 0 : -ENOMEM;
	int nn = 0, nt = 0;
	if (r == 0)
		r = nn = META_CALL_OPT(n->meta, nodes_list, nodes, 256);
	if (r >= 0)
		r = nt = META_CALL(n->meta, targets_list, tg, META_MAX_TARGETS);
	if (r >= 0)
		r = node_reload_chains(n);
	int64_t grace_ns = (int64_t)n->cfg.heartbeat_ms * 2 * 1000000LL;
	for (int i = 0; r >= 0 && i < MIN(nn, 256); i++) {
		struct meta_node *d = &nodes[i];
		bool dead = d->state == META_NODE_DOWN || d->lease_remaining_ns < -grace_ns;
		if (!dead || d->id == n->id)
			continue;
		if (!fence_valid(&n->mgr_fence, now_monotonic_ns()))
			break; /* no longer the manager: change nothing */
		if (d->state != META_NODE_DOWN) {
			log_warn("manager: node %s (id %u) has not renewed its lease for %lld ms: "
				 "marking it down",
				 d->name, d->id,
				 (long long)((-d->lease_remaining_ns) / 1000000 +
					     (int64_t)n->cfg.lease_ms));
			META_CALL_OPT(n->meta, node_set_state, d->id, META_NODE_DOWN);
		}
		for (int k = 0; k < MIN(nt, META_MAX_TARGETS); k++) {
			char tnode[META_NODE_MAX];
			vol_target_node(tg[k].url, tnode, sizeof(tnode));
			if (strcmp(tnode, d->name))
				continue;
			for (unsigned ci = 0;; ci++) {
				struct meta_chain c;
				pthread_mutex_lock(&n->chains_lock);
				bool more = ci < n->nchains;
				if (more)
					c = n->chains[ci];
				pthread_mutex_unlock(&n->chains_lock);
				if (!more)
					break;
				if (!list_has(c.members, c.nmembers, tg[k].id) &&
				    !list_has(c.syncing, c.nsyncing, tg[k].id))
					continue;
				if (!fence_valid(&n->mgr_fence, now_monotonic_ns()))
					break;
				uint64_t ne = 0;
				int k2 = node_chain_away(n, &c, tg[k].id, &ne);
				if (k2 == 0)
					log_warn("manager: target %u of node %s left chain %u "
						 "(epoch %llu)",
						 tg[k].id, d->name, c.id, (unsigned long long)ne);
				else if (k2 == -EINVAL)
					log_err("manager: chain %u has no member left but target "
						"%u of dead node %s; kept",
						c.id, tg[k].id, d->name);
				else
					log_warn("manager: chain %u: %s", c.id, strerror(-k2));
				node_reload_chains(n);
			}
		}
	}
	free(nodes);
	free(tg);
	return r < 0 ? r : 0;
}

/* Hold the manager lease: acquire, or renew what we hold. */
static void node_manager_lease(struct node *n)
{
	struct meta_lease l;
	int64_t sent = now_monotonic_ns();
	int r;
	if (n->manager)
		r = META_CALL_OPT(n->meta, lease_renew, NODE_MANAGER_LEASE, n->id,
				  n->mgr_generation, n->cfg.lease_ms, &l);
	else
		r = META_CALL_OPT(n->meta, lease_acquire, NODE_MANAGER_LEASE, n->id,
				  n->cfg.lease_ms, &l);
	if (r == 0) {
		if (!n->manager)
			log_info("this node is the manager now (generation %llu)",
				 (unsigned long long)l.generation);
		n->manager = true;
		n->mgr_generation = l.generation;
		fence_renewed(&n->mgr_fence, sent, n->cfg.lease_ms, true, now_monotonic_ns());
		return;
	}
	if (n->manager && r != -EIO) {
		log_warn("this node lost the manager lease: %s", strerror(-r));
		n->manager = false;
		fence_drop(&n->mgr_fence);
	}
}

/* ---------------------------------------------------------------------------------------- */
/* the heartbeat */

static void node_beat(struct node *n)
{
	int64_t sent = now_monotonic_ns();
	int r = META_CALL_OPT(n->meta, node_heartbeat, n->id, n->cfg.lease_ms);
	if (r == -ENOENT) { /* our row is gone: register again */
		uint32_t id;
		r = META_CALL_OPT(n->meta, node_register, n->cfg.node, n->cfg.listen,
				  n->cfg.lease_ms, &id);
		if (r == 0 && id != n->id)
			log_warn("node %s registered again with id %u", n->cfg.node, id);
	}
	if (r < 0) {
		if (fence_valid(&n->fence, now_monotonic_ns()))
			log_warn("cannot renew this node's lease: %s", strerror(-r));
		return;
	}
	bool lapsed = fence_lapsed(&n->fence, now_monotonic_ns());
	bool refreshed = !lapsed || node_reload_chains(n) == 0;
	if (lapsed && refreshed)
		log_info("lease renewed and chains re-read: acknowledging writes");
	fence_renewed(&n->fence, sent, n->cfg.lease_ms, refreshed, now_monotonic_ns());
}

static void *node_hb_main(void *arg)
{
	struct node *n = arg;
	bool was_valid = true;
	pthread_mutex_lock(&n->hb_lock);
	while (!n->hb_stop) {
		pthread_mutex_unlock(&n->hb_lock);
		node_beat(n);
		bool valid = fence_valid(&n->fence, now_monotonic_ns());
		if (was_valid && !valid)
			log_err("this node's lease lapsed: it fenced itself and acknowledges no "
				"write until it renews (DIST-4)");
		was_valid = valid;
		if (valid) {
			node_manager_lease(n);
			if (n->manager && node_manager_round(n) < 0)
				log_warn("manager: a round failed; trying again");
		} else if (n->manager) {
			n->manager = false;
			fence_drop(&n->mgr_fence);
		}
		pthread_mutex_lock(&n->hb_lock);
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += (long)(n->cfg.heartbeat_ms % 1000) * 1000000L;
		until.tv_sec += n->cfg.heartbeat_ms / 1000 + until.tv_nsec / 1000000000L;
		until.tv_nsec %= 1000000000L;
		while (!n->hb_stop &&
		       pthread_cond_timedwait(&n->hb_cond, &n->hb_lock, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&n->hb_lock);
	return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* start and stop */

static int node_open_targets(struct node *n, char *err, size_t errlen)
{
	for (unsigned i = 0; i < n->cfg.ntargets; i++) {
		const char *want = n->cfg.targets[i];
		const struct meta_target *t = NULL;
		for (unsigned k = 0; k < n->ntargets; k++) {
			char tnode[META_NODE_MAX];
			const char *u = vol_target_node(n->targets[k].url, tnode, sizeof(tnode));
			if (n->targets[k].state != META_TARGET_REMOVED && !strcmp(u, want) &&
			    !strcmp(tnode, n->cfg.node))
				t = &n->targets[k];
		}
		if (!t) {
			set_err(err, errlen,
				"target %s is not a target of node %s in volume '%s' (format it as "
				"%s@%s)",
				want, n->cfg.node, n->vol.name, n->cfg.node, want);
			return -ENOENT;
		}
		struct sm_identity expect = {.target_id = t->id, .chunk_size = n->vol.chunk_size};
		snprintf(expect.volume_uuid, sizeof(expect.volume_uuid), "%s", n->vol.uuid);
		snprintf(expect.target_uuid, sizeof(expect.target_uuid), "%s", t->uuid);
		char serr[512] = "";
		int r = sm_open(want, &expect, &n->local[i], serr, sizeof(serr));
		if (r < 0) {
			set_err(err, errlen, "target %u (%s): %s", t->id, want,
				serr[0] ? serr : strerror(-r));
			return r;
		}
		n->local_id[i] = t->id;
		n->nlocal++;
	}
	return 0;
}

static int node_open_ds(struct node *n, char *err, size_t errlen)
{
	struct ds_target_cfg *t = calloc(n->ntargets ? n->ntargets : 1, sizeof(*t));
	struct ds_chain_cfg *c = calloc(n->nchains ? n->nchains : 1, sizeof(*c));
	unsigned nt = 0;
	int r = -ENOMEM;
	if (!t || !c)
		goto out;
	for (unsigned i = 0; i < n->ntargets; i++) {
		if (n->targets[i].state == META_TARGET_REMOVED)
			continue;
		t[nt].id = n->targets[i].id;
		t[nt].up = true;
		snprintf(t[nt].url, sizeof(t[nt].url), "%s", n->targets[i].url);
		for (unsigned k = 0; k < n->nlocal; k++)
			if (n->local_id[k] == t[nt].id)
				t[nt].sm = n->local[k];
		nt++;
	}
	for (unsigned i = 0; i < n->nchains; i++)
		chain_cfg_from(&n->chains[i], &c[i]);
	struct ds_config cfg = {
	    .chunk_size = n->vol.chunk_size,
	    .consistency = n->vol.consistency == META_WEAK ? DS_WEAK : DS_STRONG,
	    .targets = t,
	    .ntargets = nt,
	    .chains = c,
	    .nchains = n->nchains,
	    .chain_failed = node_chain_failed,
	    .cb_ctx = n,
	    .chain_refresh = node_chain_refresh,
	    .lazy_open = true,
	    .target_url = node_target_url,
	};
	snprintf(cfg.volume_uuid, sizeof(cfg.volume_uuid), "%s", n->vol.uuid);
	r = ds_open(&cfg, &n->ds, err, errlen);
out:
	free(t);
	free(c);
	return r;
}

int node_start(const struct cfg_node *cfg, struct node **ret, char *err, size_t errlen)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	n->cfg = *cfg;
	pthread_mutex_init(&n->chains_lock, NULL);
	pthread_mutex_init(&n->dirty_lock, NULL);
	pthread_mutex_init(&n->hb_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&n->hb_cond, &ca);
	pthread_condattr_destroy(&ca);
	fence_init(&n->fence);
	fence_init(&n->mgr_fence);

	int r = meta_open(cfg->meta, 0, &n->meta, err, errlen);
	if (r < 0)
		goto fail;
	if (!(meta_ops_of(n->meta)->caps & META_CAP_CLUSTER)) {
		set_err(err, errlen,
			"%s cannot hold a cluster (no nodes or leases): serve needs a shared "
			"engine such as postgres://",
			cfg->meta);
		r = -EINVAL;
		goto fail;
	}
	r = META_CALL(n->meta, volume_get, &n->vol);
	if (r < 0) {
		set_err(err, errlen, "%s holds no braidfs volume: %s", cfg->meta,
			r == -ENOENT ? "run 'braidfs format' first" : strerror(-r));
		goto fail;
	}
	n->targets = calloc(META_MAX_TARGETS, sizeof(*n->targets));
	r = n->targets ? META_CALL(n->meta, targets_list, n->targets, META_MAX_TARGETS) : -ENOMEM;
	if (r >= 0) {
		n->ntargets = (unsigned)MIN(r, META_MAX_TARGETS);
		r = node_reload_chains(n);
	}
	if (r < 0) {
		set_err(err, errlen, "cannot read targets and chains from %s: %s", cfg->meta,
			strerror(-r));
		goto fail;
	}
	r = node_open_targets(n, err, errlen);
	if (r < 0)
		goto fail;
	r = META_CALL_OPT(n->meta, node_register, cfg->node, cfg->listen, cfg->lease_ms, &n->id);
	int64_t sent = now_monotonic_ns();
	if (r < 0) {
		set_err(err, errlen, "cannot register node %s in %s: %s", cfg->node, cfg->meta,
			strerror(-r));
		goto fail;
	}
	fence_renewed(&n->fence, sent, cfg->lease_ms, true, now_monotonic_ns());
	r = node_open_ds(n, err, errlen);
	if (r < 0)
		goto fail;
	struct rpc_server_cfg rc = {
	    .targets = n->local,
	    .ntargets = n->nlocal,
	    .check_epoch = node_check_epoch,
	    .forward = node_forward,
	    .ctx = n,
	};
	r = rpc_server_new(&rc, &n->rpc, err, errlen);
	if (r < 0)
		goto fail;
	struct xp_server_cfg xc = {.node_id = n->id, .handler = rpc_server_handle, .ctx = n->rpc};
	snprintf(xc.volume_uuid, sizeof(xc.volume_uuid), "%s", n->vol.uuid);
	char url[CFG_ADDR_MAX + 8];
	snprintf(url, sizeof(url), "tcp://%s", cfg->listen);
	r = xp_listen(url, &xc, &n->xs, err, errlen);
	if (r < 0)
		goto fail;
	r = -pthread_create(&n->hb, NULL, node_hb_main, n);
	if (r < 0) {
		set_err(err, errlen, "cannot start the heartbeat: %s", strerror(-r));
		goto fail;
	}
	n->hb_running = true;
	*ret = n;
	return 0;
fail:
	node_stop(n);
	return r;
}

void node_stop(struct node *n)
{
	if (!n)
		return;
	if (n->hb_running) {
		pthread_mutex_lock(&n->hb_lock);
		n->hb_stop = true;
		pthread_cond_signal(&n->hb_cond);
		pthread_mutex_unlock(&n->hb_lock);
		pthread_join(n->hb, NULL);
	}
	xp_server_free(n->xs); /* no new requests; waits for the running ones */
	rpc_server_free(n->rpc);
	ds_close(n->ds);
	if (n->meta && n->id) {
		if (n->manager)
			META_CALL_OPT(n->meta, lease_release, NODE_MANAGER_LEASE, n->id,
				      n->mgr_generation);
		/* down: the manager takes our targets out of their chains without waiting for
		 * our lease to expire */
		int r = META_CALL_OPT(n->meta, node_set_state, n->id, META_NODE_DOWN);
		if (r < 0)
			log_warn("cannot mark node %s down: %s", n->cfg.node, strerror(-r));
	}
	for (unsigned i = 0; i < n->nlocal; i++)
		sm_close(n->local[i]);
	meta_close(n->meta);
	free(n->targets);
	free(n->chains);
	pthread_mutex_destroy(&n->chains_lock);
	pthread_mutex_destroy(&n->dirty_lock);
	pthread_mutex_destroy(&n->hb_lock);
	pthread_cond_destroy(&n->hb_cond);
	free(n);
}
