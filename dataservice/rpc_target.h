/* rpc_target — a target that lives on another node, and the server side that runs requests
 * against this node's targets. Prefix rpc_.
 *
 * CLIENT
 *   A remote target is a `struct sm_target` whose ops are rpc_target_ops: the data service
 *   uses it like a local one (sm.h, SM-1..SM-6 hold through it). Every operation is one request
 *   on a transport client (transport.h); reads and writes longer than PROTO_MAX_DATA become
 *   several. A target URL names the node and the target id:
 *       tcp://HOST:PORT/TARGET_ID[?timeout_ms=N&dead_ms=N]
 *   sm-style open() by URL makes a private transport client; rpc_target_open() shares one
 *   client (one connection) between all targets of a node. Requests that address a chunk carry
 *   the chain and epoch given by a callback (rpc_target_set_chain_fn); without one, none.
 *   A remote target is formatted on its own node: format() refuses.
 *
 * SERVER
 *   rpc_server_handle() is the transport's handler (xp_handler_fn, ctx = the struct
 *   rpc_server): it finds the request's target among cfg.targets by target id, asks
 *   cfg.check_epoch about the request's (chain, epoch), deduplicates mutating requests, runs
 *   the request with the target's sm_ops and replies.
 *
 * INVARIANTS (cited as RPC-n)
 *   RPC-1 A request touches a target only after cfg.check_epoch accepted it; a refusal with
 *         -ESTALE is answered -ESTALE with the current epoch in the reply header.
 *   RPC-2 A mutating request with a write id is applied at most once per (origin, write id)
 *         (PROTO-6). A repeat — a retry after a lost reply, or a duplicate — is answered with
 *         the first one's status, after waiting for the first one if it still runs. When the
 *         server cannot tell whether a write id was applied (a retry from an origin it has no
 *         record of: it restarted, or forgot an idle origin; or an id older than the window of
 *         ids it keeps per origin), it answers -EIO and applies nothing.
 *   RPC-3 An origin's record is forgotten only after it was idle for cfg.horizon_ms, which
 *         must exceed the time a client keeps retrying (timeout_ms × (RPC_RETRIES + 1)); when
 *         cfg.origins records are in use and none is that old, a write from a new origin gets
 *         -EBUSY.
 *   RPC-4 The client retries a request only when its connection was lost (-ECONNRESET) and at
 *         most RPC_RETRIES times; a mutating one keeps its write id and carries PROTO_F_RETRY.
 *         A timeout is not retried: the request may still run.
 *
 * THREADS
 *   Client: any thread, like every sm_ops. Server: the handler runs on the transport's workers;
 *   dd_lock (the deduplication table) is a leaf, waited on only by a repeat of a running write.
 */
#ifndef BRAIDFS_RPC_TARGET_H
#define BRAIDFS_RPC_TARGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataservice/transport.h"
#include "storemgr/sm.h"

#define RPC_RETRIES 2
#define RPC_LOCAL   1 /* rpc_server_cfg.forward: apply the request here */

extern const struct sm_ops rpc_target_ops;

/* A remote target served through xc (not owned: free it after every target using it). SM-1:
 * its identity is fetched and checked against expect (may be NULL). err gets a one-line
 * reason. */
int rpc_target_open(struct xp_client *xc, uint32_t target_id, const struct sm_identity *expect,
		    struct sm_target **ret, char *err, size_t errlen);

/* Which chain and epoch a request for chunk (ino, idx) carries. 0, or -errno to fail the
 * operation. */
typedef int (*rpc_chain_fn)(void *ctx, uint64_t ino, uint32_t idx, uint32_t *ret_chain,
			    uint64_t *ret_epoch);
/* Set before the target is used by more than one thread. -EINVAL: t is no remote target. */
int rpc_target_set_chain_fn(struct sm_target *t, rpc_chain_fn fn, void *ctx);
/* DS-6: t is a member on this client's own node, read instead of the primary: its READ, SEEK
 * and CHUNK_LENGTH requests carry PROTO_F_LOCAL. Same rules as rpc_target_set_chain_fn. */
int rpc_target_set_local(struct sm_target *t);
/* The epoch the server reported with the last -ESTALE (0: none yet). */
uint64_t rpc_target_stale_epoch(struct sm_target *t);

/* What the server's epoch check is asked. */
struct rpc_epoch_query {
	uint16_t op;
	uint32_t flags; /* the request's header flags (PROTO_F_LOCAL: a DS-6 read) */
	uint32_t target;
	uint32_t chain; /* PROTO_NO_CHAIN: the request names none */
	uint64_t epoch;
	uint64_t ino; /* of chunk requests */
	uint32_t idx;
};

/* 0: go on. -ESTALE with *ret_current: the sender's epoch is stale. Other -errno: refused. */
typedef int (*rpc_epoch_fn)(void *ctx, const struct rpc_epoch_query *q, uint64_t *ret_current);

struct rpc_server_cfg {
	struct sm_target *const *targets; /* not owned; they outlive the server */
	unsigned ntargets;
	rpc_epoch_fn check_epoch; /* NULL: every epoch is accepted */
	/* Optional (DIST-3): offered every mutating chunk request (WRITE, TRUNCATE, PUNCH,
	 * ALLOCATE) after check_epoch and deduplication accepted it. Returns RPC_LOCAL to have
	 * it applied to the named target here (a replica's copy), else its outcome, 0 or -errno
	 * (a chain's primary applied it to every member). Runs on a worker; may block. */
	int (*forward)(void *ctx, const struct xp_req *req);
	void *ctx;
	unsigned origins;    /* deduplication: origins remembered (default 1024) */
	unsigned window;     /* write ids remembered per origin, a power of 2 (default 1024) */
	unsigned horizon_ms; /* RPC-3 (default 120000) */
};

struct rpc_server;

int rpc_server_new(const struct rpc_server_cfg *cfg, struct rpc_server **ret, char *err,
		   size_t errlen);
/* After the transport server using it is freed. NULL ok. */
void rpc_server_free(struct rpc_server *s);
/* The transport handler; ctx is the struct rpc_server. */
void rpc_server_handle(void *ctx, struct xp_req *req);

#endif
