/* braidfs-verify — a verifying workload: writers put self-describing blocks into files of the
 * file system under test and journal, outside it, every write they issued and every write the
 * file system acknowledged; after any crash, kill or network cut, `check` proves that every
 * acknowledged block is there with its newest acknowledged generation (or a newer one that
 * was in flight), and names every block that is not.
 *
 * Threads of `run`: N writers, and the main thread, which syncs the journal every
 * JOURNAL_SYNC_MS, draws progress, watches the deadline and signals, and at the end joins the
 * writers (or gives up on ones stuck in the file system, after --hang-timeout). A block is
 * owned by one writer (global block number mod N), so its generations rise one by one and
 * only its owner touches gens[] for it. Counters are atomics; the error list and the
 * journal's ordering rely on a mutex and on O_APPEND respectively.
 *
 * Formats: tools/verify_fmt.h. Reference: docs/cli.md (braidfs-verify).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "tools/verify_fmt.h"

#define PROG		"braidfs-verify"
#define JOURNAL_SYNC_MS 50
#define ERRS_KEPT	100  /* errors / problems listed in the JSON summary */
#define ERR_LINES_MAX	1000 /* error lines printed on stderr (all are counted) */
#define EXIT_USAGE	2

static const char help[] =
    "Usage: braidfs-verify run [OPTIONS] DIR JOURNAL\n"
    "       braidfs-verify check [OPTIONS] DIR JOURNAL\n"
    "\n"
    "A verifying workload for a file system under failures. `run` starts writer threads\n"
    "that overwrite fixed-size blocks at random in files DIR/vl-NNNNN.dat. Every block\n"
    "carries a header (magic, run id, file, offset, generation, crc32c) and a payload\n"
    "derived from them, so its content is known from where it is and which version it\n"
    "is. Before each write the writer appends an ISSUE record to JOURNAL, and once the\n"
    "file system acknowledged the write an ACK record: when write() returned\n"
    "(--ack write), or when the fsync that covered it returned (--ack fsync). JOURNAL\n"
    "must live OUTSIDE the file system under test; it is fsynced every 50 ms and at\n"
    "the end.\n"
    "\n"
    "`check` reads every block back (through the file system, after whatever happened)\n"
    "and compares it with the journal. A block is fine when it holds its newest\n"
    "acknowledged generation, or a newer one that was issued but not acknowledged (in\n"
    "flight at the failure), or, for a write in flight, a mix of whole 512-byte sectors\n"
    "of those generations (a torn write). Everything else is a problem, named on\n"
    "stderr: lost (an acknowledged block reads as zeros or past the end of its file),\n"
    "stale (an older generation than acknowledged), corrupt (a bad checksum, a foreign\n"
    "or misplaced block, a payload that is not its header's), unexpected (a generation\n"
    "never issued), or unreadable (the read failed).\n"
    "\n"
    "Both print a JSON summary on stdout at the end. `run` reports written,\n"
    "acknowledged, errors and the longest stall (the slowest single write and fsync,\n"
    "and when it happened); every error the file system returns (EIO, ENOTCONN, ...) is\n"
    "printed on stderr with its time since the start and counted, never hidden. On a\n"
    "terminal a progress line is redrawn every second.\n"
    "\n"
    "Options of run:\n"
    "  -t, --threads N        writer threads (default 4)\n"
    "  -f, --files N          files (default 8)\n"
    "  -b, --block-size SIZE  block size: a multiple of 512 up to 1M (default 4K)\n"
    "  -n, --blocks N         blocks per file (default 256: 1 MiB files with 4K blocks)\n"
    "  -d, --duration SEC     stop after SEC seconds (default: until --writes, or a signal)\n"
    "  -w, --writes N         stop after N writes in all\n"
    "  -r, --rate N           at most N writes per second in all (default: unpaced)\n"
    "  -s, --fsync-every N    each writer fsyncs the files it wrote after every N writes\n"
    "                         (default 16; 0: never, only with --ack write)\n"
    "  -a, --ack write|fsync  when a write counts as acknowledged (default write)\n"
    "  -e, --on-error continue|stop\n"
    "                         keep writing after a file system error, or stop the run at\n"
    "                         the first one (default continue)\n"
    "      --direct           open the files with O_DIRECT\n"
    "      --hang-timeout SEC after the end, wait at most SEC for writers stuck in the file\n"
    "                         system, then report them as hung (default 120)\n"
    "      --progress         a progress line every second also when stderr is no terminal\n"
    "  -q, --quiet            no progress, no error lines: only the summary\n"
    "\n"
    "Options of check:\n"
    "  -m, --max-report N     name at most N problems on stderr (default 50; all counted)\n"
    "  -q, --quiet            name none\n"
    "\n"
    "  -h, --help             show this help\n"
    "\n"
    "DIR must exist and hold no files of another run; JOURNAL must not exist (a run never\n"
    "overwrites either). SIGINT or SIGTERM ends a run cleanly: writers finish their current\n"
    "write, fsync and acknowledge what they have, and the summary is printed.\n"
    "\n"
    "Examples:\n"
    "  braidfs-verify run -t 8 -d 60 --ack fsync /mnt/braidfs/load /var/tmp/load.journal\n"
    "  braidfs-verify check /mnt/braidfs/load /var/tmp/load.journal\n"
    "\n"
    "Exit status: run: 0 no error, 1 file system errors (or hung writers, or a failed\n"
    "journal); check: 0 every block verified, 1 problems found; both: 2 usage error, or\n"
    "DIR / JOURNAL cannot be used.\n";

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, PROG ": ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(EXIT_USAGE);
}

