/* config — the node's YAML configuration. See config.h for the format and its bounds.
 *
 * libyaml's event parser is driven by hand: STREAM_START, DOCUMENT_START, MAPPING_START, then
 * key/value pairs (scalars, or for `targets` a sequence of scalars), MAPPING_END, DOCUMENT_END,
 * STREAM_END. Anything else at any point is refused with the position of the event.
 */
#include "common/config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "common/util.h"

struct cfg_parser {
	yaml_parser_t p;
	yaml_event_t ev;
	bool have_ev;
	char *err;
	size_t errlen;
};

static int cfg_fail(struct cfg_parser *cp, const yaml_mark_t *m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int cfg_fail(struct cfg_parser *cp, const yaml_mark_t *m, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	set_err(cp->err, cp->errlen, "%zu:%zu: %s", m->line + 1, m->column + 1, msg);
	return -EINVAL;
}

/* The next event into cp->ev (the previous one is freed). */
static int cfg_next(struct cfg_parser *cp)
{
	if (cp->have_ev)
		yaml_event_delete(&cp->ev);
	cp->have_ev = false;
	if (!yaml_parser_parse(&cp->p, &cp->ev)) {
		const yaml_mark_t *m = &cp->p.problem_mark;
		set_err(cp->err, cp->errlen, "%zu:%zu: %s", m->line + 1, m->column + 1,
			cp->p.problem ? cp->p.problem : "malformed YAML");
		return cp->p.error == YAML_MEMORY_ERROR ? -ENOMEM : -EINVAL;
	}
	cp->have_ev = true;
	if (cp->ev.type == YAML_ALIAS_EVENT)
		return cfg_fail(cp, &cp->ev.start_mark, "aliases are not allowed here");
	return 0;
}

static int cfg_expect(struct cfg_parser *cp, yaml_event_type_t type, const char *what)
{
	int r = cfg_next(cp);
	if (r < 0)
		return r;
	if (cp->ev.type != type)
		return cfg_fail(cp, &cp->ev.start_mark, "expected %s", what);
	return 0;
}

/* The current event is a plain scalar value: copy it (bounded, printable, no NUL). */
static int cfg_scalar(struct cfg_parser *cp, const char *key, char *out, size_t outlen)
{
	const yaml_mark_t *m = &cp->ev.start_mark;
	if (cp->ev.type != YAML_SCALAR_EVENT)
		return cfg_fail(cp, m, "'%s' takes a single value", key);
	if (cp->ev.data.scalar.tag)
		return cfg_fail(cp, m, "'%s': tags are not allowed", key);
	size_t n = cp->ev.data.scalar.length;
	const char *v = (const char *)cp->ev.data.scalar.value;
	if (n == 0)
		return cfg_fail(cp, m, "'%s' is empty", key);
	if (n >= outlen)
		return cfg_fail(cp, m, "'%s' is longer than %zu bytes", key, outlen - 1);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
			return cfg_fail(cp, m, "'%s' holds a control character", key);
	memcpy(out, v, n);
	out[n] = '\0';
	return 0;
}

static int cfg_uint(struct cfg_parser *cp, const char *key, uint64_t lo, uint64_t hi, uint64_t *ret)
{
	char s[32];
	int r = cfg_scalar(cp, key, s, sizeof(s));
	if (r < 0)
		return r;
	const yaml_mark_t *m = &cp->ev.start_mark;
	char *end;
	errno = 0;
	if (s[0] < '0' || s[0] > '9')
		return cfg_fail(cp, m, "'%s' must be a whole number, not '%s'", key, s);
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return cfg_fail(cp, m, "'%s' must be a whole number, not '%s'", key, s);
	if (v < lo || v > hi)
		return cfg_fail(cp, m, "'%s' must be between %llu and %llu, not %llu", key,
				(unsigned long long)lo, (unsigned long long)hi, v);
	*ret = v;
	return 0;
}

static bool cfg_name_ok(const char *s)
{
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return false;
	return s[0] && s[0] != '.' && s[0] != '-';
}

/* HOST:PORT or [V6]:PORT, a port of 1..65535. */
static bool cfg_addr_ok(const char *s)
{
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s || !colon[1])
		return false;
	if (s[0] == '[' && colon[-1] != ']')
		return false;
	if (s[0] != '[' && memchr(s, ':', (size_t)(colon - s)))
		return false; /* a bare IPv6 address: brackets are required */
	for (const char *p = s; p < colon; p++)
		if (*p == '/' || *p == ' ' || *p == '@' || *p == '?' || *p == '#')
			return false;
	char *end;
	errno = 0;
	unsigned long port = strtoul(colon + 1, &end, 10);
	return !errno && !*end && colon[1] >= '0' && colon[1] <= '9' && port >= 1 && port <= 65535;
}

