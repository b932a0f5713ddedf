/* test_util — parse_size / fmt_size edge cases, clocks, monotonic condition waits, full-length
 * I/O, uuids, mkdir_p. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"

static uint64_t size_ok(const char *s)
{
	uint64_t v = 12345;
	int r = parse_size(s, &v);

	if (r != 0)
		fail_msg("parse_size(\"%s\") = %d", s, r);
	return v;
}

static void size_bad(const char *s, int want)
{
	uint64_t v = 12345;

	assert_int_equal(parse_size(s, &v), want);
	assert_int_equal(v, 12345); /* untouched on failure */
}

static void test_parse_size_units(void **state)
{
	(void)state;
	assert_int_equal(size_ok("0"), 0);
	assert_int_equal(size_ok("4096"), 4096);
	assert_int_equal(size_ok("4096b"), 4096);
	assert_int_equal(size_ok("4096B"), 4096);
	assert_int_equal(size_ok("512k"), 512ull << 10);
	assert_int_equal(size_ok("512K"), 512ull << 10);
	assert_int_equal(size_ok("4M"), 4ull << 20);
	assert_int_equal(size_ok("4MB"), 4ull << 20);
	assert_int_equal(size_ok("4MiB"), 4ull << 20);
	assert_int_equal(size_ok("4mib"), 4ull << 20);
	assert_int_equal(size_ok("1G"), 1ull << 30);
	assert_int_equal(size_ok("1GiB"), 1ull << 30);
	assert_int_equal(size_ok("3T"), 3ull << 40);
	assert_int_equal(size_ok("007"), 7);
	assert_int_equal(size_ok("0K"), 0);
}

static void test_parse_size_limits(void **state)
{
	(void)state;
	assert_true(size_ok("18446744073709551615") == UINT64_MAX);
	size_bad("18446744073709551616", -ERANGE);
	size_bad("99999999999999999999999", -ERANGE);
	assert_true(size_ok("16777215T") == (16777215ull << 40));
	size_bad("16777216T", -ERANGE); /* 2^64 */
	assert_true(size_ok("17179869183G") == (17179869183ull << 30));
	size_bad("17179869184G", -ERANGE);
}

static void test_parse_size_garbage(void **state)
{
	uint64_t v;
	(void)state;

	assert_int_equal(parse_size(NULL, &v), -EINVAL);
	size_bad("", -EINVAL);
	size_bad("M", -EINVAL);
	size_bad("-1", -EINVAL);
	size_bad("+1", -EINVAL);
	size_bad(" 4", -EINVAL);
	size_bad("4 ", -EINVAL);
	size_bad("4 M", -EINVAL);
	size_bad("4.5M", -EINVAL);
	size_bad("1e3", -EINVAL);
	size_bad("0x10", -EINVAL);
	size_bad("4P", -EINVAL);
	size_bad("4Mx", -EINVAL);
	size_bad("4MiBx", -EINVAL);
	size_bad("4iB", -EINVAL);
	size_bad("4bb", -EINVAL);
	size_bad("4KK", -EINVAL);
}

static void test_fmt_size(void **state)
{
	char b[32];
	(void)state;

	assert_string_equal(fmt_size(0, b, sizeof(b)), "0 B");
	assert_string_equal(fmt_size(1023, b, sizeof(b)), "1023 B");
	assert_string_equal(fmt_size(1024, b, sizeof(b)), "1.0 KiB");
	assert_string_equal(fmt_size(1536, b, sizeof(b)), "1.5 KiB");
	assert_string_equal(fmt_size(4ull << 20, b, sizeof(b)), "4.0 MiB");
	assert_string_equal(fmt_size(3ull << 40, b, sizeof(b)), "3.0 TiB");
	assert_string_equal(fmt_size(1ull << 50, b, sizeof(b)), "1.0 PiB");
	/* beyond PiB stays in PiB */
	assert_string_equal(fmt_size(1ull << 60, b, sizeof(b)), "1024.0 PiB");
	/* truncated, still terminated */
	char s[4];
	fmt_size(1536, s, sizeof(s));
	assert_int_equal(strlen(s), 3);
}

static void test_clocks(void **state)
{
	(void)state;
	int64_t r1 = now_realtime_ns(), m1 = now_monotonic_ns();
	int64_t m2 = now_monotonic_ns();

	assert_true(r1 > 1600000000ll * 1000000000ll); /* after 2020 */
	assert_true(m1 > 0);
	assert_true(m2 >= m1);
}

/* Wait on an unsignalled condition until deadline: never before it (a CLOCK_REALTIME condition
 * would take a monotonic deadline for a date in 1970 and time out at once). */
