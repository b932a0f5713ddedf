/* braidfs mount / umount.
 *
 * mount forks before anything opens a database or starts a thread; the child does all the
 * work and tells the parent over a pipe either "OK" or the one-line reason it failed, so
 * the user sees real errors and an exit code while the mount still runs in the background.
 * The child records itself in /run/braidfs/<pid>.mount (run.c) so that umount can wait for
 * it to finish writing before it returns, and serves the control socket
 * /run/braidfs/<pid>.ctl (ctl_server.c: scrub, stats) while it is mounted.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <mntent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <stdarg.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"
#include "fs/fs.h"
#include "tools/ctl_server.h"
#include "tools/run.h"
#include "tools/tools.h"

static const char mount_help[] =
    "Usage: braidfs mount [-f] [-o OPTIONS] META_URL MOUNTPOINT\n"
    "\n"
    "Mount the braidfs volume whose metadata is at META_URL on MOUNTPOINT (an existing\n"
    "directory). The command returns once the file system is ready; the mount keeps\n"
    "running in the background until 'braidfs umount MOUNTPOINT'. The targets named\n"
    "at format time are opened by this process: no other daemon is needed.\n"
    "\n"
    "A volume in an sqlite:// database is mounted at most once at a time. A volume in a\n"
    "postgres:// database may be mounted by any number of processes on any number of\n"
    "nodes at once, with close-to-open consistency (as NFS): what one mount wrote and\n"
    "closed, another sees when it opens the file; names and attributes another mount\n"
    "changed show after entry_timeout / attr_timeout. File locks (fcntl record locks, OFD\n"
    "locks, flock) hold across every mount of such a volume; a lock is released when its\n"
    "owner closes the file or dies, and those of a mount that dies without unmounting\n"
    "are released client_ttl after it stopped renewing its registration. No mount\n"
    "starts while braidfs fsck runs. If MOUNTPOINT holds a braidfs mount whose process\n"
    "died, it is cleaned up first. After an unclean stop the mount finishes what was left\n"
    "(unlinked-but-open files, data beyond a file's size) when it is the only mount alive.\n"
    "\n"
    "Options:\n"
    "  -f, --foreground   stay in the foreground, log to stderr\n"
    "  -o OPTIONS         comma-separated:\n"
    "       attr_timeout=SEC   how long the kernel caches attributes (default: 1 on a\n"
    "                          postgres:// volume; 86400 on an sqlite:// volume, whose\n"
    "                          one mount sees every change through its own kernel)\n"
    "       entry_timeout=SEC  how long the kernel caches names (default as above)\n"
    "       threads=N          FUSE worker threads at most (default 16)\n"
    "       spin_us=US         after a namespace or attribute request (not a read or\n"
    "                          write), the one worker reading requests watches for the\n"
    "                          next for up to US microseconds before it sleeps: one that\n"
    "                          comes in that time needs no thread woken (tens of\n"
    "                          microseconds per request on a virtual machine; costs up\n"
    "                          to US of CPU after each burst); 0 never; 0..1000\n"
    "                          (default 50)\n"
    "       time_grain_ms=MS   how long after a write set a file's mtime and ctime\n"
    "                          later writes leave them as they are, as a local file\n"
    "                          system does within one clock tick: an fsync after\n"
    "                          such writes then owes the metadata database nothing;\n"
    "                          0 stamps every write; 0..1000 (default: the kernel's\n"
    "                          clock tick, 1-10 ms)\n"
    "       stall_ms=MS        a volume served by nodes: how long a request keeps\n"
    "                          being retried while its chain does not change (its\n"
    "                          primary's node is down and no manager moved the chain\n"
    "                          yet) before the application gets EIO (default 20000)\n"
    "       node=NAME          the serve node this mount runs on (its name in the\n"
    "                          node's serve config): in a strong chain, reads go to\n"
    "                          that node's replica when it is an in-chain member,\n"
    "                          else to the chain's primary (volumes served by nodes)\n"
    "       log=PATH           log file of the background process\n"
    "                          (default /var/log/braidfs.log)\n"
    "       debug              log every FUSE request (implies -f)\n"
    "       ro                 read-only mount\n"
    "       client_ttl=SEC     postgres:// volumes: how long other mounts wait after this\n"
    "                          one stops renewing its registration (a crash, a cut link)\n"
    "                          before they take it for dead and its file locks are\n"
    "                          released; 1..3600 (default 15)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Examples:\n"
    "  braidfs mount sqlite:///var/lib/braidfs/meta.db /mnt/braidfs\n"
    "  braidfs mount postgres://braidfs@db1:5432/braidfs /mnt/braidfs\n"
    "  braidfs mount -o node=n1 postgres://braidfs@db1:5432/braidfs /mnt/braidfs\n"
    "\n"
    "Exit status: 0 mounted, 1 failed, 2 usage error.\n";

static const char umount_help[] =
    "Usage: braidfs umount [-l] [-t SEC] MOUNTPOINT\n"
    "\n"
    "Flush and unmount the braidfs mount at MOUNTPOINT, then wait until its process\n"
    "has written everything (sizes, metadata, data on every replica) and exited.\n"
    "A mount whose process died ('Transport endpoint is not connected') is removed.\n"
    "\n"
    "Options:\n"
    "  -l, --lazy         detach now even if files are still open there; the process\n"
    "                     finishes when the last one is closed\n"
    "  -t, --timeout SEC  how long to wait for the process (default 300)\n"
    "  -h, --help         show this help\n"
    "\n"
    "A file system mounted here before a process entered a mount namespace of its own\n"
    "(unshare -m, ip netns exec, a systemd service with PrivateTmp= or ProtectSystem=)\n"
    "stays mounted in that namespace: its process cannot exit until every such copy is\n"
    "gone. umount then names the processes that hold one and how to drop it.\n"
    "\n"
    "Exit status: 0 unmounted, 1 failed (e.g. busy), 2 usage error.\n";

/* ---- /proc/self/mounts ---- */

