/* sm_faulty — the directory target's fault-injecting twin, scheme "faulty".
 *
 * URL: faulty:/abs/path[?poll_ms=N][&fds=N]. On disk it is exactly a dir target (same layout,
 * same code: it embeds struct sm_dir), so a test can format it as faulty:, read its chunk files
 * like any replica's, and flip faults while a volume is mounted on it.
 *
 * CONTROL FILE <dir>/braidfs-fault, written by the test, one `key=value` per line, '#' starts
 * a comment:
 *   read|write|sync|truncate|punch|allocate|remove|seek|length|statfs|list|open|all = ERRNO
 *        fail that operation with ERRNO (a name such as EIO, ENOSPC, EROFS, or a number;
 *        0 or "none" clears it). sync covers sync_ino and sync_all; open is checked once
 *        by open().
 *   after=N     the next N calls that would fail succeed first (fail after N more successes)
 *   times=N     inject at most N faults, then succeed again (default: no limit)
 *   ino=N[,N]   only calls for chunks of these inodes (up to SMF_MAX_IDS) fail / are corrupt
 *   idx=N[,N]   only calls for these chunk indexes fail / are corrupt
 *   corrupt=1   silent corruption as a checksumming store sees it: every chunk that matches
 *               ino= and idx= and exists when it is read answers every read with -EBADMSG
 *               (the buffer filled with junk) and counts a csum_error, until the chunk is
 *               rewritten — a successful write, truncate or punch of it heals it, as a real
 *               store heals a bad block it rewrites (coarser: any write heals the whole
 *               chunk); a chunk deleted (remove, truncate to 0) holds nothing bad. Healing
 *               lasts across opens: a chunk file changed after the control file was written
 *               (ctime newer than its mtime) is healthy. after= and times= do not apply.
 *   delay_ms=N  every call sleeps N ms first (a slow device)
 * A fault fails the call before it touches the directory, so nothing of it lands.
 *
 * The file is re-read when its inode, size, mtime or ctime changed, checked at most every
 * poll_ms (default 100) so that the data path does not stat() on every call; a test that
 * toggles a fault on a live mount waits a little over poll_ms. Deleting the file clears all
 * faults. Counters (after, times) and the set of chunks healed by this process restart
 * whenever the file is re-read: a new control file is a new corruption event.
 *
 * COUNTERS (the optional sm_ops.counters): reads answered -EBADMSG, bytes read and written by
 * successful chunk I/O, since open.
 */
#include "storemgr/sm_dir_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define SMF_FILE     "braidfs-fault"
#define SMF_POLL_MS  100
#define SMF_FILE_MAX 4096
#define SMF_MAX_IDS  64	  /* values of ino= / idx= */
#define SMF_JUNK     0xbd /* what a corrupt read leaves in the caller's buffer */

enum smf_op {
	SMF_READ,
	SMF_WRITE,
	SMF_SYNC,
	SMF_TRUNCATE,
	SMF_PUNCH,
	SMF_ALLOCATE,
	SMF_REMOVE,
	SMF_SEEK,
	SMF_LENGTH,
	SMF_STATFS,
	SMF_LIST,
	SMF_OPEN,
	SMF_NOPS
};

static const char *const smf_op_names[SMF_NOPS] = {
    "read",   "write", "sync",	 "truncate", "punch", "allocate",
    "remove", "seek",  "length", "statfs",   "list",  "open",
};

static const struct {
	const char *name;
	int err;
} smf_errnos[] = {
    {"EIO", EIO},	{"ENOSPC", ENOSPC},	{"EROFS", EROFS},
    {"EDQUOT", EDQUOT}, {"EACCES", EACCES},	{"EPERM", EPERM},
    {"ENOENT", ENOENT}, {"EBADMSG", EBADMSG},	{"ETIMEDOUT", ETIMEDOUT},
    {"ENXIO", ENXIO},	{"EAGAIN", EAGAIN},	{"ENOMEM", ENOMEM},
    {"ESTALE", ESTALE}, {"ENOTCONN", ENOTCONN}, {"EFBIG", EFBIG},
};

