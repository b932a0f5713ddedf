/* Conformance of every block device backend to dev.h (DEV-1..6), against real servers.
 *
 * The URLs come from the environment (tests/services/targets.sh run ... starts tgtd and
 * nbdkit on loopback and sets them): BRAIDFS_TEST_ISCSI_URL, BRAIDFS_TEST_NBD_URL,
 * BRAIDFS_TEST_NBD_UNIX_URL, and BRAIDFS_TEST_ISCSI_CHAP_URL for the login cases. A file:
 * image under $TMPDIR is added when the registry has a "file" backend. Without any backend
 * the program exits 77 (skip).
 *
 * Server kill / revive for the reconnect cases goes through $BRAIDFS_TEST_TARGETS (a command)
 * on $BRAIDFS_TEST_TARGETS_DIR. BRAIDFS_TEST_DEV_ROUNDS sets the random write/read rounds
 * (default 64).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "common/util.h"
#include "storemgr/dev.h"

#define MIB (1024 * 1024ull)

struct backend {
	char name[16];	 /* "iscsi", "nbd", "nbd+unix", "file" */
	char server[16]; /* the name targets.sh kills and revives; "" for file */
	char url[1024];
	bool network;
};

static struct backend backends[4];
static unsigned nbackends;
static char file_image[512];
static unsigned rounds = 64;
static uint64_t seed;

struct fx {
	const struct backend *be;
	struct sm_dev *d;
	char err[512];
};

/* ---------------------------------------------------------------------------------------- */
/* helpers */

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Data that names its own place: word i of a buffer at off, written with tag. */
static void fill(void *buf, size_t len, uint64_t off, uint64_t tag)
{
	uint64_t *w = buf;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = mix((off + i * 8) ^ tag ^ seed);
}

static bool check(const void *buf, size_t len, uint64_t off, uint64_t tag)
{
	const uint64_t *w = buf;
	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != mix((off + i * 8) ^ tag ^ seed)) {
			fprintf(stderr, "mismatch at byte %llu (io at %llu, tag %llu)\n",
				(unsigned long long)(off + i * 8), (unsigned long long)off,
				(unsigned long long)tag);
			return false;
		}
	return true;
}

static uint64_t rnd(uint64_t *state)
{
	*state = mix(*state);
	return *state;
}

static int targets(const char *verb, const char *server)
{
	const char *cmd = getenv("BRAIDFS_TEST_TARGETS"), *dir = getenv("BRAIDFS_TEST_TARGETS_DIR");
	if (!cmd || !dir)
		return -1;
	char line[2048];
	snprintf(line, sizeof(line), "%s %s '%s' %s", cmd, verb, dir, server);
	return system(line);
}

static int free_tcp_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(s, (struct sockaddr *)&a, &l) < 0)
		return 1;
	close(s);
	return ntohs(a.sin_port);
}

/* Open url, expect failure; the message must be one line, start with the URL (redacted)
 * and contain want. */
