/* sm_block — the chunk store over any block address space (storemgr/dev.h): one on-device
 * format for image files, raw devices, iSCSI LUNs and NBD exports. docs/format.md describes the
 * format; FMT-n are its invariants, SM-n those of sm.h.
 *
 * THE SHAPE
 *   [superblock A][superblock B][log ...][checkpoint 0 ...][checkpoint 1 ...][data ...]
 *   The index — (ino, idx) -> length + per-4-KiB-block physical block and crc32c — lives in
 *   memory. On the device it is the current checkpoint (a serialized index) plus the log
 *   records written since. Data blocks are copy-on-write (FMT-3): a write puts new blocks in
 *   free space, then appends a record that maps them; the old blocks are freed, and reused
 *   only once that record is durable (FMT-5), so the device always holds intact data for every
 *   mapping a crash may fall back to.
 *
 * THE WRITE PATH (numbered as docs/format.md "write path")
 *   1. Partial blocks: lock their RMW stripes, read the current block (crc verified), merge.
 *   2. Allocate blocks (next-fit over a bitmap: contiguous runs for large writes, single
 *      blocks packed for small files), compute a crc32c per block, write them (one I/O per
 *      run, all submitted at once).
 *   3. Reserve log space (waits only when the log is full: a checkpoint frees it), take
 *      apply_rw shared, append the records to the open log block. Group commit: at most
 *      LOG_INFLIGHT log writes are in flight; records of every writer that arrive meanwhile go
 *      into the next block, which the first of them writes when there is room (FMT-6).
 *   4. When the log block holding the records is written (not flushed: SM-3), apply them to
 *      the in-memory index; blocks they unmap go to the pending list with the block's seq.
 *   sync (SM-4) waits for nothing but one device flush that started after the caller's writes
 *   returned; concurrent syncs share one flush. A flush releases pending blocks (FMT-5).
 *
 * CHECKPOINTS
 *   When the log is half full (a background thread) and at close: take apply_rw exclusive
 *   (no writer is between 3 and 4), copy the index into a buffer, release, write the buffer to
 *   the other checkpoint area, flush, switch the superblock (FMT-2, FMT-9), flush. Writers wait
 *   only for the copy in memory (counted in cp_freeze_ns).
 *
 * OPEN
 *   The newest valid superblock copy; the checkpoint it names; replay of the log from there
 *   (FMT-6, FMT-7); the allocator rebuilt from the index, checking that no block is mapped
 *   twice; a checkpoint when anything was replayed (FMT-8); a superblock with a new generation
 *   for this open's log blocks.
 *
 * LOCKS (outermost first)
 *   stripes[i] (RMW of one 4 KiB block; held across its I/O)
 *   -> cp_lock (one checkpoint at a time; protects sb)
 *   -> apply_rw (shared: a writer between log append and index apply; exclusive: checkpoint)
 *   -> log_lock (the log state; never held across I/O)
 *   -> shards[i].lock (the index of inodes hashing there)
 *   -> alloc_lock (bitmap, pending list)
 *   A reader takes only a shard lock, briefly, to copy the mappings it needs; its I/O runs
 *   without a lock. A block it reads may meanwhile be unmapped and (after a flush) reused: a
 *   crc mismatch is therefore checked against the current mapping, and the read retried when
 *   the mapping changed.
 */
#include "storemgr/sm_block_int.h"

#include <errno.h>
#include <endian.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/log.h"
#include "common/util.h"
#include "storemgr/sm_int.h"

#define SHARDS	     64
#define STRIPES	     256
#define PB_UNWRITTEN (1ull << 63) /* allocate(): reserved, reads as zeros (FMT-10) */
#define PB_MASK	     (PB_UNWRITTEN - 1)
#define REPLAY_BATCH 64 /* log blocks read at once at open */
#define READ_RETRIES 8	/* a read that keeps racing with remaps gives up with -EIO */
#define LOG_CAP	     (SM_BLOCK_BS - SM_BLOCK_LOG_HDR)
#define STACK_BLOCKS 64 /* reads of up to this many blocks keep their mappings on the stack */
#define LOG_INFLIGHT 2	/* log block writes at once */
#define LOG_WINDOW   (2 * LOG_INFLIGHT) /* sealed blocks beyond `written`, done or not */
#define LOG_BUFS     (LOG_INFLIGHT + 2)

/* One chunk: its length and a mapping per 4 KiB block up to the last one stored. */
struct blk_chunk {
	uint32_t idx;
	uint32_t length; /* bytes */
	uint32_t cap;	 /* slots in pb/crc; blocks at or past cap are holes */
	uint64_t *pb;	 /* 0 = hole; else device block number | PB_UNWRITTEN */
	uint32_t *crc;	 /* crc32c of the block's 4096 bytes (written blocks) */
};

/* One inode's chunks, sorted by idx (remove(ino, from) drops a suffix). */
struct blk_ino {
	uint64_t ino;
	uint32_t n, cap;
	struct blk_chunk **v;
	struct blk_ino *next; /* hash chain */
};

struct blk_shard {
	pthread_mutex_t lock;
	struct blk_ino **b; /* protected by lock */
	uint32_t nb, n;
};

/* A block freed by the record in log block seq; reusable once seq is durable (FMT-5). */
struct blk_pending {
	uint64_t pb;
	uint64_t seq;
};

struct sm_block {
	struct sm_target base; /* first: a struct sm_target * is a struct sm_block * */
	struct sm_dev *dev;
	struct sm_block_sb sb; /* generation, copy, cp_*, replay_pos: protected by cp_lock; the
				* identity, nonce and layout never change after open */
	struct sm_block_limits lim;
	uint32_t cblocks; /* blocks per chunk */

	struct blk_shard shards[SHARDS];
	uint64_t nchunks; /* __atomic */
	pthread_mutex_t stripes[STRIPES];

	pthread_mutex_t alloc_lock;
	uint64_t *bitmap; /* bit i: data block data_start + i is mapped, pending or being written */
	uint64_t nwords, nfree, cursor; /* protected by alloc_lock */
	struct blk_pending *pend;	/* protected by alloc_lock */
	size_t npend, pend_cap;

	pthread_mutex_t log_lock;
	pthread_cond_t log_cond; /* log state changed: a write or flush ended, space freed */
	pthread_cond_t cp_cond;	 /* wakes the checkpoint thread */
	uint8_t *lbuf[LOG_BUFS]; /* the open log block, the ones in flight, spares */
	bool lbusy[LOG_BUFS];	 /* in flight */
	bool ldone[LOG_WINDOW];	 /* block seq % LOG_WINDOW is written, above `written` */
	unsigned open_buf, inflight;
	uint32_t used, count; /* bytes and records in the open block */
	uint64_t next_seq;    /* the open block's sequence */
	uint64_t written;     /* every log block <= written is on the device (DEV-3) */
	uint64_t durable;     /* ... and flushed (DEV-4) */
	uint64_t cp_seq;      /* the superblock's checkpoint holds records <= cp_seq */
	uint64_t reserved;    /* log blocks promised to writers inside apply_rw */
	uint64_t gen;	      /* this open's generation, in every log block it writes */
	bool flushing, cp_want, stopping;
	int broken; /* a log write or flush failed: the target answers -EIO to every change */

	pthread_rwlock_t apply_rw;
	pthread_mutex_t cp_lock;
	pthread_t cp_thread;
	bool cp_thread_on;
	bool replaying; /* open: blocks unmapped by replayed records are not pending */

	struct sm_block_stats st; /* __atomic counters */
};

static struct sm_block *blk_of(struct sm_target *t)
{
	return (struct sm_block *)t;
}

#define STAT_ADD(b, field, v) __atomic_add_fetch(&(b)->st.field, (v), __ATOMIC_RELAXED)

static uint32_t blocks_of(uint64_t bytes)
{
	return (uint32_t)((bytes + SM_BLOCK_BS - 1) / SM_BLOCK_BS);
}

/* ---------------------------------------------------------------------------------------- */
/* allocator: a bitmap over the data region, next-fit (FMT-5, FMT-12) */

static bool bm_test(const uint64_t *bm, uint64_t i)
{
	return bm[i >> 6] >> (i & 63) & 1;
}

static void bm_set(uint64_t *bm, uint64_t i)
{
	bm[i >> 6] |= 1ull << (i & 63);
}

static void bm_clr(uint64_t *bm, uint64_t i)
{
	bm[i >> 6] &= ~(1ull << (i & 63));
}

/* First clear bit in [from, to), or UINT64_MAX. */
static uint64_t bm_find_clear(const uint64_t *bm, uint64_t from, uint64_t to)
{
	uint64_t i = from;
	while (i < to) {
		uint64_t w = i >> 6;
		uint64_t word = ~bm[w] & (~0ull << (i & 63));
		if (word) {
			uint64_t j = (w << 6) + (uint64_t)__builtin_ctzll(word);
			return j < to ? j : UINT64_MAX;
		}
		i = (w + 1) << 6;
	}
	return UINT64_MAX;
}

/* Allocate want blocks as runs (at most want of them). 0, or -ENOSPC with nothing taken. */
static int blk_alloc(struct sm_block *b, uint32_t want, uint64_t *ret_pb, uint32_t *ret_n,
		     uint32_t *ret_runs)
{
	uint64_t d = b->sb.data_blocks;
	pthread_mutex_lock(&b->alloc_lock);
	if (b->nfree < want) {
		pthread_mutex_unlock(&b->alloc_lock);
		return -ENOSPC;
	}
	uint32_t got = 0, runs = 0;
	while (got < want) {
		uint64_t j = bm_find_clear(b->bitmap, b->cursor, d);
		if (j == UINT64_MAX)
			j = bm_find_clear(b->bitmap, 0, b->cursor);
		/* nfree >= want - got > 0: there is one */
		uint32_t n = 0;
		while (got + n < want && j + n < d && !bm_test(b->bitmap, j + n)) {
			bm_set(b->bitmap, j + n);
			n++;
		}
		ret_pb[runs] = b->sb.data_start + j;
		ret_n[runs] = n;
		runs++;
		got += n;
		b->cursor = j + n < d ? j + n : 0;
	}
	b->nfree -= want;
	pthread_mutex_unlock(&b->alloc_lock);
	*ret_runs = runs;
	return 0;
}

/* Give back blocks that no record ever mapped (a failed data write). */
static void blk_unalloc(struct sm_block *b, const uint64_t *pb, const uint32_t *n, uint32_t runs)
{
	pthread_mutex_lock(&b->alloc_lock);
	for (uint32_t r = 0; r < runs; r++)
		for (uint32_t i = 0; i < n[r]; i++)
			bm_clr(b->bitmap, pb[r] + i - b->sb.data_start);
	for (uint32_t r = 0; r < runs; r++)
		b->nfree += n[r];
	pthread_mutex_unlock(&b->alloc_lock);
}

/* A block unmapped by a record in log block seq (FMT-5: not free before seq is durable). */
static void blk_release(struct sm_block *b, uint64_t pb, uint64_t seq)
{
	if (b->replaying || !pb)
		return; /* open rebuilds the allocator from the index after replay */
	pthread_mutex_lock(&b->alloc_lock);
	if (b->npend == b->pend_cap) {
		size_t cap = b->pend_cap ? b->pend_cap * 2 : 1024;
		struct blk_pending *p = realloc(b->pend, cap * sizeof(*p));
		if (!p) {
			/* cannot remember it: the block stays in use until the next open */
			pthread_mutex_unlock(&b->alloc_lock);
			return;
		}
		b->pend = p;
		b->pend_cap = cap;
	}
	b->pend[b->npend++] = (struct blk_pending){pb & PB_MASK, seq};
	pthread_mutex_unlock(&b->alloc_lock);
}

