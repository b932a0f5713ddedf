/* csi_layout — volumes that are whole file systems of their own, for a StorageClass whose
 * layout (replicas, consistency) differs from its file system's (csi.h, LAYOUT VOLUMES).
 *
 * Where one lives, for volume directory name <dir> and layout dirs DIR_0..DIR_n-1:
 *   DIR_0/<dir>.db          its metadata (and the .db-wal, .db-shm, .db.lock beside it)
 *   DIR_i/<dir>/            one target per layout dir (dir:DIR_i/<dir>)
 * Only the handlers of a claimed volume id (CSI-2) call these, so two calls never work on
 * the same file system at once. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "csi/csi.h"
#include "fs/meta/meta.h"

/* DIR_0/<dir>.db, with an optional suffix ("-wal", ".lock"). */
static int db_path(const struct csi *c, const struct csi_vol *v, const char *suffix, char *out,
		   size_t len)
{
	int n = snprintf(out, len, "%s/%s.db%s", c->layout_dir[0], v->dir, suffix);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int target_path(const struct csi *c, const struct csi_vol *v, unsigned i, char *out,
		       size_t len)
{
	int n = snprintf(out, len, "%s/%s", c->layout_dir[i], v->dir);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Remove the database files and empty every target (a crashed create, or a delete). */
static int remove_fs(const struct csi *c, const struct csi_vol *v)
{
	static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
	char p[PATH_MAX];
	int e = 0;
	for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]) && e == 0; i++)
		if ((e = db_path(c, v, sfx[i], p, sizeof(p))) == 0 && unlink(p) < 0 &&
		    errno != ENOENT)
			e = -errno;
	for (unsigned i = 0; i < c->nlayout && e == 0; i++)
		if ((e = target_path(c, v, i, p, sizeof(p))) == 0)
			e = csi_rmtree(p);
	return e;
}

/* The layout of the file system in v's database: 0, -ENOENT (no database, or one that holds
 * no formatted volume: LAYOUT-1) or another -errno with err set. */
static int read_layout(const struct csi_vol *v, struct meta_volume *ret, char *err, size_t len)
{
	struct meta *m = NULL;
	char db[PATH_MAX + 16];
	struct stat st;
	snprintf(db, sizeof(db), "%s", v->meta + strlen("sqlite://"));
	if (stat(db, &st) < 0)
		return -errno;
	int e = meta_open(v->meta, META_O_RDONLY, &m, err, len);
	if (e == 0)
		e = META_CALL(m, volume_get, ret);
	meta_close(m);
	return e;
}

grpc_status_code csi_layout_format(struct csi *c, const struct csi_vol *v, unsigned replicas,
				   bool weak, struct csi_reply *r)
{
	struct meta_volume have;
	char err[512] = "", p[PATH_MAX], out[1024] = "", rep[16];
	int e = read_layout(v, &have, err, sizeof(err));
	if (e == 0) {
		/* CSI-1: made before; the same name must ask for the same layout */
		if (have.replicas != replicas || (have.consistency == META_WEAK) != weak)
			return csi_fail(r, GRPC_STATUS_ALREADY_EXISTS,
					"volume %s exists with replicas=%u consistency=%s", v->id,
					have.replicas,
					have.consistency == META_WEAK ? "weak" : "strong");
		return GRPC_STATUS_OK;
	}
	if (e != -ENOENT)
		return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot read %s: %s", v->meta,
				err[0] ? err : strerror(-e));
	if (replicas > c->nlayout)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"replicas=%u needs as many --layout-dir, this plugin has %u",
				replicas, c->nlayout);
	/* LAYOUT-1: whatever is there is a create that did not finish */
	if ((e = remove_fs(c, v)) < 0)
		return csi_fail(r, GRPC_STATUS_INTERNAL,
				"cannot clear what a create of %s left: %s", v->id, strerror(-e));
	char *argv[8 + CSI_MAX_META];
	char targets[CSI_MAX_META][PATH_MAX + 8];
	unsigned n = 0;
	snprintf(rep, sizeof(rep), "%u", replicas);
	argv[n++] = c->braidfs;
	argv[n++] = "format";
	argv[n++] = "--replicas";
	argv[n++] = rep;
	argv[n++] = "--consistency";
	argv[n++] = weak ? "weak" : "strong";
	argv[n++] = (char *)v->meta;
	argv[n++] = (char *)v->dir; /* the file system's name: [A-Za-z0-9._-]{1,63} too */
	for (unsigned i = 0; i < c->nlayout; i++) {
		if ((e = target_path(c, v, i, p, sizeof(p))) < 0 || mkdir(p, 0700) < 0)
			return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot make target %s: %s", p,
					strerror(e < 0 ? -e : errno));
		snprintf(targets[i], sizeof(targets[i]), "dir:%s", p);
		argv[n++] = targets[i];
	}
	argv[n] = NULL;
	if ((e = csi_run(argv, out, sizeof(out))) != 0) {
		const char *line = strrchr(out, '\n');
		remove_fs(c, v);
		return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot format %s: %s", v->meta,
				line	 ? line + 1
				: out[0] ? out
					 : "braidfs format failed");
	}
	log_info("volume %s: formatted %s (replicas %u, %s) on %u target(s)", v->id, v->meta,
		 replicas, weak ? "weak" : "strong", c->nlayout);
	return GRPC_STATUS_OK;
}

