/* csi_mount — what the node service does to the kernel's mount table: read it (bounded
 * parse of /proc/self/mountinfo), bind, unmount, remove trees, run `braidfs`. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "csi/csi.h"

/* Children csi_run() is waiting for: the orphan reaper must leave them alone. */
static pthread_mutex_t kids_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t kids[64]; /* protected by kids_lock; 0 = free slot */

static void kid_note(pid_t pid, pid_t old)
{
	pthread_mutex_lock(&kids_lock);
	for (size_t i = 0; i < sizeof(kids) / sizeof(kids[0]); i++) {
		if (kids[i] == old) {
			kids[i] = pid;
			break;
		}
	}
	pthread_mutex_unlock(&kids_lock);
}

static bool kid_is_ours(pid_t pid)
{
	bool ours = false;
	pthread_mutex_lock(&kids_lock);
	for (size_t i = 0; i < sizeof(kids) / sizeof(kids[0]); i++)
		ours |= kids[i] == pid;
	pthread_mutex_unlock(&kids_lock);
	return ours;
}

void csi_reap_orphans(void)
{
	for (;;) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		/* Peek (WNOWAIT): reap only what is not a csi_run() child being waited for. */
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
			return;
		if (kid_is_ours(si.si_pid))
			return; /* csi_run reaps it; the next SIGCHLD brings us back */
		if (waitpid(si.si_pid, NULL, WNOHANG) > 0)
			log_info("reaped process %d (a mount process that ended)", (int)si.si_pid);
	}
}

/* mountinfo escapes space, tab, newline and backslash as \ooo (octal). Decode in place;
 * returns false on a malformed escape. */
static bool unescape(char *s)
{
	char *o = s;
	for (char *p = s; *p; p++) {
		if (*p != '\\') {
			*o++ = *p;
			continue;
		}
		if (p[1] < '0' || p[1] > '3' || p[2] < '0' || p[2] > '7' || p[3] < '0' ||
		    p[3] > '7')
			return false;
		*o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
		p += 3;
	}
	*o = '\0';
	return true;
}

int csi_mnt_each(bool (*fn)(void *arg, const struct csi_mnt *m), void *arg)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	char line[4 * PATH_MAX];
	while (fgets(line, sizeof(line), f)) {
		if (!strchr(line, '\n'))
			continue; /* longer than any path we manage: not ours */
		char *save = NULL, *fld[32] = {0};
		int n = 0;
		for (char *t = strtok_r(line, " \n", &save); t && n < 32;
		     t = strtok_r(NULL, " \n", &save))
			fld[n++] = t;
		/* id parent maj:min root mountpoint options [optional...] - fstype source super */
		int sep = 6;
		while (sep < n && strcmp(fld[sep], "-"))
			sep++;
		if (sep + 1 >= n || !unescape(fld[4]) || !unescape(fld[3]))
			continue;
		struct csi_mnt m = {
		    .root = fld[3],
		    .mountpoint = fld[4],
		    .fstype = fld[sep + 1],
		    .dev = fld[2],
		    .ro = !strncmp(fld[5], "ro", 2) && (fld[5][2] == ',' || fld[5][2] == '\0'),
		};
		if (!fn(arg, &m))
			break;
	}
	fclose(f);
	return 0;
}

struct mnt_find {
	const char *path;
	bool found, ro;
	char root[PATH_MAX], fstype[64];
};

static bool mnt_find_one(void *arg, const struct csi_mnt *m)
{
	struct mnt_find *q = arg;
	if (strcmp(m->mountpoint, q->path))
		return true;
	/* The last entry for a path is the one on top; read them all. */
	q->found = true;
	snprintf(q->root, sizeof(q->root), "%s", m->root);
	snprintf(q->fstype, sizeof(q->fstype), "%s", m->fstype);
	q->ro = m->ro;
	return true;
}

enum csi_mnt_state csi_mnt_state(const char *path, char *root_ret, size_t rootlen, char *fstype_ret,
				 size_t fslen, bool *ro_ret)
{
	struct mnt_find q = {.path = path};
	if (csi_mnt_each(mnt_find_one, &q) < 0 || !q.found)
		return CSI_MNT_NONE;
	if (root_ret)
		snprintf(root_ret, rootlen, "%s", q.root);
	if (fstype_ret)
		snprintf(fstype_ret, fslen, "%s", q.fstype);
	if (ro_ret)
		*ro_ret = q.ro;
	/* CSI-4: a FUSE mount whose process died answers statfs with ENOTCONN. */
	struct statvfs sv;
	if (statvfs(path, &sv) < 0 && (errno == ENOTCONN || errno == ECONNABORTED || errno == EIO))
		return CSI_MNT_DEAD;
	return CSI_MNT_LIVE;
}