static void expect_open_error(const char *url, const char *want)
{
	char err[512] = "";
	struct sm_dev *d = NULL;
	int rc = sm_dev_open(url, 0, &d, err, sizeof(err));
	if (rc == 0)
		fprintf(stderr, "%s: opened, expected '%s'\n", url, want);
	assert_true(rc < 0);
	assert_null(d);
	if (!strstr(err, want))
		fprintf(stderr, "%s: got '%s', expected '%s'\n", url, err, want);
	assert_non_null(strstr(err, want));
	assert_null(strchr(err, '\n'));
	fprintf(stderr, "  %s\n", err);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->be = *state;
	int rc = sm_dev_open(f->be->url, 0, &f->d, f->err, sizeof(f->err));
	if (rc < 0) {
		fprintf(stderr, "open %s: %s\n", f->be->url, f->err);
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	sm_dev_close(f->d);
	free(f);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* cases, per backend */

static void test_geometry(void **state)
{
	struct fx *f = *state;
	const char *want = getenv("BRAIDFS_TEST_DEV_SIZE");
	uint64_t size = want ? strtoull(want, NULL, 10) : 64 * MIB;
	assert_int_equal(f->d->size, size);
	assert_int_equal(f->d->size % SM_DEV_ALIGN, 0);
	assert_true(f->d->lbs == 512 || f->d->lbs == 4096);
	assert_true(f->d->desc[0] != '\0');
	assert_true(strncmp(f->d->url, f->be->name, strlen(f->be->name)) == 0);
	fprintf(stderr, "  %s: %llu bytes, lbs %u: %s\n", f->be->name,
		(unsigned long long)f->d->size, f->d->lbs, f->d->desc);
}

static void test_alignment(void **state) /* DEV-1 */
{
	struct fx *f = *state;
	char *buf = sm_dev_alloc(3 * SM_DEV_ALIGN);
	assert_int_equal(sm_dev_pread(f->d, buf, SM_DEV_ALIGN, 512), -EINVAL);
	assert_int_equal(sm_dev_pread(f->d, buf, 512, 0), -EINVAL);
	assert_int_equal(sm_dev_pread(f->d, buf + 512, SM_DEV_ALIGN, 0), -EINVAL);
	assert_int_equal(sm_dev_pwrite(f->d, buf, SM_DEV_ALIGN, 100, 0), -EINVAL);
	assert_int_equal(sm_dev_pwrite(f->d, buf, SM_DEV_ALIGN + 1, 0, 0), -EINVAL);
	assert_int_equal(sm_dev_pwrite(f->d, buf + 8, SM_DEV_ALIGN, 0, 0), -EINVAL);
	struct sm_dev_io io = {.op = SM_DEV_READ, .buf = buf, .len = SM_DEV_ALIGN, .off = 4095};
	assert_int_equal(sm_dev_submit(f->d, &io, 1), -EINVAL);
	assert_int_equal(sm_dev_discard(f->d, 512, SM_DEV_ALIGN), -EINVAL);
	/* the backend's own entry points refuse the same (called without the registry) */
	assert_int_equal(f->d->ops->pread(f->d, buf, SM_DEV_ALIGN, 512), -EINVAL);
	assert_int_equal(f->d->ops->pwrite(f->d, buf + 8, SM_DEV_ALIGN, 0, 0), -EINVAL);
	free(buf);
}

static void test_out_of_range(void **state)
{
	struct fx *f = *state;
	uint64_t size = f->d->size;
	char *buf = sm_dev_alloc(2 * SM_DEV_ALIGN);
	assert_int_equal(sm_dev_pread(f->d, buf, SM_DEV_ALIGN, size), -EINVAL);
	assert_int_equal(sm_dev_pread(f->d, buf, 2 * SM_DEV_ALIGN, size - SM_DEV_ALIGN), -EINVAL);
	assert_int_equal(sm_dev_pwrite(f->d, buf, SM_DEV_ALIGN, size, 0), -EINVAL);
	assert_int_equal(sm_dev_pwrite(f->d, buf, SM_DEV_ALIGN, UINT64_MAX - 4095, 0), -EINVAL);
	assert_int_equal(sm_dev_discard(f->d, size - SM_DEV_ALIGN, 2 * SM_DEV_ALIGN), -EINVAL);
	assert_int_equal(f->d->ops->pread(f->d, buf, SM_DEV_ALIGN, size), -EINVAL);
	/* the last block itself is fine */
	fill(buf, SM_DEV_ALIGN, size - SM_DEV_ALIGN, 1);
	assert_int_equal(sm_dev_pwrite(f->d, buf, SM_DEV_ALIGN, size - SM_DEV_ALIGN, 0), 0);
	memset(buf, 0, SM_DEV_ALIGN);
	assert_int_equal(sm_dev_pread(f->d, buf, SM_DEV_ALIGN, size - SM_DEV_ALIGN), 0);
	assert_true(check(buf, SM_DEV_ALIGN, size - SM_DEV_ALIGN, 1));
	free(buf);
}

static void test_random_rw(void **state)
{
	struct fx *f = *state;
	const size_t maxlen = 3 * MIB; /* above the 1 MiB pieces: splitting is exercised */
	char *buf = sm_dev_alloc(maxlen), *back = sm_dev_alloc(maxlen);
	uint64_t rs = seed ^ 0x1234;
	uint64_t blocks = f->d->size / SM_DEV_ALIGN;
	for (unsigned i = 0; i < rounds; i++) {
		size_t len =
		    (i % 16 == 15 ? maxlen / SM_DEV_ALIGN : 1 + rnd(&rs) % 64) * SM_DEV_ALIGN;
		uint64_t off = rnd(&rs) % (blocks - len / SM_DEV_ALIGN + 1) * SM_DEV_ALIGN;
		fill(buf, len, off, 100 + i);
		assert_int_equal(sm_dev_pwrite(f->d, buf, len, off, 0), 0);
		memset(back, 0xee, len);
		assert_int_equal(sm_dev_pread(f->d, back, len, off), 0);
		assert_true(check(back, len, off, 100 + i));
	}
	free(buf);
	free(back);
}

static void test_submit_batch(void **state)
{
	struct fx *f = *state;
	enum { N = 64, BS = 16 * 1024 };
	char *bufs = sm_dev_alloc((size_t)N * BS);
	struct sm_dev_io ios[N];
	/* first: 64 writes of distinct places, at once */
	for (unsigned i = 0; i < N; i++) {
		uint64_t off = 8 * MIB + (uint64_t)i * 2 * BS;
		fill(bufs + (size_t)i * BS, BS, off, 7);
		ios[i] = (struct sm_dev_io){.op = SM_DEV_WRITE,
					    .buf = bufs + (size_t)i * BS,
					    .len = BS,
					    .off = off,
					    .result = 12345};
	}
	assert_int_equal(sm_dev_submit(f->d, ios, N), 0);
	for (unsigned i = 0; i < N; i++)
		assert_int_equal(ios[i].result, 0);
	/* then: a mixed batch, even ios read back what was written, odd ones write the gaps */
	memset(bufs, 0, (size_t)N * BS);
	for (unsigned i = 0; i < N; i++) {
		bool rd = i % 2 == 0;
		uint64_t off = 8 * MIB + (uint64_t)(rd ? i : i - 1) * 2 * BS + (rd ? 0 : BS);
		if (!rd)
			fill(bufs + (size_t)i * BS, BS, off, 8);
		ios[i] = (struct sm_dev_io){.op = rd ? SM_DEV_READ : SM_DEV_WRITE,
					    .flags = (!rd && i % 4 == 1) ? SM_DEV_FUA : 0,
					    .buf = bufs + (size_t)i * BS,
					    .len = BS,
					    .off = off,
					    .result = 12345};
	}
	assert_int_equal(sm_dev_submit(f->d, ios, N), 0);
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(ios[i].result, 0);
		if (i % 2 == 0)
			assert_true(check(bufs + (size_t)i * BS, BS, ios[i].off, 7));
	}
	/* every odd write landed */
	char *back = sm_dev_alloc(BS);
	for (unsigned i = 1; i < N; i += 2) {
		assert_int_equal(sm_dev_pread(f->d, back, BS, ios[i].off), 0);
		assert_true(check(back, BS, ios[i].off, 8));
	}
	assert_int_equal(sm_dev_submit(f->d, ios, 0), 0);
	free(back);
	free(bufs);
}

static void test_flush_fua(void **state) /* DEV-4 */
{
	struct fx *f = *state;
	char *buf = sm_dev_alloc(64 * 1024);
	fill(buf, 64 * 1024, 20 * MIB, 9);
	assert_int_equal(sm_dev_pwrite(f->d, buf, 64 * 1024, 20 * MIB, 0), 0);
	assert_int_equal(sm_dev_flush(f->d), 0);
	fill(buf, 64 * 1024, 21 * MIB, 10);
	assert_int_equal(sm_dev_pwrite(f->d, buf, 64 * 1024, 21 * MIB, SM_DEV_FUA), 0);
	memset(buf, 0, 64 * 1024);
	assert_int_equal(sm_dev_pread(f->d, buf, 64 * 1024, 21 * MIB), 0);
	assert_true(check(buf, 64 * 1024, 21 * MIB, 10));
	assert_int_equal(sm_dev_flush(f->d), 0);
	free(buf);
}

static void test_discard(void **state)
{
	struct fx *f = *state;
	char *buf = sm_dev_alloc(MIB);
	fill(buf, MIB, 30 * MIB, 11);
	assert_int_equal(sm_dev_pwrite(f->d, buf, MIB, 30 * MIB, 0), 0);
	int rc = sm_dev_discard(f->d, 30 * MIB, MIB);
	/* the test servers are thin (tgt thin_provisioning=1, nbdkit file trims) */
	if (f->be->network)
		assert_int_equal(rc, 0);
	else
		assert_true(rc == 0 || rc == -EOPNOTSUPP);
	assert_int_equal(sm_dev_discard(f->d, 0, 0), rc == 0 ? 0 : rc);
	/* the range is usable afterwards */
	fill(buf, MIB, 30 * MIB, 12);
	assert_int_equal(sm_dev_pwrite(f->d, buf, MIB, 30 * MIB, 0), 0);
	memset(buf, 0, MIB);
	assert_int_equal(sm_dev_pread(f->d, buf, MIB, 30 * MIB), 0);
	assert_true(check(buf, MIB, 30 * MIB, 12));
	free(buf);
}

struct writer {
	struct sm_dev *d;
	uint64_t base, len;
	unsigned id;
	int rc;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	enum { BS = 32 * 1024 };
	char *buf = sm_dev_alloc(4 * BS);
	uint64_t n = w->len / BS, rs = seed + w->id;
	/* each block once, in a scrambled order (stride coprime to n), half of them through
	 * submit in groups of 4 */
	uint64_t stride = 7919 % n ? 7919 : 1;
	for (uint64_t k = 0; k < n && w->rc == 0;) {
		if (rnd(&rs) % 2 && k + 4 <= n) {
			struct sm_dev_io ios[4];
			for (int j = 0; j < 4; j++, k++) {
				uint64_t off = w->base + (k * stride % n) * BS;
				fill(buf + j * BS, BS, off, 1000 + w->id);
				ios[j] = (struct sm_dev_io){
				    .op = SM_DEV_WRITE, .buf = buf + j * BS, .len = BS, .off = off};
			}
			w->rc = sm_dev_submit(w->d, ios, 4);
		} else {
			uint64_t off = w->base + (k * stride % n) * BS;
			fill(buf, BS, off, 1000 + w->id);
			w->rc = sm_dev_pwrite(w->d, buf, BS, off, 0);
			k++;
		}
	}
	free(buf);
	return NULL;
}

static void test_concurrent_writers(void **state) /* DEV-3, DEV-5 */
{
	struct fx *f = *state;
	enum { T = 4 };
	const uint64_t span = 4 * MIB;
	pthread_t th[T];
	struct writer w[T];
	for (unsigned i = 0; i < T; i++) {
		w[i] =
		    (struct writer){.d = f->d, .base = 32 * MIB + i * span, .len = span, .id = i};
		assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
	}
	for (unsigned i = 0; i < T; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].rc, 0);
	}
	char *back = sm_dev_alloc(span);
	for (unsigned i = 0; i < T; i++) {
		assert_int_equal(sm_dev_pread(f->d, back, span, w[i].base), 0);
		assert_true(check(back, span, w[i].base, 1000 + i));
	}
	free(back);
}

