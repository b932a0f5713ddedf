/* test_fs_loop — the leader/follower request loop (fs/fs_loop.c) fed from a pipe: cheap
 * requests stay on one thread, requests that may wait never hold up the ones behind them
 * (by kind, by learned cost, by wait_hint()), the loop ends on end of input, on a device
 * error and on ended(), and a request being handled is finished before it returns. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "fs/fs_loop.h"

enum { FAST, BLOCK, HINT_BLOCK, SLEEP_2MS, FAIL };

struct msg {
	uint32_t kind;
	uint32_t action;
};

#define MAX_TIDS 64

static struct {
	int rfd, wfd;
	sem_t release; /* BLOCK / HINT_BLOCK requests wait for one post each */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	unsigned done;	  /* requests handled */
	unsigned blocked; /* BLOCK / HINT_BLOCK requests now waiting */
	pthread_t tids[MAX_TIDS];
	unsigned ntids; /* distinct threads that handled a request */
	volatile int ended;
} g;

static int f_receive(void *ctx, void *buf)
{
	(void)ctx;
	ssize_t n = read(g.rfd, buf, sizeof(struct msg));
	if (n < 0)
		return -errno;
	if (n == 0)
		return 0;
	assert_int_equal(n, sizeof(struct msg));
	if (((struct msg *)buf)->action == FAIL)
		return -EIO;
	return (int)n;
}

static unsigned f_kind(void *ctx, const void *buf)
{
	(void)ctx;
	return ((const struct msg *)buf)->kind;
}

