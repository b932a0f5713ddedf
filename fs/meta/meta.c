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

int meta_open_begin(const char *url, int flags, struct meta **ret, struct url *u, const char *forms,
		    char *err, size_t errlen)
{
	char uerr[URL_MAX + 64];
	int r;

	if (err && errlen > 0)
		err[0] = '\0';
	if (!url || !ret) {
		set_err(err, errlen, "no metadata URL given");
		return -EINVAL;
	}
	r = meta_open_flags_check(flags, err, errlen);
	if (r < 0)
		return r;
	r = url_parse(url, u, uerr, (int)sizeof(uerr));
	if (r < 0)
		set_err(err, errlen, "bad metadata URL: %s (expected %s)", uerr, forms);
	return r;
}

/* The engine of a parsed URL's scheme (aliases followed), or NULL. */
static const struct meta_ops *meta_engine(const struct url *u)
{
	const char *scheme = u->scheme;

	for (size_t i = 0; i < ARRAY_SIZE(meta_aliases); i++)
		if (strcmp(meta_aliases[i].alias, scheme) == 0)
			scheme = meta_aliases[i].scheme;
	for (size_t i = 0; i < ARRAY_SIZE(meta_engines); i++)
		if (strcmp(meta_engines[i]->scheme, scheme) == 0)
			return meta_engines[i];
	return NULL;
}

const struct meta_ops *meta_ops_for(const char *url)
{
	struct url u;

	return url && url_parse(url, &u, NULL, 0) == 0 ? meta_engine(&u) : NULL;
}