/* Chunks rewritten since the corruption was declared: an open-addressing set of (ino, idx). */
struct smf_healed {
	struct smf_key {
		uint64_t ino;
		uint32_t idx;
		bool used;
	} * slots;
	size_t nslots, n; /* nslots: 0 or a power of two */
};

struct sm_faulty {
	struct sm_dir dir; /* first: the twin is a dir target */
	int64_t poll_ns;

	pthread_mutex_t lock;
	int64_t next_check_ns;	    /* protected by lock */
	bool loaded;		    /* protected by lock: a control file is in force */
	struct stat st;		    /* protected by lock: of the control file in force */
	int err[SMF_NOPS];	    /* protected by lock: errno to inject, 0 = none */
	unsigned ninos, nidxs;	    /* protected by lock: 0 = no filter */
	uint64_t inos[SMF_MAX_IDS]; /* protected by lock */
	uint32_t idxs[SMF_MAX_IDS]; /* protected by lock */
	bool corrupt;		    /* protected by lock */
	struct smf_healed healed;   /* protected by lock */
	long after;		    /* protected by lock: matching calls that still succeed */
	long times;		    /* protected by lock: faults left, -1 = unlimited */
	unsigned delay_ms;	    /* protected by lock */

	struct sm_counters cnt; /* __atomic */
};

static struct sm_faulty *smf_of(struct sm_target *t)
{
	return (struct sm_faulty *)t;
}

static void smf_clear(struct sm_faulty *f)
{
	memset(f->err, 0, sizeof(f->err));
	f->ninos = f->nidxs = 0;
	f->corrupt = false;
	free(f->healed.slots);
	f->healed = (struct smf_healed){0};
	f->after = 0;
	f->times = -1;
	f->delay_ms = 0;
}

/* ---- the healed set ---- */

static size_t smf_slot(const struct smf_healed *h, uint64_t ino, uint32_t idx)
{
	uint64_t x = (ino * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)idx * 0xc2b2ae3d27d4eb4fULL);
	size_t i = (size_t)(x ^ (x >> 31)) & (h->nslots - 1);
	while (h->slots[i].used && (h->slots[i].ino != ino || h->slots[i].idx != idx))
		i = (i + 1) & (h->nslots - 1);
	return i;
}

static bool smf_healed_has(const struct smf_healed *h, uint64_t ino, uint32_t idx)
{
	return h->nslots && h->slots[smf_slot(h, ino, idx)].used;
}

/* 0 or -ENOMEM (the chunk then stays corrupt: the test sees a read error, never bad data). */
static int smf_healed_add(struct smf_healed *h, uint64_t ino, uint32_t idx)
{
	if (smf_healed_has(h, ino, idx))
		return 0;
	if (2 * (h->n + 1) > h->nslots) {
		struct smf_healed g = {.nslots = h->nslots ? 2 * h->nslots : 64};
		g.slots = calloc(g.nslots, sizeof(*g.slots));
		if (!g.slots)
			return -ENOMEM;
		for (size_t i = 0; i < h->nslots; i++)
			if (h->slots[i].used)
				g.slots[smf_slot(&g, h->slots[i].ino, h->slots[i].idx)] =
				    h->slots[i];
		g.n = h->n;
		free(h->slots);
		*h = g;
	}
	h->slots[smf_slot(h, ino, idx)] = (struct smf_key){ino, idx, true};
	h->n++;
	return 0;
}

/* ---- the control file ---- */

static int smf_parse_errno(const char *v)
{
	if (!strcmp(v, "0") || !strcasecmp(v, "none"))
		return 0;
	for (size_t i = 0; i < ARRAY_SIZE(smf_errnos); i++)
		if (!strcasecmp(v, smf_errnos[i].name))
			return smf_errnos[i].err;
	char *end;
	long n = strtol(v, &end, 10);
	if (*end || n <= 0 || n > 4095)
		return -1;
	return (int)n;
}

static char *smf_trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

