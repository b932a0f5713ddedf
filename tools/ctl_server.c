/* ctl_server — the mount daemon's control socket. See ctl_server.h and docs/ctl-protocol.md.
 *
 * LIFECYCLE OF A CONNECTION
 *   1. accept; the peer's uid must be 0 or ours (SO_PEERCRED); a free slot or `error busy`;
 *   2. `hello version=1` both ways;
 *   3. requests until the client closes: `stats` (answered at once), `scrub` (the last request
 *      of a connection: the scrub runs on this thread while a watcher thread reads `cancel` or
 *      the end of the stream, then `done`, then close).
 * Every read from a client is bounded (ctl_read_line) and parsed strictly (ctl_parse); a client
 * that sends nothing for CTL_IDLE_S before a request, or does not read for CTL_SEND_TIMEOUT_S,
 * is dropped. The scrub's `found` lines are collected by ds's report callback (which runs under
 * a chunk's locks and so must not block) into a small buffer and sent from the progress
 * callback, which ds calls with no lock held.
 */
#include "tools/ctl_server.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "tools/ctl.h"
#include "tools/run.h"

#define CTL_IDLE_S	   60
#define CTL_SEND_TIMEOUT_S 30
#define CTL_PROGRESS_NS	   (100 * 1000 * 1000LL)
#define CTL_DEFAULT_RATE   (64ULL << 20)
#define CTL_FOUND_MAX	   (2 * (DS_MAX_REPLICAS + 1)) /* reports of one chunk, twice over */

struct ctl_server;

struct ctl_conn {
	struct ctl_server *srv;
	int fd;	   /* protected by srv->lock (closed and set to -1 by the connection's thread) */
	bool used; /* protected by srv->lock: a thread runs or waits to be joined */
	bool done; /* protected by srv->lock: the thread has finished */
	pthread_t th;
	struct ctl_reader rd;
};

struct ctl_server {
	struct ds *ds;
	struct fs *fs; /* NULL: no request counters */
	char volume[64];
	char path[96]; /* RUN_DIR/<pid>.ctl; + ".tmp" must fit sun_path (108) */
	int lfd;
	pthread_t accept_th;
	pthread_mutex_t lock;
	bool stopping;	   /* protected by lock */
	int *scrub_cancel; /* protected by lock: the running scrub's flag, or NULL */
	struct ctl_conn conns[CTL_SERVER_CONNS];
};

/* ---------------------------------------------------------------------------------------- */
/* replies */

