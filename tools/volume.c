/* volume — open a braidfs volume for a subcommand: metadata, cluster tables, targets, and
 * the volume lock that says who uses the volume.
 *
 * The lock depends on what the engine can share (caps, never the engine's name):
 *   - an engine of one node (SQLite): an flock(2) on "<database>.lock" next to the database,
 *     held by the one mount or by fsck; the kernel releases it when the holder dies, so a
 *     kill -9 never leaves a stale lock behind;
 *   - an engine shared by many nodes (META_CAP_SHARED, PostgreSQL): a client registration in
 *     the database (META-12). Mounts register side by side; fsck registers as exclusive, so
 *     it runs only when no mount is alive and no mount starts while it runs. A thread renews
 *     the registration every third of its TTL (vol.client_ttl_ms, VOL_CLIENT_TTL_MS unless the
 *     mount chose another); a holder killed with -9 stops renewing and its row expires after
 *     that TTL by the database's clock, taking the file locks of that mount with it (FS-9).
 * vol.alone says that no other live user was registered when we took the lock: only then may
 * a mount finish what an unclean stop left (orphans, data beyond a size), because that work
 * must not touch inodes another live mount holds open or is writing.
 */
#include "tools/tools.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"

void die_msg(const char *cmd, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "braidfs %s: %s\n", cmd, msg);
}

int bad_option(const char *cmd, char **argv, int c)
{
	char opt[256];
	if (optopt)
		snprintf(opt, sizeof(opt), "-%c", optopt);
	else
		snprintf(opt, sizeof(opt), "%s", argv[optind - 1]);
	char *eq = strchr(opt, '=');
	if (eq)
		*eq = '\0';
	if (c == ':')
		die_msg(cmd, "option '%s' needs a value (try 'braidfs %s --help')", opt, cmd);
	else
		die_msg(cmd, "unknown option '%s' (try 'braidfs %s --help')", opt, cmd);
	return EXIT_USAGE;
}

int help_only_options(int argc, char **argv, const char *cmd, const char *help)
{
	static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {0}};
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(help, stdout);
			return 0;
		}
		return bad_option(cmd, argv, c);
	}
	return -1;
}

const char *consistency_name(enum meta_consistency c)
{
	return c == META_WEAK ? "weak" : "strong";
}

bool pool_arg_ok(const char *cmd, const char *name)
{
	if (meta_pool_name_ok(name))
		return true;
	die_msg(cmd, "invalid pool name '%s' (1-31 of a-z 0-9 . _ -, not starting with . or -)",
		name);
	return false;
}

uint32_t vol_node_number(const struct meta_target *t, unsigned n, const char *node)
{
	for (unsigned i = 0; i < n; i++)
		if (!strcmp(t[i].node, node))
			return i + 1;
	return n + 1;
}

int vol_open(struct vol *v, const char *meta_url, int meta_flags, char *err, size_t errlen)
{
	memset(v, 0, sizeof(*v));
	v->lock_fd = -1;
	v->client_ttl_ms = VOL_CLIENT_TTL_MS;
	snprintf(v->meta_url, sizeof(v->meta_url), "%s", meta_url);
	int r = meta_open(meta_url, meta_flags, &v->meta, err, errlen);
	if (r < 0)
		return r;
	r = META_CALL(v->meta, volume_get, &v->info);
	if (r == -ENOENT) {
		snprintf(err, errlen, "%s holds no braidfs volume (run 'braidfs format' first)",
			 meta_url);
		return r;
	}
	if (r < 0) {
		snprintf(err, errlen, "cannot read the volume from %s: %s", meta_url, strerror(-r));
		return r;
	}
	return vol_reload(v, err, errlen);
}

