/* braidfs fsck — do the metadata and every replica agree? Runs on an unmounted volume
 * (it takes the mount lock for its whole run, so nothing can mount meanwhile). A volume served
 * by nodes (NODE@URL targets) is read through its nodes: the data service in forward mode
 * opens each target as tcp://NODE_ADDRESS/ID (vol_resolve_target), reads every member's copy
 * with the chain's epoch, and repairs through the chain's primary (ds_check_with). */
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
#include "fs/fs.h"
#include "storemgr/sm.h"
#include "tools/tools.h"

static const char help[] =
    "Usage: braidfs fsck [--repair] META_URL\n"
    "\n"
    "Check the unmounted volume whose metadata is at META_URL:\n"
    "  - the namespace: link counts, entries that name missing inodes, inodes no\n"
    "    entry names, the database's own integrity;\n"
    "  - work an unclean stop left: deleted files still holding chunks, data beyond a\n"
    "    file's size;\n"
    "  - the chains: a chain with fewer members than the volume's replica count, or\n"
    "    with a member that is offline, is degraded (the volume runs on fewer copies);\n"
    "  - the replicas: every chunk is read from every target of its chain (a target\n"
    "    that keeps checksums verifies them) and compared byte for byte; chunks of\n"
    "    deleted files, chunks beyond a file's end and chunks on a target outside\n"
    "    their chain are reported. Its progress goes to stderr on long runs.\n"
    "\n"
    "A volume served by nodes (targets written NODE@URL, run by braidfs serve) is\n"
    "checked through its nodes: each target is read through the node that serves it,\n"
    "and the chains are the ones committed in the database. A target that is syncing\n"
    "(its chain's primary is copying to it) or away (out after a failure) makes its\n"
    "chain degraded; its copies are not compared. A member whose node cannot be\n"
    "reached makes its chain degraded too. Such a volume is checked while no client\n"
    "mounts it (fsck registers as its only client); the serve nodes keep running.\n"
    "\n"
    "Options:\n"
    "  -r, --repair   fix what is found: namespace counts, leftovers of an unclean\n"
    "                 stop, degraded chains (a reachable target, of the chain's pool\n"
    "                 and on a node the chain lacks before any other, holding the\n"
    "                 fewest chains, is rebuilt from the chain's primary, rejoins the\n"
    "                 chain and is marked up; progress on stderr), copies that fail\n"
    "                 their checksum (rewritten from a replica that verifies), and\n"
    "                 replicas that differ from the chain's primary (which is copied\n"
    "                 over them); stray chunks are deleted. On a volume served\n"
    "                 by nodes, chains are left to the nodes (they resync and\n"
    "                 rebuild), a copy is repaired by writing the right bytes\n"
    "                 through the chain's primary (its node applies them to\n"
    "                 every replica, in order with its own copying), and strays\n"
    "                 are reported, not deleted (the node that owns the target\n"
    "                 deletes them itself once it is up)\n"
    "  -q, --quiet    print only the summary\n"
    "  -h, --help     show this help\n"
    "\n"
    "Exit status: 0 no problem (left), 1 problems remain, 2 usage error or the\n"
    "volume cannot be checked (e.g. it is mounted).\n";

struct check_prog;

struct fsck_ctx {
	struct meta *meta;
	bool quiet;
	uint64_t problems;
	struct check_prog *prog;  /* the replica check's progress */
	const struct vol *served; /* a volume served by nodes: findings name the node */
};

/* ---------------------------------------------------------------------------------------- */
/* chains: degraded ones are problems; --repair rebuilds a target into them */

struct chain_fix {
	struct vol *v;
	uint32_t *ids;		       /* target ids, ascending */
	enum meta_target_state *state; /* per v->targets[i], updated by repair */
	bool *tried, *failed;	       /* per v->targets[i]: rebuild attempted / failed */
	char (*why)[1100];	       /* per v->targets[i]: why it could not be used */
	struct ds_chain_cfg *ch;       /* current chains (ds_chains) */
	unsigned nch;
};

static int tpos(const struct vol *v, uint32_t id)
{
	for (unsigned i = 0; i < v->ntargets; i++)
		if (v->targets[i].id == id)
			return (int)i;
	return -1;
}

