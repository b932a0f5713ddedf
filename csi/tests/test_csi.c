/* test_csi — the plugin's pure parts: volume ids and names (csi_volume.c), the capability
 * check, the per-volume claim (CSI-2), reply memory and map entries. No socket, no mount. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "csi/csi.h"

static struct csi C;

static int setup(void **state)
{
	memset(&C, 0, sizeof(C));
	C.meta[0] = "sqlite:///var/lib/braidfs/meta.db";
	C.meta[1] = "sqlite:///srv/other.db";
	C.nmeta = 2;
	snprintf(C.volumes_dir, sizeof(C.volumes_dir), "/volumes");
	pthread_mutex_init(&C.lock, NULL);
	return 0;
}

static void reply_free(struct csi_reply *r)
{
	for (size_t i = 0; i < r->narena; i++)
		free(r->arena[i]);
	free(r->arena);
	memset(r, 0, sizeof(*r));
}

static void t_vol_parse(void **state)
{
	struct csi_reply r = {0};
	struct csi_vol v;
	char longid[300];

	assert_int_equal(csi_vol_parse(&C, "", &v, &r), GRPC_STATUS_INVALID_ARGUMENT);
	assert_int_equal(csi_vol_parse(&C, NULL, &v, &r), GRPC_STATUS_INVALID_ARGUMENT);
	assert_int_equal(csi_vol_parse(&C, "pvc-1", &v, &r), GRPC_STATUS_OK);
	assert_string_equal(v.dir, "pvc-1");
	assert_string_equal(v.id, "pvc-1");
	assert_string_equal(v.fs_path, "/volumes/pvc-1");
	assert_ptr_equal(v.meta, C.meta[0]);
	assert_int_equal(csi_vol_parse(&C, "pvc-2@sqlite:///srv/other.db", &v, &r), GRPC_STATUS_OK);
	assert_ptr_equal(v.meta, C.meta[1]);
	assert_string_equal(v.dir, "pvc-2");
	assert_string_equal(v.id, "pvc-2@sqlite:///srv/other.db");
	/* ids that we never hand out name no volume */
	assert_int_equal(csi_vol_parse(&C, "pvc-2@sqlite:///etc/x.db", &v, &r),
			 GRPC_STATUS_NOT_FOUND);
	assert_int_equal(csi_vol_parse(&C, "..", &v, &r), GRPC_STATUS_NOT_FOUND);
	assert_int_equal(csi_vol_parse(&C, ".creating-pvc-1", &v, &r), GRPC_STATUS_NOT_FOUND);
	assert_int_equal(csi_vol_parse(&C, "a/b", &v, &r), GRPC_STATUS_NOT_FOUND);
	assert_int_equal(csi_vol_parse(&C, "../../etc", &v, &r), GRPC_STATUS_NOT_FOUND);
	assert_int_equal(csi_vol_parse(&C, "sp ace", &v, &r), GRPC_STATUS_NOT_FOUND);
	memset(longid, 'a', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	assert_int_equal(csi_vol_parse(&C, longid, &v, &r), GRPC_STATUS_NOT_FOUND);
	assert_non_null(strstr(r.msg, "bytes"));
	/* the default file system never gets an @ suffix; "/" as volumes dir */
	snprintf(C.volumes_dir, sizeof(C.volumes_dir), "/");
	assert_int_equal(csi_vol_parse(&C, "x", &v, &r), GRPC_STATUS_OK);
	assert_string_equal(v.fs_path, "/x");
	reply_free(&r);
}

