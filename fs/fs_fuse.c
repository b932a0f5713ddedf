/* fs_fuse — the FUSE low-level operations table.
 *
 * One handler per request, each ending in exactly one fuse_reply_* (FS-1). Namespace
 * operations are one metadata transaction each (META-1); file data goes through the data
 * service; sizes and times written by the data path live in struct fs_inode until they are
 * flushed (FS-3). Errors travel as -errno from meta/ds and are replied unchanged (FS-5).
 *
 * Permission checks are the kernel's (mount option default_permissions): the kernel knows
 * every inode's mode, owner and group from our replies, and checks sticky directories and
 * chown/chmod rights itself. Stripping setuid/setgid/capabilities on write, truncate and
 * chown is ours when the kernel runs with FUSE_HANDLE_KILLPRIV_V2 (FS-8, fs_io.c: it saves
 * a GETXATTR round trip per write), the kernel's otherwise (FUSE_CAP_HANDLE_KILLPRIV, the
 * older variant, would leave it to us without saving anything, so it stays off).
 *
 * Record locks and flock (FS-9): on an engine with META_CAP_LOCKS (PostgreSQL, several
 * mounts of one volume) fs_lock.c installs getlk/setlk/flock handlers and keeps them in the
 * volume's lock table, so that they bind every mount; FLUSH and RELEASE below drop them. On
 * other engines (SQLite: one mount) no lock handler is installed and the kernel keeps them
 * locally, which is exact for the one mount and releases them when their owner dies.
 */
#include "fs/fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "fs/fs_loop.h"

uint64_t fs_meta_touched(struct fs *fs)
{
	return atomic_fetch_add_explicit(&fs->meta_gen, 1, memory_order_release) + 1;
}

/* Has anything been committed since the last sync? *gen: the generation a sync now covers. */
static bool meta_unsynced(struct fs *fs, uint64_t *gen)
{
	*gen = atomic_load_explicit(&fs->meta_gen, memory_order_acquire);
	return atomic_load_explicit(&fs->meta_synced, memory_order_acquire) != *gen;
}

int fs_meta_sync(struct fs *fs)
{
	uint64_t gen;
	if (fs->commit_durable || !meta_unsynced(fs, &gen))
		return 0;
	int r = META_CALL(fs->meta, sync);
	if (r < 0)
		return r;
	/* Everything committed before the sync started is durable now; a later commit bumps
	 * meta_gen again, so storing a value that is too small only costs a spare sync. */
	uint64_t cur = atomic_load_explicit(&fs->meta_synced, memory_order_relaxed);
	while (cur < gen && !atomic_compare_exchange_weak(&fs->meta_synced, &cur, gen))
		;
	return 0;
}

/* The syncer's wait: until work, stop, or the deadline of the queued purges (FS-2), which
 * it runs itself. */
static void sync_wait(struct fs *fs)
{
	while (!fs->sync_stop && !fs->sync_pending) {
		if (fs->purge_n == 0) {
			pthread_cond_wait(&fs->sync_work, &fs->sync_lock);
			continue;
		}
		uint64_t batch[FS_PURGE_BATCH];
		unsigned n = fs_purge_take(fs, batch, false);
		if (n > 0) {
			pthread_mutex_unlock(&fs->sync_lock);
			fs_purge_run(fs, batch, n);
			pthread_mutex_lock(&fs->sync_lock);
			continue;
		}
		cond_wait_until(&fs->sync_work, &fs->sync_lock, fs->purge_due);
	}
}

static void *sync_main(void *arg)
{
	struct fs *fs = arg;
	pthread_mutex_lock(&fs->sync_lock);
	for (;;) {
		sync_wait(fs);
		if (!fs->sync_pending)
			break; /* stop, and nobody waits */
		fs->sync_pending = false;
		uint64_t round = ++fs->sync_begun;
		pthread_mutex_unlock(&fs->sync_lock);
		int r = fs_meta_sync(fs);
		pthread_mutex_lock(&fs->sync_lock);
		fs->sync_ended = round;
		if (r < 0) {
			fs->sync_failed = round;
			fs->sync_err = r;
		}
		pthread_cond_broadcast(&fs->sync_done);
	}
	pthread_mutex_unlock(&fs->sync_lock);
	fs_purge_flush(fs); /* what came after unmount's own flush (none, normally) */
	return NULL;
}

/* fs_meta_sync on the syncer thread: start returns a ticket (0: nothing to sync), wait
 * returns the result of a sync that began after start was called. */
static uint64_t meta_sync_start(struct fs *fs)
{
	uint64_t gen;
	/* Every commit already durable: no round to wait for (nor a purge batch before it). */
	if (fs->commit_durable || !meta_unsynced(fs, &gen))
		return 0;
	pthread_mutex_lock(&fs->sync_lock);
	/* A round under way may have begun before our commit: ask for the next one. */
	uint64_t ticket = fs->sync_begun + 1;
	if (!fs->sync_pending) {
		fs->sync_pending = true;
		pthread_cond_signal(&fs->sync_work);
	}
	pthread_mutex_unlock(&fs->sync_lock);
	return ticket;
}

static int meta_sync_wait(struct fs *fs, uint64_t ticket)
{
	if (ticket == 0)
		return 0;
	wait_hint();
	pthread_mutex_lock(&fs->sync_lock);
	while (fs->sync_ended < ticket)
		pthread_cond_wait(&fs->sync_done, &fs->sync_lock);
	/* A failed round at or after ours may have left our commit unsynced: report it. */
	int r = fs->sync_failed >= ticket ? fs->sync_err : 0;
	pthread_mutex_unlock(&fs->sync_lock);
	return r;
}

static void ns_to_ts(int64_t ns, struct timespec *ts)
{
	ts->tv_sec = ns / 1000000000;
	ts->tv_nsec = ns % 1000000000;
	if (ts->tv_nsec < 0) {
		ts->tv_nsec += 1000000000;
		ts->tv_sec--;
	}
}

static int64_t ts_to_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

static void attr_to_stat(const struct meta_attr *a, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = a->ino;
	st->st_mode = a->mode;
	st->st_nlink = a->nlink;
	st->st_uid = a->uid;
	st->st_gid = a->gid;
	st->st_rdev = a->rdev;
	st->st_size = (off_t)a->size;
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((a->size + 511) / 512);
	ns_to_ts(a->atime_ns, &st->st_atim);
	ns_to_ts(a->mtime_ns, &st->st_mtim);
	ns_to_ts(a->ctime_ns, &st->st_ctim);
}

