/* csi_controller — the Controller service: volumes are directories with a quota (csi.h). */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "csi/csi.h"
#include "fs/meta/meta.h"

#define OOM(r) csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory")

/* The byte limit of the quota on dir (the quota xattr, FS-6); -errno when there is none. */
static int64_t quota_bytes(const char *dir)
{
	char buf[256];
	ssize_t n = getxattr(dir, META_QUOTA_XATTR, buf, sizeof(buf) - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	const char *p = strstr(buf, "bytes_limit=");
	if (!p)
		return -EBADMSG;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(p + strlen("bytes_limit="), &end, 10);
	if (errno || (*end != ' ' && *end != '\0') || v > INT64_MAX)
		return -EBADMSG;
	return (int64_t)v;
}

static int quota_set(const char *dir, int64_t bytes)
{
	char v[32];
	int n = snprintf(v, sizeof(v), "%" PRId64, bytes);
	return setxattr(dir, META_QUOTA_XATTR, v, (size_t)n, 0) < 0 ? -errno : 0;
}

/* The capacity a CapacityRange asks for: `required` if set, else min(limit, default).
 * INVALID_ARGUMENT for negative values, OUT_OF_RANGE for required > limit. */
static grpc_status_code capacity_of(const Csi__V1__CapacityRange *cr, int64_t *ret,
				    struct csi_reply *r)
{
	int64_t req = cr ? cr->required_bytes : 0, lim = cr ? cr->limit_bytes : 0;
	if (req < 0 || lim < 0)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"capacity_range must not be negative");
	if (lim && req > lim)
		return csi_fail(r, GRPC_STATUS_OUT_OF_RANGE,
				"required_bytes %" PRId64 " is above limit_bytes %" PRId64, req,
				lim);
	const int64_t def = (int64_t)CSI_DEFAULT_CAPACITY;
	*ret = req ? req : lim ? MIN(lim, def) : def;
	return GRPC_STATUS_OK;
}

/* StorageClass parameters, as parse_params found them (strings of the request). */
struct params {
	const char *meta; /* one of c->meta */
	const char *replicas, *consistency;
};

/* The layout a volume gets: its file system's, or (csi.h, LAYOUT VOLUMES) a file system of
 * its own when the StorageClass asks for another one and the plugin has --layout-dir.
 * Without --layout-dir a mismatch is refused, never ignored. */
struct layout {
	bool own; /* a layout volume */
	unsigned replicas;
	bool weak;
};

static grpc_status_code choose_layout(struct csi *c, const struct params *p, struct layout *ret,
				      struct csi_reply *r)
{
	struct meta *m = NULL;
	struct meta_volume vol;
	char err[512] = "";
	memset(ret, 0, sizeof(*ret));
	if (!p->replicas && !p->consistency)
		return GRPC_STATUS_OK;
	int e = meta_open(p->meta, META_O_RDONLY, &m, err, sizeof(err));
	if (e == 0)
		e = META_CALL(m, volume_get, &vol);
	meta_close(m);
	if (e < 0)
		return csi_fail(r, GRPC_STATUS_UNAVAILABLE, "cannot read %s: %s", p->meta,
				err[0] ? err : strerror(-e));
	ret->replicas = vol.replicas;
	ret->weak = vol.consistency == META_WEAK;
	if (p->replicas) {
		char *end;
		errno = 0;
		unsigned long n = strtoul(p->replicas, &end, 10);
		if (*end || end == p->replicas || errno || n < 1 || n > META_MAX_REPLICAS)
			return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
					"parameter replicas must be a number from 1 to %d, not "
					"'%.32s'",
					META_MAX_REPLICAS, p->replicas);
		ret->own |= n != vol.replicas;
		ret->replicas = (unsigned)n;
	}
	if (p->consistency) {
		if (strcmp(p->consistency, "strong") && strcmp(p->consistency, "weak"))
			return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
					"parameter consistency must be strong or weak, not '%.32s'",
					p->consistency);
		bool weak = !strcmp(p->consistency, "weak");
		ret->own |= weak != ret->weak;
		ret->weak = weak;
	}
	if (ret->own && !c->nlayout)
		return csi_fail(
		    r, GRPC_STATUS_INVALID_ARGUMENT,
		    "parameters ask for %u replica(s), %s, but file system %s keeps %u, "
		    "%s (name a file system with that layout in metaURL, or give the "
		    "plugin --layout-dir for volumes with a layout of their own)",
		    ret->replicas, ret->weak ? "weak" : "strong", p->meta, vol.replicas,
		    vol.consistency == META_WEAK ? "weak" : "strong");
	return GRPC_STATUS_OK;
}

