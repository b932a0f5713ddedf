/* placement — chain membership: build, plan moves, balance primaries. See placement.h for the
 * model and the rules PL-1..PL-6.
 *
 * DESIGN
 *   Everything works on a `struct pl` built per call: targets get compact node numbers, a
 *   weight (PL-3), the number of memberships they hold and a quota (PL-4). Quotas come from a
 *   two-level water fill: the memberships are split over nodes in proportion to their
 *   targets' weights, each node capped by PL-1/PL-2; each node's share is split over its
 *   targets the same way, each target capped at one membership per chain. Shares are then
 *   rounded to integers (largest remainder).
 *
 *   pl_build fills chains one at a time, each slot from the node with the most quota left,
 *   then that node's target with the most quota left. With k = 1 (enough nodes) this greedy
 *   never gets stuck: a node whose remaining quota equals the number of chains left is always
 *   among the R fullest, and at most R can be in that state because the remainders sum to
 *   R x chains left. Ties go to the target that shares the fewest chains with the members
 *   already chosen, so that the copies of one target are spread over many partners (a rebuild
 *   after a loss then reads from many disks).
 *
 *   pl_plan first moves every membership of a draining target (to the most underfull target
 *   that PL-1/PL-2 allow, else with PL-2 relaxed, else to a spare), then repeats "the most
 *   underfull target takes one membership from the most overfull target it can" until no move
 *   helps. pl_primaries starts from the current primaries and shifts primaries along
 *   alternating paths (chain c: primary x -> member y) until every count is within
 *   [floor(f), ceil(f)]; such an assignment exists because the fractional one (1/e_c per
 *   member) does, and every shift removes one unit of violation without creating another.
 */
#include "dataservice/placement.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PL_EPS 1e-9

struct pl {
	const struct pl_target *t;
	unsigned nt, R, nc;
	unsigned node[PL_MAX_TARGETS];		       /* compact node number of t[i] */
	unsigned nact[PL_MAX_TARGETS];		       /* PL_ACTIVE targets per compact node */
	unsigned nnodes;			       /* distinct nodes among PL_ACTIVE targets */
	unsigned k;				       /* PL-2: members of one chain per node */
	unsigned w[PL_MAX_TARGETS];		       /* PL-3 */
	uint32_t held[PL_MAX_TARGETS];		       /* memberships held */
	uint32_t quota[PL_MAX_TARGETS];		       /* PL-4 */
	double share[PL_MAX_TARGETS];		       /* PL-4 before rounding */
	uint16_t pair[PL_MAX_TARGETS][PL_MAX_TARGETS]; /* chains shared by two targets */
};

static int pl_idx(const struct pl *p, uint32_t id)
{
	for (unsigned i = 0; i < p->nt; i++)
		if (p->t[i].id == id)
			return (int)i;
	return -1;
}

static bool pl_has(const struct pl_chain *c, uint32_t id)
{
	for (uint32_t k = 0; k < c->n; k++)
		if (c->m[k] == id)
			return true;
	return false;
}

static uint64_t pl_floor(double x)
{
	return x <= 0 ? 0 : (uint64_t)(x + PL_EPS);
}

static uint64_t pl_ceil(double x)
{
	uint64_t f = pl_floor(x);
	return (double)f + PL_EPS < x ? f + 1 : f;
}

static int pl_init(struct pl *p, const struct pl_target *t, unsigned nt, unsigned replicas,
		   const struct pl_chain *c, unsigned nc)
{
	if (!t || !c || nt < 1 || nt > PL_MAX_TARGETS || nc < 1 || nc > PL_MAX_CHAINS ||
	    replicas < 1 || replicas > PL_MAX_REPLICAS)
		return -EINVAL;
	memset(p, 0, sizeof(*p));
	p->t = t;
	p->nt = nt;
	p->R = replicas;
	p->nc = nc;
	uint64_t smin = 0;
	for (unsigned i = 0; i < nt; i++) {
		if ((unsigned)t[i].role > PL_SPARE || pl_idx(p, t[i].id) != (int)i)
			return -EINVAL; /* unknown role, or an id given twice */
		unsigned n = i;
		for (unsigned j = 0; j < i; j++)
			if (t[j].node == t[i].node) {
				n = p->node[j];
				break;
			}
		p->node[i] = n;
		if (t[i].role != PL_ACTIVE)
			continue;
		if (p->nact[n]++ == 0)
			p->nnodes++;
		if (t[i].size && (!smin || t[i].size < smin))
			smin = t[i].size;
	}
	for (unsigned i = 0; i < nt; i++) { /* PL-3 */
		uint64_t w = 1;
		if (smin && t[i].size)
			w = (t[i].size + smin / 2) / smin;
		p->w[i] = (unsigned)(w < 1 ? 1 : w > PL_MAX_WEIGHT ? PL_MAX_WEIGHT : w);
	}
	/* PL-2 */
	p->k = !p->nnodes || p->nnodes >= replicas ? 1 : (replicas + p->nnodes - 1) / p->nnodes;
	for (unsigned ci = 0; ci < nc; ci++) {
		if (c[ci].n > PL_MAX_REPLICAS)
			return -EINVAL;
		for (uint32_t a = 0; a < c[ci].n; a++) {
			int i = pl_idx(p, c[ci].m[a]);
			if (i < 0)
				continue;
			p->held[i]++;
			for (uint32_t b = 0; b < c[ci].n; b++) {
				int j = pl_idx(p, c[ci].m[b]);
				if (j >= 0 && j != i && p->pair[i][j] < UINT16_MAX)
					p->pair[i][j]++;
			}
		}
	}
	return 0;
}

