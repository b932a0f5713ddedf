/* braidfs device — list this machine's block devices; add a target to a volume, drain one,
 * remove one; rebalance a pool.
 *
 * list reads only. add, drain, remove and rebalance change the volume: they need it unmounted
 * and hold its mount lock for their whole run (tools/volume.c), like fsck.
 *
 * MOVES (placement.h PL-6; ds.h ds_rebuild, ds_chain_set)
 *   A plan (pl_plan) lists membership moves (chain, from, to) and the chain table after them.
 *   Each chain with moves: ds_rebuild(chain, to) for each of its moves — the new member
 *   becomes an exact replica and joins the chain, which now has one member more — then
 *   ds_chain_set(chain, planned members) drops the old ones and puts the primary where the
 *   plan wants it. A chain therefore never has fewer members than before at any moment, and
 *   a stop at any point (error, kill -9) leaves every chain whole: the moves not made are
 *   simply not made, and `braidfs device rebalance` (or drain again) finishes the plan from
 *   what is committed. Chains whose order alone changes get one ds_chain_set. At the end
 *   every target that lost a membership is purged of the chunks it kept (ds_purge_strays),
 *   so fsck finds no stray.
 *
 * POOL OF A CHAIN: the pool most of its members are in (ties: the primary's). A drain that
 * had to use another pool leaves a chain whose members span pools; a later rebalance of
 * either pool moves it back when it can (PL_SPARE).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "dataservice/placement.h"
#include "storemgr/sm.h"
#include "storemgr/sm_devices.h"
#include "tools/tools.h"

/* ---------------------------------------------------------------------------------------- */
/* help */

static const char help_device[] =
    "Usage: braidfs device COMMAND [OPTIONS] ARGS...\n"
    "\n"
    "Block devices of this machine, and the targets of a volume.\n"
    "\n"
    "Commands:\n"
    "  list        this machine's block devices: size, class, model and what they hold\n"
    "  add         format a new target and add it to a volume; the volume's chains\n"
    "              are rebalanced so that it takes its share\n"
    "  drain       move every chain membership of a target to other targets\n"
    "  remove      detach a drained target from its volume\n"
    "  rebalance   move chain memberships until every target of a pool holds its\n"
    "              share (finishes an interrupted add or drain)\n"
    "\n"
    "Run 'braidfs device COMMAND --help' for a command's options.\n"
    "\n"
    "Example: replace target 2 of a volume by a new disk\n"
    "  braidfs device add sqlite:///var/lib/braidfs/meta.db file:/dev/nvme1n1\n"
    "  braidfs device drain sqlite:///var/lib/braidfs/meta.db 2\n"
    "  braidfs device remove sqlite:///var/lib/braidfs/meta.db 2\n";

static const char help_list[] =
    "Usage: braidfs device list [--json] [--all]\n"
    "\n"
    "List this machine's block devices (from sysfs and libblkid) with their size, media\n"
    "class, model and state. The class is nvme, ssd or hdd (from the kernel's rotational\n"
    "flag), virtual for loop, ram and zram devices (their speed is whatever backs them),\n"
    "remote for NBD devices and iSCSI LUNs. The state says what the device holds:\n"
    "  free                              nothing found: usable as a target\n"
    "  holds ext4 \"label\"                a file system (type, label)\n"
    "  partition table gpt (2 partitions)\n"
    "  LVM physical volume, RAID member (TYPE), swap (active)\n"
    "  mounted at /srv                   mounted (from /proc/self/mountinfo)\n"
    "  used by dm-0                      held by device mapper or md\n"
    "  braidfs target 3 of volume UUID   a braidfs superblock\n"
    "  unknown (...)                     could not be read (run as root)\n"
    "Partitions follow their disk, indented.\n"
    "\n"
    "Options:\n"
    "  -j, --json   one JSON array, an object per device, for scripts\n"
    "  -a, --all    also ram and zram devices and empty ones (detached loop devices)\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 listed, 1 the devices could not be read, 2 usage error.\n";

static const char help_add[] =
    "Usage: braidfs device add [--pool NAME] [--force] [--no-rebalance] META_URL TARGET_URL\n"
    "\n"
    "Add a target to the unmounted volume whose metadata is at META_URL:\n"
    "  1. check the target: a block device (file:/dev/...) must hold nothing that\n"
    "     'braidfs device list' would not call free; a directory must be empty;\n"
    "  2. format it with the volume's identity (a new target id and uuid);\n"
    "  3. record it in the metadata with its pool, node (this host) and media class;\n"
    "  4. rebalance: the new target takes its fair share of the chain memberships of\n"
    "     its pool (within one of the share, weighted by size when sizes differ by\n"
    "     more than 1.5x). For each membership it takes, the chain's data is copied\n"
    "     onto it first and the old member leaves after, so no chain ever has fewer\n"
    "     replicas than before. Progress: chains done/total, bytes, rate, time left.\n"
    "\n"
    "Arguments:\n"
    "  META_URL     the volume's metadata, sqlite:///PATH.db\n"
    "  TARGET_URL   dir:/ABSOLUTE/PATH (an empty directory), file:/dev/DEVICE or\n"
    "               file:/PATH (a block device or an image file), iscsi://..., nbd://...\n"
    "\n"
    "Options:\n"
    "  -p, --pool NAME      the pool to put it in (default: its media class: nvme, ssd,\n"
    "                       hdd, virtual, remote, file or dir). Chains take members from\n"
    "                       one pool; a pool the volume has no chain in takes none\n"
    "  -f, --force          use a device that holds data (a file system, a partition\n"
    "                       table, an old braidfs target) or a non-empty directory: it\n"
    "                       is overwritten. A mounted device or one in use by device\n"
    "                       mapper, md or swap is refused even so\n"
    "  -R, --no-rebalance   add the target but move no chain to it (run 'braidfs device\n"
    "                       rebalance' later)\n"
    "  -h, --help           show this help\n"
    "\n"
    "Exit status: 0 added (and rebalanced), 1 refused or failed (the message says what\n"
    "was done), 2 usage error or the volume is mounted.\n";

