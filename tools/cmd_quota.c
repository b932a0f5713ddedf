/* braidfs quota — directory quotas (META-9) from the command line: set, show, clear.
 *
 * PATH names a directory inside the volume (from its root: "/db1" or "db1"), resolved by
 * metadata lookups, so the volume need not be mounted. While it is mounted, the mount's
 * own view changes for files opened afterwards; the xattr META_QUOTA_XATTR on the mounted
 * directory (fs/fs_fuse.c, FS-6) is the way to change a quota under running writers.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "tools/tools.h"

static const char help[] =
    "Usage: braidfs quota set META_URL PATH BYTES [INODES]\n"
    "       braidfs quota get META_URL PATH\n"
    "       braidfs quota clear META_URL PATH\n"
    "\n"
    "Directory quotas, in the manner of XFS project quotas. 'set' makes the directory\n"
    "PATH of the volume at META_URL a quota root with a limit of BYTES (4096, 10M, 2G;\n"
    "binary units) and, optionally, INODES files and directories below it; 0 means no\n"
    "limit. On a quota root it changes the limits (a limit below the usage only stops\n"
    "growth). 'get' shows the quota that accounts PATH: its root, limits and usage.\n"
    "'clear' removes the quota of a quota root.\n"
    "\n"
    "PATH is a path inside the volume, from its root (/db1 or db1), not a path of a mount.\n"
    "Every file and directory created below a quota root counts against it; usage is the\n"
    "sum of file sizes (what df and du --apparent-size show) and the number of inodes.\n"
    "A write, truncate or fallocate that would pass the byte limit fails with EDQUOT\n"
    "('Disk quota exceeded'); so does a create past the inode limit. rename and link\n"
    "between directories of different quota roots fail with EXDEV, so mv copies. df on a\n"
    "directory inside a quota root shows the quota as size and what is left as free.\n"
    "Quota roots do not nest.\n"
    "\n"
    "While the volume is mounted, root can do the same on the mounted directory:\n"
    "  setfattr -n " META_QUOTA_XATTR " -v 10G /mnt/braidfs/db1      (BYTES[:INODES])\n"
    "  getfattr -n " META_QUOTA_XATTR " /mnt/braidfs/db1\n"
    "  setfattr -x " META_QUOTA_XATTR " /mnt/braidfs/db1\n"
    "The mount applies those at once; 'braidfs quota' on a mounted volume applies to files\n"
    "opened after it.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Examples:\n"
    "  braidfs quota set sqlite:///srv/meta.db /db1 10G\n"
    "  braidfs quota get sqlite:///srv/meta.db /db1/base\n"
    "\n"
    "Exit status: 0 done, 1 failed (no such directory, nested quota, no quota), 2 usage\n"
    "error.\n";

/* Walk PATH from the root. *ret = its inode. err: one line. */
static int resolve(struct meta *m, const char *path, struct meta_attr *ret, char *err,
		   size_t errlen)
{
	char buf[PATH_MAX];
	struct meta_attr a;
	int r = META_CALL(m, getattr, META_ROOT_INO, &a);
	if (r < 0) {
		snprintf(err, errlen, "cannot read the root directory: %s", strerror(-r));
		return r;
	}
	if (strlen(path) >= sizeof(buf)) {
		snprintf(err, errlen, "path too long");
		return -ENAMETOOLONG;
	}
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (!strcmp(c, "."))
			continue;
		if (!strcmp(c, "..")) {
			snprintf(err, errlen, "'..' is not supported in PATH '%s'", path);
			return -EINVAL;
		}
		uint64_t parent = a.ino;
		r = META_CALL(m, lookup, parent, c, &a);
		if (r < 0) {
			snprintf(err, errlen, "%s: '%s' %s", path, c,
				 r == -ENOENT	 ? "does not exist"
				 : r == -ENOTDIR ? "is below a non-directory"
						 : strerror(-r));
			return r;
		}
	}
	*ret = a;
	return 0;
}

