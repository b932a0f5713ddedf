/* braidfs scrub — read every replica of every chunk, let the targets verify their checksums,
 * compare the replicas, repair what is wrong.
 *
 * Where it runs: a volume that is not mounted is locked (tools/volume.c) and scrubbed in this
 * process; a mounted one is scrubbed INSIDE the mount process (block targets can be open in
 * one process only, and the mount's chunk locks must order the scrub against its writers),
 * through the daemon's control socket (docs/ctl-protocol.md), which streams progress back.
 * Both ways feed the same display (struct ui) from the same struct ds_check_result.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "tools/ctl_client.h"
#include "tools/tools.h"

#define SCRUB_DEFAULT_RATE (64ULL << 20)

static const char help[] =
    "Usage: braidfs scrub [--rate SIZE/s] [--no-repair] [--quiet] META_URL\n"
    "\n"
    "Read every replica of every chunk of the volume whose metadata is at META_URL.\n"
    "Each target verifies its own checksums as it reads (a target that keeps them:\n"
    "block stores keep a crc32c per 4 KiB), and the replicas of each chunk are\n"
    "compared byte for byte. Found problems are repaired as they are found:\n"
    "  - a copy that fails its checksum is rewritten from a replica that verifies;\n"
    "  - a replica that differs from the chain's primary (or misses the chunk) gets\n"
    "    the primary's bytes.\n"
    "A chunk none of whose replicas verifies is unrecoverable and reported.\n"
    "\n"
    "A mounted volume is scrubbed by its mount process (this command asks it over its\n"
    "control socket and shows its progress); the file system keeps serving, each chunk\n"
    "is locked only while it is read, and the reads are paced so that applications\n"
    "keep their bandwidth. A volume that is not mounted is locked and scrubbed here.\n"
    "A volume served by nodes (NODE@URL targets) is scrubbed only while no client\n"
    "mounts it: each target is read through its node, and a copy is repaired by\n"
    "writing the right bytes through the chain's primary (as braidfs fsck does).\n"
    "\n"
    "Progress goes to stderr: redrawn in place on a terminal, else one line per 5%.\n"
    "Each problem is a line on stdout, then a summary. Ctrl-C stops the scrub after\n"
    "the chunk it is reading (a second Ctrl-C leaves at once).\n"
    "\n"
    "Options:\n"
    "  -r, --rate SIZE/s  read at most SIZE per second over all targets (K, M, G:\n"
    "                     binary units; default 64M/s; 0: as fast as it goes)\n"
    "  -n, --no-repair    only report\n"
    "  -q, --quiet        no progress, no problem lines: only the summary\n"
    "  -h, --help         show this help\n"
    "\n"
    "Examples:\n"
    "  braidfs scrub sqlite:///var/lib/braidfs/meta.db\n"
    "  braidfs scrub --rate 200M/s --no-repair sqlite:///var/lib/braidfs/meta.db\n"
    "\n"
    "Exit status: 0 nothing found, or everything found was repaired; 1 problems remain\n"
    "(--no-repair, unrecoverable chunks, failed repairs), or the scrub could not run or\n"
    "was interrupted; 2 usage error.\n";

/* ---------------------------------------------------------------------------------------- */
/* the display */

struct ui {
	bool tty;   /* stderr is a terminal: one line redrawn */
	bool quiet; /* summary only */
	bool drawn; /* a progress line is on the terminal */
	int64_t t0, last_draw;
	int last_step; /* non-terminal: the last 5% step printed */
	uint64_t found;
	struct ds_check_result last;
};

static uint64_t found_of(const struct ds_check_result *r)
{
	return r->csum_errors + r->mismatches + r->missing + r->unreadable;
}

