/* fs_lock — file locks across every mount of a shared volume (FS-9).
 *
 * WHY
 *   Without lock handlers the kernel keeps fcntl and flock locks itself: exact and fast for
 *   one mount, but two mounts of one volume (two nodes, or two pods on one node) never see
 *   each other's locks. With an engine that has META_CAP_LOCKS (PostgreSQL) and a client
 *   registration (META-12), this file answers GETLK, SETLK, SETLKW and flock from the
 *   volume's lock table (META-18), so a lock taken through one mount holds in all of them.
 *   One-node engines (SQLite) keep the kernel's locks: one mount, nothing to share.
 *
 * WHO RELEASES WHAT (the kernel keeps no copy of locks it sent us)
 *   - close(2) of any descriptor of a file sends FLUSH with the closing process's lock
 *     owner: its POSIX locks of that file go (POSIX: any close drops them all). A process
 *     killed with -9 closes its files too, so its locks go the same way.
 *   - the last close of an open file (RELEASE) drops its flock (the kernel flags it) and
 *     the POSIX locks taken through it by owners that never flushed it: OFD locks, whose
 *     owner is the open file itself. The kernel sends RELEASE after close(2) returned (it
 *     does so for every FUSE mount but fuseblk), so these go a moment after the close.
 *   - unmount drops every lock of the mount; a mount that dies without unmounting stops
 *     renewing its registration, which expires after its TTL (by the database's clock):
 *     from then on its locks bind nobody and are purged.
 *
 * BLOCKING (F_SETLKW, flock without LOCK_NB)
 *   Nothing in the database queues waiters. A request that finds a conflict is parked and
 *   retried by one waiter thread, 2 ms after the first try and doubling up to 100 ms between
 *   tries; an unlock or a close through this mount retries every parked request at once. A
 *   parked request holds no FUSE worker thread, so the unlock that frees it can always be
 *   served. It ends with EINTR when the kernel interrupts it (a signal to the caller) or
 *   when the mount stops. There is no deadlock detection (F_SETLKW never answers EDEADLK)
 *   and no fairness: a waiter may lose every race to new lockers.
 *
 * THREADS AND LOCKS
 *   Handlers run on libfuse's workers; the waiter thread (fs_lock_new to fs_lock_stop) owns
 *   parked requests and replies to them. fs_locks.lock is a leaf, never held across a
 *   metadata call, a libfuse call or a reply. A handle's owner list and the inode's
 *   lk_posix are protected by fs_inode.lock.
 */
#include "fs/fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>

#include "common/log.h"
#include "common/util.h"

#define LK_FIRST_MS    2    /* first retry of a parked request */
#define LK_MAX_MS      100  /* longest wait between two tries */
#define LK_WAITERS_MAX 4096 /* parked requests; beyond, ENOLCK */
#define LK_OWNERS_MAX  4096 /* lock owners remembered per open file; beyond, ENOLCK */

struct lk_wait {
	fuse_req_t req;
	struct meta_lock lk;
	struct fs_file *f;
	int64_t due_ns;
	uint32_t delay_ms;
	struct lk_wait *next;
};

struct fs_locks {
	pthread_mutex_t lock;
	pthread_cond_t cond;	 /* a request was parked, a retry asked for, or stop */
	struct lk_wait *waiters; /* protected by lock */
	unsigned nwaiters;	 /* protected by lock */
	bool kick;		 /* protected by lock: retry every parked request now */
	bool stop;		 /* protected by lock */
	pthread_t thread;
};

static uint64_t lk_client(struct fs *fs)
{
	return fs->opt.client_id ? atomic_load(fs->opt.client_id) : 0;
}

/* Retry every parked request now (an unlock or a close freed something, or an interrupt). */
static void lk_kick(struct fs_locks *L)
{
	pthread_mutex_lock(&L->lock);
	L->kick = true;
	pthread_cond_signal(&L->cond);
	pthread_mutex_unlock(&L->lock);
}

static void lk_interrupted(fuse_req_t req, void *data)
{
	(void)req;
	lk_kick(data);
}