static bool chain_has(const struct ds_chain_cfg *c, uint32_t id)
{
	for (uint32_t k = 0; k < c->nmembers; k++)
		if (c->members[k] == id)
			return true;
	return false;
}

/* A member that serves: up, or draining (its chains are moving away but it still has them). */
static bool serves(enum meta_target_state s)
{
	return s == META_TARGET_UP || s == META_TARGET_DRAINING;
}

static unsigned live_members(const struct chain_fix *f, const struct ds_chain_cfg *c)
{
	unsigned live = 0;
	for (uint32_t k = 0; k < c->nmembers; k++) {
		int p = tpos(f->v, c->members[k]);
		live += p >= 0 && serves(f->state[p]);
	}
	return live;
}

static bool degraded(const struct chain_fix *f, const struct ds_chain_cfg *c)
{
	return c->nmembers < f->v->info.replicas || live_members(f, c) < c->nmembers;
}

static void append(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t len, const char *fmt, ...)
{
	size_t used = strlen(buf);
	if (used >= len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + used, len - used, fmt, ap);
	va_end(ap);
}

/* "1 of 2 replicas (target 2 dir:/x is offline)" */
static void describe(const struct chain_fix *f, const struct ds_chain_cfg *c, char *out, size_t len)
{
	const struct vol *v = f->v;
	snprintf(out, len, "%u of %u replicas", live_members(f, c), v->info.replicas);
	const char *sep = " (";
	for (uint32_t k = 0; k < c->nmembers; k++) {
		int p = tpos(v, c->members[k]);
		if (p < 0 || serves(f->state[p]))
			continue;
		append(out, len, "%starget %u %s is offline but still listed", sep,
		       v->targets[p].id, v->targets[p].url);
		sep = "; ";
	}
	if (c->nmembers < v->info.replicas) {
		append(out, len, "%s%u member(s) missing", sep, v->info.replicas - c->nmembers);
		sep = "; ";
	}
	if (sep[0] == ';')
		append(out, len, ")");
}

struct prog {
	bool tty;
	bool quiet;
	uint32_t chain, target;
	int64_t last_ns;
	bool done_printed;
};

static void progress(void *ctx, const struct ds_rebuild_progress *p)
{
	struct prog *g = ctx;
	if (g->quiet)
		return;
	bool done = p->chunks_done == p->chunks_total;
	int64_t now = now_monotonic_ns();
	int64_t every = g->tty ? 200000000LL : 5000000000LL;
	if (done ? g->done_printed : (g->last_ns && now - g->last_ns < every))
		return;
	g->last_ns = now;
	g->done_printed = done;
	char b1[32], b2[32];
	fprintf(stderr, "%srebuilding chain %u on target %u: %llu/%llu chunk(s), %s of %s%s",
		g->tty ? "\r" : "", g->chain, g->target, (unsigned long long)p->chunks_done,
		(unsigned long long)p->chunks_total, fmt_size(p->bytes_done, b1, sizeof(b1)),
		fmt_size(p->bytes_total, b2, sizeof(b2)), g->tty ? "\033[K" : "\n");
	fflush(stderr);
}

/* Rebuild target index p into chain c; true when it joined. */
static bool rebuild_one(struct fsck_ctx *cx, struct chain_fix *f, struct ds_chain_cfg *c, int p)
{
	struct vol *v = f->v;
	const struct meta_target *t = &v->targets[p];
	struct prog g = {
	    .tty = isatty(2) == 1, .quiet = cx->quiet, .chain = c->id, .target = t->id};
	struct ds_rebuild_progress res = {0};
	char err[1100] = "";
	f->tried[p] = true;
	int r = ds_rebuild(v->ds, c->id, t->id, progress, &g, &res, err, sizeof(err));
	if (g.tty && g.last_ns)
		fputs("\n", stderr);
	if (r < 0) {
		snprintf(f->why[p], sizeof(f->why[p]), "%s", err[0] ? err : strerror(-r));
		f->failed[p] = true;
		if (!cx->quiet)
			printf("    cannot rebuild target %u into chain %u: %s\n", t->id, c->id,
			       f->why[p]);
		return false;
	}
	if (!cx->quiet) {
		char b[32];
		printf("    target %u %s rebuilt into chain %u: %llu chunk(s), %s written, %llu "
		       "stale chunk(s) deleted (repaired)\n",
		       t->id, t->url, c->id, (unsigned long long)res.chunks_done,
		       fmt_size(res.bytes_written, b, sizeof(b)),
		       (unsigned long long)res.stale_removed);
	}
	return true;
}

