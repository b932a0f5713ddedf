/* fs_loop — leader/follower request loop (see fs_loop.h).
 *
 * WHY
 *   libfuse's multi-threaded loop keeps every idle worker asleep in read(/dev/fuse). The
 *   kernel wakes one of them for each request, so each request costs a thread wake-up and two
 *   context switches even when the previous worker is free again a few microseconds later.
 *   Measured on the mount (perf, create/unlink of small files, 2 replicas): 72% of the
 *   samples in the kernel, 26% scheduler switches under fuse_dev_do_read, 11% __wake_up, 6%
 *   readers spinning on the input queue's lock. One worker (threads=1) was 10-25% faster on
 *   a quiet machine and 2-3x faster on a loaded one, but 2-3x slower as soon as requests
 *   block (fsync after each write, 4 jobs): then nobody reads the next request.
 *
 * HOW
 *   A worker holding a reader's place reads a request and, when the request is cheap,
 *   handles it itself and reads the next one: no hand-off, no wake-up. Before a request
 *   that may wait, it gives its place up first and handles the request off it. A request
 *   may wait when
 *   - its kind is marked always_off, or
 *   - its kind took longer than inline_ns on average so far (a running mean of each kind's
 *     wall time, 1/8 weight for each new sample), or
 *   - while it is handled, the code below reaches a wait it can name: wait_hint()
 *     (common/util.h) before a device flush, a network round trip, a wait on another
 *     thread, or a read the page cache cannot answer. The hook gives the place up then.
 *   There are base + (requests waiting off a reader's place) places (lf.nreading <= base +
 *   lf.nwaiting, up to max_threads workers): with nothing waiting, base readers; with four
 *   reads waiting on the disk, base + 4, so that the next requests find a worker already
 *   asleep in read() and the kernel wakes it directly, as in libfuse's loop. base is 1,
 *   or 2 while more than 1/8 of the recent requests left their place (base_readers):
 *   then a request that waits finds another reader in read() already, and no worker is
 *   woken for it. With one reader, each fsync of a write + fsync stream woke a parked
 *   worker, which the scheduler tended to start on the other, idle CPU; the next write
 *   then woke that CPU too (measured 70-160 us per such wake on a 2-vCPU virtual machine,
 *   perf sched) and took 78 us against 44 with two readers. (Waking a
 *   parked worker only when a request arrived put a second wake-up in each request's path:
 *   4 KiB random reads, 4 jobs, ran 25% slower that way.) A worker whose waiting request is
 *   done takes a free place at once, else parks; a reader that finds more readers than
 *   places after a request parks too. max_threads = 1 is the single-reader loop: the place
 *   is never given up.
 *
 * SPIN
 *   A reader asleep in receive is woken by the next request: on a virtual machine that
 *   wake (often an interrupt to the other vCPU) costs more than a cheap handler, and a
 *   create or an unlink is a chain of requests a few tens of microseconds apart, each
 *   sent once the previous one is answered. So after a request of a kind in
 *   cfg.spin_kinds, the only reader, when no request waits off its place, asks ready() for
 *   up to cfg.spin_ns before it calls receive: a request that comes meanwhile is read
 *   without a wake-up. With a second reader asleep in read() (as while requests wait) it
 *   does not spin: the kernel would wake that one anyway. An idle loop spins spin_ns once
 *   after its last request. The kinds are the caller's: the mount spins after namespace and
 *   attribute requests, not after READ and WRITE, whose streams come from parallel jobs
 *   with requests queued already or from a client that computes between them; there
 *   spinning took CPU from the clients and the device lock from the kernel's queue (4 KiB
 *   random writes, 4 jobs: 10-15% slower with it). Measured (create/unlink of 10,000
 *   files, 2 replicas, quiet 2-vCPU machine, alternating pairs): 50 us of spin made create
 *   12-26% and unlink 8-33% faster.
 *
 * ENDING
 *   receive returning 0 or an error (unmount: the device returns ENODEV), or ended() seen by
 *   the thread in lf_run (a signal; it polls every 100 ms, since the signal may be taken by
 *   any thread that does not block it). Then lf.stop is set, followers are woken, and every
 *   worker is cancelled: cancellation is enabled only inside receive, so a worker handling a
 *   request finishes it (its reply included) and leaves at the top of its loop.
 */