/* "12" or "12,13,40" into the ino= (inos) or idx= filter. Called with lock. */
static int smf_parse_ids(struct sm_faulty *f, bool inos, const char *v)
{
	unsigned n = 0;
	uint64_t vals[SMF_MAX_IDS];
	char buf[SMF_FILE_MAX + 1]; /* v stays whole for the caller's message */
	snprintf(buf, sizeof(buf), "%s", v);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		tok = smf_trim(tok);
		char *end;
		errno = 0;
		unsigned long long x = strtoull(tok, &end, 10);
		if (!*tok || *end || errno || n == SMF_MAX_IDS || (!inos && x > UINT32_MAX))
			return -EINVAL;
		vals[n++] = x;
	}
	if (!n)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++) {
		if (inos)
			f->inos[i] = vals[i];
		else
			f->idxs[i] = (uint32_t)vals[i];
	}
	if (inos)
		f->ninos = n;
	else
		f->nidxs = n;
	return 0;
}

/* Called with lock. A typo in a control file would silently test nothing, so bad lines are
 * logged as warnings (this is test tooling; it is never in a production path). */
static void smf_parse(struct sm_faulty *f, char *buf)
{
	smf_clear(f);
	for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		line = smf_trim(line);
		if (!*line)
			continue;
		char *eq = strchr(line, '=');
		if (!eq) {
			log_warn("%s/%s: ignoring line '%s' (expected key=value)", f->dir.path,
				 SMF_FILE, line);
			continue;
		}
		*eq = '\0';
		char *k = smf_trim(line), *v = smf_trim(eq + 1);
		char *end;
		if (!strcmp(k, "ino") || !strcmp(k, "idx")) {
			if (smf_parse_ids(f, !strcmp(k, "ino"), v) < 0)
				log_warn("%s/%s: bad list '%s' for %s (up to %d numbers, comma "
					 "separated)",
					 f->dir.path, SMF_FILE, v, k, SMF_MAX_IDS);
			continue;
		}
		if (!strcmp(k, "after") || !strcmp(k, "times") || !strcmp(k, "corrupt") ||
		    !strcmp(k, "delay_ms")) {
			unsigned long long n = strtoull(v, &end, 10);
			if (!*v || *end || (!strcmp(k, "corrupt") && n > 1)) {
				log_warn("%s/%s: bad number '%s' for %s", f->dir.path, SMF_FILE, v,
					 k);
				continue;
			}
			if (!strcmp(k, "after"))
				f->after = (long)n;
			else if (!strcmp(k, "times"))
				f->times = (long)n;
			else if (!strcmp(k, "corrupt"))
				f->corrupt = n == 1;
			else
				f->delay_ms = (unsigned)MIN(n, 60000ULL);
			continue;
		}
		int e = smf_parse_errno(v);
		if (e < 0) {
			log_warn("%s/%s: unknown errno '%s' for %s", f->dir.path, SMF_FILE, v, k);
			continue;
		}
		bool found = false;
		for (int i = 0; i < SMF_NOPS; i++) {
			if (!strcmp(k, "all") || !strcmp(k, smf_op_names[i])) {
				f->err[i] = e;
				found = true;
			}
		}
		if (!found)
			log_warn("%s/%s: unknown key '%s'", f->dir.path, SMF_FILE, k);
	}
}

