/* placement — which targets hold which chains.
 *
 * WHAT IT OWNS
 *   Pure functions over plain arrays (no I/O, no locks, nothing kept between calls) that build
 *   a volume's chain table at format time (pl_build), plan the membership moves that bring a
 *   pool back to balance after a target joined it or while one leaves it (pl_plan), and order
 *   each chain's members so that primaries spread evenly (pl_primaries). The caller carries a
 *   plan out: for each move, the chain's data is rebuilt onto the new member first
 *   (ds_rebuild), then the old member is dropped (ds_chain_set), so a chain never has fewer
 *   replicas than before at any moment.
 *
 * WHY A FIXED NUMBER OF CHAINS
 *   The data service maps chunk (ino, idx) to chains[(seed(ino) + idx) % nchains] (ds.h
 *   ADDRESSING). Changing nchains would move almost every chunk, so a volume gets its chain
 *   count at format time (default 64, at least the number of targets) and keeps it for life.
 *   Growth and shrinkage change which targets are *members* of chains, never the count.
 *
 * MODEL
 *   A pool is the set of targets a chain may take members from. Every target has a node (the
 *   failure domain: targets with the same node number share a machine) and a size. Each target
 *   of a pool plays one role in a call:
 *     PL_ACTIVE  takes its share of the pool's memberships and keeps it;
 *     PL_DRAIN   must give up every membership (device drain); takes none;
 *     PL_FROZEN  keeps what it has, takes nothing, not counted in the shares (offline, or
 *                unreachable: it cannot be written now);
 *     PL_SPARE   outside the pool: takes a membership only when no PL_ACTIVE target can
 *                (drain "then of any pool"); its memberships are moved back when possible.
 *   A member id that is in no pl_target counts as PL_FROZEN on a node of its own.
 *
 * RULES (cited as PL-n; the unit test checks each one over many shapes)
 *   PL-1  A chain's members are distinct targets.
 *   PL-2  A chain's members are on distinct nodes when the pool's PL_ACTIVE targets span at
 *         least `replicas` nodes. With N < replicas nodes, no node holds more than
 *         ceil(replicas / N) members of one chain. A move that cannot keep this is marked
 *         `relaxed` (only a drain ever needs one).
 *   PL-3  Weights (kept simple on purpose): a target's weight is its size divided by the
 *         smallest size among the PL_ACTIVE targets, rounded to the nearest integer, at least 1
 *         and at most PL_MAX_WEIGHT; size 0 (unknown) weighs 1. Targets within 1.5x of each
 *         other therefore weigh the same; a 4 TB disk next to 1 TB disks weighs 4.
 *   PL-4  Quotas: the M memberships held by PL_ACTIVE/PL_DRAIN/PL_SPARE targets are split over
 *         the PL_ACTIVE targets in proportion to weight, each share capped by PL-1 (at most one
 *         membership per chain) and PL-2 (at most nchains x min(k, targets on the node) per
 *         node), the excess spread over the others ("water filling"). A target's quota is its
 *         share rounded down or up (so it is within +-1 of its fair share); the units left
 *         after rounding down go to the largest fractions first, then to targets that already
 *         hold more than their rounded-down share (fewer moves), then to lower ids.
 *   PL-5  Primaries: with e_c the members of chain c that may be primary (PL_ACTIVE or
 *         PL_SPARE), target i's primary share is f_i = sum over its chains of 1 / e_c, and it is
 *         the primary of floor(f_i) or ceil(f_i) chains. Equal targets with equal shares thus
 *         lead nchains / T chains, +-1.
 *   PL-6  Minimal movement: pl_plan moves the memberships of PL_DRAIN targets and then, while
 *         the pool is out of balance, one membership at a time from a target above its quota to
 *         one below it: max(drained memberships, sum of max(0, quota - held)) moves when
 *         every underfull target can take directly. When PL-2 (its node is already in the
 *         chain) or PL-1 (it is already a member) keeps a target out of every chain an
 *         overfull target is in, the membership travels in hops (b takes from v1, v1 from an
 *         overfull v2), one move each; the unit test bounds that at twice the minimum. A chain that
 * breaks PL-2 as the pool stands now (a new node made it possible) first gets its crowded member
 * moved to a node it lacks. A chain's surviving members keep their slots; the new member takes the
 * slot of the one it replaces. Primaries change by reordering only (no data).
 *
 * THREADS: none of its own; every function works only on its arguments.
 * ERRORS: 0 or -errno: -EINVAL bad arguments (e.g. fewer targets than replicas), -ENOSPC a
 *   drain with nowhere to go, -E2BIG more moves than the caller's array holds.
 */