static int check_name(const char *name)
{
	size_t n = strlen(name);
	if (n == 0)
		return -EINVAL;
	if (n > META_NAME_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* Reply an entry: the inode enters the table with one more kernel lookup (FS-2). */
static void reply_entry(fuse_req_t req, struct fs *fs, struct meta_attr *a)
{
	struct fs_inode *ip;
	int r = fs_inode_get(fs, a->ino, a, &ip);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fs_inode_lookup_add(fs, ip, 1);
	fs_inode_overlay(fs, a);
	struct fuse_entry_param e = {0};
	e.ino = a->ino;
	e.generation = a->generation;
	e.attr_timeout = fs->opt.attr_timeout;
	e.entry_timeout = fs->opt.entry_timeout;
	attr_to_stat(a, &e.attr);
	fs_inode_put(fs, ip);
	fuse_reply_entry(req, &e);
}

static void reply_attr(fuse_req_t req, struct fs *fs, struct meta_attr *a)
{
	struct stat st;
	fs_inode_overlay(fs, a);
	attr_to_stat(a, &st);
	fuse_reply_attr(req, &st, fs->opt.attr_timeout);
}

/* ---- lifecycle ops ---- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;
	/* Not the older killpriv: V2 (fs_io.c) or the kernel strips setuid/setgid (see the top
	 * of the file). */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	conn->time_gran = 1;
	conn->max_readahead = 1 << 20;
	log_info("volume %s: FUSE protocol %u.%u, max_write %u, names cached %gs, attributes %gs%s",
		 fs->vol.name, conn->proto_major, conn->proto_minor, conn->max_write,
		 fs->opt.entry_timeout, fs->opt.attr_timeout,
		 fs->shared ? "" : ", no FLUSH on a read-only close (FS-11)");
}

static void op_destroy(void *userdata)
{
	struct fs *fs = userdata;
	fs_itab_flush_all(fs);
	fs_purge_flush(fs);
	int r = ds_sync_all(fs->ds);
	if (r < 0)
		log_err("sync of targets at unmount failed: %s", strerror(-r));
	fs_meta_touched(fs);
	r = fs_meta_sync(fs);
	if (r < 0)
		log_err("sync of metadata at unmount failed: %s", strerror(-r));
}

/* ---- namespace ---- */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = req_fs(req);
	struct meta_attr a;
	int r = check_name(name);
	if (r == 0)
		r = META_CALL(fs->meta, lookup, parent, name, &a);
	if (r == -ENOENT) {
		/* A negative entry the kernel may cache: every create goes through it. */
		struct fuse_entry_param e = {0};
		e.entry_timeout = fs->opt.entry_timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_entry(req, fs, &a);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fs_inode_forget(req_fs(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct fs *fs = req_fs(req);
	for (size_t i = 0; i < count; i++)
		fs_inode_forget(fs, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

/* ---- FS-10: the directory this mount changed last ----
 * The kernel drops a directory's attributes after every create, unlink, mkdir or rmdir in
 * it and asks for them (GETATTR) before its next permission check there: in a loop of
 * creates, one database read per create. The slot keeps one directory's attributes as the
 * last change through this mount left them, true while meta_gen has not moved since (every
 * committed metadata change moves it: fs_meta_touched), and answers that GETATTR.
 *
 * A tracked change (mknod family, unlink, rmdir) derives the new attributes from the slot
 * as the engine's transaction changes them (META: mtime = ctime = the operation's time,
 * nlink by the subdirectories gained or lost), only when the slot held the directory as of
 * the generation just before and the change is the one commit since. The kernel runs one
 * change of a directory at a time (its inode lock); a GETATTR may run beside it, so a read
 * from the database fills the slot only when no tracked change is under way and no commit
 * came during the read (else it could hold a change whose end then applies it again).
 * Changes of other kinds (rename, link, setattr, xattrs) only move meta_gen. Not on a
 * shared engine (other mounts change directories too). Nothing outside this mount changes
 * the fields a GETATTR returns while it is mounted (fsck refuses a mounted volume;
 * `braidfs quota` changes quota fields only). */

/* Returns meta_gen as the change begins. */
static uint64_t dir_change_begin(struct fs *fs)
{
	pthread_mutex_lock(&fs->dslot_lock);
	fs->dslot_busy++;
	uint64_t gen = atomic_load_explicit(&fs->meta_gen, memory_order_acquire);
	pthread_mutex_unlock(&fs->dslot_lock);
	return gen;
}

/* gen_pre: dir_change_begin()'s value; r: the change's result; gen: fs_meta_touched()'s
 * value after it committed; now: the time it gave the engine; dnlink: what it did to the
 * directory's link count. A slot it does not derive is stale by meta_gen already. */
static void dir_change_end(struct fs *fs, uint64_t dir, uint64_t gen_pre, int r, uint64_t gen,
			   int64_t now, int dnlink)
{
	pthread_mutex_lock(&fs->dslot_lock);
	fs->dslot_busy--;
	if (r == 0 && gen == gen_pre + 1 && fs->dslot_ino == dir && fs->dslot_gen == gen_pre) {
		fs->dslot.mtime_ns = now;
		fs->dslot.ctime_ns = now;
		fs->dslot.nlink = (uint32_t)((int64_t)fs->dslot.nlink + dnlink);
		fs->dslot_gen = gen;
	}
	pthread_mutex_unlock(&fs->dslot_lock);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct meta_attr a;
	pthread_mutex_lock(&fs->dslot_lock);
	uint64_t gen = atomic_load_explicit(&fs->meta_gen, memory_order_acquire);
	bool hit = fs->dslot_ino == ino && fs->dslot_gen == gen;
	if (hit)
		a = fs->dslot;
	pthread_mutex_unlock(&fs->dslot_lock);
	if (hit) {
		atomic_fetch_add_explicit(&fs->dslot_hits, 1, memory_order_relaxed);
		reply_attr(req, fs, &a);
		return;
	}
	int r = META_CALL(fs->meta, getattr, ino, &a);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (S_ISDIR(a.mode) && !fs->shared) {
		pthread_mutex_lock(&fs->dslot_lock);
		if (fs->dslot_busy == 0 &&
		    atomic_load_explicit(&fs->meta_gen, memory_order_acquire) == gen) {
			fs->dslot_ino = ino;
			fs->dslot_gen = gen;
			fs->dslot = a;
		}
		pthread_mutex_unlock(&fs->dslot_lock);
	}
	reply_attr(req, fs, &a);
}

/* FS-6: raise the quota charge of ip (under a quota root) to cover at least `need` bytes,
 * up to `want`; sets META_IF_WDIRTY in the same transaction (FS-3). Called with ip->lock
 * held. */
static int quota_reserve(struct fs *fs, struct fs_inode *ip, uint64_t need, uint64_t want)
{
	uint64_t got = 0;
	want = MIN(want, (uint64_t)INT64_MAX);
	int r = META_CALL(fs->meta, quota_reserve, ip->ino, need, want, &got);
	/* FS-2: orphans waiting for their purge still count; free them and try again */
	if (r == -EDQUOT && fs_purge_flush(fs) > 0)
		r = META_CALL(fs->meta, quota_reserve, ip->ino, need, want, &got);
	if (r < 0)
		return r;
	fs_meta_touched(fs);
	ip->wmark = true;
	if (got == UINT64_MAX) { /* the quota was cleared meanwhile */
		ip->qroot = 0;
		ip->qres = 0;
	} else {
		ip->qres = got;
	}
	return 0;
}

/* Truncate to new size (FS-3): the database learns the new size first, with the WDIRTY mark
 * when shrinking, then the chunks beyond it go; a crash in between is finished by recovery. */
static int do_truncate(struct fs *fs, struct fs_inode *ip, uint64_t size, int64_t now)
{
	pthread_rwlock_wrlock(&ip->io);
	pthread_mutex_lock(&ip->lock);
	ip->fresh = false;
	uint64_t old = MAX(ip->size, ip->db_size);
	struct meta_attr a = {0};
	a.size = size;
	a.mtime_ns = now;
	a.ctime_ns = now;
	unsigned mask = META_SET_SIZE | META_SET_MTIME | META_SET_CTIME;
	bool shrink = size < old;
	int r = 0;
	if (ip->qroot && size > MAX(ip->db_size, ip->qres))
		r = quota_reserve(fs, ip, size, size); /* FS-6: EDQUOT before anything changes */
	if (shrink && !ip->wmark) {
		a.flags = META_IF_WDIRTY;
		mask |= META_SET_FLAGS;
	}
	if (r == 0)
		r = META_CALL(fs->meta, setattr, ip->ino, mask, &a, NULL);
	if (r == 0) {
		ip->size_gen = fs_meta_touched(fs);
		if (mask & META_SET_FLAGS)
			ip->wmark = true;
		ip->size = size;
		ip->db_size = size;
		ip->mtime_ns = now;
		ip->ctime_ns = now;
		ip->dirty = false;
		ip->inflight++;
	}
	pthread_mutex_unlock(&ip->lock);
	if (r == 0) {
		if (shrink)
			r = ds_truncate(fs->ds, ip->ino, old, size);
		pthread_mutex_lock(&ip->lock);
		ip->inflight--;
		pthread_mutex_unlock(&ip->lock);
	}
	pthread_rwlock_unlock(&ip->io);
	return r;
}

#define XATTR_CAPS "security.capability"

/* FS-7: the kernel's cached size of an inode another mount may have changed may be older
 * than the one just adopted: make it ask again (attributes only; pages go with keep_cache
 * off). */
static void drop_kernel_attrs(struct fs *fs, uint64_t ino)
{
	int r = fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	if (r < 0 && r != -ENOENT)
		log_debug("inode %llu: cannot drop the kernel's attributes: %s",
			  (unsigned long long)ino, strerror(-r));
}

/* Is the caller of req in group gid (its primary group or a supplementary one)? */
static bool caller_in_group(fuse_req_t req, uint32_t gid)
{
	if (fuse_req_ctx(req)->gid == gid)
		return true;
	gid_t groups[64];
	int n = fuse_req_getgroups(req, 64, groups);
	for (int i = 0; i < n && i < 64; i++)
		if (groups[i] == gid)
			return true;
	return false;
}

/* FS-8: strip what the kernel strips on a write or truncate by a caller without CAP_FSETID
 * and on every chown of a non-directory: S_ISUID; S_ISGID when group-executable, or when the
 * caller is neither in the file's group nor privileged (fsetid: it may be); the
 * security.capability xattr. cur: the inode as the caller just read it from the database
 * (setattr; ip is then looked up, and may be absent), or NULL to go by ip's mode as last
 * replied (write: no database read per write). */
static int kill_privs(struct fs *fs, fuse_req_t req, uint64_t ino, struct fs_inode *ip,
		      const struct meta_attr *cur, bool fsetid)
{
	struct fs_inode *held = ip ? NULL : fs_inode_find(fs, ino);
	if (held)
		ip = held;
	struct meta_attr a;
	uint32_t mode = cur ? cur->mode : 0;
	int caps = -1, r = 0;
	if (ip) {
		pthread_mutex_lock(&ip->lock);
		if (!cur)
			mode = ip->mode;
		caps = ip->caps;
		pthread_mutex_unlock(&ip->lock);
	}
	if (S_ISDIR(mode))
		goto out;
	uint32_t drop = mode & S_ISUID;
	if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP)) {
		drop |= S_ISGID;
	} else if ((mode & S_ISGID) && !fsetid) {
		if (!cur) {
			r = META_CALL(fs->meta, getattr, ino, &a);
			if (r < 0)
				goto out;
			cur = &a;
		}
		if (!caller_in_group(req, cur->gid))
			drop |= S_ISGID;
	}
	if (drop) {
		struct meta_attr in = {0};
		in.mode = mode & ~drop;
		in.ctime_ns = now_realtime_ns();
		r = META_CALL(fs->meta, setattr, ino, META_SET_MODE | META_SET_CTIME, &in, NULL);
		if (r < 0)
			goto out;
		fs_meta_touched(fs);
		if (ip) {
			pthread_mutex_lock(&ip->lock);
			ip->mode = in.mode;
			if (in.ctime_ns > ip->ctime_ns)
				ip->ctime_ns = in.ctime_ns;
			pthread_mutex_unlock(&ip->lock);
		}
		drop_kernel_attrs(fs, ino); /* its cached mode still has the bits */
	}
	if (caps != 0) {
		r = META_CALL(fs->meta, getxattr, ino, XATTR_CAPS, NULL, 0);
		if (r >= 0) {
			r = META_CALL(fs->meta, removexattr, ino, XATTR_CAPS);
			if (r == 0)
				fs_meta_touched(fs);
		}
		if (r == -ENODATA)
			r = 0;
		if (r == 0 && ip) {
			pthread_mutex_lock(&ip->lock);
			ip->caps = 0;
			pthread_mutex_unlock(&ip->lock);
		}
	}
out:
	fs_inode_put(fs, held);
	return r;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	int64_t now = now_realtime_ns();
	struct meta_attr cur, in = {0};
	int r = META_CALL(fs->meta, getattr, ino, &cur);
	if (r < 0)
		goto out;
	/* FS-8: truncate by a caller without CAP_FSETID (the kernel flags it), chown, and the
	 * chown(f, -1, -1) that arrives with no field at all. */
	if (atomic_load(&fs->killpriv) && !S_ISDIR(cur.mode) &&
	    (((to_set & FUSE_SET_ATTR_SIZE) && fs_io_kill_requested()) ||
	     (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) || to_set == 0)) {
		r = kill_privs(fs, req, ino, NULL, &cur,
			       !fs_io_kill_requested() && fuse_req_ctx(req)->uid == 0);
		if (r < 0)
			goto out;
	}

	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (!S_ISREG(cur.mode)) {
			r = S_ISDIR(cur.mode) ? -EISDIR : -EINVAL;
			goto out;
		}
		if (attr->st_size < 0) {
			r = -EINVAL;
			goto out;
		}
		struct fs_inode *ip;
		r = fs_inode_get(fs, ino, &cur, &ip);
		if (r < 0)
			goto out;
		r = do_truncate(fs, ip, (uint64_t)attr->st_size, now);
		fs_inode_put(fs, ip);
		if (r < 0)
			goto out;
	}

	unsigned mask = 0;
	if (to_set & FUSE_SET_ATTR_MODE) {
		in.mode = (cur.mode & S_IFMT) | (attr->st_mode & 07777);
		mask |= META_SET_MODE;
	}
	if (to_set & FUSE_SET_ATTR_UID) {
		in.uid = attr->st_uid;
		mask |= META_SET_UID;
	}
	if (to_set & FUSE_SET_ATTR_GID) {
		in.gid = attr->st_gid;
		mask |= META_SET_GID;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW)) {
		in.atime_ns = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? now : ts_to_ns(&attr->st_atim);
		mask |= META_SET_ATIME;
	}
	if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
		in.mtime_ns = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? now : ts_to_ns(&attr->st_mtim);
		mask |= META_SET_MTIME;
	}
	/* chown(f, -1, -1) changes nothing but ctime; the kernel then sends a SETATTR with no
	 * field at all (it names ctime only in writeback-cache mode). */
	if (mask || (to_set & FUSE_SET_ATTR_CTIME) || to_set == 0) {
		in.ctime_ns = (to_set & FUSE_SET_ATTR_CTIME) ? ts_to_ns(&attr->st_ctim) : now;
		mask |= META_SET_CTIME;
		struct fs_inode *ip = fs_inode_find(fs, ino);
		if (ip)
			pthread_mutex_lock(&ip->lock);
		r = META_CALL(fs->meta, setattr, ino, mask, &in, NULL);
		if (r == 0)
			fs_meta_touched(fs);
		if (ip) {
			/* Keep a later flush from writing back older times. */
			if (r == 0 && (mask & META_SET_MTIME))
				ip->mtime_ns = in.mtime_ns;
			if (r == 0)
				ip->ctime_ns = in.ctime_ns;
			pthread_mutex_unlock(&ip->lock);
			fs_inode_put(fs, ip);
		}
		if (r < 0)
			goto out;
	}
	r = META_CALL(fs->meta, getattr, ino, &cur);
out:
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_attr(req, fs, &cur);
}

