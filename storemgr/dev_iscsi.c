/* dev_iscsi — an iSCSI LUN through libiscsi, the userspace initiator (never the kernel one).
 *
 *   iscsi://[USER%PASSWORD@]HOST[:PORT]/IQN/LUN[?sessions=N&retries=N&timeout=S
 *           &io_timeout=S&initiator=IQN]
 *
 * PARALLELISM (DEV-5)
 *   `sessions` iSCSI sessions (default 4), each its own iscsi_context driven by its own loop
 *   thread through libiscsi's asynchronous API, so every session has many commands in flight
 *   (the target's queue depth, CmdSN window). The engine (dev_net.c) hands I/Os to the
 *   sessions round-robin. Reads and writes go straight between the caller's buffer and the
 *   socket (iovec tasks, no copy).
 *
 * COMMANDS
 *   READ(16) / WRITE(16) (FUA bit for SM_DEV_FUA when the LUN sets DPOFUA, else the write is
 *   followed by SYNCHRONIZE CACHE), SYNCHRONIZE CACHE(16) over the whole LUN for flush (it
 *   acts on the logical unit, so one session's flush covers every session's writes: DEV-4),
 *   UNMAP for discard when the LUN is thin (READ CAPACITY(16) LBPME and VPD B2 LBPU), else
 *   -EOPNOTSUPP. Size and block size come from READ CAPACITY(16); I/Os larger than the LUN's
 *   MAXIMUM TRANSFER LENGTH (VPD B0) are split; the rotation rate (VPD B1) sets `rotational`.
 *
 * ERRORS
 *   CHECK CONDITION: UNIT ATTENTION, NOT READY, ABORTED COMMAND, BUSY and TASK SET FULL are
 *   tried again on the same session (bounded by `retries`); LBA OUT OF RANGE is -EINVAL, an
 *   unsupported command -EOPNOTSUPP, DATA PROTECT -EROFS, RESERVATION CONFLICT -EBUSY, the
 *   rest -EIO. A cancelled or timed-out command, or a session error, is a transport failure
 *   (NET-3): reconnect, log in again, issue again. libiscsi's own reconnect is off.
 */
#include <errno.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"
#include "storemgr/dev_net.h"

#define ISCSI_DEF_PORT	   3260
#define ISCSI_DEF_SESSIONS 4
#define ISCSI_IQN_MAX	   223 /* RFC 3720 3.2.6.1 */
#define ISCSI_LUN_MAX	   16383
#define ISCSI_MAX_IO	   (1u << 20) /* pieces; the LUN's own limit when smaller */
#define ISCSI_MAX_UNMAP	   (1u << 30) /* bytes per UNMAP descriptor */
#define ISCSI_NAME_MAX	   256

struct dev_iscsi_sess {
	struct iscsi_context *ctx;
	/* full_connect's callback may run again when the connection dies later: it writes
	 * here, never into a stack frame. */
	bool connect_done;
	int connect_status;
};

struct dev_iscsi {
	struct net_dev nd; /* first */
	char portal[ISCSI_NAME_MAX + 8];
	char iqn[ISCSI_IQN_MAX + 1];
	char initiator[ISCSI_NAME_MAX];
	char user[128];
	char pass[128];
	int lun;
	uint32_t lbs;
	bool fua; /* DPOFUA */
	struct dev_iscsi_sess sess[NET_CONNS_MAX];
};

/* ---------------------------------------------------------------------------------------- */
/* URL */

static bool dev_iscsi_valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n < 5 || n > ISCSI_IQN_MAX)
		return false;
	if (strncmp(s, "iqn.", 4) && strncmp(s, "eui.", 4) && strncmp(s, "naa.", 4))
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == ':'))
			return false;
	}
	return true;
}

