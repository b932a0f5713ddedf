/* csi_node — the Node service: stage = bind the volume's directory of the base mount onto
 * the staging path; publish = bind the staging path onto the target path (csi.h, MOUNTS).
 * Dead mounts found on the way are repaired (CSI-4). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "csi/csi.h"

#define OOM(r) csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory")

/* A path argument: absolute, bounded, no ".." component. */
static grpc_status_code check_path(const char *what, const char *p, struct csi_reply *r)
{
	if (!p || !p[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s is required", what);
	if (p[0] != '/' || strnlen(p, PATH_MAX) >= PATH_MAX - 64)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"%s must be an absolute path shorter than %d bytes", what,
				PATH_MAX - 64);
	for (const char *s = strstr(p, ".."); s; s = strstr(s + 2, ".."))
		if (s[-1] == '/' && (s[2] == '/' || s[2] == '\0'))
			return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s must not contain '..'",
					what);
	return GRPC_STATUS_OK;
}

/* Is path a live mount of volume v (its directory, on braidfs)? ro_ret: read-only. */
static enum csi_mnt_state mount_of(const char *path, const struct csi_vol *v, bool *is_v,
				   bool *ro_ret)
{
	char root[PATH_MAX] = "", fstype[64] = "";
	enum csi_mnt_state st =
	    csi_mnt_state(path, root, sizeof(root), fstype, sizeof(fstype), ro_ret);
	*is_v = st != CSI_MNT_NONE && !strcmp(fstype, "fuse.braidfs") && !strcmp(root, v->fs_path);
	/* and of v's file system: another one may have a directory of the same name */
	struct stat a, b;
	if (*is_v && st == CSI_MNT_LIVE && v->base[0] && stat(path, &a) == 0 &&
	    stat(v->base, &b) == 0 && a.st_dev != b.st_dev)
		*is_v = false;
	return st;
}

/* Bind src onto dst (made if missing), read-only if ro; a dead mount at dst goes first
 * (CSI-4). */
static grpc_status_code place(const struct csi_vol *v, const char *src, const char *dst, bool ro,
			      bool dead, struct csi_reply *r)
{
	int e;
	if (dead) {
		log_info("volume %s: mount %s is dead; mounting it again", v->id, dst);
		if ((e = csi_umount(dst)) < 0)
			return csi_fail(r, GRPC_STATUS_INTERNAL,
					"cannot remove the dead mount %s: %s", dst, strerror(-e));
	}
	e = mkdir_p(dst, 0750);
	if (e == 0)
		e = csi_bind(src, dst, ro);
	if (e < 0)
		return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot mount volume %s at %s: %s", v->id,
				dst, strerror(-e));
	return GRPC_STATUS_OK;
}

/* Bind the volume's directory onto the staging path; a dead staging mount goes first. */
static grpc_status_code stage(struct csi_vol *v, const char *staging, struct csi_reply *r)
{
	bool is_v = false;
	enum csi_mnt_state st = mount_of(staging, v, &is_v, NULL);
	if (st == CSI_MNT_LIVE && is_v)
		return GRPC_STATUS_OK; /* CSI-1 */
	if (st == CSI_MNT_LIVE)
		return csi_fail(r, GRPC_STATUS_ALREADY_EXISTS,
				"staging path %s holds another mount", staging);
	grpc_status_code code = place(v, v->path, staging, false, st == CSI_MNT_DEAD, r);
	if (code)
		return code;
	log_info("volume %s: staged at %s", v->id, staging);
	return GRPC_STATUS_OK;
}

/* The checks every stage/publish/unstage/unpublish starts with: volume_id, the path named
 * `what` (and a second one, may be NULL), the capability when cap_needed, then the volume
 * id parsed and claimed (CSI-2: release it when done). */