static int send_error(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int send_error(int fd, const char *fmt, ...)
{
	char msg[CTL_VALUE_MAX + 1];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	struct ctl_line l;
	ctl_begin(&l, CTL_D2C_ERROR);
	ctl_add_str(&l, "msg", msg);
	return ctl_end(&l) < 0 ? -E2BIG : ctl_send(fd, &l);
}

/* `request` lines: every FUSE request kind the mount has handled (stats requests=1). */
static int send_requests(struct ctl_conn *c)
{
	struct fs_req_stat st[FS_REQ_KINDS];
	fs_req_stats(c->srv->fs, st);
	int r = 0;
	for (unsigned k = 0; k < FS_REQ_KINDS && r == 0; k++) {
		const char *name = fs_req_name(k);
		if (!st[k].count || !name)
			continue;
		struct ctl_req_stat q = {.count = st[k].count, .busy_us = st[k].busy_ns / 1000};
		snprintf(q.kind, sizeof(q.kind), "%s", name);
		struct ctl_line l;
		ctl_begin(&l, CTL_D2C_REQUEST);
		ctl_put_request(&l, &q);
		r = ctl_end(&l) < 0 ? -E2BIG : ctl_send(c->fd, &l);
	}
	return r;
}

static int send_stats(struct ctl_conn *c, const struct ctl_msg *m)
{
	uint64_t want_requests = 0;
	if (ctl_get_u64(m, "requests", &want_requests) == -EBADMSG || want_requests > 1) {
		send_error(c->fd, "requests must be 0 or 1");
		return -EINVAL;
	}
	struct ds_stats st;
	ds_stats(c->srv->ds, &st);
	struct ctl_line l;
	ctl_begin(&l, CTL_D2C_STATS);
	ctl_put_stats(&l, &st);
	int r = ctl_end(&l) < 0 ? -E2BIG : ctl_send(c->fd, &l);
	struct ds_target_stat *ts = calloc(DS_MAX_TARGETS, sizeof(*ts));
	if (!ts)
		return -ENOMEM;
	int n = ds_target_stats(c->srv->ds, ts, DS_MAX_TARGETS);
	for (int i = 0; i < n && r == 0; i++) {
		ctl_begin(&l, CTL_D2C_TARGET);
		ctl_put_target(&l, &ts[i]);
		r = ctl_end(&l) < 0 ? -E2BIG : ctl_send(c->fd, &l);
	}
	free(ts);
	if (r == 0 && want_requests && c->srv->fs)
		r = send_requests(c);
	if (r == 0) {
		ctl_begin(&l, CTL_D2C_END);
		r = ctl_end(&l) < 0 ? -E2BIG : ctl_send(c->fd, &l);
	}
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* scrub */

struct ctl_found {
	const char *what; /* a ds string constant */
	uint64_t ino;
	uint32_t idx, target;
	bool repaired;
};

struct ctl_scrub {
	struct ctl_conn *c;
	int cancel; /* __atomic: set by the watcher, a failed send, or ctl_server_stop */
	int send_err;
	int64_t last_sent_ns;
	unsigned nfound;
	uint64_t dropped;
	struct ctl_found found[CTL_FOUND_MAX];
};

/* ds report callback: under the chunk's locks, so only remember it. */
static void scrub_report(void *ctx, const char *what, uint64_t ino, uint32_t idx, uint32_t target,
			 bool repaired)
{
	struct ctl_scrub *sc = ctx;
	if (sc->nfound == CTL_FOUND_MAX) {
		sc->dropped++;
		return;
	}
	sc->found[sc->nfound++] = (struct ctl_found){what, ino, idx, target, repaired};
}

static void scrub_send(struct ctl_scrub *sc, struct ctl_line *l)
{
	if (sc->send_err)
		return;
	int r = ctl_end(l) < 0 ? -E2BIG : ctl_send(sc->c->fd, l);
	if (r < 0) {
		sc->send_err = r;
		__atomic_store_n(&sc->cancel, 1, __ATOMIC_RELEASE); /* nobody listens any more */
	}
}

/* ds progress callback: no lock held; send the findings, then progress at most every 100 ms. */
static void scrub_progress(void *ctx, const struct ds_check_result *p)
{
	struct ctl_scrub *sc = ctx;
	struct ctl_line l;
	for (unsigned i = 0; i < sc->nfound; i++) {
		const struct ctl_found *f = &sc->found[i];
		log_warn("scrub: inode %llu chunk %u on target %u: %s%s",
			 (unsigned long long)f->ino, f->idx, f->target, f->what,
			 f->repaired ? " (repaired)" : "");
		ctl_begin(&l, CTL_D2C_FOUND);
		ctl_add_str(&l, "what", f->what);
		ctl_add_u64(&l, "ino", f->ino);
		ctl_add_u64(&l, "idx", f->idx);
		ctl_add_u64(&l, "target", f->target);
		ctl_add_u64(&l, "repaired", f->repaired);
		scrub_send(sc, &l);
	}
	sc->nfound = 0;
	if (sc->dropped) {
		log_err("scrub: %llu finding(s) not reported (more than %d in one chunk)",
			(unsigned long long)sc->dropped, CTL_FOUND_MAX);
		sc->dropped = 0;
	}
	int64_t now = now_monotonic_ns();
	bool edge = p->chunks == 0 || p->chunks == p->chunks_total;
	if (!edge && now - sc->last_sent_ns < CTL_PROGRESS_NS)
		return;
	sc->last_sent_ns = now;
	ctl_begin(&l, CTL_D2C_PROGRESS);
	ctl_put_result(&l, p);
	scrub_send(sc, &l);
}

/* Reads the client while its scrub runs: `cancel`, or the end of the stream, cancels. */
static void *scrub_watch(void *arg)
{
	struct ctl_scrub *sc = arg;
	char line[CTL_LINE_MAX + 1];
	for (;;) {
		size_t n;
		int r = ctl_read_line(&sc->c->rd, line, sizeof(line), &n);
		if (r == -EAGAIN)
			continue; /* the idle timeout: a scrub may run for hours */
		struct ctl_msg m;
		bool cancel = r < 0 || (ctl_parse(line, n, CTL_C2D, &m, NULL, 0) == 0 &&
					m.type == CTL_C2D_CANCEL);
		if (r == 0 && !cancel)
			log_debug("ctl: ignoring '%.40s' during a scrub", line);
		if (cancel) {
			__atomic_store_n(&sc->cancel, 1, __ATOMIC_RELEASE);
			return NULL;
		}
	}
}

static void do_scrub(struct ctl_conn *c, const struct ctl_msg *req)
{
	struct ctl_server *srv = c->srv;
	uint64_t rate = CTL_DEFAULT_RATE, repair = 1;
	int r = ctl_get_u64(req, "rate", &rate);
	if (r == -EBADMSG || (ctl_get_u64(req, "repair", &repair) == -EBADMSG) || repair > 1) {
		send_error(c->fd, "scrub: rate must be bytes per second and repair 0 or 1");
		return;
	}
	struct ctl_scrub *sc = calloc(1, sizeof(*sc));
	if (!sc) {
		send_error(c->fd, "out of memory");
		return;
	}
	sc->c = c;
	pthread_mutex_lock(&srv->lock);
	bool busy = srv->scrub_cancel != NULL, stopping = srv->stopping;
	if (!busy && !stopping)
		srv->scrub_cancel = &sc->cancel;
	pthread_mutex_unlock(&srv->lock);
	if (busy || stopping) {
		send_error(c->fd, "%s",
			   busy ? "a scrub is already running on this volume"
				: "the volume is being unmounted");
		free(sc);
		return;
	}
	pthread_t watcher;
	bool watching = pthread_create(&watcher, NULL, scrub_watch, sc) == 0;
	log_info("scrub: started (%s, %s)", repair ? "repairing" : "reporting only",
		 rate ? "rate-limited" : "unlimited");

	struct ds_scrub_opts o = {.repair = repair,
				  .rate = rate,
				  .report = scrub_report,
				  .progress = scrub_progress,
				  .ctx = sc,
				  .cancel = &sc->cancel};
	struct ds_check_result res = {0};
	int64_t t0 = now_monotonic_ns();
	int problems = watching ? ds_scrub(srv->ds, &o, &res) : -EAGAIN;
	int64_t ms = (now_monotonic_ns() - t0) / 1000000;

	pthread_mutex_lock(&srv->lock);
	srv->scrub_cancel = NULL;
	stopping = srv->stopping;
	pthread_mutex_unlock(&srv->lock);
	struct ctl_line l;
	ctl_begin(&l, CTL_D2C_DONE);
	const char *status = problems >= 0 ? "ok" : problems == -ECANCELED ? "cancelled" : "failed";
	ctl_add_str(&l, "status", status);
	ctl_add_u64(&l, "problems", problems >= 0 ? (uint64_t)problems : 0);
	ctl_add_u64(&l, "secs_ms", (uint64_t)ms);
	if (problems == -ECANCELED && stopping)
		ctl_add_str(&l, "msg", "the volume is being unmounted");
	else if (problems < 0 && problems != -ECANCELED)
		ctl_add_str(&l, "msg", strerror(-problems));
	ctl_put_result(&l, &res);
	scrub_send(sc, &l);
	log_info("scrub: %s after %lld ms: %llu chunk(s), %llu byte(s) read, %llu checksum "
		 "error(s), %llu differing, %llu missing, %llu unreadable, %llu unrecoverable, "
		 "%llu repaired",
		 status, (long long)ms, (unsigned long long)res.chunks,
		 (unsigned long long)res.bytes_compared, (unsigned long long)res.csum_errors,
		 (unsigned long long)res.mismatches, (unsigned long long)res.missing,
		 (unsigned long long)res.unreadable, (unsigned long long)res.unrecoverable,
		 (unsigned long long)res.repaired);
	if (watching) {
		shutdown(c->fd, SHUT_RD); /* the watcher's read returns: it exits */
		pthread_join(watcher, NULL);
	}
	free(sc);
}

/* ---------------------------------------------------------------------------------------- */
/* connections */

/* The next request of a client; false when the connection should end (after an error reply
 * where the client deserves one). */
static bool next_request(struct ctl_conn *c, struct ctl_msg *m)
{
	char line[CTL_LINE_MAX + 1], why[256];
	size_t n;
	int r = ctl_read_line(&c->rd, line, sizeof(line), &n);
	if (r == -ENODATA)
		return false;
	if (r == -EAGAIN) {
		send_error(c->fd, "no request for %d s", CTL_IDLE_S);
		return false;
	}
	if (r < 0) {
		if (r == -EBADMSG)
			send_error(c->fd, "line longer than %d bytes or cut short", CTL_LINE_MAX);
		return false;
	}
	if (ctl_parse(line, n, CTL_C2D, m, why, sizeof(why)) < 0) {
		send_error(c->fd, "bad request: %s", why);
		return false;
	}
	return true;
}

static void *conn_main(void *arg)
{
	struct ctl_conn *c = arg;
	struct ctl_server *srv = c->srv;
	struct ctl_msg *m = malloc(sizeof(*m));
	struct timeval idle = {CTL_IDLE_S, 0}, snd = {CTL_SEND_TIMEOUT_S, 0};
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof(idle));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof(snd));
	ctl_reader_init(&c->rd, c->fd);
	uint64_t version = 0;
	if (!m)
		goto out;
	if (!next_request(c, m))
		goto out;
	if (m->type != CTL_C2D_HELLO || ctl_get_u64(m, "version", &version) < 0 ||
	    version != CTL_VERSION) {
		send_error(c->fd, "expected 'hello version=%d' first", CTL_VERSION);
		goto out;
	}
	struct ctl_line l;
	ctl_begin(&l, CTL_D2C_HELLO);
	ctl_add_u64(&l, "version", CTL_VERSION);
	ctl_add_u64(&l, "pid", (uint64_t)getpid());
	ctl_add_str(&l, "volume", srv->volume);
	if (ctl_end(&l) < 0 || ctl_send(c->fd, &l) < 0)
		goto out;
	while (next_request(c, m)) {
		if (m->type == CTL_C2D_STATS) {
			if (send_stats(c, m) < 0)
				break;
		} else if (m->type == CTL_C2D_SCRUB) {
			do_scrub(c, m);
			break;
		} else {
			send_error(c->fd, "'%s' is not a request here", m->verb);
			break;
		}
	}
out:
	free(m);
	pthread_mutex_lock(&srv->lock);
	close(c->fd);
	c->fd = -1;
	c->done = true;
	pthread_mutex_unlock(&srv->lock);
	return NULL;
}

