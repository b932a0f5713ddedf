/* meta_sqlite_vfs — write combining for SQLite's WAL file (see meta_sqlite_vfs.h).
 *
 * SQLite writes each WAL frame as two writes (its 24-byte header, then the page), so a
 * commit of 7 pages was 14 pwrite(2) calls. This VFS wraps the process's default one and, for
 * WAL files only, keeps contiguous writes in a buffer that goes out as one write when:
 *   - the page of a commit frame (a frame header whose "database size after commit" field,
 *     bytes 4-7, is not zero) has been added: the commit's frames are all in the file before
 *     xWrite returns, so before SQLite publishes them in the WAL index for other connections,
 *     and a failed write fails the commit;
 *   - a write does not continue the buffer, or would overflow it;
 *   - anything else touches the file (read, sync, truncate, size, file control, close).
 * Frames of a transaction not yet committed (a cache spill) may sit in the buffer; nobody
 * reads them but this connection, whose reads flush first. Every other file, and every
 * method of the VFS itself, is the wrapped VFS's.
 */
#include "fs/meta/meta_sqlite_vfs.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WB_CAP	       (512u << 10) /* bytes buffered at most */
#define WB_FRAME_HDR   24	    /* SQLite's WAL frame header */
#define WB_MAX_WRAPPED 4	    /* distinct default VFSes wrapped in one process */

struct wb_file {
	sqlite3_file base; /* first: SQLite sees this */
	sqlite3_file *real;
	bool wal;
	bool commit_hdr; /* the last write was a commit frame's header */
	unsigned char *buf;
	size_t len;
	sqlite3_int64 off; /* file offset of buf[0] */
};

struct wb_vfs {
	sqlite3_vfs vfs; /* first */
	sqlite3_vfs *real;
	char name[32];
};

static struct wb_vfs wb_vfses[WB_MAX_WRAPPED];
static unsigned wb_count;
static pthread_mutex_t wb_lock = PTHREAD_MUTEX_INITIALIZER;

static sqlite3_file *wb_real(sqlite3_file *f)
{
	return ((struct wb_file *)f)->real;
}

/* Write out the buffer; it is empty afterwards whatever happened. */
static int wb_flush(struct wb_file *p)
{
	int rc = SQLITE_OK;

	if (p->len > 0) {
		rc = p->real->pMethods->xWrite(p->real, p->buf, (int)p->len, p->off);
		p->len = 0;
	}
	p->commit_hdr = false;
	return rc;
}

static int wb_close(sqlite3_file *f)
{
	struct wb_file *p = (struct wb_file *)f;
	int rc = wb_flush(p);
	int rc2 = p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;

	free(p->buf);
	p->buf = NULL;
	return rc != SQLITE_OK ? rc : rc2;
}

static int wb_read(sqlite3_file *f, void *out, int amt, sqlite3_int64 off)
{
	int rc = wb_flush((struct wb_file *)f);

	if (rc != SQLITE_OK)
		return rc;
	return wb_real(f)->pMethods->xRead(wb_real(f), out, amt, off);
}

static int wb_write(sqlite3_file *f, const void *data, int amt, sqlite3_int64 off)
{
	struct wb_file *p = (struct wb_file *)f;
	bool commit_page = p->commit_hdr && (size_t)amt > WB_FRAME_HDR;
	int rc;

	if (!p->wal)
		return p->real->pMethods->xWrite(p->real, data, amt, off);

	if (p->len > 0 &&
	    (off != p->off + (sqlite3_int64)p->len || p->len + (size_t)amt > WB_CAP)) {
		rc = wb_flush(p);
		if (rc != SQLITE_OK)
			return rc;
	}
	if (!p->buf)
		p->buf = malloc(WB_CAP);
	if (!p->buf || (size_t)amt > WB_CAP) {
		rc = wb_flush(p);
		if (rc != SQLITE_OK)
			return rc;
		return p->real->pMethods->xWrite(p->real, data, amt, off);
	}
	if (p->len == 0)
		p->off = off;
	memcpy(p->buf + p->len, data, (size_t)amt);
	p->len += (size_t)amt;
	if (commit_page)
		return wb_flush(p);
	/* bytes 4-7 of a frame header: the database size after a commit, 0 in other frames */
	p->commit_hdr =
	    amt == WB_FRAME_HDR && memcmp((const unsigned char *)data + 4, "\0\0\0\0", 4) != 0;
	return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	int rc = wb_flush((struct wb_file *)f);

	if (rc != SQLITE_OK)
		return rc;
	return wb_real(f)->pMethods->xTruncate(wb_real(f), size);
}

