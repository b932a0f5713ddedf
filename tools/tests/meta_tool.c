/* braidfs-meta-tool — set cluster-table state through the metadata ops, and run a resync or a
 * rebuild with repair_run, for the integration tests. Not installed; not an operator tool:
 * the node daemon and the manager own these tables in a running cluster.
 *
 *   braidfs-meta-tool URL node NAME ADDRESS TTL_MS
 *   braidfs-meta-tool URL chain CHAIN EPOCH MEMBERS SYNCING AWAY   lists: 1,2 or -
 *   braidfs-meta-tool URL dirty CHAIN TARGET INO.IDX[,INO.IDX...]
 *   braidfs-meta-tool URL dirty-file TARGET INO FIRST LAST   chunks FIRST..LAST of INO, each
 *                                                  into its chain; prints the chains touched
 *   braidfs-meta-tool URL repair CHAIN TARGET resync|rebuild TOTAL DONE BYTES RATE
 *   braidfs-meta-tool URL run CHAIN TARGET resync|rebuild SOURCE_TARGET RATE
 *   braidfs-meta-tool URL promote CHAIN EPOCH TARGET
 * EPOCH may be `cur`: the chain's epoch as it stands.
 *
 * `run` opens the two targets by the URLs the volume records (identity checked) and copies
 * from SOURCE_TARGET to TARGET; it prints one line of counts at the end. Exit 0 ok, 1 failure
 * (one line on stderr), 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataservice/ds.h"
#include "tools/repair_run.h"

static int usage(void)
{
	fprintf(stderr, "usage: braidfs-meta-tool URL node|chain|dirty|repair|run|promote ARGS "
			"(see tools/tests/meta_tool.c)\n");
	return 2;
}

static int fail(const char *what, int r)
{
	fprintf(stderr, "braidfs-meta-tool: %s: %s\n", what, strerror(-r));
	return 1;
}

/* "1,2,3" or "-" into v (at most META_MAX_REPLICAS); the count, or -1. */
static int ids(const char *s, uint32_t *v)
{
	int n = 0;
	char *end;

	if (!strcmp(s, "-"))
		return 0;
	while (*s) {
		unsigned long x = strtoul(s, &end, 10);

		if (end == s || n == META_MAX_REPLICAS || x > UINT32_MAX)
			return -1;
		v[n++] = (uint32_t)x;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -1;
	}
	return n;
}

static uint64_t num(const char *s)
{
	return strtoull(s, NULL, 10);
}

/* A chain's epoch, or `cur`: the current one (0 if unknown: chain_set then answers -ESTALE). */
static uint64_t epoch_of(struct meta *m, uint32_t chain, const char *s)
{
	struct meta_chain *c;
	uint64_t e = 0;
	int n;

	if (strcmp(s, "cur") != 0)
		return num(s);
	n = META_CALL(m, chains_list, NULL, 0);
	c = n > 0 ? calloc((size_t)n, sizeof(*c)) : NULL;
	if (c && META_CALL(m, chains_list, c, (unsigned)n) == n)
		for (int i = 0; i < n; i++)
			if (c[i].id == chain)
				e = c[i].epoch;
	free(c);
	return e;
}

static int kind_of(const char *s, enum rp_kind *ret)
{
	if (!strcmp(s, "resync"))
		*ret = RP_RESYNC;
	else if (!strcmp(s, "rebuild"))
		*ret = RP_REBUILD;
	else
		return -1;
	return 0;
}

struct chain_ctx {
	uint32_t chain, nchains;
};

static bool belongs(void *ctx, uint64_t ino, uint32_t idx)
{
	const struct chain_ctx *c = ctx;

	return ((uint64_t)ds_ino_seed(ino) + idx) % c->nchains == c->chain;
}

static int open_target(struct meta *m, uint32_t id, struct sm_target **ret)
{
	struct meta_target t[META_MAX_TARGETS];
	struct meta_volume v;
	char err[1024] = "";
	int n = META_CALL(m, targets_list, t, META_MAX_TARGETS), r;

	r = META_CALL(m, volume_get, &v);
	if (r < 0 || n < 0)
		return fail("read the volume", r < 0 ? r : n);
	for (int i = 0; i < n; i++) {
		if (t[i].id != id)
			continue;
		struct sm_identity expect = {.target_id = id};
		snprintf(expect.volume_uuid, sizeof(expect.volume_uuid), "%s", v.uuid);
		r = sm_open(t[i].url, &expect, ret, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "braidfs-meta-tool: target %u: %s\n", id, err);
			return 1;
		}
		return 0;
	}
	fprintf(stderr, "braidfs-meta-tool: no target %u\n", id);
	return 1;
}

