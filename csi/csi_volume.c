/* csi_volume — volume ids, directory names, and the base mount of each file system (see
 * csi.h, MOUNTS). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"
#include "csi/csi.h"

/* Serializes mounting of base mounts (a `braidfs mount` takes up to seconds). */
static pthread_mutex_t base_lock = PTHREAD_MUTEX_INITIALIZER;

/* FNV-1a 64 with a seed: two seeds give the 128-bit directory hash of a name. */
static uint64_t fnv64(const char *s, uint64_t seed)
{
	uint64_t h = 0xcbf29ce484222325ull ^ seed;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* A name usable as a directory as it is: [A-Za-z0-9._-], 1..63 bytes, not starting with a
 * dot. The dot is kept for the plugin's own entries next to the volumes (".creating-<dir>",
 * CSI-5): a volume named ".creating-x" must never be the half-made directory of volume "x",
 * which a retried create of "x" removes. */
bool csi_dir_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63 || s[0] == '.')
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
			return false;
	return true;
}

static grpc_status_code vol_fill(struct csi *c, struct csi_vol *v, struct csi_reply *r)
{
	int n = snprintf(v->fs_path, sizeof(v->fs_path), "%s/%s",
			 strcmp(c->volumes_dir, "/") ? c->volumes_dir : "", v->dir);
	if (n < 0 || (size_t)n >= sizeof(v->fs_path))
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume path too long");
	if (v->layout) {
		if ((size_t)snprintf(v->id, sizeof(v->id), "%s@layout", v->dir) >= sizeof(v->id))
			return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
					"volume id for %s would pass %d bytes", v->dir, CSI_ID_MAX);
	} else if (v->meta == c->meta[0])
		snprintf(v->id, sizeof(v->id), "%s", v->dir);
	else if ((size_t)snprintf(v->id, sizeof(v->id), "%s@%s", v->dir, v->meta) >= sizeof(v->id))
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"volume id for %s on %s would pass %d bytes", v->dir, v->meta,
				CSI_ID_MAX);
	return GRPC_STATUS_OK;
}

