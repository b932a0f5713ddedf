/* fs_inode — the table of inodes the kernel or an open file holds (FS-2), and the part of
 * each inode that is newer in memory than in the metadata database (FS-3).
 *
 * An entry lives while nlookup + nopen + refs > 0. The last put() flushes what is dirty,
 * removes the entry from the table, and purges the inode when its link count is 0: only
 * then, because a name-less inode cannot be found again by a new lookup, nobody can race
 * with the purge.
 */
#include "fs/fs.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/util.h"

#define ITAB_INITIAL 4096

static size_t itab_hash(const struct fs *fs, uint64_t ino)
{
	return (size_t)((ino * 0x9E3779B97F4A7C15ull) >> 20) & (fs->itab_size - 1);
}

int fs_itab_init(struct fs *fs)
{
	fs->itab_size = ITAB_INITIAL;
	fs->itab = calloc(fs->itab_size, sizeof(*fs->itab));
	if (!fs->itab)
		return -ENOMEM;
	fs->itab_count = 0;
	pthread_mutex_init(&fs->itab_lock, NULL);
	return 0;
}

static void inode_free(struct fs_inode *ip)
{
	pthread_rwlock_destroy(&ip->io);
	pthread_mutex_destroy(&ip->lock);
	free(ip);
}

void fs_itab_fini(struct fs *fs)
{
	if (!fs->itab)
		return;
	for (size_t i = 0; i < fs->itab_size; i++) {
		struct fs_inode *ip = fs->itab[i], *next;
		for (; ip; ip = next) {
			next = ip->hnext;
			inode_free(ip);
		}
	}
	free(fs->itab);
	fs->itab = NULL;
	pthread_mutex_destroy(&fs->itab_lock);
}

/* Called with itab_lock held. */
static struct fs_inode *itab_lookup(struct fs *fs, uint64_t ino)
{
	for (struct fs_inode *ip = fs->itab[itab_hash(fs, ino)]; ip; ip = ip->hnext)
		if (ip->ino == ino)
			return ip;
	return NULL;
}

/* Called with itab_lock held: double the buckets when the table is dense. */
static void itab_grow(struct fs *fs)
{
	size_t nsize = fs->itab_size * 2;
	struct fs_inode **n = calloc(nsize, sizeof(*n));
	if (!n)
		return; /* keep the old table: longer chains, still correct */
	struct fs_inode **old = fs->itab;
	size_t osize = fs->itab_size;
	fs->itab = n;
	fs->itab_size = nsize;
	for (size_t i = 0; i < osize; i++) {
		struct fs_inode *ip = old[i], *next;
		for (; ip; ip = next) {
			next = ip->hnext;
			size_t h = itab_hash(fs, ip->ino);
			ip->hnext = n[h];
			n[h] = ip;
		}
	}
	free(old);
}

static void itab_remove(struct fs *fs, struct fs_inode *ip)
{
	struct fs_inode **pp = &fs->itab[itab_hash(fs, ip->ino)];
	for (; *pp; pp = &(*pp)->hnext) {
		if (*pp == ip) {
			*pp = ip->hnext;
			fs->itab_count--;
			return;
		}
	}
}

static void seed(struct fs_inode *ip, const struct meta_attr *a)
{
	ip->mode = a->mode;
	ip->nlink = a->nlink;
	ip->size = a->size;
	ip->db_size = a->size;
	ip->mtime_ns = a->mtime_ns;
	ip->ctime_ns = a->ctime_ns;
	ip->wmark = (a->flags & META_IF_WDIRTY) != 0;
	ip->qroot = a->qroot;
	ip->qres = a->qres;
	ip->caps = -1;
}

int fs_inode_get(struct fs *fs, uint64_t ino, const struct meta_attr *attr, struct fs_inode **ret)
{
	pthread_mutex_lock(&fs->itab_lock);
	struct fs_inode *ip = itab_lookup(fs, ino);
	if (ip) {
		ip->refs++;
		pthread_mutex_unlock(&fs->itab_lock);
		*ret = ip;
		return 0;
	}
	pthread_mutex_unlock(&fs->itab_lock);

	struct meta_attr a;
	if (!attr) {
		int r = META_CALL(fs->meta, getattr, ino, &a);
		if (r < 0)
			return r;
		attr = &a;
	}
	struct fs_inode *n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->ino = ino;
	n->refs = 1;
	pthread_rwlock_init(&n->io, NULL);
	pthread_mutex_init(&n->lock, NULL);
	seed(n, attr);
	/* whatever recorded this size may still sit in an unsynced commit */
	n->size_gen = atomic_load_explicit(&fs->meta_gen, memory_order_acquire);

	pthread_mutex_lock(&fs->itab_lock);
	ip = itab_lookup(fs, ino);
	if (ip) { /* another thread inserted it meanwhile: its state is the newer one */
		ip->refs++;
		pthread_mutex_unlock(&fs->itab_lock);
		inode_free(n);
		*ret = ip;
		return 0;
	}
	if (fs->itab_count >= fs->itab_size)
		itab_grow(fs);
	size_t h = itab_hash(fs, ino);
	n->hnext = fs->itab[h];
	fs->itab[h] = n;
	fs->itab_count++;
	pthread_mutex_unlock(&fs->itab_lock);
	*ret = n;
	return 0;
}