int meta_open(const char *url, int flags, struct meta **ret, char *err, size_t errlen)
{
	struct url u;
	int r = meta_open_begin(url, flags, ret, &u, META_URL_FORMS, err, errlen);

	if (r < 0)
		return r;
	const struct meta_ops *ops = meta_engine(&u);
	if (ops)
		return ops->open(url, flags, ret, err, errlen);
	set_err(err, errlen, "unknown metadata URL scheme '%s' (expected " META_URL_FORMS ")",
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

const char *meta_target_state_name(enum meta_target_state s)
{
	static const char *const names[META_TARGET_NSTATES] = {
	    [META_TARGET_UP] = "up",
	    [META_TARGET_OFFLINE] = "offline",
	    [META_TARGET_DRAINING] = "draining",
	    [META_TARGET_DRAINED] = "drained",
	    [META_TARGET_REMOVED] = "removed",
	};
	return (unsigned)s < META_TARGET_NSTATES ? names[s] : "?";
}

const char *meta_repair_kind_name(enum meta_repair_kind k)
{
	return k == META_REPAIR_RESYNC ? "resync" : k == META_REPAIR_REBUILD ? "rebuild" : "?";
}

bool meta_pool_name_ok(const char *s)
{
	size_t n = s ? strnlen(s, META_POOL_MAX) : 0;

	if (n == 0 || n >= META_POOL_MAX || s[0] == '.' || s[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '.' ||
		      s[i] == '_' || s[i] == '-'))
			return false;
	return true;
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
	a->qroot = (uint64_t)v[13];
	a->qres = (uint64_t)v[14];
}

int meta_open_flags_check(int flags, char *err, size_t errlen)
{
	if (flags & ~(META_O_CREATE | META_O_RDONLY) ||
	    (flags & (META_O_CREATE | META_O_RDONLY)) == (META_O_CREATE | META_O_RDONLY)) {
		set_err(err, errlen, "invalid open flags 0x%x", (unsigned)flags);
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

bool meta_target_ok(const struct meta_target *t)
{
	return meta_str_ok(t->url, sizeof(t->url)) && t->url[0] &&
	       meta_str_ok(t->uuid, sizeof(t->uuid)) && (unsigned)t->state < META_TARGET_NSTATES &&
	       meta_str_ok(t->pool, sizeof(t->pool)) &&
	       (!t->pool[0] || meta_pool_name_ok(t->pool)) &&
	       meta_str_ok(t->node, sizeof(t->node)) && meta_str_ok(t->media, sizeof(t->media));
}

int meta_setattr_apply(struct meta_attr *a, unsigned mask, const struct meta_attr *in)
{
	if (mask & META_SET_SIZE) {
		if (S_ISDIR(a->mode))
			return -EISDIR;
		if (!S_ISREG(a->mode))
			return -EINVAL;
		if (in->size > INT64_MAX)
			return -EFBIG;
		a->size = in->size;
	}
	/* The type bits never change: only the permission bits (07777) come from `in`. */
	if (mask & META_SET_MODE)
		a->mode = (a->mode & S_IFMT) | (in->mode & 07777);
	if (mask & META_SET_UID)
		a->uid = in->uid;
	if (mask & META_SET_GID)
		a->gid = in->gid;
	if (mask & META_SET_ATIME)
		a->atime_ns = in->atime_ns;
	if (mask & META_SET_MTIME)
		a->mtime_ns = in->mtime_ns;
	if (mask & META_SET_CTIME)
		a->ctime_ns = in->ctime_ns;
	if (mask & META_SET_FLAGS) {
		/* META-9: clearing WDIRTY ends every reservation (FS-3: nothing in flight). */
		if ((a->flags & META_IF_WDIRTY) && !(in->flags & META_IF_WDIRTY))
			a->qres = 0;
		a->flags = in->flags;
	}
	return 0;
}

void meta_mknod_attr(const struct meta_attr *in, const char *link, const struct meta_attr *parent,
		     struct meta_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->qroot = parent->qroot; /* META-9: the parent's quota root accounts the new inode */
	a->mode = in->mode;
	if ((a->mode & S_IFMT) == 0)
		a->mode |= link ? S_IFLNK : S_IFREG; /* mknod(2): type 0 is a regular file */
	a->nlink = S_ISDIR(a->mode) ? 2 : 1;
	a->uid = in->uid;
	a->gid = in->gid;
	/* A setgid directory hands its group down, and its setgid bit to subdirectories. */
	if (parent->mode & S_ISGID) {
		a->gid = parent->gid;
		if (S_ISDIR(a->mode))
			a->mode |= S_ISGID;
	}
	a->rdev = (S_ISCHR(a->mode) || S_ISBLK(a->mode)) ? in->rdev : 0;
	a->size = link ? strlen(link) : 0;
	a->atime_ns = in->atime_ns;
	a->mtime_ns = in->mtime_ns;
	a->ctime_ns = in->ctime_ns;
	a->btime_ns = in->btime_ns ? in->btime_ns : in->ctime_ns;
	/* Inode numbers are never reused (META-2), so (ino, generation) is unique with a
	 * constant generation. */
	a->generation = 1;
}

int meta_target_update_check(unsigned mask, const struct meta_target *in)
{
	if (!in || (mask & ~(META_TSET_STATE | META_TSET_POOL | META_TSET_NODE | META_TSET_MEDIA)))
		return -EINVAL;
	if ((mask & META_TSET_STATE) && (unsigned)in->state >= META_TARGET_NSTATES)
		return -EINVAL;
	if ((mask & META_TSET_POOL) && !meta_pool_name_ok(in->pool))
		return -EINVAL;
	if (((mask & META_TSET_NODE) && !meta_str_ok(in->node, sizeof(in->node))) ||
	    ((mask & META_TSET_MEDIA) && !meta_str_ok(in->media, sizeof(in->media))))
		return -EINVAL;
	return 0;
}

uint64_t meta_charged(const struct meta_attr *a)
{
	return S_ISREG(a->mode) ? MAX(a->size, a->qres) : 0;
}

/* Room left under a limit (0: no limit). */
static uint64_t meta_room(uint64_t limit, uint64_t used)
{
	if (limit == 0)
		return UINT64_MAX;
	return used >= limit ? 0 : limit - used;
}

uint64_t meta_quota_room(const struct meta_quota *q)
{
	return meta_room(q->bytes_limit, q->bytes_used);
}

int meta_quota_fits(const struct meta_quota *q, int64_t dbytes, int64_t dinodes)
{
	if (dbytes > 0 && (uint64_t)dbytes > meta_room(q->bytes_limit, q->bytes_used))
		return -EDQUOT;
	if (dinodes > 0 && (uint64_t)dinodes > meta_room(q->inodes_limit, q->inodes_used))
		return -EDQUOT;
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
		if (t[i].id < 1 || !meta_target_ok(&t[i]))
			return -EINVAL;
		/* META-8: one URL per target that is not removed */
		for (unsigned j = 0; j < i; j++)
			if (t[i].state != META_TARGET_REMOVED &&
			    t[j].state != META_TARGET_REMOVED && !strcmp(t[i].url, t[j].url))
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

int meta_find_col(enum meta_finding kind, int i, bool *has_name)
{
	static const int plain[5] = {0, 1, 3, -1, -1}, quota[5] = {0, 1, 2, 3, 4};

	*has_name = kind != META_FIND_QUOTA_USAGE;
	return i < 0 || i > 4 ? -1 : kind == META_FIND_QUOTA_USAGE ? quota[i] : plain[i];
}

void meta_finding(struct meta_checker *k, enum meta_finding kind, bool repaired,
		  const struct meta_find *f)
{
	char nm[4 * META_NAME_MAX + 8], what[sizeof(nm) + 256];
	uint64_t a = f->a;
	int64_t b = f->b, c = f->c;
	const void *name = f->name;
	size_t n = f->n;
	const char *fix = "";

	k->found++;
	if (!repaired)
		k->unfixed++;
	if (!k->cb)
		return;
	meta_printable(name, name ? n : 0, nm, sizeof(nm));
	switch (kind) {
	case META_FIND_QUOTA_USAGE:
		snprintf(what, sizeof(what),
			 "quota root %" PRIu64 " records %" PRId64 " bytes and %" PRId64
			 " inodes, counted %" PRId64 " bytes and %" PRId64 " inodes%s",
			 a, b, c, f->d, f->e, repaired ? "; corrected" : "");
		break;
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

/* ---- chain roles, dirty refs, repairs (META-13..17) -------------------------------------- */

/* The targets of c in storage order (members, syncing, away) with their roles; the count. */
static unsigned meta_chain_slots(const struct meta_chain *c, uint32_t t[META_CHAIN_SLOTS],
				 enum meta_role role[META_CHAIN_SLOTS])
{
	const uint32_t *lists[META_CHAIN_NROLES] = {c->members, c->syncing, c->away, c->async};
	const uint32_t counts[META_CHAIN_NROLES] = {c->nmembers, c->nsyncing, c->naway, c->nasync};
	unsigned n = 0;

	for (int r = 0; r < META_CHAIN_NROLES; r++)
		for (uint32_t i = 0; i < counts[r] && i < META_MAX_REPLICAS; i++) {
			t[n] = lists[r][i];
			role[n++] = (enum meta_role)r;
		}
	return n;
}

int meta_chain_roles_check(const struct meta_chain *in)
{
	uint32_t t[META_CHAIN_SLOTS];
	enum meta_role role[META_CHAIN_SLOTS];
	unsigned n;

	if (!in || in->nmembers < 1 || in->nmembers > META_MAX_REPLICAS ||
	    in->nsyncing > META_MAX_REPLICAS || in->naway > META_MAX_REPLICAS ||
	    in->nasync > META_MAX_REPLICAS)
		return -EINVAL;
	n = meta_chain_slots(in, t, role);
	for (unsigned i = 0; i < n; i++) {
		if (t[i] < 1)
			return -EINVAL;
		for (unsigned j = 0; j < i; j++)
			if (t[i] == t[j])
				return -EINVAL;
	}
	return 0;
}

/* An empty chain in out with the id and epoch of cur. */
static void meta_chain_begin(struct meta_chain *out, const struct meta_chain *cur)
{
	memset(out, 0, sizeof(*out));
	out->id = cur->id;
	out->epoch = cur->epoch;
}

void meta_chain_put(struct meta_chain *c, enum meta_role r, uint32_t t, int64_t away_ns)
{
	switch (r) {
	case META_ROLE_MEMBER:
		if (c->nmembers < META_MAX_REPLICAS)
			c->members[c->nmembers++] = t;
		break;
	case META_ROLE_SYNCING:
		if (c->nsyncing < META_MAX_REPLICAS)
			c->syncing[c->nsyncing++] = t;
		break;
	case META_ROLE_AWAY:
		if (c->naway < META_MAX_REPLICAS) {
			c->away_ns[c->naway] = away_ns;
			c->away[c->naway++] = t;
		}
		break;
	case META_ROLE_ASYNC:
		if (c->nasync < META_MAX_REPLICAS)
			c->async[c->nasync++] = t;
		break;
	}
}

/* chain_set: the roles of in, under cur's id and epoch. */
static void meta_chain_with_roles(const struct meta_chain *cur, const struct meta_chain *in,
				  struct meta_chain *out)
{
	meta_chain_begin(out, cur);
	for (uint32_t i = 0; i < in->nmembers; i++)
		meta_chain_put(out, META_ROLE_MEMBER, in->members[i], 0);
	for (uint32_t i = 0; i < in->nsyncing; i++)
		meta_chain_put(out, META_ROLE_SYNCING, in->syncing[i], 0);
	for (uint32_t i = 0; i < in->naway; i++)
		meta_chain_put(out, META_ROLE_AWAY, in->away[i], 0);
	for (uint32_t i = 0; i < in->nasync; i++)
		meta_chain_put(out, META_ROLE_ASYNC, in->async[i], 0);
}

/* chain_update: members as given (1..META_MAX_REPLICAS, meta_chain_change_check), cur's
 * syncing and away without them. */
static void meta_chain_with_members(const struct meta_chain *cur, const uint32_t *members,
				    uint32_t n, struct meta_chain *out)
{
	meta_chain_begin(out, cur);
	for (uint32_t i = 0; i < n; i++)
		meta_chain_put(out, META_ROLE_MEMBER, members[i], 0);
	for (uint32_t i = 0; i < cur->nsyncing; i++)
		if (!u32_in(members, n, cur->syncing[i]))
			meta_chain_put(out, META_ROLE_SYNCING, cur->syncing[i], 0);
	for (uint32_t i = 0; i < cur->naway; i++)
		if (!u32_in(members, n, cur->away[i]))
			meta_chain_put(out, META_ROLE_AWAY, cur->away[i], cur->away_ns[i]);
	for (uint32_t i = 0; i < cur->nasync; i++)
		if (!u32_in(members, n, cur->async[i]))
			meta_chain_put(out, META_ROLE_ASYNC, cur->async[i], 0);
}

/* chain_promote: target moved from syncing to the end of members; -EINVAL if it is not
 * syncing in cur or members is full. */
static int meta_chain_promoted(const struct meta_chain *cur, uint32_t target,
			       struct meta_chain *out)
{
	if (!u32_in(cur->syncing, cur->nsyncing, target) || cur->nmembers >= META_MAX_REPLICAS)
		return -EINVAL;
	meta_chain_begin(out, cur);
	for (uint32_t i = 0; i < cur->nmembers; i++)
		meta_chain_put(out, META_ROLE_MEMBER, cur->members[i], 0);
	meta_chain_put(out, META_ROLE_MEMBER, target, 0);
	for (uint32_t i = 0; i < cur->nsyncing; i++)
		if (cur->syncing[i] != target)
			meta_chain_put(out, META_ROLE_SYNCING, cur->syncing[i], 0);
	for (uint32_t i = 0; i < cur->naway; i++)
		meta_chain_put(out, META_ROLE_AWAY, cur->away[i], cur->away_ns[i]);
	for (uint32_t i = 0; i < cur->nasync; i++)
		meta_chain_put(out, META_ROLE_ASYNC, cur->async[i], 0);
	return 0;
}

int meta_chain_change_check(const struct meta_chain_change *u)
{
	switch (u->op) {
	case META_CHAIN_SET:
		return meta_chain_roles_check(u->in);
	case META_CHAIN_UPDATE:
		return !u->members || u->n < 1 || u->n > META_MAX_REPLICAS ? -EINVAL : 0;
	case META_CHAIN_PROMOTE:
		return u->target ? 0 : -EINVAL;
	}
	return -EINVAL;
}

int meta_chain_change_apply(const struct meta_chain_change *u, const struct meta_chain *cur,
			    struct meta_chain *out)
{
	int r = 0;

	if (cur->epoch != u->expect)
		return -ESTALE; /* META-6 */
	if (cur->epoch >= INT64_MAX)
		return -EOVERFLOW;
	switch (u->op) {
	case META_CHAIN_SET:
		meta_chain_with_roles(cur, u->in, out);
		break;
	case META_CHAIN_UPDATE:
		meta_chain_with_members(cur, u->members, u->n, out);
		break;
	case META_CHAIN_PROMOTE:
		r = meta_chain_promoted(cur, u->target, out);
		break;
	default:
		r = -EINVAL;
	}
	return r < 0 ? r : meta_chain_roles_check(out);
}

unsigned meta_chain_rows(const struct meta_chain *c, const struct meta_chain *old,
			 uint32_t t[META_CHAIN_SLOTS], enum meta_role role[META_CHAIN_SLOTS],
			 int64_t since[META_CHAIN_SLOTS])
{
	unsigned n = meta_chain_slots(c, t, role);

	for (unsigned i = 0; i < n; i++) {
		since[i] = 0;
		if (!old || role[i] != META_ROLE_AWAY)
			continue;
		for (uint32_t k = 0; k < old->naway && k < META_MAX_REPLICAS; k++)
			if (old->away[k] == t[i]) {
				since[i] = old->away_ns[k];
				break;
			}
	}
	return n;
}

void meta_chains_row(struct meta_chains_reader *g, const int64_t v[META_CHAINS_NCOLS])
{
	if (g->n == 0 || v[0] != g->last) {
		g->last = v[0];
		g->cur = NULL;
		if ((unsigned)g->n < g->max && g->ret) {
			g->cur = &g->ret[g->n];
			memset(g->cur, 0, sizeof(*g->cur));
			g->cur->id = (uint32_t)v[0];
			g->cur->epoch = (uint64_t)v[1];
		}
		g->n++;
	}
	if (g->cur && v[2] != 0)
		meta_chain_put(g->cur, (enum meta_role)v[3], (uint32_t)v[2], v[4]);
}

void meta_repair_from_cols(struct meta_repair *p, const int64_t v[META_REPAIR_NCOLS])
{
	memset(p, 0, sizeof(*p));
	p->chain = (uint32_t)v[0];
	p->target = (uint32_t)v[1];
	p->kind = (enum meta_repair_kind)v[2];
	p->chunks_total = (uint64_t)v[3];
	p->chunks_done = (uint64_t)v[4];
	p->bytes_done = (uint64_t)v[5];
	p->rate = (uint64_t)v[6];
	p->started_ns = v[7];
	p->elapsed_ns = v[8];
	p->updated_ns = v[9];
}

int meta_dirty_refs_check(const struct meta_chunk_ref *refs, unsigned n)
{
	if (!refs || n < 1 || n > META_DIRTY_BATCH_MAX)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		if (refs[i].ino < 1 || refs[i].ino > INT64_MAX || refs[i].idx > INT64_MAX)
			return -EINVAL;
	return 0;
}

int meta_purge_batch_check(const uint64_t *inos, unsigned n)
{
	return inos && n >= 1 && n <= META_PURGE_BATCH_MAX ? 0 : -EINVAL;
}

/* Does purge()'s answer r mean "skip this inode" (gone, or not an orphan)? */
static bool meta_purge_skipped(int r)
{
	return r == -ENOENT || r == -EBUSY || r == -ENOTEMPTY;
}

int meta_purge_each(const uint64_t *inos, unsigned n, int (*one)(void *ctx, uint64_t ino),
		    void *ctx)
{
	int done = 0;

	for (unsigned i = 0; i < n; i++) {
		int r = one(ctx, inos[i]);

		if (r == 0)
			done++;
		else if (!meta_purge_skipped(r))
			return r;
	}
	return done;
}

int meta_repair_check(const struct meta_repair *in)
{
	if (!in || (in->kind != META_REPAIR_RESYNC && in->kind != META_REPAIR_REBUILD))
		return -EINVAL;
	if (in->chunks_total > INT64_MAX || in->chunks_done > INT64_MAX ||
	    in->bytes_done > INT64_MAX || in->rate > INT64_MAX)
		return -EINVAL;
	return 0;
}

/* ---- file locks (META-18) ---- */

int meta_lock_check(const struct meta_lock *in)
{
	if (!in || in->ino < 1 || in->ino > INT64_MAX || in->client < 1 || in->client > INT64_MAX)
		return -EINVAL;
	if (in->kind != META_LOCK_POSIX && in->kind != META_LOCK_FLOCK)
		return -EINVAL;
	if (in->type != META_LOCK_UN && in->type != META_LOCK_RD && in->type != META_LOCK_WR)
		return -EINVAL;
	if (in->start > in->end || in->end > META_LOCK_EOF)
		return -EINVAL;
	if (in->kind == META_LOCK_FLOCK && (in->start != 0 || in->end != META_LOCK_EOF))
		return -EINVAL;
	return 0;
}

/* Does x touch [s, e] (overlap, or end right before s, or start right after e)? */
static bool lock_touches(const struct meta_lock *x, uint64_t s, uint64_t e)
{
	return (x->end >= s || x->end + 1 == s) &&
	       (x->start <= e || (e < META_LOCK_EOF && x->start == e + 1));
}

static int lock_put(struct meta_lock *out, unsigned max, unsigned *n, const struct meta_lock *x,
		    uint64_t s, uint64_t e)
{
	if (*n >= max)
		return -ENOLCK;
	out[*n] = *x;
	out[*n].start = s;
	out[*n].end = e;
	(*n)++;
	return 0;
}

int meta_lock_apply(const struct meta_lock *cur, unsigned n, const struct meta_lock *in,
		    struct meta_lock *out, unsigned max)
{
	uint64_t s = in->start, e = in->end, ns = s, ne = e;
	unsigned k = 0;
	int r = 0;

	if (in->kind == META_LOCK_FLOCK)
		n = 0; /* an flock is one whole-file row: the new one replaces the old */
	for (unsigned i = 0; i < n && r == 0; i++) {
		const struct meta_lock *x = &cur[i];

		if (in->type != META_LOCK_UN && x->type == in->type && lock_touches(x, s, e)) {
			/* same type, overlapping or adjacent: one range. The owner's ranges never
			 * overlap and two of one type never touch, so only ranges that touch [s, e]
			 * itself can touch the merged range. */
			ns = MIN(ns, x->start);
			ne = MAX(ne, x->end);
		} else if (x->start <= e && s <= x->end) {
			/* overlapped by the new range: keep what lies outside it */
			if (x->start < s)
				r = lock_put(out, max, &k, x, x->start, s - 1);
			if (r == 0 && x->end > e)
				r = lock_put(out, max, &k, x, e + 1, x->end);
		} else {
			r = lock_put(out, max, &k, x, x->start, x->end);
		}
	}
	if (r == 0 && in->type != META_LOCK_UN)
		r = lock_put(out, max, &k, in, ns, ne);
	return r < 0 ? r : (int)k;
}