static const char help_drain[] =
    "Usage: braidfs device drain META_URL TARGET_ID|TARGET_URL\n"
    "\n"
    "Move every chain membership of a target of the unmounted volume at META_URL to\n"
    "other targets, keeping every chain's replica count: for each chain, the data is\n"
    "copied onto the replacement first, then the drained target leaves the chain. The\n"
    "replacement comes from the target's pool (the least loaded target on a node the\n"
    "chain lacks), else from any other pool (said so for each chain). The target is\n"
    "marked draining while it runs and drained at the end; its chunks are deleted. A\n"
    "drain that stops half way (an error, ^C) is finished by running it again.\n"
    "\n"
    "Refused, with nothing moved, when some chain has no other target that could take\n"
    "its membership (every other target is already in that chain).\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 drained, 1 refused or failed, 2 usage error or the volume is mounted.\n";

static const char help_remove[] =
    "Usage: braidfs device remove [--wipe] META_URL TARGET_ID|TARGET_URL\n"
    "\n"
    "Detach a target that holds no chain membership (drain it first) from the unmounted\n"
    "volume at META_URL. It is marked removed in the metadata (its id is never given to\n"
    "another target) and the data service no longer opens it. The braidfs identity on\n"
    "the device or directory stays, so that nothing there is lost by mistake, unless\n"
    "--wipe is given.\n"
    "\n"
    "Options:\n"
    "  -w, --wipe   also delete the target's identity and chunks (a directory is left\n"
    "               empty; a block device or image gets its braidfs superblocks zeroed)\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 removed, 1 refused or failed, 2 usage error or the volume is mounted.\n";

static const char help_rebalance[] =
    "Usage: braidfs device rebalance META_URL [POOL]\n"
    "\n"
    "Move chain memberships of the unmounted volume at META_URL until every target that\n"
    "is up holds its share of its pool's chains and leads its share of them as primary\n"
    "(every pool, or only POOL). Draining targets give up their chains. Each move copies\n"
    "first and drops the old member after, as 'braidfs device add' does; this command\n"
    "finishes an add or a drain that stopped half way, and spreads the chains after\n"
    "'braidfs device add --no-rebalance'.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 balanced, 1 failed, 2 usage error or the volume is mounted.\n";

/* ---------------------------------------------------------------------------------------- */
/* list */