/* Take the mount lock of v's file system (flock on "<db>.lock", as `braidfs mount` holds
 * it): returns the fd, -EWOULDBLOCK while a mount holds it, or another -errno. */
static int take_lock(const struct csi *c, const struct csi_vol *v, bool wait)
{
	char lock[PATH_MAX];
	int e = db_path(c, v, ".lock", lock, sizeof(lock));
	if (e < 0)
		return e;
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	struct timespec nap = {0, 50 * 1000 * 1000};
	for (int tries = wait ? 400 : 1; tries > 0; tries--) { /* 20 s when waiting */
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return fd;
		if (errno != EWOULDBLOCK)
			break;
		if (tries > 1)
			nanosleep(&nap, NULL);
	}
	e = errno == EWOULDBLOCK ? -EWOULDBLOCK : -errno;
	close(fd);
	return e;
}

/* Is the file system mounted at base also bound somewhere else (a staging or target path
 * still there)? The first such path goes to `other`. */
struct binds {
	const char *base;
	char dev[32], other[PATH_MAX];
};

static bool find_dev(void *arg, const struct csi_mnt *m)
{
	struct binds *q = arg;
	if (!strcmp(m->mountpoint, q->base))
		snprintf(q->dev, sizeof(q->dev), "%s", m->dev);
	return true;
}

static bool find_other(void *arg, const struct csi_mnt *m)
{
	struct binds *q = arg;
	if (strcmp(m->dev, q->dev) || !strcmp(m->mountpoint, q->base))
		return true;
	snprintf(q->other, sizeof(q->other), "%s", m->mountpoint);
	return false;
}

grpc_status_code csi_layout_destroy(struct csi *c, struct csi_vol *v, struct csi_reply *r)
{
	char lock[PATH_MAX];
	struct stat st;
	grpc_status_code code;
	if (stat(v->own_meta + strlen("sqlite://"), &st) < 0 && errno == ENOENT) {
		/* no database: deleted, or at most what a crashed create left (LAYOUT-1) */
		int e = remove_fs(c, v);
		if (e < 0)
			return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot delete %s: %s", v->meta,
					strerror(-e));
		return GRPC_STATUS_OK;
	}
	int fd = take_lock(c, v, false);
	if (fd == -EWOULDBLOCK) {
		/* Mounted (here, or by the other plugin of this node): unmount it, the mount
		 * process then ends. Busy means a node still uses it: the CO unstages before it
		 * deletes, so say so rather than pull it away. */
		if ((code = csi_fs_mount(c, v, r)))
			return code;
		struct binds q = {.base = v->base};
		if (csi_mnt_each(find_dev, &q) == 0 && q.dev[0] &&
		    csi_mnt_each(find_other, &q) == 0 && q.other[0])
			return csi_fail(r, GRPC_STATUS_FAILED_PRECONDITION,
					"volume %s is still mounted at %s (unstage it first)",
					v->id, q.other);
		if (umount2(v->base, 0) < 0 && errno != EINVAL)
			return csi_fail(r, GRPC_STATUS_FAILED_PRECONDITION,
					"volume %s is still in use (%s): %s", v->id, v->base,
					strerror(errno));
		fd = take_lock(c, v, true);
	}
	if (fd < 0)
		return csi_fail(r, GRPC_STATUS_FAILED_PRECONDITION,
				"volume %s: cannot take its mount lock: %s", v->id,
				fd == -EWOULDBLOCK ? "its mount process did not end within 20 s"
						   : strerror(-fd));
	/* LAYOUT-2: ours now; a dead mount of it here (its process killed) goes too */
	char base[PATH_MAX];
	csi_fs_base(c, v->meta, base, sizeof(base));
	csi_umount(base);
	rmdir(base);
	int e = remove_fs(c, v);
	if (e == 0 && (e = db_path(c, v, ".lock", lock, sizeof(lock))) == 0 && unlink(lock) < 0)
		e = -errno;
	close(fd);
	if (e < 0)
		return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot delete %s: %s", v->meta,
				strerror(-e));
	log_info("volume %s: deleted its file system %s", v->id, v->meta);
	return GRPC_STATUS_OK;
}

/* Keep "<name>.db" whose <name> a volume directory can have; out gets <name>. */
static bool db_name(void *arg, const char *dir, const char *ent, char *out, size_t len)
{
	size_t n = strlen(ent);
	(void)arg;
	(void)dir;
	if (n <= 3 || n - 3 >= len || strcmp(ent + n - 3, ".db"))
		return false;
	memcpy(out, ent, n - 3);
	out[n - 3] = '\0';
	return csi_dir_ok(out);
}

int csi_layout_list(struct csi *c, char ***ret, size_t *nret)
{
	*ret = NULL;
	*nret = 0;
	return c->nlayout ? csi_dir_names(c->layout_dir[0], db_name, NULL, ret, nret) : 0;
}