/* Join finished connection threads. Called with srv->lock. */
static void reap(struct ctl_server *srv)
{
	for (int i = 0; i < CTL_SERVER_CONNS; i++) {
		struct ctl_conn *c = &srv->conns[i];
		if (c->used && c->done) {
			pthread_join(c->th, NULL);
			c->used = c->done = false;
		}
	}
}

static bool peer_allowed(int fd)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return false;
	if (cr.uid == 0 || cr.uid == geteuid())
		return true;
	log_warn("ctl: refused a connection from uid %u (pid %d)", (unsigned)cr.uid, (int)cr.pid);
	return false;
}

static void *accept_main(void *arg)
{
	struct ctl_server *srv = arg;
	for (;;) {
		int fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC);
		pthread_mutex_lock(&srv->lock);
		bool stopping = srv->stopping;
		pthread_mutex_unlock(&srv->lock);
		if (stopping) {
			if (fd >= 0)
				close(fd);
			return NULL;
		}
		if (fd < 0) {
			if (errno != EINTR && errno != ECONNABORTED) {
				log_err("ctl: accept: %s", strerror(errno));
				usleep(100 * 1000); /* EMFILE and the like: do not spin */
			}
			continue;
		}
		if (!peer_allowed(fd)) {
			close(fd);
			continue;
		}
		pthread_mutex_lock(&srv->lock);
		reap(srv);
		struct ctl_conn *c = NULL;
		for (int i = 0; i < CTL_SERVER_CONNS && !c; i++)
			if (!srv->conns[i].used)
				c = &srv->conns[i];
		if (c) {
			*c = (struct ctl_conn){.srv = srv, .fd = fd, .used = true};
			if (pthread_create(&c->th, NULL, conn_main, c) != 0) {
				c->used = false;
				c = NULL;
			}
		}
		pthread_mutex_unlock(&srv->lock);
		if (!c) {
			send_error(fd, "busy: %d connections are open", CTL_SERVER_CONNS);
			close(fd);
		}
	}
}