static void test_read_only(void **state)
{
	struct fx *f = *state;
	struct sm_dev *ro = NULL;
	char err[512];
	assert_int_equal(sm_dev_open(f->be->url, SM_DEV_RDONLY, &ro, err, sizeof(err)), 0);
	char *buf = sm_dev_alloc(SM_DEV_ALIGN);
	assert_int_equal(sm_dev_pread(ro, buf, SM_DEV_ALIGN, 0), 0);
	assert_int_equal(sm_dev_pwrite(ro, buf, SM_DEV_ALIGN, 0, 0), -EROFS);
	assert_int_equal(sm_dev_discard(ro, 0, SM_DEV_ALIGN), -EROFS);
	assert_int_equal(sm_dev_flush(ro), 0);
	free(buf);
	sm_dev_close(ro);
}

/* The server goes away under an open device and comes back: the next I/O succeeds and sees
 * the data; I/O that was running through the outage succeeds too (DEV-6, NET-3). */
struct looper {
	struct sm_dev *d;
	volatile bool stop;
	unsigned done;
	int rc;
};

static void *looper_main(void *arg)
{
	struct looper *l = arg;
	char *buf = sm_dev_alloc(64 * 1024);
	for (unsigned i = 0; !l->stop && l->rc == 0; i++) {
		uint64_t off = 50 * MIB + (i % 64) * 64 * 1024;
		fill(buf, 64 * 1024, off, 2000);
		l->rc = sm_dev_pwrite(l->d, buf, 64 * 1024, off, 0);
		if (l->rc == 0)
			l->rc = sm_dev_pread(l->d, buf, 64 * 1024, off);
		if (l->rc == 0 && !check(buf, 64 * 1024, off, 2000))
			l->rc = -EILSEQ;
		l->done++;
	}
	free(buf);
	return NULL;
}