static int do_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev,
		    const char *link, struct meta_attr *ret)
{
	struct fs *fs = req_fs(req);
	int r = check_name(name);
	if (r < 0)
		return r;
	/* The caller owns the new inode; the engine applies a setgid parent's group and bit in
	 * the same transaction (no read of the parent before it). */
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct meta_attr in = {0};
	in.uid = ctx->uid;
	in.gid = ctx->gid;
	in.mode = mode;
	in.atime_ns = in.mtime_ns = in.ctime_ns = in.btime_ns = now_realtime_ns();
	in.rdev = rdev;
	uint64_t gen_pre = dir_change_begin(fs);
	r = META_CALL(fs->meta, mknod, parent, name, &in, link, ret);
	if (r == -EDQUOT && fs_purge_flush(fs) > 0) /* FS-2: queued orphans still count */
		r = META_CALL(fs->meta, mknod, parent, name, &in, link, ret);
	uint64_t gen = r == 0 ? fs_meta_touched(fs) : 0;
	dir_change_end(fs, parent, gen_pre, r, gen, in.ctime_ns, S_ISDIR(mode) ? 1 : 0);
	return r;
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct meta_attr a;
	int r = do_mknod(req, parent, name, mode, rdev, NULL, &a);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, req_fs(req), &a);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	op_mknod(req, parent, name, S_IFDIR | (mode & 07777), 0);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct meta_attr a;
	int r = strlen(link) > META_SYMLINK_MAX ? -ENAMETOOLONG : 0;
	if (r == 0)
		r = do_mknod(req, parent, name, S_IFLNK | 0777, 0, link, &a);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, req_fs(req), &a);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct fs *fs = req_fs(req);
	struct meta_attr a;
	int r = check_name(newname);
	if (r == 0)
		r = META_CALL(fs->meta, link, ino, newparent, newname, now_realtime_ns(), &a);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fs_meta_touched(fs);
	fs_inode_set_nlink(fs, &a);
	reply_entry(req, fs, &a);
}