static int dev_iscsi_parse(struct net_dev *nd, const char *url, struct net_opts *opts, char *err,
			   size_t errlen)
{
	struct dev_iscsi *id = (struct dev_iscsi *)nd;
	struct url u;
	char uerr[160];
	if (url_parse(url, &u, uerr, sizeof(uerr)) < 0) {
		snprintf(err, errlen, "%s", uerr);
		return -EINVAL;
	}
	if (strcmp(u.scheme, "iscsi") || !u.has_authority || !u.host[0]) {
		snprintf(err, errlen, "expected iscsi://[USER%%PASSWORD@]HOST[:PORT]/IQN/LUN");
		return -EINVAL;
	}
	if (u.userinfo[0]) { /* libiscsi's "user%password", or "user:password" */
		size_t ul = strcspn(u.userinfo, "%:");
		if (ul == 0 || ul >= sizeof(id->user) || !u.userinfo[ul] ||
		    strlen(u.userinfo + ul + 1) >= sizeof(id->pass) || !u.userinfo[ul + 1]) {
			snprintf(err, errlen, "CHAP credentials: expected USER%%PASSWORD@");
			return -EINVAL;
		}
		memcpy(id->user, u.userinfo, ul);
		id->user[ul] = '\0';
		strcpy(id->pass, u.userinfo + ul + 1);
	}
	if (strchr(u.host, ':'))
		snprintf(id->portal, sizeof(id->portal), "[%s]:%d", u.host,
			 u.port ? u.port : ISCSI_DEF_PORT);
	else
		snprintf(id->portal, sizeof(id->portal), "%s:%d", u.host,
			 u.port ? u.port : ISCSI_DEF_PORT);
	/* path: /IQN/LUN, exactly two parts */
	const char *p = u.path;
	if (*p != '/') {
		snprintf(err, errlen, "expected /IQN/LUN after the host");
		return -EINVAL;
	}
	p++;
	const char *slash = strrchr(p, '/');
	if (!slash || (size_t)(slash - p) > ISCSI_IQN_MAX) {
		snprintf(err, errlen, "expected /IQN/LUN after the host");
		return -EINVAL;
	}
	memcpy(id->iqn, p, (size_t)(slash - p));
	id->iqn[slash - p] = '\0';
	if (!dev_iscsi_valid_name(id->iqn)) {
		snprintf(err, errlen, "'%.160s' is not an iSCSI name (iqn.YYYY-MM.domain:name)",
			 id->iqn);
		return -EINVAL;
	}
	const char *ls = slash + 1;
	size_t ll = strlen(ls);
	int lun = 0;
	for (size_t i = 0; i < ll; i++) {
		if (ls[i] < '0' || ls[i] > '9' || i >= 5) {
			ll = 0;
			break;
		}
		lun = lun * 10 + (ls[i] - '0');
	}
	if (ll == 0 || lun > ISCSI_LUN_MAX) {
		snprintf(err, errlen, "LUN '%.32s': expected a number in 0..%d", ls, ISCSI_LUN_MAX);
		return -EINVAL;
	}
	id->lun = lun;
	char host[ISCSI_NAME_MAX] = "localhost";
	gethostname(host, sizeof(host) - 1);
	snprintf(id->initiator, sizeof(id->initiator), "iqn.2026-01.org.braidfs:%s", host);
	struct net_opt_extra extra[] = {
	    {.key = "initiator", .out = id->initiator, .outlen = sizeof(id->initiator)}};
	int rc = net_opts_parse(&u, opts, extra, ARRAY_SIZE(extra), err, errlen);
	if (rc < 0)
		return rc;
	if (extra[0].seen && !dev_iscsi_valid_name(id->initiator)) {
		snprintf(err, errlen, "initiator '%.96s' is not an iSCSI name", id->initiator);
		return -EINVAL;
	}
	if (!opts->conns)
		opts->conns = ISCSI_DEF_SESSIONS;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* sessions */

static void dev_iscsi_connect_cb(struct iscsi_context *ctx, int status, void *command_data,
				 void *private_data)
{
	struct dev_iscsi_sess *s = private_data;
	s->connect_done = true;
	s->connect_status = status;
}

/* libiscsi's error text, made into one line with the cause first: "connection refused",
 * "login failed: no such target", "no such LUN", ... */
static void dev_iscsi_reason(struct iscsi_context *ctx, char *err, size_t errlen)
{
	const char *e = iscsi_get_error(ctx);
	if (!e || !*e)
		e = "no reason given";
	if (strstr(e, "Connection refused"))
		snprintf(err, errlen, "connection refused");
	else if (strstr(e, "Authentication failure") || strstr(e, "CHAP"))
		snprintf(err, errlen, "login failed (CHAP authentication)");
	else if (strstr(e, "Target not found") || strstr(e, "target not found"))
		snprintf(err, errlen, "login failed: no such target");
	else if (strstr(e, "LOGICAL_UNIT_NOT_SUPPORTED"))
		snprintf(err, errlen, "no such LUN");
	else if (strstr(e, "Failed to log in") || strstr(e, "Login"))
		snprintf(err, errlen, "login failed: %s", e);
	else
		snprintf(err, errlen, "%s", e);
	/* libiscsi ends some messages with a newline */
	size_t n = strlen(err);
	while (n && (err[n - 1] == '\n' || err[n - 1] == ' ' || err[n - 1] == '.'))
		err[--n] = '\0';
}

/* The TCP connect failed (refused, unreachable): libiscsi then only says it "can not
 * reconnect right now"; the socket knows why. */
static bool dev_iscsi_socket_error(struct iscsi_context *ctx, char *err, size_t errlen)
{
	int soerr = 0;
	socklen_t sl = sizeof(soerr);
	int fd = iscsi_get_fd(ctx);
	if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || !soerr)
		return false;
	if (soerr == ECONNREFUSED)
		snprintf(err, errlen, "connection refused");
	else
		snprintf(err, errlen, "connect: %s", strerror(soerr));
	return true;
}