static void f_process(void *ctx, void *buf)
{
	(void)ctx;
	struct msg *m = buf;
	if (m->action == BLOCK || m->action == HINT_BLOCK) {
		if (m->action == HINT_BLOCK)
			wait_hint();
		pthread_mutex_lock(&g.lock);
		g.blocked++;
		pthread_cond_broadcast(&g.cv);
		pthread_mutex_unlock(&g.lock);
		sem_wait(&g.release);
		pthread_mutex_lock(&g.lock);
		g.blocked--;
		pthread_mutex_unlock(&g.lock);
	} else if (m->action == SLEEP_2MS) {
		struct timespec ts = {0, 2 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	pthread_mutex_lock(&g.lock);
	pthread_t me = pthread_self();
	bool seen = false;
	for (unsigned i = 0; i < g.ntids; i++)
		seen = seen || pthread_equal(g.tids[i], me);
	if (!seen && g.ntids < MAX_TIDS)
		g.tids[g.ntids++] = me;
	g.done++;
	pthread_cond_broadcast(&g.cv);
	pthread_mutex_unlock(&g.lock);
}

static bool f_ended(void *ctx)
{
	(void)ctx;
	return g.ended != 0;
}

static bool f_ready(void *ctx)
{
	(void)ctx;
	struct pollfd p = {.fd = g.rfd, .events = POLLIN};
	return poll(&p, 1, 0) != 0;
}

static const struct lf_ops ops = {
    .receive = f_receive, .kind = f_kind, .process = f_process, .ended = f_ended, .ready = f_ready};

static int setup(void **state)
{
	(void)state;
	memset(&g, 0, sizeof(g));
	int p[2];
	assert_int_equal(pipe(p), 0);
	g.rfd = p[0];
	g.wfd = p[1];
	sem_init(&g.release, 0, 0);
	pthread_mutex_init(&g.lock, NULL);
	assert_int_equal(cond_init_monotonic(&g.cv), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (g.wfd >= 0)
		close(g.wfd);
	close(g.rfd);
	sem_destroy(&g.release);
	pthread_cond_destroy(&g.cv);
	pthread_mutex_destroy(&g.lock);
	return 0;
}

static void send_msg(uint32_t kind, uint32_t action)
{
	struct msg m = {kind, action};
	assert_int_equal(write(g.wfd, &m, sizeof(m)), sizeof(m));
}

static void end_input(void)
{
	close(g.wfd);
	g.wfd = -1;
}

/* Wait up to 20 s until *field >= want; false on timeout. */
static bool wait_for(const unsigned *field, unsigned want)
{
	int64_t deadline = now_monotonic_ns() + 20LL * 1000000000;
	pthread_mutex_lock(&g.lock);
	while (*field < want && now_monotonic_ns() < deadline)
		cond_wait_until(&g.cv, &g.lock, deadline);
	bool ok = *field >= want;
	pthread_mutex_unlock(&g.lock);
	return ok;
}

struct runner {
	pthread_t t;
	struct lf_config cfg;
	struct lf_stats st;
	int ret;
	volatile int finished;
};

static void *run_main(void *arg)
{
	struct runner *r = arg;
	r->ret = lf_run(&ops, NULL, &r->cfg, &r->st);
	r->finished = 1;
	return NULL;
}

static struct lf_kind_count *start_counts; /* the next start()'s counters (then NULL again) */
static uint32_t start_spin_ns;		   /* the next start()'s spin (then 0 again) */

static void start(struct runner *r, unsigned max_threads, uint32_t inline_ns, uint64_t always_off)
{
	memset(r, 0, sizeof(*r));
	r->cfg = (struct lf_config){.max_threads = max_threads,
				    .inline_ns = inline_ns,
				    .always_off = always_off,
				    .buf_size = sizeof(struct msg),
				    .counts = start_counts,
				    .spin_ns = start_spin_ns,
				    .spin_kinds = 1ull << 1};
	start_counts = NULL;
	start_spin_ns = 0;
	assert_int_equal(pthread_create(&r->t, NULL, run_main, r), 0);
}

static int finish(struct runner *r)
{
	pthread_join(r->t, NULL);
	return r->ret;
}

/* Cheap requests are read and handled by one thread: no hand-off, no second worker. */
static void test_cheap_stay_on_one_thread(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 8, 1000 * 1000 * 1000, 0);
	for (int i = 0; i < 2000; i++)
		send_msg(1, FAST);
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_int_equal(g.done, 2000);
	assert_int_equal(r.st.requests, 2000);
	assert_int_equal(r.st.handed_off, 0);
	assert_int_equal(r.st.threads, 1);
	assert_int_equal(g.ntids, 1);
}

/* The caller's counters get every handled request of a kind below LF_KINDS, with the time
 * its process() took; kinds from LF_KINDS up are handled but not counted. */
static void test_counts_by_kind(void **state)
{
	(void)state;
	static struct lf_kind_count counts[LF_KINDS];
	memset(counts, 0, sizeof(counts));
	struct runner r;
	start_counts = counts;
	start(&r, 4, 1000 * 1000 * 1000, 0);
	for (int i = 0; i < 50; i++)
		send_msg(1, FAST);
	for (int i = 0; i < 3; i++)
		send_msg(4, SLEEP_2MS);
	send_msg(LF_KINDS, FAST);
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_int_equal(g.done, 54);
	uint64_t total = 0;
	for (unsigned k = 0; k < LF_KINDS; k++)
		total += counts[k].count;
	assert_int_equal(total, 53);
	assert_int_equal(counts[1].count, 50);
	assert_int_equal(counts[4].count, 3);
	assert_true(counts[4].ns >= 3 * 2000000ull);
	assert_true(counts[1].ns < counts[4].ns);
}

/* A kind marked always_off is handled by another worker: the requests behind it are read
 * and handled while it waits. */
static void test_always_off_does_not_hold_up_the_rest(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 8, 1000 * 1000 * 1000, 1ull << 2);
	send_msg(2, BLOCK);
	assert_true(wait_for(&g.blocked, 1));
	for (int i = 0; i < 100; i++)
		send_msg(1, FAST);
	assert_true(wait_for(&g.done, 100)); /* while the first one still waits */
	assert_int_equal(g.blocked, 1);
	sem_post(&g.release);
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_int_equal(g.done, 101);
	assert_int_equal(r.st.handed_off, 1);
	assert_true(r.st.threads >= 2);
}

/* A request handled on the reader's place that reaches wait_hint() gives the place up. */
static void test_wait_hint_gives_up_the_reader(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 8, 1000 * 1000 * 1000, 0);
	send_msg(3, HINT_BLOCK);
	assert_true(wait_for(&g.blocked, 1));
	for (int i = 0; i < 100; i++)
		send_msg(1, FAST);
	assert_true(wait_for(&g.done, 100));
	sem_post(&g.release);
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_int_equal(g.done, 101);
	assert_int_equal(r.st.handed_off, 0);
	assert_int_equal(r.st.hinted, 1);
	assert_true(r.st.threads >= 2);
}