static double secs(int64_t ns)
{
	return (double)ns / 1e9;
}

static const char *errname(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void file_path(char *out, size_t len, const char *dir, uint32_t file)
{
	snprintf(out, len, "%s/vl-%05u.dat", dir, file);
}

static int parse_u32(const char *s, uint32_t max, uint32_t *ret)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || v > max || s[0] == '-')
		return -EINVAL;
	*ret = (uint32_t)v;
	return 0;
}

static int parse_secs(const char *s, double *ret)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0) || v > 1e9)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* The end of both option loops: -h prints the help (exit 0), anything else is a usage error. */
static int help_or_usage(int opt)
{
	if (opt == 'h') {
		fputs(help, stdout);
		return 0;
	}
	fprintf(stderr, "Try '" PROG " --help'.\n");
	return EXIT_USAGE;
}

/* ---------------------------------------------------------------------------------------- */
/* run */

struct run_opts {
	uint32_t threads, files, block_size, blocks;
	double duration; /* 0: none */
	uint64_t writes; /* 0: none */
	double rate;	 /* writes/s in all; 0: unpaced */
	uint32_t fsync_every;
	enum vl_ack_mode ack;
	bool stop_on_error;
	bool direct;
	double hang_timeout;
	bool progress, quiet;
	bool tty; /* stderr is a terminal (and not quiet): the progress line is redrawn */
};

struct fs_err {
	double t;
	const char *op;
	uint32_t file;
	uint64_t offset;
	int err;
};

struct max_lat {
	_Atomic int64_t ns;
	_Atomic int64_t at; /* when that op started, ns since the start */
};

struct writer;

struct run {
	struct run_opts o;
	const char *dir, *journal;
	int jfd;
	int *fds;
	uint64_t run_id;
	int64_t t0;
	uint64_t nblocks;
	uint64_t *gens; /* [block]: last issued generation; touched only by the block's owner */
	atomic_bool stop;
	const char *stopped_by; /* set once, by whoever sets stop first (under elock) */
	atomic_bool journal_failed;
	_Atomic uint64_t issued, written, acked, bytes, fsyncs;
	_Atomic uint64_t write_errors, fsync_errors;
	struct max_lat wmax, fmax;
	pthread_mutex_t elock; /* protects errs, nerrs_kept, err_lines, stopped_by */
	struct fs_err errs[ERRS_KEPT];
	unsigned nerrs_kept;
	unsigned err_lines;
	struct writer *w;
};

struct pend {
	uint32_t file, block;
	uint64_t gen;
};

struct writer {
	struct run *r;
	unsigned id;
	pthread_t th;
	_Atomic int64_t op_start; /* ns since t0 of the write/fsync in progress, 0 when none */
	atomic_bool done;
	uint64_t rng;
	uint8_t *buf;
	struct pend *pend; /* fsync mode: written, not yet covered by an fsync */
	uint32_t npend;
	uint32_t *touched; /* distinct files of pend */
	uint32_t ntouched;
};

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

static void request_stop(struct run *r, const char *why)
{
	pthread_mutex_lock(&r->elock);
	if (!r->stopped_by)
		r->stopped_by = why;
	pthread_mutex_unlock(&r->elock);
	atomic_store(&r->stop, true);
}

static void note_max(struct max_lat *m, int64_t ns, int64_t at)
{
	int64_t cur = atomic_load(&m->ns);
	while (ns > cur) {
		if (atomic_compare_exchange_weak(&m->ns, &cur, ns)) {
			atomic_store(&m->at, at);
			break;
		}
	}
}

static void fs_error(struct run *r, const char *op, uint32_t file, uint64_t off, int err)
{
	double t = secs(now_monotonic_ns() - r->t0);
	pthread_mutex_lock(&r->elock);
	if (r->nerrs_kept < ERRS_KEPT)
		r->errs[r->nerrs_kept++] = (struct fs_err){t, op, file, off, err};
	bool print = !r->o.quiet && r->err_lines < ERR_LINES_MAX;
	if (print) {
		r->err_lines++;
		fprintf(stderr, "%s" PROG ": %.3fs: %s of vl-%05u.dat at %" PRIu64 ": %s (%s)\n",
			r->o.tty ? "\r\033[K" : "", t, op, file, off, strerror(err), errname(err));
		if (r->err_lines == ERR_LINES_MAX)
			fprintf(stderr, PROG ": further errors are counted, not printed\n");
	}
	pthread_mutex_unlock(&r->elock);
	if (r->o.stop_on_error)
		request_stop(r, "error");
}

static void journal_add(struct run *r, uint8_t type, uint32_t file, uint32_t block, uint64_t gen)
{
	uint8_t rec[VL_REC_SIZE];
	struct vl_rec x = {
	    .type = type, .file = file, .block = block, .gen = gen, .time_ns = now_realtime_ns()};
	vl_rec_encode(rec, &x);
	ssize_t n;
	do
		n = write(r->jfd, rec, sizeof(rec));
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(rec)) {
		/* the checker's own disk failed: nothing it says afterwards can be trusted */
		if (!atomic_exchange(&r->journal_failed, true))
			fprintf(stderr, PROG ": journal %s: %s\n", r->journal,
				n < 0 ? strerror(errno) : "short write");
		request_stop(r, "journal");
	}
}

