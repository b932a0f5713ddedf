/* test_config — the node configuration parser: a full file, defaults, and one refusal per kind
 * of bad input, each with its line:column. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/config.h"

static int parse(const char *s, struct cfg_node *c, char *err)
{
	return cfg_parse(s, strlen(s), c, err, 256);
}

static void test_full(void **state)
{
	(void)state;
	struct cfg_node c;
	char err[256] = "";
	const char *y = "node: n1\n"
			"listen: 10.77.0.1:7410\n"
			"meta: postgres://braidfs@10.77.0.9/braidfs\n"
			"targets:\n"
			"  - file:/var/lib/braidfs/n1.img\n"
			"  - dir:/srv/t\n"
			"heartbeat_ms: 200\n"
			"lease_ms: 1000\n"
			"replace_after_s: 60\n"
			"resync_rate: 64MiB\n"
			"grace_ms: 750\n"
			"state_check_beats: 3\n"
			"local_reads: true\n";
	assert_int_equal(parse(y, &c, err), 0);
	assert_int_equal(c.grace_ms, 750);
	assert_int_equal(c.state_check_beats, 3);
	assert_string_equal(c.node, "n1");
	assert_string_equal(c.listen, "10.77.0.1:7410");
	assert_string_equal(c.meta, "postgres://braidfs@10.77.0.9/braidfs");
	assert_int_equal(c.ntargets, 2);
	assert_string_equal(c.targets[1], "dir:/srv/t");
	assert_int_equal(c.heartbeat_ms, 200);
	assert_int_equal(c.lease_ms, 1000);
	assert_int_equal(c.replace_after_s, 60);
	assert_int_equal(c.resync_rate, 64ull << 20);
	assert_true(c.local_reads);
}

static void test_defaults_and_flow(void **state)
{
	(void)state;
	struct cfg_node c;
	char err[256] = "";
	assert_int_equal(parse("{node: a, listen: '[::1]:1', meta: 'sqlite:///x', targets: "
			       "[dir:/t]}",
			       &c, err),
			 0);
	assert_int_equal(c.heartbeat_ms, 500);
	assert_int_equal(c.lease_ms, 3000);
	assert_int_equal(c.replace_after_s, 600);
	assert_int_equal(c.resync_rate, 256ull << 20);
	assert_int_equal(c.grace_ms, 1000); /* 2 x heartbeat_ms */
	assert_int_equal(c.state_check_beats, 8);
	assert_false(c.local_reads);
	assert_string_equal(c.listen, "[::1]:1");
	/* grace_ms follows heartbeat_ms unless given; 0 is allowed (dead as soon as expired) */
	assert_int_equal(parse("{node: a, listen: 'h:1', meta: 'x://y', targets: [dir:/t], "
			       "heartbeat_ms: 300}",
			       &c, err),
			 0);
	assert_int_equal(c.grace_ms, 600);
	assert_int_equal(parse("{node: a, listen: 'h:1', meta: 'x://y', targets: [dir:/t], "
			       "grace_ms: 0}",
			       &c, err),
			 0);
	assert_int_equal(c.grace_ms, 0);
}

static const char base[] = "node: n1\nlisten: h:1\nmeta: postgres://x/y\ntargets: [dir:/t]\n";

static void refused(const char *y, const char *want)
{
	struct cfg_node c;
	memset(&c, 0x5a, sizeof(c));
	char err[256] = "";
	int r = parse(y, &c, err);
	if (r == 0 || !strstr(err, want) || strchr(err, '\n'))
		fail_msg("input <<%s>>: got %d '%s', wanted '%s'", y, r, err, want);
	/* nothing written on failure */
	assert_int_equal(((unsigned char *)&c)[0], 0x5a);
}

