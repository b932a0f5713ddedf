/* transport — the registry of transports by URL scheme, and what every transport shares:
 * waiting for a reply (xp_call), consuming a stream on the caller's thread (xp_call_stream),
 * write ids. See transport.h. */
#include "dataservice/transport.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const struct xp_ops *const xp_backends[] = {
    &xp_tcp_ops,
};

const struct xp_ops *xp_ops_for(const char *url)
{
	if (!url)
		return NULL;
	const char *colon = strchr(url, ':');
	if (!colon)
		return NULL;
	size_t n = (size_t)(colon - url);
	for (size_t i = 0; i < ARRAY_SIZE(xp_backends); i++)
		if (strlen(xp_backends[i]->scheme) == n &&
		    strncasecmp(url, xp_backends[i]->scheme, n) == 0)
			return xp_backends[i];
	return NULL;
}

static int xp_unknown(const char *url, char *err, size_t errlen)
{
	if (err && errlen)
		snprintf(err, errlen, "unknown transport in '%s' (expected tcp://HOST:PORT)",
			 url ? url : "");
	return -EINVAL;
}

int xp_connect(const char *url, const struct xp_client_cfg *cfg, struct xp_client **ret, char *err,
	       size_t errlen)
{
	const struct xp_ops *ops = xp_ops_for(url);
	if (!ops)
		return xp_unknown(url, err, errlen);
	return ops->connect(url, cfg, ret, err, errlen);
}

void xp_client_free(struct xp_client *c)
{
	if (c)
		c->ops->client_free(c);
}

int xp_submit(struct xp_client *c, const struct xp_msg *m, xp_done_fn done, void *ctx)
{
	return c->ops->submit(c, m, done, ctx);
}

void xp_resume(struct xp_client *c)
{
	c->ops->resume(c);
}

void xp_client_peer(struct xp_client *c, struct proto_hello *ret)
{
	c->ops->peer(c, ret);
}

uint64_t xp_write_id(struct xp_client *c)
{
	return __atomic_add_fetch(&c->next_write_id, 1, __ATOMIC_RELAXED);
}

int xp_listen(const char *url, const struct xp_server_cfg *cfg, struct xp_server **ret, char *err,
	      size_t errlen)
{
	const struct xp_ops *ops = xp_ops_for(url);
	if (!ops)
		return xp_unknown(url, err, errlen);
	return ops->listen(url, cfg, ret, err, errlen);
}

void xp_server_free(struct xp_server *s)
{
	if (s)
		s->ops->server_free(s);
}

void xp_server_stats(struct xp_server *s, struct xp_server_stats *ret)
{
	s->ops->server_stats(s, ret);
}