/* StorageClass parameters: metaURL (one of the plugin's --meta), replicas, consistency and
 * pool. Keys of the external-provisioner (csi.storage.k8s.io/...) are ignored. */
static grpc_status_code parse_params(struct csi *c, size_t n, void *const *entries,
				     struct params *ret, struct csi_reply *r)
{
	struct csi_map_entry *const *p = (struct csi_map_entry *const *)entries;
	memset(ret, 0, sizeof(*ret));
	ret->meta = c->meta[0];
	for (size_t i = 0; i < n; i++) {
		const char *k = p[i]->key, *v = p[i]->value;
		if (!strncmp(k, "csi.storage.k8s.io/", 19))
			continue;
		if (!strcmp(k, "metaURL")) {
			ret->meta = NULL;
			for (unsigned j = 0; j < c->nmeta; j++)
				if (!strcmp(v, c->meta[j]))
					ret->meta = c->meta[j];
			if (!ret->meta)
				return csi_fail(
				    r, GRPC_STATUS_INVALID_ARGUMENT,
				    "parameter metaURL '%.200s' is not a file system this "
				    "plugin serves (its --meta options)",
				    v);
		} else if (!strcmp(k, "replicas")) {
			ret->replicas = v;
		} else if (!strcmp(k, "consistency")) {
			ret->consistency = v;
		} else if (!strcmp(k, "pool")) {
			if (v[0] && strcmp(v, "default"))
				return csi_fail(
				    r, GRPC_STATUS_INVALID_ARGUMENT,
				    "parameter pool=%.64s: this braidfs has one pool per "
				    "file system ('default'); name the file system with "
				    "metaURL",
				    v);
		} else {
			return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
					"unknown parameter '%.64s' (known: metaURL, replicas, "
					"consistency, pool)",
					k);
		}
	}
	return GRPC_STATUS_OK;
}

static bool topology_has_me(struct csi *c, size_t n, Csi__V1__Topology **t)
{
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < t[i]->n_segments; j++)
			if (!strcmp(t[i]->segments[j]->key, CSI_TOPOLOGY_KEY) &&
			    !strcmp(t[i]->segments[j]->value, c->node_id))
				return true;
	return false;
}

/* The Volume message of v (CreateVolume, ListVolumes): id, capacity, volume_context
 * {metaURL, path} and this node's topology. NULL when out of memory. */
static Csi__V1__Volume *volume_msg(struct csi *c, const struct csi_vol *v, int64_t cap,
				   struct csi_reply *r)
{
	Csi__V1__Volume *vol = csi_alloc(r, sizeof(*vol));
	Csi__V1__Topology **topo = csi_alloc(r, sizeof(*topo));
	const char *keys[] = {"metaURL", "path"}, *vals[] = {v->meta, v->fs_path};
	if (!vol || !topo || !(topo[0] = csi_topology(c, r)))
		return NULL;
	csi__v1__volume__init(vol);
	vol->capacity_bytes = cap;
	vol->volume_id = csi_strdup(r, v->id);
	vol->volume_context = (Csi__V1__Volume__VolumeContextEntry **)csi_map(
	    r, &csi__v1__volume__volume_context_entry__descriptor, 2, keys, vals);
	vol->n_volume_context = 2;
	vol->accessible_topology = topo;
	vol->n_accessible_topology = 1;
	return vol->volume_id && vol->volume_context ? vol : NULL;
}

