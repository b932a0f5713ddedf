/* test_ctl — the control protocol's parser (every bound and every malformed form), encoder
 * round trips, the line reader over a socket (partial reads, oversize lines, EOF mid-line,
 * non-blocking), and the data-service struct mappings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tools/ctl.h"

static struct ctl_msg m;
static char why[256];

static int parse(const char *s, enum ctl_dir d)
{
	why[0] = '\0';
	return ctl_parse(s, strlen(s), d, &m, why, sizeof(why));
}

static void bad(const char *s, enum ctl_dir d, const char *needle)
{
	int r = parse(s, d);
	if (r != -EBADMSG)
		fail_msg("'%s' parsed (%d)", s, r);
	if (!strstr(why, needle))
		fail_msg("'%s': reason '%s' lacks '%s'", s, why, needle);
}

static void test_parse_ok(void **state)
{
	(void)state;
	assert_int_equal(parse("hello version=1", CTL_C2D), 0);
	assert_int_equal(m.type, CTL_C2D_HELLO);
	assert_int_equal(m.nf, 1);
	assert_string_equal(ctl_get(&m, "version"), "1");
	assert_null(ctl_get(&m, "pid"));

	assert_int_equal(parse("hello version=1 pid=42 volume=v%20one", CTL_D2C), 0);
	assert_int_equal(m.type, CTL_D2C_HELLO);
	assert_string_equal(ctl_get(&m, "volume"), "v one");
	uint64_t v;
	assert_int_equal(ctl_get_u64(&m, "pid", &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(ctl_get_u64(&m, "volume", &v), -EBADMSG);
	assert_int_equal(ctl_get_u64(&m, "nope", &v), -ENOENT);

	assert_int_equal(parse("stats", CTL_C2D), 0); /* no fields */
	assert_int_equal(m.nf, 0);
	assert_int_equal(parse("error msg=", CTL_D2C), 0); /* an empty value */
	assert_string_equal(ctl_get(&m, "msg"), "");
	assert_int_equal(parse("error msg=%25%3d%0A%ff x_1=a=b", CTL_D2C), 0);
	assert_string_equal(ctl_get(&m, "msg"), "%=\n\xff");
	assert_string_equal(ctl_get(&m, "x_1"), "a=b"); /* only the first = splits */
	assert_int_equal(parse("scrub rate=0 repair=1 future_key=ignored", CTL_C2D), 0);
	assert_int_equal(m.type, CTL_C2D_SCRUB);

	uint64_t big;
	assert_int_equal(parse("done problems=18446744073709551615", CTL_D2C), 0);
	assert_int_equal(ctl_get_u64(&m, "problems", &big), 0);
	assert_true(big == UINT64_MAX);
	assert_int_equal(parse("done problems=18446744073709551616", CTL_D2C), 0);
	assert_int_equal(ctl_get_u64(&m, "problems", &big), -EBADMSG);
	assert_int_equal(parse("done problems=000000000000000000001", CTL_D2C), 0);
	assert_int_equal(ctl_get_u64(&m, "problems", &big), -EBADMSG); /* 21 digits */
	assert_int_equal(parse("done problems=-1", CTL_D2C), 0);
	assert_int_equal(ctl_get_u64(&m, "problems", &big), -EBADMSG);
	assert_int_equal(parse("done problems=", CTL_D2C), 0);
	assert_int_equal(ctl_get_u64(&m, "problems", &big), -EBADMSG);
}

