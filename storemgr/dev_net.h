/* dev_net — the engine under the network block devices (dev_iscsi.c, dev_nbd.c).
 *
 * WHAT IT OWNS
 *   Everything a network device does that is not the protocol: the URL query options, the
 *   connections and their threads, queueing, splitting large I/Os, waiting for completions,
 *   I/O timeouts, and reconnecting. A backend is one `struct net_backend` table: connect,
 *   disconnect, the socket to poll, service it, and issue one request. The public sm_dev ops
 *   of both backends are the net_dev_* functions below.
 *
 * THE MODEL
 *   A device has 1..NET_CONNS_MAX connections (iSCSI sessions, NBD connections), each driven
 *   by one loop thread with the library's asynchronous API: many commands in flight per
 *   connection, several connections per device. A caller splits its I/O into pieces of at
 *   most max_io bytes, hands them to the connections round-robin (a lock-protected list and
 *   an eventfd per connection), and sleeps on a condition variable until every piece of its
 *   call completed. No lock is held across a network wait (DEV-5).
 *
 * RULES (cited as NET-n)
 *   NET-1 A request is owned by exactly one of: its caller (before queueing, after
 *         completion), a connection's incoming list (under conn->lock), or the connection's
 *         loop thread (inflight / again / retry lists, no lock). Only the loop thread talks to
 *         the library handle of its connection.
 *   NET-2 Exactly one completion per request: net_req_done() ignores a request that is not
 *         in flight (late callbacks while a broken handle is torn down).
 *   NET-3 A transport failure (connection lost, command timed out, handle dead) never
 *         reaches the caller directly: the connection is torn down, its in-flight requests
 *         wait for a reconnect and are issued again. A reconnect round tries `retries` times
 *         with backoff (100 ms doubling to 2 s); when it fails, every request waiting on that
 *         connection completes with -EIO, and the next request starts a new round (DEV-6).
 *         A request that met `retries` transport failures completes with -EIO.
 *   NET-4 Re-issuing is safe because every request is idempotent (a read, a write of the same
 *         bytes to the same place, a flush, a discard) and the caller orders overlapping
 *         writes (a write is issued only after the one it overwrites returned).
 *   NET-5 A request in flight longer than io_timeout is a transport failure (NET-3): a hung
 *         server costs at most io_timeout + one reconnect round.
 */
#ifndef BRAIDFS_DEV_NET_H
#define BRAIDFS_DEV_NET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/url.h"
#include "storemgr/dev.h"

#define NET_CONNS_MAX	  16
#define NET_RETRIES_MAX	  100
#define NET_TIMEOUT_MAX	  3600 /* seconds */
#define NET_OPT_VALUE_MAX 256

/* Options every network device URL takes in its query (?sessions=4&retries=5...). */
struct net_opts {
	unsigned conns;	       /* sessions= / conns=: connections (0: the backend's default) */
	unsigned retries;      /* retries=: reconnect attempts per round, transport failures */
	unsigned timeout_s;    /* timeout=: connect + login / handshake deadline */
	unsigned io_timeout_s; /* io_timeout=: NET-5 */
};

/* A backend-specific query key: its value is copied into `out` (outlen bytes). */
struct net_opt_extra {
	const char *key;
	char *out;
	size_t outlen;
	bool seen;
};

/* Parse u's query: the common keys above plus `extra` (n of them); anything else is an
 * error ("unknown option 'x'"). Defaults: conns 0, retries 5, timeout 10, io_timeout 30. */
int net_opts_parse(const struct url *u, struct net_opts *ret, struct net_opt_extra *extra,
		   unsigned n, char *err, size_t errlen);

enum net_kind { NET_READ, NET_WRITE, NET_FLUSH, NET_DISCARD };
enum net_state { NET_QUEUED, NET_INFLIGHT, NET_DONE };
/* how a piece ended, for net_req_done() */
enum net_end {
	NET_END_FINAL,	/* result is the answer (0 or -errno) */
	NET_END_AGAIN,	/* issue again on the same connection (a unit attention); counts a try */
	NET_END_BROKEN, /* transport failure: NET-3 */
};

struct net_wait;

/* One piece of an I/O (NET-1). */
struct net_req {
	enum net_kind kind;
	enum net_state state;
	bool fua;
	void *buf;
	uint64_t off, len;
	unsigned tries;	   /* transport failures met */
	int64_t issued_ns; /* monotonic, for NET-5 */
	int *result;	   /* the io's result: the first error of its pieces is kept */
	struct net_wait *wait;
	struct net_req *prev, *next;
	struct net_conn *conn; /* where it was issued last */
	void *be_data;	       /* the backend's, while in flight (an iSCSI task) */
	/* the backend's scratch while in flight (an iovec, an UNMAP descriptor) */
	uint64_t be_space[4];
};

