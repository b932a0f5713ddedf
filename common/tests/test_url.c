/* test_url — url_parse() / url_query_get(): every URL shape braidfs uses, IPv6, ports,
 * percent-decoding, and garbage that must be refused with a reason. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/url.h"

static void ok(const char *s, struct url *u)
{
	char err[256] = "";
	int r = url_parse(s, u, err, sizeof(err));

	if (r != 0)
		fail_msg("url_parse(%s) = %d (%s)", s, r, err);
}

static void bad(const char *s)
{
	struct url u;
	char err[256] = "";

	assert_int_equal(url_parse(s, &u, err, sizeof(err)), -EINVAL);
	assert_true(err[0] != '\0'); /* a reason for the user */
}

static void test_sqlite(void **state)
{
	struct url u;
	(void)state;

	ok("sqlite:///var/lib/braidfs/meta.db", &u);
	assert_string_equal(u.scheme, "sqlite");
	assert_true(u.has_authority);
	assert_string_equal(u.host, "");
	assert_string_equal(u.userinfo, "");
	assert_int_equal(u.port, 0);
	assert_string_equal(u.path, "/var/lib/braidfs/meta.db");
	assert_string_equal(u.query, "");

	/* two slashes: the first component is a host */
	ok("sqlite://relative.db", &u);
	assert_string_equal(u.host, "relative.db");
	assert_string_equal(u.path, "");

	/* no authority: relative path stays relative */
	ok("sqlite:relative.db", &u);
	assert_false(u.has_authority);
	assert_string_equal(u.path, "relative.db");
}

static void test_postgres(void **state)
{
	struct url u;
	(void)state;

	ok("postgres://user@host:5432/db", &u);
	assert_string_equal(u.scheme, "postgres");
	assert_string_equal(u.userinfo, "user");
	assert_string_equal(u.host, "host");
	assert_int_equal(u.port, 5432);
	assert_string_equal(u.path, "/db");

	ok("postgres://user:secret@db.example.com/braid?sslmode=require", &u);
	assert_string_equal(u.userinfo, "user:secret");
	assert_string_equal(u.host, "db.example.com");
	assert_int_equal(u.port, 0);
	assert_string_equal(u.path, "/braid");
	assert_string_equal(u.query, "sslmode=require");

	/* authority only */
	ok("postgres://host", &u);
	assert_string_equal(u.host, "host");
	assert_string_equal(u.path, "");
	ok("postgres://host?x=1", &u);
	assert_string_equal(u.host, "host");
	assert_string_equal(u.path, "");
	assert_string_equal(u.query, "x=1");
}

static void test_no_authority(void **state)
{
	struct url u;
	(void)state;

	ok("dir:/srv/t1", &u);
	assert_string_equal(u.scheme, "dir");
	assert_false(u.has_authority);
	assert_string_equal(u.host, "");
	assert_string_equal(u.path, "/srv/t1");

	ok("file:/dev/nvme0n1", &u);
	assert_string_equal(u.path, "/dev/nvme0n1");

	ok("x:", &u);
	assert_string_equal(u.scheme, "x");
	assert_string_equal(u.path, "");
}

static void test_iscsi_nbd(void **state)
{
	struct url u;
	char v[64];
	(void)state;

	ok("iscsi://127.0.0.1:3260/iqn.2024-01.org.example:t1/0", &u);
	assert_string_equal(u.scheme, "iscsi");
	assert_string_equal(u.host, "127.0.0.1");
	assert_int_equal(u.port, 3260);
	assert_string_equal(u.path, "/iqn.2024-01.org.example:t1/0");

	ok("nbd+unix:///export?socket=/tmp/nbd.sock", &u);
	assert_string_equal(u.scheme, "nbd+unix");
	assert_true(u.has_authority);
	assert_string_equal(u.host, "");
	assert_string_equal(u.path, "/export");
	assert_int_equal(url_query_get(&u, "socket", v, sizeof(v)), 0);
	assert_string_equal(v, "/tmp/nbd.sock");
}

static void test_scheme_case_and_chars(void **state)
{
	struct url u;
	(void)state;

	ok("SQLite:///x.db", &u);
	assert_string_equal(u.scheme, "sqlite");
	ok("a-b.c+d:/x", &u);
	assert_string_equal(u.scheme, "a-b.c+d");
}

static void test_ipv6(void **state)
{
	struct url u;
	(void)state;

	ok("iscsi://[::1]:3260/iqn.x/0", &u);
	assert_string_equal(u.host, "::1");
	assert_int_equal(u.port, 3260);
	assert_string_equal(u.path, "/iqn.x/0");

	ok("postgres://me@[2001:db8::1]/db", &u);
	assert_string_equal(u.userinfo, "me");
	assert_string_equal(u.host, "2001:db8::1");
	assert_int_equal(u.port, 0);
	assert_string_equal(u.path, "/db");

	ok("tcp://[fe80::1]", &u);
	assert_string_equal(u.host, "fe80::1");

	bad("tcp://[::1/x");   /* unterminated */
	bad("tcp://[::1]x/y"); /* junk after ] */
	bad("tcp://[::1]:/y"); /* empty port */
	bad("tcp://[::1]:99999/y");
	bad("tcp://::1/x"); /* unbracketed: "" host, port ":1" */
}

