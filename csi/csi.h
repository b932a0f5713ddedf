/* csi — braidfs-csi, the CSI plugin: Identity, Controller and Node services (CSI spec v1)
 * over gRPC on a unix socket.
 *
 * WHAT A VOLUME IS
 *   A directory <volumes-dir>/<dir> of a braidfs file system (META_URL), made a quota root
 *   (META-9) whose byte limit is the volume's capacity. The volume id is <dir> for the
 *   plugin's default file system (the first --meta) and <dir>@<META_URL> for another one a
 *   StorageClass names (parameter metaURL, which must be one of the --meta the plugin was
 *   given). <dir> is the CreateVolume name when that is a safe file name, else "h-" and a
 *   128-bit hash of it. The name is kept in the xattr user.braidfs.csi.name of the directory.
 *
 * MOUNTS (the part that must survive a plugin restart)
 *   Each file system the plugin uses is mounted once per node, by `braidfs mount`, at
 *   <state-dir>/fs/<hash of META_URL>: the "base mount". `braidfs mount` forks a daemon in
 *   its own session and returns when the mount is ready, so the FUSE process is never a
 *   child that dies with the plugin. Staging = a bind mount of the volume's directory of the
 *   base mount onto staging_target_path; publishing = a bind mount of the staging path onto
 *   target_path (then remounted read-only when asked). The controller creates directories
 *   and sets quotas through the same base mount (xattr trusted.braidfs.quota, FS-6).
 *
 * INVARIANTS (cited as CSI-n)
 *   CSI-1  Every RPC is idempotent: a repeated call that finds its work done answers OK with
 *          the same result; one that finds a conflicting state answers the spec's code
 *          (ALREADY_EXISTS for a name with another capacity or a target path with another
 *          read-only flag).
 *   CSI-2  At most one call per volume id runs at a time; a second one answers ABORTED at
 *          once (the CO retries), as the spec recommends.
 *   CSI-3  No mount process is a child of the plugin: killing the plugin leaves every base,
 *          staging and target mount serving.
 *   CSI-4  A dead mount (statfs answers ENOTCONN: its FUSE process died) found by
 *          NodeStageVolume or NodePublishVolume is repaired: the base mount is mounted
 *          again, then the staging and target bind mounts are made again over it.
 *   CSI-5  A volume directory appears under its final name only complete: it is made under
 *          a temporary name, given its name xattr and quota, then renamed.
 *   CSI-6  Bytes from the socket are decoded by protobuf-c (bounded); gRPC limits a message
 *          to 4 MiB; every string the plugin uses as a path or name is checked before use.
 *
 * THREADS
 *   One completion-queue thread runs gRPC events only; it never runs a handler. Handlers
 *   (which mount, make directories and run `braidfs mount`) run on a pool of worker
 *   threads (csi_server.c). Handlers share struct csi: its fields are immutable after
 *   start, except what `lock` protects.
 */
#ifndef BRAIDFS_CSI_H
#define BRAIDFS_CSI_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>

#include "csi.pb-c.h"

#define CSI_DRIVER_NAME	     "csi.braidfs.io"
#define CSI_TOPOLOGY_KEY     "topology.braidfs.io/node"
#define CSI_NAME_XATTR	     "user.braidfs.csi.name"
#define CSI_MAX_META	     8
#define CSI_DEFAULT_CAPACITY (1ull << 30) /* when CreateVolume names no capacity */
#define CSI_ID_MAX	     128	  /* volume ids we hand out and accept (<dir>[@url]) */
#define CSI_WRAPPER_MAX	     16
#define CSI_LIST_MAX	     1000 /* ListVolumes entries per page at most (next_token for more) */

struct csi {
	/* immutable after start */
	char endpoint[PATH_MAX]; /* unix socket path */
	char node_id[256];
	char *meta[CSI_MAX_META]; /* META_URLs; [0] is the default */
	unsigned nmeta;
	char volumes_dir[PATH_MAX];   /* inside each file system, e.g. "/volumes" */
	char state_dir[PATH_MAX / 2]; /* base mounts, logs */
	char braidfs[PATH_MAX];	      /* the braidfs command */
	/* --mount-wrapper: words put before `braidfs mount` (CSI-3 in Kubernetes: run the
	 * mount process on the host, outside the plugin container's cgroup) */
	char *wrapper[CSI_WRAPPER_MAX];
	unsigned nwrapper;
	bool controller, node;
	unsigned workers;
	/* --layout-dir: where volumes that are whole file systems live (LAYOUT VOLUMES below);
	 * none: a StorageClass layout other than its file system's is refused */
	char *layout_dir[CSI_MAX_META];
	unsigned nlayout;