static uint64_t rnd(struct writer *w)
{
	/* xorshift64* */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 0x2545f4914f6cdd1dULL;
}

/* fsync every file the pending writes touched; when all succeeded they are acknowledged. */
static void writer_sync(struct writer *w)
{
	struct run *r = w->r;
	bool ok = true;
	for (uint32_t i = 0; i < w->ntouched; i++) {
		uint32_t f = w->touched[i];
		int64_t s = now_monotonic_ns();
		atomic_store(&w->op_start, s - r->t0);
		int rc = fsync(r->fds[f]);
		int e = errno;
		int64_t d = now_monotonic_ns() - s;
		atomic_store(&w->op_start, 0);
		note_max(&r->fmax, d, s - r->t0);
		atomic_fetch_add(&r->fsyncs, 1);
		if (rc != 0) {
			atomic_fetch_add(&r->fsync_errors, 1);
			fs_error(r, "fsync", f, 0, e);
			ok = false;
		}
	}
	if (ok && r->o.ack == VL_ACK_FSYNC) {
		for (uint32_t i = 0; i < w->npend; i++)
			journal_add(r, VL_REC_ACK, w->pend[i].file, w->pend[i].block,
				    w->pend[i].gen);
		atomic_fetch_add(&r->acked, w->npend);
	}
	/* a write whose fsync failed stays unacknowledged: in flight, as far as check knows */
	w->npend = 0;
	w->ntouched = 0;
}

static void touch(struct writer *w, uint32_t f)
{
	for (uint32_t i = 0; i < w->ntouched; i++)
		if (w->touched[i] == f)
			return;
	w->touched[w->ntouched++] = f;
}

static void pace(int64_t *next, int64_t interval)
{
	if (!interval)
		return;
	int64_t now = now_monotonic_ns();
	if (*next > now) {
		struct timespec ts = {(*next - now) / 1000000000, (*next - now) % 1000000000};
		nanosleep(&ts, NULL);
	} else if (now - *next > interval * 8) {
		*next = now; /* do not burst to catch up after a stall */
	}
	*next += interval;
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct run *r = w->r;
	const struct run_opts *o = &r->o;
	uint64_t mine = (r->nblocks - w->id + o->threads - 1) / o->threads;
	uint32_t since = 0;
	int64_t interval = o->rate > 0 ? (int64_t)(1e9 * o->threads / o->rate) : 0;
	int64_t next = now_monotonic_ns();

	while (!atomic_load(&r->stop)) {
		if (o->writes && atomic_fetch_add(&r->issued, 1) >= o->writes)
			break;
		pace(&next, interval);
		if (atomic_load(&r->stop))
			break;
		uint64_t k = w->id + (uint64_t)o->threads * (rnd(w) % mine);
		uint32_t file = (uint32_t)(k / o->blocks), block = (uint32_t)(k % o->blocks);
		uint64_t gen = ++r->gens[k];
		uint64_t off = (uint64_t)block * o->block_size;
		struct vl_block_id id = {r->run_id, file, o->block_size, off, gen};
		vl_block_fill(w->buf, &id);
		journal_add(r, VL_REC_ISSUE, file, block, gen);

		int64_t s = now_monotonic_ns();
		atomic_store(&w->op_start, s - r->t0);
		ssize_t n = pwrite(r->fds[file], w->buf, o->block_size, (off_t)off);
		int e = n < 0 ? errno : EIO;
		int64_t d = now_monotonic_ns() - s;
		atomic_store(&w->op_start, 0);
		note_max(&r->wmax, d, s - r->t0);
		if (n != (ssize_t)o->block_size) {
			atomic_fetch_add(&r->write_errors, 1);
			fs_error(r, n < 0 ? "write" : "short write", file, off, e);
			/* a dead mount answers at once: do not spin on it */
			nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
			continue;
		}
		atomic_fetch_add(&r->written, 1);
		atomic_fetch_add(&r->bytes, o->block_size);
		if (o->ack == VL_ACK_WRITE) {
			journal_add(r, VL_REC_ACK, file, block, gen);
			atomic_fetch_add(&r->acked, 1);
		} else {
			w->pend[w->npend++] = (struct pend){file, block, gen};
		}
		touch(w, file);
		if (o->fsync_every && ++since >= o->fsync_every) {
			writer_sync(w);
			since = 0;
		} else if (!o->fsync_every) {
			w->ntouched = 0;
		}
	}
	/* a clean end covers what is pending (unless the journal itself failed) */
	if (o->ack == VL_ACK_FSYNC && w->npend && !atomic_load(&r->journal_failed))
		writer_sync(w);
	atomic_store(&w->done, true);
	return NULL;
}