static void print_quota(const char *path, const struct meta_quota *q)
{
	char b1[32], b2[32];
	printf("quota root inode %llu%s\n", (unsigned long long)q->ino,
	       path ? "" : " (PATH is below it)");
	if (q->bytes_limit)
		printf("  bytes   %s used of %s (%llu of %llu)\n", fmt_size(q->bytes_used, b1, 32),
		       fmt_size(q->bytes_limit, b2, 32), (unsigned long long)q->bytes_used,
		       (unsigned long long)q->bytes_limit);
	else
		printf("  bytes   %s used, no limit (%llu)\n", fmt_size(q->bytes_used, b1, 32),
		       (unsigned long long)q->bytes_used);
	if (q->inodes_limit)
		printf("  inodes  %llu used of %llu\n", (unsigned long long)q->inodes_used,
		       (unsigned long long)q->inodes_limit);
	else
		printf("  inodes  %llu used, no limit\n", (unsigned long long)q->inodes_used);
}

int cmd_quota(int argc, char **argv)
{
	static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {0}};
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(help, stdout);
			return 0;
		}
		return bad_option("quota", argv, c);
	}
	int n = argc - optind;
	const char *verb = n > 0 ? argv[optind] : "";
	bool set = !strcmp(verb, "set"), get = !strcmp(verb, "get"), clr = !strcmp(verb, "clear");
	if (!set && !get && !clr) {
		die_msg("quota",
			n ? "unknown action '%s': set, get or clear (try --help)"
			  : "needs an action: set, get or clear (try --help)%s",
			verb);
		return EXIT_USAGE;
	}
	if ((set && (n < 4 || n > 5)) || (!set && n != 3)) {
		die_msg("quota", "%s needs META_URL PATH%s (try --help)", verb,
			set ? " BYTES [INODES]" : "");
		return EXIT_USAGE;
	}
	const char *url = argv[optind + 1], *path = argv[optind + 2];
	uint64_t bytes = 0, inodes = 0;
	if (set && parse_size(argv[optind + 3], &bytes) < 0) {
		die_msg("quota", "BYTES must be a size such as 4096, 10M or 2G, not '%s'",
			argv[optind + 3]);
		return EXIT_USAGE;
	}
	if (set && n == 5) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(argv[optind + 4], &end, 10);
		if (errno || *end || end == argv[optind + 4] || argv[optind + 4][0] == '-') {
			die_msg("quota", "INODES must be a number, not '%s'", argv[optind + 4]);
			return EXIT_USAGE;
		}
		inodes = v;
	}

	char err[1024];
	struct vol v;
	int r = vol_open(&v, url, get ? META_O_RDONLY : 0, err, sizeof(err));
	if (r < 0) {
		die_msg("quota", "%s", err);
		vol_close(&v);
		return 1;
	}
	struct meta_attr a;
	struct meta_quota q;
	r = resolve(v.meta, path, &a, err, sizeof(err));
	if (r < 0) {
		die_msg("quota", "%s", err);
		goto out;
	}
	if (set) {
		r = META_CALL(v.meta, quota_set, a.ino, bytes, inodes);
		if (r == -EINVAL && META_CALL(v.meta, quota_get, a.ino, &q) == 0)
			die_msg("quota",
				"%s is inside the quota root inode %llu; quotas do not nest", path,
				(unsigned long long)q.ino);
		else if (r == -EINVAL)
			die_msg("quota", "%s holds a quota root below it; quotas do not nest",
				path);
		else if (r < 0)
			die_msg("quota", "%s: %s", path,
				r == -ENOTDIR ? "not a directory" : strerror(-r));
		if (r == 0 && (r = META_CALL(v.meta, quota_get, a.ino, &q)) == 0)
			print_quota(path, &q);
	} else if (get) {
		r = META_CALL(v.meta, quota_get, a.ino, &q);
		if (r == -ENODATA)
			die_msg("quota", "%s is not under a quota", path);
		else if (r < 0)
			die_msg("quota", "%s: %s", path, strerror(-r));
		else
			print_quota(q.ino == a.ino ? path : NULL, &q);
	} else {
		r = META_CALL(v.meta, quota_clear, a.ino);
		if (r == -ENODATA)
			die_msg("quota", "%s is not a quota root", path);
		else if (r < 0)
			die_msg("quota", "%s: %s", path, strerror(-r));
		else
			printf("braidfs: quota of %s removed\n", path);
	}
out:
	vol_close(&v);
	return r < 0 ? 1 : 0;
}