void xp_resp_fini(struct xp_resp *r)
{
	if (!r)
		return;
	xp_buf_free(r->buf);
	r->buf = NULL;
	r->body.data = NULL;
	r->body.data_len = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the buffer pool */

#define POOL_MIN_SHIFT 16 /* 64 KiB */
#define POOL_MAX_SHIFT 23 /* 8 MiB: a whole frame of PROTO_MAX_PAYLOAD fits */
#define POOL_SMALL     0xff

/* In front of every buffer; 16 bytes keep the buffer as aligned as malloc's. */
struct buf_hdr {
	union {
		struct buf_hdr *next; /* while pooled */
		uint64_t cls;	      /* while handed out: its class shift or POOL_SMALL */
	};
	uint64_t pad;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct buf_hdr *pool_free[POOL_MAX_SHIFT + 1]; /* protected by pool_lock */
static size_t pool_bytes;			      /* protected by pool_lock */

void *xp_buf_alloc(size_t len)
{
	size_t want = len + sizeof(struct buf_hdr);
	unsigned cls = POOL_MIN_SHIFT;
	while (cls <= POOL_MAX_SHIFT && ((size_t)1 << cls) < want)
		cls++;
	struct buf_hdr *h = NULL;
	if (want < ((size_t)1 << POOL_MIN_SHIFT) || cls > POOL_MAX_SHIFT) {
		h = malloc(want);
		cls = POOL_SMALL;
	} else {
		pthread_mutex_lock(&pool_lock);
		h = pool_free[cls];
		if (h) {
			pool_free[cls] = h->next;
			pool_bytes -= (size_t)1 << cls;
		}
		pthread_mutex_unlock(&pool_lock);
		if (!h)
			h = malloc((size_t)1 << cls);
	}
	if (!h)
		return NULL;
	h->cls = cls;
	return h + 1;
}

void xp_buf_free(void *p)
{
	if (!p)
		return;
	struct buf_hdr *h = (struct buf_hdr *)p - 1;
	unsigned cls = (unsigned)h->cls;
	if (cls != POOL_SMALL) {
		pthread_mutex_lock(&pool_lock);
		if (pool_bytes + ((size_t)1 << cls) <= XP_POOL_BYTES) {
			h->next = pool_free[cls];
			pool_free[cls] = h;
			pool_bytes += (size_t)1 << cls;
			h = NULL;
		}
		pthread_mutex_unlock(&pool_lock);
	}
	free(h);
}

/* ---------------------------------------------------------------------------------------- */
/* server replies */

int xp_reply(struct xp_req *req, int status, uint64_t epoch, const struct proto_body *b)
{
	return req->ops->reply(req, status, epoch, b, false);
}

int xp_reply_more(struct xp_req *req, const struct proto_body *b)
{
	return req->ops->reply(req, 0, 0, b, true);
}

int xp_reply_err(struct xp_req *req, int status, const char *fmt, ...)
{
	struct proto_body b;
	memset(&b, 0, sizeof(b));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(b.reason, sizeof(b.reason), fmt, ap);
	va_end(ap);
	/* the wire takes printable ASCII only (PROTO-4): anything else becomes '?' */
	for (char *p = b.reason; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = '?';
	return xp_reply(req, status, 0, &b);
}

/* ---------------------------------------------------------------------------------------- */
/* waiting for a reply */

struct call_wait {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool done;
	int err;
	struct xp_resp resp;
};

static int call_done(void *ctx, int err, struct xp_resp *r)
{
	struct call_wait *w = ctx;
	pthread_mutex_lock(&w->lock);
	w->err = err;
	if (r)
		w->resp = *r; /* ownership of r->buf moves to the waiter */
	w->done = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

int xp_call(struct xp_client *c, const struct xp_msg *m, struct xp_resp *ret)
{
	struct call_wait w = {.done = false};
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cv, NULL);
	int r = c->ops->submit(c, m, call_done, &w);
	if (r == 0) {
		wait_hint();
		pthread_mutex_lock(&w.lock);
		while (!w.done)
			pthread_cond_wait(&w.cv, &w.lock);
		pthread_mutex_unlock(&w.lock);
		r = w.err;
		if (r == 0)
			*ret = w.resp;
	}
	pthread_cond_destroy(&w.cv);
	pthread_mutex_destroy(&w.lock);
	return r;
}

/* A stream's frames queue here between the I/O thread and the caller. At most
 * STREAM_MAX_PAGES wait: beyond, the connection is paused (XP_PAUSE) until the caller has
 * taken half of them. */
#define STREAM_MAX_PAGES 16

struct page {
	struct xp_resp r;
	struct page *next;
};

struct stream_wait {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct page *head, *tail;
	unsigned n;
	bool final, paused;
	int err;
};

static int stream_done(void *ctx, int err, struct xp_resp *r)
{
	struct stream_wait *w = ctx;
	/* XP-2: an error, or a frame without MORE, is the transport's last call */
	bool last = err || !(r->hdr.flags & PROTO_F_MORE);
	struct page *p = err ? NULL : calloc(1, sizeof(*p));
	int ret = 0;
	pthread_mutex_lock(&w->lock);
	if (err) {
		w->err = err;
	} else if (!p) {
		/* this page is lost: the caller gets -ENOMEM once the stream ended */
		xp_resp_fini(r);
		w->err = -ENOMEM;
	} else {
		p->r = *r; /* ownership of r->buf moves to the page */
		if (w->tail)
			w->tail->next = p;
		else
			w->head = p;
		w->tail = p;
		/* one XP_PAUSE for each xp_resume() the caller will make */
		if (++w->n >= STREAM_MAX_PAGES && !last && !w->paused) {
			w->paused = true;
			ret = XP_PAUSE;
		}
	}
	if (last)
		w->final = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->lock);
	return ret;
}

int xp_call_stream(struct xp_client *c, const struct xp_msg *m,
		   int (*page)(void *ctx, const struct xp_resp *r), void *ctx)
{
	struct stream_wait w = {.head = NULL};
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cv, NULL);
	int r = c->ops->submit(c, m, stream_done, &w);
	int stop = 0, status = 0;
	if (r == 0)
		wait_hint();
	for (bool last = false; r == 0 && !last;) {
		pthread_mutex_lock(&w.lock);
		while (!w.head && !w.final)
			pthread_cond_wait(&w.cv, &w.lock);
		struct page *p = w.head;
		if (p) {
			w.head = p->next;
			if (!w.head)
				w.tail = NULL;
			w.n--;
		}
		bool resume = w.paused && w.n <= STREAM_MAX_PAGES / 2;
		if (resume)
			w.paused = false;
		last = !w.head && w.final;
		if (last)
			r = w.err;
		pthread_mutex_unlock(&w.lock);
		if (resume)
			c->ops->resume(c);
		if (!p)
			continue;
		if (p->r.hdr.status < 0)
			status = p->r.hdr.status;
		else if (!stop)
			stop = page(ctx, &p->r);
		xp_resp_fini(&p->r);
		free(p);
	}
	pthread_cond_destroy(&w.cv);
	pthread_mutex_destroy(&w.lock);
	if (r)
		return r;
	return stop ? stop : status;
}