static void test_reconnect(void **state)
{
	struct fx *f = *state;
	if (!f->be->network || !getenv("BRAIDFS_TEST_TARGETS")) {
		skip();
		return;
	}
	char *buf = sm_dev_alloc(MIB);
	fill(buf, MIB, 40 * MIB, 13);
	assert_int_equal(sm_dev_pwrite(f->d, buf, MIB, 40 * MIB, 0), 0);
	assert_int_equal(sm_dev_flush(f->d), 0);

	/* a restart while a thread does I/O */
	struct looper l = {.d = f->d};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, looper_main, &l), 0);
	usleep(200 * 1000);
	assert_int_equal(targets("kill", f->be->server), 0);
	usleep(300 * 1000);
	assert_int_equal(targets("revive", f->be->server), 0);
	int64_t t0 = now_monotonic_ns();
	unsigned before = l.done;
	while (l.done < before + 5 && l.rc == 0 && now_monotonic_ns() - t0 < 20000000000ll)
		usleep(10 * 1000);
	l.stop = true;
	pthread_join(th, NULL);
	assert_int_equal(l.rc, 0);
	assert_true(l.done >= before + 5);

	/* a restart while the device is idle: the next I/O reconnects */
	assert_int_equal(targets("kill", f->be->server), 0);
	assert_int_equal(targets("revive", f->be->server), 0);
	memset(buf, 0, MIB);
	assert_int_equal(sm_dev_pread(f->d, buf, MIB, 40 * MIB), 0);
	assert_true(check(buf, MIB, 40 * MIB, 13));
	free(buf);
}

