/* meta — the engine registry: picks a metadata engine by URL scheme.
 *
 * Every engine is one `struct meta_ops` in meta_engines[]; meta_open() parses the URL only far
 * enough to read its scheme and hands the whole URL to that engine, which owns the rest of the
 * syntax (and its error messages). Stateless; callable from any thread.
 */
#include "fs/meta/meta_int.h"

#include "common/url.h"
#include "common/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

static const struct meta_ops *const meta_engines[] = {
    &meta_sqlite_ops,
    &meta_pg_ops,
};

/* Other names of a scheme: libpq accepts both spellings, so do we. */
static const struct {
	const char *alias, *scheme;
} meta_aliases[] = {
    {"postgresql", "postgres"},
};

#define META_URL_FORMS "sqlite:///abs/path.db or postgres://user@host:port/dbname"

void meta_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

int meta_open_begin(const char *url, int flags, struct meta **ret, struct url *u, const char *forms,
		    char *err, size_t errlen)
{
	char uerr[URL_MAX + 64];
	int r;

	if (err && errlen > 0)
		err[0] = '\0';
	if (!url || !ret) {
		meta_seterr(err, errlen, "no metadata URL given");
		return -EINVAL;
	}
	r = meta_open_flags_check(flags, err, errlen);
	if (r < 0)
		return r;
	r = url_parse(url, u, uerr, (int)sizeof(uerr));
	if (r < 0)
		meta_seterr(err, errlen, "bad metadata URL: %s (expected %s)", uerr, forms);
	return r;
}

int meta_open(const char *url, int flags, struct meta **ret, char *err, size_t errlen)
{
	struct url u;
	int r = meta_open_begin(url, flags, ret, &u, META_URL_FORMS, err, errlen);

	if (r < 0)
		return r;
	const char *scheme = u.scheme;
	for (size_t i = 0; i < ARRAY_SIZE(meta_aliases); i++)
		if (strcmp(meta_aliases[i].alias, scheme) == 0)
			scheme = meta_aliases[i].scheme;
	for (size_t i = 0; i < ARRAY_SIZE(meta_engines); i++) {
		const struct meta_ops *ops = meta_engines[i];

		if (strcmp(ops->scheme, scheme) == 0)
			return ops->open(url, flags, ret, err, errlen);
	}
	meta_seterr(err, errlen, "unknown metadata URL scheme '%s' (expected " META_URL_FORMS ")",
		    u.scheme);
	return -EINVAL;
}

void meta_close(struct meta *m)
{
	if (m)
		m->ops->close(m);
}

const struct meta_ops *meta_ops_of(const struct meta *m)
{
	return m ? m->ops : NULL;
}

/* ---- shared by the engines (meta_int.h) -------------------------------------------------- */

bool meta_str_ok(const char *s, size_t cap)
{
	return strnlen(s, cap) < cap;
}

/* 1..max bytes: 0, -EINVAL (NULL or empty) or toolong. */
static int meta_len_check(const char *s, size_t max, int toolong)
{
	size_t n;

	if (!s)
		return -EINVAL;
	n = strnlen(s, max + 1);
	if (n == 0)
		return -EINVAL;
	return n > max ? toolong : 0;
}

int meta_name_check(const char *name)
{
	int r = meta_len_check(name, META_NAME_MAX, -ENAMETOOLONG);

	return r == 0 && strchr(name, '/') ? -EINVAL : r;
}

bool meta_name_is_dot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

int meta_xattr_name_check(const char *name)
{
	return meta_len_check(name, META_XATTR_NAME_MAX, -ERANGE);
}

void meta_attr_from_cols(struct meta_attr *a, const int64_t v[META_ATTR_NCOLS])
{
	memset(a, 0, sizeof(*a));
	a->ino = (uint64_t)v[0];
	a->mode = (uint32_t)v[1];
	a->nlink = (uint32_t)v[2];
	a->uid = (uint32_t)v[3];
	a->gid = (uint32_t)v[4];
	a->rdev = (uint64_t)v[5];
	a->size = (uint64_t)v[6];
	a->atime_ns = v[7];
	a->mtime_ns = v[8];
	a->ctime_ns = v[9];
	a->btime_ns = v[10];
	a->generation = (uint64_t)v[11];
	a->flags = (uint32_t)v[12];
}

int meta_open_flags_check(int flags, char *err, size_t errlen)
{
	if (flags & ~(META_O_CREATE | META_O_RDONLY) ||
	    (flags & (META_O_CREATE | META_O_RDONLY)) == (META_O_CREATE | META_O_RDONLY)) {
		meta_seterr(err, errlen, "invalid open flags 0x%x", (unsigned)flags);
		return -EINVAL;
	}
	return 0;
}