/* 1 if path is a braidfs mount point (fstype fuse.braidfs), 0 if not. */
static int is_braidfs_mount(const char *path)
{
	FILE *f = setmntent("/proc/self/mounts", "r");
	if (!f)
		return 0;
	struct mntent *e;
	int found = 0;
	while ((e = getmntent(f)))
		if (!strcmp(e->mnt_dir, path) && !strcmp(e->mnt_type, "fuse.braidfs"))
			found = 1;
	endmntent(f);
	return found;
}

/* A FUSE mount whose process died answers statfs with ENOTCONN. stat would not do: the
 * kernel answers it from its attribute cache for up to attr_timeout after the death. */
static bool mount_dead(const char *path)
{
	struct statvfs sv;
	return statvfs(path, &sv) < 0 &&
	       (errno == ENOTCONN || errno == EIO || errno == ECONNABORTED);
}

/* Normalize without touching a dead mount (realpath would stat it): resolve the parent. */
static int mount_path(const char *in, char *out, size_t len)
{
	char buf[PATH_MAX];
	if (realpath(in, buf)) {
		snprintf(out, len, "%s", buf);
		return 0;
	}
	int r = -errno;
	if (r != -ENOTCONN && r != -EIO)
		return r;
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s", in);
	char *slash = strrchr(tmp, '/');
	const char *base = slash ? slash + 1 : tmp;
	const char *dir = ".";
	if (slash) {
		*slash = '\0';
		dir = slash == tmp ? "/" : tmp;
	}
	if (!realpath(dir, buf))
		return -errno;
	size_t bl = strlen(buf), nl = strlen(base);
	bool root = !strcmp(buf, "/");
	if (bl + nl + 2 > len)
		return -ENAMETOOLONG;
	memcpy(out, buf, bl);
	if (!root)
		out[bl++] = '/';
	memcpy(out + bl, base, nl + 1);
	return 0;
}

/* ---- mount ---- */

struct mount_opts {
	struct fs_options fs;
	uint32_t client_ttl_ms;
	unsigned stall_ms; /* a volume served by nodes: ds_config.stall_ms (0: its default) */
	bool foreground;
	char node[META_NODE_MAX];
	char log[PATH_MAX];
};

