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
#include "dataservice/placement.h"
#include "storemgr/sm.h"
#include "storemgr/sm_devices.h"
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
    "  TARGET     where chunks live:\n"
    "               dir:/ABSOLUTE/PATH     an existing empty directory (a local disk\n"
    "                                      or a NAS mount), one file per chunk\n"
    "               file:/dev/NAME         a whole block device, in braidfs' own\n"
    "                                      on-device format (docs/format.md)\n"
    "               file:/ABSOLUTE/PATH    an image file in that format, at least\n"
    "                                      64 MiB, on a file system with O_DIRECT\n"
    "                                      (create it: truncate -s 10G PATH)\n"
    "             faulty:/PATH is a dir: target that fails on command (docs/cli.md)\n"
    "             NODE@URL: a target served by the node called NODE (its `braidfs\n"
    "             serve` daemon, docs/distributed.md); clients reach it through that\n"
    "             node's address. Either every target names its node or none does.\n"
    "             Format opens URL from the host it runs on\n"
    "\n"
    "Every target joins a pool, and a chain (the targets that hold one share of the\n"
    "chunks) takes its members from one pool, on different nodes where the pool spans\n"
    "enough of them. A target's pool is its media class unless --pool says otherwise:\n"
    "nvme, ssd or hdd for a local block device, virtual for a loop device, remote for\n"
    "iSCSI and NBD, file for an image file, dir for a directory.\n"
    "\n"
    "Options:\n"
    "  -r, --replicas N        copies of every chunk, 1..8, at most the number of\n"
    "                          targets in each pool (default: 2, or 1 with a single\n"
    "                          target)\n"
    "  -n, --chains N          number of chains, fixed for the life of the volume:\n"
    "                          every chunk is found by (inode seed + index) mod N, so\n"
    "                          it can never change. At least the number of targets,\n"
    "                          at most 4096 (default: 64, or the number of targets if\n"
    "                          that is larger). More chains spread load and rebuilds\n"
    "                          more evenly when targets are added later\n"
    "  -p, --pool NAME         put every target into pool NAME (1-31 of a-z 0-9 . _ -)\n"
    "  -a, --async NODE@URL    one more target, kept as an async copy in every chain\n"
    "                          (a backup on external storage): the chain's primary\n"
    "                          forwards every write to it without waiting, it serves\n"
    "                          no reads, is never a chain's primary, and the chunks\n"
    "                          it missed while slow or down are copied to it later.\n"
    "                          Repeatable (up to 8); volumes of serve nodes only\n"
    "  -c, --chunk-size SIZE   chunk size, a power of two from 64K to 64M\n"
    "                          (default 4M; suffixes K, M, G)\n"
    "  -C, --consistency MODE  strong (default): a write and an fsync return only when\n"
    "                          every replica has them; weak: when the first replica\n"
    "                          has them, the others follow in the background\n"
    "  -f, --force             use targets that are not empty: a directory's files\n"
    "                          are kept and an old braidfs identity is replaced; a\n"
    "                          device or image that holds data or another braidfs\n"
    "                          target is overwritten\n"
    "  -h, --help              show this help\n"
    "\n"
    "Format never overwrites an existing volume: to start over, unmount it, delete\n"
    "the database file (or drop the PostgreSQL schema's tables) and use --force on the\n"
    "targets.\n"
    "\n"
    "Examples:\n"
    "  braidfs format --replicas 2 sqlite:///var/lib/braidfs/meta.db vol1 \\\n"
    "          dir:/var/lib/braidfs/t1 dir:/var/lib/braidfs/t2\n"
    "  braidfs format sqlite:///var/lib/braidfs/meta.db vol2 file:/dev/nvme1n1 \\\n"
    "          file:/srv/images/t2.img\n"
    "  braidfs format postgres://braidfs@db1:5432/braidfs vol1 \\\n"
    "          dir:/srv/nas/t1 dir:/srv/nas/t2\n"
    "  braidfs format --replicas 3 postgres://braidfs@db1/braidfs vol3 \\\n"
    "          n1@file:/srv/n1.img n2@file:/srv/n2.img n3@file:/srv/n3.img\n"
    "  braidfs format --replicas 2 --async n3@iscsi://san1/iqn.2024-01.san:lun/0 \\\n"
    "          postgres://braidfs@db1/braidfs vol4 n1@file:/srv/n1.img n2@file:/srv/n2.img\n"
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