int vol_reload(struct vol *v, char *err, size_t errlen)
{
	free(v->targets);
	free(v->chains);
	v->ntargets = v->nchains = 0;
	v->targets = calloc(META_MAX_TARGETS, sizeof(*v->targets));
	v->chains = calloc(META_MAX_CHAINS, sizeof(*v->chains));
	if (!v->targets || !v->chains)
		return -ENOMEM;
	int r = META_CALL(v->meta, targets_list, v->targets, META_MAX_TARGETS);
	if (r >= 0) {
		v->ntargets = (unsigned)(r < META_MAX_TARGETS ? r : META_MAX_TARGETS);
		r = META_CALL(v->meta, chains_list, v->chains, META_MAX_CHAINS);
	}
	if (r < 0) {
		snprintf(err, errlen, "cannot read targets and chains from %s: %s", v->meta_url,
			 strerror(-r));
		return r;
	}
	v->nchains = (unsigned)(r < META_MAX_CHAINS ? r : META_MAX_CHAINS);
	return 0;
}

bool vol_target_in_data(const struct meta_target *t)
{
	return t->state != META_TARGET_REMOVED;
}

bool vol_target_serves(const struct meta_target *t)
{
	return t->state == META_TARGET_UP || t->state == META_TARGET_DRAINING;
}

/* DS-1: a replica failed; commit the chain without it before the write is acknowledged. */
static int chain_failed(void *ctx, uint32_t chain_id, uint64_t epoch, uint32_t failed_target,
			const uint32_t *members, uint32_t n, uint64_t *ret_epoch)
{
	struct vol *v = ctx;
	int r = META_CALL(v->meta, chain_update, chain_id, epoch, members, n, ret_epoch);
	if (r == -ESTALE)
		r = -EIO; /* ds passes -ESTALE up; a write of a one-process volume fails with EIO */
	if (r == 0)
		r = META_CALL(v->meta, target_set_state, failed_target, META_TARGET_OFFLINE);
	if (r == 0)
		r = META_CALL(v->meta, sync);
	if (r < 0)
		log_err("cannot record the removal of target %u from chain %u: %s", failed_target,
			chain_id, strerror(-r));
	else
		log_warn("target %u failed and left chain %u (epoch %llu)", failed_target, chain_id,
			 (unsigned long long)*ret_epoch);
	return r;
}

/* Rebuild (ds_rebuild): a target caught up and joins the chain; durable before it counts. */
static int chain_changed(void *ctx, uint32_t chain_id, uint64_t epoch, const uint32_t *members,
			 uint32_t n, uint64_t *ret_epoch)
{
	struct vol *v = ctx;
	int r = META_CALL(v->meta, chain_update, chain_id, epoch, members, n, ret_epoch);
	if (r == 0)
		r = META_CALL(v->meta, sync);
	if (r < 0)
		log_err("cannot record the new members of chain %u: %s", chain_id, strerror(-r));
	return r;
}

const char *vol_target_node(const char *url, char *node, size_t len)
{
	const char *at = strchr(url, '@'), *colon = strchr(url, ':');
	if (len)
		node[0] = '\0';
	if (!at || (colon && colon < at))
		return url;
	snprintf(node, len, "%.*s", (int)(at - url), url);
	return at + 1;
}

void vol_node_of_target(const struct meta_target *targets, unsigned ntargets, uint32_t id,
			char *node, size_t len)
{
	if (len)
		node[0] = '\0';
	for (unsigned i = 0; i < ntargets; i++)
		if (targets[i].id == id)
			vol_target_node(targets[i].url, node, len);
}

int vol_nodes(struct meta *m, struct meta_node **ret)
{
	*ret = calloc(VOL_NODES_MAX, sizeof(**ret));
	if (!*ret)
		return -ENOMEM;
	int r = META_CALL_OPT(m, nodes_list, *ret, VOL_NODES_MAX);
	return r < 0 ? r : MIN(r, VOL_NODES_MAX);
}