static void ui_progress(struct ui *u, const struct ds_check_result *p, bool force)
{
	u->last = *p;
	if (u->quiet)
		return;
	int64_t now = now_monotonic_ns();
	double secs = (double)(now - u->t0) / 1e9;
	/* by bytes when there are any (the listing estimates them), else by chunks */
	double frac = p->bytes_total	? (double)p->bytes_compared / (double)p->bytes_total
		      : p->chunks_total ? (double)p->chunks / (double)p->chunks_total
					: 1.0;
	frac = frac > 1 ? 1 : frac;
	int step = (int)(frac * 20);
	if (u->tty ? (!force && u->drawn && now - u->last_draw < 100000000LL)
		   : (step <= u->last_step && !force))
		return;
	u->last_draw = now;
	u->last_step = step;
	char done[32], total[32], rate[32], eta[32] = "--:--";
	double bps = secs > 0.05 ? (double)p->bytes_compared / secs : 0;
	if (bps > 0 && p->bytes_total >= p->bytes_compared) {
		uint64_t left = (uint64_t)((double)(p->bytes_total - p->bytes_compared) / bps);
		snprintf(eta, sizeof(eta), "%llu:%02llu", (unsigned long long)(left / 60),
			 (unsigned long long)(left % 60));
	}
	fmt_size((uint64_t)bps, rate, sizeof(rate));
	fprintf(stderr,
		"%sscrub: %3d%%  %llu/%llu chunks, %s of %s, %s/s, ETA %s; %llu found, %llu "
		"repaired%s",
		u->tty ? "\r" : "", (int)(frac * 100), (unsigned long long)p->chunks,
		(unsigned long long)p->chunks_total,
		fmt_size(p->bytes_compared, done, sizeof(done)),
		fmt_size(p->bytes_total, total, sizeof(total)), rate, eta,
		(unsigned long long)found_of(p), (unsigned long long)p->repaired,
		u->tty ? "\033[K" : "\n");
	fflush(stderr);
	u->drawn = u->tty;
}

static void ui_clear(struct ui *u)
{
	if (u->drawn) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
		u->drawn = false;
	}
}

static void ui_found(struct ui *u, const char *what, uint64_t ino, uint32_t idx, uint32_t target,
		     bool repaired)
{
	if (u->quiet)
		return;
	static const struct {
		const char *what, *text;
	} texts[] = {
	    {"checksum", "checksum error"},
	    {"mismatch", "differs from the chain's first good replica"},
	    {"missing", "missing"},
	    {"unreadable", "cannot be read"},
	    {"unrecoverable", "unrecoverable: no replica verifies"},
	};
	const char *text = what;
	for (size_t i = 0; i < ARRAY_SIZE(texts); i++)
		if (!strcmp(what, texts[i].what))
			text = texts[i].text;
	ui_clear(u);
	if (!strcmp(what, "unrecoverable"))
		printf("inode %llu chunk %u: %s\n", (unsigned long long)ino, idx, text);
	else
		printf("inode %llu chunk %u on target %u: %s%s\n", (unsigned long long)ino, idx,
		       target, text, repaired ? " (repaired)" : "");
	fflush(stdout);
}

