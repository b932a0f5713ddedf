/* bench-dev — throughput of block device backends (storemgr/dev.h), for comparing them with
 * each other and with fio on the same backing file. A benchmark, not a test: it prints
 * numbers and checks nothing but errors. See --help. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "storemgr/dev.h"

static const char help[] =
    "Usage: bench-dev [OPTIONS] DEVICE_URL...\n"
    "\n"
    "Measure each block device (iscsi://HOST[:PORT]/IQN/LUN, nbd://HOST[:PORT]/EXPORT,\n"
    "nbd+unix:///EXPORT?socket=PATH, file:PATH) through the storage manager's device layer,\n"
    "the way the chunk store uses it. Four runs per device, each for --seconds:\n"
    "\n"
    "  randread   4 KiB reads at random aligned offsets, --qd threads in parallel\n"
    "  randwrite  4 KiB writes at random aligned offsets, --qd threads in parallel\n"
    "  seqread    1 MiB reads in order (each thread its own stretch), --seq-qd threads\n"
    "  seqwrite   1 MiB writes in order, --seq-qd threads, then one flush (counted)\n"
    "\n"
    "Every thread issues one I/O at a time (pread/pwrite), so the queue depth is the number\n"
    "of threads. Output: one line per run with IOPS, MiB/s and the mean latency.\n"
    "\n"
    "THE DEVICE IS OVERWRITTEN (the write runs fill it with a pattern): use a scratch LUN or\n"
    "export.\n"
    "\n"
    "Options:\n"
    "  -q, --qd N         threads of the random runs (default 32, 1..256)\n"
    "  -Q, --seq-qd N     threads of the sequential runs (default 4, 1..256)\n"
    "  -t, --seconds S    length of each run (default 5, 1..3600)\n"
    "  -s, --span SIZE    use only the first SIZE bytes of the device (default: all of it;\n"
    "                     units k, M, G)\n"
    "  -r, --runs LIST    which runs, comma-separated (default randread,randwrite,seqread,\n"
    "                     seqwrite)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Example:\n"
    "  bench-dev -t 10 'nbd://127.0.0.1:10809/disk0' 'iscsi://127.0.0.1/iqn.x:t/1?sessions=8'\n"
    "\n"
    "Exit status: 0 every run finished, 1 a device failed to open or an I/O failed,\n"
    "2 usage error.\n";

enum run { RANDREAD, RANDWRITE, SEQREAD, SEQWRITE, NRUNS };
static const char *const run_names[NRUNS] = {"randread", "randwrite", "seqread", "seqwrite"};

struct job {
	struct sm_dev *d;
	enum run run;
	size_t bs;
	uint64_t span;
	unsigned idx, nthreads;
	int64_t deadline_ns;
	uint64_t ios;
	int64_t busy_ns;
	int rc;
};

static uint64_t bench_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *bench_thread(void *arg)
{
	struct job *j = arg;
	char *buf = sm_dev_alloc(j->bs);
	if (!buf) {
		j->rc = -ENOMEM;
		return NULL;
	}
	memset(buf, 0x5a + (int)j->idx, j->bs);
	uint64_t blocks = j->span / j->bs, rs = 0x9e3779b97f4a7c15ull * (j->idx + 1);
	/* sequential: thread i walks its own stretch [i, i+1) * blocks / n, wrapping */
	uint64_t first = blocks * j->idx / j->nthreads, len = blocks / j->nthreads;
	bool write = j->run == RANDWRITE || j->run == SEQWRITE;
	for (uint64_t k = 0; now_monotonic_ns() < j->deadline_ns; k++) {
		uint64_t blk = j->run == RANDREAD || j->run == RANDWRITE
				   ? bench_rand(&rs) % blocks
				   : first + (len ? k % len : 0);
		int64_t t0 = now_monotonic_ns();
		int rc = write ? sm_dev_pwrite(j->d, buf, j->bs, blk * j->bs, 0)
			       : sm_dev_pread(j->d, buf, j->bs, blk * j->bs);
		j->busy_ns += now_monotonic_ns() - t0;
		if (rc < 0) {
			j->rc = rc;
			break;
		}
		j->ios++;
	}
	free(buf);
	return NULL;
}

