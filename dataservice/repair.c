/* repair — resync and rebuild of one destination target from one source (see repair.h).
 *
 * One run = one thread, one bucket, one 1 MiB buffer. For each chunk, in order:
 *   1. pay its length to the bucket, sleeping outside every lock (cancel checked in slices);
 *   2. under the caller's per-chunk lock: read the source's length, copy the bytes piece by
 *      piece (zero pieces punched), truncate the destination to the length (0: absent);
 *   3. count it, report progress when due.
 * resync syncs the destination after every batch and only then calls done(); rebuild removes
 * the destination's chunks of the chain that the source lacks, then syncs.
 */
#include "dataservice/repair.h"

#include "common/tbucket.h"
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct rp_run {
	const struct rp_opts *o;
	struct tbucket tb;
	struct rp_progress p;
	int64_t start_ns, last_report_ns;
	char *buf;
	char *err;
	size_t errlen;
};

const char *rp_kind_name(enum rp_kind k)
{
	return k == RP_RESYNC ? "resync" : k == RP_REBUILD ? "rebuild" : "?";
}

static bool rp_cancelled(const struct rp_opts *o)
{
	return o->cancel && __atomic_load_n(o->cancel, __ATOMIC_ACQUIRE);
}

/* Sleep ns in slices, -ECANCELED as soon as the run is cancelled. */
static int rp_sleep(const struct rp_opts *o, int64_t ns)
{
	while (ns > 0) {
		if (rp_cancelled(o))
			return -ECANCELED;
		int64_t slice = MIN(ns, 20 * 1000000LL);
		struct timespec ts = {(time_t)(slice / 1000000000), (long)(slice % 1000000000)};
		nanosleep(&ts, NULL);
		ns -= slice;
	}
	return rp_cancelled(o) ? -ECANCELED : 0;
}

