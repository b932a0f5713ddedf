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

/* A one-line message into err (err may be NULL). */
void meta_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

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
 * mtime, ctime, btime, generation, flags (64-bit values as their int64 bit pattern). */
#define META_ATTR_NCOLS 13
void meta_attr_from_cols(struct meta_attr *a, const int64_t v[META_ATTR_NCOLS]);

/* The arguments of each op, as meta.h states them; 0 or the op's -errno. */
int meta_mknod_check(const char *name, const struct meta_attr *in, const char *link);
int meta_format_check(const struct meta_volume *vol, const struct meta_target *t, unsigned nt,
		      const struct meta_chain *c, unsigned nc);
int meta_rename_check(const char *name, const char *newname, unsigned flags);
int meta_setxattr_check(const char *name, const void *value, size_t size, int flags);

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
};

/* Count one finding and hand its one-line description to the report callback. `repaired`:
 * the caller fixes it in the same transaction. `name` is bytes (n of them), shown printable. */
void meta_finding(struct meta_checker *k, enum meta_finding kind, bool repaired, uint64_t a,
		  int64_t b, int64_t c, const void *name, size_t n);

#endif
