/* transport — how the frames of proto.h travel between a client and the node serving a
 * target, and from node to node. Prefix xp_.
 *
 * WHAT IT OWNS
 *   Connections, framing, request/reply matching, timeouts, heartbeats, reconnects, and the
 *   server's worker pool. It knows the HELLO and PING opcodes (it answers them itself) and
 *   nothing else of what requests mean: a server hands every other request to its handler
 *   (rpc_target.c is the one that executes them against targets).
 *
 * IMPLEMENTATIONS
 *   One `struct xp_ops` table per kind, one file each, chosen by URL scheme:
 *     tcp://HOST:PORT     transport_tcp.c   epoll, non-blocking sockets (default)
 *   (RDMA through libibverbs comes as transport_rdma.c, built when rdma-core is present.)
 *   Call sites hold a `struct xp_client *` / `struct xp_server *` and never ask which kind.
 *
 * CLIENT
 *   xp_connect() makes a client of one server: one connection, opened and greeted (HELLO)
 *   before it returns, opened again on demand after it is lost. xp_submit() queues a request
 *   and returns; its completion runs on the transport's I/O thread. xp_call() waits for the
 *   reply. Any number of threads may have requests in flight on one client; replies are
 *   matched by request id and may come in any order.
 *
 * SERVER
 *   xp_listen() accepts connections. A request other than HELLO and PING goes to cfg.handler
 *   on one of cfg.workers threads. The handler owns the request until it answers it, exactly
 *   once, with xp_reply() / xp_reply_err() — from the worker or later from any thread (a
 *   streamed reply first sends pages with xp_reply_more()). Replies go out in the order they
 *   are given, not the order requests came in.
 *
 * INVARIANTS (cited as XP-n)
 *   XP-1  The I/O thread never blocks and never waits for a peer: sockets are non-blocking,
 *         a peer that does not read fills only its own connection's bounded send queue, and a
 *         connection whose queue is full, or that has conn_inflight requests unanswered, is
 *         no longer read from (TCP pushes back to that peer) until it drains. Other
 *         connections go on.
 *   XP-2  A submitted request completes exactly once (a stream: its pages, then exactly one
 *         final frame or error): with its reply; with -ETIMEDOUT when no reply came within
 *         timeout_ms (the frame may have been executed: see PROTO-6); with -ECONNRESET when
 *         the connection was lost first; or with -ETIMEDOUT, for everything in flight, when
 *         the peer sent nothing for dead_ms (clients ping an idle connection every ping_ms).
 *   XP-3  What a peer can make us hold is bounded: one frame by PROTO_MAX_PAYLOAD, a send
 *         queue by sendq_bytes plus the frame being added, a server connection's requests by
 *         conn_inflight, a server's connections by max_conns.
 *   XP-4  A server hands a request to its handler only after HELLO succeeded on that
 *         connection (same volume, a common version) and the request's header, payload crc and
 *         body decoded (PROTO-2/3). Everything else is answered by the transport itself, with
 *         -EBADMSG / -EPROTO / -EXDEV and a reason, or closes the connection when the framing
 *         itself is lost.
 *   XP-5  The server's workers serve connections round-robin, and one connection occupies
 *         at most conn_workers of them at a time: a slow handler on one connection leaves
 *         workers for the others.
 *
 * ERRORS: 0 or -errno; xp_connect/xp_listen put a one-line reason into err.
 */
#ifndef BRAIDFS_TRANSPORT_H
#define BRAIDFS_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataservice/proto.h"

#define XP_URL_MAX 256

struct xp_client_cfg {
	char volume_uuid[PROTO_UUID_LEN + 1]; /* ours; "" = take the server's (tools only) */
	uint64_t node_id;		      /* this node, 0 for a plain client */
	uint64_t instance;		      /* write origin; 0 = random (the normal case) */
	unsigned timeout_ms;		      /* a request's deadline (default 10000) */
	unsigned connect_timeout_ms;	      /* connect + HELLO (default 3000) */
	unsigned ping_ms;		      /* heartbeat on an idle connection (default 1000) */
	unsigned dead_ms;      /* silence that declares the peer dead (default 5000) */
	unsigned reconnect_ms; /* no new connect attempt sooner after a failed one (default 100) */
	unsigned max_inflight; /* requests in flight; submit waits beyond (default 4096) */
	size_t sendq_bytes;    /* bytes queued to send; submit waits beyond (default 16 MiB) */
};

