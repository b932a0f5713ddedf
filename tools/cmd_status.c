/* braidfs status — the volume, its targets (health, usage), its chains, and who has it
 * mounted. Reads only; safe while the volume is mounted. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "storemgr/sm.h"
#include "tools/tools.h"

static const char help[] =
    "Usage: braidfs status META_URL\n"
    "\n"
    "Show the volume whose metadata is at META_URL: its settings, whether and where it\n"
    "is mounted (every mount, with its node, of a postgres:// volume), its files, every target "
    "with its state (up, offline, unreachable),\n"
    "space and chunk count, and every chain (the ordered list of targets that hold a\n"
    "share of the chunks; the first is the primary) with its epoch.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 every target up and reachable, 1 some target is not (or the volume\n"
    "cannot be read), 2 usage error.\n";

int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {0}};
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(help, stdout);
			return 0;
		}
		return bad_option("status", argv, c);
	}
	if (argc - optind != 1) {
		die_msg("status", "needs META_URL (try --help)");
		return EXIT_USAGE;
	}
	const char *url = argv[optind];
	char err[1024];
	struct vol v;
	if (vol_open(&v, url, META_O_RDONLY, err, sizeof(err)) < 0) {
		die_msg("status", "%s", err);
		vol_close(&v);
		return 1;
	}
	char b1[32], b2[32], b3[32];
	time_t created = (time_t)(v.info.created_ns / 1000000000);
	char when[64];
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime(&created));
	printf("volume    %s (uuid %s)\n", v.info.name, v.info.uuid);
	printf("          %u replica(s), %s consistency, chunk size %s, format version %u\n",
	       v.info.replicas, consistency_name(v.info.consistency),
	       fmt_size(v.info.chunk_size, b1, sizeof(b1)), v.info.format_version);
	printf("          created %s\n", when);
	struct vol_holder *h = calloc(VOL_HOLDERS_MAX, sizeof(*h));
	int nh = h ? vol_holders(&v, h, VOL_HOLDERS_MAX) : -ENOMEM;
	if (nh < 0)
		printf("mounted   ? (%s)\n", strerror(-nh));
	else if (nh == 0)
		printf("mounted   no\n");
	for (int i = 0; i < nh && i < VOL_HOLDERS_MAX; i++) {
		const char *what = i ? "         " : "mounted  ";
		char hp[128];
		if (h[i].exclusive)
			printf("%s checked by braidfs fsck%s%s%s\n", what,
			       h[i].host[0] ? " on " : "", h[i].host,
			       vol_holder_pid(&h[i], hp, sizeof(hp)));
		else
			printf("%s at %s%s%s%s\n", what, h[i].host, h[i].host[0] ? ":" : "",
			       h[i].mnt[0] ? h[i].mnt : "?", vol_holder_pid(&h[i], hp, sizeof(hp)));
	}
	free(h);
	struct meta_statfs ms = {0};
	if (META_CALL(v.meta, statfs, &ms) == 0)
		printf("files     %llu inode(s), %s in files\n", (unsigned long long)ms.inodes,
		       fmt_size(ms.bytes, b1, sizeof(b1)));

	int rc = 0;
	printf("\ntargets\n  %-3s %-12s %-10s %-10s %-10s %-8s %s\n", "ID", "STATE", "USED", "FREE",
	       "SIZE", "CHUNKS", "URL");
	for (unsigned i = 0; i < v.ntargets; i++) {
		const struct meta_target *t = &v.targets[i];
		struct sm_identity expect = {.target_id = t->id};
		snprintf(expect.volume_uuid, sizeof(expect.volume_uuid), "%s", v.info.uuid);
		struct sm_target *st = NULL;
		struct sm_statfs sf = {0};
		char terr[1024] = "";
		int r = sm_open(t->url, &expect, &st, terr, sizeof(terr));
		if (r == 0)
			r = st->ops->statfs(st, &sf);
		sm_close(st);
		const char *state = t->state == META_TARGET_UP ? "up" : "offline";
		if (r < 0)
			state = "unreachable";
		if (r < 0 || t->state != META_TARGET_UP)
			rc = 1;
		if (r == 0)
			printf("  %-3u %-12s %-10s %-10s %-10s %-8llu %s\n", t->id, state,
			       fmt_size(sf.used_bytes, b1, sizeof(b1)),
			       fmt_size(sf.free_bytes, b2, sizeof(b2)),
			       fmt_size(sf.total_bytes, b3, sizeof(b3)),
			       (unsigned long long)sf.chunks, t->url);
		else
			printf("  %-3u %-12s %-10s %-10s %-10s %-8s %s\n      %s\n", t->id, state,
			       "-", "-", "-", "-", t->url, terr[0] ? terr : strerror(-r));
	}
	printf("\nchains\n  %-3s %-6s %s\n", "ID", "EPOCH", "MEMBERS (primary first)");
	for (unsigned i = 0; i < v.nchains; i++) {
		const struct meta_chain *ch = &v.chains[i];
		printf("  %-3u %-6llu", ch->id, (unsigned long long)ch->epoch);
		for (unsigned k = 0; k < ch->nmembers; k++)
			printf("%s%u", k ? ", " : " ", ch->members[k]);
		if (ch->nmembers < v.info.replicas)
			printf("   (degraded: %u of %u replicas)", ch->nmembers, v.info.replicas);
		printf("\n");
	}
	vol_close(&v);
	return rc;
}
