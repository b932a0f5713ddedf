/* meta — the engine registry: picks a metadata engine by URL scheme.
 *
 * Every engine is one `struct meta_ops` in meta_engines[]; meta_open() parses the URL only far
 * enough to read its scheme and hands the whole URL to that engine, which owns the rest of the
 * syntax (and its error messages). Stateless; callable from any thread.
 */
#include "fs/meta/meta.h"

#include "common/url.h"
#include "common/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct meta_ops *const meta_engines[] = {
    &meta_sqlite_ops,
};

int meta_open(const char *url, int flags, struct meta **ret, char *err, size_t errlen)
{
	struct url u;
	char uerr[URL_MAX + 64];
	int r;

	if (err && errlen > 0)
		err[0] = '\0';
	if (!url || !ret) {
		set_err(err, errlen, "no metadata URL given");
		return -EINVAL;
	}
	if (flags & ~(META_O_CREATE | META_O_RDONLY) ||
	    (flags & (META_O_CREATE | META_O_RDONLY)) == (META_O_CREATE | META_O_RDONLY)) {
		set_err(err, errlen, "invalid open flags 0x%x", (unsigned)flags);
		return -EINVAL;
	}
	r = url_parse(url, &u, uerr, (int)sizeof(uerr));
	if (r < 0) {
		set_err(err, errlen, "bad metadata URL: %s (expected sqlite:///abs/path.db)", uerr);
		return r;
	}
	for (size_t i = 0; i < ARRAY_SIZE(meta_engines); i++) {
		const struct meta_ops *ops = meta_engines[i];

		if (strcmp(ops->scheme, u.scheme) == 0)
			return ops->open(url, flags, ret, err, errlen);
	}
	set_err(err, errlen, "unknown metadata URL scheme '%s' (expected sqlite:///abs/path.db)",
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