#include "fs/fs_loop.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"

struct lf {
	const struct lf_ops *ops;
	void *ctx;
	struct lf_config cfg;

	pthread_mutex_t lock; /* protects everything down to tids */
	pthread_cond_t idle;  /* workers without a place or a request park here */
	/* changed under lock only; atomic so that a reader may look without it */
	_Atomic unsigned nreading; /* workers holding a reader's place */
	_Atomic unsigned nwaiting; /* requests handled off a reader's place, not yet done */
	bool stop;
	int err;
	unsigned nidle;
	unsigned nthreads;
	pthread_t *tids; /* cfg.max_threads slots, nthreads used */

	sem_t ended;			 /* posted when a worker ends the loop */
	_Atomic uint32_t cost[LF_KINDS]; /* mean wall time, ns */
	/* share of recent requests that left their reader's place, in 1/65536 (running mean) */
	_Atomic uint32_t off_share;
	_Atomic uint64_t requests, handed_off, hinted, woken, spun;
};

struct lf_worker {
	struct lf *l;
	void *buf;
	bool leader; /* holds a reader's place while handling its request */
};

/* Above this share of requests that wait (1/8), two readers (base_readers). */
#define LF_OFF_SHARE_TWO (65536u / 8)

static _Thread_local struct lf_worker *tl_worker;

static void *worker_main(void *arg);

/* Readers to keep besides those whose requests wait: two while many requests wait, so that
 * the next request finds a reader in read() already and needs no wake-up (the one that
 * waited longest gets it), one otherwise, so that a stream of cheap requests stays on one
 * thread instead of alternating between two. */
static unsigned base_readers(const struct lf *l)
{
	return atomic_load_explicit(&l->off_share, memory_order_relaxed) > LF_OFF_SHARE_TWO ? 2 : 1;
}

/* Called with l->lock held: is there a reader's place free? */
static bool place_free(const struct lf *l)
{
	return l->nreading < base_readers(l) + l->nwaiting;
}

/* Called with l->lock held: wake a parked worker, or start one while below max_threads. */
static void wake_worker(struct lf *l)
{
	if (l->nidle) {
		l->woken++;
		pthread_cond_signal(&l->idle);
		return;
	}
	if (l->stop || l->nthreads >= l->cfg.max_threads)
		return; /* the next worker to finish takes the place */
	struct lf_worker *w = calloc(1, sizeof(*w));
	void *buf = w ? calloc(1, l->cfg.buf_size) : NULL;
	if (!buf) {
		free(w);
		return;
	}
	w->l = l;
	w->buf = buf;
	/* the creator's signal mask (all mount signals blocked) is inherited */
	int r = pthread_create(&l->tids[l->nthreads], NULL, worker_main, w);
	if (r != 0) {
		log_warn("cannot start a FUSE worker: %s", strerror(r));
		free(buf);
		free(w);
		return;
	}
	l->nthreads++;
	l->woken++;
}

/* The worker's request may wait: give its reader's place up (one more place opens, since
 * one more request waits) and go on handling the request. */
static void leave_place(struct lf_worker *w)
{
	struct lf *l = w->l;
	tl_wait_hook = NULL;
	w->leader = false;
	pthread_mutex_lock(&l->lock);
	l->nreading--;
	l->nwaiting++;
	/* Another reader in read() takes the next request: the place this opens is taken by
	 * the first worker whose wait ends, without a wake-up. Nobody reading: wake one. */
	if (l->nreading == 0)
		wake_worker(l);
	pthread_mutex_unlock(&l->lock);
}