static int run(struct meta *m, int argc, char **argv)
{
	struct chain_ctx cc = {.chain = (uint32_t)num(argv[0])};
	struct rr_opts o = {.meta = m, .chain = cc.chain, .target = (uint32_t)num(argv[1])};
	struct sm_target *src = NULL, *dst = NULL;
	struct rp_progress p = {0};
	char err[1024] = "";
	int rc, r;

	if (argc != 5 || kind_of(argv[2], &o.kind) < 0)
		return usage();
	r = META_CALL(m, chains_list, NULL, 0);
	if (r <= 0)
		return fail("chains", r < 0 ? r : -ENOENT);
	cc.nchains = (uint32_t)r;
	rc = open_target(m, (uint32_t)num(argv[3]), &src);
	if (rc == 0)
		rc = open_target(m, o.target, &dst);
	if (rc == 0) {
		o.src = src;
		o.dst = dst;
		o.rate = num(argv[4]);
		o.belongs = belongs;
		o.ctx = &cc;
		r = rr_run(&o, &p, err, sizeof(err));
		printf("%s chain %u target %u: %llu of %llu chunks, %llu bytes read, %llu "
		       "written, %llu removed\n",
		       rp_kind_name(o.kind), o.chain, o.target, (unsigned long long)p.chunks_done,
		       (unsigned long long)p.chunks_total, (unsigned long long)p.bytes_read,
		       (unsigned long long)p.bytes_written, (unsigned long long)p.removed);
		if (r < 0) {
			fprintf(stderr, "braidfs-meta-tool: %s\n", err);
			rc = 1;
		}
	}
	sm_close(src);
	sm_close(dst);
	return rc;
}

static int dispatch(struct meta *m, const char *cmd, int argc, char **argv)
{
	uint32_t id = 0;
	int r;

	if (!strcmp(cmd, "node") && argc == 3) {
		r = META_CALL_OPT(m, node_register, argv[0], argv[1], (uint32_t)num(argv[2]), &id);
		return r < 0 ? fail("node_register", r) : 0;
	}
	if (!strcmp(cmd, "chain") && argc == 5) {
		struct meta_chain c = {0};
		int a = ids(argv[2], c.members), b = ids(argv[3], c.syncing),
		    d = ids(argv[4], c.away);

		if (a < 0 || b < 0 || d < 0)
			return usage();
		c.nmembers = (uint32_t)a;
		c.nsyncing = (uint32_t)b;
		c.naway = (uint32_t)d;
		r = META_CALL(m, chain_set, (uint32_t)num(argv[0]),
			      epoch_of(m, (uint32_t)num(argv[0]), argv[1]), &c, NULL);
		return r < 0 ? fail("chain_set", r) : 0;
	}
	if (!strcmp(cmd, "dirty") && argc == 3) {
		struct meta_chunk_ref refs[256];
		unsigned n = 0;
		char *s = argv[2], *end;

		while (*s && n < 256) {
			refs[n].ino = strtoull(s, &end, 10);
			if (*end != '.')
				return usage();
			refs[n++].idx = strtoull(end + 1, &end, 10);
			s = *end == ',' ? end + 1 : end;
		}
		r = META_CALL(m, dirty_add, (uint32_t)num(argv[0]), (uint32_t)num(argv[1]), refs,
			      n);
		return r < 0 ? fail("dirty_add", r) : 0;
	}
	if (!strcmp(cmd, "dirty-file") && argc == 4) {
		int nc = META_CALL(m, chains_list, NULL, 0);
		uint64_t ino = num(argv[1]), last = num(argv[3]);
		bool touched[META_MAX_CHAINS] = {false};

		if (nc <= 0 || nc > META_MAX_CHAINS)
			return fail("chains", nc < 0 ? nc : -ENOENT);
		for (uint64_t idx = num(argv[2]); idx <= last && idx <= UINT32_MAX; idx++) {
			struct chain_ctx cc = {.nchains = (uint32_t)nc};
			struct meta_chunk_ref ref = {ino, idx};

			cc.chain = (uint32_t)(((uint64_t)ds_ino_seed(ino) + idx) % (uint32_t)nc);
			r = META_CALL(m, dirty_add, cc.chain, (uint32_t)num(argv[0]), &ref, 1);
			if (r < 0)
				return fail("dirty_add", r);
			touched[cc.chain] = true;
		}
		for (int c = 0; c < nc; c++)
			if (touched[c])
				printf("%d\n", c);
		return 0;
	}
	if (!strcmp(cmd, "repair") && argc == 7) {
		struct meta_repair rp = {.chain = (uint32_t)num(argv[0]),
					 .target = (uint32_t)num(argv[1]),
					 .chunks_total = num(argv[3]),
					 .chunks_done = num(argv[4]),
					 .bytes_done = num(argv[5]),
					 .rate = num(argv[6])};
		enum rp_kind k;

		if (kind_of(argv[2], &k) < 0)
			return usage();
		rp.kind = k == RP_RESYNC ? META_REPAIR_RESYNC : META_REPAIR_REBUILD;
		r = META_CALL(m, repair_set, &rp);
		return r < 0 ? fail("repair_set", r) : 0;
	}
	if (!strcmp(cmd, "run") && argc >= 1)
		return run(m, argc, argv);
	if (!strcmp(cmd, "promote") && argc == 3) {
		uint64_t epoch = 0;

		r = META_CALL(m, chain_promote, (uint32_t)num(argv[0]),
			      epoch_of(m, (uint32_t)num(argv[0]), argv[1]), (uint32_t)num(argv[2]),
			      &epoch);
		if (r < 0)
			return fail("chain_promote", r);
		printf("epoch %llu\n", (unsigned long long)epoch);
		return 0;
	}
	return usage();
}

int main(int argc, char **argv)
{
	struct meta *m = NULL;
	char err[1024] = "";
	int rc, r;

	if (argc < 3)
		return usage();
	r = meta_open(argv[1], 0, &m, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "braidfs-meta-tool: %s\n", err);
		return 1;
	}
	rc = dispatch(m, argv[2], argc - 3, argv + 3);
	meta_close(m);
	return rc;
}