/* Every pending block whose record is durable (seq <= durable) becomes free. */
static void blk_pending_release(struct sm_block *b, uint64_t durable)
{
	pthread_mutex_lock(&b->alloc_lock);
	size_t k = 0;
	for (size_t i = 0; i < b->npend; i++) {
		if (b->pend[i].seq <= durable) {
			bm_clr(b->bitmap, b->pend[i].pb - b->sb.data_start);
			b->nfree++;
		} else {
			b->pend[k++] = b->pend[i];
		}
	}
	b->npend = k;
	pthread_mutex_unlock(&b->alloc_lock);
}

/* ---------------------------------------------------------------------------------------- */
/* the index */

static struct blk_shard *shard_of(struct sm_block *b, uint64_t ino)
{
	return &b->shards[hash_mix64(ino) % SHARDS];
}

static uint32_t ino_bucket(const struct blk_shard *s, uint64_t ino)
{
	return (uint32_t)(hash_mix64(ino) >> 32) & (s->nb - 1);
}

static int shard_grow(struct blk_shard *s)
{
	uint32_t nb = s->nb ? s->nb * 2 : 16;
	struct blk_ino **nbk = calloc(nb, sizeof(*nbk));
	if (!nbk)
		return -ENOMEM;
	struct blk_shard ns = {.b = nbk, .nb = nb};
	for (uint32_t i = 0; i < s->nb; i++) {
		struct blk_ino *e = s->b[i];
		while (e) {
			struct blk_ino *next = e->next;
			uint32_t h = ino_bucket(&ns, e->ino);
			e->next = nbk[h];
			nbk[h] = e;
			e = next;
		}
	}
	free(s->b);
	s->b = nbk;
	s->nb = nb;
	return 0;
}

/* Shard lock held. NULL: missing (create false) or out of memory. */
static struct blk_ino *ino_get(struct blk_shard *s, uint64_t ino, bool create)
{
	if (s->nb) {
		for (struct blk_ino *e = s->b[ino_bucket(s, ino)]; e; e = e->next)
			if (e->ino == ino)
				return e;
	}
	if (!create)
		return NULL;
	if (s->n >= s->nb && shard_grow(s) < 0)
		return NULL;
	struct blk_ino *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->ino = ino;
	uint32_t h = ino_bucket(s, ino);
	e->next = s->b[h];
	s->b[h] = e;
	s->n++;
	return e;
}

static void ino_unlink(struct blk_shard *s, struct blk_ino *e)
{
	struct blk_ino **pp = &s->b[ino_bucket(s, e->ino)];
	while (*pp != e)
		pp = &(*pp)->next;
	*pp = e->next;
	s->n--;
	free(e->v);
	free(e);
}