/* CSI-5: make the volume directory complete under a temporary name, then rename it. */
static grpc_status_code make_volume(struct csi_vol *v, const char *name, int64_t cap,
				    struct csi_reply *r)
{
	char parent[PATH_MAX], tmp[PATH_MAX + 2 * CSI_ID_MAX];
	snprintf(parent, sizeof(parent), "%s", v->path);
	*strrchr(parent, '/') = '\0';
	snprintf(tmp, sizeof(tmp), "%s/.creating-%s", parent, v->dir);
	int e = mkdir_p(parent, 0755);
	if (e == 0)
		e = csi_rmtree(tmp); /* left by a create that crashed */
	if (e == 0 && mkdir(tmp, 0777) < 0)
		e = -errno;
	if (e == 0 && chmod(tmp, 0777) < 0) /* any pod user; kubelet applies fsGroup */
		e = -errno;
	if (e == 0 && setxattr(tmp, CSI_NAME_XATTR, name, strlen(name), 0) < 0)
		e = -errno;
	if (e == 0)
		e = quota_set(tmp, cap);
	if (e == 0 && rename(tmp, v->path) < 0)
		e = -errno;
	if (e < 0) {
		csi_rmtree(tmp);
		return csi_fail(r,
				e == -ENOSPC || e == -EDQUOT ? GRPC_STATUS_RESOURCE_EXHAUSTED
							     : GRPC_STATUS_INTERNAL,
				"cannot create volume directory %s: %s", v->fs_path, strerror(-e));
	}
	log_info("volume %s: created %s with a quota of %" PRId64 " bytes", v->id, v->fs_path, cap);
	return GRPC_STATUS_OK;
}

/* A CreateVolume name that lives on the other side: a layout volume asked for without a
 * layout of its own, or the other way round (ALREADY_EXISTS). */