/* An integer option NAME=VAL within lo..hi (in UNIT), or a message and false. */
static bool int_opt(const char *name, const char *val, long lo, long hi, const char *unit,
		    long *out)
{
	char *end;
	long n = strtol(val, &end, 10);
	if (end == val || *end || n < lo || n > hi) {
		die_msg("mount", "%s must be %ld..%ld (%s), not '%s'", name, lo, hi, unit, val);
		return false;
	}
	*out = n;
	return true;
}

static int parse_o(const char *s, struct mount_opts *mo)
{
	char buf[1024];
	snprintf(buf, sizeof(buf), "%s", s);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (eq)
			*eq++ = '\0';
		char *end = NULL; /* set by the options parsed as numbers below, checked after */
		long n;
		if (!strcmp(tok, "attr_timeout") && eq) {
			mo->fs.attr_timeout = strtod(eq, &end);
		} else if (!strcmp(tok, "entry_timeout") && eq) {
			mo->fs.entry_timeout = strtod(eq, &end);
		} else if (!strcmp(tok, "threads") && eq) {
			n = strtol(eq, &end, 10);
			if (n < 1 || n > 256) {
				die_msg("mount", "threads must be 1..256, not '%s'", eq);
				return -EINVAL;
			}
			mo->fs.max_threads = (unsigned)n;
		} else if (!strcmp(tok, "spin_us") && eq) {
			if (!int_opt(tok, eq, 0, FS_SPIN_US_MAX, "microseconds", &n))
				return -EINVAL;
			mo->fs.spin_us = (int32_t)n;
		} else if (!strcmp(tok, "time_grain_ms") && eq) {
			if (!int_opt(tok, eq, 0, FS_TIME_GRAIN_MAX_MS, "milliseconds", &n))
				return -EINVAL;
			mo->fs.time_grain_set = true;
			mo->fs.time_grain_ms = (uint32_t)n;
		} else if (!strcmp(tok, "client_ttl") && eq) {
			double sec = strtod(eq, &end);
			if (end == eq || *end || !(sec >= VOL_CLIENT_TTL_MIN_MS / 1000.0) ||
			    sec > VOL_CLIENT_TTL_MAX_MS / 1000.0) {
				die_msg("mount", "client_ttl must be 1..3600 seconds, not '%s'",
					eq);
				return -EINVAL;
			}
			mo->client_ttl_ms = (uint32_t)(sec * 1000);
		} else if (!strcmp(tok, "stall_ms") && eq) {
			if (!int_opt(tok, eq, 100, 3600000, "milliseconds", &n))
				return -EINVAL;
			mo->stall_ms = (unsigned)n;
		} else if (!strcmp(tok, "node") && eq) {
			if (!*eq || strlen(eq) >= sizeof(mo->node)) {
				die_msg("mount", "node must name a node (1 to %zu bytes), not '%s'",
					sizeof(mo->node) - 1, eq);
				return -EINVAL;
			}
			snprintf(mo->node, sizeof(mo->node), "%s", eq);
		} else if (!strcmp(tok, "log") && eq) {
			snprintf(mo->log, sizeof(mo->log), "%s", eq);
		} else if (!strcmp(tok, "debug") && !eq) {
			mo->fs.debug = true;
			mo->foreground = true;
		} else if (!strcmp(tok, "ro") && !eq) {
			mo->fs.ro = true;
		} else if (!strcmp(tok, "rw") && !eq) {
			mo->fs.ro = false;
		} else {
			die_msg("mount", "unknown mount option '%s%s%s' (try --help)", tok,
				eq ? "=" : "", eq ? eq : "");
			return -EINVAL;
		}
		if (end && (*end || end == eq || (eq && strtod(eq, NULL) < 0))) {
			die_msg("mount", "option %s needs a non-negative number, not '%s'", tok,
				eq);
			return -EINVAL;
		}
	}
	return 0;
}