/* Build the chain table (placement.h): chains split over the pools in proportion to their
 * targets (pl_split), each pool's chains built by pl_build over its targets, weighted by the
 * size statfs reports for each (the targets are formatted by now). Chain ids 0..nc-1, epoch 1. */
static int format_chains(const struct meta_target *mt, unsigned nt, unsigned replicas,
			 struct meta_chain *ch, unsigned nc, char *err, size_t errlen)
{
	unsigned npools = 0, first[META_MAX_TARGETS], weight[META_MAX_TARGETS],
		 share[META_MAX_TARGETS];
	for (unsigned i = 0; i < nt; i++) {
		unsigned p = 0;
		while (p < npools && strcmp(mt[first[p]].pool, mt[i].pool))
			p++;
		if (p == npools) {
			first[npools] = i;
			weight[npools++] = 0;
		}
		weight[p]++;
	}
	if (pl_split(weight, npools, nc, share) < 0) {
		snprintf(err, errlen, "%u chains cannot be split over %u pools", nc, npools);
		return -EINVAL;
	}
	struct pl_target *t = calloc(nt, sizeof(*t));
	struct pl_chain *c = calloc(nc, sizeof(*c));
	int r = -ENOMEM;
	snprintf(err, errlen, "out of memory");
	if (!t || !c)
		goto out;
	unsigned base = 0;
	for (unsigned p = 0; p < npools; p++) {
		unsigned n = 0;
		for (unsigned i = 0; i < nt; i++) {
			if (strcmp(mt[i].pool, mt[first[p]].pool))
				continue;
			struct sm_identity expect = {.target_id = mt[i].id};
			struct sm_target *st = NULL;
			struct sm_statfs sf = {0};
			char serr[256];
			if (sm_open(mt[i].url, &expect, &st, serr, sizeof(serr)) == 0)
				st->ops->statfs(st, &sf);
			sm_close(st);
			t[n++] = (struct pl_target){.id = mt[i].id,
						    .node = vol_node_number(mt, nt, mt[i].node),
						    .size = sf.total_bytes,
						    .role = PL_ACTIVE};
		}
		for (unsigned k = 0; k < share[p]; k++)
			c[k].id = base + k;
		r = pl_build(t, n, replicas, c, share[p]);
		if (r < 0) {
			snprintf(err, errlen,
				 "cannot place %u chains of %u replicas on pool '%s': %s", share[p],
				 replicas, mt[first[p]].pool, strerror(-r));
			goto out;
		}
		for (unsigned k = 0; k < share[p]; k++) {
			struct meta_chain *m = &ch[base + k];
			m->id = c[k].id;
			m->epoch = 1;
			m->nmembers = c[k].n;
			memcpy(m->members, c[k].m, sizeof(m->members));
		}
		base += share[p];
	}
	r = 0;
	err[0] = '\0';
out:
	free(t);
	free(c);
	return r;
}

