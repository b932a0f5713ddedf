/* dev_net — connections, loop threads, splitting, waiting and reconnecting for the network
 * block devices. The model and its rules (NET-1..5) are in dev_net.h.
 *
 * THE LOOP OF ONE CONNECTION
 *   1. read the eventfd, take the incoming list (conn->lock)
 *   2. stop requested: complete everything left with -ESHUTDOWN and leave
 *   3. handle down: put the new requests on `retry` and run a reconnect round (NET-3)
 *      handle up: issue each new request (it goes on `inflight` first, NET-2)
 *   4. a transport failure seen: tear down, move `inflight` to `retry`, reconnect round
 *   5. poll the library's socket and the eventfd (250 ms while anything is in flight, for
 *      NET-5 and the library's own timers); service(); re-issue `again`; check NET-5
 */
#include "storemgr/dev_net.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define NET_TICK_MS	     250
#define NET_BACKOFF_MIN_MS   100
#define NET_BACKOFF_MAX_MS   2000
#define NET_DEF_RETRIES	     5
#define NET_DEF_TIMEOUT_S    10
#define NET_DEF_IO_TIMEOUT_S 30
#define NET_STACK_PIECES     8 /* pieces of one pread/pwrite kept on the stack */

/* ---------------------------------------------------------------------------------------- */
/* options */

static int net_opt_uint(const char *key, const char *val, unsigned lo, unsigned hi, unsigned *ret,
			char *err, size_t errlen)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(val, &end, 10);
	if (!*val || *end || errno || v < lo || v > hi) {
		snprintf(err, errlen, "option %s=%s: expected a number in %u..%u", key, val, lo,
			 hi);
		return -EINVAL;
	}
	*ret = (unsigned)v;
	return 0;
}

int net_opts_parse(const struct url *u, struct net_opts *ret, struct net_opt_extra *extra,
		   unsigned n, char *err, size_t errlen)
{
	struct net_opts o = {.conns = 0,
			     .retries = NET_DEF_RETRIES,
			     .timeout_s = NET_DEF_TIMEOUT_S,
			     .io_timeout_s = NET_DEF_IO_TIMEOUT_S};
	const char *p = u->query;
	while (*p) {
		size_t len = strcspn(p, "&");
		const char *eq = memchr(p, '=', len);
		char key[32];
		size_t kl = eq ? (size_t)(eq - p) : len;
		if (!eq || kl == 0 || kl >= sizeof(key)) {
			snprintf(err, errlen, "option '%.*s': expected key=value",
				 (int)MIN(len, 64), p);
			return -EINVAL;
		}
		memcpy(key, p, kl);
		key[kl] = '\0';
		char val[NET_OPT_VALUE_MAX];
		int rc = url_query_get(u, key, val, sizeof(val));
		if (rc < 0) {
			snprintf(err, errlen, "option %s: value too long or badly encoded", key);
			return -EINVAL;
		}
		if (strcmp(key, "sessions") == 0 || strcmp(key, "conns") == 0)
			rc = net_opt_uint(key, val, 1, NET_CONNS_MAX, &o.conns, err, errlen);
		else if (strcmp(key, "retries") == 0)
			rc = net_opt_uint(key, val, 0, NET_RETRIES_MAX, &o.retries, err, errlen);
		else if (strcmp(key, "timeout") == 0)
			rc = net_opt_uint(key, val, 1, NET_TIMEOUT_MAX, &o.timeout_s, err, errlen);
		else if (strcmp(key, "io_timeout") == 0)
			rc = net_opt_uint(key, val, 1, NET_TIMEOUT_MAX, &o.io_timeout_s, err,
					  errlen);
		else {
			unsigned i;
			for (i = 0; i < n; i++)
				if (strcmp(key, extra[i].key) == 0)
					break;
			if (i == n) {
				snprintf(err, errlen, "unknown option '%s'", key);
				return -EINVAL;
			}
			if (strlen(val) >= extra[i].outlen) {
				snprintf(err, errlen, "option %s: value too long", key);
				return -EINVAL;
			}
			strcpy(extra[i].out, val);
			extra[i].seen = true;
		}
		if (rc < 0)
			return rc;
		p += len;
		if (*p == '&')
			p++;
	}
	*ret = o;
	return 0;
}