/* Say how the mount went: to the waiting parent, or to stderr in the foreground. */
static void report(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(int fd, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (fd >= 0) {
		ssize_t n = write(fd, msg, strlen(msg));
		(void)n;
	} else if (strcmp(msg, "OK")) {
		fprintf(stderr, "braidfs mount: %s\n", msg);
	}
}

/* Targets cache chunk fds (up to RLIMIT_NOFILE/8 each): give them the hard limit. */
static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_debug("cannot raise the open-file limit: %s", strerror(errno));
	}
}

static int serve(const char *meta_url, const char *mnt, struct mount_opts *mo, int status_fd)
{
	char err[1024] = "";
	raise_nofile();
	struct vol v;
	struct fs *fs = NULL;
	struct ctl_server *ctl = NULL;
	int r = vol_open(&v, meta_url, 0, err, sizeof(err));
	if (r < 0) {
		report(status_fd, "%s", err);
		goto out;
	}
	struct vol_holder h;
	if (mo->client_ttl_ms)
		v.client_ttl_ms = mo->client_ttl_ms;
	r = vol_lock(&v, mnt, &h);
	char hp[128];
	if (r == -EBUSY && h.exclusive) {
		report(status_fd,
		       "volume '%s' is being checked by braidfs fsck%s%s%s; mount it when "
		       "that is done",
		       v.info.name, h.host[0] ? " on " : "", h.host,
		       vol_holder_pid(&h, hp, sizeof(hp)));
		goto out;
	}
	if (r == -EBUSY) {
		report(status_fd, "volume '%s' is already mounted%s%s%s", v.info.name,
		       h.mnt[0] ? " at " : "", h.mnt, vol_holder_pid(&h, hp, sizeof(hp)));
		goto out;
	}
	if (r < 0) {
		report(status_fd, "cannot lock volume '%s': %s", v.info.name, strerror(-r));
		goto out;
	}
	v.stall_ms = mo->stall_ms;
	snprintf(v.local_node, sizeof(v.local_node), "%s", mo->node);
	r = vol_open_data(&v, err, sizeof(err));
	if (r < 0) {
		report(status_fd, "%s", err);
		goto out;
	}
	/* FS-9: file locks across mounts need this mount's registration (shared engines) */
	mo->fs.client_id = v.client_id ? &v.client_id : NULL;
	r = fs_new(v.meta, v.ds, &mo->fs, &fs);
	if (r < 0) {
		report(status_fd, "cannot start: %s", strerror(-r));
		goto out;
	}
	/* Unfinished work may only be finished when no other mount is alive: it touches inodes
	 * another mount may hold open or be writing (see tools/volume.c). */
	if (v.alone)
		r = fs_recover(fs);
	else
		log_info(
		    "volume %s: other mounts are alive; work an unclean stop left is finished by "
		    "the next mount that is alone, or by braidfs fsck --repair",
		    v.info.name);
	if (r < 0) {
		report(status_fd, "recovery after an unclean stop failed: %s", strerror(-r));
		goto out;
	}
	r = fs_mount(fs, mnt, err, sizeof(err));
	if (r < 0) {
		report(status_fd, "%s", err);
		goto out;
	}
	vol_lock_note(&v, mnt);
	int rr = run_add(mnt, meta_url);
	if (rr < 0)
		log_warn("cannot record the mount in %s: %s (umount will not wait for it)", RUN_DIR,
			 strerror(-rr));
	else if ((rr = ctl_server_start(v.ds, fs, v.info.name, &ctl, err, sizeof(err))) < 0)
		log_warn("no control socket: %s ('braidfs scrub' and counters in 'braidfs "
			 "status' need it)",
			 err);
	log_info("volume %s mounted at %s", v.info.name, mnt);
	report(status_fd, "OK");
	if (status_fd >= 0) {
		close(status_fd);
		int null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
			if (null > 2)
				close(null);
		}
	}
	r = fs_loop(fs);
	log_info("volume %s: unmounting from %s", v.info.name, mnt);
out:
	ctl_server_stop(ctl); /* a scrub in flight is cancelled before the data service closes */
	fs_free(fs);
	vol_close(&v);
	run_del();
	if (r >= 0)
		log_info("volume at %s: all data and metadata written; exiting", mnt);
	return r < 0 ? 1 : 0;
}

