/* repair_run — the repair engine fed by dirty(chain, target) and reporting into repairs (see
 * repair_run.h). */
#include "tools/repair_run.h"

#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct rr {
	const struct rr_opts *o;
	struct meta_chunk_ref cursor; /* the last ref handed out */
	bool started;		      /* cursor is valid */
	int64_t last_report_ns;
	struct meta_chunk_ref batch[RP_BATCH_MAX];
};

static void rr_report(struct rr *x, const struct rp_progress *p, bool force)
{
	const struct rr_opts *o = x->o;
	int64_t now = now_monotonic_ns();
	int64_t every = o->report_ns ? o->report_ns : 1000000000;
	struct meta_repair row = {.chain = o->chain,
				  .target = o->target,
				  .kind = p->kind == RP_RESYNC ? META_REPAIR_RESYNC
							       : META_REPAIR_REBUILD,
				  .chunks_total = p->chunks_total,
				  .chunks_done = p->chunks_done,
				  .bytes_done = p->bytes_done,
				  .rate = p->rate};
	int r;

	if (!force && now - x->last_report_ns < every)
		return;
	x->last_report_ns = now;
	r = META_CALL(o->meta, repair_set, &row);
	if (r < 0)
		log_debug("repair of target %u in chain %u: cannot record progress: %s", o->target,
			  o->chain, strerror(-r));
}

static void rr_progress(void *ctx, const struct rp_progress *p)
{
	struct rr *x = ctx;

	rr_report(x, p, p->chunks_done == 0 || p->finished);
	if (x->o->progress)
		x->o->progress(x->o->ctx, p);
}

static int rr_next(void *ctx, struct rp_ref *ret, unsigned max)
{
	struct rr *x = ctx;
	int n = META_CALL(x->o->meta, dirty_list, x->o->chain, x->o->target,
			  x->started ? &x->cursor : NULL, x->batch, MIN(max, RP_BATCH_MAX));

	for (int i = 0; i < n; i++) {
		if (x->batch[i].idx > UINT32_MAX)
			return -EBADMSG; /* a chunk index the data path cannot address */
		ret[i] = (struct rp_ref){x->batch[i].ino, (uint32_t)x->batch[i].idx};
	}
	if (n > 0) {
		x->cursor = x->batch[n - 1];
		x->started = true;
	}
	return n;
}

static int rr_done(void *ctx, const struct rp_ref *refs, unsigned n)
{
	struct rr *x = ctx;

	for (unsigned i = 0; i < n; i++)
		x->batch[i] = (struct meta_chunk_ref){refs[i].ino, refs[i].idx};
	return n ? META_CALL(x->o->meta, dirty_remove, x->o->chain, x->o->target, x->batch, n) : 0;
}

static bool rr_belongs(void *ctx, uint64_t ino, uint32_t idx)
{
	struct rr *x = ctx;

	return x->o->belongs(x->o->ctx, ino, idx);
}

static void rr_lock(void *ctx, uint64_t ino, uint32_t idx, bool lock)
{
	struct rr *x = ctx;

	x->o->lock(x->o->ctx, ino, idx, lock);
}

int rr_run(const struct rr_opts *o, struct rp_progress *ret, char *err, size_t errlen)
{
	struct rr *x = calloc(1, sizeof(*x));
	uint64_t hint = 0;
	int r;

	if (!x) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	x->o = o;
	if (o->kind == RP_RESYNC) {
		r = META_CALL(o->meta, dirty_count, o->chain, o->target, &hint);
		if (r < 0) {
			set_err(err, errlen,
				"cannot count the dirty chunks of target %u in chain %u: %s",
				o->target, o->chain, strerror(-r));
			free(x);
			return r;
		}
	}
	struct rp_opts ro = {.kind = o->kind,
			     .src = o->src,
			     .dst = o->dst,
			     .rate = o->rate,
			     .next = rr_next,
			     .done = rr_done,
			     .chunks_hint = hint,
			     .belongs = o->belongs ? rr_belongs : NULL,
			     .lock = o->lock ? rr_lock : NULL,
			     .progress = rr_progress,
			     .progress_ns = 0,
			     .ctx = x,
			     .cancel = o->cancel};
	struct rp_progress p = {0};
	r = rp_run(&ro, &p, err, errlen);
	rr_report(x, &p, true); /* the last word, also after a failure */
	if (ret)
		*ret = p;
	free(x);
	return r;
}