/* ---------------------------------------------------------------------------------------- */
/* start / stop */

int ctl_server_start(struct ds *ds, struct fs *fs, const char *volume, struct ctl_server **ret,
		     char *err, size_t errlen)
{
	struct ctl_server *srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	srv->ds = ds;
	srv->fs = fs;
	srv->lfd = -1;
	snprintf(srv->volume, sizeof(srv->volume), "%s", volume);
	pthread_mutex_init(&srv->lock, NULL);
	run_path(getpid(), "ctl", srv->path, sizeof(srv->path));
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char tmp[sizeof(sa.sun_path)];
	snprintf(tmp, sizeof(tmp), "%s.tmp", srv->path);
	int r = mkdir_p(RUN_DIR, 0755);
	if (r < 0) {
		snprintf(err, errlen, "cannot create %s: %s", RUN_DIR, strerror(-r));
		goto fail;
	}
	srv->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (srv->lfd < 0) {
		r = -errno;
		snprintf(err, errlen, "socket: %s", strerror(errno));
		goto fail;
	}
	/* bind a temporary name, make it 0600, then rename it over any stale socket: the socket
	 * is never reachable under its name with other permissions */
	memcpy(sa.sun_path, tmp, strlen(tmp) + 1);
	unlink(tmp);
	if (bind(srv->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(tmp, 0600) < 0 ||
	    listen(srv->lfd, CTL_SERVER_CONNS) < 0 || rename(tmp, srv->path) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot listen on %s: %s", srv->path, strerror(errno));
		unlink(tmp);
		goto fail;
	}
	if (pthread_create(&srv->accept_th, NULL, accept_main, srv) != 0) {
		r = -EAGAIN;
		snprintf(err, errlen, "cannot start the control socket's thread");
		unlink(srv->path);
		goto fail;
	}
	log_info("control socket %s", srv->path);
	*ret = srv;
	return 0;
fail:
	if (srv->lfd >= 0)
		close(srv->lfd);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
	return r;
}

void ctl_server_stop(struct ctl_server *srv)
{
	if (!srv)
		return;
	unlink(srv->path); /* no new client finds us */
	pthread_mutex_lock(&srv->lock);
	srv->stopping = true;
	if (srv->scrub_cancel)
		__atomic_store_n(srv->scrub_cancel, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&srv->lock);
	shutdown(srv->lfd, SHUT_RDWR); /* accept returns */
	pthread_join(srv->accept_th, NULL);
	/* a waiting client gets its answer: a connection in a request wakes up at once, a scrub
	 * stops before its next chunk and sends `done status=cancelled` */
	pthread_mutex_lock(&srv->lock);
	for (int i = 0; i < CTL_SERVER_CONNS; i++)
		if (srv->conns[i].used && srv->conns[i].fd >= 0)
			shutdown(srv->conns[i].fd, SHUT_RD);
	pthread_mutex_unlock(&srv->lock);
	for (int i = 0; i < CTL_SERVER_CONNS; i++)
		if (srv->conns[i].used)
			pthread_join(srv->conns[i].th, NULL);
	close(srv->lfd);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}