int vol_resolve_target(struct meta *m, const struct meta_target *targets, unsigned ntargets,
		       uint32_t id, const char *query, char *url, size_t len)
{
	char tnode[META_NODE_MAX];
	vol_node_of_target(targets, ntargets, id, tnode, sizeof(tnode));
	if (!tnode[0])
		return -ENOENT;
	struct meta_node *nodes;
	int r = vol_nodes(m, &nodes);
	int found = -EHOSTUNREACH; /* the node never registered, or is down */
	for (int i = 0; i < r; i++)
		if (!strcmp(nodes[i].name, tnode) && nodes[i].state == META_NODE_UP) {
			snprintf(url, len, "tcp://%s/%u%s", nodes[i].address, id,
				 query ? query : "");
			found = 0;
		}
	free(nodes);
	return r < 0 ? r : found;
}

/* A distributed volume (DS-5): target id is reached through its node's current address. */
static int vol_remote_url(void *ctx, uint32_t id, char *url, size_t len)
{
	struct vol *v = ctx;
	return vol_resolve_target(v->meta, v->targets, v->ntargets, id, NULL, url, len);
}

void vol_chain_cfg(const struct meta_chain *m, struct ds_chain_cfg *c)
{
	memset(c, 0, sizeof(*c));
	c->id = m->id;
	c->epoch = m->epoch;
	c->nmembers = m->nmembers;
	memcpy(c->members, m->members, m->nmembers * sizeof(m->members[0]));
	for (uint32_t i = 0; i < m->nsyncing && c->nkeep < DS_MAX_KEEP; i++)
		c->keep[c->nkeep++] = m->syncing[i];
	for (uint32_t i = 0; i < m->naway && c->nkeep < DS_MAX_KEEP; i++)
		c->keep[c->nkeep++] = m->away[i];
	for (uint32_t i = 0; i < m->nasync && c->nkeep < DS_MAX_KEEP; i++)
		c->keep[c->nkeep++] = m->async[i]; /* META-19: a copy that stays */
}

bool vol_chain_lists(const struct meta_chain *c, uint32_t id)
{
	return u32_in(c->members, c->nmembers, id) || u32_in(c->syncing, c->nsyncing, id) ||
	       u32_in(c->away, c->naway, id) || u32_in(c->async, c->nasync, id);
}