/* A second device on the backend's URL with extra options; NULL when the case does not
 * apply (not a network backend, or no way to kill the servers). */
static struct sm_dev *open_with(const struct fx *f, const char *options)
{
	if (!f->be->network || !getenv("BRAIDFS_TEST_TARGETS"))
		return NULL;
	char url[1100], err[512];
	snprintf(url, sizeof(url), "%s%s%s", f->be->url, strchr(f->be->url, '?') ? "&" : "?",
		 options);
	struct sm_dev *d = NULL;
	int rc = sm_dev_open(url, 0, &d, err, sizeof(err));
	if (rc)
		fprintf(stderr, "%s\n", err);
	assert_int_equal(rc, 0);
	return d;
}

/* The server goes down (`down`: kill or pause) under an open device with `options`: a read
 * and a flush end in -EIO within [min_s, max_s]; after `up` the device works again. */
static void server_outage(void **state, const char *options, const char *down, const char *up,
			  double min_s, double max_s)
{
	struct fx *f = *state;
	struct sm_dev *d = open_with(f, options);
	if (!d) {
		skip();
		return;
	}
	char *buf = sm_dev_alloc(64 * 1024);
	assert_int_equal(sm_dev_pread(d, buf, 64 * 1024, 0), 0);
	assert_int_equal(targets(down, f->be->server), 0);
	int64_t t0 = now_monotonic_ns();
	int rc = sm_dev_pread(d, buf, 64 * 1024, 0);
	double s = (double)(now_monotonic_ns() - t0) / 1e9;
	t0 = now_monotonic_ns();
	int frc = sm_dev_flush(d);
	double fs = (double)(now_monotonic_ns() - t0) / 1e9;
	fprintf(stderr, "  %s: server %s: read -> %d after %.2f s, flush -> %d after %.2f s\n",
		f->be->name, down, rc, s, frc, fs);
	assert_int_equal(targets(up, f->be->server), 0);
	assert_int_equal(rc, -EIO);
	assert_int_equal(frc, -EIO);
	assert_true(s >= min_s && s < max_s);
	assert_true(fs >= min_s && fs < max_s);
	assert_int_equal(sm_dev_pread(d, buf, 64 * 1024, 0), 0);
	free(buf);
	sm_dev_close(d);
}