struct net_list {
	struct net_req *head, *tail;
};

struct net_dev;

struct net_conn {
	struct net_dev *nd;
	unsigned idx;
	pthread_t thread;
	bool thread_started;
	int efd; /* eventfd: incoming non-empty, or stop */

	pthread_mutex_t lock; /* protects incoming and stop */
	struct net_list incoming;
	bool stop;

	/* loop thread only (before start: the opener) */
	struct net_list inflight; /* issued on the current handle, oldest first */
	struct net_list again;	  /* NET_END_AGAIN: issue again after service() */
	struct net_list retry;	  /* waiting for a reconnect */
	bool up;		  /* the handle is connected */
	bool broken;		  /* service() or issue() saw a transport failure */
	bool closing;		  /* NET-2: disconnect() in progress, completions are void */
	void *h; /* the backend's handle (struct iscsi_context, struct nbd_handle) */
};

struct net_backend {
	const char *what; /* "iscsi", "nbd" for messages */
	/* Parse the URL into the backend's device (nd is its first member) and the options;
	 * 0 or -errno with a one-line reason (without the URL) in err. */
	int (*parse)(struct net_dev *nd, const char *url, struct net_opts *ret, char *err,
		     size_t errlen);
	/* After the first connection is up (and before the others): what the device is. Sets
	 * dev.size, dev.lbs, dev.rotational, dev.desc, max_io, max_discard, fua_native; may
	 * lower nconns. 0 or -errno with a reason in err. */
	int (*probe)(struct net_dev *nd, char *err, size_t errlen);
	/* Connect and log in / handshake c->h within nd->opts.timeout_s; 0 or -errno with a
	 * one-line reason (without the URL) in err. */
	int (*connect)(struct net_conn *c, char *err, size_t errlen);
	/* Tear the handle down (no goodbye needed); completions it causes are ignored. */
	void (*disconnect)(struct net_conn *c);
	int (*fd)(struct net_conn *c);
	short (*events)(struct net_conn *c); /* POLLIN / POLLOUT wanted now */
	/* Handle revents (0: a periodic tick). Completions arrive via net_req_done(). Returns
	 * < 0 when the connection is broken. */
	int (*service)(struct net_conn *c, short revents);
	/* Start r (kind, off, len, buf, fua); 0, NET_ISSUE_BROKEN, or -errno (final). */
	int (*issue)(struct net_conn *c, struct net_req *r);
};
#define NET_ISSUE_BROKEN 1

struct net_dev {
	struct sm_dev dev; /* first: the generic handle */
	const struct net_backend *be;
	struct net_opts opts;
	bool rdonly;
	bool fua_native;      /* the device honours FUA; else a FUA write is write + flush */
	uint64_t max_io;      /* reads and writes are split into pieces of at most this */
	uint64_t max_discard; /* same for discards; 0: discard is -EOPNOTSUPP */
	unsigned nconns;      /* in use: a backend may lower it after the first connect */
	unsigned nalloc;      /* set up by net_dev_init */
	struct net_conn *conns;
	atomic_uint next; /* round-robin cursor */
};

/* Open: parse, connect the first connection, probe, connect the others, start the loop
 * threads. nd is the zeroed first member of the backend's device. 0, or -errno with
 * "URL: reason" in err and nd torn down (the caller frees its device). */
int net_dev_open(struct net_dev *nd, const struct net_backend *be, const struct sm_dev_ops *ops,
		 const char *url, unsigned flags, char *err, size_t errlen);
/* Stop the threads, disconnect, free what open allocated (not nd itself). */
void net_dev_fini(struct net_dev *nd);

/* The backend reports a piece's end (loop thread, inside service() or issue()). */
void net_req_done(struct net_conn *c, struct net_req *r, int result, enum net_end how);

/* sm_dev_ops of every network backend. */
int net_dev_pread(struct sm_dev *d, void *buf, size_t len, uint64_t off);
int net_dev_pwrite(struct sm_dev *d, const void *buf, size_t len, uint64_t off, unsigned flags);
int net_dev_submit(struct sm_dev *d, struct sm_dev_io *ios, unsigned n);
int net_dev_flush(struct sm_dev *d);
int net_dev_discard(struct sm_dev *d, uint64_t off, uint64_t len);

/* Copy url into out with the password of "user%password@" / "user:password@" replaced by
 * "***": for messages and sm_dev.url, which status prints. */
void net_url_redact(const char *url, char *out, size_t outlen);

/* Wait until fd has one of `events` or the monotonic deadline (ns) passed: 1, 0 (timeout),
 * -errno. For the backends' connect loops. */
int net_poll_until(int fd, short events, int64_t deadline_ns, short *ret_revents);

#endif
