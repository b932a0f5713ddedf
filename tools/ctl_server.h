/* ctl_server — the mount daemon's control socket (docs/ctl-protocol.md): `stats` and `scrub`
 * for commands that need the mount's own view of its data service.
 *
 * THREADS
 *   One accept thread, one thread per connection (at most CTL_SERVER_CONNS), and while a
 *   scrub runs one more that reads the client's `cancel`. The scrub runs on its connection's
 *   thread; at most one at a time per daemon. Lock order: ctl_server.lock is a leaf (held
 *   for bookkeeping only, never across I/O or a scrub).
 */
#ifndef BRAIDFS_CTL_SERVER_H
#define BRAIDFS_CTL_SERVER_H

#include <stddef.h>

#include "dataservice/ds.h"
#include "fs/fs.h"

#define CTL_SERVER_CONNS 8

struct ctl_server;

/* Listen on /run/braidfs/<our pid>.ctl (mode 0600, replacing a stale file) for the data
 * service ds of the volume named volume, and the request counters of fs (NULL: none). ds
 * and fs must outlive the server. 0, or -errno with a one-line reason in err. */
int ctl_server_start(struct ds *ds, struct fs *fs, const char *volume, struct ctl_server **ret,
		     char *err, size_t errlen);
/* Cancel a running scrub (its client gets `done status=cancelled`), close every connection,
 * join every thread, remove the socket. NULL ok. */
void ctl_server_stop(struct ctl_server *s);

#endif
