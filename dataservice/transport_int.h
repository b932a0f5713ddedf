/* transport_int — fault hooks of the transports for their own tests. Not part of the contract
 * (transport.h); only dataservice/ and its tests include it. */
#ifndef BRAIDFS_TRANSPORT_INT_H
#define BRAIDFS_TRANSPORT_INT_H

#include "dataservice/transport.h"

/* The next `times` final replies to opcode `op` on server s are not sent: the connection is
 * cut instead, as if the server died right after it executed the request and before the
 * reply left. The client sees -ECONNRESET for everything in flight on that connection. */
void xp_tcp_fault_cut_reply(struct xp_server *s, unsigned op, unsigned times);

#endif
