/* csi_identity — the Identity service, and the volume-capability check the controller and
 * the node share. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "csi/csi.h"

CSI_HANDLER(csi_get_plugin_info, Csi__V1__GetPluginInfoRequest, Csi__V1__GetPluginInfoResponse)
{
	out->name = CSI_DRIVER_NAME;
	out->vendor_version = BRAIDFS_VERSION;
	return GRPC_STATUS_OK;
}

CSI_HANDLER(csi_get_plugin_capabilities, Csi__V1__GetPluginCapabilitiesRequest,
	    Csi__V1__GetPluginCapabilitiesResponse)
{
	size_t n = 0;
	Csi__V1__PluginCapability **caps = csi_alloc(r, 3 * sizeof(*caps));
	if (!caps)
		return csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
	for (int i = 0; i < 3; i++) {
		Csi__V1__PluginCapability *cap = csi_alloc(r, sizeof(*cap));
		if (!cap)
			return csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		csi__v1__plugin_capability__init(cap);
		if (i < 2) {
			if (i == 0 && !c->controller)
				continue;
			Csi__V1__PluginCapability__Service *s = csi_alloc(r, sizeof(*s));
			if (!s)
				return csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
			csi__v1__plugin_capability__service__init(s);
			s->type =
			    i == 0
				? CSI__V1__PLUGIN_CAPABILITY__SERVICE__TYPE__CONTROLLER_SERVICE
				: CSI__V1__PLUGIN_CAPABILITY__SERVICE__TYPE__VOLUME_ACCESSIBILITY_CONSTRAINTS;
			cap->type_case = CSI__V1__PLUGIN_CAPABILITY__TYPE_SERVICE;
			cap->service = s;
		} else {
			/* A quota changes on a mounted volume at once: ONLINE expansion. */
			Csi__V1__PluginCapability__VolumeExpansion *x = csi_alloc(r, sizeof(*x));
			if (!x)
				return csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
			csi__v1__plugin_capability__volume_expansion__init(x);
			x->type = CSI__V1__PLUGIN_CAPABILITY__VOLUME_EXPANSION__TYPE__ONLINE;
			cap->type_case = CSI__V1__PLUGIN_CAPABILITY__TYPE_VOLUME_EXPANSION;
			cap->volume_expansion = x;
		}
		caps[n++] = cap;
	}
	out->n_capabilities = n;
	out->capabilities = caps;
	return GRPC_STATUS_OK;
}

/* Ready when the state directory is usable and the braidfs command can be run. */
CSI_HANDLER(csi_probe, Csi__V1__ProbeRequest, Csi__V1__ProbeResponse)
{
	struct stat st;
	if (stat(c->state_dir, &st) < 0 || !S_ISDIR(st.st_mode) || access(c->state_dir, W_OK) < 0)
		return csi_fail(r, GRPC_STATUS_FAILED_PRECONDITION,
				"state directory %s is not a writable directory", c->state_dir);
	Google__Protobuf__BoolValue *ready = csi_alloc(r, sizeof(*ready));
	if (!ready)
		return csi_fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
	google__protobuf__bool_value__init(ready);
	ready->value = 1;
	out->ready = ready;
	return GRPC_STATUS_OK;
}

grpc_status_code csi_check_capability(const Csi__V1__VolumeCapability *cap, struct csi_reply *r)
{
	if (!cap)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "volume_capability is required");
	if (cap->access_type_case == CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_BLOCK)
		return csi_fail(
		    r, GRPC_STATUS_INVALID_ARGUMENT,
		    "block volumes are not supported: braidfs volumes are file systems");
	if (cap->access_type_case != CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"volume_capability needs an access type (mount)");
	if (cap->mount->fs_type && cap->mount->fs_type[0] && strcmp(cap->mount->fs_type, "braidfs"))
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT,
				"fs_type '%.64s' is not supported (braidfs volumes are braidfs)",
				cap->mount->fs_type);
	if (!cap->access_mode)
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "access_mode is required");
	switch (cap->access_mode->mode) {
	case CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_WRITER:
	case CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_READER_ONLY:
	case CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_SINGLE_WRITER:
	case CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_MULTI_WRITER:
		return GRPC_STATUS_OK;
	case CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__UNKNOWN:
		return csi_fail(r, GRPC_STATUS_INVALID_ARGUMENT, "access_mode is required");
	default:
		/* The embedded (sqlite) metadata engine serves one node. */
		return csi_fail(
		    r, GRPC_STATUS_INVALID_ARGUMENT,
		    "access mode %d is not supported: a braidfs volume is served by one "
		    "node at a time",
		    (int)cap->access_mode->mode);
	}
}

Csi__V1__Topology *csi_topology(struct csi *c, struct csi_reply *r)
{
	Csi__V1__Topology *t = csi_alloc(r, sizeof(*t));
	const char *k = CSI_TOPOLOGY_KEY, *v = c->node_id;
	if (!t)
		return NULL;
	csi__v1__topology__init(t);
	t->segments = (Csi__V1__Topology__SegmentsEntry **)csi_map(
	    r, &csi__v1__topology__segments_entry__descriptor, 1, &k, &v);
	t->n_segments = 1;
	return t->segments ? t : NULL;
}