/* Chains target t is a member of. */
static unsigned held(const struct chain_fix *f, uint32_t t)
{
	unsigned n = 0;
	for (unsigned c = 0; c < f->nch; c++)
		n += chain_has(&f->ch[c], t);
	return n;
}

/* Is some member of chain c on the node of target index p? */
static bool node_in_chain(const struct chain_fix *f, const struct ds_chain_cfg *c, int p)
{
	for (uint32_t k = 0; k < c->nmembers; k++) {
		int q = tpos(f->v, c->members[k]);
		if (q >= 0 && !strcmp(f->v->targets[q].node, f->v->targets[p].node))
			return true;
	}
	return false;
}

/* Which target to rebuild into a degraded chain first, as placement would choose
 * (dataservice/placement.h): one of the chain's pool before any other, on a node the chain
 * lacks (PL-2), holding the fewest chains (PL-4), then the lowest id. */
static bool better_candidate(const struct chain_fix *f, const struct ds_chain_cfg *c,
			     const char *pool, int a, int b)
{
	const struct meta_target *ta = &f->v->targets[a], *tb = &f->v->targets[b];
	bool pa = !strcmp(ta->pool, pool), pb = !strcmp(tb->pool, pool);
	if (pa != pb)
		return pa;
	bool na = !node_in_chain(f, c, a), nb = !node_in_chain(f, c, b);
	if (na != nb)
		return na;
	unsigned ha = held(f, ta->id), hb = held(f, tb->id);
	if (ha != hb)
		return ha < hb;
	return ta->id < tb->id;
}

static void repair_chain(struct fsck_ctx *cx, struct chain_fix *f, struct ds_chain_cfg *c)
{
	struct vol *v = f->v;
	uint32_t order[META_MAX_TARGETS];
	unsigned n = 0;
	char pool[META_POOL_MAX] = "";
	int prim = c->nmembers ? tpos(v, c->members[0]) : -1;
	if (prim >= 0)
		snprintf(pool, sizeof(pool), "%s", v->targets[prim].pool);
	for (unsigned i = 0; i < v->ntargets; i++) { /* insertion sort by preference */
		int p = tpos(v, f->ids[i]);
		unsigned k = n++;
		for (; k > 0 && better_candidate(f, c, pool, p, tpos(v, order[k - 1])); k--)
			order[k] = order[k - 1];
		order[k] = f->ids[i];
	}
	for (unsigned k = 0; k < n && c->nmembers < v->info.replicas; k++) {
		int p = tpos(v, order[k]);
		/* draining, drained and removed targets never gain a chain */
		if (p < 0 || chain_has(c, order[k]) || f->failed[p] ||
		    (f->state[p] != META_TARGET_UP && f->state[p] != META_TARGET_OFFLINE))
			continue;
		if (rebuild_one(cx, f, c, p))
			ds_chains(v->ds, f->ch, f->nch); /* c now lists it */
	}
}

/* After the rebuilds: an offline target that is reachable and a member of some chain is
 * marked up. The chains that still list it were not written since it went offline (DS-1: the
 * first write to a chain with an offline member drops the member), and the others were just
 * rebuilt onto it, so its data is current wherever it is listed. */
