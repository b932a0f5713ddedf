/* csi_server — the gRPC side of braidfs-csi: the unix socket, the completion-queue thread,
 * the worker pool, and the table that maps a method name to its handler.
 *
 * A CALL'S LIFE (one struct csi_call, its address is the completion-queue tag)
 *   1. CALL_NEW:  grpc_server_request_call() waits for a call.
 *   2. CALL_RECV: a batch receives the request message.
 *   3. queued:    the CQ thread hands the call to the worker queue (CSI THREADS: it never
 *                 runs a handler itself, so a slow mount blocks nobody).
 *   4. a worker decodes the message (protobuf-c, bounded), runs the handler, encodes the
 *      answer and starts one batch: initial metadata, message (when OK), status, close.
 *   5. CALL_SENT: the CQ thread frees the call.
 *   Calls are requested CSI_PENDING at a time, so that several may arrive at once.
 *
 * Locks: `q_lock` protects the worker queue; struct csi's `lock` protects the busy set.
 * No lock is held across a gRPC or handler call.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "common/log.h"
#include "csi/csi.h"

#define CSI_PENDING 8 /* calls requested from gRPC at any time */

/* ---- replies ---------------------------------------------------------------------------- */

grpc_status_code csi_fail(struct csi_reply *r, grpc_status_code code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
	va_end(ap);
	r->code = code;
	return code;
}

void *csi_alloc(struct csi_reply *r, size_t size)
{
	if (r->narena == r->arena_cap) {
		size_t cap = r->arena_cap ? r->arena_cap * 2 : 16;
		void **a = realloc(r->arena, cap * sizeof(*a));
		if (!a)
			return NULL;
		r->arena = a;
		r->arena_cap = cap;
	}
	void *p = calloc(1, size ? size : 1);
	if (p)
		r->arena[r->narena++] = p;
	return p;
}

char *csi_strdup(struct csi_reply *r, const char *s)
{
	size_t n = strlen(s);
	char *p = csi_alloc(r, n + 1);
	if (p)
		memcpy(p, s, n + 1);
	return p;
}

void **csi_map(struct csi_reply *r, const ProtobufCMessageDescriptor *entry, size_t n,
	       const char *const *keys, const char *const *values)
{
	void **v = csi_alloc(r, n * sizeof(*v));
	for (size_t i = 0; v && i < n; i++) {
		struct csi_map_entry *e = csi_alloc(r, entry->sizeof_message);
		if (!e)
			return NULL;
		protobuf_c_message_init(entry, e);
		e->key = csi_strdup(r, keys[i]);
		e->value = csi_strdup(r, values[i]);
		if (!e->key || !e->value)
			return NULL;
		v[i] = e;
	}
	return v;
}

static void reply_fini(struct csi_reply *r)
{
	for (size_t i = 0; i < r->narena; i++)
		free(r->arena[i]);
	free(r->arena);
}

/* ---- CSI-2: one call per volume ----------------------------------------------------------- */

static bool csi_volume_claim(struct csi *c, const char *id)
{
	bool ok = true;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->nbusy; i++)
		if (!strcmp(c->busy[i], id))
			ok = false;
	if (ok && c->nbusy == c->busy_cap) {
		size_t cap = c->busy_cap ? c->busy_cap * 2 : 16;
		char **b = realloc(c->busy, cap * sizeof(*b));
		if (b) {
			c->busy = b;
			c->busy_cap = cap;
		}
	}
	char *dup = ok && c->nbusy < c->busy_cap ? strdup(id) : NULL;
	if (dup)
		c->busy[c->nbusy++] = dup;
	else
		ok = false;
	pthread_mutex_unlock(&c->lock);
	return ok;
}

grpc_status_code csi_claim(struct csi *c, const char *id, struct csi_reply *r)
{
	if (csi_volume_claim(c, id))
		return GRPC_STATUS_OK;
	return csi_fail(r, GRPC_STATUS_ABORTED, "an operation on volume %s is in progress", id);
}

void csi_volume_release(struct csi *c, const char *id)
{
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->nbusy; i++) {
		if (!strcmp(c->busy[i], id)) {
			free(c->busy[i]);
			c->busy[i] = c->busy[--c->nbusy];
			break;
		}
	}
	pthread_mutex_unlock(&c->lock);
}

/* ---- the method table ------------------------------------------------------------------- */

