/* fence — the self-fencing clock of a node (DIST-4, META-10). Prefix fence_.
 *
 * A node may acknowledge writes only while its lease in the metadata database is valid. It
 * cannot read the database's clock, so it counts on its own monotonic clock from the moment it
 * SENT the renewal that succeeded: the database set lease_until = (its now() when it ran the
 * statement) + lease, and that moment is after the send, so the node's view expires first
 * (clock rates assumed equal; the manager's grace absorbs drift). A node whose view expired
 * must not trust its chain table either (chains may have changed while it was cut off): it
 * acknowledges again only after a renewal succeeded AND its chain table was re-read
 * (fence_renewed with refreshed = true).
 *
 * States:  FENCED --renewed(refreshed)--> VALID --(now >= until)--> FENCED
 *          VALID --renewed--> VALID (until moves forward, never back)
 *          FENCED --renewed(!refreshed)--> FENCED
 *
 * until_ns is read by request threads and written by the heartbeat thread: __atomic.
 *
 * READS FROM A SECONDARY (struct fence_reads, docs/distributed.md "Reads")
 *   A member that is not the primary may serve a client's read only while it knows it is
 *   still a member: the primary that removes a failed member commits the change and
 *   acknowledges at once, and the member hears of it only when it re-reads its chain table.
 *   So a node serves such reads only while its chain table was read (SENT) less than `ms`
 *   ago (fence_reads_ok), and a primary that took a member out of a chain holds back every
 *   acknowledgement of that chain until `ms` after that commit returned (fence_reads_hold, then
 *   fence_reads_wait_ns). Any read the removed member serves after that hold ended started
 *   from a table read sent after the commit, which lists it no more (clock rates assumed
 *   equal, as for the lease). The read time and a hold (a plain int64_t, one per chain at the
 *   primary) only grow; __atomic.
 */
#ifndef BRAIDFS_FENCE_H
#define BRAIDFS_FENCE_H

#include <stdbool.h>
#include <stdint.h>

struct fence {
	int64_t until_ns; /* monotonic; 0: fenced (never valid yet) */
};

static inline void fence_init(struct fence *f)
{
	__atomic_store_n(&f->until_ns, 0, __ATOMIC_RELEASE);
}

/* May the node acknowledge at monotonic time now? */
static inline bool fence_valid(const struct fence *f, int64_t now_ns)
{
	return now_ns < __atomic_load_n(&f->until_ns, __ATOMIC_ACQUIRE);
}

/* Has the node's view of its lease lapsed (it must re-read its chains before the next
 * renewal counts)? */
static inline bool fence_lapsed(const struct fence *f, int64_t now_ns)
{
	return !fence_valid(f, now_ns);
}

/* A renewal sent at sent_ns succeeded. A lapsed fence becomes valid only when the caller
 * re-read its chain table after the lapse (refreshed); a valid one is extended. Returns
 * whether the fence is valid at now_ns afterwards. */
static inline bool fence_renewed(struct fence *f, int64_t sent_ns, uint32_t lease_ms,
				 bool refreshed, int64_t now_ns)
{
	int64_t until = sent_ns + (int64_t)lease_ms * 1000000LL;
	int64_t cur = __atomic_load_n(&f->until_ns, __ATOMIC_ACQUIRE);
	if (fence_lapsed(f, now_ns) && !refreshed)
		return false;
	if (until > cur)
		__atomic_store_n(&f->until_ns, until, __ATOMIC_RELEASE);
	return fence_valid(f, now_ns);
}

/* Stop acknowledging at once (shutdown, a renewal answered that the lease is gone). */
static inline void fence_drop(struct fence *f)
{
	__atomic_store_n(&f->until_ns, 0, __ATOMIC_RELEASE);
}

/* Reads served by a member that is not the primary: the read lease above. */
struct fence_reads {
	int64_t table_ns; /* monotonic send time of the last chain-table read that succeeded */
};

static inline void fence_max(int64_t *p, int64_t v)
{
	int64_t cur = __atomic_load_n(p, __ATOMIC_ACQUIRE);
	while (v > cur &&
	       !__atomic_compare_exchange_n(p, &cur, v, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		;
}

/* A chain-table read sent at sent_ns succeeded. */
static inline void fence_reads_table(struct fence_reads *r, int64_t sent_ns)
{
	fence_max(&r->table_ns, sent_ns);
}

/* May this node serve a read as a non-primary member at now (its table is fresh)? */
static inline bool fence_reads_ok(const struct fence_reads *r, int64_t now_ns, uint32_t ms)
{
	int64_t t = __atomic_load_n(&r->table_ns, __ATOMIC_ACQUIRE);
	return t > 0 && now_ns < t + (int64_t)ms * 1000000LL;
}

/* This node committed a member's removal; the commit returned at now. *hold_ns: no
 * acknowledgement before it (monotonic; 0: none). */
static inline void fence_reads_hold(int64_t *hold_ns, int64_t now_ns, uint32_t ms)
{
	fence_max(hold_ns, now_ns + (int64_t)ms * 1000000LL);
}

/* How long an acknowledgement must still wait at now under *hold_ns (0: none). */
static inline int64_t fence_reads_wait_ns(const int64_t *hold_ns, int64_t now_ns)
{
	int64_t h = __atomic_load_n(hold_ns, __ATOMIC_ACQUIRE);
	return h > now_ns ? h - now_ns : 0;
}

#endif
