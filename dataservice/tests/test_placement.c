/* test_placement — PL-1..PL-6 (placement.h) over many shapes: 1..12 targets on 1..4 nodes,
 * 1..3 replicas, several chain counts; targets added one at a time and drained; weights;
 * frozen and spare targets; and a random walk of adds and drains whose length comes from
 * BRAIDFS_PL_ROUNDS (default 40).
 *
 * Every check recomputes what it needs from the table itself (fair shares, primary shares,
 * node spread) instead of asking placement.c, except "held == quota", which pins the quotas to
 * the table.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dataservice/placement.h"

#define MAXT 32
#define MAXC 256

struct shape {
	struct pl_target t[MAXT];
	unsigned nt, R, nc;
	struct pl_chain c[MAXC];
};

static int tindex(const struct shape *s, uint32_t id)
{
	for (unsigned i = 0; i < s->nt; i++)
		if (s->t[i].id == id)
			return (int)i;
	return -1;
}

static unsigned held(const struct shape *s, uint32_t id)
{
	unsigned n = 0;
	for (unsigned c = 0; c < s->nc; c++)
		for (uint32_t k = 0; k < s->c[c].n; k++)
			n += s->c[c].m[k] == id;
	return n;
}

static unsigned prim(const struct shape *s, uint32_t id)
{
	unsigned n = 0;
	for (unsigned c = 0; c < s->nc; c++)
		n += s->c[c].n && s->c[c].m[0] == id;
	return n;
}

static void add_target(struct shape *s, uint32_t node, uint64_t size)
{
	assert_true(s->nt < MAXT);
	struct pl_target *t = &s->t[s->nt];
	t->id = 1;
	for (unsigned i = 0; i < s->nt; i++) /* ids never reused, as META-8 */
		if (s->t[i].id >= t->id)
			t->id = s->t[i].id + 1;
	t->node = node;
	t->size = size;
	t->role = PL_ACTIVE;
	s->nt++;
}

static void make(struct shape *s, unsigned nt, unsigned nodes, unsigned R, unsigned nc)
{
	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < nt; i++)
		add_target(s, i % nodes, 0);
	s->R = R;
	s->nc = nc;
	for (unsigned c = 0; c < nc; c++)
		s->c[c].id = c;
	assert_int_equal(pl_build(s->t, s->nt, R, s->c, nc), 0);
}

static unsigned weight(const struct shape *s, unsigned i)
{
	uint64_t smin = 0;
	for (unsigned j = 0; j < s->nt; j++)
		if (s->t[j].role == PL_ACTIVE && s->t[j].size && (!smin || s->t[j].size < smin))
			smin = s->t[j].size;
	if (!smin || !s->t[i].size)
		return 1;
	uint64_t w = (s->t[i].size + smin / 2) / smin;
	return w < 1 ? 1 : w > PL_MAX_WEIGHT ? PL_MAX_WEIGHT : (unsigned)w;
}