int cmd_mount(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"foreground", no_argument, NULL, 'f'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	struct mount_opts mo = {0};
	mo.fs.spin_us = -1;
	mo.fs.attr_timeout = -1; /* FS-11: by the engine */
	mo.fs.entry_timeout = -1;
	mo.fs.max_threads = 16;
	mo.fs.allow_other = geteuid() == 0;
	snprintf(mo.log, sizeof(mo.log), "/var/log/braidfs.log");
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":fo:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			mo.foreground = true;
			break;
		case 'o':
			if (parse_o(optarg, &mo) < 0)
				return EXIT_USAGE;
			break;
		case 'h':
			fputs(mount_help, stdout);
			return 0;
		default:
			return bad_option("mount", argv, c);
		}
	}
	if (argc - optind != 2) {
		die_msg("mount", "needs META_URL and MOUNTPOINT (try --help)");
		return EXIT_USAGE;
	}
	const char *meta_url = argv[optind];
	char err[1024];
	struct url u;
	if (url_parse(meta_url, &u, err, sizeof(err)) < 0) {
		die_msg("mount", "bad META_URL %s", err);
		return EXIT_USAGE;
	}
	char mnt[PATH_MAX];
	int r = mount_path(argv[optind + 1], mnt, sizeof(mnt));
	if (r < 0) {
		die_msg("mount", "mount point %s: %s", argv[optind + 1],
			r == -ENOENT ? "does not exist" : strerror(-r));
		return 1;
	}
	struct stat st;
	if (is_braidfs_mount(mnt) && mount_dead(mnt)) {
		fprintf(stderr, "braidfs mount: %s holds a dead braidfs mount; removing it\n", mnt);
		if (umount2(mnt, MNT_DETACH) < 0) {
			die_msg("mount", "cannot remove the dead mount at %s: %s", mnt,
				strerror(errno));
			return 1;
		}
	}
	if (stat(mnt, &st) < 0) {
		if ((errno == ENOTCONN || errno == EIO) && is_braidfs_mount(mnt)) {
			fprintf(stderr,
				"braidfs mount: %s holds a dead braidfs mount; removing it\n", mnt);
			if (umount2(mnt, MNT_DETACH) < 0) {
				die_msg("mount", "cannot remove the dead mount at %s: %s", mnt,
					strerror(errno));
				return 1;
			}
		}
		if (stat(mnt, &st) < 0) {
			die_msg("mount", "mount point %s: %s", mnt, strerror(errno));
			return 1;
		}
	}
	if (!S_ISDIR(st.st_mode)) {
		die_msg("mount", "mount point %s is not a directory", mnt);
		return 1;
	}
	if (is_braidfs_mount(mnt)) {
		die_msg("mount", "%s is already a braidfs mount point", mnt);
		return 1;
	}

	if (mo.foreground) {
		log_init("braidfs", mo.fs.debug ? LOG_DEBUG : LOG_INFO, LOG_SINK_STDERR, NULL);
		return serve(meta_url, mnt, &mo, -1);
	}
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		die_msg("mount", "pipe: %s", strerror(errno));
		return 1;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		die_msg("mount", "fork: %s", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		close(pfd[0]);
		setsid();
		if (chdir("/") < 0)
			_exit(1);
		if (log_init("braidfs", LOG_INFO, LOG_SINK_FILE, mo.log) < 0)
			log_init("braidfs", LOG_INFO, LOG_SINK_SYSLOG, NULL);
		_exit(serve(meta_url, mnt, &mo, pfd[1]));
	}
	close(pfd[1]);
	char msg[2048];
	size_t n = 0;
	for (;;) {
		ssize_t k = read(pfd[0], msg + n, sizeof(msg) - 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
		if (n >= 2 && !strncmp(msg, "OK", 2))
			break;
	}
	msg[n] = '\0';
	close(pfd[0]);
	if (!strcmp(msg, "OK")) {
		struct vol v;
		char name[64] = "";
		if (vol_open(&v, meta_url, META_O_RDONLY, err, sizeof(err)) == 0)
			snprintf(name, sizeof(name), "%s", v.info.name);
		printf("braidfs: volume '%s' mounted at %s (pid %d)\n", name, mnt, (int)pid);
		if (v.meta)
			printf("  %u replica(s) of every chunk on %u target(s), %s consistency\n",
			       v.info.replicas, v.ntargets, consistency_name(v.info.consistency));
		printf("  look at it:  ls %s    df -h %s    braidfs status %s\n"
		       "  unmount:     braidfs umount %s\n",
		       mnt, mnt, meta_url, mnt);
		vol_close(&v);
		return 0;
	}
	int status;
	waitpid(pid, &status, 0);
	die_msg("mount", "%s",
		n ? msg : "the mount process died before it was ready (see the log)");
	return 1;
}

