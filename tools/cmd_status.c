/* braidfs status — the volume, its targets (health, usage, counters), its chains, and who has
 * it mounted. Reads only; safe while the volume is mounted: then the numbers of the targets
 * the mount has open, and the data service's counters, come from the mount process over its
 * control socket (docs/ctl-protocol.md) — a block target can be open in one process only. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "dataservice/rpc_target.h"
#include "fs/fs.h"
#include "storemgr/sm.h"
#include "tools/ctl_client.h"
#include "tools/tools.h"

static const char help[] =
    "Usage: braidfs status META_URL\n"
    "\n"
    "Show the volume whose metadata is at META_URL: its settings, whether and where it\n"
    "is mounted (every mount, with its node, of a postgres:// volume), its files, every\n"
    "target with its state (up, offline, unreachable, draining, drained, removed), pool,\n"
    "node, media class, the number of chains it is a member of, space and chunk count,\n"
    "and every chain (the ordered list of targets that hold a share of the chunks; the\n"
    "first is the primary) with its epoch. A chain also lists its targets that are\n"
    "syncing (they receive new writes while a resync or rebuild copies what they lack;\n"
    "they serve no reads yet) and away (out after a failure, expected back; with how long\n"
    "ago they left) and async (a copy kept beside the chain, e.g. a backup on external\n"
    "storage, that gets every write without being waited for and serves no reads; with\n"
    "the chunks it has yet to catch up on), when it has any.\n"
    "\n"
    "A volume shared by several nodes (postgres://) also shows its nodes: name, address,\n"
    "state, how long its lease still runs and how long ago it last sent a heartbeat, both\n"
    "by the database's clock (a node whose lease ran out stops acknowledging writes).\n"
    "\n"
    "Repairs: every resync or rebuild that runs or ran without being finished (a target\n"
    "made a full member again drops its row): its kind, chain, target, chunks done of\n"
    "the total, bytes copied, rate, estimated time left, and how long ago it last\n"
    "reported progress.\n"
    "\n"
    "Counters: when the volume is mounted, the mount process's data service counts\n"
    "bytes read and written, replica failures, and checksum errors met by reads and\n"
    "scrubs with the repairs they made (since it was mounted); each target that keeps\n"
    "counters adds its own (checksum errors, bytes read and written since it was\n"
    "opened). When it is not mounted, the counters the targets report are shown. The\n"
    "mount also counts the FUSE requests it handled by kind: status lists the kinds that\n"
    "took the most time (count, mean time in the handler, share of all handler time),\n"
    "where to look first when the volume is slower than expected.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 every target that serves (up or draining) is reachable and none is\n"
    "offline, 1 otherwise (or the volume cannot be read), 2 usage error. Drained and\n"
    "removed targets do not count.\n";

/* A duration for people: 850ms, 12.3s, 4m05s, 2h03m, 3d04h. */
static const char *fmt_dur(int64_t ns, char *buf, size_t len)
{
	int64_t s = ns / 1000000000;

	if (ns < 0)
		snprintf(buf, len, "-");
	else if (ns < 1000000000)
		snprintf(buf, len, "%lldms", (long long)(ns / 1000000));
	else if (s < 60)
		snprintf(buf, len, "%.1fs", ns / 1e9);
	else if (s < 3600)
		snprintf(buf, len, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
	else if (s < 86400)
		snprintf(buf, len, "%lldh%02lldm", (long long)(s / 3600),
			 (long long)(s % 3600 / 60));
	else
		snprintf(buf, len, "%lldd%02lldh", (long long)(s / 86400),
			 (long long)(s % 86400 / 3600));
	return buf;
}

/* The nodes of a shared volume (META_CAP_CLUSTER); nothing for a one-node engine. */
static void status_nodes(struct vol *v)
{
	struct meta_node *n = NULL;
	char b1[32], b2[32];
	int cnt = META_CALL_OPT(v->meta, nodes_list, NULL, 0);

	if (cnt == -EOPNOTSUPP)
		return;
	if (cnt > 0) {
		n = calloc((size_t)cnt, sizeof(*n));
		cnt = n ? META_CALL_OPT(v->meta, nodes_list, n, (unsigned)cnt) : -ENOMEM;
	}
	printf("\nnodes\n");
	if (cnt < 0)
		printf("  ? (%s)\n", strerror(-cnt));
	else if (cnt == 0)
		printf("  none registered (no braidfs serve has started)\n");
	else
		printf("  %-3s %-16s %-8s %-12s %-12s %s\n", "ID", "NAME", "STATE", "LEASE",
		       "HEARTBEAT", "ADDRESS");
	for (int i = 0; i < cnt && n; i++) {
		bool expired = n[i].lease_remaining_ns <= 0;
		const char *state = n[i].state == META_NODE_DOWN ? "down"
				    : expired			 ? "expired"
								 : "up";
		char lease[48], hb[48];

		if (expired)
			snprintf(lease, sizeof(lease), "-");
		else
			snprintf(lease, sizeof(lease), "%s left",
				 fmt_dur(n[i].lease_remaining_ns, b1, sizeof(b1)));
		snprintf(hb, sizeof(hb), "%s ago", fmt_dur(n[i].heartbeat_age_ns, b2, sizeof(b2)));
		printf("  %-3u %-16s %-8s %-12s %-12s %s\n", n[i].id, n[i].name, state, lease, hb,
		       n[i].address);
	}
	free(n);
}

/* A chain's syncing, away and async targets, after its members (nothing when it has none);
 * an async target with the chunks it is behind by (META-19: its dirty rows). */
static void status_chain_roles(struct meta *m, const struct meta_chain *ch)
{
	char b1[32];

	for (unsigned k = 0; k < ch->nsyncing; k++)
		printf("%s%u", k ? ", " : "   syncing ", ch->syncing[k]);
	for (unsigned k = 0; k < ch->naway; k++)
		printf("%s%u (%s)", k ? ", " : "   away ", ch->away[k],
		       fmt_dur(ch->away_ns[k], b1, sizeof(b1)));
	for (unsigned k = 0; k < ch->nasync; k++) {
		uint64_t behind = 0;
		printf("%s%u", k ? ", " : "   async ", ch->async[k]);
		if (META_CALL_OPT(m, dirty_count, ch->id, ch->async[k], &behind) == 0)
			printf(" (%llu chunk(s) behind)", (unsigned long long)behind);
	}
}

/* Resync and rebuild progress (META-17); nothing when none runs on a one-node volume. */
static void status_repairs(struct vol *v, bool cluster)
{
	struct meta_repair *rp = NULL;
	char b1[32], b2[32], b3[32], b4[32];
	int n = META_CALL(v->meta, repairs_list, NULL, 0);

	if (n > 0) {
		rp = calloc((size_t)n, sizeof(*rp));
		n = rp ? META_CALL(v->meta, repairs_list, rp, (unsigned)n) : -ENOMEM;
	}
	if (n == 0 && !cluster)
		return;
	printf("\nrepairs\n");
	if (n < 0)
		printf("  ? (%s)\n", strerror(-n));
	else if (n == 0)
		printf("  none running\n");
	else
		printf("  %-8s %-5s %-6s %-17s %-10s %-11s %-8s %s\n", "KIND", "CHAIN", "TARGET",
		       "DONE/TOTAL", "COPIED", "RATE", "ETA", "UPDATED");
	for (int i = 0; i < n && rp; i++) {
		const struct meta_repair *r = &rp[i];
		char done[40], rate[40], eta[32];
		int64_t left = -1;

		/* a resync knows its total from the start (dirty_count); a rebuild once it listed
		 * the source */
		bool known = r->chunks_total || r->kind == META_REPAIR_RESYNC;

		if (known)
			snprintf(done, sizeof(done), "%llu/%llu",
				 (unsigned long long)r->chunks_done,
				 (unsigned long long)r->chunks_total);
		else
			snprintf(done, sizeof(done), "%llu/?", (unsigned long long)r->chunks_done);
		snprintf(rate, sizeof(rate), "%s/s", fmt_size(r->rate, b2, sizeof(b2)));
		if (known && r->chunks_done >= r->chunks_total)
			left = 0;
		else if (r->chunks_done && r->chunks_total > r->chunks_done)
			left =
			    (int64_t)((double)r->elapsed_ns *
				      (double)(r->chunks_total - r->chunks_done) / r->chunks_done);
		snprintf(eta, sizeof(eta), "%s", left < 0 ? "?" : fmt_dur(left, b3, sizeof(b3)));
		printf("  %-8s %-5u %-6u %-17s %-10s %-11s %-8s %s ago\n",
		       meta_repair_kind_name(r->kind), r->chain, r->target, done,
		       fmt_size(r->bytes_done, b1, sizeof(b1)), rate, eta,
		       fmt_dur(r->updated_ns, b4, sizeof(b4)));
	}
	free(rp);
}

/* The FUSE request kinds that took the most handler time since mount (at most 8). */
static void status_requests(struct ctl_req_stat *q, unsigned n)
{
	uint64_t count = 0, busy = 0;
	for (unsigned i = 0; i < n; i++) {
		count += q[i].count;
		busy += q[i].busy_us;
	}
	if (!count)
		return;
	printf("requests  %llu FUSE request(s) since mounted, %.1f s in their handlers; most "
	       "time in:\n",
	       (unsigned long long)count, (double)busy / 1e6);
	printf("          %-16s %12s %12s %6s\n", "KIND", "COUNT", "MEAN", "SHARE");
	for (unsigned shown = 0; shown < 8; shown++) {
		unsigned best = n;
		for (unsigned i = 0; i < n; i++)
			if (q[i].count && (best == n || q[i].busy_us > q[best].busy_us))
				best = i;
		if (best == n)
			break;
		char mean[32];
		snprintf(mean, sizeof(mean), "%llu us",
			 (unsigned long long)(q[best].busy_us / q[best].count));
		printf("          %-16s %12llu %12s %5.0f%%\n", q[best].kind,
		       (unsigned long long)q[best].count, mean,
		       busy ? 100.0 * (double)q[best].busy_us / (double)busy : 0.0);
		q[best].count = 0;
	}
}

int cmd_status(int argc, char **argv)
{
	int rc0 = help_only_options(argc, argv, "status", help);
	if (rc0 >= 0)
		return rc0;
	if (argc - optind != 1) {
		die_msg("status", "needs META_URL (try --help)");
		return EXIT_USAGE;
	}
	const char *url = argv[optind];
	char err[1024];
	struct vol v;
	if (vol_open(&v, url, META_O_RDONLY, err, sizeof(err)) < 0) {
		die_msg("status", "%s", err);
		vol_close(&v);
		return 1;
	}
	char b1[32], b2[32], b3[32];
	time_t created = (time_t)(v.info.created_ns / 1000000000);
	char when[64];
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime(&created));
	printf("volume    %s (uuid %s)\n", v.info.name, v.info.uuid);
	printf("          %u replica(s), %s consistency, chunk size %s, format version %u\n",
	       v.info.replicas, consistency_name(v.info.consistency),
	       fmt_size(v.info.chunk_size, b1, sizeof(b1)), v.info.format_version);
	printf("          created %s\n", when);
	struct vol_holder *h = calloc(VOL_HOLDERS_MAX, sizeof(*h));
	int nh = h ? vol_holders(&v, h, VOL_HOLDERS_MAX) : -ENOMEM;
	pid_t pid = nh > 0 ? h[0].pid : 0; /* a one-node volume's one holder */
	if (nh < 0)
		printf("mounted   ? (%s)\n", strerror(-nh));
	else if (nh == 0)
		printf("mounted   no\n");
	for (int i = 0; i < nh && i < VOL_HOLDERS_MAX; i++) {
		const char *what = i ? "         " : "mounted  ";
		char hp[128];
		if (h[i].exclusive)
			printf("%s checked by braidfs fsck%s%s%s\n", what,
			       h[i].host[0] ? " on " : "", h[i].host,
			       vol_holder_pid(&h[i], hp, sizeof(hp)));
		else
			printf("%s at %s%s%s%s\n", what, h[i].host, h[i].host[0] ? ":" : "",
			       h[i].mnt[0] ? h[i].mnt : "?", vol_holder_pid(&h[i], hp, sizeof(hp)));
	}
	free(h);
	bool cluster = meta_ops_of(v.meta)->caps & META_CAP_CLUSTER;
	struct meta_statfs ms = {0};
	if (META_CALL(v.meta, statfs, &ms) == 0)
		printf("files     %llu inode(s), %s in files\n", (unsigned long long)ms.inodes,
		       fmt_size(ms.bytes, b1, sizeof(b1)));

	/* the mount's own view, when it is mounted and answers */
	struct run_entry e;
	struct ds_stats ds = {0};
	struct ds_target_stat *ts = calloc(v.ntargets + 1, sizeof(*ts));
	unsigned nts = 0, nreq = 0;
	struct ctl_req_stat req[FS_REQ_KINDS];
	bool live = false;
	if (ts && ctl_client_find_mount(url, &e) == 1) {
		struct ctl_client cl;
		char cerr[CTL_VALUE_MAX + 64];
		if (ctl_client_open(&cl, e.pid, cerr, sizeof(cerr)) == 0 &&
		    ctl_client_stats(&cl, &ds, ts, v.ntargets, &nts, req, FS_REQ_KINDS, &nreq, cerr,
				     sizeof(cerr)) == 0)
			live = true;
		ctl_client_close(&cl);
		if (!live)
			printf("counters  not available: %s\n", cerr);
	}
	if (live) {
		printf("io        %s read, %s written, %llu replica failure(s) since mounted\n",
		       fmt_size(ds.bytes_read, b1, sizeof(b1)),
		       fmt_size(ds.bytes_written, b2, sizeof(b2)),
		       (unsigned long long)ds.replica_failures);
		printf("checksums %llu bad cop%s met, %llu repaired, %llu not repaired (reads and "
		       "scrubs)\n",
		       (unsigned long long)ds.csum_errors_seen,
		       ds.csum_errors_seen == 1 ? "y" : "ies", (unsigned long long)ds.repairs_done,
		       (unsigned long long)ds.repair_failures);
		if (v.info.consistency == META_WEAK)
			printf("          %s not yet on every replica (weak consistency)\n",
			       fmt_size(ds.repl_lag_bytes, b1, sizeof(b1)));
		if (ds.local_reads || ds.local_fallbacks)
			printf(
			    "reads     %llu chunk read(s) from this node's replica, %llu sent on "
			    "to the primary (mount -o node=)\n",
			    (unsigned long long)ds.local_reads,
			    (unsigned long long)ds.local_fallbacks);
		status_requests(req, nreq);
	}

	status_nodes(&v);

	int rc = 0;
	struct sm_counters *cnt = calloc(v.ntargets + 1, sizeof(*cnt));
	bool *has_cnt = calloc(v.ntargets + 1, sizeof(*has_cnt));
	printf("\ntargets\n  %-3s %-11s %-8s %-12s %-7s %-6s %-10s %-10s %-10s %-7s %s\n", "ID",
	       "STATE", "POOL", "NODE", "CLASS", "CHAINS", "USED", "FREE", "SIZE", "CHUNKS", "URL");
	for (unsigned i = 0; i < v.ntargets; i++) {
		const struct meta_target *t = &v.targets[i];
		unsigned nch = 0;
		for (unsigned ci = 0; ci < v.nchains; ci++)
			for (uint32_t k = 0; k < v.chains[ci].nmembers; k++)
				nch += v.chains[ci].members[k] == t->id;
		const struct ds_target_stat *d = NULL;
		for (unsigned k = 0; k < nts; k++)
			if (ts[k].id == t->id && ts[k].open)
				d = &ts[k];
		struct sm_statfs sf = {0};
		char terr[1024] = "";
		int r = 0;
		if (d) { /* the mount has it open: its numbers */
			sf = d->statfs;
			r = d->has_statfs ? 0 : -EIO;
			if (r < 0)
				snprintf(terr, sizeof(terr), "the mount cannot read its space");
			if (cnt && has_cnt) {
				has_cnt[i] = d->has_counters;
				cnt[i] = d->counters;
			}
		} else if (t->state == META_TARGET_REMOVED) {
			r = -ENODEV; /* a removed target is not ours to open */
		} else {
			struct sm_identity expect = {.target_id = t->id};
			snprintf(expect.volume_uuid, sizeof(expect.volume_uuid), "%s", v.info.uuid);
			struct sm_target *st = NULL;
			char node[META_NODE_MAX], rurl[1024];
			if (vol_target_node(t->url, node, sizeof(node)) == t->url) {
				r = sm_open(t->url, &expect, &st, terr, sizeof(terr));
			} else { /* NODE@URL: asked of the node that serves it */
				r = vol_resolve_target(v.meta, v.targets, v.ntargets, t->id, NULL,
						       rurl, sizeof(rurl));
				if (r == -EHOSTUNREACH)
					snprintf(terr, sizeof(terr),
						 "node %s is down or never registered", node);
				else if (r == 0)
					r = rpc_target_ops.open(rurl, &expect, &st, terr,
								sizeof(terr));
			}
			if (r == 0)
				r = st->ops->statfs(st, &sf);
			if (r == 0 && st->ops->counters && cnt && has_cnt)
				has_cnt[i] = st->ops->counters(st, &cnt[i]) == 0;
			sm_close(st);
		}
		const char *state = meta_target_state_name(t->state);
		bool counts = t->state != META_TARGET_DRAINED && t->state != META_TARGET_REMOVED;
		/* a block target is opened by one process at a time: the mount has it */
		bool held = r == -EBUSY && pid > 0;
		if (held)
			snprintf(terr, sizeof(terr),
				 "held by the mount (pid %d): usage is the mount's", (int)pid);
		else if (r < 0 && t->state != META_TARGET_REMOVED)
			state = "unreachable";
		if (counts && ((r < 0 && !held) || t->state == META_TARGET_OFFLINE))
			rc = 1;
		printf("  %-3u %-11s %-8s %-12s %-7s %-6u ", t->id, state,
		       t->pool[0] ? t->pool : "-", t->node[0] ? t->node : "-",
		       t->media[0] ? t->media : "-", nch);
		if (r == 0)
			printf("%-10s %-10s %-10s %-7llu %s\n",
			       fmt_size(sf.used_bytes, b1, sizeof(b1)),
			       fmt_size(sf.free_bytes, b2, sizeof(b2)),
			       fmt_size(sf.total_bytes, b3, sizeof(b3)),
			       (unsigned long long)sf.chunks, t->url);
		else if (t->state == META_TARGET_REMOVED)
			printf("%-10s %-10s %-10s %-7s %s\n", "-", "-", "-", "-", t->url);
		else
			printf("%-10s %-10s %-10s %-7s %s\n      %s\n", "-", "-", "-", "-", t->url,
			       terr[0] ? terr : strerror(-r));
	}
	if (cnt && has_cnt) {
		printf("\ntarget counters (%s)\n  %-3s %-11s %-10s %s\n",
		       live ? "in the mount, since it opened them" : "as the targets report them",
		       "ID", "CSUM-ERRORS", "READ", "WRITTEN");
		for (unsigned i = 0; i < v.ntargets; i++) {
			if (!has_cnt[i]) {
				printf("  %-3u %-11s %-10s %s\n", v.targets[i].id, "-", "-",
				       "-   (this kind of target keeps no counters)");
				continue;
			}
			printf("  %-3u %-11llu %-10s %s\n", v.targets[i].id,
			       (unsigned long long)cnt[i].csum_errors,
			       fmt_size(cnt[i].bytes_read, b1, sizeof(b1)),
			       fmt_size(cnt[i].bytes_written, b2, sizeof(b2)));
		}
	}
	free(cnt);
	free(has_cnt);
	free(ts);
	printf("\nchains\n  %-3s %-6s %s\n", "ID", "EPOCH", "MEMBERS (primary first)");
	for (unsigned i = 0; i < v.nchains; i++) {
		const struct meta_chain *ch = &v.chains[i];
		printf("  %-3u %-6llu", ch->id, (unsigned long long)ch->epoch);
		for (unsigned k = 0; k < ch->nmembers; k++)
			printf("%s%u", k ? ", " : " ", ch->members[k]);
		status_chain_roles(v.meta, ch);
		if (ch->nmembers < v.info.replicas)
			printf("   (degraded: %u of %u replicas)", ch->nmembers, v.info.replicas);
		printf("\n");
	}
	status_repairs(&v, cluster);
	vol_close(&v);
	return rc;
}