/* Called with lock. */
static void smf_reload(struct sm_faulty *f)
{
	struct stat st;
	if (fstatat(f->dir.root_fd, SMF_FILE, &st, 0) < 0) {
		if (f->loaded)
			smf_clear(f);
		f->loaded = false;
		return;
	}
	if (f->loaded && st.st_ino == f->st.st_ino && st.st_dev == f->st.st_dev &&
	    st.st_size == f->st.st_size && st.st_mtim.tv_sec == f->st.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == f->st.st_mtim.tv_nsec &&
	    st.st_ctim.tv_sec == f->st.st_ctim.tv_sec &&
	    st.st_ctim.tv_nsec == f->st.st_ctim.tv_nsec)
		return;
	char buf[SMF_FILE_MAX + 1];
	int fd = openat(f->dir.root_fd, SMF_FILE, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return; /* replaced meanwhile: next poll */
	ssize_t n = pread(fd, buf, SMF_FILE_MAX, 0);
	close(fd);
	if (n < 0)
		return;
	buf[n] = '\0';
	smf_parse(f, buf);
	f->st = st;
	f->loaded = true;
}

/* A call's chunk: what the ino= / idx= filters look at. */
struct smf_at {
	bool has_ino, has_idx;
	uint64_t ino;
	uint32_t idx;
};
#define SMF_NONE	((struct smf_at){0})
#define SMF_INO(i)	((struct smf_at){.has_ino = true, .ino = (i)})
#define SMF_CHUNK(i, x) ((struct smf_at){.has_ino = true, .has_idx = true, .ino = (i), .idx = (x)})

/* Do the ino= / idx= filters let a fault hit `at`? Called with lock. */
static bool smf_matches(const struct sm_faulty *f, struct smf_at at)
{
	bool ok = !f->ninos;
	for (unsigned i = 0; i < f->ninos && at.has_ino && !ok; i++)
		ok = f->inos[i] == at.ino;
	if (!ok)
		return false;
	ok = !f->nidxs;
	for (unsigned i = 0; i < f->nidxs && at.has_idx && !ok; i++)
		ok = f->idxs[i] == at.idx;
	return ok;
}

/* Called with lock: re-read the control file when poll_ns has passed. */
static void smf_poll(struct sm_faulty *f)
{
	int64_t now = now_monotonic_ns();
	if (now >= f->next_check_ns) {
		smf_reload(f);
		f->next_check_ns = now + f->poll_ns;
	}
}

/* 0, or the -errno to inject for this call. */
static int smf_check(struct sm_faulty *f, enum smf_op op, struct smf_at at)
{
	pthread_mutex_lock(&f->lock);
	smf_poll(f);
	int e = f->err[op];
	if (e && !smf_matches(f, at))
		e = 0;
	if (e) {
		if (f->after > 0) {
			f->after--;
			e = 0;
		} else if (f->times == 0) {
			e = 0;
		} else if (f->times > 0) {
			f->times--;
		}
	}
	unsigned delay = f->delay_ms;
	pthread_mutex_unlock(&f->lock);
	if (delay) {
		struct timespec ts = {delay / 1000, (long)(delay % 1000) * 1000000};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	if (e)
		log_debug("%s: injected %s=%s", f->dir.path, smf_op_names[op], strerror(e));
	return -e;
}

static int smf_format(const char *url, const struct sm_identity *id, bool force, char *err,
		      size_t errlen)
{
	struct url u;
	int r = sm_dir_url_parse(url, "faulty", &u, err, errlen);
	if (r < 0)
		return r;
	/* a test may write the control file before formatting */
	return sm_dir_format_path(u.path, id, force, false, SMF_FILE, err, errlen);
}

static int smf_format_check(const char *url, bool force, char *err, size_t errlen)
{
	struct url u;
	int r = sm_dir_url_parse(url, "faulty", &u, err, errlen);
	if (r < 0)
		return r;
	return sm_dir_format_path(u.path, NULL, force, true, SMF_FILE, err, errlen);
}

static void smf_close(struct sm_target *t)
{
	if (!t)
		return;
	struct sm_faulty *f = smf_of(t);
	free(f->healed.slots);
	pthread_mutex_destroy(&f->lock);
	sm_dir_close(t);
}

static int smf_open(const char *url, const struct sm_identity *expect, struct sm_target **ret,
		    char *err, size_t errlen)
{
	struct url u;
	int r = sm_dir_url_parse(url, "faulty", &u, err, errlen);
	if (r < 0)
		return r;
	char v[32];
	unsigned fd_max = 0;
	long poll_ms = SMF_POLL_MS;
	if (url_query_get(&u, "fds", v, sizeof(v)) == 0)
		fd_max = (unsigned)strtoul(v, NULL, 10);
	if (url_query_get(&u, "poll_ms", v, sizeof(v)) == 0)
		poll_ms = strtol(v, NULL, 10);
	struct sm_dir *d;
	r = sm_dir_open_path(&sm_faulty_ops, url, u.path, expect, sizeof(struct sm_faulty), fd_max,
			     &d, err, errlen);
	if (r < 0)
		return r;
	struct sm_faulty *f = (struct sm_faulty *)d;
	pthread_mutex_init(&f->lock, NULL);
	f->poll_ns = MAX(poll_ms, 0L) * 1000000;
	smf_clear(f);
	r = smf_check(f, SMF_OPEN, SMF_NONE);
	if (r < 0) {
		set_err(err, errlen, "cannot open target %s: %s (injected by %s/%s)", u.path,
			strerror(-r), u.path, SMF_FILE);
		smf_close(&d->base);
		return r;
	}
	*ret = &d->base;
	return 0;
}

/* Is (ino, idx) corrupt right now? corrupt=1, the filters match, not healed by this process,
 * and the chunk exists and was last changed no later than the control file (a chunk rewritten
 * since — by another process too, e.g. a scrub of the unmounted volume — is healed: the
 * file's ctime is the twin's record that lasts across opens). */
static bool smf_corrupt(struct sm_faulty *f, uint64_t ino, uint32_t idx)
{
	pthread_mutex_lock(&f->lock);
	smf_poll(f);
	bool bad = f->corrupt && smf_matches(f, SMF_CHUNK(ino, idx)) &&
		   !smf_healed_has(&f->healed, ino, idx);
	struct timespec declared = f->st.st_mtim;
	pthread_mutex_unlock(&f->lock);
	struct stat st;
	if (!bad || sm_dir_chunk_stat(&f->dir.base, ino, idx, &st) < 0 || st.st_size == 0)
		return false;
	return st.st_ctim.tv_sec < declared.tv_sec ||
	       (st.st_ctim.tv_sec == declared.tv_sec && st.st_ctim.tv_nsec <= declared.tv_nsec);
}

/* After a successful rewrite of (ino, idx): a corrupt chunk is healed. */
static void smf_heal(struct sm_faulty *f, uint64_t ino, uint32_t idx)
{
	pthread_mutex_lock(&f->lock);
	if (f->corrupt && smf_matches(f, SMF_CHUNK(ino, idx)) &&
	    smf_healed_add(&f->healed, ino, idx) < 0)
		log_warn("%s: out of memory: chunk %llu.%u stays corrupt", f->dir.path,
			 (unsigned long long)ino, idx);
	pthread_mutex_unlock(&f->lock);
}

static ssize_t smf_read(struct sm_target *t, uint64_t ino, uint32_t idx, void *buf, size_t len,
			uint64_t off)
{
	struct sm_faulty *f = smf_of(t);
	ssize_t e = smf_check(f, SMF_READ, SMF_CHUNK(ino, idx));
	if (!e && smf_corrupt(f, ino, idx)) {
		memset(buf, SMF_JUNK, len);
		log_debug("%s: chunk %llu.%u is corrupt: read answers EBADMSG", f->dir.path,
			  (unsigned long long)ino, idx);
		e = -EBADMSG;
	}
	if (!e)
		e = sm_dir_read(t, ino, idx, buf, len, off);
	if (e == -EBADMSG)
		__atomic_add_fetch(&f->cnt.csum_errors, 1, __ATOMIC_RELAXED);
	else if (e > 0)
		__atomic_add_fetch(&f->cnt.bytes_read, (uint64_t)e, __ATOMIC_RELAXED);
	return e;
}

static ssize_t smf_write(struct sm_target *t, uint64_t ino, uint32_t idx, const void *buf,
			 size_t len, uint64_t off)
{
	struct sm_faulty *f = smf_of(t);
	ssize_t e = smf_check(f, SMF_WRITE, SMF_CHUNK(ino, idx));
	if (!e)
		e = sm_dir_write(t, ino, idx, buf, len, off);
	if (e >= 0) {
		__atomic_add_fetch(&f->cnt.bytes_written, (uint64_t)e, __ATOMIC_RELAXED);
		smf_heal(f, ino, idx);
	}
	return e;
}

static int smf_truncate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t len)
{
	int e = smf_check(smf_of(t), SMF_TRUNCATE, SMF_CHUNK(ino, idx));
	if (!e)
		e = sm_dir_truncate(t, ino, idx, len);
	if (!e)
		smf_heal(smf_of(t), ino, idx);
	return e;
}

static int smf_punch(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len)
{
	int e = smf_check(smf_of(t), SMF_PUNCH, SMF_CHUNK(ino, idx));
	if (!e)
		e = sm_dir_punch(t, ino, idx, off, len);
	if (!e)
		smf_heal(smf_of(t), ino, idx);
	return e;
}

static int smf_allocate(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, uint64_t len)
{
	int e = smf_check(smf_of(t), SMF_ALLOCATE, SMF_CHUNK(ino, idx));
	return e ? e : sm_dir_allocate(t, ino, idx, off, len);
}

static int smf_remove(struct sm_target *t, uint64_t ino, uint32_t from_idx)
{
	int e = smf_check(smf_of(t), SMF_REMOVE, SMF_INO(ino));
	return e ? e : sm_dir_remove(t, ino, from_idx);
}

static int smf_seek(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t off, int whence,
		    uint64_t *ret)
{
	int e = smf_check(smf_of(t), SMF_SEEK, SMF_CHUNK(ino, idx));
	return e ? e : sm_dir_seek(t, ino, idx, off, whence, ret);
}

static int smf_chunk_length(struct sm_target *t, uint64_t ino, uint32_t idx, uint64_t *ret)
{
	int e = smf_check(smf_of(t), SMF_LENGTH, SMF_CHUNK(ino, idx));
	if (e)
		*ret = 0;
	return e ? e : sm_dir_chunk_length(t, ino, idx, ret);
}

static int smf_sync_ino(struct sm_target *t, uint64_t ino)
{
	int e = smf_check(smf_of(t), SMF_SYNC, SMF_INO(ino));
	return e ? e : sm_dir_sync_ino(t, ino);
}

static int smf_sync_all(struct sm_target *t)
{
	int e = smf_check(smf_of(t), SMF_SYNC, SMF_NONE);
	return e ? e : sm_dir_sync_all(t);
}

static int smf_statfs(struct sm_target *t, struct sm_statfs *ret)
{
	int e = smf_check(smf_of(t), SMF_STATFS, SMF_NONE);
	return e ? e : sm_dir_statfs(t, ret);
}

static int smf_list(struct sm_target *t, sm_chunk_cb cb, void *ctx)
{
	int e = smf_check(smf_of(t), SMF_LIST, SMF_NONE);
	return e ? e : sm_dir_list(t, cb, ctx);
}

static int smf_counters(struct sm_target *t, struct sm_counters *ret)
{
	struct sm_faulty *f = smf_of(t);
	ret->csum_errors = __atomic_load_n(&f->cnt.csum_errors, __ATOMIC_RELAXED);
	ret->bytes_read = __atomic_load_n(&f->cnt.bytes_read, __ATOMIC_RELAXED);
	ret->bytes_written = __atomic_load_n(&f->cnt.bytes_written, __ATOMIC_RELAXED);
	return 0;
}

const struct sm_ops sm_faulty_ops = {
    .scheme = "faulty",
    .caps = SM_CAP_SPARSE | SM_CAP_PUNCH,
    .format = smf_format,
    .format_check = smf_format_check,
    .open = smf_open,
    .close = smf_close,
    .identity = sm_dir_identity,
    .read = smf_read,
    .write = smf_write,
    .truncate = smf_truncate,
    .punch = smf_punch,
    .allocate = smf_allocate,
    .remove = smf_remove,
    .seek = smf_seek,
    .chunk_length = smf_chunk_length,
    .sync_ino = smf_sync_ino,
    .sync_all = smf_sync_all,
    .statfs = smf_statfs,
    .list = smf_list,
    .counters = smf_counters,
    .forget = sm_dir_forget,
};