/* Position of idx in e->v, or where it would go. */
static uint32_t chunk_pos(const struct blk_ino *e, uint32_t idx)
{
	uint32_t lo = 0, hi = e->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (e->v[mid]->idx < idx)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct blk_chunk *chunk_find(const struct blk_ino *e, uint32_t idx)
{
	if (!e)
		return NULL;
	uint32_t p = chunk_pos(e, idx);
	return p < e->n && e->v[p]->idx == idx ? e->v[p] : NULL;
}

/* Shard lock held: the chunk, created empty when missing. NULL on ENOMEM. */
static struct blk_chunk *chunk_get(struct sm_block *b, struct blk_shard *s, uint64_t ino,
				   uint32_t idx)
{
	struct blk_ino *e = ino_get(s, ino, true);
	if (!e)
		return NULL;
	uint32_t p = chunk_pos(e, idx);
	if (p < e->n && e->v[p]->idx == idx)
		return e->v[p];
	if (e->n == e->cap) {
		uint32_t cap = e->cap ? e->cap * 2 : 4;
		struct blk_chunk **v = realloc(e->v, cap * sizeof(*v));
		if (!v)
			return NULL;
		e->v = v;
		e->cap = cap;
	}
	struct blk_chunk *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->idx = idx;
	memmove(e->v + p + 1, e->v + p, (e->n - p) * sizeof(*e->v));
	e->v[p] = c;
	e->n++;
	__atomic_add_fetch(&b->nchunks, 1, __ATOMIC_RELAXED);
	return c;
}

/* Room for nblk slots (memory grows with what is stored, not with chunk_size). */
static int chunk_reserve(struct blk_chunk *c, uint32_t nblk)
{
	if (nblk <= c->cap)
		return 0;
	uint32_t cap = MAX(nblk, c->cap + c->cap / 2);
	uint64_t *pb = realloc(c->pb, cap * sizeof(*pb));
	if (!pb)
		return -ENOMEM;
	c->pb = pb;
	uint32_t *crc = realloc(c->crc, cap * sizeof(*crc));
	if (!crc)
		return -ENOMEM;
	c->crc = crc;
	memset(c->pb + c->cap, 0, (cap - c->cap) * sizeof(*pb));
	memset(c->crc + c->cap, 0, (cap - c->cap) * sizeof(*crc));
	c->cap = cap;
	return 0;
}

/* Unmap every block from nblk on (pending with seq), and give back the memory. */
static void chunk_cut(struct sm_block *b, struct blk_chunk *c, uint32_t nblk, uint64_t seq)
{
	for (uint32_t i = nblk; i < c->cap; i++)
		blk_release(b, c->pb[i], seq);
	if (nblk >= c->cap)
		return;
	if (nblk == 0) {
		free(c->pb);
		free(c->crc);
		c->pb = NULL;
		c->crc = NULL;
		c->cap = 0;
		return;
	}
	uint64_t *pb = realloc(c->pb, nblk * sizeof(*pb));
	uint32_t *crc = realloc(c->crc, nblk * sizeof(*crc));
	if (pb)
		c->pb = pb;
	if (crc)
		c->crc = crc;
	c->cap = nblk;
}

static void chunk_free(struct blk_chunk *c)
{
	free(c->pb);
	free(c->crc);
	free(c);
}

/* Delete e->v[from..to) (shard lock held); e itself when it is left empty. */
static void ino_drop(struct sm_block *b, struct blk_shard *s, struct blk_ino *e, uint32_t from,
		     uint32_t to, uint64_t seq)
{
	for (uint32_t i = from; i < to; i++) {
		chunk_cut(b, e->v[i], 0, seq);
		chunk_free(e->v[i]);
	}
	memmove(e->v + from, e->v + to, (e->n - to) * sizeof(*e->v));
	e->n -= to - from;
	__atomic_sub_fetch(&b->nchunks, to - from, __ATOMIC_RELAXED);
	if (e->n == 0)
		ino_unlink(s, e);
}

static uint32_t le32_at(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}

/* Apply one record of log block seq to the index. -ENOMEM is the only failure. */
static int blk_apply(struct sm_block *b, const struct sm_block_rec *r, uint64_t seq)
{
	struct blk_shard *s = shard_of(b, r->ino);
	int ret = 0;
	pthread_mutex_lock(&s->lock);
	struct blk_ino *e = ino_get(s, r->ino, false);
	struct blk_chunk *c = chunk_find(e, r->idx);
	switch (r->type) {
	case SM_BLOCK_REC_MAP: {
		c = c ? c : chunk_get(b, s, r->ino, r->idx);
		if (!c || chunk_reserve(c, r->first + r->n) < 0) {
			ret = -ENOMEM;
			break;
		}
		bool unwritten = r->flags & SM_BLOCK_MAP_UNWRITTEN;
		for (uint32_t i = 0; i < r->n; i++) {
			uint64_t old = c->pb[r->first + i];
			c->pb[r->first + i] = (r->pb + i) | (unwritten ? PB_UNWRITTEN : 0);
			c->crc[r->first + i] = unwritten ? 0 : le32_at(r->crcs + 4 * (size_t)i);
			blk_release(b, old, seq);
		}
		c->length = MAX(c->length, r->len);
		break;
	}
	case SM_BLOCK_REC_UNMAP:
		for (uint32_t i = r->first; c && i < c->cap && i < r->first + r->n; i++) {
			blk_release(b, c->pb[i], seq);
			c->pb[i] = 0;
			c->crc[i] = 0;
		}
		break;
	case SM_BLOCK_REC_SETLEN:
		if (r->len == 0) {
			if (c) {
				uint32_t p = chunk_pos(e, r->idx);
				ino_drop(b, s, e, p, p + 1, seq);
			}
			break;
		}
		c = c ? c : chunk_get(b, s, r->ino, r->idx);
		if (!c) {
			ret = -ENOMEM;
			break;
		}
		chunk_cut(b, c, blocks_of(r->len), seq);
		c->length = r->len;
		break;
	case SM_BLOCK_REC_REMOVE:
		if (e) {
			uint32_t p = chunk_pos(e, r->idx);
			if (p < e->n)
				ino_drop(b, s, e, p, e->n, seq);
		}
		break;
	}
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* the log (FMT-6) */

/* May the open block be written now? It holds records, fewer than LOG_INFLIGHT log writes are
 * in flight, and the blocks sealed beyond `written` stay within LOG_WINDOW. */
static bool blk_log_can_seal(const struct sm_block *b)
{
	return b->count > 0 && b->inflight < LOG_INFLIGHT && b->next_seq - b->written < LOG_WINDOW;
}

/* log_lock held, blk_log_can_seal(): seal the open block, write it, wait for it. Several may
 * be in flight and finish in any order: `written` moves over the blocks that are all done, so
 * it never passes a block that could be missing after a crash (replay stops at the first). */
static int blk_log_write_locked(struct sm_block *b)
{
	unsigned bi = b->open_buf;
	uint8_t *buf = b->lbuf[bi];
	struct sm_block_log_hdr h = {
	    .nonce = b->sb.nonce,
	    .seq = b->next_seq,
	    .generation = b->gen,
	    .durable = b->durable,
	    .count = b->count,
	    .used = b->used,
	};
	sm_block_log_seal(buf, &h);
	b->lbusy[bi] = true;
	b->inflight++;
	b->used = b->count = 0;
	b->next_seq++;
	for (unsigned i = 0; i < LOG_BUFS; i++) /* at most LOG_INFLIGHT busy: one is free */
		if (!b->lbusy[i]) {
			b->open_buf = i;
			break;
		}
	uint64_t pos = b->sb.log_start + h.seq % b->sb.log_blocks;
	pthread_mutex_unlock(&b->log_lock);
	int r = sm_dev_pwrite(b->dev, buf, SM_BLOCK_BS, pos * SM_BLOCK_BS, 0);
	pthread_mutex_lock(&b->log_lock);
	b->lbusy[bi] = false;
	b->inflight--;
	if (r < 0) {
		if (!b->broken)
			b->broken = r;
		log_debug("target %s: log write failed: %s", b->base.url, strerror(-r));
	} else {
		STAT_ADD(b, log_blocks, 1);
		STAT_ADD(b, log_records, h.count);
		b->ldone[h.seq % LOG_WINDOW] = true;
		while (b->ldone[(b->written + 1) % LOG_WINDOW]) {
			b->ldone[(b->written + 1) % LOG_WINDOW] = false;
			b->written++;
		}
		if (b->written - b->cp_seq >= b->sb.log_blocks / 2)
			pthread_cond_signal(&b->cp_cond);
	}
	pthread_cond_broadcast(&b->log_cond);
	return r;
}

/* Log blocks that n records of total bytes can spread over (see blk_log_reserve). */
static uint64_t blk_log_need(uint32_t total)
{
	return total / LOG_CAP + 2;
}

/* Promise need log blocks to a writer about to take apply_rw: wait while the log cannot hold
 * them without overwriting blocks the checkpoint does not cover yet. */
static int blk_log_reserve(struct sm_block *b, uint64_t need)
{
	pthread_mutex_lock(&b->log_lock);
	bool counted = false;
	while (!b->broken &&
	       (b->next_seq - 1 - b->cp_seq) + b->reserved + need > b->sb.log_blocks) {
		b->cp_want = true;
		pthread_cond_signal(&b->cp_cond);
		if (!counted)
			STAT_ADD(b, log_full_waits, 1);
		counted = true;
		pthread_cond_wait(&b->log_cond, &b->log_lock);
	}
	int r = b->broken ? -EIO : 0;
	if (!r)
		b->reserved += need;
	pthread_mutex_unlock(&b->log_lock);
	return r;
}

static void blk_log_unreserve(struct sm_block *b, uint64_t need)
{
	pthread_mutex_lock(&b->log_lock);
	b->reserved -= need;
	pthread_cond_broadcast(&b->log_cond);
	pthread_mutex_unlock(&b->log_lock);
}

/* Append recs to the log and return once every log block holding them is written (SM-3).
 * atomic: all in one log block (they fit: the caller checked). *ret_seq: the last block. */
static int blk_log_commit(struct sm_block *b, const struct sm_block_rec *recs, unsigned n,
			  bool atomic, uint32_t total, uint64_t *ret_seq)
{
	uint64_t seq = 0;
	int r = 0;
	pthread_mutex_lock(&b->log_lock);
	while (atomic && b->used + total > LOG_CAP && !b->broken) {
		if (blk_log_can_seal(b))
			blk_log_write_locked(b);
		else
			pthread_cond_wait(&b->log_cond, &b->log_lock);
	}
	for (unsigned i = 0; i < n && !b->broken; i++) {
		while (!b->broken && !sm_block_rec_put(b->lbuf[b->open_buf], &b->used, &recs[i])) {
			if (blk_log_can_seal(b))
				blk_log_write_locked(b);
			else
				pthread_cond_wait(&b->log_cond, &b->log_lock);
		}
		b->count++;
		seq = b->next_seq;
	}
	/* group commit: the block is written by the first of its writers that finds room to */
	while (!b->broken && b->written < seq) {
		if (b->next_seq == seq && blk_log_can_seal(b))
			blk_log_write_locked(b);
		else
			pthread_cond_wait(&b->log_cond, &b->log_lock);
	}
	if (b->broken)
		r = -EIO;
	pthread_mutex_unlock(&b->log_lock);
	*ret_seq = seq;
	return r;
}

/* Log recs, then apply them: steps 3 and 4 of the write path. */
static int blk_commit(struct sm_block *b, const struct sm_block_rec *recs, unsigned n)
{
	if (n == 0)
		return 0;
	uint32_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += sm_block_rec_size(&recs[i]);
	uint64_t need = blk_log_need(total);
	int r = blk_log_reserve(b, need);
	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&b->apply_rw);
	uint64_t seq;
	r = blk_log_commit(b, recs, n, total <= LOG_CAP, total, &seq);
	for (unsigned i = 0; i < n && !r; i++) {
		r = blk_apply(b, &recs[i], seq);
		if (r < 0) {
			/* the log has it, the index cannot: stop changing this target */
			pthread_mutex_lock(&b->log_lock);
			b->broken = -EIO;
			pthread_mutex_unlock(&b->log_lock);
		}
	}
	pthread_rwlock_unlock(&b->apply_rw);
	blk_log_unreserve(b, need);
	return r;
}

/* SM-4: one device flush that started after every log block written so far; concurrent
 * callers share it. Then the blocks their records freed are free (FMT-5). */
static int blk_flush(struct sm_block *b)
{
	int r = 0;
	pthread_mutex_lock(&b->log_lock);
	uint64_t target = b->written;
	while (b->durable < target) {
		if (b->broken) {
			r = -EIO;
			break;
		}
		if (b->flushing) {
			pthread_cond_wait(&b->log_cond, &b->log_lock);
			continue;
		}
		b->flushing = true;
		uint64_t start = b->written;
		pthread_mutex_unlock(&b->log_lock);
		r = sm_dev_flush(b->dev);
		pthread_mutex_lock(&b->log_lock);
		b->flushing = false;
		STAT_ADD(b, flushes, 1);
		if (r < 0) {
			/* what the cache held may be gone: nothing written since can be trusted */
			if (!b->broken)
				b->broken = r;
			pthread_cond_broadcast(&b->log_cond);
			break;
		}
		if (start > b->durable)
			b->durable = start;
		pthread_cond_broadcast(&b->log_cond);
	}
	uint64_t durable = b->durable;
	pthread_mutex_unlock(&b->log_lock);
	if (!r)
		blk_pending_release(b, durable);
	return r;
}

/* Many frees waiting for a flush: flush now so that the space comes back. */
static void blk_maybe_recycle(struct sm_block *b)
{
	pthread_mutex_lock(&b->alloc_lock);
	bool many = b->npend > MAX(1024, b->sb.data_blocks / 16);
	pthread_mutex_unlock(&b->alloc_lock);
	if (many)
		blk_flush(b);
}

/* ---------------------------------------------------------------------------------------- */
/* superblock and checkpoints (FMT-2, FMT-9) */

/* Write sb into the copy its generation names, then flush. */
static int blk_sb_write(struct sm_dev *dev, struct sm_block_sb *sb)
{
	uint8_t *buf = sm_dev_alloc(SM_BLOCK_BS);
	if (!buf)
		return -ENOMEM;
	sb->copy = (uint32_t)(sb->generation % 2);
	sm_block_sb_render(sb, buf);
	int r = sm_dev_pwrite(dev, buf, SM_BLOCK_BS, (uint64_t)sb->copy * SM_BLOCK_BS, 0);
	if (!r)
		r = sm_dev_flush(dev);
	free(buf);
	return r;
}

/* Runs of a chunk: consecutive slots mapping consecutive blocks with the same flag. */
static uint32_t chunk_run_end(const struct blk_chunk *c, uint32_t i, uint32_t nblk)
{
	uint32_t j = i + 1;
	while (j < nblk && c->pb[j] && c->pb[j] == c->pb[j - 1] + 1 &&
	       (c->pb[j] & PB_UNWRITTEN) == (c->pb[i] & PB_UNWRITTEN))
		j++;
	return j;
}

/* Serialize the index (apply_rw held exclusive). *ret: SM_BLOCK_BS-aligned, padded. */
static int blk_cp_render(struct sm_block *b, uint64_t seq, uint8_t **ret, size_t *ret_len)
{
	size_t len = SM_BLOCK_CP_HDR;
	uint64_t nchunks = 0;
	for (unsigned si = 0; si < SHARDS; si++) {
		struct blk_shard *s = &b->shards[si];
		pthread_mutex_lock(&s->lock);
		for (uint32_t h = 0; h < s->nb; h++)
			for (struct blk_ino *e = s->b[h]; e; e = e->next)
				for (uint32_t k = 0; k < e->n; k++) {
					const struct blk_chunk *c = e->v[k];
					uint32_t nblk = MIN(c->cap, blocks_of(c->length));
					len += SM_BLOCK_CP_ENTRY;
					nchunks++;
					for (uint32_t i = 0; i < nblk;) {
						if (!c->pb[i]) {
							i++;
							continue;
						}
						uint32_t j = chunk_run_end(c, i, nblk);
						len += SM_BLOCK_CP_RUN;
						if (!(c->pb[i] & PB_UNWRITTEN))
							len += 4 * (size_t)(j - i);
						i = j;
					}
				}
		pthread_mutex_unlock(&s->lock);
	}
	size_t alloc = (len + SM_BLOCK_BS - 1) / SM_BLOCK_BS * SM_BLOCK_BS;
	uint8_t *buf = sm_dev_alloc(alloc);
	if (!buf)
		return -ENOMEM;
	memset(buf + len, 0, alloc - len);
	uint8_t *p = buf + SM_BLOCK_CP_HDR;
	for (unsigned si = 0; si < SHARDS; si++) {
		struct blk_shard *s = &b->shards[si];
		pthread_mutex_lock(&s->lock);
		for (uint32_t h = 0; h < s->nb; h++)
			for (struct blk_ino *e = s->b[h]; e; e = e->next)
				for (uint32_t k = 0; k < e->n; k++) {
					const struct blk_chunk *c = e->v[k];
					uint32_t nblk = MIN(c->cap, blocks_of(c->length));
					uint32_t nruns = 0;
					for (uint32_t i = 0; i < nblk;) {
						if (!c->pb[i]) {
							i++;
							continue;
						}
						i = chunk_run_end(c, i, nblk);
						nruns++;
					}
					p += sm_block_cp_put_entry(p, e->ino, c->idx, c->length,
								   nruns);
					for (uint32_t i = 0; i < nblk;) {
						if (!c->pb[i]) {
							i++;
							continue;
						}
						uint32_t j = chunk_run_end(c, i, nblk);
						uint32_t fl = c->pb[i] & PB_UNWRITTEN
								  ? SM_BLOCK_MAP_UNWRITTEN
								  : 0;
						p += sm_block_cp_put_run(p, i, j - i, fl,
									 c->pb[i] & PB_MASK,
									 c->crc + i);
						i = j;
					}
				}
		pthread_mutex_unlock(&s->lock);
	}
	struct sm_block_cp_hdr h = {
	    .nonce = b->sb.nonce, .seq = seq, .nchunks = nchunks, .body = len - SM_BLOCK_CP_HDR};
	sm_block_cp_seal(buf, &h);
	*ret = buf;
	*ret_len = len;
	return 0;
}

/* FMT-9: serialize, write to the other area, flush, switch the superblock, flush. */
static int blk_checkpoint(struct sm_block *b)
{
	pthread_mutex_lock(&b->cp_lock);
	int64_t t0 = now_monotonic_ns();
	pthread_rwlock_wrlock(&b->apply_rw);
	pthread_mutex_lock(&b->log_lock);
	/* no writer is inside apply_rw: every record appended is written and applied */
	uint64_t seq = b->written;
	int r = b->broken ? -EIO : 0;
	bool nothing = seq == b->cp_seq;
	pthread_mutex_unlock(&b->log_lock);
	uint8_t *buf = NULL;
	size_t len = 0;
	if (!r && !nothing)
		r = blk_cp_render(b, seq, &buf, &len);
	pthread_rwlock_unlock(&b->apply_rw);
	__atomic_store_n(&b->st.cp_freeze_ns, (uint64_t)(now_monotonic_ns() - t0),
			 __ATOMIC_RELAXED);
	if (r || nothing)
		goto out;
	struct sm_block_sb sb = b->sb;
	uint32_t area = sb.cp_area ^ 1;
	size_t padded = (len + SM_BLOCK_BS - 1) / SM_BLOCK_BS * SM_BLOCK_BS;
	if (padded > sb.cp_blocks * SM_BLOCK_BS) {
		r = -ENOSPC; /* FMT-12 sizes the areas so that this cannot happen */
		goto out;
	}
	r = sm_dev_pwrite(b->dev, buf, padded, sb.cp_start[area] * SM_BLOCK_BS, 0);
	if (!r)
		r = sm_dev_flush(b->dev);
	if (r)
		goto out;
	sb.generation++;
	sb.cp_area = area;
	sb.cp_len = len;
	sb.cp_crc = crc32c(0, buf, len);
	sb.cp_seq = seq;
	sb.replay_pos = (seq + 1) % sb.log_blocks;
	r = blk_sb_write(b->dev, &sb);
	if (r)
		goto out;
	/* only what a checkpoint changes: writers read the layout and identity without a lock */
	b->sb.generation = sb.generation;
	b->sb.copy = sb.copy;
	b->sb.cp_area = sb.cp_area;
	b->sb.cp_len = sb.cp_len;
	b->sb.cp_crc = sb.cp_crc;
	b->sb.cp_seq = sb.cp_seq;
	b->sb.replay_pos = sb.replay_pos;
	STAT_ADD(b, flushes, 2);
	STAT_ADD(b, checkpoints, 1);
	__atomic_store_n(&b->st.cp_bytes, (uint64_t)len, __ATOMIC_RELAXED);
	pthread_mutex_lock(&b->log_lock);
	b->cp_seq = seq;
	if (b->durable < seq)
		b->durable = seq;
	pthread_cond_broadcast(&b->log_cond);
	pthread_mutex_unlock(&b->log_lock);
	blk_pending_release(b, seq);
out:
	if (r) {
		log_debug("target %s: checkpoint failed: %s", b->base.url, strerror(-r));
		pthread_mutex_lock(&b->log_lock);
		if (!b->broken)
			b->broken = r; /* a log that cannot be emptied would stop every writer */
		pthread_cond_broadcast(&b->log_cond);
		pthread_mutex_unlock(&b->log_lock);
	}
	pthread_mutex_unlock(&b->cp_lock);
	free(buf);
	return r;
}

static void *blk_cp_main(void *arg)
{
	struct sm_block *b = arg;
	pthread_mutex_lock(&b->log_lock);
	while (!b->stopping) {
		bool half = b->written - b->cp_seq >= b->sb.log_blocks / 2;
		if (!b->broken && (b->cp_want || half)) {
			b->cp_want = false;
			pthread_mutex_unlock(&b->log_lock);
			blk_checkpoint(b);
			pthread_mutex_lock(&b->log_lock);
			continue;
		}
		pthread_cond_wait(&b->cp_cond, &b->log_lock);
	}
	pthread_mutex_unlock(&b->log_lock);
	return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* format (SM-6) */

static int blk_dev_open(const char *url, struct sm_dev **ret, char *err, size_t errlen)
{
	int r = sm_dev_open(url, SM_DEV_EXCL, ret, err, errlen);
	if (r == -EBUSY && err && !strstr(err, "in use"))
		sm_seterr(err, errlen, "%s: in use by another process", url);
	return r;
}

/* What the first SM_BLOCK_PROBE_BYTES of the device hold: 0 nothing, else -EEXIST (a braidfs
 * target, damaged or not) or -ENOTEMPTY (other data), with the message. */
static int blk_probe(struct sm_dev *dev, const char *url, char *err, size_t errlen)
{
	uint8_t *buf = sm_dev_alloc(SM_BLOCK_PROBE_BYTES);
	if (!buf) {
		sm_seterr(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int r = sm_dev_pread(dev, buf, SM_BLOCK_PROBE_BYTES, 0);
	if (r < 0) {
		sm_seterr(err, errlen, "%s: cannot read: %s", url, strerror(-r));
		goto out;
	}
	struct sm_block_sb sb[2];
	char why[2][160];
	int pa = sm_block_sb_parse(buf, SM_BLOCK_BS, &sb[0], why[0], sizeof(why[0]));
	int pb = sm_block_sb_parse(buf + SM_BLOCK_BS, SM_BLOCK_BS, &sb[1], why[1], sizeof(why[1]));
	if (pa == 0 || pb == 0) {
		const struct sm_block_sb *s = pa == 0 ? &sb[0] : &sb[1];
		sm_seterr(err, errlen,
			  "device %s is not empty (holds a braidfs target of volume %s)", url,
			  s->id.volume_uuid);
		r = -EEXIST;
	} else if (sm_block_has_magic(buf, SM_BLOCK_BS) ||
		   sm_block_has_magic(buf + SM_BLOCK_BS, SM_BLOCK_BS)) {
		sm_seterr(err, errlen,
			  "device %s is not empty (holds a damaged braidfs target: %s)", url,
			  sm_block_has_magic(buf, SM_BLOCK_BS) ? why[0] : why[1]);
		r = -EEXIST;
	} else {
		r = 0;
		for (size_t i = 0; i < SM_BLOCK_PROBE_BYTES; i++)
			if (buf[i]) {
				sm_seterr(err, errlen,
					  "device %s is not empty (holds data: its first bytes are "
					  "not zero)",
					  url);
				r = -ENOTEMPTY;
				break;
			}
	}
out:
	free(buf);
	return r;
}

int sm_block_format_dev(struct sm_dev *dev, const char *url, const struct sm_identity *id,
			bool force, bool dry_run, char *err, size_t errlen)
{
	if (!dry_run) {
		if (!id || id->chunk_size < SM_BLOCK_BS || id->chunk_size > (1u << 30) ||
		    id->chunk_size % SM_BLOCK_BS) {
			sm_seterr(err, errlen,
				  "invalid chunk size %u (a multiple of 4 KiB, at most 1 GiB)",
				  id ? id->chunk_size : 0);
			return -EINVAL;
		}
		if (!uuid_str_valid(id->volume_uuid) || !uuid_str_valid(id->target_uuid)) {
			sm_seterr(err, errlen, "invalid volume or target UUID for target %s", url);
			return -EINVAL;
		}
	}
	int r;
	struct sm_block_sb sb = {0};
	uint8_t *buf = NULL;
	if (sm_block_layout(dev->size / SM_BLOCK_BS, &sb) < 0) {
		char have[32];
		sm_seterr(err, errlen,
			  "device %s is too small for a braidfs target (%s; at least %llu MiB)",
			  url, fmt_size(dev->size, have, sizeof(have)),
			  (unsigned long long)(SM_BLOCK_MIN_BYTES >> 20));
		r = -ENOSPC;
		goto out;
	}
	r = blk_probe(dev, url, err, errlen);
	if (r == -EEXIST || r == -ENOTEMPTY)
		r = force ? 0 : r;
	if (r < 0 || dry_run)
		goto out;

	sb.version = SM_BLOCK_VERSION;
	sb.id = *id;
	sb.id.format_version = SM_FORMAT_VERSION;
	if (getrandom(&sb.nonce, sizeof(sb.nonce), 0) != sizeof(sb.nonce)) {
		r = -errno;
		sm_seterr(err, errlen, "%s: no random bytes: %s", url, strerror(errno));
		goto out;
	}
	/* an empty index in area 0, then both superblock copies, one after the other (FMT-2) */
	buf = sm_dev_alloc(SM_BLOCK_BS);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	memset(buf, 0, SM_BLOCK_BS);
	struct sm_block_cp_hdr h = {.nonce = sb.nonce};
	sm_block_cp_seal(buf, &h);
	sb.cp_area = 0;
	sb.cp_len = SM_BLOCK_CP_HDR;
	sb.cp_crc = crc32c(0, buf, SM_BLOCK_CP_HDR);
	sb.cp_seq = 0;
	sb.replay_pos = 1;
	r = sm_dev_pwrite(dev, buf, SM_BLOCK_BS, sb.cp_start[0] * SM_BLOCK_BS, 0);
	for (sb.generation = 1; !r && sb.generation <= 2; sb.generation++)
		r = blk_sb_write(dev, &sb);
	if (r)
		sm_seterr(err, errlen, "%s: cannot write the superblock: %s", url, strerror(-r));
out:
	free(buf);
	return r;
}

static int blk_format_do(const char *url, const struct sm_identity *id, bool force, bool dry_run,
			 char *err, size_t errlen)
{
	if (!dry_run && !id) {
		sm_seterr(err, errlen, "no identity to format %s with", url);
		return -EINVAL;
	}
	struct sm_dev *dev;
	int r = blk_dev_open(url, &dev, err, errlen);
	if (r < 0)
		return r;
	r = sm_block_format_dev(dev, url, id, force, dry_run, err, errlen);
	sm_dev_close(dev);
	return r;
}

static int sm_block_format(const char *url, const struct sm_identity *id, bool force, char *err,
			   size_t errlen)
{
	return blk_format_do(url, id, force, false, err, errlen);
}

static int sm_block_format_check(const char *url, bool force, char *err, size_t errlen)
{
	return blk_format_do(url, NULL, force, true, err, errlen);
}

/* ---------------------------------------------------------------------------------------- */
/* open: superblock, checkpoint, replay, allocator */

static void blk_free(struct sm_block *b)
{
	for (unsigned si = 0; si < SHARDS; si++) {
		struct blk_shard *s = &b->shards[si];
		for (uint32_t h = 0; h < s->nb; h++) {
			struct blk_ino *e = s->b[h];
			while (e) {
				struct blk_ino *next = e->next;
				for (uint32_t k = 0; k < e->n; k++)
					chunk_free(e->v[k]);
				free(e->v);
				free(e);
				e = next;
			}
		}
		free(s->b);
		pthread_mutex_destroy(&s->lock);
	}
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_destroy(&b->stripes[i]);
	pthread_mutex_destroy(&b->alloc_lock);
	pthread_mutex_destroy(&b->log_lock);
	pthread_cond_destroy(&b->log_cond);
	pthread_cond_destroy(&b->cp_cond);
	pthread_rwlock_destroy(&b->apply_rw);
	pthread_mutex_destroy(&b->cp_lock);
	free(b->bitmap);
	free(b->pend);
	for (unsigned i = 0; i < LOG_BUFS; i++)
		free(b->lbuf[i]);
	sm_dev_close(b->dev);
	free(b);
}

static void sm_block_close(struct sm_target *t)
{
	if (!t)
		return;
	struct sm_block *b = blk_of(t);
	if (b->cp_thread_on) {
		pthread_mutex_lock(&b->log_lock);
		b->stopping = true;
		pthread_cond_signal(&b->cp_cond);
		pthread_mutex_unlock(&b->log_lock);
		pthread_join(b->cp_thread, NULL);
		/* a clean close leaves nothing to replay */
		if (!b->broken && b->written > b->cp_seq)
			blk_checkpoint(b);
	}
	blk_free(b);
}

/* Checkpoint entries into the index (at open). */
static int blk_cp_load_cb(void *ctx, uint64_t ino, uint32_t idx, uint32_t length,
			  const struct sm_block_cp_run *runs, uint32_t nruns)
{
	struct sm_block *b = ctx;
	struct blk_shard *s = shard_of(b, ino);
	if (chunk_find(ino_get(s, ino, false), idx))
		return -EBADMSG; /* twice in one image */
	struct blk_chunk *c = chunk_get(b, s, ino, idx);
	if (!c)
		return -ENOMEM;
	c->length = length;
	if (nruns && chunk_reserve(c, runs[nruns - 1].first + runs[nruns - 1].n) < 0)
		return -ENOMEM;
	for (uint32_t r = 0; r < nruns; r++)
		for (uint32_t i = 0; i < runs[r].n; i++) {
			bool unw = runs[r].flags & SM_BLOCK_MAP_UNWRITTEN;
			c->pb[runs[r].first + i] = (runs[r].pb + i) | (unw ? PB_UNWRITTEN : 0);
			c->crc[runs[r].first + i] = unw ? 0 : le32_at(runs[r].crcs + 4 * (size_t)i);
		}
	return 0;
}

static int blk_load_checkpoint(struct sm_block *b, char *why, size_t whylen)
{
	size_t padded = (b->sb.cp_len + SM_BLOCK_BS - 1) / SM_BLOCK_BS * SM_BLOCK_BS;
	uint8_t *buf = sm_dev_alloc(padded);
	if (!buf)
		return -ENOMEM;
	int r = sm_dev_pread(b->dev, buf, padded, b->sb.cp_start[b->sb.cp_area] * SM_BLOCK_BS);
	if (r < 0) {
		snprintf(why, whylen, "cannot read: %s", strerror(-r));
		goto out;
	}
	uint32_t crc = crc32c(0, buf, b->sb.cp_len);
	if (crc != b->sb.cp_crc) {
		snprintf(why, whylen, "checksum %08x, the superblock says %08x", crc, b->sb.cp_crc);
		r = -EBADMSG;
		goto out;
	}
	struct sm_block_cp_hdr h;
	r = sm_block_cp_parse(buf, b->sb.cp_len, b->sb.nonce, &b->lim, blk_cp_load_cb, b, &h, why,
			      whylen);
	if (r == -EBADMSG && !why[0])
		snprintf(why, whylen, "a chunk appears twice");
	if (!r && h.seq != b->sb.cp_seq) {
		snprintf(why, whylen,
			 "it covers sequence %" PRIu64 ", the superblock says %" PRIu64, h.seq,
			 b->sb.cp_seq);
		r = -EBADMSG;
	}
out:
	free(buf);
	return r;
}

/* Read log blocks of sequence first.. (at most n, not past the log's end) into buf. */
static int blk_log_read(struct sm_block *b, uint64_t first, uint32_t n, uint8_t *buf,
			uint32_t *ret_n)
{
	uint64_t pos = first % b->sb.log_blocks;
	n = (uint32_t)MIN((uint64_t)n, b->sb.log_blocks - pos);
	*ret_n = n;
	return sm_dev_pread(b->dev, buf, (size_t)n * SM_BLOCK_BS,
			    (b->sb.log_start + pos) * SM_BLOCK_BS);
}

/* FMT-7: did the data blocks of a MAP record reach the device? */
static int blk_map_landed(struct sm_block *b, const struct sm_block_rec *r, uint8_t *scratch,
			  bool *ret)
{
	*ret = true;
	if (r->flags & SM_BLOCK_MAP_UNWRITTEN)
		return 0;
	int e = sm_dev_pread(b->dev, scratch, (size_t)r->n * SM_BLOCK_BS, r->pb * SM_BLOCK_BS);
	if (e < 0)
		return e;
	for (uint32_t i = 0; i < r->n; i++)
		if (crc32c(0, scratch + (size_t)i * SM_BLOCK_BS, SM_BLOCK_BS) !=
		    le32_at(r->crcs + 4 * (size_t)i)) {
			*ret = false;
			break;
		}
	return 0;
}

/* FMT-6, FMT-7: replay the log after the checkpoint. Sets next_seq / written. */
static int blk_replay(struct sm_block *b, char *why, size_t whylen)
{
	uint64_t L = b->sb.log_blocks, seq = b->sb.cp_seq + 1, last = b->sb.cp_seq;
	uint64_t prev_gen = 0, durable = b->sb.cp_seq;
	uint8_t *buf = sm_dev_alloc((size_t)REPLAY_BATCH * SM_BLOCK_BS);
	uint8_t *scratch = sm_dev_alloc((size_t)SM_BLOCK_REC_MAX_BLOCKS * SM_BLOCK_BS);
	int r = buf && scratch ? 0 : -ENOMEM;
	char bwhy[160];
	/* pass 1: how far the valid log goes, and what of it is durable */
	bool end = false;
	while (!r && !end && seq - b->sb.cp_seq <= L) {
		uint32_t n;
		uint64_t left = L - (seq - b->sb.cp_seq) + 1;
		r = blk_log_read(b, seq, (uint32_t)MIN(left, (uint64_t)REPLAY_BATCH), buf, &n);
		for (uint32_t i = 0; !r && i < n; i++, seq++) {
			struct sm_block_log_hdr h;
			if (sm_block_log_parse(buf + (size_t)i * SM_BLOCK_BS, SM_BLOCK_BS,
					       b->sb.nonce, &b->lim, &h, bwhy, sizeof(bwhy)) < 0 ||
			    h.seq != seq || h.generation < prev_gen ||
			    h.generation > b->sb.generation) {
				end = true;
				break;
			}
			prev_gen = h.generation;
			last = seq;
			durable = MAX(durable, h.durable);
		}
	}
	/* pass 2: apply, dropping tail records whose data never landed */
	b->replaying = true;
	for (seq = b->sb.cp_seq + 1; !r && seq <= last;) {
		uint32_t n;
		r = blk_log_read(b, seq, (uint32_t)MIN(last - seq + 1, (uint64_t)REPLAY_BATCH), buf,
				 &n);
		for (uint32_t i = 0; !r && i < n; i++, seq++) {
			const uint8_t *blk = buf + (size_t)i * SM_BLOCK_BS;
			struct sm_block_log_hdr h;
			r = sm_block_log_parse(blk, SM_BLOCK_BS, b->sb.nonce, &b->lim, &h, why,
					       whylen);
			size_t pos = 0;
			struct sm_block_rec rec;
			while (!r && sm_block_rec_next(blk, &h, &pos, &rec)) {
				bool landed = true;
				if (seq > durable && rec.type == SM_BLOCK_REC_MAP)
					r = blk_map_landed(b, &rec, scratch, &landed);
				if (r)
					break;
				if (!landed) {
					STAT_ADD(b, dropped, 1);
					continue;
				}
				r = blk_apply(b, &rec, seq);
				STAT_ADD(b, replayed, 1);
			}
		}
	}
	b->replaying = false;
	if (r == -ENOMEM)
		snprintf(why, whylen, "out of memory");
	else if (r < 0 && !why[0])
		snprintf(why, whylen, "cannot read the log: %s", strerror(-r));
	b->next_seq = last + 1;
	b->written = last;
	free(buf);
	free(scratch);
	return r;
}

/* Build the allocator from the index; refuse an index that maps a block twice. */
static int blk_build_alloc(struct sm_block *b, char *why, size_t whylen)
{
	uint64_t d = b->sb.data_blocks;
	b->nwords = (d + 63) / 64;
	b->bitmap = calloc(b->nwords, sizeof(uint64_t));
	if (!b->bitmap)
		return -ENOMEM;
	for (uint64_t i = d; i < b->nwords * 64; i++)
		bm_set(b->bitmap, i); /* past the region: never free */
	uint64_t used = 0;
	for (unsigned si = 0; si < SHARDS; si++) {
		struct blk_shard *s = &b->shards[si];
		for (uint32_t h = 0; h < s->nb; h++)
			for (struct blk_ino *e = s->b[h]; e; e = e->next)
				for (uint32_t k = 0; k < e->n; k++) {
					struct blk_chunk *c = e->v[k];
					for (uint32_t i = 0; i < c->cap; i++) {
						uint64_t pb = c->pb[i] & PB_MASK;
						if (!pb)
							continue;
						uint64_t bit = pb - b->sb.data_start;
						if (bm_test(b->bitmap, bit)) {
							snprintf(why, whylen,
								 "block %" PRIu64
								 " is mapped twice "
								 "(again by chunk %" PRIu64 ".%u)",
								 pb, e->ino, c->idx);
							return -EBADMSG;
						}
						bm_set(b->bitmap, bit);
						used++;
					}
				}
	}
	b->nfree = d - used;
	return 0;
}

int sm_block_open_dev(struct sm_dev *dev, const char *url, const struct sm_identity *expect,
		      struct sm_target **ret, char *err, size_t errlen)
{
	*ret = NULL;
	struct sm_block *b = calloc(1, sizeof(*b));
	if (!b) {
		sm_dev_close(dev);
		sm_seterr(err, errlen, "out of memory");
		return -ENOMEM;
	}
	b->dev = dev;
	b->base.ops = &sm_block_ops;
	snprintf(b->base.url, sizeof(b->base.url), "%s", url);
	for (unsigned i = 0; i < SHARDS; i++)
		pthread_mutex_init(&b->shards[i].lock, NULL);
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_init(&b->stripes[i], NULL);
	pthread_mutex_init(&b->alloc_lock, NULL);
	pthread_mutex_init(&b->log_lock, NULL);
	pthread_cond_init(&b->log_cond, NULL);
	pthread_cond_init(&b->cp_cond, NULL);
	pthread_mutex_init(&b->cp_lock, NULL);
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	/* a checkpoint must not starve behind a stream of writers */
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&b->apply_rw, &ra);
	pthread_rwlockattr_destroy(&ra);

	char why[256] = "";
	uint8_t *sbbuf = NULL;
	int r;
	bool nomem = false;
	for (unsigned i = 0; i < LOG_BUFS; i++)
		nomem |= !(b->lbuf[i] = sm_dev_alloc(SM_BLOCK_BS));
	sbbuf = sm_dev_alloc(2 * SM_BLOCK_BS);
	if (nomem || !sbbuf) {
		r = -ENOMEM;
		sm_seterr(err, errlen, "out of memory");
		goto fail;
	}
	if (b->dev->size < 2 * SM_BLOCK_BS) {
		r = -ENOENT;
		sm_seterr(err, errlen, "device %s holds no braidfs target (it is too small)", url);
		goto fail;
	}
	r = sm_dev_pread(b->dev, sbbuf, 2 * SM_BLOCK_BS, 0);
	if (r < 0) {
		sm_seterr(err, errlen, "%s: cannot read the superblock: %s", url, strerror(-r));
		goto fail;
	}
	/* FMT-2: the valid copy with the highest generation */
	struct sm_block_sb sbs[2];
	char whys[2][160];
	int ok[2];
	for (int i = 0; i < 2; i++) {
		ok[i] = sm_block_sb_parse(sbbuf + i * SM_BLOCK_BS, SM_BLOCK_BS, &sbs[i], whys[i],
					  sizeof(whys[i])) == 0;
		if (ok[i] && sbs[i].copy != (uint32_t)i) {
			ok[i] = 0;
			snprintf(whys[i], sizeof(whys[i]), "a copy of slot %u found in slot %d",
				 sbs[i].copy, i);
		}
	}
	if (!ok[0] && !ok[1]) {
		if (!sm_block_has_magic(sbbuf, SM_BLOCK_BS) &&
		    !sm_block_has_magic(sbbuf + SM_BLOCK_BS, SM_BLOCK_BS)) {
			r = -ENOENT;
			sm_seterr(err, errlen,
				  "device %s holds no braidfs target (no superblock; format it "
				  "first)",
				  url);
		} else {
			r = -EBADMSG;
			sm_seterr(err, errlen,
				  "device %s: both superblock copies are corrupt (A: %s; B: %s)",
				  url, whys[0], whys[1]);
		}
		goto fail;
	}
	int pick = !ok[0] || (ok[1] && sbs[1].generation > sbs[0].generation);
	b->sb = sbs[pick];
	if (!ok[pick ^ 1])
		log_debug("target %s: superblock copy %c is corrupt (%s); using copy %c", url,
			  pick ? 'A' : 'B', whys[pick ^ 1], pick ? 'B' : 'A');
	if (b->sb.dev_blocks * SM_BLOCK_BS > b->dev->size) {
		r = -EBADMSG;
		char have[32], want[32];
		sm_seterr(err, errlen, "device %s is smaller (%s) than the target it holds (%s)",
			  url, fmt_size(b->dev->size, have, sizeof(have)),
			  fmt_size(b->sb.dev_blocks * SM_BLOCK_BS, want, sizeof(want)));
		goto fail;
	}
	if (b->sb.id.format_version != SM_FORMAT_VERSION) {
		r = -EPROTONOSUPPORT;
		sm_seterr(err, errlen,
			  "target %s has on-disk format version %u; this braidfs reads version %d",
			  url, b->sb.id.format_version, SM_FORMAT_VERSION);
		goto fail;
	}
	r = sm_identity_expect(url, &b->sb.id, expect, err, errlen);
	if (r < 0)
		goto fail;
	b->lim = (struct sm_block_limits){b->sb.id.chunk_size, b->sb.data_start,
					  b->sb.data_start + b->sb.data_blocks};
	b->cblocks = b->sb.id.chunk_size / SM_BLOCK_BS;

	r = blk_load_checkpoint(b, why, sizeof(why));
	if (r < 0) {
		sm_seterr(err, errlen, "target %s: its checkpoint is corrupt (%s)", url, why);
		goto fail;
	}
	b->cp_seq = b->durable = b->sb.cp_seq;
	r = blk_replay(b, why, sizeof(why));
	if (r < 0) {
		sm_seterr(err, errlen, "target %s: cannot replay its log (%s)", url, why);
		goto fail;
	}
	r = blk_build_alloc(b, why, sizeof(why));
	if (r < 0) {
		sm_seterr(err, errlen, "target %s: its index is inconsistent (%s)", url, why);
		goto fail;
	}
	/* FMT-8: what was replayed goes into a checkpoint before this open writes any log block,
	 * then this open gets a generation of its own for its log blocks (FMT-6). */
	bool bumped = false;
	if (b->written > b->cp_seq) {
		r = blk_checkpoint(b); /* its superblock has a new generation */
		bumped = true;
	}
	if (!r && !bumped) {
		struct sm_block_sb sb = b->sb;
		sb.generation++;
		r = blk_sb_write(b->dev, &sb);
		if (!r)
			b->sb = sb;
	}
	if (r < 0) {
		sm_seterr(err, errlen, "target %s: cannot write its superblock: %s", url,
			  strerror(-r));
		goto fail;
	}
	b->gen = b->sb.generation;
	if (pthread_create(&b->cp_thread, NULL, blk_cp_main, b) != 0) {
		r = -EAGAIN;
		sm_seterr(err, errlen, "target %s: cannot start its checkpoint thread", url);
		goto fail;
	}
	b->cp_thread_on = true;
	free(sbbuf);
	*ret = &b->base;
	return 0;
fail:
	free(sbbuf);
	blk_free(b);
	return r;
}

static int sm_block_open(const char *url, const struct sm_identity *expect, struct sm_target **ret,
			 char *err, size_t errlen)
{
	*ret = NULL;
	struct sm_dev *dev;
	int r = blk_dev_open(url, &dev, err, errlen);
	if (r < 0)
		return r;
	return sm_block_open_dev(dev, url, expect, ret, err, errlen);
}

static int sm_block_identity(struct sm_target *t, struct sm_identity *ret)
{
	*ret = blk_of(t)->sb.id;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* chunk I/O */

static int blk_check_range(struct sm_block *b, uint64_t off, uint64_t len)
{
	if (off > b->sb.id.chunk_size || len > b->sb.id.chunk_size - off)
		return -EINVAL;
	return 0;
}

/* The blocks [*ret_b0, *ret_b0 + *ret_n) that bytes [off, off+len) of a chunk touch: 1, or 0
 * for len 0, or -EINVAL past the chunk size. */
static int blk_span(struct sm_block *b, uint64_t off, uint64_t len, uint32_t *ret_b0,
		    uint32_t *ret_n)
{
	if (blk_check_range(b, off, len) < 0)
		return -EINVAL;
	if (len == 0)
		return 0;
	*ret_b0 = (uint32_t)(off / SM_BLOCK_BS);
	*ret_n = (uint32_t)((off + len - 1) / SM_BLOCK_BS) - *ret_b0 + 1;
	return 1;
}

/* Copy the mappings of blocks [b0, b0+n) of a chunk (holes past its length). */
static uint32_t blk_snapshot(struct sm_block *b, uint64_t ino, uint32_t idx, uint32_t b0,
			     uint32_t n, uint64_t *pb, uint32_t *crc, bool *ret_exists)
{
	struct blk_shard *s = shard_of(b, ino);
	pthread_mutex_lock(&s->lock);
	struct blk_chunk *c = chunk_find(ino_get(s, ino, false), idx);
	uint32_t length = c ? c->length : 0;
	uint32_t lim = c ? MIN(c->cap, blocks_of(length)) : 0;
	for (uint32_t i = 0; i < n; i++) {
		bool in = b0 + i < lim;
		pb[i] = in ? c->pb[b0 + i] : 0;
		crc[i] = in ? c->crc[b0 + i] : 0;
	}
	pthread_mutex_unlock(&s->lock);
	if (ret_exists)
		*ret_exists = c != NULL;
	return length;
}

static bool written_pb(uint64_t pb)
{
	return pb && !(pb & PB_UNWRITTEN);
}

/* Read the written blocks among pb[0..n) into data (block i at data + i * BS), one I/O per
 * run of consecutive blocks, all at once. */
static int blk_read_blocks(struct sm_block *b, const uint64_t *pb, uint32_t n, uint8_t *data)
{
	struct sm_dev_io stack_ios[16], *ios = stack_ios;
	if (n > ARRAY_SIZE(stack_ios)) {
		ios = malloc(n * sizeof(*ios));
		if (!ios)
			return -ENOMEM;
	}
	unsigned k = 0;
	for (uint32_t i = 0; i < n;) {
		if (!written_pb(pb[i])) {
			i++;
			continue;
		}
		uint32_t j = i + 1;
		while (j < n && written_pb(pb[j]) && pb[j] == pb[j - 1] + 1)
			j++;
		ios[k++] = (struct sm_dev_io){.op = SM_DEV_READ,
					      .buf = data + (size_t)i * SM_BLOCK_BS,
					      .len = (size_t)(j - i) * SM_BLOCK_BS,
					      .off = pb[i] * SM_BLOCK_BS};
		i = j;
	}
	int r = k ? sm_dev_submit(b->dev, ios, k) : 0;
	if (ios != stack_ios)
		free(ios);
	return r;
}

/* FMT-11: the first written block among pb[0..n) whose crc does not match, or n. */
static uint32_t blk_verify(const uint64_t *pb, const uint32_t *crc, uint32_t n, const uint8_t *data)
{
	for (uint32_t i = 0; i < n; i++)
		if (written_pb(pb[i]) &&
		    crc32c(0, data + (size_t)i * SM_BLOCK_BS, SM_BLOCK_BS) != crc[i])
			return i;
	return n;
}

static int blk_csum_error(struct sm_block *b, uint64_t ino, uint32_t idx, uint32_t blk, uint64_t pb)
{
	STAT_ADD(b, csum_errors, 1);
	log_debug("target %s: chunk %" PRIu64 ".%u block %u (device block %" PRIu64
		  "): checksum mismatch",
		  b->base.url, ino, idx, blk, (uint64_t)(pb & PB_MASK));
	return -EBADMSG;
}

static ssize_t sm_block_read(struct sm_target *t, uint64_t ino, uint32_t idx, void *buf, size_t len,
			     uint64_t off)
{
	struct sm_block *b = blk_of(t);
	uint32_t b0, n;
	int span = blk_span(b, off, len, &b0, &n);
	if (span <= 0)
		return span;
	uint64_t stack_pb[STACK_BLOCKS], *pb = stack_pb;
	uint32_t stack_crc[STACK_BLOCKS], *crc = stack_crc;
	uint8_t *data = NULL;
	ssize_t r = 0;
	if (n > STACK_BLOCKS) {
		pb = malloc(n * sizeof(*pb));
		crc = malloc(n * sizeof(*crc));
	}
	data = sm_dev_alloc((size_t)n * SM_BLOCK_BS);
	if (!pb || !crc || !data) {
		r = -ENOMEM;
		goto out;
	}
	for (int attempt = 0;; attempt++) {
		if (attempt == READ_RETRIES) {
			r = -EIO;
			goto out;
		}
		uint32_t length = blk_snapshot(b, ino, idx, b0, n, pb, crc, NULL);
		r = blk_read_blocks(b, pb, n, data);
		if (r < 0)
			goto out;
		uint32_t bad = blk_verify(pb, crc, n, data);
		if (bad < n) {
			uint64_t now_pb;
			uint32_t now_crc;
			blk_snapshot(b, ino, idx, b0 + bad, 1, &now_pb, &now_crc, NULL);
			if (now_pb != pb[bad] || now_crc != crc[bad])
				continue; /* remapped while we read: read the new mapping */
			r = blk_csum_error(b, ino, idx, b0 + bad, pb[bad]);
			goto out;
		}
		/* copy out; holes, unwritten blocks and bytes past the length are zeros (SM-2) */
		uint8_t *out = buf;
		for (uint32_t i = 0; i < n; i++) {
			uint64_t bs = (uint64_t)(b0 + i) * SM_BLOCK_BS;
			uint64_t lo = MAX(bs, off), hi = MIN(bs + SM_BLOCK_BS, off + len);
			uint64_t valid = MIN(hi, MAX(lo, (uint64_t)length));
			if (written_pb(pb[i]) && valid > lo)
				memcpy(out + (lo - off), data + (size_t)i * SM_BLOCK_BS + (lo - bs),
				       valid - lo);
			else
				valid = lo;
			memset(out + (valid - off), 0, hi - valid);
		}
		break;
	}
	STAT_ADD(b, bytes_read, len);
	r = (ssize_t)len;
out:
	if (pb != stack_pb)
		free(pb);
	if (crc != stack_crc)
		free(crc);
	free(data);
	return r;
}

/* One block of a chunk as it reads now, for a read-modify-write (its stripe is locked). */
static int blk_read_one(struct sm_block *b, uint64_t ino, uint32_t idx, uint32_t blk, uint8_t *out)
{
	uint64_t pb;
	uint32_t crc;
	blk_snapshot(b, ino, idx, blk, 1, &pb, &crc, NULL);
	if (!written_pb(pb)) {
		memset(out, 0, SM_BLOCK_BS);
		return 0;
	}
	int r = sm_dev_pread(b->dev, out, SM_BLOCK_BS, pb * SM_BLOCK_BS);
	if (r < 0)
		return r;
	if (crc32c(0, out, SM_BLOCK_BS) != crc)
		return blk_csum_error(b, ino, idx, blk, pb);
	return 0;
}

static pthread_mutex_t *blk_stripe(struct sm_block *b, uint64_t ino, uint32_t idx, uint32_t blk)
{
	return &b->stripes[hash_mix64(ino * 0x9e3779b97f4a7c15ull ^ ((uint64_t)idx << 32 | blk)) %
			   STRIPES];
}

/* Lock the stripes of up to two blocks in address order (the same stripe once). */
static void blk_stripes_lock(pthread_mutex_t *m[2])
{
	if (m[0] && m[1] && m[0] > m[1]) {
		pthread_mutex_t *x = m[0];
		m[0] = m[1];
		m[1] = x;
	}
	if (m[0] == m[1])
		m[1] = NULL;
	for (int i = 0; i < 2; i++)
		if (m[i])
			pthread_mutex_lock(m[i]);
}

static void blk_stripes_unlock(pthread_mutex_t *m[2])
{
	for (int i = 1; i >= 0; i--)
		if (m[i])
			pthread_mutex_unlock(m[i]);
}

/* Would a change create the chunk past max_chunks? (FMT-12) */
static int blk_room_for_chunk(struct sm_block *b, uint64_t ino, uint32_t idx)
{
	if (__atomic_load_n(&b->nchunks, __ATOMIC_RELAXED) < b->sb.max_chunks)
		return 0;
	bool exists;
	uint64_t pb;
	uint32_t crc;
	blk_snapshot(b, ino, idx, 0, 1, &pb, &crc, &exists);
	return exists ? 0 : -ENOSPC;
}

/* Allocate n blocks; when space is short, flush so that pending frees come back (FMT-5). */
static int blk_alloc_flush(struct sm_block *b, uint32_t n, uint64_t *pb, uint32_t *cnt,
			   uint32_t *runs)
{
	int r = blk_alloc(b, n, pb, cnt, runs);
	if (r == -ENOSPC) {
		r = blk_flush(b);
		if (!r)
			r = blk_alloc(b, n, pb, cnt, runs);
	}
	return r;
}

/* Write data (n blocks, n crcs) as new blocks for blocks lblk[0..n) of a chunk (NULL: b0, b0+1,
 * ... in order) whose length becomes at least end, and map them, with extra records after:
 * all in one log block when they fit (a log block is all or nothing). */
static int blk_write_blocks(struct sm_block *b, uint64_t ino, uint32_t idx, uint32_t b0,
			    const uint32_t *lblk, uint32_t n, const uint8_t *data,
			    const uint32_t *crc, uint32_t end, const struct sm_block_rec *extra,
			    unsigned nextra)
{
	uint64_t *rpb = malloc(n * sizeof(*rpb));
	uint32_t *rn = malloc(n * sizeof(*rn)), nruns = 0;
	uint32_t *lecrc = malloc(n * sizeof(*lecrc));
	unsigned maxrec = n + nextra + 1;
	struct sm_block_rec *recs = malloc(maxrec * sizeof(*recs));
	struct sm_dev_io *ios = malloc(n * sizeof(*ios));
	int r = rpb && rn && lecrc && recs && ios ? 0 : -ENOMEM;
	if (!r)
		r = blk_alloc_flush(b, n, rpb, rn, &nruns);
	if (r < 0)
		goto out;
	/* step 2: every run of new blocks at once (FMT-3: none of them is mapped) */
	uint32_t done = 0;
	for (uint32_t k = 0; k < nruns; k++) {
		ios[k] = (struct sm_dev_io){.op = SM_DEV_WRITE,
					    .buf = (void *)(data + (size_t)done * SM_BLOCK_BS),
					    .len = (size_t)rn[k] * SM_BLOCK_BS,
					    .off = rpb[k] * SM_BLOCK_BS};
		done += rn[k];
	}
	r = sm_dev_submit(b->dev, ios, nruns);
	if (r < 0) {
		blk_unalloc(b, rpb, rn, nruns);
		goto out;
	}
	STAT_ADD(b, blocks_written, n);
	/* steps 3, 4 (FMT-4: the data is written before its record is): one MAP per stretch
	 * that is consecutive both in the chunk and on the device */
	for (uint32_t i = 0; i < n; i++)
		lecrc[i] = htole32(crc[i]);
	unsigned k = 0;
	uint32_t run = 0, in_run = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t lb = lblk ? lblk[i] : b0 + i;
		uint64_t pb = rpb[run] + in_run;
		if (++in_run == rn[run]) {
			run++;
			in_run = 0;
		}
		struct sm_block_rec *cur = k ? &recs[k - 1] : NULL;
		if (cur && lb == cur->first + cur->n && pb == cur->pb + cur->n &&
		    cur->n < SM_BLOCK_REC_MAX_BLOCKS) {
			cur->n++;
		} else {
			recs[k++] = (struct sm_block_rec){.type = SM_BLOCK_REC_MAP,
							  .ino = ino,
							  .idx = idx,
							  .first = lb,
							  .n = 1,
							  .pb = pb,
							  .crcs = (const uint8_t *)(lecrc + i)};
		}
	}
	for (unsigned i = 0; i < k; i++) /* a MAP's length covers its blocks (FMT-6) */
		recs[i].len = MAX(end, (recs[i].first + recs[i].n - 1) * SM_BLOCK_BS + 1);
	for (unsigned i = 0; i < nextra; i++)
		recs[k++] = extra[i];
	r = blk_commit(b, recs, k);
out:
	free(rpb);
	free(rn);
	free(lecrc);
	free(recs);
	free(ios);
	return r;
}

static ssize_t sm_block_write(struct sm_target *t, uint64_t ino, uint32_t idx, const void *buf,
			      size_t len, uint64_t off)
{
	struct sm_block *b = blk_of(t);
	uint32_t b0, n;
	int span = blk_span(b, off, len, &b0, &n);
	if (span <= 0)
		return span;
	uint32_t b1 = b0 + n - 1;
	bool head = off % SM_BLOCK_BS != 0 || (n == 1 && (off + len) % SM_BLOCK_BS != 0);
	bool tail = n > 1 && (off + len) % SM_BLOCK_BS != 0;
	pthread_mutex_t *m[2] = {head ? blk_stripe(b, ino, idx, b0) : NULL,
				 tail ? blk_stripe(b, ino, idx, b1) : NULL};
	uint8_t *data = sm_dev_alloc((size_t)n * SM_BLOCK_BS);
	uint32_t *crc = malloc(n * sizeof(*crc));
	int r = data && crc ? 0 : -ENOMEM;
	blk_stripes_lock(m);
	if (!r)
		r = blk_room_for_chunk(b, ino, idx);
	/* step 1: partial blocks start from what they hold (FMT-10: zeros past the length) */
	if (!r && head)
		r = blk_read_one(b, ino, idx, b0, data);
	if (!r && tail)
		r = blk_read_one(b, ino, idx, b1, data + (size_t)(n - 1) * SM_BLOCK_BS);
	if (!r) {
		memcpy(data + off % SM_BLOCK_BS, buf, len);
		for (uint32_t i = 0; i < n; i++)
			crc[i] = crc32c(0, data + (size_t)i * SM_BLOCK_BS, SM_BLOCK_BS);
		r = blk_write_blocks(b, ino, idx, b0, NULL, n, data, crc, (uint32_t)(off + len),
				     NULL, 0);
	}
	blk_stripes_unlock(m);
	free(data);
	free(crc);
	if (r < 0)
		return r;
	STAT_ADD(b, bytes_written, len);
	blk_maybe_recycle(b);
	return (ssize_t)len;
}

/* Bytes [lo, hi) of block blk of a chunk, to be zeroed. */
struct blk_part {
	uint32_t blk, lo, hi;
};

/* Zero the parts (at most 2, their stripes locked by the caller) as new copies of their blocks,
 * and log them with extra records, atomically: a truncate's tail block and its SETLEN, a
 * punch's edge blocks and its UNMAP. Parts that are holes or reserved read as zeros already. */
static int blk_zero_parts(struct sm_block *b, uint64_t ino, uint32_t idx,
			  const struct blk_part *parts, unsigned np, uint32_t end,
			  const struct sm_block_rec *extra, unsigned nextra)
{
	uint8_t *data = sm_dev_alloc(2 * SM_BLOCK_BS);
	if (!data)
		return -ENOMEM;
	uint32_t lblk[2], crc[2], n = 0;
	int r = 0;
	for (unsigned k = 0; k < np && k < 2 && !r; k++) {
		uint64_t pb;
		uint32_t c;
		blk_snapshot(b, ino, idx, parts[k].blk, 1, &pb, &c, NULL);
		if (!written_pb(pb))
			continue;
		uint8_t *d = data + (size_t)n * SM_BLOCK_BS;
		r = blk_read_one(b, ino, idx, parts[k].blk, d);
		if (r)
			break;
		memset(d + parts[k].lo, 0, parts[k].hi - parts[k].lo);
		crc[n] = crc32c(0, d, SM_BLOCK_BS);
		lblk[n++] = parts[k].blk;
	}
	if (!r && n)
		r = blk_write_blocks(b, ino, idx, 0, lblk, n, data, crc, end, extra, nextra);
	else if (!r)
		r = blk_commit(b, extra, nextra);
	free(data);
	return r;
}

static int sm_block_truncate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t len)
{
	struct sm_block *b = blk_of(t);
	if (len > b->sb.id.chunk_size)
		return -EINVAL;
	uint64_t pb;
	uint32_t crc;
	bool exists;
	uint32_t blk = (uint32_t)(len / SM_BLOCK_BS);
	pthread_mutex_t *m[2] = {blk_stripe(b, ino, idx, blk), NULL};
	blk_stripes_lock(m);
	uint32_t length = blk_snapshot(b, ino, idx, blk, 1, &pb, &crc, &exists);
	struct sm_block_rec setlen = {
	    .type = SM_BLOCK_REC_SETLEN, .ino = ino, .idx = idx, .len = (uint32_t)len};
	int r = 0;
	if (!exists && len == 0)
		goto out; /* a missing chunk with length 0 stays missing */
	if (!exists && (r = blk_room_for_chunk(b, ino, idx)) < 0)
		goto out;
	if (len < length && len % SM_BLOCK_BS) {
		/* FMT-10: the bytes past the new length in its last block become zeros, in the
		 * same log block as the new length */
		struct blk_part part = {blk, (uint32_t)(len % SM_BLOCK_BS), SM_BLOCK_BS};
		r = blk_zero_parts(b, ino, idx, &part, 1, (uint32_t)len, &setlen, 1);
	} else {
		r = blk_commit(b, &setlen, 1);
	}
out:
	blk_stripes_unlock(m);
	blk_maybe_recycle(b);
	return r;
}

static int sm_block_punch(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off,
			  uint64_t len)
{
	struct sm_block *b = blk_of(t);
	if (off >= b->sb.id.chunk_size || len == 0)
		return 0;
	len = MIN(len, b->sb.id.chunk_size - off);
	uint64_t pb;
	uint32_t crc;
	bool exists;
	uint32_t length = blk_snapshot(b, ino, idx, 0, 0, &pb, &crc, &exists);
	if (!exists || off >= length)
		return 0; /* all hole already; punch keeps the length */
	uint64_t end = MIN(off + len, (uint64_t)length);
	uint32_t b0 = (uint32_t)(off / SM_BLOCK_BS), b1 = (uint32_t)((end - 1) / SM_BLOCK_BS);
	/* An edge block is wholly punched when the range covers it from its start up to its end
	 * or the chunk's (FMT-10: the rest is zeros); else it gets a zeroed copy. */
	struct blk_part part[2];
	unsigned np = 0;
	uint32_t edges[2] = {b0, b1};
	for (unsigned k = 0; k < (b0 == b1 ? 1u : 2u); k++) {
		uint64_t bs = (uint64_t)edges[k] * SM_BLOCK_BS;
		uint32_t lo = (uint32_t)(MAX(off, bs) - bs),
			 hi = (uint32_t)(MIN(end, bs + SM_BLOCK_BS) - bs);
		if (lo != 0 || (hi != SM_BLOCK_BS && bs + hi < length))
			part[np++] = (struct blk_part){edges[k], lo, hi};
	}
	uint32_t first = np && part[0].blk == b0 ? b0 + 1 : b0;
	uint32_t lastx = np && part[np - 1].blk == b1 ? b1 : b1 + 1;
	struct sm_block_rec unmap = {.type = SM_BLOCK_REC_UNMAP,
				     .ino = ino,
				     .idx = idx,
				     .first = first,
				     .n = lastx > first ? lastx - first : 0};
	pthread_mutex_t *m[2] = {np > 0 ? blk_stripe(b, ino, idx, part[0].blk) : NULL,
				 np > 1 ? blk_stripe(b, ino, idx, part[1].blk) : NULL};
	blk_stripes_lock(m);
	/* the zeroed edge blocks and the unmap in one log block */
	int r = blk_zero_parts(b, ino, idx, part, np, 0, &unmap, unmap.n ? 1 : 0);
	blk_stripes_unlock(m);
	blk_maybe_recycle(b);
	return r;
}

static int sm_block_allocate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off,
			     uint64_t len)
{
	struct sm_block *b = blk_of(t);
	uint32_t b0, n;
	int span = blk_span(b, off, len, &b0, &n);
	if (span <= 0)
		return span;
	uint32_t end = (uint32_t)(off + len);
	uint64_t *pb = malloc(n * sizeof(*pb)), *rpb = malloc(n * sizeof(*rpb));
	uint32_t *crc = malloc(n * sizeof(*crc)), *rn = malloc(n * sizeof(*rn));
	struct sm_block_rec *recs = malloc((n + 1) * sizeof(*recs));
	int r = pb && rpb && crc && rn && recs ? 0 : -ENOMEM;
	bool exists = false;
	uint32_t length = 0;
	if (!r) {
		length = blk_snapshot(b, ino, idx, b0, n, pb, crc, &exists);
		r = exists ? 0 : blk_room_for_chunk(b, ino, idx);
	}
	unsigned k = 0;
	uint32_t holes = 0;
	for (uint32_t i = 0; !r && i < n; i++)
		holes += !pb[i];
	uint32_t nruns = 0;
	if (!r && holes)
		r = blk_alloc_flush(b, holes, rpb, rn, &nruns);
	if (r < 0)
		goto out;
	/* the holes, in order, get the new runs: one unwritten MAP per stretch */
	uint32_t run = 0, used_in_run = 0;
	for (uint32_t i = 0; i < n;) {
		if (pb[i]) {
			i++;
			continue;
		}
		uint32_t m = 0;
		while (i + m < n && !pb[i + m] && used_in_run + m < rn[run] &&
		       m < SM_BLOCK_REC_MAX_BLOCKS)
			m++;
		recs[k++] =
		    (struct sm_block_rec){.type = SM_BLOCK_REC_MAP,
					  .ino = ino,
					  .idx = idx,
					  .len = MAX(end, (b0 + i + m - 1) * SM_BLOCK_BS + 1),
					  .first = b0 + i,
					  .n = m,
					  .flags = SM_BLOCK_MAP_UNWRITTEN,
					  .pb = rpb[run] + used_in_run};
		used_in_run += m;
		if (used_in_run == rn[run]) {
			run++;
			used_in_run = 0;
		}
		i += m;
	}
	if (end > length || !exists)
		recs[k++] = (struct sm_block_rec){
		    .type = SM_BLOCK_REC_SETLEN, .ino = ino, .idx = idx, .len = MAX(end, length)};
	r = blk_commit(b, recs, k);
	if (r < 0 && holes)
		log_debug("target %s: allocate failed after its blocks were taken: %s", b->base.url,
			  strerror(-r));
out:
	free(pb);
	free(rpb);
	free(crc);
	free(rn);
	free(recs);
	return r;
}

static int sm_block_remove(struct sm_target *t, uint64_t ino, uint32_t from_idx)
{
	struct sm_block *b = blk_of(t);
	struct blk_shard *s = shard_of(b, ino);
	pthread_mutex_lock(&s->lock);
	struct blk_ino *e = ino_get(s, ino, false);
	bool any = e && chunk_pos(e, from_idx) < e->n;
	pthread_mutex_unlock(&s->lock);
	if (!any)
		return 0; /* SM-5: the index knows every chunk; none is there */
	struct sm_block_rec rec = {.type = SM_BLOCK_REC_REMOVE, .ino = ino, .idx = from_idx};
	int r = blk_commit(b, &rec, 1);
	blk_maybe_recycle(b);
	return r;
}

static int sm_block_seek(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, int whence,
			 uint64_t *ret)
{
	struct sm_block *b = blk_of(t);
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	struct blk_shard *s = shard_of(b, ino);
	pthread_mutex_lock(&s->lock);
	struct blk_chunk *c = chunk_find(ino_get(s, ino, false), idx);
	uint64_t length = c ? c->length : 0;
	int r = 0;
	if (off >= length) {
		/* a missing chunk, or past its end: all hole (SM-2) */
		if (whence == SEEK_DATA)
			r = -ENXIO;
		else
			*ret = off;
		goto out;
	}
	uint32_t nblk = MIN(c->cap, blocks_of(length));
	uint32_t i = (uint32_t)(off / SM_BLOCK_BS);
	bool want_data = whence == SEEK_DATA;
	while (i < blocks_of(length) && (i < nblk && c->pb[i]) != want_data)
		i++;
	uint64_t at = MAX(off, (uint64_t)i * SM_BLOCK_BS);
	if (i >= blocks_of(length)) {
		if (want_data)
			r = -ENXIO;
		else
			*ret = length;
	} else {
		*ret = MIN(at, length);
	}
out:
	pthread_mutex_unlock(&s->lock);
	return r;
}

static int sm_block_chunk_length(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t *ret)
{
	struct sm_block *b = blk_of(t);
	struct blk_shard *s = shard_of(b, ino);
	pthread_mutex_lock(&s->lock);
	struct blk_chunk *c = chunk_find(ino_get(s, ino, false), idx);
	*ret = c ? c->length : 0;
	pthread_mutex_unlock(&s->lock);
	return c ? 0 : -ENOENT;
}

static int sm_block_sync(struct sm_target *t)
{
	struct sm_block *b = blk_of(t);
	STAT_ADD(b, syncs, 1);
	return blk_flush(b);
}

/* One log for the whole target: syncing an inode syncs everything (and costs one flush). */
static int sm_block_sync_ino(struct sm_target *t, uint64_t ino)
{
	(void)ino;
	return sm_block_sync(t);
}

static int sm_block_statfs(struct sm_target *t, struct sm_statfs *ret)
{
	struct sm_block *b = blk_of(t);
	pthread_mutex_lock(&b->alloc_lock);
	uint64_t nfree = b->nfree, npend = b->npend;
	pthread_mutex_unlock(&b->alloc_lock);
	uint64_t d = b->sb.data_blocks;
	*ret = (struct sm_statfs){
	    .total_bytes = d * SM_BLOCK_BS,
	    .free_bytes = (nfree + npend) * SM_BLOCK_BS, /* pending: free after the next flush */
	    .used_bytes = (d - nfree - npend) * SM_BLOCK_BS,
	    .chunks = __atomic_load_n(&b->nchunks, __ATOMIC_RELAXED),
	};
	return 0;
}

static int sm_block_list(struct sm_target *t, sm_chunk_cb cb, void *ctx)
{
	struct sm_block *b = blk_of(t);
	struct sm_chunk_info *v = NULL;
	size_t cap = 0;
	for (unsigned si = 0; si < SHARDS; si++) {
		struct blk_shard *s = &b->shards[si];
		size_t n = 0;
		pthread_mutex_lock(&s->lock);
		for (uint32_t h = 0; h < s->nb; h++)
			for (struct blk_ino *e = s->b[h]; e; e = e->next)
				for (uint32_t k = 0; k < e->n; k++) {
					if (n == cap) {
						size_t nc = cap ? cap * 2 : 256;
						struct sm_chunk_info *nv =
						    realloc(v, nc * sizeof(*v));
						if (!nv) {
							pthread_mutex_unlock(&s->lock);
							free(v);
							return -ENOMEM;
						}
						v = nv;
						cap = nc;
					}
					v[n++] = (struct sm_chunk_info){e->ino, e->v[k]->idx,
									e->v[k]->length};
				}
		pthread_mutex_unlock(&s->lock);
		/* the callback runs without our locks: it may call into the target */
		for (size_t i = 0; i < n; i++) {
			int r = cb(ctx, &v[i]);
			if (r) {
				free(v);
				return r;
			}
		}
	}
	free(v);
	return 0;
}

static int sm_block_counters(struct sm_target *t, struct sm_counters *ret)
{
	struct sm_block *b = blk_of(t);
	*ret = (struct sm_counters){
	    .csum_errors = __atomic_load_n(&b->st.csum_errors, __ATOMIC_RELAXED),
	    .bytes_read = __atomic_load_n(&b->st.bytes_read, __ATOMIC_RELAXED),
	    .bytes_written = __atomic_load_n(&b->st.bytes_written, __ATOMIC_RELAXED),
	    .syncs = __atomic_load_n(&b->st.syncs, __ATOMIC_RELAXED),
	    .flushes = __atomic_load_n(&b->st.flushes, __ATOMIC_RELAXED),
	};
	return 0;
}

static bool sm_block_serves(const char *url)
{
	return sm_dev_ops_for(url) != NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* for tests, fuzzers and the benchmark (sm_block_int.h) */

int sm_block_stats(struct sm_target *t, struct sm_block_stats *ret)
{
	struct sm_block *b = blk_of(t);
	struct sm_block_stats s;
	uint64_t *from = (uint64_t *)&b->st, *to = (uint64_t *)&s;
	for (size_t i = 0; i < sizeof(s) / sizeof(uint64_t); i++) /* every field is a uint64_t */
		to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
	pthread_mutex_lock(&b->alloc_lock);
	s.pending_blocks = b->npend;
	s.used_blocks = b->sb.data_blocks - b->nfree - b->npend;
	pthread_mutex_unlock(&b->alloc_lock);
	s.data_blocks = b->sb.data_blocks;
	s.chunks = __atomic_load_n(&b->nchunks, __ATOMIC_RELAXED);
	*ret = s;
	return 0;
}

uint64_t sm_block_phys(struct sm_target *t, uint64_t ino, uint32_t idx, uint32_t blk)
{
	uint64_t pb;
	uint32_t crc;
	blk_snapshot(blk_of(t), ino, idx, blk, 1, &pb, &crc, NULL);
	return pb & PB_MASK;
}

int sm_block_checkpoint(struct sm_target *t)
{
	return blk_checkpoint(blk_of(t));
}

int sm_block_check(struct sm_target *t, bool verify_data, char *why, size_t whylen)
{
	struct sm_block *b = blk_of(t);
	uint64_t d = b->sb.data_blocks;
	uint64_t *seen = calloc((d + 63) / 64, sizeof(uint64_t));
	uint8_t *data = sm_dev_alloc(SM_BLOCK_BS);
	int r = seen && data ? 0 : -ENOMEM;
	uint64_t mapped = 0;
	pthread_rwlock_wrlock(&b->apply_rw); /* no change in flight */
	for (unsigned si = 0; !r && si < SHARDS; si++) {
		struct blk_shard *s = &b->shards[si];
		pthread_mutex_lock(&s->lock);
		for (uint32_t h = 0; !r && h < s->nb; h++)
			for (struct blk_ino *e = s->b[h]; !r && e; e = e->next)
				for (uint32_t k = 0; !r && k < e->n; k++) {
					struct blk_chunk *c = e->v[k];
					if (k && e->v[k - 1]->idx >= c->idx) {
						snprintf(why, whylen,
							 "chunks of %" PRIu64 " out of order",
							 e->ino);
						r = -EBADMSG;
					}
					for (uint32_t i = 0; !r && i < c->cap; i++) {
						uint64_t pb = c->pb[i] & PB_MASK;
						if (!pb)
							continue;
						if (i >= blocks_of(c->length)) {
							snprintf(why, whylen,
								 "chunk %" PRIu64
								 ".%u maps block %u past "
								 "its length %u",
								 e->ino, c->idx, i, c->length);
							r = -EBADMSG;
						} else if (pb < b->lim.data_start ||
							   pb >= b->lim.data_end) {
							snprintf(why, whylen,
								 "chunk %" PRIu64
								 ".%u maps block %" PRIu64
								 " outside the data region",
								 e->ino, c->idx, pb);
							r = -EBADMSG;
						} else if (bm_test(seen, pb - b->lim.data_start)) {
							snprintf(why, whylen,
								 "block %" PRIu64
								 " is mapped twice",
								 pb);
							r = -EBADMSG;
						} else if (!bm_test(b->bitmap,
								    pb - b->lim.data_start)) {
							snprintf(
							    why, whylen,
							    "block %" PRIu64
							    " is mapped but free in the allocator",
							    pb);
							r = -EBADMSG;
						}
						if (r)
							break;
						bm_set(seen, pb - b->lim.data_start);
						mapped++;
						if (!verify_data || (c->pb[i] & PB_UNWRITTEN))
							continue;
						r = sm_dev_pread(b->dev, data, SM_BLOCK_BS,
								 pb * SM_BLOCK_BS);
						if (!r &&
						    crc32c(0, data, SM_BLOCK_BS) != c->crc[i]) {
							snprintf(why, whylen,
								 "chunk %" PRIu64
								 ".%u block %u: checksum "
								 "mismatch",
								 e->ino, c->idx, i);
							r = -EBADMSG;
						}
					}
				}
		pthread_mutex_unlock(&s->lock);
	}
	if (!r) {
		pthread_mutex_lock(&b->alloc_lock);
		uint64_t busy = 0;
		for (uint64_t i = 0; i < d; i++)
			busy += bm_test(b->bitmap, i);
		if (b->nfree + busy != d || busy != mapped + b->npend) {
			snprintf(why, whylen,
				 "allocator: %" PRIu64 " free + %" PRIu64 " in use of %" PRIu64
				 " blocks; %" PRIu64 " mapped + %zu pending",
				 b->nfree, busy, d, mapped, b->npend);
			r = -EBADMSG;
		}
		pthread_mutex_unlock(&b->alloc_lock);
	}
	pthread_rwlock_unlock(&b->apply_rw);
	free(seen);
	free(data);
	return r;
}

const struct sm_ops sm_block_ops = {
    .scheme = "block",
    .caps = SM_CAP_SPARSE | SM_CAP_PUNCH | SM_CAP_EXACT_CNT,
    .serves = sm_block_serves,
    .format = sm_block_format,
    .format_check = sm_block_format_check,
    .open = sm_block_open,
    .close = sm_block_close,
    .identity = sm_block_identity,
    .read = sm_block_read,
    .write = sm_block_write,
    .truncate = sm_block_truncate,
    .punch = sm_block_punch,
    .allocate = sm_block_allocate,
    .remove = sm_block_remove,
    .seek = sm_block_seek,
    .chunk_length = sm_block_chunk_length,
    .sync_ino = sm_block_sync_ino,
    .sync_all = sm_block_sync,
    .statfs = sm_block_statfs,
    .list = sm_block_list,
    .counters = sm_block_counters,
};