/* The hook of wait_hint(). */
static void hint_hook(void)
{
	atomic_fetch_add_explicit(&tl_worker->l->hinted, 1, memory_order_relaxed);
	leave_place(tl_worker);
}

static void end_loop(struct lf *l, int err)
{
	pthread_mutex_lock(&l->lock);
	if (!l->stop) {
		l->stop = true;
		l->err = err;
		sem_post(&l->ended);
	}
	pthread_cond_broadcast(&l->idle);
	pthread_mutex_unlock(&l->lock);
}

static bool may_wait(struct lf *l, unsigned kind)
{
	if (kind >= LF_KINDS || (l->cfg.always_off >> kind & 1))
		return true;
	return atomic_load_explicit(&l->cost[kind], memory_order_relaxed) > l->cfg.inline_ns;
}

/* Add a sample to a running mean (1/8 weight). Racing updates may lose a sample: it is a
 * mean, not a count. */
static void mean_add(_Atomic uint32_t *m, uint32_t sample)
{
	uint32_t c = atomic_load_explicit(m, memory_order_relaxed);
	int64_t next = (int64_t)c + ((int64_t)sample - (int64_t)c) / 8;
	atomic_store_explicit(m, (uint32_t)next, memory_order_relaxed);
}

/* See SPIN above: true when a request came while this, the only reader, spun (after a
 * request of a kind in cfg.spin_kinds). */
static bool spin(struct lf *l)
{
	if (!l->cfg.spin_ns || !l->ops->ready ||
	    atomic_load_explicit(&l->nreading, memory_order_relaxed) != 1 ||
	    atomic_load_explicit(&l->nwaiting, memory_order_relaxed) != 0)
		return false;
	int64_t end = 0; /* 0 until the first ready() said no */
	while (!l->ops->ready(l->ctx)) {
		int64_t now = now_monotonic_ns();
		if (!end)
			end = now + l->cfg.spin_ns;
		else if (now >= end)
			return false;
	}
	return end != 0; /* a request there at once saved no wait */
}

/* Hold a reader's place: read requests and handle them, until one waits (true: the place
 * went on; the request is done) or the loop ends (false). */
static bool lead(struct lf_worker *w)
{
	struct lf *l = w->l;
	bool multi = l->cfg.max_threads > 1;
	bool spin_next = false;
	for (;;) {
		pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
		pthread_testcancel(); /* a stop that came while handling the last request */
		if (spin_next && spin(l))
			atomic_fetch_add_explicit(&l->spun, 1, memory_order_relaxed);
		spin_next = false;
		int r = l->ops->receive(l->ctx, w->buf);
		pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
		if (r == -EINTR || r == -EAGAIN) {
			if (l->ops->ended(l->ctx)) {
				end_loop(l, 0);
				return false;
			}
			continue;
		}
		if (r <= 0) {
			end_loop(l, r);
			return false;
		}
		atomic_fetch_add_explicit(&l->requests, 1, memory_order_relaxed);
		unsigned kind = l->ops->kind(l->ctx, w->buf);
		w->leader = true;
		if (multi) {
			if (may_wait(l, kind)) {
				atomic_fetch_add_explicit(&l->handed_off, 1, memory_order_relaxed);
				leave_place(w);
			} else {
				tl_wait_hook = hint_hook;
			}
		}
		int64_t t0 = now_monotonic_ns();
		l->ops->process(l->ctx, w->buf);
		int64_t ns = now_monotonic_ns() - t0;
		tl_wait_hook = NULL;
		spin_next = kind < LF_KINDS && (l->cfg.spin_kinds >> kind & 1);
		if (multi)
			mean_add(&l->off_share, w->leader ? 0 : 65536u);
		if (kind < LF_KINDS) {
			mean_add(&l->cost[kind],
				 ns > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)ns);
			if (l->cfg.counts) {
				struct lf_kind_count *c = &l->cfg.counts[kind];
				atomic_fetch_add_explicit(&c->count, 1, memory_order_relaxed);
				atomic_fetch_add_explicit(&c->ns, (uint64_t)ns,
							  memory_order_relaxed);
			}
		}
		if (!w->leader) {
			pthread_mutex_lock(&l->lock);
			l->nwaiting--;
			pthread_mutex_unlock(&l->lock);
			return true;
		}
		if (multi && atomic_load_explicit(&l->nreading, memory_order_relaxed) >
				 base_readers(l) +
				     atomic_load_explicit(&l->nwaiting, memory_order_relaxed)) {
			/* more readers than places (the waits they were opened for are over) */
			pthread_mutex_lock(&l->lock);
			bool over = l->nreading > base_readers(l) + l->nwaiting;
			if (over)
				l->nreading--;
			pthread_mutex_unlock(&l->lock);
			if (over)
				return true;
		}
	}
}