/* Every rule, checked from the table. `where` names the case in failure messages. */
static void check(const struct shape *s, const char *where)
{
	unsigned nodes[MAXT], nn = 0, nact[MAXT] = {0};
	for (unsigned i = 0; i < s->nt; i++) {
		if (s->t[i].role != PL_ACTIVE)
			continue;
		unsigned n = 0;
		while (n < nn && nodes[n] != s->t[i].node)
			n++;
		if (n == nn)
			nodes[nn++] = s->t[i].node;
		nact[n]++;
	}
	unsigned k = nn >= s->R ? 1 : (s->R + nn - 1) / nn;
	uint64_t M = 0;
	for (unsigned c = 0; c < s->nc; c++) {
		const struct pl_chain *ch = &s->c[c];
		if (ch->n != s->R)
			fail_msg("%s: chain %u has %u members, not %u", where, ch->id, ch->n, s->R);
		for (uint32_t a = 0; a < ch->n; a++) {
			int i = tindex(s, ch->m[a]);
			if (i < 0)
				fail_msg("%s: chain %u names unknown target %u", where, ch->id,
					 ch->m[a]);
			if (s->t[i].role == PL_DRAIN)
				fail_msg("%s: chain %u still holds draining target %u", where,
					 ch->id, ch->m[a]);
			for (uint32_t b = a + 1; b < ch->n; b++) /* PL-1 */
				if (ch->m[a] == ch->m[b])
					fail_msg("%s: chain %u holds target %u twice", where,
						 ch->id, ch->m[a]);
			M++;
		}
		for (unsigned n = 0; n < nn; n++) { /* PL-2 */
			unsigned on = 0;
			for (uint32_t a = 0; a < ch->n; a++)
				on += s->t[tindex(s, ch->m[a])].node == nodes[n];
			unsigned room = nact[n] < k ? nact[n] : k;
			if (on > room)
				fail_msg("%s: chain %u has %u members on node %u (at most %u)",
					 where, ch->id, on, nodes[n], room);
		}
	}
	/* PL-4: held == quota, and +-1 of the plain fair share when no cap binds */
	uint32_t q[MAXT];
	assert_int_equal(pl_quotas(s->t, s->nt, s->R, s->c, s->nc, q), 0);
	double W = 0;
	for (unsigned i = 0; i < s->nt; i++)
		if (s->t[i].role == PL_ACTIVE)
			W += weight(s, i);
	bool capped = false;
	for (unsigned n = 0; n < nn; n++) {
		double wn = 0;
		for (unsigned i = 0; i < s->nt; i++)
			if (s->t[i].role == PL_ACTIVE && s->t[i].node == nodes[n]) {
				wn += weight(s, i);
				capped |= M * weight(s, i) / W > s->nc;
			}
		capped |= M * wn / W > (double)s->nc * (nact[n] < k ? nact[n] : k);
	}
	for (unsigned i = 0; i < s->nt; i++) {
		unsigned h = held(s, s->t[i].id);
		if (s->t[i].role != PL_ACTIVE)
			continue;
		if (h != q[i]) {
			for (unsigned j = 0; j < s->nt; j++)
				print_message(
				    "  target %u node %u size %llu role %d holds %u quota %u\n",
				    s->t[j].id, s->t[j].node, (unsigned long long)s->t[j].size,
				    s->t[j].role, held(s, s->t[j].id), q[j]);
			fail_msg("%s: target %u holds %u chains, quota %u", where, s->t[i].id, h,
				 q[i]);
		}
		double fair = M * weight(s, i) / W;
		if (!capped && (h + 1 <= fair + 1e-9 || h >= fair + 1 - 1e-9))
			fail_msg("%s: target %u holds %u chains, fair share %.3f", where,
				 s->t[i].id, h, fair);
	}
	/* PL-5 */
	double f[MAXT] = {0};
	for (unsigned c = 0; c < s->nc; c++) {
		unsigned e = 0;
		for (uint32_t a = 0; a < s->c[c].n; a++) {
			enum pl_role r = s->t[tindex(s, s->c[c].m[a])].role;
			e += r == PL_ACTIVE || r == PL_SPARE;
		}
		for (uint32_t a = 0; a < s->c[c].n && e; a++) {
			int i = tindex(s, s->c[c].m[a]);
			if (s->t[i].role == PL_ACTIVE || s->t[i].role == PL_SPARE)
				f[i] += 1.0 / e;
		}
	}
	for (unsigned i = 0; i < s->nt; i++) {
		unsigned p = prim(s, s->t[i].id);
		if (p + 1 <= f[i] + 1e-9 || p >= f[i] + 1 - 1e-9)
			fail_msg("%s: target %u leads %u chains, primary share %.3f", where,
				 s->t[i].id, p, f[i]);
	}
}

/* Does PL-2 leave every choice open (one node, or one replica)? */
static bool free_nodes(const struct shape *s)
{
	for (unsigned i = 1; i < s->nt; i++)
		if (s->t[i].node != s->t[0].node && s->R > 1)
			return false;
	return true;
}

/* Members on a node beyond what PL-2 allows now (the active targets' nodes). */
static unsigned crowded(const struct shape *s)
{
	uint32_t nodes[MAXT];
	unsigned nn = 0, extra = 0;
	for (unsigned i = 0; i < s->nt; i++) {
		unsigned n = 0;
		while (n < nn && nodes[n] != s->t[i].node)
			n++;
		if (n == nn && s->t[i].role == PL_ACTIVE)
			nodes[nn++] = s->t[i].node;
	}
	unsigned k = nn >= s->R ? 1 : (s->R + nn - 1) / nn;
	for (unsigned c = 0; c < s->nc; c++)
		for (unsigned n = 0; n < nn; n++) {
			unsigned on = 0;
			for (uint32_t a = 0; a < s->c[c].n; a++)
				on += s->t[tindex(s, s->c[c].m[a])].node == nodes[n];
			extra += on > k ? on - k : 0;
		}
	return extra;
}

/* Run pl_plan; check that the moves, replayed on the old table, give the new member sets, and
 * that the count is minimal (PL-6). Returns the number of moves. */
