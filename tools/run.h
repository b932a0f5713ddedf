/* run — the registry of running mounts under /run/braidfs, shared by `mount`, `umount`,
 * `status` and `scrub`:
 *   <pid>.mount  three lines: pid, mount point, META_URL (written once the mount is ready)
 *   <pid>.ctl    the daemon's control socket (ctl_server.c, docs/ctl-protocol.md)
 * Both are removed by the daemon on exit; those of dead pids (a mount killed by SIGKILL) are
 * removed by run_find_mount (every `umount` scans), and a new daemon with a recycled pid
 * replaces its socket.
 * The files are root's (the directory is 0755, root-owned): a reader still bounds what it
 * reads and checks what it parses.
 */
#ifndef BRAIDFS_RUN_H
#define BRAIDFS_RUN_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define RUN_DIR "/run/braidfs"

struct run_entry {
	pid_t pid;
	char mnt[PATH_MAX];
	char meta_url[1024];
};

/* RUN_DIR "/<pid>.<ext>" into out. */
void run_path(pid_t pid, const char *ext, char *out, size_t len);
/* Record this process as serving mnt for meta_url. 0 or -errno. */
int run_add(const char *mnt, const char *meta_url);
/* Remove this process's entry. */
void run_del(void);
/* Alive and not a zombie (a daemon killed with SIGKILL may wait to be reaped). */
bool run_pid_alive(pid_t pid);
/* The pid serving mnt, or 0. Stale entries (dead pids) are removed. */
pid_t run_find_mount(const char *mnt);
/* A mount of meta_url on this host (the first found): 1 and *ret, or 0. Several processes
 * may mount one volume of a shared engine; this finds one of them. */
int run_find_url(const char *meta_url, struct run_entry *ret);
/* The entry of pid: 0, -ENOENT (none), -EBADMSG (not three well-formed lines). */
int run_read(pid_t pid, struct run_entry *ret);

#endif