static void json_str(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

static void json_field(const char *key, const char *val, bool more)
{
	json_str(key);
	fputs(": ", stdout);
	json_str(val);
	fputs(more ? ", " : "", stdout);
}

static void list_json(const struct sm_device *v, unsigned n, const bool *show)
{
	bool first = true;
	printf("[");
	for (unsigned i = 0; i < n; i++) {
		const struct sm_device *d = &v[i];
		char st[1024];
		if (!show[i])
			continue;
		printf("%s\n  {", first ? "" : ",");
		first = false;
		json_field("name", d->name, true);
		json_field("path", d->path, true);
		json_field("parent", d->parent, true);
		printf("\"size\": %llu, ", (unsigned long long)d->size);
		json_field("class", sm_media_name(d->media), true);
		json_field("model", d->model, true);
		json_field("vendor", d->vendor, true);
		printf("\"rotational\": %s, \"readonly\": %s, \"removable\": %s, ",
		       d->rotational ? "true" : "false", d->readonly ? "true" : "false",
		       d->removable ? "true" : "false");
		json_field("backing_file", d->backing, true);
		json_field("state", sm_device_state(d, st, sizeof(st)), true);
		printf("\"in_use\": %s, ", sm_device_in_use(d) ? "true" : "false");
		json_field("partition_table", d->pttype, true);
		json_field("fs_type", d->fstype, true);
		json_field("fs_label", d->label, true);
		json_field("mountpoint", d->mountpoint, true);
		json_field("holders", d->holders, true);
		if (d->braidfs) {
			printf("\"braidfs\": {");
			json_field("volume", d->braidfs_volume, true);
			printf("\"target\": %u}", d->braidfs_target);
		} else {
			printf("\"braidfs\": null");
		}
		printf("}");
	}
	printf("%s]\n", first ? "" : "\n");
}

static int device_list(int argc, char **argv)
{
	static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
					     {"all", no_argument, NULL, 'a'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	bool json = false, all = false;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":jah", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'a':
			all = true;
			break;
		case 'h':
			fputs(help_list, stdout);
			return 0;
		default:
			return bad_option("device list", argv, c);
		}
	}
	if (optind != argc) {
		die_msg("device list", "takes no arguments, not '%s' (try --help)", argv[optind]);
		return EXIT_USAGE;
	}
	struct sm_devenv env = sm_devenv_system();
	struct sm_device *v = NULL;
	unsigned n = 0;
	char err[512];
	if (sm_devices_scan(&env, &v, &n, err, sizeof(err)) < 0) {
		die_msg("device list", "%s", err);
		return 1;
	}
	bool *show = calloc(n + 1, sizeof(*show));
	if (!show) {
		free(v);
		die_msg("device list", "out of memory");
		return 1;
	}
	for (unsigned i = 0; i < n; i++)
		show[i] = all || (!v[i].ram && v[i].size > 0);
	if (json) {
		list_json(v, n, show);
	} else {
		printf("%-14s %10s %-8s %-28s %s\n", "NAME", "SIZE", "CLASS", "MODEL", "STATE");
		for (unsigned i = 0; i < n; i++) {
			const struct sm_device *d = &v[i];
			char sz[32], st[1024], model[600], name[80];
			if (!show[i])
				continue;
			if (d->backing[0])
				snprintf(model, sizeof(model), "loop: %s", d->backing);
			else if (d->vendor[0] && strncmp(d->model, d->vendor, strlen(d->vendor)))
				snprintf(model, sizeof(model), "%s %s", d->vendor, d->model);
			else
				snprintf(model, sizeof(model), "%s", d->model[0] ? d->model : "-");
			snprintf(name, sizeof(name), "%s%s", d->parent[0] ? "  " : "", d->name);
			printf("%-14s %10s %-8s %-28.28s %s%s\n", name,
			       fmt_size(d->size, sz, sizeof(sz)), sm_media_name(d->media), model,
			       sm_device_state(d, st, sizeof(st)),
			       d->readonly ? " (read-only)" : "");
		}
	}
	free(show);
	free(v);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the volume, locked */

/* Open the volume at url read-write with its mount lock held. 0, or an exit code. */
static int open_locked(struct vol *v, const char *cmd, const char *url)
{
	char err[1100];
	if (vol_open(v, url, 0, err, sizeof(err)) < 0) {
		die_msg(cmd, "%s", err);
		return 1;
	}
	struct vol_holder h;
	int r = vol_lock(v, NULL, &h); /* exclusive: no mount, no fsck */
	if (r == -EBUSY) {
		char hp[128];
		die_msg(cmd, "volume '%s' is %s%s%s%s%s%s; %s", v->info.name,
			h.exclusive ? "in use by another braidfs command" : "mounted",
			h.host[0] ? " on " : "", h.host, h.mnt[0] ? " at " : "", h.mnt,
			vol_holder_pid(&h, hp, sizeof(hp)),
			h.exclusive ? "wait until it is done" : "unmount it first");
		return EXIT_USAGE;
	}
	if (r < 0) {
		die_msg(cmd, "cannot lock volume '%s': %s", v->info.name, strerror(-r));
		return 1;
	}
	return 0;
}

/* A target named by id or URL (never a removed one); NULL with a message. */
static struct meta_target *find_target(struct vol *v, const char *cmd, const char *arg)
{
	char *end;
	unsigned long id = strtoul(arg, &end, 10);
	bool numeric = arg[0] >= '0' && arg[0] <= '9' && !*end;
	for (unsigned i = 0; i < v->ntargets; i++) {
		struct meta_target *t = &v->targets[i];
		if (t->state == META_TARGET_REMOVED)
			continue;
		if ((numeric && t->id == id) || (!numeric && !strcmp(t->url, arg)))
			return t;
	}
	if (numeric)
		die_msg(cmd, "volume '%s' has no target %lu (see 'braidfs status')", v->info.name,
			id);
	else
		die_msg(cmd, "no target of volume '%s' has the URL %s (see 'braidfs status')",
			v->info.name, arg);
	return NULL;
}

static unsigned chains_of(const struct vol *v, uint32_t id)
{
	unsigned n = 0;
	for (unsigned c = 0; c < v->nchains; c++)
		for (uint32_t k = 0; k < v->chains[c].nmembers; k++)
			n += v->chains[c].members[k] == id;
	return n;
}

static const struct meta_target *by_id(const struct vol *v, uint32_t id)
{
	for (unsigned i = 0; i < v->ntargets; i++)
		if (v->targets[i].id == id)
			return &v->targets[i];
	return NULL;
}

/* The pool most of the chain's members are in; ties go to the primary's. */
static const char *chain_pool(const struct vol *v, const struct meta_chain *c)
{
	const char *best = "";
	unsigned bestn = 0;
	for (uint32_t k = 0; k < c->nmembers; k++) {
		const struct meta_target *t = by_id(v, c->members[k]);
		if (!t)
			continue;
		unsigned n = 0;
		for (uint32_t j = 0; j < c->nmembers; j++) {
			const struct meta_target *u = by_id(v, c->members[j]);
			n += u && !strcmp(u->pool, t->pool);
		}
		if (n > bestn) {
			best = t->pool;
			bestn = n;
		}
	}
	return best;
}

/* ---------------------------------------------------------------------------------------- */
/* progress */

struct progress {
	const char *what; /* "rebalancing", "draining target 3" */
	bool tty;
	unsigned total, done; /* chains with moves */
	uint64_t bytes;	      /* copied in finished rebuilds */
	uint64_t cur;	      /* copied in the running one */
	double cur_frac;      /* of the running chain */
	int64_t t0, last;
	bool printed;
};

static void fmt_eta(double secs, char *buf, size_t len)
{
	if (secs < 0 || secs > 359999)
		snprintf(buf, len, "?");
	else
		snprintf(buf, len, "%u:%02u:%02u", (unsigned)secs / 3600,
			 ((unsigned)secs / 60) % 60, (unsigned)secs % 60);
}

static void progress_show(struct progress *g, bool force)
{
	int64_t now = now_monotonic_ns();
	if (!force && g->last && now - g->last < (g->tty ? 200000000LL : 2000000000LL))
		return;
	g->last = now;
	double el = (double)(now - g->t0) / 1e9;
	uint64_t bytes = g->bytes + g->cur;
	double frac = g->total ? (g->done + g->cur_frac) / g->total : 1;
	char b1[32], b2[32], eta[32];
	fmt_size(bytes, b1, sizeof(b1));
	fmt_size(el > 0 ? (uint64_t)((double)bytes / el) : 0, b2, sizeof(b2));
	fmt_eta(frac > 0 ? el / frac - el : -1, eta, sizeof(eta));
	fprintf(stderr, "%s%s: %u/%u chain(s), %s copied, %s/s, %s left%s", g->tty ? "\r" : "",
		g->what, g->done, g->total, b1, b2, eta, g->tty ? "\033[K" : "\n");
	fflush(stderr);
	g->printed = true;
}

static void progress_cb(void *ctx, const struct ds_rebuild_progress *p)
{
	struct progress *g = ctx;
	g->cur = p->bytes_written;
	g->cur_frac = p->chunks_total ? (double)p->chunks_done / (double)p->chunks_total : 0;
	progress_show(g, false);
}

/* ---------------------------------------------------------------------------------------- */
/* plans */

struct plan {
	struct pl_target *t;
	unsigned nt;
	struct pl_chain *c, *before; /* the chains in the plan, after and before */
	unsigned nc;
	struct pl_move *mv;
	unsigned nmv;
};

static void plan_free(struct plan *p)
{
	free(p->t);
	free(p->c);
	free(p->before);
	free(p->mv);
	memset(p, 0, sizeof(*p));
}

static uint64_t target_size(const struct vol *v, const struct meta_target *t)
{
	struct sm_identity expect = {.target_id = t->id, .chunk_size = v->info.chunk_size};
	memcpy(expect.volume_uuid, v->info.uuid, sizeof(expect.volume_uuid));
	struct sm_target *st = NULL;
	struct sm_statfs sf = {0};
	char err[256];
	if (sm_open(t->url, &expect, &st, err, sizeof(err)) == 0)
		st->ops->statfs(st, &sf);
	sm_close(st);
	return sf.total_bytes;
}

/* The plan for `pool`: its chains (and, with drain_id, every chain the draining target is
 * in); its targets by state (up: take their share, draining: give everything, offline: keep
 * what they have); with spares, the up targets of other pools as a last resort. */
static int plan_make(const struct vol *v, const char *pool, uint32_t drain_id, bool spares,
		     struct plan *p, uint32_t *stuck, char *err, size_t errlen)
{
	memset(p, 0, sizeof(*p));
	p->t = calloc(v->ntargets + 1, sizeof(*p->t));
	p->c = calloc(v->nchains + 1, sizeof(*p->c));
	p->before = calloc(v->nchains + 1, sizeof(*p->before));
	p->mv = calloc((size_t)v->nchains * META_MAX_REPLICAS + 1, sizeof(*p->mv));
	if (!p->t || !p->c || !p->before || !p->mv) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < v->ntargets; i++) {
		const struct meta_target *t = &v->targets[i];
		bool mine = !strcmp(t->pool, pool);
		enum pl_role role;
		if (t->state == META_TARGET_DRAINED || t->state == META_TARGET_REMOVED)
			continue;
		if (t->id == drain_id || (mine && t->state == META_TARGET_DRAINING))
			role = PL_DRAIN;
		else if (t->state == META_TARGET_OFFLINE)
			role = PL_FROZEN;
		else if (mine)
			role = PL_ACTIVE;
		else if (spares && t->state == META_TARGET_UP)
			role = PL_SPARE;
		else
			role = PL_FROZEN; /* another pool's member of a chain of ours: stays */
		p->t[p->nt++] =
		    (struct pl_target){.id = t->id,
				       .node = vol_node_number(v->targets, v->ntargets, t->node),
				       .size = role == PL_ACTIVE ? target_size(v, t) : 0,
				       .role = role};
	}
	for (unsigned c = 0; c < v->nchains; c++) {
		const struct meta_chain *ch = &v->chains[c];
		bool in = !strcmp(chain_pool(v, ch), pool);
		for (uint32_t k = 0; k < ch->nmembers && drain_id && !in; k++)
			in = ch->members[k] == drain_id;
		if (!in)
			continue;
		struct pl_chain *pc = &p->c[p->nc++];
		pc->id = ch->id;
		pc->n = ch->nmembers;
		memcpy(pc->m, ch->members, sizeof(pc->m));
	}
	memcpy(p->before, p->c, p->nc * sizeof(*p->c));
	if (!p->nc)
		return 0;
	int r = pl_plan(p->t, p->nt, v->info.replicas, p->c, p->nc, p->mv,
			v->nchains * META_MAX_REPLICAS, &p->nmv, stuck);
	if (r < 0)
		snprintf(err, errlen, "%s", strerror(-r));
	return r;
}