/* A synchronous client (one request at a time) whose every other request waits: once
 * that share is learned, a second reader stays in read(), so a request that waits finds
 * it there and wakes nobody. When the waits stop, the spare reader retires and cheap
 * requests stay on one thread again. */
static void test_spare_reader_while_requests_wait(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 8, 1000 * 1000 * 1000, 1ull << 2);
	unsigned n = 0;
	for (int i = 0; i < 200; i++) {
		send_msg(1, FAST);
		assert_true(wait_for(&g.done, ++n));
		send_msg(2, FAST); /* kind 2: always handed off */
		assert_true(wait_for(&g.done, ++n));
	}
	for (int i = 0; i < 300; i++) {
		send_msg(1, FAST);
		assert_true(wait_for(&g.done, ++n));
	}
	/* the last 100 cheap requests: one thread */
	pthread_mutex_lock(&g.lock);
	g.ntids = 0;
	pthread_mutex_unlock(&g.lock);
	for (int i = 0; i < 100; i++) {
		send_msg(1, FAST);
		assert_true(wait_for(&g.done, ++n));
	}
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_int_equal(r.st.handed_off, 200);
	/* one reader throughout: a wake-up for each of the 200 hand-offs */
	assert_true(r.st.woken < 20);
	assert_int_equal(g.ntids, 1);
}

static void pause_us(long us)
{
	struct timespec ts = {0, us * 1000};
	nanosleep(&ts, NULL);
}

/* A synchronous client sends each request once the last is answered, 200 of kind 1 (in
 * spin_kinds) then 50 of kind 3 (not): how many the loop found while it spun. */
static uint64_t spun_for_sync_client(uint32_t spin_ns)
{
	struct runner r;
	start_spin_ns = spin_ns;
	start(&r, 8, 1000 * 1000 * 1000, 0);
	for (unsigned n = 1; n <= 200; n++) {
		send_msg(1, FAST);
		assert_true(wait_for(&g.done, n));
		pause_us(300); /* the reader is back in its loop (a request it finds there
				* already was no wait to save, and is not counted) */
	}
	for (unsigned n = 201; n <= 250; n++) {
		send_msg(3, FAST);
		assert_true(wait_for(&g.done, n));
	}
	end_input();
	assert_int_equal(finish(&r), 0);
	return r.st.spun;
}

/* The only reader, spinning after a kind in spin_kinds, finds each next request without
 * sleeping in receive; after other kinds it does not spin. */
static void test_spin_catches_the_next_request(void **state)
{
	(void)state;
	/* 500 ms: far beyond the client's gap. Up to 199 of the first 200 and 1 after the
	 * first kind 3, none after it; fewer when a loaded machine left the reader off its CPU
	 * longer than the pause. */
	uint64_t spun = spun_for_sync_client(500u * 1000 * 1000);
	assert_true(spun >= 100 && spun <= 200);
}

/* Without spin_ns no request is found while spinning. */
static void test_no_spin_without_spin_ns(void **state)
{
	(void)state;
	assert_int_equal(spun_for_sync_client(0), 0);
}