/* A request, as the server's handler gets it. */
struct xp_req {
	const struct xp_ops *ops; /* of the server it came from */
	struct proto_hdr hdr;
	struct proto_body body;		   /* its tail is valid until the final reply */
	uint64_t peer_node, peer_instance; /* from the connection's HELLO */
};

/* Runs on a worker thread; must lead to exactly one final xp_reply*() for req. */
typedef void (*xp_handler_fn)(void *ctx, struct xp_req *req);

struct xp_server_cfg {
	char volume_uuid[PROTO_UUID_LEN + 1]; /* required: peers of another volume are refused */
	uint64_t node_id;
	unsigned workers;	/* handler threads (default 8) */
	unsigned conn_workers;	/* most workers one connection may hold (default workers / 2) */
	unsigned conn_inflight; /* requests of one connection queued or unanswered (default 256) */
	unsigned max_conns;	/* (default 1024) */
	size_t sendq_bytes;	/* per connection (default 16 MiB) */
	unsigned idle_ms;	/* a connection silent this long is closed (default 30000) */
	unsigned stall_ms; /* xp_reply_more waits at most this for queue space (default 10000) */
	xp_handler_fn handler;
	void *ctx;
};

/* A request to send. */
struct xp_msg {
	uint16_t op;
	uint32_t flags; /* PROTO_F_RETRY, PROTO_F_LOCAL */
	uint32_t chain; /* PROTO_NO_CHAIN when bound to none */
	uint32_t target;
	uint64_t epoch;
	const struct proto_body *body; /* NULL: all fields zero */
	/* Forwarding a payload unchanged (PROTO-3): send pcrc as its crc instead of computing
	 * one, so the receiver checks the producer's checksum. */
	bool keep_crc;
	uint32_t pcrc;
};

/* A reply, as a client gets it. body borrows from buf; xp_resp_fini frees both. */
struct xp_resp {
	struct proto_hdr hdr; /* status, epoch (of an -ESTALE reply), flags */
	struct proto_body body;
	void *buf;
};

/* Completion of xp_submit, on the I/O thread; it must not block. err < 0: no reply (resp is
 * NULL). err == 0: the callee owns *resp (xp_resp_fini it). For a stream it is called once per
 * frame, the last one without PROTO_F_MORE in resp->hdr.flags. Returning XP_PAUSE stops reading
 * this client's connection until xp_resume() (a slow local consumer of a stream). Each XP_PAUSE
 * is matched by one xp_resume(), which may come before the pause took effect: the connection
 * is read again once every pause was matched. */
#define XP_PAUSE 1
typedef int (*xp_done_fn)(void *ctx, int err, struct xp_resp *resp);

struct xp_server_stats {
	uint64_t conns;		/* open now */
	uint64_t accepted;	/* since start */
	uint64_t refused;	/* HELLO refused, or over max_conns */
	uint64_t requests;	/* handed to the handler */
	uint64_t paused;	/* times a connection stopped being read (XP-1) */
	uint64_t sendq_peak;	/* most bytes one connection's send queue held */
	uint64_t inflight_peak; /* most unanswered requests of one connection */
};

struct xp_client;
struct xp_server;

