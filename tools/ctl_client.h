/* ctl_client — the command side of a mount daemon's control socket (docs/ctl-protocol.md):
 * connect and say hello, send requests, read the daemon's messages with a timeout. Used by
 * `braidfs scrub` and `braidfs status` on a mounted volume. One client per thread.
 */
#ifndef BRAIDFS_CTL_CLIENT_H
#define BRAIDFS_CTL_CLIENT_H

#include <stddef.h>
#include <sys/types.h>

#include "tools/ctl.h"
#include "tools/run.h"

struct ctl_client {
	int fd;
	pid_t pid;
	char volume[CTL_VALUE_MAX + 1];
	struct ctl_reader rd;
};

/* The mount daemon serving the volume whose metadata is at meta_url: 1 and *ret when a mount
 * holds the volume lock and is registered in RUN_DIR (or, for a shared engine, which has no
 * lock file, when a mount of it on this host is registered there); 0 when nobody holds the
 * lock; -EBUSY when a process that is not a mount holds it (fsck, a scrub of the unmounted
 * volume: ret->pid). */
int ctl_client_find_mount(const char *meta_url, struct run_entry *ret);
/* Connect to pid's socket and exchange hello. 0, or -errno with a one-line reason in err. */
int ctl_client_open(struct ctl_client *c, pid_t pid, char *err, size_t errlen);
void ctl_client_close(struct ctl_client *c);
/* 0 or -errno with a reason in err. */
int ctl_client_send(struct ctl_client *c, struct ctl_line *l, char *err, size_t errlen);
/* The daemon's next message: 0; -ETIMEDOUT after timeout_ms (-1: no limit); -EINTR when a
 * signal arrived first; -ENODATA when the daemon closed; -EBADMSG when it sent something
 * malformed; -EREMOTEIO for an `error` message. err says which. */
int ctl_client_recv(struct ctl_client *c, int timeout_ms, struct ctl_msg *m, char *err,
		    size_t errlen);
/* A `stats` request: the data service's stats and up to max targets (*ret_n of them); with
 * reqs, also up to max_reqs kinds of FUSE requests (*ret_nreqs of them; 0 from a daemon that
 * does not count them). */
int ctl_client_stats(struct ctl_client *c, struct ds_stats *ret_stats, struct ds_target_stat *ret,
		     unsigned max, unsigned *ret_n, struct ctl_req_stat *reqs, unsigned max_reqs,
		     unsigned *ret_nreqs, char *err, size_t errlen);

#endif