/* No spin while a request waits off the reader's place: another reader is (or will be)
 * asleep in read(), and the kernel wakes it for the next request anyway. */
static void test_no_spin_while_a_request_waits(void **state)
{
	(void)state;
	struct runner r;
	start_spin_ns = 500u * 1000 * 1000;
	start(&r, 8, 1000 * 1000 * 1000, 1ull << 2);
	send_msg(2, BLOCK);
	assert_true(wait_for(&g.blocked, 1));
	for (unsigned n = 1; n <= 50; n++) {
		send_msg(1, FAST);
		assert_true(wait_for(&g.done, n));
	}
	sem_post(&g.release);
	assert_true(wait_for(&g.done, 51));
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_true(r.st.spun <= 1); /* the one after the release, if the loop got there first */
}

/* A kind that takes longer than inline_ns on average is handed off from then on. */
static void test_cost_is_learned(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 8, 100 * 1000, 0);
	for (unsigned i = 1; i <= 20; i++) {
		send_msg(4, SLEEP_2MS);
		send_msg(1, FAST);
		assert_true(wait_for(&g.done, 2 * i)); /* one at a time: each cost is known */
	}
	end_input();
	assert_int_equal(finish(&r), 0);
	/* the first 2 ms sample makes the mean 250 us (1/8 weight): every later one goes */
	assert_true(r.st.handed_off >= 19); /* more only if a FAST one took > 800 us */
	assert_int_equal(r.st.requests, 40);
}

/* max_threads 1: one thread reads and handles everything, even kinds that may wait. */
static void test_one_thread(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 1, 0, ~0ull);
	for (int i = 0; i < 50; i++)
		send_msg(i % 3 ? 1 : 2, FAST);
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_int_equal(g.done, 50);
	assert_int_equal(r.st.handed_off, 0);
	assert_int_equal(r.st.threads, 1);
	assert_int_equal(g.ntids, 1);
}

/* More waiting requests than workers: they queue, and all are handled once released. */
static void test_more_waits_than_workers(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 3, 1000 * 1000 * 1000, 1ull << 2);
	for (int i = 0; i < 6; i++)
		send_msg(2, BLOCK);
	assert_true(wait_for(&g.blocked, 3)); /* every worker waits; the rest stay in the pipe */
	for (int i = 0; i < 6; i++)
		sem_post(&g.release);
	assert_true(wait_for(&g.done, 6));
	end_input();
	assert_int_equal(finish(&r), 0);
	assert_int_equal(r.st.threads, 3);
}

/* ended() stops a loop whose reader waits in receive (it is cancelled there), but only
 * after the request being handled is done. */
static void test_ended_waits_for_the_request_in_hand(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 4, 1000 * 1000 * 1000, 1ull << 2);
	send_msg(2, BLOCK);
	assert_true(wait_for(&g.blocked, 1));
	g.ended = 1;
	struct timespec ts = {0, 400 * 1000 * 1000}; /* ended() is polled every 100 ms */
	nanosleep(&ts, NULL);
	assert_int_equal(r.finished, 0);
	sem_post(&g.release);
	assert_int_equal(finish(&r), 0);
	assert_int_equal(g.done, 1);
}

/* A device error ends the loop with that error. */
static void test_device_error(void **state)
{
	(void)state;
	struct runner r;
	start(&r, 4, 1000 * 1000 * 1000, 0);
	send_msg(1, FAST);
	send_msg(1, FAIL);
	assert_int_equal(finish(&r), -EIO);
	assert_int_equal(g.done, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_cheap_stay_on_one_thread, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_counts_by_kind, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_always_off_does_not_hold_up_the_rest, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_wait_hint_gives_up_the_reader, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_spare_reader_while_requests_wait, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_spin_catches_the_next_request, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_spin_without_spin_ns, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_spin_while_a_request_waits, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cost_is_learned, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_one_thread, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_more_waits_than_workers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ended_waits_for_the_request_in_hand, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_device_error, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
