/* transport_tcp — the tcp:// transport (transport.h, XP-1..XP-5): epoll, non-blocking sockets.
 *
 * DESIGN
 *   A *loop* is one epoll instance and its I/O thread. A server has its own loop (its listen
 *   socket and every accepted connection); all clients of a process share one client loop,
 *   started with the first client and stopped with the last. A process has at most two I/O
 *   threads, whatever the number of peers.
 *
 *   Sending. The thread that sends a frame builds it (header + payload in one buffer, crc
 *   computed while nothing is locked) and appends it to the connection's send queue. When
 *   nothing waits for EPOLLOUT, that thread writes at once with a non-blocking sendmsg: the
 *   common small frame leaves without a hand-off to the I/O thread. What the socket does not
 *   take stays queued, and EPOLLOUT lets the I/O thread drain it (XP-1).
 *
 *   Receiving. Only the I/O thread reads. Frames with payloads up to RX_INLINE bytes are
 *   assembled in the connection's RX_BUF buffer (many frames per read()); a larger payload is
 *   read straight into its own buffer. The header is decoded, crc first (PROTO-3), before its
 *   length is trusted; a header that does not decode means the framing is lost and the
 *   connection is closed. A connection is read from only while nothing pauses it (XP-1): on a
 *   server, too many unanswered requests or bytes, or a full send queue; on a client, a
 *   stream consumer that fell behind (XP_PAUSE).
 *
 *   Client requests wait in a hash by request id and in a FIFO that is in deadline order (one
 *   timeout per client, so submission order is deadline order). The client loop's tick, every
 *   TICK_MS, fails expired requests, pings idle connections and closes silent ones (XP-2).
 *
 * LIFETIME OF A CONNECTION
 *   Created with one reference, its loop's. A client holds another while the connection is its
 *   current one; a thread holds one while it sends; a server request holds one until its final
 *   reply; a kick holds one until the loop ran it. Only the I/O thread closes a connection
 *   (another thread sets `broken` and kicks the loop); closing wakes its senders (-ECONNRESET)
 *   and calls its owner's on_close exactly once. The loop's reference is dropped after the
 *   current epoll batch, so an event of the same batch never finds a freed connection.
 *
 * LOCKS (order, outermost first)
 *   cloop_life (starting and stopping the client loop; never taken by an I/O thread)
 *   -> cloop_lock (the client loop's list of clients)
 *     -> tcp_client.lock (current connection, pending requests, dialing)
 *       -> conn.lock (send queue, pause reasons, epoll mask, closed/broken)
 *         -> loop.lock (kick list; a leaf)
 *   tcp_server.lock (worker pool, per-connection request queues and counters) -> conn.lock.
 *   Completions (xp_done_fn) run on the client loop's thread with no lock held.
 */
#include "dataservice/transport.h"
#include "dataservice/transport_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/log.h"
#include "common/url.h"
#include "common/util.h"

#define TICK_MS	  20
#define RX_BUF	  (256 * 1024) /* per connection */
#define RX_INLINE (64 * 1024)  /* larger payloads get their own buffer */
#define RX_BUDGET 16	       /* read() calls per connection per epoll event */
#define IOV_BATCH 64	       /* frames per sendmsg */
#define MS	  1000000LL    /* ns */
#define HASH_MIN  64
#define HASH_MAX  (1u << 16)
#define DEF(v, d) ((v) ? (v) : (d))

/* Append x to the singly linked FIFO (head, tail) through x's member `link`. */
#define FIFO_PUSH(head, tail, x, link)                                                             \
	do {                                                                                       \
		(x)->link = NULL;                                                                  \
		if (tail)                                                                          \
			(tail)->link = (x);                                                        \
		else                                                                               \
			(head) = (x);                                                              \
		(tail) = (x);                                                                      \
	} while (0)

/* why a connection is not read from (conn.pause) */
#define PAUSE_INFLIGHT 0x1 /* server: conn_inflight requests or sendq_bytes of them unanswered */
#define PAUSE_SENDQ    0x2 /* server: the send queue is full: the peer does not read */
#define PAUSE_CONSUMER 0x4 /* client: a stream's consumer fell behind */

enum send_mode {
	SEND_WAIT,  /* wait for queue space until the deadline */
	SEND_FORCE, /* queue regardless (a server's final reply: bounded by conn_inflight) */
	SEND_TRY,   /* -EAGAIN when full (pings) */
};

struct frame {
	struct frame *next;
	size_t len, off; /* bytes, bytes sent */
	uint8_t bytes[]; /* header + payload */
};

struct conn;

struct conn_ops {
	/* I/O thread: one frame arrived. err is 0, or -EBADMSG when its payload crc or body did
	 * not decode (why says how; body is then not valid). Owns payload. */
	void (*on_frame)(struct conn *c, const struct proto_hdr *h, uint8_t *payload,
			 const struct proto_body *body, int err, const char *why);
	/* I/O thread, exactly once: the connection is closed. */
	void (*on_close)(struct conn *c, int err);
};

struct loop {
	int epfd, evfd;
	char tag_event, tag_listen; /* their addresses tell epoll events apart */
	pthread_t th;
	bool running;
	int stop;		/* __atomic */
	pthread_mutex_t lock;	/* kick list */
	struct conn *kick_head; /* protected by lock */
	struct conn *grave;	/* I/O thread: references to drop after the batch */
	void (*tick)(void *owner, int64_t now);
	void (*on_listen)(void *owner);
	void *owner;
};

struct conn {
	const struct conn_ops *cops;
	struct loop *loop;
	void *owner;
	uint64_t gen;	  /* client: which connection of the client this is */
	uint16_t version; /* negotiated by HELLO */
	char name[64];	  /* the peer's address, for messages */
	unsigned refs;	  /* __atomic */

	pthread_mutex_t lock;
	pthread_cond_t space_cv;	 /* senders waiting for queue space */
	int fd;				 /* -1 once closed; protected by lock */
	struct frame *sq_head, *sq_tail; /* protected by lock */
	size_t sq_bytes, sq_max;	 /* protected by lock */
	uint64_t *sq_peak;		 /* the owner's statistic (__atomic), or NULL */
	unsigned waiters;		 /* on space_cv; protected by lock */
	unsigned pause;			 /* PAUSE_*; protected by lock, read __atomic by the loop */
	unsigned events;		 /* what epoll has; protected by lock */
	int broken;			 /* an error seen by a sender; the loop closes; lock */
	bool closed;			 /* protected by lock */
	bool close_when_drained;	 /* protected by lock */

	bool kicked;		/* protected by loop.lock */
	struct conn *kick_next; /* protected by loop.lock */
	unsigned grave_refs;	/* I/O thread */
	struct conn *gnext;	/* I/O thread */
	struct conn *tnext;	/* I/O thread: the tick's work lists */

	/* receiving: I/O thread only */
	uint8_t *rbuf;
	size_t rstart, rend;
	struct proto_hdr bhdr; /* the big frame being read */
	uint8_t *big;
	size_t bgot;
	bool in_big;
	int64_t last_rx;
};

static int64_t now_ns(void)
{
	return now_monotonic_ns();
}

static void stat_max(uint64_t *stat, uint64_t v)
{
	uint64_t cur = __atomic_load_n(stat, __ATOMIC_RELAXED);
	while (v > cur && !__atomic_compare_exchange_n(stat, &cur, v, true, __ATOMIC_RELAXED,
						       __ATOMIC_RELAXED))
		;
}

