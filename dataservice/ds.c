/* ds — the data service: file bytes <-> replicated chunks. See ds.h for the contract and the
 * invariants DS-1..DS-3; dataservice/README.md for threads and locks.
 *
 * WRITE PATH (strong)
 *   1. Cut [off, off+len) into chunk pieces; for each piece, in order:
 *   2. take the chunk's stripe lock (DS-3: one writer per chunk at a time, so every replica
 *      sees the same order);
 *   3. snapshot the chain (members, epoch);
 *   4. write every member: pieces below par_min one member after another in this thread (a
 *      pwrite into the page cache costs less than a thread handoff), larger pieces on the
 *      worker pool, the caller writing the primary itself;
 *   5. settle (DS-1): all ok -> done; some failed -> chain_failed for each failed member, then
 *      acknowledge; callback failed -> -EIO; all failed -> the last member's error as-is;
 *   6. release the stripe lock.
 *
 * WRITE PATH (weak)
 *   Steps 2-3, then the primary is written inline and the piece is copied once into a
 *   refcounted buffer queued to every secondary's replication thread (one FIFO thread per
 *   target, so per-chunk order holds on every replica). ds_write blocks while more than
 *   weak_max bytes wait. Every other mutating call (truncate, punch, allocate, remove, sync_all,
 *   check) first waits until the queues have applied what was queued before it (a barrier),
 *   then runs as in strong mode. If a primary fails, it leaves the chain and the next member
 *   becomes primary after its queue caught up.
 *
 * READ REPAIR (DS-4)
 *   A member whose read answers -EBADMSG (its store's checksum of the bytes failed) stays in
 *   the chain; the next member is asked. Once one answered, the reader takes the cut lock
 *   (shared) and the chunk's stripe lock, checks that each bad copy still fails (a writer or
 *   another reader may have rewritten it meanwhile), and rewrites it from a member that
 *   verifies: the whole chunk, exact length, then sync (ds_copy_chunk). No member verifies:
 *   -EIO. Each step is counted (ds_stats) and logged at warning level: corruption on a medium
 *   is something an operator must see, so this is the one place ds logs above debug on a
 *   path that does not fail.
 *
 * LOCK ORDER (outermost first): cut_lock -> stripe -> chain.change_lock -> chain.lock;
 *   lag_lock, tgt.repl.lock, tgt.async.lock, pool_lock, lazy_lock -> open_lock and batch locks are
 * leaves. No ds lock but the cut lock, a stripe and the chain's change_lock is held while
 * chain_failed runs; only the change_lock while chain_changed runs. cut_lock is a writer-preferring
 * rwlock: remove and trim/truncate (which delete whole chunks without stripe locks) hold it
 * exclusively; repairs that may create a chunk (read repair, check, scrub) hold it shared, so they
 * can never recreate a chunk that a concurrent remove deleted.
 *
 * CHECK AND SCRUB (ds_check, ds_scrub: one engine, ds_check_run)
 *   List, sort by (ino, idx); per chunk, under the cut lock (shared) and its stripe lock: read
 *   every open in-chain copy (checksums verified by the store), compare, repair from the first
 *   copy that verified. The scrub paces its reads with a token bucket between chunks, no lock
 *   held; fsck's check also judges placement (strays, orphans, beyond EOF).
 *
 * REBUILD (ds_rebuild)
 *   Open the target on demand (SM-1), copy the chain's chunks from the primary chunk by chunk
 *   under their stripe locks, delete the target's chunks of the chain the primary lacks, sync,
 *   then commit the chain with the target appended through chain_changed (epoch+1) if the
 *   chain did not change meanwhile. Writers are the caller's to keep away.
 */
#include "dataservice/ds.h"
#include "dataservice/ds_internal.h"
#include "dataservice/rpc_target.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/tbucket.h"
#include "dataservice/repair.h"
#include "common/util.h"

#define DS_STRIPES	1024
#define DS_POOL_THREADS 8
#define DS_WEAK_MAX	(64ULL << 20)
#define DS_CHECK_PIECE	RP_PIECE /* one buffer reads a piece and serves rp_copy_range */
#define DS_CHUNK_MIN	4096u
#define DS_CHUNK_MAX	(1u << 30)

enum ds_op {
	DS_OP_READ,
	DS_OP_WRITE,
	DS_OP_CUT, /* truncate the chunk to off if it is longer; never creates it */
	DS_OP_TRUNCATE,
	DS_OP_PUNCH,
	DS_OP_ALLOCATE,
	DS_OP_REMOVE, /* idx = first chunk to remove */
	DS_OP_SYNC_INO,
	DS_OP_SYNC_ALL,
	DS_OP_SEEK,   /* off = within; len = whence; res = answer */
	DS_OP_LENGTH, /* res = answer */
};

struct ds_tgt;
struct ds_batch;

/* One operation on one replica. */
struct ds_rop {
	enum ds_op op;
	struct ds_tgt *t;
	uint64_t ino;
	uint32_t idx;
	uint64_t off, len;
	const void *wbuf;
	void *rbuf;
	uint64_t res;
	ssize_t ret;
	struct ds_batch *batch;
	struct ds_rop *next; /* pool queue */
};

struct ds_batch {
	pthread_mutex_t lock;
	pthread_cond_t done;
	unsigned pending; /* protected by lock */
};

/* Weak mode: a written piece, shared by the queue items of every secondary. */
struct ds_buf {
	unsigned refs; /* __atomic */
	size_t len;
	char data[];
};

/* An ordered queue of one target's requests, applied by a thread of its own: the weak mode
 * replication queue and an async target's queue (DS-7). Items embed a ds_qlink first. */
struct ds_qlink {
	struct ds_qlink *next;
	uint64_t seq;
};

struct ds_fifo {
	pthread_mutex_t lock;
	pthread_cond_t work;	      /* work queued or stop */
	pthread_cond_t done;	      /* done_seq advanced */
	struct ds_qlink *head, *tail; /* protected by lock */
	uint64_t enq_seq, done_seq;   /* protected by lock */
	uint64_t bytes;		      /* protected by lock: the cost of what is queued */
	bool stop, started, failed;   /* protected by lock */
	pthread_t thread;
};

struct ds_item {
	struct ds_qlink link;
	unsigned chain; /* index into ds->chains */
	uint64_t ino;
	uint32_t idx;
	uint64_t off;
	struct ds_buf *buf;
};

/* DS-7: one request queued to an async target (its own copy of the bytes). */
struct ds_aitem {
	struct ds_qlink link;
	unsigned chain; /* index into ds->chains */
	enum ds_op op;
	uint64_t ino;
	uint32_t idx;
	uint64_t off, len;
	char data[]; /* len bytes for a write */
};

struct ds_tgt {
	struct ds *ds;
	uint32_t id;
	bool owned;	      /* sm is ours to close (not given open in ds_config) */
	int64_t next_open_ns; /* lazy_open: no new attempt before (monotonic); ds.lazy_lock */
	bool up;    /* configured up, or rebuilt into a chain; protected by ds.open_lock */
	bool local; /* on this process's node: reads may go to it (DS-6); immutable */
	char url[1024];
	struct sm_target *sm; /* NULL when not open; set once (ds_open, ds_attach), __atomic */

	struct ds_fifo repl;  /* weak mode replication (ds_item), started at open */
	struct ds_fifo async; /* async role (DS-7, ds_aitem), started on first use */
};

struct ds_chain {
	pthread_mutex_t change_lock; /* one membership change (chain_failed) at a time */
	pthread_mutex_t lock;
	uint32_t id;
	uint64_t epoch;			    /* protected by lock */
	uint32_t n;			    /* protected by lock */
	struct ds_tgt *m[DS_MAX_REPLICAS];  /* protected by lock; [0] = primary */
	uint32_t nkeep;			    /* immutable after ds_open */
	struct ds_tgt *keep[DS_MAX_KEEP];   /* not members, chunks kept (ds_chain_cfg.keep) */
	uint32_t ns;			    /* protected by lock */
	struct ds_tgt *sy[DS_MAX_REPLICAS]; /* protected by lock; syncing (ds_chain_cfg) */
	uint32_t na;			    /* protected by lock */
	struct ds_tgt *as[DS_MAX_REPLICAS]; /* protected by lock; async (DS-7) */
};

struct ds_snap {
	uint64_t epoch;
	uint32_t n;
	struct ds_tgt *m[DS_MAX_REPLICAS];
	uint32_t ns;
	struct ds_tgt *sy[DS_MAX_REPLICAS];
	uint32_t na;
	struct ds_tgt *as[DS_MAX_REPLICAS];
};

struct ds {
	uint32_t chunk_size;
	enum ds_consistency mode;
	ds_chain_failed_fn chain_failed;
	ds_chain_changed_fn chain_changed;
	ds_syncing_failed_fn syncing_failed;
	ds_async_missed_fn async_missed;
	char test_async_hold[256]; /* ds_config.test_async_hold; "": none */
	void *cb_ctx;
	bool forward, lazy_open;
	bool read_local; /* DS-6: forward mode, strong volume, local targets given */
	ds_chain_refresh_fn chain_refresh;
	int (*target_url)(void *ctx, uint32_t id, char *url, size_t len);
	unsigned stall_ms;
	char volume_uuid[37];
	pthread_mutex_t open_lock; /* opening a target on demand (ds_attach) */
	pthread_mutex_t
	    lazy_lock; /* one lazy_open attempt at a time (ds_lazy); taken before open_lock */
	size_t par_min;
	bool par_sync;
	uint64_t weak_max;

	unsigned ntargets;
	struct ds_tgt *targets;
	unsigned nchains;
	struct ds_chain *chains;

	pthread_mutex_t stripes[DS_STRIPES];

	pthread_mutex_t pool_lock;
	pthread_cond_t pool_cond;
	struct ds_rop *pool_head, *pool_tail; /* protected by pool_lock */
	bool pool_stop;			      /* protected by pool_lock */
	unsigned npool;
	pthread_t pool[DS_POOL_THREADS];

	pthread_mutex_t lag_lock;
	pthread_cond_t lag_cond;
	uint64_t lag_bytes; /* protected by lag_lock: weak bytes not yet on every replica */

	/* see the LOCK ORDER above; writer-preferring so that a stream of chunk repairs cannot
	 * starve a remove */
	pthread_rwlock_t cut_lock;

	uint64_t bytes_written, bytes_read, replica_failures;	  /* __atomic */
	uint64_t csum_errors_seen, repairs_done, repair_failures; /* __atomic (DS-4) */
	uint64_t local_reads, local_fallbacks;			  /* __atomic (DS-6) */
	uint64_t async_misses;					  /* __atomic (DS-7) */
};

/* ---------------------------------------------------------------------------------------- */
/* addressing */

uint32_t ds_ino_seed(uint64_t ino)
{
	/* splitmix64's finalizer: consecutive inode numbers land on unrelated chains */
	uint64_t x = ino + 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return (uint32_t)(x ^ (x >> 32));
}

uint32_t ds_chunk_size(const struct ds *ds)
{
	return ds->chunk_size;
}

static unsigned ds_chain_of(const struct ds *ds, uint64_t ino, uint32_t idx)
{
	/* 64-bit sum: no wrap-around at 2^32 chunks */
	return (unsigned)(((uint64_t)ds_ino_seed(ino) + idx) % ds->nchains);
}

static pthread_mutex_t *ds_stripe(struct ds *ds, uint64_t ino, uint32_t idx)
{
	uint64_t x = (ino * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)idx * 0xc2b2ae3d27d4eb4fULL);
	x ^= x >> 29;
	return &ds->stripes[x % DS_STRIPES];
}

static void ds_snap(struct ds *ds, unsigned ci, struct ds_snap *s)
{
	struct ds_chain *c = &ds->chains[ci];
	pthread_mutex_lock(&c->lock);
	s->epoch = c->epoch;
	s->n = c->n;
	memcpy(s->m, c->m, sizeof(s->m));
	s->ns = c->ns;
	memcpy(s->sy, c->sy, sizeof(s->sy));
	s->na = c->na;
	memcpy(s->as, c->as, sizeof(s->as));
	pthread_mutex_unlock(&c->lock);
}

static bool ds_snap_has(const struct ds_snap *s, const struct ds_tgt *t)
{
	for (uint32_t i = 0; i < s->n; i++)
		if (s->m[i] == t)
			return true;
	return false;
}

static struct ds_tgt *ds_find_target(struct ds *ds, uint32_t id)
{
	for (unsigned i = 0; i < ds->ntargets; i++)
		if (ds->targets[i].id == id)
			return &ds->targets[i];
	return NULL;
}

/* The targets of ids[0..n) that this ds knows, into out; their count. */
static uint32_t ds_known(struct ds *ds, const uint32_t *ids, uint32_t n, struct ds_tgt **out)
{
	uint32_t k = 0;
	for (uint32_t i = 0; i < n && i < DS_MAX_REPLICAS; i++)
		if ((out[k] = ds_find_target(ds, ids[i])))
			k++;
	return k;
}

static bool ds_chain_has_syncing(struct ds *ds, unsigned ci)
{
	struct ds_chain *c = &ds->chains[ci];
	pthread_mutex_lock(&c->lock);
	bool any = c->ns > 0;
	pthread_mutex_unlock(&c->lock);
	return any;
}

/* Does chain ci keep t's chunks though t is no member (syncing, away: ds_chain_cfg.keep)? */
static bool ds_chain_keeps(const struct ds *ds, unsigned ci, const struct ds_tgt *t)
{
	const struct ds_chain *c = &ds->chains[ci];

	for (uint32_t i = 0; i < c->nkeep; i++)
		if (c->keep[i] == t)
			return true;
	return false;
}

/* ---------------------------------------------------------------------------------------- */
/* replica operations and the worker pool */

/* A target's store, NULL while it is not open (ds_attach may open it later). */
static struct sm_target *ds_tsm(const struct ds_tgt *t)
{
	return __atomic_load_n(&t->sm, __ATOMIC_ACQUIRE);
}

static int ds_attach(struct ds *ds, struct ds_tgt *t, char *err, size_t errlen);
static int ds_rpc_chain(void *ctx, uint64_t ino, uint32_t idx, uint32_t *ret_chain,
			uint64_t *ret_epoch);

/* Open target t at the URL target_url gives now (else its configured one), identity checked
 * (SM-1): a remote one (tcp://HOST:PORT/ID, rpc_target.h), which then carries this ds's
 * chains and epochs, or one of the storage manager's kinds (storemgr sits below the
 * transports, so its registry cannot know them). why: the reason alone, on failure. */
static int ds_open_sm(struct ds *ds, struct ds_tgt *t, struct sm_target **ret, char *why,
		      size_t whylen)
{
	struct sm_identity expect = {.target_id = t->id, .chunk_size = ds->chunk_size};
	snprintf(expect.volume_uuid, sizeof(expect.volume_uuid), "%s", ds->volume_uuid);
	char serr[512] = "";
	int r = ds->target_url ? ds->target_url(ds->cb_ctx, t->id, t->url, sizeof(t->url)) : 0;
	if (r == 0 && !strncmp(t->url, "tcp://", 6))
		r = rpc_target_ops.open(t->url, &expect, ret, serr, sizeof(serr));
	else if (r == 0)
		r = sm_open(t->url, &expect, ret, serr, sizeof(serr));
	if (r < 0) {
		snprintf(why, whylen, "%s", serr[0] ? serr : strerror(-r));
		return r;
	}
	rpc_target_set_chain_fn(*ret, ds_rpc_chain, ds); /* -EINVAL: not remote */
	if (ds->read_local && t->local)
		rpc_target_set_local(*ret); /* DS-6: its node applies the read lease */
	return 0;
}