void net_url_redact(const char *url, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s", url);
	char *auth = strstr(out, "://");
	if (!auth)
		return;
	auth += 3;
	char *at = auth + strcspn(auth, "/?@");
	if (*at != '@')
		return;
	char *sep = auth + strcspn(auth, "%:@");
	if (sep >= at)
		return;
	/* "user%secret@rest" -> "user%***@rest" */
	char rest[URL_MAX];
	snprintf(rest, sizeof(rest), "%s", at);
	snprintf(sep + 1, outlen - (size_t)(sep + 1 - out), "***%s", rest);
}

int net_poll_until(int fd, short events, int64_t deadline_ns, short *ret_revents)
{
	for (;;) {
		int64_t left = deadline_ns - now_monotonic_ns();
		if (left <= 0)
			return 0;
		struct pollfd pfd = {.fd = fd, .events = events};
		int rc = poll(&pfd, 1, (int)MIN(left / 1000000 + 1, 1000));
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return -errno;
		if (rc > 0) {
			*ret_revents = pfd.revents;
			return 1;
		}
	}
}

/* ---------------------------------------------------------------------------------------- */
/* lists (NET-1: each list has one owner, so no locking in here) */

static void net_list_add(struct net_list *l, struct net_req *r)
{
	r->next = NULL;
	r->prev = l->tail;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
}

static void net_list_del(struct net_list *l, struct net_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		l->head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		l->tail = r->prev;
	r->prev = r->next = NULL;
}

static struct net_req *net_list_pop(struct net_list *l)
{
	struct net_req *r = l->head;
	if (r)
		net_list_del(l, r);
	return r;
}

/* Append all of src to dst, src becomes empty. */
static void net_list_splice(struct net_list *dst, struct net_list *src)
{
	if (!src->head)
		return;
	if (dst->tail) {
		dst->tail->next = src->head;
		src->head->prev = dst->tail;
	} else {
		dst->head = src->head;
	}
	dst->tail = src->tail;
	src->head = src->tail = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* waiting */

struct net_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned pending;
};

/* The last thing the loop thread does with r: after the unlock the caller may return and
 * its stack (r, the wait) is gone. The signal is sent under the lock for that reason. */