/* Remember that owner took POSIX locks through f (for RELEASE) and on f's inode (FLUSH). */
static int lk_note_owner(struct fs_file *f, uint64_t owner)
{
	struct fs_inode *ip = f->ip;
	int r = 0;

	pthread_mutex_lock(&ip->lock);
	ip->lk_posix = true;
	for (uint32_t i = 0; i < f->lk_nowners; i++)
		if (f->lk_owners[i] == owner)
			goto out;
	if (f->lk_nowners == f->lk_cap) {
		uint32_t cap = f->lk_cap ? f->lk_cap * 2 : 4;
		uint64_t *v = cap <= LK_OWNERS_MAX ? realloc(f->lk_owners, cap * sizeof(*v)) : NULL;

		if (!v) {
			r = -ENOLCK;
			goto out;
		}
		f->lk_owners = v;
		f->lk_cap = cap;
	}
	f->lk_owners[f->lk_nowners++] = owner;
out:
	pthread_mutex_unlock(&ip->lock);
	return r;
}

/* One try of lock_set for this mount's client. -EAGAIN: held elsewhere. */
static int lk_try(struct fs *fs, struct meta_lock *l, struct fs_file *f)
{
	int r;

	l->client = lk_client(fs);
	if (l->client == 0)
		return -ENOLCK;
	/* Remember the owner first: a lock granted must never be one RELEASE cannot find. */
	if (l->kind == META_LOCK_POSIX && l->type != META_LOCK_UN) {
		r = lk_note_owner(f, l->owner);
		if (r < 0)
			return r;
	}
	r = META_CALL_OPT(fs->meta, lock_set, l, NULL);
	if (r == -ESTALE) {
		/* the registration expired (tools/volume.c takes a new one): not ours to lock */
		log_warn("volume %s: a file lock was refused: this mount's client registration "
			 "expired",
			 fs->vol.name);
		r = -ENOLCK;
	}
	if (r == 0 && l->type == META_LOCK_UN)
		lk_kick(fs->locks);
	return r;
}

static void *lk_main(void *arg)
{
	struct fs *fs = arg;
	struct fs_locks *L = fs->locks;

	pthread_mutex_lock(&L->lock);
	while (!L->stop) {
		int64_t now = now_monotonic_ns(), next = INT64_MAX;
		struct lk_wait *due = NULL, **pp = &L->waiters;
		bool kick = L->kick;

		L->kick = false;
		while (*pp) {
			struct lk_wait *w = *pp;

			if (kick || w->due_ns <= now) {
				*pp = w->next;
				w->next = due;
				due = w;
				L->nwaiters--;
			} else {
				next = MIN(next, w->due_ns);
				pp = &w->next;
			}
		}
		if (!due) {
			if (next == INT64_MAX) {
				pthread_cond_wait(&L->cond, &L->lock);
			} else {
				cond_wait_until(&L->cond, &L->lock, next);
			}
			continue;
		}
		pthread_mutex_unlock(&L->lock);
		while (due) {
			struct lk_wait *w = due;
			int r;

			due = w->next;
			r = fuse_req_interrupted(w->req) ? -EINTR : lk_try(fs, &w->lk, w->f);
			if (r == -EAGAIN) {
				w->delay_ms = MIN(w->delay_ms * 2, LK_MAX_MS);
				w->due_ns = now_monotonic_ns() + (int64_t)w->delay_ms * 1000000;
				pthread_mutex_lock(&L->lock);
				w->next = L->waiters;
				L->waiters = w;
				L->nwaiters++;
				pthread_mutex_unlock(&L->lock);
				continue;
			}
			fuse_reply_err(w->req, -r);
			free(w);
		}
		pthread_mutex_lock(&L->lock);
	}
	/* The mount stops: every parked request ends (FS-1). */
	while (L->waiters) {
		struct lk_wait *w = L->waiters;

		L->waiters = w->next;
		L->nwaiters--;
		fuse_reply_err(w->req, EINTR);
		free(w);
	}
	pthread_mutex_unlock(&L->lock);
	return NULL;
}