/* ---- umount ---- */

/* Processes in other mount namespaces that still have the file system of device dev
 * mounted (a copy made when they entered their namespace): one pid per namespace into pids
 * (at most max), the namespaces counted in the return value; where, the mount point in the
 * first one's namespace. */
static unsigned mount_holders(dev_t dev, pid_t *pids, unsigned max, char *where, size_t wlen)
{
	struct stat self;
	if (stat("/proc/self/ns/mnt", &self) < 0)
		return 0;
	char want[32];
	snprintf(want, sizeof(want), "%u:%u", major(dev), minor(dev));
	ino_t seen[1024];
	unsigned nseen = 0, n = 0;
	DIR *d = opendir("/proc");
	if (!d)
		return 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		long pid = strtol(e->d_name, &end, 10);
		if (*end || pid <= 0)
			continue;
		char path[64];
		struct stat ns;
		snprintf(path, sizeof(path), "/proc/%ld/ns/mnt", pid);
		if (stat(path, &ns) < 0 || ns.st_ino == self.st_ino)
			continue;
		bool known = false;
		for (unsigned i = 0; i < nseen; i++)
			known |= seen[i] == ns.st_ino;
		if (known)
			continue;
		snprintf(path, sizeof(path), "/proc/%ld/mountinfo", pid);
		FILE *f = fopen(path, "re");
		if (!f)
			continue;
		char line[4096], mp[PATH_MAX] = "";
		bool holds = false;
		while (!holds && fgets(line, sizeof(line), f)) {
			char id[32], parent[32], mm[32], root[PATH_MAX];
			if (sscanf(line, "%31s %31s %31s %4095s %4095s", id, parent, mm, root,
				   mp) == 5 &&
			    strcmp(mm, want) == 0 && strstr(line, " - fuse.braidfs "))
				holds = true;
		}
		fclose(f);
		if (nseen < sizeof(seen) / sizeof(*seen))
			seen[nseen++] = ns.st_ino;
		if (!holds)
			continue;
		if (n < max)
			pids[n] = (pid_t)pid;
		if (n == 0)
			snprintf(where, wlen, "%s", mp);
		n++;
	}
	closedir(d);
	return n;
}

/* "1234 (sleep)" */
static void pid_name(pid_t pid, char *out, size_t len)
{
	char path[64], comm[64] = "?";
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	FILE *f = fopen(path, "re");
	if (f) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = 0;
		fclose(f);
	}
	snprintf(out, len, "%d (%s)", (int)pid, comm);
}

/* Say which other mount namespaces keep the file system (and the mount process) alive. */
static bool say_holders(dev_t dev, pid_t daemon)
{
	pid_t pids[4];
	char where[PATH_MAX], names[4][96], list[512] = "";
	unsigned n = mount_holders(dev, pids, 4, where, sizeof(where));
	if (n == 0)
		return false;
	size_t used = 0;
	for (unsigned i = 0; i < n && i < 4; i++) {
		pid_name(pids[i], names[i], sizeof(names[i]));
		int w = snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "", names[i]);
		if (w > 0 && (size_t)w < sizeof(list) - used)
			used += (size_t)w;
	}
	fprintf(stderr,
		"braidfs umount: pid %d cannot exit yet: the file system is still mounted in %u "
		"other mount namespace(s), held by %s%s; it goes when those processes exit, or "
		"after 'nsenter -t %d -m umount %s' for each\n",
		(int)daemon, n, list, n > 4 ? " and more" : "", (int)pids[0], where);
	return true;
}