static void net_complete(struct net_req *r, int result)
{
	struct net_wait *w = r->wait;
	r->state = NET_DONE;
	pthread_mutex_lock(&w->lock);
	if (result < 0 && *r->result == 0)
		*r->result = result;
	if (--w->pending == 0)
		pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void net_wait_init(struct net_wait *w)
{
	w->pending = 0;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
}

/* Sleep until every request counted in w->pending completed, then tear w down. */
static void net_wait_all(struct net_wait *w)
{
	wait_hint();
	pthread_mutex_lock(&w->lock);
	while (w->pending)
		pthread_cond_wait(&w->cond, &w->lock);
	pthread_mutex_unlock(&w->lock);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
}

static void net_complete_list(struct net_list *l, int result)
{
	struct net_req *r;
	while ((r = net_list_pop(l)))
		net_complete(r, result);
}

void net_req_done(struct net_conn *c, struct net_req *r, int result, enum net_end how)
{
	if (c->closing || r->state != NET_INFLIGHT) /* NET-2 */
		return;
	net_list_del(&c->inflight, r);
	r->be_data = NULL;
	r->state = NET_QUEUED;
	switch (how) {
	case NET_END_FINAL:
		net_complete(r, result);
		break;
	case NET_END_AGAIN:
		if (++r->tries > c->nd->opts.retries) {
			net_complete(r, result < 0 ? result : -EIO);
			break;
		}
		net_list_add(&c->again, r);
		break;
	case NET_END_BROKEN:
		net_list_add(&c->retry, r);
		c->broken = true;
		break;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* the loop thread */

static bool net_conn_stopping(struct net_conn *c)
{
	pthread_mutex_lock(&c->lock);
	bool s = c->stop;
	pthread_mutex_unlock(&c->lock);
	return s;
}

/* Issue one request on an up handle. */
static void net_conn_issue(struct net_conn *c, struct net_req *r)
{
	r->state = NET_INFLIGHT;
	r->conn = c;
	r->issued_ns = now_monotonic_ns();
	net_list_add(&c->inflight, r); /* before issue(): a completion may come from inside */
	int rc = c->nd->be->issue(c, r);
	if (rc == 0 || r->state != NET_INFLIGHT)
		return;
	net_list_del(&c->inflight, r);
	r->state = NET_QUEUED;
	if (rc == NET_ISSUE_BROKEN) {
		net_list_add(&c->retry, r);
		c->broken = true;
	} else {
		net_complete(r, rc);
	}
}

static void net_conn_teardown(struct net_conn *c)
{
	struct net_dev *nd = c->nd;
	c->closing = true;
	if (c->up)
		nd->be->disconnect(c);
	c->closing = false;
	c->up = false;
	c->broken = false;
	/* NET-3: whatever was in flight waits for the next handle; requests that met too many
	 * transport failures end here. */
	struct net_list moved = {0};
	net_list_splice(&moved, &c->inflight);
	net_list_splice(&moved, &c->again);
	net_list_splice(&moved, &c->retry);
	struct net_req *r;
	while ((r = net_list_pop(&moved))) {
		r->state = NET_QUEUED;
		r->be_data = NULL;
		if (++r->tries > nd->opts.retries)
			net_complete(r, -EIO);
		else
			net_list_add(&c->retry, r);
	}
}

/* Sleep ms, in slices, unless a stop comes. */
static void net_conn_backoff(struct net_conn *c, unsigned ms)
{
	while (ms && !net_conn_stopping(c)) {
		unsigned s = MIN(ms, 50u);
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)s * 1000000};
		nanosleep(&ts, NULL);
		ms -= s;
	}
}

/* NET-3: one bounded reconnect round; on success everything waiting is issued again. */
static void net_conn_reconnect(struct net_conn *c)
{
	struct net_dev *nd = c->nd;
	unsigned backoff = NET_BACKOFF_MIN_MS;
	char err[256] = "";
	for (unsigned attempt = 0; attempt <= nd->opts.retries; attempt++) {
		if (attempt) {
			net_conn_backoff(c, backoff);
			backoff = MIN(backoff * 2, NET_BACKOFF_MAX_MS);
		}
		if (net_conn_stopping(c))
			break;
		if (nd->be->connect(c, err, sizeof(err)) == 0) {
			c->up = true;
			log_debug("%s: connection %u: reconnected (attempt %u)", nd->dev.url,
				  c->idx, attempt + 1);
			struct net_list todo = c->retry;
			c->retry = (struct net_list){0};
			struct net_req *r;
			while ((r = net_list_pop(&todo)))
				net_conn_issue(c, r);
			return;
		}
		log_debug("%s: connection %u: reconnect attempt %u: %s", nd->dev.url, c->idx,
			  attempt + 1, err);
	}
	log_debug("%s: connection %u: giving up after %u attempts: %s", nd->dev.url, c->idx,
		  nd->opts.retries + 1, err);
	net_complete_list(&c->retry, -EIO);
}

/* NET-5: the oldest piece in flight is at the head. */
static bool net_conn_timed_out(struct net_conn *c)
{
	struct net_req *r = c->inflight.head;
	return r &&
	       now_monotonic_ns() - r->issued_ns > (int64_t)c->nd->opts.io_timeout_s * 1000000000;
}

static void *net_conn_loop(void *arg)
{
	struct net_conn *c = arg;
	struct net_dev *nd = c->nd;
	for (;;) {
		pthread_mutex_lock(&c->lock);
		struct net_list in = c->incoming;
		c->incoming = (struct net_list){0};
		bool stop = c->stop;
		pthread_mutex_unlock(&c->lock);
		if (stop) {
			c->closing = true;
			if (c->up)
				nd->be->disconnect(c);
			c->up = false;
			net_complete_list(&in, -ESHUTDOWN);
			net_complete_list(&c->inflight, -ESHUTDOWN);
			net_complete_list(&c->again, -ESHUTDOWN);
			net_complete_list(&c->retry, -ESHUTDOWN);
			return NULL;
		}
		if (!c->up) {
			net_list_splice(&c->retry, &in);
			if (c->retry.head)
				net_conn_reconnect(c);
		} else {
			struct net_req *r;
			while ((r = net_list_pop(&in)))
				net_conn_issue(c, r);
		}
		if (c->broken) {
			log_debug("%s: connection %u: transport failure", nd->dev.url, c->idx);
			net_conn_teardown(c);
			net_conn_reconnect(c);
			continue;
		}

		struct pollfd pfd[2] = {{.fd = c->efd, .events = POLLIN}, {.fd = -1}};
		if (c->up) {
			pfd[1].fd = nd->be->fd(c);
			pfd[1].events = nd->be->events(c);
		}
		int timeout = c->inflight.head ? NET_TICK_MS : -1;
		int rc = poll(pfd, 2, timeout);
		if (rc < 0 && errno != EINTR) {
			log_debug("%s: connection %u: poll: %s", nd->dev.url, c->idx,
				  strerror(errno));
			net_conn_backoff(c, NET_TICK_MS);
		}
		if (rc > 0 && (pfd[0].revents & POLLIN)) {
			uint64_t v;
			if (read(c->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_debug("%s: eventfd read: %s", nd->dev.url, strerror(errno));
		}
		if (c->up && !c->broken) {
			short rev = rc > 0 ? pfd[1].revents : 0;
			if ((rev || c->inflight.head) && nd->be->service(c, rev) < 0)
				c->broken = true;
		}
		if (c->up && !c->broken) {
			struct net_list again = c->again;
			c->again = (struct net_list){0};
			struct net_req *r;
			while ((r = net_list_pop(&again)))
				net_conn_issue(c, r);
			if (net_conn_timed_out(c)) {
				log_debug("%s: connection %u: a command took longer than %u s",
					  nd->dev.url, c->idx, nd->opts.io_timeout_s);
				c->broken = true;
			}
		}
	}
}

/* ---------------------------------------------------------------------------------------- */
/* life cycle */

static int net_dev_init(struct net_dev *nd, unsigned n)
{
	atomic_init(&nd->next, 0);
	nd->conns = calloc(n, sizeof(*nd->conns));
	if (!nd->conns)
		return -ENOMEM;
	for (unsigned i = 0; i < n; i++) {
		struct net_conn *c = &nd->conns[i];
		c->nd = nd;
		c->idx = i;
		c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (c->efd < 0)
			return -errno;
		pthread_mutex_init(&c->lock, NULL);
		nd->nconns = nd->nalloc = i + 1;
	}
	return 0;
}

/* Connect connections [from, to) in the calling thread (open time). */
static int net_dev_connect(struct net_dev *nd, unsigned from, unsigned to, char *err, size_t errlen)
{
	for (unsigned i = from; i < to && i < nd->nconns; i++) {
		struct net_conn *c = &nd->conns[i];
		int rc = nd->be->connect(c, err, errlen);
		if (rc < 0)
			return rc;
		c->up = true;
	}
	return 0;
}

static int net_dev_start(struct net_dev *nd)
{
	for (unsigned i = 0; i < nd->nconns; i++) {
		struct net_conn *c = &nd->conns[i];
		int rc = pthread_create(&c->thread, NULL, net_conn_loop, c);
		if (rc)
			return -rc;
		c->thread_started = true;
	}
	return 0;
}

int net_dev_open(struct net_dev *nd, const struct net_backend *be, const struct sm_dev_ops *ops,
		 const char *url, unsigned flags, char *err, size_t errlen)
{
	char why[512] = "";
	nd->dev.ops = ops;
	nd->be = be;
	nd->rdonly = flags & SM_DEV_RDONLY;
	net_url_redact(url, nd->dev.url, sizeof(nd->dev.url));
	int rc = be->parse(nd, url, &nd->opts, why, sizeof(why));
	if (rc == 0 && (rc = net_dev_init(nd, nd->opts.conns)) < 0)
		snprintf(why, sizeof(why), "%s", strerror(-rc));
	/* One connection first: a bad URL costs one login, and the device is known (and the
	 * number of connections it allows) before the others connect. */
	if (rc == 0)
		rc = net_dev_connect(nd, 0, 1, why, sizeof(why));
	if (rc == 0)
		rc = be->probe(nd, why, sizeof(why));
	if (rc == 0)
		rc = net_dev_connect(nd, 1, nd->nconns, why, sizeof(why));
	if (rc == 0 && (rc = net_dev_start(nd)) < 0)
		snprintf(why, sizeof(why), "cannot start connection threads: %s", strerror(-rc));
	if (rc < 0) {
		snprintf(err, errlen, "%s: %s", nd->dev.url, why);
		net_dev_fini(nd);
	}
	return rc;
}

void net_dev_fini(struct net_dev *nd)
{
	for (unsigned i = 0; i < nd->nalloc; i++) {
		struct net_conn *c = &nd->conns[i];
		if (c->thread_started) {
			pthread_mutex_lock(&c->lock);
			c->stop = true;
			pthread_mutex_unlock(&c->lock);
			uint64_t one = 1;
			if (write(c->efd, &one, sizeof(one)) < 0)
				log_debug("%s: eventfd write: %s", nd->dev.url, strerror(errno));
			pthread_join(c->thread, NULL);
		} else if (c->up) {
			c->closing = true;
			nd->be->disconnect(c);
		}
		if (c->efd >= 0)
			close(c->efd);
		pthread_mutex_destroy(&c->lock);
	}
	free(nd->conns);
	nd->conns = NULL;
	nd->nconns = nd->nalloc = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the caller's side */

static void net_queue(struct net_dev *nd, struct net_req *r)
{
	struct net_conn *c = &nd->conns[atomic_fetch_add(&nd->next, 1) % nd->nconns];
	pthread_mutex_lock(&c->lock);
	bool was_empty = !c->incoming.head;
	net_list_add(&c->incoming, r);
	pthread_mutex_unlock(&c->lock);
	if (was_empty) { /* else the loop has a wakeup pending already */
		uint64_t one = 1;
		if (write(c->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_debug("%s: eventfd write: %s", nd->dev.url, strerror(errno));
	}
}

static unsigned net_pieces(const struct net_dev *nd, const struct sm_dev_io *io)
{
	return (unsigned)((io->len + nd->max_io - 1) / nd->max_io);
}

/* Split ios into pieces (reqs has room for all), queue them, wait for all. */
static int net_run(struct net_dev *nd, struct sm_dev_io *ios, unsigned n, struct net_req *reqs)
{
	struct net_wait w;
	net_wait_init(&w);
	unsigned k = 0;
	for (unsigned i = 0; i < n; i++) {
		ios[i].result = 0;
		for (uint64_t done = 0; done < ios[i].len; done += nd->max_io) {
			struct net_req *r = &reqs[k++];
			*r = (struct net_req){
			    .kind = ios[i].op == SM_DEV_WRITE ? NET_WRITE : NET_READ,
			    .fua = ios[i].op == SM_DEV_WRITE && (ios[i].flags & SM_DEV_FUA),
			    .buf = (char *)ios[i].buf + done,
			    .off = ios[i].off + done,
			    .len = MIN(nd->max_io, ios[i].len - done),
			    .result = &ios[i].result,
			    .wait = &w};
		}
	}
	w.pending = k;
	for (unsigned i = 0; i < k; i++)
		net_queue(nd, &reqs[i]);
	net_wait_all(&w);
	for (unsigned i = 0; i < n; i++)
		if (ios[i].result < 0)
			return ios[i].result;
	return 0;
}

/* One request that is not a read or a write (flush, discard pieces), queued and waited for. */
static int net_run_other(struct net_dev *nd, enum net_kind kind, uint64_t off, uint64_t len)
{
	int result = 0;
	struct net_wait w;
	net_wait_init(&w);
	w.pending = 1;
	struct net_req r = {.kind = kind, .off = off, .len = len, .result = &result, .wait = &w};
	net_queue(nd, &r);
	net_wait_all(&w);
	return result;
}

int net_dev_submit(struct sm_dev *d, struct sm_dev_io *ios, unsigned n)
{
	struct net_dev *nd = (struct net_dev *)d;
	uint64_t pieces = 0;
	bool emulate_fua = false;
	for (unsigned i = 0; i < n; i++) {
		if (!sm_dev_io_ok(d, ios[i].buf, ios[i].off, ios[i].len))
			return -EINVAL; /* DEV-1 */
		if (ios[i].op == SM_DEV_WRITE && nd->rdonly)
			return -EROFS;
		pieces += net_pieces(nd, &ios[i]);
		if (ios[i].op == SM_DEV_WRITE && (ios[i].flags & SM_DEV_FUA) && !nd->fua_native)
			emulate_fua = true;
	}
	if (!pieces)
		return 0;
	struct net_req stack[NET_STACK_PIECES];
	struct net_req *reqs = pieces <= NET_STACK_PIECES ? stack : calloc(pieces, sizeof(*reqs));
	if (!reqs)
		return -ENOMEM;
	int rc = net_run(nd, ios, n, reqs);
	if (reqs != stack)
		free(reqs);
	if (rc == 0 && emulate_fua) /* DEV-4: FUA where the device offers it, else a flush */
		rc = net_run_other(nd, NET_FLUSH, 0, 0);
	return rc;
}

int net_dev_pread(struct sm_dev *d, void *buf, size_t len, uint64_t off)
{
	struct sm_dev_io io = {.op = SM_DEV_READ, .buf = buf, .len = len, .off = off};
	return net_dev_submit(d, &io, 1);
}

int net_dev_pwrite(struct sm_dev *d, const void *buf, size_t len, uint64_t off, unsigned flags)
{
	struct sm_dev_io io = {
	    .op = SM_DEV_WRITE, .flags = flags, .buf = (void *)buf, .len = len, .off = off};
	return net_dev_submit(d, &io, 1);
}

/* DEV-4: one flush on one connection covers the writes of all of them: SYNCHRONIZE CACHE
 * acts on the logical unit, and an NBD server with several connections advertises
 * multi-conn (else the backend opens one). */
int net_dev_flush(struct sm_dev *d)
{
	struct net_dev *nd = (struct net_dev *)d;
	if (nd->rdonly)
		return 0;
	return net_run_other(nd, NET_FLUSH, 0, 0);
}

int net_dev_discard(struct sm_dev *d, uint64_t off, uint64_t len)
{
	struct net_dev *nd = (struct net_dev *)d;
	if (!sm_dev_span_ok(d, off, len))
		return -EINVAL;
	if (nd->rdonly)
		return -EROFS;
	if (!nd->max_discard)
		return -EOPNOTSUPP;
	for (uint64_t done = 0; done < len; done += nd->max_discard) {
		int rc =
		    net_run_other(nd, NET_DISCARD, off + done, MIN(nd->max_discard, len - done));
		if (rc < 0)
			return rc;
	}
	return 0;
}