static int cfg_targets(struct cfg_parser *cp, struct cfg_node *c)
{
	if (cp->ev.type != YAML_SEQUENCE_START_EVENT)
		return cfg_fail(cp, &cp->ev.start_mark, "'targets' takes a list of target URLs");
	for (;;) {
		int r = cfg_next(cp);
		if (r < 0)
			return r;
		if (cp->ev.type == YAML_SEQUENCE_END_EVENT)
			break;
		if (c->ntargets == CFG_MAX_TARGETS)
			return cfg_fail(cp, &cp->ev.start_mark, "more than %d targets",
					CFG_MAX_TARGETS);
		r = cfg_scalar(cp, "targets", c->targets[c->ntargets], CFG_URL_MAX);
		if (r < 0)
			return r;
		const char *u = c->targets[c->ntargets];
		if (!strchr(u, ':'))
			return cfg_fail(
			    cp, &cp->ev.start_mark,
			    "target '%s' is not a URL (e.g. file:/var/lib/braidfs/t.img)", u);
		for (unsigned i = 0; i < c->ntargets; i++)
			if (!strcmp(c->targets[i], u))
				return cfg_fail(cp, &cp->ev.start_mark,
						"target '%s' is listed twice", u);
		c->ntargets++;
	}
	if (!c->ntargets)
		return cfg_fail(cp, &cp->ev.start_mark, "'targets' is empty");
	return 0;
}

enum {
	K_NODE,
	K_LISTEN,
	K_META,
	K_TARGETS,
	K_HB,
	K_LEASE,
	K_REPLACE,
	K_RATE,
	K_GRACE,
	K_CHECK,
	K_LOCAL,
	K_N
};
static const char *const cfg_keys[K_N] = {
    "node",	  "listen",	     "meta",	    "targets",	"heartbeat_ms",
    "lease_ms",	  "replace_after_s", "resync_rate", "grace_ms", "state_check_beats",
    "local_reads"};