static int bench_run(struct sm_dev *d, const char *url, enum run run, unsigned nthreads,
		     unsigned seconds, uint64_t span)
{
	size_t bs = run == RANDREAD || run == RANDWRITE ? 4096 : 1024 * 1024;
	if (span < bs * nthreads) {
		fprintf(stderr, "bench-dev: %s: span too small for %u threads of %zu bytes\n", url,
			nthreads, bs);
		return -EINVAL;
	}
	struct job *jobs = calloc(nthreads, sizeof(*jobs));
	pthread_t *th = calloc(nthreads, sizeof(*th));
	if (!jobs || !th) {
		free(jobs);
		free(th);
		return -ENOMEM;
	}
	int64_t t0 = now_monotonic_ns();
	unsigned started = 0;
	for (unsigned i = 0; i < nthreads; i++) {
		jobs[i] = (struct job){.d = d,
				       .run = run,
				       .bs = bs,
				       .span = span,
				       .idx = i,
				       .nthreads = nthreads,
				       .deadline_ns = t0 + (int64_t)seconds * 1000000000};
		if (pthread_create(&th[i], NULL, bench_thread, &jobs[i]) != 0)
			break;
		started++;
	}
	uint64_t ios = 0;
	int64_t busy = 0;
	int rc = started == nthreads ? 0 : -EAGAIN;
	for (unsigned i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		ios += jobs[i].ios;
		busy += jobs[i].busy_ns;
		if (jobs[i].rc < 0 && rc == 0)
			rc = jobs[i].rc;
	}
	if (rc == 0 && run == SEQWRITE)
		rc = sm_dev_flush(d);
	double secs = (double)(now_monotonic_ns() - t0) / 1e9;
	free(jobs);
	free(th);
	if (rc < 0) {
		fprintf(stderr, "bench-dev: %s: %s: %s\n", url, run_names[run], strerror(-rc));
		return rc;
	}
	printf("%-10s bs %-4s qd %-3u %10.0f IOPS %9.1f MiB/s  lat %8.1f us\n", run_names[run],
	       bs == 4096 ? "4k" : "1M", nthreads, (double)ios / secs,
	       (double)ios * (double)bs / secs / 1048576.0,
	       ios ? (double)busy / (double)ios / 1000.0 : 0.0);
	fflush(stdout);
	return 0;
}

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *ret)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (!*s || *end || errno || v < lo || v > hi)
		return -EINVAL;
	*ret = (unsigned)v;
	return 0;
}

static int parse_runs(const char *s, bool want[NRUNS])
{
	memset(want, 0, sizeof(bool) * NRUNS);
	while (*s) {
		size_t n = strcspn(s, ",");
		unsigned i;
		for (i = 0; i < NRUNS; i++)
			if (strlen(run_names[i]) == n && strncmp(s, run_names[i], n) == 0)
				break;
		if (i == NRUNS)
			return -EINVAL;
		want[i] = true;
		s += n + (s[n] == ',');
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"qd", required_argument, NULL, 'q'},
					     {"seq-qd", required_argument, NULL, 'Q'},
					     {"seconds", required_argument, NULL, 't'},
					     {"span", required_argument, NULL, 's'},
					     {"runs", required_argument, NULL, 'r'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	unsigned qd = 32, seq_qd = 4, seconds = 5;
	uint64_t span = 0;
	bool want[NRUNS] = {true, true, true, true};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":q:Q:t:s:r:h", opts, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'q':
			bad = parse_uint(optarg, 1, 256, &qd);
			break;
		case 'Q':
			bad = parse_uint(optarg, 1, 256, &seq_qd);
			break;
		case 't':
			bad = parse_uint(optarg, 1, 3600, &seconds);
			break;
		case 's':
			bad = parse_size(optarg, &span) < 0 || span == 0;
			break;
		case 'r':
			bad = parse_runs(optarg, want);
			break;
		case 'h':
			fputs(help, stdout);
			return 0;
		default:
			fprintf(stderr,
				"bench-dev: unknown option or missing value: %s (try --help)\n",
				argv[optind - 1]);
			return 2;
		}
		if (bad) {
			fprintf(stderr, "bench-dev: bad value for -%c: '%s' (try --help)\n", c,
				optarg);
			return 2;
		}
	}
	if (optind == argc) {
		fprintf(stderr, "bench-dev: needs at least one DEVICE_URL (try --help)\n");
		return 2;
	}
	int status = 0;
	for (int i = optind; i < argc; i++) {
		char err[1024];
		struct sm_dev *d = NULL;
		if (sm_dev_open(argv[i], 0, &d, err, sizeof(err)) < 0) {
			fprintf(stderr, "bench-dev: %s\n", err);
			status = 1;
			continue;
		}
		uint64_t sp = span && span < d->size ? span / SM_DEV_ALIGN * SM_DEV_ALIGN : d->size;
		printf("%s: %s, using %llu MiB\n", d->url, d->desc,
		       (unsigned long long)(sp / 1048576));
		for (unsigned r = 0; r < NRUNS; r++)
			if (want[r] &&
			    bench_run(d, d->url, r, r <= RANDWRITE ? qd : seq_qd, seconds, sp) < 0)
				status = 1;
		sm_dev_close(d);
	}
	return status;
}