/* Members of chain c that a node may hold (PL-2): k, but never more than its targets. */
static unsigned pl_node_room(const struct pl *p, unsigned n)
{
	return p->nact[n] < p->k ? p->nact[n] : p->k;
}

/* Water fill: split `total` over n items in proportion to w, none above cap. */
static void pl_fill(double total, unsigned n, const unsigned *w, const double *cap, double *out)
{
	bool fixed[PL_MAX_TARGETS] = {false};
	for (unsigned round = 0; round <= n; round++) {
		double rest = total, wf = 0;
		for (unsigned i = 0; i < n; i++) {
			if (fixed[i])
				rest -= out[i];
			else
				wf += w[i];
		}
		if (wf <= 0)
			return;
		bool capped = false;
		for (unsigned i = 0; i < n; i++)
			if (!fixed[i])
				out[i] = rest * w[i] / wf;
		for (unsigned i = 0; i < n; i++)
			if (!fixed[i] && out[i] > cap[i]) {
				out[i] = cap[i];
				fixed[i] = true;
				capped = true;
			}
		if (!capped)
			return;
	}
}

/* Integer quotas of the PL_ACTIVE targets for M memberships (PL-4). Returns the number of
 * memberships no target can take (0 unless there are too few targets or nodes). */
static uint64_t pl_quota(struct pl *p, uint64_t M)
{
	unsigned nw[PL_MAX_TARGETS] = {0}, ids[PL_MAX_TARGETS], tw[PL_MAX_TARGETS];
	double ncap[PL_MAX_TARGETS] = {0}, nshare[PL_MAX_TARGETS] = {0}, tcap[PL_MAX_TARGETS] = {0},
	       tshare[PL_MAX_TARGETS] = {0};
	uint64_t nq[PL_MAX_TARGETS] = {0};

	for (unsigned i = 0; i < p->nt; i++) {
		p->quota[i] = 0;
		p->share[i] = 0;
		if (p->t[i].role == PL_ACTIVE)
			nw[p->node[i]] += p->w[i];
	}
	for (unsigned n = 0; n < p->nt; n++)
		ncap[n] = (double)p->nc * pl_node_room(p, n);
	pl_fill((double)M, p->nt, nw, ncap, nshare); /* nodes: unused numbers weigh 0 */
	for (unsigned n = 0; n < p->nt; n++) {
		unsigned cnt = 0;
		for (unsigned i = 0; i < p->nt; i++)
			if (p->t[i].role == PL_ACTIVE && p->node[i] == n) {
				ids[cnt] = i;
				tw[cnt] = p->w[i];
				tcap[cnt] = p->nc;
				cnt++;
			}
		if (!cnt)
			continue;
		pl_fill(nshare[n], cnt, tw, tcap, tshare);
		for (unsigned j = 0; j < cnt; j++)
			p->share[ids[j]] = tshare[j];
	}
	uint64_t sum = 0;
	for (unsigned i = 0; i < p->nt; i++) {
		if (p->t[i].role != PL_ACTIVE)
			continue;
		p->quota[i] = (uint32_t)pl_floor(p->share[i]);
		nq[p->node[i]] += p->quota[i];
		sum += p->quota[i];
	}
	/* the units left: largest fraction first, then who holds more, then lower id */
	unsigned order[PL_MAX_TARGETS], no = 0;
	for (unsigned i = 0; i < p->nt; i++)
		if (p->t[i].role == PL_ACTIVE)
			order[no++] = i;
	for (unsigned a = 1; a < no; a++) {
		unsigned x = order[a], b = a;
		double fx = p->share[x] - p->quota[x];
		/* "already holds the unit": held above the rounded-down share. Not the raw held
		 * count, so that the quotas after a plan are the quotas the plan aimed at. */
		bool hx = p->held[x] > p->quota[x];
		for (; b > 0; b--) {
			unsigned y = order[b - 1];
			double fy = p->share[y] - p->quota[y];
			bool hy = p->held[y] > p->quota[y];
			bool before = fx > fy + PL_EPS ||
				      (fx > fy - PL_EPS &&
				       (hx > hy || (hx == hy && p->t[x].id < p->t[y].id)));
			if (!before)
				break;
			order[b] = y;
		}
		order[b] = x;
	}
	for (int pass = 0; pass < 2 && sum < M; pass++) {
		bool progress = true;
		while (sum < M && progress) {
			progress = false;
			for (unsigned a = 0; a < no && sum < M; a++) {
				unsigned i = order[a], n = p->node[i];
				/* pass 0 rounds fractions up; pass 1 fills any room rounding left
				 */
				if (pass == 0 && p->quota[i] >= pl_ceil(p->share[i]))
					continue;
				if (p->quota[i] >= p->nc ||
				    nq[n] >= (uint64_t)p->nc * pl_node_room(p, n))
					continue;
				p->quota[i]++;
				nq[n]++;
				sum++;
				progress = pass == 1;
			}
		}
	}
	return M - sum;
}

