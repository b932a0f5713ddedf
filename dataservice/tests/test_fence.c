/* test_fence — the self-fencing clock (fence.h, DIST-4) on a fake monotonic clock. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "dataservice/fence.h"

#define MS 1000000LL

static void test_lease_counts_from_the_send(void **state)
{
	(void)state;
	struct fence f;
	fence_init(&f);
	assert_false(fence_valid(&f, 0)); /* never renewed: fenced */
	/* a renewal sent at 100 ms, answered at 400 ms, lease 1000 ms: valid until 1100 */
	assert_true(fence_renewed(&f, 100 * MS, 1000, true, 400 * MS));
	assert_true(fence_valid(&f, 1099 * MS));
	assert_false(fence_valid(&f, 1100 * MS));
	/* a later renewal extends; an older one (answered late, out of order) never shortens */
	assert_true(fence_renewed(&f, 600 * MS, 1000, false, 700 * MS));
	assert_true(fence_valid(&f, 1599 * MS));
	assert_true(fence_renewed(&f, 200 * MS, 1000, false, 800 * MS));
	assert_true(fence_valid(&f, 1599 * MS));
	assert_false(fence_valid(&f, 1600 * MS));
}

static void test_lapsed_needs_a_refresh(void **state)
{
	(void)state;
	struct fence f;
	fence_init(&f);
	fence_renewed(&f, 0, 1000, true, 0);
	assert_true(fence_lapsed(&f, 1000 * MS));
	/* the renewal succeeded but the chains were not re-read: still fenced */
	assert_false(fence_renewed(&f, 1200 * MS, 1000, false, 1300 * MS));
	assert_false(fence_valid(&f, 1300 * MS));
	/* renewal and refresh: valid again */
	assert_true(fence_renewed(&f, 1400 * MS, 1000, true, 1500 * MS));
	assert_true(fence_valid(&f, 2399 * MS));
	/* a renewal that took longer than the lease leaves the node fenced */
	fence_init(&f);
	assert_false(fence_renewed(&f, 0, 1000, true, 1000 * MS));
	/* dropped: at once */
	fence_renewed(&f, 5000 * MS, 1000, true, 5000 * MS);
	fence_drop(&f);
	assert_false(fence_valid(&f, 5000 * MS));
}

/* The read lease of a secondary: a removal committed at 1000 ms holds acknowledgements until
 * 1500 ms (lease 500); the removed member, whose last table read was sent at 900 ms (before the
 * commit), serves no read from 1400 ms on, so none after the first acknowledgement. */
static void test_reads_lease(void **state)
{
	(void)state;
	struct fence_reads r = {0};
	assert_false(fence_reads_ok(&r, 1, 500)); /* never read: no local reads */
	fence_reads_table(&r, 900 * MS);
	assert_true(fence_reads_ok(&r, 1399 * MS, 500));
	assert_false(fence_reads_ok(&r, 1400 * MS, 500));
	fence_reads_table(&r, 800 * MS); /* an older read answered late never shortens it */
	assert_true(fence_reads_ok(&r, 1399 * MS, 500));
	/* the primary's side */
	int64_t hold = 0;
	assert_int_equal(fence_reads_wait_ns(&hold, 0), 0);
	fence_reads_hold(&hold, 1000 * MS, 500);
	assert_int_equal(fence_reads_wait_ns(&hold, 1200 * MS), 300 * MS);
	assert_int_equal(fence_reads_wait_ns(&hold, 1500 * MS), 0);
	fence_reads_hold(&hold, 900 * MS, 500); /* an earlier removal does not shorten the hold */
	assert_int_equal(fence_reads_wait_ns(&hold, 1400 * MS), 100 * MS);
	/* every read lease still valid when the hold ends was sent after the commit */
	int64_t hold_end = 1000 * MS + fence_reads_wait_ns(&hold, 1000 * MS);
	for (int64_t sent = 0; sent < 2000 * MS; sent += 10 * MS) {
		struct fence_reads m = {0};
		fence_reads_table(&m, sent);
		if (fence_reads_ok(&m, hold_end, 500))
			assert_true(sent > 1000 * MS);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lease_counts_from_the_send),
	    cmocka_unit_test(test_lapsed_needs_a_refresh),
	    cmocka_unit_test(test_reads_lease),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