/* Run a plan (see MOVES at the top). Returns 0 or -errno with the reason printed. */
static int plan_run(struct vol *v, const char *cmd, struct plan *p, struct progress *g,
		    uint64_t *ret_moved, uint64_t *ret_purged)
{
	char err[1200];
	int r = 0;
	*ret_moved = 0;
	*ret_purged = 0;
	g->t0 = now_monotonic_ns();
	g->tty = isatty(2) == 1;
	g->total = 0;
	for (unsigned i = 0; i < p->nc; i++)
		for (unsigned k = 0; k < p->nmv; k++)
			if (p->mv[k].chain == p->c[i].id) {
				g->total++;
				break;
			}
	for (unsigned i = 0; i < p->nc && r == 0; i++) {
		struct pl_chain *c = &p->c[i];
		bool moved = false;
		for (unsigned k = 0; k < p->nmv && r == 0; k++) {
			const struct pl_move *m = &p->mv[k];
			if (m->chain != c->id)
				continue;
			if (m->cross_pool)
				printf("  chain %u: no target of its pool can take it: target %u "
				       "(pool '%s') does\n",
				       c->id, m->to, by_id(v, m->to)->pool);
			if (m->relaxed)
				printf("  chain %u: target %u shares a node with another member "
				       "(no other choice)\n",
				       c->id, m->to);
			struct ds_rebuild_progress res = {0};
			g->cur = 0;
			g->cur_frac = 0;
			r = ds_rebuild(v->ds, c->id, m->to, progress_cb, g, &res, err, sizeof(err));
			if (r < 0)
				break;
			g->bytes += res.bytes_written;
			g->cur = 0;
			(*ret_moved)++;
			moved = true;
		}
		/* drop the members that were replaced, order as planned (an unchanged chain
		 * is left alone) */
		bool same = !moved && c->n == p->before[i].n &&
			    !memcmp(c->m, p->before[i].m, c->n * sizeof(*c->m));
		if (r == 0 && !same)
			r = ds_chain_set(v->ds, c->id, 0, c->m, c->n, err, sizeof(err));
		if (moved) {
			g->done++;
			g->cur_frac = 0;
			progress_show(g, g->done == g->total);
		}
	}
	if (g->tty && g->printed)
		fputs("\n", stderr);
	if (r < 0) {
		die_msg(cmd,
			"stopped: %s; every chain still has all its replicas (run 'braidfs "
			"device rebalance' once the problem is fixed)",
			err);
		return r;
	}
	/* what dropped members still hold */
	for (unsigned k = 0; k < p->nmv; k++) {
		bool seen = false;
		for (unsigned j = 0; j < k; j++)
			seen |= p->mv[j].from == p->mv[k].from;
		if (seen)
			continue;
		uint64_t n = 0;
		int e = ds_purge_strays(v->ds, p->mv[k].from, &n, err, sizeof(err));
		if (e < 0)
			printf("  note: the chunks target %u no longer needs stay on it: %s (fsck "
			       "--repair deletes them)\n",
			       p->mv[k].from, err);
		*ret_purged += n;
	}
	return 0;
}

