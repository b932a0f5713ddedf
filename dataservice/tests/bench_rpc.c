/* bench_rpc — round trips and throughput of remote targets over the tcp transport on this
 * machine, against the same dir target used locally. Not a test: a tool to measure. */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "dataservice/rpc_target.h"

static const char help[] =
    "Usage: bench_rpc [-t THREADS[,THREADS...]] [-s SECONDS] [-w WORKERS] [-o OPS] [-l]\n"
    "                 [-d DIR]\n"
    "\n"
    "Measure remote targets over the tcp transport on 127.0.0.1: a dir target is created\n"
    "in a fresh directory under DIR, served by an in-process server (WORKERS handler\n"
    "threads), and opened as a remote target through one client connection. For every\n"
    "thread count, each thread runs one operation in a loop for SECONDS:\n"
    "\n"
    "  ping        a PING round trip (the transport alone, no handler)\n"
    "  4k-write    4 KiB writes at random 4 KiB offsets of the thread's own 64 MiB\n"
    "  4k-read     4 KiB reads of what 4k-write wrote\n"
    "  1m-write    1 MiB writes, cycling over the thread's 64 MiB\n"
    "  1m-read     1 MiB reads of the same\n"
    "\n"
    "and the same operations on the dir target called directly (local) for comparison.\n"
    "Data stays in the page cache: this measures the protocol, the transport and their\n"
    "threads, not a disk. Results go to stdout, one line per operation and thread count:\n"
    "operations per second, MiB/s, the mean latency, and the CPU time the whole process\n"
    "(client and server) spent per operation, which other load on the machine changes\n"
    "much less than the rates.\n"
    "\n"
    "Options:\n"
    "  -t, --threads LIST   thread counts, comma separated (default 1,4)\n"
    "  -s, --seconds S      seconds per measurement (default 2)\n"
    "  -w, --workers N      server handler threads (default 8)\n"
    "  -o, --ops LIST       only these operations, comma separated (default all)\n"
    "  -l, --no-local       skip the local comparison\n"
    "  -d, --dir DIR        where the target is created (default $TMPDIR or /tmp); it is\n"
    "                       deleted at the end\n"
    "  -h, --help           show this help\n"
    "\n"
    "Exit status: 0 done, 1 a setup or I/O error (one line on stderr), 2 usage error.\n";

#define CS	(4u << 20)
#define SPAN	(64u << 20) /* bytes per thread */
#define VOL	"4a8d3f0e-6b1c-4f5e-9a2b-0c3d4e5f6a7b"
#define MAX_THR 64

enum mode { M_PING, M_W4K, M_R4K, M_W1M, M_R1M, M_COUNT };
static const char *const mode_name[] = {"ping", "4k-write", "4k-read", "1m-write", "1m-read"};
static const size_t mode_size[] = {0, 4096, 4096, 1 << 20, 1 << 20};

struct bench {
	struct sm_target *t; /* remote or local */
	struct xp_client *xc;
	enum mode mode;
	double secs;
	int stop; /* __atomic */
};

struct thr {
	struct bench *b;
	unsigned k;
	uint64_t ops;
	int err;
};

static void *thr_main(void *arg)
{
	struct thr *t = arg;
	struct bench *b = t->b;
	size_t sz = mode_size[b->mode];
	uint8_t *buf = malloc(sz ? sz : 1);
	memset(buf, (int)t->k + 1, sz);
	uint64_t ino = 100 + t->k;
	uint32_t seed = t->k * 7919 + 1;
	uint64_t pos = 0;
	while (!__atomic_load_n(&b->stop, __ATOMIC_RELAXED)) {
		seed = seed * 1103515245 + 12345;
		uint64_t off = sz == 4096 ? (uint64_t)(seed % (SPAN / 4096)) * 4096 : pos;
		pos = (pos + sz) % SPAN;
		uint32_t idx = (uint32_t)(off / CS);
		uint64_t in = off % CS;
		ssize_t r = 0;
		if (b->mode == M_PING) {
			struct proto_body body = {.value = seed};
			struct xp_msg m = {
			    .op = PROTO_OP_PING, .chain = PROTO_NO_CHAIN, .body = &body};
			struct xp_resp resp;
			r = xp_call(b->xc, &m, &resp);
			if (!r)
				xp_resp_fini(&resp);
		} else if (b->mode == M_W4K || b->mode == M_W1M) {
			r = b->t->ops->write(b->t, ino, idx, buf, sz, in);
		} else {
			r = b->t->ops->read(b->t, ino, idx, buf, sz, in);
		}
		if (r < 0) {
			t->err = (int)r;
			break;
		}
		t->ops++;
	}
	free(buf);
	return NULL;
}