grpc_status_code csi_vol_parse(struct csi *c, const char *id, struct csi_vol *v,
			       struct csi_reply *r)
{
	memset(v, 0, sizeof(*v));
	if (!id || !id[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_id is required");
	size_t n = strnlen(id, CSI_ID_MAX + 1);
	if (n > CSI_ID_MAX)
		return csi_fail(r, GRPC_STATUS_NOT_FOUND,
				"no volume has an id this long (%d+ bytes)", CSI_ID_MAX);
	const char *at = strchr(id, '@');
	size_t dl = at ? (size_t)(at - id) : n;
	memcpy(v->dir, id, dl);
	v->dir[dl] = '\0';
	/* Ids are ours: a dir that we would not have made cannot name a volume. */
	if (!csi_dir_ok(v->dir))
		return csi_fail(r, GRPC_STATUS_NOT_FOUND, "volume %s does not exist", id);
	if (at && !strcmp(at + 1, "layout"))
		return csi_layout_vol(c, v, r);
	v->meta = at ? NULL : c->meta[0];
	for (unsigned i = 1; at && i < c->nmeta; i++)
		if (!strcmp(at + 1, c->meta[i]))
			v->meta = c->meta[i];
	if (!v->meta)
		return csi_fail(r, GRPC_STATUS_NOT_FOUND,
				"volume %s is on a file system this plugin does not serve", id);
	return vol_fill(c, v, r);
}

void csi_vol_copy(struct csi_vol *dst, const struct csi_vol *src)
{
	*dst = *src;
	if (src->layout)
		dst->meta = dst->own_meta;
}

grpc_status_code csi_layout_vol(struct csi *c, struct csi_vol *v, struct csi_reply *r)
{
	if (!c->nlayout)
		return csi_fail(r, GRPC_STATUS_NOT_FOUND,
				"volume %s@layout: this plugin has no --layout-dir", v->dir);
	if ((size_t)snprintf(v->own_meta, sizeof(v->own_meta), "sqlite://%s/%s.db",
			     c->layout_dir[0], v->dir) >= sizeof(v->own_meta))
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "--layout-dir path too long");
	v->meta = v->own_meta;
	v->layout = true;
	return vol_fill(c, v, r);
}

grpc_status_code csi_vol_from_name(struct csi *c, const char *name, const char *meta,
				   struct csi_vol *v, struct csi_reply *r)
{
	memset(v, 0, sizeof(*v));
	v->meta = meta;
	if (csi_dir_ok(name) && strncmp(name, "h-", 2) != 0)
		snprintf(v->dir, sizeof(v->dir), "%s", name);
	else
		snprintf(v->dir, sizeof(v->dir), "h-%016llx%016llx",
			 (unsigned long long)fnv64(name, 0), (unsigned long long)fnv64(name, 1));
	return vol_fill(c, v, r);
}

/* A sqlite file system's mount lock "<db>.lock" names the mount point of the process that
 * holds it ("pid\nmountpoint\n"). When another process of ours (the controller pod and the
 * node pod on one node) mounted it first, its mount is the one to use. */
static bool lock_holder_mount(const char *meta, char *out, size_t len)
{
	struct url u;
	char p[URL_MAX + 8], buf[PATH_MAX + 32];
	if (url_parse(meta, &u, NULL, 0) < 0 || strcmp(u.scheme, "sqlite"))
		return false;
	snprintf(p, sizeof(p), "%s.lock", u.path);
	FILE *f = fopen(p, "re");
	if (!f)
		return false;
	bool ok = fgets(buf, sizeof(buf), f) && fgets(buf, sizeof(buf), f);
	fclose(f);
	if (!ok)
		return false;
	buf[strcspn(buf, "\n")] = '\0';
	char fstype[64] = "";
	if (csi_mnt_state(buf, NULL, 0, fstype, sizeof(fstype), NULL) != CSI_MNT_LIVE ||
	    strcmp(fstype, "fuse.braidfs"))
		return false;
	if (strlen(buf) >= len)
		return false;
	memcpy(out, buf, strlen(buf) + 1);
	return true;
}

void csi_fs_base(const struct csi *c, const char *meta, char *out, size_t len)
{
	snprintf(out, len, "%s/fs/%016llx", c->state_dir, (unsigned long long)fnv64(meta, 0));
}

grpc_status_code csi_fs_mount(struct csi *c, struct csi_vol *v, struct csi_reply *r)
{
	char fstype[64] = "", log[PATH_MAX + 64], out[1024] = "";
	unsigned long long key = (unsigned long long)fnv64(v->meta, 0);
	grpc_status_code code = GRPC_STATUS_OK;

	csi_fs_base(c, v->meta, v->base, sizeof(v->base));
	pthread_mutex_lock(&base_lock);
	enum csi_mnt_state st = csi_mnt_state(v->base, NULL, 0, fstype, sizeof(fstype), NULL);
	if (st == CSI_MNT_LIVE && !strcmp(fstype, "fuse.braidfs"))
		goto done;
	if (lock_holder_mount(v->meta, v->base, sizeof(v->base)))
		goto done;
	csi_fs_base(c, v->meta, v->base, sizeof(v->base));
	if (st == CSI_MNT_DEAD)
		log_info("%s: the mount of %s at %s is dead; mounting it again", v->id, v->meta,
			 v->base);
	snprintf(log, sizeof(log), "log=%s/log/%016llx.log", c->state_dir, key);
	char logdir[PATH_MAX + 8];
	snprintf(logdir, sizeof(logdir), "%s/log", c->state_dir);
	int e = mkdir_p(v->base, 0700);
	if (e == 0)
		e = mkdir_p(logdir, 0700);
	if (e < 0) {
		code =
		    csi_fail(r, GRPC_STATUS_INTERNAL, "cannot make %s: %s", v->base, strerror(-e));
		goto done;
	}
	/* CSI-3: `braidfs mount` daemonizes (its own session) and returns once mounted. A dead
	 * mount at v->base is removed by it first (CSI-4). */
	char *argv[CSI_WRAPPER_MAX + 8];
	unsigned n = 0;
	for (unsigned i = 0; i < c->nwrapper; i++)
		argv[n++] = c->wrapper[i];
	argv[n++] = c->braidfs;
	argv[n++] = "mount";
	argv[n++] = "-o";
	argv[n++] = log;
	argv[n++] = (char *)v->meta;
	argv[n++] = v->base;
	argv[n] = NULL;
	e = csi_run(argv, out, sizeof(out));
	if (e != 0) {
		/* Someone else may have won the lock meanwhile. */
		if (lock_holder_mount(v->meta, v->base, sizeof(v->base)))
			goto done;
		const char *line = strrchr(out, '\n');
		code = csi_fail(r, GRPC_STATUS_UNAVAILABLE, "cannot mount %s: %s", v->meta,
				line	 ? line + 1
				: out[0] ? out
					 : "braidfs mount failed");
		goto done;
	}
	log_info("mounted %s at %s", v->meta, v->base);
done:
	pthread_mutex_unlock(&base_lock);
	if (code == GRPC_STATUS_OK && (size_t)snprintf(v->path, sizeof(v->path), "%s%s", v->base,
						       v->fs_path) >= sizeof(v->path))
		code = csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume path too long");
	return code;
}

grpc_status_code csi_vol_at(struct csi *c, struct csi_vol *v, const char *dir, struct csi_reply *r)
{
	if (!csi_dir_ok(dir))
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"'%.64s' is not a volume directory", dir);
	snprintf(v->dir, sizeof(v->dir), "%s", dir);
	grpc_status_code code = vol_fill(c, v, r);
	if (code == GRPC_STATUS_OK && (size_t)snprintf(v->path, sizeof(v->path), "%s%s", v->base,
						       v->fs_path) >= sizeof(v->path))
		code = csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume path too long");
	return code;
}

