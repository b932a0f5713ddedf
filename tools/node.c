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
 *   every round, a node whose lease expired more than grace_ms ago (or that marked itself down)
 *   is marked down and each of its targets leaves every chain (members and syncing) for
 *   `away`, one chain_set per chain, each checked against the manager's own fence first.
 *
 * RECLAIM (DIST-8), in the repair thread: a local target's chunks of chains that list it in no
 * role are deleted by this node (node_reclaim); see the comment above it.
 */
#include "tools/node.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/tbucket.h"
#include "common/util.h"
#include "dataservice/ds.h"
#include "dataservice/fence.h"
#include "dataservice/rpc_target.h"
#include "dataservice/transport.h"
#include "fs/meta/meta.h"
#include "storemgr/sm.h"
#include "tools/repair_run.h"
#include "tools/tools.h"

#define NODE_MANAGER_LEASE "manager"
#define NODE_DIRTY_CACHE   4096

struct node_dirty_slot {
	uint32_t chain, target;
	uint64_t epoch; /* a target that came back and left again gets its rows anew */
	uint64_t ino;
	uint32_t idx;
	bool used;
};

struct node {
	struct cfg_node cfg;
	uint32_t id;
	unsigned beats; /* heartbeats sent (heartbeat thread only) */
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
	/* __atomic: bumped when a table installed gives a chain another epoch, and when the lease
	 * lapsed (a rebuild mark may have come with either: node_rp_marked) */
	uint64_t chains_gen;
	/* Held around installing a chain table (data service, then `chains`) and around each
	 * reclaim of one chunk (its role check and its deletion): a chunk request for a target
	 * is only applied once the installed table gives the target a role (check_epoch, ds),
	 * so a reclaim never deletes what such a request wrote. Taken before chains_lock. */
	pthread_mutex_t reclaim_lock;
	/* per local target: the chains it had no role in when its last reclaim pass finished
	 * (rp thread only); a pass runs when that set grows */
	bool *reclaimed[CFG_MAX_TARGETS];

	struct ds *ds;
	struct rpc_server *rpc;
	struct xp_server *xs;

	struct fence fence;	  /* DIST-4 */
	struct fence_reads reads; /* DS-6: reads served as a non-primary member */
	int64_t *hold;		  /* DS-6: [chain id] acknowledgements held back until */
	uint32_t read_lease_ms;	  /* 2 × heartbeat_ms */
	struct fence mgr_fence;	  /* the manager lease, by the same rule */
	uint64_t mgr_generation;
	bool manager; /* heartbeat thread only */

	uint64_t async_gen; /* __atomic: catch-ups of async targets started (node_async_missed) */
	/* DS-7: held around marking a chain's async targets for a rebuild together with the
	 * chain change that takes its primary out (node_chain_away), and around the end of an
	 * async catch-up here (its repairs row deleted only while this node is still the
	 * primary): a mark is never deleted by a catch-up of this process that missed it */
	pthread_mutex_t async_mark_lock;
	/* BRAIDFS_TEST_ASYNC_HOLD: tests only; while that file exists, async queues apply
	 * nothing (ds_config.test_async_hold) */
	const char *test_async_hold;
	pthread_mutex_t dirty_lock;
	struct node_dirty_slot dirty[NODE_DIRTY_CACHE]; /* protected by dirty_lock */
	/* Held shared by every write this node applies as primary, from reading its chain to its
	 * dirty record, and exclusive (writer-preferring) by a promotion from its last dirty
	 * count to its commit: a write that saw the target away or failed on it while syncing
	 * has its chunk recorded before the count, or it started after the commit (DIST-6,
	 * DIST-7). A member's apply of another node's write never takes it. */
	pthread_rwlock_t promote_gate;
	/* BRAIDFS_TEST_DIRTY_DELAY_MS: tests only; how long a forwarded write to a chain with
	 * an away target waits between its apply and its dirty record (the window the promote
	 * gate closes; test_serve.py holds a promotion in it) */
	int64_t test_dirty_delay_ns;