/* DS-5: the chain as committed. */
static int vol_chain_refresh(void *ctx, uint32_t chain_id, struct ds_chain_cfg *ret)
{
	struct vol *v = ctx;
	struct meta_chain *c = calloc(META_MAX_CHAINS, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int r = META_CALL(v->meta, chains_list, c, META_MAX_CHAINS);
	int found = r < 0 ? r : -ENOENT;
	for (int i = 0; i < r && i < META_MAX_CHAINS; i++) {
		if (c[i].id != chain_id)
			continue;
		vol_chain_cfg(&c[i], ret);
		found = 0;
	}
	free(c);
	return found;
}

bool vol_distributed(const struct vol *v)
{
	char node[META_NODE_MAX];
	for (unsigned i = 0; i < v->ntargets; i++) {
		vol_target_node(v->targets[i].url, node, sizeof(node));
		if (node[0])
			return true;
	}
	return false;
}

int vol_open_data(struct vol *v, char *err, size_t errlen)
{
	bool remote = vol_distributed(v);
	struct ds_target_cfg *t = calloc(v->ntargets ? v->ntargets : 1, sizeof(*t));
	struct ds_chain_cfg *c = calloc(v->nchains ? v->nchains : 1, sizeof(*c));
	unsigned nt = 0;
	int r = -ENOMEM;
	if (!t || !c)
		goto out;
	for (unsigned i = 0; i < v->ntargets; i++) {
		if (!vol_target_in_data(&v->targets[i]))
			continue;
		t[nt].id = v->targets[i].id;
		snprintf(t[nt].url, sizeof(t[nt].url), "%s", v->targets[i].url);
		t[nt].up = remote || vol_target_serves(&v->targets[i]);
		nt++;
	}
	for (unsigned i = 0; i < v->nchains; i++)
		vol_chain_cfg(&v->chains[i], &c[i]);
	uint32_t local[DS_MAX_TARGETS];
	unsigned nlocal = 0;
	for (unsigned i = 0; v->local_node[0] && i < v->ntargets && nlocal < DS_MAX_TARGETS; i++) {
		char node[META_NODE_MAX];
		vol_target_node(v->targets[i].url, node, sizeof(node));
		if (!strcmp(node, v->local_node))
			local[nlocal++] = v->targets[i].id;
	}
	if (v->local_node[0] && !nlocal) {
		snprintf(err, errlen, "node '%s' serves no target of volume '%s'%s", v->local_node,
			 v->info.name, remote ? "" : " (its targets name no node)");
		r = -EINVAL;
		goto out;
	}
	struct ds_config cfg = {
	    .chunk_size = v->info.chunk_size,
	    .consistency = v->info.consistency == META_WEAK ? DS_WEAK : DS_STRONG,
	    .targets = t,
	    .ntargets = nt,
	    .chains = c,
	    .nchains = v->nchains,
	    .chain_failed = chain_failed,
	    .chain_changed = chain_changed,
	    .cb_ctx = v,
	    /* a volume of serve nodes: chains are served by their primaries (DS-5) */
	    .forward = remote,
	    .lazy_open = remote,
	    .chain_refresh = remote ? vol_chain_refresh : NULL,
	    .stall_ms = v->stall_ms,
	    .target_url = remote ? vol_remote_url : NULL,
	    .local_targets = local,
	    .nlocal = nlocal,
	};
	snprintf(cfg.volume_uuid, sizeof(cfg.volume_uuid), "%s", v->info.uuid);
	r = ds_open(&cfg, &v->ds, err, errlen);
out:
	free(t);
	free(c);
	return r;
}

static int lock_path(const char *meta_url, char *out, size_t len)
{
	/* a one-node engine keeps its database in a file: the lock lives beside it */
	const struct meta_ops *ops = meta_ops_for(meta_url);
	struct url u;
	if (!ops || (ops->caps & META_CAP_SHARED) || url_parse(meta_url, &u, NULL, 0) < 0 ||
	    !u.path[0])
		return -ENOTSUP;
	if (snprintf(out, len, "%s.lock", u.path) >= (int)len)
		return -ENAMETOOLONG;
	return 0;
}

static void read_holder(int fd, pid_t *pid, char *mnt, size_t mntlen)
{
	char buf[4200] = {0};
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	*pid = 0;
	if (mnt && mntlen)
		mnt[0] = '\0';
	if (n <= 0)
		return;
	char *nl = strchr(buf, '\n');
	*pid = (pid_t)atol(buf);
	if (nl && mnt && mntlen) {
		char *end = strchr(nl + 1, '\n');
		if (end)
			*end = '\0';
		snprintf(mnt, mntlen, "%s", nl + 1);
	}
}

static bool vol_shared(const struct vol *v)
{
	return (meta_ops_of(v->meta)->caps & META_CAP_SHARED) != 0;
}

static void holder_from_client(const struct meta_client *c, struct vol_holder *h)
{
	char me[256] = "";

	memset(h, 0, sizeof(*h));
	h->pid = c->pid;
	h->exclusive = c->exclusive;
	snprintf(h->host, sizeof(h->host), "%s", c->host);
	snprintf(h->mnt, sizeof(h->mnt), "%s", c->mountpoint);
	/* A process of this host that died without unregistering (kill -9): say so. */
	h->remote = gethostname(me, sizeof(me) - 1) < 0 || strcmp(me, c->host) != 0;
	if (!h->remote && c->pid > 0 && kill(c->pid, 0) < 0 && errno == ESRCH)
		h->gone = true;
}

const char *vol_holder_pid(const struct vol_holder *h, char *buf, size_t len)
{
	if (h->gone)
		snprintf(buf, len, " (pid %d, gone; its registration expires within %d s)",
			 (int)h->pid, VOL_CLIENT_TTL_MS / 1000);
	else
		snprintf(buf, len, " (pid %d)", (int)h->pid);
	return buf;
}

/* The heartbeat of a shared-engine registration: renew every TTL/3. A registration that
 * expired anyway (the process stalled, the database was away) is said loudly and taken again:
 * meanwhile another mount may have finished "unfinished work" of ours. */
static void *vol_heartbeat(void *arg)
{
	struct vol *v = arg;

	pthread_mutex_lock(&v->hb_lock);
	while (!v->hb_stop) {
		int64_t until = now_monotonic_ns() + (int64_t)(v->client_ttl_ms / 3) * 1000000;
		while (!v->hb_stop && cond_wait_until(&v->hb_cond, &v->hb_lock, until) != ETIMEDOUT)
			;
		if (v->hb_stop)
			break;
		pthread_mutex_unlock(&v->hb_lock);
		int r = META_CALL_OPT(v->meta, client_heartbeat, v->client_id, v->client_ttl_ms);
		if (r == -ESTALE) {
			log_err(
			    "volume %s: this client's registration expired (the database did not "
			    "hear from it for %.1f s): the file locks taken through it are lost; "
			    "registering again",
			    v->info.name, v->client_ttl_ms / 1000.0);
			uint64_t id = 0;
			r = META_CALL_OPT(v->meta, client_register, &v->me, v->client_ttl_ms, &id,
					  NULL);
			if (r == 0)
				v->client_id = id;
		}
		if (r < 0)
			log_warn("volume %s: cannot renew this client's registration: %s",
				 v->info.name, strerror(-r));
		pthread_mutex_lock(&v->hb_lock);
	}
	pthread_mutex_unlock(&v->hb_lock);
	return NULL;
}

/* Shared engines: register (META-12), learn whether we are alone, start the heartbeat. */
static int vol_register(struct vol *v, const char *mountpoint, struct vol_holder *holder)
{
	struct meta_client conflict, *all = NULL;
	uint64_t id = 0;

	memset(&v->me, 0, sizeof(v->me));
	if (gethostname(v->me.host, sizeof(v->me.host) - 1) < 0)
		snprintf(v->me.host, sizeof(v->me.host), "?");
	v->me.pid = (int32_t)getpid();
	v->me.exclusive = mountpoint == NULL;
	snprintf(v->me.mountpoint, sizeof(v->me.mountpoint), "%s", mountpoint ? mountpoint : "");
	int r = META_CALL_OPT(v->meta, client_register, &v->me, v->client_ttl_ms, &id, &conflict);
	if (r == -EBUSY && holder)
		holder_from_client(&conflict, holder);
	if (r < 0)
		return r;
	v->client_id = id;
	/* alone: nobody but us alive (an exclusive registration is alone by META-12) */
	v->alone = true;
	all = calloc(VOL_HOLDERS_MAX, sizeof(*all));
	r = all ? META_CALL_OPT(v->meta, clients_list, all, VOL_HOLDERS_MAX) : -ENOMEM;
	for (int i = 0; i < r && i < VOL_HOLDERS_MAX; i++)
		if (all[i].alive && all[i].id != id)
			v->alone = false;
	free(all);
	if (r < 0) {
		META_CALL_OPT(v->meta, client_unregister, id);
		v->client_id = 0;
		return r;
	}
	pthread_mutex_init(&v->hb_lock, NULL);
	cond_init_monotonic(&v->hb_cond);
	v->hb_stop = false;
	r = -pthread_create(&v->hb, NULL, vol_heartbeat, v);
	if (r < 0) {
		META_CALL_OPT(v->meta, client_unregister, id);
		v->client_id = 0;
		return r;
	}
	v->hb_running = true;
	return 0;
}

int vol_lock(struct vol *v, const char *mountpoint, struct vol_holder *holder)
{
	char path[4200];
	if (holder)
		memset(holder, 0, sizeof(*holder));
	if (vol_shared(v))
		return vol_register(v, mountpoint, holder);
	int r = lock_path(v->meta_url, path, sizeof(path));
	if (r < 0)
		return r;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		r = -errno;
		if (r == -EWOULDBLOCK) {
			r = -EBUSY;
			if (holder)
				read_holder(fd, &holder->pid, holder->mnt, sizeof(holder->mnt));
		}
		close(fd);
		return r;
	}
	char note[64];
	int n = snprintf(note, sizeof(note), "%d\n\n", (int)getpid());
	if (ftruncate(fd, 0) == 0 && pwrite(fd, note, (size_t)n, 0) < 0)
		log_debug("cannot write %s: %s", path, strerror(errno));
	v->lock_fd = fd;
	v->alone = true;
	return 0;
}