/* lazy_open: open a target that did not open before. Requests that find it closed wait for
 * one attempt (lazy_lock) instead of failing beside it: a target that was merely not opened
 * yet — its node registered after this process started — must not be taken for a failed one
 * and leave its chains. After a failed attempt, requests fail at once for
 * DS_LAZY_RETRY_NS (an unreachable node is not asked again by every request). */
#define DS_LAZY_RETRY_NS 200000000LL
static struct sm_target *ds_lazy(struct ds_tgt *t)
{
	struct ds *ds = t->ds;
	if (!ds->lazy_open || !t->up)
		return NULL;
	pthread_mutex_lock(&ds->lazy_lock);
	struct sm_target *sm = ds_tsm(t);
	if (!sm && now_monotonic_ns() >= t->next_open_ns) {
		char err[512];
		if (ds_attach(ds, t, err, sizeof(err)) < 0) {
			log_debug("ds: %s", err);
			t->next_open_ns = now_monotonic_ns() + DS_LAZY_RETRY_NS;
		}
		sm = ds_tsm(t);
	}
	pthread_mutex_unlock(&ds->lazy_lock);
	return sm;
}

static void ds_apply(struct ds_rop *r)
{
	struct sm_target *sm = ds_tsm(r->t);
	if (!sm)
		sm = ds_lazy(r->t);
	if (!sm) {
		/* known offline; or a lazily opened target that cannot be reached yet */
		r->ret = r->t->ds->lazy_open ? -ECONNREFUSED : -EIO;
		return;
	}
	const struct sm_ops *o = sm->ops;
	switch (r->op) {
	case DS_OP_READ:
		r->ret = o->read(sm, r->ino, r->idx, r->rbuf, r->len, r->off);
		break;
	case DS_OP_WRITE:
		r->ret = o->write(sm, r->ino, r->idx, r->wbuf, r->len, r->off);
		break;
	case DS_OP_CUT: {
		uint64_t l;
		int k = o->chunk_length(sm, r->ino, r->idx, &l);
		if (k == -ENOENT || (k == 0 && l <= r->off))
			r->ret = 0;
		else
			r->ret = k < 0 ? k : o->truncate(sm, r->ino, r->idx, r->off);
		break;
	}
	case DS_OP_TRUNCATE:
		r->ret = o->truncate(sm, r->ino, r->idx, r->off);
		break;
	case DS_OP_PUNCH:
		r->ret = o->punch(sm, r->ino, r->idx, r->off, r->len);
		break;
	case DS_OP_ALLOCATE:
		r->ret = o->allocate(sm, r->ino, r->idx, r->off, r->len);
		break;
	case DS_OP_REMOVE:
		r->ret = o->remove(sm, r->ino, r->idx);
		break;
	case DS_OP_SYNC_INO:
		r->ret = o->sync_ino(sm, r->ino);
		break;
	case DS_OP_SYNC_ALL:
		r->ret = o->sync_all(sm);
		break;
	case DS_OP_SEEK:
		r->ret = o->seek(sm, r->ino, r->idx, r->off, (int)r->len, &r->res);
		break;
	case DS_OP_LENGTH:
		r->ret = o->chunk_length(sm, r->ino, r->idx, &r->res);
		break;
	}
}

static void *ds_pool_main(void *arg)
{
	struct ds *ds = arg;
	pthread_mutex_lock(&ds->pool_lock);
	for (;;) {
		while (!ds->pool_head && !ds->pool_stop)
			pthread_cond_wait(&ds->pool_cond, &ds->pool_lock);
		struct ds_rop *r = ds->pool_head;
		if (!r)
			break;
		ds->pool_head = r->next;
		if (!ds->pool_head)
			ds->pool_tail = NULL;
		pthread_mutex_unlock(&ds->pool_lock);

		ds_apply(r);
		struct ds_batch *b = r->batch;
		pthread_mutex_lock(&b->lock);
		if (--b->pending == 0)
			pthread_cond_signal(&b->done);
		pthread_mutex_unlock(&b->lock);

		pthread_mutex_lock(&ds->pool_lock);
	}
	pthread_mutex_unlock(&ds->pool_lock);
	return NULL;
}

/* Run n replica operations; in parallel (rops[1..] on the pool, rops[0] here) or inline. */
static void ds_run(struct ds *ds, struct ds_rop *rops, unsigned n, bool parallel)
{
	if (!parallel || n < 2 || !ds->npool) {
		for (unsigned i = 0; i < n; i++)
			ds_apply(&rops[i]);
		return;
	}
	struct ds_batch b = {.pending = n - 1};
	pthread_mutex_init(&b.lock, NULL);
	pthread_cond_init(&b.done, NULL);
	pthread_mutex_lock(&ds->pool_lock);
	for (unsigned i = 1; i < n; i++) {
		rops[i].batch = &b;
		rops[i].next = NULL;
		if (ds->pool_tail)
			ds->pool_tail->next = &rops[i];
		else
			ds->pool_head = &rops[i];
		ds->pool_tail = &rops[i];
	}
	if (n == 2)
		pthread_cond_signal(&ds->pool_cond);
	else
		pthread_cond_broadcast(&ds->pool_cond);
	pthread_mutex_unlock(&ds->pool_lock);

	ds_apply(&rops[0]);

	pthread_mutex_lock(&b.lock);
	while (b.pending)
		pthread_cond_wait(&b.done, &b.lock);
	pthread_mutex_unlock(&b.lock);
	pthread_mutex_destroy(&b.lock);
	pthread_cond_destroy(&b.done);
}

/* ---------------------------------------------------------------------------------------- */
/* DS-1: membership changes */

static bool ds_refresh(struct ds *ds, unsigned ci);

/* Forward mode: how long to wait before asking again after `round` unchanged answers (50 ms
 * doubling to 500 ms), and when to give up on a chain that does not change (stall_ms). */
static void ds_fwd_pause(unsigned round)
{
	usleep(round < 4 ? 50000u << round : 500000u);
}

static int64_t ds_fwd_deadline(const struct ds *ds)
{
	return now_monotonic_ns() + (int64_t)ds->stall_ms * 1000000LL;
}

/* Forward mode (DS-5): this ds changes no chain; wait until the committed chain no longer
 * lists t (the manager or the primary took it out), for at most stall_ms. */
static int ds_fwd_drop(struct ds *ds, unsigned ci, struct ds_tgt *t, int why)
{
	int64_t deadline = ds_fwd_deadline(ds);
	for (unsigned round = 0;; round++) {
		struct ds_snap s;
		ds_refresh(ds, ci);
		ds_snap(ds, ci, &s);
		if (!ds_snap_has(&s, t))
			return s.n ? 0 : -EIO;
		if (now_monotonic_ns() >= deadline) {
			log_err(
			    "ds: chain %u: target %u failed (%s) and is still a member after %u "
			    "ms",
			    ds->chains[ci].id, t->id, strerror(why < 0 ? -why : EIO), ds->stall_ms);
			return -EIO;
		}
		ds_fwd_pause(round);
	}
}

/* Take t out of chain ci through chain_failed. 0 when done or already done; the member's own
 * error when it is the last one (nothing to fall back to); -ESTALE when the chain changed
 * meanwhile; -EIO when the callback failed otherwise. */
static int ds_drop(struct ds *ds, unsigned ci, struct ds_tgt *t, int why)
{
	if (ds->forward)
		return ds_fwd_drop(ds, ci, t, why);
	struct ds_chain *c = &ds->chains[ci];
	uint32_t ids[DS_MAX_REPLICAS];
	struct ds_tgt *m[DS_MAX_REPLICAS];
	uint32_t nn = 0;
	int r = 0;

	pthread_mutex_lock(&c->change_lock);
	pthread_mutex_lock(&c->lock);
	bool found = false;
	for (uint32_t i = 0; i < c->n; i++) {
		if (c->m[i] == t) {
			found = true;
			continue;
		}
		ids[nn] = c->m[i]->id;
		m[nn++] = c->m[i];
	}
	uint64_t epoch = c->epoch;
	pthread_mutex_unlock(&c->lock);
	if (!found)
		goto out; /* another thread already took it out */
	if (nn == 0) {
		r = why < 0 ? why : -EIO;
		goto out;
	}
	uint64_t ne = epoch + 1;
	if (ds->chain_failed) {
		int k = ds->chain_failed(ds->cb_ctx, c->id, epoch, t->id, ids, nn, &ne);
		if (k < 0) {
			log_debug("ds: chain %u: cannot remove failed target %u: %s", c->id, t->id,
				  strerror(-k));
			r = k == -ESTALE ? -ESTALE : -EIO;
			goto out;
		}
	}
	pthread_mutex_lock(&c->lock);
	if (ne > c->epoch) { /* the callback may have loaded the new chain already */
		memcpy(c->m, m, nn * sizeof(m[0]));
		c->n = nn;
		c->epoch = ne;
	}
	pthread_mutex_unlock(&c->lock);
	log_debug("ds: chain %u: target %u removed after error %s, epoch %llu", c->id, t->id,
		  strerror(why < 0 ? -why : EIO), (unsigned long long)ne);
out:
	pthread_mutex_unlock(&c->change_lock);
	return r;
}

/* After rops[i] ran on member i of chain ci. */
static int ds_settle(struct ds *ds, unsigned ci, struct ds_rop *rops, unsigned n)
{
	int last = 0;
	unsigned ok = 0;
	for (unsigned i = 0; i < n; i++) {
		if (rops[i].ret < 0)
			last = (int)rops[i].ret;
		else
			ok++;
	}
	if (!last)
		return 0;
	__atomic_add_fetch(&ds->replica_failures, n - ok, __ATOMIC_RELAXED);
	if (!ok)
		return last; /* nothing is left to acknowledge from: the error itself goes up */
	for (unsigned i = 0; i < n; i++) {
		if (rops[i].ret < 0) {
			int k = ds_drop(ds, ci, rops[i].t, (int)rops[i].ret);
			if (k < 0)
				return k == -ESTALE ? k : -EIO;
		}
	}
	return 0;
}

/* After an operation that ran once per target (sync, remove): every failed target leaves every
 * chain it is in; a chain whose members all failed returns their error. */
static int ds_settle_targets(struct ds *ds, struct ds_rop *rops, unsigned n)
{
	int failed[DS_MAX_TARGETS] = {0};
	bool any = false;
	for (unsigned i = 0; i < n; i++) {
		if (rops[i].ret < 0) {
			failed[rops[i].t - ds->targets] = (int)rops[i].ret;
			any = true;
			__atomic_add_fetch(&ds->replica_failures, 1, __ATOMIC_RELAXED);
		}
	}
	if (!any)
		return 0;
	int ret = 0;
	for (unsigned ci = 0; ci < ds->nchains; ci++) {
		struct ds_snap s;
		ds_snap(ds, ci, &s);
		int last = 0;
		unsigned alive = 0;
		for (uint32_t i = 0; i < s.n; i++) {
			int f = failed[s.m[i] - ds->targets];
			if (f)
				last = f;
			else
				alive++;
		}
		if (!last)
			continue;
		if (!alive) {
			ret = ret ? ret : last;
			continue;
		}
		for (uint32_t i = 0; i < s.n; i++) {
			int f = failed[s.m[i] - ds->targets];
			if (f && ds_drop(ds, ci, s.m[i], f) < 0)
				ret = -EIO;
		}
	}
	return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* weak mode replication */

static void ds_buf_put(struct ds *ds, struct ds_buf *b)
{
	if (__atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL))
		return;
	pthread_mutex_lock(&ds->lag_lock);
	ds->lag_bytes -= b->len;
	pthread_cond_broadcast(&ds->lag_cond);
	pthread_mutex_unlock(&ds->lag_lock);
	free(b);
}

static void ds_fifo_init(struct ds_fifo *f)
{
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->work, NULL);
	pthread_cond_init(&f->done, NULL);
}

static void ds_fifo_destroy(struct ds_fifo *f)
{
	pthread_mutex_destroy(&f->lock);
	pthread_cond_destroy(&f->work);
	pthread_cond_destroy(&f->done);
}

/* Start f's thread if it is not running (one attempt); under f->lock. */
static bool ds_fifo_start_locked(struct ds_fifo *f, void *(*fn)(void *), void *arg)
{
	if (!f->started && !f->failed) {
		if (pthread_create(&f->thread, NULL, fn, arg) == 0)
			f->started = true;
		else
			f->failed = true;
	}
	return f->started;
}

/* Append l, whose cost is counted in f->bytes until ds_fifo_done; under f->lock. */
static void ds_fifo_push_locked(struct ds_fifo *f, struct ds_qlink *l, uint64_t cost)
{
	l->next = NULL;
	l->seq = ++f->enq_seq;
	if (f->tail)
		f->tail->next = l;
	else
		f->head = l;
	f->tail = l;
	f->bytes += cost;
	pthread_cond_signal(&f->work);
}

/* The queue thread's next item, NULL once stopped and drained; *stopping: a stop was asked. */
static struct ds_qlink *ds_fifo_pop(struct ds_fifo *f, bool *stopping)
{
	pthread_mutex_lock(&f->lock);
	while (!f->head && !f->stop)
		pthread_cond_wait(&f->work, &f->lock);
	struct ds_qlink *l = f->head;
	if (l) {
		f->head = l->next;
		if (!f->head)
			f->tail = NULL;
	}
	if (stopping)
		*stopping = f->stop;
	pthread_mutex_unlock(&f->lock);
	return l;
}

/* The queue thread applied the item of seq (cost as pushed). */
static void ds_fifo_done(struct ds_fifo *f, uint64_t seq, uint64_t cost)
{
	pthread_mutex_lock(&f->lock);
	f->bytes -= cost;
	f->done_seq = seq;
	pthread_cond_broadcast(&f->done);
	pthread_mutex_unlock(&f->lock);
}

/* Wait until everything queued to f before this call is applied. */
static void ds_fifo_wait(struct ds_fifo *f)
{
	wait_hint();
	pthread_mutex_lock(&f->lock);
	uint64_t want = f->enq_seq;
	while (f->done_seq < want)
		pthread_cond_wait(&f->done, &f->lock);
	pthread_mutex_unlock(&f->lock);
}

/* Ask f's thread to stop once it drained its queue (ds_fifo_join waits for it). */
static void ds_fifo_stop(struct ds_fifo *f)
{
	pthread_mutex_lock(&f->lock);
	f->stop = true;
	pthread_cond_signal(&f->work);
	pthread_mutex_unlock(&f->lock);
}

static void ds_fifo_join(struct ds_fifo *f)
{
	if (f->started)
		pthread_join(f->thread, NULL);
	f->started = false;
}

