/* bench_target — one target's raw speed through the storage manager's API (sm.h): N threads
 * doing 4 KiB random or 1 MiB sequential reads or writes on the chunks of one file, as the data
 * service would. Not a test: tools/bench-target.sh runs it next to fio on the same image.
 *
 *   bench_target [--threads N] [--seconds S] [--size BYTES] [--chunk-size BYTES] [--format]
 *                TARGET_URL MODE
 *   MODE: fill | randwrite4k | randread4k | seqwrite1m | seqread1m
 *
 * --format formats the target first (--force: the image is the benchmark's). fill writes every
 * 1 MiB of --size once (the threads share it out) and ignores --seconds: reads need it, or
 * they would read holes, which cost no I/O. Prints one line:
 *   MODE ops=N seconds=S iops=X mibps=Y lat_us=Z csum_errors=E
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "storemgr/sm.h"

#define INO 4242

struct job {
	struct sm_target *t;
	int k, nthreads;
	const char *mode;
	uint64_t size, chunk, bs;
	int64_t until_ns;
	uint64_t ops;
	int err;
};

static bool seq_mode(const char *m)
{
	return !strncmp(m, "seq", 3);
}

static bool write_mode(const char *m)
{
	return strstr(m, "write") != NULL || !strcmp(m, "fill");
}

static void *run(void *p)
{
	struct job *j = p;
	uint8_t *buf = malloc(j->bs);
	if (!buf) {
		j->err = -ENOMEM;
		return NULL;
	}
	for (size_t i = 0; i < j->bs; i++)
		buf[i] = (uint8_t)(i * 131 + (size_t)j->k);
	uint64_t nblocks = j->size / j->bs;
	/* sequential: each thread streams through its own slice, wrapping */
	uint64_t slice = nblocks / (uint64_t)j->nthreads, pos = 0;
	uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(j->k + 1);
	bool fill = !strcmp(j->mode, "fill");
	if (fill)
		slice = (nblocks + (uint64_t)j->nthreads - 1) / (uint64_t)j->nthreads;
	while (fill ? pos < slice && (uint64_t)j->k * slice + pos < nblocks
		    : now_monotonic_ns() < j->until_ns) {
		for (int burst = 0; burst < 16; burst++) {
			uint64_t b;
			if (fill) {
				b = (uint64_t)j->k * slice + pos++;
				if (pos > slice || b >= nblocks)
					break;
			} else if (seq_mode(j->mode)) {
				b = (uint64_t)j->k * slice + pos;
				pos = (pos + 1) % (slice ? slice : 1);
			} else {
				rng = hash_mix64(rng + 1);
				b = rng % nblocks;
			}
			uint64_t off = b * j->bs;
			uint32_t idx = (uint32_t)(off / j->chunk);
			uint64_t within = off % j->chunk;
			ssize_t r = write_mode(j->mode)
					? j->t->ops->write(j->t, INO, idx, buf, j->bs, within)
					: j->t->ops->read(j->t, INO, idx, buf, j->bs, within);
			if (r != (ssize_t)j->bs) {
				j->err = r < 0 ? (int)r : -EIO;
				free(buf);
				return NULL;
			}
			j->ops++;
		}
	}
	free(buf);
	return NULL;
}

static const char usage[] =
    "Usage: bench_target [--threads N] [--seconds S] [--size BYTES] [--chunk-size BYTES]\n"
    "                    [--format] TARGET_URL MODE\n"
    "MODE: fill | randwrite4k | randread4k | seqwrite1m | seqread1m\n";

int main(int argc, char **argv)
{
	int threads = 4, seconds = 10;
	uint64_t size = 1ull << 30, chunk = 4u << 20;
	bool format = false;
	static const struct option opts[] = {{"threads", required_argument, NULL, 't'},
					     {"seconds", required_argument, NULL, 's'},
					     {"size", required_argument, NULL, 'S'},
					     {"chunk-size", required_argument, NULL, 'c'},
					     {"format", no_argument, NULL, 'f'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "t:s:S:c:fh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			threads = atoi(optarg);
			break;
		case 's':
			seconds = atoi(optarg);
			break;
		case 'S':
			if (parse_size(optarg, &size) < 0) {
				fprintf(stderr, "bench_target: bad size '%s'\n", optarg);
				return 2;
			}
			break;
		case 'c':
			if (parse_size(optarg, &chunk) < 0) {
				fprintf(stderr, "bench_target: bad chunk size '%s'\n", optarg);
				return 2;
			}
			break;
		case 'f':
			format = true;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
	}
	if (argc - optind != 2 || threads < 1 || threads > 256 || seconds < 1) {
		fputs(usage, stderr);
		return 2;
	}
	const char *url = argv[optind], *mode = argv[optind + 1];
	uint64_t bs;
	if (!strcmp(mode, "randwrite4k") || !strcmp(mode, "randread4k"))
		bs = 4096;
	else if (!strcmp(mode, "seqwrite1m") || !strcmp(mode, "seqread1m") || !strcmp(mode, "fill"))
		bs = 1 << 20;
	else {
		fprintf(stderr, "bench_target: unknown mode '%s'\n%s", mode, usage);
		return 2;
	}
	char err[1024] = "";
	struct sm_identity id = {
	    .format_version = SM_FORMAT_VERSION, .target_id = 1, .chunk_size = (uint32_t)chunk};
	uuid_generate_str(id.volume_uuid);
	uuid_generate_str(id.target_uuid);
	if (format && sm_format(url, &id, true, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_target: %s\n", err);
		return 1;
	}
	struct sm_target *t;
	if (sm_open(url, NULL, &t, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_target: %s\n", err);
		return 1;
	}
	struct sm_identity have;
	t->ops->identity(t, &have);
	chunk = have.chunk_size;
	struct job *jobs = calloc((size_t)threads, sizeof(*jobs));
	pthread_t *th = calloc((size_t)threads, sizeof(*th));
	int64_t t0 = now_monotonic_ns();
	for (int k = 0; k < threads; k++) {
		jobs[k] = (struct job){t,    k,	    threads, mode,
				       size, chunk, bs,	     t0 + (int64_t)seconds * 1000000000LL,
				       0,    0};
		pthread_create(&th[k], NULL, run, &jobs[k]);
	}
	uint64_t ops = 0;
	int rc = 0;
	for (int k = 0; k < threads; k++) {
		pthread_join(th[k], NULL);
		ops += jobs[k].ops;
		if (jobs[k].err) {
			fprintf(stderr, "bench_target: thread %d: %s\n", k, strerror(-jobs[k].err));
			rc = 1;
		}
	}
	double secs = (double)(now_monotonic_ns() - t0) / 1e9;
	struct sm_counters cn = {0};
	if (t->ops->counters)
		t->ops->counters(t, &cn);
	printf("%s ops=%llu seconds=%.2f iops=%.0f mibps=%.1f lat_us=%.1f csum_errors=%llu\n", mode,
	       (unsigned long long)ops, secs, (double)ops / secs,
	       (double)ops * (double)bs / secs / 1048576.0,
	       ops ? secs * 1e6 * threads / (double)ops : 0.0, (unsigned long long)cn.csum_errors);
	sm_close(t);
	free(jobs);
	free(th);
	return rc;
}