static void dev_iscsi_disconnect(struct net_conn *c)
{
	struct dev_iscsi_sess *s = c->h;
	if (!s || !s->ctx)
		return;
	/* Every task's callback runs now (SCSI_STATUS_CANCELLED) and frees it (NET-2: the
	 * engine ignores the completions). */
	iscsi_scsi_cancel_all_tasks(s->ctx);
	iscsi_destroy_context(s->ctx);
	s->ctx = NULL;
	c->h = NULL;
}

static int dev_iscsi_connect(struct net_conn *c, char *err, size_t errlen)
{
	struct dev_iscsi *id = (struct dev_iscsi *)c->nd;
	struct dev_iscsi_sess *s = &id->sess[c->idx];
	s->ctx = iscsi_create_context(id->initiator);
	if (!s->ctx) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	c->h = s;
	iscsi_set_targetname(s->ctx, id->iqn);
	iscsi_set_session_type(s->ctx, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(s->ctx, ISCSI_HEADER_DIGEST_NONE_CRC32C);
	iscsi_set_noautoreconnect(s->ctx, 1); /* NET-3 is ours */
	iscsi_set_timeout(s->ctx, (int)c->nd->opts.timeout_s);
	if (id->user[0])
		iscsi_set_initiator_username_pwd(s->ctx, id->user, id->pass);
	s->connect_done = false;
	int rc = -EIO;
	if (iscsi_full_connect_async(s->ctx, id->portal, id->lun, dev_iscsi_connect_cb, s) != 0) {
		dev_iscsi_reason(s->ctx, err, errlen);
		goto fail;
	}
	int64_t deadline = now_monotonic_ns() + ((int64_t)c->nd->opts.timeout_s + 3) * 1000000000;
	bool sockerr = false;
	while (!s->connect_done) {
		short ev = (short)iscsi_which_events(s->ctx), rev = 0;
		if (ev == 0) { /* libiscsi asks for a pause (e.g. between connect attempts) */
			struct timespec ts = {.tv_nsec = 100000000};
			nanosleep(&ts, NULL);
			if (now_monotonic_ns() > deadline)
				goto timeout;
			if (iscsi_service(s->ctx, 0) < 0)
				goto service_failed;
			continue;
		}
		/* Slices of 250 ms with iscsi_service(ctx, 0) between them run libiscsi's own
		 * login timer (iscsi_set_timeout, whole seconds): when it fires, libiscsi frees its
		 * connect state through its callbacks. Our deadline, 3 s later, is the backstop for
		 * a TCP connect that never ends (libiscsi then leaks a few bytes). */
		int64_t slice = MIN(deadline, now_monotonic_ns() + 250000000);
		int prc = net_poll_until(iscsi_get_fd(s->ctx), ev, slice, &rev);
		if (prc == 0 && now_monotonic_ns() >= deadline)
			goto timeout;
		if (prc == 0) {
			if (iscsi_service(s->ctx, 0) < 0 && !s->connect_done)
				goto service_failed;
			continue;
		}
		if (prc < 0) {
			snprintf(err, errlen, "poll: %s", strerror(-prc));
			goto fail;
		}
		/* The socket's reason is read before libiscsi handles (and closes) it; libiscsi
		 * must handle it, its connect state is freed only then. */
		if ((rev & (POLLERR | POLLHUP)) && !sockerr)
			sockerr = dev_iscsi_socket_error(s->ctx, err, errlen);
		if (iscsi_service(s->ctx, rev) < 0 && !s->connect_done)
			goto service_failed;
	}
	if (s->connect_status != SCSI_STATUS_GOOD) {
		if (!sockerr)
			dev_iscsi_reason(s->ctx, err, errlen);
		goto fail;
	}
	/* Commands time out by NET-5, in the engine; libiscsi's timer only guards the login. */
	iscsi_set_timeout(s->ctx, 0);
	return 0;
timeout:
	snprintf(err, errlen, "no login within %u s", c->nd->opts.timeout_s);
	rc = -ETIMEDOUT;
	goto fail;
service_failed:
	if (!sockerr && !dev_iscsi_socket_error(s->ctx, err, errlen))
		dev_iscsi_reason(s->ctx, err, errlen);
fail:
	if (strstr(err, "refused"))
		rc = -ECONNREFUSED;
	else if (strstr(err, "no such LUN") || strstr(err, "no such target"))
		rc = -ENOENT;
	else if (strstr(err, "CHAP"))
		rc = -EACCES;
	iscsi_destroy_context(s->ctx);
	s->ctx = NULL;
	c->h = NULL;
	return rc;
}

static int dev_iscsi_fd(struct net_conn *c)
{
	struct dev_iscsi_sess *s = c->h;
	return iscsi_get_fd(s->ctx);
}

static short dev_iscsi_events(struct net_conn *c)
{
	struct dev_iscsi_sess *s = c->h;
	return (short)iscsi_which_events(s->ctx);
}

static int dev_iscsi_service(struct net_conn *c, short revents)
{
	struct dev_iscsi_sess *s = c->h;
	if (iscsi_service(s->ctx, revents) < 0) {
		log_debug("%s: session %u: %s", c->nd->dev.url, c->idx, iscsi_get_error(s->ctx));
		return -EIO;
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* commands */

/* CHECK CONDITION -> what the engine does with it. */
static enum net_end dev_iscsi_sense(const struct scsi_sense *sense, int *ret)
{
	switch (sense->key) {
	case SCSI_SENSE_UNIT_ATTENTION: /* e.g. power on / reset after a target restart */
	case SCSI_SENSE_NOT_READY:
	case SCSI_SENSE_COMMAND_ABORTED:
		*ret = -EIO;
		return NET_END_AGAIN;
	case SCSI_SENSE_ILLEGAL_REQUEST:
		if (sense->ascq == SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE)
			*ret = -EINVAL;
		else if (sense->ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE ||
			 sense->ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB)
			*ret = -EOPNOTSUPP;
		else
			*ret = -EIO;
		return NET_END_FINAL;
	case SCSI_SENSE_DATA_PROTECTION:
		*ret = -EROFS;
		return NET_END_FINAL;
	default:
		*ret = -EIO;
		return NET_END_FINAL;
	}
}

static void dev_iscsi_cb(struct iscsi_context *ctx, int status, void *command_data,
			 void *private_data)
{
	struct net_req *r = private_data;
	struct scsi_task *task = command_data ? command_data : r->be_data;
	int res = 0;
	enum net_end how = NET_END_FINAL;
	switch (status) {
	case SCSI_STATUS_GOOD:
		/* DEV-2: a read that came back short is the target's fault, not a partial read */
		if (r->kind == NET_READ && task &&
		    task->residual_status == SCSI_RESIDUAL_UNDERFLOW && task->residual > 0)
			res = -EIO;
		break;
	case SCSI_STATUS_CHECK_CONDITION:
		how = task ? dev_iscsi_sense(&task->sense, &res) : NET_END_BROKEN;
		if (task)
			log_debug("iscsi: %s: sense %s / %s",
				  r->kind == NET_READ ? "read" : "command",
				  scsi_sense_key_str(task->sense.key),
				  scsi_sense_ascq_str(task->sense.ascq));
		break;
	case SCSI_STATUS_BUSY:
	case SCSI_STATUS_TASK_SET_FULL:
		res = -EBUSY;
		how = NET_END_AGAIN;
		break;
	case SCSI_STATUS_RESERVATION_CONFLICT:
		res = -EBUSY;
		break;
	default: /* CANCELLED, TIMEOUT, ERROR: the session, not the command */
		how = NET_END_BROKEN;
		break;
	}
	if (task)
		scsi_free_scsi_task(task);
	r->be_data = NULL;
	net_req_done(r->conn, r, res, how);
}

static int dev_iscsi_issue(struct net_conn *c, struct net_req *r)
{
	struct dev_iscsi *id = (struct dev_iscsi *)c->nd;
	struct dev_iscsi_sess *s = c->h;
	struct scsi_iovec *iov = (struct scsi_iovec *)r->be_space;
	struct unmap_list *um = (struct unmap_list *)r->be_space;
	_Static_assert(sizeof(struct scsi_iovec) <= sizeof(r->be_space), "be_space");
	_Static_assert(sizeof(struct unmap_list) <= sizeof(r->be_space), "be_space");
	uint64_t lba = r->off / id->lbs;
	uint32_t len = (uint32_t)r->len;
	struct scsi_task *t = NULL;
	switch (r->kind) {
	case NET_READ:
		iov->iov_base = r->buf;
		iov->iov_len = r->len;
		t = iscsi_read16_iov_task(s->ctx, id->lun, lba, len, (int)id->lbs, 0, 0, 0, 0, 0,
					  dev_iscsi_cb, r, iov, 1);
		break;
	case NET_WRITE:
		iov->iov_base = r->buf;
		iov->iov_len = r->len;
		t = iscsi_write16_iov_task(s->ctx, id->lun, lba, NULL, len, (int)id->lbs, 0, 0,
					   r->fua && id->fua, 0, 0, dev_iscsi_cb, r, iov, 1);
		break;
	case NET_FLUSH:
		t = iscsi_synchronizecache16_task(s->ctx, id->lun, 0, 0, 0, 0, dev_iscsi_cb, r);
		break;
	case NET_DISCARD:
		um->lba = lba;
		um->num = (uint32_t)(r->len / id->lbs);
		t = iscsi_unmap_task(s->ctx, id->lun, 0, 0, um, 1, dev_iscsi_cb, r);
		break;
	}
	if (!t) {
		log_debug("%s: session %u: cannot queue a command: %s", c->nd->dev.url, c->idx,
			  iscsi_get_error(s->ctx));
		return NET_ISSUE_BROKEN;
	}
	r->be_data = t;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* open: what the LUN is */

/* A synchronous command on the first session, before the loop threads run. NULL with a
 * reason in err when the command failed. */
static struct scsi_task *dev_iscsi_check(struct iscsi_context *ctx, struct scsi_task *t,
					 const char *what, char *err, size_t errlen)
{
	if (t && t->status == SCSI_STATUS_GOOD)
		return t;
	if (t && t->status == SCSI_STATUS_CHECK_CONDITION)
		snprintf(err, errlen, "%s: %s / %s", what, scsi_sense_key_str(t->sense.key),
			 scsi_sense_ascq_str(t->sense.ascq));
	else
		snprintf(err, errlen, "%s: %s", what, iscsi_get_error(ctx));
	if (t)
		scsi_free_scsi_task(t);
	return NULL;
}

static int dev_iscsi_probe(struct net_dev *nd, char *err, size_t errlen)
{
	struct dev_iscsi *id = (struct dev_iscsi *)nd;
	struct iscsi_context *ctx = id->sess[0].ctx;
	struct sm_dev *d = &id->nd.dev;
	char why[200];

	struct scsi_task *t = dev_iscsi_check(ctx, iscsi_inquiry_sync(ctx, id->lun, 0, 0, 64),
					      "INQUIRY", why, sizeof(why));
	if (!t)
		goto fail;
	struct scsi_inquiry_standard *inq = scsi_datain_unmarshall(t);
	if (!inq || inq->device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS) {
		snprintf(why, sizeof(why), "LUN %d is not a disk (peripheral device type %d)",
			 id->lun, inq ? (int)inq->device_type : -1);
		scsi_free_scsi_task(t);
		goto fail;
	}
	scsi_free_scsi_task(t);

	t = dev_iscsi_check(ctx, iscsi_readcapacity16_sync(ctx, id->lun), "READ CAPACITY(16)", why,
			    sizeof(why));
	if (!t)
		goto fail;
	struct scsi_readcapacity16 *rc16 = scsi_datain_unmarshall(t);
	if (!rc16 || (rc16->block_length != 512 && rc16->block_length != 4096)) {
		snprintf(why, sizeof(why), "unsupported logical block size %u (512 or 4096)",
			 rc16 ? rc16->block_length : 0);
		scsi_free_scsi_task(t);
		goto fail;
	}
	id->lbs = rc16->block_length;
	bool lbpme = rc16->lbpme;
	if (rc16->returned_lba >= UINT64_MAX / id->lbs) {
		snprintf(why, sizeof(why), "READ CAPACITY(16): impossible last LBA %llu",
			 (unsigned long long)rc16->returned_lba);
		scsi_free_scsi_task(t);
		goto fail;
	}
	d->size = (rc16->returned_lba + 1) * id->lbs / SM_DEV_ALIGN * SM_DEV_ALIGN; /* DEV-1 */
	d->lbs = id->lbs;
	scsi_free_scsi_task(t);

	/* VPD pages are optional: a target without them gets the defaults. */
	uint64_t max_io = ISCSI_MAX_IO, max_unmap = ISCSI_MAX_UNMAP;
	t = iscsi_inquiry_sync(ctx, id->lun, 1, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, 64);
	if (t && t->status == SCSI_STATUS_GOOD) {
		struct scsi_inquiry_block_limits *bl = scsi_datain_unmarshall(t);
		if (bl && bl->max_xfer_len)
			max_io = MIN(max_io, (uint64_t)bl->max_xfer_len * id->lbs);
		if (bl && bl->max_unmap && bl->max_unmap != 0xffffffffu)
			max_unmap = MIN(max_unmap, (uint64_t)bl->max_unmap * id->lbs);
	}
	if (t)
		scsi_free_scsi_task(t);
	id->nd.max_io = max_io / SM_DEV_ALIGN * SM_DEV_ALIGN;
	if (id->nd.max_io == 0) {
		snprintf(why, sizeof(why), "MAXIMUM TRANSFER LENGTH below %u bytes", SM_DEV_ALIGN);
		goto fail;
	}

	bool lbpu = false;
	t = iscsi_inquiry_sync(ctx, id->lun, 1, SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING,
			       64);
	if (t && t->status == SCSI_STATUS_GOOD) {
		struct scsi_inquiry_logical_block_provisioning *lbp = scsi_datain_unmarshall(t);
		lbpu = lbp && lbp->lbpu;
	}
	if (t)
		scsi_free_scsi_task(t);
	id->nd.max_discard = lbpme && lbpu ? max_unmap / SM_DEV_ALIGN * SM_DEV_ALIGN : 0;

	t = iscsi_inquiry_sync(ctx, id->lun, 1, SCSI_INQUIRY_PAGECODE_BLOCK_DEVICE_CHARACTERISTICS,
			       64);
	if (t && t->status == SCSI_STATUS_GOOD) {
		struct scsi_inquiry_block_device_characteristics *bdc = scsi_datain_unmarshall(t);
		d->rotational = bdc && bdc->medium_rotation_rate > 1; /* 1: not rotating */
	}
	if (t)
		scsi_free_scsi_task(t);

	/* MODE SENSE(6) header: device-specific parameter, WP (0x80) and DPOFUA (0x10). */
	t = iscsi_modesense6_sync(ctx, id->lun, 1, SCSI_MODESENSE_PC_CURRENT,
				  SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255);
	bool wp = false;
	if (t && t->status == SCSI_STATUS_GOOD && t->datain.size >= 4) {
		wp = t->datain.data[2] & 0x80;
		id->fua = t->datain.data[2] & 0x10;
	}
	if (t)
		scsi_free_scsi_task(t);
	if (wp && !id->nd.rdonly) {
		snprintf(why, sizeof(why), "the LUN is write-protected (open it read-only)");
		goto fail;
	}
	id->nd.fua_native = id->fua;
	snprintf(d->desc, sizeof(d->desc),
		 "iSCSI LUN %d of %.96s at %.64s (%u sessions, %u-byte blocks%s%s)", id->lun,
		 id->iqn, id->portal, nd->nconns, id->lbs, id->fua ? ", FUA" : "",
		 nd->max_discard ? ", UNMAP" : "");
	return 0;
fail:
	snprintf(err, errlen, "%s", why);
	return -EIO;
}

static void dev_iscsi_close(struct sm_dev *d)
{
	struct dev_iscsi *id = (struct dev_iscsi *)d;
	net_dev_fini(&id->nd);
	explicit_bzero(id->pass, sizeof(id->pass));
	free(id);
}

static const struct net_backend dev_iscsi_backend = {
    .what = "iscsi",
    .parse = dev_iscsi_parse,
    .probe = dev_iscsi_probe,
    .connect = dev_iscsi_connect,
    .disconnect = dev_iscsi_disconnect,
    .fd = dev_iscsi_fd,
    .events = dev_iscsi_events,
    .service = dev_iscsi_service,
    .issue = dev_iscsi_issue,
};

static int dev_iscsi_open(const char *url, unsigned flags, struct sm_dev **ret, char *err,
			  size_t errlen)
{
	*ret = NULL;
	struct dev_iscsi *id = calloc(1, sizeof(*id));
	if (!id)
		return -ENOMEM;
	int rc =
	    net_dev_open(&id->nd, &dev_iscsi_backend, &sm_dev_iscsi_ops, url, flags, err, errlen);
	if (rc < 0) {
		explicit_bzero(id->pass, sizeof(id->pass));
		free(id);
		return rc;
	}
	*ret = &id->nd.dev;
	return 0;
}

const struct sm_dev_ops sm_dev_iscsi_ops = {
    .scheme = "iscsi",
    .open = dev_iscsi_open,
    .close = dev_iscsi_close,
    .pread = net_dev_pread,
    .pwrite = net_dev_pwrite,
    .submit = net_dev_submit,
    .flush = net_dev_flush,
    .discard = net_dev_discard,
};