static void *ds_repl_main(void *arg)
{
	struct ds_tgt *t = arg;
	struct ds *ds = t->ds;
	struct ds_qlink *l;

	while ((l = ds_fifo_pop(&t->repl, NULL))) {
		struct ds_item *it = (struct ds_item *)l;

		/* A member that left the chain meanwhile owes it nothing more. */
		struct ds_snap s;
		ds_snap(ds, it->chain, &s);
		if (ds_snap_has(&s, t)) {
			struct ds_rop r = {.op = DS_OP_WRITE,
					   .t = t,
					   .ino = it->ino,
					   .idx = it->idx,
					   .off = it->off,
					   .len = it->buf->len,
					   .wbuf = it->buf->data};
			ds_apply(&r);
			if (r.ret < 0) {
				__atomic_add_fetch(&ds->replica_failures, 1, __ATOMIC_RELAXED);
				if (ds_drop(ds, it->chain, t, (int)r.ret) < 0)
					log_err(
					    "ds: weak replication to target %u failed (%s) and it "
					    "could not leave chain %u",
					    t->id, strerror((int)-r.ret), ds->chains[it->chain].id);
			}
		}
		uint64_t seq = l->seq;
		ds_buf_put(ds, it->buf);
		free(it);
		ds_fifo_done(&t->repl, seq, 0);
	}
	return NULL;
}

static void ds_barrier(struct ds *ds)
{
	if (ds->mode != DS_WEAK)
		return;
	for (unsigned i = 0; i < ds->ntargets; i++)
		ds_fifo_wait(&ds->targets[i].repl);
}