static void worker_cleanup(void *arg)
{
	struct lf_worker *w = arg;
	if (w->l->ops->buf_free)
		w->l->ops->buf_free(w->l->ctx, w->buf);
	free(w->buf);
	free(w);
}

static void *worker_main(void *arg)
{
	struct lf_worker *w = arg;
	struct lf *l = w->l;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	tl_worker = w;
	pthread_cleanup_push(worker_cleanup, w);
	pthread_mutex_lock(&l->lock);
	while (!l->stop) {
		if (!place_free(l)) {
			l->nidle++;
			pthread_cond_wait(&l->idle, &l->lock);
			l->nidle--;
			continue;
		}
		l->nreading++;
		pthread_mutex_unlock(&l->lock);
		bool again = lead(w);
		pthread_mutex_lock(&l->lock);
		if (!again)
			break;
	}
	pthread_mutex_unlock(&l->lock);
	pthread_cleanup_pop(1);
	return NULL;
}

int lf_run(const struct lf_ops *ops, void *ctx, const struct lf_config *cfg, struct lf_stats *stats)
{
	if (cfg->max_threads < 1 || cfg->buf_size == 0)
		return -EINVAL;
	struct lf *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->tids = calloc(cfg->max_threads, sizeof(*l->tids));
	if (!l->tids) {
		free(l);
		return -ENOMEM;
	}
	l->ops = ops;
	l->ctx = ctx;
	l->cfg = *cfg;
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->idle, NULL);
	sem_init(&l->ended, 0, 0);

	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	pthread_mutex_lock(&l->lock);
	wake_worker(l);
	int r = l->nthreads ? 0 : -EAGAIN;
	pthread_mutex_unlock(&l->lock);
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	while (r == 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_nsec -= 1000000000;
			ts.tv_sec++;
		}
		if (sem_timedwait(&l->ended, &ts) == 0)
			break;
		if (ops->ended(ctx)) {
			end_loop(l, 0);
			break;
		}
	}
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_cond_broadcast(&l->idle);
	unsigned n = l->nthreads;
	if (r == 0)
		r = l->err;
	pthread_mutex_unlock(&l->lock);
	/* no worker starts once stop is set: tids[0..n) is final */
	for (unsigned i = 0; i < n; i++)
		pthread_cancel(l->tids[i]);
	for (unsigned i = 0; i < n; i++)
		pthread_join(l->tids[i], NULL);
	if (stats) {
		stats->requests = atomic_load(&l->requests);
		stats->handed_off = atomic_load(&l->handed_off);
		stats->hinted = atomic_load(&l->hinted);
		stats->woken = atomic_load(&l->woken);
		stats->spun = atomic_load(&l->spun);
		stats->threads = n;
	}
	sem_destroy(&l->ended);
	pthread_cond_destroy(&l->idle);
	pthread_mutex_destroy(&l->lock);
	free(l->tids);
	free(l);
	return r < 0 ? r : 0;
}