static unsigned plan(struct shape *s, const char *where)
{
	struct pl_chain before[MAXC];
	struct pl_move mv[MAXC * PL_MAX_REPLICAS];
	unsigned n = 99999;
	uint32_t stuck = 12345;
	uint32_t q[MAXT];
	memcpy(before, s->c, sizeof(before));

	/* the minimum: drained memberships + what underfull targets lack */
	unsigned need = 0;
	long deficit = 0;
	assert_int_equal(pl_quotas(s->t, s->nt, s->R, s->c, s->nc, q), 0);
	for (unsigned i = 0; i < s->nt; i++) {
		unsigned h = held(s, s->t[i].id);
		if (s->t[i].role == PL_DRAIN)
			need += h;
		if (s->t[i].role == PL_ACTIVE && q[i] > h)
			deficit += q[i] - h;
	}
	int r = pl_plan(s->t, s->nt, s->R, s->c, s->nc, mv, MAXC * PL_MAX_REPLICAS, &n, &stuck);
	if (r != 0)
		fail_msg("%s: pl_plan = %d (stuck chain %u)", where, r, stuck);
	unsigned least = need > (unsigned)deficit ? need : (unsigned)deficit;
	unsigned spread = crowded(s); /* PL-2 repairs come on top */
	/* exact when neither PL-2 (nodes) nor PL-1 (a target in half the chains or more, or in
	 * most of a drained target's chains) can keep a target out of the chains it would take
	 * from */
	bool exact = free_nodes(s) && need == 0; /* a drain's chains may all hold the taker */
	for (unsigned i = 0; i < s->nt; i++)
		exact &= 2 * q[i] <= s->nc;
	if (n < least || n > (exact ? least : 2 * (least + spread) + 2))
		fail_msg("%s: %u moves; the minimum is max(%u drained, %ld missing)%s", where, n,
			 need, deficit, exact ? "" : " (hops allowed: 2x + 2)");
	for (unsigned i = 0; i < n; i++) {
		struct pl_chain *b = NULL;
		for (unsigned c = 0; c < s->nc; c++)
			if (before[c].id == mv[i].chain)
				b = &before[c];
		assert_non_null(b);
		bool found = false;
		for (uint32_t k = 0; k < b->n; k++)
			if (b->m[k] == mv[i].from) {
				b->m[k] = mv[i].to;
				found = true;
			}
		if (!found)
			fail_msg("%s: move %u takes target %u out of chain %u, which it is not in",
				 where, i, mv[i].from, mv[i].chain);
	}
	for (unsigned c = 0; c < s->nc; c++) {
		assert_int_equal(before[c].n, s->c[c].n);
		for (uint32_t k = 0; k < s->c[c].n; k++) {
			bool in = false;
			for (uint32_t j = 0; j < before[c].n; j++)
				in |= before[c].m[j] == s->c[c].m[k];
			if (!in)
				fail_msg("%s: chain %u holds target %u, which no move put there",
					 where, s->c[c].id, s->c[c].m[k]);
		}
	}
	return n;
}

/* ---------------------------------------------------------------------------------------- */

static void t_build_shapes(void **state)
{
	static const unsigned chains[] = {0, 64, 37, 12};
	char where[128];
	struct shape *s = malloc(sizeof(*s));
	unsigned cases = 0;
	for (unsigned nt = 1; nt <= 12; nt++)
		for (unsigned nodes = 1; nodes <= 4 && nodes <= nt; nodes++)
			for (unsigned R = 1; R <= 3 && R <= nt; R++)
				for (unsigned ci = 0; ci < 4; ci++) {
					unsigned nc = chains[ci] ? chains[ci] : nt;
					if (nc < nt)
						continue;
					snprintf(where, sizeof(where),
						 "build T=%u nodes=%u R=%u chains=%u", nt, nodes, R,
						 nc);
					make(s, nt, nodes, R, nc);
					check(s, where);
					cases++;
				}
	assert_true(cases > 300);
	free(s);
}

