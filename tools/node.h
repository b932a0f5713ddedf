/* node — the engine of `braidfs serve`: one node of a distributed volume
 * (docs/distributed.md). Prefix node_.
 *
 * WHAT IT OWNS
 *   This node's targets (opened once, served to clients and peers over the transport by
 *   rpc_server, and used by its own data service), its row in the nodes table and the
 *   heartbeat that renews it, the self-fencing clock (dataservice/fence.h, DIST-4), a data
 *   service over the whole volume through which it applies the writes of chains it is the
 *   primary of (DIST-3), and, while it holds the `manager` lease, the failure handling of the
 *   cluster (DIST-1).
 *
 * THREADS
 *   node_start's caller; the heartbeat thread (renewal, fencing, the manager's rounds); the
 *   transport's workers (requests). The chain snapshot (chains, nchains) is protected by
 *   chains_lock; the meta handle is thread-safe.
 */
#ifndef BRAIDFS_NODE_H
#define BRAIDFS_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

struct node;

/* Open the targets of cfg, register the node, start serving and heartbeating. err: one line. */
int node_start(const struct cfg_node *cfg, struct node **ret, char *err, size_t errlen);
/* Stop: no new requests, wait for those running, mark the node down, release the manager
 * lease, close everything. NULL ok. */
void node_stop(struct node *n);
/* This node's id in the nodes table. */
uint32_t node_id(const struct node *n);

#endif