int csi_bind(const char *src, const char *dst, bool ro)
{
	if (mount(src, dst, NULL, MS_BIND, NULL) < 0)
		return -errno;
	if (ro && mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0) {
		int e = -errno;
		umount2(dst, MNT_DETACH);
		return e;
	}
	return 0;
}

int csi_umount(const char *path)
{
	enum csi_mnt_state st = csi_mnt_state(path, NULL, 0, NULL, 0, NULL);
	if (st == CSI_MNT_NONE)
		return 0;
	if (st == CSI_MNT_LIVE && umount2(path, 0) == 0)
		return 0;
	/* Dead, or busy: detach it from the tree now; the kernel frees it when unused. */
	if (umount2(path, MNT_DETACH) < 0 && errno != EINVAL)
		return -errno;
	return 0;
}

int csi_run(char *const argv[], char *out, size_t len)
{
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0) {
		int e = -errno;
		close(pfd[0]);
		close(pfd[1]);
		return e;
	}
	if (pid > 0)
		kid_note(pid, 0);
	if (pid == 0) {
		/* CSI-3: a session of its own, and signals back to their defaults. */
		setsid();
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		int null = open("/dev/null", O_RDONLY);
		if (null >= 0)
			dup2(null, 0);
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		execvp(argv[0], argv);
		dprintf(2, "cannot run %s: %s", argv[0], strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	size_t n = 0;
	char sink[512];
	for (;;) {
		char *dst = n + 1 < len ? out + n : sink;
		size_t room = n + 1 < len ? len - 1 - n : sizeof(sink);
		ssize_t k = read(pfd[0], dst, room);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		if (dst != sink)
			n += (size_t)k;
	}
	close(pfd[0]);
	if (len)
		out[n] = '\0';
	/* One line for messages: the last non-empty line is the reason. */
	while (n && (out[n - 1] == '\n' || out[n - 1] == ' '))
		out[--n] = '\0';
	int status, w;
	while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
		;
	int e = errno;
	kid_note(0, pid);
	if (w < 0)
		return -e;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int rmtree_at(int dfd, const char *name, dev_t dev, int depth)
{
	if (depth > 4096)
		return -ELOOP;
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOTDIR || errno == ELOOP
			   ? (unlinkat(dfd, name, 0) < 0 ? -errno : 0)
			   : -errno;
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_dev != dev) {
		close(fd);
		return -EXDEV; /* something is mounted inside: do not cross into it */
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	int r = 0;
	struct dirent *de;
	while (r == 0 && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (de->d_type == DT_DIR || de->d_type == DT_UNKNOWN)
			r = rmtree_at(fd, de->d_name, dev, depth + 1);
		else if (unlinkat(fd, de->d_name, 0) < 0)
			r = -errno;
	}
	closedir(d);
	if (r == 0 && unlinkat(dfd, name, AT_REMOVEDIR) < 0)
		r = -errno;
	return r;
}

int csi_rmtree(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	return rmtree_at(AT_FDCWD, path, st.st_dev, 0);
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void csi_names_free(char **names, size_t n)
{
	while (names && n)
		free(names[--n]);
	free(names);
}

int csi_dir_names(const char *dir,
		  bool (*keep)(void *arg, const char *dir, const char *ent, char *out, size_t len),
		  void *arg, char ***ret, size_t *nret)
{
	char **names = NULL;
	size_t n = 0, cap = 0;
	int e = 0;
	*ret = NULL;
	*nret = 0;
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	for (struct dirent *de; (errno = 0, de = readdir(d));) {
		char name[NAME_MAX + 1];
		if (!keep(arg, dir, de->d_name, name, sizeof(name)))
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			char **g = realloc(names, ncap * sizeof(*g));
			if (!g) {
				e = -ENOMEM;
				break;
			}
			names = g;
			cap = ncap;
		}
		if (!(names[n] = strdup(name))) {
			e = -ENOMEM;
			break;
		}
		n++;
	}
	if (e == 0 && errno)
		e = -errno;
	closedir(d);
	if (e < 0) {
		csi_names_free(names, n);
		return e;
	}
	qsort(names, n, sizeof(*names), cmp_names);
	*ret = names;
	*nret = n;
	return 0;
}