static void t_build_lopsided_nodes(void **state)
{
	/* 5 targets on node 0, one alone on node 1: with 2 replicas every chain needs node 1
	 * (PL-2), so its target holds every chain and node 0's five share the other slot. */
	struct shape *s = malloc(sizeof(*s));
	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < 5; i++)
		add_target(s, 0, 0);
	add_target(s, 1, 0);
	s->R = 2;
	s->nc = 64;
	for (unsigned c = 0; c < 64; c++)
		s->c[c].id = c;
	assert_int_equal(pl_build(s->t, s->nt, 2, s->c, 64), 0);
	check(s, "lopsided");
	assert_int_equal(held(s, 6), 64);
	for (uint32_t id = 1; id <= 5; id++) {
		assert_true(held(s, id) >= 12 && held(s, id) <= 13);
	}
	/* three replicas over two nodes: at most two members of a chain per node */
	s->R = 3;
	assert_int_equal(pl_build(s->t, s->nt, 3, s->c, 64), 0);
	check(s, "lopsided R=3");
	free(s);
}

static void t_build_errors(void **state)
{
	struct pl_target t[3] = {{1, 0, 0, PL_ACTIVE}, {2, 0, 0, PL_ACTIVE}, {2, 1, 0, PL_ACTIVE}};
	struct pl_chain c[4] = {{.id = 0}, {.id = 1}, {.id = 2}, {.id = 3}};
	assert_int_equal(pl_build(t, 2, 3, c, 4), -EINVAL); /* more replicas than targets */
	assert_int_equal(pl_build(t, 3, 2, c, 4), -EINVAL); /* an id twice */
	assert_int_equal(pl_build(t, 2, 0, c, 4), -EINVAL);
	assert_int_equal(pl_build(t, 2, 9, c, 4), -EINVAL);
	assert_int_equal(pl_build(t, 2, 1, c, 0), -EINVAL);
	t[1].role = PL_DRAIN;
	assert_int_equal(pl_build(t, 2, 1, c, 4), -EINVAL); /* a new volume has no roles */
	t[1].role = (enum pl_role)7;
	assert_int_equal(pl_build(t, 2, 1, c, 4), -EINVAL);
	t[1].role = PL_ACTIVE;
	assert_int_equal(pl_build(t, 2, 2, c, 4), 0);
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(c[i].id, i);
		assert_int_equal(c[i].n, 2);
	}
}

/* Grow every shape one target at a time up to 12: each add moves exactly the new target's
 * quota (PL-6), all of it to the new target, and every rule holds after. */
static void t_add_targets(void **state)
{
	char where[160];
	struct shape *s = malloc(sizeof(*s));
	for (unsigned nodes = 1; nodes <= 4; nodes++)
		for (unsigned R = 1; R <= 3; R++)
			for (unsigned nc = 16; nc <= 64; nc += 48) {
				unsigned start = R > nodes ? R : nodes;
				make(s, start, nodes, R, nc);
				for (unsigned nt = start + 1; nt <= 12; nt++) {
					add_target(s, (nt - 1) % nodes, 0);
					snprintf(where, sizeof(where),
						 "add target %u (nodes=%u R=%u chains=%u)", nt,
						 nodes, R, nc);
					uint32_t q[MAXT];
					assert_int_equal(pl_quotas(s->t, s->nt, R, s->c, nc, q), 0);
					unsigned n = plan(s, where);
					if (held(s, s->t[nt - 1].id) != q[nt - 1])
						fail_msg("%s: the new target got %u, quota %u",
							 where, held(s, s->t[nt - 1].id),
							 q[nt - 1]);
					if (free_nodes(s) && n != q[nt - 1])
						fail_msg(
						    "%s: %u moves, the new target's quota is %u",
						    where, n, q[nt - 1]);
					check(s, where);
				}
			}
	free(s);
}

/* Drain each target of several shapes: exactly its memberships move, rules hold after. */
static void t_drain_targets(void **state)
{
	char where[160];
	struct shape *s = malloc(sizeof(*s)), *orig = malloc(sizeof(*orig));
	for (unsigned nt = 2; nt <= 12; nt++)
		for (unsigned nodes = 1; nodes <= 4 && nodes <= nt; nodes++)
			for (unsigned R = 1; R <= 3 && R < nt; R++) {
				make(orig, nt, nodes, R, 64);
				for (unsigned d = 0; d < nt; d++) {
					*s = *orig;
					s->t[d].role = PL_DRAIN;
					snprintf(where, sizeof(where),
						 "drain target %u of T=%u nodes=%u R=%u", d + 1, nt,
						 nodes, R);
					unsigned had = held(s, s->t[d].id);
					unsigned n = plan(s, where);
					assert_int_equal(held(s, s->t[d].id), 0);
					if (free_nodes(s) && n != had)
						fail_msg("%s: %u moves for %u memberships", where,
							 n, had);
					check(s, where);
				}
			}
	free(s);
	free(orig);
}