static void print_summary(const struct progress *g, uint64_t moved, uint64_t purged)
{
	char b1[32], b2[32];
	double el = (double)(now_monotonic_ns() - g->t0) / 1e9;
	printf("  %llu chain membership(s) moved, %s copied in %.1f s (%s/s), %llu chunk(s) "
	       "deleted from the targets they left\n",
	       (unsigned long long)moved, fmt_size(g->bytes, b1, sizeof(b1)), el,
	       fmt_size(el > 0 ? (uint64_t)((double)g->bytes / el) : 0, b2, sizeof(b2)),
	       (unsigned long long)purged);
}

/* Rebalance one pool; 0 or an exit code. */
static int rebalance_pool(struct vol *v, const char *cmd, const char *pool)
{
	struct plan p;
	char err[512];
	uint32_t stuck = 0;
	int r = plan_make(v, pool, 0, false, &p, &stuck, err, sizeof(err));
	if (r < 0) {
		die_msg(cmd, "cannot plan pool '%s': %s", pool, err);
		plan_free(&p);
		return 1;
	}
	if (!p.nc) {
		printf("pool '%s': the volume has no chain in it, so it holds no data (chains keep "
		       "the pools format gave them)\n",
		       pool);
		plan_free(&p);
		return 0;
	}
	char what[64];
	snprintf(what, sizeof(what), "rebalancing pool '%s'", pool);
	struct progress g = {.what = what};
	uint64_t moved = 0, purged = 0;
	printf("pool '%s': %u chain(s), %u move(s) planned\n", pool, p.nc, p.nmv);
	r = plan_run(v, cmd, &p, &g, &moved, &purged);
	if (r == 0)
		print_summary(&g, moved, purged);
	plan_free(&p);
	return r < 0 ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* add */

/* For file: URLs of a block device, what discovery finds on it. 0 ok, else an exit code. */
static int check_device(const char *url, bool force)
{
	if (strncasecmp(url, "file:", 5) != 0)
		return 0;
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s", url + 5);
	char *q = strchr(path, '?');
	if (q)
		*q = '\0';
	struct stat st;
	if (stat(path, &st) < 0 || !S_ISBLK(st.st_mode))
		return 0; /* an image file: the backend's own check (SM-6) */
	struct sm_devenv env = sm_devenv_system();
	struct sm_device d;
	char err[512], state[1024];
	if (sm_device_by_path(&env, path, &d, err, sizeof(err)) < 0) {
		die_msg("device add", "%s", err);
		return 1;
	}
	sm_device_state(&d, state, sizeof(state));
	if (d.mountpoint[0] || d.holders[0] || d.swap_active) {
		die_msg("device add", "%s is in use (%s); refusing even with --force", path, state);
		return 1;
	}
	if (d.readonly) {
		die_msg("device add", "%s is read-only", path);
		return 1;
	}
	if (sm_device_in_use(&d) && !force) {
		die_msg(
		    "device add",
		    "%s is not free: %s; refusing (--force overwrites it, losing what is there)",
		    path, state);
		return 1;
	}
	return 0;
}

static int device_add(int argc, char **argv)
{
	static const struct option opts[] = {{"pool", required_argument, NULL, 'p'},
					     {"force", no_argument, NULL, 'f'},
					     {"no-rebalance", no_argument, NULL, 'R'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	const char *pool = NULL;
	bool force = false, rebalance = true;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":p:fRh", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			if (!pool_arg_ok("device add", optarg))
				return EXIT_USAGE;
			pool = optarg;
			break;
		case 'f':
			force = true;
			break;
		case 'R':
			rebalance = false;
			break;
		case 'h':
			fputs(help_add, stdout);
			return 0;
		default:
			return bad_option("device add", argv, c);
		}
	}
	if (argc - optind != 2) {
		die_msg("device add", "needs META_URL and TARGET_URL (try --help)");
		return EXIT_USAGE;
	}
	const char *meta_url = argv[optind], *url = argv[optind + 1];
	struct vol v;
	char err[1100];
	int rc = open_locked(&v, "device add", meta_url);
	if (rc)
		goto out;
	rc = 1;
	for (unsigned i = 0; i < v.ntargets; i++)
		if (v.targets[i].state != META_TARGET_REMOVED && !strcmp(v.targets[i].url, url)) {
			die_msg("device add", "%s is already target %u of volume '%s'", url,
				v.targets[i].id, v.info.name);
			goto out;
		}
	rc = check_device(url, force);
	if (rc)
		goto out;
	rc = 1;
	if (!sm_ops_for(url)) {
		die_msg("device add", "unknown target kind in '%s' (this braidfs takes dir:/PATH)",
			url);
		goto out;
	}
	if (sm_format_check(url, force, err, sizeof(err)) < 0) {
		die_msg("device add", "%s", err);
		goto out;
	}
	struct sm_devenv env = sm_devenv_system();
	struct meta_target t = {.state = META_TARGET_OFFLINE};
	snprintf(t.url, sizeof(t.url), "%s", url);
	uuid_generate_str(t.uuid);
	snprintf(t.media, sizeof(t.media), "%s", sm_media_name(sm_media_for_url(&env, url)));
	snprintf(t.pool, sizeof(t.pool), "%s", pool ? pool : t.media);
	if (gethostname(t.node, sizeof(t.node) - 1) < 0)
		snprintf(t.node, sizeof(t.node), "localhost");
	/* recorded offline first: a stop before the format leaves a target in no chain */
	uint32_t id = 0;
	int r = META_CALL(v.meta, target_add, &t, &id);
	if (r == 0)
		r = META_CALL(v.meta, sync);
	if (r < 0) {
		die_msg("device add", "cannot record the target in %s: %s", meta_url, strerror(-r));
		goto out;
	}
	struct sm_identity sid = {
	    .format_version = SM_FORMAT_VERSION, .target_id = id, .chunk_size = v.info.chunk_size};
	memcpy(sid.volume_uuid, v.info.uuid, sizeof(sid.volume_uuid));
	memcpy(sid.target_uuid, t.uuid, sizeof(sid.target_uuid));
	r = sm_format(url, &sid, force, err, sizeof(err));
	if (r < 0) {
		t.state = META_TARGET_REMOVED;
		META_CALL(v.meta, target_update, id, META_TSET_STATE, &t);
		META_CALL(v.meta, sync);
		die_msg("device add", "%s (target %u recorded as removed)", err, id);
		goto out;
	}
	t.state = META_TARGET_UP;
	r = META_CALL(v.meta, target_update, id, META_TSET_STATE, &t);
	if (r == 0)
		r = META_CALL(v.meta, sync);
	if (r < 0) {
		die_msg("device add", "target %u is formatted but cannot be marked up: %s", id,
			strerror(-r));
		goto out;
	}
	printf("braidfs device add: target %u %s joined volume '%s' (pool '%s', node %s, %s)\n", id,
	       url, v.info.name, t.pool, t.node, t.media);
	rc = 0;
	if (!rebalance) {
		printf("  no chain moved to it (--no-rebalance): run 'braidfs device rebalance %s' "
		       "to give it its share\n",
		       meta_url);
		goto out;
	}
	if (vol_reload(&v, err, sizeof(err)) < 0 || vol_open_data(&v, err, sizeof(err)) < 0) {
		die_msg("device add", "target %u added, but the rebalance cannot start: %s", id,
			err);
		rc = 1;
		goto out;
	}
	rc = rebalance_pool(&v, "device add", t.pool);
out:
	vol_close(&v);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* drain, remove, rebalance */

static int set_state(struct vol *v, const char *cmd, uint32_t id, enum meta_target_state s)
{
	struct meta_target in = {.state = s};
	int r = META_CALL(v->meta, target_update, id, META_TSET_STATE, &in);
	if (r == 0)
		r = META_CALL(v->meta, sync);
	if (r < 0)
		die_msg(cmd, "cannot mark target %u %s: %s", id, meta_target_state_name(s),
			strerror(-r));
	return r;
}

/* Describe why chain `id` cannot lose target `drain`: "its members are 1, 2; ..." */
static void stuck_reason(const struct vol *v, uint32_t chain, const struct meta_target *t,
			 char *buf, size_t len)
{
	const struct meta_chain *c = NULL;
	for (unsigned i = 0; i < v->nchains; i++)
		if (v->chains[i].id == chain)
			c = &v->chains[i];
	size_t used = (size_t)snprintf(buf, len, "chain %u's members are", chain);
	for (uint32_t k = 0; c && k < c->nmembers && used < len; k++)
		used +=
		    (size_t)snprintf(buf + used, len - used, "%s %u", k ? "," : "", c->members[k]);
	if (used < len)
		snprintf(buf + used, len - used,
			 "; every other target that is up is already in it (pool '%s' or any "
			 "other); add a target first ('braidfs device add')",
			 t->pool);
}

/* The start of drain and remove: options (--wipe where allowed), META_URL and a target, the
 * volume opened and locked. Returns -1 to go on (*tt filled), else the exit code. */
static int target_cmd(int argc, char **argv, const char *cmd, const char *help, bool *wipe,
		      struct vol *v, struct meta_target *tt)
{
	static const struct option opts[] = {
	    {"wipe", no_argument, NULL, 'w'}, {"help", no_argument, NULL, 'h'}, {0}};
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, wipe ? ":wh" : ":h", opts, NULL)) != -1) {
		if (c == 'w' && wipe) {
			*wipe = true;
			continue;
		}
		if (c == 'h') {
			fputs(help, stdout);
			return 0;
		}
		return bad_option(cmd, argv, c);
	}
	if (argc - optind != 2) {
		die_msg(cmd, "needs META_URL and TARGET_ID or TARGET_URL (try --help)");
		return EXIT_USAGE;
	}
	int rc = open_locked(v, cmd, argv[optind]);
	if (rc)
		return rc;
	struct meta_target *t = find_target(v, cmd, argv[optind + 1]);
	if (!t)
		return 1;
	*tt = *t;
	return -1;
}