/* Park a request that found a conflict; the waiter thread replies. */
static void lk_park(struct fs *fs, fuse_req_t req, const struct meta_lock *l, struct fs_file *f)
{
	struct fs_locks *L = fs->locks;
	struct lk_wait *w = calloc(1, sizeof(*w));

	if (!w) {
		fuse_reply_err(req, ENOLCK);
		return;
	}
	w->req = req;
	w->lk = *l;
	w->f = f;
	w->delay_ms = LK_FIRST_MS;
	w->due_ns = now_monotonic_ns() + LK_FIRST_MS * 1000000;
	/* Before the waiter thread can see req (and reply to it): an interrupt wakes that
	 * thread. The callback only touches L, which outlives every request. */
	fuse_req_interrupt_func(req, lk_interrupted, L);
	pthread_mutex_lock(&L->lock);
	if (L->nwaiters >= LK_WAITERS_MAX || L->stop) {
		bool stop = L->stop;

		pthread_mutex_unlock(&L->lock);
		free(w);
		fuse_reply_err(req, stop ? EINTR : ENOLCK);
		return;
	}
	w->next = L->waiters;
	L->waiters = w;
	L->nwaiters++;
	pthread_cond_signal(&L->cond);
	pthread_mutex_unlock(&L->lock); /* from here the waiter thread owns req */
}

/* Try once; on a conflict, fail (sleep false) or park. Replies in every case (FS-1). */
static void lk_set(fuse_req_t req, struct meta_lock *l, struct fs_file *f, bool sleep)
{
	struct fs *fs = req_fs(req);
	int r = lk_try(fs, l, f);

	if (r == -EAGAIN && sleep) {
		lk_park(fs, req, l, f);
		return;
	}
	fuse_reply_err(req, -r);
}

/* struct flock as libfuse hands it (l_len 0: to the end of the file) into l. */
static int lk_from_flock(fuse_ino_t ino, uint64_t owner, const struct flock *fl,
			 struct meta_lock *l)
{
	memset(l, 0, sizeof(*l));
	l->ino = ino;
	l->owner = owner;
	l->kind = META_LOCK_POSIX;
	l->pid = fl->l_pid;
	switch (fl->l_type) {
	case F_RDLCK:
		l->type = META_LOCK_RD;
		break;
	case F_WRLCK:
		l->type = META_LOCK_WR;
		break;
	case F_UNLCK:
		l->type = META_LOCK_UN;
		break;
	default:
		return -EINVAL;
	}
	if (fl->l_start < 0 || fl->l_len < 0 ||
	    (fl->l_len > 0 && fl->l_len - 1 > META_LOCK_EOF - fl->l_start))
		return -EINVAL;
	l->start = (uint64_t)fl->l_start;
	l->end = fl->l_len == 0 ? META_LOCK_EOF : (uint64_t)(fl->l_start + fl->l_len - 1);
	return 0;
}

static void op_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock)
{
	struct fs *fs = req_fs(req);
	struct meta_lock l, c;
	int r = lk_from_flock(ino, fi->lock_owner, lock, &l);

	if (r == 0 && l.type == META_LOCK_UN)
		r = -EINVAL;
	if (r == 0) {
		l.client = lk_client(fs);
		r = l.client ? META_CALL_OPT(fs->meta, lock_get, &l, &c) : -ENOLCK;
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (c.type == META_LOCK_UN) {
		lock->l_type = F_UNLCK;
	} else {
		lock->l_type = c.type == META_LOCK_WR ? F_WRLCK : F_RDLCK;
		lock->l_whence = SEEK_SET;
		lock->l_start = (off_t)c.start;
		lock->l_len = c.end == META_LOCK_EOF ? 0 : (off_t)(c.end - c.start + 1);
		/* a process of another host means nothing here: say "not one of yours" */
		lock->l_pid = c.local ? c.pid : 0;
	}
	fuse_reply_lock(req, lock);
}

static void op_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock,
		     int sleep)
{
	struct meta_lock l;
	int r = lk_from_flock(ino, fi->lock_owner, lock, &l);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	lk_set(req, &l, file_of(fi), sleep != 0);
}

static void op_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op)
{
	struct meta_lock l;

	memset(&l, 0, sizeof(l));
	l.ino = ino;
	l.owner = fi->lock_owner;
	l.kind = META_LOCK_FLOCK;
	l.end = META_LOCK_EOF;
	l.pid = (int32_t)fuse_req_ctx(req)->pid;
	switch (op & ~LOCK_NB) {
	case LOCK_SH:
		l.type = META_LOCK_RD;
		break;
	case LOCK_EX:
		l.type = META_LOCK_WR;
		break;
	case LOCK_UN:
		l.type = META_LOCK_UN;
		break;
	default:
		fuse_reply_err(req, EINVAL);
		return;
	}
	lk_set(req, &l, file_of(fi), !(op & LOCK_NB));
}

