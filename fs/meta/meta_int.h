/* meta_int — what every metadata engine shares, for the engines only (callers use meta.h).
 *
 * The argument checks of the contract in meta.h, so that every engine answers the same errno
 * for the same bad argument, and the wording of check()'s findings, so that `braidfs fsck`
 * reads the same on every engine. Stateless; callable from any thread. Implemented in meta.c.
 */
#ifndef BRAIDFS_META_INT_H
#define BRAIDFS_META_INT_H

#include "common/url.h"
#include "fs/meta/meta.h"

/* A NUL within cap bytes. */
bool meta_str_ok(const char *s, size_t cap);
/* A path component: 1..META_NAME_MAX bytes, no '/': 0, -EINVAL or -ENAMETOOLONG. */
int meta_name_check(const char *name);
/* "." and "..": never stored, the FUSE layer answers them. */
bool meta_name_is_dot(const char *name);
/* 1..META_XATTR_NAME_MAX bytes: 0, -EINVAL or -ERANGE (Linux's answer for a long name). */
int meta_xattr_name_check(const char *name);
/* open(): only META_O_CREATE or META_O_RDONLY, not both. */
int meta_open_flags_check(int flags, char *err, size_t errlen);
/* What every open() does first: clear err, check the arguments and flags, parse the URL into
 * u; forms is the "expected ..." text of a URL that does not parse. */
int meta_open_begin(const char *url, int flags, struct meta **ret, struct url *u, const char *forms,
		    char *err, size_t errlen);

/* An inode row in the engines' column order: ino, mode, nlink, uid, gid, rdev, size, atime,
 * mtime, ctime, btime, generation, flags, qroot, qres (64-bit values as their int64 bit
 * pattern). */
#define META_ATTR_NCOLS 15
void meta_attr_from_cols(struct meta_attr *a, const int64_t v[META_ATTR_NCOLS]);

/* setattr(): the fields mask names from in onto a (META-9: clearing WDIRTY drops qres);
 * -EISDIR / -EINVAL for a size on a directory / non-file, -EFBIG beyond INT64_MAX. */
int meta_setattr_apply(struct meta_attr *a, unsigned mask, const struct meta_attr *in);
/* mknod(): the new inode's attributes from the caller's (ino left 0, nlink by type,
 * generation 1, btime defaulting to ctime, qroot the parent's, group and setgid as a setgid
 * parent hands them down). */
void meta_mknod_attr(const struct meta_attr *in, const char *link, const struct meta_attr *parent,
		     struct meta_attr *a);

/* target_update(): the mask and the fields it names. */
int meta_target_update_check(unsigned mask, const struct meta_target *in);
/* META-9: the bytes an inode charges its quota root (max(size, qres) of a regular file); the
 * bytes left under q's limit (UINT64_MAX: none); whether growing by dbytes / dinodes fits
 * (0) or not (-EDQUOT). */
uint64_t meta_charged(const struct meta_attr *a);
uint64_t meta_quota_room(const struct meta_quota *q);
int meta_quota_fits(const struct meta_quota *q, int64_t dbytes, int64_t dinodes);

/* ---- chain roles (META-13), dirty refs (META-15), repairs (META-17) ---- */

/* chain_members.role values, as stored by both engines. */
enum meta_role {
	META_ROLE_MEMBER = 0,
	META_ROLE_SYNCING = 1,
	META_ROLE_AWAY = 2,
	META_ROLE_ASYNC = 3, /* META-19 */
};
#define META_CHAIN_NROLES 4
#define META_CHAIN_SLOTS  (META_CHAIN_NROLES * META_MAX_REPLICAS)

/* The lists of in: -EINVAL unless 1..META_MAX_REPLICAS members, at most META_MAX_REPLICAS
 * syncing, away and async, every id >= 1 and no id twice across the four lists. */
int meta_chain_roles_check(const struct meta_chain *in);
/* Add target t in role r at the end of that role's list of c (no checks). */
void meta_chain_put(struct meta_chain *c, enum meta_role r, uint32_t t, int64_t away_ns);

/* One epoch-conditional chain change (META-6, META-13): what chain_set, chain_update and
 * chain_promote ask of chain `id`. */
enum meta_chain_op { META_CHAIN_SET, META_CHAIN_UPDATE, META_CHAIN_PROMOTE };
struct meta_chain_change {
	enum meta_chain_op op;
	uint32_t id;
	uint64_t expect;	     /* the epoch the caller read */
	const struct meta_chain *in; /* SET: the roles of in */
	const uint32_t *members;     /* UPDATE: members as given; syncing and away keep the rest */
	uint32_t n;
	uint32_t target; /* PROMOTE: syncing -> end of members; the engine also deletes its
			  * dirty and repairs rows of the chain in the same transaction (META-16) */
};
/* The arguments of u, before the engine reads anything: 0 or -EINVAL. */
int meta_chain_change_check(const struct meta_chain_change *u);
/* The roles u (which passed meta_chain_change_check) makes of cur, the chain as the engine
 * read it under its write lock (away_ns: the raw `since` of each away target): -ESTALE
 * unless cur's epoch is u->expect, -EOVERFLOW at the last epoch, -EINVAL for roles META-13
 * refuses or a promotion of a target that is not syncing. out keeps cur's id and epoch;
 * the engine writes it (meta_chain_rows) and stores epoch + 1. */
int meta_chain_change_apply(const struct meta_chain_change *u, const struct meta_chain *cur,
			    struct meta_chain *out);
/* The chain_members rows of c in storage order (pos = index: members, syncing, away): each
 * target, its role and, for an away target that was away in old (may be NULL), the raw
 * `since` it keeps (META-14); 0 for every other row (a newly away target gets the engine's
 * now()). Returns the count. */
