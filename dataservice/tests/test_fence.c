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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lease_counts_from_the_send),
	    cmocka_unit_test(test_lapsed_needs_a_refresh),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