/* Gone for good: 2 retries cost 100 + 200 ms of backoff plus refused connects. */
static void test_server_gone(void **state)
{
	server_outage(state, "retries=2&timeout=2", "kill", "revive", 0.0, 10.0);
}

/* Hung (SIGSTOP: connections stay open, nothing answers): NET-5 turns the stuck command into
 * a transport failure after io_timeout, then the handshakes time out: 1 s + 2 x 1 s + 100 ms,
 * with slack. */
static void test_server_hung(void **state)
{
	server_outage(state, "retries=1&timeout=1&io_timeout=1&conns=1", "pause", "resume", 1.0,
		      8.0);
}

/* ---------------------------------------------------------------------------------------- */
/* open errors: not per backend */

static const char *env_url(const char *name)
{
	const char *u = getenv(name);
	return u && *u ? u : NULL;
}

/* "scheme://host:PORT/rest" -> the port */
static int url_port(const char *url)
{
	const char *p = strstr(url, "://");
	p = p ? strchr(p + 3, ':') : NULL;
	return p ? atoi(p + 1) : 0;
}

static void test_open_errors_generic(void **state)
{
	expect_open_error("bogus://x/y", "not a device URL");
	expect_open_error("iscsi:/no/authority/0", "expected iscsi://");
	expect_open_error("iscsi://127.0.0.1/not-an-iqn/0", "is not an iSCSI name");
	expect_open_error("iscsi://127.0.0.1/iqn.2026-01.org.braidfs:test", "expected /IQN/LUN");
	expect_open_error("iscsi://127.0.0.1/iqn.2026-01.org.braidfs:test/x1", "LUN 'x1'");
	expect_open_error("iscsi://127.0.0.1/iqn.2026-01.org.braidfs:test/99999", "LUN '99999'");
	expect_open_error("iscsi://127.0.0.1/iqn.2026-01.org.braidfs:test/1?bogus=1",
			  "unknown option 'bogus'");
	expect_open_error("iscsi://127.0.0.1/iqn.2026-01.org.braidfs:test/1?sessions=0",
			  "option sessions=0");
	expect_open_error("iscsi://127.0.0.1/iqn.2026-01.org.braidfs:test/1?sessions=99",
			  "option sessions=99");
	expect_open_error("iscsi://user@127.0.0.1/iqn.2026-01.org.braidfs:test/1",
			  "CHAP credentials");
	expect_open_error("nbd:/x", "expected nbd://");
	expect_open_error("nbd://user@127.0.0.1/x", "no user name");
	expect_open_error("nbd+unix:///x", "needs ?socket=");
	expect_open_error("nbd+unix:///x?socket=relative", "needs ?socket=");
	expect_open_error("nbd+unix://host/x?socket=/tmp/s", "no host");
	expect_open_error("nbd://127.0.0.1/x?socket=/tmp/s", "unknown option 'socket'");
	expect_open_error("nbd://127.0.0.1/x?retries=abc", "option retries=abc");
	/* nothing listens */
	char url[256];
	int port = free_tcp_port();
	snprintf(url, sizeof(url), "iscsi://127.0.0.1:%d/iqn.2026-01.org.braidfs:test/1", port);
	expect_open_error(url, "connection refused");
	snprintf(url, sizeof(url), "nbd://127.0.0.1:%d/disk0", port);
	expect_open_error(url, "connection refused");
	expect_open_error("nbd+unix:///disk0?socket=/nonexistent/braidfs.sock", "no such socket");
	(void)state;
}