/* No other target can take a chain: -ENOSPC naming it, table unchanged; a spare takes it. */
static void t_drain_nowhere(void **state)
{
	struct shape *s = malloc(sizeof(*s));
	struct pl_chain before[MAXC];
	struct pl_move mv[64];
	unsigned n = 7;
	uint32_t stuck = 999;
	make(s, 2, 1, 2, 8);
	memcpy(before, s->c, sizeof(before));
	s->t[1].role = PL_DRAIN;
	assert_int_equal(pl_plan(s->t, 2, 2, s->c, 8, mv, 64, &n, &stuck), -ENOSPC);
	assert_int_equal(n, 0);
	assert_int_equal(stuck, 0);
	assert_memory_equal(before, s->c, sizeof(before));
	/* a spare (another pool) takes every membership, marked cross-pool */
	add_target(s, 5, 0);
	s->t[2].role = PL_SPARE;
	assert_int_equal(pl_plan(s->t, 3, 2, s->c, 8, mv, 64, &n, &stuck), 0);
	assert_int_equal(n, 8);
	for (unsigned i = 0; i < n; i++) {
		assert_true(mv[i].cross_pool);
		assert_int_equal(mv[i].from, 2);
		assert_int_equal(mv[i].to, 3);
	}
	assert_int_equal(held(s, 3), 8);
	/* too small a move array: -E2BIG, unchanged */
	make(s, 3, 3, 2, 8);
	memcpy(before, s->c, sizeof(before));
	s->t[0].role = PL_DRAIN;
	assert_int_equal(pl_plan(s->t, 3, 2, s->c, 8, mv, 2, &n, &stuck), -E2BIG);
	assert_memory_equal(before, s->c, sizeof(before));
	free(s);
}

/* A drain that can keep PL-2 only by breaking it: 3 targets on 3 nodes, R=3, one drained
 * with a fourth target on the node of another. */
static void t_drain_relaxed(void **state)
{
	struct shape *s = malloc(sizeof(*s));
	struct pl_move mv[64];
	unsigned n = 0;
	make(s, 3, 3, 3, 8);
	add_target(s, 1, 0); /* id 4 shares node 1 with target 2 */
	s->t[0].role = PL_DRAIN;
	assert_int_equal(pl_plan(s->t, 4, 3, s->c, 8, mv, 64, &n, NULL), 0);
	assert_int_equal(n, 8);
	for (unsigned i = 0; i < n; i++) {
		assert_int_equal(mv[i].to, 4);
		assert_false(mv[i].relaxed); /* 2 active nodes < 3 replicas: k = 2 allows it */
	}
	check(s, "relaxed drain");
	free(s);
}

/* Spare memberships go back into the pool when it can take them; frozen targets keep theirs
 * and take none. */
static void t_spare_and_frozen(void **state)
{
	struct shape *s = malloc(sizeof(*s));
	make(s, 4, 4, 2, 32);
	/* a frozen target (offline) keeps its chains through a rebalance */
	s->t[3].role = PL_FROZEN;
	unsigned h3 = held(s, 4);
	add_target(s, 5, 0);
	plan(s, "frozen");
	assert_int_equal(held(s, 4), h3);
	/* target 2 moves to another pool: it is a spare now and its chains come back */
	s->t[3].role = PL_ACTIVE;
	s->t[1].role = PL_SPARE;
	plan(s, "spare back");
	assert_int_equal(held(s, 2), 0);
	s->t[1].role = PL_ACTIVE;
	plan(s, "spare rejoins");
	check(s, "spare rejoins");
	free(s);
}

static void t_weights(void **state)
{
	struct shape *s = malloc(sizeof(*s));
	memset(s, 0, sizeof(*s));
	const uint64_t TB = 1000000000000ull;
	add_target(s, 0, 1 * TB);
	add_target(s, 1, 1 * TB);
	add_target(s, 2, 3 * TB);
	add_target(s, 3, 3 * TB);
	s->R = 2;
	s->nc = 64;
	for (unsigned c = 0; c < 64; c++)
		s->c[c].id = c;
	assert_int_equal(pl_build(s->t, 4, 2, s->c, 64), 0);
	check(s, "weights 1:1:3:3");
	/* 128 memberships, weights 1+1+3+3 = 8: 16, 16, 48, 48 */
	assert_int_equal(held(s, 1), 16);
	assert_int_equal(held(s, 3), 48);
	/* within 1.5x: equal weights */
	s->t[2].size = s->t[3].size = 14 * TB / 10;
	assert_int_equal(pl_build(s->t, 4, 2, s->c, 64), 0);
	check(s, "weights 1:1.4");
	assert_int_equal(held(s, 1), 32);
	assert_int_equal(held(s, 3), 32);
	/* one huge target is capped at one membership per chain; the rest spreads */
	s->t[3].size = 100 * TB;
	assert_int_equal(pl_build(s->t, 4, 2, s->c, 64), 0);
	check(s, "weights capped");
	assert_int_equal(held(s, 4), 64);
	for (uint32_t id = 1; id <= 3; id++)
		assert_true(held(s, id) >= 21 && held(s, id) <= 22);
	free(s);
}