static void test_ports(void **state)
{
	struct url u;
	(void)state;

	ok("tcp://h:1/", &u);
	assert_int_equal(u.port, 1);
	ok("tcp://h:65535/", &u);
	assert_int_equal(u.port, 65535);
	ok("tcp://h:0080", &u);
	assert_int_equal(u.port, 80);

	bad("tcp://h:/x");
	bad("tcp://h:0/x");
	bad("tcp://h:65536/x");
	bad("tcp://h:99999999999999999999999/x");
	bad("tcp://h:12a/x");
	bad("tcp://h:-1/x");
	bad("tcp://h: 1/x");
}

static void test_percent(void **state)
{
	struct url u;
	(void)state;

	ok("dir:/a%20b", &u);
	assert_string_equal(u.path, "/a b");
	ok("dir:/a%2Fb%2fc", &u);
	assert_string_equal(u.path, "/a/b/c");
	ok("dir:/%41%62%7e", &u);
	assert_string_equal(u.path, "/Ab~");
	ok("dir:/x%25", &u);
	assert_string_equal(u.path, "/x%");

	bad("dir:/a%zz");
	bad("dir:/a%4");
	bad("dir:/a%");
	bad("dir:/a%00b"); /* NUL would cut the path short */
	bad("dir:/a%g0");
}

static void test_garbage(void **state)
{
	struct url u;
	(void)state;

	bad("");
	bad("nocolon");
	bad("/abs/path.db");
	bad(":x");
	bad("1abc:/x");
	bad("a b:/x");
	bad("sql_ite:/x");
	bad("abcdefghijklmnopqrstuvwxyzabcdefg:/x"); /* scheme > 31 chars */
	assert_int_equal(url_parse(NULL, &u, NULL, 0), -EINVAL);
	/* err may be NULL */
	assert_int_equal(url_parse("nocolon", &u, NULL, 0), -EINVAL);
	/* a tiny err buffer is still terminated */
	char small[8];
	assert_int_equal(url_parse("nocolon", &u, small, sizeof(small)), -EINVAL);
	assert_int_equal(strlen(small), sizeof(small) - 1);
}

static void test_limits(void **state)
{
	char s[URL_MAX + 16];
	struct url u;
	(void)state;

	/* URL_MAX - 1 characters parse; URL_MAX do not */
	memset(s, 'a', sizeof(s));
	memcpy(s, "dir:/", 5);
	s[URL_MAX - 1] = '\0';
	ok(s, &u);
	assert_int_equal(strlen(u.path), URL_MAX - 1 - 4);
	s[URL_MAX - 1] = 'a';
	s[URL_MAX] = '\0';
	bad(s);

	/* host of 255 fits, 256 does not */
	memset(s, 'h', sizeof(s));
	memcpy(s, "tcp://", 6);
	strcpy(s + 6 + 255, "/x");
	ok(s, &u);
	assert_int_equal(strlen(u.host), 255);
	memset(s, 'h', sizeof(s));
	memcpy(s, "tcp://", 6);
	strcpy(s + 6 + 256, "/x");
	bad(s);

	/* user part of 128 does not fit */
	memset(s, 'u', sizeof(s));
	memcpy(s, "tcp://", 6);
	strcpy(s + 6 + 128, "@h/x");
	bad(s);
}

static void test_query_get(void **state)
{
	struct url u;
	char v[16];
	(void)state;

	ok("x://h/p?a=1&b=two&ab=3&c=&d=%41%20z", &u);
	assert_int_equal(url_query_get(&u, "a", v, sizeof(v)), 0);
	assert_string_equal(v, "1");
	assert_int_equal(url_query_get(&u, "b", v, sizeof(v)), 0);
	assert_string_equal(v, "two");
	assert_int_equal(url_query_get(&u, "ab", v, sizeof(v)), 0);
	assert_string_equal(v, "3");
	assert_int_equal(url_query_get(&u, "c", v, sizeof(v)), 0);
	assert_string_equal(v, "");
	assert_int_equal(url_query_get(&u, "d", v, sizeof(v)), 0);
	assert_string_equal(v, "A z");
	assert_int_equal(url_query_get(&u, "zz", v, sizeof(v)), -ENOENT);
	assert_int_equal(url_query_get(&u, "", v, sizeof(v)), -ENOENT);
	/* value longer than the buffer */
	assert_int_equal(url_query_get(&u, "b", v, 3), -EINVAL);

	/* the query is kept raw; a key without '=' is skipped */
	ok("x:/p?flag&k=v", &u);
	assert_string_equal(u.query, "flag&k=v");
	assert_int_equal(url_query_get(&u, "flag", v, sizeof(v)), -ENOENT);
	assert_int_equal(url_query_get(&u, "k", v, sizeof(v)), 0);
	assert_string_equal(v, "v");

	ok("x:/p?k=%zz", &u);
	assert_int_equal(url_query_get(&u, "k", v, sizeof(v)), -EINVAL);
	ok("x:/p", &u);
	assert_int_equal(url_query_get(&u, "k", v, sizeof(v)), -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sqlite),
	    cmocka_unit_test(test_postgres),
	    cmocka_unit_test(test_no_authority),
	    cmocka_unit_test(test_iscsi_nbd),
	    cmocka_unit_test(test_scheme_case_and_chars),
	    cmocka_unit_test(test_ipv6),
	    cmocka_unit_test(test_ports),
	    cmocka_unit_test(test_percent),
	    cmocka_unit_test(test_garbage),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_query_get),
	};
	return cmocka_run_group_tests_name("url", tests, NULL, NULL);
}