static void test_open_errors_iscsi(void **state)
{
	const char *u = env_url("BRAIDFS_TEST_ISCSI_URL");
	if (!u) {
		skip();
		return;
	}
	char url[512];
	int port = url_port(u);
	snprintf(url, sizeof(url), "iscsi://127.0.0.1:%d/iqn.2026-01.org.braidfs:nosuch/1", port);
	expect_open_error(url, "no such target");
	snprintf(url, sizeof(url), "iscsi://127.0.0.1:%d/iqn.2026-01.org.braidfs:test/7", port);
	expect_open_error(url, "no such LUN");
	snprintf(url, sizeof(url), "iscsi://127.0.0.1:%d/iqn.2026-01.org.braidfs:test/0", port);
	expect_open_error(url, "not a disk");
	const char *chap = env_url("BRAIDFS_TEST_ISCSI_CHAP_URL");
	if (chap) {
		/* right credentials: opens, and the password shows nowhere */
		struct sm_dev *d = NULL;
		char err[512];
		int rc = sm_dev_open(chap, 0, &d, err, sizeof(err));
		if (rc)
			fprintf(stderr, "%s\n", err);
		assert_int_equal(rc, 0);
		assert_null(strstr(d->url, "secret"));
		assert_null(strstr(d->desc, "secret"));
		sm_dev_close(d);
		snprintf(
		    url, sizeof(url),
		    "iscsi://braidfs%%wrong-secret@127.0.0.1:%d/iqn.2026-01.org.braidfs:chap/1",
		    port);
		expect_open_error(url, "login failed");
		char err2[512];
		assert_true(sm_dev_open(url, 0, &d, err2, sizeof(err2)) < 0);
		assert_null(strstr(err2, "wrong-secret"));
		snprintf(url, sizeof(url), "iscsi://127.0.0.1:%d/iqn.2026-01.org.braidfs:chap/1",
			 port);
		expect_open_error(url, "login failed");
	}
	(void)state;
}

static void test_open_errors_nbd(void **state)
{
	const char *u = env_url("BRAIDFS_TEST_NBD_URL");
	if (!u) {
		skip();
		return;
	}
	char url[512];
	snprintf(url, sizeof(url), "nbd://127.0.0.1:%d/nosuch", url_port(u));
	expect_open_error(url, "no such export 'nosuch'");
	const char *uu = env_url("BRAIDFS_TEST_NBD_UNIX_URL");
	if (uu) {
		const char *sock = strstr(uu, "socket=");
		assert_non_null(sock);
		snprintf(url, sizeof(url), "nbd+unix:///nosuch?%s", sock);
		expect_open_error(url, "no such export 'nosuch'");
	}
	(void)state;
}