/* unlink or rmdir of parent/name, a tracked change of parent (FS-10); *a: what the engine
 * returned of the entry's inode. */
static int do_remove(struct fs *fs, fuse_ino_t parent, const char *name, bool dir,
		     struct meta_attr *a)
{
	int64_t now = now_realtime_ns();
	uint64_t gen_pre = dir_change_begin(fs);
	int r = dir ? META_CALL(fs->meta, rmdir, parent, name, now, a)
		    : META_CALL(fs->meta, unlink, parent, name, now, a);
	uint64_t gen = r == 0 ? fs_meta_touched(fs) : 0;
	dir_change_end(fs, parent, gen_pre, r, gen, now, dir ? -1 : 0);
	return r;
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = req_fs(req);
	struct meta_attr a;
	int r = do_remove(fs, parent, name, false, &a);
	if (r == 0)
		fs_inode_set_nlink(fs, &a);
	fuse_reply_err(req, -r);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = req_fs(req);
	struct meta_attr a;
	int r = do_remove(fs, parent, name, true, &a);
	if (r == 0) {
		a.nlink = 0;
		fs_inode_set_nlink(fs, &a);
	}
	fuse_reply_err(req, -r);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct fs *fs = req_fs(req);
	struct meta_attr rep = {0};
	int r = check_name(newname);
	if (r == 0 && (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)))
		r = -EINVAL;
	if (r == 0)
		r = META_CALL(fs->meta, rename, parent, name, newparent, newname, flags,
			      now_realtime_ns(), &rep);
	if (r == 0) {
		fs_meta_touched(fs);
		if (rep.ino != 0 && !(flags & RENAME_EXCHANGE))
			fs_inode_set_nlink(fs, &rep);
	}
	fuse_reply_err(req, -r);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = req_fs(req);
	char buf[META_SYMLINK_MAX + 1];
	int r = META_CALL(fs->meta, readlink, ino, buf, sizeof(buf));
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_readlink(req, buf);
}

/* ---- directories ---- */

struct dirbuf {
	fuse_req_t req;
	struct fs *fs;
	char *buf;
	size_t size, used;
	bool plus;
	int err;
};

static int dir_add(void *ctx, const char *name, uint64_t ino, uint32_t mode, uint64_t off)
{
	struct dirbuf *d = ctx;
	struct stat st = {.st_ino = ino, .st_mode = mode};
	size_t need = fuse_add_direntry(d->req, NULL, 0, name, NULL, 0);
	if (d->used + need > d->size)
		return 1;
	fuse_add_direntry(d->req, d->buf + d->used, d->size - d->used, name, &st, (off_t)off);
	d->used += need;
	return 0;
}

