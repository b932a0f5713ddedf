/* dev_nbd — an NBD export through libnbd.
 *
 *   nbd://HOST[:PORT]/EXPORT[?conns=N&retries=N&timeout=S&io_timeout=S]
 *   nbd+unix:///EXPORT?socket=PATH[&conns=N...]
 *
 * Two ops tables (schemes "nbd" and "nbd+unix") share this code; only the connect differs.
 * The URL is parsed here (bounded, common/url.c), not by nbd_connect_uri, so that our own
 * options cannot reach libnbd and every mistake gets its own message.
 *
 * PARALLELISM (DEV-5)
 *   When the server advertises multi-conn, `conns` connections (default 4), else exactly one
 *   (without multi-conn a flush on one connection need not cover writes made on another, so
 *   DEV-4 would not hold). Each connection is one libnbd handle driven by its own loop thread
 *   through the aio API: many commands in flight per connection.
 *
 * COMMANDS
 *   NBD_CMD_READ / NBD_CMD_WRITE (NBD_CMD_FLAG_FUA when the server offers FUA, else the write
 *   is followed by a flush), NBD_CMD_FLUSH (a writable export without flush is refused at
 *   open: its writes could never be made durable), NBD_CMD_TRIM when offered, else
 *   -EOPNOTSUPP. I/Os are split at the server's maximum block size (at most 1 MiB pieces).
 *
 * ERRORS
 *   The server's error replies (EIO, ENOSPC, EINVAL, EPERM, ...) are the answer. ENOTCONN and
 *   ESHUTDOWN (the connection died, the server is going away), or a dead handle, are
 *   transport failures (NET-3): a new handle, the handshake again, and the command again.
 */
#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"
#include "storemgr/dev_net.h"

#define NBD_DEF_PORT  "10809"
#define NBD_DEF_CONNS 4
#define NBD_MAX_IO    (1u << 20)
#define NBD_MAX_TRIM  (1u << 30)
#define NBD_NAME_MAX  4096 /* NBD export names are at most 4096 bytes */

struct dev_nbd {
	struct net_dev nd; /* first */
	bool unix_socket;
	char host[256];
	char port[8];
	char socket[URL_MAX];
	char export[NBD_NAME_MAX + 1];
	bool multi_conn, can_fua;
};

/* ---------------------------------------------------------------------------------------- */
/* URL */