	pthread_mutex_t lock; /* protects busy[] and base-mount setup */
	char **busy;	      /* CSI-2: volume ids with a call running; protected by lock */
	size_t nbusy, busy_cap;
};

/* The outcome of one call: a gRPC code and a one-line message; memory the handler hands
 * back in the response (strings, sub-messages) hangs off `arena` and lives until the
 * response is packed. */
struct csi_reply {
	grpc_status_code code;
	char msg[512];
	void **arena;
	size_t narena, arena_cap;
};

/* Set code and message; returns code (handlers `return csi_fail(r, ...)`). */
grpc_status_code csi_fail(struct csi_reply *r, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Zeroed memory that lives until the reply is sent; NULL only when out of memory. */
void *csi_alloc(struct csi_reply *r, size_t size);
char *csi_strdup(struct csi_reply *r, const char *s);
/* Every map<string,string> entry message of protobuf-c has this layout (base, key, value),
 * whatever map it belongs to. */
struct csi_map_entry {
	ProtobufCMessage base;
	char *key;
	char *value;
};

/* A map entry array for a map<string,string> field of n entries (key/value strings
 * copied). Returns the array of pointers or NULL. */
void **csi_map(struct csi_reply *r, const ProtobufCMessageDescriptor *entry, size_t n,
	       const char *const *keys, const char *const *values);

/* CSI-2: claim volume id for this call, or ABORTED when another call holds it. */
grpc_status_code csi_claim(struct csi *c, const char *id, struct csi_reply *r);
void csi_volume_release(struct csi *c, const char *id);

/* ---- csi_volume.c: where volumes live ------------------------------------------------- */

struct csi_vol {
	char id[CSI_ID_MAX + 1];
	char dir[CSI_ID_MAX + 1]; /* directory name under volumes_dir */
	const char *meta;	  /* one of c->meta, or own_meta: copy a layout volume with
				     csi_vol_copy, never with = */
	bool layout;		  /* a whole file system of its own (own_meta) */
	char own_meta[PATH_MAX + 16];
	char base[PATH_MAX];	/* the base mount of meta (after csi_fs_mount) */
	char path[PATH_MAX];	/* base + volumes_dir + dir */
	char fs_path[PATH_MAX]; /* volumes_dir + "/" + dir: the path inside the fs */
};

/* Is s a directory name a volume can have: [A-Za-z0-9._-], 1..63 bytes, no leading dot (the
 * plugin's own entries, such as ".creating-<dir>" of CSI-5, start with one). */
bool csi_dir_ok(const char *s);
/* Parse a volume id: INVALID_ARGUMENT for a malformed one, NOT_FOUND for a META_URL the
 * plugin does not serve. */
grpc_status_code csi_vol_parse(struct csi *c, const char *id, struct csi_vol *v,
			       struct csi_reply *r);
/* Copy a volume (meta keeps pointing at the copy's own_meta for a layout volume). */
void csi_vol_copy(struct csi_vol *dst, const struct csi_vol *src);
/* The volume for a CreateVolume name on file system meta. */
grpc_status_code csi_vol_from_name(struct csi *c, const char *name, const char *meta,
				   struct csi_vol *v, struct csi_reply *r);
/* Where this plugin mounts file system meta: <state-dir>/fs/<hash of meta>. */
void csi_fs_base(const struct csi *c, const char *meta, char *out, size_t len);
/* Make sure meta's base mount is alive (mount it, or repair it: CSI-4) and fill v->base and
 * v->path. UNAVAILABLE with the reason when it cannot be mounted. */
grpc_status_code csi_fs_mount(struct csi *c, struct csi_vol *v, struct csi_reply *r);

/* ListVolumes pages by position, not index: a token "v1:<segment>:<dir>" resumes after
 * <dir> of segment <segment> (0..nmeta-1: the --meta file systems, nmeta: the layout
 * volumes), whether or not <dir> still exists. Parse one: false for anything the plugin
 * did not make (the caller answers ABORTED). */
#define CSI_LIST_TOKEN "v1:"
bool csi_list_token(const struct csi *c, const char *tok, unsigned *meta_ret, char *dir,
		    size_t len);

/* The volume in directory dir of v->meta, whose base mount v->base is set (csi_fs_mount):
 * fills dir, id, fs_path and path. INVALID_ARGUMENT for a dir no volume can have. */
grpc_status_code csi_vol_at(struct csi *c, struct csi_vol *v, const char *dir, struct csi_reply *r);

/* Parse id, mount its file system (csi_fs_mount) and find the volume's directory there:
 * NOT_FOUND when it is not there. */
grpc_status_code csi_vol_find(struct csi *c, const char *id, struct csi_vol *v,
			      struct csi_reply *r);

/* ---- csi_layout.c: volumes that are whole file systems ---------------------------------
 *
 * LAYOUT VOLUMES
 *   The data layout (replica count, consistency) belongs to a file system. A StorageClass
 *   that asks for another layout than its file system's gets, when the plugin has
 *   --layout-dir DIR (repeated, one per disk), a volume that is a braidfs file system of
 *   its own: targets dir:DIR_i/<dir> on every layout dir, metadata sqlite://DIR_0/<dir>.db,
 *   formatted with that layout; in it, the volume is <volumes-dir>/<dir> with its quota as
 *   on any file system. Its id is "<dir>@layout": the id alone names the file system.
 *   LAYOUT-1  The database is formatted before the volume directory is made in it; a
 *             database that exists but holds no formatted volume is what a crashed create
 *             left, and is made again (with the targets, emptied).
 *   LAYOUT-2  Deleting one unmounts its file system, then holds its mount lock while it
 *             removes the database and the targets: no mount can start meanwhile. */

/* Make v (dir set) the layout volume <dir>@layout. NOT_FOUND without --layout-dir. */
grpc_status_code csi_layout_vol(struct csi *c, struct csi_vol *v, struct csi_reply *r);
/* LAYOUT-1: make sure v's file system exists with this layout: formats it, or checks the
 * one there (ALREADY_EXISTS when its layout differs). */
grpc_status_code csi_layout_format(struct csi *c, const struct csi_vol *v, unsigned replicas,
				   bool weak, struct csi_reply *r);
/* LAYOUT-2: remove v's file system (OK when there is none). FAILED_PRECONDITION while it is
 * mounted and busy. */
grpc_status_code csi_layout_destroy(struct csi *c, struct csi_vol *v, struct csi_reply *r);
/* The names of the layout volumes, sorted (malloc'ed array of malloc'ed names). 0/-errno. */
int csi_layout_list(struct csi *c, char ***ret, size_t *nret);

/* ---- csi_mount.c: mount helpers --------------------------------------------------------- */

enum csi_mnt_state { CSI_MNT_NONE = 0, CSI_MNT_LIVE, CSI_MNT_DEAD };
/* Is path a mount point? root_ret (may be NULL) gets the mounted path inside its file
 * system (mountinfo field 4) and fstype_ret its type; ro_ret whether it is read-only. */
enum csi_mnt_state csi_mnt_state(const char *path, char *root_ret, size_t rootlen, char *fstype_ret,
				 size_t fslen, bool *ro_ret);
/* One line of /proc/self/mountinfo, unescaped; valid during the callback only. */
struct csi_mnt {
	const char *root;	/* the mounted path inside its file system (field 4) */
	const char *mountpoint; /* field 5 */
	const char *fstype;
	const char *dev; /* "major:minor" of the file system: the same for every bind of it */
	bool ro;
};
/* Call fn for every mount, in mountinfo order, until it returns false. 0 or -errno. */
int csi_mnt_each(bool (*fn)(void *arg, const struct csi_mnt *m), void *arg);
/* Bind src onto dst (a directory), read-only if ro. 0 or -errno. */
int csi_bind(const char *src, const char *dst, bool ro);
/* Unmount path; a dead or busy mount is detached. 0 (also when not mounted) or -errno. */
int csi_umount(const char *path);
/* Run argv (no shell), wait, capture up to len-1 bytes of stderr+stdout into out. Returns
 * the exit status, or -errno when it could not run. The child gets its own session so that
 * anything it leaves running is not tied to us (CSI-3). */
int csi_run(char *const argv[], char *out, size_t len);
/* When the plugin is PID 1 of a container, the mount processes `braidfs mount` leaves
 * behind become its children once their parent exits: reap those that ended (never a
 * child csi_run() is waiting for). Called on SIGCHLD. */
void csi_reap_orphans(void);
/* The entries of dir that keep() accepts, as keep() renames them into out (len bytes),
 * sorted by strcmp: *ret is a malloc'ed array of n malloc'ed names (csi_names_free).
 * 0 or -errno (-ENOENT: no dir). */
int csi_dir_names(const char *dir,
		  bool (*keep)(void *arg, const char *dir, const char *ent, char *out, size_t len),
		  void *arg, char ***ret, size_t *nret);
void csi_names_free(char **names, size_t n);
/* Remove a directory tree (no symlinks followed, stays on one file system). 0 or -errno. */
int csi_rmtree(const char *path);

/* ---- handlers (csi_identity.c, csi_controller.c, csi_node.c) ----------------------------- */

#define CSI_HANDLER(fn, Req, Resp)                                                                 \
	grpc_status_code fn(struct csi *c, const Req *in, Resp *out, struct csi_reply *r)

CSI_HANDLER(csi_get_plugin_info, Csi__V1__GetPluginInfoRequest, Csi__V1__GetPluginInfoResponse);
CSI_HANDLER(csi_get_plugin_capabilities, Csi__V1__GetPluginCapabilitiesRequest,
	    Csi__V1__GetPluginCapabilitiesResponse);
CSI_HANDLER(csi_probe, Csi__V1__ProbeRequest, Csi__V1__ProbeResponse);

CSI_HANDLER(csi_create_volume, Csi__V1__CreateVolumeRequest, Csi__V1__CreateVolumeResponse);
CSI_HANDLER(csi_delete_volume, Csi__V1__DeleteVolumeRequest, Csi__V1__DeleteVolumeResponse);
CSI_HANDLER(csi_validate_volume_capabilities, Csi__V1__ValidateVolumeCapabilitiesRequest,
	    Csi__V1__ValidateVolumeCapabilitiesResponse);
CSI_HANDLER(csi_list_volumes, Csi__V1__ListVolumesRequest, Csi__V1__ListVolumesResponse);
CSI_HANDLER(csi_get_capacity, Csi__V1__GetCapacityRequest, Csi__V1__GetCapacityResponse);
CSI_HANDLER(csi_controller_get_capabilities, Csi__V1__ControllerGetCapabilitiesRequest,
	    Csi__V1__ControllerGetCapabilitiesResponse);
CSI_HANDLER(csi_controller_expand_volume, Csi__V1__ControllerExpandVolumeRequest,
	    Csi__V1__ControllerExpandVolumeResponse);

CSI_HANDLER(csi_node_stage_volume, Csi__V1__NodeStageVolumeRequest,
	    Csi__V1__NodeStageVolumeResponse);
CSI_HANDLER(csi_node_unstage_volume, Csi__V1__NodeUnstageVolumeRequest,
	    Csi__V1__NodeUnstageVolumeResponse);
CSI_HANDLER(csi_node_publish_volume, Csi__V1__NodePublishVolumeRequest,
	    Csi__V1__NodePublishVolumeResponse);
CSI_HANDLER(csi_node_unpublish_volume, Csi__V1__NodeUnpublishVolumeRequest,
	    Csi__V1__NodeUnpublishVolumeResponse);
CSI_HANDLER(csi_node_get_volume_stats, Csi__V1__NodeGetVolumeStatsRequest,
	    Csi__V1__NodeGetVolumeStatsResponse);
CSI_HANDLER(csi_node_expand_volume, Csi__V1__NodeExpandVolumeRequest,
	    Csi__V1__NodeExpandVolumeResponse);
CSI_HANDLER(csi_node_get_capabilities, Csi__V1__NodeGetCapabilitiesRequest,
	    Csi__V1__NodeGetCapabilitiesResponse);
CSI_HANDLER(csi_node_get_info, Csi__V1__NodeGetInfoRequest, Csi__V1__NodeGetInfoResponse);

/* Shared checks of a VolumeCapability: INVALID_ARGUMENT for a missing or block one or an
 * access mode braidfs cannot serve (the message says which). */
grpc_status_code csi_check_capability(const Csi__V1__VolumeCapability *cap, struct csi_reply *r);

/* This node's topology: {CSI_TOPOLOGY_KEY: node_id}; NULL when out of memory. */
Csi__V1__Topology *csi_topology(struct csi *c, struct csi_reply *r);

/* ---- csi_server.c ------------------------------------------------------------------------ */

/* Serve until SIGTERM/SIGINT. Returns 0, or 1 after printing why it could not start. */
int csi_serve(struct csi *c);

#endif