static void mark_up(struct fsck_ctx *cx, struct chain_fix *f)
{
	struct vol *v = f->v;
	for (unsigned i = 0; i < v->ntargets; i++) {
		const struct meta_target *t = &v->targets[i];
		if (f->state[i] != META_TARGET_OFFLINE || f->failed[i])
			continue;
		if (!held(f, t->id))
			continue;
		if (!f->tried[i]) { /* still listed, never rebuilt here: is it reachable? */
			struct sm_identity expect = {.target_id = t->id,
						     .chunk_size = v->info.chunk_size};
			memcpy(expect.volume_uuid, v->info.uuid, sizeof(expect.volume_uuid));
			struct sm_target *st = NULL;
			char serr[512] = "";
			int r = sm_open(t->url, &expect, &st, serr, sizeof(serr));
			sm_close(st);
			if (r < 0) {
				snprintf(f->why[i], sizeof(f->why[i]), "target %u (%s): %s", t->id,
					 t->url, serr[0] ? serr : strerror(-r));
				f->failed[i] = true;
				if (!cx->quiet)
					printf("  %s\n", f->why[i]);
				continue;
			}
		}
		int r = META_CALL(v->meta, target_set_state, t->id, META_TARGET_UP);
		if (r < 0) {
			snprintf(f->why[i], sizeof(f->why[i]),
				 "target %u (%s): cannot mark it up: %s", t->id, t->url,
				 strerror(-r));
			f->failed[i] = true;
			if (!cx->quiet)
				printf("  %s\n", f->why[i]);
			continue;
		}
		f->state[i] = META_TARGET_UP;
		if (!cx->quiet)
			printf("  target %u %s is up again (repaired)\n", t->id, t->url);
	}
	META_CALL(v->meta, sync);
}