static int dev_nbd_parse(struct net_dev *nd, const char *url, struct net_opts *opts, char *err,
			 size_t errlen)
{
	struct dev_nbd *dn = (struct dev_nbd *)nd;
	struct url u;
	char uerr[160];
	if (url_parse(url, &u, uerr, sizeof(uerr)) < 0) {
		snprintf(err, errlen, "%s", uerr);
		return -EINVAL;
	}
	dn->unix_socket = strcmp(u.scheme, "nbd+unix") == 0;
	if (!dn->unix_socket && (strcmp(u.scheme, "nbd") || !u.has_authority || !u.host[0])) {
		snprintf(err, errlen, "expected nbd://HOST[:PORT]/EXPORT");
		return -EINVAL;
	}
	if (dn->unix_socket && (!u.has_authority || u.host[0] || u.port || u.userinfo[0])) {
		snprintf(err, errlen, "expected nbd+unix:///EXPORT?socket=PATH (no host)");
		return -EINVAL;
	}
	if (u.userinfo[0]) {
		snprintf(err, errlen, "NBD takes no user name (TLS is not supported)");
		return -EINVAL;
	}
	if (u.path[0] && u.path[0] != '/') {
		snprintf(err, errlen, "expected /EXPORT after the host");
		return -EINVAL;
	}
	const char *name = u.path[0] ? u.path + 1 : "";
	if (strlen(name) > NBD_NAME_MAX) {
		snprintf(err, errlen, "export name longer than %d bytes", NBD_NAME_MAX);
		return -EINVAL;
	}
	strcpy(dn->export, name);
	snprintf(dn->host, sizeof(dn->host), "%s", u.host);
	if (u.port)
		snprintf(dn->port, sizeof(dn->port), "%d", u.port);
	else
		snprintf(dn->port, sizeof(dn->port), "%s", NBD_DEF_PORT);
	struct net_opt_extra extra[] = {
	    {.key = "socket", .out = dn->socket, .outlen = sizeof(dn->socket)}};
	int rc = net_opts_parse(&u, opts, extra, dn->unix_socket ? 1 : 0, err, errlen);
	if (rc < 0)
		return rc;
	if (dn->unix_socket && (!extra[0].seen || dn->socket[0] != '/')) {
		snprintf(err, errlen, "nbd+unix needs ?socket=/absolute/path");
		return -EINVAL;
	}
	if (!opts->conns)
		opts->conns = NBD_DEF_CONNS;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* connections */

/* libnbd's error text, made into one line with the cause first. */
static void dev_nbd_reason(const struct dev_nbd *dn, int errnum, char *err, size_t errlen)
{
	const char *e = nbd_get_error();
	if (!e)
		e = strerror(errnum);
	if (errnum == ECONNREFUSED || strstr(e, "Connection refused"))
		snprintf(err, errlen, "connection refused");
	else if (errnum == ENOENT && dn->unix_socket && strstr(e, "connect"))
		snprintf(err, errlen, "no such socket %s", dn->socket);
	else if (strstr(e, "no export") || strstr(e, "opt_go"))
		snprintf(err, errlen, "no such export '%.200s'", dn->export);
	else
		snprintf(err, errlen, "%s", e);
}

static void dev_nbd_disconnect(struct net_conn *c)
{
	/* Commands still in flight are retired with ENOTCONN during the close; the engine
	 * ignores those completions (NET-2). */
	nbd_close(c->h);
	c->h = NULL;
}

static int dev_nbd_connect(struct net_conn *c, char *err, size_t errlen)
{
	struct dev_nbd *dn = (struct dev_nbd *)c->nd;
	struct nbd_handle *h = nbd_create();
	if (!h) {
		snprintf(err, errlen, "%s", nbd_get_error());
		return -ENOMEM;
	}
	int rc = nbd_set_export_name(h, dn->export);
	if (rc == 0)
		rc = dn->unix_socket ? nbd_aio_connect_unix(h, dn->socket)
				     : nbd_aio_connect_tcp(h, dn->host, dn->port);
	int64_t deadline = now_monotonic_ns() + (int64_t)c->nd->opts.timeout_s * 1000000000;
	while (rc == 0 && !nbd_aio_is_ready(h)) {
		if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h)) {
			rc = -1;
			break;
		}
		int64_t left_ms = (deadline - now_monotonic_ns()) / 1000000;
		if (left_ms <= 0) {
			snprintf(err, errlen, "no handshake within %u s", c->nd->opts.timeout_s);
			nbd_close(h);
			return -ETIMEDOUT;
		}
		if (nbd_poll(h, (int)MIN(left_ms, 1000)) < 0)
			rc = -1;
	}
	if (rc < 0) {
		int e = nbd_get_errno();
		dev_nbd_reason(dn, e, err, errlen);
		nbd_close(h);
		if (strstr(err, "refused"))
			return -ECONNREFUSED;
		if (strstr(err, "no such"))
			return -ENOENT;
		return e ? -e : -EIO;
	}
	/* A reconnect must find the same export: same size as at open. */
	int64_t size = nbd_get_size(h);
	if (c->nd->dev.size &&
	    (size < 0 || (uint64_t)size / SM_DEV_ALIGN * SM_DEV_ALIGN != c->nd->dev.size)) {
		snprintf(err, errlen, "export '%s' changed size (%lld bytes, was %llu)", dn->export,
			 (long long)size, (unsigned long long)c->nd->dev.size);
		nbd_close(h);
		return -ESTALE;
	}
	c->h = h;
	return 0;
}