static void t_vol_layout(void **state)
{
	struct csi_reply r = {0};
	struct csi_vol v, w;

	/* without --layout-dir a layout id names no volume */
	assert_int_equal(csi_vol_parse(&C, "pvc-1@layout", &v, &r), GRPC_STATUS_NOT_FOUND);
	C.layout_dir[0] = "/srv/l0";
	C.layout_dir[1] = "/srv/l1";
	C.nlayout = 2;
	assert_int_equal(csi_vol_parse(&C, "pvc-1@layout", &v, &r), GRPC_STATUS_OK);
	assert_true(v.layout);
	assert_string_equal(v.meta, "sqlite:///srv/l0/pvc-1.db");
	assert_string_equal(v.id, "pvc-1@layout");
	assert_string_equal(v.fs_path, "/volumes/pvc-1");
	assert_int_equal(csi_vol_parse(&C, "../x@layout", &v, &r), GRPC_STATUS_NOT_FOUND);
	assert_int_equal(csi_vol_parse(&C, ".creating-x@layout", &v, &r), GRPC_STATUS_NOT_FOUND);
	/* a copy names its own file system URL, not the original's buffer */
	assert_int_equal(csi_vol_parse(&C, "pvc-2@layout", &v, &r), GRPC_STATUS_OK);
	csi_vol_copy(&w, &v);
	memset(&v, 0, sizeof(v));
	assert_string_equal(w.meta, "sqlite:///srv/l0/pvc-2.db");
	assert_ptr_equal(w.meta, w.own_meta);
	/* a name turned into a layout volume */
	assert_int_equal(csi_vol_from_name(&C, "my volume", C.meta[0], &v, &r), GRPC_STATUS_OK);
	assert_int_equal(csi_layout_vol(&C, &v, &r), GRPC_STATUS_OK);
	assert_memory_equal(v.id, "h-", 2);
	assert_non_null(strstr(v.id, "@layout"));
	reply_free(&r);
}

static void t_list_token(void **state)
{
	char dir[CSI_ID_MAX + 1];
	unsigned i = 99;
	static const char *const bad[] = {
	    "",		 "invalid-token",    "v1:",	 "v1:0",    "v1:0:",
	    "v1:2:x",	 "v1:9:x",	     "v1: 0:x",	 "v1:-0:x", "v1:+1:x",
	    "v1:0:../x", "v1:0:.creating-x", "v1:0:a/b", "v2:0:x",  "v1:99999999999999999999:x",
	    "v1:x:pvc",
	};
	assert_true(csi_list_token(&C, "v1:0:pvc-a", &i, dir, sizeof(dir)));
	assert_int_equal(i, 0);
	assert_string_equal(dir, "pvc-a");
	assert_true(csi_list_token(&C, "v1:1:h-0123", &i, dir, sizeof(dir)));
	assert_int_equal(i, 1);
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
		assert_false(csi_list_token(&C, bad[k], &i, dir, sizeof(dir)));
	/* the layout segment exists only with --layout-dir */
	C.layout_dir[0] = "/srv/l0";
	C.nlayout = 1;
	assert_true(csi_list_token(&C, "v1:2:x", &i, dir, sizeof(dir)));
	assert_int_equal(i, 2);
	assert_false(csi_list_token(&C, "v1:3:x", &i, dir, sizeof(dir)));
	/* a dir longer than the caller's buffer */
	assert_false(csi_list_token(&C, "v1:0:abcdef", &i, dir, 4));
}

static void t_vol_from_name(void **state)
{
	struct csi_reply r = {0};
	struct csi_vol a, b, p;

	assert_int_equal(csi_vol_from_name(&C, "pvc-123", C.meta[0], &a, &r), GRPC_STATUS_OK);
	assert_string_equal(a.dir, "pvc-123");
	/* a leading dot is the plugin's own (CSI-5): such a name is hashed */
	assert_int_equal(csi_vol_from_name(&C, ".creating-pvc-123", C.meta[0], &a, &r),
			 GRPC_STATUS_OK);
	assert_memory_equal(a.dir, "h-", 2);
	/* not a safe file name: a stable 128-bit hash, different for different names */
	assert_int_equal(csi_vol_from_name(&C, "my volume/ä", C.meta[0], &a, &r), GRPC_STATUS_OK);
	assert_int_equal(csi_vol_from_name(&C, "my volume/ä", C.meta[0], &b, &r), GRPC_STATUS_OK);
	assert_string_equal(a.dir, b.dir);
	assert_int_equal(strlen(a.dir), 34);
	assert_memory_equal(a.dir, "h-", 2);
	assert_int_equal(csi_vol_from_name(&C, "my volume/b", C.meta[0], &b, &r), GRPC_STATUS_OK);
	assert_string_not_equal(a.dir, b.dir);
	/* a safe name that looks like a hash is hashed too, so it cannot take another's dir */
	assert_int_equal(csi_vol_from_name(&C, a.dir, C.meta[0], &b, &r), GRPC_STATUS_OK);
	assert_string_not_equal(a.dir, b.dir);
	/* long names are hashed; every id we hand out parses back to the same place */
	char name[200];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(csi_vol_from_name(&C, name, C.meta[1], &a, &r), GRPC_STATUS_OK);
	assert_int_equal(csi_vol_parse(&C, a.id, &p, &r), GRPC_STATUS_OK);
	assert_string_equal(p.dir, a.dir);
	assert_ptr_equal(p.meta, C.meta[1]);
	reply_free(&r);
}