static void test_parse_bad(void **state)
{
	(void)state;
	bad("", CTL_C2D, "verb");
	bad(" hello", CTL_C2D, "verb");
	bad("Hello", CTL_C2D, "verb");
	bad("hello1", CTL_C2D, "verb");
	bad("frobnicate", CTL_C2D, "unknown or unexpected message 'frobnicate'");
	bad("progress chunks=1", CTL_C2D, "unexpected"); /* the daemon's message, from a client */
	bad("cancel", CTL_D2C, "unexpected");
	bad("hello ", CTL_C2D, "field 1");
	bad("hello version=1 ", CTL_C2D, "end with a space");
	bad("hello  version=1", CTL_C2D, "field 1");
	bad("hello version", CTL_C2D, "key=value");
	bad("hello =1", CTL_C2D, "key=value");
	bad("hello Version=1", CTL_C2D, "key=value");
	bad("hello version=1 version=2", CTL_C2D, "twice");
	bad("hello version=1\r", CTL_C2D, "0x0d must be escaped");
	bad("hello version=\x01", CTL_C2D, "0x01");
	bad("hello version=\xc3\xa9", CTL_C2D, "0xc3");
	bad("hello version=%", CTL_C2D, "bad escape");
	bad("hello version=%4", CTL_C2D, "bad escape");
	bad("hello version=%4g", CTL_C2D, "bad escape");
	bad("hello version=%00", CTL_C2D, "bad escape");
	char name[64];
	memset(name, 'a', 33);
	name[33] = '\0';
	bad(name, CTL_C2D, "verb"); /* 33 letters */
	char line[CTL_LINE_MAX + 64];
	snprintf(line, sizeof(line), "hello %s=1", name);
	bad(line, CTL_C2D, "key=value");

	/* value and field count limits, and the line limit */
	strcpy(line, "error msg=");
	memset(line + 10, 'x', CTL_VALUE_MAX);
	line[10 + CTL_VALUE_MAX] = '\0';
	assert_int_equal(parse(line, CTL_D2C), 0);
	assert_int_equal(strlen(ctl_get(&m, "msg")), CTL_VALUE_MAX);
	strcat(line, "x");
	bad(line, CTL_D2C, "longer than 1024");
	strcpy(line, "stats");
	for (int i = 0; i < CTL_MAX_FIELDS; i++)
		sprintf(line + strlen(line), " k%d=%d", i, i);
	assert_int_equal(parse(line, CTL_D2C), 0);
	assert_int_equal(m.nf, CTL_MAX_FIELDS);
	strcat(line, " one=more");
	bad(line, CTL_D2C, "more than 32 fields");
	memset(line, 'a', sizeof(line));
	assert_int_equal(ctl_parse(line, CTL_LINE_MAX + 1, CTL_C2D, &m, why, sizeof(why)),
			 -EBADMSG);
	assert_non_null(strstr(why, "at most 4096"));
	/* a NUL inside the line is a byte like any other control byte */
	assert_int_equal(ctl_parse("hello version=1\0x", 17, CTL_C2D, &m, why, sizeof(why)),
			 -EBADMSG);
	/* no reason buffer: still a clean error */
	assert_int_equal(ctl_parse("x", 1, CTL_C2D, &m, NULL, 0), -EBADMSG);
}

