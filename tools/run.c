/* run — the registry of running mounts. See run.h. */
#include "tools/run.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

void run_path(pid_t pid, const char *ext, char *out, size_t len)
{
	snprintf(out, len, RUN_DIR "/%d.%s", (int)pid, ext);
}

int run_add(const char *mnt, const char *meta_url)
{
	char p[128], tmp[140];
	int r = mkdir_p(RUN_DIR, 0755);
	if (r < 0)
		return r;
	run_path(getpid(), "mount", p, sizeof(p));
	snprintf(tmp, sizeof(tmp), "%s.tmp", p);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -errno;
	fprintf(f, "%d\n%s\n%s\n", (int)getpid(), mnt, meta_url);
	/* renamed into place whole: a reader never sees half an entry (and takes it for stale) */
	if (fclose(f) != 0 || rename(tmp, p) < 0) {
		r = -errno;
		unlink(tmp);
		return r;
	}
	return 0;
}

void run_del(void)
{
	char p[128];
	run_path(getpid(), "mount", p, sizeof(p));
	unlink(p);
}

/* One line of at most len - 1 bytes from *s (ending in '\n'); false when there is none. */
static bool take_line(const char **s, const char *end, char *out, size_t len)
{
	const char *nl = memchr(*s, '\n', (size_t)(end - *s));
	if (!nl || (size_t)(nl - *s) >= len)
		return false;
	memcpy(out, *s, (size_t)(nl - *s));
	out[nl - *s] = '\0';
	*s = nl + 1;
	return true;
}

static int read_file_entry(const char *path, struct run_entry *ret)
{
	char buf[PATH_MAX + 1024 + 64];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n < 0)
		return -errno;
	const char *s = buf, *end = buf + n;
	char pid[16];
	char *e;
	if (!take_line(&s, end, pid, sizeof(pid)) ||
	    !take_line(&s, end, ret->mnt, sizeof(ret->mnt)) ||
	    !take_line(&s, end, ret->meta_url, sizeof(ret->meta_url)))
		return -EBADMSG;
	long v = strtol(pid, &e, 10);
	if (!pid[0] || *e || v <= 0 || v > INT32_MAX)
		return -EBADMSG;
	ret->pid = (pid_t)v;
	return 0;
}

int run_read(pid_t pid, struct run_entry *ret)
{
	char p[128];
	run_path(pid, "mount", p, sizeof(p));
	int r = read_file_entry(p, ret);
	if (r == 0 && ret->pid != pid)
		r = -EBADMSG;
	return r;
}

bool run_pid_alive(pid_t pid)
{
	char p[64], buf[512];
	snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(p, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *rp = strrchr(buf, ')');
	return !(rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'));
}

/* Scan RUN_DIR, removing stale entries; the first live entry whose mount point (or, with
 * by_url, META_URL) is key goes to *ret. 1 found, 0 not. */
static int run_find(const char *key, bool by_url, struct run_entry *ret)
{
	DIR *d = opendir(RUN_DIR);
	if (!d)
		return 0;
	struct dirent *de;
	int found = 0;
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		char p[512];
		snprintf(p, sizeof(p), RUN_DIR "/%s", de->d_name);
		if (n > 4 && !strcmp(de->d_name + n - 4, ".ctl")) {
			/* the socket of a mount killed with SIGKILL: nobody unlinked it */
			char *end;
			long pid = strtol(de->d_name, &end, 10);
			if (end == de->d_name + n - 4 && pid > 0 && !run_pid_alive((pid_t)pid))
				unlink(p);
			continue;
		}
		if (n < 7 || strcmp(de->d_name + n - 6, ".mount"))
			continue;
		struct run_entry e;
		int r = read_file_entry(p, &e);
		if (r == -EBADMSG || (r == 0 && !run_pid_alive(e.pid))) {
			unlink(p);
			continue;
		}
		if (r == 0 && !found && !strcmp(by_url ? e.meta_url : e.mnt, key)) {
			*ret = e;
			found = 1;
		}
	}
	closedir(d);
	return found;
}

pid_t run_find_mount(const char *mnt)
{
	struct run_entry e;
	return run_find(mnt, false, &e) ? e.pid : 0;
}

int run_find_url(const char *meta_url, struct run_entry *ret)
{
	return run_find(meta_url, true, ret);
}
