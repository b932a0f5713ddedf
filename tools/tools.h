/* tools — the `braidfs` command: one binary, one file per subcommand (cmd_*.c), and the
 * volume-opening code they share (volume.c). Every subcommand prints errors as one line
 * "braidfs CMD: reason" on stderr and returns an exit code: 0 ok, 1 failure or problems
 * found, 2 usage error.
 */
#ifndef BRAIDFS_TOOLS_H
#define BRAIDFS_TOOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "dataservice/ds.h"
#include "fs/meta/meta.h"

#define EXIT_USAGE 2

struct vol {
	char meta_url[1024];
	struct meta *meta;
	struct meta_volume info;
	struct meta_target *targets;
	unsigned ntargets;
	struct meta_chain *chains;
	unsigned nchains;
	struct ds *ds;
	int lock_fd; /* -1 when not held */
};

/* Open the metadata and read the volume, targets and chains. err: one-line reason. */
int vol_open(struct vol *v, const char *meta_url, int meta_flags, char *err, size_t errlen);
/* Read targets and chains again (after this process changed them). */
int vol_reload(struct vol *v, char *err, size_t errlen);
/* Does the data service get this target (every state but removed)? */
bool vol_target_in_data(const struct meta_target *t);
/* Does it serve I/O: up, or draining (still in chains while they move away)? */
bool vol_target_serves(const struct meta_target *t);
/* Open every target through the data service: up and draining ones opened, offline and
 * drained ones known but closed (a rebuild opens them on demand), removed ones left out. */
int vol_open_data(struct vol *v, char *err, size_t errlen);
/* Take the volume's mount lock (one mount at a time, also fsck). On -EBUSY, holder_pid and
 * holder_mnt say who has it. Released by vol_close or process death. */
int vol_lock(struct vol *v, pid_t *holder_pid, char *holder_mnt, size_t mntlen);
/* Record our pid and mount point in the lock file (after a successful mount). */
void vol_lock_note(struct vol *v, const char *mountpoint);
/* Who holds the lock without taking it: 0 none, 1 held (pid, mnt filled). */
int vol_lock_holder(const char *meta_url, pid_t *pid, char *mnt, size_t mntlen);
void vol_close(struct vol *v);

const char *consistency_name(enum meta_consistency c);

/* Is name a valid pool name? If not, say so (one line) and return false. */
bool pool_arg_ok(const char *cmd, const char *name);

/* Placement's node number for a node name: 1 + the index of the first of t[0..n-1] on that
 * node (so equal names get equal numbers). */
uint32_t vol_node_number(const struct meta_target *t, unsigned n, const char *node);

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

#endif