static double cpu_us(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec +
	       ru.ru_stime.tv_usec;
}

/* ops/s of nthr threads running b->mode for b->secs, and CPU us per op; 0, or -errno */
static int run(struct bench *b, unsigned nthr, double *ret, double *ret_cpu)
{
	double c0 = cpu_us();
	pthread_t th[MAX_THR];
	struct thr t[MAX_THR];
	__atomic_store_n(&b->stop, 0, __ATOMIC_RELAXED);
	int64_t t0 = now_monotonic_ns();
	for (unsigned i = 0; i < nthr; i++) {
		t[i] = (struct thr){.b = b, .k = i};
		if (pthread_create(&th[i], NULL, thr_main, &t[i]) != 0)
			return -EAGAIN;
	}
	usleep((useconds_t)(b->secs * 1e6));
	__atomic_store_n(&b->stop, 1, __ATOMIC_RELAXED);
	uint64_t ops = 0;
	int err = 0;
	for (unsigned i = 0; i < nthr; i++) {
		pthread_join(th[i], NULL);
		ops += t[i].ops;
		if (t[i].err)
			err = t[i].err;
	}
	*ret = (double)ops / ((now_monotonic_ns() - t0) / 1e9);
	*ret_cpu = ops ? (cpu_us() - c0) / (double)ops : 0;
	return err;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int parse_threads(const char *s, unsigned *out, unsigned *n)
{
	*n = 0;
	while (*s) {
		char *end;
		unsigned long v = strtoul(s, &end, 10);
		if (end == s || v == 0 || v > MAX_THR || *n == 16)
			return -EINVAL;
		out[(*n)++] = (unsigned)v;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -EINVAL;
	}
	return *n ? 0 : -EINVAL;
}

static int parse_ops(const char *s, bool *want)
{
	memset(want, 0, M_COUNT * sizeof(*want));
	while (*s) {
		size_t n = strcspn(s, ",");
		int m = 0;
		while (m < M_COUNT && (strlen(mode_name[m]) != n || strncmp(s, mode_name[m], n)))
			m++;
		if (m == M_COUNT)
			return -EINVAL;
		want[m] = true;
		s += n + (s[n] == ',');
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"threads", required_argument, NULL, 't'}, {"seconds", required_argument, NULL, 's'},
	    {"workers", required_argument, NULL, 'w'}, {"dir", required_argument, NULL, 'd'},
	    {"help", no_argument, NULL, 'h'},	       {NULL, 0, NULL, 0}};
	unsigned thr[16] = {1, 4}, nthr = 2, workers = 8;
	bool want[M_COUNT] = {true, true, true, true, true}, local_too = true;
	double secs = 2;
	const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	int c;
	while ((c = getopt_long(argc, argv, "t:s:w:d:o:lh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (parse_threads(optarg, thr, &nthr) < 0) {
				fprintf(stderr,
					"bench_rpc: bad thread list '%s' (1..%d, comma "
					"separated)\n",
					optarg, MAX_THR);
				return 2;
			}
			break;
		case 's':
			secs = atof(optarg);
			if (secs <= 0 || secs > 3600) {
				fprintf(stderr, "bench_rpc: bad seconds '%s'\n", optarg);
				return 2;
			}
			break;
		case 'w':
			workers = (unsigned)atoi(optarg);
			if (workers == 0 || workers > 256) {
				fprintf(stderr, "bench_rpc: bad worker count '%s'\n", optarg);
				return 2;
			}
			break;
		case 'd':
			dir = optarg;
			break;
		case 'o':
			if (parse_ops(optarg, want) < 0) {
				fprintf(stderr,
					"bench_rpc: bad operation list '%s' (ping, 4k-write, "
					"4k-read, 1m-write, 1m-read)\n",
					optarg);
				return 2;
			}
			break;
		case 'l':
			local_too = false;
			break;
		case 'h':
			fputs(help, stdout);
			return 0;
		default:
			fputs(help, stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "bench_rpc: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	char path[512], url[600], err[512];
	snprintf(path, sizeof(path), "%s/bench_rpc.XXXXXX", dir);
	if (!mkdtemp(path)) {
		fprintf(stderr, "bench_rpc: cannot create a directory in %s: %s\n", dir,
			strerror(errno));
		return 1;
	}
	snprintf(url, sizeof(url), "dir:%s", path);
	struct sm_identity id = {
	    .format_version = SM_FORMAT_VERSION, .target_id = 1, .chunk_size = CS};
	strcpy(id.volume_uuid, VOL);
	uuid_generate_str(id.target_uuid);
	struct sm_target *local = NULL, *remote = NULL;
	struct rpc_server *rpc = NULL;
	struct xp_server *srv = NULL;
	struct xp_client *xc = NULL;
	int r = sm_format(url, &id, false, err, sizeof(err));
	if (!r)
		r = sm_open(url, &id, &local, err, sizeof(err));
	struct rpc_server_cfg rc = {.targets = &local, .ntargets = 1};
	if (!r)
		r = rpc_server_new(&rc, &rpc, err, sizeof(err));
	struct xp_server_cfg sc = {
	    .volume_uuid = VOL, .workers = workers, .handler = rpc_server_handle, .ctx = rpc};
	if (!r)
		r = xp_listen("tcp://127.0.0.1:0", &sc, &srv, err, sizeof(err));
	struct xp_client_cfg cc = {.volume_uuid = VOL};
	if (!r)
		r = xp_connect(srv->url, &cc, &xc, err, sizeof(err));
	if (!r)
		r = rpc_target_open(xc, 1, &id, &remote, err, sizeof(err));
	if (r) {
		fprintf(stderr, "bench_rpc: %s\n", err);
		goto out;
	}
	printf("%-8s %-9s %7s %12s %10s %12s %10s\n", "where", "operation", "threads", "ops/s",
	       "MiB/s", "latency us", "cpu us/op");
	for (int where = 0; where < (local_too ? 2 : 1) && !r; where++) {
		for (int mode = 0; mode < M_COUNT && !r; mode++) {
			if (!want[mode] || (where == 1 && mode == M_PING))
				continue;
			for (unsigned i = 0; i < nthr && !r; i++) {
				struct bench b = {.t = where ? local : remote,
						  .xc = xc,
						  .mode = mode,
						  .secs = secs};
				double ops, cpu;
				r = run(&b, thr[i], &ops, &cpu);
				if (r) {
					fprintf(stderr, "bench_rpc: %s: %s\n", mode_name[mode],
						strerror(-r));
					break;
				}
				printf("%-8s %-9s %7u %12.0f %10.1f %12.1f %10.1f\n",
				       where ? "local" : "remote", mode_name[mode], thr[i], ops,
				       ops * mode_size[mode] / (1 << 20), thr[i] / ops * 1e6, cpu);
				fflush(stdout);
			}
		}
	}
out:
	sm_close(remote);
	xp_client_free(xc);
	xp_server_free(srv);
	rpc_server_free(rpc);
	sm_close(local);
	nftw(path, rm_cb, 64, FTW_DEPTH | FTW_PHYS);
	return r ? 1 : 0;
}