struct fs_inode *fs_inode_find(struct fs *fs, uint64_t ino)
{
	pthread_mutex_lock(&fs->itab_lock);
	struct fs_inode *ip = itab_lookup(fs, ino);
	if (ip)
		ip->refs++;
	pthread_mutex_unlock(&fs->itab_lock);
	return ip;
}

void fs_inode_put(struct fs *fs, struct fs_inode *ip)
{
	if (!ip)
		return;
	pthread_mutex_lock(&fs->itab_lock);
	bool last = ip->refs == 1 && ip->nlookup == 0 && ip->nopen == 0;
	if (!last) {
		ip->refs--;
		pthread_mutex_unlock(&fs->itab_lock);
		return;
	}
	pthread_mutex_unlock(&fs->itab_lock);

	/* Last user: record what is dirty while the entry still shadows the database, so a
	 * concurrent lookup that loads the inode afresh never sees an older size. */
	pthread_mutex_lock(&ip->lock);
	bool live = ip->nlink > 0;
	pthread_mutex_unlock(&ip->lock);
	if (live)
		fs_inode_flush(fs, ip, false);

	pthread_mutex_lock(&fs->itab_lock);
	ip->refs--;
	bool gone = ip->refs == 0 && ip->nlookup == 0 && ip->nopen == 0;
	if (gone)
		itab_remove(fs, ip);
	pthread_mutex_unlock(&fs->itab_lock);
	if (!gone)
		return;
	if (ip->nlink == 0 && !ip->purged)
		fs_purge(fs, ip->ino, ip->mode, !ip->fresh);
	inode_free(ip);
}

void fs_inode_lookup_add(struct fs *fs, struct fs_inode *ip, uint64_t n)
{
	pthread_mutex_lock(&fs->itab_lock);
	ip->nlookup += n;
	pthread_mutex_unlock(&fs->itab_lock);
}

void fs_inode_forget(struct fs *fs, uint64_t ino, uint64_t n)
{
	pthread_mutex_lock(&fs->itab_lock);
	struct fs_inode *ip = itab_lookup(fs, ino);
	if (!ip) {
		pthread_mutex_unlock(&fs->itab_lock);
		log_debug("forget of unknown inode %llu", (unsigned long long)ino);
		return;
	}
	ip->nlookup = n > ip->nlookup ? 0 : ip->nlookup - n;
	ip->refs++;
	pthread_mutex_unlock(&fs->itab_lock);
	fs_inode_put(fs, ip);
}

void fs_inode_open_add(struct fs *fs, struct fs_inode *ip, int delta)
{
	pthread_mutex_lock(&fs->itab_lock);
	if (delta < 0 && ip->nopen < (uint32_t)-delta)
		ip->nopen = 0;
	else
		ip->nopen += delta;
	pthread_mutex_unlock(&fs->itab_lock);
}

int fs_inode_flush(struct fs *fs, struct fs_inode *ip, bool durable)
{
	int r = 0;
	pthread_mutex_lock(&ip->lock);
	bool clear = ip->wmark && ip->inflight == 0;
	if (!ip->purged && ip->nlink > 0 && (ip->dirty || clear)) {
		struct meta_attr a = {0};
		unsigned mask = 0;
		if (ip->dirty) {
			a.size = ip->size;
			a.mtime_ns = ip->mtime_ns;
			a.ctime_ns = ip->ctime_ns;
			mask |= META_SET_SIZE | META_SET_MTIME | META_SET_CTIME;
		}
		if (clear) {
			a.flags = 0; /* META_IF_WDIRTY is the only flag so far */
			mask |= META_SET_FLAGS;
		}
		r = META_CALL(fs->meta, setattr, ip->ino, mask, &a, NULL);
		if (r == 0) {
			ip->size_gen = fs_meta_touched(fs);
			ip->db_size = ip->size;
			ip->dirty = false;
			if (clear) {
				ip->wmark = false;
				ip->qres = 0; /* META-9: the engine dropped the reservation */
			}
		} else {
			log_err("inode %llu: cannot record size in metadata: %s",
				(unsigned long long)ip->ino, strerror(-r));
		}
	}
	pthread_mutex_unlock(&ip->lock);
	if (r == 0 && durable)
		r = fs_meta_sync(fs);
	return r;
}

