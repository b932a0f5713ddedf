/* tools — the `braidfs` command: one binary, one file per subcommand (cmd_*.c), and the
 * volume-opening code they share (volume.c). Every subcommand prints errors as one line
 * "braidfs CMD: reason" on stderr and returns an exit code: 0 ok, 1 failure or problems
 * found, 2 usage error.
 */
#ifndef BRAIDFS_TOOLS_H
#define BRAIDFS_TOOLS_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "dataservice/ds.h"
#include "fs/meta/meta.h"

#define EXIT_USAGE 2

/* Shared engines: a client registration expires this long after its last renewal (by the
 * database's clock); it is renewed every third of it. A mount may choose another TTL
 * (vol.client_ttl_ms, VOL_CLIENT_TTL_MIN_MS..VOL_CLIENT_TTL_MAX_MS). */
#define VOL_CLIENT_TTL_MS     15000
#define VOL_CLIENT_TTL_MIN_MS 1000
#define VOL_CLIENT_TTL_MAX_MS 3600000
#define VOL_HOLDERS_MAX	      256

/* Who uses a volume (a mount, or fsck when exclusive). */
struct vol_holder {
	pid_t pid;
	bool exclusive;
	bool gone;	    /* on this host and the process is dead: its registration has not
			     * expired yet (at most VOL_CLIENT_TTL_MS) */
	bool remote;	    /* on another host (shared engines) */
	char host[256];	    /* shared engines only */
	char mnt[PATH_MAX]; /* "" when unknown, or for fsck */
};

struct vol {
	char meta_url[1024];
	struct meta *meta;
	struct meta_volume info;
	struct meta_target *targets;
	unsigned ntargets;
	struct meta_chain *chains;
	unsigned nchains;
	struct ds *ds;
	unsigned stall_ms; /* set before vol_open_data: served volumes' give-up time (0: default) */
	/* the node this process runs on (mount -o node=NAME), set before vol_open_data: reads go
	 * to that node's member of a strong chain (DS-6); "": every read to the primary */
	char local_node[META_NODE_MAX];
	int lock_fd; /* one-node engines: the flock'd file; -1 when not held */
	bool alone;  /* the lock says no other user was alive: recovery may run */
	/* shared engines: our client registration and the thread that renews it */
	_Atomic uint64_t client_id; /* 0: none; replaced by the heartbeat after an expiry */
	uint32_t client_ttl_ms;	    /* the registration's TTL; set before vol_lock */
	struct meta_client me;
	pthread_t hb;
	bool hb_running;
	pthread_mutex_t hb_lock;
	pthread_cond_t hb_cond; /* signalled to stop; protected by hb_lock */
	bool hb_stop;		/* protected by hb_lock */
};

/* Open the metadata and read the volume, targets and chains. err: one-line reason. */
int vol_open(struct vol *v, const char *meta_url, int meta_flags, char *err, size_t errlen);
/* Read targets and chains again (after this process changed them). */
int vol_reload(struct vol *v, char *err, size_t errlen);
/* Does the data service get this target (every state but removed)? */
bool vol_target_in_data(const struct meta_target *t);
/* Does it serve I/O: up, or draining (still in chains while they move away)? */
bool vol_target_serves(const struct meta_target *t);
/* A target URL of a distributed volume is NODE@URL (docs/distributed.md): NODE into node
 * (len bytes; "" when the URL names no node) and the URL after it returned. */
const char *vol_target_node(const char *url, char *node, size_t len);
/* The node that serves target id (NODE@URL) into node; "" when it names none or is unknown. */
void vol_node_of_target(const struct meta_target *targets, unsigned ntargets, uint32_t id,
			char *node, size_t len);
/* The nodes table (META_CAP_CLUSTER engines), up to VOL_NODES_MAX rows, into *ret (an array
 * the caller frees, whatever the result): the row count, or -errno. */
#define VOL_NODES_MAX 256
int vol_nodes(struct meta *m, struct meta_node **ret);
/* The URL of target id of a distributed volume: tcp://ADDRESS/ID through the address of its
 * node (nodes table) if that node is up, then query ("?k=v..."; may be NULL). -ENOENT: the
 * target names no node; -EHOSTUNREACH: its node is not up. */
int vol_resolve_target(struct meta *m, const struct meta_target *targets, unsigned ntargets,
		       uint32_t id, const char *query, char *url, size_t len);
/* Chain m as the data service takes it (ds_open, ds_chain_load): id, epoch, members, and its
 * syncing and away targets as kept copies (META-13: their chunks of the chain stay for a
 * resync). Not its syncing role: only a serve node's data service writes to syncing targets
 * (tools/node.c adds them). */
void vol_chain_cfg(const struct meta_chain *m, struct ds_chain_cfg *c);
/* Does chain c list target id in any of its roles (member, syncing, away, async; META-13)? */
bool vol_chain_lists(const struct meta_chain *c, uint32_t id);
/* Does the volume have targets served by nodes (NODE@URL)? */
bool vol_distributed(const struct vol *v);
/* Open every target through the data service: up and draining ones opened, offline and
 * drained ones known but closed (a rebuild opens them on demand), removed ones left out. */
int vol_open_data(struct vol *v, char *err, size_t errlen);
/* Take the volume lock for a mount at mountpoint, or, with mountpoint NULL, for a tool that
 * needs the volume alone (fsck). One-node engines: one holder at a time; shared engines: any
 * number of mounts, or one exclusive tool (see the top of volume.c). On -EBUSY, *holder (may
 * be NULL) says who is in the way. Released by vol_close or process death. */
int vol_lock(struct vol *v, const char *mountpoint, struct vol_holder *holder);
/* Record our pid and mount point next to the lock (after a successful mount). */
void vol_lock_note(struct vol *v, const char *mountpoint);
/* The live users of the volume, without taking the lock: fills up to max, returns the
 * count, or -errno. */
int vol_holders(struct vol *v, struct vol_holder *out, int max);
/* One-node engines: who holds the lock file, without opening the volume: 0 none, 1 held
 * (pid, mnt filled). Shared engines have no lock file: 0. */
int vol_lock_holder(const char *meta_url, pid_t *pid, char *mnt, size_t mntlen);
void vol_close(struct vol *v);

const char *consistency_name(enum meta_consistency c);

/* Is name a valid pool name? If not, say so (one line) and return false. */
bool pool_arg_ok(const char *cmd, const char *name);

/* Placement's node number for a node name: 1 + the index of the first of t[0..n-1] on that
 * node (so equal names get equal numbers). */
uint32_t vol_node_number(const struct meta_target *t, unsigned n, const char *node);

/* " (pid N)", or " (pid N, gone; its registration expires within S s)" into buf. */
const char *vol_holder_pid(const struct vol_holder *h, char *buf, size_t len);

/* Print "braidfs CMD: fmt" to stderr. */
void die_msg(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* getopt_long said '?' (unknown option) or ':' (missing argument): print one line in our
 * format and return EXIT_USAGE. Call getopt with opterr = 0 and a ':'-prefixed optstring. */
int bad_option(const char *cmd, char **argv, int c);
/* Options of a command whose only option is --help: -1 to go on (optind at the first
 * argument), else the exit code (0 after printing help). */
int help_only_options(int argc, char **argv, const char *cmd, const char *help);

int cmd_bench(int argc, char **argv);
int cmd_format(int argc, char **argv);
int cmd_mount(int argc, char **argv);
int cmd_umount(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_fsck(int argc, char **argv);
int cmd_device(int argc, char **argv);
int cmd_quota(int argc, char **argv);
int cmd_scrub(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