/* ---------------------------------------------------------------------------------------- */
/* build */

/* Members of chain c (so far) on node n. */
static unsigned pl_on_node(const struct pl *p, const struct pl_chain *c, unsigned n, int skip)
{
	unsigned cnt = 0;
	for (uint32_t k = 0; k < c->n; k++) {
		if ((int)k == skip)
			continue;
		int j = pl_idx(p, c->m[k]);
		cnt += j >= 0 && p->node[j] == n;
	}
	return cnt;
}

/* Chains target i shares with the members of c (slot `skip` excluded). */
static unsigned pl_pairs(const struct pl *p, const struct pl_chain *c, unsigned i, int skip)
{
	unsigned s = 0;
	for (uint32_t k = 0; k < c->n; k++) {
		int j = pl_idx(p, c->m[k]);
		if ((int)k != skip && j >= 0)
			s += p->pair[i][j];
	}
	return s;
}

static void pl_pair_add(struct pl *p, const struct pl_chain *c, int delta)
{
	for (uint32_t a = 0; a < c->n; a++)
		for (uint32_t b = 0; b < c->n; b++) {
			int i = pl_idx(p, c->m[a]), j = pl_idx(p, c->m[b]);
			if (i >= 0 && j >= 0 && i != j)
				p->pair[i][j] = (uint16_t)(p->pair[i][j] + delta);
		}
}

/* The next member of chain c (ci-th chain) during pl_build; -1 if none is left at all. */
static int pl_build_pick(const struct pl *p, const struct pl_chain *c, unsigned ci,
			 const uint32_t *left, const uint64_t *nleft)
{
	for (int level = 0; level < 3; level++) {
		int best = -1;
		for (unsigned i = 0; i < p->nt; i++) {
			unsigned n = p->node[i];
			if (pl_has(c, p->t[i].id))
				continue;
			if (level < 2 && !left[i])
				continue;
			if (level < 1 && pl_on_node(p, c, n, -1) >= pl_node_room(p, n))
				continue;
			if (best < 0)
				goto take;
			unsigned b = (unsigned)best;
			if (level == 2) { /* over quota anyway: the one holding least */
				if (p->held[i] < p->held[b])
					goto take;
				continue;
			}
			if (nleft[n] != nleft[p->node[b]]) {
				if (nleft[n] > nleft[p->node[b]])
					goto take;
				continue;
			}
			if (left[i] != left[b]) {
				if (left[i] > left[b])
					goto take;
				continue;
			}
			unsigned pi = pl_pairs(p, c, i, -1), pb = pl_pairs(p, c, b, -1);
			if (pi != pb) {
				if (pi < pb)
					goto take;
				continue;
			}
			if ((i + p->nt - ci % p->nt) % p->nt < (b + p->nt - ci % p->nt) % p->nt)
				goto take;
			continue;
		take:
			best = (int)i;
		}
		if (best >= 0)
			return best;
	}
	return -1;
}