static grpc_status_code name_elsewhere(struct csi *c, const struct csi_vol *v,
				       const struct params *p, bool own, const char *name,
				       struct csi_reply *r)
{
	struct csi_vol o;
	struct stat st;
	grpc_status_code code;
	if (!c->nlayout)
		return GRPC_STATUS_OK;
	if (own) {
		if ((code = csi_vol_from_name(c, name, p->meta, &o, r)) ||
		    (code = csi_fs_mount(c, &o, r)))
			return code;
	} else {
		memset(&o, 0, sizeof(o));
		snprintf(o.dir, sizeof(o.dir), "%s", v->dir);
		if ((code = csi_layout_vol(c, &o, r)))
			return code;
	}
	if (stat(own ? o.path : o.own_meta + strlen("sqlite://"), &st) == 0)
		return csi_fail(r, GRPC_STATUS_ALREADY_EXISTS,
				"volume '%.200s' exists as %s, %s a layout of its own", name, o.id,
				own ? "without" : "with");
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_create_volume, Csi__V1__CreateVolumeRequest, Csi__V1__CreateVolumeResponse)
{
	struct params prm;
	struct layout lay;
	int64_t cap;
	struct csi_vol v;
	grpc_status_code code;

	if (!in->name || !in->name[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "name is required");
	if (strlen(in->name) > 255)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "name is longer than 255 bytes");
	if (in->n_volume_capabilities == 0)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_capabilities is required");
	for (size_t i = 0; i < in->n_volume_capabilities; i++)
		if ((code = csi_check_capability(in->volume_capabilities[i], r)))
			return code;
	if (in->volume_content_source)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"volume_content_source: braidfs has no snapshots or clones yet");
	if ((code = capacity_of(in->capacity_range, &cap, r)))
		return code;
	if ((code = parse_params(c, in->n_parameters, (void *const *)in->parameters, &prm, r)) ||
	    (code = choose_layout(c, &prm, &lay, r)))
		return code;
	const Csi__V1__TopologyRequirement *tr = in->accessibility_requirements;
	if (tr && tr->n_requisite && !topology_has_me(c, tr->n_requisite, tr->requisite))
		return csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED,
				"the file system is served by node %s, which is not in the "
				"requisite topology",
				c->node_id);
	if ((code = csi_vol_from_name(c, in->name, prm.meta, &v, r)) ||
	    (lay.own && (code = csi_layout_vol(c, &v, r))))
		return code;
	if ((code = csi_claim(c, v.id, r)))
		return code;
	/* CSI-1: a name is one volume, with a layout of its own or not */
	code = name_elsewhere(c, &v, &prm, lay.own, in->name, r);
	if (code == GRPC_STATUS_OK && lay.own)
		code = csi_layout_format(c, &v, lay.replicas, lay.weak, r);
	if (code == GRPC_STATUS_OK)
		code = csi_fs_mount(c, &v, r);
	struct stat st;
	if (code == GRPC_STATUS_OK && stat(v.path, &st) == 0) {
		/* CSI-1: it exists: the same name and a capacity in range is success. */
		char have[256];
		ssize_t n = getxattr(v.path, CSI_NAME_XATTR, have, sizeof(have) - 1);
		int64_t got = quota_bytes(v.path);
		int64_t req = in->capacity_range ? in->capacity_range->required_bytes : 0;
		int64_t lim = in->capacity_range ? in->capacity_range->limit_bytes : 0;
		if (n < 0 || (have[n] = '\0', strcmp(have, in->name)))
			code = csi_fail(r, GRPC_STATUS_ALREADY_EXISTS,
					"volume directory %s belongs to another name", v.fs_path);
		else if (got < 0)
			code = csi_fail(r, GRPC_STATUS_INTERNAL, "volume %s has no quota: %s", v.id,
					strerror((int)-got));
		else if ((req && got < req) || (lim && got > lim) || (!req && !lim && got != cap))
			code = csi_fail(r, GRPC_STATUS_ALREADY_EXISTS,
					"volume %s exists with capacity %" PRId64
					", which does not match the request",
					v.id, got);
		else
			cap = got;
	} else if (code == GRPC_STATUS_OK) {
		code = make_volume(&v, in->name, cap, r);
	}
	csi_volume_release(c, v.id);
	if (code)
		return code;

	if (!(out->volume = volume_msg(c, &v, cap, r)))
		return OOM(r);
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_delete_volume, Csi__V1__DeleteVolumeRequest, Csi__V1__DeleteVolumeResponse)
{
	struct csi_vol v;
	grpc_status_code code = csi_vol_parse(c, in->volume_id, &v, r);
	if (code == GRPC_STATUS_NOT_FOUND)
		return r->code = GRPC_STATUS_OK; /* CSI-1: a volume that is not there is deleted */
	if (code)
		return code;
	if ((code = csi_claim(c, v.id, r)))
		return code;
	if (v.layout) {
		code = csi_layout_destroy(c, &v, r); /* the whole file system goes */
		csi_volume_release(c, v.id);
		return code;
	}
	code = csi_fs_mount(c, &v, r);
	if (code == GRPC_STATUS_OK) {
		int e = csi_rmtree(v.path);
		if (e < 0)
			code = csi_fail(r, GRPC_STATUS_INTERNAL, "cannot delete %s: %s", v.fs_path,
					strerror(-e));
		else
			log_info("volume %s: deleted %s", v.id, v.fs_path);
	}
	csi_volume_release(c, v.id);
	return code;
}