static int uint32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Returns the number of degraded chains left (after repair, when repair), or -errno. */
static int check_chains(struct fsck_ctx *cx, struct vol *v, bool repair)
{
	struct chain_fix f = {.v = v, .nch = v->nchains};
	int ret = -ENOMEM;
	f.ids = calloc(v->ntargets + 1, sizeof(*f.ids));
	f.state = calloc(v->ntargets + 1, sizeof(*f.state));
	f.tried = calloc(v->ntargets + 1, sizeof(*f.tried));
	f.failed = calloc(v->ntargets + 1, sizeof(*f.failed));
	f.why = calloc(v->ntargets + 1, sizeof(*f.why));
	f.ch = calloc(v->nchains + 1, sizeof(*f.ch));
	if (!f.ids || !f.state || !f.tried || !f.failed || !f.why || !f.ch)
		goto out;
	for (unsigned i = 0; i < v->ntargets; i++) {
		f.ids[i] = v->targets[i].id;
		f.state[i] = v->targets[i].state;
	}
	qsort(f.ids, v->ntargets, sizeof(*f.ids), uint32_cmp);
	f.nch = (unsigned)ds_chains(v->ds, f.ch, v->nchains);

	char line[4096];
	bool any = false;
	for (unsigned c = 0; c < f.nch; c++) {
		if (!degraded(&f, &f.ch[c]))
			continue;
		any = true;
		describe(&f, &f.ch[c], line, sizeof(line));
		if (!cx->quiet)
			printf("  chain %u: %s\n", f.ch[c].id, line);
		if (repair && f.ch[c].nmembers < v->info.replicas)
			repair_chain(cx, &f, &f.ch[c]);
	}
	if (repair && any)
		mark_up(cx, &f);
	ret = 0;
	for (unsigned c = 0; c < f.nch; c++) {
		if (!degraded(&f, &f.ch[c]))
			continue;
		ret++;
		if (!repair || cx->quiet)
			continue;
		printf("  chain %u: still %u of %u replicas", f.ch[c].id,
		       live_members(&f, &f.ch[c]), v->info.replicas);
		const char *sep = ": ";
		for (unsigned i = 0; i < v->ntargets; i++) {
			if (!f.failed[i] ||
			    (chain_has(&f.ch[c], v->targets[i].id) && serves(f.state[i])))
				continue;
			printf("%s%s", sep, f.why[i]);
			sep = "; ";
		}
		printf("\n");
	}
	if (!cx->quiet && !any)
		printf("  %u chain(s), every one with %u replica(s) up\n", f.nch, v->info.replicas);
	for (unsigned i = 0; i < v->ntargets && !cx->quiet && ret == 0; i++) {
		bool in = false;
		for (unsigned c = 0; c < f.nch; c++)
			in |= chain_has(&f.ch[c], v->targets[i].id);
		if (!in && f.state[i] == META_TARGET_OFFLINE)
			printf("  note: target %u %s is offline and in no chain (it holds no data "
			       "in use)\n",
			       v->targets[i].id, v->targets[i].url);
	}
out:
	free(f.ids);
	free(f.state);
	free(f.tried);
	free(f.failed);
	free(f.why);
	free(f.ch);
	return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* chains of a volume served by nodes (NODE@URL targets, docs/distributed.md) */

/* "target 3 (n3)" into buf */
static const char *tname(const struct vol *v, uint32_t id, char *buf, size_t len)
{
	char node[META_NODE_MAX];
	vol_node_of_target(v->targets, v->ntargets, id, node, sizeof(node));
	snprintf(buf, len, "target %u (node %s)", id, node[0] ? node : "?");
	return buf;
}

/* Is target id open in the data service (its node answered)? */
static bool reached(const struct ds_target_stat *st, int nst, uint32_t id)
{
	for (int i = 0; i < nst; i++)
		if (st[i].id == id)
			return st[i].open;
	return false;
}

/* The chains as committed in the database, with their three roles (META-13). A chain is
 * degraded when it has fewer members than the replica count — a target syncing (a resync or
 * rebuild by the chain's primary is under way) or away (out after a failure) is reported as
 * such, its copies are neither read nor compared — or when a member's node cannot be reached
 * (its copies are not compared either). Nothing is repaired here: the serve nodes' manager and
 * primaries own chain changes (DIST-1, DIST-6, DIST-8). Returns the degraded chains, or -errno. */
static int check_chains_served(struct fsck_ctx *cx, struct vol *v, bool repair)
{
	struct ds_target_stat *st = calloc(v->ntargets + 1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	int nst = ds_target_stats(v->ds, st, v->ntargets);
	int ret = 0;
	char a[96], line[4096];
	for (unsigned i = 0; i < v->nchains; i++) {
		const struct meta_chain *c = &v->chains[i];
		unsigned live = 0;
		for (uint32_t k = 0; k < c->nmembers; k++)
			live += reached(st, nst, c->members[k]);
		if (c->nmembers >= v->info.replicas && live == c->nmembers)
			continue;
		ret++;
		snprintf(line, sizeof(line), "chain %u (epoch %llu): %u of %u replicas", c->id,
			 (unsigned long long)c->epoch, live, v->info.replicas);
		for (uint32_t k = 0; k < c->nmembers; k++)
			if (!reached(st, nst, c->members[k]))
				append(line, sizeof(line), "; %s is a member but not reachable",
				       tname(v, c->members[k], a, sizeof(a)));
		for (uint32_t k = 0; k < c->nsyncing; k++)
			append(line, sizeof(line), "; %s is syncing (its primary copies to it)",
			       tname(v, c->syncing[k], a, sizeof(a)));
		for (uint32_t k = 0; k < c->naway; k++)
			append(line, sizeof(line), "; %s is away (for %llu s)",
			       tname(v, c->away[k], a, sizeof(a)),
			       (unsigned long long)(c->away_ns[k] / 1000000000LL));
		if (!cx->quiet)
			printf("  %s\n", line);
	}
	if (!cx->quiet && ret == 0)
		printf("  %u chain(s), every one with %u member(s), all reachable\n", v->nchains,
		       v->info.replicas);
	if (!cx->quiet && ret && repair)
		printf(
		    "  (not repaired here: the serve nodes resync a target whose node returns and "
		    "rebuild onto a replacement after replace_after_s; see braidfs status)\n");
	for (unsigned i = 0; i < v->ntargets && !cx->quiet; i++) {
		const struct meta_target *t = &v->targets[i];
		if (!vol_target_in_data(t) || reached(st, nst, t->id))
			continue;
		bool role = false; /* members and syncing/away targets are reported above */
		for (unsigned c = 0; c < v->nchains; c++)
			role |= vol_chain_lists(&v->chains[c], t->id);
		if (!role)
			printf("  note: %s is not reachable; it is in no chain (it holds no data "
			       "in use)\n",
			       tname(v, t->id, a, sizeof(a)));
	}
	free(st);
	return ret;
}

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

/* Progress of the replica check on stderr, as a rebuild's: redrawn in place every 200 ms on a
 * terminal, else one line every 5 s; nothing for a check shorter than that. */
struct check_prog {
	bool tty;
	bool drawn;	 /* a line is on the terminal, unfinished */
	int64_t last_ns; /* of the last line; 0 before the first call */
};

static void check_progress(void *ctx, const struct ds_check_result *p)
{
	struct fsck_ctx *cx = ctx;
	struct check_prog *g = cx->prog;
	int64_t now = now_monotonic_ns();
	if (cx->quiet)
		return;
	if (!g->last_ns) {
		g->last_ns = now;
		return;
	}
	int64_t every = g->tty ? 200000000LL : 5000000000LL;
	if (now - g->last_ns < every)
		return;
	g->last_ns = now;
	char b1[32], b2[32];
	fprintf(stderr, "%schecking replicas: %llu/%llu chunk(s), %s of %s read%s",
		g->tty ? "\r" : "", (unsigned long long)p->chunks,
		(unsigned long long)p->chunks_total, fmt_size(p->bytes_compared, b1, sizeof(b1)),
		fmt_size(p->bytes_total, b2, sizeof(b2)), g->tty ? "\033[K" : "\n");
	fflush(stderr);
	g->drawn = g->tty;
}

static void ds_report(void *ctx, const char *what, uint64_t ino, uint32_t idx, uint32_t target,
		      bool repaired)
{
	struct fsck_ctx *c = ctx;
	if (c->prog && c->prog->drawn) { /* a finding goes on its own line */
		fputs("\r\033[K", stderr);
		c->prog->drawn = false;
	}
	char t[96];
	if (c->served) /* every target of such a volume names its node */
		tname(c->served, target, t, sizeof(t));
	else
		snprintf(t, sizeof(t), "target %u", target);
	if (!c->quiet)
		printf("  inode %llu chunk %u on %s: %s%s\n", (unsigned long long)ino, idx, t, what,
		       repaired ? " (repaired)" : "");
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
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":rqh", opts, NULL)) != -1) {
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
			return bad_option("fsck", argv, c);
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
	struct vol_holder h;
	int r = vol_lock(&v, NULL, &h);
	if (r == -EBUSY) {
		char hp[128];
		die_msg("fsck", "volume '%s' is %s%s%s%s%s%s; %s", v.info.name,
			h.exclusive ? "being checked by another braidfs fsck" : "mounted",
			h.host[0] ? " on " : "", h.host, h.mnt[0] ? " at " : "", h.mnt,
			vol_holder_pid(&h, hp, sizeof(hp)),
			h.exclusive ? "wait until it is done" : "unmount it first");
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
	bool served = vol_distributed(&v);
	cx.served = served ? &v : NULL;
	printf("braidfs fsck: volume '%s'%s%s\n", v.info.name,
	       served ? " (served by nodes: each target read through its node)" : "",
	       repair ? " (repairing)" : "");

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
		/* fs_new started the metadata syncer: fs_free stops it (and syncs what
		 * recovery wrote, as an unmount would) */
		fs_free(fs);
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

	printf("chains\n");
	r = served ? check_chains_served(&cx, &v, repair) : check_chains(&cx, &v, repair);
	if (r < 0) {
		die_msg("fsck", "chain check failed: %s", strerror(-r));
		goto out;
	}
	cx.problems += (uint64_t)r;

	printf("replicas\n");
	fflush(stdout);
	struct ds_check_result res = {0};
	struct check_prog cp = {.tty = isatty(2) == 1};
	struct ds_check_opts co = {.repair = repair,
				   .keep = keep,
				   .report = ds_report,
				   .progress = check_progress,
				   .ctx = &cx};
	cx.prog = &cp;
	r = ds_check_with(v.ds, &co, &res);
	if (cp.drawn)
		fputs("\n", stderr);
	if (r < 0) {
		die_msg("fsck", "replica check failed: %s", strerror(-r));
		goto out;
	}
	char b[32];
	printf("  %llu chunk(s), %s read; %llu checksum error(s), %llu differing, %llu missing, "
	       "%llu unreadable, %llu stray, %llu beyond end of file\n",
	       (unsigned long long)res.chunks, fmt_size(res.bytes_compared, b, sizeof(b)),
	       (unsigned long long)res.csum_errors, (unsigned long long)res.mismatches,
	       (unsigned long long)res.missing, (unsigned long long)res.unreadable,
	       (unsigned long long)res.strays, (unsigned long long)res.beyond_eof);
	if (res.unrecoverable)
		printf("  %llu chunk(s) unrecoverable: no replica reads without error\n",
		       (unsigned long long)res.unrecoverable);
	if (res.unreached)
		printf("  %llu cop%s on targets that could not be reached not compared (see "
		       "chains)\n",
		       (unsigned long long)res.unreached, res.unreached == 1 ? "y" : "ies");
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
