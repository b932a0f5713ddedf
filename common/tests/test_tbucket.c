/* test_tbucket — the token bucket's long-run rate, its burst, debt, and rate 0, on a fake
 * clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/tbucket.h"

#define SEC 1000000000LL
#define MIB (1024 * 1024ULL)

/* Do `total` bytes in `piece` pieces, waiting as told; returns the fake time it took. */
static int64_t run(struct tbucket *tb, uint64_t total, uint64_t piece, int64_t t0)
{
	int64_t now = t0;
	for (uint64_t done = 0; done < total; done += piece)
		now += tb_take(tb, piece, now);
	return now - t0;
}

static void test_rate(void **state)
{
	(void)state;
	struct tbucket tb;
	tb_init(&tb, 8 * MIB, 0, 1000);
	/* 64 MiB at 8 MiB/s: 8 s less the initial burst of 0.8 MiB (0.1 s) */
	int64_t t = run(&tb, 64 * MIB, 1 * MIB, 1000);
	assert_true(t >= 7 * SEC + SEC / 2 && t <= 8 * SEC);
	/* the same with pieces far above the burst: debt, same long-run rate */
	tb_init(&tb, 8 * MIB, 0, 0);
	t = run(&tb, 64 * MIB, 16 * MIB, 0);
	assert_true(t >= 7 * SEC && t <= 8 * SEC);
}

static void test_burst_and_idle(void **state)
{
	(void)state;
	struct tbucket tb;
	tb_init(&tb, 1000, 500, 0);
	assert_int_equal(tb_take(&tb, 500, 0), 0); /* a full bucket */
	int64_t w = tb_take(&tb, 100, 0);	   /* empty: 100 tokens = 0.1 s */
	assert_true(w >= SEC / 10 && w <= SEC / 10 + 1);
	/* a long idle period refills only up to the burst */
	assert_int_equal(tb_take(&tb, 500, 100 * SEC), 0);
	w = tb_take(&tb, 1, 100 * SEC);
	assert_true(w > 0 && w <= SEC / 1000 + 1);
	/* a clock that goes backwards changes nothing */
	assert_true(tb_take(&tb, 0, 50 * SEC) > 0);
}

static void test_unlimited(void **state)
{
	(void)state;
	struct tbucket tb;
	tb_init(&tb, 0, 0, 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(tb_take(&tb, 1ULL << 40, 0), 0);
	tb_init(&tb, 5, 0, 0); /* a tiny rate still has a burst of at least one token */
	assert_int_equal(tb_take(&tb, 1, 0), 0);
	assert_true(tb_take(&tb, 1, 0) > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rate),
	    cmocka_unit_test(test_burst_and_idle),
	    cmocka_unit_test(test_unlimited),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