/* ---- what fs_fuse.c calls ---- */

int fs_lock_new(struct fs *fs)
{
	struct fs_locks *L;
	int r;

	if (!(meta_ops_of(fs->meta)->caps & META_CAP_LOCKS) || !fs->opt.client_id)
		return 0; /* the kernel keeps locks: exact for the one mount there is */
	L = calloc(1, sizeof(*L));
	if (!L)
		return -ENOMEM;
	pthread_mutex_init(&L->lock, NULL);
	cond_init_monotonic(&L->cond);
	fs->locks = L;
	r = -pthread_create(&L->thread, NULL, lk_main, fs);
	if (r < 0) {
		fs->locks = NULL;
		pthread_cond_destroy(&L->cond);
		pthread_mutex_destroy(&L->lock);
		free(L);
	}
	return r;
}

void fs_lock_stop(struct fs *fs)
{
	struct fs_locks *L = fs->locks;
	uint64_t client;
	int r;

	if (!L)
		return;
	pthread_mutex_lock(&L->lock);
	L->stop = true;
	pthread_cond_signal(&L->cond);
	pthread_mutex_unlock(&L->lock);
	pthread_join(L->thread, NULL);
	pthread_cond_destroy(&L->cond);
	pthread_mutex_destroy(&L->lock);
	free(L);
	fs->locks = NULL;
	/* Unmount: whatever this mount still holds goes now, not when the registration goes. */
	client = lk_client(fs);
	r = client ? META_CALL_OPT(fs->meta, locks_release_client, client) : 0;
	if (r < 0)
		log_warn(
		    "volume %s: cannot release this mount's file locks at unmount: %s (they go "
		    "when its client registration does)",
		    fs->vol.name, strerror(-r));
}

void fs_lock_ops(const struct fs *fs, struct fuse_lowlevel_ops *ops)
{
	if (!fs->locks)
		return;
	ops->getlk = op_getlk;
	ops->setlk = op_setlk;
	ops->flock = op_flock;
}

int fs_lock_flush(struct fs *fs, struct fs_file *f, uint64_t owner)
{
	bool held;
	int r;

	if (!fs->locks)
		return 0;
	pthread_mutex_lock(&f->ip->lock);
	held = f->ip->lk_posix;
	/* owner flushed f: RELEASE has none of its locks left to drop */
	for (uint32_t i = 0; i < f->lk_nowners; i++)
		if (f->lk_owners[i] == owner) {
			f->lk_owners[i] = f->lk_owners[--f->lk_nowners];
			break;
		}
	pthread_mutex_unlock(&f->ip->lock);
	if (!held)
		return 0; /* no POSIX lock was ever taken on this file here: no round trip */
	r = META_CALL_OPT(fs->meta, lock_release, f->ip->ino, lk_client(fs), owner,
			  META_LOCK_POSIX);
	if (r > 0)
		lk_kick(fs->locks);
	return r < 0 ? r : 0;
}

int fs_lock_release(struct fs *fs, struct fs_file *f, bool flock_release, uint64_t owner)
{
	uint64_t client = fs->locks ? lk_client(fs) : 0;
	int r = 0, n = 0;

	if (client == 0)
		goto out;
	if (flock_release) {
		r = META_CALL_OPT(fs->meta, lock_release, f->ip->ino, client, owner,
				  META_LOCK_FLOCK);
		n += r > 0 ? r : 0;
	}
	/* owners that never flushed this file: OFD locks, owned by the open file itself */
	for (uint32_t i = 0; i < f->lk_nowners && r >= 0; i++) {
		r = META_CALL_OPT(fs->meta, lock_release, f->ip->ino, client, f->lk_owners[i],
				  META_LOCK_POSIX);
		n += r > 0 ? r : 0;
	}
	if (n > 0)
		lk_kick(fs->locks);
out:
	free(f->lk_owners);
	f->lk_owners = NULL;
	f->lk_nowners = f->lk_cap = 0;
	return r < 0 ? r : 0;
}