static int cfg_value(struct cfg_parser *cp, int k, struct cfg_node *c)
{
	uint64_t v;
	int r;
	const yaml_mark_t m = cp->ev.start_mark;
	switch (k) {
	case K_NODE:
		r = cfg_scalar(cp, "node", c->node, sizeof(c->node));
		if (r == 0 && !cfg_name_ok(c->node))
			r = cfg_fail(cp, &m,
				     "node name '%s' must be 1-63 of A-Z a-z 0-9 . _ - (not "
				     "starting with . or -)",
				     c->node);
		return r;
	case K_LISTEN:
		r = cfg_scalar(cp, "listen", c->listen, sizeof(c->listen));
		if (r == 0 && !cfg_addr_ok(c->listen))
			r = cfg_fail(cp, &m,
				     "'listen' must be HOST:PORT (IPv6: [ADDR]:PORT), port "
				     "1-65535, not '%s'",
				     c->listen);
		return r;
	case K_META:
		r = cfg_scalar(cp, "meta", c->meta, sizeof(c->meta));
		if (r == 0 && !strstr(c->meta, "://"))
			r = cfg_fail(cp, &m, "'meta' must be a URL (postgres://...), not '%s'",
				     c->meta);
		return r;
	case K_TARGETS:
		return cfg_targets(cp, c);
	case K_HB:
		r = cfg_uint(cp, "heartbeat_ms", 10, 60000, &v);
		c->heartbeat_ms = (uint32_t)v;
		return r;
	case K_LEASE:
		r = cfg_uint(cp, "lease_ms", 20, 600000, &v);
		c->lease_ms = (uint32_t)v;
		return r;
	case K_GRACE:
		r = cfg_uint(cp, "grace_ms", 0, 600000, &v);
		c->grace_ms = (uint32_t)v;
		return r;
	case K_CHECK:
		r = cfg_uint(cp, "state_check_beats", 1, 10000, &v);
		c->state_check_beats = (uint32_t)v;
		return r;
	case K_REPLACE:
		r = cfg_uint(cp, "replace_after_s", 1, 31536000, &v);
		c->replace_after_s = (uint32_t)v;
		return r;
	case K_RATE: {
		char s[32];
		r = cfg_scalar(cp, "resync_rate", s, sizeof(s));
		if (r < 0)
			return r;
		if (parse_size(s, &v) < 0 || v < (1u << 20))
			return cfg_fail(cp, &m,
					"'resync_rate' must be a size per second of at least 1MiB "
					"(e.g. 256MiB), not '%s'",
					s);
		c->resync_rate = v;
		return 0;
	}
	case K_LOCAL: {
		char s[8];
		r = cfg_scalar(cp, "local_reads", s, sizeof(s));
		if (r < 0)
			return r;
		if (strcmp(s, "true") && strcmp(s, "false"))
			return cfg_fail(cp, &m, "'local_reads' must be true or false, not '%s'", s);
		c->local_reads = !strcmp(s, "true");
		return 0;
	}
	}
	return -EINVAL;
}