grpc_status_code csi_vol_find(struct csi *c, const char *id, struct csi_vol *v, struct csi_reply *r)
{
	struct stat st;
	grpc_status_code code = csi_vol_parse(c, id, v, r);
	/* a layout volume's file system is there, or the volume is not (never mount a missing
	 * database: braidfs would say why it cannot, not that there is no volume) */
	if (code == GRPC_STATUS_OK && v->layout && stat(v->own_meta + strlen("sqlite://"), &st) < 0)
		code = csi_fail(r, GRPC_STATUS_NOT_FOUND, "volume %s does not exist", id);
	if (code == GRPC_STATUS_OK)
		code = csi_fs_mount(c, v, r);
	if (code == GRPC_STATUS_OK && (stat(v->path, &st) < 0 || !S_ISDIR(st.st_mode)))
		code = csi_fail(r, GRPC_STATUS_NOT_FOUND, "volume %s does not exist", id);
	return code;
}

bool csi_list_token(const struct csi *c, const char *tok, unsigned *meta_ret, char *dir, size_t len)
{
	char *end;
	if (strncmp(tok, CSI_LIST_TOKEN, strlen(CSI_LIST_TOKEN)))
		return false;
	tok += strlen(CSI_LIST_TOKEN);
	if (tok[0] < '0' || tok[0] > '9') /* strtoul would take spaces and signs */
		return false;
	errno = 0;
	unsigned long i = strtoul(tok, &end, 10);
	if (errno || *end != ':' || i > c->nmeta || (i == c->nmeta && !c->nlayout) ||
	    !csi_dir_ok(end + 1) || strlen(end + 1) >= len)
		return false;
	*meta_ret = (unsigned)i;
	snprintf(dir, len, "%s", end + 1);
	return true;
}