static bool rp_all_zero(const char *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Bring the rate and the ETA up to date and call progress when due (or forced). */
static void rp_report(struct rp_run *x, bool force)
{
	const struct rp_opts *o = x->o;
	int64_t now = now_monotonic_ns();
	struct rp_progress *p = &x->p;

	p->elapsed_ns = now - x->start_ns;
	p->rate = p->elapsed_ns > 0 ? (uint64_t)((double)p->bytes_read * 1e9 / p->elapsed_ns) : 0;
	p->eta_ns = -1;
	if (p->chunks_done >= p->chunks_total && p->chunks_total)
		p->eta_ns = 0;
	else if (p->chunks_done > 0 && p->chunks_total > p->chunks_done)
		p->eta_ns = (int64_t)((double)p->elapsed_ns *
				      (double)(p->chunks_total - p->chunks_done) / p->chunks_done);
	if (!o->progress || (!force && now - x->last_report_ns < o->progress_ns))
		return;
	x->last_report_ns = now;
	o->progress(o->ctx, p);
}

/* Pay for `bytes` about to be read, outside every lock. */
static int rp_pace(struct rp_run *x, uint64_t bytes)
{
	return rp_sleep(x->o, tb_take(&x->tb, bytes, now_monotonic_ns()));
}

int rp_copy_range(struct sm_target *src, struct sm_target *dst, uint64_t ino, uint32_t idx,
		  uint64_t len, char *buf, struct rp_copy *ret)
{
	int r;

	*ret = (struct rp_copy){.len = len};
	for (uint64_t off = 0; off < len; off += RP_PIECE) {
		size_t n = (size_t)MIN((uint64_t)RP_PIECE, len - off);
		ssize_t k = src->ops->read(src, ino, idx, buf, n, off);

		if (k < 0) {
			ret->what = "read";
			return (int)k;
		}
		ret->bytes_read += n;
		bool zero = rp_all_zero(buf, n);
		r = zero ? dst->ops->punch(dst, ino, idx, off, n)
			 : (int)dst->ops->write(dst, ino, idx, buf, n, off);
		if (r < 0) {
			ret->what = "write";
			ret->dst_failed = true;
			return r;
		}
		if (!zero)
			ret->bytes_written += n;
	}
	/* len 0: truncating removes it (SM-2: reads give zeros either way) */
	r = dst->ops->truncate(dst, ino, idx, len);
	if (r < 0) {
		ret->what = "truncate";
		ret->dst_failed = true;
	}
	return r;
}

int rp_copy_chunk(struct sm_target *src, struct sm_target *dst, uint64_t ino, uint32_t idx,
		  char *buf, struct rp_copy *ret)
{
	uint64_t len = 0;
	int r = src->ops->chunk_length(src, ino, idx, &len);
	bool absent = r == -ENOENT;

	if (r < 0 && !absent) {
		*ret = (struct rp_copy){.len = len, .what = "read the length of"};
		return r;
	}
	r = rp_copy_range(src, dst, ino, idx, absent ? 0 : len, buf, ret);
	ret->absent = absent;
	return r;
}

/* One chunk: pace, lock, copy, unlock, count. `expect` is the length the listing gave (the
 * bucket is paid that much before; what is read beyond it is paid after). */
static int rp_chunk(struct rp_run *x, uint64_t ino, uint32_t idx, uint64_t expect)
{
	const struct rp_opts *o = x->o;
	struct rp_copy c;
	int r;

	if (rp_cancelled(o))
		return -ECANCELED;
	r = rp_pace(x, expect);
	if (r < 0)
		return r;
	if (o->lock)
		o->lock(o->ctx, ino, idx, true);
	r = rp_copy_chunk(o->src, o->dst, ino, idx, x->buf, &c);
	if (o->lock)
		o->lock(o->ctx, ino, idx, false);
	x->p.bytes_read += c.bytes_read;
	x->p.bytes_written += c.bytes_written;
	if (r < 0) {
		set_err(x->err, x->errlen, "%s: cannot %s chunk %llu.%u on target %s: %s",
			rp_kind_name(o->kind), c.what, (unsigned long long)ino, idx,
			c.dst_failed ? o->dst->url : o->src->url, strerror(-r));
		return r;
	}
	if (c.bytes_read > expect)
		tb_take(&x->tb, c.bytes_read - expect, now_monotonic_ns());
	if (c.absent)
		x->p.removed++;
	x->p.chunks_done++;
	x->p.bytes_done += c.len;
	rp_report(x, false);
	return 0;
}

static int rp_sync(struct rp_run *x)
{
	struct sm_target *d = x->o->dst;
	int r = d->ops->sync_all(d);

	if (r < 0)
		set_err(x->err, x->errlen, "%s: cannot sync target %s: %s",
			rp_kind_name(x->o->kind), d->url, strerror(-r));
	return r;
}

static int rp_resync(struct rp_run *x)
{
	const struct rp_opts *o = x->o;
	struct rp_ref *refs = calloc(RP_BATCH_MAX, sizeof(*refs));
	int n, r = 0;

	if (!refs)
		return -ENOMEM;
	while ((n = o->next(o->ctx, refs, RP_BATCH_MAX)) > 0) {
		if (n > RP_BATCH_MAX) {
			r = -EINVAL;
			set_err(x->err, x->errlen, "resync: the source of chunk refs gave %d > %d",
				n, RP_BATCH_MAX);
			break;
		}
		for (int i = 0; i < n && r == 0; i++)
			r = rp_chunk(x, refs[i].ino, refs[i].idx, 0);
		if (r == 0)
			r = rp_sync(x);
		if (r == 0 && o->done) {
			r = o->done(o->ctx, refs, (unsigned)n);
			if (r < 0)
				set_err(x->err, x->errlen,
					"resync: recording %d copied chunks failed: %s", n,
					strerror(-r));
		}
		if (r < 0)
			break;
		if (x->p.chunks_done > x->p.chunks_total)
			x->p.chunks_total = x->p.chunks_done;
	}
	if (n < 0 && r == 0) {
		r = n;
		set_err(x->err, x->errlen, "resync: cannot read the chunks to copy: %s",
			strerror(-r));
	}
	free(refs);
	return r;
}

/* ---- rebuild: the chunks of the chain on each side ---- */

struct rp_ent {
	uint64_t ino;
	uint32_t idx;
	uint64_t length;
};

struct rp_list {
	const struct rp_opts *o;
	struct rp_ent *v;
	size_t n, cap;
};

static int rp_collect(void *ctx, const struct sm_chunk_info *ci)
{
	struct rp_list *l = ctx;

	if (l->o->belongs && !l->o->belongs(l->o->ctx, ci->ino, ci->idx))
		return 0;
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 1024;
		struct rp_ent *v = realloc(l->v, nc * sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = nc;
	}
	l->v[l->n++] = (struct rp_ent){ci->ino, ci->idx, ci->length};
	return 0;
}

static int rp_ent_cmp(const void *a, const void *b)
{
	const struct rp_ent *x = a, *y = b;

	if (x->ino != y->ino)
		return x->ino < y->ino ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int rp_list_of(struct rp_run *x, struct sm_target *t, struct rp_list *l)
{
	int r = t->ops->list(t, rp_collect, l);

	if (r < 0) {
		set_err(x->err, x->errlen, "rebuild: cannot list the chunks of target %s: %s",
			t->url, strerror(-r));
		return r;
	}
	if (l->n)
		qsort(l->v, l->n, sizeof(*l->v), rp_ent_cmp);
	return 0;
}

static int rp_rebuild(struct rp_run *x)
{
	struct rp_list src = {.o = x->o}, dst = {.o = x->o};
	int r = rp_list_of(x, x->o->src, &src);

	if (r == 0)
		r = rp_list_of(x, x->o->dst, &dst);
	if (r < 0)
		goto out;
	x->p.chunks_total = src.n;
	for (size_t i = 0; i < src.n; i++)
		x->p.bytes_total += src.v[i].length;
	rp_report(x, true);
	for (size_t i = 0; i < src.n && r == 0; i++)
		r = rp_chunk(x, src.v[i].ino, src.v[i].idx, src.v[i].length);
	/* stale: on the destination, not on the source (when listed). Copying it is removing it,
	 * or, if a write created it on the source meanwhile, copying the new bytes. */
	for (size_t i = 0; i < dst.n && r == 0; i++) {
		struct rp_ent key = dst.v[i];

		if (src.n && bsearch(&key, src.v, src.n, sizeof(*src.v), rp_ent_cmp))
			continue;
		x->p.chunks_total++;
		r = rp_chunk(x, key.ino, key.idx, 0);
	}
	if (r == 0)
		r = rp_sync(x);
out:
	free(src.v);
	free(dst.v);
	return r;
}

int rp_run(const struct rp_opts *o, struct rp_progress *ret, char *err, size_t errlen)
{
	char dummy[8];
	struct rp_run x = {.o = o, .err = err, .errlen = errlen};
	int r;

	if (!err || !errlen) {
		x.err = dummy;
		x.errlen = sizeof(dummy);
	}
	x.err[0] = '\0';
	if (!o || !o->src || !o->dst || o->src == o->dst ||
	    (o->kind != RP_RESYNC && o->kind != RP_REBUILD) || (o->kind == RP_RESYNC && !o->next)) {
		set_err(x.err, x.errlen, "repair: bad arguments");
		return -EINVAL;
	}
	x.buf = malloc(RP_PIECE);
	if (!x.buf) {
		set_err(x.err, x.errlen, "repair: out of memory");
		return -ENOMEM;
	}
	x.start_ns = x.last_report_ns = now_monotonic_ns();
	tb_init(&x.tb, o->rate, o->burst, x.start_ns);
	x.p.kind = o->kind;
	x.p.chunks_total = o->kind == RP_RESYNC ? o->chunks_hint : 0;
	if (o->kind == RP_RESYNC) {
		rp_report(&x, true);
		r = rp_resync(&x);
	} else {
		r = rp_rebuild(&x);
	}
	if (r == -ECANCELED)
		set_err(x.err, x.errlen, "%s: cancelled", rp_kind_name(o->kind));
	x.p.finished = r == 0;
	if (r == 0 && x.p.chunks_total < x.p.chunks_done)
		x.p.chunks_total = x.p.chunks_done;
	rp_report(&x, true);
	free(x.buf);
	if (ret)
		*ret = x.p;
	return r;
}