static int device_drain(int argc, char **argv)
{
	struct vol v = {.lock_fd = -1};
	struct meta_target tt;
	char err[1100];
	int rc = target_cmd(argc, argv, "device drain", help_drain, NULL, &v, &tt);
	if (rc >= 0)
		goto out;
	rc = 1;
	if (tt.state == META_TARGET_DRAINED) {
		printf("braidfs device drain: target %u %s is already drained\n", tt.id, tt.url);
		rc = 0;
		goto out;
	}
	struct plan p;
	uint32_t stuck = 0;
	int r = plan_make(&v, tt.pool, tt.id, true, &p, &stuck, err, sizeof(err));
	if (r == -ENOSPC) {
		char why[1024];
		stuck_reason(&v, stuck, &tt, why, sizeof(why));
		die_msg("device drain",
			"cannot drain target %u: no other target can take its place "
			"in chain %u (%s); nothing was moved",
			tt.id, stuck, why);
		plan_free(&p);
		goto out;
	}
	if (r < 0) {
		die_msg("device drain", "cannot plan the drain of target %u: %s", tt.id, err);
		plan_free(&p);
		goto out;
	}
	enum meta_target_state was = tt.state;
	if (set_state(&v, "device drain", tt.id, META_TARGET_DRAINING) < 0) {
		plan_free(&p);
		goto out;
	}
	if (vol_reload(&v, err, sizeof(err)) < 0 || vol_open_data(&v, err, sizeof(err)) < 0) {
		die_msg("device drain", "%s", err);
		if (was == META_TARGET_UP)
			set_state(&v, "device drain", tt.id, was);
		plan_free(&p);
		goto out;
	}
	printf("braidfs device drain: target %u %s (pool '%s'): %u membership(s) to move, %u "
	       "move(s) planned\n",
	       tt.id, tt.url, tt.pool, chains_of(&v, tt.id), p.nmv);
	char what[64];
	snprintf(what, sizeof(what), "draining target %u", tt.id);
	struct progress g = {.what = what};
	uint64_t moved = 0, purged = 0;
	r = plan_run(&v, "device drain", &p, &g, &moved, &purged);
	plan_free(&p);
	if (r < 0)
		goto out; /* stays draining: run drain again */
	print_summary(&g, moved, purged);
	if (set_state(&v, "device drain", tt.id, META_TARGET_DRAINED) < 0)
		goto out;
	printf("  target %u is drained: it holds no chain; 'braidfs device remove %s %u' "
	       "detaches it\n",
	       tt.id, argv[optind], tt.id);
	rc = 0;
out:
	vol_close(&v);
	return rc;
}