static int ds_enqueue(struct ds *ds, unsigned ci, const struct ds_snap *s, uint64_t ino,
		      uint32_t idx, const void *buf, size_t len, uint64_t off)
{
	if (s->n < 2)
		return 0;
	pthread_mutex_lock(&ds->lag_lock);
	while (ds->lag_bytes && ds->lag_bytes + len > ds->weak_max)
		pthread_cond_wait(&ds->lag_cond, &ds->lag_lock);
	ds->lag_bytes += len;
	pthread_mutex_unlock(&ds->lag_lock);

	struct ds_buf *b = malloc(sizeof(*b) + len);
	struct ds_item *items[DS_MAX_REPLICAS] = {0};
	bool oom = !b;
	for (uint32_t i = 1; i < s->n && !oom; i++)
		oom = !(items[i] = calloc(1, sizeof(struct ds_item)));
	if (oom) {
		for (uint32_t i = 1; i < s->n; i++)
			free(items[i]);
		free(b);
		pthread_mutex_lock(&ds->lag_lock);
		ds->lag_bytes -= len;
		pthread_cond_broadcast(&ds->lag_cond);
		pthread_mutex_unlock(&ds->lag_lock);
		return -ENOMEM;
	}
	b->refs = s->n - 1;
	b->len = len;
	memcpy(b->data, buf, len);
	for (uint32_t i = 1; i < s->n; i++) {
		struct ds_tgt *t = s->m[i];
		struct ds_item *it = items[i];
		it->chain = ci;
		it->ino = ino;
		it->idx = idx;
		it->off = off;
		it->buf = b;
		pthread_mutex_lock(&t->repl.lock);
		ds_fifo_push_locked(&t->repl, &it->link, 0);
		pthread_mutex_unlock(&t->repl.lock);
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* async targets (DS-7) */

/* What one queued request holds against DS_ASYNC_QUEUE_MAX. */
static uint64_t ds_aitem_cost(const struct ds_aitem *it)
{
	return sizeof(*it) + (it->op == DS_OP_WRITE ? it->len : 0);
}

static int ds_async_report(struct ds *ds, unsigned ci, const struct ds_tgt *t, uint64_t ino,
			   uint32_t idx, int err)
{
	__atomic_add_fetch(&ds->async_misses, 1, __ATOMIC_RELAXED);
	log_debug("ds: chain %u: async target %u missed inode %llu chunk %u: %s", ds->chains[ci].id,
		  t->id, (unsigned long long)ino, idx, strerror(-err));
	if (!ds->async_missed)
		return 0;
	return ds->async_missed(ds->cb_ctx, ds->chains[ci].id, t->id, ino, idx, err);
}

/* The queue thread of async target t: applies its requests in order, whatever role the target
 * holds by then (a request queued before it left the async role is still owed to it). */
static void *ds_async_main(void *arg)
{
	struct ds_tgt *t = arg;
	struct ds *ds = t->ds;
	struct ds_qlink *l;
	bool stop;

	while ((l = ds_fifo_pop(&t->async, &stop))) {
		struct ds_aitem *it = (struct ds_aitem *)l;
		while (!stop && ds->test_async_hold[0] && access(ds->test_async_hold, F_OK) == 0)
			usleep(10000);
		struct ds_rop r = {.op = it->op,
				   .t = t,
				   .ino = it->ino,
				   .idx = it->idx,
				   .off = it->off,
				   .len = it->len,
				   .wbuf = it->data};
		ds_apply(&r);
		if (r.ret < 0) {
			int k = ds_async_report(ds, it->chain, t, it->ino, it->idx, (int)r.ret);
			if (k < 0)
				log_err(
				    "ds: async target %u missed inode %llu chunk %u (%s) and it "
				    "cannot be recorded: %s",
				    t->id, (unsigned long long)it->ino, it->idx,
				    strerror((int)-r.ret), strerror(-k));
		}
		ds_fifo_done(&t->async, l->seq, ds_aitem_cost(it));
		free(it);
	}
	return NULL;
}

/* Queue op, which the members applied, to every async target of snapshot s; under the chunk's
 * stripe lock (DS-3: the queues get a chunk's requests in the members' order). 0, or -EIO when
 * a request that did not fit could not be reported. */
static int ds_async_queue(struct ds *ds, unsigned ci, const struct ds_snap *s,
			  const struct ds_rop *op)
{
	int r = 0;
	for (uint32_t i = 0; i < s->na; i++) {
		struct ds_tgt *t = s->as[i];
		size_t dlen = op->op == DS_OP_WRITE ? (size_t)op->len : 0;
		struct ds_aitem *it = malloc(sizeof(*it) + dlen);
		int why = -ENOMEM;
		if (it) {
			*it = (struct ds_aitem){.chain = ci,
						.op = op->op,
						.ino = op->ino,
						.idx = op->idx,
						.off = op->off,
						.len = op->len};
			if (dlen)
				memcpy(it->data, op->wbuf, dlen);
			uint64_t cost = ds_aitem_cost(it);
			struct ds_fifo *f = &t->async;
			pthread_mutex_lock(&f->lock);
			why = f->bytes + cost > DS_ASYNC_QUEUE_MAX	  ? -ENOBUFS
			      : ds_fifo_start_locked(f, ds_async_main, t) ? 0
									  : -EAGAIN;
			if (why == 0)
				ds_fifo_push_locked(f, &it->link, cost);
			pthread_mutex_unlock(&f->lock);
		}
		if (why == 0)
			continue;
		free(it);
		if (ds_async_report(ds, ci, t, op->ino, op->idx, why) < 0)
			r = -EIO;
	}
	return r;
}

int ds_async_drain(struct ds *ds, uint32_t target_id)
{
	struct ds_tgt *t = ds_find_target(ds, target_id);
	if (!t)
		return -ENOENT;
	ds_fifo_wait(&t->async);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* open / close */

static void ds_free(struct ds *ds)
{
	pthread_mutex_lock(&ds->pool_lock);
	ds->pool_stop = true;
	pthread_cond_broadcast(&ds->pool_cond);
	pthread_mutex_unlock(&ds->pool_lock);
	for (unsigned i = 0; i < ds->npool; i++)
		pthread_join(ds->pool[i], NULL);
	for (unsigned i = 0; i < ds->ntargets; i++) {
		struct ds_tgt *t = &ds->targets[i];
		if (t->owned)
			sm_close(t->sm);
		ds_fifo_destroy(&t->repl);
		ds_fifo_destroy(&t->async);
	}
	for (unsigned i = 0; i < ds->nchains; i++) {
		pthread_mutex_destroy(&ds->chains[i].lock);
		pthread_mutex_destroy(&ds->chains[i].change_lock);
	}
	for (unsigned i = 0; i < DS_STRIPES; i++)
		pthread_mutex_destroy(&ds->stripes[i]);
	pthread_mutex_destroy(&ds->pool_lock);
	pthread_cond_destroy(&ds->pool_cond);
	pthread_mutex_destroy(&ds->lag_lock);
	pthread_cond_destroy(&ds->lag_cond);
	pthread_mutex_destroy(&ds->open_lock);
	pthread_mutex_destroy(&ds->lazy_lock);
	pthread_rwlock_destroy(&ds->cut_lock);
	free(ds->targets);
	free(ds->chains);
	free(ds);
}

static int ds_validate(const struct ds_config *cfg, char *err, size_t errlen)
{
	if (cfg->chunk_size < DS_CHUNK_MIN || cfg->chunk_size > DS_CHUNK_MAX ||
	    cfg->chunk_size % DS_CHUNK_MIN) {
		snprintf(err, errlen, "invalid chunk size %u (a multiple of 4 KiB, at most 1 GiB)",
			 cfg->chunk_size);
		return -EINVAL;
	}
	if (!cfg->ntargets || cfg->ntargets > DS_MAX_TARGETS || !cfg->targets) {
		snprintf(err, errlen, "a volume needs 1 to %d targets, not %u", DS_MAX_TARGETS,
			 cfg->ntargets);
		return -EINVAL;
	}
	if (!cfg->nchains || !cfg->chains) {
		snprintf(err, errlen, "a volume needs at least one chain");
		return -EINVAL;
	}
	for (unsigned i = 0; i < cfg->ntargets; i++)
		for (unsigned j = 0; j < i; j++)
			if (cfg->targets[i].id == cfg->targets[j].id) {
				snprintf(err, errlen, "target id %u is listed twice",
					 cfg->targets[i].id);
				return -EINVAL;
			}
	for (unsigned i = 0; i < cfg->nchains; i++) {
		const struct ds_chain_cfg *c = &cfg->chains[i];
		if (!c->nmembers || c->nmembers > DS_MAX_REPLICAS) {
			snprintf(err, errlen, "chain %u has %u members (1 to %d)", c->id,
				 c->nmembers, DS_MAX_REPLICAS);
			return -EINVAL;
		}
		for (uint32_t k = 0; k < c->nmembers; k++) {
			bool known = false;
			for (unsigned t = 0; t < cfg->ntargets; t++)
				known |= cfg->targets[t].id == c->members[k];
			if (!known) {
				snprintf(err, errlen, "chain %u names unknown target %u", c->id,
					 c->members[k]);
				return -EINVAL;
			}
			for (uint32_t j = 0; j < k; j++)
				if (c->members[j] == c->members[k]) {
					snprintf(err, errlen, "chain %u lists target %u twice",
						 c->id, c->members[k]);
					return -EINVAL;
				}
		}
	}
	return 0;
}

int ds_open(const struct ds_config *cfg, struct ds **ret, char *err, size_t errlen)
{
	char dummy[8];
	if (!err || !errlen) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	err[0] = '\0';
	int r = ds_validate(cfg, err, errlen);
	if (r < 0)
		return r;
	struct ds *ds = calloc(1, sizeof(*ds));
	if (!ds)
		goto oom;
	ds->targets = calloc(cfg->ntargets, sizeof(*ds->targets));
	ds->chains = calloc(cfg->nchains, sizeof(*ds->chains));
	if (!ds->targets || !ds->chains) {
		free(ds->targets);
		free(ds->chains);
		free(ds);
		goto oom;
	}
	ds->chunk_size = cfg->chunk_size;
	ds->mode = cfg->consistency;
	ds->chain_failed = cfg->chain_failed;
	ds->syncing_failed = cfg->syncing_failed;
	ds->async_missed = cfg->async_missed;
	if (cfg->test_async_hold)
		snprintf(ds->test_async_hold, sizeof(ds->test_async_hold), "%s",
			 cfg->test_async_hold);
	ds->chain_changed = cfg->chain_changed;
	ds->cb_ctx = cfg->cb_ctx;
	ds->forward = cfg->forward;
	ds->lazy_open = cfg->lazy_open;
	ds->chain_refresh = cfg->chain_refresh;
	ds->target_url = cfg->target_url;
	ds->stall_ms = cfg->stall_ms ? cfg->stall_ms : 20000;
	ds->read_local = ds->forward && cfg->consistency == DS_STRONG && cfg->nlocal;
	if (ds->forward)
		ds->mode = DS_STRONG; /* the primaries replicate; fsync reaches every member */
	snprintf(ds->volume_uuid, sizeof(ds->volume_uuid), "%s", cfg->volume_uuid);
	ds->par_min = DS_PAR_MIN_DEFAULT;
	ds->par_sync = true;
	ds->weak_max = DS_WEAK_MAX;
	ds->ntargets = cfg->ntargets;
	ds->nchains = cfg->nchains;
	for (unsigned i = 0; i < DS_STRIPES; i++)
		pthread_mutex_init(&ds->stripes[i], NULL);
	pthread_mutex_init(&ds->pool_lock, NULL);
	pthread_cond_init(&ds->pool_cond, NULL);
	pthread_mutex_init(&ds->lag_lock, NULL);
	pthread_cond_init(&ds->lag_cond, NULL);
	pthread_mutex_init(&ds->open_lock, NULL);
	pthread_mutex_init(&ds->lazy_lock, NULL);
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&ds->cut_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	for (unsigned i = 0; i < ds->ntargets; i++) {
		struct ds_tgt *t = &ds->targets[i];
		t->ds = ds;
		t->id = cfg->targets[i].id;
		t->up = cfg->targets[i].up;
		t->sm = cfg->targets[i].sm;
		t->owned = !t->sm;
		snprintf(t->url, sizeof(t->url), "%s", cfg->targets[i].url);
		for (unsigned k = 0; k < cfg->nlocal && cfg->local_targets; k++)
			t->local |= cfg->local_targets[k] == t->id;
		ds_fifo_init(&t->repl);
		ds_fifo_init(&t->async);
	}
	for (unsigned i = 0; i < ds->nchains; i++) {
		struct ds_chain *c = &ds->chains[i];
		const struct ds_chain_cfg *cc = &cfg->chains[i];
		pthread_mutex_init(&c->lock, NULL);
		pthread_mutex_init(&c->change_lock, NULL);
		c->id = cc->id;
		c->epoch = cc->epoch;
		c->n = cc->nmembers;
		for (uint32_t k = 0; k < cc->nmembers; k++)
			for (unsigned t = 0; t < ds->ntargets; t++)
				if (ds->targets[t].id == cc->members[k])
					c->m[k] = &ds->targets[t];
		for (uint32_t k = 0; k < cc->nkeep && k < DS_MAX_KEEP; k++)
			if ((c->keep[c->nkeep] = ds_find_target(ds, cc->keep[k])))
				c->nkeep++;
		c->ns = ds_known(ds, cc->syncing, cc->nsyncing, c->sy);
		c->na = ds_known(ds, cc->async, cc->nasync, c->as);
	}

	for (unsigned i = 0; i < ds->ntargets; i++) {
		struct ds_tgt *t = &ds->targets[i];
		if (!t->up || t->sm)
			continue;
		char why[512];
		struct sm_target *sm = NULL;
		r = ds_open_sm(ds, t, &sm, why, sizeof(why));
		if (r == 0) {
			t->sm = sm;
		} else if (ds->lazy_open) {
			log_info("target %u (%s) is not reachable yet: %s", t->id, t->url, why);
			t->next_open_ns = now_monotonic_ns() + DS_LAZY_RETRY_NS;
		} else {
			snprintf(err, errlen, "target %u (%s): %s", t->id, t->url, why);
			goto fail;
		}
	}
	for (unsigned i = 0; i < DS_POOL_THREADS; i++) {
		if (pthread_create(&ds->pool[i], NULL, ds_pool_main, ds) != 0)
			break;
		ds->npool++;
	}
	if (ds->mode == DS_WEAK) {
		for (unsigned i = 0; i < ds->ntargets; i++) {
			struct ds_tgt *t = &ds->targets[i];
			pthread_mutex_lock(&t->repl.lock);
			bool started = ds_fifo_start_locked(&t->repl, ds_repl_main, t);
			pthread_mutex_unlock(&t->repl.lock);
			if (!started) {
				snprintf(err, errlen, "cannot start replication thread");
				r = -EAGAIN;
				goto fail;
			}
		}
	}
	*ret = ds;
	return 0;
fail:
	ds_close(ds);
	return r;
oom:
	snprintf(err, errlen, "out of memory");
	return -ENOMEM;
}

void ds_close(struct ds *ds)
{
	if (!ds)
		return;
	/* every queue thread drains its queue before it exits */
	for (unsigned i = 0; i < ds->ntargets; i++) {
		ds_fifo_stop(&ds->targets[i].repl);
		ds_fifo_stop(&ds->targets[i].async);
	}
	for (unsigned i = 0; i < ds->ntargets; i++) {
		ds_fifo_join(&ds->targets[i].repl);
		ds_fifo_join(&ds->targets[i].async);
	}
	ds_free(ds);
}

void ds_set_parallel_min(struct ds *ds, size_t bytes)
{
	ds->par_min = bytes;
}

void ds_set_parallel_sync(struct ds *ds, bool parallel)
{
	ds->par_sync = parallel;
}

void ds_set_weak_queue_max(struct ds *ds, size_t bytes)
{
	pthread_mutex_lock(&ds->lag_lock);
	ds->weak_max = bytes;
	pthread_cond_broadcast(&ds->lag_cond);
	pthread_mutex_unlock(&ds->lag_lock);
}

/* ---------------------------------------------------------------------------------------- */
/* forward mode (DS-5): chains served by their primaries' nodes */

/* An answer of the operation itself rather than a failure to ask it. */
static bool ds_is_answer(const struct ds_rop *op)
{
	return op->ret >= 0 || (op->op == DS_OP_SEEK && op->ret == -ENXIO) ||
	       (op->op == DS_OP_LENGTH && op->ret == -ENOENT) ||
	       (op->op == DS_OP_CUT && op->ret == -ENOENT);
}

/* Errors after which another primary, or the same one later, may succeed. */
static bool ds_fwd_retryable(int err)
{
	switch (-err) {
	case ESTALE:	   /* our epoch is old, or the node's: re-read */
	case ESHUTDOWN:	   /* the node fenced itself (DIST-4) */
	case ECONNREFUSED: /* nobody listens: the node is down or restarting */
	case ECONNRESET:
	case ETIMEDOUT:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case EHOSTDOWN:
	case ENOTCONN:
	case EPIPE:
	case ENODEV: /* the node does not serve that target (yet) */
	case EBUSY:
	case EAGAIN:
	case EIO: /* the primary could not commit a member's removal, or its disk failed */
		return true;
	default:
		return false;
	}
}

/* Re-read chain ci from where it is committed. true when the held chain changed. */
static bool ds_refresh(struct ds *ds, unsigned ci)
{
	if (!ds->chain_refresh)
		return false;
	struct ds_chain_cfg c;
	uint64_t before = __atomic_load_n(&ds->chains[ci].epoch, __ATOMIC_RELAXED);
	int r = ds->chain_refresh(ds->cb_ctx, ds->chains[ci].id, &c);
	if (r < 0) {
		log_debug("ds: chain %u: cannot re-read it: %s", ds->chains[ci].id, strerror(-r));
		return false;
	}
	ds_chain_load(ds, &c);
	return __atomic_load_n(&ds->chains[ci].epoch, __ATOMIC_RELAXED) != before;
}

/* Run op on the primary of chain ci; on a retryable failure, re-read the chain and go again
 * (at once when it changed, after a pause when not), for at most stall_ms without a change.
 * 0 (op->ret holds the answer) or -errno. */
static int ds_fwd(struct ds *ds, unsigned ci, struct ds_rop *op)
{
	int64_t deadline = ds_fwd_deadline(ds);
	for (unsigned round = 0;;) {
		struct ds_snap s;
		ds_snap(ds, ci, &s);
		if (!s.n)
			return -EIO;
		op->t = s.m[0];
		ds_apply(op);
		if (ds_is_answer(op))
			return 0;
		if (!ds_fwd_retryable((int)op->ret))
			return (int)op->ret;
		__atomic_add_fetch(&ds->replica_failures, 1, __ATOMIC_RELAXED);
		log_debug("ds: chain %u: primary %u: %s; re-reading the chain", ds->chains[ci].id,
			  op->t->id, strerror((int)-op->ret));
		if (ds_refresh(ds, ci)) {
			deadline = ds_fwd_deadline(ds);
			round = 0;
			continue;
		}
		if (now_monotonic_ns() >= deadline) {
			log_err(
			    "ds: chain %u: its primary, target %u, has failed (%s) for %u ms and "
			    "the chain did not change; giving up",
			    ds->chains[ci].id, op->t->id, strerror((int)-op->ret), ds->stall_ms);
			return -EIO;
		}
		ds_fwd_pause(round);
		round++;
	}
}

/* DS-6: a read-only op on this node's member of chain ci when there is one after the primary,
 * else (or when it does not answer) on the primary (ds_fwd). */
static int ds_fwd_read(struct ds *ds, unsigned ci, struct ds_rop *op)
{
	if (!ds->read_local)
		return ds_fwd(ds, ci, op);
	struct ds_snap s;
	ds_snap(ds, ci, &s);
	for (uint32_t i = 1; i < s.n; i++) {
		struct ds_tgt *t = s.m[i];
		if (!t->local)
			continue;
		op->t = t;
		ds_apply(op);
		if (ds_is_answer(op)) {
			__atomic_add_fetch(&ds->local_reads, 1, __ATOMIC_RELAXED);
			return 0;
		}
		__atomic_add_fetch(&ds->local_fallbacks, 1, __ATOMIC_RELAXED);
		if (op->ret == -EBADMSG) {
			/* DS-4: not a failure of the member; the primary's copy is read instead and
			 * this copy is left to its node's scrub (only the primary's node writes) */
			__atomic_add_fetch(&ds->csum_errors_seen, 1, __ATOMIC_RELAXED);
			log_warn(
			    "ds: checksum error on target %u (%s): inode %llu chunk %u; reading "
			    "the chain's primary",
			    t->id, t->url, (unsigned long long)op->ino, op->idx);
		} else {
			log_debug("ds: chain %u: local member %u: %s; reading the primary",
				  ds->chains[ci].id, t->id, strerror((int)-op->ret));
		}
		if (op->ret == -ESTALE)
			ds_refresh(ds, ci); /* it left the chain, or our epoch is old */
		break;
	}
	return ds_fwd(ds, ci, op);
}

int ds_chain_load(struct ds *ds, const struct ds_chain_cfg *c)
{
	if (c->nsyncing > DS_MAX_REPLICAS || c->nasync > DS_MAX_REPLICAS)
		return -EINVAL;
	struct ds_tgt *m[DS_MAX_REPLICAS];
	if (c->nmembers > DS_MAX_REPLICAS)
		return -EINVAL;
	for (uint32_t i = 0; i < c->nmembers; i++)
		if (!(m[i] = ds_find_target(ds, c->members[i])))
			return -ENOENT;
	for (unsigned ci = 0; ci < ds->nchains; ci++) {
		struct ds_chain *ch = &ds->chains[ci];
		if (ch->id != c->id)
			continue;
		/* not the change_lock: chain_failed callbacks (which hold it) reload chains */
		struct ds_tgt *sy[DS_MAX_REPLICAS];
		uint32_t ns = ds_known(ds, c->syncing, c->nsyncing, sy);
		struct ds_tgt *as[DS_MAX_REPLICAS];
		uint32_t na = ds_known(ds, c->async, c->nasync, as);
		pthread_mutex_lock(&ch->lock);
		if (c->epoch > ch->epoch) {
			memcpy(ch->m, m, c->nmembers * sizeof(m[0]));
			ch->n = c->nmembers;
			memcpy(ch->sy, sy, ns * sizeof(sy[0]));
			ch->ns = ns;
			memcpy(ch->as, as, na * sizeof(as[0]));
			ch->na = na;
			__atomic_store_n(&ch->epoch, c->epoch, __ATOMIC_RELAXED);
		}
		pthread_mutex_unlock(&ch->lock);
		return 0;
	}
	return -ENOENT;
}

static void ds_chain_cfg_of(struct ds *ds, unsigned ci, struct ds_chain_cfg *ret)
{
	struct ds_snap s;
	ds_snap(ds, ci, &s);
	memset(ret, 0, sizeof(*ret));
	ret->id = ds->chains[ci].id;
	ret->epoch = s.epoch;
	ret->nmembers = s.n;
	for (uint32_t i = 0; i < s.n; i++)
		ret->members[i] = s.m[i]->id;
}

int ds_chunk_chain(struct ds *ds, uint64_t ino, uint32_t idx, struct ds_chain_cfg *ret)
{
	if (!ds->nchains)
		return -ENOENT;
	ds_chain_cfg_of(ds, ds_chain_of(ds, ino, idx), ret);
	return 0;
}

/* rpc_chain_fn of the remote targets this ds opens: the chain and epoch a request carries. */
static int ds_rpc_chain(void *ctx, uint64_t ino, uint32_t idx, uint32_t *ret_chain,
			uint64_t *ret_epoch)
{
	struct ds *ds = ctx;
	if (!ds->nchains)
		return -ENOENT;
	struct ds_chain *c = &ds->chains[ds_chain_of(ds, ino, idx)];
	*ret_chain = c->id;
	*ret_epoch = __atomic_load_n(&c->epoch, __ATOMIC_RELAXED);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* chunk-wise I/O */

static int ds_range_ok(const struct ds *ds, uint64_t off, uint64_t len)
{
	if (off + len < off)
		return -EFBIG;
	if (len && (off + len - 1) / ds->chunk_size > UINT32_MAX)
		return -EFBIG;
	return 0;
}

static void ds_heal(struct ds *ds, unsigned ci, const struct ds_rop *op, struct ds_tgt *const *bad,
		    unsigned nbad);

/* A read-only operation on the first member that answers (DS-2): a member that fails is
 * reported like a failed write and the next one is asked. A data read that fails its checksum
 * is not a failure of the member (DS-4): the next one is asked, and the bad copies are
 * rewritten from the one that answered. */
static int ds_ask(struct ds *ds, unsigned ci, struct ds_rop *op)
{
	if (ds->forward)
		return ds_fwd_read(ds, ci, op);
	struct ds_snap s;
	ds_snap(ds, ci, &s);
	struct ds_tgt *bad[DS_MAX_REPLICAS];
	unsigned nbad = 0;
	int last = -EIO;
	for (uint32_t i = 0; i < s.n; i++) {
		struct ds_tgt *t = s.m[i];
		if (!ds_tsm(t))
			continue;
		if (i > 0 && ds->mode == DS_WEAK)
			ds_fifo_wait(&t->repl); /* a secondary answers once it caught up */
		op->t = t;
		ds_apply(op);
		bool answer = op->ret >= 0 || (op->op == DS_OP_SEEK && op->ret == -ENXIO) ||
			      (op->op == DS_OP_LENGTH && op->ret == -ENOENT);
		if (answer) {
			if (nbad)
				ds_heal(ds, ci, op, bad, nbad);
			return 0;
		}
		if (op->op == DS_OP_READ && op->ret == -EBADMSG) {
			__atomic_add_fetch(&ds->csum_errors_seen, 1, __ATOMIC_RELAXED);
			log_warn("ds: checksum error on target %u (%s): inode %llu chunk %u, %llu "
				 "byte(s) at offset %llu; reading another replica",
				 t->id, t->url, (unsigned long long)op->ino, op->idx,
				 (unsigned long long)op->len, (unsigned long long)op->off);
			bad[nbad++] = t;
			continue;
		}
		last = (int)op->ret;
		__atomic_add_fetch(&ds->replica_failures, 1, __ATOMIC_RELAXED);
		ds_drop(ds, ci, t, last); /* refuses to drop the last member: fine for a read */
	}
	if (nbad) {
		__atomic_add_fetch(&ds->repair_failures, nbad, __ATOMIC_RELAXED);
		log_err(
		    "ds: inode %llu chunk %u: unrecoverable: %u cop%s failed the checksum and no "
		    "replica could serve %llu byte(s) at offset %llu; the reader gets EIO",
		    (unsigned long long)op->ino, op->idx, nbad, nbad == 1 ? "y" : "ies",
		    (unsigned long long)op->len, (unsigned long long)op->off);
		return -EIO;
	}
	return last;
}

ssize_t ds_read(struct ds *ds, uint64_t ino, void *buf, size_t len, uint64_t off)
{
	int r = ds_range_ok(ds, off, len);
	if (r < 0)
		return r;
	size_t done = 0;
	while (done < len) {
		uint64_t pos = off + done;
		uint32_t idx = (uint32_t)(pos / ds->chunk_size);
		uint64_t within = pos % ds->chunk_size;
		size_t n = (size_t)MIN((uint64_t)(len - done), ds->chunk_size - within);
		struct ds_rop op = {.op = DS_OP_READ,
				    .ino = ino,
				    .idx = idx,
				    .off = within,
				    .len = n,
				    .rbuf = (char *)buf + done};
		r = ds_ask(ds, ds_chain_of(ds, ino, idx), &op);
		if (r < 0)
			return r;
		done += n;
	}
	__atomic_add_fetch(&ds->bytes_read, len, __ATOMIC_RELAXED);
	return (ssize_t)len;
}

/* Run op (filled in but for .t) on every member of the chunk's chain, under its stripe lock. */
/* After rops[i] ran on syncing target s->sy[i] of chain ci: report each failure (they never
 * fail the request unless the callback could not record it; ds.h ds_syncing_failed_fn). */
static int ds_settle_syncing(struct ds *ds, unsigned ci, const struct ds_snap *s,
			     const struct ds_rop *rops, const struct ds_rop *tmpl)
{
	int r = 0;
	for (uint32_t i = 0; i < s->ns; i++) {
		if (rops[i].ret >= 0)
			continue;
		__atomic_add_fetch(&ds->replica_failures, 1, __ATOMIC_RELAXED);
		log_debug("ds: chain %u: syncing target %u failed: %s", ds->chains[ci].id,
			  s->sy[i]->id, strerror((int)-rops[i].ret));
		if (ds->syncing_failed &&
		    ds->syncing_failed(ds->cb_ctx, ds->chains[ci].id, s->epoch, s->sy[i]->id,
				       tmpl->ino, tmpl->idx, (int)rops[i].ret) < 0)
			r = -EIO;
	}
	return r;
}

static int ds_chunk_op(struct ds *ds, const struct ds_rop *tmpl, bool parallel)
{
	unsigned ci = ds_chain_of(ds, tmpl->ino, tmpl->idx);
	pthread_mutex_t *sl = ds_stripe(ds, tmpl->ino, tmpl->idx);
	struct ds_rop rops[2 * DS_MAX_REPLICAS];
	struct ds_snap s;

	pthread_mutex_lock(sl);
	if (ds->forward) {
		struct ds_rop op = *tmpl;
		int r = ds_fwd(ds, ci, &op);
		pthread_mutex_unlock(sl);
		return r;
	}
	ds_barrier(ds); /* weak: queued writes to this chunk land before this op */
	ds_snap(ds, ci, &s);
	for (uint32_t i = 0; i < s.n + s.ns; i++) {
		rops[i] = *tmpl;
		rops[i].t = i < s.n ? s.m[i] : s.sy[i - s.n];
	}
	ds_run(ds, rops, s.n + s.ns, parallel);
	int r = ds_settle(ds, ci, rops, s.n);
	int k = ds_settle_syncing(ds, ci, &s, rops + s.n, tmpl);
	if (r == 0 && k == 0 && s.na)
		k = ds_async_queue(ds, ci, &s, tmpl); /* DS-7: after the members, same order */
	pthread_mutex_unlock(sl);
	return r < 0 ? r : k;
}

static int ds_write_weak(struct ds *ds, uint64_t ino, uint32_t idx, const void *buf, size_t n,
			 uint64_t within)
{
	unsigned ci = ds_chain_of(ds, ino, idx);
	pthread_mutex_t *sl = ds_stripe(ds, ino, idx);
	struct ds_snap s;
	int r;

	pthread_mutex_lock(sl);
	for (;;) {
		ds_snap(ds, ci, &s);
		struct ds_rop op = {.op = DS_OP_WRITE,
				    .t = s.m[0],
				    .ino = ino,
				    .idx = idx,
				    .off = within,
				    .len = n,
				    .wbuf = buf};
		ds_apply(&op);
		if (op.ret >= 0)
			break;
		__atomic_add_fetch(&ds->replica_failures, 1, __ATOMIC_RELAXED);
		if (s.n == 1) {
			r = (int)op.ret;
			goto out;
		}
		if (ds_drop(ds, ci, s.m[0], (int)op.ret) < 0) {
			r = -EIO;
			goto out;
		}
		ds_fifo_wait(&s.m[1]->repl); /* the new primary must hold what the old one had */
	}
	r = ds_enqueue(ds, ci, &s, ino, idx, buf, n, within);
	if (r == 0 && s.na) {
		struct ds_rop op = {.op = DS_OP_WRITE,
				    .ino = ino,
				    .idx = idx,
				    .off = within,
				    .len = n,
				    .wbuf = buf};
		r = ds_async_queue(ds, ci, &s, &op);
	}
out:
	pthread_mutex_unlock(sl);
	return r;
}

/* n bytes at within of chunk idx: weak mode queues the secondaries' copies, unless the chain
 * has syncing targets (they must get every write before it is acknowledged); strong mode and
 * forward mode (always strong) run it on every member, or on the primary. */
static int ds_write_chunk(struct ds *ds, uint64_t ino, uint32_t idx, const void *buf, size_t n,
			  uint64_t within)
{
	if (ds->mode == DS_WEAK && !ds_chain_has_syncing(ds, ds_chain_of(ds, ino, idx)))
		return ds_write_weak(ds, ino, idx, buf, n, within);
	struct ds_rop op = {
	    .op = DS_OP_WRITE, .ino = ino, .idx = idx, .off = within, .len = n, .wbuf = buf};
	return ds_chunk_op(ds, &op, n >= ds->par_min);
}

ssize_t ds_write(struct ds *ds, uint64_t ino, const void *buf, size_t len, uint64_t off)
{
	int r = ds_range_ok(ds, off, len);
	if (r < 0)
		return r;
	size_t done = 0;
	while (done < len) {
		uint64_t pos = off + done;
		uint32_t idx = (uint32_t)(pos / ds->chunk_size);
		uint64_t within = pos % ds->chunk_size;
		size_t n = (size_t)MIN((uint64_t)(len - done), ds->chunk_size - within);
		r = ds_write_chunk(ds, ino, idx, (const char *)buf + done, n, within);
		if (r < 0)
			return r;
		done += n;
	}
	__atomic_add_fetch(&ds->bytes_written, len, __ATOMIC_RELAXED);
	return (ssize_t)len;
}

int ds_chunk_apply(struct ds *ds, enum ds_chunk_kind kind, uint64_t ino, uint32_t idx, uint64_t off,
		   uint64_t len, const void *data)
{
	static const enum ds_op ops[] = {[DS_CHUNK_WRITE] = DS_OP_WRITE,
					 [DS_CHUNK_TRUNCATE] = DS_OP_TRUNCATE,
					 [DS_CHUNK_PUNCH] = DS_OP_PUNCH,
					 [DS_CHUNK_ALLOCATE] = DS_OP_ALLOCATE};
	if ((unsigned)kind >= ARRAY_SIZE(ops) || off > ds->chunk_size ||
	    (kind != DS_CHUNK_TRUNCATE && len > ds->chunk_size - off))
		return -EINVAL;
	if (kind == DS_CHUNK_WRITE) {
		int r = ds_write_chunk(ds, ino, idx, data, (size_t)len, off);
		if (r == 0)
			__atomic_add_fetch(&ds->bytes_written, len, __ATOMIC_RELAXED);
		return r;
	}
	struct ds_rop op = {.op = ops[kind], .ino = ino, .idx = idx, .off = off, .len = len};
	if (kind == DS_CHUNK_TRUNCATE) {
		op.off = len; /* sm truncate takes the new length as off (ds_apply) */
		op.len = 0;
	}
	return ds_chunk_op(ds, &op, len >= ds->par_min);
}

/* Does some chain still list t? A chain that lists it is re-read before it counts (forward
 * mode); the first that still lists it answers. */
static bool ds_fwd_listed(struct ds *ds, struct ds_tgt *t)
{
	for (unsigned ci = 0; ci < ds->nchains; ci++) {
		struct ds_snap s;
		ds_snap(ds, ci, &s);
		if (!ds_snap_has(&s, t))
			continue;
		ds_refresh(ds, ci);
		ds_snap(ds, ci, &s);
		if (ds_snap_has(&s, t))
			return true;
	}
	return false;
}

/* Forward mode, after an operation that ran once per target (sync, remove): this ds changes no
 * chain (DS-5), so a target that failed in a way worth retrying is asked again — a node that
 * fenced itself for a moment (its lease lapsed while it was busy) or restarted answers again
 * with no chain change at all — until it answers, until no chain lists it (the manager or a
 * primary took it out: nothing to wait for), or until stall_ms passed with it still listed:
 * -EIO then, once for the whole operation (waiting stall_ms per chain it is in, as a chain's
 * drop does, would stall an fsync for minutes). */
static int ds_fwd_settle_targets(struct ds *ds, struct ds_rop *rops, unsigned n)
{
	int64_t deadline = ds_fwd_deadline(ds);
	for (unsigned round = 0;; round++) {
		int failed = 0;
		struct ds_tgt *who = NULL;
		for (unsigned i = 0; i < n; i++) {
			if (rops[i].ret >= 0 || !ds_fwd_listed(ds, rops[i].t))
				continue;
			if (!ds_fwd_retryable((int)rops[i].ret))
				return (int)rops[i].ret;
			failed = (int)rops[i].ret;
			who = rops[i].t;
		}
		if (!failed)
			return 0;
		if (!round)
			__atomic_add_fetch(&ds->replica_failures, 1, __ATOMIC_RELAXED);
		if (now_monotonic_ns() >= deadline) {
			log_err("ds: target %u failed (%s) and is still in a chain after %u ms",
				who->id, strerror(-failed), ds->stall_ms);
			return -EIO;
		}
		ds_fwd_pause(round);
		for (unsigned i = 0; i < n; i++)
			if (rops[i].ret < 0 && ds_fwd_retryable((int)rops[i].ret))
				ds_apply(&rops[i]);
	}
}

/* Run op once per target in list (parallel), then settle per target. */
static int ds_targets_op(struct ds *ds, const struct ds_rop *tmpl, struct ds_tgt **list, unsigned n)
{
	struct ds_rop *rops = calloc(n ? n : 1, sizeof(*rops));
	if (!rops)
		return -ENOMEM;
	for (unsigned i = 0; i < n; i++) {
		rops[i] = *tmpl;
		rops[i].t = list[i];
	}
	ds_run(ds, rops, n, ds->par_sync);
	int r = ds->forward ? ds_fwd_settle_targets(ds, rops, n) : ds_settle_targets(ds, rops, n);
	free(rops);
	return r;
}

/* Targets in some chain (primaries_only: first members), each once. */
static unsigned ds_chain_targets(struct ds *ds, bool primaries_only, struct ds_tgt **out)
{
	bool seen[DS_MAX_TARGETS] = {0};
	unsigned n = 0;
	for (unsigned ci = 0; ci < ds->nchains; ci++) {
		struct ds_snap s;
		ds_snap(ds, ci, &s);
		for (uint32_t i = 0; i < (primaries_only ? MIN(s.n, 1u) : s.n); i++) {
			size_t k = (size_t)(s.m[i] - ds->targets);
			if (!seen[k]) {
				seen[k] = true;
				out[n++] = s.m[i];
			}
		}
	}
	return n;
}

/* Every target that is up or still in a chain (a down member then fails and leaves). */
static unsigned ds_all_targets(struct ds *ds, struct ds_tgt **out)
{
	struct ds_tgt *inchain[DS_MAX_TARGETS];
	bool in[DS_MAX_TARGETS] = {0};
	unsigned m = ds_chain_targets(ds, false, inchain), n = 0;
	for (unsigned i = 0; i < m; i++)
		in[inchain[i] - ds->targets] = true;
	for (unsigned i = 0; i < ds->ntargets; i++)
		if (ds_tsm(&ds->targets[i]) || in[i])
			out[n++] = &ds->targets[i];
	return n;
}

int ds_fsync(struct ds *ds, uint64_t ino)
{
	struct ds_tgt *list[DS_MAX_TARGETS];
	struct ds_rop op = {.op = DS_OP_SYNC_INO, .ino = ino};
	wait_hint(); /* a device flush */
	if (ds->mode != DS_WEAK)
		return ds_targets_op(ds, &op, list, ds_chain_targets(ds, false, list));
	/* weak: durable on the primaries; a primary that fails leaves its chains and the next
	 * member, once caught up, is synced in its place */
	for (unsigned round = 0; round <= DS_MAX_REPLICAS; round++) {
		unsigned n = ds_chain_targets(ds, true, list);
		struct ds_rop rops[DS_MAX_TARGETS];
		for (unsigned i = 0; i < n; i++) {
			rops[i] = op;
			rops[i].t = list[i];
		}
		ds_run(ds, rops, n, ds->par_sync);
		bool failed = false;
		for (unsigned i = 0; i < n; i++)
			failed |= rops[i].ret < 0;
		if (!failed)
			return 0;
		int r = ds_settle_targets(ds, rops, n);
		if (r < 0)
			return r;
		ds_barrier(ds);
	}
	return -EIO;
}

int ds_sync_all(struct ds *ds)
{
	struct ds_tgt *list[DS_MAX_TARGETS];
	struct ds_rop op = {.op = DS_OP_SYNC_ALL};
	ds_barrier(ds);
	return ds_targets_op(ds, &op, list, ds_all_targets(ds, list));
}

/* Drop everything of ino at or beyond size on every replica. */
static int ds_cut(struct ds *ds, uint64_t ino, uint64_t size)
{
	uint64_t cs = ds->chunk_size;
	uint64_t idx_b = size / cs, within = size % cs;
	if (idx_b > UINT32_MAX)
		return 0; /* no chunk index reaches that far */
	if (within) {
		struct ds_rop op = {
		    .op = DS_OP_CUT, .ino = ino, .idx = (uint32_t)idx_b, .off = within};
		int r = ds_chunk_op(ds, &op, true);
		if (r < 0)
			return r;
		idx_b++;
		if (idx_b > UINT32_MAX)
			return 0;
	}
	/* SM-5 on every target, not only chain members: a chunk left on a former member
	 * must not come back if that target rejoins */
	struct ds_tgt *list[DS_MAX_TARGETS];
	struct ds_rop op = {.op = DS_OP_REMOVE, .ino = ino, .idx = (uint32_t)idx_b};
	ds_barrier(ds);
	return ds_targets_op(ds, &op, list, ds_all_targets(ds, list));
}

/* ds_cut under the cut lock: no repair may recreate a chunk it deletes. */
void ds_chunk_lock(void *ctx, uint64_t ino, uint32_t idx, bool lock)
{
	struct ds *ds = ctx;
	pthread_mutex_t *sl = ds_stripe(ds, ino, idx);

	if (lock) {
		pthread_rwlock_rdlock(&ds->cut_lock);
		pthread_mutex_lock(sl);
	} else {
		pthread_mutex_unlock(sl);
		pthread_rwlock_unlock(&ds->cut_lock);
	}
}

static int ds_cut_locked(struct ds *ds, uint64_t ino, uint64_t size)
{
	pthread_rwlock_wrlock(&ds->cut_lock);
	int r = ds_cut(ds, ino, size);
	pthread_rwlock_unlock(&ds->cut_lock);
	return r;
}

int ds_truncate(struct ds *ds, uint64_t ino, uint64_t old_size, uint64_t new_size)
{
	if (new_size >= old_size)
		return 0; /* growing: the new range is a hole, zeros by SM-2 */
	return ds_cut_locked(ds, ino, new_size);
}

int ds_trim(struct ds *ds, uint64_t ino, uint64_t size)
{
	return ds_cut_locked(ds, ino, size);
}

int ds_remove(struct ds *ds, uint64_t ino)
{
	return ds_cut_locked(ds, ino, 0);
}

void ds_forget(struct ds *ds, uint64_t ino)
{
	for (unsigned i = 0; i < ds->ntargets; i++) {
		struct sm_target *sm = ds_tsm(&ds->targets[i]);

		if (sm && sm->ops->forget)
			sm->ops->forget(sm, ino);
	}
}

/* Per-chunk pieces of [off, off+len) with op (PUNCH / ALLOCATE). */
static int ds_range_op(struct ds *ds, enum ds_op kind, uint64_t ino, uint64_t off, uint64_t len)
{
	int r = ds_range_ok(ds, off, len);
	if (r < 0)
		return r;
	uint64_t done = 0;
	while (done < len) {
		uint64_t pos = off + done;
		uint32_t idx = (uint32_t)(pos / ds->chunk_size);
		uint64_t within = pos % ds->chunk_size;
		uint64_t n = MIN(len - done, ds->chunk_size - within);
		struct ds_rop op = {.op = kind, .ino = ino, .idx = idx, .off = within, .len = n};
		r = ds_chunk_op(ds, &op, kind == DS_OP_ALLOCATE && n >= ds->par_min);
		if (r < 0)
			return r;
		done += n;
	}
	return 0;
}

int ds_punch(struct ds *ds, uint64_t ino, uint64_t off, uint64_t len)
{
	return ds_range_op(ds, DS_OP_PUNCH, ino, off, len);
}

int ds_allocate(struct ds *ds, uint64_t ino, uint64_t off, uint64_t len)
{
	return ds_range_op(ds, DS_OP_ALLOCATE, ino, off, len);
}

int ds_seek(struct ds *ds, uint64_t ino, uint64_t size, uint64_t off, int whence, uint64_t *ret)
{
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	if (off >= size)
		return -ENXIO;
	uint64_t cs = ds->chunk_size;
	uint64_t last = (size - 1) / cs;
	if (last > UINT32_MAX)
		last = UINT32_MAX;
	for (uint64_t idx = off / cs; idx <= last; idx++) {
		uint64_t base = idx * cs;
		uint64_t within = off > base ? off - base : 0;
		struct ds_rop op = {.op = DS_OP_SEEK,
				    .ino = ino,
				    .idx = (uint32_t)idx,
				    .off = within,
				    .len = (uint64_t)whence};
		int r = ds_ask(ds, ds_chain_of(ds, ino, (uint32_t)idx), &op);
		if (r < 0)
			return r;
		if (op.ret == -ENXIO) {
			if (whence == SEEK_DATA)
				continue;
			op.res = within; /* no data here: a hole right at within */
		}
		/* a backend may answer a chunk's length for SEEK_HOLE past it: never go back */
		op.res = MAX(op.res, within);
		uint64_t pos = base + op.res;
		if (whence == SEEK_DATA) {
			if (pos >= size)
				return -ENXIO;
			*ret = pos;
			return 0;
		}
		if (op.res < cs) {
			*ret = MIN(pos, size);
			return 0;
		}
	}
	if (whence == SEEK_DATA)
		return -ENXIO;
	*ret = size; /* the implicit hole at the end of the file */
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* space, stats, chains */

int ds_statfs(struct ds *ds, uint64_t *ret_total, uint64_t *ret_free)
{
	/* Chunks rotate evenly over the chains, so target i receives the fraction
	 * m_i / nchains of every byte written, where m_i = number of chains it is in. The
	 * volume is full when the first target is: free = min_i(free_i * nchains / m_i), and
	 * likewise total. With T equal targets and R replicas per chain this is free_i * T / R. */
	unsigned member[DS_MAX_TARGETS] = {0};
	for (unsigned ci = 0; ci < ds->nchains; ci++) {
		struct ds_snap s;
		ds_snap(ds, ci, &s);
		for (uint32_t i = 0; i < s.n; i++)
			member[s.m[i] - ds->targets]++;
	}
	uint64_t total = UINT64_MAX, avail = UINT64_MAX;
	int last = -EIO;
	bool any = false;
	for (unsigned i = 0; i < ds->ntargets; i++) {
		struct ds_tgt *t = &ds->targets[i];
		if (!t->sm || !member[i])
			continue;
		struct sm_statfs st;
		int r = t->sm->ops->statfs(t->sm, &st);
		if (r < 0) {
			last = r;
			continue;
		}
		any = true;
		/* 128-bit to keep huge devices times many chains from overflowing */
		unsigned __int128 tt = (unsigned __int128)st.total_bytes * ds->nchains / member[i];
		unsigned __int128 ff = (unsigned __int128)st.free_bytes * ds->nchains / member[i];
		total = MIN(total, tt > UINT64_MAX ? UINT64_MAX : (uint64_t)tt);
		avail = MIN(avail, ff > UINT64_MAX ? UINT64_MAX : (uint64_t)ff);
	}
	if (!any)
		return last;
	*ret_total = total;
	*ret_free = MIN(avail, total);
	return 0;
}

void ds_stats(struct ds *ds, struct ds_stats *ret)
{
	ret->bytes_written = __atomic_load_n(&ds->bytes_written, __ATOMIC_RELAXED);
	ret->bytes_read = __atomic_load_n(&ds->bytes_read, __ATOMIC_RELAXED);
	ret->replica_failures = __atomic_load_n(&ds->replica_failures, __ATOMIC_RELAXED);
	ret->csum_errors_seen = __atomic_load_n(&ds->csum_errors_seen, __ATOMIC_RELAXED);
	ret->repairs_done = __atomic_load_n(&ds->repairs_done, __ATOMIC_RELAXED);
	ret->repair_failures = __atomic_load_n(&ds->repair_failures, __ATOMIC_RELAXED);
	ret->local_reads = __atomic_load_n(&ds->local_reads, __ATOMIC_RELAXED);
	ret->local_fallbacks = __atomic_load_n(&ds->local_fallbacks, __ATOMIC_RELAXED);
	ret->async_missed = __atomic_load_n(&ds->async_misses, __ATOMIC_RELAXED);
	ret->async_lag_bytes = 0; /* what the async queues hold */
	for (unsigned i = 0; i < ds->ntargets; i++) {
		struct ds_fifo *f = &ds->targets[i].async;
		pthread_mutex_lock(&f->lock);
		ret->async_lag_bytes += f->bytes;
		pthread_mutex_unlock(&f->lock);
	}
	pthread_mutex_lock(&ds->lag_lock);
	ret->repl_lag_bytes = ds->lag_bytes;
	pthread_mutex_unlock(&ds->lag_lock);
}

int ds_target_stats(struct ds *ds, struct ds_target_stat *ret, unsigned max)
{
	unsigned n = MIN(max, ds->ntargets);
	for (unsigned i = 0; i < n; i++) {
		struct ds_tgt *t = &ds->targets[i];
		struct sm_target *sm = ds_tsm(t);
		struct ds_target_stat *r = &ret[i];
		memset(r, 0, sizeof(*r));
		r->id = t->id;
		r->open = sm != NULL;
		if (!sm)
			continue;
		r->has_counters = sm->ops->counters && sm->ops->counters(sm, &r->counters) == 0;
		r->has_statfs = sm->ops->statfs(sm, &r->statfs) == 0;
	}
	return (int)n;
}

int ds_chains(struct ds *ds, struct ds_chain_cfg *ret, unsigned max)
{
	unsigned n = MIN(max, ds->nchains);
	for (unsigned ci = 0; ci < n; ci++) {
		struct ds_snap s;
		ds_snap(ds, ci, &s);
		memset(&ret[ci], 0, sizeof(ret[ci]));
		ret[ci].id = ds->chains[ci].id;
		ret[ci].epoch = s.epoch;
		ret[ci].nmembers = s.n;
		for (uint32_t i = 0; i < s.n; i++)
			ret[ci].members[i] = s.m[i]->id;
	}
	return (int)n;
}

/* ---------------------------------------------------------------------------------------- */
/* check / repair */

struct ds_cent {
	uint64_t ino;
	uint32_t idx;
	uint32_t tgt; /* index into ds->targets */
	uint64_t length;
};

struct ds_clist {
	struct ds_cent *v;
	size_t n, cap;
	uint32_t tgt;
};

static int ds_check_collect(void *ctx, const struct sm_chunk_info *ci)
{
	struct ds_clist *l = ctx;
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 1024;
		struct ds_cent *v = realloc(l->v, nc * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = nc;
	}
	l->v[l->n++] = (struct ds_cent){ci->ino, ci->idx, l->tgt, ci->length};
	return 0;
}

static int ds_cent_cmp(const void *a, const void *b)
{
	const struct ds_cent *x = a, *y = b;
	if (x->ino != y->ino)
		return x->ino < y->ino ? -1 : 1;
	if (x->idx != y->idx)
		return x->idx < y->idx ? -1 : 1;
	return x->tgt < y->tgt ? -1 : x->tgt > y->tgt;
}

/* Make dst's copy of (ino, idx) byte-identical to src's first len bytes, exact length, and
 * durable. Called with the chunk's stripe lock. *ret_src (may be NULL) says whether reading
 * src was what failed. */
static int ds_copy_chunk(struct ds_tgt *src, struct ds_tgt *dst, uint64_t ino, uint32_t idx,
			 uint64_t len, char *buf, bool *ret_src)
{
	struct sm_target *d = ds_tsm(dst);
	struct rp_copy c;
	int r = rp_copy_range(ds_tsm(src), d, ino, idx, len, buf, &c);
	if (ret_src)
		*ret_src = r < 0 && !c.dst_failed;
	return r < 0 ? r : d->ops->sync_ino(d, ino);
}

/* Does t's copy of [off, off+len) of (ino, idx) still fail its checksum? */
static bool ds_still_bad(struct ds_tgt *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len,
			 char *buf)
{
	struct sm_target *sm = ds_tsm(t);
	for (uint64_t o = 0; o < len; o += DS_CHECK_PIECE) {
		size_t n = (size_t)MIN((uint64_t)DS_CHECK_PIECE, len - o);
		if (sm->ops->read(sm, ino, idx, buf, n, off + o) == -EBADMSG)
			return true;
	}
	return false;
}

/* A repair that makes t's copy of (ino, idx) src's first len bytes, as ds_copy_chunk, for a
 * chunk of chain snapshot s. On a served chain (forward mode) the bytes are written to the
 * chain's primary, s->m[0], never to t itself: the primary's node applies them to every member
 * and syncing target under its chunk lock, as it does a client's write (DIST-3), so the repair
 * is ordered with that node's own resync and rebuild copies and reaches every copy; then every
 * open member syncs the inode (a node syncs only the target a SYNC names). */
static int ds_fix_copy(const struct ds_snap *s, struct ds_tgt *src, struct ds_tgt *t, uint64_t ino,
		       uint32_t idx, uint64_t len, char *buf, bool *ret_src)
{
	if (!t->ds->forward)
		return ds_copy_chunk(src, t, ino, idx, len, buf, ret_src);
	if (ret_src)
		*ret_src = false;
	if (!s->n || !ds_tsm(s->m[0]))
		return -EHOSTUNREACH; /* no primary to write through */
	int r = ds_copy_chunk(src, s->m[0], ino, idx, len, buf, ret_src);
	for (uint32_t k = 1; k < s->n && r == 0; k++) {
		struct sm_target *sm = ds_tsm(s->m[k]);
		if (sm)
			r = sm->ops->sync_ino(sm, ino);
	}
	return r;
}

/* Rewrite dst's copy of (ino, idx) from the first source whose whole copy reads back (DS-4):
 * prefer (a member of s, may be NULL) first, then the members of s in chain order, every copy
 * that holds the chunk before any that is absent (a copy absent while another holds bytes was
 * lost: copying the absence would lose the chunk here too); a source must be open, not dst and
 * not in skip[]. Called with the cut lock (shared) and the chunk's stripe lock. 0, or -errno
 * with the failing side named in why. */
static int ds_repair_copy(const struct ds_snap *s, struct ds_tgt *dst, struct ds_tgt *const *skip,
			  unsigned nskip, struct ds_tgt *prefer, uint64_t ino, uint32_t idx,
			  char *buf, struct ds_tgt **ret_src, char *why, size_t whylen)
{
	struct ds_tgt *src[DS_MAX_REPLICAS + 1];
	uint64_t len[DS_MAX_REPLICAS + 1];
	int lr[DS_MAX_REPLICAS + 1];
	uint32_t nsrc = 0;
	for (uint32_t k = 0; k <= s->n; k++) {
		struct ds_tgt *t = k == 0 ? prefer : s->m[k - 1];
		bool skipped = !t || (k > 0 && t == prefer) || t == dst || !ds_tsm(t);
		for (unsigned j = 0; j < nskip && !skipped; j++)
			skipped = skip[j] == t;
		if (skipped)
			continue;
		struct sm_target *ssm = ds_tsm(t);
		len[nsrc] = 0;
		lr[nsrc] = ssm->ops->chunk_length(ssm, ino, idx, &len[nsrc]);
		if (lr[nsrc] == -ENOENT)
			len[nsrc] = 0, lr[nsrc] = 0;
		src[nsrc++] = t;
	}
	int r = -EIO;
	snprintf(why, whylen, "no other replica to copy from");
	/* pass 0: the copies that hold bytes (and those whose length failed: reported), pass 1:
	 * the absent ones */
	for (uint32_t j = 0; j < 2 * nsrc; j++) {
		uint32_t i = j % nsrc;
		if ((lr[i] < 0 || len[i] > 0) != (j < nsrc))
			continue;
		r = lr[i];
		bool src_failed = r < 0;
		if (!src_failed)
			r = ds_fix_copy(s, src[i], dst, ino, idx, len[i], buf, &src_failed);
		if (r == 0) {
			*ret_src = src[i];
			return 0;
		}
		snprintf(why, whylen, "%s target %u (%s): %s", src_failed ? "reading" : "writing",
			 src_failed ? src[i]->id : dst->id, src_failed ? src[i]->url : dst->url,
			 strerror(-r));
		if (!src_failed)
			return r; /* dst cannot take it: another source will not help */
	}
	return r;
}

/* DS-4, after op (a read of ino/idx) was answered by op->t while the members bad[0..nbad)
 * failed their checksum: rewrite each bad copy from a member that verifies, under the cut lock
 * (no remove can delete the chunk meanwhile and see it recreated) and the chunk's stripe lock
 * (DS-3: no writer between the copy's read and its write). */
static void ds_heal(struct ds *ds, unsigned ci, const struct ds_rop *op, struct ds_tgt *const *bad,
		    unsigned nbad)
{
	char *buf = malloc(DS_CHECK_PIECE);
	if (!buf) {
		__atomic_add_fetch(&ds->repair_failures, nbad, __ATOMIC_RELAXED);
		log_err("ds: inode %llu chunk %u: out of memory: %u bad cop%s not repaired",
			(unsigned long long)op->ino, op->idx, nbad, nbad == 1 ? "y" : "ies");
		return;
	}
	pthread_rwlock_rdlock(&ds->cut_lock);
	pthread_mutex_t *sl = ds_stripe(ds, op->ino, op->idx);
	pthread_mutex_lock(sl);
	ds_barrier(ds); /* weak: what was queued for this chunk is on every member first */
	struct ds_snap s;
	ds_snap(ds, ci, &s);
	for (unsigned i = 0; i < nbad; i++) {
		struct ds_tgt *t = bad[i];
		if (!ds_snap_has(&s, t) ||
		    !ds_still_bad(t, op->ino, op->idx, op->off, op->len, buf))
			continue; /* left the chain, or rewritten meanwhile: nothing to repair */
		struct ds_tgt *src = NULL;
		char why[1200];
		int r = ds_repair_copy(&s, t, bad, nbad, NULL, op->ino, op->idx, buf, &src, why,
				       sizeof(why));
		if (r == 0) {
			__atomic_add_fetch(&ds->repairs_done, 1, __ATOMIC_RELAXED);
			log_warn(
			    "ds: repaired inode %llu chunk %u on target %u (%s) from target %u",
			    (unsigned long long)op->ino, op->idx, t->id, t->url, src->id);
		} else {
			__atomic_add_fetch(&ds->repair_failures, 1, __ATOMIC_RELAXED);
			log_err("ds: cannot repair inode %llu chunk %u on target %u (%s): %s",
				(unsigned long long)op->ino, op->idx, t->id, t->url, why);
		}
	}
	pthread_mutex_unlock(sl);
	pthread_rwlock_unlock(&ds->cut_lock);
	free(buf);
}

struct ds_checker {
	struct ds *ds;
	bool repair;
	bool scrub; /* in-chain copies only: no stray/orphan/EOF work (safe while mounted) */
	ds_keep_fn keep;
	ds_report_fn report;
	void *ctx;
	struct ds_check_result *res;
	char *bufs[DS_MAX_REPLICAS]; /* one piece per chain member, allocated on first use */
	char *copy_buf;
	unsigned stale_retries; /* left for this chunk (forward mode: the chain changed) */
};

static void ds_check_report(struct ds_checker *ck, const char *what, uint64_t ino, uint32_t idx,
			    struct ds_tgt *t, bool repaired)
{
	if (repaired)
		ck->res->repaired++;
	if (ck->report)
		ck->report(ck->ctx, what, ino, idx, t->id, repaired);
}

/* fsck only (nothing runs meanwhile, so the listing is the truth): copies outside the chain
 * are strays, copies of inodes keep() rejects are orphans, bytes past the inode's size are
 * beyond_eof. Returns how many bytes of the chunk the in-chain copies may hold. */
static uint64_t ds_check_placement(struct ds_checker *ck, const struct ds_cent *e, size_t n,
				   const struct ds_snap *s)
{
	struct ds *ds = ck->ds;
	uint64_t ino = e[0].ino, cs = ds->chunk_size, base = (uint64_t)e[0].idx * cs;
	uint32_t idx = e[0].idx;
	uint64_t size = UINT64_MAX;
	bool keep = ck->keep ? ck->keep(ck->ctx, ino, &size) : true;
	uint64_t limit = !keep || size <= base ? 0 : MIN(cs, size - base);
	for (size_t i = 0; i < n; i++) {
		struct ds_tgt *t = &ds->targets[e[i].tgt];
		struct sm_target *sm = ds_tsm(t);
		if (!ds_snap_has(s, t)) {
			if (e[i].length == 0 || ds_chain_keeps(ds, ds_chain_of(ds, ino, idx), t))
				continue; /* no bytes to read back wrongly, or kept for a resync */
			ck->res->strays++;
			bool fixed = ck->repair && sm->ops->truncate(sm, ino, idx, 0) == 0;
			ds_check_report(ck, "stray", ino, idx, t, fixed);
		} else if (e[i].length > limit) {
			ck->res->beyond_eof++;
			bool fixed = ck->repair && sm->ops->truncate(sm, ino, idx, limit) == 0;
			ds_check_report(ck, keep ? "beyond_eof" : "orphan", ino, idx, t, fixed);
		}
	}
	return limit;
}

enum ds_copy_state { DS_CP_OK, DS_CP_BAD /* -EBADMSG */, DS_CP_FAIL /* any other error */ };

/* One (ino, idx): its listed copies are e[0..n). Called with the cut lock (shared) and the
 * chunk's stripe lock. Reads every open in-chain copy over the longest one, piece by piece;
 * the store verifies its checksums on the way (DS-4) and the copies that read are compared
 * with each other. Then: a copy that failed its checksum is rewritten from the good copy, the
 * first whose whole copy verified (copies holding the chunk before absent ones, each group in
 * chain order: the primary when it holds the chunk and verifies, as without per-block
 * checksums there is no better witness), or failing that another that reads back; a verified
 * copy that differs from the good one is overwritten by it. */
static int ds_check_chunk(struct ds_checker *ck, const struct ds_cent *e, size_t n)
{
	struct ds *ds = ck->ds;
	struct ds_check_result *res = ck->res;
	uint64_t ino = e[0].ino;
	uint32_t idx = e[0].idx;
	struct ds_snap s;
	ds_snap(ds, ds_chain_of(ds, ino, idx), &s);
	uint64_t limit = ck->scrub ? ds->chunk_size : ds_check_placement(ck, e, n, &s);

	/* the in-chain copies as they are now, under the lock */
	uint64_t len[DS_MAX_REPLICAS] = {0}; /* 0 = absent */
	enum ds_copy_state st[DS_MAX_REPLICAS] = {0};
	bool open[DS_MAX_REPLICAS] = {0}, differs[DS_MAX_REPLICAS] = {0};
	uint64_t L = 0;
	bool stale = false; /* a served chain's node answered that our epoch is old */
	for (uint32_t k = 0; k < s.n; k++) {
		struct sm_target *sm = ds_tsm(s.m[k]);
		if (!sm) {
			res->unreached++;
			continue;
		}
		open[k] = true;
		int r = sm->ops->chunk_length(sm, ino, idx, &len[k]);
		stale |= r == -ESTALE;
		if (r == -ENOENT)
			len[k] = 0;
		else if (r < 0)
			st[k] = DS_CP_FAIL;
		len[k] = MIN(len[k], limit);
		L = MAX(L, len[k]);
		if (!ck->bufs[k] && !(ck->bufs[k] = malloc(DS_CHECK_PIECE)))
			return -ENOMEM;
	}
	/* The copies that hold the chunk come first (in chain order), then the absent ones: the
	 * reference (the first copy that reads) and the good copy (the first that verifies) are
	 * ones that hold bytes whenever any such copy verifies. A copy that is absent while
	 * another one holds bytes was lost (a delete removes every copy under the chunk's lock),
	 * and copying "absent" over the others would lose it on every replica — also when the
	 * first holder then fails its checksum. */
	uint32_t ord[DS_MAX_REPLICAS], no = 0;
	for (int absent = 0; absent < 2; absent++)
		for (uint32_t k = 0; k < s.n; k++)
			if ((len[k] == 0) == (absent == 1))
				ord[no++] = k;
	for (uint64_t off = 0; off < L; off += DS_CHECK_PIECE) {
		size_t piece = (size_t)MIN((uint64_t)DS_CHECK_PIECE, L - off);
		int ref = -1; /* the first copy that read this piece */
		for (uint32_t j = 0; j < no; j++) {
			uint32_t k = ord[j];
			if (!open[k] || st[k] != DS_CP_OK)
				continue;
			struct sm_target *sm = ds_tsm(s.m[k]);
			ssize_t r = sm->ops->read(sm, ino, idx, ck->bufs[k], piece, off);
			res->bytes_compared += piece;
			stale |= r == -ESTALE;
			if (r < 0) {
				st[k] = r == -EBADMSG ? DS_CP_BAD : DS_CP_FAIL;
				continue;
			}
			if (ref < 0)
				ref = (int)k;
			else if (!differs[k] && memcmp(ck->bufs[ref], ck->bufs[k], piece) != 0)
				differs[k] = true;
		}
	}

	if (stale && ds->chain_refresh && ck->stale_retries > 0)
		return -ESTALE; /* the caller re-reads the chain and checks the chunk again */

	int good = -1; /* the first member (in ord) whose whole copy verified */
	struct ds_tgt *bad[DS_MAX_REPLICAS];
	unsigned nbad = 0;
	for (uint32_t j = 0; j < no; j++) {
		uint32_t k = ord[j];
		if (!open[k])
			continue;
		if (st[k] == DS_CP_BAD)
			bad[nbad++] = s.m[k];
		else if (st[k] == DS_CP_OK && good < 0)
			good = (int)k;
	}
	res->csum_errors += nbad;
	__atomic_add_fetch(&ds->csum_errors_seen, nbad, __ATOMIC_RELAXED);
	if (good < 0) { /* every open copy failed (or none is open: nothing to say) */
		bool any = false;
		for (uint32_t k = 0; k < s.n; k++) {
			if (!open[k])
				continue;
			any = true;
			res->unreadable += st[k] == DS_CP_FAIL;
			ds_check_report(ck, st[k] == DS_CP_BAD ? "checksum" : "unreadable", ino,
					idx, s.m[k], false);
		}
		if (any) {
			res->unrecoverable++;
			__atomic_add_fetch(&ds->repair_failures, nbad, __ATOMIC_RELAXED);
			if (ck->report)
				ck->report(ck->ctx, "unrecoverable", ino, idx, s.m[0]->id, false);
		}
		return 0;
	}
	for (uint32_t k = 0; k < s.n; k++) {
		if (!open[k] || (int)k == good)
			continue;
		struct ds_tgt *t = s.m[k];
		if (st[k] == DS_CP_FAIL) {
			/* a target that cannot read is DS-2's business, not a repair's */
			res->unreadable++;
			ds_check_report(ck, "unreadable", ino, idx, t, false);
		} else if (st[k] == DS_CP_BAD) {
			bool fixed = false;
			if (ck->repair) {
				struct ds_tgt *src;
				char why[1200];
				fixed = ds_repair_copy(&s, t, bad, nbad, s.m[good], ino, idx,
						       ck->copy_buf, &src, why, sizeof(why)) == 0;
				__atomic_add_fetch(fixed ? &ds->repairs_done : &ds->repair_failures,
						   1, __ATOMIC_RELAXED);
				if (!fixed)
					log_debug("ds: cannot repair inode %llu chunk %u on target "
						  "%u: %s",
						  (unsigned long long)ino, idx, t->id, why);
			}
			ds_check_report(ck, "checksum", ino, idx, t, fixed);
		} else if (differs[k]) {
			bool missing = !len[k] || !len[good];
			struct ds_tgt *where = len[k] ? s.m[good] : t;
			if (missing)
				res->missing++;
			else
				res->mismatches++;
			bool fixed = ck->repair && ds_fix_copy(&s, s.m[good], t, ino, idx,
							       len[good], ck->copy_buf, NULL) == 0;
			ds_check_report(ck, missing ? "missing" : "mismatch", ino, idx,
					missing ? where : t, fixed);
		}
	}
	return 0;
}

/* Sleep ns, in slices, returning early (-ECANCELED) when *cancel becomes non-zero. */
static int ds_pace_sleep(int64_t ns, const int *cancel)
{
	while (ns > 0) {
		if (cancel && __atomic_load_n(cancel, __ATOMIC_ACQUIRE))
			return -ECANCELED;
		int64_t slice = MIN(ns, 50 * 1000000LL);
		struct timespec ts = {(time_t)(slice / 1000000000), (long)(slice % 1000000000)};
		nanosleep(&ts, NULL);
		ns -= slice;
	}
	return 0;
}

struct ds_check_run {
	bool repair, scrub;
	uint64_t rate;
	ds_keep_fn keep;
	ds_report_fn report;
	ds_check_progress_fn progress;
	void *ctx;
	const int *cancel;
};

/* A chunk whose copies answered -ESTALE is checked again at most this many times, each after
 * its chain was re-read (forward mode). */
#define DS_CHECK_STALE_RETRIES 3

/* ds_check and ds_scrub: list, sort by (ino, idx), then each chunk under the cut lock (shared)
 * and its stripe lock, paced outside the locks. */
static int ds_check_run(struct ds *ds, const struct ds_check_run *o, struct ds_check_result *ret)
{
	struct ds_check_result res = {0};
	struct ds_clist l = {0};
	struct ds_checker ck = {.ds = ds,
				.repair = o->repair,
				.scrub = o->scrub,
				.keep = o->keep,
				.report = o->report,
				.ctx = o->ctx,
				.res = &res};
	struct ds_tgt *list[DS_MAX_TARGETS];
	unsigned nlist = 0;
	int r = 0;

	ds_barrier(ds);
	if (o->scrub) {
		nlist = ds_chain_targets(ds, false, list); /* copies elsewhere are not read */
	} else {
		for (unsigned i = 0; i < ds->ntargets; i++)
			list[nlist++] = &ds->targets[i];
	}
	for (unsigned i = 0; i < nlist; i++) {
		struct sm_target *sm = ds_tsm(list[i]);
		if (!sm)
			continue;
		l.tgt = (uint32_t)(list[i] - ds->targets);
		r = sm->ops->list(sm, ds_check_collect, &l);
		if (r < 0)
			goto out;
	}
	qsort(l.v, l.n, sizeof(*l.v), ds_cent_cmp);
	ck.copy_buf = malloc(DS_CHECK_PIECE);
	if (!ck.copy_buf) {
		r = -ENOMEM;
		goto out;
	}
	/* totals for progress: every open in-chain copy read over the longest listed one */
	for (size_t a = 0, b; a < l.n; a = b) {
		struct ds_snap s;
		ds_snap(ds, ds_chain_of(ds, l.v[a].ino, l.v[a].idx), &s);
		uint64_t longest = 0, nopen = 0;
		for (b = a; b < l.n && l.v[b].ino == l.v[a].ino && l.v[b].idx == l.v[a].idx; b++)
			if (ds_snap_has(&s, &ds->targets[l.v[b].tgt]))
				longest = MAX(longest, l.v[b].length);
		for (uint32_t k = 0; k < s.n; k++)
			nopen += ds_tsm(s.m[k]) != NULL;
		res.chunks_total++;
		res.bytes_total += longest * nopen;
	}
	struct tbucket tb;
	tb_init(&tb, o->rate, 0, now_monotonic_ns());
	if (o->progress)
		o->progress(o->ctx, &res);
	for (size_t a = 0, b; a < l.n; a = b) {
		for (b = a + 1; b < l.n && l.v[b].ino == l.v[a].ino && l.v[b].idx == l.v[a].idx;
		     b++)
			;
		if (o->cancel && __atomic_load_n(o->cancel, __ATOMIC_ACQUIRE)) {
			r = -ECANCELED;
			goto out;
		}
		uint64_t before = res.bytes_compared;
		struct ds_check_result saved = res;
		ck.stale_retries = DS_CHECK_STALE_RETRIES;
		for (;;) {
			pthread_mutex_t *sl = ds_stripe(ds, l.v[a].ino, l.v[a].idx);
			pthread_rwlock_rdlock(&ds->cut_lock);
			pthread_mutex_lock(sl);
			ds_barrier(ds); /* weak: queued writes of this chunk are on every member */
			r = ds_check_chunk(&ck, &l.v[a], b - a);
			pthread_mutex_unlock(sl);
			pthread_rwlock_unlock(&ds->cut_lock);
			if (r != -ESTALE)
				break;
			/* forward mode: a chain changed under the check (the manager took a
			 * target out, a resync promoted one): re-read it and do the chunk again */
			ck.stale_retries--;
			uint64_t read = res.bytes_compared - saved.bytes_compared;
			res = saved;
			res.bytes_compared += read;
			/* best effort: a chain that cannot be re-read stays as it was and the
			 * next attempt reports what it finds */
			ds_refresh(ds, ds_chain_of(ds, l.v[a].ino, l.v[a].idx));
		}
		if (r < 0)
			goto out;
		res.chunks++;
		if (o->progress)
			o->progress(o->ctx, &res);
		/* pay for what was read, outside the locks; the last chunk owes no wait */
		int64_t wait = tb_take(&tb, res.bytes_compared - before, now_monotonic_ns());
		if (b < l.n && (r = ds_pace_sleep(wait, o->cancel)) < 0)
			goto out;
	}
out:
	for (unsigned k = 0; k < DS_MAX_REPLICAS; k++)
		free(ck.bufs[k]);
	free(ck.copy_buf);
	free(l.v);
	if (ret)
		*ret = res;
	if (r < 0)
		return r;
	uint64_t problems = res.mismatches + res.missing + res.strays + res.beyond_eof +
			    res.csum_errors + res.unreadable;
	if (o->repair)
		problems -= MIN(problems, res.repaired);
	return (int)MIN(problems, (uint64_t)INT32_MAX);
}

int ds_check(struct ds *ds, bool repair, ds_keep_fn keep, ds_report_fn report, void *ctx,
	     struct ds_check_result *ret)
{
	struct ds_check_opts o = {.repair = repair, .keep = keep, .report = report, .ctx = ctx};
	return ds_check_with(ds, &o, ret);
}

int ds_check_with(struct ds *ds, const struct ds_check_opts *opts, struct ds_check_result *ret)
{
	struct ds_check_run o = {.repair = opts->repair,
				 .keep = opts->keep,
				 .report = opts->report,
				 .progress = opts->progress,
				 .ctx = opts->ctx};
	return ds_check_run(ds, &o, ret);
}

int ds_scrub(struct ds *ds, const struct ds_scrub_opts *opts, struct ds_check_result *ret)
{
	struct ds_check_run o = {.repair = opts->repair,
				 .scrub = true,
				 .rate = opts->rate,
				 .report = opts->report,
				 .progress = opts->progress,
				 .ctx = opts->ctx,
				 .cancel = opts->cancel};
	return ds_check_run(ds, &o, ret);
}

/* ---------------------------------------------------------------------------------------- */
/* rebuild */

/* Open t if it is not open yet (configured down): identity checked as in ds_open (SM-1). */
static int ds_attach(struct ds *ds, struct ds_tgt *t, char *err, size_t errlen)
{
	int r = 0;
	pthread_mutex_lock(&ds->open_lock);
	if (!ds_tsm(t)) {
		char why[512];
		struct sm_target *sm = NULL;
		r = ds_open_sm(ds, t, &sm, why, sizeof(why));
		if (r < 0) {
			snprintf(err, errlen, "target %u (%s): %s", t->id, t->url, why);
		} else {
			t->owned = true;
			__atomic_store_n(&t->sm, sm, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&ds->open_lock);
	return r;
}

struct ds_rebuilder {
	struct ds *ds;
	unsigned ci;
	struct ds_tgt *src, *dst;
	char *buf;
	struct ds_rebuild_progress p;
	char *err;
	size_t errlen;
};

/* Make dst's copy of (ino, idx) what src holds now: same bytes, same length; a chunk src
 * lacks is deleted (truncate to 0). Called with the chunk's stripe lock. */
static int ds_rebuild_chunk(struct ds_rebuilder *rb, uint64_t ino, uint32_t idx, bool *ret_absent)
{
	struct rp_copy c;
	int r = rp_copy_chunk(ds_tsm(rb->src), ds_tsm(rb->dst), ino, idx, rb->buf, &c);
	struct ds_tgt *who = c.dst_failed ? rb->dst : rb->src;

	*ret_absent = c.absent;
	rb->p.bytes_written += c.bytes_written;
	if (r < 0)
		snprintf(rb->err, rb->errlen, "cannot %s chunk %llu.%u on target %u (%s): %s",
			 c.what, (unsigned long long)ino, idx, who->id, who->url, strerror(-r));
	return r;
}

/* ds_rebuild_chunk under the chunk's stripe lock (DS-3): no writer can slip in between. */
static int ds_rebuild_chunk_locked(struct ds_rebuilder *rb, uint64_t ino, uint32_t idx,
				   bool *ret_absent)
{
	pthread_mutex_t *sl = ds_stripe(rb->ds, ino, idx);
	pthread_mutex_lock(sl);
	int r = ds_rebuild_chunk(rb, ino, idx, ret_absent);
	pthread_mutex_unlock(sl);
	return r;
}

/* Chunks of list l that belong to chain ci, moved to the front; returns their count. */
static size_t ds_keep_chain(struct ds *ds, struct ds_clist *l, unsigned ci)
{
	size_t n = 0;
	for (size_t i = 0; i < l->n; i++)
		if (ds_chain_of(ds, l->v[i].ino, l->v[i].idx) == ci)
			l->v[n++] = l->v[i];
	l->n = n;
	qsort(l->v, l->n, sizeof(*l->v), ds_cent_cmp);
	return n;
}

static bool ds_clist_has(const struct ds_clist *l, uint64_t ino, uint32_t idx)
{
	struct ds_cent key = {.ino = ino, .idx = idx, .tgt = l->tgt};
	return bsearch(&key, l->v, l->n, sizeof(*l->v), ds_cent_cmp) != NULL;
}

int ds_rebuild(struct ds *ds, uint32_t chain_id, uint32_t target_id, ds_progress_fn progress,
	       void *ctx, struct ds_rebuild_progress *ret, char *err, size_t errlen)
{
	char dummy[8];
	if (!err || !errlen) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	err[0] = '\0';
	struct ds_rebuilder rb = {.ds = ds, .err = err, .errlen = errlen};
	struct ds_clist src = {0}, dst = {0};
	struct ds_snap s;
	int r;

	unsigned ci = ds->nchains;
	for (unsigned i = 0; i < ds->nchains; i++)
		if (ds->chains[i].id == chain_id)
			ci = i;
	for (unsigned i = 0; i < ds->ntargets; i++)
		if (ds->targets[i].id == target_id)
			rb.dst = &ds->targets[i];
	if (ci == ds->nchains || !rb.dst) {
		snprintf(err, errlen, "no %s %u", ci == ds->nchains ? "chain" : "target",
			 ci == ds->nchains ? chain_id : target_id);
		return -ENOENT;
	}
	rb.ci = ci;
	struct ds_chain *c = &ds->chains[ci];

	ds_barrier(ds); /* weak: every queued write is on the members before the copy starts */
	ds_snap(ds, ci, &s);
	if (ds_snap_has(&s, rb.dst)) {
		snprintf(err, errlen, "target %u is already a member of chain %u", target_id,
			 chain_id);
		return -EEXIST;
	}
	if (s.n >= DS_MAX_REPLICAS) {
		snprintf(err, errlen, "chain %u already has %d members", chain_id, DS_MAX_REPLICAS);
		return -E2BIG;
	}
	for (uint32_t i = 0; i < s.n && !rb.src; i++)
		if (ds_tsm(s.m[i]))
			rb.src = s.m[i];
	if (!rb.src) {
		snprintf(err, errlen, "chain %u has no member that is up to copy from", chain_id);
		return -EIO;
	}
	r = ds_attach(ds, rb.dst, err, errlen);
	if (r < 0)
		return r;

	/* What the primary has and what the target has, of this chain. */
	struct sm_target *ssm = ds_tsm(rb.src), *dsm = ds_tsm(rb.dst);
	r = ssm->ops->list(ssm, ds_check_collect, &src);
	if (r < 0) {
		snprintf(err, errlen, "cannot list the chunks of target %u (%s): %s", rb.src->id,
			 rb.src->url, strerror(-r));
		goto out;
	}
	r = dsm->ops->list(dsm, ds_check_collect, &dst);
	if (r < 0) {
		snprintf(err, errlen, "cannot list the chunks of target %u (%s): %s", rb.dst->id,
			 rb.dst->url, strerror(-r));
		goto out;
	}
	ds_keep_chain(ds, &src, ci);
	ds_keep_chain(ds, &dst, ci);
	rb.buf = malloc(RP_PIECE);
	if (!rb.buf) {
		snprintf(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	rb.p.chunks_total = src.n;
	for (size_t i = 0; i < src.n; i++)
		rb.p.bytes_total += src.v[i].length;
	if (progress)
		progress(ctx, &rb.p);

	/* (a) copy every chunk of the chain, each under its stripe lock (DS-3) */
	for (size_t i = 0; i < src.n; i++) {
		const struct ds_cent *e = &src.v[i];
		bool absent;
		r = ds_rebuild_chunk_locked(&rb, e->ino, e->idx, &absent);
		if (r < 0)
			goto out;
		rb.p.chunks_done++;
		rb.p.bytes_done += e->length;
		if (progress)
			progress(ctx, &rb.p);
	}
	/* (b) stale chunks: on the target but not on the primary */
	for (size_t i = 0; i < dst.n; i++) {
		const struct ds_cent *e = &dst.v[i];
		if (ds_clist_has(&src, e->ino, e->idx))
			continue;
		bool absent;
		r = ds_rebuild_chunk_locked(&rb, e->ino, e->idx, &absent);
		if (r < 0)
			goto out;
		if (absent)
			rb.p.stale_removed++;
	}
	/* (c) durable before the chain names it */
	r = dsm->ops->sync_all(dsm);
	if (r < 0) {
		snprintf(err, errlen, "cannot sync target %u (%s): %s", rb.dst->id, rb.dst->url,
			 strerror(-r));
		goto out;
	}
	if (progress)
		progress(ctx, &rb.p);

	/* (d) commit the chain with the target appended */
	pthread_mutex_lock(&c->change_lock);
	struct ds_snap now;
	ds_snap(ds, ci, &now);
	if (now.epoch != s.epoch || now.n != s.n || memcmp(now.m, s.m, sizeof(s.m)) != 0) {
		pthread_mutex_unlock(&c->change_lock);
		snprintf(err, errlen, "chain %u changed while target %u was rebuilt; run again",
			 chain_id, target_id);
		r = -ESTALE;
		goto out;
	}
	uint32_t ids[DS_MAX_REPLICAS];
	for (uint32_t i = 0; i < now.n; i++)
		ids[i] = now.m[i]->id;
	ids[now.n] = rb.dst->id;
	uint64_t ne = now.epoch + 1;
	if (ds->chain_changed) {
		r = ds->chain_changed(ds->cb_ctx, c->id, now.epoch, ids, now.n + 1, &ne);
		if (r < 0) {
			pthread_mutex_unlock(&c->change_lock);
			snprintf(err, errlen, "cannot commit chain %u with target %u: %s", chain_id,
				 target_id, strerror(-r));
			goto out;
		}
	}
	pthread_mutex_lock(&c->lock);
	c->m[c->n++] = rb.dst;
	c->epoch = ne;
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_unlock(&c->change_lock);
	pthread_mutex_lock(&ds->open_lock);
	rb.dst->up = true;
	pthread_mutex_unlock(&ds->open_lock);
	log_debug("ds: chain %u: target %u rebuilt (%llu chunks, %llu stale removed), epoch %llu",
		  c->id, rb.dst->id, (unsigned long long)rb.p.chunks_done,
		  (unsigned long long)rb.p.stale_removed, (unsigned long long)ne);
	r = 0;
out:
	free(rb.buf);
	free(src.v);
	free(dst.v);
	if (ret)
		*ret = rb.p;
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* membership changes without data: reorder, drop; delete what a dropped member kept */

static int ds_chain_index(const struct ds *ds, uint32_t chain_id)
{
	for (unsigned i = 0; i < ds->nchains; i++)
		if (ds->chains[i].id == chain_id)
			return (int)i;
	return -1;
}

int ds_chain_set(struct ds *ds, uint32_t chain_id, uint64_t expect_epoch,
		 const uint32_t *new_members, uint32_t n, char *err, size_t errlen)
{
	char dummy[8];
	if (!err || !errlen) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	err[0] = '\0';
	int ci = ds_chain_index(ds, chain_id);
	if (ci < 0) {
		snprintf(err, errlen, "no chain %u", chain_id);
		return -ENOENT;
	}
	if (!new_members || n < 1 || n > DS_MAX_REPLICAS) {
		snprintf(err, errlen, "chain %u: %u members asked for (1 to %d)", chain_id, n,
			 DS_MAX_REPLICAS);
		return -EINVAL;
	}
	struct ds_chain *c = &ds->chains[ci];
	pthread_mutex_lock(&c->change_lock);
	struct ds_snap now;
	ds_snap(ds, (unsigned)ci, &now);
	struct ds_tgt *m[DS_MAX_REPLICAS];
	int r = 0;
	if (expect_epoch && now.epoch != expect_epoch) {
		snprintf(err, errlen, "chain %u is at epoch %llu, not %llu; run again", chain_id,
			 (unsigned long long)now.epoch, (unsigned long long)expect_epoch);
		r = -ESTALE;
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		m[i] = NULL;
		for (uint32_t k = 0; k < now.n; k++)
			if (now.m[k]->id == new_members[i])
				m[i] = now.m[k];
		for (uint32_t j = 0; j < i && m[i]; j++)
			if (new_members[j] == new_members[i])
				m[i] = NULL;
		if (!m[i]) { /* no data moves here: only members that have the chain's data */
			snprintf(err, errlen,
				 "target %u is not a member of chain %u, or is named twice",
				 new_members[i], chain_id);
			r = -EINVAL;
			goto out;
		}
	}
	uint64_t ne = now.epoch + 1;
	if (ds->chain_changed) {
		r = ds->chain_changed(ds->cb_ctx, c->id, now.epoch, new_members, n, &ne);
		if (r < 0) {
			snprintf(err, errlen, "cannot commit chain %u: %s", chain_id, strerror(-r));
			goto out;
		}
	}
	pthread_mutex_lock(&c->lock);
	memcpy(c->m, m, n * sizeof(*m));
	c->n = n;
	c->epoch = ne;
	pthread_mutex_unlock(&c->lock);
	log_debug("ds: chain %u now has %u member(s), epoch %llu", c->id, n,
		  (unsigned long long)ne);
out:
	pthread_mutex_unlock(&c->change_lock);
	return r;
}

int ds_purge_strays(struct ds *ds, uint32_t target_id, uint64_t *ret_removed, char *err,
		    size_t errlen)
{
	char dummy[8];
	if (!err || !errlen) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	err[0] = '\0';
	struct ds_tgt *t = NULL;
	for (unsigned i = 0; i < ds->ntargets; i++)
		if (ds->targets[i].id == target_id)
			t = &ds->targets[i];
	if (ret_removed)
		*ret_removed = 0;
	if (!t) {
		snprintf(err, errlen, "no target %u", target_id);
		return -ENOENT;
	}
	int r = ds_attach(ds, t, err, errlen);
	if (r < 0)
		return r;
	ds_barrier(ds);
	struct sm_target *sm = ds_tsm(t);
	struct ds_clist l = {0};
	r = sm->ops->list(sm, ds_check_collect, &l);
	if (r < 0) {
		snprintf(err, errlen, "cannot list the chunks of target %u (%s): %s", t->id, t->url,
			 strerror(-r));
		goto out;
	}
	uint64_t removed = 0;
	for (size_t i = 0; i < l.n; i++) {
		const struct ds_cent *e = &l.v[i];
		pthread_mutex_t *sl = ds_stripe(ds, e->ino, e->idx);
		struct ds_snap s;
		pthread_mutex_lock(sl);
		unsigned ci = ds_chain_of(ds, e->ino, e->idx);
		ds_snap(ds, ci, &s);
		if (!ds_snap_has(&s, t) && !ds_chain_keeps(ds, ci, t)) {
			r = sm->ops->truncate(sm, e->ino, e->idx, 0);
			if (r == 0)
				removed++;
		}
		pthread_mutex_unlock(sl);
		if (r < 0) {
			snprintf(err, errlen, "cannot delete chunk %llu.%u on target %u (%s): %s",
				 (unsigned long long)e->ino, e->idx, t->id, t->url, strerror(-r));
			goto out;
		}
	}
	r = sm->ops->sync_all(sm);
	if (r < 0)
		snprintf(err, errlen, "cannot sync target %u (%s): %s", t->id, t->url,
			 strerror(-r));
	if (ret_removed)
		*ret_removed = removed;
out:
	free(l.v);
	return r;
}
