/* url — parse the URLs that name every pluggable thing in braidfs:
 *   sqlite:///var/lib/braidfs/meta.db   postgres://user@host:5432/db
 *   dir:/srv/t1   file:/dev/nvme0n1   iscsi://127.0.0.1:3260/iqn.x/0
 *   nbd+unix:///export?socket=/tmp/nbd.sock
 * "scheme:/path" (no authority) and "scheme://host[:port]/path?query" both parse.
 * The parsed strings live inside struct url (fixed, bounded buffers): no allocation.
 */
#ifndef BRAIDFS_URL_H
#define BRAIDFS_URL_H

#include <stdbool.h>

#define URL_MAX 1024

struct url {
	char scheme[32];
	bool has_authority; /* "//" followed the scheme */
	char userinfo[128];
	char host[256];
	int port;	    /* 0 when absent */
	char path[URL_MAX]; /* percent-decoded */
	char query[URL_MAX];
};

/* Returns 0, or -EINVAL with a human-readable reason in err (if err != NULL). */
int url_parse(const char *s, struct url *ret, char *err, int errlen);
/* Value of key in the query string ("a=1&b=2"); copies into out. 0 or -ENOENT. */
int url_query_get(const struct url *u, const char *key, char *out, int outlen);

#endif
