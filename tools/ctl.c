/* ctl — the control protocol's lines: parser, encoder, reader. See ctl.h and
 * docs/ctl-protocol.md. Every byte parsed here came from a socket: each step checks its
 * bounds, and nothing is trusted to be NUL-terminated or short. */
#include "tools/ctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"

static const struct {
	enum ctl_dir dir;
	const char *verb;
	const char *name;
} ctl_types[CTL_NTYPES] = {[CTL_UNKNOWN] = {CTL_C2D, "", "unknown"},
#define CTL_ROW(d, n, v) [CTL_##d##_##n] = {CTL_##d, v, #d "_" #n},
			   CTL_MESSAGES(CTL_ROW)
#undef CTL_ROW
};

const char *ctl_type_name(enum ctl_type t)
{
	return t < CTL_NTYPES ? ctl_types[t].name : "invalid";
}

static void why_set(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t whylen, const char *fmt, ...)
{
	if (!why || !whylen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* A name: 1..CTL_NAME_MAX of [a-z_] (verb) or [a-z0-9_] (key), from p up to end. Returns its
 * length, or 0 when p does not start with one. */
static size_t name_len(const char *p, const char *end, bool digits)
{
	size_t n = 0;
	while (p + n < end && ((p[n] >= 'a' && p[n] <= 'z') || p[n] == '_' ||
			       (digits && p[n] >= '0' && p[n] <= '9')))
		n++;
	return n <= CTL_NAME_MAX ? n : 0;
}

int ctl_parse(const char *line, size_t len, enum ctl_dir dir, struct ctl_msg *ret, char *why,
	      size_t whylen)
{
	ret->type = CTL_UNKNOWN;
	ret->nf = 0;
	ret->verb[0] = '\0';
	if (len > CTL_LINE_MAX) {
		why_set(why, whylen, "line of %zu bytes (at most %d)", len, CTL_LINE_MAX);
		return -EBADMSG;
	}
	const char *p = line, *end = line + len;
	size_t n = name_len(p, end, false);
	if (!n || (p + n < end && p[n] != ' ')) {
		why_set(why, whylen, "a line must start with a verb of 1 to %d letters a-z or _",
			CTL_NAME_MAX);
		return -EBADMSG;
	}
	memcpy(ret->verb, p, n);
	ret->verb[n] = '\0';
	p += n;
	for (int t = 1; t < CTL_NTYPES; t++)
		if (ctl_types[t].dir == dir && !strcmp(ctl_types[t].verb, ret->verb))
			ret->type = (enum ctl_type)t;
	if (ret->type == CTL_UNKNOWN) {
		why_set(why, whylen, "unknown or unexpected message '%s'", ret->verb);
		return -EBADMSG;
	}
	while (p < end) {
		p++; /* the space */
		if (ret->nf == CTL_MAX_FIELDS) {
			why_set(why, whylen, "more than %d fields", CTL_MAX_FIELDS);
			return -EBADMSG;
		}
		struct ctl_field *f = &ret->f[ret->nf];
		n = name_len(p, end, true);
		if (!n || p + n >= end || p[n] != '=') {
			why_set(why, whylen,
				"field %u: expected key=value (key: 1 to %d of a-z 0-9 _)",
				ret->nf + 1, CTL_NAME_MAX);
			return -EBADMSG;
		}
		memcpy(f->key, p, n);
		f->key[n] = '\0';
		p += n + 1;
		for (unsigned i = 0; i < ret->nf; i++) {
			if (!strcmp(ret->f[i].key, f->key)) {
				why_set(why, whylen, "field '%s' given twice", f->key);
				return -EBADMSG;
			}
		}
		f->len = 0;
		while (p < end && *p != ' ') {
			unsigned char c = (unsigned char)*p;
			if (c < 0x21 || c > 0x7e) {
				why_set(why, whylen, "field '%s': byte 0x%02x must be escaped",
					f->key, c);
				return -EBADMSG;
			}
			if (c == '%') {
				int hi = end - p >= 3 ? hexval(p[1]) : -1;
				int lo = end - p >= 3 ? hexval(p[2]) : -1;
				if (hi < 0 || lo < 0 || (hi | lo) == 0) {
					why_set(why, whylen,
						"field '%s': bad escape (want %%XX, not %%00)",
						f->key);
					return -EBADMSG;
				}
				c = (unsigned char)(hi * 16 + lo);
				p += 2;
			}
			if (f->len == CTL_VALUE_MAX) {
				why_set(why, whylen, "field '%s': value longer than %d bytes",
					f->key, CTL_VALUE_MAX);
				return -EBADMSG;
			}
			f->val[f->len++] = (char)c;
			p++;
		}
		f->val[f->len] = '\0';
		ret->nf++;
		if (p + 1 == end) { /* a trailing space */
			why_set(why, whylen, "a line must not end with a space");
			return -EBADMSG;
		}
	}
	return 0;
}

const char *ctl_get(const struct ctl_msg *m, const char *key)
{
	for (unsigned i = 0; i < m->nf; i++)
		if (!strcmp(m->f[i].key, key))
			return m->f[i].val;
	return NULL;
}

int ctl_get_u64(const struct ctl_msg *m, const char *key, uint64_t *ret)
{
	const char *v = ctl_get(m, key);
	if (!v)
		return -ENOENT;
	uint64_t x = 0;
	if (!*v || strlen(v) > 20)
		return -EBADMSG;
	for (const char *p = v; *p; p++) {
		if (*p < '0' || *p > '9' || x > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -EBADMSG;
		x = x * 10 + (uint64_t)(*p - '0');
	}
	*ret = x;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* encoding */

static void put(struct ctl_line *l, const char *s, size_t n)
{
	if (l->overflow || l->len + n > CTL_LINE_MAX) {
		l->overflow = true;
		return;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

void ctl_begin(struct ctl_line *l, enum ctl_type t)
{
	l->len = 0;
	l->overflow = false;
	const char *v = t > CTL_UNKNOWN && t < CTL_NTYPES ? ctl_types[t].verb : "";
	put(l, v, strlen(v));
	if (!*v)
		l->overflow = true;
}

static void put_key(struct ctl_line *l, const char *key)
{
	size_t n = strlen(key);
	if (!n || name_len(key, key + n, true) != n)
		l->overflow = true; /* a bug of ours: refuse to send it */
	put(l, " ", 1);
	put(l, key, n);
	put(l, "=", 1);
}

void ctl_add_u64(struct ctl_line *l, const char *key, uint64_t v)
{
	char b[24];
	int n = snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
	put_key(l, key);
	put(l, b, (size_t)n);
}

void ctl_add_str(struct ctl_line *l, const char *key, const char *v)
{
	static const char hex[] = "0123456789ABCDEF";
	put_key(l, key);
	size_t n = strlen(v);
	if (n > CTL_VALUE_MAX)
		n = CTL_VALUE_MAX; /* messages are cut, never refused */
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c >= 0x21 && c <= 0x7e && c != '%') {
			put(l, (const char *)&c, 1);
		} else {
			char e[3] = {'%', hex[c >> 4], hex[c & 15]};
			put(l, e, 3);
		}
	}
}

int ctl_end(struct ctl_line *l)
{
	if (l->overflow)
		return -E2BIG;
	l->buf[l->len++] = '\n';
	return 0;
}

int ctl_send(int fd, const struct ctl_line *l)
{
	size_t done = 0;
	while (done < l->len) {
		ssize_t n = send(fd, l->buf + done, l->len - done, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* reading */

void ctl_reader_init(struct ctl_reader *r, int fd)
{
	r->fd = fd;
	r->len = 0;
}

ssize_t ctl_take_line(const char *buf, size_t n, char *out, size_t outlen, size_t *ret_len)
{
	const char *nl = memchr(buf, '\n', n);
	size_t len = nl ? (size_t)(nl - buf) : n;
	if (len > CTL_LINE_MAX || len >= outlen)
		return -EBADMSG;
	if (!nl)
		return 0;
	memcpy(out, buf, len);
	out[len] = '\0';
	*ret_len = len;
	return (ssize_t)len + 1;
}

int ctl_read_line(struct ctl_reader *r, char *out, size_t outlen, size_t *ret_len)
{
	for (;;) {
		ssize_t k = ctl_take_line(r->buf, r->len, out, outlen, ret_len);
		if (k < 0)
			return (int)k;
		if (k > 0) {
			memmove(r->buf, r->buf + k, r->len - (size_t)k);
			r->len -= (size_t)k;
			return 0;
		}
		ssize_t n = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
		if (n == 0)
			return r->len ? -EBADMSG : -ENODATA;
		r->len += (size_t)n;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* the data service's structs */

/* Field lists (clang-format rewraps X-macro lists differently on every run: left alone) */
// clang-format off
#define CTL_RESULT_FIELDS(X) \
	X(chunks) X(chunks_total) X(bytes_compared) X(bytes_total) \
	X(mismatches) X(missing) X(strays) X(beyond_eof) \
	X(csum_errors) X(unreadable) X(unrecoverable) X(repaired) X(unreached)
#define CTL_STATS_FIELDS(X) \
	X(bytes_written) X(bytes_read) X(replica_failures) X(repl_lag_bytes) \
	X(csum_errors_seen) X(repairs_done) X(repair_failures) \
	X(local_reads) X(local_fallbacks) X(async_lag_bytes) X(async_missed)
// clang-format on

/* A struct whose fields are all uint64_t, as a table of (key, offset). */
struct ctl_u64_field {
	const char *key;
	size_t off;
};
#define RESULT_ROW(f) {#f, offsetof(struct ds_check_result, f)},
#define STATS_ROW(f)  {#f, offsetof(struct ds_stats, f)},
static const struct ctl_u64_field result_fields[] = {CTL_RESULT_FIELDS(RESULT_ROW)};
static const struct ctl_u64_field stats_fields[] = {CTL_STATS_FIELDS(STATS_ROW)};
#undef RESULT_ROW
#undef STATS_ROW

static void put_fields(struct ctl_line *l, const void *s, const struct ctl_u64_field *tab, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ctl_add_u64(l, tab[i].key, *(const uint64_t *)((const char *)s + tab[i].off));
}

/* Absent: 0; present: a number. */
static int get_or_zero(const struct ctl_msg *m, const char *key, uint64_t *ret)
{
	int r = ctl_get_u64(m, key, ret);
	if (r == -ENOENT) {
		*ret = 0;
		r = 0;
	}
	return r;
}

static int get_fields(const struct ctl_msg *m, void *s, const struct ctl_u64_field *tab, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int r = get_or_zero(m, tab[i].key, (uint64_t *)((char *)s + tab[i].off));
		if (r < 0)
			return r;
	}
	return 0;
}

void ctl_put_result(struct ctl_line *l, const struct ds_check_result *r)
{
	put_fields(l, r, result_fields, ARRAY_SIZE(result_fields));
}

int ctl_get_result(const struct ctl_msg *m, struct ds_check_result *ret)
{
	return get_fields(m, ret, result_fields, ARRAY_SIZE(result_fields));
}

void ctl_put_stats(struct ctl_line *l, const struct ds_stats *s)
{
	put_fields(l, s, stats_fields, ARRAY_SIZE(stats_fields));
}

int ctl_get_stats(const struct ctl_msg *m, struct ds_stats *ret)
{
	return get_fields(m, ret, stats_fields, ARRAY_SIZE(stats_fields));
}

void ctl_put_target(struct ctl_line *l, const struct ds_target_stat *t)
{
	ctl_add_u64(l, "id", t->id);
	ctl_add_u64(l, "open", t->open);
	ctl_add_u64(l, "counters", t->has_counters);
	if (t->has_counters) {
		ctl_add_u64(l, "csum_errors", t->counters.csum_errors);
		ctl_add_u64(l, "bytes_read", t->counters.bytes_read);
		ctl_add_u64(l, "bytes_written", t->counters.bytes_written);
	}
	ctl_add_u64(l, "statfs", t->has_statfs);
	if (t->has_statfs) {
		ctl_add_u64(l, "total_bytes", t->statfs.total_bytes);
		ctl_add_u64(l, "free_bytes", t->statfs.free_bytes);
		ctl_add_u64(l, "used_bytes", t->statfs.used_bytes);
		ctl_add_u64(l, "chunks", t->statfs.chunks);
	}
}

int ctl_get_target(const struct ctl_msg *m, struct ds_target_stat *ret)
{
	uint64_t id = 0, open = 0, cnt = 0, sf = 0;
	memset(ret, 0, sizeof(*ret));
	int r = ctl_get_u64(m, "id", &id);
	if (r == 0 && id > UINT32_MAX)
		r = -EBADMSG;
	r = r ? r : get_or_zero(m, "open", &open);
	r = r ? r : get_or_zero(m, "counters", &cnt);
	r = r ? r : get_or_zero(m, "statfs", &sf);
	if (r == 0 && (open > 1 || cnt > 1 || sf > 1))
		r = -EBADMSG;
	r = r ? r : get_or_zero(m, "csum_errors", &ret->counters.csum_errors);
	r = r ? r : get_or_zero(m, "bytes_read", &ret->counters.bytes_read);
	r = r ? r : get_or_zero(m, "bytes_written", &ret->counters.bytes_written);
	r = r ? r : get_or_zero(m, "total_bytes", &ret->statfs.total_bytes);
	r = r ? r : get_or_zero(m, "free_bytes", &ret->statfs.free_bytes);
	r = r ? r : get_or_zero(m, "used_bytes", &ret->statfs.used_bytes);
	r = r ? r : get_or_zero(m, "chunks", &ret->statfs.chunks);
	if (r < 0)
		return r == -ENOENT ? -EBADMSG : r;
	ret->id = (uint32_t)id;
	ret->open = open;
	ret->has_counters = cnt;
	ret->has_statfs = sf;
	return 0;
}

void ctl_put_request(struct ctl_line *l, const struct ctl_req_stat *q)
{
	ctl_add_str(l, "kind", q->kind);
	ctl_add_u64(l, "count", q->count);
	ctl_add_u64(l, "busy_us", q->busy_us);
}

int ctl_get_request(const struct ctl_msg *m, struct ctl_req_stat *ret)
{
	memset(ret, 0, sizeof(*ret));
	const char *kind = ctl_get(m, "kind");
	size_t n = kind ? strlen(kind) : 0;
	if (n == 0 || name_len(kind, kind + n, true) != n) /* a key's grammar */
		return -EBADMSG;
	int r = ctl_get_u64(m, "count", &ret->count);
	r = r ? r : ctl_get_u64(m, "busy_us", &ret->busy_us);
	if (r < 0)
		return -EBADMSG;
	memcpy(ret->kind, kind, n + 1);
	return 0;
}