typedef grpc_status_code (*csi_thunk)(struct csi *c, const void *in, void *out,
				      struct csi_reply *r);

/* X(service, Method, handler, Req type, Resp type, req descriptor, resp descriptor, role)
 * role: 0 identity (always), 1 controller (--controller), 2 node (--node). */
#define CSI_METHODS(X)                                                                             \
	X(Identity, GetPluginInfo, csi_get_plugin_info, Csi__V1__GetPluginInfoRequest,             \
	  Csi__V1__GetPluginInfoResponse, csi__v1__get_plugin_info, 0)                             \
	X(Identity, GetPluginCapabilities, csi_get_plugin_capabilities,                            \
	  Csi__V1__GetPluginCapabilitiesRequest, Csi__V1__GetPluginCapabilitiesResponse,           \
	  csi__v1__get_plugin_capabilities, 0)                                                     \
	X(Identity, Probe, csi_probe, Csi__V1__ProbeRequest, Csi__V1__ProbeResponse,               \
	  csi__v1__probe, 0)                                                                       \
	X(Controller, CreateVolume, csi_create_volume, Csi__V1__CreateVolumeRequest,               \
	  Csi__V1__CreateVolumeResponse, csi__v1__create_volume, 1)                                \
	X(Controller, DeleteVolume, csi_delete_volume, Csi__V1__DeleteVolumeRequest,               \
	  Csi__V1__DeleteVolumeResponse, csi__v1__delete_volume, 1)                                \
	X(Controller, ValidateVolumeCapabilities, csi_validate_volume_capabilities,                \
	  Csi__V1__ValidateVolumeCapabilitiesRequest, Csi__V1__ValidateVolumeCapabilitiesResponse, \
	  csi__v1__validate_volume_capabilities, 1)                                                \
	X(Controller, ListVolumes, csi_list_volumes, Csi__V1__ListVolumesRequest,                  \
	  Csi__V1__ListVolumesResponse, csi__v1__list_volumes, 1)                                  \
	X(Controller, GetCapacity, csi_get_capacity, Csi__V1__GetCapacityRequest,                  \
	  Csi__V1__GetCapacityResponse, csi__v1__get_capacity, 1)                                  \
	X(Controller, ControllerGetCapabilities, csi_controller_get_capabilities,                  \
	  Csi__V1__ControllerGetCapabilitiesRequest, Csi__V1__ControllerGetCapabilitiesResponse,   \
	  csi__v1__controller_get_capabilities, 1)                                                 \
	X(Controller, ControllerExpandVolume, csi_controller_expand_volume,                        \
	  Csi__V1__ControllerExpandVolumeRequest, Csi__V1__ControllerExpandVolumeResponse,         \
	  csi__v1__controller_expand_volume, 1)                                                    \
	X(Node, NodeStageVolume, csi_node_stage_volume, Csi__V1__NodeStageVolumeRequest,           \
	  Csi__V1__NodeStageVolumeResponse, csi__v1__node_stage_volume, 2)                         \
	X(Node, NodeUnstageVolume, csi_node_unstage_volume, Csi__V1__NodeUnstageVolumeRequest,     \
	  Csi__V1__NodeUnstageVolumeResponse, csi__v1__node_unstage_volume, 2)                     \
	X(Node, NodePublishVolume, csi_node_publish_volume, Csi__V1__NodePublishVolumeRequest,     \
	  Csi__V1__NodePublishVolumeResponse, csi__v1__node_publish_volume, 2)                     \
	X(Node, NodeUnpublishVolume, csi_node_unpublish_volume,                                    \
	  Csi__V1__NodeUnpublishVolumeRequest, Csi__V1__NodeUnpublishVolumeResponse,               \
	  csi__v1__node_unpublish_volume, 2)                                                       \
	X(Node, NodeGetVolumeStats, csi_node_get_volume_stats, Csi__V1__NodeGetVolumeStatsRequest, \
	  Csi__V1__NodeGetVolumeStatsResponse, csi__v1__node_get_volume_stats, 2)                  \
	X(Node, NodeExpandVolume, csi_node_expand_volume, Csi__V1__NodeExpandVolumeRequest,        \
	  Csi__V1__NodeExpandVolumeResponse, csi__v1__node_expand_volume, 2)                       \
	X(Node, NodeGetCapabilities, csi_node_get_capabilities,                                    \
	  Csi__V1__NodeGetCapabilitiesRequest, Csi__V1__NodeGetCapabilitiesResponse,               \
	  csi__v1__node_get_capabilities, 2)                                                       \
	X(Node, NodeGetInfo, csi_node_get_info, Csi__V1__NodeGetInfoRequest,                       \
	  Csi__V1__NodeGetInfoResponse, csi__v1__node_get_info, 2)

