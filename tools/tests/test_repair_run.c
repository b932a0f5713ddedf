/* repair_run over a real SQLite metadata database and two dir: targets: a resync takes its
 * chunks from dirty(chain, target), drops each batch once copied and synced, records progress
 * in repairs; one cut short leaves exactly the rows of what it did not copy, and the next run
 * finishes them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "tools/repair_run.h"

#define CS     (128 * 1024u)
#define VOLUME "11111111-2222-4333-8444-555555555555"
#define NREFS  2500 /* more than one page of dirty_list (RP_BATCH_MAX) */

struct fx {
	char dir[256];
	struct meta *m;
	struct sm_target *t[2];
	int cancel;
	uint64_t cancel_at;
	unsigned progress_calls;
};

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct meta_volume vol = {.chunk_size = CS, .replicas = 2, .format_version = 1};
	struct meta_target mt[2] = {0};
	struct meta_chain ch = {.id = 0, .epoch = 1, .nmembers = 2, .members = {1, 2}};
	char url[512], err[512] = "";

	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/braidfs-rr-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(vol.name, sizeof(vol.name), "v");
	snprintf(vol.uuid, sizeof(vol.uuid), VOLUME);
	for (int i = 0; i < 2; i++) {
		struct sm_identity id = {.format_version = SM_FORMAT_VERSION,
					 .target_id = (uint32_t)i + 1,
					 .chunk_size = CS};

		snprintf(id.volume_uuid, sizeof(id.volume_uuid), VOLUME);
		uuid_generate_str(id.target_uuid);
		snprintf(url, sizeof(url), "%s/t%d", f->dir, i);
		if (mkdir(url, 0700) < 0)
			return -1;
		mt[i].id = (uint32_t)i + 1;
		snprintf(mt[i].url, sizeof(mt[i].url), "dir:%s/t%d", f->dir, i);
		snprintf(mt[i].uuid, sizeof(mt[i].uuid), "%s", id.target_uuid);
		snprintf(mt[i].pool, sizeof(mt[i].pool), "dir");
		if (sm_format(mt[i].url, &id, false, err, sizeof(err)) < 0 ||
		    sm_open(mt[i].url, NULL, &f->t[i], err, sizeof(err)) < 0) {
			fprintf(stderr, "%s\n", err);
			return -1;
		}
	}
	snprintf(url, sizeof(url), "sqlite://%s/meta.db", f->dir);
	if (meta_open(url, META_O_CREATE, &f->m, err, sizeof(err)) < 0 ||
	    META_CALL(f->m, format, &vol, mt, 2, &ch, 1, 0, 0) < 0) {
		fprintf(stderr, "meta: %s\n", err);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	sm_close(f->t[0]);
	sm_close(f->t[1]);
	meta_close(f->m);
	nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void progress_cb(void *ctx, const struct rp_progress *p)
{
	struct fx *f = ctx;

	f->progress_calls++;
	if (f->cancel_at && p->chunks_done >= f->cancel_at)
		__atomic_store_n(&f->cancel, 1, __ATOMIC_RELEASE);
}

static uint64_t dirty_left(struct fx *f)
{
	uint64_t n = 0;

	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	return n;
}

static void t_resync_from_dirty(void **state)
{
	struct fx *f = *state;
	struct meta_chunk_ref *refs = calloc(NREFS, sizeof(*refs));
	char buf[512];
	struct meta_chain away = {.nmembers = 1, .members = {1}, .naway = 1, .away = {2}};
	struct meta_chain back = {.nmembers = 1, .members = {1}, .nsyncing = 1, .syncing = {2}};
	struct meta_repair rp[2];
	struct rp_progress p;
	char err[512] = "";

	assert_non_null(refs);
	/* target 2 is away; writes land on 1 only and are recorded dirty */
	assert_int_equal(META_CALL(f->m, chain_set, 0, 1, &away, NULL), 0);
	for (unsigned i = 0; i < NREFS; i++) {
		refs[i] = (struct meta_chunk_ref){1 + i / 100, i % 100};
		memset(buf, (int)(i & 0xff) | 1, sizeof(buf));
		assert_int_equal(f->t[0]->ops->write(f->t[0], refs[i].ino, (uint32_t)refs[i].idx,
						     buf, sizeof(buf), 0),
				 (ssize_t)sizeof(buf));
	}
	for (unsigned i = 0; i < NREFS; i += META_DIRTY_BATCH_MAX)
		assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, refs + i,
					   MIN(META_DIRTY_BATCH_MAX, NREFS - i)),
				 0);
	assert_int_equal(dirty_left(f), NREFS);
	/* it returns as syncing; the resync is cut short after 1,500 chunks */
	assert_int_equal(META_CALL(f->m, chain_set, 0, 2, &back, NULL), 0);
	struct rr_opts o = {.meta = f->m,
			    .chain = 0,
			    .target = 2,
			    .kind = RP_RESYNC,
			    .src = f->t[0],
			    .dst = f->t[1],
			    .progress = progress_cb,
			    .ctx = f,
			    .cancel = &f->cancel};
	f->cancel_at = 1500;
	assert_int_equal(rr_run(&o, &p, err, sizeof(err)), -ECANCELED);
	/* whole pages that were synced are gone; the rest (the cut page included) remain */
	assert_int_equal(p.chunks_done, 1500);
	assert_int_equal(dirty_left(f), NREFS - RP_BATCH_MAX);
	assert_int_equal(META_CALL(f->m, repairs_list, rp, 2), 1);
	assert_int_equal(rp[0].kind, META_REPAIR_RESYNC);
	assert_int_equal(rp[0].chunks_total, NREFS);
	assert_int_equal(rp[0].chunks_done, 1500);
	assert_int_equal(rp[0].bytes_done, 1500 * sizeof(buf));
	/* the next run finishes: nothing left, the row says done */
	f->cancel = 0;
	f->cancel_at = 0;
	assert_int_equal(rr_run(&o, &p, err, sizeof(err)), 0);
	assert_int_equal(p.chunks_done, NREFS - RP_BATCH_MAX);
	assert_int_equal(dirty_left(f), 0);
	assert_int_equal(META_CALL(f->m, repairs_list, rp, 2), 1);
	assert_int_equal(rp[0].chunks_done, rp[0].chunks_total);
	for (unsigned i = 0; i < NREFS; i++) {
		char a[512], b[512];

		assert_int_equal(f->t[0]->ops->read(f->t[0], refs[i].ino, (uint32_t)refs[i].idx, a,
						    sizeof(a), 0),
				 (ssize_t)sizeof(a));
		assert_int_equal(f->t[1]->ops->read(f->t[1], refs[i].ino, (uint32_t)refs[i].idx, b,
						    sizeof(b), 0),
				 (ssize_t)sizeof(b));
		assert_memory_equal(a, b, sizeof(a));
	}
	/* promotion drops the repairs row */
	assert_int_equal(META_CALL(f->m, chain_promote, 0, 3, 2, NULL), 0);
	assert_int_equal(META_CALL(f->m, repairs_list, rp, 2), 0);
	free(refs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(t_resync_from_dirty, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