int cmd_umount(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"lazy", no_argument, NULL, 'l'},
	    {"timeout", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	bool lazy = false;
	long timeout = 300;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":lt:h", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			lazy = true;
			break;
		case 't': {
			char *end;
			timeout = strtol(optarg, &end, 10);
			if (*end || timeout < 0) {
				die_msg("umount", "--timeout needs seconds, not '%s'", optarg);
				return EXIT_USAGE;
			}
			break;
		}
		case 'h':
			fputs(umount_help, stdout);
			return 0;
		default:
			return bad_option("umount", argv, c);
		}
	}
	if (argc - optind != 1) {
		die_msg("umount", "needs MOUNTPOINT (try --help)");
		return EXIT_USAGE;
	}
	char mnt[PATH_MAX];
	int r = mount_path(argv[optind], mnt, sizeof(mnt));
	if (r < 0) {
		die_msg("umount", "%s: %s", argv[optind], strerror(-r));
		return 1;
	}
	if (!is_braidfs_mount(mnt)) {
		die_msg("umount", "%s is not a braidfs mount point", mnt);
		return 1;
	}
	pid_t pid = run_find_mount(mnt);
	bool dead = mount_dead(mnt);
	dev_t dev = 0;
	if (!dead) {
		int fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0) {
			struct stat st;
			if (fstat(fd, &st) == 0)
				dev = st.st_dev;
			syncfs(fd);
			close(fd);
		}
	}
	if (geteuid() == 0) {
		if (umount2(mnt, (dead || lazy) ? MNT_DETACH : 0) < 0) {
			if (errno == EBUSY)
				die_msg(
				    "umount",
				    "%s is busy: processes have files or directories open there "
				    "(see 'fuser -vm %s'); close them, or use --lazy",
				    mnt, mnt);
			else
				die_msg("umount", "cannot unmount %s: %s", mnt, strerror(errno));
			return 1;
		}
	} else {
		pid_t p = fork();
		if (p == 0) {
			if (lazy)
				execlp("fusermount3", "fusermount3", "-u", "-z", mnt, (char *)NULL);
			else
				execlp("fusermount3", "fusermount3", "-u", mnt, (char *)NULL);
			_exit(127);
		}
		int status = 0;
		if (p < 0 || waitpid(p, &status, 0) < 0 || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0) {
			die_msg("umount", "fusermount3 -u %s failed", mnt);
			return 1;
		}
	}
	if (dead) {
		printf("braidfs: removed the dead mount at %s; the next mount finishes its "
		       "recovery\n",
		       mnt);
		return 0;
	}
	if (lazy && pid > 0 && run_pid_alive(pid)) {
		printf("braidfs: detached %s; pid %d finishes writing when the last file there is "
		       "closed\n",
		       mnt, (int)pid);
		return 0;
	}
	if (pid > 0) {
		int64_t t0 = now_monotonic_ns();
		bool said = false, held = false;
		while (run_pid_alive(pid)) {
			int64_t el = (now_monotonic_ns() - t0) / 1000000000;
			/* one look for other namespaces' copies: after 2 s, or at a shorter
			 * timeout */
			if (!said && (el >= 2 || el >= timeout)) {
				held = dev && say_holders(dev, pid);
				if (!held && el >= 2)
					fprintf(stderr,
						"braidfs umount: waiting for pid %d to finish "
						"writing...\n",
						(int)pid);
				said = true;
			}
			if (el >= timeout) {
				if (held)
					die_msg("umount",
						"pid %d still running after %lds: the file system "
						"is still mounted in another mount namespace; it "
						"exits once that copy is gone",
						(int)pid, timeout);
				else
					die_msg("umount",
						"pid %d still running after %lds; it keeps writing "
						"in the background",
						(int)pid, timeout);
				return 1;
			}
			struct timespec ts = {0, 20 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
	}
	printf("braidfs: unmounted %s\n", mnt);
	return 0;
}