static void t_capability(void **state)
{
	struct csi_reply r = {0};
	Csi__V1__VolumeCapability cap = CSI__V1__VOLUME_CAPABILITY__INIT;
	Csi__V1__VolumeCapability__MountVolume mnt = CSI__V1__VOLUME_CAPABILITY__MOUNT_VOLUME__INIT;
	Csi__V1__VolumeCapability__BlockVolume blk = CSI__V1__VOLUME_CAPABILITY__BLOCK_VOLUME__INIT;
	Csi__V1__VolumeCapability__AccessMode am = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__INIT;

	assert_int_equal(csi_check_capability(NULL, &r), GRPC_STATUS_INVALID_ARGUMENT);
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_INVALID_ARGUMENT);
	cap.access_type_case = CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_BLOCK;
	cap.block = &blk;
	cap.access_mode = &am;
	am.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_WRITER;
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_INVALID_ARGUMENT);
	assert_non_null(strstr(r.msg, "block"));
	cap.access_type_case = CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT;
	cap.mount = &mnt;
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_OK);
	mnt.fs_type = "braidfs";
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_OK);
	mnt.fs_type = "ext4";
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_INVALID_ARGUMENT);
	mnt.fs_type = "";
	am.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__MULTI_NODE_MULTI_WRITER;
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_INVALID_ARGUMENT);
	am.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__UNKNOWN;
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_INVALID_ARGUMENT);
	cap.access_mode = NULL;
	assert_int_equal(csi_check_capability(&cap, &r), GRPC_STATUS_INVALID_ARGUMENT);
	reply_free(&r);
}

static void t_claim(void **state)
{
	struct csi_reply r = {0};

	assert_int_equal(csi_claim(&C, "a", &r), GRPC_STATUS_OK);
	assert_int_equal(csi_claim(&C, "b", &r), GRPC_STATUS_OK);
	assert_int_equal(csi_claim(&C, "a", &r), GRPC_STATUS_ABORTED);
	assert_non_null(strstr(r.msg, "in progress"));
	csi_volume_release(&C, "a");
	assert_int_equal(csi_claim(&C, "a", &r), GRPC_STATUS_OK);
	for (int i = 0; i < 100; i++) { /* the set grows */
		char id[16];
		snprintf(id, sizeof(id), "v%d", i);
		assert_int_equal(csi_claim(&C, id, &r), GRPC_STATUS_OK);
	}
	for (int i = 0; i < 100; i++) {
		char id[16];
		snprintf(id, sizeof(id), "v%d", i);
		csi_volume_release(&C, id);
	}
	csi_volume_release(&C, "a");
	csi_volume_release(&C, "b");
	csi_volume_release(&C, "never"); /* harmless */
	assert_int_equal(C.nbusy, 0);
	free(C.busy);
	C.busy = NULL;
	C.busy_cap = 0;
	reply_free(&r);
}

/* A map built with csi_map packs and unpacks as protobuf's map<string,string>. */
static void t_map_roundtrip(void **state)
{
	struct csi_reply r = {0};
	snprintf(C.node_id, sizeof(C.node_id), "node-7");
	Csi__V1__Topology *t = csi_topology(&C, &r);
	assert_non_null(t);
	size_t n = csi__v1__topology__get_packed_size(t);
	uint8_t *buf = malloc(n);
	assert_non_null(buf);
	csi__v1__topology__pack(t, buf);
	Csi__V1__Topology *u = csi__v1__topology__unpack(NULL, n, buf);
	assert_non_null(u);
	assert_int_equal(u->n_segments, 1);
	assert_string_equal(u->segments[0]->key, CSI_TOPOLOGY_KEY);
	assert_string_equal(u->segments[0]->value, "node-7");
	csi__v1__topology__free_unpacked(u, NULL);
	/* a truncated message is refused, not read past its end (CSI-6) */
	assert_null(csi__v1__topology__unpack(NULL, n - 1, buf));
	free(buf);
	reply_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(t_vol_parse, setup),
	    cmocka_unit_test_setup(t_vol_from_name, setup),
	    cmocka_unit_test_setup(t_vol_layout, setup),
	    cmocka_unit_test_setup(t_list_token, setup),
	    cmocka_unit_test_setup(t_capability, setup),
	    cmocka_unit_test_setup(t_claim, setup),
	    cmocka_unit_test_setup(t_map_roundtrip, setup),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