static int wb_sync(sqlite3_file *f, int flags)
{
	int rc = wb_flush((struct wb_file *)f);

	if (rc != SQLITE_OK)
		return rc;
	return wb_real(f)->pMethods->xSync(wb_real(f), flags);
}

static int wb_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	int rc = wb_flush((struct wb_file *)f);

	if (rc != SQLITE_OK)
		return rc;
	return wb_real(f)->pMethods->xFileSize(wb_real(f), size);
}

static int wb_lock_(sqlite3_file *f, int level)
{
	return wb_real(f)->pMethods->xLock(wb_real(f), level);
}

static int wb_unlock(sqlite3_file *f, int level)
{
	return wb_real(f)->pMethods->xUnlock(wb_real(f), level);
}

static int wb_check_reserved(sqlite3_file *f, int *out)
{
	return wb_real(f)->pMethods->xCheckReservedLock(wb_real(f), out);
}

static int wb_file_control(sqlite3_file *f, int op, void *arg)
{
	int rc = wb_flush((struct wb_file *)f);

	if (rc != SQLITE_OK)
		return rc;
	return wb_real(f)->pMethods->xFileControl(wb_real(f), op, arg);
}

static int wb_sector_size(sqlite3_file *f)
{
	return wb_real(f)->pMethods->xSectorSize(wb_real(f));
}

static int wb_device_characteristics(sqlite3_file *f)
{
	return wb_real(f)->pMethods->xDeviceCharacteristics(wb_real(f));
}

static int wb_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out)
{
	return wb_real(f)->pMethods->xShmMap(wb_real(f), region, size, extend, out);
}

static int wb_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	return wb_real(f)->pMethods->xShmLock(wb_real(f), offset, n, flags);
}

static void wb_shm_barrier(sqlite3_file *f)
{
	wb_real(f)->pMethods->xShmBarrier(wb_real(f));
}

static int wb_shm_unmap(sqlite3_file *f, int delete_flag)
{
	return wb_real(f)->pMethods->xShmUnmap(wb_real(f), delete_flag);
}

static int wb_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **out)
{
	int rc = wb_flush((struct wb_file *)f);

	if (rc != SQLITE_OK)
		return rc;
	return wb_real(f)->pMethods->xFetch(wb_real(f), off, amt, out);
}

static int wb_unfetch(sqlite3_file *f, sqlite3_int64 off, void *page)
{
	return wb_real(f)->pMethods->xUnfetch(wb_real(f), off, page);
}

/* Every file opened through this VFS gets these (with the real file's iVersion), as SQLite
 * calls them with the wrapper; only WAL files buffer. */
#define WB_IO(version)                                                                             \
	{                                                                                          \
		.iVersion = (version), .xClose = wb_close, .xRead = wb_read, .xWrite = wb_write,   \
		.xTruncate = wb_truncate, .xSync = wb_sync, .xFileSize = wb_file_size,             \
		.xLock = wb_lock_, .xUnlock = wb_unlock, .xCheckReservedLock = wb_check_reserved,  \
		.xFileControl = wb_file_control, .xSectorSize = wb_sector_size,                    \
		.xDeviceCharacteristics = wb_device_characteristics, .xShmMap = wb_shm_map,        \
		.xShmLock = wb_shm_lock, .xShmBarrier = wb_shm_barrier, .xShmUnmap = wb_shm_unmap, \
		.xFetch = wb_fetch, .xUnfetch = wb_unfetch,                                        \
	}