struct xp_ops {
	const char *scheme;
	int (*connect)(const char *url, const struct xp_client_cfg *cfg, struct xp_client **ret,
		       char *err, size_t errlen);
	void (*client_free)(struct xp_client *c);
	int (*submit)(struct xp_client *c, const struct xp_msg *m, xp_done_fn done, void *ctx);
	void (*resume)(struct xp_client *c);
	void (*peer)(struct xp_client *c, struct proto_hello *ret);
	int (*listen)(const char *url, const struct xp_server_cfg *cfg, struct xp_server **ret,
		      char *err, size_t errlen);
	void (*server_free)(struct xp_server *s);
	void (*server_stats)(struct xp_server *s, struct xp_server_stats *ret);
	int (*reply)(struct xp_req *req, int status, uint64_t epoch, const struct proto_body *b,
		     bool more);
};

/* The generic handles every implementation's objects start with. */
struct xp_client {
	const struct xp_ops *ops;
	char url[XP_URL_MAX];
	uint64_t instance;	/* the write origin of requests from this client */
	uint64_t next_write_id; /* __atomic; xp_write_id() */
};

struct xp_server {
	const struct xp_ops *ops;
	char url[XP_URL_MAX]; /* the address bound (port 0 resolved) */
};

const struct xp_ops *xp_ops_for(const char *url);

int xp_connect(const char *url, const struct xp_client_cfg *cfg, struct xp_client **ret, char *err,
	       size_t errlen);
void xp_client_free(struct xp_client *c); /* fails what is in flight with -ECONNRESET; NULL ok */
int xp_submit(struct xp_client *c, const struct xp_msg *m, xp_done_fn done, void *ctx);
void xp_resume(struct xp_client *c);
/* A fresh write id for requests of this client (never 0, never repeated). */
uint64_t xp_write_id(struct xp_client *c);
/* The server's HELLO reply (node, instance, volume, version) on the latest connection. */
void xp_client_peer(struct xp_client *c, struct proto_hello *ret);

/* Send and wait: 0 and *ret (xp_resp_fini it; ret->hdr.status may be < 0), or the transport's
 * -errno (XP-2). */
int xp_call(struct xp_client *c, const struct xp_msg *m, struct xp_resp *ret);
/* A streamed request: page() runs on the calling thread for every reply frame, in order; it
 * returning non-zero stops the stream (the rest is read and dropped) and is returned. Else the
 * final frame's status, or the transport's -errno. */
int xp_call_stream(struct xp_client *c, const struct xp_msg *m,
		   int (*page)(void *ctx, const struct xp_resp *r), void *ctx);
void xp_resp_fini(struct xp_resp *r); /* NULL ok */

/* Buffers for frames and their data. Those of 64 KiB and more come from a small pool: glibc
 * hands such sizes out as fresh mmaps, and their page faults cost more than the bytes' copies
 * (bench_rpc, 4 threads of 1 MiB writes: ~4100 us CPU per request without the pool, ~1000
 * with it, on a 2-vCPU VM). At most XP_POOL_BYTES stay pooled. Thread-safe. xp_buf_free(NULL)
 * is fine. */
#define XP_POOL_BYTES (32u << 20)
void *xp_buf_alloc(size_t len);
void xp_buf_free(void *p);

int xp_listen(const char *url, const struct xp_server_cfg *cfg, struct xp_server **ret, char *err,
	      size_t errlen);
/* Stops accepting, closes every connection, waits until every request handed to the handler
 * got its final reply, stops the threads. NULL ok. */
void xp_server_free(struct xp_server *s);
void xp_server_stats(struct xp_server *s, struct xp_server_stats *ret);

/* Answer req (its final reply: req is gone after the call). status 0 or -errno; epoch for an
 * -ESTALE reply; b NULL for an empty body. Returns 0, or -ECONNRESET when the connection is
 * gone (the reply is dropped; req is gone all the same). */
int xp_reply(struct xp_req *req, int status, uint64_t epoch, const struct proto_body *b);
/* An error reply with a reason (printf format, cut at PROTO_MAX_REASON). */
int xp_reply_err(struct xp_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* One page of a streamed reply; waits while the connection's send queue is full, at most
 * stall_ms (-ETIMEDOUT). req stays the handler's. */
int xp_reply_more(struct xp_req *req, const struct proto_body *b);

extern const struct xp_ops xp_tcp_ops;

#endif