static void sock_opts(int fd, unsigned dead_ms)
{
	int one = 1, cnt = 3, ivl = (int)MAX(1u, dead_ms / 3000);
	unsigned ut = dead_ms;
	/* small frames leave at once; a dead peer is found by keepalive when idle and by the
	 * user timeout when data stays unacknowledged */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &ivl, sizeof(ivl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &ivl, sizeof(ivl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof(ut));
}

static void sock_name(int fd, bool peer, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	int r = peer ? getpeername(fd, (struct sockaddr *)&ss, &sl)
		     : getsockname(fd, (struct sockaddr *)&ss, &sl);
	if (r == 0 && ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
	} else if (r == 0 && ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
	}
	snprintf(out, len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

/* ---------------------------------------------------------------------------------------- */
/* frames */

static const struct proto_body zero_body;

/* Header h (len and, unless keep_crc, pcrc computed here) + b's payload, in one buffer. */
static int frame_build(const struct proto_hdr *h0, const struct proto_body *b, bool keep_crc,
		       struct frame **ret)
{
	if (!b)
		b = &zero_body;
	struct proto_hdr h = *h0;
	uint8_t fixed[PROTO_MAX_FIXED];
	ssize_t fl = proto_body_encode(&h, b, fixed, sizeof(fixed));
	if (fl < 0)
		return (int)fl;
	const uint8_t *tail = NULL;
	size_t tl = 0;
	if (proto_has_tail(&h)) {
		tail = b->data;
		tl = b->data_len;
	}
	h.len = (uint32_t)((size_t)fl + tl);
	struct frame *f = xp_buf_alloc(sizeof(*f) + PROTO_HDR_SIZE + h.len);
	if (!f)
		return -ENOMEM;
	uint8_t *p = f->bytes + PROTO_HDR_SIZE;
	memcpy(p, fixed, (size_t)fl);
	if (tl)
		memcpy(p + fl, tail, tl);
	if (!keep_crc)
		h.pcrc = crc32c(0, p, h.len);
	proto_hdr_encode(&h, f->bytes);
	f->next = NULL;
	f->len = PROTO_HDR_SIZE + h.len;
	f->off = 0;
	*ret = f;
	return 0;
}

static void frames_free(struct frame *f)
{
	while (f) {
		struct frame *n = f->next;
		xp_buf_free(f);
		f = n;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* connections */

static void conn_ref(struct conn *c)
{
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

static void conn_unref(struct conn *c)
{
	if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	frames_free(c->sq_head);
	free(c->rbuf);
	xp_buf_free(c->big);
	pthread_cond_destroy(&c->space_cv);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* size: of the owner's struct that starts with struct conn. The fd is not watched yet. */
static struct conn *conn_new(size_t size, struct loop *l, int fd, const struct conn_ops *ops,
			     void *owner, size_t sq_max, uint64_t *sq_peak)
{
	struct conn *c = calloc(1, size);
	if (!c)
		return NULL;
	c->rbuf = malloc(RX_BUF);
	if (!c->rbuf) {
		free(c);
		return NULL;
	}
	c->cops = ops;
	c->loop = l;
	c->owner = owner;
	c->fd = fd;
	c->refs = 1;
	c->sq_max = sq_max;
	c->sq_peak = sq_peak;
	c->last_rx = now_ns();
	pthread_mutex_init(&c->lock, NULL);
	cond_init_monotonic(&c->space_cv);
	sock_name(fd, true, c->name, sizeof(c->name));
	return c;
}

static int conn_watch(struct conn *c)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
	c->events = EPOLLIN;
	return epoll_ctl(c->loop->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0 ? -errno : 0;
}

/* Ask the I/O thread to look at c: close it when broken, else read what it buffered. Any
 * thread; c.lock may be held (loop.lock is a leaf). */
static void loop_kick(struct loop *l, struct conn *c)
{
	pthread_mutex_lock(&l->lock);
	if (!c->kicked) {
		c->kicked = true;
		conn_ref(c);
		c->kick_next = l->kick_head;
		l->kick_head = c;
	}
	pthread_mutex_unlock(&l->lock);
	uint64_t one = 1;
	if (write(l->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_debug("tcp: cannot wake the I/O thread: %s", strerror(errno));
}

/* I/O thread: drop one reference of c after the current batch of events. */
static void loop_defer_unref(struct loop *l, struct conn *c)
{
	if (c->grave_refs++ == 0) {
		c->gnext = l->grave;
		l->grave = c;
	}
}

static void loop_release(struct loop *l)
{
	while (l->grave) {
		struct conn *c = l->grave;
		l->grave = c->gnext;
		unsigned n = c->grave_refs;
		c->grave_refs = 0;
		while (n--)
			conn_unref(c);
	}
}

/* The epoll mask follows the state: EPOLLIN unless paused, EPOLLOUT while frames wait. */
static void conn_update_locked(struct conn *c)
{
	if (c->closed)
		return;
	unsigned want = (c->pause ? 0 : EPOLLIN) | ((c->sq_head && !c->broken) ? EPOLLOUT : 0);
	if (want == c->events)
		return;
	struct epoll_event ev = {.events = want, .data.ptr = c};
	if (epoll_ctl(c->loop->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->events = want;
}

static void conn_fail_locked(struct conn *c, int err)
{
	if (c->closed || c->broken)
		return;
	c->broken = err;
	conn_update_locked(c);
	loop_kick(c->loop, c);
}

static void conn_fail(struct conn *c, int err)
{
	pthread_mutex_lock(&c->lock);
	conn_fail_locked(c, err);
	pthread_mutex_unlock(&c->lock);
}

static void conn_pause_locked(struct conn *c, unsigned why)
{
	__atomic_store_n(&c->pause, c->pause | why, __ATOMIC_RELAXED);
	conn_update_locked(c);
}

static void conn_unpause_locked(struct conn *c, unsigned why)
{
	if (!(c->pause & why))
		return;
	__atomic_store_n(&c->pause, c->pause & ~why, __ATOMIC_RELAXED);
	conn_update_locked(c);
	if (!c->pause && !c->closed)
		loop_kick(c->loop, c); /* frames may wait in the receive buffer */
}

/* Write what the socket takes now, never waiting (XP-1). */
static void conn_flush_locked(struct conn *c)
{
	while (c->sq_head && !c->broken && !c->closed) {
		struct iovec iov[IOV_BATCH];
		int n = 0;
		for (struct frame *f = c->sq_head; f && n < IOV_BATCH; f = f->next)
			iov[n++] = (struct iovec){f->bytes + f->off, f->len - f->off};
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				conn_fail_locked(c, -errno);
			break;
		}
		size_t left = (size_t)w;
		while (left) {
			struct frame *f = c->sq_head;
			size_t k = f->len - f->off;
			if (left < k) {
				f->off += left;
				break;
			}
			left -= k;
			c->sq_head = f->next;
			if (!c->sq_head)
				c->sq_tail = NULL;
			c->sq_bytes -= f->len;
			xp_buf_free(f);
		}
	}
	if (!c->sq_head && c->close_when_drained)
		conn_fail_locked(c, -ECONNRESET);
	if (c->sq_bytes < c->sq_max / 2)
		conn_unpause_locked(c, PAUSE_SENDQ);
	if (c->waiters && c->sq_bytes < c->sq_max)
		pthread_cond_broadcast(&c->space_cv);
	conn_update_locked(c);
}

/* Queue f (ours from now on) and write what the socket takes. 0, or -ECONNRESET (closed),
 * -ETIMEDOUT (SEND_WAIT: no space by deadline), -EAGAIN (SEND_TRY: full). */
static int conn_send(struct conn *c, struct frame *f, enum send_mode mode, int64_t deadline)
{
	int r = 0;
	pthread_mutex_lock(&c->lock);
	while (mode != SEND_FORCE && !c->closed && !c->broken && c->sq_bytes >= c->sq_max) {
		if (mode == SEND_TRY) {
			r = -EAGAIN;
			break;
		}
		c->waiters++;
		int w = cond_wait_until(&c->space_cv, &c->lock, deadline);
		c->waiters--;
		if (w == ETIMEDOUT) {
			r = -ETIMEDOUT;
			break;
		}
	}
	if (!r && (c->closed || c->broken))
		r = -ECONNRESET;
	if (r) {
		pthread_mutex_unlock(&c->lock);
		xp_buf_free(f);
		return r;
	}
	FIFO_PUSH(c->sq_head, c->sq_tail, f, next);
	c->sq_bytes += f->len;
	if (c->sq_peak)
		stat_max(c->sq_peak, c->sq_bytes);
	if (!(c->events & EPOLLOUT))
		conn_flush_locked(c); /* nothing waits for EPOLLOUT: this thread writes */
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* I/O thread only. */
static void conn_close(struct conn *c, int err)
{
	pthread_mutex_lock(&c->lock);
	if (c->closed) {
		pthread_mutex_unlock(&c->lock);
		return;
	}
	c->closed = true;
	epoll_ctl(c->loop->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	frames_free(c->sq_head);
	c->sq_head = c->sq_tail = NULL;
	c->sq_bytes = 0;
	pthread_cond_broadcast(&c->space_cv);
	pthread_mutex_unlock(&c->lock);
	log_debug("tcp: connection with %s closed: %s", c->name, strerror(-err));
	c->cops->on_close(c, err);
	loop_defer_unref(c->loop, c);
}

static void deliver(struct conn *c, const struct proto_hdr *h, uint8_t *payload)
{
	char why[200] = "";
	struct proto_body b;
	int err = proto_payload_check(h, payload, why, sizeof(why));
	if (!err)
		err = proto_body_decode(h, payload, h->len, &b, why, sizeof(why));
	c->cops->on_frame(c, h, payload, &b, err, why);
}

/* I/O thread: read and deliver frames until the socket is empty, the budget is spent, or c is
 * paused or closed. Complete frames already buffered are delivered before the next read. */
static void conn_rx(struct conn *c)
{
	int reads = 0;
	for (;;) {
		if (c->closed || __atomic_load_n(&c->pause, __ATOMIC_RELAXED))
			return;
		ssize_t n;
		if (c->in_big) {
			if (reads++ >= RX_BUDGET)
				return;
			n = read(c->fd, c->big + c->bgot, c->bhdr.len - c->bgot);
			if (n > 0) {
				c->bgot += (size_t)n;
				c->last_rx = now_ns();
				if (c->bgot == c->bhdr.len) {
					uint8_t *p = c->big;
					c->big = NULL;
					c->in_big = false;
					deliver(c, &c->bhdr, p);
				}
				continue;
			}
		} else {
			size_t avail = c->rend - c->rstart;
			if (avail >= PROTO_HDR_SIZE) {
				struct proto_hdr h;
				char why[160];
				const uint8_t *at = c->rbuf + c->rstart;
				int r = proto_hdr_decode(at, PROTO_HDR_SIZE, &h, why, sizeof(why));
				if (r < 0) {
					log_debug("tcp: %s: %s", c->name, why);
					conn_close(c, r);
					return;
				}
				size_t have = avail - PROTO_HDR_SIZE;
				if (have >= h.len || h.len > RX_INLINE) {
					uint8_t *p = xp_buf_alloc(h.len);
					if (!p) {
						conn_close(c, -ENOMEM);
						return;
					}
					size_t k = MIN(have, (size_t)h.len);
					memcpy(p, at + PROTO_HDR_SIZE, k);
					c->rstart += PROTO_HDR_SIZE + k;
					if (k == h.len) {
						deliver(c, &h, p);
					} else {
						c->bhdr = h;
						c->big = p;
						c->bgot = k;
						c->in_big = true;
					}
					continue;
				}
			}
			if (reads++ >= RX_BUDGET)
				return;
			if (c->rstart) {
				memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
				c->rend -= c->rstart;
				c->rstart = 0;
			}
			n = read(c->fd, c->rbuf + c->rend, RX_BUF - c->rend);
			if (n > 0) {
				c->rend += (size_t)n;
				c->last_rx = now_ns();
				continue;
			}
		}
		if (n == 0) {
			conn_close(c, -ECONNRESET);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			conn_close(c, -errno);
		return;
	}
}

static void conn_event(struct conn *c, uint32_t ev)
{
	if (c->closed)
		return;
	if (ev & EPOLLERR) {
		int so = 0;
		socklen_t sl = sizeof(so);
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &so, &sl);
		conn_close(c, so ? -so : -ECONNRESET);
		return;
	}
	if (ev & EPOLLOUT) {
		pthread_mutex_lock(&c->lock);
		conn_flush_locked(c);
		pthread_mutex_unlock(&c->lock);
	}
	if ((ev & EPOLLHUP) && __atomic_load_n(&c->pause, __ATOMIC_RELAXED)) {
		conn_close(c, -ECONNRESET); /* gone while we do not read: nothing to wait for */
		return;
	}
	if (ev & (EPOLLIN | EPOLLHUP))
		conn_rx(c);
}

/* ---------------------------------------------------------------------------------------- */
/* loops */

static void loop_kicks(struct loop *l)
{
	uint64_t v;
	while (read(l->evfd, &v, sizeof(v)) > 0)
		;
	pthread_mutex_lock(&l->lock);
	struct conn *list = l->kick_head;
	l->kick_head = NULL;
	pthread_mutex_unlock(&l->lock);
	while (list) {
		struct conn *c = list;
		/* next and kicked together: once kicked is false another thread may kick c
		 * again, which rewrites kick_next */
		pthread_mutex_lock(&l->lock);
		list = c->kick_next;
		c->kicked = false;
		pthread_mutex_unlock(&l->lock);
		if (!c->closed) {
			pthread_mutex_lock(&c->lock);
			int broken = c->broken;
			pthread_mutex_unlock(&c->lock);
			if (broken)
				conn_close(c, broken);
			else
				conn_rx(c);
		}
		loop_defer_unref(l, c);
	}
}

static void *loop_main(void *arg)
{
	struct loop *l = arg;
	struct epoll_event evs[64];
	int64_t last_tick = now_ns();
	while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
		int n = epoll_wait(l->epfd, evs, ARRAY_SIZE(evs), TICK_MS);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &l->tag_event)
				loop_kicks(l);
			else if (p == &l->tag_listen)
				l->on_listen(l->owner);
			else
				conn_event(p, evs[i].events);
		}
		int64_t now = now_ns();
		if (now - last_tick >= TICK_MS * MS) {
			last_tick = now;
			l->tick(l->owner, now);
		}
		loop_release(l);
	}
	return NULL;
}

static int loop_init(struct loop *l, void (*tick)(void *, int64_t), void *owner)
{
	memset(l, 0, sizeof(*l));
	l->tick = tick;
	l->owner = owner;
	pthread_mutex_init(&l->lock, NULL);
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->tag_event};
	if (l->epfd < 0 || l->evfd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev) < 0) {
		int r = -errno;
		if (l->epfd >= 0)
			close(l->epfd);
		if (l->evfd >= 0)
			close(l->evfd);
		pthread_mutex_destroy(&l->lock);
		return r;
	}
	return 0;
}

static int loop_start(struct loop *l)
{
	int r = pthread_create(&l->th, NULL, loop_main, l);
	l->running = r == 0;
	return -r;
}

static void loop_stop(struct loop *l)
{
	if (!l->running)
		return;
	__atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
	uint64_t one = 1;
	if (write(l->evfd, &one, sizeof(one)) < 0)
		log_debug("tcp: cannot wake the I/O thread: %s", strerror(errno));
	pthread_join(l->th, NULL);
	l->running = false;
}

/* After loop_stop: the caller is the I/O thread from now on. */
static void loop_fini(struct loop *l)
{
	pthread_mutex_lock(&l->lock);
	struct conn *list = l->kick_head;
	l->kick_head = NULL;
	pthread_mutex_unlock(&l->lock);
	while (list) {
		struct conn *c = list;
		list = c->kick_next;
		c->kicked = false;
		loop_defer_unref(l, c);
	}
	loop_release(l);
	close(l->epfd);
	close(l->evfd);
	pthread_mutex_destroy(&l->lock);
}

/* tcp://HOST:PORT (port required; 0 allowed for listening). */
static int parse_addr(const char *url, char *host, size_t hostlen, int *port, char *err,
		      size_t errlen)
{
	/* url_parse refuses port 0; "any port" is spelled :0 here, so parse it as :1 */
	char copy[XP_URL_MAX];
	size_t n = strlen(url);
	if (n >= sizeof(copy)) {
		snprintf(err, errlen, "address of %zu bytes is too long", n);
		return -EINVAL;
	}
	memcpy(copy, url, n + 1);
	if (n && copy[n - 1] == '/')
		copy[--n] = '\0';
	bool port0 = n >= 2 && copy[n - 1] == '0' && copy[n - 2] == ':';
	if (port0)
		copy[n - 1] = '1';
	struct url u;
	char why[128];
	if (url_parse(copy, &u, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "%s", why);
		return -EINVAL;
	}
	if (strcmp(u.scheme, "tcp") || !u.has_authority || !u.host[0] || u.path[0] || u.query[0] ||
	    u.userinfo[0]) {
		snprintf(err, errlen, "'%s' is not a tcp://HOST:PORT address", url);
		return -EINVAL;
	}
	if (u.port <= 0) {
		snprintf(err, errlen, "'%s' has no port (tcp://HOST:PORT)", url);
		return -EINVAL;
	}
	snprintf(host, hostlen, "%s", u.host);
	*port = port0 ? 0 : u.port;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* client */

struct pend {
	uint64_t id, gen;
	int64_t deadline;
	xp_done_fn done;
	void *ctx;
	struct pend *hnext, *prev, *next;
};

struct tcp_client {
	struct xp_client base;
	struct xp_client_cfg cfg;
	char host[256];
	int port;

	pthread_mutex_t lock;
	pthread_cond_t cv; /* dialing finished, inflight space, a connection closed */
	struct conn *conn; /* the current connection (a reference), or NULL */
	uint64_t gen;	   /* of the newest connection */
	unsigned nconns;   /* connections not closed yet */
	bool dialing, freeing;
	int64_t last_fail; /* when the last dial failed (0: it did not) */
	int last_err;
	char last_msg[1024];
	struct proto_hello peer;
	struct pend **hash;
	unsigned hmask;
	struct pend *fifo_head, *fifo_tail; /* deadline order */
	unsigned inflight, waiters;
	uint64_t next_req;
	int64_t last_ping;
	/* XP_PAUSE returns less xp_resume() calls: the current connection is paused for its
	 * consumers while this is above 0. A count, not a flag: the consumer may resume before
	 * the I/O thread, back from the callback that asked, has paused the connection. */
	int consumer_pauses;

	struct tcp_client *cnext, *cprev; /* protected by cloop_lock */
};

/* The client loop, shared by every client of the process. cloop_life (outermost, never taken
 * by the I/O thread) serializes starting and stopping it; cloop_lock guards the client list
 * that the I/O thread's tick walks. */
static pthread_mutex_t cloop_life = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cloop_lock = PTHREAD_MUTEX_INITIALIZER;
static struct loop cloop;
static struct tcp_client *cloop_clients; /* protected by cloop_lock */
static unsigned cloop_users;		 /* protected by cloop_lock */

static struct pend **pend_slot(struct tcp_client *cl, uint64_t id)
{
	struct pend **pp = &cl->hash[id & cl->hmask];
	while (*pp && (*pp)->id != id)
		pp = &(*pp)->hnext;
	return pp;
}

static void pend_link(struct tcp_client *cl, struct pend *p)
{
	struct pend **slot = &cl->hash[p->id & cl->hmask];
	p->hnext = *slot;
	*slot = p;
	p->next = NULL;
	p->prev = cl->fifo_tail;
	if (cl->fifo_tail)
		cl->fifo_tail->next = p;
	else
		cl->fifo_head = p;
	cl->fifo_tail = p;
	cl->inflight++;
}

static void pend_unlink(struct tcp_client *cl, struct pend *p)
{
	struct pend **pp = pend_slot(cl, p->id);
	if (*pp == p)
		*pp = p->hnext;
	if (p->prev)
		p->prev->next = p->next;
	else
		cl->fifo_head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		cl->fifo_tail = p->prev;
	p->prev = p->next = p->hnext = NULL;
	cl->inflight--;
	if (cl->waiters)
		pthread_cond_broadcast(&cl->cv);
}

static void client_on_frame(struct conn *c, const struct proto_hdr *h, uint8_t *payload,
			    const struct proto_body *b, int err, const char *why)
{
	struct tcp_client *cl = c->owner;
	if (!(h->flags & PROTO_F_REPLY)) {
		xp_buf_free(payload);
		log_debug("tcp: %s sent a request to a client", c->name);
		conn_close(c, -EPROTO);
		return;
	}
	pthread_mutex_lock(&cl->lock);
	struct pend *p = *pend_slot(cl, h->req_id);
	if (!p || p->gen != c->gen) {
		pthread_mutex_unlock(&cl->lock);
		xp_buf_free(payload);
		if (h->op != PROTO_OP_PING) /* our heartbeat: hearing it was the point */
			log_debug("tcp: %s: reply to request %llu that no longer waits", c->name,
				  (unsigned long long)h->req_id);
		return;
	}
	bool more = !err && (h->flags & PROTO_F_MORE);
	if (more) { /* a stream lives as long as its frames keep coming */
		p->deadline = now_ns() + (int64_t)cl->cfg.timeout_ms * MS;
		pend_unlink(cl, p);
		pend_link(cl, p);
	} else {
		pend_unlink(cl, p);
	}
	pthread_mutex_unlock(&cl->lock);
	int rc;
	if (err) {
		log_debug("tcp: %s: %s", c->name, why);
		xp_buf_free(payload);
		rc = p->done(p->ctx, err, NULL);
	} else {
		struct xp_resp r = {.hdr = *h, .body = *b, .buf = payload};
		rc = p->done(p->ctx, 0, &r);
	}
	if (!more) {
		free(p);
	} else if (rc == XP_PAUSE) {
		pthread_mutex_lock(&cl->lock);
		if (++cl->consumer_pauses > 0 && cl->conn == c) {
			pthread_mutex_lock(&c->lock);
			conn_pause_locked(c, PAUSE_CONSUMER);
			pthread_mutex_unlock(&c->lock);
		}
		pthread_mutex_unlock(&cl->lock);
	}
}

static void client_on_close(struct conn *c, int err)
{
	struct tcp_client *cl = c->owner;
	struct pend *failed = NULL;
	/* XP-2: a silent peer is -ETIMEDOUT; any other loss (reset, EOF, EPIPE on a send,
	 * a framing error) is -ECONNRESET, the one error callers may retry on */
	if (err != -ETIMEDOUT)
		err = -ECONNRESET;
	pthread_mutex_lock(&cl->lock);
	bool current = cl->conn == c;
	if (current)
		cl->conn = NULL;
	for (struct pend *p = cl->fifo_head, *n; p; p = n) {
		n = p->next;
		if (p->gen != c->gen)
			continue;
		pend_unlink(cl, p);
		p->next = failed;
		failed = p;
	}
	pthread_mutex_unlock(&cl->lock);
	while (failed) {
		struct pend *p = failed;
		failed = p->next;
		p->done(p->ctx, err, NULL);
		free(p);
	}
	if (current)
		conn_unref(c);
	/* last: xp_client_free returns once every connection got here, so every completion
	 * of the client ran before it returns */
	pthread_mutex_lock(&cl->lock);
	cl->nconns--;
	pthread_cond_broadcast(&cl->cv);
	pthread_mutex_unlock(&cl->lock);
}

static const struct conn_ops client_cops = {client_on_frame, client_on_close};

static void client_ping(struct tcp_client *cl, struct conn *c, uint16_t version)
{
	struct proto_body b = {.value = (uint64_t)now_ns()};
	struct proto_hdr h = {
	    .version = version,
	    .op = PROTO_OP_PING,
	    .req_id = __atomic_add_fetch(&cl->next_req, 1, __ATOMIC_RELAXED),
	    .chain = PROTO_NO_CHAIN,
	    .target = PROTO_NO_TARGET,
	};
	struct frame *f;
	if (frame_build(&h, &b, false, &f) == 0)
		conn_send(c, f, SEND_TRY, 0);
}

/* The client loop's tick: expired requests, dead connections, heartbeats (XP-2). */
static void cloop_tick(void *owner, int64_t now)
{
	(void)owner;
	struct pend *expired = NULL;
	struct conn *dead = NULL, *ping = NULL;
	pthread_mutex_lock(&cloop_lock);
	for (struct tcp_client *cl = cloop_clients; cl; cl = cl->cnext) {
		pthread_mutex_lock(&cl->lock);
		struct conn *c = cl->conn;
		bool paused = c && (__atomic_load_n(&c->pause, __ATOMIC_RELAXED) & PAUSE_CONSUMER);
		if (paused) {
			/* we are not listening: silence is ours, not the peer's */
			c->last_rx = now;
			for (struct pend *p = cl->fifo_head; p; p = p->next)
				p->deadline =
				    MAX(p->deadline, now + (int64_t)cl->cfg.timeout_ms * MS);
		}
		while (cl->fifo_head && cl->fifo_head->deadline <= now) {
			struct pend *p = cl->fifo_head;
			pend_unlink(cl, p);
			p->next = expired;
			expired = p;
		}
		if (c && now - c->last_rx > (int64_t)cl->cfg.dead_ms * MS) {
			conn_ref(c);
			c->tnext = dead;
			dead = c;
		} else if (c && now - c->last_rx >= (int64_t)cl->cfg.ping_ms * MS &&
			   now - cl->last_ping >= (int64_t)cl->cfg.ping_ms * MS) {
			cl->last_ping = now;
			conn_ref(c);
			c->tnext = ping;
			ping = c;
		}
		pthread_mutex_unlock(&cl->lock);
	}
	pthread_mutex_unlock(&cloop_lock);
	while (expired) {
		struct pend *p = expired;
		expired = p->next;
		p->done(p->ctx, -ETIMEDOUT, NULL);
		free(p);
	}
	while (dead) {
		struct conn *c = dead;
		dead = c->tnext;
		log_debug("tcp: %s sent nothing for too long: declared dead", c->name);
		conn_close(c, -ETIMEDOUT);
		loop_defer_unref(c->loop, c);
	}
	while (ping) {
		struct conn *c = ping;
		ping = c->tnext;
		/* the client stays: its connection is open, so xp_client_free still waits */
		client_ping(c->owner, c, c->version);
		loop_defer_unref(c->loop, c);
	}
}

static int fd_wait(int fd, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = (deadline - now_ns()) / MS;
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = fd, .events = events};
		int r = poll(&p, 1, (int)MIN(left, (int64_t)INT32_MAX));
		if (r > 0)
			return 0;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

static int fd_io_all(int fd, void *buf, size_t len, bool wr, int64_t deadline)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = wr ? send(fd, (char *)buf + done, len - done, MSG_NOSIGNAL)
			       : recv(fd, (char *)buf + done, len - done, 0);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		int r = fd_wait(fd, wr ? POLLOUT : POLLIN, deadline);
		if (r)
			return r;
	}
	return 0;
}

static int dial_connect(struct tcp_client *cl, int64_t deadline, int *ret_fd, char *err,
			size_t errlen)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC}, *ai;
	char port[16];
	snprintf(port, sizeof(port), "%d", cl->port);
	int r = getaddrinfo(cl->host, port, &hints, &ai);
	if (r) {
		snprintf(err, errlen, "%s: cannot resolve %s: %s", cl->base.url, cl->host,
			 gai_strerror(r));
		return -EHOSTUNREACH;
	}
	int fd = -1;
	r = -ECONNREFUSED;
	for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			r = -errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		r = -errno;
		if (r == -EINPROGRESS) {
			r = fd_wait(fd, POLLOUT, deadline);
			int so = 0;
			socklen_t sl = sizeof(so);
			if (!r && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) == 0 && !so)
				break;
			if (!r)
				r = -so;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		snprintf(err, errlen, "%s: cannot connect: %s", cl->base.url, strerror(-r));
		return r;
	}
	*ret_fd = fd;
	return 0;
}

/* HELLO on a fresh socket, from the calling thread (the I/O thread never waits). */
static int dial_hello(struct tcp_client *cl, int fd, int64_t deadline, struct proto_hello *ret,
		      char *err, size_t errlen)
{
	struct proto_body b = {.hello = {.min_version = PROTO_VERSION_MIN,
					 .max_version = PROTO_VERSION_MAX,
					 .node_id = cl->cfg.node_id,
					 .instance = cl->base.instance}};
	memcpy(b.hello.volume_uuid, cl->cfg.volume_uuid, sizeof(b.hello.volume_uuid));
	struct proto_hdr h = {.version = PROTO_VERSION_MIN,
			      .op = PROTO_OP_HELLO,
			      .chain = PROTO_NO_CHAIN,
			      .target = PROTO_NO_TARGET};
	struct frame *f;
	int r = frame_build(&h, &b, false, &f);
	if (r) {
		snprintf(err, errlen, "%s: cannot build HELLO (volume uuid '%s')", cl->base.url,
			 cl->cfg.volume_uuid);
		return r;
	}
	r = fd_io_all(fd, f->bytes, f->len, true, deadline);
	xp_buf_free(f);
	uint8_t hb[PROTO_HDR_SIZE];
	uint8_t *payload = NULL;
	char why[200] = "";
	if (!r)
		r = fd_io_all(fd, hb, sizeof(hb), false, deadline);
	if (!r)
		r = proto_hdr_decode(hb, sizeof(hb), &h, why, sizeof(why));
	if (!r && (h.op != PROTO_OP_HELLO || !(h.flags & PROTO_F_REPLY))) {
		snprintf(why, sizeof(why), "answered HELLO with opcode %u", h.op);
		r = -EPROTO;
	}
	if (!r && !(payload = xp_buf_alloc(h.len)))
		r = -ENOMEM;
	if (!r)
		r = fd_io_all(fd, payload, h.len, false, deadline);
	if (!r)
		r = proto_payload_check(&h, payload, why, sizeof(why));
	if (!r)
		r = proto_body_decode(&h, payload, h.len, &b, why, sizeof(why));
	xp_buf_free(payload);
	if (!r && h.status < 0) {
		snprintf(err, errlen, "%s refused the connection: %s", cl->base.url, b.reason);
		return h.status;
	}
	if (!r && (b.hello.version < PROTO_VERSION_MIN || b.hello.version > PROTO_VERSION_MAX)) {
		snprintf(why, sizeof(why), "chose protocol version %u", b.hello.version);
		r = -EPROTO;
	}
	if (!r && cl->cfg.volume_uuid[0] && strcmp(b.hello.volume_uuid, cl->cfg.volume_uuid)) {
		snprintf(err, errlen, "%s serves volume %s, not %s", cl->base.url,
			 b.hello.volume_uuid, cl->cfg.volume_uuid);
		return -EXDEV;
	}
	if (r) {
		snprintf(err, errlen, "%s: HELLO failed: %s", cl->base.url,
			 why[0] ? why : strerror(-r));
		return r;
	}
	*ret = b.hello;
	return 0;
}

/* The current connection (a reference for the caller), dialing one when there is none.
 * Called and returns with cl.lock held; dials without it. */
static int client_conn_locked(struct tcp_client *cl, struct conn **ret)
{
	for (;;) {
		if (cl->freeing)
			return -ECONNRESET;
		if (cl->conn) {
			struct conn *c = cl->conn;
			pthread_mutex_lock(&c->lock);
			bool lost = c->broken || c->closed;
			pthread_mutex_unlock(&c->lock);
			if (!lost) {
				conn_ref(c);
				*ret = c;
				return 0;
			}
			/* lost, and the I/O thread has not closed it yet: a retry should not
			 * wait for that, it needs a new connection (the old one's requests
			 * still fail through its on_close) */
			cl->conn = NULL;
			conn_unref(c); /* the client's reference */
			continue;
		}
		if (!cl->dialing)
			break;
		pthread_cond_wait(&cl->cv, &cl->lock);
	}
	/* a peer that refused a moment ago is not asked again at once */
	if (cl->last_fail && now_ns() - cl->last_fail < (int64_t)cl->cfg.reconnect_ms * MS)
		return cl->last_err;
	cl->dialing = true;
	pthread_mutex_unlock(&cl->lock);
	int fd = -1;
	struct proto_hello peer;
	char msg[1024];
	int64_t deadline = now_ns() + (int64_t)cl->cfg.connect_timeout_ms * MS;
	int r = dial_connect(cl, deadline, &fd, msg, sizeof(msg));
	if (!r) {
		sock_opts(fd, cl->cfg.dead_ms);
		r = dial_hello(cl, fd, deadline, &peer, msg, sizeof(msg));
	}
	struct conn *c = NULL;
	if (!r &&
	    !(c = conn_new(sizeof(*c), &cloop, fd, &client_cops, cl, cl->cfg.sendq_bytes, NULL))) {
		snprintf(msg, sizeof(msg), "%s: out of memory", cl->base.url);
		r = -ENOMEM;
	}
	pthread_mutex_lock(&cl->lock);
	cl->dialing = false;
	pthread_cond_broadcast(&cl->cv);
	if (!r) {
		c->gen = ++cl->gen;
		c->version = peer.version;
		r = conn_watch(c);
		if (r)
			snprintf(msg, sizeof(msg), "%s: epoll: %s", cl->base.url, strerror(-r));
	}
	if (r) {
		if (c)
			conn_unref(c); /* never watched: closing it is ours */
		if (fd >= 0)
			close(fd);
		cl->last_fail = now_ns();
		cl->last_err = r;
		snprintf(cl->last_msg, sizeof(cl->last_msg), "%s", msg);
		log_debug("tcp: %s", msg);
		return r;
	}
	cl->last_fail = 0;
	cl->peer = peer;
	cl->conn = c;
	conn_ref(c); /* the client's */
	cl->nconns++;
	conn_ref(c);
	*ret = c;
	return 0;
}

static int tcp_submit(struct xp_client *xc, const struct xp_msg *m, xp_done_fn done, void *ctx)
{
	struct tcp_client *cl = (struct tcp_client *)xc;
	if (m->op == PROTO_OP_HELLO || !proto_op_name(m->op))
		return -EINVAL;
	struct pend *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	int64_t deadline = now_ns() + (int64_t)cl->cfg.timeout_ms * MS;
	int r = 0;
	struct conn *c = NULL;
	pthread_mutex_lock(&cl->lock);
	while (cl->inflight >= cl->cfg.max_inflight && !r) {
		cl->waiters++;
		if (cond_wait_until(&cl->cv, &cl->lock, deadline) == ETIMEDOUT)
			r = -ETIMEDOUT;
		cl->waiters--;
	}
	if (!r)
		r = client_conn_locked(cl, &c);
	if (r) {
		pthread_mutex_unlock(&cl->lock);
		free(p);
		return r;
	}
	uint64_t id = ++cl->next_req;
	*p = (struct pend){.id = id, .gen = c->gen, .deadline = deadline, .done = done, .ctx = ctx};
	pend_link(cl, p);
	uint16_t version = cl->peer.version;
	pthread_mutex_unlock(&cl->lock);

	struct proto_hdr h = {.version = version,
			      .op = m->op,
			      .flags = m->flags & (PROTO_F_RETRY | PROTO_F_LOCAL),
			      .req_id = id,
			      .epoch = m->epoch,
			      .chain = m->chain,
			      .target = m->target,
			      .pcrc = m->pcrc};
	struct frame *f;
	r = frame_build(&h, m->body, m->keep_crc, &f);
	if (!r)
		r = conn_send(c, f, SEND_WAIT, deadline);
	conn_unref(c);
	if (!r)
		return 0;
	/* not sent: take the request back, unless a close or the tick completed it already */
	pthread_mutex_lock(&cl->lock);
	struct pend *mine = *pend_slot(cl, id);
	if (mine)
		pend_unlink(cl, mine);
	pthread_mutex_unlock(&cl->lock);
	if (!mine)
		return 0; /* done() was called (XP-2: exactly once) */
	free(mine);
	return r;
}

static void tcp_resume(struct xp_client *xc)
{
	struct tcp_client *cl = (struct tcp_client *)xc;
	pthread_mutex_lock(&cl->lock);
	struct conn *c = cl->conn;
	if (--cl->consumer_pauses <= 0 && c) {
		pthread_mutex_lock(&c->lock);
		conn_unpause_locked(c, PAUSE_CONSUMER);
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_unlock(&cl->lock);
}

static void tcp_peer(struct xp_client *xc, struct proto_hello *ret)
{
	struct tcp_client *cl = (struct tcp_client *)xc;
	pthread_mutex_lock(&cl->lock);
	*ret = cl->peer;
	pthread_mutex_unlock(&cl->lock);
}

static void tcp_client_free(struct xp_client *xc)
{
	if (!xc)
		return;
	struct tcp_client *cl = (struct tcp_client *)xc;
	pthread_mutex_lock(&cl->lock);
	cl->freeing = true;
	while (cl->dialing)
		pthread_cond_wait(&cl->cv, &cl->lock);
	if (cl->conn)
		conn_fail(cl->conn, -ECONNRESET);
	while (cl->nconns)
		pthread_cond_wait(&cl->cv, &cl->lock);
	pthread_mutex_unlock(&cl->lock);

	pthread_mutex_lock(&cloop_life);
	pthread_mutex_lock(&cloop_lock);
	if (cl->cprev)
		cl->cprev->cnext = cl->cnext;
	else if (cloop_clients == cl)
		cloop_clients = cl->cnext;
	if (cl->cnext)
		cl->cnext->cprev = cl->cprev;
	bool last = --cloop_users == 0;
	pthread_mutex_unlock(&cloop_lock);
	if (last) { /* the tick takes cloop_lock: stop the thread without holding it */
		loop_stop(&cloop);
		loop_fini(&cloop);
	}
	pthread_mutex_unlock(&cloop_life);
	free(cl->hash);
	pthread_cond_destroy(&cl->cv);
	pthread_mutex_destroy(&cl->lock);
	free(cl);
}

static int tcp_connect(const char *url, const struct xp_client_cfg *cfg, struct xp_client **ret,
		       char *err, size_t errlen)
{
	struct tcp_client *cl = calloc(1, sizeof(*cl));
	if (!cl) {
		snprintf(err, errlen, "%s: out of memory", url);
		return -ENOMEM;
	}
	int r = parse_addr(url, cl->host, sizeof(cl->host), &cl->port, err, errlen);
	if (!r && cl->port == 0) {
		snprintf(err, errlen, "'%s': port 0 is for listening only", url);
		r = -EINVAL;
	}
	if (!r && strlen(url) >= sizeof(cl->base.url)) {
		snprintf(err, errlen, "address too long");
		r = -EINVAL;
	}
	if (r) {
		free(cl);
		return r;
	}
	cl->base.ops = &xp_tcp_ops;
	snprintf(cl->base.url, sizeof(cl->base.url), "%s", url);
	cl->cfg = *cfg;
	cl->cfg.timeout_ms = DEF(cfg->timeout_ms, 10000);
	cl->cfg.connect_timeout_ms = DEF(cfg->connect_timeout_ms, 3000);
	cl->cfg.ping_ms = DEF(cfg->ping_ms, 1000);
	cl->cfg.dead_ms = DEF(cfg->dead_ms, 5000);
	cl->cfg.reconnect_ms = DEF(cfg->reconnect_ms, 100);
	cl->cfg.max_inflight = DEF(cfg->max_inflight, 4096);
	cl->cfg.sendq_bytes = DEF(cfg->sendq_bytes, 16u << 20);
	cl->base.instance = cfg->instance;
	while (!cl->base.instance && getrandom(&cl->base.instance, sizeof(cl->base.instance), 0) !=
					 sizeof(cl->base.instance))
		;
	unsigned buckets = HASH_MIN;
	while (buckets < 2 * cl->cfg.max_inflight && buckets < HASH_MAX)
		buckets *= 2;
	cl->hash = calloc(buckets, sizeof(*cl->hash));
	if (!cl->hash) {
		free(cl);
		snprintf(err, errlen, "%s: out of memory", url);
		return -ENOMEM;
	}
	cl->hmask = buckets - 1;
	pthread_mutex_init(&cl->lock, NULL);
	cond_init_monotonic(&cl->cv);

	pthread_mutex_lock(&cloop_life);
	if (cloop_users == 0) {
		r = loop_init(&cloop, cloop_tick, NULL);
		if (!r && (r = loop_start(&cloop)) < 0)
			loop_fini(&cloop);
	}
	if (!r) {
		pthread_mutex_lock(&cloop_lock);
		cloop_users++;
		cl->cnext = cloop_clients;
		if (cloop_clients)
			cloop_clients->cprev = cl;
		cloop_clients = cl;
		pthread_mutex_unlock(&cloop_lock);
	}
	pthread_mutex_unlock(&cloop_life);
	if (r) {
		snprintf(err, errlen, "%s: cannot start the I/O thread: %s", url, strerror(-r));
		free(cl->hash);
		free(cl);
		return r;
	}

	pthread_mutex_lock(&cl->lock);
	struct conn *c;
	r = client_conn_locked(cl, &c);
	if (!r)
		conn_unref(c);
	else
		snprintf(err, errlen, "%s", cl->last_msg);
	pthread_mutex_unlock(&cl->lock);
	if (r) {
		tcp_client_free(&cl->base);
		return r;
	}
	*ret = &cl->base;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* server */

struct sreq;

struct sconn {
	struct conn c; /* first */
	struct tcp_server *srv;
	/* I/O thread only */
	bool hello_done;
	uint16_t version;
	uint64_t peer_node, peer_instance;
	struct sconn *lprev, *lnext; /* the server's open connections */
	/* protected by srv.lock */
	struct sreq *q_head, *q_tail; /* waiting for a worker */
	unsigned running;	      /* workers in the handler for this connection */
	unsigned inflight;	      /* accepted, not finally answered */
	uint64_t inflight_bytes;      /* their request + expected reply bytes */
	bool on_ready;
	struct sconn *rnext;
};

struct sreq {
	struct xp_req base; /* first */
	struct sconn *sc;   /* a reference */
	uint8_t *payload;
	uint64_t cost;
	struct sreq *next;
};

struct tcp_server {
	struct xp_server base;
	struct xp_server_cfg cfg;
	struct loop loop;
	int lfd;
	uint64_t instance;
	int64_t accept_paused_until; /* I/O thread */
	struct sconn *conns;	     /* I/O thread */
	unsigned nconns;	     /* I/O thread */

	pthread_mutex_t lock;
	pthread_cond_t work_cv, idle_cv;
	struct sconn *ready_head, *ready_tail; /* connections with requests for a worker */
	pthread_t *workers;
	unsigned nworkers;
	bool stopping;
	uint64_t outstanding; /* handed to the handler, not finally answered */
	unsigned fault_op, fault_times;

	struct xp_server_stats st; /* __atomic */
};

/* A reply the transport sends itself (HELLO, PING, errors), from the I/O thread. */
static void server_answer(struct sconn *sc, const struct proto_hdr *rq, int status,
			  const struct proto_body *b, uint16_t version)
{
	struct proto_hdr h = {.version = version,
			      .op = rq->op,
			      .flags = PROTO_F_REPLY,
			      .status = status,
			      .req_id = rq->req_id,
			      .chain = rq->chain,
			      .target = rq->target};
	struct frame *f;
	if (frame_build(&h, b, false, &f) == 0)
		conn_send(&sc->c, f, SEND_FORCE, 0);
}

static void server_answer_err(struct sconn *sc, const struct proto_hdr *rq, int status,
			      const char *why)
{
	struct proto_body b;
	memset(&b, 0, sizeof(b));
	snprintf(b.reason, sizeof(b.reason), "%s", why);
	for (char *p = b.reason; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = '?';
	server_answer(sc, rq, status, &b, sc->hello_done ? sc->version : PROTO_VERSION_MIN);
}

static void server_schedule_locked(struct tcp_server *srv, struct sconn *sc)
{
	if (sc->on_ready || !sc->q_head || sc->running >= srv->cfg.conn_workers)
		return;
	sc->on_ready = true;
	FIFO_PUSH(srv->ready_head, srv->ready_tail, sc, rnext);
	pthread_cond_signal(&srv->work_cv);
}

static void server_hello(struct sconn *sc, const struct proto_hdr *h, const struct proto_body *b)
{
	struct tcp_server *srv = sc->srv;
	const struct proto_hello *in = &b->hello;
	unsigned lo = MAX(in->min_version, (unsigned)PROTO_VERSION_MIN);
	unsigned hi = MIN(in->max_version, (unsigned)PROTO_VERSION_MAX);
	char why[PROTO_MAX_REASON + 1];
	int st = 0;
	if (sc->hello_done) {
		st = -EPROTO;
		snprintf(why, sizeof(why), "a second HELLO on one connection");
	} else if (lo > hi) {
		st = -EPROTONOSUPPORT;
		snprintf(why, sizeof(why),
			 "no common protocol version: the peer speaks %u..%u, this node %d..%d",
			 in->min_version, in->max_version, PROTO_VERSION_MIN, PROTO_VERSION_MAX);
	} else if (in->volume_uuid[0] && strcmp(in->volume_uuid, srv->cfg.volume_uuid)) {
		st = -EXDEV;
		snprintf(why, sizeof(why), "this node serves volume %s, not %s",
			 srv->cfg.volume_uuid, in->volume_uuid);
	}
	if (st) {
		log_debug("tcp: %s: HELLO refused: %s", sc->c.name, why);
		__atomic_add_fetch(&srv->st.refused, 1, __ATOMIC_RELAXED);
		server_answer_err(sc, h, st, why);
		pthread_mutex_lock(&sc->c.lock);
		sc->c.close_when_drained = true;
		if (!sc->c.sq_head)
			conn_fail_locked(&sc->c, -ECONNRESET);
		pthread_mutex_unlock(&sc->c.lock);
		return;
	}
	sc->hello_done = true;
	sc->version = (uint16_t)hi;
	sc->peer_node = in->node_id;
	sc->peer_instance = in->instance;
	struct proto_body r;
	memset(&r, 0, sizeof(r));
	r.hello.version = (uint16_t)hi;
	r.hello.max_payload = PROTO_MAX_PAYLOAD;
	r.hello.node_id = srv->cfg.node_id;
	r.hello.instance = srv->instance;
	memcpy(r.hello.volume_uuid, srv->cfg.volume_uuid, sizeof(r.hello.volume_uuid));
	server_answer(sc, h, 0, &r, PROTO_VERSION_MIN);
}

static void server_on_frame(struct conn *c, const struct proto_hdr *h, uint8_t *payload,
			    const struct proto_body *b, int err, const char *why)
{
	struct sconn *sc = (struct sconn *)c;
	struct tcp_server *srv = sc->srv;
	if (h->flags & PROTO_F_REPLY) {
		xp_buf_free(payload);
		log_debug("tcp: %s sent a reply to a server", c->name);
		conn_close(c, -EPROTO);
		return;
	}
	if (err) {
		server_answer_err(sc, h, err, why);
		xp_buf_free(payload);
	} else if (h->op == PROTO_OP_HELLO) {
		server_hello(sc, h, b);
		xp_buf_free(payload);
	} else if (!sc->hello_done) {
		server_answer_err(sc, h, -EPROTO, "HELLO must be the first frame");
		xp_buf_free(payload);
	} else if (h->op == PROTO_OP_PING) {
		server_answer(sc, h, 0, b, sc->version);
		xp_buf_free(payload);
	} else {
		struct sreq *q = calloc(1, sizeof(*q));
		if (!q) {
			server_answer_err(sc, h, -ENOMEM, "out of memory");
			xp_buf_free(payload);
			goto out;
		}
		q->base.ops = &xp_tcp_ops;
		q->base.hdr = *h;
		q->base.body = *b;
		q->base.peer_node = sc->peer_node;
		q->base.peer_instance = sc->peer_instance;
		q->payload = payload;
		q->sc = sc;
		/* what answering it may hold: its own bytes, and a READ's data (XP-3) */
		q->cost = PROTO_HDR_SIZE + h->len + (h->op == PROTO_OP_READ ? b->len : 0);
		conn_ref(c);
		pthread_mutex_lock(&srv->lock);
		if (srv->stopping) {
			pthread_mutex_unlock(&srv->lock);
			xp_buf_free(payload);
			free(q);
			conn_unref(c);
			goto out;
		}
		FIFO_PUSH(sc->q_head, sc->q_tail, q, next);
		sc->inflight++;
		sc->inflight_bytes += q->cost;
		stat_max(&srv->st.inflight_peak, sc->inflight);
		if (sc->inflight >= srv->cfg.conn_inflight ||
		    sc->inflight_bytes >= srv->cfg.sendq_bytes) {
			pthread_mutex_lock(&c->lock);
			conn_pause_locked(c, PAUSE_INFLIGHT);
			pthread_mutex_unlock(&c->lock);
			__atomic_add_fetch(&srv->st.paused, 1, __ATOMIC_RELAXED);
		}
		server_schedule_locked(srv, sc);
		pthread_mutex_unlock(&srv->lock);
	}
out:
	/* a peer that does not read its replies is not read from either (XP-1) */
	pthread_mutex_lock(&c->lock);
	if (c->sq_bytes >= c->sq_max && !(c->pause & PAUSE_SENDQ)) {
		conn_pause_locked(c, PAUSE_SENDQ);
		__atomic_add_fetch(&srv->st.paused, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&c->lock);
}

static void server_on_close(struct conn *c, int err)
{
	(void)err;
	struct sconn *sc = (struct sconn *)c;
	struct tcp_server *srv = sc->srv;
	pthread_mutex_lock(&srv->lock);
	/* requests no worker took yet are dropped: nobody could read their replies */
	struct sreq *q = sc->q_head;
	sc->q_head = sc->q_tail = NULL;
	if (sc->on_ready) {
		struct sconn **pp = &srv->ready_head, *prev = NULL;
		while (*pp != sc) {
			prev = *pp;
			pp = &(*pp)->rnext;
		}
		*pp = sc->rnext;
		if (srv->ready_tail == sc)
			srv->ready_tail = prev;
		sc->on_ready = false;
	}
	for (struct sreq *x = q; x; x = x->next) {
		sc->inflight--;
		sc->inflight_bytes -= x->cost;
	}
	pthread_mutex_unlock(&srv->lock);
	while (q) {
		struct sreq *n = q->next;
		xp_buf_free(q->payload);
		free(q);
		loop_defer_unref(c->loop, c);
		q = n;
	}
	if (sc->lprev)
		sc->lprev->lnext = sc->lnext;
	else
		srv->conns = sc->lnext;
	if (sc->lnext)
		sc->lnext->lprev = sc->lprev;
	srv->nconns--;
	__atomic_sub_fetch(&srv->st.conns, 1, __ATOMIC_RELAXED);
}

static const struct conn_ops server_cops = {server_on_frame, server_on_close};

static void server_accept(void *owner)
{
	struct tcp_server *srv = owner;
	for (;;) {
		int fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != ECONNABORTED) {
				/* out of fds: stop accepting for a while rather than spin */
				log_debug("tcp: accept on %s: %s", srv->base.url, strerror(errno));
				struct epoll_event ev = {.events = 0,
							 .data.ptr = &srv->loop.tag_listen};
				epoll_ctl(srv->loop.epfd, EPOLL_CTL_MOD, srv->lfd, &ev);
				srv->accept_paused_until = now_ns() + 100 * MS;
			}
			return;
		}
		if (srv->nconns >= srv->cfg.max_conns) {
			close(fd);
			__atomic_add_fetch(&srv->st.refused, 1, __ATOMIC_RELAXED);
			continue;
		}
		sock_opts(fd, srv->cfg.idle_ms);
		struct sconn *sc =
		    (struct sconn *)conn_new(sizeof(*sc), &srv->loop, fd, &server_cops, srv,
					     srv->cfg.sendq_bytes, &srv->st.sendq_peak);
		if (!sc) {
			close(fd);
			continue;
		}
		sc->srv = srv;
		if (conn_watch(&sc->c) < 0) {
			close(fd);
			conn_unref(&sc->c);
			continue;
		}
		sc->lnext = srv->conns;
		if (srv->conns)
			srv->conns->lprev = sc;
		srv->conns = sc;
		srv->nconns++;
		__atomic_add_fetch(&srv->st.conns, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&srv->st.accepted, 1, __ATOMIC_RELAXED);
	}
}

static void server_tick(void *owner, int64_t now)
{
	struct tcp_server *srv = owner;
	if (srv->accept_paused_until && now >= srv->accept_paused_until) {
		srv->accept_paused_until = 0;
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &srv->loop.tag_listen};
		epoll_ctl(srv->loop.epfd, EPOLL_CTL_MOD, srv->lfd, &ev);
	}
	for (struct sconn *sc = srv->conns, *n; sc; sc = n) {
		n = sc->lnext;
		if (__atomic_load_n(&sc->c.pause, __ATOMIC_RELAXED))
			sc->c.last_rx = now; /* we are not reading: its silence is ours */
		else if (now - sc->c.last_rx > (int64_t)srv->cfg.idle_ms * MS)
			conn_close(&sc->c, -ETIMEDOUT);
	}
}

static void *server_worker(void *arg)
{
	struct tcp_server *srv = arg;
	pthread_mutex_lock(&srv->lock);
	for (;;) {
		while (!srv->ready_head && !srv->stopping)
			pthread_cond_wait(&srv->work_cv, &srv->lock);
		struct sconn *sc = srv->ready_head;
		if (!sc)
			break; /* stopping, nothing left */
		srv->ready_head = sc->rnext;
		if (!srv->ready_head)
			srv->ready_tail = NULL;
		sc->on_ready = false;
		struct sreq *q = sc->q_head;
		sc->q_head = q->next;
		if (!sc->q_head)
			sc->q_tail = NULL;
		q->next = NULL;
		sc->running++;
		srv->outstanding++;
		/* round-robin: the connection goes to the back of the line (XP-5) */
		server_schedule_locked(srv, sc);
		pthread_mutex_unlock(&srv->lock);
		__atomic_add_fetch(&srv->st.requests, 1, __ATOMIC_RELAXED);

		conn_ref(
		    &sc->c); /* the request may be answered and gone when the handler returns */
		srv->cfg.handler(srv->cfg.ctx, &q->base);

		pthread_mutex_lock(&srv->lock);
		sc->running--;
		server_schedule_locked(srv, sc);
		pthread_mutex_unlock(&srv->lock);
		conn_unref(&sc->c);
		pthread_mutex_lock(&srv->lock);
	}
	pthread_mutex_unlock(&srv->lock);
	return NULL;
}

static int tcp_reply(struct xp_req *r, int status, uint64_t epoch, const struct proto_body *b,
		     bool more)
{
	struct sreq *q = (struct sreq *)r;
	struct sconn *sc = q->sc;
	struct tcp_server *srv = sc->srv;
	if (more && status)
		return -EINVAL;
	struct proto_hdr h = {.version = sc->version,
			      .op = r->hdr.op,
			      .flags = PROTO_F_REPLY | (more ? PROTO_F_MORE : 0),
			      .status = status,
			      .req_id = r->hdr.req_id,
			      .epoch = epoch,
			      .chain = r->hdr.chain,
			      .target = r->hdr.target};
	struct frame *f = NULL;
	int rc = frame_build(&h, b, false, &f);
	if (rc == -EINVAL && !more) {
		/* never send what the peer must refuse (PROTO-4): say what happened instead */
		struct proto_body e;
		memset(&e, 0, sizeof(e));
		snprintf(e.reason, sizeof(e.reason), "the server built an invalid %s reply",
			 proto_op_name(h.op));
		h.status = -EIO;
		rc = frame_build(&h, &e, false, &f);
	}
	bool cut = false;
	if (!more) {
		pthread_mutex_lock(&srv->lock);
		if (srv->fault_times && srv->fault_op == h.op) {
			srv->fault_times--;
			cut = true;
		}
		pthread_mutex_unlock(&srv->lock);
	}
	if (cut) {
		xp_buf_free(f);
		conn_fail(&sc->c, -ECONNRESET);
		rc = -ECONNRESET;
	} else if (!rc) {
		rc = conn_send(&sc->c, f, more ? SEND_WAIT : SEND_FORCE,
			       more ? now_ns() + (int64_t)srv->cfg.stall_ms * MS : 0);
	}
	if (more)
		return rc;

	pthread_mutex_lock(&srv->lock);
	sc->inflight--;
	sc->inflight_bytes -= q->cost;
	srv->outstanding--;
	if (sc->inflight < srv->cfg.conn_inflight && sc->inflight_bytes < srv->cfg.sendq_bytes) {
		pthread_mutex_lock(&sc->c.lock);
		conn_unpause_locked(&sc->c, PAUSE_INFLIGHT);
		pthread_mutex_unlock(&sc->c.lock);
	}
	if (srv->stopping && !srv->outstanding)
		pthread_cond_broadcast(&srv->idle_cv);
	pthread_mutex_unlock(&srv->lock);
	xp_buf_free(q->payload);
	free(q);
	conn_unref(&sc->c);
	return rc;
}

static void tcp_server_free(struct xp_server *xs)
{
	if (!xs)
		return;
	struct tcp_server *srv = (struct tcp_server *)xs;
	pthread_mutex_lock(&srv->lock);
	srv->stopping = true;
	pthread_mutex_unlock(&srv->lock);
	loop_stop(&srv->loop);
	/* the loop thread is gone: this thread is the I/O thread now */
	epoll_ctl(srv->loop.epfd, EPOLL_CTL_DEL, srv->lfd, NULL);
	close(srv->lfd);
	while (srv->conns)
		conn_close(&srv->conns->c, -ECONNRESET);
	pthread_mutex_lock(&srv->lock);
	while (srv->outstanding)
		pthread_cond_wait(&srv->idle_cv, &srv->lock);
	pthread_cond_broadcast(&srv->work_cv);
	pthread_mutex_unlock(&srv->lock);
	for (unsigned i = 0; i < srv->nworkers; i++)
		pthread_join(srv->workers[i], NULL);
	loop_fini(&srv->loop);
	free(srv->workers);
	pthread_cond_destroy(&srv->work_cv);
	pthread_cond_destroy(&srv->idle_cv);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}

static int server_bind(struct tcp_server *srv, const char *url, char *err, size_t errlen)
{
	char host[256];
	int port;
	int r = parse_addr(url, host, sizeof(host), &port, err, errlen);
	if (r)
		return r;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
	char ps[16];
	snprintf(ps, sizeof(ps), "%d", port);
	r = getaddrinfo(host, ps, &hints, &ai);
	if (r) {
		snprintf(err, errlen, "%s: cannot resolve %s: %s", url, host, gai_strerror(r));
		return -EINVAL;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: cannot listen: %s", url, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return r;
	}
	freeaddrinfo(ai);
	char name[128];
	sock_name(fd, false, name, sizeof(name));
	snprintf(srv->base.url, sizeof(srv->base.url), "tcp://%s", name);
	srv->lfd = fd;
	return 0;
}

static int tcp_listen(const char *url, const struct xp_server_cfg *cfg, struct xp_server **ret,
		      char *err, size_t errlen)
{
	if (!cfg->handler || !cfg->volume_uuid[0]) {
		snprintf(err, errlen, "%s: a server needs a handler and a volume uuid", url);
		return -EINVAL;
	}
	struct tcp_server *srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "%s: out of memory", url);
		return -ENOMEM;
	}
	srv->base.ops = &xp_tcp_ops;
	srv->cfg = *cfg;
	srv->cfg.workers = DEF(cfg->workers, 8);
	srv->cfg.conn_workers = DEF(cfg->conn_workers, MAX(1u, srv->cfg.workers / 2));
	srv->cfg.conn_inflight = DEF(cfg->conn_inflight, 256);
	srv->cfg.max_conns = DEF(cfg->max_conns, 1024);
	srv->cfg.sendq_bytes = DEF(cfg->sendq_bytes, 16u << 20);
	srv->cfg.idle_ms = DEF(cfg->idle_ms, 30000);
	srv->cfg.stall_ms = DEF(cfg->stall_ms, 10000);
	while (getrandom(&srv->instance, sizeof(srv->instance), 0) != sizeof(srv->instance))
		;
	pthread_mutex_init(&srv->lock, NULL);
	pthread_cond_init(&srv->work_cv, NULL);
	pthread_cond_init(&srv->idle_cv, NULL);
	int r = server_bind(srv, url, err, errlen);
	if (r)
		goto fail_bind;
	r = loop_init(&srv->loop, server_tick, srv);
	if (r) {
		snprintf(err, errlen, "%s: epoll: %s", url, strerror(-r));
		goto fail_loop;
	}
	srv->loop.on_listen = server_accept;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &srv->loop.tag_listen};
	srv->workers = calloc(srv->cfg.workers, sizeof(*srv->workers));
	if (!srv->workers || epoll_ctl(srv->loop.epfd, EPOLL_CTL_ADD, srv->lfd, &ev) < 0) {
		r = srv->workers ? -errno : -ENOMEM;
		snprintf(err, errlen, "%s: %s", url, strerror(-r));
		goto fail_threads;
	}
	for (; srv->nworkers < srv->cfg.workers; srv->nworkers++) {
		r = -pthread_create(&srv->workers[srv->nworkers], NULL, server_worker, srv);
		if (r)
			break;
	}
	if (!r)
		r = loop_start(&srv->loop);
	if (r) {
		snprintf(err, errlen, "%s: cannot start threads: %s", url, strerror(-r));
		pthread_mutex_lock(&srv->lock);
		srv->stopping = true;
		pthread_cond_broadcast(&srv->work_cv);
		pthread_mutex_unlock(&srv->lock);
		for (unsigned i = 0; i < srv->nworkers; i++)
			pthread_join(srv->workers[i], NULL);
		goto fail_threads;
	}
	*ret = &srv->base;
	return 0;

fail_threads:
	free(srv->workers);
	loop_fini(&srv->loop);
fail_loop:
	close(srv->lfd);
fail_bind:
	pthread_cond_destroy(&srv->work_cv);
	pthread_cond_destroy(&srv->idle_cv);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
	return r;
}

static void tcp_server_stats(struct xp_server *xs, struct xp_server_stats *ret)
{
	struct tcp_server *srv = (struct tcp_server *)xs;
	ret->conns = __atomic_load_n(&srv->st.conns, __ATOMIC_RELAXED);
	ret->accepted = __atomic_load_n(&srv->st.accepted, __ATOMIC_RELAXED);
	ret->refused = __atomic_load_n(&srv->st.refused, __ATOMIC_RELAXED);
	ret->requests = __atomic_load_n(&srv->st.requests, __ATOMIC_RELAXED);
	ret->paused = __atomic_load_n(&srv->st.paused, __ATOMIC_RELAXED);
	ret->sendq_peak = __atomic_load_n(&srv->st.sendq_peak, __ATOMIC_RELAXED);
	ret->inflight_peak = __atomic_load_n(&srv->st.inflight_peak, __ATOMIC_RELAXED);
}

void xp_tcp_fault_cut_reply(struct xp_server *xs, unsigned op, unsigned times)
{
	struct tcp_server *srv = (struct tcp_server *)xs;
	pthread_mutex_lock(&srv->lock);
	srv->fault_op = op;
	srv->fault_times = times;
	pthread_mutex_unlock(&srv->lock);
}

const struct xp_ops xp_tcp_ops = {
    .scheme = "tcp",
    .connect = tcp_connect,
    .client_free = tcp_client_free,
    .submit = tcp_submit,
    .resume = tcp_resume,
    .peer = tcp_peer,
    .listen = tcp_listen,
    .server_free = tcp_server_free,
    .server_stats = tcp_server_stats,
    .reply = tcp_reply,
};