#ifndef BRAIDFS_PLACEMENT_H
#define BRAIDFS_PLACEMENT_H

#include <stdbool.h>
#include <stdint.h>

#define PL_MAX_REPLICAS 8 /* = DS_MAX_REPLICAS = META_MAX_REPLICAS */
#define PL_MAX_TARGETS	256
#define PL_MAX_CHAINS	4096
#define PL_MAX_WEIGHT	16

enum pl_role { PL_ACTIVE = 0, PL_DRAIN = 1, PL_FROZEN = 2, PL_SPARE = 3 };

struct pl_target {
	uint32_t id;
	uint32_t node; /* failure domain; equal numbers = same node */
	uint64_t size; /* bytes; 0 = unknown (weight 1) */
	enum pl_role role;
};

struct pl_chain {
	uint32_t id;
	uint32_t n;		     /* members */
	uint32_t m[PL_MAX_REPLICAS]; /* target ids, m[0] = primary */
};

struct pl_move {
	uint32_t chain; /* chain id */
	uint32_t from, to;
	bool cross_pool; /* `to` is a PL_SPARE (the pool had no target that could take it) */
	bool relaxed;	 /* PL-2 could not be kept for this chain */
};

/* Fill c[0..nc-1] (their ids are kept, n and m are written) with `replicas` members each for a
 * new volume over t[0..nt-1] (every target PL_ACTIVE). PL-1..PL-5 hold on return. -EINVAL:
 * nt < replicas, replicas outside 1..PL_MAX_REPLICAS, nc < 1, nt or nc above the maxima. */
int pl_build(const struct pl_target *t, unsigned nt, unsigned replicas, struct pl_chain *c,
	     unsigned nc);

/* The quota (PL-4) of every t[i] for the chains c (0 for any role but PL_ACTIVE) into
 * ret_quota[i], given the volume's replica count. -EINVAL as above. */
int pl_quotas(const struct pl_target *t, unsigned nt, unsigned replicas, const struct pl_chain *c,
	      unsigned nc, uint32_t *ret_quota);

/* Plan the moves that take every membership off PL_DRAIN targets and bring PL_ACTIVE targets
 * to their quotas (PL-6), and rewrite c in place to the table after the moves, with primaries
 * balanced (PL-5). moves gets the moves in the order to run them, *ret_nmoves their count.
 * -ENOSPC: a PL_DRAIN membership has no target that can take it (every other target is
 * already in that chain); *ret_stuck_chain names the chain and c is left unchanged.
 * -E2BIG: more than max_moves moves (c unchanged). */
int pl_plan(const struct pl_target *t, unsigned nt, unsigned replicas, struct pl_chain *c,
	    unsigned nc, struct pl_move *moves, unsigned max_moves, unsigned *ret_nmoves,
	    uint32_t *ret_stuck_chain);

/* Reorder the members of every chain so that PL-5 holds, moving as few primaries as it can
 * (a chain keeps its primary unless a shift is needed). Returns the number of chains whose
 * primary changed, or -EINVAL. */
int pl_primaries(const struct pl_target *t, unsigned nt, struct pl_chain *c, unsigned nc);

/* Split nchains over npools pools in proportion to weight[p] (largest remainder, ties to the
 * lower index), every pool at least one chain. -EINVAL: nchains < npools or a zero weight. */
int pl_split(const unsigned *weight, unsigned npools, unsigned nchains, unsigned *ret);

#endif