CSI_HANDLER(csi_validate_volume_capabilities, Csi__V1__ValidateVolumeCapabilitiesRequest,
	    Csi__V1__ValidateVolumeCapabilitiesResponse)
{
	struct csi_vol v;
	struct csi_reply probe = {0};
	grpc_status_code code;
	struct params prm;

	if (!in->volume_id || !in->volume_id[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_id is required");
	if (in->n_volume_capabilities == 0)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_capabilities is required");
	if ((code = csi_vol_find(c, in->volume_id, &v, r)))
		return code;
	for (size_t i = 0; i < in->n_volume_capabilities; i++) {
		if (csi_check_capability(in->volume_capabilities[i], &probe)) {
			out->message = csi_strdup(r, probe.msg);
			return GRPC_STATUS_OK; /* not confirmed, with the reason */
		}
	}
	if (parse_params(c, in->n_parameters, (void *const *)in->parameters, &prm, &probe)) {
		out->message = csi_strdup(r, probe.msg);
		return GRPC_STATUS_OK;
	}
	Csi__V1__ValidateVolumeCapabilitiesResponse__Confirmed *ok = csi_alloc(r, sizeof(*ok));
	if (!ok)
		return OOM(r);
	csi__v1__validate_volume_capabilities_response__confirmed__init(ok);
	/* The request outlives the packing of the answer: echo its parts. */
	ok->n_volume_capabilities = in->n_volume_capabilities;
	ok->volume_capabilities = in->volume_capabilities;
	ok->n_volume_context = in->n_volume_context;
	ok->volume_context =
	    (Csi__V1__ValidateVolumeCapabilitiesResponse__Confirmed__VolumeContextEntry **)
		in->volume_context;
	ok->n_parameters = in->n_parameters;
	ok->parameters =
	    (Csi__V1__ValidateVolumeCapabilitiesResponse__Confirmed__ParametersEntry **)
		in->parameters;
	out->confirmed = ok;
	return GRPC_STATUS_OK;
}

/* ListVolumes pages through the volumes of every file system, in the order of --meta and
 * then of directory names, so that a page boundary is a position, not an index: a token
 * "v1:<meta index>:<dir>" resumes after <dir>, whether or not <dir> still exists, and a
 * volume created or deleted meanwhile neither repeats nor shifts one. */

/* Keep a volume directory of ours: a directory with the name xattr (csi_create_volume). */
static bool volume_dir(void *arg, const char *dir, const char *ent, char *out, size_t len)
{
	char p[PATH_MAX + 256];
	struct stat st;
	(void)arg;
	if (!csi_dir_ok(ent) || strlen(ent) >= len ||
	    (size_t)snprintf(p, sizeof(p), "%s/%s", dir, ent) >= sizeof(p) || lstat(p, &st) < 0 ||
	    !S_ISDIR(st.st_mode) || getxattr(p, CSI_NAME_XATTR, NULL, 0) < 0)
		return false;
	memcpy(out, ent, strlen(ent) + 1);
	return true;
}

/* The volume directory names of file system v->meta (after csi_fs_mount), sorted. */
static int volume_dirs(const struct csi *c, const struct csi_vol *v, char ***ret, size_t *nret)
{
	char dir[PATH_MAX];
	*ret = NULL;
	*nret = 0;
	int len = snprintf(dir, sizeof(dir), "%s%s", v->base,
			   strcmp(c->volumes_dir, "/") ? c->volumes_dir : "");
	if (len < 0 || (size_t)len >= sizeof(dir))
		return -ENAMETOOLONG;
	int e = csi_dir_names(dir, volume_dir, NULL, ret, nret);
	return e == -ENOENT ? 0 : e;
}

/* The volume w named `name` in segment i of the listing: file system c->meta[i] (mounted
 * at v->base), or, for i == nmeta, the layout volumes (each mounted here). */
static grpc_status_code list_vol(struct csi *c, unsigned i, const struct csi_vol *v,
				 const char *name, struct csi_vol *w, struct csi_reply *r)
{
	grpc_status_code code;
	if (i < c->nmeta) {
		csi_vol_copy(w, v);
		return csi_vol_at(c, w, name, r);
	}
	memset(w, 0, sizeof(*w));
	snprintf(w->dir, sizeof(w->dir), "%s", name);
	if ((code = csi_layout_vol(c, w, r)))
		return code;
	return csi_fs_mount(c, w, r);
}

CSI_HANDLER(csi_list_volumes, Csi__V1__ListVolumesRequest, Csi__V1__ListVolumesResponse)
{
	unsigned from = 0, last_i = 0;
	char after[CSI_ID_MAX + 1] = "", last[CSI_ID_MAX + 1] = "";
	grpc_status_code code = GRPC_STATUS_OK;
	bool more = false; /* next_token is set (protobuf-c's empty string is not NULL) */

	if (in->max_entries < 0)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"max_entries must not be negative");
	if (in->starting_token && in->starting_token[0] &&
	    !csi_list_token(c, in->starting_token, &from, after, sizeof(after)))
		return csi_fail(r, GRPC_STATUS_ABORTED,
				"starting_token '%.64s' is not one this plugin handed out",
				in->starting_token);
	size_t page = in->max_entries ? MIN((size_t)in->max_entries, CSI_LIST_MAX) : CSI_LIST_MAX;
	out->entries = csi_alloc(r, page * sizeof(*out->entries));
	if (!out->entries)
		return OOM(r);
	/* segments: every --meta file system, then the layout volumes */
	for (unsigned i = from; i <= c->nmeta && code == GRPC_STATUS_OK && !more; i++) {
		struct csi_vol v = {0};
		char **names = NULL;
		size_t n = 0;
		int e;
		if (i < c->nmeta) {
			v.meta = c->meta[i];
			snprintf(v.id, sizeof(v.id), "list");
			if ((code = csi_fs_mount(c, &v, r)))
				break;
			e = volume_dirs(c, &v, &names, &n);
		} else {
			e = csi_layout_list(c, &names, &n);
		}
		if (e < 0)
			code =
			    csi_fail(r, GRPC_STATUS_INTERNAL, "cannot list the volumes of %s: %s",
				     i < c->nmeta ? v.meta : c->layout_dir[0], strerror(-e));
		for (size_t j = 0; j < n && code == GRPC_STATUS_OK; j++) {
			if (i == from && after[0] && strcmp(names[j], after) <= 0)
				continue;
			if (out->n_entries == page) {
				/* one more exists: the next page starts after the last one listed
				 */
				char tok[CSI_ID_MAX + 32];
				snprintf(tok, sizeof(tok), CSI_LIST_TOKEN "%u:%s", last_i, last);
				if (!(out->next_token = csi_strdup(r, tok)))
					code = OOM(r);
				more = true;
				break;
			}
			struct csi_vol w;
			if ((code = list_vol(c, i, &v, names[j], &w, r)))
				break;
			int64_t q = quota_bytes(w.path);
			Csi__V1__ListVolumesResponse__Entry *ent = csi_alloc(r, sizeof(*ent));
			if (!ent)
				code = OOM(r);
			else
				csi__v1__list_volumes_response__entry__init(ent);
			if (ent && !(ent->volume = volume_msg(c, &w, q > 0 ? q : 0, r)))
				code = OOM(r);
			if (code)
				break;
			out->entries[out->n_entries++] = ent;
			last_i = i;
			snprintf(last, sizeof(last), "%s", w.dir);
		}
		csi_names_free(names, n);
	}
	return code;
}

CSI_HANDLER(csi_get_capacity, Csi__V1__GetCapacityRequest, Csi__V1__GetCapacityResponse)
{
	struct csi_reply probe = {0};
	struct params prm;
	struct layout lay;
	struct csi_vol v = {0};
	struct statvfs sv;
	grpc_status_code code;

	for (size_t i = 0; i < in->n_volume_capabilities; i++)
		if (csi_check_capability(in->volume_capabilities[i], &probe))
			return GRPC_STATUS_OK; /* none for a capability we cannot serve */
	const Csi__V1__Topology *t = in->accessible_topology;
	if (t && !topology_has_me(c, 1, (Csi__V1__Topology **)&t))
		return GRPC_STATUS_OK; /* nothing on other nodes */
	if ((code = parse_params(c, in->n_parameters, (void *const *)in->parameters, &prm, r)) ||
	    (code = choose_layout(c, &prm, &lay, r)))
		return code;
	uint64_t avail = UINT64_MAX;
	if (lay.own) {
		/* a layout volume's file system takes its space from every layout dir */
		for (unsigned i = 0; i < c->nlayout; i++) {
			if (statvfs(c->layout_dir[i], &sv) < 0)
				return csi_fail(r, GRPC_STATUS_UNAVAILABLE, "statfs %s: %s",
						c->layout_dir[i], strerror(errno));
			avail = MIN(avail, (uint64_t)sv.f_bavail * sv.f_frsize);
		}
	} else {
		v.meta = prm.meta;
		snprintf(v.id, sizeof(v.id), "capacity");
		if ((code = csi_fs_mount(c, &v, r)))
			return code;
		if (statvfs(v.base, &sv) < 0)
			return csi_fail(r, GRPC_STATUS_UNAVAILABLE, "statfs %s: %s", v.base,
					strerror(errno));
		avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	}
	out->available_capacity = (int64_t)MIN(avail, (uint64_t)INT64_MAX);
	return GRPC_STATUS_OK;
}

static Csi__V1__ControllerServiceCapability *
ctl_cap(struct csi_reply *r, Csi__V1__ControllerServiceCapability__RPC__Type t)
{
	Csi__V1__ControllerServiceCapability *cap = csi_alloc(r, sizeof(*cap));
	Csi__V1__ControllerServiceCapability__RPC *rpc = csi_alloc(r, sizeof(*rpc));
	if (!cap || !rpc)
		return NULL;
	csi__v1__controller_service_capability__init(cap);
	csi__v1__controller_service_capability__rpc__init(rpc);
	rpc->type = t;
	cap->type_case = CSI__V1__CONTROLLER_SERVICE_CAPABILITY__TYPE_RPC;
	cap->rpc = rpc;
	return cap;
}

CSI_HANDLER(csi_controller_get_capabilities, Csi__V1__ControllerGetCapabilitiesRequest,
	    Csi__V1__ControllerGetCapabilitiesResponse)
{
	static const Csi__V1__ControllerServiceCapability__RPC__Type types[] = {
	    CSI__V1__CONTROLLER_SERVICE_CAPABILITY__RPC__TYPE__CREATE_DELETE_VOLUME,
	    CSI__V1__CONTROLLER_SERVICE_CAPABILITY__RPC__TYPE__GET_CAPACITY,
	    CSI__V1__CONTROLLER_SERVICE_CAPABILITY__RPC__TYPE__LIST_VOLUMES,
	    CSI__V1__CONTROLLER_SERVICE_CAPABILITY__RPC__TYPE__EXPAND_VOLUME,
	    CSI__V1__CONTROLLER_SERVICE_CAPABILITY__RPC__TYPE__SINGLE_NODE_MULTI_WRITER,
	};
	size_t n = sizeof(types) / sizeof(types[0]);
	out->capabilities = csi_alloc(r, n * sizeof(*out->capabilities));
	if (!out->capabilities)
		return OOM(r);
	for (size_t i = 0; i < n; i++)
		if (!(out->capabilities[i] = ctl_cap(r, types[i])))
			return OOM(r);
	out->n_capabilities = n;
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_controller_expand_volume, Csi__V1__ControllerExpandVolumeRequest,
	    Csi__V1__ControllerExpandVolumeResponse)
{
	struct csi_vol v;
	int64_t want;
	grpc_status_code code;

	if (!in->volume_id || !in->volume_id[0])
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_id is required");
	if (!in->capacity_range)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "capacity_range is required");
	if ((code = capacity_of(in->capacity_range, &want, r)))
		return code;
	if (in->volume_capability && (code = csi_check_capability(in->volume_capability, r)))
		return code;
	if ((code = csi_vol_parse(c, in->volume_id, &v, r)))
		return code;
	if ((code = csi_claim(c, v.id, r)))
		return code;
	code = csi_vol_find(c, in->volume_id, &v, r);
	int64_t have = code ? 0 : quota_bytes(v.path);
	if (!code && have < 0)
		code = csi_fail(r, GRPC_STATUS_INTERNAL, "volume %s has no quota: %s", v.id,
				strerror((int)-have));
	if (!code && want > have) {
		/* Every mount of the file system sees the new quota at once: no node step. */
		int e = quota_set(v.path, want);
		if (e < 0)
			code = csi_fail(r, GRPC_STATUS_INTERNAL, "cannot set the quota of %s: %s",
					v.fs_path, strerror(-e));
		else
			log_info("volume %s: expanded from %" PRId64 " to %" PRId64 " bytes", v.id,
				 have, want);
		have = want;
	}
	csi_volume_release(c, v.id);
	if (code)
		return code;
	out->capacity_bytes = have; /* never shrinks */
	out->node_expansion_required = 0;
	return GRPC_STATUS_OK;
}