static void wait_out(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline)
{
	int r;

	pthread_mutex_lock(m);
	while ((r = cond_wait_until(c, m, deadline)) == 0)
		; /* spurious wakeup */
	pthread_mutex_unlock(m);
	assert_int_equal(r, ETIMEDOUT);
	assert_true(now_monotonic_ns() >= deadline);
}

static void test_cond_wait_until(void **state)
{
	(void)state;
	pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t c;

	assert_int_equal(cond_init_monotonic(&c), 0);
	wait_out(&c, &m, now_monotonic_ns() - 1000000);	 /* passed already */
	wait_out(&c, &m, now_monotonic_ns() + 20000000); /* 20 ms ahead */
	pthread_cond_destroy(&c);
}

static char tmpdir[PATH_MAX];

static int setup_tmp(void **state)
{
	(void)state;
	const char *base = getenv("TMPDIR");

	snprintf(tmpdir, sizeof(tmpdir), "%s/braidfs-util-XXXXXX", base ? base : "/tmp");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
	char cmd[PATH_MAX + 16];
	(void)state;

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_pwrite_pread_full(void **state)
{
	char path[PATH_MAX + 16], buf[8192], got[8192];
	int fd;
	(void)state;

	snprintf(path, sizeof(path), "%s/f", tmpdir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (char)(i * 7);
	assert_int_equal(pwrite_full(fd, buf, sizeof(buf), 100), 0);
	assert_int_equal(pread_full(fd, got, sizeof(got), 100), 0);
	assert_memory_equal(buf, got, sizeof(buf));
	/* the hole before it reads as zeros */
	assert_int_equal(pread_full(fd, got, 100, 0), 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(got[i], 0);
	/* past the end: -ENODATA, short at the end: -ENODATA */
	assert_int_equal(pread_full(fd, got, 10, 100 + sizeof(buf)), -ENODATA);
	assert_int_equal(pread_full(fd, got, 10, 100 + sizeof(buf) - 5), -ENODATA);
	/* zero length is a no-op */
	assert_int_equal(pwrite_full(fd, buf, 0, 0), 0);
	assert_int_equal(pread_full(fd, got, 0, 1 << 30), 0);
	close(fd);

	assert_int_equal(pwrite_full(-1, buf, 1, 0), -EBADF);
	assert_int_equal(pread_full(-1, buf, 1, 0), -EBADF);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite_full(fd, buf, 1, 0), -EBADF);
	close(fd);
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void test_uuid(void **state)
{
	char a[37], b[37];
	(void)state;

	assert_int_equal(uuid_generate_str(a), 0);
	assert_int_equal(uuid_generate_str(b), 0);
	assert_int_equal(strlen(a), 36);
	assert_string_not_equal(a, b);
	for (int i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23)
			assert_int_equal(a[i], '-');
		else
			assert_true(is_hex(a[i]));
	}
	assert_int_equal(a[14], '4');		/* version 4 */
	assert_non_null(strchr("89ab", a[19])); /* RFC 4122 variant */
}

static void test_mkdir_p(void **state)
{
	char path[PATH_MAX + 64], file[PATH_MAX + 64];
	struct stat sb;
	(void)state;

	snprintf(path, sizeof(path), "%s/a/b/c", tmpdir);
	assert_int_equal(mkdir_p(path, 0755), 0);
	assert_int_equal(stat(path, &sb), 0);
	assert_true(S_ISDIR(sb.st_mode));
	/* again: already there */
	assert_int_equal(mkdir_p(path, 0755), 0);
	/* trailing slash, doubled slashes */
	snprintf(path, sizeof(path), "%s/d//e/", tmpdir);
	assert_int_equal(mkdir_p(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/d/e", tmpdir);
	assert_int_equal(stat(path, &sb), 0);
	/* a file in the way */
	snprintf(file, sizeof(file), "%s/file", tmpdir);
	int fd = open(file, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
	snprintf(path, sizeof(path), "%s/file/x", tmpdir);
	assert_int_equal(mkdir_p(path, 0755), -ENOTDIR);
	/* too long */
	char *longp = malloc(PATH_MAX + 10);
	assert_non_null(longp);
	memset(longp, 'a', PATH_MAX + 9);
	longp[0] = '/';
	longp[PATH_MAX + 9] = '\0';
	assert_int_equal(mkdir_p(longp, 0755), -ENAMETOOLONG);
	free(longp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_size_units),
	    cmocka_unit_test(test_parse_size_limits),
	    cmocka_unit_test(test_parse_size_garbage),
	    cmocka_unit_test(test_fmt_size),
	    cmocka_unit_test(test_clocks),
	    cmocka_unit_test(test_cond_wait_until),
	    cmocka_unit_test(test_pwrite_pread_full),
	    cmocka_unit_test(test_uuid),
	    cmocka_unit_test(test_mkdir_p),
	};
	return cmocka_run_group_tests_name("util", tests, setup_tmp, teardown_tmp);
}
