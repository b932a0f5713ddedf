/* tbucket — a token bucket that paces background work (scrub, later resync and rebuild) to a
 * byte rate, so that it cannot starve the I/O of applications.
 *
 * The bucket fills at `rate` tokens (bytes) per second up to `burst`. A job asks for the
 * tokens of its next piece of work before doing it; it may ask for more than `burst` (the
 * bucket goes into debt), and is told how long to wait first. Over any run the work done is
 * at most burst + rate * elapsed: the long-run rate is exact, the burst bounded.
 *
 * The clock is the caller's (monotonic nanoseconds), so that tests need no sleeping.
 * Not thread-safe: one bucket per job.
 */
#ifndef BRAIDFS_TBUCKET_H
#define BRAIDFS_TBUCKET_H

#include <stdint.h>

struct tbucket {
	uint64_t rate;	 /* tokens per second; 0 = unlimited */
	double burst;	 /* most tokens the bucket holds */
	double tokens;	 /* may be negative (debt) */
	int64_t last_ns; /* when tokens was last brought up to date */
};

/* A full bucket at now_ns. rate 0: every take answers 0. burst 0: rate / 10 (a tenth of a
 * second of work), at least 1. */
void tb_init(struct tbucket *tb, uint64_t rate, uint64_t burst, int64_t now_ns);
/* Take n tokens at now_ns; returns the nanoseconds to wait before the work they pay for
 * starts (0: at once). */
int64_t tb_take(struct tbucket *tb, uint64_t n, int64_t now_ns);

#endif