int meta_mknod_check(const char *name, const struct meta_attr *in, const char *link)
{
	mode_t type;
	int r = meta_name_check(name);

	if (r < 0)
		return r;
	if (!in)
		return -EINVAL;
	if (meta_name_is_dot(name))
		return -EEXIST;
	type = in->mode & S_IFMT;
	switch (type) {
	case 0:
	case S_IFREG:
	case S_IFDIR:
	case S_IFIFO:
	case S_IFSOCK:
	case S_IFCHR:
	case S_IFBLK:
		if (link && type != 0)
			return -EINVAL;
		break;
	case S_IFLNK:
		if (!link)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if (link) {
		size_t n = strnlen(link, META_SYMLINK_MAX + 1);

		if (n == 0)
			return -ENOENT; /* symlink(2) with an empty target */
		if (n > META_SYMLINK_MAX)
			return -ENAMETOOLONG;
	}
	return 0;
}

int meta_format_check(const struct meta_volume *vol, const struct meta_target *t, unsigned nt,
		      const struct meta_chain *c, unsigned nc)
{
	if (!vol || (nt && !t) || (nc && !c) || nt > META_MAX_TARGETS)
		return -EINVAL;
	if (!meta_str_ok(vol->name, sizeof(vol->name)) ||
	    !meta_str_ok(vol->uuid, sizeof(vol->uuid)))
		return -EINVAL;
	if (vol->chunk_size == 0 || (vol->chunk_size & (vol->chunk_size - 1)) ||
	    vol->replicas < 1 || vol->replicas > META_MAX_REPLICAS ||
	    (vol->consistency != META_STRONG && vol->consistency != META_WEAK))
		return -EINVAL;
	for (unsigned i = 0; i < nt; i++) {
		if (t[i].id < 1 || !meta_str_ok(t[i].url, sizeof(t[i].url)) ||
		    !meta_str_ok(t[i].uuid, sizeof(t[i].uuid)) ||
		    (t[i].state != META_TARGET_UP && t[i].state != META_TARGET_OFFLINE))
			return -EINVAL;
	}
	for (unsigned i = 0; i < nc; i++) {
		if (c[i].nmembers < 1 || c[i].nmembers > META_MAX_REPLICAS ||
		    c[i].epoch > INT64_MAX)
			return -EINVAL;
	}
	return 0;
}

int meta_rename_check(const char *name, const char *newname, unsigned flags)
{
	int r = meta_name_check(name);

	if (r == 0)
		r = meta_name_check(newname);
	if (r < 0)
		return r;
	if (meta_name_is_dot(name) || meta_name_is_dot(newname))
		return -EINVAL;
	if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE) ||
	    (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE))
		return -EINVAL;
	return 0;
}

int meta_setxattr_check(const char *name, const void *value, size_t size, int flags)
{
	int r = meta_xattr_name_check(name);

	if (r < 0)
		return r;
	if (flags & ~(XATTR_CREATE | XATTR_REPLACE) || (size && !value))
		return -EINVAL;
	if (size > META_XATTR_SIZE_MAX)
		return -E2BIG;
	return 0;
}

/* Bytes outside 0x20..0x7e (and '\') become \xNN. */
static void meta_printable(const unsigned char *p, size_t n, char *out, size_t outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < n && p && o + 5 < outlen; i++) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
			out[o++] = (char)p[i];
		else
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", p[i]);
	}
	out[o] = '\0';
}

void meta_finding(struct meta_checker *k, enum meta_finding kind, bool repaired, uint64_t a,
		  int64_t b, int64_t c, const void *name, size_t n)
{
	char nm[4 * META_NAME_MAX + 8], what[sizeof(nm) + 256];
	const char *fix = "";

	k->found++;
	if (!repaired)
		k->unfixed++;
	if (!k->cb)
		return;
	meta_printable(name, name ? n : 0, nm, sizeof(nm));
	switch (kind) {
	case META_FIND_STORAGE:
		snprintf(what, sizeof(what), "database file: %.*s", (int)MIN(n, 400),
			 name ? (const char *)name : "");
		break;
	case META_FIND_ROOT_MISSING:
		snprintf(what, sizeof(what), "root directory (inode 1) is missing%s",
			 repaired ? "; recreated empty, mode 0755, owner 0:0" : "");
		break;
	case META_FIND_ROOT_NOT_DIR:
		snprintf(what, sizeof(what), "root inode 1 is not a directory (mode 0%o)",
			 (unsigned)b);
		break;
	case META_FIND_ROOT_NAMED:
		snprintf(what, sizeof(what),
			 "entry '%s' in directory %" PRId64 " names the root directory%s", nm, b,
			 repaired ? "; entry removed" : "");
		break;
	case META_FIND_ENTRY_MISSING_INODE:
		snprintf(what, sizeof(what),
			 "entry '%s' in directory %" PRId64 " names missing inode %" PRIu64 "%s",
			 nm, b, a, repaired ? "; entry removed" : "");
		break;
	case META_FIND_ENTRY_BAD_PARENT:
		snprintf(what, sizeof(what),
			 "entry '%s' (inode %" PRIu64 ") is in %s %" PRId64 "%s", nm, a,
			 c ? "non-directory" : "missing directory", b,
			 repaired ? "; entry removed" : "");
		break;
	case META_FIND_DIR_MULTI:
		snprintf(what, sizeof(what),
			 "directory %" PRIu64 " has %" PRId64 " entries naming it%s", a, b,
			 repaired ? "; all but the oldest removed" : "");
		break;
	case META_FIND_XATTR_ORPHAN:
		snprintf(what, sizeof(what),
			 "%" PRId64 " xattrs belong to missing inode %" PRIu64 "%s", b, a,
			 repaired ? "; removed" : "");
		break;
	case META_FIND_UNREACHABLE:
		snprintf(what, sizeof(what),
			 "directory %" PRIu64 " is not reachable from the root%s", a,
			 repaired ? "; its entries removed and it is orphaned" : "");
		break;
	case META_FIND_NLINK:
		if (c == 0) {
			fix = repaired ? "; orphaned (nlink 0), purge will free it" : "";
			snprintf(what, sizeof(what),
				 "inode %" PRIu64 " has nlink %" PRId64 " but no directory entry%s",
				 a, b, fix);
		} else {
			snprintf(what, sizeof(what),
				 "inode %" PRIu64 " has nlink %" PRId64 ", entries say %" PRId64
				 "%s",
				 a, b, c, repaired ? "; corrected" : "");
		}
		break;
	}
	k->cb(k->ctx, what, a, repaired);
}
