#include "common/url.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, int errlen, const char *msg, const char *s)
{
	if (err && errlen > 0)
		snprintf(err, errlen, "%s: '%s'", msg, s);
	return -EINVAL;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int decode(const char *in, size_t n, char *out, size_t outlen)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)in[i];
		if (c == '%') {
			if (i + 2 >= n)
				return -1;
			int h = hexval(in[i + 1]), l = hexval(in[i + 2]);
			if (h < 0 || l < 0)
				return -1;
			c = h * 16 + l;
			if (c == 0)
				return -1;
			i += 2;
		}
		if (o + 1 >= outlen)
			return -1;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return 0;
}

int url_parse(const char *s, struct url *u, char *err, int errlen)
{
	memset(u, 0, sizeof(*u));
	if (!s || !*s)
		return fail(err, errlen, "empty URL", "");
	if (strlen(s) >= URL_MAX)
		return fail(err, errlen, "URL too long", "...");
	const char *colon = strchr(s, ':');
	if (!colon || colon == s)
		return fail(err, errlen, "not a URL (expected scheme:...)", s);
	size_t sl = (size_t)(colon - s);
	if (sl >= sizeof(u->scheme))
		return fail(err, errlen, "URL scheme too long", s);
	for (size_t i = 0; i < sl; i++) {
		int c = (unsigned char)s[i];
		if (!(isalnum(c) || c == '+' || c == '-' || c == '.') || (i == 0 && !isalpha(c)))
			return fail(err, errlen, "invalid URL scheme", s);
		u->scheme[i] = (char)tolower(c);
	}
	const char *p = colon + 1;
	if (p[0] == '/' && p[1] == '/') {
		u->has_authority = true;
		p += 2;
		size_t alen = strcspn(p, "/?");
		const char *auth = p, *aend = p + alen;
		const char *at = memchr(auth, '@', alen);
		if (at) {
			if ((size_t)(at - auth) >= sizeof(u->userinfo))
				return fail(err, errlen, "URL user part too long", s);
			memcpy(u->userinfo, auth, (size_t)(at - auth));
			auth = at + 1;
		}
		const char *hend = aend;
		if (*auth == '[') { /* [v6addr]:port */
			const char *rb = memchr(auth, ']', (size_t)(aend - auth));
			if (!rb)
				return fail(err, errlen, "unterminated IPv6 address in URL", s);
			if ((size_t)(rb - auth - 1) >= sizeof(u->host))
				return fail(err, errlen, "URL host too long", s);
			memcpy(u->host, auth + 1, (size_t)(rb - auth - 1));
			hend = rb + 1;
			if (hend < aend && *hend != ':')
				return fail(err, errlen, "junk after IPv6 address in URL", s);
		} else {
			const char *pc = memchr(auth, ':', (size_t)(aend - auth));
			if (pc)
				hend = pc;
			if ((size_t)(hend - auth) >= sizeof(u->host))
				return fail(err, errlen, "URL host too long", s);
			memcpy(u->host, auth, (size_t)(hend - auth));
		}
		if (hend < aend && *hend == ':') {
			const char *ps = hend + 1;
			if (ps == aend)
				return fail(err, errlen, "empty port in URL", s);
			long port = 0;
			for (const char *q = ps; q < aend; q++) {
				if (!isdigit((unsigned char)*q))
					return fail(err, errlen, "invalid port in URL", s);
				port = port * 10 + (*q - '0');
				if (port > 65535)
					return fail(err, errlen, "port out of range in URL", s);
			}
			if (port == 0)
				return fail(err, errlen, "port out of range in URL", s);
			u->port = (int)port;
		}
		p = aend;
	}
	size_t plen = strcspn(p, "?");
	if (decode(p, plen, u->path, sizeof(u->path)) < 0)
		return fail(err, errlen, "bad percent-encoding in URL path", s);
	if (p[plen] == '?') {
		if (strlen(p + plen + 1) >= sizeof(u->query))
			return fail(err, errlen, "URL query too long", s);
		strcpy(u->query, p + plen + 1);
	}
	return 0;
}

int url_query_get(const struct url *u, const char *key, char *out, int outlen)
{
	size_t kl = strlen(key);
	const char *p = u->query;
	while (*p) {
		size_t n = strcspn(p, "&");
		if (n > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
			if (decode(p + kl + 1, n - kl - 1, out, (size_t)outlen) < 0)
				return -EINVAL;
			return 0;
		}
		p += n;
		if (*p == '&')
			p++;
	}
	return -ENOENT;
}