static void progress_line(struct run *r, bool tty, int64_t now)
{
	double t = secs(now - r->t0);
	uint64_t wr = atomic_load(&r->written), ack = atomic_load(&r->acked);
	uint64_t errs = atomic_load(&r->write_errors) + atomic_load(&r->fsync_errors);
	double mib = (double)atomic_load(&r->bytes) / (1 << 20);
	int64_t oldest = 0;
	for (unsigned i = 0; i < r->o.threads; i++) {
		int64_t s = atomic_load(&r->w[i].op_start);
		if (s && now - r->t0 - s > oldest)
			oldest = now - r->t0 - s;
	}
	int64_t stall = MAX(atomic_load(&r->wmax.ns), atomic_load(&r->fmax.ns));
	pthread_mutex_lock(&r->elock); /* not in the middle of an error line */
	fprintf(stderr,
		"%s%7.1fs  written %" PRIu64 "  acked %" PRIu64 "  errors %" PRIu64
		"  %.1f MiB/s  max stall %.1f ms  oldest in flight %.1f ms%s",
		tty ? "\r\033[K" : "", t, wr, ack, errs, t > 0 ? mib / t : 0.0, stall / 1e6,
		oldest / 1e6, tty ? "" : "\n");
	pthread_mutex_unlock(&r->elock);
}