#define CSI_THUNK(svc, name, fn, Req, Resp, pfx, role)                                             \
	static grpc_status_code fn##_thunk(struct csi *c, const void *in, void *out,               \
					   struct csi_reply *r)                                    \
	{                                                                                          \
		return fn(c, (const Req *)in, (Resp *)out, r);                                     \
	}
CSI_METHODS(CSI_THUNK)

struct csi_method {
	const char *path; /* "/csi.v1.Identity/Probe" */
	csi_thunk fn;
	const ProtobufCMessageDescriptor *in, *out;
	int role;
};

#define CSI_ENTRY(svc, name, fn, Req, Resp, pfx, role)                                             \
	{"/csi.v1." #svc "/" #name, fn##_thunk, &pfx##_request__descriptor,                        \
	 &pfx##_response__descriptor, role},
static const struct csi_method csi_methods[] = {CSI_METHODS(CSI_ENTRY)};

static const struct csi_method *method_find(const grpc_slice *s)
{
	size_t n = GRPC_SLICE_LENGTH(*s);
	const char *p = (const char *)GRPC_SLICE_START_PTR(*s);
	for (size_t i = 0; i < sizeof(csi_methods) / sizeof(csi_methods[0]); i++)
		if (strlen(csi_methods[i].path) == n && !memcmp(csi_methods[i].path, p, n))
			return &csi_methods[i];
	return NULL;
}

/* ---- calls ------------------------------------------------------------------------------ */

enum call_state { CALL_NEW, CALL_RECV, CALL_SENT };

struct csi_call {
	enum call_state state;
	grpc_call *call;
	grpc_call_details details;
	grpc_metadata_array md;
	grpc_byte_buffer *req, *resp;
	grpc_slice status_msg;
	int cancelled;
	struct csi_call *next; /* worker queue; protected by q_lock */
};

static struct csi *g_csi;
static grpc_server *g_server;
static grpc_completion_queue *g_cq;

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static struct csi_call *q_head, *q_tail; /* protected by q_lock */
static bool q_stop;			 /* protected by q_lock */

static void call_free(struct csi_call *k)
{
	if (k->call)
		grpc_call_unref(k->call);
	grpc_call_details_destroy(&k->details);
	grpc_metadata_array_destroy(&k->md);
	if (k->req)
		grpc_byte_buffer_destroy(k->req);
	if (k->resp)
		grpc_byte_buffer_destroy(k->resp);
	grpc_slice_unref(k->status_msg);
	free(k);
}

/* Ask gRPC for one more incoming call. */
static void call_request(void)
{
	struct csi_call *k = calloc(1, sizeof(*k));
	if (!k) {
		log_err("out of memory waiting for a call");
		return;
	}
	k->state = CALL_NEW;
	k->status_msg = grpc_empty_slice();
	grpc_call_details_init(&k->details);
	grpc_metadata_array_init(&k->md);
	grpc_call_error e =
	    grpc_server_request_call(g_server, &k->call, &k->details, &k->md, g_cq, g_cq, k);
	if (e != GRPC_CALL_OK) {
		log_err("cannot wait for a call: grpc error %d", (int)e);
		call_free(k);
	}
}

/* Worker: decode, run, encode, answer (step 4). */
static void call_run(struct csi_call *k)
{
	struct csi_reply r = {.code = GRPC_STATUS_OK};
	const struct csi_method *m = method_find(&k->details.method);
	ProtobufCMessage *in = NULL;
	void *out = NULL;

	if (!m) {
		int n = (int)GRPC_SLICE_LENGTH(k->details.method);
		csi_fail(&r, GRPC_STATUS_UNIMPLEMENTED, "%.*s is not implemented by braidfs-csi",
			 n > 200 ? 200 : n, (const char *)GRPC_SLICE_START_PTR(k->details.method));
	} else if ((m->role == 1 && !g_csi->controller) || (m->role == 2 && !g_csi->node)) {
		csi_fail(&r, GRPC_STATUS_UNIMPLEMENTED,
			 "%s: this plugin runs without %s (start it with %s)", m->path,
			 m->role == 1 ? "the controller service" : "the node service",
			 m->role == 1 ? "--controller" : "--node");
	} else if (!k->req) {
		csi_fail(&r, GRPC_STATUS_INVALID_ARGUMENT, "%s: no request message", m->path);
	} else {
		grpc_byte_buffer_reader rd;
		grpc_slice all = grpc_empty_slice();
		if (grpc_byte_buffer_reader_init(&rd, k->req)) {
			all = grpc_byte_buffer_reader_readall(&rd);
			grpc_byte_buffer_reader_destroy(&rd);
		}
		/* CSI-6: protobuf-c checks every length against the buffer. */
		in = protobuf_c_message_unpack(m->in, NULL, GRPC_SLICE_LENGTH(all),
					       GRPC_SLICE_START_PTR(all));
		grpc_slice_unref(all);
		out = calloc(1, m->out->sizeof_message);
		if (!in)
			csi_fail(&r, GRPC_STATUS_INVALID_ARGUMENT, "%s: malformed request message",
				 m->path);
		else if (!out)
			csi_fail(&r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		else {
			protobuf_c_message_init(m->out, out);
			m->fn(g_csi, in, out, &r);
		}
	}
	if (r.code == GRPC_STATUS_OK && out) {
		size_t n = protobuf_c_message_get_packed_size(out);
		grpc_slice s = grpc_slice_malloc(n);
		protobuf_c_message_pack(out, GRPC_SLICE_START_PTR(s));
		k->resp = grpc_raw_byte_buffer_create(&s, 1);
		grpc_slice_unref(s);
	} else {
		if (!r.msg[0])
			snprintf(r.msg, sizeof(r.msg), "failed");
		log_info("%s: %s", m ? m->path : "call", r.msg);
		k->status_msg = grpc_slice_from_copied_string(r.msg);
	}
	if (in)
		protobuf_c_message_free_unpacked(in, NULL);
	free(out);
	reply_fini(&r);

	grpc_op ops[4];
	memset(ops, 0, sizeof(ops));
	size_t n = 0;
	ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (k->resp) {
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n++].data.send_message.send_message = k->resp;
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = r.code;
	ops[n++].data.send_status_from_server.status_details =
	    r.code == GRPC_STATUS_OK ? NULL : &k->status_msg;
	ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	ops[n++].data.recv_close_on_server.cancelled = &k->cancelled;
	k->state = CALL_SENT;
	grpc_call_error e = grpc_call_start_batch(k->call, ops, n, k, NULL);
	if (e != GRPC_CALL_OK) {
		log_err("cannot answer a call: grpc error %d", (int)e);
		call_free(k);
	}
}

static void *worker_main(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&q_lock);
		while (!q_head && !q_stop)
			pthread_cond_wait(&q_cond, &q_lock);
		struct csi_call *k = q_head;
		if (k) {
			q_head = k->next;
			if (!q_head)
				q_tail = NULL;
		}
		pthread_mutex_unlock(&q_lock);
		if (!k)
			return NULL; /* stopping and the queue is empty */
		call_run(k);
	}
}