/* ---------------------------------------------------------------------------------------- */

struct tcase {
	const char *name;
	CMUnitTestFunction fn;
};

static const struct tcase per_backend[] = {
    {"geometry", test_geometry},	 {"alignment", test_alignment},
    {"out_of_range", test_out_of_range}, {"random_rw", test_random_rw},
    {"submit_batch", test_submit_batch}, {"flush_fua", test_flush_fua},
    {"discard", test_discard},		 {"concurrent_writers", test_concurrent_writers},
    {"read_only", test_read_only},	 {"reconnect", test_reconnect},
    {"server_gone", test_server_gone},	 {"server_hung", test_server_hung},
};

static void add_backend(const char *name, const char *server, const char *url, bool network)
{
	struct backend *b = &backends[nbackends++];
	snprintf(b->name, sizeof(b->name), "%s", name);
	snprintf(b->server, sizeof(b->server), "%s", server);
	snprintf(b->url, sizeof(b->url), "%s", url);
	b->network = network;
}

int main(void)
{
	const char *r = getenv("BRAIDFS_TEST_DEV_ROUNDS");
	if (r && atoi(r) > 0)
		rounds = (unsigned)atoi(r);
	seed = (uint64_t)now_realtime_ns();
	fprintf(stderr, "test_dev: seed %llu, %u rounds\n", (unsigned long long)seed, rounds);
	const char *u;
	if ((u = env_url("BRAIDFS_TEST_ISCSI_URL")))
		add_backend("iscsi", "iscsi", u, true);
	if ((u = env_url("BRAIDFS_TEST_NBD_URL")))
		add_backend("nbd", "nbd", u, true);
	if ((u = env_url("BRAIDFS_TEST_NBD_UNIX_URL")))
		add_backend("nbd+unix", "nbdunix", u, true);
	if (sm_dev_ops_for("file:/x")) { /* the file backend, when this build has it */
		const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
		snprintf(file_image, sizeof(file_image), "%s/braidfs-test-dev-XXXXXX", tmp);
		int fd = mkstemp(file_image);
		const char *want = getenv("BRAIDFS_TEST_DEV_SIZE");
		if (fd < 0 || ftruncate(fd, want ? atoll(want) : (off_t)(64 * MIB)) < 0)
			return 1;
		close(fd);
		char url[600];
		snprintf(url, sizeof(url), "file:%s", file_image);
		add_backend("file", "", url, false);
	}
	if (!nbackends) {
		fprintf(stderr,
			"test_dev: no device to test (run through tests/services/targets.sh)\n");
		return 77;
	}
	size_t n = nbackends * ARRAY_SIZE(per_backend) + 3, k = 0;
	struct CMUnitTest *tests = calloc(n, sizeof(*tests));
	char **names = calloc(n, sizeof(*names));
	for (unsigned b = 0; b < nbackends; b++)
		for (size_t i = 0; i < ARRAY_SIZE(per_backend); i++) {
			if (asprintf(&names[k], "%s/%s", backends[b].name, per_backend[i].name) < 0)
				return 1;
			tests[k] = (struct CMUnitTest){names[k], per_backend[i].fn, setup, teardown,
						       &backends[b]};
			k++;
		}
	tests[k++] = (struct CMUnitTest){"open_errors", test_open_errors_generic, NULL, NULL, NULL};
	tests[k++] =
	    (struct CMUnitTest){"open_errors_iscsi", test_open_errors_iscsi, NULL, NULL, NULL};
	tests[k++] = (struct CMUnitTest){"open_errors_nbd", test_open_errors_nbd, NULL, NULL, NULL};
	int rc = _cmocka_run_group_tests("sm_dev", tests, k, NULL, NULL);
	for (size_t i = 0; i < k; i++)
		free(names[i]);
	free(names);
	free(tests);
	if (file_image[0])
		unlink(file_image);
	return rc;
}