	pthread_t hb;
	bool hb_running;
	pthread_t rp; /* resync and rebuild of the chains this node is the primary of */
	bool rp_running;
	int rp_cancel; /* __atomic: set by node_stop */
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

/* The chain as the volume gives it, and its syncing targets: this node's data service applies
 * a write to them too (DIST-6). */
static void chain_cfg_from(const struct meta_chain *m, struct ds_chain_cfg *c)
{
	vol_chain_cfg(m, c);
	c->nsyncing = m->nsyncing;
	memcpy(c->syncing, m->syncing, m->nsyncing * sizeof(m->syncing[0]));
	c->nasync = m->nasync; /* DS-7: forwarded to without waiting */
	memcpy(c->async, m->async, m->nasync * sizeof(m->async[0]));
}

/* Re-read every chain from the database and install the newer ones (DIST-2). */
static int node_reload_chains(struct node *n)
{
	struct meta_chain *c = calloc(META_MAX_CHAINS, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int64_t sent = now_monotonic_ns();
	int r = META_CALL(n->meta, chains_list, c, META_MAX_CHAINS);
	if (r < 0) {
		free(c);
		return r;
	}
	unsigned nc = (unsigned)MIN(r, META_MAX_CHAINS);
	pthread_mutex_lock(&n->reclaim_lock);
	for (unsigned i = 0; n->ds && i < nc; i++) {
		struct ds_chain_cfg dc;
		chain_cfg_from(&c[i], &dc);
		ds_chain_load(n->ds, &dc);
	}
	pthread_mutex_lock(&n->chains_lock);
	/* two reloads may overlap: a chain read earlier never replaces a newer one (as in ds),
	 * so the table installed is at least as new as the read the read lease counts from
	 * (fence_reads_table keeps the latest send time: DS-6) */
	for (unsigned i = 0; i < nc && i < n->nchains; i++)
		if (n->chains[i].id == c[i].id && n->chains[i].epoch > c[i].epoch)
			c[i] = n->chains[i];
	bool changed = nc != n->nchains;
	for (unsigned i = 0; !changed && i < nc; i++)
		changed = n->chains[i].id != c[i].id || n->chains[i].epoch != c[i].epoch;
	if (changed)
		__atomic_add_fetch(&n->chains_gen, 1, __ATOMIC_ACQ_REL);
	free(n->chains);
	n->chains = c;
	n->nchains = nc;
	pthread_mutex_unlock(&n->chains_lock);
	pthread_mutex_unlock(&n->reclaim_lock);
	fence_reads_table(&n->reads, sent); /* installed: reads may trust it (DS-6) */
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

static void list_del(uint32_t *l, uint32_t *n, uint32_t id)
{
	uint32_t k = 0;
	for (uint32_t i = 0; i < *n; i++)
		if (l[i] != id)
			l[k++] = l[i];
	*n = k;
}

/* DS-7: the requests queued at chain c's primary for its async targets live in that
 * process only; when the primary may have died with some (it leaves the chain, its node is
 * declared dead, or its serve starts again after an end that was not clean), each async target
 * of c is marked for a full rebuild by a repairs row of kind rebuild, written BEFORE anything
 * that would let another primary take over, so that no crash in between can lose the mark.
 * The chain's primary then copies every chunk of the chain to it (node_repair_async). */
static int node_async_mark(struct node *n, const struct meta_chain *c, const char *why)
{
	for (uint32_t i = 0; i < c->nasync; i++) {
		struct meta_repair mark = {
		    .chain = c->id, .target = c->async[i], .kind = META_REPAIR_REBUILD};
		int r = META_CALL_OPT(n->meta, repair_set, &mark);
		if (r < 0) {
			log_warn("chain %u: cannot mark async target %u for a rebuild (%s): %s",
				 c->id, c->async[i], why, strerror(-r));
			return r;
		}
		log_info("chain %u: async target %u marked for a rebuild: %s", c->id, c->async[i],
			 why);
	}
	return 0;
}

/* Take target out of chain c (members and syncing) into away: one conditional chain_set.
 * 0 and *ret_epoch, -ESTALE (the chain moved on), -EINVAL (it is the last member), -errno.
 * When target is the primary of a chain with async targets, they are marked for a rebuild
 * first (node_async_mark), even if the chain then keeps it. */
static int node_chain_away(struct node *n, const struct meta_chain *c, uint32_t target,
			   uint64_t *ret_epoch)
{
	struct meta_chain nc = *c;
	list_del(nc.members, &nc.nmembers, target);
	list_del(nc.syncing, &nc.nsyncing, target);
	bool primary = c->nmembers && c->members[0] == target && c->nasync;
	int r = 0;
	pthread_mutex_lock(&n->async_mark_lock);
	if (primary)
		r = node_async_mark(n, c, "its primary leaves the chain");
	if (r == 0 && !nc.nmembers)
		r = -EINVAL;
	if (r == 0 && !u32_in(nc.away, nc.naway, target) && nc.naway < META_MAX_REPLICAS)
		nc.away[nc.naway++] = target;
	if (r == 0)
		r = META_CALL_OPT(n->meta, chain_set, c->id, c->epoch, &nc, ret_epoch);
	pthread_mutex_unlock(&n->async_mark_lock);
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* DIST-7: dirty chunks of away targets */

/* The cache slot of a (chain, target, chunk): one per hash, the last one remembered wins. */
static struct node_dirty_slot *node_dirty_slot(struct node *n, uint32_t chain, uint32_t target,
					       uint64_t ino, uint32_t idx)
{
	uint64_t h = hash_mix64(ino ^ ((uint64_t)idx << 32) ^ ((uint64_t)chain << 48) ^ target);
	return &n->dirty[h % NODE_DIRTY_CACHE];
}

/* The cache is keyed by the chain's epoch too: a chunk recorded while a target was away, then
 * copied by its resync (row deleted), must be recorded again when the target leaves anew. */
static bool node_dirty_seen(struct node *n, uint32_t chain, uint64_t epoch, uint32_t target,
			    uint64_t ino, uint32_t idx)
{
	struct node_dirty_slot *s = node_dirty_slot(n, chain, target, ino, idx);
	pthread_mutex_lock(&n->dirty_lock);
	bool seen = s->used && s->chain == chain && s->epoch == epoch && s->target == target &&
		    s->ino == ino && s->idx == idx;
	pthread_mutex_unlock(&n->dirty_lock);
	return seen;
}

static void node_dirty_remember(struct node *n, uint32_t chain, uint64_t epoch, uint32_t target,
				uint64_t ino, uint32_t idx)
{
	struct node_dirty_slot *s = node_dirty_slot(n, chain, target, ino, idx);
	pthread_mutex_lock(&n->dirty_lock);
	*s = (struct node_dirty_slot){
	    .chain = chain, .epoch = epoch, .target = target, .ino = ino, .idx = idx, .used = true};
	pthread_mutex_unlock(&n->dirty_lock);
}

/* Record (ino, idx) dirty for target of chain, unless the cache holds it under key (the
 * chain's epoch, or an async catch-up generation): the table keeps one row anyway. 0, or
 * dirty_add's error. */
static int node_dirty_record(struct node *n, uint32_t chain, uint64_t key, uint32_t target,
			     uint64_t ino, uint32_t idx)
{
	if (node_dirty_seen(n, chain, key, target, ino, idx))
		return 0;
	struct meta_chunk_ref ref = {.ino = ino, .idx = idx};
	int r = META_CALL_OPT(n->meta, dirty_add, chain, target, &ref, 1);
	if (r < 0)
		return r;
	node_dirty_remember(n, chain, key, target, ino, idx);
	return 0;
}

/* Record (ino, idx) dirty for every away target of chain c, committed before the caller
 * acknowledges. A chunk recorded lately is not sent again. */
static int node_dirty_note(struct node *n, const struct meta_chain *c, uint64_t ino, uint32_t idx)
{
	for (uint32_t i = 0; i < c->naway; i++) {
		int r = node_dirty_record(n, c->id, c->epoch, c->away[i], ino, idx);
		if (r < 0) {
			log_err("chain %u: cannot record chunk %llu:%u dirty for target %u: %s",
				c->id, (unsigned long long)ino, idx, c->away[i], strerror(-r));
			return -EIO;
		}
	}
	return 0;
}

/* The acknowledgement hold of chain id (DS-6): only that chain's acknowledgements wait after
 * one of its members was taken out, so a failure stalls no other chain. */
static int64_t *node_hold(struct node *n, uint32_t chain)
{
	return &n->hold[chain % META_MAX_CHAINS];
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
	/* DS-6: hold acknowledgements from before the commit too: another worker's write of this
	 * chain may be acknowledged while the commit runs, without the member */
	if (r == 0 && n->cfg.local_reads)
		fence_reads_hold(node_hold(n, chain_id), now_monotonic_ns(), n->read_lease_ms);
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
	/* DS-6: the failed member may still serve reads until its read lease runs out; no
	 * acknowledgement of this node may come before that (node_forward waits) */
	if (n->cfg.local_reads)
		fence_reads_hold(node_hold(n, chain_id), now_monotonic_ns(), n->read_lease_ms);
	log_warn("target %u failed and left chain %u (epoch %llu); its chunks written from now "
		 "on are recorded for its resync",
		 failed, chain_id, (unsigned long long)*ret_epoch);
	node_reload_chains(n);
	(void)members;
	(void)nm;
	return 0;
}

/* ds syncing_failed (DIST-6): a syncing target missed a write. The chunk is recorded dirty for
 * it first — that alone keeps the target from being promoted without the chunk (the resync
 * copies it, or the next one does) — then it leaves syncing for away, epoch-conditionally.
 * Only a failure to record the chunk fails the write; the chain change is best effort (the
 * manager or the next failure retries it). */
static int node_syncing_failed(void *ctx, uint32_t chain_id, uint64_t epoch, uint32_t target,
			       uint64_t ino, uint32_t idx, int err)
{
	struct node *n = ctx;
	/* not through the cache (node_dirty_record): the resync running meanwhile deletes the
	 * rows it copied at this same epoch, and a later miss must be recorded again */
	struct meta_chunk_ref ref = {.ino = ino, .idx = idx};
	int r = META_CALL_OPT(n->meta, dirty_add, chain_id, target, &ref, 1);
	if (r < 0) {
		log_err("chain %u: syncing target %u failed (%s) and chunk %llu:%u cannot be "
			"recorded for it: %s",
			chain_id, target, strerror(-err), (unsigned long long)ino, idx,
			strerror(-r));
		return -EIO;
	}
	for (int tries = 0; tries < 3 && fence_valid(&n->fence, now_monotonic_ns()); tries++) {
		struct meta_chain c;
		uint64_t ne = 0;
		if (node_reload_chains(n) < 0 || node_chain_get(n, chain_id, &c) < 0)
			break;
		/* still syncing, or promoted meanwhile with this write missed (the promotion's
		 * count ran before the chunk was recorded): either way it leaves for away */
		if (!u32_in(c.syncing, c.nsyncing, target) &&
		    !u32_in(c.members, c.nmembers, target))
			break; /* someone else moved it already */
		int k = node_chain_away(n, &c, target, &ne);
		if (k == 0) {
			log_warn("syncing target %u failed (%s) and left chain %u for away (epoch "
				 "%llu)",
				 target, strerror(-err), chain_id, (unsigned long long)ne);
			node_reload_chains(n);
			break;
		}
		if (k != -ESTALE)
			break;
	}
	(void)epoch;
	return 0;
}

/* ds async_missed (DS-7, META-19): async target `target` did not get a request on (ino, idx):
 * record the chunk for its catch-up (the primary's repair thread copies it). Recorded once per
 * chunk until the next catch-up starts (the cache's epoch is the catch-up generation). */
static int node_async_missed(void *ctx, uint32_t chain_id, uint32_t target, uint64_t ino,
			     uint32_t idx, int err)
{
	struct node *n = ctx;
	uint64_t gen = UINT64_MAX - __atomic_load_n(&n->async_gen, __ATOMIC_ACQUIRE);
	int r = node_dirty_record(n, chain_id, gen, target, ino, idx);
	if (r < 0) {
		log_err("chain %u: async target %u missed chunk %llu:%u (%s) and it cannot be "
			"recorded: %s",
			chain_id, target, (unsigned long long)ino, idx, strerror(-err),
			strerror(-r));
		return -EIO;
	}
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
	if (!u32_in(c.members, c.nmembers, q->target) &&
	    !u32_in(c.syncing, c.nsyncing, q->target) && !u32_in(c.async, c.nasync, q->target))
		return -ESTALE; /* it left this chain: the sender's table is old */
	if (q->op == PROTO_OP_READ && !u32_in(c.members, c.nmembers, q->target))
		return -ESTALE; /* DIST-6: a syncing target serves no reads */
	/* DS-6 reads only (a check's reads of every copy, fsck and scrub, carry no flag); the
	 * flag comes on READ, SEEK and CHUNK_LENGTH only (proto_hdr_decode refuses it elsewhere) */
	if ((q->flags & PROTO_F_LOCAL) && c.members[0] != q->target &&
	    (!n->cfg.local_reads ||
	     !fence_reads_ok(&n->reads, now_monotonic_ns(), n->read_lease_ms)))
		return -EAGAIN; /* DS-6: off, or not sure it is still a member: read the primary */
	return 0;
}

/* A write addressed to chain c's primary: applied to the chain. */
static int node_forward_gated(struct node *n, const struct proto_hdr *h, const struct proto_body *b)
{
	struct meta_chain c;
	if (node_chain_get(n, h->chain, &c) < 0)
		return -ENOENT;
	if (!c.nmembers || c.members[0] != h->target)
		return RPC_LOCAL; /* no longer the primary (checked again under the gate) */
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
	if (n->test_dirty_delay_ns && c.naway && r == 0) {
		log_warn("test: chunk %llu:%u of chain %u applied, its dirty record held %lld ms",
			 (unsigned long long)b->ino, b->idx, c.id,
			 (long long)(n->test_dirty_delay_ns / 1000000));
		usleep((useconds_t)(n->test_dirty_delay_ns / 1000));
	}
	/* DIST-7 for the targets away before or after the write: the data service applied it
	 * with the chain it held, which is never older than c (chains are loaded into the data
	 * service before this table), so a target that was away in c and became syncing
	 * meanwhile may have missed it, and one away now certainly did. */
	struct meta_chain after;
	if (r == 0)
		r = node_dirty_note(n, &c, b->ino, b->idx);
	if (r == 0 && node_chain_get(n, h->chain, &after) == 0 && after.epoch != c.epoch)
		r = node_dirty_note(n, &after, b->ino, b->idx);
	if (r == 0 && !fence_valid(&n->fence, now_monotonic_ns()))
		r = -ESHUTDOWN; /* DIST-4: applied, but this node may no longer acknowledge */
	return r;
}

/* rpc_server forward: WRITE, TRUNCATE, PUNCH and ALLOCATE requests of a chain (rpc_server_handle
 * calls it for those only). */
static int node_forward(void *ctx, const struct xp_req *req)
{
	struct node *n = ctx;
	const struct proto_hdr *h = &req->hdr;
	const struct proto_body *b = &req->body;
	/* Only a primary's writes take the gate (checked again under it): a member's apply of
	 * another node's write must never wait behind this node's promotion, or two nodes
	 * promoting at once would each wait on a write parked at the other. */
	struct meta_chain c;
	if (node_chain_get(n, h->chain, &c) < 0)
		return -ENOENT;
	if (!c.nmembers || c.members[0] != h->target)
		return RPC_LOCAL; /* a primary's copy to this member */
	pthread_rwlock_rdlock(&n->promote_gate);
	int r = node_forward_gated(n, h, b);
	pthread_rwlock_unlock(&n->promote_gate);
	/* DS-6: a member this node removed lately may still serve reads of the old epoch: the
	 * acknowledgement waits, outside the gate (a promotion need not wait for this) */
	for (int64_t w;
	     r == 0 && (w = fence_reads_wait_ns(node_hold(n, h->chain), now_monotonic_ns())) > 0;)
		usleep((useconds_t)MIN(w / 1000 + 1, 100000));
	if (r == 0 && !fence_valid(&n->fence, now_monotonic_ns()))
		r = -ESHUTDOWN; /* DIST-4: the wait outlived this node's lease */
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* the manager (DIST-1) */

/* A node whose serve runs: up in the nodes table with a lease not expired. */
static bool node_alive(const struct meta_node *d)
{
	return d->state == META_NODE_UP && d->lease_remaining_ns > 0;
}

static const struct meta_node *node_find(const struct meta_node *nodes, int nn, const char *name)
{
	for (int i = 0; i < nn; i++)
		if (!strcmp(nodes[i].name, name))
			return &nodes[i];
	return NULL;
}

/* The node row of target id's node (NODE@URL), NULL when it has none or is not registered. */
static const struct meta_node *node_of_target(const struct meta_node *nodes, int nn,
					      const struct meta_target *tg, int nt, uint32_t id)
{
	char tnode[META_NODE_MAX];
	vol_node_of_target(tg, (unsigned)nt, id, tnode, sizeof(tnode));
	return node_find(nodes, nn, tnode);
}

/* The snapshot of chain ci of the table last read; false past the end. */
static bool node_chain_at(struct node *n, unsigned ci, struct meta_chain *ret)
{
	pthread_mutex_lock(&n->chains_lock);
	bool ok = ci < n->nchains;
	if (ok)
		*ret = n->chains[ci];
	pthread_mutex_unlock(&n->chains_lock);
	return ok;
}

/* DS-7: mark the async targets of every chain whose primary is one of `ids` (a node that died,
 * or this node's previous run). 0, or the first error (the caller then retries later). */
static int node_async_mark_primaries(struct node *n, const uint32_t *ids, unsigned nids,
				     const char *why)
{
	struct meta_chain c;
	int r = 0;
	for (unsigned ci = 0; r == 0 && node_chain_at(n, ci, &c); ci++)
		if (c.nasync && c.nmembers && u32_in(ids, nids, c.members[0]))
			r = node_async_mark(n, &c, why);
	return r;
}

/* DS-7: a node row of our name still up says the previous run of this serve ended without
 * stopping (killed, crashed, power lost) and the manager has not declared it dead yet: the
 * requests queued for the async targets of the chains it was primary of are gone. */
static int node_async_mark_unclean(struct node *n)
{
	struct meta_node *nodes = NULL;
	int nn = vol_nodes(n->meta, &nodes);
	bool unclean = false;
	for (int i = 0; i < nn; i++)
		unclean |= !strcmp(nodes[i].name, n->cfg.node) && nodes[i].state == META_NODE_UP;
	free(nodes);
	if (nn < 0)
		return nn;
	return unclean ? node_async_mark_primaries(n, n->local_id, n->nlocal,
						   "the previous run of its primary's serve ended "
						   "without a stop")
		       : 0;
}

/* DIST-6: every away target of a live node rejoins its chains as syncing (the primary of each
 * chain then resyncs it and promotes it). */
static void node_manager_rejoin(struct node *n, const struct meta_node *nodes, int nn,
				const struct meta_target *tg, int nt)
{
	for (unsigned ci = 0;; ci++) {
		struct meta_chain c;
		if (!node_chain_at(n, ci, &c))
			break;
		for (uint32_t a = 0; a < c.naway; a++) {
			const struct meta_node *d = node_of_target(nodes, nn, tg, nt, c.away[a]);
			if (!d || !node_alive(d) || c.nsyncing >= META_MAX_REPLICAS)
				continue;
			if (!fence_valid(&n->mgr_fence, now_monotonic_ns()))
				return;
			struct meta_chain nc = c;
			uint32_t t = c.away[a];
			list_del(nc.away, &nc.naway, t);
			nc.syncing[nc.nsyncing++] = t;
			uint64_t ne = 0;
			int r = META_CALL_OPT(n->meta, chain_set, c.id, c.epoch, &nc, &ne);
			if (r == 0)
				log_info(
				    "manager: target %u of node %s rejoins chain %u as syncing "
				    "(epoch %llu)",
				    t, d->name, c.id, (unsigned long long)ne);
			else
				log_warn("manager: chain %u: cannot bring target %u back: %s", c.id,
					 t, strerror(-r));
			node_reload_chains(n);
			break; /* the chain moved on: the next round sees the rest */
		}
	}
}

/* DIST-8: the target that replaces `old` in chain c: an up target of the same pool, on a live
 * node, in no role of c; on a node none of c's members or syncing targets is on when there
 * is one (PL-1, PL-2); then the one in the fewest chains. 0 if none. */
static uint32_t node_pick_replacement(struct node *n, const struct meta_chain *c, uint32_t old,
				      const struct meta_node *nodes, int nn,
				      const struct meta_target *tg, int nt)
{
	const struct meta_target *o = NULL;
	for (int k = 0; k < nt; k++)
		if (tg[k].id == old)
			o = &tg[k];
	uint32_t best = 0;
	long best_score = 0;
	for (int k = 0; k < nt; k++) {
		const struct meta_target *t = &tg[k];
		char tnode[META_NODE_MAX];
		vol_target_node(t->url, tnode, sizeof(tnode));
		const struct meta_node *d = node_find(nodes, nn, tnode);
		if (t->state != META_TARGET_UP || !d || !node_alive(d) ||
		    (o && strcmp(t->pool, o->pool)) || vol_chain_lists(c, t->id))
			continue;
		bool shared = false;
		for (int j = 0; j < nt; j++) {
			char jn[META_NODE_MAX];
			vol_target_node(tg[j].url, jn, sizeof(jn));
			if (!strcmp(jn, tnode) && (u32_in(c->members, c->nmembers, tg[j].id) ||
						   u32_in(c->syncing, c->nsyncing, tg[j].id)))
				shared = true;
		}
		long held = 0;
		for (unsigned ci = 0;; ci++) {
			struct meta_chain x;
			if (!node_chain_at(n, ci, &x))
				break;
			held += u32_in(x.members, x.nmembers, t->id) ||
				u32_in(x.syncing, x.nsyncing, t->id);
		}
		long score = (shared ? 1L << 40 : 0) + held;
		if (!best || score < best_score) {
			best = t->id;
			best_score = score;
		}
	}
	return best;
}

/* DIST-8: a target away longer than replace_after_s (database clock) whose node is not alive
 * leaves the chain for good; a target placement picks joins as syncing, marked for a full
 * rebuild by a repairs row of kind rebuild written first (the primary rebuilds whatever has
 * that row, so a rebuild cut short is never mistaken for a resync). */
static void node_manager_replace(struct node *n, const struct meta_node *nodes, int nn,
				 const struct meta_target *tg, int nt)
{
	int64_t after_ns = (int64_t)n->cfg.replace_after_s * 1000000000LL;
	for (unsigned ci = 0;; ci++) {
		struct meta_chain c;
		if (!node_chain_at(n, ci, &c))
			break;
		for (uint32_t a = 0; a < c.naway; a++) {
			uint32_t old = c.away[a];
			const struct meta_node *d = node_of_target(nodes, nn, tg, nt, old);
			if (c.away_ns[a] < after_ns || (d && node_alive(d)) ||
			    c.nsyncing >= META_MAX_REPLICAS)
				continue;
			if (!fence_valid(&n->mgr_fence, now_monotonic_ns()))
				return;
			uint32_t t = node_pick_replacement(n, &c, old, nodes, nn, tg, nt);
			if (!t) {
				log_warn(
				    "manager: target %u has been away from chain %u for %lld s "
				    "but no target can replace it (same pool, node up, not in "
				    "the chain)",
				    old, c.id, (long long)(c.away_ns[a] / 1000000000LL));
				continue;
			}
			struct meta_repair mark = {
			    .chain = c.id, .target = t, .kind = META_REPAIR_REBUILD};
			int r = META_CALL_OPT(n->meta, repair_set, &mark);
			struct meta_chain nc = c;
			list_del(nc.away, &nc.naway, old);
			nc.syncing[nc.nsyncing++] = t;
			uint64_t ne = 0;
			if (r == 0)
				r = META_CALL_OPT(n->meta, chain_set, c.id, c.epoch, &nc, &ne);
			if (r == 0) {
				log_warn(
				    "manager: target %u replaces target %u in chain %u (away for "
				    "%lld s): rebuilding (epoch %llu)",
				    t, old, c.id, (long long)(c.away_ns[a] / 1000000000LL),
				    (unsigned long long)ne);
				META_CALL_OPT(n->meta, dirty_clear, c.id, old);
			} else {
				log_warn("manager: chain %u: cannot replace target %u: %s", c.id,
					 old, strerror(-r));
			}
			node_reload_chains(n);
			break;
		}
	}
}

static int node_manager_round(struct node *n)
{
	struct meta_node *nodes;
	struct meta_target *tg = calloc(META_MAX_TARGETS, sizeof(*tg));
	int nn = vol_nodes(n->meta, &nodes), nt = 0;
	int r = !tg ? -ENOMEM : nn;
	if (r >= 0)
		r = nt = META_CALL(n->meta, targets_list, tg, META_MAX_TARGETS);
	if (r >= 0)
		r = node_reload_chains(n);
	int64_t grace_ns = (int64_t)n->cfg.grace_ms * 1000000LL;
	for (int i = 0; r >= 0 && i < nn; i++) {
		struct meta_node *d = &nodes[i];
		bool dead = d->state == META_NODE_DOWN || d->lease_remaining_ns < -grace_ns;
		if (!dead || d->id == n->id)
			continue;
		if (!fence_valid(&n->mgr_fence, now_monotonic_ns()))
			break; /* no longer the manager: change nothing */
		/* its targets */
		uint32_t ids[META_MAX_TARGETS];
		unsigned nids = 0;
		for (int k = 0; k < MIN(nt, META_MAX_TARGETS); k++) {
			char tnode[META_NODE_MAX];
			vol_target_node(tg[k].url, tnode, sizeof(tnode));
			if (!strcmp(tnode, d->name))
				ids[nids++] = tg[k].id;
		}
		if (d->state != META_NODE_DOWN) {
			/* DS-7: its async queues died with it; marked before the node is down,
			 * which its own restart takes for a clean stop */
			if (node_async_mark_primaries(n, ids, nids, "the primary's node died") < 0)
				continue; /* the next round tries again */
			log_warn("manager: node %s (id %u) has not renewed its lease for %lld ms: "
				 "marking it down",
				 d->name, d->id,
				 (long long)((-d->lease_remaining_ns) / 1000000 +
					     (int64_t)n->cfg.lease_ms));
			META_CALL_OPT(n->meta, node_set_state, d->id, META_NODE_DOWN);
		}
		/* each leaves its chains; node_chain_away marks a primary's async targets again,
		 * with the chain change (the table re-read since may list others) */
		for (unsigned k = 0; k < nids; k++) {
			struct meta_chain c;
			for (unsigned ci = 0; node_chain_at(n, ci, &c); ci++) {
				if (!u32_in(c.members, c.nmembers, ids[k]) &&
				    !u32_in(c.syncing, c.nsyncing, ids[k]))
					continue;
				if (!fence_valid(&n->mgr_fence, now_monotonic_ns()))
					break;
				uint64_t ne = 0;
				int k2 = node_chain_away(n, &c, ids[k], &ne);
				if (k2 == 0)
					log_warn("manager: target %u of node %s left chain %u "
						 "(epoch %llu)",
						 ids[k], d->name, c.id, (unsigned long long)ne);
				else if (k2 == -EINVAL)
					log_err("manager: chain %u has no member left but target "
						"%u of dead node %s; kept",
						c.id, ids[k], d->name);
				else
					log_warn("manager: chain %u: %s", c.id, strerror(-k2));
				node_reload_chains(n);
			}
		}
	}
	if (r >= 0 && fence_valid(&n->mgr_fence, now_monotonic_ns())) {
		node_manager_rejoin(n, nodes, nn, tg, MIN(nt, META_MAX_TARGETS));
		node_manager_replace(n, nodes, nn, tg, MIN(nt, META_MAX_TARGETS));
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
/* resync and rebuild (DIST-6, DIST-8): run by the primary of each chain with syncing targets */

struct node_rp {
	struct node *n;
	uint32_t chain;
	uint32_t async; /* the destination is this async target: drain its queue (DS-7) */
};

static bool node_rp_belongs(void *ctx, uint64_t ino, uint32_t idx)
{
	struct node_rp *x = ctx;
	return x->n->nchains && ((uint64_t)ds_ino_seed(ino) + idx) % x->n->nchains == x->chain;
}

static void node_rp_lock(void *ctx, uint64_t ino, uint32_t idx, bool lock)
{
	struct node_rp *x = ctx;
	ds_chunk_lock(x->n->ds, ino, idx, lock);
	/* an async target's older queued requests land before the copy, never on top of it */
	if (lock && x->async)
		ds_async_drain(x->n->ds, x->async);
}

/* rpc_chain_fn of the destination: the chain being repaired at the epoch this node holds. */
static int node_rp_chain(void *ctx, uint64_t ino, uint32_t idx, uint32_t *ret_chain,
			 uint64_t *ret_epoch)
{
	struct node_rp *x = ctx;
	struct meta_chain c;
	(void)ino;
	(void)idx;
	int r = node_chain_get(x->n, x->chain, &c);
	*ret_chain = x->chain;
	*ret_epoch = r == 0 ? c.epoch : 0;
	return r;
}

static struct sm_target *node_local(struct node *n, uint32_t id)
{
	for (unsigned i = 0; i < n->nlocal; i++)
		if (n->local_id[i] == id)
			return n->local[i];
	return NULL;
}

/* The repairs table as the repair thread's round last read it (DIST-8, DS-7). */
struct node_rp_marks {
	struct meta_repair *rows;
	unsigned cap;
	int nr;	      /* rows read, or -errno */
	bool read;    /* this round */
	uint64_t gen; /* chains_gen before that read */
};

/* Does repairs hold a rebuild mark for (chain, t)? 1 yes, 0 no, -errno. The table is read once
 * a round, at the first target that needs it, and again only after a failed read, or when a
 * chain took another epoch or the lease lapsed since: a mark is written before the chain
 * change that gives it a use (node_chain_away, node_manager_replace) or while the primary's
 * lease has lapsed (the manager's, for a dead node), so rows read after the table a chain
 * was taken from was installed hold every mark its roles call for. */
static int node_rp_marked(struct node *n, struct node_rp_marks *m, uint32_t chain, uint32_t t)
{
	uint64_t gen = __atomic_load_n(&n->chains_gen, __ATOMIC_ACQUIRE);
	if (!m->read || m->gen != gen || m->nr < 0) {
		m->read = true;
		m->gen = gen;
		int nr = 0;
		for (;;) {
			if (!m->rows || (unsigned)nr > m->cap) { /* more rows than room */
				unsigned cap = MAX((unsigned)nr, 64u);
				struct meta_repair *rows = realloc(m->rows, cap * sizeof(*rows));
				if (!rows) {
					nr = -ENOMEM;
					break;
				}
				m->rows = rows;
				m->cap = cap;
			}
			nr = META_CALL_OPT(n->meta, repairs_list, m->rows, m->cap);
			if (nr < 0 || (unsigned)nr <= m->cap)
				break;
		}
		m->nr = nr;
	}
	int marked = m->nr < 0 ? m->nr : 0;
	for (int i = 0; i < m->nr; i++)
		if (m->rows[i].chain == chain && m->rows[i].target == t &&
		    m->rows[i].kind == META_REPAIR_REBUILD)
			marked = 1;
	return marked;
}

/* Bring syncing target t of chain c up to date from this node's primary target, then promote
 * it (chain_promote: member, its dirty and repairs rows deleted, one transaction). An async
 * target (META-19) is caught up the same way from its dirty rows, and stays async. marked:
 * node_rp_marked's answer for (c, t). */
static void node_repair_one(struct node *n, const struct meta_chain *c, uint32_t t, bool async,
			    int marked)
{
	struct node_rp x = {.n = n, .chain = c->id, .async = async ? t : 0};
	struct sm_target *src = node_local(n, c->members[0]), *dst = node_local(n, t);
	bool remote = !dst;
	char err[512] = "";
	int r = 0;
	if (remote) {
		char url[1200];
		struct sm_identity expect = {.target_id = t, .chunk_size = n->vol.chunk_size};
		snprintf(expect.volume_uuid, sizeof(expect.volume_uuid), "%s", n->vol.uuid);
		for (unsigned k = 0; k < n->ntargets; k++)
			if (n->targets[k].id == t)
				snprintf(expect.target_uuid, sizeof(expect.target_uuid), "%s",
					 n->targets[k].uuid);
		r = node_target_url(n, t, url, sizeof(url));
		if (r == 0)
			r = rpc_target_ops.open(url, &expect, &dst, err, sizeof(err));
		if (r == 0)
			r = rpc_target_set_chain_fn(dst, node_rp_chain, &x);
		if (r < 0) {
			log_debug("chain %u: cannot open syncing target %u yet: %s", c->id, t,
				  err[0] ? err : strerror(-r));
			if (dst)
				sm_close(dst);
			return;
		}
	}
	/* rebuild when the manager marked it so (a replacement, an async target whose primary
	 * may have died with requests queued for it), else resync from dirty rows */
	enum rp_kind kind = marked > 0 ? RP_REBUILD : RP_RESYNC;
	struct rr_opts o = {.meta = n->meta,
			    .chain = c->id,
			    .target = t,
			    .kind = kind,
			    .src = src,
			    .dst = dst,
			    .rate = n->cfg.resync_rate,
			    .belongs = node_rp_belongs,
			    .lock = node_rp_lock,
			    .ctx = &x,
			    .cancel = &n->rp_cancel};
	struct rp_progress p = {0};
	if (marked >= 0) {
		log_info("chain %u: %s of target %u from target %u started", c->id,
			 rp_kind_name(kind), t, c->members[0]);
		r = rr_run(&o, &p, err, sizeof(err));
	} else {
		r = marked;
		snprintf(err, sizeof(err), "cannot read the repairs table: %s", strerror(-r));
	}
	uint64_t left = 0, ne = 0;
	struct meta_chain now;
	if (r == 0 && kind == RP_REBUILD)
		r = META_CALL_OPT(n->meta, dirty_count, c->id, t, &left);
	if (r == 0 && left) {
		/* writes that failed on the new target during the rebuild recorded their chunks:
		 * a resync copies those (a rebuild never deletes dirty rows) */
		log_info("chain %u: %llu chunk(s) of target %u were recorded during its rebuild: "
			 "resynced now",
			 c->id, (unsigned long long)left, t);
		o.kind = RP_RESYNC;
		r = rr_run(&o, &p, err, sizeof(err));
	}
	if (async) {
		if (r == 0)
			r = dst->ops->sync_all(dst);
		/* the row (a rebuild mark among others) goes only while this node is still the
		 * chain's primary at a valid lease: a mark set since, by this process or by the
		 * manager (which acts on a node only once its lease expired), stays */
		pthread_mutex_lock(&n->async_mark_lock);
		if (r == 0)
			r = node_reload_chains(n);
		if (r == 0)
			r = node_chain_get(n, c->id, &now);
		if (r == 0 && (!now.nmembers || now.members[0] != c->members[0]))
			r = -ESTALE;
		if (r == 0 && !fence_valid(&n->fence, now_monotonic_ns()))
			r = -ESHUTDOWN;
		if (r == 0)
			META_CALL_OPT(n->meta, repair_delete, c->id, t);
		pthread_mutex_unlock(&n->async_mark_lock);
		if (r == 0) {
			log_info("chain %u: async target %u caught up: %llu chunk(s), %llu bytes "
				 "copied",
				 c->id, t, (unsigned long long)p.chunks_done,
				 (unsigned long long)p.bytes_read);
		} else if (r != -ECANCELED) {
			log_warn(
			    "chain %u: catch-up of async target %u stopped, tried again later: "
			    "%s",
			    c->id, t, err[0] ? err : strerror(-r));
		}
		goto out;
	}
	if (r == 0)
		r = dst->ops->sync_all(dst); /* what reached it by forwarding too */
	/* No forwarded write is between its chain and its dirty record from here to the commit:
	 * a chunk the target missed (written while this node's table still had it away, or
	 * failed on it) is counted here, or its write starts after the promotion. A rebuild
	 * counts too: a write that failed on the new target recorded its chunk. */
	bool gated = r == 0;
	if (gated)
		pthread_rwlock_wrlock(&n->promote_gate);
	if (r == 0)
		r = META_CALL_OPT(n->meta, dirty_count, c->id, t, &left);
	if (r == 0 && left) {
		pthread_rwlock_unlock(&n->promote_gate);
		log_info("chain %u: %llu chunk(s) of target %u were recorded during its %s: "
			 "another pass follows",
			 c->id, (unsigned long long)left, t, rp_kind_name(kind));
		goto out;
	}
	if (r == 0)
		r = node_reload_chains(n);
	if (r == 0)
		r = node_chain_get(n, c->id, &now);
	if (r == 0 && !u32_in(now.syncing, now.nsyncing, t))
		r = -ESTALE; /* it left meanwhile */
	if (r == 0 && !fence_valid(&n->fence, now_monotonic_ns()))
		r = -ESHUTDOWN;
	if (r == 0)
		r = META_CALL_OPT(n->meta, chain_promote, c->id, now.epoch, t, &ne);
	if (gated)
		pthread_rwlock_unlock(&n->promote_gate);
	if (r == 0) {
		struct meta_statfs sf = {0};
		META_CALL_OPT(n->meta, statfs, &sf);
		log_info("chain %u: %s of target %u done: %llu chunk(s), %llu bytes copied (the "
			 "volume holds %llu bytes); target %u is a member again (epoch %llu)",
			 c->id, rp_kind_name(kind), t, (unsigned long long)p.chunks_done,
			 (unsigned long long)p.bytes_read, (unsigned long long)sf.bytes, t,
			 (unsigned long long)ne);
		node_reload_chains(n);
	} else if (r != -ECANCELED) {
		log_warn("chain %u: %s of target %u stopped, tried again later: %s", c->id,
			 rp_kind_name(kind), t, err[0] ? err : strerror(-r));
		node_reload_chains(n);
	}
out:
	if (remote)
		sm_close(dst);
}

/* ---------------------------------------------------------------------------------------- */
/* reclaim: a target gives up its chunks of the chains that no longer list it (DIST-8)
 *
 * A replaced target whose node comes back still holds its chunks of the chains it was replaced
 * in; no request reaches them any more (check_epoch refuses a target outside the chain), so
 * the node that owns the target deletes them itself. A chunk (ino, idx) belongs to the chain
 * the data service computes for it (ds_chunk_chain: chains[(ds_ino_seed(ino) + idx) %
 * nchains], fixed at format time), so a chunk file names its chain. Only chains that list the
 * target in no role are reclaimed: an away or syncing target's chunks are what its resync
 * brings up to date. The decision is taken on a table read this round while the node's lease
 * is valid, and checked again per chunk, under reclaim_lock, against the table installed
 * then: a chain that gave the target a role meanwhile (a rebuild onto it) keeps the chunk,
 * and its copies can only arrive after that table is installed. */

#define NODE_RECLAIM_PER_S 1000 /* chunk deletions per second and target */

struct node_reclaim_list {
	struct node *n;
	const bool *norole; /* by chain id */
	struct sm_chunk_info *v;
	size_t len, cap;
};

static int node_reclaim_collect(void *ctx, const struct sm_chunk_info *ci)
{
	struct node_reclaim_list *l = ctx;
	struct ds_chain_cfg c;
	if (ds_chunk_chain(l->n->ds, ci->ino, ci->idx, &c) < 0 || c.id >= META_MAX_CHAINS ||
	    !l->norole[c.id])
		return 0;
	if (l->len == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 256;
		struct sm_chunk_info *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->len++] = *ci;
	return 0;
}

/* Delete one chunk of local target t if its chain, as installed now, still gives t no role.
 * 1 deleted, 0 kept, -errno. */
static int node_reclaim_chunk(struct node *n, struct sm_target *sm, uint32_t t,
			      const struct sm_chunk_info *ci)
{
	struct ds_chain_cfg dc;
	struct meta_chain c;
	int r = 0;
	pthread_mutex_lock(&n->reclaim_lock);
	if (!fence_valid(&n->fence, now_monotonic_ns()))
		r = -ESHUTDOWN;
	else if (ds_chunk_chain(n->ds, ci->ino, ci->idx, &dc) == 0 &&
		 node_chain_get(n, dc.id, &c) == 0 && !vol_chain_lists(&c, t)) {
		/* no chunk lock: nothing writes to t for a chain that gives it no role, and a
		 * writer holding one may reload the chains (reclaim_lock) */
		r = sm->ops->truncate(sm, ci->ino, ci->idx, 0);
		r = r < 0 ? r : 1;
	}
	pthread_mutex_unlock(&n->reclaim_lock);
	return r;
}

/* One pass over local target number i, when the chains it has no role in (in the table read
 * this round) include one it had a role in at its last pass, or at the first round. */
static void node_reclaim(struct node *n, unsigned i)
{
	uint32_t t = n->local_id[i];
	struct sm_target *sm = n->local[i];
	bool *norole = calloc(META_MAX_CHAINS, sizeof(*norole));
	if (!n->reclaimed[i])
		n->reclaimed[i] = calloc(META_MAX_CHAINS, sizeof(bool));
	if (!norole || !n->reclaimed[i]) {
		free(norole);
		return;
	}
	bool todo = false;
	unsigned nnorole = 0;
	struct meta_chain c;
	for (unsigned ci = 0; node_chain_at(n, ci, &c); ci++)
		if (c.id < META_MAX_CHAINS && !vol_chain_lists(&c, t)) {
			norole[c.id] = true;
			nnorole++;
			todo |= !n->reclaimed[i][c.id];
		}
	for (unsigned k = 0; k < META_MAX_CHAINS; k++)
		n->reclaimed[i][k] &= norole[k]; /* rejoined: reclaimed again when it leaves */
	struct node_reclaim_list l = {.n = n, .norole = norole};
	uint64_t removed = 0;
	int r = 0;
	if (!todo)
		goto out;
	r = sm->ops->list(sm, node_reclaim_collect, &l);
	/* at most NODE_RECLAIM_PER_S deletions a second: the disk stays for clients */
	struct tbucket tb;
	tb_init(&tb, NODE_RECLAIM_PER_S, 1, now_monotonic_ns());
	for (size_t k = 0; r >= 0 && k < l.len; k++) {
		if (__atomic_load_n(&n->rp_cancel, __ATOMIC_RELAXED)) {
			r = -ECANCELED;
			break;
		}
		int64_t wait = tb_take(&tb, 1, now_monotonic_ns());
		if (wait > 0)
			usleep((useconds_t)(wait / 1000));
		r = node_reclaim_chunk(n, sm, t, &l.v[k]);
		removed += r == 1;
	}
	if (r >= 0 && removed)
		r = sm->ops->sync_all(sm);
	if (r >= 0) {
		memcpy(n->reclaimed[i], norole, META_MAX_CHAINS * sizeof(bool));
		if (removed)
			log_info("target %u: reclaimed %llu chunk(s) of the %u chain(s) that no "
				 "longer list it",
				 t, (unsigned long long)removed, nnorole);
	} else if (r != -ECANCELED) {
		log_warn("target %u: reclaim of the chunks of chains that no longer list it "
			 "stopped after %llu chunk(s), tried again later: %s",
			 t, (unsigned long long)removed, strerror(-r));
	}
out:
	free(l.v);
	free(norole);
}

/* DS-7: catch async target t of chain c up when chunks it missed are recorded, or when it is
 * marked for a rebuild (a primary that may have died with requests queued for it). A new
 * generation first, so that what it misses during the copy is recorded again. */
static void node_repair_async(struct node *n, const struct meta_chain *c, uint32_t t, int marked)
{
	uint64_t behind = 0;
	if (META_CALL_OPT(n->meta, dirty_count, c->id, t, &behind) < 0)
		return;
	if (!behind && marked <= 0)
		return;
	__atomic_add_fetch(&n->async_gen, 1, __ATOMIC_ACQ_REL);
	node_repair_one(n, c, t, true, marked);
}

static void *node_rp_main(void *arg)
{
	struct node *n = arg;
	struct node_rp_marks m = {0};
	while (!__atomic_load_n(&n->rp_cancel, __ATOMIC_RELAXED)) {
		m.read = false;
		/* a primary learns that the manager made a target syncing only from the database:
		 * no request tells it (clients do not write to syncing targets) */
		bool fresh = fence_valid(&n->fence, now_monotonic_ns()) &&
			     node_reload_chains(n) == 0 &&
			     fence_valid(&n->fence, now_monotonic_ns());
		for (unsigned i = 0; fresh && i < n->nlocal; i++)
			node_reclaim(n, i);
		for (unsigned ci = 0; !__atomic_load_n(&n->rp_cancel, __ATOMIC_RELAXED); ci++) {
			struct meta_chain c;
			if (!node_chain_at(n, ci, &c))
				break;
			if (!c.nmembers || (!c.nsyncing && !c.nasync) ||
			    !node_local(n, c.members[0]) ||
			    !fence_valid(&n->fence, now_monotonic_ns()))
				continue;
			for (uint32_t i = 0; i < c.nsyncing; i++)
				node_repair_one(n, &c, c.syncing[i], false,
						node_rp_marked(n, &m, c.id, c.syncing[i]));
			for (uint32_t i = 0; i < c.nasync; i++)
				node_repair_async(n, &c, c.async[i],
						  node_rp_marked(n, &m, c.id, c.async[i]));
		}
		for (unsigned w = 0; w < n->cfg.heartbeat_ms / 10 + 1 &&
				     !__atomic_load_n(&n->rp_cancel, __ATOMIC_RELAXED);
		     w++)
			usleep(10000);
	}
	free(m.rows);
	return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* the heartbeat */

/* A node whose lease lapsed — cut off, stopped, too slow — may have been marked down by the
 * manager meanwhile, which took its targets out of their chains (away). Once it renews again,
 * it says it is up, so that the manager brings those targets back as syncing (DIST-6) instead
 * of leaving them away until the serve restarts. Also checked every state_check_beats beats
 * (configuration; default 8): a manager acting on an older read of the nodes table may mark a
 * node down just after its renewal. */
static void node_revive(struct node *n)
{
	struct meta_node *nodes;
	int nn = vol_nodes(n->meta, &nodes);
	for (int i = 0; i < nn; i++)
		if (nodes[i].id == n->id && nodes[i].state == META_NODE_DOWN) {
			int r = META_CALL_OPT(n->meta, node_set_state, n->id, META_NODE_UP);
			if (r < 0)
				log_warn("cannot mark node %s up again: %s", n->cfg.node,
					 strerror(-r));
			else
				log_info(
				    "node %s was marked down while its lease had lapsed: up again; "
				    "its targets come back as syncing and are resynced",
				    n->cfg.node);
		}
	free(nodes);
}

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
	if (lapsed) /* before the fence is valid again: the manager may have marked meanwhile */
		__atomic_add_fetch(&n->chains_gen, 1, __ATOMIC_ACQ_REL);
	if (lapsed || ++n->beats % n->cfg.state_check_beats == 0)
		node_revive(n);
	bool refreshed = !lapsed || node_reload_chains(n) == 0;
	/* DS-6: keep the table fresh for reads served here (the repair thread re-reads it too,
	 * but not while it copies) */
	if (!lapsed && n->cfg.local_reads &&
	    !fence_reads_ok(&n->reads, now_monotonic_ns() + n->cfg.heartbeat_ms * 1000000LL,
			    n->read_lease_ms))
		node_reload_chains(n);
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
		int64_t until = now_monotonic_ns() + (int64_t)n->cfg.heartbeat_ms * 1000000;
		while (!n->hb_stop && cond_wait_until(&n->hb_cond, &n->hb_lock, until) != ETIMEDOUT)
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
	    .syncing_failed = node_syncing_failed,
	    .async_missed = node_async_missed,
	    .cb_ctx = n,
	    .chain_refresh = node_chain_refresh,
	    .lazy_open = true,
	    .target_url = node_target_url,
	    .test_async_hold = n->test_async_hold,
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
	if (n)
		n->hold = calloc(META_MAX_CHAINS, sizeof(*n->hold));
	if (!n || !n->hold) {
		set_err(err, errlen, "out of memory");
		free(n);
		return -ENOMEM;
	}
	n->cfg = *cfg;
	pthread_mutex_init(&n->chains_lock, NULL);
	pthread_mutex_init(&n->reclaim_lock, NULL);
	pthread_mutex_init(&n->dirty_lock, NULL);
	pthread_mutex_init(&n->async_mark_lock, NULL);
	n->test_async_hold = getenv("BRAIDFS_TEST_ASYNC_HOLD");
	const char *td = getenv("BRAIDFS_TEST_DIRTY_DELAY_MS");
	if (td)
		n->test_dirty_delay_ns = strtoll(td, NULL, 10) * 1000000LL;
	pthread_rwlockattr_t ga;
	pthread_rwlockattr_init(&ga);
	pthread_rwlockattr_setkind_np(&ga, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&n->promote_gate, &ga);
	pthread_rwlockattr_destroy(&ga);
	pthread_mutex_init(&n->hb_lock, NULL);
	cond_init_monotonic(&n->hb_cond); /* node_hb_main waits until a deadline */
	fence_init(&n->fence);
	fence_init(&n->mgr_fence);
	/* never above lease_ms: the configuration has lease_ms at least twice heartbeat_ms */
	n->read_lease_ms = 2 * n->cfg.heartbeat_ms;

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
	r = node_async_mark_unclean(n);
	if (r < 0) {
		set_err(err, errlen,
			"cannot mark the async targets of its chains for a rebuild: %s",
			strerror(-r));
		goto fail;
	}
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
	r = -pthread_create(&n->rp, NULL, node_rp_main, n);
	if (r < 0) {
		set_err(err, errlen, "cannot start the repair thread: %s", strerror(-r));
		goto fail;
	}
	n->rp_running = true;
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
	if (n->rp_running) {
		__atomic_store_n(&n->rp_cancel, 1, __ATOMIC_RELAXED);
		pthread_join(n->rp, NULL);
	}
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
	for (unsigned i = 0; i < CFG_MAX_TARGETS; i++)
		free(n->reclaimed[i]);
	pthread_mutex_destroy(&n->chains_lock);
	pthread_mutex_destroy(&n->reclaim_lock);
	pthread_mutex_destroy(&n->dirty_lock);
	pthread_mutex_destroy(&n->async_mark_lock);
	pthread_rwlock_destroy(&n->promote_gate);
	pthread_mutex_destroy(&n->hb_lock);
	pthread_cond_destroy(&n->hb_cond);
	free(n->hold);
	free(n);
}
