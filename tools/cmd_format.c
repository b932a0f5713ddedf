/* braidfs format — create a volume: the metadata database, the targets' identities, the
 * chain table. Refuses to touch an existing volume or a target that holds anything (SM-6). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"
#include "storemgr/sm.h"
#include "tools/tools.h"

static const char help[] =
    "Usage: braidfs format [OPTIONS] META_URL NAME TARGET...\n"
    "\n"
    "Create a braidfs volume called NAME: its metadata database at META_URL and one\n"
    "target per TARGET argument. Every chunk of every file is kept on REPLICAS\n"
    "different targets.\n"
    "\n"
    "Arguments:\n"
    "  META_URL   where the metadata lives: sqlite:///ABSOLUTE/PATH.db (created; its\n"
    "             directory must exist), or postgres://USER@HOST:PORT/DBNAME, an\n"
    "             existing PostgreSQL database whose schema is empty (libpq parameters\n"
    "             such as ?sslmode=require go after it; the tables go into the first\n"
    "             schema of the search_path)\n"
    "  NAME       the volume's name: 1-63 characters of [A-Za-z0-9._-]\n"
    "  TARGET     where chunks live: dir:/ABSOLUTE/PATH, an existing empty directory\n"
    "             (a local disk or a NAS mount); faulty:/PATH is a test target that\n"
    "             fails on command (see docs/cli.md)\n"
    "\n"
    "Options:\n"
    "  -r, --replicas N        copies of every chunk, 1..8, at most the number of\n"
    "                          targets (default: 2, or 1 with a single target)\n"
    "  -c, --chunk-size SIZE   chunk size, a power of two from 64K to 64M\n"
    "                          (default 4M; suffixes K, M, G)\n"
    "  -C, --consistency MODE  strong (default): a write and an fsync return only when\n"
    "                          every replica has them; weak: when the first replica\n"
    "                          has them, the others follow in the background\n"
    "  -f, --force             use target directories that are not empty (their files\n"
    "                          are kept; an old braidfs identity is replaced)\n"
    "  -h, --help              show this help\n"
    "\n"
    "Format never overwrites an existing volume: to start over, unmount it, delete\n"
    "the database file (or drop the PostgreSQL schema's tables) and use --force on the\n"
    "targets.\n"
    "\n"
    "Examples:\n"
    "  braidfs format --replicas 2 sqlite:///var/lib/braidfs/meta.db vol1 \\\n"
    "          dir:/var/lib/braidfs/t1 dir:/var/lib/braidfs/t2\n"
    "  braidfs format postgres://braidfs@db1:5432/braidfs vol1 \\\n"
    "          dir:/srv/nas/t1 dir:/srv/nas/t2\n"
    "\n"
    "Exit status: 0 formatted, 1 failed (nothing was overwritten), 2 usage error.\n";

static int valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63)
		return 0;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return 0;
	return 1;
}

int cmd_format(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"replicas", required_argument, NULL, 'r'},
	    {"chunk-size", required_argument, NULL, 'c'},
	    {"consistency", required_argument, NULL, 'C'},
	    {"force", no_argument, NULL, 'f'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	long replicas = -1;
	uint64_t chunk = 4u << 20;
	enum meta_consistency cons = META_STRONG;
	bool force = false;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":r:c:C:fh", opts, NULL)) != -1) {
		switch (c) {
		case 'r': {
			char *end;
			replicas = strtol(optarg, &end, 10);
			if (*end || replicas < 1 || replicas > META_MAX_REPLICAS) {
				die_msg("format",
					"--replicas must be a number from 1 to %d, not '%s'",
					META_MAX_REPLICAS, optarg);
				return EXIT_USAGE;
			}
			break;
		}
		case 'c':
			if (parse_size(optarg, &chunk) < 0 || chunk < (64u << 10) ||
			    chunk > (64u << 20) || (chunk & (chunk - 1))) {
				die_msg(
				    "format",
				    "--chunk-size must be a power of two from 64K to 64M, not '%s'",
				    optarg);
				return EXIT_USAGE;
			}
			break;
		case 'C':
			if (!strcmp(optarg, "strong"))
				cons = META_STRONG;
			else if (!strcmp(optarg, "weak"))
				cons = META_WEAK;
			else {
				die_msg("format", "--consistency must be strong or weak, not '%s'",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case 'f':
			force = true;
			break;
		case 'h':
			fputs(help, stdout);
			return 0;
		default:
			return bad_option("format", argv, c);
		}
	}
	if (argc - optind < 3) {
		die_msg("format", "needs META_URL, NAME and at least one TARGET (try --help)");
		return EXIT_USAGE;
	}
	const char *meta_url = argv[optind], *name = argv[optind + 1];
	char **targets = argv + optind + 2;
	unsigned ntargets = (unsigned)(argc - optind - 2);
	if (!valid_name(name)) {
		die_msg("format", "invalid volume name '%s' (1-63 characters of A-Z a-z 0-9 . _ -)",
			name);
		return EXIT_USAGE;
	}
	if (ntargets > META_MAX_TARGETS) {
		die_msg("format", "at most %d targets", META_MAX_TARGETS);
		return EXIT_USAGE;
	}
	if (replicas < 0)
		replicas = ntargets >= 2 ? 2 : 1;
	if ((unsigned)replicas > ntargets) {
		die_msg("format", "%ld replicas need at least %ld targets; %u given", replicas,
			replicas, ntargets);
		return EXIT_USAGE;
	}
	char err[1024] = "";
	for (unsigned i = 0; i < ntargets; i++) {
		if (!sm_ops_for(targets[i])) {
			struct url u;
			if (url_parse(targets[i], &u, err, sizeof(err)) < 0)
				die_msg("format", "bad target %s", err);
			else
				die_msg("format",
					"unknown target kind '%s:' in %s (expected dir:/PATH)",
					u.scheme, targets[i]);
			return EXIT_USAGE;
		}
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(targets[i], targets[j])) {
				die_msg("format", "target %s is given twice", targets[i]);
				return EXIT_USAGE;
			}
	}

	/* Every target must be formattable before any is touched (SM-6). */
	for (unsigned i = 0; i < ntargets; i++) {
		if (sm_format_check(targets[i], force, err, sizeof(err)) < 0) {
			die_msg("format", "%s", err);
			return 1;
		}
	}

	/* Metadata first: it refuses an existing volume before any target is touched. */
	struct url mu;
	if (url_parse(meta_url, &mu, err, sizeof(err)) < 0) {
		die_msg("format", "bad META_URL %s", err);
		return EXIT_USAGE;
	}
	bool existed = !strcmp(mu.scheme, "sqlite") && access(mu.path, F_OK) == 0;
	struct meta *m = NULL;
	int r = meta_open(meta_url, META_O_CREATE, &m, err, sizeof(err));
	if (r < 0) {
		die_msg("format", "%s", err);
		return 1;
	}
	struct meta_volume vol = {0};
	if (META_CALL(m, volume_get, &vol) == 0) {
		die_msg("format",
			"%s already holds volume '%s' (uuid %s); refusing to format over it",
			meta_url, vol.name, vol.uuid);
		meta_close(m);
		return 1;
	}
	memset(&vol, 0, sizeof(vol));
	snprintf(vol.name, sizeof(vol.name), "%s", name);
	uuid_generate_str(vol.uuid);
	vol.format_version = SM_FORMAT_VERSION;
	vol.chunk_size = (uint32_t)chunk;
	vol.replicas = (uint32_t)replicas;
	vol.consistency = cons;
	vol.created_ns = now_realtime_ns();

	struct meta_target *mt = calloc(ntargets, sizeof(*mt));
	struct meta_chain *ch = calloc(ntargets, sizeof(*ch));
	if (!mt || !ch) {
		r = -ENOMEM;
		die_msg("format", "out of memory");
		goto fail;
	}
	unsigned done = 0;
	for (unsigned i = 0; i < ntargets; i++) {
		mt[i].id = i + 1;
		snprintf(mt[i].url, sizeof(mt[i].url), "%s", targets[i]);
		uuid_generate_str(mt[i].uuid);
		mt[i].state = META_TARGET_UP;
		struct sm_identity id = {.format_version = SM_FORMAT_VERSION,
					 .target_id = mt[i].id,
					 .chunk_size = vol.chunk_size};
		snprintf(id.volume_uuid, sizeof(id.volume_uuid), "%s", vol.uuid);
		snprintf(id.target_uuid, sizeof(id.target_uuid), "%s", mt[i].uuid);
		r = sm_format(targets[i], &id, force, err, sizeof(err));
		if (r < 0) {
			die_msg("format", "%s", err);
			if (done)
				fprintf(
				    stderr,
				    "braidfs format: %u target(s) before it were prepared; run the "
				    "same command with --force once the problem is fixed\n",
				    done);
			goto fail;
		}
		done++;
	}
	/* Chain i starts at target i: primaries spread evenly over the targets. */
	for (unsigned i = 0; i < ntargets; i++) {
		ch[i].id = i;
		ch[i].epoch = 1;
		ch[i].nmembers = (uint32_t)replicas;
		for (unsigned k = 0; k < (unsigned)replicas; k++)
			ch[i].members[k] = mt[(i + k) % ntargets].id;
	}
	r = META_CALL(m, format, &vol, mt, ntargets, ch, ntargets, getuid(), getgid());
	if (r == 0)
		r = META_CALL(m, sync);
	if (r < 0) {
		die_msg("format", "cannot write the volume to %s: %s", meta_url, strerror(-r));
		goto fail;
	}
	char cs[32];
	printf("braidfs: formatted volume '%s' (uuid %s)\n"
	       "  %u target(s), %ld replica(s) of every chunk, chunk size %s, %s consistency\n"
	       "  mount it with: braidfs mount %s MOUNTPOINT\n",
	       vol.name, vol.uuid, ntargets, replicas, fmt_size(chunk, cs, sizeof(cs)),
	       consistency_name(cons), meta_url);
	free(mt);
	free(ch);
	meta_close(m);
	return 0;
fail:
	free(mt);
	free(ch);
	meta_close(m);
	/* A database this command created and could not finish holds nothing: remove it. */
	if (!existed && !strcmp(mu.scheme, "sqlite")) {
		char p[URL_MAX + 8];
		unlink(mu.path);
		snprintf(p, sizeof(p), "%s-wal", mu.path);
		unlink(p);
		snprintf(p, sizeof(p), "%s-shm", mu.path);
		unlink(p);
	}
	return 1;
}