static void test_refusals(void **state)
{
	(void)state;
	char buf[1024];
	refused("", "1:1: the file is empty");
	refused("- a\n- b\n", "1:1: the configuration must be a mapping");
	snprintf(buf, sizeof(buf), "%sbogus: 1\n", base);
	refused(buf, "5:1: unknown key 'bogus'");
	snprintf(buf, sizeof(buf), "%snode: n2\n", base);
	refused(buf, "5:1: 'node' is given twice (first at 1:1)");
	refused("node: n1\nlisten: h:1\nmeta: postgres://x/y\n", "'targets' is missing");
	refused("node: 'n 1'\nlisten: h:1\nmeta: postgres://x/y\ntargets: [dir:/t]\n",
		"1:7: node name 'n 1'");
	refused("node: n1\nlisten: h:99999\nmeta: postgres://x/y\ntargets: [dir:/t]\n",
		"2:9: 'listen' must be HOST:PORT");
	refused("node: n1\nlisten: ::1:80\nmeta: postgres://x/y\ntargets: [dir:/t]\n",
		"'listen' must be HOST:PORT");
	refused("node: n1\nlisten: h:1\nmeta: nourl\ntargets: [dir:/t]\n", "3:7: 'meta' must be");
	refused("node: n1\nlisten: h:1\nmeta: postgres://x/y\ntargets: []\n", "'targets' is empty");
	refused("node: n1\nlisten: h:1\nmeta: postgres://x/y\ntargets: dir:/t\n",
		"4:10: 'targets' takes a list");
	refused("node: n1\nlisten: h:1\nmeta: postgres://x/y\ntargets: [dir:/t, dir:/t]\n",
		"target 'dir:/t' is listed twice");
	refused("node: n1\nlisten: h:1\nmeta: postgres://x/y\ntargets: [nourl]\n", "is not a URL");
	snprintf(buf, sizeof(buf), "%sheartbeat_ms: 5\n", base);
	refused(buf, "5:15: 'heartbeat_ms' must be between 10 and 60000, not 5");
	snprintf(buf, sizeof(buf), "%sheartbeat_ms: -5\n", base);
	refused(buf, "'heartbeat_ms' must be a whole number");
	snprintf(buf, sizeof(buf), "%slease_ms: 1x\n", base);
	refused(buf, "'lease_ms' must be a whole number, not '1x'");
	snprintf(buf, sizeof(buf), "%sheartbeat_ms: 1000\nlease_ms: 1500\n", base);
	refused(buf, "6:1: 'lease_ms' (1500) must be at least twice 'heartbeat_ms' (1000)");
	snprintf(buf, sizeof(buf), "%sgrace_ms: 600001\n", base);
	refused(buf, "5:11: 'grace_ms' must be between 0 and 600000, not 600001");
	snprintf(buf, sizeof(buf), "%sstate_check_beats: 0\n", base);
	refused(buf, "'state_check_beats' must be between 1 and 10000, not 0");
	snprintf(buf, sizeof(buf), "%sresync_rate: 1k\n", base);
	refused(buf, "'resync_rate' must be a size per second of at least 1MiB");
	snprintf(buf, sizeof(buf), "%slocal_reads: yes\n", base);
	refused(buf, "'local_reads' must be true or false, not 'yes'");
	snprintf(buf, sizeof(buf), "%snode2: &a x\nx: *a\n", base);
	refused(buf, "unknown key 'node2'");
	refused("node: &a n1\nlisten: *a\n", "2:9: aliases are not allowed");
	refused("node: !!str n1\n", "1:7: 'node': tags are not allowed");
	refused("node: [a]\n", "1:7: 'node' takes a single value");
	snprintf(buf, sizeof(buf), "%s---\nnode: b\n", base);
	refused(buf, "only one document is allowed");
	refused("node: n1\ntargets: [dir:/a, dir:/b\n", "3:1: did not find expected");
	refused("node: \"a\\x01b\"\n", "'node' holds a control character");
	snprintf(buf, sizeof(buf), "%s? [a]\n: 1\n", base);
	refused(buf, "a key must be a plain word");
}

static void test_bounds(void **state)
{
	(void)state;
	struct cfg_node c;
	char err[256] = "";
	size_t big = CFG_FILE_MAX + 1;
	char *s = malloc(big);
	assert_non_null(s);
	memset(s, '#', big);
	assert_int_equal(cfg_parse(s, big, &c, err, sizeof(err)), -EFBIG);
	free(s);
	assert_int_equal(cfg_parse("node: a\0b", 9, &c, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "NUL"));
	/* too many targets */
	char *y = malloc(16384);
	int n = snprintf(y, 16384, "%s", "node: n1\nlisten: h:1\nmeta: postgres://x/y\ntargets:\n");
	for (int i = 0; i <= CFG_MAX_TARGETS; i++)
		n += snprintf(y + n, 16384 - (size_t)n, "  - dir:/t%d\n", i);
	refused(y, "more than 64 targets");
	free(y);
	/* a string at the bound and one past it */
	char longname[200];
	memset(longname, 'a', 64);
	longname[64] = '\0';
	snprintf(err, sizeof(err), "node: %s\n", longname);
	refused(err, "'node' is longer than 63 bytes");
}

static void test_load(void **state)
{
	(void)state;
	char path[] = "/tmp/test_config_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *y = "node: n1\nlisten: h:1\nmeta: postgres://x/y\ntargets: [dir:/t]\nx: 1\n";
	assert_int_equal(write(fd, y, strlen(y)), (ssize_t)strlen(y));
	close(fd);
	struct cfg_node c;
	char err[512];
	assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -EINVAL);
	char want[600];
	snprintf(want, sizeof(want), "%s:5:1: unknown key 'x'", path);
	assert_non_null(strstr(err, want));
	unlink(path);
	assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "No such file"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_full),     cmocka_unit_test(test_defaults_and_flow),
	    cmocka_unit_test(test_refusals), cmocka_unit_test(test_bounds),
	    cmocka_unit_test(test_load),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