static int cfg_run(struct cfg_parser *cp, struct cfg_node *c)
{
	bool seen[K_N] = {0};
	yaml_mark_t seen_at[K_N];
	int r;

	if ((r = cfg_expect(cp, YAML_STREAM_START_EVENT, "a YAML stream")) < 0)
		return r;
	if ((r = cfg_next(cp)) < 0)
		return r;
	if (cp->ev.type == YAML_STREAM_END_EVENT)
		return cfg_fail(cp, &cp->ev.start_mark, "the file is empty");
	if (cp->ev.type != YAML_DOCUMENT_START_EVENT)
		return cfg_fail(cp, &cp->ev.start_mark, "expected a document");
	if ((r = cfg_next(cp)) < 0)
		return r;
	if (cp->ev.type != YAML_MAPPING_START_EVENT)
		return cfg_fail(
		    cp, &cp->ev.start_mark,
		    "the configuration must be a mapping of keys (node:, listen:, ...)");
	for (;;) {
		if ((r = cfg_next(cp)) < 0)
			return r;
		if (cp->ev.type == YAML_MAPPING_END_EVENT)
			break;
		if (cp->ev.type != YAML_SCALAR_EVENT)
			return cfg_fail(cp, &cp->ev.start_mark, "a key must be a plain word");
		char key[40];
		const yaml_mark_t km = cp->ev.start_mark;
		size_t n = cp->ev.data.scalar.length;
		snprintf(key, sizeof(key), "%.*s", (int)MIN(n, sizeof(key) - 1),
			 (const char *)cp->ev.data.scalar.value);
		for (char *p = key; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				*p = '?';
		int k = -1;
		for (int i = 0; i < K_N; i++)
			if (n == strlen(cfg_keys[i]) &&
			    !memcmp(cp->ev.data.scalar.value, cfg_keys[i], n))
				k = i;
		if (k < 0) {
			char known[200] = "";
			for (int i = 0; i < K_N; i++)
				snprintf(known + strlen(known), sizeof(known) - strlen(known),
					 "%s%s", i ? ", " : "", cfg_keys[i]);
			return cfg_fail(cp, &km, "unknown key '%s' (known: %s)", key, known);
		}
		if (seen[k])
			return cfg_fail(cp, &km, "'%s' is given twice (first at %zu:%zu)", key,
					seen_at[k].line + 1, seen_at[k].column + 1);
		seen[k] = true;
		seen_at[k] = km;
		if ((r = cfg_next(cp)) < 0)
			return r;
		if ((r = cfg_value(cp, k, c)) < 0)
			return r;
	}
	const yaml_mark_t end = cp->ev.start_mark;
	if ((r = cfg_next(cp)) < 0)
		return r;
	if (cp->ev.type != YAML_DOCUMENT_END_EVENT)
		return cfg_fail(cp, &cp->ev.start_mark, "expected the end of the document");
	if ((r = cfg_next(cp)) < 0)
		return r;
	if (cp->ev.type != YAML_STREAM_END_EVENT)
		return cfg_fail(cp, &cp->ev.start_mark, "only one document is allowed");
	static const int required[] = {K_NODE, K_LISTEN, K_META, K_TARGETS};
	for (size_t i = 0; i < ARRAY_SIZE(required); i++)
		if (!seen[required[i]])
			return cfg_fail(cp, &end, "'%s' is missing", cfg_keys[required[i]]);
	if ((uint64_t)c->lease_ms < 2ull * c->heartbeat_ms)
		return cfg_fail(cp, seen[K_LEASE] ? &seen_at[K_LEASE] : &seen_at[K_HB],
				"'lease_ms' (%u) must be at least twice 'heartbeat_ms' (%u)",
				c->lease_ms, c->heartbeat_ms);
	if (!seen[K_GRACE])
		c->grace_ms = 2 * c->heartbeat_ms; /* the default follows heartbeat_ms */
	return 0;
}

int cfg_parse(const char *buf, size_t len, struct cfg_node *ret, char *err, size_t errlen)
{
	if (len > CFG_FILE_MAX) {
		set_err(err, errlen, "1:1: the configuration is larger than %u bytes",
			CFG_FILE_MAX);
		return -EFBIG;
	}
	if (memchr(buf, '\0', len)) {
		set_err(err, errlen, "1:1: the configuration holds a NUL byte");
		return -EINVAL;
	}
	struct cfg_node *c = calloc(1, sizeof(*c));
	struct cfg_parser cp = {.err = err, .errlen = errlen};
	if (!c || !yaml_parser_initialize(&cp.p)) {
		free(c);
		set_err(err, errlen, "1:1: out of memory");
		return -ENOMEM;
	}
	c->heartbeat_ms = 500;
	c->lease_ms = 3000;
	c->replace_after_s = 600;
	c->resync_rate = 256ull << 20;
	c->state_check_beats = 8;
	yaml_parser_set_input_string(&cp.p, (const unsigned char *)buf, len);
	int r = cfg_run(&cp, c);
	if (cp.have_ev)
		yaml_event_delete(&cp.ev);
	yaml_parser_delete(&cp.p);
	if (r == 0)
		*ret = *c;
	free(c);
	return r;
}

int cfg_load(const char *path, struct cfg_node *ret, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		set_err(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	char *buf = malloc(CFG_FILE_MAX + 1);
	size_t len = 0;
	int r = buf ? 0 : -ENOMEM;
	while (r == 0 && len <= CFG_FILE_MAX) {
		ssize_t n = read(fd, buf + len, CFG_FILE_MAX + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		else if (n == 0)
			break;
		else
			len += (size_t)n;
	}
	close(fd);
	if (r < 0) {
		set_err(err, errlen, "%s: %s", path, strerror(-r));
		free(buf);
		return r;
	}
	char why[512] = "";
	r = cfg_parse(buf, len, ret, why, sizeof(why));
	free(buf);
	if (r < 0)
		set_err(err, errlen, "%s:%s", path, why);
	return r;
}
