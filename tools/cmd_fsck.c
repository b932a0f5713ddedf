/* braidfs fsck — do the metadata and every replica agree? Runs on an unmounted volume
 * (it takes the mount lock for its whole run, so nothing can mount meanwhile). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/util.h"
#include "fs/fs.h"
#include "tools/tools.h"

static const char help[] =
    "Usage: braidfs fsck [--repair] META_URL\n"
    "\n"
    "Check the unmounted volume whose metadata is at META_URL:\n"
    "  - the namespace: link counts, entries that name missing inodes, inodes no\n"
    "    entry names, the database's own integrity;\n"
    "  - work an unclean stop left: deleted files still holding chunks, data beyond a\n"
    "    file's size;\n"
    "  - the replicas: every chunk is read from every target of its chain and compared\n"
    "    byte for byte; chunks of deleted files, chunks beyond a file's end and chunks\n"
    "    on a target outside their chain are reported.\n"
    "\n"
    "Options:\n"
    "  -r, --repair   fix what is found: namespace counts, leftovers of an unclean\n"
    "                 stop, and replicas that differ from the chain's primary (which\n"
    "                 is copied over them); stray chunks are deleted\n"
    "  -q, --quiet    print only the summary\n"
    "  -h, --help     show this help\n"
    "\n"
    "Exit status: 0 no problem (left), 1 problems remain, 2 usage error or the\n"
    "volume cannot be checked (e.g. it is mounted).\n";

struct fsck_ctx {
	struct meta *meta;
	bool quiet;
	uint64_t problems;
};

static void meta_report(void *ctx, const char *what, uint64_t ino, bool repaired)
{
	struct fsck_ctx *c = ctx;
	if (!c->quiet)
		printf("  inode %llu: %s%s\n", (unsigned long long)ino, what,
		       repaired ? " (repaired)" : "");
}

static bool keep(void *ctx, uint64_t ino, uint64_t *ret_size)
{
	struct fsck_ctx *c = ctx;
	struct meta_attr a;
	if (META_CALL(c->meta, getattr, ino, &a) < 0 || !S_ISREG(a.mode) || a.nlink == 0)
		return false;
	*ret_size = a.size;
	return true;
}

static void ds_report(void *ctx, const char *what, uint64_t ino, uint32_t idx, uint32_t target,
		      bool repaired)
{
	struct fsck_ctx *c = ctx;
	if (!c->quiet)
		printf("  inode %llu chunk %u on target %u: %s%s\n", (unsigned long long)ino, idx,
		       target, what, repaired ? " (repaired)" : "");
}

static int count_orphan(void *ctx, const struct meta_attr *a)
{
	struct fsck_ctx *c = ctx;
	c->problems++;
	if (!c->quiet)
		printf("  inode %llu: %s\n", (unsigned long long)a->ino,
		       a->nlink == 0 ? "deleted but its chunks and row are still there"
				     : "may hold data beyond its size (a write was cut short)");
	return 0;
}

int cmd_fsck(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"repair", no_argument, NULL, 'r'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	bool repair = false;
	struct fsck_ctx cx = {0};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "rqh", opts, NULL)) != -1) {
		switch (c) {
		case 'r':
			repair = true;
			break;
		case 'q':
			cx.quiet = true;
			break;
		case 'h':
			fputs(help, stdout);
			return 0;
		default:
			fprintf(stderr, "Try 'braidfs fsck --help'.\n");
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		die_msg("fsck", "needs META_URL (try --help)");
		return EXIT_USAGE;
	}
	const char *url = argv[optind];
	log_init("braidfs fsck", LOG_WARNING, LOG_SINK_STDERR, NULL);
	char err[1024];
	struct vol v;
	int rc = EXIT_USAGE;
	if (vol_open(&v, url, 0, err, sizeof(err)) < 0) {
		die_msg("fsck", "%s", err);
		goto out;
	}
	pid_t hp = 0;
	char hm[PATH_MAX] = "";
	int r = vol_lock(&v, &hp, hm, sizeof(hm));
	if (r == -EBUSY) {
		die_msg("fsck", "volume '%s' is mounted%s%s (pid %d); unmount it first",
			v.info.name, hm[0] ? " at " : "", hm, (int)hp);
		goto out;
	}
	if (r < 0) {
		die_msg("fsck", "cannot lock volume '%s': %s", v.info.name, strerror(-r));
		goto out;
	}
	if (vol_open_data(&v, err, sizeof(err)) < 0) {
		die_msg("fsck", "%s", err);
		goto out;
	}
	cx.meta = v.meta;
	printf("braidfs fsck: volume '%s'%s\n", v.info.name, repair ? " (repairing)" : "");

	printf("namespace\n");
	int mp = META_CALL(v.meta, check, repair, meta_report, &cx);
	if (mp < 0) {
		die_msg("fsck", "namespace check failed: %s", strerror(-mp));
		goto out;
	}
	cx.problems += (uint64_t)mp;

	printf("unfinished work\n");
	if (repair) {
		struct fs *fs = NULL;
		struct fs_options fo = {0};
		r = fs_new(v.meta, v.ds, &fo, &fs);
		if (r == 0)
			r = fs_recover(fs);
		if (fs) {
			fs_itab_fini(fs);
			free(fs);
		}
		if (r < 0) {
			die_msg("fsck", "finishing an unclean stop's work failed: %s",
				strerror(-r));
			goto out;
		}
		if (r > 0)
			printf("  %d inode(s) finished (repaired)\n", r);
	} else {
		r = META_CALL(v.meta, orphans, count_orphan, &cx);
		if (r < 0) {
			die_msg("fsck", "cannot list orphans: %s", strerror(-r));
			goto out;
		}
	}

	printf("replicas\n");
	struct ds_check_result res = {0};
	r = ds_check(v.ds, repair, keep, ds_report, &cx, &res);
	if (r < 0) {
		die_msg("fsck", "replica check failed: %s", strerror(-r));
		goto out;
	}
	char b[32];
	printf("  %llu chunk(s), %s compared; %llu differing, %llu missing, %llu stray, "
	       "%llu beyond end of file%s\n",
	       (unsigned long long)res.chunks, fmt_size(res.bytes_compared, b, sizeof(b)),
	       (unsigned long long)res.mismatches, (unsigned long long)res.missing,
	       (unsigned long long)res.strays, (unsigned long long)res.beyond_eof,
	       repair ? "" : "");
	if (repair && res.repaired)
		printf("  %llu replica problem(s) repaired\n", (unsigned long long)res.repaired);
	cx.problems += (uint64_t)r;
	if (repair) {
		META_CALL(v.meta, sync);
		ds_sync_all(v.ds);
	}
	if (cx.problems == 0) {
		printf("clean: metadata and every replica agree\n");
		rc = 0;
	} else {
		printf("%llu problem(s) %s\n", (unsigned long long)cx.problems,
		       repair ? "could not be repaired" : "found (run with --repair to fix)");
		rc = 1;
	}
out:
	vol_close(&v);
	return rc;
}