static void enqueue(struct csi_call *k)
{
	k->next = NULL;
	pthread_mutex_lock(&q_lock);
	if (q_stop) { /* the workers are gone: gRPC cancelled the call already */
		pthread_mutex_unlock(&q_lock);
		call_free(k);
		return;
	}
	if (q_tail)
		q_tail->next = k;
	else
		q_head = k;
	q_tail = k;
	pthread_cond_signal(&q_cond);
	pthread_mutex_unlock(&q_lock);
}

/* The completion-queue thread: events only (CSI THREADS). */
static void *cq_main(void *arg)
{
	(void)arg;
	for (;;) {
		grpc_event ev =
		    grpc_completion_queue_next(g_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			return NULL;
		if (ev.type != GRPC_OP_COMPLETE || !ev.tag)
			continue;
		struct csi_call *k = ev.tag;
		if (k == (void *)&g_server) /* the shutdown notification */
			continue;
		switch (k->state) {
		case CALL_NEW:
			if (!ev.success) { /* the server is shutting down */
				call_free(k);
				break;
			}
			call_request(); /* keep CSI_PENDING calls requested */
			grpc_op op;
			memset(&op, 0, sizeof(op));
			op.op = GRPC_OP_RECV_MESSAGE;
			op.data.recv_message.recv_message = &k->req;
			k->state = CALL_RECV;
			if (grpc_call_start_batch(k->call, &op, 1, k, NULL) != GRPC_CALL_OK)
				call_free(k);
			break;
		case CALL_RECV:
			enqueue(k); /* even when !success: the worker answers it */
			break;
		case CALL_SENT:
			call_free(k);
			break;
		}
	}
}

/* ---- the socket ------------------------------------------------------------------------- */

/* A socket file at path: live (another plugin answers) -> -EADDRINUSE; stale -> removed;
 * something else -> -EEXIST. Missing -> 0. */
static int socket_prepare(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path)) {
		close(fd);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int live = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	if (live)
		return -EADDRINUSE;
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	log_info("removed the stale socket %s", path);
	return 0;
}