/* Balanced primaries stay put; a skewed table gets the fewest changes. */
static void t_primaries(void **state)
{
	struct shape *s = malloc(sizeof(*s));
	make(s, 4, 1, 2, 64);
	assert_int_equal(pl_primaries(s->t, s->nt, s->c, s->nc), 0);
	/* make target 1 primary everywhere it is a member */
	unsigned moved = 0;
	for (unsigned c = 0; c < s->nc; c++)
		for (uint32_t k = 1; k < s->c[c].n; k++)
			if (s->c[c].m[k] == 1) {
				s->c[c].m[k] = s->c[c].m[0];
				s->c[c].m[0] = 1;
				moved++;
			}
	assert_true(moved > 0);
	int r = pl_primaries(s->t, s->nt, s->c, s->nc);
	assert_true(r > 0 && (unsigned)r <= moved);
	check(s, "primaries");
	free(s);
}

static void t_split(void **state)
{
	unsigned w[3] = {2, 1, 1}, out[3];
	assert_int_equal(pl_split(w, 3, 64, out), 0);
	assert_int_equal(out[0], 32);
	assert_int_equal(out[1], 16);
	assert_int_equal(out[2], 16);
	unsigned w2[3] = {100, 1, 1};
	assert_int_equal(pl_split(w2, 3, 4, out), 0);
	assert_int_equal(out[0] + out[1] + out[2], 4);
	assert_int_equal(out[1], 1);
	assert_int_equal(out[2], 1);
	unsigned w3[2] = {1, 1};
	assert_int_equal(pl_split(w3, 2, 7, out), 0);
	assert_int_equal(out[0], 4);
	assert_int_equal(out[1], 3);
	assert_int_equal(pl_split(w3, 2, 1, out), -EINVAL);
	w3[1] = 0;
	assert_int_equal(pl_split(w3, 2, 8, out), -EINVAL);
}

/* A random walk of adds and drains (drained targets leave the table). */
static void t_random_walk(void **state)
{
	const char *env = getenv("BRAIDFS_PL_ROUNDS");
	unsigned rounds = env ? (unsigned)strtoul(env, NULL, 10) : 40;
	unsigned seed = 12345;
	char where[160];
	struct shape *s = malloc(sizeof(*s));
	for (unsigned round = 0; round < rounds; round++) {
		unsigned R = 1 + rand_r(&seed) % 3, nodes = 1 + rand_r(&seed) % 4;
		unsigned nt = R + rand_r(&seed) % 4;
		make(s, nt, nodes, R, 16 + rand_r(&seed) % 49);
		for (unsigned step = 0; step < 8; step++) {
			bool add = s->nt <= R || (s->nt < 14 && rand_r(&seed) % 2);
			snprintf(where, sizeof(where), "round %u step %u (%s, T=%u R=%u)", round,
				 step, add ? "add" : "drain", s->nt, R);
			if (add) {
				add_target(s, rand_r(&seed) % (nodes + 1),
					   (1 + rand_r(&seed) % 3) * 1000000000ull);
				plan(s, where);
			} else {
				unsigned d = rand_r(&seed) % s->nt;
				s->t[d].role = PL_DRAIN;
				plan(s, where);
				s->t[d] = s->t[--s->nt]; /* gone */
			}
			check(s, where);
		}
	}
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(t_build_shapes),  cmocka_unit_test(t_build_lopsided_nodes),
	    cmocka_unit_test(t_build_errors),  cmocka_unit_test(t_add_targets),
	    cmocka_unit_test(t_drain_targets), cmocka_unit_test(t_drain_nowhere),
	    cmocka_unit_test(t_drain_relaxed), cmocka_unit_test(t_spare_and_frozen),
	    cmocka_unit_test(t_weights),       cmocka_unit_test(t_primaries),
	    cmocka_unit_test(t_split),	       cmocka_unit_test(t_random_walk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