static int dir_add_plus(void *ctx, const char *name, const struct meta_attr *attr, uint64_t off)
{
	struct dirbuf *d = ctx;
	size_t need = fuse_add_direntry_plus(d->req, NULL, 0, name, NULL, 0);
	if (d->used + need > d->size)
		return 1;
	struct meta_attr a = *attr;
	struct fs_inode *ip;
	int r = fs_inode_get(d->fs, a.ino, &a, &ip);
	if (r < 0) {
		d->err = r;
		return 1;
	}
	/* The kernel takes a lookup for every entry it receives this way (FS-2). */
	fs_inode_lookup_add(d->fs, ip, 1);
	fs_inode_overlay(d->fs, &a);
	struct fuse_entry_param e = {0};
	e.ino = a.ino;
	e.generation = a.generation;
	e.attr_timeout = d->fs->opt.attr_timeout;
	e.entry_timeout = d->fs->opt.entry_timeout;
	attr_to_stat(&a, &e.attr);
	fuse_add_direntry_plus(d->req, d->buf + d->used, d->size - d->used, name, &e, (off_t)off);
	d->used += need;
	fs_inode_put(d->fs, ip);
	return 0;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct fs *fs = req_fs(req);
	struct dirbuf d = {.req = req, .fs = fs, .size = size, .plus = plus};
	d.buf = malloc(size ? size : 1);
	if (!d.buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int r = 0;
	/* Offsets 1 and 2 are "." and ".."; the engine's entries start above 2. */
	static const char *dots[] = {".", ".."};
	for (off_t i = off; i < 2; i++) {
		struct stat st = {.st_ino = ino, .st_mode = S_IFDIR};
		size_t need;
		if (plus) {
			struct fuse_entry_param e = {.attr = st};
			e.ino = 0; /* no lookup is taken for dot entries */
			need = fuse_add_direntry_plus(req, NULL, 0, dots[i], NULL, 0);
			if (d.used + need > d.size)
				goto done;
			fuse_add_direntry_plus(req, d.buf + d.used, d.size - d.used, dots[i], &e,
					       i + 1);
		} else {
			need = fuse_add_direntry(req, NULL, 0, dots[i], NULL, 0);
			if (d.used + need > d.size)
				goto done;
			fuse_add_direntry(req, d.buf + d.used, d.size - d.used, dots[i], &st,
					  i + 1);
		}
		d.used += need;
	}
	if (plus)
		r = META_CALL(fs->meta, readdirplus, ino, (uint64_t)(off < 2 ? 2 : off),
			      dir_add_plus, &d);
	else
		r = META_CALL(fs->meta, readdir, ino, (uint64_t)(off < 2 ? 2 : off), dir_add, &d);
	if (r > 0)
		r = 0;
	if (r == 0 && d.err < 0 && d.used == 0)
		r = d.err;
done:
	if (r < 0 && d.used == 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, d.buf, d.used);
	free(d.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, true);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	fuse_reply_err(req, -fs_meta_sync(req_fs(req)));
}

/* ---- files ---- */

static int file_new(struct fs *fs, uint64_t ino, const struct meta_attr *a,
		    struct fuse_file_info *fi)
{
	struct fs_file *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	int r = fs_inode_get(fs, ino, a, &f->ip);
	if (r < 0) {
		free(f);
		return r;
	}
	fs_inode_open_add(fs, f->ip, 1);
	f->flags = fi->flags;
	fi->fh = (uintptr_t)f;
	if (fi->flags & O_DIRECT)
		fi->direct_io = 1;
	else if (!fs->shared)
		fi->keep_cache = 1; /* one client: every change passes this kernel's cache */
	/* FS-11: one client, locks the kernel's, and nothing this open can change that a close
	 * must record (shared engines need FLUSH: FS-7, FS-9) */
	fi->noflush = !fs->shared && (fi->flags & O_ACCMODE) == O_RDONLY;
	return 0;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct meta_attr a;
	int r = 0;
	if (fs->shared) /* FS-7: start from what the database holds now */
		r = META_CALL(fs->meta, getattr, ino, &a);
	if (r == 0)
		r = file_new(fs, ino, fs->shared ? &a : NULL, fi);
	if (r == 0 && fs->shared) {
		fs_inode_overlay(fs, &a); /* adopts a unless this mount has unrecorded changes */
		drop_kernel_attrs(fs, ino);
		/* the other mount may have replaced chunk files (truncate to 0 deletes them) */
		ds_forget(fs->ds, ino);
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else if (fuse_reply_open(req, fi) == -ENOENT) {
		/* Interrupted: the kernel will send no release for this handle. */
		struct fs_file *f = file_of(fi);
		fs_inode_open_add(fs, f->ip, -1);
		fs_inode_put(fs, f->ip);
		free(f);
	}
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct meta_attr a;
	int r = do_mknod(req, parent, name, S_IFREG | (mode & 07777), 0, NULL, &a);
	if (r == 0)
		r = file_new(fs, a.ino, &a, fi);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	struct fs_file *f = file_of(fi);
	pthread_mutex_lock(&f->ip->lock);
	/* A new inode number: no chunk can exist for it yet, unless another mount of a shared
	 * volume writes it (FS-7). */
	f->ip->fresh = !fs->shared;
	pthread_mutex_unlock(&f->ip->lock);
	fs_inode_lookup_add(fs, f->ip, 1);
	struct fuse_entry_param e = {0};
	e.ino = a.ino;
	e.generation = a.generation;
	e.attr_timeout = fs->opt.attr_timeout;
	e.entry_timeout = fs->opt.entry_timeout;
	attr_to_stat(&a, &e.attr);
	fuse_reply_create(req, &e, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_file *f = file_of(fi);
	int r = fs_inode_flush(fs, f->ip, false);
	int l = fs_lock_release(fs, f, fi->flock_release, fi->lock_owner);
	if (r == 0)
		r = l;
	fs_inode_open_add(fs, f->ip, -1);
	fs_inode_put(fs, f->ip);
	free(f);
	fuse_reply_err(req, r < 0 ? -r : 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* close(2): close-to-open consistency wants the size recorded now, and POSIX wants the
	 * closing process's record locks of this file gone (FS-9). */
	struct fs *fs = req_fs(req);
	int r = fs_inode_flush(fs, file_of(fi)->ip, false);
	int l = fs_lock_flush(fs, file_of(fi), fi->lock_owner);
	fuse_reply_err(req, r < 0 ? -r : -l);
}

static int do_fsync(struct fs *fs, struct fs_inode *ip, bool datasync)
{
	pthread_mutex_lock(&ip->lock);
	bool size_recorded = ip->size == ip->db_size;
	uint64_t size_gen = ip->size_gen;
	pthread_mutex_unlock(&ip->lock);
	if (!size_recorded) {
		/* FS-4: data on every in-chain replica first, then the size that covers it. */
		int r = ds_fsync(fs->ds, ip->ino);
		if (r < 0)
			return r;
		return fs_inode_flush(fs, ip, true);
	}
	/* The recorded size already covers the file: nothing orders the metadata after the
	 * data, so the metadata sync (times for fsync; for fdatasync only the recorded size,
	 * which may still sit in an unsynced commit) runs on the syncer thread while this one
	 * syncs the data (two device flushes at once instead of one after the other).
	 * fdatasync(2) owes no durability to times: PostgreSQL's WAL path. */
	int r = datasync ? 0 : fs_inode_flush(fs, ip, false);
	uint64_t ticket = 0;
	/* fdatasync whose recorded size is durable already: no metadata sync at all, however
	 * many other inodes' commits wait for one (PostgreSQL's WAL while tables grow). */
	if (r == 0 &&
	    !(datasync && size_gen <= atomic_load_explicit(&fs->meta_synced, memory_order_acquire)))
		ticket = meta_sync_start(fs);
	int d = ds_fsync(fs->ds, ip->ino);
	int m = meta_sync_wait(fs, ticket);
	if (d < 0)
		return d;
	return r < 0 ? r : m;
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	fuse_reply_err(req, -do_fsync(req_fs(req), file_of(fi)->ip, datasync != 0));
}

static __thread char *tl_buf;
static __thread size_t tl_len;

static void *thread_buf(size_t len)
{
	if (len > tl_len) {
		free(tl_buf);
		tl_buf = malloc(len);
		tl_len = tl_buf ? len : 0;
	}
	return tl_buf;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_inode *ip = file_of(fi)->ip;
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	pthread_rwlock_rdlock(&ip->io);
	pthread_mutex_lock(&ip->lock);
	uint64_t fsize = ip->size;
	pthread_mutex_unlock(&ip->lock);
	if ((uint64_t)off >= fsize || size == 0) {
		pthread_rwlock_unlock(&ip->io);
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	size_t len = (size_t)MIN((uint64_t)size, fsize - (uint64_t)off);
	char *buf = thread_buf(len);
	ssize_t r = buf ? ds_read(fs->ds, ino, buf, len, (uint64_t)off) : -ENOMEM;
	pthread_rwlock_unlock(&ip->io);
	if (r < 0)
		fuse_reply_err(req, (int)-r);
	else
		fuse_reply_buf(req, buf, (size_t)r);
}

/* Mark the inode WDIRTY in the database before data may land beyond its recorded size
 * (FS-3), and under a quota root reserve the bytes first (FS-6). Called with ip->lock held. */
static int mark_extending(struct fs *fs, struct fs_inode *ip, uint64_t end)
{
	if (end <= ip->db_size)
		return 0;
	if (ip->qroot) {
		if (end <= ip->qres)
			return 0; /* reserved before, and WDIRTY set with it */
		return quota_reserve(fs, ip, end,
				     end > UINT64_MAX - FS_QUOTA_STEP ? end : end + FS_QUOTA_STEP);
	}
	if (ip->wmark)
		return 0;
	struct meta_attr a = {0};
	a.flags = META_IF_WDIRTY;
	int r = META_CALL(fs->meta, setattr, ip->ino, META_SET_FLAGS, &a, NULL);
	if (r == 0) {
		fs_meta_touched(fs);
		ip->wmark = true;
	}
	return r;
}

/* A write's mtime and ctime, with the granularity of a local file system's (FS-4): within
 * fs.time_grain_ns after the last stamp (of a write, a setattr or the database) the times
 * stay, so that an fsync after a burst of overwrites owes the database nothing new. A stamp
 * in the future (utimensat) is always replaced. Called with ip->lock held. */
static void stamp_write_times(struct fs *fs, struct fs_inode *ip)
{
	int64_t now = now_realtime_ns();
	if (ip->mtime_ns <= now && now - ip->mtime_ns < fs->time_grain_ns && ip->ctime_ns <= now &&
	    now - ip->ctime_ns < fs->time_grain_ns)
		return;
	ip->mtime_ns = ip->ctime_ns = now;
	ip->dirty = true;
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_file *f = file_of(fi);
	struct fs_inode *ip = f->ip;
	if (off < 0 || (uint64_t)off + size < (uint64_t)off) {
		fuse_reply_err(req, EFBIG);
		return;
	}
	uint64_t end = (uint64_t)off + size;
	if (fs_io_kill_requested() && atomic_load(&fs->killpriv)) {
		int k = kill_privs(fs, req, ino, ip, NULL, false); /* FS-8 */
		if (k < 0) {
			fuse_reply_err(req, -k);
			return;
		}
	}
	pthread_rwlock_rdlock(&ip->io);
	pthread_mutex_lock(&ip->lock);
	ip->fresh = false;
	int r = mark_extending(fs, ip, end);
	if (r == 0)
		ip->inflight++;
	pthread_mutex_unlock(&ip->lock);
	if (r < 0) {
		pthread_rwlock_unlock(&ip->io);
		fuse_reply_err(req, -r);
		return;
	}
	ssize_t n = ds_write(fs->ds, ino, buf, size, (uint64_t)off);
	pthread_mutex_lock(&ip->lock);
	ip->inflight--;
	if (n > 0) {
		if (end > ip->size) {
			ip->size = end;
			ip->dirty = true;
		}
		stamp_write_times(fs, ip);
	}
	pthread_mutex_unlock(&ip->lock);
	pthread_rwlock_unlock(&ip->io);
	if (n >= 0 && (f->flags & (O_SYNC | O_DSYNC))) {
		r = do_fsync(fs, ip, (f->flags & O_SYNC) != O_SYNC);
		if (r < 0)
			n = r;
	}
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_inode *ip = file_of(fi)->ip;
	int r = 0;
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	uint64_t end = (uint64_t)off + (uint64_t)len;
	bool keep = mode & FALLOC_FL_KEEP_SIZE;
	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if ((mode & FALLOC_FL_PUNCH_HOLE) && !keep) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	pthread_rwlock_wrlock(&ip->io);
	pthread_mutex_lock(&ip->lock);
	ip->fresh = false;
	uint64_t size = ip->size;
	bool grows = !keep && end > size;
	if (grows)
		r = mark_extending(fs, ip, end);
	pthread_mutex_unlock(&ip->lock);
	if (r == 0 && (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))) {
		/* Only the part inside the file holds data; beyond it is a hole already. */
		if ((uint64_t)off < size)
			r = ds_punch(fs->ds, ino, (uint64_t)off, MIN(end, size) - (uint64_t)off);
	} else if (r == 0) {
		r = ds_allocate(fs->ds, ino, (uint64_t)off, (uint64_t)len);
	}
	if (r == 0) {
		pthread_mutex_lock(&ip->lock);
		if (grows && end > ip->size)
			ip->size = end;
		ip->mtime_ns = ip->ctime_ns = now_realtime_ns();
		ip->dirty = true;
		pthread_mutex_unlock(&ip->lock);
	}
	pthread_rwlock_unlock(&ip->io);
	fuse_reply_err(req, -r);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_inode *ip = file_of(fi)->ip;
	if (whence != SEEK_DATA && whence != SEEK_HOLE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (off < 0) {
		fuse_reply_err(req, ENXIO);
		return;
	}
	pthread_rwlock_rdlock(&ip->io);
	pthread_mutex_lock(&ip->lock);
	uint64_t size = ip->size;
	pthread_mutex_unlock(&ip->lock);
	uint64_t res = 0;
	int r = ds_seek(fs->ds, ino, size, (uint64_t)off, whence, &res);
	pthread_rwlock_unlock(&ip->io);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_lseek(req, (off_t)res);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = req_fs(req);
	uint64_t total = 0, avail = 0;
	struct meta_statfs ms = {0};
	fs_purge_flush(fs); /* FS-2: inode counts and quota usage without the queued orphans */
	int r = ds_statfs(fs->ds, &total, &avail);
	if (r == 0)
		r = META_CALL(fs->meta, statfs, &ms);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	struct statvfs sv = {0};
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = total / 4096;
	sv.f_bfree = avail / 4096;
	sv.f_bavail = avail / 4096;
	/* Inodes cost a metadata row and no space on targets: report as many free as blocks. */
	sv.f_ffree = sv.f_bfree;
	sv.f_favail = sv.f_bfree;
	sv.f_files = ms.inodes + sv.f_ffree;
	sv.f_namemax = META_NAME_MAX;
	/* FS-6: inside a quota root, df shows the quota: its limit as the size and what is left
	 * of it (never more than the targets have) as free. */
	struct meta_quota q;
	if (ino != META_ROOT_INO && META_CALL(fs->meta, quota_get, ino, &q) == 0) {
		if (q.bytes_limit) {
			uint64_t left =
			    q.bytes_used < q.bytes_limit ? q.bytes_limit - q.bytes_used : 0;
			sv.f_blocks = q.bytes_limit / 4096;
			sv.f_bfree = MIN(left, avail) / 4096;
			sv.f_bavail = sv.f_bfree;
		}
		if (q.inodes_limit) {
			sv.f_files = q.inodes_limit;
			sv.f_ffree =
			    q.inodes_used < q.inodes_limit ? q.inodes_limit - q.inodes_used : 0;
			sv.f_favail = sv.f_ffree;
		}
	}
	fuse_reply_statfs(req, &sv);
}

/* ---- xattrs ---- */

/* POSIX ACLs are not supported yet: storing them as plain xattrs would let setfacl and
 * cp -a "succeed" while the mode and the permission checks ignore them. Saying so makes
 * tools fall back to chmod, which keeps the mode right. */
static bool is_acl_xattr(const char *name)
{
	return !strcmp(name, "system.posix_acl_access") ||
	       !strcmp(name, "system.posix_acl_default");
}

static void reply_sized(fuse_req_t req, int r, const char *buf, size_t size)
{
	if (r < 0)
		fuse_reply_err(req, -r);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)r);
	else
		fuse_reply_buf(req, buf, (size_t)r);
}

/* FS-6: the quota xattr. Its value is "BYTES" or "BYTES:INODES" (BYTES as parse_size: 4096,
 * 10M, 1GiB; 0 = no limit);
 * it is virtual: never stored, never listed (so cp -a does not copy quotas around). */
static bool is_quota_xattr(const char *name)
{
	return !strcmp(name, META_QUOTA_XATTR);
}

/* Bounded parse of the value the caller sent: digits, optionally ':' and digits. */
static int parse_quota_value(const char *v, size_t size, uint64_t *bytes, uint64_t *inodes)
{
	char buf[64];
	if (size == 0 || size >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, v, size);
	buf[size] = '\0';
	if (buf[size - 1] == '\n')
		buf[size - 1] = '\0';
	char *colon = strchr(buf, ':');
	if (colon)
		*colon = '\0';
	int r = parse_size(buf, bytes);
	*inodes = 0;
	if (r == 0 && colon)
		r = parse_size(colon + 1, inodes);
	return r < 0 ? -EINVAL : 0;
}

static int quota_xattr_set(fuse_req_t req, struct fs *fs, fuse_ino_t ino, const char *value,
			   size_t size)
{
	uint64_t bytes, inodes;
	if (fuse_req_ctx(req)->uid != 0)
		return -EPERM;
	int r = parse_quota_value(value, size, &bytes, &inodes);
	if (r == 0)
		r = META_CALL(fs->meta, quota_set, ino, bytes, inodes);
	if (r == 0)
		log_info("quota on directory inode %llu: %llu bytes, %llu inodes",
			 (unsigned long long)ino, (unsigned long long)bytes,
			 (unsigned long long)inodes);
	return r;
}

/* "root=INO bytes_limit=N inodes_limit=N bytes_used=N inodes_used=N" of the root that
 * accounts ino; ENODATA when there is none. */
static void quota_xattr_get(fuse_req_t req, struct fs *fs, fuse_ino_t ino, size_t size)
{
	struct meta_quota q;
	char buf[256];
	fs_purge_flush(fs); /* FS-2: usage without the queued orphans */
	int r = META_CALL(fs->meta, quota_get, ino, &q);
	if (r == 0)
		r = snprintf(buf, sizeof(buf),
			     "root=%llu bytes_limit=%llu inodes_limit=%llu bytes_used=%llu "
			     "inodes_used=%llu",
			     (unsigned long long)q.ino, (unsigned long long)q.bytes_limit,
			     (unsigned long long)q.inodes_limit, (unsigned long long)q.bytes_used,
			     (unsigned long long)q.inodes_used);
	if (r > 0 && size && (size_t)r > size)
		r = -ERANGE;
	reply_sized(req, r, buf, size);
}

/* FS-8: what kill_privs needs to know about security.capability of a cached inode. */
static void note_caps(struct fs *fs, uint64_t ino, int8_t caps)
{
	struct fs_inode *ip = fs_inode_find(fs, ino);
	if (!ip)
		return;
	pthread_mutex_lock(&ip->lock);
	ip->caps = caps;
	pthread_mutex_unlock(&ip->lock);
	fs_inode_put(fs, ip);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	struct fs *fs = req_fs(req);
	int r;
	if (is_quota_xattr(name))
		r = quota_xattr_set(req, fs, ino, value, size);
	else if (is_acl_xattr(name))
		r = -EOPNOTSUPP;
	else if (strlen(name) > META_XATTR_NAME_MAX)
		r = -ERANGE;
	else if (size > META_XATTR_SIZE_MAX)
		r = -E2BIG;
	else
		r = META_CALL(fs->meta, setxattr, ino, name, value, size, flags);
	if (r == 0)
		fs_meta_touched(fs); /* the engine updated ctime in the same transaction */
	if (r == 0 && !strcmp(name, XATTR_CAPS))
		note_caps(fs, ino, 1);
	fuse_reply_err(req, -r);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct fs *fs = req_fs(req);
	if (is_quota_xattr(name)) {
		quota_xattr_get(req, fs, ino, size);
		return;
	}
	char *buf = size ? malloc(size) : NULL;
	int r = (size && !buf) ? -ENOMEM : META_CALL(fs->meta, getxattr, ino, name, buf, size);
	reply_sized(req, r, buf, size);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct fs *fs = req_fs(req);
	char *buf = size ? malloc(size) : NULL;
	int r = (size && !buf) ? -ENOMEM : META_CALL(fs->meta, listxattr, ino, buf, size);
	reply_sized(req, r, buf, size);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct fs *fs = req_fs(req);
	int r;
	if (is_quota_xattr(name))
		r = fuse_req_ctx(req)->uid != 0 ? -EPERM : META_CALL(fs->meta, quota_clear, ino);
	else if (is_acl_xattr(name))
		r = -EOPNOTSUPP;
	else
		r = META_CALL(fs->meta, removexattr, ino, name);
	if (r == 0)
		fs_meta_touched(fs); /* the engine updated ctime in the same transaction */
	if (r == 0 && !strcmp(name, XATTR_CAPS))
		note_caps(fs, ino, 0);
	fuse_reply_err(req, -r);
}

static const struct fuse_lowlevel_ops fs_ops = {
    .init = op_init,
    .destroy = op_destroy,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .fsyncdir = op_fsyncdir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .create = op_create,
    .fallocate = op_fallocate,
    .lseek = op_lseek,
};

/* ---- lifecycle ---- */

int fs_new(struct meta *meta, struct ds *ds, const struct fs_options *opt, struct fs **ret)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	fs->meta = meta;
	fs->ds = ds;
	fs->opt = *opt;
	fs->shared = (meta_ops_of(meta)->caps & META_CAP_SHARED) != 0;
	fs->commit_durable = (meta_ops_of(meta)->caps & META_CAP_DURABLE_COMMIT) != 0;
	fs->opt.spin_us = opt->spin_us < 0 ? FS_SPIN_US_DEFAULT : MIN(opt->spin_us, FS_SPIN_US_MAX);
	double cache_time = fs->shared ? FS_SHARED_TIMEOUT : FS_ONE_MOUNT_TIMEOUT; /* FS-11 */
	if (fs->opt.attr_timeout < 0)
		fs->opt.attr_timeout = cache_time;
	if (fs->opt.entry_timeout < 0)
		fs->opt.entry_timeout = cache_time;
	struct timespec grain;
	if (opt->time_grain_set)
		fs->time_grain_ns =
		    (int64_t)MIN(opt->time_grain_ms, FS_TIME_GRAIN_MAX_MS) * 1000000;
	else if (clock_getres(CLOCK_REALTIME_COARSE, &grain) == 0)
		fs->time_grain_ns =
		    MIN((int64_t)grain.tv_sec * 1000000000 + grain.tv_nsec, FS_TIME_GRAIN_MAX_NS);
	if (fs->opt.max_threads == 0)
		fs->opt.max_threads = 16;
	int r = META_CALL(meta, volume_get, &fs->vol);
	if (r == 0)
		r = fs_itab_init(fs);
	if (r < 0)
		goto err_free;
	r = fs_lock_new(fs);
	if (r < 0)
		goto err_itab;
	pthread_mutex_init(&fs->dslot_lock, NULL);
	pthread_mutex_init(&fs->sync_lock, NULL);
	cond_init_monotonic(&fs->sync_work); /* sync_wait has deadlines */
	pthread_cond_init(&fs->sync_done, NULL);
	r = -pthread_create(&fs->sync_thread, NULL, sync_main, fs);
	if (r < 0)
		goto err_sync;
	*ret = fs;
	return 0;

err_sync:
	pthread_mutex_destroy(&fs->dslot_lock);
	pthread_mutex_destroy(&fs->sync_lock);
	pthread_cond_destroy(&fs->sync_work);
	pthread_cond_destroy(&fs->sync_done);
	fs_lock_stop(fs);
err_itab:
	fs_itab_fini(fs);
err_free:
	free(fs);
	return r;
}

struct orphan_vec {
	struct meta_attr *v;
	size_t n, cap;
};

static int collect_orphan(void *ctx, const struct meta_attr *a)
{
	struct orphan_vec *o = ctx;
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 64;
		struct meta_attr *v = realloc(o->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		o->v = v;
		o->cap = cap;
	}
	o->v[o->n++] = *a;
	return 0;
}

int fs_recover(struct fs *fs)
{
	struct orphan_vec o = {0};
	int r = META_CALL(fs->meta, orphans, collect_orphan, &o);
	if (r < 0) {
		free(o.v);
		return r;
	}
	int fixed = 0;
	for (size_t i = 0; i < o.n; i++) {
		const struct meta_attr *a = &o.v[i];
		if (a->nlink == 0) {
			r = fs_purge(fs, a->ino, a->mode, true);
		} else {
			/* FS-3: bytes a crashed writer left beyond the recorded size go now. */
			r = S_ISREG(a->mode) ? ds_trim(fs->ds, a->ino, a->size) : 0;
			if (r == 0) {
				struct meta_attr c = {0};
				r = META_CALL(fs->meta, setattr, a->ino, META_SET_FLAGS, &c, NULL);
			}
		}
		if (r < 0) {
			log_err("recovery of inode %llu failed: %s", (unsigned long long)a->ino,
				strerror(-r));
			free(o.v);
			return r;
		}
		fixed++;
	}
	free(o.v);
	r = fs_purge_flush(fs);
	if (r < 0)
		return r;
	if (fixed) {
		log_info("recovery: finished %d inode(s) left by an unclean stop", fixed);
		fs_meta_touched(fs);
		r = fs_meta_sync(fs);
		if (r < 0)
			return r;
	}
	return fixed;
}

int fs_mount(struct fs *fs, const char *mountpoint, char *err, size_t errlen)
{
	char opts[512];
	snprintf(opts, sizeof(opts), "fsname=braidfs:%s,subtype=braidfs,default_permissions%s%s",
		 fs->vol.name, fs->opt.allow_other ? ",allow_other" : "", fs->opt.ro ? ",ro" : "");
	char *argv[] = {"braidfs", "-o", opts, fs->opt.debug ? "-d" : NULL, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(fs->opt.debug ? 4 : 3, argv);
	struct fuse_lowlevel_ops ops = fs_ops; /* libfuse copies it */
	fs_lock_ops(fs, &ops);
	fs->se = fuse_session_new(&args, &ops, sizeof(ops), fs);
	fuse_opt_free_args(&args); /* parsing replaced argv with a copy; the session keeps none */
	if (!fs->se) {
		snprintf(err, errlen, "cannot create the FUSE session (is /dev/fuse there?)");
		return -EIO;
	}
	if (fuse_set_signal_handlers(fs->se) != 0) {
		snprintf(err, errlen, "cannot install signal handlers");
		fuse_session_destroy(fs->se);
		fs->se = NULL;
		return -EIO;
	}
	if (fuse_session_mount(fs->se, mountpoint) != 0) {
		snprintf(err, errlen, "cannot mount on %s (see the message above)", mountpoint);
		fuse_remove_signal_handlers(fs->se);
		fuse_session_destroy(fs->se);
		fs->se = NULL;
		return -EIO;
	}
	if (fs_io_attach(fs) < 0) {
		snprintf(err, errlen, "cannot attach to the FUSE session's device");
		fuse_session_unmount(fs->se);
		fuse_remove_signal_handlers(fs->se);
		fuse_session_destroy(fs->se);
		fs->se = NULL;
		return -EIO;
	}
	return 0;
}

/* A request kind handled by the reader itself while its mean wall time stays below this
 * (fs_loop.c): about what handing the reader's place on costs in wake-ups. */
#define FS_INLINE_NS (200 * 1000)

/* fs_loop.h over the libfuse session: each worker's buffer is a struct fuse_buf. */
static int loop_receive(void *ctx, void *buf)
{
	struct fs *fs = ctx;
	return fuse_session_receive_buf(fs->se, buf);
}

static unsigned loop_kind(void *ctx, const void *buf)
{
	(void)ctx;
	const struct fuse_buf *b = buf;
	if ((b->flags & FUSE_BUF_IS_FD) || b->size < sizeof(struct fuse_in_header))
		return LF_KINDS; /* not in memory to look at: may wait */
	const struct fuse_in_header *h = b->mem;
	return h->opcode < LF_KINDS ? h->opcode : LF_KINDS;
}

static void loop_process(void *ctx, void *buf)
{
	struct fs *fs = ctx;
	fuse_session_process_buf(fs->se, buf);
}

/* FUSE opcodes by number (linux/fuse.h), as fs_req_name tells them. */
static const char *const req_names[FS_REQ_KINDS] = {
    [FUSE_LOOKUP] = "lookup",
    [FUSE_FORGET] = "forget",
    [FUSE_GETATTR] = "getattr",
    [FUSE_SETATTR] = "setattr",
    [FUSE_READLINK] = "readlink",
    [FUSE_SYMLINK] = "symlink",
    [FUSE_MKNOD] = "mknod",
    [FUSE_MKDIR] = "mkdir",
    [FUSE_UNLINK] = "unlink",
    [FUSE_RMDIR] = "rmdir",
    [FUSE_RENAME] = "rename",
    [FUSE_LINK] = "link",
    [FUSE_OPEN] = "open",
    [FUSE_READ] = "read",
    [FUSE_WRITE] = "write",
    [FUSE_STATFS] = "statfs",
    [FUSE_RELEASE] = "release",
    [FUSE_FSYNC] = "fsync",
    [FUSE_SETXATTR] = "setxattr",
    [FUSE_GETXATTR] = "getxattr",
    [FUSE_LISTXATTR] = "listxattr",
    [FUSE_REMOVEXATTR] = "removexattr",
    [FUSE_FLUSH] = "flush",
    [FUSE_INIT] = "init",
    [FUSE_OPENDIR] = "opendir",
    [FUSE_READDIR] = "readdir",
    [FUSE_RELEASEDIR] = "releasedir",
    [FUSE_FSYNCDIR] = "fsyncdir",
    [FUSE_GETLK] = "getlk",
    [FUSE_SETLK] = "setlk",
    [FUSE_SETLKW] = "setlkw",
    [FUSE_ACCESS] = "access",
    [FUSE_CREATE] = "create",
    [FUSE_INTERRUPT] = "interrupt",
    [FUSE_BMAP] = "bmap",
    [FUSE_DESTROY] = "destroy",
    [FUSE_IOCTL] = "ioctl",
    [FUSE_POLL] = "poll",
    [FUSE_NOTIFY_REPLY] = "notify_reply",
    [FUSE_BATCH_FORGET] = "batch_forget",
    [FUSE_FALLOCATE] = "fallocate",
    [FUSE_READDIRPLUS] = "readdirplus",
    [FUSE_RENAME2] = "rename2",
    [FUSE_LSEEK] = "lseek",
    [FUSE_COPY_FILE_RANGE] = "copy_file_range",
    [FUSE_SETUPMAPPING] = "setupmapping",
    [FUSE_REMOVEMAPPING] = "removemapping",
    [FUSE_SYNCFS] = "syncfs",
    [FUSE_TMPFILE] = "tmpfile",
};

const char *fs_req_name(unsigned k)
{
	return k < FS_REQ_KINDS ? req_names[k] : NULL;
}

void fs_req_stats(struct fs *fs, struct fs_req_stat out[FS_REQ_KINDS])
{
	for (unsigned k = 0; k < FS_REQ_KINDS; k++) {
		out[k].count = atomic_load_explicit(&fs->req[k].count, memory_order_relaxed);
		out[k].busy_ns = atomic_load_explicit(&fs->req[k].ns, memory_order_relaxed);
	}
}

/* At unmount: the kinds that took the most time, each with its count and mean. */
static void log_req_stats(struct fs *fs)
{
	struct fs_req_stat st[FS_REQ_KINDS];
	fs_req_stats(fs, st);
	uint64_t total = 0;
	for (unsigned k = 0; k < FS_REQ_KINDS; k++)
		total += st[k].busy_ns;
	char line[1024];
	size_t n = 0;
	line[0] = 0;
	for (unsigned shown = 0; shown < 8 && n < sizeof(line); shown++) {
		unsigned best = FS_REQ_KINDS;
		for (unsigned k = 0; k < FS_REQ_KINDS; k++)
			if (st[k].count &&
			    (best == FS_REQ_KINDS || st[k].busy_ns > st[best].busy_ns))
				best = k;
		if (best == FS_REQ_KINDS)
			break;
		const char *name = fs_req_name(best);
		char num[16];
		snprintf(num, sizeof(num), "op%u", best);
		int w = snprintf(line + n, sizeof(line) - n, "%s%s %llu x %llu us (%.0f%%)",
				 shown ? ", " : "", name ? name : num,
				 (unsigned long long)st[best].count,
				 (unsigned long long)(st[best].busy_ns / st[best].count / 1000),
				 total ? 100.0 * (double)st[best].busy_ns / (double)total : 0.0);
		if (w < 0)
			break;
		n += (size_t)w;
		st[best].count = 0;
	}
	if (line[0])
		log_info("volume %s: request time by kind (count x mean, share): %s", fs->vol.name,
			 line);
}

static bool loop_ended(void *ctx)
{
	struct fs *fs = ctx;
	return fuse_session_exited(fs->se) != 0;
}

static void loop_buf_free(void *ctx, void *buf)
{
	(void)ctx;
	free(((struct fuse_buf *)buf)->mem);
}

/* fs_loop.c SPIN: a request waits on /dev/fuse (or the device is gone: then receive says so). */
static bool loop_ready(void *ctx)
{
	struct fs *fs = ctx;
	struct pollfd p = {.fd = fuse_session_fd(fs->se), .events = POLLIN};
	return poll(&p, 1, 0) != 0;
}

int fs_loop(struct fs *fs)
{
	static const struct lf_ops ops = {
	    .receive = loop_receive,
	    .kind = loop_kind,
	    .process = loop_process,
	    .ended = loop_ended,
	    .buf_free = loop_buf_free,
	    .ready = loop_ready,
	};
	struct lf_config cfg = {
	    .max_threads = fs->opt.max_threads,
	    .inline_ns = FS_INLINE_NS,
	    .always_off = 1ull << FUSE_FSYNC | 1ull << FUSE_FSYNCDIR | 1ull << FUSE_SYNCFS,
	    .buf_size = sizeof(struct fuse_buf),
	    .counts = fs->req,
	    .spin_ns = (uint32_t)fs->opt.spin_us * 1000u,
	    /* fs_loop.c SPIN: not after data requests (parallel jobs, or a client between) */
	    .spin_kinds = ~(1ull << FUSE_READ | 1ull << FUSE_WRITE),
	};
	struct lf_stats st = {0};
	int r = lf_run(&ops, fs, &cfg, &st);
	log_info("volume %s: %llu FUSE requests, %llu handed off by kind or cost, %llu at a wait, "
		 "%llu worker wake-ups, %llu read without one after a spin, %u workers, %llu "
		 "getattrs of the last changed directory answered without the database",
		 fs->vol.name, (unsigned long long)st.requests, (unsigned long long)st.handed_off,
		 (unsigned long long)st.hinted, (unsigned long long)st.woken,
		 (unsigned long long)st.spun, st.threads,
		 (unsigned long long)atomic_load(&fs->dslot_hits));
	log_req_stats(fs);
	return r;
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	fs_lock_stop(fs); /* replies to blocked lock requests need the session */
	if (fs->se) {
		fuse_remove_signal_handlers(fs->se);
		fuse_session_unmount(fs->se);
		fuse_session_destroy(fs->se); /* runs op_destroy when the kernel did not */
	} else {
		op_destroy(fs);
	}
	pthread_mutex_lock(&fs->sync_lock);
	fs->sync_stop = true;
	pthread_cond_signal(&fs->sync_work);
	pthread_mutex_unlock(&fs->sync_lock);
	pthread_join(fs->sync_thread, NULL);
	pthread_mutex_destroy(&fs->dslot_lock);
	pthread_mutex_destroy(&fs->sync_lock);
	pthread_cond_destroy(&fs->sync_work);
	pthread_cond_destroy(&fs->sync_done);
	fs_itab_fini(fs);
	free(tl_buf);
	tl_buf = NULL;
	tl_len = 0;
	free(fs);
}
