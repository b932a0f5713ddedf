/* sm — the registry of target backends, chosen by URL scheme. See sm.h. */
#include "storemgr/sm.h"
#include "storemgr/dev.h"
#include "storemgr/sm_dir_int.h"
#include "storemgr/sm_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

/* Every backend, by scheme. The fault-injecting twin is registered like any other so that
 * integration tests can mount a volume on it with an ordinary URL. The block chunk store comes
 * last: it has no scheme of its own but serves every device URL (file:, iscsi://, nbd://...)
 * that the device registry (sm_dev.c) knows. */
static const struct sm_ops *const sm_backends[] = {
    &sm_dir_ops,
    &sm_faulty_ops,
    &sm_block_ops,
};

#define SM_SCHEMES "dir:/path, file:/dev/NAME or file:/path/image"

void sm_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* The scheme of url, lower-cased; -EINVAL when url has none. */
static int sm_scheme(const char *url, char *out, size_t outlen)
{
	if (!url)
		return -EINVAL;
	const char *colon = strchr(url, ':');
	if (!colon || colon == url || (size_t)(colon - url) >= outlen)
		return -EINVAL;
	for (size_t i = 0; url + i < colon; i++) {
		int c = (unsigned char)url[i];
		if (!(isalnum(c) || c == '+' || c == '-' || c == '.'))
			return -EINVAL;
		out[i] = (char)tolower(c);
		out[i + 1] = '\0';
	}
	return 0;
}

const struct sm_ops *sm_ops_for(const char *url)
{
	char s[32];
	if (sm_scheme(url, s, sizeof(s)) < 0)
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(sm_backends); i++)
		if (strcmp(s, sm_backends[i]->scheme) == 0)
			return sm_backends[i];
	for (size_t i = 0; i < ARRAY_SIZE(sm_backends); i++)
		if (sm_backends[i]->serves && sm_backends[i]->serves(url))
			return sm_backends[i];
	return NULL;
}

int sm_identity_expect(const char *what, const struct sm_identity *have,
		       const struct sm_identity *expect, char *err, size_t errlen)
{
	if (!expect)
		return 0;
	if (expect->volume_uuid[0] && strcmp(expect->volume_uuid, have->volume_uuid)) {
		sm_seterr(err, errlen, "target %s belongs to volume %s, not to volume %s", what,
			  have->volume_uuid, expect->volume_uuid);
		return -EINVAL;
	}
	if (expect->target_id != have->target_id) {
		sm_seterr(err, errlen, "target %s is target id %u, expected target id %u", what,
			  have->target_id, expect->target_id);
		return -EINVAL;
	}
	if (expect->target_uuid[0] && strcmp(expect->target_uuid, have->target_uuid)) {
		sm_seterr(err, errlen, "target %s has target UUID %s, expected %s", what,
			  have->target_uuid, expect->target_uuid);
		return -EINVAL;
	}
	if (expect->chunk_size && expect->chunk_size != have->chunk_size) {
		sm_seterr(err, errlen, "target %s has chunk size %u, the volume has %u", what,
			  have->chunk_size, expect->chunk_size);
		return -EINVAL;
	}
	return 0;
}

static int sm_unknown(const char *url, char *err, size_t errlen)
{
	char s[32];
	if (sm_scheme(url, s, sizeof(s)) < 0)
		sm_seterr(err, errlen, "not a target URL '%s' (expected " SM_SCHEMES ")",
			  url ? url : "");
	else
		sm_seterr(err, errlen, "unknown target URL scheme '%s' (expected " SM_SCHEMES ")",
			  s);
	return -EINVAL;
}

int sm_format(const char *url, const struct sm_identity *id, bool force, char *err, size_t errlen)
{
	const struct sm_ops *ops = sm_ops_for(url);
	if (!ops)
		return sm_unknown(url, err, errlen);
	return ops->format(url, id, force, err, errlen);
}

int sm_format_check(const char *url, bool force, char *err, size_t errlen)
{
	const struct sm_ops *ops = sm_ops_for(url);
	if (!ops)
		return sm_unknown(url, err, errlen);
	return ops->format_check(url, force, err, errlen);
}

int sm_open(const char *url, const struct sm_identity *expect, struct sm_target **ret, char *err,
	    size_t errlen)
{
	const struct sm_ops *ops = sm_ops_for(url);
	if (!ops)
		return sm_unknown(url, err, errlen);
	return ops->open(url, expect, ret, err, errlen);
}

void sm_close(struct sm_target *t)
{
	if (t)
		t->ops->close(t);
}

#define SM_WIPE_HEAD 8192 /* the block store's two superblock copies, at 0 and 4096 */

int sm_wipe(const char *url, char *err, size_t errlen)
{
	char s[32];
	struct url u;
	if (sm_scheme(url, s, sizeof(s)) < 0)
		return sm_unknown(url, err, errlen);
	if (!strcmp(s, "dir") || !strcmp(s, "faulty")) {
		int r = sm_dir_url_parse(url, s, &u, err, errlen);
		return r < 0 ? r : sm_dir_wipe_path(u.path, err, errlen);
	}
	if (strcmp(s, "file") != 0) {
		sm_seterr(err, errlen, "wiping a %s: target is not supported; its identity stays",
			  s);
		return -EOPNOTSUPP;
	}
	const char *path = url + 5;
	char p[URL_MAX];
	snprintf(p, sizeof(p), "%s", path);
	char *q = strchr(p, '?');
	if (q)
		*q = '\0';
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		sm_seterr(err, errlen, "cannot open %s to wipe it: %s", p, strerror(e));
		return -e;
	}
	char *zero = calloc(1, SM_WIPE_HEAD);
	int r = zero ? pwrite_full(fd, zero, SM_WIPE_HEAD, 0) : -ENOMEM;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	free(zero);
	close(fd);
	if (r < 0)
		sm_seterr(err, errlen, "cannot wipe %s: %s", p, strerror(-r));
	return r;
}