/* The summary; returns the exit status. status: "ok", "cancelled", "failed". */
static int ui_done(struct ui *u, const char *status, uint64_t problems, const char *msg,
		   bool repair)
{
	const struct ds_check_result *r = &u->last;
	ui_progress(u, r, false); /* off a terminal: the last step, unless it was printed */
	ui_clear(u);
	double secs = (double)(now_monotonic_ns() - u->t0) / 1e9;
	char b[32], rate[32];
	printf("scrubbed %llu of %llu chunk(s), %s read in %.1f s (%s/s)\n",
	       (unsigned long long)r->chunks, (unsigned long long)r->chunks_total,
	       fmt_size(r->bytes_compared, b, sizeof(b)), secs,
	       fmt_size(secs > 0 ? (uint64_t)((double)r->bytes_compared / secs) : 0, rate,
			sizeof(rate)));
	printf("  %llu checksum error(s), %llu differing, %llu missing, %llu unreadable, %llu "
	       "unrecoverable chunk(s); %llu repaired\n",
	       (unsigned long long)r->csum_errors, (unsigned long long)r->mismatches,
	       (unsigned long long)r->missing, (unsigned long long)r->unreadable,
	       (unsigned long long)r->unrecoverable, (unsigned long long)r->repaired);
	if (strcmp(status, "ok")) {
		die_msg("scrub", "%s after %llu of %llu chunk(s)%s%s",
			!strcmp(status, "cancelled") ? "interrupted" : "failed",
			(unsigned long long)r->chunks, (unsigned long long)r->chunks_total,
			msg && *msg ? ": " : "", msg ? msg : "");
		return 1;
	}
	uint64_t found = found_of(r);
	if (!found && !problems) {
		printf("clean: every replica read back and agrees\n");
		return 0;
	}
	if (!problems) {
		printf("all %llu problem(s) found were repaired\n", (unsigned long long)found);
		return 0;
	}
	printf("%llu problem(s) remain%s\n", (unsigned long long)problems,
	       repair ? (r->unrecoverable ? " (unrecoverable chunks need a backup)" : "")
		      : " (run without --no-repair to repair them)");
	return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Ctrl-C */

static int interrupted; /* __atomic; the in-process scrub's cancel flag */

static void on_sigint(int sig)
{
	(void)sig;
	if (__atomic_load_n(&interrupted, __ATOMIC_RELAXED)) {
		signal(SIGINT, SIG_DFL); /* a second Ctrl-C: leave at once */
		raise(SIGINT);
		return;
	}
	__atomic_store_n(&interrupted, 1, __ATOMIC_RELEASE);
}

static void catch_sigint(void)
{
	struct sigaction sa = {.sa_handler = on_sigint}; /* no SA_RESTART: poll returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* in this process (not mounted) */

static void local_report(void *ctx, const char *what, uint64_t ino, uint32_t idx, uint32_t target,
			 bool repaired)
{
	ui_found(ctx, what, ino, idx, target, repaired);
}

static void local_progress(void *ctx, const struct ds_check_result *p)
{
	ui_progress(ctx, p, false);
}

static int scrub_here(struct vol *v, struct ui *u, uint64_t rate, bool repair)
{
	char err[1024];
	if (vol_open_data(v, err, sizeof(err)) < 0) {
		die_msg("scrub", "%s", err);
		return 1;
	}
	struct ds_scrub_opts o = {.repair = repair,
				  .rate = rate,
				  .report = local_report,
				  .progress = local_progress,
				  .ctx = u,
				  .cancel = &interrupted};
	struct ds_check_result res = {0};
	int r = ds_scrub(v->ds, &o, &res);
	u->last = res;
	if (r == -ECANCELED)
		return ui_done(u, "cancelled", 0, NULL, repair);
	if (r < 0)
		return ui_done(u, "failed", 0, strerror(-r), repair);
	if (repair)
		ds_sync_all(v->ds);
	return ui_done(u, "ok", (uint64_t)r, NULL, repair);
}

/* ---------------------------------------------------------------------------------------- */
/* in the mount process */

static int scrub_remote(struct ctl_client *c, struct ui *u, uint64_t rate, bool repair)
{
	char err[CTL_VALUE_MAX + 64];
	struct ctl_line l;
	ctl_begin(&l, CTL_C2D_SCRUB);
	ctl_add_u64(&l, "rate", rate);
	ctl_add_u64(&l, "repair", repair);
	if (ctl_client_send(c, &l, err, sizeof(err)) < 0) {
		die_msg("scrub", "%s", err);
		return 1;
	}
	bool cancel_sent = false;
	struct ctl_msg *m = malloc(sizeof(*m));
	if (!m) {
		die_msg("scrub", "out of memory");
		return 1;
	}
	int rc = 1;
	for (;;) {
		if (__atomic_load_n(&interrupted, __ATOMIC_ACQUIRE) && !cancel_sent) {
			ctl_begin(&l, CTL_C2D_CANCEL);
			cancel_sent = true;
			if (ctl_client_send(c, &l, err, sizeof(err)) < 0)
				break; /* it sees the socket close instead */
			if (!u->quiet) {
				ui_clear(u);
				fprintf(stderr, "braidfs scrub: stopping after the current chunk "
						"(Ctrl-C again to leave now)\n");
			}
		}
		int r = ctl_client_recv(c, 200, m, err, sizeof(err));
		if (r == -EINTR || r == -ETIMEDOUT)
			continue;
		if (r < 0) {
			ui_clear(u);
			die_msg("scrub", "%s", err);
			break;
		}
		struct ds_check_result p;
		if (m->type == CTL_D2C_PROGRESS && ctl_get_result(m, &p) == 0) {
			ui_progress(u, &p, false);
		} else if (m->type == CTL_D2C_FOUND) {
			uint64_t ino = 0, idx = 0, target = 0, repaired = 0;
			const char *what = ctl_get(m, "what");
			ctl_get_u64(m, "ino", &ino);
			ctl_get_u64(m, "idx", &idx);
			ctl_get_u64(m, "target", &target);
			ctl_get_u64(m, "repaired", &repaired);
			ui_found(u, what ? what : "?", ino, (uint32_t)idx, (uint32_t)target,
				 repaired != 0);
		} else if (m->type == CTL_D2C_DONE && ctl_get_result(m, &p) == 0) {
			uint64_t problems = 0;
			const char *status = ctl_get(m, "status");
			ctl_get_u64(m, "problems", &problems);
			u->last = p;
			rc = ui_done(u, status ? status : "failed", problems, ctl_get(m, "msg"),
				     repair);
			break;
		} else {
			ui_clear(u);
			die_msg("scrub", "the mount process sent an unexpected '%s'", m->verb);
			break;
		}
	}
	free(m);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */

/* "64M/s", "64MiB/s", "200M", "0" -> bytes per second. */
static int parse_rate(const char *s, uint64_t *ret)
{
	char buf[64];
	size_t n = strlen(s);
	if (n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, s, n + 1);
	if (n > 2 && !strcmp(buf + n - 2, "/s"))
		buf[n - 2] = '\0';
	return parse_size(buf, ret);
}

int cmd_scrub(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"rate", required_argument, NULL, 'r'},
	    {"no-repair", no_argument, NULL, 'n'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	uint64_t rate = SCRUB_DEFAULT_RATE;
	bool repair = true;
	struct ui u = {.last_step = -1};
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":r:nqh", opts, NULL)) != -1) {
		switch (c) {
		case 'r':
			if (parse_rate(optarg, &rate) < 0) {
				die_msg("scrub",
					"--rate needs a size per second such as 64M/s or 0, not "
					"'%s'",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case 'n':
			repair = false;
			break;
		case 'q':
			u.quiet = true;
			break;
		case 'h':
			fputs(help, stdout);
			return 0;
		default:
			return bad_option("scrub", argv, c);
		}
	}
	if (argc - optind != 1) {
		die_msg("scrub", "needs META_URL (try --help)");
		return EXIT_USAGE;
	}
	const char *url = argv[optind];
	log_init("braidfs scrub", LOG_WARNING, LOG_SINK_STDERR, NULL);
	u.tty = isatty(2) == 1;
	char err[1024], rb[32];
	if (rate)
		snprintf(rb, sizeof(rb), "%s/s", fmt_size(rate, err, sizeof(err)));
	else
		snprintf(rb, sizeof(rb), "unlimited");

	struct vol v;
	int rc = 1;
	if (vol_open(&v, url, 0, err, sizeof(err)) < 0) {
		die_msg("scrub", "%s", err);
		goto out;
	}
	struct vol_holder h;
	int r = vol_lock(&v, NULL, &h);
	pid_t hp = h.pid;
	if (r == -EBUSY && vol_distributed(&v)) {
		/* Its clients write through the chains' primaries from many hosts: a mount's
		 * chunk locks do not order them, so its copies can only be compared, and
		 * repaired through the primaries, while no client writes. */
		die_msg(
		    "scrub",
		    "volume '%s' is served by nodes and in use (%s on %s%s%s): its replicas are "
		    "scrubbed while no client mounts it; unmount every client and run it again",
		    v.info.name, h.exclusive ? "being checked by fsck or scrub" : "mounted",
		    h.host[0] ? h.host : "?", h.mnt[0] ? " at " : "", h.mnt);
		goto out;
	}
	if (r == -EBUSY && h.remote) {
		die_msg(
		    "scrub",
		    "volume '%s' is mounted on %s at %s (pid %d): run braidfs scrub on that host, "
		    "where it talks to the mount",
		    v.info.name, h.host, h.mnt[0] ? h.mnt : "?", (int)h.pid);
		goto out;
	}
	if (r < 0 && r != -EBUSY) {
		die_msg("scrub", "cannot lock volume '%s': %s", v.info.name, strerror(-r));
		goto out;
	}
	catch_sigint();
	u.t0 = now_monotonic_ns();
	if (r == 0) {
		printf("braidfs scrub: volume '%s' (not mounted, locked by this scrub), %s, %s\n",
		       v.info.name, repair ? "repairing" : "reporting only", rb);
		fflush(stdout);
		rc = scrub_here(&v, &u, rate, repair);
		goto out;
	}
	struct run_entry e;
	if (hp <= 0 || run_read(hp, &e) < 0) {
		die_msg("scrub",
			"volume '%s' is in use by pid %d, which is not a mount (fsck or another "
			"scrub); try again when it is done",
			v.info.name, (int)hp);
		goto out;
	}
	struct ctl_client cl;
	if (ctl_client_open(&cl, hp, err, sizeof(err)) < 0) {
		die_msg("scrub", "volume '%s' is mounted at %s: %s", v.info.name, e.mnt, err);
		goto out;
	}
	printf("braidfs scrub: volume '%s' (mounted at %s: scrubbed by its process, pid %d), "
	       "%s, %s\n",
	       v.info.name, e.mnt, (int)hp, repair ? "repairing" : "reporting only", rb);
	fflush(stdout);
	rc = scrub_remote(&cl, &u, rate, repair);
	ctl_client_close(&cl);
out:
	vol_close(&v);
	return rc;
}