static void test_encode_roundtrip(void **state)
{
	(void)state;
	struct ctl_line l;
	ctl_begin(&l, CTL_D2C_ERROR);
	ctl_add_str(&l, "msg",
		    "cannot open target 3 (dir:/srv/t 3): 100% gone=\n\t\x7f\xe2\x82\xac");
	ctl_add_u64(&l, "n", UINT64_MAX);
	assert_int_equal(ctl_end(&l), 0);
	assert_int_equal(l.buf[l.len - 1], '\n');
	assert_int_equal(ctl_parse(l.buf, l.len - 1, CTL_D2C, &m, why, sizeof(why)), 0);
	assert_string_equal(ctl_get(&m, "msg"),
			    "cannot open target 3 (dir:/srv/t 3): 100% gone=\n\t\x7f\xe2\x82\xac");
	uint64_t v;
	assert_int_equal(ctl_get_u64(&m, "n", &v), 0);
	assert_true(v == UINT64_MAX);

	/* a value longer than the limit is cut, never refused; a line that overflows is */
	char big[3 * CTL_VALUE_MAX];
	memset(big, 'y', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ctl_begin(&l, CTL_D2C_ERROR);
	ctl_add_str(&l, "msg", big);
	assert_int_equal(ctl_end(&l), 0);
	assert_int_equal(ctl_parse(l.buf, l.len - 1, CTL_D2C, &m, why, sizeof(why)), 0);
	assert_int_equal(strlen(ctl_get(&m, "msg")), CTL_VALUE_MAX);
	memset(big, '%', sizeof(big) - 1); /* every byte escaped: 3 fields of 3 KiB overflow */
	ctl_begin(&l, CTL_D2C_ERROR);
	for (int i = 0; i < 3; i++) {
		char k[8];
		snprintf(k, sizeof(k), "m%d", i);
		ctl_add_str(&l, k, big);
	}
	assert_int_equal(ctl_end(&l), -E2BIG);
	ctl_begin(&l, CTL_D2C_ERROR);
	ctl_add_u64(&l, "Bad-Key", 1); /* our own bug: never sent */
	assert_int_equal(ctl_end(&l), -E2BIG);
	ctl_begin(&l, CTL_UNKNOWN);
	assert_int_equal(ctl_end(&l), -E2BIG);
}

/* End l and parse it back into m (a daemon's message). */
static void reparse(struct ctl_line *l)
{
	assert_int_equal(ctl_end(l), 0);
	assert_int_equal(ctl_parse(l->buf, l->len - 1, CTL_D2C, &m, why, sizeof(why)), 0);
}

static void test_structs(void **state)
{
	(void)state;
	struct ds_check_result r = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, UINT64_MAX}, r2;
	struct ctl_line l;
	ctl_begin(&l, CTL_D2C_PROGRESS);
	ctl_put_result(&l, &r);
	reparse(&l);
	assert_int_equal(ctl_get_result(&m, &r2), 0);
	assert_memory_equal(&r, &r2, sizeof(r));
	assert_int_equal(parse("progress chunks=7", CTL_D2C), 0); /* absent: 0 */
	assert_int_equal(ctl_get_result(&m, &r2), 0);
	assert_int_equal(r2.chunks, 7);
	assert_int_equal(r2.repaired, 0);
	assert_int_equal(parse("progress chunks=x", CTL_D2C), 0);
	assert_int_equal(ctl_get_result(&m, &r2), -EBADMSG);

	struct ds_stats s = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, s2;
	ctl_begin(&l, CTL_D2C_STATS);
	ctl_put_stats(&l, &s);
	reparse(&l);
	assert_int_equal(ctl_get_stats(&m, &s2), 0);
	assert_memory_equal(&s, &s2, sizeof(s));

	struct ds_target_stat t, t2; /* zeroed whole: the padding is compared too */
	memset(&t, 0, sizeof(t));
	t.id = 4000000000u;
	t.open = t.has_counters = t.has_statfs = true;
	t.counters = (struct sm_counters){.csum_errors = 3, .bytes_read = 4, .bytes_written = 5};
	t.statfs = (struct sm_statfs){6, 7, 8, 9};
	ctl_begin(&l, CTL_D2C_TARGET);
	ctl_put_target(&l, &t);
	reparse(&l);
	assert_int_equal(ctl_get_target(&m, &t2), 0);
	assert_memory_equal(&t, &t2, sizeof(t));
	assert_int_equal(parse("target open=1", CTL_D2C), 0);
	assert_int_equal(ctl_get_target(&m, &t2), -EBADMSG); /* id is required */
	assert_int_equal(parse("target id=4294967296", CTL_D2C), 0);
	assert_int_equal(ctl_get_target(&m, &t2), -EBADMSG);
	assert_int_equal(parse("target id=1 open=2", CTL_D2C), 0);
	assert_int_equal(ctl_get_target(&m, &t2), -EBADMSG);
	assert_int_equal(parse("target id=1 open=1 counters=0", CTL_D2C), 0);
	assert_int_equal(ctl_get_target(&m, &t2), 0);
	assert_true(t2.open && !t2.has_counters && !t2.has_statfs);

	struct ctl_req_stat q = {.kind = "copy_file_range", .count = 7, .busy_us = UINT64_MAX}, q2;
	ctl_begin(&l, CTL_D2C_REQUEST);
	ctl_put_request(&l, &q);
	reparse(&l);
	assert_int_equal(ctl_get_request(&m, &q2), 0);
	assert_string_equal(q2.kind, "copy_file_range");
	assert_true(q2.count == 7 && q2.busy_us == UINT64_MAX);
	static const char *const bad_requests[] = {
	    "request count=1 busy_us=2",					/* no kind */
	    "request kind=write busy_us=2",					/* no count */
	    "request kind=write count=1",					/* no busy_us */
	    "request kind=Write count=1 busy_us=2",				/* not a name */
	    "request kind=a%20b count=1 busy_us=2",				/* not a name */
	    "request kind=write count=-1 busy_us=2",				/* not a number */
	    "request kind=abcdefghijabcdefghijabcdefghijabc count=1 busy_us=2", /* 33 bytes */
	};
	for (size_t i = 0; i < sizeof(bad_requests) / sizeof(*bad_requests); i++) {
		assert_int_equal(parse(bad_requests[i], CTL_D2C), 0);
		assert_int_equal(ctl_get_request(&m, &q2), -EBADMSG);
	}
	assert_int_equal(parse("request kind=write count=1 busy_us=2", CTL_C2D), -EBADMSG);
}