void fs_inode_overlay(struct fs *fs, struct meta_attr *attr)
{
	struct fs_inode *ip = fs_inode_find(fs, attr->ino);
	if (!ip)
		return;
	pthread_mutex_lock(&ip->lock);
	ip->nlink = attr->nlink;
	ip->mode = attr->mode; /* FS-8 */
	if (S_ISREG(attr->mode) && fs->shared && !ip->dirty && ip->inflight == 0) {
		/* FS-7: nothing unrecorded here, so what the database holds (perhaps written by
		 * another mount) is the newest. */
		ip->size = ip->db_size = attr->size;
		ip->mtime_ns = attr->mtime_ns;
		ip->ctime_ns = attr->ctime_ns;
	} else if (S_ISREG(attr->mode)) {
		attr->size = ip->size;
		if (ip->dirty) {
			attr->mtime_ns = ip->mtime_ns;
			if (ip->ctime_ns > attr->ctime_ns)
				attr->ctime_ns = ip->ctime_ns;
		}
	}
	pthread_mutex_unlock(&ip->lock);
	fs_inode_put(fs, ip);
}

void fs_inode_set_nlink(struct fs *fs, const struct meta_attr *attr)
{
	struct fs_inode *ip = fs_inode_find(fs, attr->ino);
	if (!ip) {
		if (attr->nlink == 0)
			fs_purge(fs, attr->ino, attr->mode, true);
		return;
	}
	pthread_mutex_lock(&ip->lock);
	ip->nlink = attr->nlink;
	if (attr->ctime_ns > ip->ctime_ns)
		ip->ctime_ns = attr->ctime_ns;
	pthread_mutex_unlock(&ip->lock);
	fs_inode_put(fs, ip); /* purges now if nothing else holds it */
}

int fs_purge(struct fs *fs, uint64_t ino, uint32_t mode, bool has_data)
{
	if (S_ISREG(mode) && has_data) {
		int r = ds_remove(fs->ds, ino);
		if (r < 0) {
			/* Keep the row: the next mount's recovery retries (META-3). */
			log_err("inode %llu: cannot delete its chunks: %s", (unsigned long long)ino,
				strerror(-r));
			return r;
		}
	}
	/* The row is an orphan already (META-3): deleting it later, with others in one
	 * transaction, changes nothing a crash could expose; recovery purges what is left. */
	uint64_t batch[FS_PURGE_BATCH];
	unsigned n = 0;
	pthread_mutex_lock(&fs->sync_lock);
	if (fs->purge_n == 0) {
		fs->purge_due = now_monotonic_ns() + FS_PURGE_DELAY_MS * 1000000ll;
		pthread_cond_signal(&fs->sync_work); /* the syncer arms its timer */
	}
	fs->purge_q[fs->purge_n++] = ino;
	if (fs->purge_n == FS_PURGE_BATCH)
		n = fs_purge_take(fs, batch, true);
	pthread_mutex_unlock(&fs->sync_lock);
	if (n > 0)
		fs_purge_run(fs, batch, n);
	return 0;
}

unsigned fs_purge_take(struct fs *fs, uint64_t *batch, bool force)
{
	unsigned n = fs->purge_n;
	if (n == 0 || (!force && now_monotonic_ns() < fs->purge_due))
		return 0;
	memcpy(batch, fs->purge_q, n * sizeof(*batch));
	fs->purge_n = 0;
	return n;
}

int fs_purge_run(struct fs *fs, const uint64_t *batch, unsigned n)
{
	int r = META_CALL(fs->meta, purge_batch, batch, n);
	if (r > 0)
		fs_meta_touched(fs);
	if (r < 0) /* the rows stay orphans: the next mount's recovery purges them */
		log_err("cannot delete the metadata of %u unlinked inode(s) (first %llu): %s", n,
			(unsigned long long)batch[0], strerror(-r));
	return r;
}

int fs_purge_flush(struct fs *fs)
{
	uint64_t batch[FS_PURGE_BATCH];
	pthread_mutex_lock(&fs->sync_lock);
	unsigned n = fs_purge_take(fs, batch, true);
	pthread_mutex_unlock(&fs->sync_lock);
	return n > 0 ? fs_purge_run(fs, batch, n) : 0;
}

void fs_itab_flush_all(struct fs *fs)
{
	pthread_mutex_lock(&fs->itab_lock);
	size_t n = 0, cap = fs->itab_count;
	struct fs_inode **v = calloc(cap ? cap : 1, sizeof(*v));
	if (v) {
		for (size_t i = 0; i < fs->itab_size; i++)
			for (struct fs_inode *ip = fs->itab[i]; ip && n < cap; ip = ip->hnext) {
				ip->refs++;
				v[n++] = ip;
			}
	}
	pthread_mutex_unlock(&fs->itab_lock);
	if (!v) {
		log_err("out of memory flushing inodes at unmount");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		struct fs_inode *ip = v[i];
		fs_inode_flush(fs, ip, false);
		pthread_mutex_lock(&ip->lock);
		bool orphan = ip->nlink == 0 && !ip->purged;
		if (orphan)
			ip->purged = true;
		pthread_mutex_unlock(&ip->lock);
		/* At unmount no file can be open any more: an unlinked inode the kernel still
		 * remembered is deleted now rather than left to the next mount. */
		if (orphan)
			fs_purge(fs, ip->ino, ip->mode, !ip->fresh);
		fs_inode_put(fs, ip);
	}
	free(v);
}