void vol_lock_note(struct vol *v, const char *mountpoint)
{
	if (v->lock_fd < 0)
		return; /* a shared engine's registration names its mount point already */
	char note[4200];
	int n = snprintf(note, sizeof(note), "%d\n%s\n", (int)getpid(), mountpoint);
	if (ftruncate(v->lock_fd, 0) < 0 || pwrite(v->lock_fd, note, (size_t)n, 0) < 0)
		log_debug("cannot note the mount in the lock file: %s", strerror(errno));
}

int vol_lock_holder(const char *meta_url, pid_t *pid, char *mnt, size_t mntlen)
{
	char path[4200];
	if (lock_path(meta_url, path, sizeof(path)) < 0)
		return 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	int held = 0;
	if (flock(fd, LOCK_SH | LOCK_NB) < 0) {
		held = 1;
		read_holder(fd, pid, mnt, mntlen);
	} else {
		flock(fd, LOCK_UN);
	}
	close(fd);
	return held;
}

int vol_holders(struct vol *v, struct vol_holder *out, int max)
{
	if (vol_shared(v)) {
		struct meta_client *all = calloc(VOL_HOLDERS_MAX, sizeof(*all));
		int r = all ? META_CALL_OPT(v->meta, clients_list, all, VOL_HOLDERS_MAX) : -ENOMEM;
		int n = 0;
		for (int i = 0; i < r && i < VOL_HOLDERS_MAX; i++) {
			if (!all[i].alive)
				continue;
			if (n < max)
				holder_from_client(&all[i], &out[n]);
			n++;
		}
		free(all);
		return r < 0 ? r : n;
	}
	struct vol_holder h = {0};
	int held = vol_lock_holder(v->meta_url, &h.pid, h.mnt, sizeof(h.mnt));
	if (held && max > 0)
		out[0] = h;
	return held;
}

void vol_close(struct vol *v)
{
	ds_close(v->ds);
	v->ds = NULL;
	if (v->hb_running) {
		pthread_mutex_lock(&v->hb_lock);
		v->hb_stop = true;
		pthread_cond_signal(&v->hb_cond);
		pthread_mutex_unlock(&v->hb_lock);
		pthread_join(v->hb, NULL);
		pthread_cond_destroy(&v->hb_cond);
		pthread_mutex_destroy(&v->hb_lock);
		v->hb_running = false;
	}
	if (v->client_id) {
		int r = META_CALL_OPT(v->meta, client_unregister, v->client_id);
		if (r < 0 && r != -ENOENT)
			log_warn("volume %s: cannot unregister this client: %s", v->info.name,
				 strerror(-r));
		v->client_id = 0;
	}
	meta_close(v->meta);
	v->meta = NULL;
	free(v->targets);
	free(v->chains);
	v->targets = NULL;
	v->chains = NULL;
	if (v->lock_fd >= 0) {
		if (ftruncate(v->lock_fd, 0) < 0)
			log_debug("cannot clear the lock file: %s", strerror(errno));
		close(v->lock_fd);
		v->lock_fd = -1;
	}
}