static const sqlite3_io_methods wb_io[3] = {WB_IO(1), WB_IO(2), WB_IO(3)};

/* The real file lives right after struct wb_file (szOsFile covers both). */
static int wb_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
	struct wb_vfs *v = (struct wb_vfs *)vfs;
	struct wb_file *p = (struct wb_file *)f;
	int rc;

	memset(p, 0, sizeof(*p));
	p->real = (sqlite3_file *)(p + 1);
	rc = v->real->xOpen(v->real, name, p->real, flags, out);
	if (!p->real->pMethods)
		return rc; /* SQLite calls no method of a file whose open left none */
	int version = p->real->pMethods->iVersion;
	p->wal = (flags & SQLITE_OPEN_WAL) != 0;
	f->pMethods = &wb_io[version < 1 ? 0 : version > 3 ? 2 : version - 1];
	return rc;
}

static int wb_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xDelete(r, name, sync_dir);
}

static int wb_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xAccess(r, name, flags, out);
}

static int wb_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xFullPathname(r, name, n, out);
}

static void *wb_dlopen(sqlite3_vfs *vfs, const char *name)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xDlOpen(r, name);
}

static void wb_dlerror(sqlite3_vfs *vfs, int n, char *out)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	r->xDlError(r, n, out);
}

static void (*wb_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xDlSym(r, h, sym);
}

static void wb_dlclose(sqlite3_vfs *vfs, void *h)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	r->xDlClose(r, h);
}

static int wb_randomness(sqlite3_vfs *vfs, int n, char *out)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xRandomness(r, n, out);
}

static int wb_sleep(sqlite3_vfs *vfs, int us)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xSleep(r, us);
}

static int wb_current_time(sqlite3_vfs *vfs, double *out)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xCurrentTime(r, out);
}

static int wb_get_last_error(sqlite3_vfs *vfs, int n, char *out)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xGetLastError ? r->xGetLastError(r, n, out) : 0;
}

static int wb_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
	sqlite3_vfs *r = ((struct wb_vfs *)vfs)->real;

	return r->xCurrentTimeInt64(r, out);
}

const char *meta_sqlite_vfs(void)
{
	sqlite3_vfs *real;
	const char *name = NULL;

	pthread_mutex_lock(&wb_lock);
	real = sqlite3_vfs_find(NULL);
	for (unsigned i = 0; real && i < wb_count; i++)
		if (wb_vfses[i].real == real || &wb_vfses[i].vfs == real)
			name = wb_vfses[i].name;
	if (!name && real && real->iVersion >= 2 && real->xCurrentTimeInt64 &&
	    wb_count < WB_MAX_WRAPPED) {
		struct wb_vfs *v = &wb_vfses[wb_count];

		snprintf(v->name, sizeof(v->name), "braidfs-wal-%u", wb_count);
		v->real = real;
		v->vfs = (sqlite3_vfs){
		    .iVersion = 2,
		    .szOsFile = (int)sizeof(struct wb_file) + real->szOsFile,
		    .mxPathname = real->mxPathname,
		    .zName = v->name,
		    .xOpen = wb_open,
		    .xDelete = wb_delete,
		    .xAccess = wb_access,
		    .xFullPathname = wb_full_pathname,
		    .xDlOpen = wb_dlopen,
		    .xDlError = wb_dlerror,
		    .xDlSym = wb_dlsym,
		    .xDlClose = wb_dlclose,
		    .xRandomness = wb_randomness,
		    .xSleep = wb_sleep,
		    .xCurrentTime = wb_current_time,
		    .xGetLastError = wb_get_last_error,
		    .xCurrentTimeInt64 = wb_current_time_int64,
		};
		if (sqlite3_vfs_register(&v->vfs, 0) == SQLITE_OK) {
			name = v->name;
			wb_count++;
		}
	}
	pthread_mutex_unlock(&wb_lock);
	return name;
}