int pl_build(const struct pl_target *t, unsigned nt, unsigned replicas, struct pl_chain *c,
	     unsigned nc)
{
	if (!c || nc < 1 || nc > PL_MAX_CHAINS)
		return -EINVAL;
	for (unsigned ci = 0; ci < nc; ci++)
		c[ci].n = 0;
	struct pl *p = malloc(sizeof(*p));
	if (!p)
		return -ENOMEM;
	int r = pl_init(p, t, nt, replicas, c, nc);
	if (r == 0 && nt < replicas)
		r = -EINVAL;
	for (unsigned i = 0; r == 0 && i < nt; i++)
		if (t[i].role != PL_ACTIVE)
			r = -EINVAL;
	if (r < 0) {
		free(p);
		return r;
	}
	pl_quota(p, (uint64_t)nc * replicas);
	uint32_t left[PL_MAX_TARGETS];
	uint64_t nleft[PL_MAX_TARGETS] = {0};
	for (unsigned i = 0; i < nt; i++) {
		left[i] = p->quota[i];
		nleft[p->node[i]] += left[i];
	}
	for (unsigned ci = 0; ci < nc; ci++) {
		struct pl_chain *ch = &c[ci];
		for (unsigned s = 0; s < replicas; s++) {
			int i = pl_build_pick(p, ch, ci, left, nleft);
			if (i < 0) { /* cannot happen: nt >= replicas */
				free(p);
				return -EINVAL;
			}
			ch->m[ch->n++] = t[i].id;
			p->held[i]++;
			if (left[i]) {
				left[i]--;
				nleft[p->node[i]]--;
			}
		}
		pl_pair_add(p, ch, 1);
	}
	free(p);
	r = pl_primaries(t, nt, c, nc);
	return r < 0 ? r : 0;
}