int cmd_format(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"replicas", required_argument, NULL, 'r'},
	    {"chunk-size", required_argument, NULL, 'c'},
	    {"consistency", required_argument, NULL, 'C'},
	    {"force", no_argument, NULL, 'f'},
	    {"chains", required_argument, NULL, 'n'},
	    {"pool", required_argument, NULL, 'p'},
	    {"async", required_argument, NULL, 'a'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	long replicas = -1, nchains = -1;
	const char *pool = NULL;
	uint64_t chunk = 4u << 20;
	enum meta_consistency cons = META_STRONG;
	bool force = false;
	char *asyncs[META_MAX_REPLICAS];
	unsigned nasync = 0;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":r:c:C:fn:p:a:h", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			if (nasync == META_MAX_REPLICAS) {
				die_msg("format", "at most %d --async targets", META_MAX_REPLICAS);
				return EXIT_USAGE;
			}
			asyncs[nasync++] = optarg;
			break;
		case 'n': {
			char *end;
			nchains = strtol(optarg, &end, 10);
			if (*end || nchains < 1 || nchains > META_MAX_CHAINS) {
				die_msg("format",
					"--chains must be a number from 1 to %d, not '%s'",
					META_MAX_CHAINS, optarg);
				return EXIT_USAGE;
			}
			break;
		}
		case 'p':
			if (!pool_arg_ok("format", optarg))
				return EXIT_USAGE;
			pool = optarg;
			break;
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
	/* the chains' members are placed over the first nplace targets; the --async ones follow
	 * and join every chain as async (META-19) */
	unsigned nplace = (unsigned)(argc - optind - 2);
	unsigned ntargets = nplace + nasync;
	char *targets[META_MAX_TARGETS + META_MAX_REPLICAS];
	if (!valid_name(name)) {
		die_msg("format", "invalid volume name '%s' (1-63 characters of A-Z a-z 0-9 . _ -)",
			name);
		return EXIT_USAGE;
	}
	if (ntargets > META_MAX_TARGETS) {
		die_msg("format", "at most %d targets", META_MAX_TARGETS);
		return EXIT_USAGE;
	}
	for (unsigned i = 0; i < ntargets; i++)
		targets[i] = i < nplace ? argv[optind + 2 + i] : asyncs[i - nplace];
	if (replicas < 0)
		replicas = nplace >= 2 ? 2 : 1;
	if ((unsigned)replicas > nplace) {
		die_msg("format", "%ld replicas need at least %ld targets; %u given", replicas,
			replicas, nplace);
		return EXIT_USAGE;
	}
	if (nchains < 0)
		nchains = nplace > 64 ? nplace : 64;
	if ((unsigned long)nchains < nplace) {
		die_msg("format",
			"--chains %ld is fewer than the %u targets (every target needs a chain)",
			nchains, nplace);
		return EXIT_USAGE;
	}
	char err[1024] = "";
	/* NODE@URL: a target of a distributed volume, served by node NODE (docs/distributed.md) */
	char(*tnode)[META_NODE_MAX] = calloc(ntargets, sizeof(*tnode));
	if (!tnode) {
		die_msg("format", "out of memory");
		return 1;
	}
	for (unsigned i = 0; i < ntargets; i++) {
		const char *url = vol_target_node(targets[i], tnode[i], sizeof(tnode[i]));
		int nlen = (int)(url - targets[i]) - 1; /* tnode[i] may hold it cut short */
		if (url == targets[i])
			continue;
		if (nlen >= META_NODE_MAX || !valid_name(tnode[i])) {
			die_msg("format",
				"invalid node name '%.*s' in target %s (1-63 characters of A-Z a-z "
				"0-9 . _ -)",
				nlen, targets[i], targets[i]);
			free(tnode);
			return EXIT_USAGE;
		}
		targets[i] = (char *)url;
	}
	for (unsigned i = 0; i < ntargets; i++) {
		if (!sm_ops_for(targets[i])) {
			struct url u;
			if (url_parse(targets[i], &u, err, sizeof(err)) < 0)
				die_msg("format", "bad target %s", err);
			else
				die_msg("format",
					"unknown target kind '%s:' in %s (expected dir:/PATH, "
					"file:/dev/NAME or file:/PATH/IMAGE)",
					u.scheme, targets[i]);
			free(tnode);
			return EXIT_USAGE;
		}
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(targets[i], targets[j])) {
				die_msg("format", "target %s is given twice", targets[i]);
				free(tnode);
				return EXIT_USAGE;
			}
	}

	/* Pools (PL): every target's pool, and in every pool room for the replicas. */
	struct meta_target *mt = calloc(ntargets, sizeof(*mt));
	struct meta_chain *ch = calloc((size_t)nchains, sizeof(*ch));
	bool distributed = false;
	for (unsigned i = 0; i < ntargets; i++)
		distributed |= tnode[i][0] != '\0';
	if (nasync && !distributed) {
		die_msg("format",
			"--async needs a volume of serve nodes (NODE@URL targets): the primary's "
			"node forwards writes to an async target and catches it up");
		free(tnode);
		free(mt);
		free(ch);
		return EXIT_USAGE;
	}
	for (unsigned i = 0; i < ntargets && distributed; i++)
		if (!tnode[i][0]) {
			die_msg(
			    "format",
			    "target %s names no node: in a volume of serve nodes every target is "
			    "NODE@URL",
			    targets[i]);
			free(tnode);
			free(mt);
			free(ch);
			return EXIT_USAGE;
		}
	if (!mt || !ch) {
		free(tnode);
		free(mt);
		free(ch);
		die_msg("format", "out of memory");
		return 1;
	}
	struct sm_devenv env = sm_devenv_system();
	char host[META_NODE_MAX] = "";
	if (gethostname(host, sizeof(host) - 1) < 0)
		snprintf(host, sizeof(host), "localhost");
	for (unsigned i = 0; i < ntargets; i++) {
		enum sm_media media = sm_media_for_url(&env, targets[i]);
		snprintf(mt[i].media, sizeof(mt[i].media), "%s", sm_media_name(media));
		snprintf(mt[i].pool, sizeof(mt[i].pool), "%s", pool ? pool : mt[i].media);
		snprintf(mt[i].node, sizeof(mt[i].node), "%s", tnode[i][0] ? tnode[i] : host);
	}
	free(tnode);
	for (unsigned i = 0; i < nplace; i++) {
		unsigned n = 0;
		for (unsigned j = 0; j < nplace; j++)
			n += !strcmp(mt[j].pool, mt[i].pool);
		if (n < (unsigned)replicas) {
			die_msg("format",
				"pool '%s' has %u target(s), fewer than the %ld replicas every "
				"chain of "
				"it needs (put the targets into one pool with --pool NAME)",
				mt[i].pool, n, replicas);
			free(mt);
			free(ch);
			return EXIT_USAGE;
		}
	}

	/* Every target must be formattable before any is touched (SM-6). */
	for (unsigned i = 0; i < ntargets; i++) {
		if (sm_format_check(targets[i], force, err, sizeof(err)) < 0) {
			die_msg("format", "%s", err);
			free(mt);
			free(ch);
			return 1;
		}
	}

	/* Metadata first: it refuses an existing volume before any target is touched. */
	struct url mu;
	if (url_parse(meta_url, &mu, err, sizeof(err)) < 0) {
		die_msg("format", "bad META_URL %s", err);
		free(mt);
		free(ch);
		return EXIT_USAGE;
	}
	bool existed = !strcmp(mu.scheme, "sqlite") && access(mu.path, F_OK) == 0;
	struct meta *m = NULL;
	int r = meta_open(meta_url, META_O_CREATE, &m, err, sizeof(err));
	if (r < 0) {
		die_msg("format", "%s", err);
		free(mt);
		free(ch);
		return 1;
	}
	struct meta_volume vol = {0};
	if (META_CALL(m, volume_get, &vol) == 0) {
		die_msg("format",
			"%s already holds volume '%s' (uuid %s); refusing to format over it",
			meta_url, vol.name, vol.uuid);
		meta_close(m);
		free(mt);
		free(ch);
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

	unsigned done = 0;
	for (unsigned i = 0; i < ntargets; i++) {
		mt[i].id = i + 1;
		/* a served target keeps its NODE@ prefix in its row: clients reach it through that
		 * node (docs/distributed.md) */
		if (distributed)
			snprintf(mt[i].url, sizeof(mt[i].url), "%s@%s", mt[i].node, targets[i]);
		else
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
	r = format_chains(mt, nplace, (unsigned)replicas, ch, (unsigned)nchains, err, sizeof(err));
	if (r < 0) {
		die_msg("format", "%s", err);
		goto fail;
	}
	for (unsigned k = 0; k < (unsigned)nchains; k++)
		for (unsigned i = nplace; i < ntargets; i++)
			ch[k].async[ch[k].nasync++] = mt[i].id;
	r = META_CALL(m, format, &vol, mt, ntargets, ch, (unsigned)nchains, getuid(), getgid());
	if (r == 0)
		r = META_CALL(m, sync);
	if (r < 0) {
		die_msg("format", "cannot write the volume to %s: %s", meta_url, strerror(-r));
		goto fail;
	}
	char cs[32];
	printf("braidfs: formatted volume '%s' (uuid %s)\n"
	       "  %u target(s), %ld chain(s), %ld replica(s) of every chunk, chunk size %s, %s "
	       "consistency\n",
	       vol.name, vol.uuid, nplace, nchains, replicas, fmt_size(chunk, cs, sizeof(cs)),
	       consistency_name(cons));
	if (nasync)
		printf(
		    "  %u async target(s) in every chain (written without waiting, never read)\n",
		    nasync);
	printf("  mount it with: braidfs mount %s MOUNTPOINT\n", meta_url);
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
