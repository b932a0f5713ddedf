/* ctl_client — see ctl_client.h. */
#include "tools/ctl_client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "tools/tools.h"

#define CTL_CLIENT_TIMEOUT_MS 10000 /* hello and stats: the daemon answers at once */

int ctl_client_find_mount(const char *meta_url, struct run_entry *ret)
{
	pid_t pid = 0;
	char mnt[PATH_MAX] = "";
	memset(ret, 0, sizeof(*ret));
	if (!vol_lock_holder(meta_url, &pid, mnt, sizeof(mnt)))
		return run_find_url(meta_url, ret); /* a shared engine's mount, if one is here */
	if (pid > 0 && run_read(pid, ret) == 0)
		return 1;
	ret->pid = pid;
	return -EBUSY;
}

int ctl_client_open(struct ctl_client *c, pid_t pid, char *err, size_t errlen)
{
	memset(c, 0, sizeof(*c));
	c->pid = pid;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	run_path(pid, "ctl", sa.sun_path, sizeof(sa.sun_path));
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -errno;
	}
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		snprintf(err, errlen, "cannot reach the mount process (pid %d) at %s: %s%s",
			 (int)pid, sa.sun_path, strerror(e),
			 e == ENOENT ? " (it has no control socket: see its log)" : "");
		ctl_client_close(c);
		return -e;
	}
	ctl_reader_init(&c->rd, c->fd);
	struct ctl_line l;
	ctl_begin(&l, CTL_C2D_HELLO);
	ctl_add_u64(&l, "version", CTL_VERSION);
	struct ctl_msg m;
	int r = ctl_client_send(c, &l, err, errlen);
	if (r == 0)
		r = ctl_client_recv(c, CTL_CLIENT_TIMEOUT_MS, &m, err, errlen);
	uint64_t v = 0;
	if (r == 0 &&
	    (m.type != CTL_D2C_HELLO || ctl_get_u64(&m, "version", &v) < 0 || v != CTL_VERSION)) {
		snprintf(err, errlen, "the mount process (pid %d) speaks another protocol (%s)",
			 (int)pid, m.verb);
		r = -EPROTO;
	}
	if (r < 0) {
		ctl_client_close(c);
		return r;
	}
	const char *vol = ctl_get(&m, "volume");
	snprintf(c->volume, sizeof(c->volume), "%s", vol ? vol : "?");
	return 0;
}

void ctl_client_close(struct ctl_client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

int ctl_client_send(struct ctl_client *c, struct ctl_line *l, char *err, size_t errlen)
{
	int r = ctl_end(l);
	if (r == 0)
		r = ctl_send(c->fd, l);
	if (r < 0)
		snprintf(err, errlen, "cannot talk to the mount process (pid %d): %s", (int)c->pid,
			 strerror(-r));
	return r;
}

int ctl_client_recv(struct ctl_client *c, int timeout_ms, struct ctl_msg *m, char *err,
		    size_t errlen)
{
	char line[CTL_LINE_MAX + 1], why[256];
	size_t n;
	int64_t deadline = timeout_ms < 0 ? 0 : now_monotonic_ns() + timeout_ms * 1000000LL;
	int fl = fcntl(c->fd, F_GETFL);
	fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
	int r;
	for (;;) {
		r = ctl_read_line(&c->rd, line, sizeof(line), &n);
		if (r != -EAGAIN)
			break;
		int wait = -1;
		if (timeout_ms >= 0) {
			int64_t left = deadline - now_monotonic_ns();
			if (left <= 0) {
				r = -ETIMEDOUT;
				break;
			}
			wait = (int)MIN(left / 1000000 + 1, (int64_t)INT_MAX);
		}
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		if (poll(&p, 1, wait) < 0 && errno == EINTR) {
			r = -EINTR;
			break;
		}
	}
	fcntl(c->fd, F_SETFL, fl);
	if (r == -EINTR)
		return r;
	if (r == -ETIMEDOUT)
		snprintf(err, errlen, "the mount process (pid %d) did not answer", (int)c->pid);
	else if (r == -ENODATA)
		snprintf(err, errlen, "the mount process (pid %d) closed the connection",
			 (int)c->pid);
	else if (r < 0)
		snprintf(err, errlen, "reading from the mount process (pid %d): %s", (int)c->pid,
			 r == -EBADMSG ? "a line too long or cut short" : strerror(-r));
	else if ((r = ctl_parse(line, n, CTL_D2C, m, why, sizeof(why))) < 0)
		snprintf(err, errlen, "the mount process (pid %d) sent a bad message: %s",
			 (int)c->pid, why);
	else if (m->type == CTL_D2C_ERROR) {
		const char *msg = ctl_get(m, "msg");
		snprintf(err, errlen, "%s", msg && *msg ? msg : "the mount process refused");
		r = -EREMOTEIO;
	}
	return r;
}

int ctl_client_stats(struct ctl_client *c, struct ds_stats *ret_stats, struct ds_target_stat *ret,
		     unsigned max, unsigned *ret_n, struct ctl_req_stat *reqs, unsigned max_reqs,
		     unsigned *ret_nreqs, char *err, size_t errlen)
{
	struct ctl_line l;
	struct ctl_msg m;
	ctl_begin(&l, CTL_C2D_STATS);
	if (reqs)
		ctl_add_u64(&l, "requests", 1);
	int r = ctl_client_send(c, &l, err, errlen);
	if (r == 0)
		r = ctl_client_recv(c, CTL_CLIENT_TIMEOUT_MS, &m, err, errlen);
	if (r == 0 && (m.type != CTL_D2C_STATS || ctl_get_stats(&m, ret_stats) < 0)) {
		snprintf(err, errlen, "the mount process sent '%s' for stats", m.verb);
		return -EPROTO;
	}
	unsigned n = 0, nq = 0;
	while (r == 0) {
		r = ctl_client_recv(c, CTL_CLIENT_TIMEOUT_MS, &m, err, errlen);
		if (r < 0 || m.type == CTL_D2C_END)
			break;
		if (m.type == CTL_D2C_REQUEST && reqs) {
			if (nq < max_reqs && ctl_get_request(&m, &reqs[nq]) < 0) {
				snprintf(err, errlen, "the mount process sent a bad request line");
				return -EPROTO;
			}
			nq += nq < max_reqs;
			continue;
		}
		if (m.type != CTL_D2C_TARGET || (n < max && ctl_get_target(&m, &ret[n]) < 0)) {
			snprintf(err, errlen, "the mount process sent a bad target line ('%s')",
				 m.verb);
			return -EPROTO;
		}
		n += n < max;
	}
	*ret_n = n;
	if (ret_nreqs)
		*ret_nreqs = nq;
	return r;
}