static int dev_nbd_fd(struct net_conn *c)
{
	return nbd_aio_get_fd(c->h);
}

static short dev_nbd_events(struct net_conn *c)
{
	unsigned dir = nbd_aio_get_direction(c->h);
	return (short)((dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
		       (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0));
}

static int dev_nbd_service(struct net_conn *c, short revents)
{
	int rc = 0;
	if (revents & (POLLIN | POLLHUP | POLLERR))
		rc = nbd_aio_notify_read(c->h);
	if (rc == 0 && (revents & POLLOUT))
		rc = nbd_aio_notify_write(c->h);
	if (rc < 0 || nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h)) {
		log_debug("%s: connection %u: %s", c->nd->dev.url, c->idx, nbd_get_error());
		return -EIO;
	}
	return 0;
}

static int dev_nbd_cb(void *user_data, int *error)
{
	struct net_req *r = user_data;
	int e = *error;
	if (e == ENOTCONN || e == ESHUTDOWN || e == ECONNRESET || e == EPIPE)
		net_req_done(r->conn, r, -EIO, NET_END_BROKEN);
	else
		net_req_done(r->conn, r, -e, NET_END_FINAL);
	return 1; /* retire the command */
}

static int dev_nbd_issue(struct net_conn *c, struct net_req *r)
{
	struct dev_nbd *dn = (struct dev_nbd *)c->nd;
	nbd_completion_callback cb = {.callback = dev_nbd_cb, .user_data = r};
	int64_t cookie = -1;
	switch (r->kind) {
	case NET_READ:
		cookie = nbd_aio_pread(c->h, r->buf, r->len, r->off, cb, 0);
		break;
	case NET_WRITE:
		cookie = nbd_aio_pwrite(c->h, r->buf, r->len, r->off, cb,
					r->fua && dn->can_fua ? LIBNBD_CMD_FLAG_FUA : 0);
		break;
	case NET_FLUSH:
		cookie = nbd_aio_flush(c->h, cb, 0);
		break;
	case NET_DISCARD:
		cookie = nbd_aio_trim(c->h, r->len, r->off, cb, 0);
		break;
	}
	if (cookie >= 0)
		return 0;
	int e = nbd_get_errno();
	if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h) || e == ENOTCONN) {
		log_debug("%s: connection %u: %s", c->nd->dev.url, c->idx, nbd_get_error());
		return NET_ISSUE_BROKEN;
	}
	return e ? -e : -EIO;
}

/* ---------------------------------------------------------------------------------------- */
/* open */