int pl_quotas(const struct pl_target *t, unsigned nt, unsigned replicas, const struct pl_chain *c,
	      unsigned nc, uint32_t *ret_quota)
{
	struct pl *p = malloc(sizeof(*p));
	if (!p)
		return -ENOMEM;
	int r = pl_init(p, t, nt, replicas, c, nc);
	if (r == 0) {
		uint64_t M = 0;
		for (unsigned i = 0; i < nt; i++)
			if (t[i].role != PL_FROZEN)
				M += p->held[i];
		pl_quota(p, M);
		memcpy(ret_quota, p->quota, nt * sizeof(*ret_quota));
	}
	free(p);
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* plan */

/* May target b replace slot `slot` of chain c without breaking PL-2? */
static bool pl_node_ok(const struct pl *p, const struct pl_chain *c, int slot, unsigned b)
{
	unsigned n = p->node[b];
	unsigned room = p->t[b].role == PL_ACTIVE ? pl_node_room(p, n) : p->k;
	return pl_on_node(p, c, n, slot) < room;
}

static long pl_deficit(const struct pl *p, unsigned i)
{
	if (p->t[i].role == PL_ACTIVE)
		return (long)p->quota[i] - (long)p->held[i];
	return -(long)p->held[i];
}

/* Who takes slot `slot` of chain c from a draining target: an active target (PL-2 kept, then
 * relaxed), then a spare. -1: none. */
static int pl_drain_pick(const struct pl *p, const struct pl_chain *c, int slot, bool *ret_relaxed)
{
	for (int tier = 0; tier < 4; tier++) {
		enum pl_role want = tier < 2 ? PL_ACTIVE : PL_SPARE;
		bool relax = tier & 1;
		int best = -1;
		for (unsigned i = 0; i < p->nt; i++) {
			if (p->t[i].role != want || pl_has(c, p->t[i].id))
				continue;
			if (!relax && !pl_node_ok(p, c, slot, i))
				continue;
			if (best >= 0) {
				unsigned b = (unsigned)best;
				long di = pl_deficit(p, i), db = pl_deficit(p, b);
				unsigned pi = pl_pairs(p, c, i, slot), pb = pl_pairs(p, c, b, slot);
				if (di < db || (di == db && pi >= pb))
					continue;
			}
			best = (int)i;
		}
		if (best >= 0) {
			*ret_relaxed = relax;
			return best;
		}
	}
	return -1;
}

static void pl_apply(struct pl *p, struct pl_chain *c, int slot, unsigned from, unsigned to)
{
	pl_pair_add(p, c, -1);
	c->m[slot] = p->t[to].id;
	pl_pair_add(p, c, 1);
	p->held[from]--;
	p->held[to]++;
}

/* Can target u take slot s of chain ci (PL-1, PL-2)? */
static bool pl_can_take(const struct pl *p, const struct pl_chain *c, int s, unsigned u)
{
	return !pl_has(c, p->t[u].id) && pl_node_ok(p, c, s, u);
}

/* How much target v is above its quota, for choosing whom to take from (a spare: all it holds,
 * and first, so that chains return to their pool); <= 0: not above. */
static long pl_excess(const struct pl *p, unsigned v)
{
	if (p->t[v].role == PL_SPARE)
		return p->held[v] ? PL_MAX_CHAINS + (long)p->held[v] : 0;
	if (p->t[v].role != PL_ACTIVE)
		return 0;
	return -pl_deficit(p, v);
}

/* Augmenting path for underfull target b: b takes a membership from v1, v1 from v2, ... until
 * an overfull vk. Every hop is one move (PL-6): hops are needed only when PL-2 keeps b out of
 * every chain an overfull target is in (b's node already sits there). Breadth first, so the
 * fewest hops; among direct takes, the most overfull target and not a primary. Appends the
 * moves and returns 1; 0 when b cannot gain a membership; -E2BIG when the moves do not fit. */
static int pl_augment(struct pl *p, struct pl_chain *c, unsigned b, struct pl_move *mv, unsigned *n,
		      unsigned max)
{
	int par_t[PL_MAX_TARGETS], par_c[PL_MAX_TARGETS], par_s[PL_MAX_TARGETS];
	bool seen[PL_MAX_TARGETS] = {false};
	unsigned level[PL_MAX_TARGETS], nl = 0, next[PL_MAX_TARGETS], nn;
	seen[b] = true;
	level[nl++] = b;
	while (nl) {
		int end = -1;
		long best_ex = 0;
		bool best_prim = true;
		nn = 0;
		for (unsigned li = 0; li < nl; li++) {
			unsigned u = level[li];
			for (unsigned ci = 0; ci < p->nc; ci++) {
				for (uint32_t s = 0; s < c[ci].n; s++) {
					int v = pl_idx(p, c[ci].m[s]);
					if (v < 0 || (unsigned)v == u ||
					    !pl_can_take(p, &c[ci], (int)s, u))
						continue;
					long ex = pl_excess(p, (unsigned)v);
					if (ex > 0 && (end < 0 || ex > best_ex ||
						       (ex == best_ex && best_prim && s != 0))) {
						end = v;
						best_ex = ex;
						best_prim = s == 0;
						par_t[v] = (int)u;
						par_c[v] = (int)ci;
						par_s[v] = (int)s;
					}
					if (seen[v] || p->t[v].role != PL_ACTIVE)
						continue;
					seen[v] = true;
					par_t[v] = (int)u;
					par_c[v] = (int)ci;
					par_s[v] = (int)s;
					next[nn++] = (unsigned)v;
				}
			}
		}
		if (end >= 0) {
			/* the hops, from the overfull end back to b; each checked again as the
			 * earlier ones changed their chains */
			unsigned hops = 0;
			for (int v = end; v != (int)b; v = par_t[v])
				hops++;
			if (*n + hops > max)
				return -E2BIG;
			for (int v = end; v != (int)b; v = par_t[v]) {
				struct pl_chain *ch = &c[par_c[v]];
				unsigned u = (unsigned)par_t[v];
				if (ch->m[par_s[v]] != p->t[v].id ||
				    !pl_can_take(p, ch, par_s[v], u))
					return 0; /* b is given up; the rules still hold */
				mv[(*n)++] = (struct pl_move){
				    .chain = ch->id, .from = p->t[v].id, .to = p->t[u].id};
				pl_apply(p, ch, par_s[v], (unsigned)v, u);
			}
			return 1;
		}
		memcpy(level, next, nn * sizeof(*next));
		nl = nn;
	}
	return 0;
}

/* Phase 1 of a plan: every membership of a draining target finds a new holder. A bipartite
 * matching (augmenting paths, Kuhn) of the draining slots onto the active targets' deficits
 * keeps the count minimal where greedy choice would overfill one target and need a second
 * move later; slots it cannot place go to pl_drain_pick (over quota, PL-2 relaxed, spare). */
struct pl_slot {
	unsigned ci;
	int s;
	unsigned from;
	int to; /* target index or -1 */
};

static bool pl_kuhn(const struct pl *p, const struct pl_chain *c, struct pl_slot *sl, unsigned ns,
		    unsigned l, const long *cap, bool *seen)
{
	for (unsigned r = 0; r < p->nt; r++) {
		if (seen[r] || p->t[r].role != PL_ACTIVE || cap[r] <= 0 ||
		    !pl_can_take(p, &c[sl[l].ci], sl[l].s, r))
			continue;
		seen[r] = true;
		long used = 0;
		for (unsigned j = 0; j < ns; j++)
			used += sl[j].to == (int)r;
		if (used < cap[r]) {
			sl[l].to = (int)r;
			return true;
		}
		for (unsigned j = 0; j < ns; j++)
			if (sl[j].to == (int)r && pl_kuhn(p, c, sl, ns, j, cap, seen)) {
				sl[l].to = (int)r;
				return true;
			}
	}
	return false;
}

static int pl_drain(struct pl *p, struct pl_chain *c, struct pl_move *mv, unsigned *n, unsigned max,
		    uint32_t *ret_stuck)
{
	unsigned ns = 0;
	for (unsigned ci = 0; ci < p->nc; ci++)
		for (uint32_t s = 0; s < c[ci].n; s++) {
			int a = pl_idx(p, c[ci].m[s]);
			if (a >= 0 && p->t[a].role == PL_DRAIN)
				ns++;
		}
	if (!ns)
		return 0;
	struct pl_slot *sl = calloc(ns, sizeof(*sl));
	long cap[PL_MAX_TARGETS];
	if (!sl)
		return -ENOMEM;
	ns = 0;
	for (unsigned ci = 0; ci < p->nc; ci++)
		for (uint32_t s = 0; s < c[ci].n; s++) {
			int a = pl_idx(p, c[ci].m[s]);
			if (a >= 0 && p->t[a].role == PL_DRAIN)
				sl[ns++] = (struct pl_slot){ci, (int)s, (unsigned)a, -1};
		}
	for (unsigned i = 0; i < p->nt; i++)
		cap[i] = pl_deficit(p, i);
	for (unsigned l = 0; l < ns; l++) {
		bool seen[PL_MAX_TARGETS] = {false};
		pl_kuhn(p, c, sl, ns, l, cap, seen);
	}
	int r = 0;
	for (unsigned l = 0; l < ns && r == 0; l++) {
		struct pl_chain *ch = &c[sl[l].ci];
		bool relaxed = false;
		int b = sl[l].to;
		/* re-check: another slot of this chain may have taken its node or target */
		if (b < 0 || !pl_can_take(p, ch, sl[l].s, (unsigned)b))
			b = pl_drain_pick(p, ch, sl[l].s, &relaxed);
		if (b < 0) {
			if (ret_stuck)
				*ret_stuck = ch->id;
			r = -ENOSPC;
		} else if (*n >= max) {
			r = -E2BIG;
		} else {
			mv[(*n)++] = (struct pl_move){.chain = ch->id,
						      .from = p->t[sl[l].from].id,
						      .to = p->t[b].id,
						      .cross_pool = p->t[b].role == PL_SPARE,
						      .relaxed = relaxed};
			pl_apply(p, ch, sl[l].s, sl[l].from, (unsigned)b);
		}
	}
	free(sl);
	return r;
}

/* Phase 1b: chains that break PL-2 as it stands now (a node joined the pool, so k fell, or
 * a drain had to relax it) get the member on the crowded node replaced by a target of a node
 * the chain lacks: the most underfull one. A member that nobody can replace stays. */
static int pl_spread(struct pl *p, struct pl_chain *c, struct pl_move *mv, unsigned *n,
		     unsigned max)
{
	for (unsigned ci = 0; ci < p->nc; ci++) {
		for (uint32_t s = 0; s < c[ci].n; s++) {
			int a = pl_idx(p, c[ci].m[s]);
			if (a < 0 || (p->t[a].role != PL_ACTIVE && p->t[a].role != PL_SPARE))
				continue;
			unsigned node = p->node[a];
			unsigned room = p->t[a].role == PL_ACTIVE ? pl_node_room(p, node) : p->k;
			if (pl_on_node(p, &c[ci], node, -1) <= room)
				continue;
			int b = -1;
			for (unsigned i = 0; i < p->nt; i++) {
				if (p->t[i].role != PL_ACTIVE || !pl_can_take(p, &c[ci], (int)s, i))
					continue;
				if (b < 0 || pl_deficit(p, i) > pl_deficit(p, (unsigned)b))
					b = (int)i;
			}
			if (b < 0)
				continue;
			if (*n >= max)
				return -E2BIG;
			mv[(*n)++] = (struct pl_move){
			    .chain = c[ci].id, .from = p->t[a].id, .to = p->t[b].id};
			pl_apply(p, &c[ci], (int)s, (unsigned)a, (unsigned)b);
		}
	}
	return 0;
}

int pl_plan(const struct pl_target *t, unsigned nt, unsigned replicas, struct pl_chain *c,
	    unsigned nc, struct pl_move *moves, unsigned max_moves, unsigned *ret_nmoves,
	    uint32_t *ret_stuck_chain)
{
	struct pl *p = malloc(sizeof(*p));
	struct pl_chain *w = c && nc <= PL_MAX_CHAINS ? malloc(nc * sizeof(*w) + 1) : NULL;
	unsigned n = 0;
	int r = -ENOMEM;
	if (!p || !w)
		goto out;
	r = pl_init(p, t, nt, replicas, c, nc);
	if (r < 0)
		goto out;
	memcpy(w, c, nc * sizeof(*w));
	uint64_t M = 0;
	for (unsigned i = 0; i < nt; i++)
		if (t[i].role != PL_FROZEN)
			M += p->held[i];
	pl_quota(p, M);

	/* 1. every membership of a draining target goes (PL-6) */
	r = pl_drain(p, w, moves, &n, max_moves, ret_stuck_chain);
	if (r == 0)
		r = pl_spread(p, w, moves, &n, max_moves);
	if (r < 0)
		goto out;
	/* 2. underfull targets take from overfull ones until none can */
	bool tried[PL_MAX_TARGETS] = {false};
	for (uint64_t guard = 0; guard <= M; guard++) {
		int b = -1;
		for (unsigned i = 0; i < nt; i++)
			if (t[i].role == PL_ACTIVE && !tried[i] && pl_deficit(p, i) > 0 &&
			    (b < 0 || pl_deficit(p, i) > pl_deficit(p, (unsigned)b)))
				b = (int)i;
		if (b < 0)
			break;
		r = pl_augment(p, w, (unsigned)b, moves, &n, max_moves);
		if (r < 0)
			goto out;
		if (r == 0)
			tried[b] = true;
	}
	/* 3. primaries (PL-5) */
	r = pl_primaries(t, nt, w, nc);
	if (r < 0)
		goto out;
	memcpy(c, w, nc * sizeof(*w));
	r = 0;
out:
	if (ret_nmoves)
		*ret_nmoves = r == 0 ? n : 0;
	free(p);
	free(w);
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* primaries */

struct pl_prim {
	struct pl *p;
	struct pl_chain *c;
	bool elig[PL_MAX_TARGETS];
	uint32_t cnt[PL_MAX_TARGETS];
	uint64_t lo[PL_MAX_TARGETS], hi[PL_MAX_TARGETS];
	int from_chain[PL_MAX_TARGETS], from_t[PL_MAX_TARGETS];
};

static int pl_slot_of(const struct pl_chain *c, uint32_t id)
{
	for (uint32_t k = 0; k < c->n; k++)
		if (c->m[k] == id)
			return (int)k;
	return -1;
}

/* Make target index y the primary of chain ci (a swap of two slots). */
static void pl_make_primary(struct pl_prim *q, unsigned ci, unsigned y)
{
	struct pl_chain *c = &q->c[ci];
	int s = pl_slot_of(c, q->p->t[y].id);
	int x = pl_idx(q->p, c->m[0]);
	uint32_t tmp = c->m[0];
	c->m[0] = c->m[s];
	c->m[s] = tmp;
	if (x >= 0)
		q->cnt[x]--;
	q->cnt[y]++;
}

/* Shift one primary away from `start` (forward: start leads too many) or towards it (!forward:
 * too few) along a path of chains. false: no path (cannot happen when bounds are feasible). */
static bool pl_shift(struct pl_prim *q, unsigned start, bool forward)
{
	struct pl *p = q->p;
	unsigned queue[PL_MAX_TARGETS], head = 0, tail = 0;
	bool seen[PL_MAX_TARGETS] = {false};
	seen[start] = true;
	queue[tail++] = start;
	while (head < tail) {
		unsigned x = queue[head++];
		for (unsigned ci = 0; ci < p->nc; ci++) {
			const struct pl_chain *c = &q->c[ci];
			if (!c->n)
				continue;
			int prim = pl_idx(p, c->m[0]);
			if (prim < 0 || !q->elig[prim])
				continue;
			for (uint32_t s = 1; s < c->n; s++) {
				int y = pl_idx(p, c->m[s]);
				if (y < 0 || !q->elig[y])
					continue;
				/* forward: edge x -> y when x leads c; backward: x <- prim when x
				 * is a member of c led by prim */
				unsigned from = forward ? (unsigned)prim : (unsigned)y;
				unsigned to = forward ? (unsigned)y : (unsigned)prim;
				if (from != x || seen[to])
					continue;
				seen[to] = true;
				q->from_chain[to] = (int)ci;
				q->from_t[to] = (int)x;
				bool end =
				    forward ? q->cnt[to] < q->hi[to] : q->cnt[to] > q->lo[to];
				if (!end) {
					queue[tail++] = to;
					continue;
				}
				/* walk back to start, moving one primary along every edge */
				for (unsigned v = to; v != start; v = (unsigned)q->from_t[v]) {
					unsigned ch = (unsigned)q->from_chain[v];
					pl_make_primary(q, ch,
							forward ? v : (unsigned)q->from_t[v]);
				}
				return true;
			}
		}
	}
	return false;
}

int pl_primaries(const struct pl_target *t, unsigned nt, struct pl_chain *c, unsigned nc)
{
	struct pl_prim *q = calloc(1, sizeof(*q));
	struct pl *p = malloc(sizeof(*p));
	uint32_t *was = c && nc <= PL_MAX_CHAINS ? malloc(nc * sizeof(*was) + 1) : NULL;
	int r = -ENOMEM;
	if (!q || !p || !was)
		goto out;
	r = pl_init(p, t, nt, 1, c, nc);
	if (r < 0)
		goto out;
	q->p = p;
	q->c = c;
	double f[PL_MAX_TARGETS] = {0};
	for (unsigned i = 0; i < nt; i++)
		q->elig[i] = t[i].role == PL_ACTIVE || t[i].role == PL_SPARE;
	for (unsigned ci = 0; ci < nc; ci++) {
		was[ci] = c[ci].n ? c[ci].m[0] : 0;
		unsigned e = 0;
		int first = -1;
		for (uint32_t s = 0; s < c[ci].n; s++) {
			int i = pl_idx(p, c[ci].m[s]);
			if (i >= 0 && q->elig[i]) {
				e++;
				if (first < 0)
					first = (int)s;
			}
		}
		if (!e)
			continue;
		for (uint32_t s = 0; s < c[ci].n; s++) {
			int i = pl_idx(p, c[ci].m[s]);
			if (i >= 0 && q->elig[i])
				f[i] += 1.0 / e;
		}
		if (first > 0) { /* an ineligible primary gives way to the first eligible member */
			uint32_t tmp = c[ci].m[0];
			c[ci].m[0] = c[ci].m[first];
			c[ci].m[first] = tmp;
		}
		q->cnt[pl_idx(p, c[ci].m[0])]++;
	}
	for (unsigned i = 0; i < nt; i++) {
		q->lo[i] = pl_floor(f[i]);
		q->hi[i] = pl_ceil(f[i]);
	}
	bool stuck[PL_MAX_TARGETS][2] = {{false}};
	for (uint64_t guard = 0; guard < (uint64_t)nc * nt + 1; guard++) {
		int v = -1;
		bool forward = false;
		for (unsigned i = 0; i < nt && v < 0; i++) {
			if (!q->elig[i])
				continue;
			if (q->cnt[i] > q->hi[i] && !stuck[i][1]) {
				v = (int)i;
				forward = true;
			} else if (q->cnt[i] < q->lo[i] && !stuck[i][0]) {
				v = (int)i;
			}
		}
		if (v < 0)
			break;
		if (!pl_shift(q, (unsigned)v, forward))
			stuck[v][forward] = true;
	}
	r = 0;
	for (unsigned ci = 0; ci < nc; ci++)
		r += c[ci].n && c[ci].m[0] != was[ci];
out:
	free(q);
	free(p);
	free(was);
	return r;
}

/* ---------------------------------------------------------------------------------------- */

int pl_split(const unsigned *weight, unsigned npools, unsigned nchains, unsigned *ret)
{
	uint64_t W = 0;
	if (!weight || !ret || !npools || nchains < npools)
		return -EINVAL;
	for (unsigned i = 0; i < npools; i++) {
		if (!weight[i])
			return -EINVAL;
		W += weight[i];
	}
	uint64_t sum = 0;
	for (unsigned i = 0; i < npools; i++) {
		ret[i] = (unsigned)((uint64_t)nchains * weight[i] / W);
		if (!ret[i])
			ret[i] = 1;
		sum += ret[i];
	}
	/* exact remainders: ideal_i - ret_i = (nchains * w_i - ret_i * W) / W */
	while (sum != nchains) {
		bool grow = sum < nchains;
		int best = -1;
		int64_t bestd = 0;
		for (unsigned i = 0; i < npools; i++) {
			int64_t d = (int64_t)nchains * weight[i] - (int64_t)ret[i] * (int64_t)W;
			if (!grow && (ret[i] <= 1))
				continue;
			if (best < 0 || (grow ? d > bestd : d < bestd)) {
				best = (int)i;
				bestd = d;
			}
		}
		if (best < 0)
			return -EINVAL;
		if (grow) {
			ret[best]++;
			sum++;
		} else {
			ret[best]--;
			sum--;
		}
	}
	return 0;
}