static void test_reader(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct ctl_reader r;
	ctl_reader_init(&r, sv[0]);
	char out[CTL_LINE_MAX + 1];
	size_t n;
	/* two lines in one write, one line in three writes */
	assert_int_equal(write(sv[1], "stats\nhello version=1\nsc", 24), 24);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), 0);
	assert_string_equal(out, "stats");
	assert_int_equal(n, 5);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), 0);
	assert_string_equal(out, "hello version=1");
	assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), -EAGAIN);
	assert_int_equal(write(sv[1], "rub rate", 8), 8);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), -EAGAIN);
	assert_int_equal(write(sv[1], "=0\n", 3), 3);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), 0);
	assert_string_equal(out, "scrub rate=0");
	assert_int_equal(fcntl(sv[0], F_SETFL, 0), 0);
	/* exactly the longest line, then one byte more */
	static char big[CTL_LINE_MAX + 2];
	memset(big, 'a', CTL_LINE_MAX);
	big[CTL_LINE_MAX] = '\n';
	assert_int_equal(write(sv[1], big, CTL_LINE_MAX + 1), CTL_LINE_MAX + 1);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), 0);
	assert_int_equal(n, CTL_LINE_MAX);
	memset(big, 'b', CTL_LINE_MAX + 1);
	assert_int_equal(write(sv[1], big, CTL_LINE_MAX + 1), CTL_LINE_MAX + 1);
	ctl_reader_init(&r, sv[0]);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), -EBADMSG);
	/* end of stream: clean at a line boundary, an error inside a line */
	int sw[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sw), 0);
	ctl_reader_init(&r, sw[0]);
	assert_int_equal(write(sw[1], "end\nhal", 7), 7);
	close(sw[1]);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), 0);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), -EBADMSG);
	close(sw[0]);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sw), 0);
	ctl_reader_init(&r, sw[0]);
	close(sw[1]);
	assert_int_equal(ctl_read_line(&r, out, sizeof(out), &n), -ENODATA);
	close(sw[0]);
	/* ctl_send to a closed peer: an error, not SIGPIPE */
	struct ctl_line l;
	ctl_begin(&l, CTL_C2D_STATS);
	assert_int_equal(ctl_end(&l), 0);
	close(sv[0]);
	assert_int_equal(ctl_send(sv[1], &l), -EPIPE);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_ok),	     cmocka_unit_test(test_parse_bad),
	    cmocka_unit_test(test_encode_roundtrip), cmocka_unit_test(test_structs),
	    cmocka_unit_test(test_reader),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
