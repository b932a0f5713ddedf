/* tbucket — see tbucket.h. */
#include "common/tbucket.h"

void tb_init(struct tbucket *tb, uint64_t rate, uint64_t burst, int64_t now_ns)
{
	tb->rate = rate;
	tb->burst = burst ? (double)burst : (double)(rate / 10 ? rate / 10 : 1);
	tb->tokens = tb->burst;
	tb->last_ns = now_ns;
}

int64_t tb_take(struct tbucket *tb, uint64_t n, int64_t now_ns)
{
	if (!tb->rate)
		return 0;
	if (now_ns > tb->last_ns) {
		tb->tokens += (double)(now_ns - tb->last_ns) * (double)tb->rate / 1e9;
		if (tb->tokens > tb->burst)
			tb->tokens = tb->burst;
		tb->last_ns = now_ns;
	}
	tb->tokens -= (double)n;
	if (tb->tokens >= 0)
		return 0;
	/* the debt is paid off when the bucket has refilled to zero */
	double wait = -tb->tokens * 1e9 / (double)tb->rate;
	return wait > 9.2e18 ? INT64_MAX : (int64_t)wait + 1;
}