/* What the export is, from the first connection's handshake. */
static int dev_nbd_probe(struct net_dev *nd, char *err, size_t errlen)
{
	struct dev_nbd *dn = (struct dev_nbd *)nd;
	struct nbd_handle *h = dn->nd.conns[0].h;
	struct sm_dev *d = &dn->nd.dev;
	int64_t size = nbd_get_size(h);
	if (size < (int64_t)SM_DEV_ALIGN) {
		snprintf(err, errlen, "export '%s' is smaller than %u bytes", dn->export,
			 SM_DEV_ALIGN);
		return -EINVAL;
	}
	int64_t bmin = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
	int64_t bmax = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
	if (bmin > (int64_t)SM_DEV_ALIGN) {
		snprintf(err, errlen, "export '%s' wants blocks of at least %lld bytes (max %u)",
			 dn->export, (long long)bmin, SM_DEV_ALIGN);
		return -EINVAL;
	}
	if (nbd_is_read_only(h) == 1 && !dn->nd.rdonly) {
		snprintf(err, errlen, "export '%s' is read-only (open it read-only)", dn->export);
		return -EROFS;
	}
	if (nbd_can_flush(h) != 1 && !dn->nd.rdonly) {
		snprintf(err, errlen,
			 "export '%s' cannot flush: its writes could never be made durable",
			 dn->export);
		return -EOPNOTSUPP;
	}
	d->size = (uint64_t)size / SM_DEV_ALIGN * SM_DEV_ALIGN; /* DEV-1 */
	d->lbs = bmin == (int64_t)SM_DEV_ALIGN ? SM_DEV_ALIGN : 512;
	d->rotational = nbd_is_rotational(h) == 1;
	dn->can_fua = nbd_can_fua(h) == 1;
	dn->nd.fua_native = dn->can_fua;
	dn->multi_conn = nbd_can_multi_conn(h) == 1;
	uint64_t max_io = NBD_MAX_IO;
	if (bmax > 0)
		max_io = MIN(max_io, (uint64_t)bmax);
	dn->nd.max_io = max_io / SM_DEV_ALIGN * SM_DEV_ALIGN;
	if (!dn->nd.max_io) {
		snprintf(err, errlen, "export '%s': maximum block size %lld is below %u",
			 dn->export, (long long)bmax, SM_DEV_ALIGN);
		return -EINVAL;
	}
	dn->nd.max_discard = nbd_can_trim(h) == 1 ? NBD_MAX_TRIM : 0;
	if (!dn->multi_conn) /* DEV-4 with one flush needs one connection */
		dn->nd.nconns = 1;
	snprintf(d->desc, sizeof(d->desc), "NBD export '%.64s' at %.80s (%u connection%s%s%s%s)",
		 dn->export, dn->unix_socket ? dn->socket : dn->host, nd->nconns,
		 nd->nconns == 1 ? "" : "s", dn->multi_conn ? ", multi-conn" : "",
		 dn->can_fua ? ", FUA" : "", nd->max_discard ? ", trim" : "");
	return 0;
}

static void dev_nbd_close(struct sm_dev *d)
{
	struct dev_nbd *dn = (struct dev_nbd *)d;
	net_dev_fini(&dn->nd);
	free(dn);
}

static const struct net_backend dev_nbd_backend = {
    .what = "nbd",
    .parse = dev_nbd_parse,
    .probe = dev_nbd_probe,
    .connect = dev_nbd_connect,
    .disconnect = dev_nbd_disconnect,
    .fd = dev_nbd_fd,
    .events = dev_nbd_events,
    .service = dev_nbd_service,
    .issue = dev_nbd_issue,
};

static int dev_nbd_open_as(const struct sm_dev_ops *ops, const char *url, unsigned flags,
			   struct sm_dev **ret, char *err, size_t errlen)
{
	*ret = NULL;
	struct dev_nbd *dn = calloc(1, sizeof(*dn));
	if (!dn)
		return -ENOMEM;
	int rc = net_dev_open(&dn->nd, &dev_nbd_backend, ops, url, flags, err, errlen);
	if (rc < 0) {
		free(dn);
		return rc;
	}
	*ret = &dn->nd.dev;
	return 0;
}

static int dev_nbd_open(const char *url, unsigned flags, struct sm_dev **ret, char *err,
			size_t errlen)
{
	return dev_nbd_open_as(&sm_dev_nbd_ops, url, flags, ret, err, errlen);
}

static int dev_nbd_unix_open(const char *url, unsigned flags, struct sm_dev **ret, char *err,
			     size_t errlen)
{
	return dev_nbd_open_as(&sm_dev_nbd_unix_ops, url, flags, ret, err, errlen);
}

const struct sm_dev_ops sm_dev_nbd_ops = {
    .scheme = "nbd",
    .open = dev_nbd_open,
    .close = dev_nbd_close,
    .pread = net_dev_pread,
    .pwrite = net_dev_pwrite,
    .submit = net_dev_submit,
    .flush = net_dev_flush,
    .discard = net_dev_discard,
};

const struct sm_dev_ops sm_dev_nbd_unix_ops = {
    .scheme = "nbd+unix",
    .open = dev_nbd_unix_open,
    .close = dev_nbd_close,
    .pread = net_dev_pread,
    .pwrite = net_dev_pwrite,
    .submit = net_dev_submit,
    .flush = net_dev_flush,
    .discard = net_dev_discard,
};