static grpc_status_code node_begin(struct csi *c, const char *id, const char *what,
				   const char *path, const char *what2, const char *path2,
				   const Csi__V1__VolumeCapability *cap, bool cap_needed,
				   struct csi_vol *v, struct csi_reply *r)
{
	grpc_status_code code;
	if (!id || !id[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_id is required");
	if ((code = check_path(what, path, r)) || (what2 && (code = check_path(what2, path2, r))) ||
	    (cap_needed && (code = csi_check_capability(cap, r))) ||
	    (code = csi_vol_parse(c, id, v, r)))
		return code;
	return csi_claim(c, v->id, r);
}

CSI_HANDLER(csi_node_stage_volume, Csi__V1__NodeStageVolumeRequest,
	    Csi__V1__NodeStageVolumeResponse)
{
	struct csi_vol v;
	grpc_status_code code;

	if ((code = node_begin(c, in->volume_id, "staging_target_path", in->staging_target_path,
			       NULL, NULL, in->volume_capability, true, &v, r)))
		return code;
	code = csi_vol_find(c, in->volume_id, &v, r);
	if (code == GRPC_STATUS_OK)
		code = stage(&v, in->staging_target_path, r);
	csi_volume_release(c, v.id);
	return code;
}

CSI_HANDLER(csi_node_unstage_volume, Csi__V1__NodeUnstageVolumeRequest,
	    Csi__V1__NodeUnstageVolumeResponse)
{
	struct csi_vol v;
	grpc_status_code code;

	if ((code = node_begin(c, in->volume_id, "staging_target_path", in->staging_target_path,
			       NULL, NULL, NULL, false, &v, r)))
		return code;
	/* The CO made the staging directory and removes it; only the mount is ours. Not
	 * mounted (any more) is success (CSI-1). */
	int e = csi_umount(in->staging_target_path);
	csi_volume_release(c, v.id);
	if (e < 0)
		return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot unmount %s: %s",
				in->staging_target_path, strerror(-e));
	log_info("volume %s: unstaged from %s", v.id, in->staging_target_path);
	return GRPC_STATUS_OK;
}

/* Where else volume v is mounted: any bind of its directory (of its file system: the same
 * device as its base mount, since two file systems may have a directory of one name) other
 * than the two paths of this call (its staging path and the target). */
struct elsewhere {
	const struct csi_vol *v;
	const char *staging, *target;
	char dev[32];
	char found[PATH_MAX];
};

static bool mounted_elsewhere(void *arg, const struct csi_mnt *m)
{
	struct elsewhere *q = arg;
	if (strcmp(m->dev, q->dev) || strcmp(m->root, q->v->fs_path) ||
	    !strcmp(m->mountpoint, q->staging) || !strcmp(m->mountpoint, q->target))
		return true;
	snprintf(q->found, sizeof(q->found), "%s", m->mountpoint);
	return false;
}

static grpc_status_code publish(struct csi_vol *v, const char *staging, const char *target, bool ro,
				bool single_writer, struct csi_reply *r)
{
	bool is_v = false, was_ro = false;
	enum csi_mnt_state st = mount_of(staging, v, &is_v, NULL);
	grpc_status_code code;

	if (st == CSI_MNT_NONE || (st == CSI_MNT_LIVE && !is_v))
		return csi_fail(r, GRPC_STATUS_FAILED_PRECONDITION,
				"volume %s is not staged at %s (call NodeStageVolume first)", v->id,
				staging);
	if (st == CSI_MNT_DEAD && (code = stage(v, staging, r))) /* CSI-4 */
		return code;
	st = mount_of(target, v, &is_v, &was_ro);
	if (st == CSI_MNT_LIVE && is_v) {
		if (was_ro != ro)
			return csi_fail(r, GRPC_STATUS_ALREADY_EXISTS,
					"volume %s is published at %s %s", v->id, target,
					was_ro ? "read-only" : "read-write");
		return GRPC_STATUS_OK; /* CSI-1 */
	}
	if (st == CSI_MNT_LIVE)
		return csi_fail(r, GRPC_STATUS_ALREADY_EXISTS, "target path %s holds another mount",
				target);
	struct elsewhere q = {.v = v, .staging = staging, .target = target};
	struct stat bs;
	if (single_writer && stat(v->base, &bs) == 0 &&
	    (snprintf(q.dev, sizeof(q.dev), "%u:%u", major(bs.st_dev), minor(bs.st_dev)),
	     csi_mnt_each(mounted_elsewhere, &q) == 0) &&
	    q.found[0])
		return csi_fail(
		    r, GRPC_STATUS_FAILED_PRECONDITION,
		    "volume %s is SINGLE_NODE_SINGLE_WRITER and already published at %s", v->id,
		    q.found);
	if ((code = place(v, staging, target, ro, st == CSI_MNT_DEAD, r)))
		return code;
	log_info("volume %s: published at %s%s", v->id, target, ro ? " (read-only)" : "");
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_node_publish_volume, Csi__V1__NodePublishVolumeRequest,
	    Csi__V1__NodePublishVolumeResponse)
{
	struct csi_vol v;
	grpc_status_code code;

	if ((code =
		 node_begin(c, in->volume_id, "target_path", in->target_path, "staging_target_path",
			    in->staging_target_path, in->volume_capability, true, &v, r)))
		return code;
	int mode = in->volume_capability->access_mode->mode;
	bool ro = in->readonly ||
		  mode == CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_READER_ONLY;
	code = csi_vol_find(c, in->volume_id, &v, r);
	if (code == GRPC_STATUS_OK)
		code = publish(
		    &v, in->staging_target_path, in->target_path, ro,
		    mode ==
			CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_SINGLE_WRITER,
		    r);
	csi_volume_release(c, v.id);
	return code;
}

CSI_HANDLER(csi_node_unpublish_volume, Csi__V1__NodeUnpublishVolumeRequest,
	    Csi__V1__NodeUnpublishVolumeResponse)
{
	struct csi_vol v;
	grpc_status_code code;

	if ((code = node_begin(c, in->volume_id, "target_path", in->target_path, NULL, NULL, NULL,
			       false, &v, r)))
		return code;
	int e = csi_umount(in->target_path);
	/* The target path is ours to remove (the spec: the SP deletes what it created). An
	 * unmounted, empty directory only; anything else is left and reported. */
	if (e == 0 && rmdir(in->target_path) < 0 && errno != ENOENT)
		e = -errno;
	csi_volume_release(c, v.id);
	if (e < 0)
		return csi_fail(r, GRPC_STATUS_INTERNAL, "cannot unpublish %s: %s", in->target_path,
				strerror(-e));
	log_info("volume %s: unpublished from %s", v.id, in->target_path);
	return GRPC_STATUS_OK;
}

/* A path the CO names for stats/expansion must be a live mount of this volume. A path that
 * cannot be one (relative, "..") is where the volume is not: NOT_FOUND, as the spec has it
 * for "the volume does not exist on volume_path" (csi-sanity sends "some/path"). */
static grpc_status_code live_volume_path(struct csi *c, const char *id, const char *path,
					 struct csi_vol *v, enum csi_mnt_state *st,
					 struct csi_reply *r)
{
	struct csi_reply why = {0};
	bool is_v = false;
	grpc_status_code code;
	if (!id || !id[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_id is required");
	if (!path || !path[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_path is required");
	if ((code = csi_vol_parse(c, id, v, r)))
		return code;
	if (check_path("volume_path", path, &why))
		return csi_fail(r, GRPC_STATUS_NOT_FOUND, "volume %s is not mounted at %.256s: %s",
				id, path, why.msg);
	*st = mount_of(path, v, &is_v, NULL);
	if (*st == CSI_MNT_NONE || !is_v)
		return csi_fail(r, GRPC_STATUS_NOT_FOUND, "volume %s is not mounted at %s", id,
				path);
	return GRPC_STATUS_OK;
}

static Csi__V1__VolumeUsage *usage(struct csi_reply *r, Csi__V1__VolumeUsage__Unit unit,
				   uint64_t total, uint64_t avail, uint64_t used)
{
	Csi__V1__VolumeUsage *u = csi_alloc(r, sizeof(*u));
	if (!u)
		return NULL;
	csi__v1__volume_usage__init(u);
	u->unit = unit;
	u->total = (int64_t)MIN(total, (uint64_t)INT64_MAX);
	u->available = (int64_t)MIN(avail, (uint64_t)INT64_MAX);
	u->used = (int64_t)MIN(used, (uint64_t)INT64_MAX);
	return u;
}

CSI_HANDLER(csi_node_get_volume_stats, Csi__V1__NodeGetVolumeStatsRequest,
	    Csi__V1__NodeGetVolumeStatsResponse)
{
	struct csi_vol v;
	enum csi_mnt_state st;
	struct statvfs sv;
	grpc_status_code code;

	if ((code = live_volume_path(c, in->volume_id, in->volume_path, &v, &st, r)))
		return code;
	Csi__V1__VolumeCondition *cond = csi_alloc(r, sizeof(*cond));
	if (!cond)
		return OOM(r);
	csi__v1__volume_condition__init(cond);
	out->volume_condition = cond;
	if (st == CSI_MNT_DEAD || statvfs(in->volume_path, &sv) < 0) {
		/* The mount's process died: abnormal, and the next publish repairs it (CSI-4). */
		cond->abnormal = 1;
		cond->message = csi_strdup(r, "the braidfs mount process of this volume is gone "
					      "(transport endpoint is not connected)");
		return GRPC_STATUS_OK;
	}
	cond->message = "ok";
	uint64_t f = sv.f_frsize;
	Csi__V1__VolumeUsage **u = csi_alloc(r, 2 * sizeof(*u));
	if (!u)
		return OOM(r);
	u[0] = usage(r, CSI__V1__VOLUME_USAGE__UNIT__BYTES, sv.f_blocks * f, sv.f_bavail * f,
		     (sv.f_blocks - sv.f_bfree) * f);
	u[1] = usage(r, CSI__V1__VOLUME_USAGE__UNIT__INODES, sv.f_files, sv.f_ffree,
		     sv.f_files - sv.f_ffree);
	if (!u[0] || !u[1])
		return OOM(r);
	out->usage = u;
	out->n_usage = 2;
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_node_expand_volume, Csi__V1__NodeExpandVolumeRequest,
	    Csi__V1__NodeExpandVolumeResponse)
{
	struct csi_vol v;
	enum csi_mnt_state st;
	struct statvfs sv;
	grpc_status_code code;

	if ((code = live_volume_path(c, in->volume_id, in->volume_path, &v, &st, r)))
		return code;
	if (in->volume_capability && (code = csi_check_capability(in->volume_capability, r)))
		return code;
	/* The quota is the size, and every mount sees it at once: nothing to grow here. */
	if (statvfs(in->volume_path, &sv) < 0)
		return csi_fail(r, GRPC_STATUS_UNAVAILABLE, "statfs %s: %s", in->volume_path,
				strerror(errno));
	out->capacity_bytes =
	    (int64_t)MIN((uint64_t)sv.f_blocks * sv.f_frsize, (uint64_t)INT64_MAX);
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_node_get_capabilities, Csi__V1__NodeGetCapabilitiesRequest,
	    Csi__V1__NodeGetCapabilitiesResponse)
{
	static const Csi__V1__NodeServiceCapability__RPC__Type types[] = {
	    CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__STAGE_UNSTAGE_VOLUME,
	    CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__GET_VOLUME_STATS,
	    CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__EXPAND_VOLUME,
	    CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__VOLUME_CONDITION,
	    CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__SINGLE_NODE_MULTI_WRITER,
	};
	size_t n = sizeof(types) / sizeof(types[0]);
	out->capabilities = csi_alloc(r, n * sizeof(*out->capabilities));
	if (!out->capabilities)
		return OOM(r);
	for (size_t i = 0; i < n; i++) {
		Csi__V1__NodeServiceCapability *cap = csi_alloc(r, sizeof(*cap));
		Csi__V1__NodeServiceCapability__RPC *rpc = csi_alloc(r, sizeof(*rpc));
		if (!cap || !rpc)
			return OOM(r);
		csi__v1__node_service_capability__init(cap);
		csi__v1__node_service_capability__rpc__init(rpc);
		rpc->type = types[i];
		cap->type_case = CSI__V1__NODE_SERVICE_CAPABILITY__TYPE_RPC;
		cap->rpc = rpc;
		out->capabilities[i] = cap;
	}
	out->n_capabilities = n;
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_node_get_info, Csi__V1__NodeGetInfoRequest, Csi__V1__NodeGetInfoResponse)
{
	Csi__V1__Topology *t = csi_topology(c, r);
	if (!t)
		return OOM(r);
	out->node_id = c->node_id;
	out->accessible_topology = t;
	return GRPC_STATUS_OK;
}