unsigned meta_chain_rows(const struct meta_chain *c, const struct meta_chain *old,
			 uint32_t t[META_CHAIN_SLOTS], enum meta_role role[META_CHAIN_SLOTS],
			 int64_t since[META_CHAIN_SLOTS]);

/* chains_list(): its rows (chain id, epoch, target, role, away age) ordered by chain and
 * position, a chain without targets once with target 0, gathered into ret[0..max); n counts
 * every chain (what chains_list returns). Start from {.ret = ret, .max = max}. */
#define META_CHAINS_NCOLS 5
struct meta_chains_reader {
	struct meta_chain *ret;
	unsigned max;
	int n;
	int64_t last;		/* the chain id of the last row (once n > 0) */
	struct meta_chain *cur; /* the chain being read, NULL past max */
};
void meta_chains_row(struct meta_chains_reader *g, const int64_t v[META_CHAINS_NCOLS]);

/* A repairs row in the engines' column order: chain, target, kind, chunks_total, chunks_done,
 * bytes_done, rate, started, elapsed, updated (ns). */
#define META_REPAIR_NCOLS 10
void meta_repair_from_cols(struct meta_repair *p, const int64_t v[META_REPAIR_NCOLS]);

/* dirty_add / dirty_remove: 1..META_DIRTY_BATCH_MAX refs, ino 1..INT64_MAX, idx <= INT64_MAX. */
int meta_dirty_refs_check(const struct meta_chunk_ref *refs, unsigned n);
/* purge_batch: -EINVAL unless inos is given and n is 1..META_PURGE_BATCH_MAX. */
int meta_purge_batch_check(const uint64_t *inos, unsigned n);
/* purge_batch's body, inside the engine's transaction: one(ctx, ino) (the engine's purge()
 * body) for each of inos[0..n), skipping those it refuses as gone or not an orphan (-ENOENT,
 * -EBUSY, -ENOTEMPTY). Returns the number purged, or the first other error. */
int meta_purge_each(const uint64_t *inos, unsigned n, int (*one)(void *ctx, uint64_t ino),
		    void *ctx);
/* repair_set: a known kind, counters that fit int64. */
int meta_repair_check(const struct meta_repair *in);

/* Every field of a target a caller hands in: strings terminated and well formed. */
bool meta_target_ok(const struct meta_target *t);

/* The arguments of each op, as meta.h states them; 0 or the op's -errno. */
int meta_mknod_check(const char *name, const struct meta_attr *in, const char *link);
int meta_format_check(const struct meta_volume *vol, const struct meta_target *t, unsigned nt,
		      const struct meta_chain *c, unsigned nc);
int meta_rename_check(const char *name, const char *newname, unsigned flags);
int meta_setxattr_check(const char *name, const void *value, size_t size, int flags);

/* ---- file locks (META-18) ---- */

/* The fields of a lock_set / lock_get request: ino and client >= 1 and <= INT64_MAX, a known
 * kind and type, start <= end <= META_LOCK_EOF, an flock whole-file. 0 or -EINVAL. */
int meta_lock_check(const struct meta_lock *in);
/* The rows one owner holds on one inode after lock_set(in): cur[0..n) are its rows now (one
 * kind, non-overlapping, in any order), out[0..max) gets the new set (POSIX merge and split;
 * an flock replaces the rest). Returns the count, or -ENOLCK when more than max. */
int meta_lock_apply(const struct meta_lock *cur, unsigned n, const struct meta_lock *in,
		    struct meta_lock *out, unsigned max);

/* ---- check(): findings, counted and worded in one place ---- */

struct meta_checker {
	bool repair;
	meta_report_cb cb;
	void *ctx;
	int found;   /* problems seen */
	int unfixed; /* problems seen and not repaired */
};

enum meta_finding {
	META_FIND_STORAGE,	       /* the engine's own storage is damaged; name = its words */
	META_FIND_ROOT_MISSING,	       /* a = 1 */
	META_FIND_ROOT_NOT_DIR,	       /* a = 1, b = mode; never repaired */
	META_FIND_ROOT_NAMED,	       /* a = ino, b = parent, name */
	META_FIND_ENTRY_MISSING_INODE, /* a = ino, b = parent, name */
	META_FIND_ENTRY_BAD_PARENT,    /* a = ino, b = parent, c = parent exists, name */
	META_FIND_DIR_MULTI,	       /* a = ino, b = number of entries */
	META_FIND_XATTR_ORPHAN,	       /* a = ino, b = number of xattrs */
	META_FIND_UNREACHABLE,	       /* a = ino */
	META_FIND_NLINK,	       /* a = ino, b = nlink, c = what the entries say */
	META_FIND_QUOTA_USAGE, /* a = root, b/c = bytes/inodes recorded, d/e = counted (META-9) */
};

/* One finding's values, as enum meta_finding names them for its kind. `name` is bytes (n of
 * them), shown printable. */
struct meta_find {
	uint64_t a;
	int64_t b, c, d, e;
	const void *name;
	size_t n;
};

/* A check query returns a finding as columns a, b, name, c, or for META_FIND_QUOTA_USAGE
 * a, b, c, d, e: the column of value i (0 a, 1 b, 2 c, 3 d, 4 e), -1 for none; *has_name
 * says whether column 2 is the name. */
int meta_find_col(enum meta_finding kind, int i, bool *has_name);

/* Count one finding and hand its one-line description to the report callback. `repaired`:
 * the caller fixes it in the same transaction. */
void meta_finding(struct meta_checker *k, enum meta_finding kind, bool repaired,
		  const struct meta_find *f);

#endif