static int device_remove(int argc, char **argv)
{
	struct vol v = {.lock_fd = -1};
	struct meta_target tt;
	char err[1100];
	bool wipe = false;
	int rc = target_cmd(argc, argv, "device remove", help_remove, &wipe, &v, &tt);
	if (rc >= 0)
		goto out;
	rc = 1;
	unsigned n = chains_of(&v, tt.id);
	if (n) {
		die_msg("device remove",
			"target %u still holds %u chain%s: run 'braidfs device "
			"drain' first",
			tt.id, n, n == 1 ? "" : "s");
		goto out;
	}
	if (set_state(&v, "device remove", tt.id, META_TARGET_REMOVED) < 0)
		goto out;
	printf("braidfs device remove: target %u %s removed from volume '%s'\n", tt.id, tt.url,
	       v.info.name);
	rc = 0;
	if (!wipe) {
		printf("  its braidfs identity stays on it (--wipe deletes it)\n");
		goto out;
	}
	if (sm_wipe(tt.url, err, sizeof(err)) < 0) {
		die_msg("device remove", "target %u is removed, but %s", tt.id, err);
		rc = 1;
		goto out;
	}
	printf("  wiped: its identity and chunks are gone\n");
out:
	vol_close(&v);
	return rc;
}

static int device_rebalance(int argc, char **argv)
{
	int rc0 = help_only_options(argc, argv, "device rebalance", help_rebalance);
	if (rc0 >= 0)
		return rc0;
	if (argc - optind < 1 || argc - optind > 2) {
		die_msg("device rebalance", "needs META_URL and optionally a POOL (try --help)");
		return EXIT_USAGE;
	}
	const char *only = argc - optind == 2 ? argv[optind + 1] : NULL;
	struct vol v;
	char err[1100];
	int rc = open_locked(&v, "device rebalance", argv[optind]);
	if (rc)
		goto out;
	rc = 1;
	if (vol_open_data(&v, err, sizeof(err)) < 0) {
		die_msg("device rebalance", "%s", err);
		goto out;
	}
	bool found = false;
	rc = 0;
	for (unsigned i = 0; i < v.ntargets && rc == 0; i++) {
		const struct meta_target *t = &v.targets[i];
		bool first = true;
		for (unsigned j = 0; j < i; j++)
			first &= strcmp(v.targets[j].pool, t->pool) != 0;
		if (!first || (only && strcmp(only, t->pool)))
			continue;
		found = true;
		char pool[META_POOL_MAX];
		snprintf(pool, sizeof(pool), "%s", t->pool);
		rc = rebalance_pool(&v, "device rebalance", pool);
		if (rc == 0 && vol_reload(&v, err, sizeof(err)) < 0) {
			die_msg("device rebalance", "%s", err);
			rc = 1;
		}
	}
	if (only && !found) {
		die_msg("device rebalance", "volume '%s' has no pool '%s'", v.info.name, only);
		rc = 1;
	}
	/* a target whose drain this finished is drained now */
	for (unsigned i = 0; i < v.ntargets && rc == 0; i++)
		if (v.targets[i].state == META_TARGET_DRAINING && !chains_of(&v, v.targets[i].id))
			rc = set_state(&v, "device rebalance", v.targets[i].id,
				       META_TARGET_DRAINED) < 0;
out:
	vol_close(&v);
	return rc;
}

int cmd_device(int argc, char **argv)
{
	if (argc < 2) {
		fputs(help_device, stderr);
		return EXIT_USAGE;
	}
	const char *sub = argv[1];
	if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
		fputs(help_device, stdout);
		return 0;
	}
	log_init("braidfs device", LOG_WARNING, LOG_SINK_STDERR, NULL);
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} subs[] = {
	    {"list", device_list},	     {"add", device_add},
	    {"drain", device_drain},	     {"remove", device_remove},
	    {"rebalance", device_rebalance},
	};
	for (size_t i = 0; i < ARRAY_SIZE(subs); i++)
		if (!strcmp(sub, subs[i].name))
			return subs[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "braidfs device: unknown command '%s' (try 'braidfs device --help')\n",
		sub);
	return EXIT_USAGE;
}