static int run_open(struct run *r, char *err, size_t errlen)
{
	struct stat st;
	if (stat(r->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		set_err(err, errlen, "%s: %s", r->dir,
			errno && !S_ISDIR(st.st_mode) ? strerror(errno) : "not a directory");
		return -ENOTDIR;
	}
	r->jfd = open(r->journal, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
	if (r->jfd < 0) {
		set_err(err, errlen, "journal %s: %s%s", r->journal, strerror(errno),
			errno == EEXIST ? " (a run never overwrites a journal)" : "");
		return -errno;
	}
	uint8_t hdr[VL_JHDR_SIZE];
	struct vl_journal_hdr h = {
	    .version = VL_JOURNAL_VERSION,
	    .block_size = r->o.block_size,
	    .files = r->o.files,
	    .blocks_per_file = r->o.blocks,
	    .threads = r->o.threads,
	    .ack_mode = r->o.ack,
	    .run = r->run_id,
	    .start_ns = now_realtime_ns(),
	};
	vl_jhdr_encode(hdr, &h);
	if (pwrite_full(r->jfd, hdr, sizeof(hdr), 0) != 0 || fsync(r->jfd) != 0) {
		set_err(err, errlen, "journal %s: %s", r->journal, strerror(errno));
		goto undo_journal;
	}
	int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | (r->o.direct ? O_DIRECT : 0);
	for (uint32_t f = 0; f < r->o.files; f++) {
		char p[PATH_MAX];
		file_path(p, sizeof(p), r->dir, f);
		r->fds[f] = open(p, flags, 0644);
		if (r->fds[f] < 0) {
			set_err(err, errlen, "%s: %s%s", p, strerror(errno),
				errno == EEXIST ? " (DIR holds files of another run)" : "");
			while (f-- > 0) {
				close(r->fds[f]);
				file_path(p, sizeof(p), r->dir, f);
				unlink(p);
			}
			goto undo_journal;
		}
	}
	return 0;
undo_journal:
	close(r->jfd);
	unlink(r->journal);
	return -EIO;
}

static void print_errs(struct run *r)
{
	printf("  \"error_list\": [");
	for (unsigned i = 0; i < r->nerrs_kept; i++) {
		struct fs_err *e = &r->errs[i];
		printf("%s\n    {\"t\": %.3f, \"op\": \"%s\", \"file\": %u, \"offset\": %" PRIu64
		       ", \"errno\": \"%s\", \"error\": ",
		       i ? "," : "", e->t, e->op, e->file, e->offset, errname(e->err));
		json_str(stdout, strerror(e->err));
		printf("}");
	}
	printf("%s]\n", r->nerrs_kept ? "\n  " : "");
}

static int cmd_run(int argc, char **argv)
{
	struct run_opts o = {
	    .threads = 4,
	    .files = 8,
	    .block_size = 4096,
	    .blocks = 256,
	    .fsync_every = 16,
	    .ack = VL_ACK_WRITE,
	    .hang_timeout = 120,
	};
	enum { OPT_DIRECT = 256, OPT_HANG, OPT_PROGRESS };
	static const struct option lo[] = {
	    {"threads", required_argument, NULL, 't'},
	    {"files", required_argument, NULL, 'f'},
	    {"block-size", required_argument, NULL, 'b'},
	    {"blocks", required_argument, NULL, 'n'},
	    {"duration", required_argument, NULL, 'd'},
	    {"writes", required_argument, NULL, 'w'},
	    {"rate", required_argument, NULL, 'r'},
	    {"fsync-every", required_argument, NULL, 's'},
	    {"ack", required_argument, NULL, 'a'},
	    {"on-error", required_argument, NULL, 'e'},
	    {"direct", no_argument, NULL, OPT_DIRECT},
	    {"hang-timeout", required_argument, NULL, OPT_HANG},
	    {"progress", no_argument, NULL, OPT_PROGRESS},
	    {"quiet", no_argument, NULL, 'q'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	int c;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "t:f:b:n:d:w:r:s:a:e:qh", lo, NULL)) != -1) {
		switch (c) {
		case 't':
			if (parse_u32(optarg, VL_THREADS_MAX, &o.threads) || !o.threads)
				die_usage("--threads %s: a number 1..%u", optarg, VL_THREADS_MAX);
			break;
		case 'f':
			if (parse_u32(optarg, VL_FILES_MAX, &o.files) || !o.files)
				die_usage("--files %s: a number 1..%u", optarg, VL_FILES_MAX);
			break;
		case 'b':
			if (parse_size(optarg, &v) || v > VL_BLOCK_MAX)
				die_usage("--block-size %s: a size up to 1M", optarg);
			o.block_size = (uint32_t)v;
			break;
		case 'n':
			if (parse_u32(optarg, VL_BLOCKS_MAX, &o.blocks) || !o.blocks)
				die_usage("--blocks %s: a number 1..%u", optarg, VL_BLOCKS_MAX);
			break;
		case 'd':
			if (parse_secs(optarg, &o.duration))
				die_usage("--duration %s: seconds, a number >= 0", optarg);
			break;
		case 'w': {
			char *end;
			errno = 0;
			o.writes = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-')
				die_usage("--writes %s: a number", optarg);
			break;
		}
		case 'r':
			if (parse_secs(optarg, &o.rate))
				die_usage("--rate %s: writes per second, a number >= 0", optarg);
			break;
		case 's':
			if (parse_u32(optarg, UINT32_MAX, &o.fsync_every))
				die_usage("--fsync-every %s: a number", optarg);
			break;
		case 'a':
			if (!strcmp(optarg, "write"))
				o.ack = VL_ACK_WRITE;
			else if (!strcmp(optarg, "fsync"))
				o.ack = VL_ACK_FSYNC;
			else
				die_usage("--ack %s: write or fsync", optarg);
			break;
		case 'e':
			if (!strcmp(optarg, "continue"))
				o.stop_on_error = false;
			else if (!strcmp(optarg, "stop"))
				o.stop_on_error = true;
			else
				die_usage("--on-error %s: continue or stop", optarg);
			break;
		case OPT_DIRECT:
			o.direct = true;
			break;
		case OPT_HANG:
			if (parse_secs(optarg, &o.hang_timeout))
				die_usage("--hang-timeout %s: seconds", optarg);
			break;
		case OPT_PROGRESS:
			o.progress = true;
			break;
		case 'q':
			o.quiet = true;
			break;
		default:
			return help_or_usage(c);
		}
	}
	if (argc - optind != 2)
		die_usage("run needs DIR and JOURNAL (try --help)");
	char why[256];
	if (vl_shape_check(o.block_size, o.files, o.blocks, o.threads, why, sizeof(why)))
		die_usage("%s", why);
	if (o.ack == VL_ACK_FSYNC && o.fsync_every == 0)
		die_usage("--ack fsync needs --fsync-every N > 0 (nothing would be acknowledged)");
	if (o.fsync_every > 1u << 20)
		die_usage("--fsync-every %u: at most %u", o.fsync_every, 1u << 20);

	o.tty = isatty(STDERR_FILENO) && !o.quiet;
	static struct run r; /* large (error list); one per process */
	r.o = o;
	r.dir = argv[optind];
	r.journal = argv[optind + 1];
	r.nblocks = (uint64_t)o.files * o.blocks;
	pthread_mutex_init(&r.elock, NULL);
	if (getrandom(&r.run_id, sizeof(r.run_id), 0) != sizeof(r.run_id))
		r.run_id = hash_mix64((uint64_t)now_realtime_ns() ^ ((uint64_t)getpid() << 32));
	r.fds = calloc(o.files, sizeof(int));
	r.gens = calloc(r.nblocks, sizeof(uint64_t));
	r.w = calloc(o.threads, sizeof(*r.w));
	if (!r.fds || !r.gens || !r.w) {
		fprintf(stderr, PROG ": out of memory\n");
		return 1;
	}
	if (run_open(&r, why, sizeof(why)) != 0) {
		fprintf(stderr, PROG ": %s\n", why);
		return EXIT_USAGE;
	}

	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old); /* writers inherit: signals go to main */

	r.t0 = now_monotonic_ns();
	for (unsigned i = 0; i < o.threads; i++) {
		struct writer *w = &r.w[i];
		w->r = &r;
		w->id = i;
		w->rng = hash_mix64(r.run_id + i + 1) | 1;
		w->pend = calloc(o.fsync_every ? o.fsync_every : 1, sizeof(*w->pend));
		w->touched =
		    calloc(MIN(o.files, o.fsync_every ? o.fsync_every : 1), sizeof(*w->touched));
		if (!w->pend || !w->touched ||
		    posix_memalign((void **)&w->buf, 4096, o.block_size) ||
		    pthread_create(&w->th, NULL, writer_main, w)) {
			fprintf(stderr, PROG ": cannot start writer %u\n", i);
			request_stop(&r, "error");
			o.threads = r.o.threads = i;
			break;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	bool tty = r.o.tty;
	bool lines = !o.quiet && (tty || o.progress);
	int64_t last_draw = r.t0;
	int64_t end = o.duration > 0 ? r.t0 + (int64_t)(o.duration * 1e9) : 0;
	for (;;) {
		nanosleep(&(struct timespec){0, JOURNAL_SYNC_MS * 1000 * 1000}, NULL);
		fdatasync(r.jfd);
		int64_t now = now_monotonic_ns();
		if (got_signal)
			request_stop(&r, "signal");
		if (end && now >= end)
			request_stop(&r, "duration");
		bool all_done = true;
		for (unsigned i = 0; i < o.threads; i++)
			all_done &= atomic_load(&r.w[i].done);
		if (all_done) {
			request_stop(&r, "writes");
			break;
		}
		if (atomic_load(&r.stop))
			break;
		if (lines && now - last_draw >= 1000000000) {
			progress_line(&r, tty, now);
			last_draw = now;
		}
	}

	/* wait for the writers; one stuck in the file system is reported, not waited for */
	bool hung = false;
	int64_t give_up = now_monotonic_ns() + (int64_t)(o.hang_timeout * 1e9);
	for (unsigned i = 0; i < o.threads; i++) {
		while (!atomic_load(&r.w[i].done) && now_monotonic_ns() < give_up) {
			nanosleep(&(struct timespec){0, JOURNAL_SYNC_MS * 1000 * 1000}, NULL);
			if (lines && now_monotonic_ns() - last_draw >= 1000000000) {
				progress_line(&r, tty, now_monotonic_ns());
				last_draw = now_monotonic_ns();
			}
		}
		if (atomic_load(&r.w[i].done))
			pthread_join(r.w[i].th, NULL);
		else
			hung = true;
	}
	int64_t t_end = now_monotonic_ns();
	bool jok = fsync(r.jfd) == 0 && !atomic_load(&r.journal_failed);
	if (lines) {
		progress_line(&r, tty, t_end);
		if (tty)
			fputc('\n', stderr);
	}

	pthread_mutex_lock(&r.elock);
	uint64_t werr = atomic_load(&r.write_errors), ferr = atomic_load(&r.fsync_errors);
	int64_t wmax = atomic_load(&r.wmax.ns), fmax = atomic_load(&r.fmax.ns);
	printf("{\n  \"mode\": \"run\",\n  \"dir\": ");
	json_str(stdout, r.dir);
	printf(",\n  \"journal\": ");
	json_str(stdout, r.journal);
	printf(",\n  \"run\": \"%016" PRIx64 "\",\n", r.run_id);
	printf("  \"threads\": %u, \"files\": %u, \"block_size\": %u, \"blocks_per_file\": %u,\n",
	       o.threads, o.files, o.block_size, o.blocks);
	printf("  \"ack\": \"%s\", \"fsync_every\": %u,\n",
	       o.ack == VL_ACK_FSYNC ? "fsync" : "write", o.fsync_every);
	printf("  \"elapsed_s\": %.3f,\n  \"stopped_by\": \"%s\",\n", secs(t_end - r.t0),
	       r.stopped_by ? r.stopped_by : "writes");
	printf("  \"written\": %" PRIu64 ",\n  \"acknowledged\": %" PRIu64
	       ",\n  \"bytes_written\": %" PRIu64 ",\n  \"fsyncs\": %" PRIu64 ",\n",
	       atomic_load(&r.written), atomic_load(&r.acked), atomic_load(&r.bytes),
	       atomic_load(&r.fsyncs));
	printf("  \"errors\": %" PRIu64 ",\n  \"write_errors\": %" PRIu64
	       ",\n  \"fsync_errors\": %" PRIu64 ",\n",
	       werr + ferr, werr, ferr);
	printf("  \"max_write_ms\": %.3f,\n  \"max_write_at_s\": %.3f,\n", wmax / 1e6,
	       secs(atomic_load(&r.wmax.at)));
	printf("  \"max_fsync_ms\": %.3f,\n  \"max_fsync_at_s\": %.3f,\n", fmax / 1e6,
	       secs(atomic_load(&r.fmax.at)));
	printf("  \"max_stall_ms\": %.3f,\n", MAX(wmax, fmax) / 1e6);
	printf("  \"hung\": %s,\n  \"journal_ok\": %s,\n", hung ? "true" : "false",
	       jok ? "true" : "false");
	print_errs(&r);
	printf("}\n");
	fflush(stdout);
	pthread_mutex_unlock(&r.elock);
	if (hung) {
		fprintf(stderr, PROG ": writers still stuck in the file system after %.0f s\n",
			o.hang_timeout);
		_exit(1); /* a thread in an uninterruptible write cannot be joined */
	}
	return (werr + ferr || !jok) ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* check */

struct check {
	uint64_t blocks, acknowledged, verified, newer, torn, unwritten;
	uint64_t lost, stale, corrupt, unexpected, unreadable;
	uint64_t problems;
	uint32_t max_report;
	char kept[ERRS_KEPT][256];
	unsigned nkept;
};

static void problem(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(struct check *c, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (c->problems < c->max_report)
		fprintf(stderr, "%s\n", line);
	else if (c->problems == c->max_report && c->max_report)
		fprintf(stderr, PROG ": further problems are counted, not named\n");
	if (c->nkept < ERRS_KEPT)
		snprintf(c->kept[c->nkept++], sizeof(c->kept[0]), "%s", line);
	c->problems++;
}

static int load_journal(const char *path, struct vl_state *s, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		set_err(err, errlen, "journal %s: %s", path, strerror(errno));
		return -errno;
	}
	uint8_t hdr[VL_JHDR_SIZE];
	struct vl_journal_hdr h;
	int rc = pread_full(fd, hdr, sizeof(hdr), 0);
	if (rc != 0 && rc != -ENODATA) {
		set_err(err, errlen, "journal %s: %s", path, strerror(-rc));
		goto out;
	}
	char why[200];
	if (rc == -ENODATA || vl_jhdr_parse(hdr, sizeof(hdr), &h, why, sizeof(why)) != 0) {
		set_err(err, errlen, "journal %s: %s", path,
			rc == -ENODATA ? "shorter than its header" : why);
		rc = -EBADMSG;
		goto out;
	}
	rc = vl_state_init(s, &h);
	if (rc) {
		set_err(err, errlen, "journal %s: out of memory", path);
		goto out;
	}
	size_t cap = 1 << 20, have = 0;
	uint8_t *buf = malloc(cap);
	if (!buf) {
		rc = -ENOMEM;
		set_err(err, errlen, "out of memory");
		vl_state_fini(s);
		goto out;
	}
	off_t off = VL_JHDR_SIZE;
	for (;;) {
		ssize_t n = pread(fd, buf + have, cap - have, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			set_err(err, errlen, "journal %s: %s", path, strerror(errno));
			break;
		}
		if (n == 0) {
			s->torn_tail = have;
			rc = 0;
			break;
		}
		off += n;
		have += (size_t)n;
		size_t used = 0;
		rc = vl_journal_scan(s, buf, have, &used, why, sizeof(why));
		if (rc) {
			set_err(err, errlen, "journal %s: %s", path, why);
			break;
		}
		memmove(buf, buf + used, have - used);
		have -= used;
	}
	free(buf);
	if (rc)
		vl_state_fini(s); /* the caller gets a state only with 0 */
out:
	close(fd);
	return rc;
}

/* buf: the block_size bytes read (got of them before the file ended; the rest is zeroed here,
 * as a read of a hole would give them) */
static void check_block(struct check *c, const struct vl_state *s, uint32_t f, uint32_t b,
			uint8_t *buf, size_t got, int read_err, void *scratch)
{
	uint64_t k = (uint64_t)f * s->h.blocks_per_file + b;
	uint64_t a = s->acked[k], is = s->issued[k];
	uint64_t off = (uint64_t)b * s->h.block_size;
	struct vl_block_id where = {s->h.run, f, s->h.block_size, off, 0};
	c->blocks++;
	if (a)
		c->acknowledged++;
	if (read_err) {
		c->unreadable++;
		problem(c, "vl-%05u.dat block %u (offset %" PRIu64 "): unreadable: %s (%s)", f, b,
			off, strerror(read_err), errname(read_err));
		return;
	}
	const uint32_t bs = s->h.block_size;
	bool short_read = got < bs;
	memset(buf + got, 0, bs - got);
	uint64_t g = 0;
	enum vl_block_state st = vl_block_check(buf, bs, &where, &g);
	switch (st) {
	case VL_BLOCK_ZERO:
		if (!a) {
			c->unwritten++;
			return;
		}
		c->lost++;
		problem(c,
			"vl-%05u.dat block %u (offset %" PRIu64 "): lost: generation %" PRIu64
			" was acknowledged, the block reads as %s",
			f, b, off, a, short_read ? "past the end of the file" : "zeros");
		return;
	case VL_BLOCK_OK:
		if (g == a) {
			if (a)
				c->verified++;
			return;
		}
		if (g > a && g <= is) {
			c->newer++;
			if (a)
				c->verified++;
			return;
		}
		if (g < a) {
			c->stale++;
			problem(c,
				"vl-%05u.dat block %u (offset %" PRIu64
				"): stale: generation %" PRIu64 " where %" PRIu64
				" was acknowledged",
				f, b, off, g, a);
			return;
		}
		c->unexpected++;
		problem(c,
			"vl-%05u.dat block %u (offset %" PRIu64 "): unexpected generation %" PRIu64
			" (issued only up to %" PRIu64 ")",
			f, b, off, g, is);
		return;
	default:
		break;
	}
	if (is > a && vl_block_sectors_from(buf, &where, a, is, scratch)) {
		c->torn++;
		if (a)
			c->verified++;
		return;
	}
	c->corrupt++;
	problem(c,
		"vl-%05u.dat block %u (offset %" PRIu64 "): corrupt: %s (acknowledged generation "
		"%" PRIu64 ", issued %" PRIu64 ")",
		f, b, off, vl_block_state_name(st), a, is);
}

static int check_file(struct check *c, const struct vl_state *s, const char *dir, uint32_t f,
		      uint8_t *buf, size_t cap, void *scratch)
{
	char p[PATH_MAX];
	file_path(p, sizeof(p), dir, f);
	const uint32_t bs = s->h.block_size;
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && errno != ENOENT)
		return -errno;
	uint32_t per = (uint32_t)(cap / bs);
	for (uint32_t b = 0; b < s->h.blocks_per_file; b += per) {
		uint32_t n = MIN(per, s->h.blocks_per_file - b);
		size_t want = (size_t)n * bs, have = 0;
		int err = 0;
		while (fd >= 0 && have < want) {
			ssize_t r = pread(fd, buf + have, want - have, (off_t)b * bs + (off_t)have);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0) {
				err = errno;
				break;
			}
			if (r == 0)
				break;
			have += (size_t)r;
		}
		if (err && n > 1) {
			/* find which blocks fail: one at a time */
			for (uint32_t i = 0; i < n; i++) {
				ssize_t r = pread(fd, buf, bs, (off_t)(b + i) * bs);
				int e = r < 0 ? errno : 0;
				check_block(c, s, f, b + i, buf, r < 0 ? 0 : (size_t)r, e, scratch);
			}
			continue;
		}
		for (uint32_t i = 0; i < n; i++) {
			size_t at = (size_t)i * bs;
			size_t got = have > at ? MIN(have - at, bs) : 0;
			check_block(c, s, f, b + i, buf + at, got, err, scratch);
		}
	}
	if (fd >= 0)
		close(fd);
	return 0;
}

static int cmd_check(int argc, char **argv)
{
	static struct check c = {.max_report = 50};
	bool quiet = false;
	static const struct option lo[] = {
	    {"max-report", required_argument, NULL, 'm'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	int o;
	while ((o = getopt_long(argc, argv, "m:qh", lo, NULL)) != -1) {
		switch (o) {
		case 'm':
			if (parse_u32(optarg, UINT32_MAX, &c.max_report))
				die_usage("--max-report %s: a number", optarg);
			break;
		case 'q':
			quiet = true;
			break;
		default:
			return help_or_usage(o);
		}
	}
	if (argc - optind != 2)
		die_usage("check needs DIR and JOURNAL (try --help)");
	if (quiet)
		c.max_report = 0;
	const char *dir = argv[optind], *journal = argv[optind + 1];
	struct stat st;
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
		die_usage("%s: %s", dir, errno ? strerror(errno) : "not a directory");
	struct vl_state s;
	char why[400];
	int64_t t0 = now_monotonic_ns();
	if (load_journal(journal, &s, why, sizeof(why)) != 0) {
		fprintf(stderr, PROG ": %s\n", why);
		return EXIT_USAGE;
	}
	size_t cap = MAX((size_t)s.h.block_size, (size_t)1 << 20);
	uint8_t *buf = NULL, *scratch = NULL;
	if (posix_memalign((void **)&buf, 4096, cap) ||
	    posix_memalign((void **)&scratch, 4096, s.h.block_size)) {
		fprintf(stderr, PROG ": out of memory\n");
		return 1;
	}
	for (uint32_t f = 0; f < s.h.files; f++) {
		int rc = check_file(&c, &s, dir, f, buf, cap, scratch);
		if (rc) {
			/* the file cannot be opened at all: every acknowledged block is unreadable
			 */
			for (uint32_t b = 0; b < s.h.blocks_per_file; b++)
				check_block(&c, &s, f, b, buf, 0, -rc, scratch);
		}
	}
	printf("{\n  \"mode\": \"check\",\n  \"dir\": ");
	json_str(stdout, dir);
	printf(",\n  \"journal\": ");
	json_str(stdout, journal);
	printf(",\n  \"run\": \"%016" PRIx64 "\",\n", s.h.run);
	printf("  \"ack\": \"%s\",\n", s.h.ack_mode == VL_ACK_FSYNC ? "fsync" : "write");
	printf("  \"started\": %.3f, \"last_ack\": %.3f,\n", s.h.start_ns / 1e9,
	       s.last_ack_ns / 1e9);
	printf("  \"issued_records\": %" PRIu64 ", \"ack_records\": %" PRIu64
	       ", \"journal_torn_tail\": %" PRIu64 ",\n",
	       s.n_issue, s.n_ack, s.torn_tail);
	printf("  \"blocks\": %" PRIu64 ",\n  \"acknowledged\": %" PRIu64
	       ",\n  \"verified\": %" PRIu64 ",\n  \"newer_in_flight\": %" PRIu64
	       ",\n  \"torn_in_flight\": %" PRIu64 ",\n  \"unwritten\": %" PRIu64 ",\n",
	       c.blocks, c.acknowledged, c.verified, c.newer, c.torn, c.unwritten);
	printf("  \"lost\": %" PRIu64 ",\n  \"stale\": %" PRIu64 ",\n  \"corrupt\": %" PRIu64
	       ",\n  \"unexpected\": %" PRIu64 ",\n  \"unreadable\": %" PRIu64
	       ",\n  \"errors\": %" PRIu64 ",\n",
	       c.lost, c.stale, c.corrupt, c.unexpected, c.unreadable, c.problems);
	printf("  \"elapsed_s\": %.3f,\n  \"problem_list\": [", secs(now_monotonic_ns() - t0));
	for (unsigned i = 0; i < c.nkept; i++) {
		printf("%s\n    ", i ? "," : "");
		json_str(stdout, c.kept[i]);
	}
	printf("%s]\n}\n", c.nkept ? "\n  " : "");
	vl_state_fini(&s);
	free(buf);
	free(scratch);
	return c.problems ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, PROG ": missing command (run or check; try --help)\n");
		return EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		fputs(help, stdout);
		return 0;
	}
	if (!strcmp(cmd, "run"))
		return cmd_run(argc - 1, argv + 1);
	if (!strcmp(cmd, "check"))
		return cmd_check(argc - 1, argv + 1);
	fprintf(stderr, PROG ": unknown command '%s' (run or check; try --help)\n", cmd);
	return EXIT_USAGE;
}