int csi_serve(struct csi *c)
{
	int r = socket_prepare(c->endpoint);
	if (r == -EADDRINUSE) {
		fprintf(stderr, "braidfs-csi: %s is served by another running plugin\n",
			c->endpoint);
		return 1;
	}
	if (r < 0) {
		fprintf(stderr, "braidfs-csi: cannot use %s: %s\n", c->endpoint,
			r == -EEXIST ? "it exists and is not a socket" : strerror(-r));
		return 1;
	}
	/* Signals are taken by sigwait below, never by a gRPC, completion-queue or worker
	 * thread: they all inherit this mask, so it is set before grpc_init starts threads. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD); /* csi_reap_orphans() */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	g_csi = c;
	grpc_init();
	g_cq = grpc_completion_queue_create_for_next(NULL);
	g_server = grpc_server_create(NULL, NULL);
	grpc_server_register_completion_queue(g_server, g_cq, NULL);
	char addr[PATH_MAX + 8];
	snprintf(addr, sizeof(addr), "unix:%s", c->endpoint);
	grpc_server_credentials *cred = grpc_insecure_server_credentials_create();
	/* The socket is root's only: created under umask 077, then chmod 0600 to be sure. */
	mode_t old = umask(077);
	int port = grpc_server_add_http2_port(g_server, addr, cred);
	grpc_server_credentials_release(cred);
	if (port > 0)
		grpc_server_start(g_server);
	umask(old);
	if (port <= 0 || chmod(c->endpoint, 0600) < 0) {
		fprintf(stderr, "braidfs-csi: cannot listen on %s%s%s\n", c->endpoint,
			port <= 0 ? "" : ": ", port <= 0 ? "" : strerror(errno));
		grpc_server_destroy(g_server);
		grpc_completion_queue_shutdown(g_cq);
		grpc_completion_queue_destroy(g_cq);
		grpc_shutdown();
		return 1;
	}

	pthread_t cq_thr, *wk = calloc(c->workers, sizeof(*wk));
	if (!wk) {
		fprintf(stderr, "braidfs-csi: out of memory\n");
		return 1;
	}
	for (unsigned i = 0; i < c->workers; i++)
		pthread_create(&wk[i], NULL, worker_main, NULL);
	pthread_create(&cq_thr, NULL, cq_main, NULL);
	for (int i = 0; i < CSI_PENDING; i++)
		call_request();
	log_info("braidfs-csi serving %s on %s (node %s%s%s)", c->meta[0], c->endpoint, c->node_id,
		 c->controller ? ", controller" : "", c->node ? ", node" : "");

	int sig = 0;
	while (sigwait(&set, &sig) == 0 && sig == SIGCHLD)
		csi_reap_orphans();
	log_info("signal %d: stopping (mounts stay: they do not depend on this process)", sig);
	grpc_server_shutdown_and_notify(g_server, g_cq, &g_server);
	grpc_server_cancel_all_calls(g_server);
	pthread_mutex_lock(&q_lock);
	q_stop = true;
	pthread_cond_broadcast(&q_cond);
	pthread_mutex_unlock(&q_lock);
	for (unsigned i = 0; i < c->workers; i++)
		pthread_join(wk[i], NULL);
	grpc_completion_queue_shutdown(g_cq);
	pthread_join(cq_thr, NULL);
	grpc_server_destroy(g_server);
	grpc_completion_queue_destroy(g_cq);
	grpc_shutdown();
	free(wk);
	unlink(c->endpoint);
	return 0;
}
