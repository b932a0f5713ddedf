/* test_meta_conformance — every case against every metadata engine in engines[].
 *
 * Each case gets a fresh temporary directory and a freshly formatted volume (2 targets, 2
 * chains). Cases talk to the engine only through meta_open() and its ops table; the few that
 * must damage the database on purpose (check(), open errors) go behind the engine's back
 * through the engine's `raw_exec` hook and skip when an engine has none.
 *
 * Run: build-dir/fs/meta/test_meta_conformance   (BRAIDFS_META_BIG=100000 to scale the big
 * directory case; default 20000).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "common/log.h"
#include "common/util.h"
#include "fs/meta/meta.h"
#include "fs/meta/meta_int.h"

/* ---- engines ----------------------------------------------------------------------------- */

struct fx;

struct engine {
	const char *name;
	const struct meta_ops *ops;
	/* A fresh, empty store for fixture f, named by tag ("meta", "other"): its URL. */
	int (*store_new)(struct fx *f, const char *tag, char *url, size_t len);
	/* Drop every store made for f (NULL: the test directory holds them). */
	void (*stores_free)(struct fx *f);
	/* the file whose bytes a failed open must not change; NULL if the engine has none */
	void (*file)(const char *dir, char *out, size_t len);
	/* Run SQL on the engine's storage behind its back (fault injection). The cases write
	 * SQLite's dialect; an engine translates the one construct they use, CAST(x AS BLOB). */
	int (*raw_exec)(struct fx *f, const char *sql);
	/* One integer from a query run behind the engine's back. */
	int (*raw_int)(struct fx *f, const char *sql, long long *ret);
	const char *newer_schema_sql; /* raw SQL that makes the schema newer than the engine */
	/* create, in dir, the database of a volume as the first release wrote it (schema 1: two
	 * dir targets, one chain); NULL: the engine has no older release, the migration cases
	 * skip */
	int (*make_old)(const char *dir);
	/* raw SQL that turns a fresh volume into the schema before chain roles (META-13..17) */
	const char *before_roles_sql;
	/* raw SQL that turns a fresh volume into the schema before file locks (META-18); NULL:
	 * the engine has no lock table */
	const char *before_locks_sql;
	/* raw SQL that turns a fresh volume into the schema before the async role (META-19),
	 * and the query of the schema version with the version that role came with */
	const char *before_async_sql;
	const char *version_sql;
	long long async_version;
};

static void sqlite_file(const char *dir, char *out, size_t len)
{
	snprintf(out, len, "%s/meta.db", dir);
}

static int sqlite_exec_flags(const char *dir, const char *sql, int flags)
{
	char path[PATH_MAX];
	sqlite3 *db = NULL;
	char *msg = NULL;
	int rc;

	sqlite_file(dir, path, sizeof(path));
	rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | flags, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_busy_timeout(db, 5000);
		rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
	}
	if (rc != SQLITE_OK)
		print_error("raw_exec: %s: %s\n", sql, msg ? msg : sqlite3_errmsg(db));
	sqlite3_free(msg);
	sqlite3_close(db);
	return rc == SQLITE_OK ? 0 : -EIO;
}

/* Schema version 1 exactly as braidfs 0.1 created it (tables only; no inode but the root). */
static int sqlite_make_old(const char *dir)
{
	return sqlite_exec_flags(
	    dir,
	    "CREATE TABLE volume (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL,"
	    " uuid TEXT NOT NULL, format_version INTEGER NOT NULL, chunk_size INTEGER NOT"
	    " NULL, replicas INTEGER NOT NULL, consistency INTEGER NOT NULL, created_ns"
	    " INTEGER NOT NULL, sync_seq INTEGER NOT NULL DEFAULT 0);"
	    "CREATE TABLE targets (id INTEGER PRIMARY KEY CHECK (id >= 1), url TEXT NOT NULL,"
	    " uuid TEXT NOT NULL, state INTEGER NOT NULL);"
	    "CREATE TABLE chains (id INTEGER PRIMARY KEY CHECK (id >= 0), epoch INTEGER NOT"
	    " NULL);"
	    "CREATE TABLE chain_members (chain INTEGER NOT NULL REFERENCES chains (id), pos"
	    " INTEGER NOT NULL, target INTEGER NOT NULL REFERENCES targets (id), PRIMARY KEY"
	    " (chain, pos), UNIQUE (chain, target)) WITHOUT ROWID;"
	    "CREATE TABLE inodes (ino INTEGER PRIMARY KEY AUTOINCREMENT, mode INTEGER NOT NULL,"
	    " nlink INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, rdev INTEGER"
	    " NOT NULL, size INTEGER NOT NULL, atime INTEGER NOT NULL, mtime INTEGER NOT NULL,"
	    " ctime INTEGER NOT NULL, btime INTEGER NOT NULL, generation INTEGER NOT NULL,"
	    " flags INTEGER NOT NULL, link BLOB);"
	    "CREATE INDEX inodes_pending ON inodes (ino) WHERE nlink = 0 OR flags & 1 != 0;"
	    "CREATE TABLE dentries (id INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER NOT"
	    " NULL, name BLOB NOT NULL, ino INTEGER NOT NULL, UNIQUE (parent, name));"
	    "CREATE INDEX dentries_by_parent ON dentries (parent, id);"
	    "CREATE INDEX dentries_by_ino ON dentries (ino);"
	    "CREATE TABLE xattrs (ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT"
	    " NULL, PRIMARY KEY (ino, name));"
	    "PRAGMA application_id = 1112688211; PRAGMA user_version = 1;"
	    "INSERT INTO volume VALUES (1, 'old', '11111111-2222-4333-8444-555555555555', 1,"
	    " 4194304, 2, 0, 1700000000000000000, 0);"
	    "INSERT INTO targets VALUES (1, 'dir:/srv/a', '00000000-0000-4000-8000-00000000000a',"
	    " 0), (2, 'faulty:/srv/b', '00000000-0000-4000-8000-00000000000b', 1);"
	    "INSERT INTO chains VALUES (0, 5);"
	    "INSERT INTO chain_members VALUES (0, 0, 1), (0, 1, 2);"
	    "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, btime,"
	    " generation, flags) VALUES (16877, 2, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0);",
	    SQLITE_OPEN_CREATE);
}

static const struct engine *E; /* the engine under test */

/* ---- fixture ----------------------------------------------------------------------------- */

struct fx {
	char dir[PATH_MAX];
	char url[PATH_MAX + 32];
	char file[PATH_MAX];
	struct meta *m;
	int64_t clock;	 /* strictly increasing fake time for now_ns arguments */
	char dbs[4][64]; /* postgres: the schemas made for this case */
	int ndbs;
};

/* ---- sqlite ---- */

static int sqlite_store_new(struct fx *f, const char *tag, char *url, size_t len)
{
	snprintf(url, len, "sqlite://%s/%s.db", f->dir, tag);
	return 0;
}

static int sqlite_open_raw(struct fx *f, sqlite3 **db)
{
	int rc;

	rc = sqlite3_open_v2(f->file, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	if (rc == SQLITE_OK)
		sqlite3_busy_timeout(*db, 5000);
	return rc;
}

static int sqlite_raw_exec(struct fx *f, const char *sql)
{
	return sqlite_exec_flags(f->dir, sql, SQLITE_OPEN_CREATE);
}

static int sqlite_raw_int(struct fx *f, const char *sql, long long *ret)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite_open_raw(f, &db);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		*ret = sqlite3_column_int64(st, 0);
	else
		rc = SQLITE_ERROR;
	sqlite3_finalize(st);
	sqlite3_close(db);
	return rc == SQLITE_OK ? 0 : -EIO;
}

/* ---- postgres: one schema per case in the database BRAIDFS_TEST_PG_URL names (a database per
 * case would cost a checkpoint per DROP DATABASE); the case's URL selects it with libpq's
 * options=-csearch_path=..., the way several volumes share one database. ---- */

static const char *pg_base(void)
{
	return getenv("BRAIDFS_TEST_PG_URL");
}

static void pg_quiet(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static PGconn *pg_admin(const char *url)
{
	PGconn *c = PQconnectdb(url);

	if (PQstatus(c) != CONNECTION_OK)
		fail_msg("cannot connect to %s: %s", url, PQerrorMessage(c));
	PQsetNoticeProcessor(c, pg_quiet, NULL); /* "drop cascades to ..." */
	return c;
}

static int pg_exec(const char *url, const char *sql)
{
	PGconn *c = pg_admin(url);
	PGresult *res = PQexec(c, sql);
	int ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;

	if (!ok)
		print_error("pg: %s: %s\n", sql, PQresultErrorMessage(res));
	PQclear(res);
	PQfinish(c);
	return ok ? 0 : -EIO;
}

static int pg_store_new(struct fx *f, const char *tag, char *url, size_t len)
{
	static unsigned seq;
	const char *base = pg_base();
	char sql[128];

	if (f->ndbs >= (int)ARRAY_SIZE(f->dbs))
		return -ENOSPC;
	snprintf(f->dbs[f->ndbs], sizeof(f->dbs[0]), "bfs_%d_%u_%s", (int)getpid(), seq++, tag);
	snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", f->dbs[f->ndbs]);
	if (pg_exec(base, sql) < 0)
		return -EIO;
	snprintf(url, len, "%s%coptions=-csearch_path%%3D%s", base, strchr(base, '?') ? '&' : '?',
		 f->dbs[f->ndbs]);
	f->ndbs++;
	return 0;
}

static void pg_stores_free(struct fx *f)
{
	char sql[128];

	for (int i = 0; i < f->ndbs; i++) {
		snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", f->dbs[i]);
		pg_exec(pg_base(), sql);
	}
	f->ndbs = 0;
}

static int pg_raw_exec(struct fx *f, const char *sql)
{
	char buf[4096];
	const char *p = sql;
	size_t o = 0;

	/* SQLite's CAST(x AS BLOB) is PostgreSQL's CAST(x AS bytea) */
	while (*p && o + 8 < sizeof(buf)) {
		if (!strncmp(p, "AS BLOB)", 8)) {
			memcpy(buf + o, "AS bytea)", 9);
			o += 9;
			p += 8;
		} else {
			buf[o++] = *p++;
		}
	}
	buf[o] = '\0';
	return pg_exec(f->url, buf);
}

static int pg_raw_int(struct fx *f, const char *sql, long long *ret)
{
	PGconn *c = pg_admin(f->url);
	PGresult *res = PQexec(c, sql);
	int r = -EIO;

	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
		*ret = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		r = 0;
	} else {
		print_error("pg: %s: %s\n", sql, PQresultErrorMessage(res));
	}
	PQclear(res);
	PQfinish(c);
	return r;
}

static const struct engine engines[] = {
    {"sqlite", &meta_sqlite_ops, sqlite_store_new, NULL, sqlite_file, sqlite_raw_exec,
     sqlite_raw_int, "PRAGMA user_version = 99", sqlite_make_old,
     "DROP TABLE dirty; DROP TABLE repairs; ALTER TABLE chain_members DROP COLUMN role;"
     " ALTER TABLE chain_members DROP COLUMN since; PRAGMA user_version = 3;",
     NULL, "PRAGMA user_version = 4", "PRAGMA user_version", 5},
    {"postgres", &meta_pg_ops, pg_store_new, pg_stores_free, NULL, pg_raw_exec, pg_raw_int,
     "UPDATE braidfs_schema SET version = 99", NULL,
     "DROP TABLE file_locks; DROP TABLE dirty; DROP TABLE repairs; ALTER TABLE chain_members"
     " DROP COLUMN role, DROP COLUMN since; UPDATE braidfs_schema SET version = 1;",
     "DROP TABLE file_locks; UPDATE braidfs_schema SET version = 2;",
     "UPDATE braidfs_schema SET version = 3", "SELECT version FROM braidfs_schema", 4},
};

/* ---- fixture helpers ---- */

static int64_t tick(struct fx *f)
{
	return f->clock += 1000;
}

static struct meta_volume test_volume(void)
{
	struct meta_volume v;

	memset(&v, 0, sizeof(v));
	snprintf(v.name, sizeof(v.name), "testvol");
	snprintf(v.uuid, sizeof(v.uuid), "01234567-89ab-4cde-8f01-23456789abcd");
	v.format_version = 1;
	v.chunk_size = 4 << 20;
	v.replicas = 2;
	v.consistency = META_STRONG;
	v.created_ns = 1700000000000000000ll;
	return v;
}

static int do_format(struct meta *m)
{
	struct meta_volume v = test_volume();
	struct meta_target t[3];
	struct meta_chain c[2];

	memset(t, 0, sizeof(t));
	memset(c, 0, sizeof(c));
	for (int i = 0; i < 3; i++) {
		t[i].id = (uint32_t)i + 1;
		snprintf(t[i].url, sizeof(t[i].url), "dir:/srv/t%d", i + 1);
		snprintf(t[i].uuid, sizeof(t[i].uuid), "00000000-0000-4000-8000-00000000000%d", i);
		t[i].state = META_TARGET_UP;
		snprintf(t[i].pool, sizeof(t[i].pool), "%s", i < 2 ? "ssd" : "hdd.slow");
		snprintf(t[i].node, sizeof(t[i].node), "node%d", i);
		snprintf(t[i].media, sizeof(t[i].media), "%s", i < 2 ? "ssd" : "hdd");
	}
	c[0].id = 0;
	c[0].epoch = 1;
	c[0].nmembers = 2;
	c[0].members[0] = 1;
	c[0].members[1] = 2;
	c[1].id = 1;
	c[1].epoch = 1;
	c[1].nmembers = 2;
	c[1].members[0] = 2;
	c[1].members[1] = 3;
	return META_CALL(m, format, &v, t, 3, c, 2, 1000, 1000);
}

static int fx_setup_bare(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *base = getenv("TMPDIR");

	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/braidfs-meta-XXXXXX", base ? base : "/tmp");
	if (!mkdtemp(f->dir))
		return -1;
	if (E->store_new(f, "meta", f->url, sizeof(f->url)) < 0)
		return -1;
	if (E->file)
		E->file(f->dir, f->file, sizeof(f->file));
	f->clock = 1800000000000000000ll;
	*state = f;
	return 0;
}

static int fx_setup(void **state)
{
	char err[512] = "";
	struct fx *f;
	int r;

	if (fx_setup_bare(state) < 0)
		return -1;
	f = *state;
	r = meta_open(f->url, META_O_CREATE, &f->m, err, sizeof(err));
	if (r < 0) {
		print_error("open %s: %d %s\n", f->url, r, err);
		return -1;
	}
	if (meta_ops_of(f->m) != E->ops)
		return -1;
	r = do_format(f->m);
	if (r < 0) {
		print_error("format: %d\n", r);
		return -1;
	}
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	char cmd[PATH_MAX + 16];

	meta_close(f->m);
	if (E->stores_free)
		E->stores_free(f);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		return -1;
	free(f);
	return 0;
}

static void fx_reopen(struct fx *f)
{
	char err[512] = "";
	int r;

	meta_close(f->m);
	f->m = NULL;
	r = meta_open(f->url, 0, &f->m, err, sizeof(err));
	if (r < 0)
		fail_msg("reopen: %d %s", r, err);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static struct meta_attr attr_in(struct fx *f, mode_t mode)
{
	struct meta_attr a;

	memset(&a, 0, sizeof(a));
	a.mode = mode;
	a.uid = 1000;
	a.gid = 100;
	a.atime_ns = a.mtime_ns = a.ctime_ns = a.btime_ns = tick(f);
	return a;
}

static uint64_t mk(struct fx *f, uint64_t parent, const char *name, mode_t mode)
{
	struct meta_attr in = attr_in(f, mode), out;
	int r = META_CALL(f->m, mknod, parent, name, &in, NULL, &out);

	if (r < 0)
		fail_msg("mknod(%llu, %s) = %d", (unsigned long long)parent, name, r);
	return out.ino;
}

static uint64_t mkfile(struct fx *f, uint64_t parent, const char *name)
{
	return mk(f, parent, name, S_IFREG | 0644);
}

static uint64_t mkdir_(struct fx *f, uint64_t parent, const char *name)
{
	return mk(f, parent, name, S_IFDIR | 0755);
}

static struct meta_attr get(struct fx *f, uint64_t ino)
{
	struct meta_attr a;
	int r = META_CALL(f->m, getattr, ino, &a);

	if (r < 0)
		fail_msg("getattr(%llu) = %d", (unsigned long long)ino, r);
	return a;
}

/* Field by field: struct copies need not copy padding. */
static void attr_equal(struct meta_attr a, struct meta_attr b)
{
	assert_int_equal(a.ino, b.ino);
	assert_int_equal(a.mode, b.mode);
	assert_int_equal(a.nlink, b.nlink);
	assert_int_equal(a.uid, b.uid);
	assert_int_equal(a.gid, b.gid);
	assert_true(a.rdev == b.rdev);
	assert_true(a.size == b.size);
	assert_true(a.atime_ns == b.atime_ns);
	assert_true(a.mtime_ns == b.mtime_ns);
	assert_true(a.ctime_ns == b.ctime_ns);
	assert_true(a.btime_ns == b.btime_ns);
	assert_true(a.generation == b.generation);
	assert_int_equal(a.flags, b.flags);
}

static uint64_t lookup_ino(struct fx *f, uint64_t parent, const char *name)
{
	struct meta_attr a;
	int r = META_CALL(f->m, lookup, parent, name, &a);

	return r < 0 ? 0 : a.ino;
}

struct ent {
	char name[META_NAME_MAX + 1];
	uint64_t ino;
	uint32_t mode;
	uint64_t off;
	struct meta_attr attr;
};

struct list {
	struct ent *e;
	size_t n, cap;
	size_t limit; /* stop after this many (0: no limit) */
	size_t calls;
};

static struct ent *list_push(struct list *l)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->e = realloc(l->e, l->cap * sizeof(*l->e));
		assert_non_null(l->e);
	}
	memset(&l->e[l->n], 0, sizeof(l->e[0]));
	return &l->e[l->n++];
}

static int list_cb(void *ctx, const char *name, uint64_t ino, uint32_t mode, uint64_t off)
{
	struct list *l = ctx;
	struct ent *e = list_push(l);

	l->calls++;
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->ino = ino;
	e->mode = mode;
	e->off = off;
	return l->limit && l->calls >= l->limit;
}

static int listplus_cb(void *ctx, const char *name, const struct meta_attr *a, uint64_t off)
{
	struct list *l = ctx;
	struct ent *e = list_push(l);

	l->calls++;
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->ino = a->ino;
	e->mode = a->mode;
	e->off = off;
	e->attr = *a;
	return l->limit && l->calls >= l->limit;
}

/* The whole directory, resumed every `chunk` entries the way FUSE does. */
static void list_dir(struct fx *f, uint64_t dir, size_t chunk, struct list *out)
{
	uint64_t off = 0;

	memset(out, 0, sizeof(*out));
	for (;;) {
		size_t before = out->n;

		out->limit = chunk;
		out->calls = 0;
		assert_int_equal(META_CALL(f->m, readdir, dir, off, list_cb, out), 0);
		if (out->n == before)
			break;
		/* a resumed listing always moves forward (or a broken engine loops forever) */
		assert_true(out->e[out->n - 1].off > off);
		off = out->e[out->n - 1].off;
		if (!chunk)
			break;
	}
}

static void list_free(struct list *l)
{
	free(l->e);
	memset(l, 0, sizeof(*l));
}

static size_t count_dir(struct fx *f, uint64_t dir)
{
	struct list l;
	size_t n;

	list_dir(f, dir, 0, &l);
	n = l.n;
	list_free(&l);
	return n;
}

static int inode_cb(void *ctx, const struct meta_attr *a)
{
	struct list *l = ctx;
	struct ent *e = list_push(l);

	e->ino = a->ino;
	e->attr = *a;
	return 0;
}

static bool in_orphans(struct fx *f, uint64_t ino)
{
	struct list l = {0};
	bool found = false;

	assert_int_equal(META_CALL(f->m, orphans, inode_cb, &l), 0);
	for (size_t i = 0; i < l.n; i++)
		found |= l.e[i].ino == ino;
	list_free(&l);
	return found;
}

static void *read_file(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	char *buf;
	long n;

	assert_non_null(fp);
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
	fclose(fp);
	*len = (size_t)n;
	return buf;
}

static void write_file(const char *path, const void *buf, size_t len)
{
	FILE *fp = fopen(path, "wb");

	assert_non_null(fp);
	assert_int_equal(fwrite(buf, 1, len, fp), len);
	fclose(fp);
}

/* meta_open must fail with `want`, a one-line message containing `needle`, and the file's
 * bytes must not change. */
static void open_fails(const char *url, int flags, const char *file, int want, const char *needle)
{
	char err[1024] = "";
	struct meta *m = NULL;
	size_t len0 = 0, len1 = 0;
	void *before = NULL, *after;
	int r;

	if (file && access(file, F_OK) == 0)
		before = read_file(file, &len0);
	r = meta_open(url, flags, &m, err, sizeof(err));
	if (r != want || !strstr(err, needle))
		fail_msg("open(%s, %d) = %d '%s'; want %d with '%s'", url, flags, r, err, want,
			 needle);
	assert_null(m);
	assert_null(strchr(err, '\n'));
	if (before) {
		after = read_file(file, &len1);
		assert_int_equal(len0, len1);
		assert_memory_equal(before, after, len0);
		free(after);
		free(before);
	}
}

/* ---- open ------------------------------------------------------------------------------- */

static void t_open_missing(void **state)
{
	struct fx *f = *state;

	open_fails(f->url, 0, NULL, -ENOENT, "no metadata database at");
	open_fails(f->url, 0, NULL, -ENOENT, "braidfs format");
	open_fails(f->url, META_O_RDONLY, NULL, -ENOENT, "no metadata database at");
	assert_int_equal(access(f->file, F_OK), -1); /* not created */
}

static void t_open_create_no_parent(void **state)
{
	struct fx *f = *state;
	char url[PATH_MAX + 64];

	if (!E->file)
		skip();
	snprintf(url, sizeof(url), "sqlite://%s/nope/meta.db", f->dir);
	open_fails(url, META_O_CREATE, NULL, -ENOENT, "cannot create");
}

static void t_open_garbage(void **state)
{
	struct fx *f = *state;
	unsigned char junk[8192];

	if (!E->file)
		skip();
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (unsigned char)(i * 2654435761u >> 13);
	write_file(f->file, junk, sizeof(junk));
	open_fails(f->url, 0, f->file, -EINVAL, "is not a braidfs metadata database");
	open_fails(f->url, META_O_CREATE, f->file, -EINVAL, "is not a braidfs metadata database");
	open_fails(f->url, META_O_RDONLY, f->file, -EINVAL, "is not a braidfs metadata database");
	/* shorter than any database header */
	write_file(f->file, "hello\n", 6);
	open_fails(f->url, META_O_CREATE, f->file, -EINVAL, "is not a braidfs metadata database");
	/* a text file longer than a header */
	memset(junk, 'x', 200);
	write_file(f->file, junk, 200);
	open_fails(f->url, 0, f->file, -EINVAL, "not an SQLite file");
}

static void foreign_db(const char *path, const char *sql)
{
	sqlite3 *db;

	unlink(path);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* A WAL-mode database whose writer went away without a checkpoint: its last commits live only
 * in PATH-wal, so whoever closes it last would copy them into the main file. A rejected open
 * must not be that someone. */
static void foreign_db_wal_pending(const char *path)
{
	sqlite3 *db;
	char side[PATH_MAX + 8];
	struct stat sb;

	unlink(path);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE notes (x TEXT);",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	assert_int_equal(
	    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL), SQLITE_OK);
	assert_int_equal(
	    sqlite3_exec(db, "INSERT INTO notes VALUES ('only in the wal');", NULL, NULL, NULL),
	    SQLITE_OK);
	sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	snprintf(side, sizeof(side), "%s-wal", path);
	assert_int_equal(stat(side, &sb), 0);
	assert_true(sb.st_size > 0);
}

static void t_open_foreign_sqlite(void **state)
{
	struct fx *f = *state;

	if (!E->file)
		skip();
	/* rollback journal mode, no application id */
	foreign_db(f->file, "CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');");
	open_fails(f->url, 0, f->file, -EINVAL, "is not a braidfs metadata database");
	open_fails(f->url, META_O_CREATE, f->file, -EINVAL, "is not a braidfs metadata database");
	open_fails(f->url, META_O_RDONLY, f->file, -EINVAL, "is not a braidfs metadata database");
	/* WAL mode */
	foreign_db(f->file, "PRAGMA journal_mode=WAL; CREATE TABLE notes (x TEXT);"
			    " INSERT INTO notes VALUES ('keep me');");
	open_fails(f->url, META_O_CREATE, f->file, -EINVAL, "is not a braidfs metadata database");
	foreign_db_wal_pending(f->file);
	open_fails(f->url, 0, f->file, -EINVAL, "is not a braidfs metadata database");
	open_fails(f->url, META_O_CREATE, f->file, -EINVAL, "is not a braidfs metadata database");
	/* another application's id */
	foreign_db(f->file, "PRAGMA application_id = 1234; CREATE TABLE t (x);");
	open_fails(f->url, META_O_CREATE, f->file, -EINVAL, "is not a braidfs metadata database");
	/* a table called like ours but not our id */
	foreign_db(f->file, "CREATE TABLE inodes (ino INTEGER PRIMARY KEY);");
	open_fails(f->url, 0, f->file, -EINVAL, "is not a braidfs metadata database");
}

/* Page number of table `name`'s root, read with raw SQLite. */
static int root_page(const char *path, const char *name, int *pagesize)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	int page = -1;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db,
					    "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
					    -1, &st, NULL),
			 SQLITE_OK);
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		page = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	*pagesize = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return page;
}

static void t_open_corrupted(void **state)
{
	struct fx *f = *state;
	unsigned char *buf;
	size_t len;
	int page, psz;

	if (strcmp(E->name, "sqlite") != 0)
		skip(); /* knows the SQLite file layout */
	mkfile(f, META_ROOT_INO, "a");
	meta_close(f->m); /* checkpoints: everything is in the main file now */
	f->m = NULL;
	buf = read_file(f->file, &len);

	/* the volume table's root page: the first page every open reads after the schema */
	page = root_page(f->file, "volume", &psz);
	assert_true(page > 1);
	memset(buf + (size_t)(page - 1) * (size_t)psz, 0xee, 16);
	write_file(f->file, buf, len);
	open_fails(f->url, 0, f->file, -EIO, "is corrupted:");
	open_fails(f->url, META_O_RDONLY, f->file, -EIO, "is corrupted:");

	/* the schema's own page (page 1 past the 100-byte file header) */
	free(buf);
	buf = read_file(f->file, &len);
	memset(buf + 100, 0xee, 8);
	write_file(f->file, buf, len);
	open_fails(f->url, 0, f->file, -EIO, "is corrupted:");
	free(buf);
}

static void t_open_bad_urls(void **state)
{
	struct fx *f = *state;
	char url[PATH_MAX + 64], err[512];
	struct meta *m = NULL;

	open_fails("sqlite:relative.db", 0, NULL, -EINVAL, "relative");
	open_fails("sqlite:relative.db", META_O_CREATE, NULL, -EINVAL, "relative");
	open_fails("sqlite://relative.db", META_O_CREATE, NULL, -EINVAL, "host");
	open_fails("sqlite://host/tmp/x.db", 0, NULL, -EINVAL, "host");
	open_fails("sqlite://", 0, NULL, -EINVAL, "no file path");
	open_fails("sqlite:///", 0, NULL, -EINVAL, "no file path");
	open_fails("sqlite:", 0, NULL, -EINVAL, "no file path");
	open_fails("sqlite:///tmp/x.db?cache=shared", 0, NULL, -EINVAL, "query");
	open_fails("nosuch:///x.db", 0, NULL, -EINVAL,
		   "unknown metadata URL scheme 'nosuch' (expected sqlite:///abs/path.db or "
		   "postgres://user@host:port/dbname)");
	/* postgres URLs the engine refuses before it connects anywhere */
	open_fails("postgres://127.0.0.1:5432", 0, NULL, -EINVAL, "names no database");
	open_fails("postgres://127.0.0.1:5432/", 0, NULL, -EINVAL, "names no database");
	open_fails("postgresql://h/db/extra", 0, NULL, -EINVAL, "names no database");
	open_fails("postgres:/db", 0, NULL, -EINVAL, "lacks '//'");
	open_fails("postgres://u@127.0.0.1:5432/db", META_O_CREATE | META_O_RDONLY, NULL, -EINVAL,
		   "flags");
	/* nothing listens on port 1: a connection error that names the server, not the
	 * password */
	open_fails("postgres://u:secret@127.0.0.1:1/db?connect_timeout=2", 0, NULL, -EIO,
		   "cannot connect to PostgreSQL at postgres://u@127.0.0.1:1/db");
	open_fails("postgresql://u:secret@127.0.0.1:1/db", 0, NULL, -EIO,
		   "postgresql://u@127.0.0.1");
	assert_int_equal(meta_open("postgres://u:secret@127.0.0.1:1/db", 0, &m, err, sizeof(err)),
			 -EIO);
	assert_null(strstr(err, "secret"));
	/* libpq owns the query: an unknown parameter is its error, reported as such */
	open_fails("postgres://127.0.0.1:1/db?nosuchparam=1", 0, NULL, -EIO, "nosuchparam");
	open_fails("/abs/path.db", 0, NULL, -EINVAL, "bad metadata URL");
	open_fails("", 0, NULL, -EINVAL, "bad metadata URL");
	snprintf(url, sizeof(url), "sqlite://%s", f->dir);
	open_fails(url, META_O_CREATE, NULL, -EISDIR, "is a directory");
	snprintf(url, sizeof(url), "sqlite://%s/x.db", f->dir);
	open_fails(url, META_O_CREATE | META_O_RDONLY, NULL, -EINVAL, "flags");
	assert_int_equal(meta_open(NULL, 0, &m, err, sizeof(err)), -EINVAL);
	/* err may be NULL */
	assert_int_equal(meta_open("nosuch:///x", 0, &m, NULL, 0), -EINVAL);
	assert_null(m);
	/* percent-encoded path */
	snprintf(url, sizeof(url), "sqlite://%s/with%%20space.db", f->dir);
	assert_int_equal(meta_open(url, META_O_CREATE, &m, err, sizeof(err)), 0);
	meta_close(m);
	snprintf(url, sizeof(url), "%s/with space.db", f->dir);
	assert_int_equal(access(url, F_OK), 0);
	meta_close(NULL); /* NULL is fine */
	assert_null(meta_ops_of(NULL));
}

/* An empty file (what a format that died before its commit can leave) is "no database" until
 * META_O_CREATE; then it formats normally. */
static void t_open_empty(void **state)
{
	struct fx *f = *state;
	struct meta_volume v;
	struct meta_attr a;
	struct meta *m = NULL;
	char err[512];

	if (E->file)
		write_file(f->file, "", 0);
	open_fails(f->url, 0, E->file ? f->file : NULL, -ENOENT, "run 'braidfs format' first");
	assert_int_equal(meta_open(f->url, META_O_CREATE, &m, err, sizeof(err)), 0);
	/* open, not formatted */
	assert_int_equal(META_CALL(m, volume_get, &v), -ENOENT);
	assert_int_equal(META_CALL(m, getattr, META_ROOT_INO, &a), -ENOENT);
	assert_int_equal(META_CALL(m, sync), 0);
	meta_close(m);
	/* still not a database: SQLite may have written its header page, nothing else */
	open_fails(f->url, 0, E->file ? f->file : NULL, -ENOENT, "run 'braidfs format' first");
	assert_int_equal(meta_open(f->url, META_O_CREATE, &m, err, sizeof(err)), 0);
	assert_int_equal(do_format(m), 0);
	assert_int_equal(META_CALL(m, volume_get, &v), 0);
	meta_close(m);
	assert_int_equal(meta_open(f->url, 0, &m, err, sizeof(err)), 0);
	assert_int_equal(META_CALL(m, getattr, META_ROOT_INO, &a), 0);
	meta_close(m);
}

/* ---- format and cluster tables ------------------------------------------------------------ */

static void t_format(void **state)
{
	struct fx *f = *state;
	struct meta_volume v, want = test_volume();
	struct meta_attr a;
	struct stat sb;

	/* names in the namespace are nobody else's business */
	if (E->file) {
		assert_int_equal(stat(f->file, &sb), 0);
		assert_int_equal(sb.st_mode & 0777, 0600);
	}

	assert_int_equal(do_format(f->m), -EEXIST);
	assert_int_equal(META_CALL(f->m, volume_get, &v), 0);
	assert_string_equal(v.name, want.name);
	assert_string_equal(v.uuid, want.uuid);
	assert_int_equal(v.format_version, want.format_version);
	assert_int_equal(v.chunk_size, want.chunk_size);
	assert_int_equal(v.replicas, want.replicas);
	assert_int_equal(v.consistency, want.consistency);
	assert_int_equal(v.created_ns, want.created_ns);

	a = get(f, META_ROOT_INO);
	assert_int_equal(a.ino, META_ROOT_INO);
	assert_int_equal(a.mode, S_IFDIR | 0755);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.uid, 1000);
	assert_int_equal(a.gid, 1000);
	assert_int_equal(a.size, 0);
	assert_int_equal(a.flags, 0);

	fx_reopen(f);
	assert_int_equal(META_CALL(f->m, volume_get, &v), 0);
	assert_string_equal(v.uuid, want.uuid);
	assert_int_equal(do_format(f->m), -EEXIST);
	assert_int_equal(get(f, META_ROOT_INO).nlink, 2);
}

static void t_format_invalid(void **state)
{
	struct fx *f = *state;
	struct meta_volume v = test_volume(), got;
	struct meta_target t[2];
	struct meta_chain c;
	struct meta *m;
	char url[PATH_MAX + 64], err[512];

	assert_int_equal(E->store_new(f, "other", url, sizeof(url)), 0);
	assert_int_equal(meta_open(url, META_O_CREATE, &m, err, sizeof(err)), 0);
	memset(t, 0, sizeof(t));
	memset(&c, 0, sizeof(c));
	t[0].id = 1;
	t[1].id = 2;
	snprintf(t[0].url, sizeof(t[0].url), "dir:/a");
	snprintf(t[1].url, sizeof(t[1].url), "dir:/b");
	c.nmembers = 2;
	c.members[0] = 1;
	c.members[1] = 2;

	v.chunk_size = 3 << 20;
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	v = test_volume();
	v.replicas = 0;
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	v = test_volume();
	/* duplicate target id: found inside the transaction, which rolls back whole */
	t[1].id = 1;
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	assert_int_equal(META_CALL(m, volume_get, &got), -ENOENT);
	t[1].id = 2;
	/* META-8: two targets that are not removed share a URL */
	snprintf(t[1].url, sizeof(t[1].url), "dir:/a");
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	assert_int_equal(META_CALL(m, volume_get, &got), -ENOENT);
	snprintf(t[1].url, sizeof(t[1].url), "dir:/b");
	/* chain member names no target */
	c.members[1] = 9;
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	assert_int_equal(META_CALL(m, volume_get, &got), -ENOENT);
	/* same target twice in one chain */
	c.members[1] = 1;
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	c.members[1] = 2;
	c.nmembers = 0;
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	c.nmembers = META_MAX_REPLICAS + 1;
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), -EINVAL);
	c.nmembers = 2;
	/* after all that, a good format works and is complete */
	v.uuid[0] = '\0'; /* engine generates one */
	assert_int_equal(META_CALL(m, format, &v, t, 2, &c, 1, 0, 0), 0);
	assert_int_equal(META_CALL(m, volume_get, &got), 0);
	assert_int_equal(strlen(got.uuid), 36);
	assert_int_equal(META_CALL(m, targets_list, NULL, 0), 2);
	assert_int_equal(META_CALL(m, chains_list, NULL, 0), 1);
	meta_close(m);
}

static void t_targets(void **state)
{
	struct fx *f = *state;
	struct meta_target t[4];

	assert_int_equal(META_CALL(f->m, targets_list, NULL, 0), 3);
	memset(t, 0xa5, sizeof(t));
	assert_int_equal(META_CALL(f->m, targets_list, t, 1), 3); /* count > max: call again */
	assert_int_equal(t[0].id, 1);
	assert_int_equal(t[1].id, 0xa5a5a5a5u); /* nothing past max written */
	assert_int_equal(META_CALL(f->m, targets_list, t, 4), 3);
	for (int i = 0; i < 3; i++) {
		char u[32];

		snprintf(u, sizeof(u), "dir:/srv/t%d", i + 1);
		assert_int_equal(t[i].id, (uint32_t)i + 1);
		assert_string_equal(t[i].url, u);
		assert_int_equal(t[i].state, META_TARGET_UP);
		assert_int_equal(strlen(t[i].uuid), 36);
		assert_string_equal(t[i].pool, i < 2 ? "ssd" : "hdd.slow");
		snprintf(u, sizeof(u), "node%d", i);
		assert_string_equal(t[i].node, u);
		assert_string_equal(t[i].media, i < 2 ? "ssd" : "hdd");
	}
	assert_int_equal(META_CALL(f->m, target_set_state, 2, META_TARGET_OFFLINE), 0);
	assert_int_equal(META_CALL(f->m, targets_list, t, 4), 3);
	assert_int_equal(t[1].state, META_TARGET_OFFLINE);
	assert_int_equal(t[0].state, META_TARGET_UP);
	assert_int_equal(META_CALL(f->m, target_set_state, 2, META_TARGET_UP), 0);
	assert_int_equal(META_CALL(f->m, target_set_state, 99, META_TARGET_UP), -ENOENT);
	assert_int_equal(META_CALL(f->m, target_set_state, 1, (enum meta_target_state)7), -EINVAL);
	assert_int_equal(META_CALL(f->m, target_set_state, 1, META_TARGET_DRAINING), 0);
	assert_int_equal(META_CALL(f->m, targets_list, t, 4), 3);
	assert_int_equal(t[0].state, META_TARGET_DRAINING);
	assert_string_equal(meta_target_state_name(t[0].state), "draining");
}

static struct meta_target new_target(const char *url, const char *pool)
{
	struct meta_target t;

	memset(&t, 0, sizeof(t));
	snprintf(t.url, sizeof(t.url), "%s", url);
	snprintf(t.uuid, sizeof(t.uuid), "abcdef00-0000-4000-8000-000000000001");
	snprintf(t.pool, sizeof(t.pool), "%s", pool);
	snprintf(t.node, sizeof(t.node), "host-b");
	snprintf(t.media, sizeof(t.media), "nvme");
	t.state = META_TARGET_UP;
	return t;
}

/* META-8: target_add hands out the next id, one URL per live target, ids never reused. */
static void t_target_add(void **state)
{
	struct fx *f = *state;
	struct meta_target t = new_target("file:/dev/nvme0n1", "nvme"), got[8];
	uint32_t id = 0;

	assert_int_equal(META_CALL(f->m, target_add, &t, &id), 0);
	assert_int_equal(id, 4);
	assert_int_equal(META_CALL(f->m, targets_list, got, 8), 4);
	assert_int_equal(got[3].id, 4);
	assert_string_equal(got[3].url, "file:/dev/nvme0n1");
	assert_string_equal(got[3].pool, "nvme");
	assert_string_equal(got[3].node, "host-b");
	assert_string_equal(got[3].media, "nvme");
	assert_int_equal(got[3].state, META_TARGET_UP);

	/* the same URL again, or one a formatted target has */
	id = 0;
	assert_int_equal(META_CALL(f->m, target_add, &t, &id), -EEXIST);
	assert_int_equal(id, 0);
	t = new_target("dir:/srv/t2", "dir");
	assert_int_equal(META_CALL(f->m, target_add, &t, &id), -EEXIST);
	/* bad fields */
	t = new_target("dir:/x", "Bad Pool");
	assert_int_equal(META_CALL(f->m, target_add, &t, &id), -EINVAL);
	t = new_target("", "dir");
	assert_int_equal(META_CALL(f->m, target_add, &t, &id), -EINVAL);
	t = new_target("dir:/x", "dir");
	t.state = META_TARGET_REMOVED;
	assert_int_equal(META_CALL(f->m, target_add, &t, &id), -EINVAL);
	t.state = (enum meta_target_state)9;
	assert_int_equal(META_CALL(f->m, target_add, &t, &id), -EINVAL);
	assert_int_equal(META_CALL(f->m, targets_list, NULL, 0), 4);

	/* removed (it holds no chain): its URL is free again, its id is not */
	assert_int_equal(META_CALL(f->m, target_set_state, 4, META_TARGET_REMOVED), 0);
	t = new_target("file:/dev/nvme0n1", "nvme");
	assert_int_equal(META_CALL(f->m, target_add, &t, &id), 0);
	assert_int_equal(id, 5);
	/* survives a reopen */
	fx_reopen(f);
	assert_int_equal(META_CALL(f->m, targets_list, got, 8), 5);
	assert_int_equal(got[3].state, META_TARGET_REMOVED);
	assert_int_equal(got[4].state, META_TARGET_UP);
	assert_string_equal(got[4].url, "file:/dev/nvme0n1");
}

/* META-7: drained and removed targets are in no chain; removed is final. */
static void t_target_states(void **state)
{
	struct fx *f = *state;
	struct meta_target in, got[4];
	uint32_t mem[2] = {1, 3};
	uint64_t epoch = 0;

	memset(&in, 0, sizeof(in));
	in.state = META_TARGET_DRAINED;
	/* target 2 is in chains 0 and 1 */
	assert_int_equal(META_CALL(f->m, target_update, 2, META_TSET_STATE, &in), -EBUSY);
	assert_int_equal(META_CALL(f->m, target_set_state, 2, META_TARGET_REMOVED), -EBUSY);
	assert_int_equal(META_CALL(f->m, target_set_state, 2, META_TARGET_DRAINING), 0);
	/* move it out of both chains */
	assert_int_equal(META_CALL(f->m, chain_update, 0, 1, mem, 2, &epoch), 0);
	mem[0] = 3;
	assert_int_equal(META_CALL(f->m, chain_update, 1, 1, mem, 1, &epoch), 0);
	assert_int_equal(META_CALL(f->m, target_update, 2, META_TSET_STATE, &in), 0);
	assert_int_equal(META_CALL(f->m, targets_list, got, 4), 3);
	assert_int_equal(got[1].state, META_TARGET_DRAINED);
	/* a chain may not name it now */
	mem[0] = 2;
	assert_int_equal(META_CALL(f->m, chain_update, 1, 2, mem, 1, &epoch), -EINVAL);
	/* removed, then nothing changes it any more */
	assert_int_equal(META_CALL(f->m, target_set_state, 2, META_TARGET_REMOVED), 0);
	assert_int_equal(META_CALL(f->m, target_set_state, 2, META_TARGET_UP), -EINVAL);
	snprintf(in.pool, sizeof(in.pool), "other");
	assert_int_equal(META_CALL(f->m, target_update, 2, META_TSET_POOL, &in), -EINVAL);
	assert_int_equal(META_CALL(f->m, chain_update, 1, 2, mem, 1, &epoch), -EINVAL);
	assert_int_equal(META_CALL(f->m, targets_list, got, 4), 3);
	assert_int_equal(got[1].state, META_TARGET_REMOVED);
	assert_string_equal(got[1].pool, "ssd");
}

static void t_target_update(void **state)
{
	struct fx *f = *state;
	struct meta_target in, got[4];

	memset(&in, 0, sizeof(in));
	snprintf(in.pool, sizeof(in.pool), "fast");
	snprintf(in.node, sizeof(in.node), "rack1-host7");
	snprintf(in.media, sizeof(in.media), "nvme");
	in.state = META_TARGET_OFFLINE;
	/* only what the mask names changes */
	assert_int_equal(META_CALL(f->m, target_update, 3, META_TSET_POOL, &in), 0);
	assert_int_equal(META_CALL(f->m, targets_list, got, 4), 3);
	assert_string_equal(got[2].pool, "fast");
	assert_string_equal(got[2].node, "node2");
	assert_string_equal(got[2].media, "hdd");
	assert_int_equal(got[2].state, META_TARGET_UP);
	assert_int_equal(META_CALL(f->m, target_update, 3,
				   META_TSET_NODE | META_TSET_MEDIA | META_TSET_STATE, &in),
			 0);
	assert_int_equal(META_CALL(f->m, targets_list, got, 4), 3);
	assert_string_equal(got[2].node, "rack1-host7");
	assert_string_equal(got[2].media, "nvme");
	assert_int_equal(got[2].state, META_TARGET_OFFLINE);
	/* bad requests change nothing */
	snprintf(in.pool, sizeof(in.pool), "-x");
	assert_int_equal(META_CALL(f->m, target_update, 3, META_TSET_POOL, &in), -EINVAL);
	snprintf(in.pool, sizeof(in.pool), "UPPER");
	assert_int_equal(META_CALL(f->m, target_update, 3, META_TSET_POOL, &in), -EINVAL);
	in.pool[0] = '\0';
	assert_int_equal(META_CALL(f->m, target_update, 3, META_TSET_POOL, &in), -EINVAL);
	snprintf(in.pool, sizeof(in.pool), "ok");
	assert_int_equal(META_CALL(f->m, target_update, 3, 0x100, &in), -EINVAL);
	assert_int_equal(META_CALL(f->m, target_update, 9, META_TSET_POOL, &in), -ENOENT);
	assert_int_equal(META_CALL(f->m, targets_list, got, 4), 3);
	assert_string_equal(got[2].pool, "fast");
	assert_true(meta_pool_name_ok("a234567890123456789012345678901"));
	assert_false(meta_pool_name_ok("a2345678901234567890123456789012"));
	assert_true(meta_pool_name_ok("nvme"));
	assert_false(meta_pool_name_ok(".x"));
	assert_false(meta_pool_name_ok("a/b"));
}

/* A volume formatted by the first release (schema 1) keeps working: a read-only open reads it
 * untouched; a writable open upgrades it in place, keeping every row. */
static void t_migrate_v1(void **state)
{
	struct fx *f = *state;
	struct meta_target got[4];
	struct meta_chain c[2];
	struct meta_volume v;
	struct meta *m = NULL;
	char err[512] = "", host[META_NODE_MAX] = "";
	size_t len0 = 0, len1 = 0;
	void *before, *after;

	if (!E->make_old)
		skip();
	assert_int_equal(E->make_old(f->dir), 0);
	before = E->file ? read_file(f->file, &len0) : NULL;
	/* read-only: refused, and the file is left exactly as it was */
	assert_int_equal(meta_open(f->url, META_O_RDONLY, &m, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "needs an upgrade"));
	if (before) {
		after = read_file(f->file, &len1);
		assert_int_equal(len0, len1);
		assert_memory_equal(before, after, len0);
		free(after);
		free(before);
	}

	assert_int_equal(meta_open(f->url, 0, &m, err, sizeof(err)), 0);
	assert_int_equal(META_CALL(m, volume_get, &v), 0);
	assert_string_equal(v.name, "old");
	assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
	assert_int_equal(META_CALL(m, targets_list, got, 4), 2);
	for (int i = 0; i < 2; i++) {
		assert_string_equal(got[i].pool, "dir");
		assert_string_equal(got[i].media, "dir");
		assert_string_equal(got[i].node, host);
	}
	assert_int_equal(got[0].state, META_TARGET_UP);
	assert_int_equal(got[1].state, META_TARGET_OFFLINE);
	assert_int_equal(META_CALL(m, chains_list, c, 2), 1);
	assert_int_equal(c[0].epoch, 5);
	assert_int_equal(c[0].nmembers, 2);
	/* the new operations work on it */
	struct meta_target t = new_target("dir:/srv/c", "dir");
	uint32_t id = 0;
	assert_int_equal(META_CALL(m, target_add, &t, &id), 0);
	assert_int_equal(id, 3);
	assert_int_equal(META_CALL(m, sync), 0);
	meta_close(m);
	/* and a second open finds it migrated (nothing to do) */
	assert_int_equal(meta_open(f->url, 0, &m, err, sizeof(err)), 0);
	assert_int_equal(META_CALL(m, targets_list, got, 4), 3);
	assert_string_equal(got[2].pool, "dir");
	assert_int_equal(META_CALL(m, check, false, NULL, NULL), 0);
	meta_close(m);
}

static void t_chains(void **state)
{
	struct fx *f = *state;
	struct meta_chain c[2];
	uint32_t mem[3] = {3, 1};
	uint64_t epoch = 0;

	assert_int_equal(META_CALL(f->m, chains_list, c, 2), 2);
	assert_int_equal(c[0].id, 0);
	assert_int_equal(c[0].epoch, 1);
	assert_int_equal(c[0].nmembers, 2);
	assert_int_equal(c[0].members[0], 1);
	assert_int_equal(c[0].members[1], 2);
	assert_int_equal(c[1].members[0], 2);
	assert_int_equal(c[1].members[1], 3);
	assert_int_equal(META_CALL(f->m, chains_list, NULL, 0), 2);
	/* fewer slots than chains: the first filled whole, every chain counted, nothing beyond */
	memset(c, 0xa5, sizeof(c));
	assert_int_equal(META_CALL(f->m, chains_list, c, 1), 2);
	assert_int_equal(c[0].id, 0);
	assert_int_equal(c[0].nmembers, 2);
	assert_int_equal(c[0].members[1], 2);
	assert_int_equal(c[1].id, 0xa5a5a5a5);

	/* META-6: right epoch -> replaced, epoch + 1 */
	assert_int_equal(META_CALL(f->m, chain_update, 0, 1, mem, 2, &epoch), 0);
	assert_int_equal(epoch, 2);
	assert_int_equal(META_CALL(f->m, chains_list, c, 2), 2);
	assert_int_equal(c[0].epoch, 2);
	assert_int_equal(c[0].nmembers, 2);
	assert_int_equal(c[0].members[0], 3); /* order kept: [0] is the primary */
	assert_int_equal(c[0].members[1], 1);
	assert_int_equal(c[1].epoch, 1); /* the other chain untouched */

	/* stale epoch: -ESTALE, nothing changes, ret untouched */
	epoch = 77;
	mem[0] = 2;
	assert_int_equal(META_CALL(f->m, chain_update, 0, 1, mem, 1, &epoch), -ESTALE);
	assert_int_equal(epoch, 77);
	assert_int_equal(META_CALL(f->m, chain_update, 0, 3, mem, 1, &epoch), -ESTALE);
	assert_int_equal(META_CALL(f->m, chains_list, c, 2), 2);
	assert_int_equal(c[0].epoch, 2);
	assert_int_equal(c[0].nmembers, 2);
	assert_int_equal(c[0].members[0], 3);

	/* shrink to one member; ret_epoch may be NULL */
	assert_int_equal(META_CALL(f->m, chain_update, 0, 2, mem, 1, NULL), 0);
	assert_int_equal(META_CALL(f->m, chains_list, c, 2), 2);
	assert_int_equal(c[0].epoch, 3);
	assert_int_equal(c[0].nmembers, 1);
	assert_int_equal(c[0].members[0], 2);

	/* bad requests change nothing */
	assert_int_equal(META_CALL(f->m, chain_update, 9, 1, mem, 1, &epoch), -ENOENT);
	assert_int_equal(META_CALL(f->m, chain_update, 0, 3, mem, 0, &epoch), -EINVAL);
	assert_int_equal(META_CALL(f->m, chain_update, 0, 3, mem, META_MAX_REPLICAS + 1, &epoch),
			 -EINVAL);
	mem[0] = 42; /* no such target */
	assert_int_equal(META_CALL(f->m, chain_update, 0, 3, mem, 1, &epoch), -EINVAL);
	mem[0] = 1;
	mem[1] = 1; /* twice */
	assert_int_equal(META_CALL(f->m, chain_update, 0, 3, mem, 2, &epoch), -EINVAL);
	assert_int_equal(META_CALL(f->m, chains_list, c, 2), 2);
	assert_int_equal(c[0].epoch, 3);
	assert_int_equal(c[0].nmembers, 1);
	assert_int_equal(c[0].members[0], 2);

	/* survives reopen */
	fx_reopen(f);
	assert_int_equal(META_CALL(f->m, chains_list, c, 2), 2);
	assert_int_equal(c[0].epoch, 3);
}

/* ---- namespace ------------------------------------------------------------------------------ */

static void t_root(void **state)
{
	struct fx *f = *state;
	struct meta_attr a;

	a = get(f, META_ROOT_INO);
	assert_true(S_ISDIR(a.mode));
	assert_int_equal(a.nlink, 2);
	assert_int_equal(META_CALL(f->m, getattr, 0, &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, getattr, 999999, &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, getattr, UINT64_MAX, &a), -ENOENT);
	assert_int_equal(count_dir(f, META_ROOT_INO), 0);
}

static void t_mknod_types(void **state)
{
	struct fx *f = *state;
	struct meta_attr in, a, p0, p;
	uint64_t ino;

	p0 = get(f, META_ROOT_INO);
	/* regular file */
	in = attr_in(f, S_IFREG | 0640);
	in.btime_ns = in.ctime_ns - 5;
	in.atime_ns = in.ctime_ns - 7;
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "file", &in, NULL, &a), 0);
	assert_true(a.ino > META_ROOT_INO);
	assert_int_equal(a.mode, S_IFREG | 0640);
	assert_int_equal(a.nlink, 1);
	assert_int_equal(a.uid, 1000);
	assert_int_equal(a.gid, 100);
	assert_int_equal(a.size, 0);
	assert_int_equal(a.ctime_ns, in.ctime_ns);
	assert_int_equal(a.btime_ns, in.btime_ns);
	assert_int_equal(a.atime_ns, in.atime_ns);
	assert_true(a.generation != 0);
	attr_equal(get(f, a.ino), a);
	p = get(f, META_ROOT_INO);
	assert_int_equal(p.nlink, p0.nlink); /* a file adds no link to its parent */
	assert_int_equal(p.mtime_ns, in.ctime_ns);
	assert_int_equal(p.ctime_ns, in.ctime_ns);

	/* directory: nlink 2, parent nlink + 1 */
	in = attr_in(f, S_IFDIR | 0700);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "dir", &in, NULL, &a), 0);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.mode, S_IFDIR | 0700);
	p = get(f, META_ROOT_INO);
	assert_int_equal(p.nlink, p0.nlink + 1);
	assert_int_equal(p.mtime_ns, in.ctime_ns);
	ino = a.ino;

	/* symlink inside it: size = target length */
	in = attr_in(f, S_IFLNK | 0777);
	assert_int_equal(META_CALL(f->m, mknod, ino, "ln", &in, "../file", &a), 0);
	assert_true(S_ISLNK(a.mode));
	assert_int_equal(a.size, 7);
	assert_int_equal(a.nlink, 1);
	assert_int_equal(get(f, ino).nlink, 2);
	/* symlink with type 0 in mode */
	in = attr_in(f, 0777);
	assert_int_equal(META_CALL(f->m, mknod, ino, "ln2", &in, "x", &a), 0);
	assert_true(S_ISLNK(a.mode));

	/* fifo, socket, devices; rdev kept only for devices */
	in = attr_in(f, S_IFIFO | 0600);
	in.rdev = 5;
	assert_int_equal(META_CALL(f->m, mknod, ino, "fifo", &in, NULL, &a), 0);
	assert_true(S_ISFIFO(a.mode));
	assert_int_equal(a.rdev, 0);
	in = attr_in(f, S_IFSOCK | 0600);
	assert_int_equal(META_CALL(f->m, mknod, ino, "sock", &in, NULL, &a), 0);
	assert_true(S_ISSOCK(a.mode));
	in = attr_in(f, S_IFCHR | 0600);
	in.rdev = 0x10203;
	assert_int_equal(META_CALL(f->m, mknod, ino, "chr", &in, NULL, &a), 0);
	assert_int_equal(a.rdev, 0x10203);
	assert_int_equal(get(f, a.ino).rdev, 0x10203);
	in = attr_in(f, S_IFBLK | 0600);
	in.rdev = UINT64_MAX; /* full 64 bits survive */
	assert_int_equal(META_CALL(f->m, mknod, ino, "blk", &in, NULL, &a), 0);
	assert_true(get(f, a.ino).rdev == UINT64_MAX);
	/* type 0 = regular file (mknod(2)) */
	in = attr_in(f, 0644);
	assert_int_equal(META_CALL(f->m, mknod, ino, "plain", &in, NULL, &a), 0);
	assert_true(S_ISREG(a.mode));
	/* ret may be NULL */
	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(f->m, mknod, ino, "noret", &in, NULL, NULL), 0);
	assert_int_equal(count_dir(f, ino), 8);
	/* setuid/setgid/sticky bits are kept */
	in = attr_in(f, S_IFDIR | 01777);
	assert_int_equal(META_CALL(f->m, mknod, ino, "tmp", &in, NULL, &a), 0);
	assert_int_equal(a.mode, S_IFDIR | 01777);
}

static void t_mknod_errors(void **state)
{
	struct fx *f = *state;
	struct meta_attr in, p0, a;
	char name[META_NAME_MAX + 2], *longlink;
	uint64_t file;

	file = mkfile(f, META_ROOT_INO, "f");
	p0 = get(f, META_ROOT_INO);
	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "f", &in, NULL, &a), -EEXIST);
	in.mode = S_IFDIR | 0755;
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "f", &in, NULL, &a), -EEXIST);
	in.mode = S_IFREG | 0644;
	assert_int_equal(META_CALL(f->m, mknod, file, "x", &in, NULL, &a), -ENOTDIR);
	assert_int_equal(META_CALL(f->m, mknod, 424242, "x", &in, NULL, &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "", &in, NULL, &a), -EINVAL);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "a/b", &in, NULL, &a), -EINVAL);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, ".", &in, NULL, &a), -EEXIST);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "..", &in, NULL, &a), -EEXIST);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, NULL, &in, NULL, &a), -EINVAL);
	memset(name, 'n', sizeof(name));
	name[META_NAME_MAX + 1] = '\0';
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, name, &in, NULL, &a), -ENAMETOOLONG);
	name[META_NAME_MAX] = '\0';
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, name, &in, NULL, &a), 0);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, name), a.ino);
	/* symlinks */
	in.mode = S_IFLNK | 0777;
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "l", &in, NULL, &a), -EINVAL);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "l", &in, "", &a), -ENOENT);
	longlink = malloc(META_SYMLINK_MAX + 2);
	memset(longlink, 'x', META_SYMLINK_MAX + 1);
	longlink[META_SYMLINK_MAX + 1] = '\0';
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "l", &in, longlink, &a),
			 -ENAMETOOLONG);
	longlink[META_SYMLINK_MAX] = '\0';
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "l", &in, longlink, &a), 0);
	assert_int_equal(a.size, META_SYMLINK_MAX);
	free(longlink);
	in.mode = S_IFREG | 0644;
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "l2", &in, "target", &a), -EINVAL);
	in.mode = 0170000; /* not a type */
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "bad", &in, NULL, &a), -EINVAL);
	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "bad", NULL, NULL, &a), -EINVAL);
	/* failures left nothing behind */
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "bad"), 0);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "l2"), 0);
	assert_int_equal(count_dir(f, META_ROOT_INO), 3);
	assert_int_equal(get(f, META_ROOT_INO).nlink, p0.nlink);
}

static void t_ino_never_reused(void **state)
{
	struct fx *f = *state;
	struct meta_attr a;
	uint64_t i1, i2, i3;

	i1 = mkfile(f, META_ROOT_INO, "a");
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "a", tick(f), &a), 0);
	assert_int_equal(META_CALL(f->m, purge, i1), 0);
	i2 = mkfile(f, META_ROOT_INO, "a");
	assert_true(i2 > i1);
	/* an empty directory deleted by rmdir is gone at once: its number stays burnt too */
	i3 = mkdir_(f, META_ROOT_INO, "d");
	assert_int_equal(META_CALL(f->m, rmdir, META_ROOT_INO, "d", tick(f), &a), 0);
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "a", tick(f), &a), 0);
	assert_int_equal(META_CALL(f->m, purge, i2), 0);
	/* across a reopen, after the highest number was deleted */
	fx_reopen(f);
	assert_true(mkfile(f, META_ROOT_INO, "b") > i3);
}

static void t_lookup(void **state)
{
	struct fx *f = *state;
	struct meta_attr a;
	uint64_t d, x;

	d = mkdir_(f, META_ROOT_INO, "d");
	x = mkfile(f, d, "x");
	assert_int_equal(META_CALL(f->m, lookup, d, "x", &a), 0);
	assert_int_equal(a.ino, x);
	assert_true(S_ISREG(a.mode));
	assert_int_equal(META_CALL(f->m, lookup, d, "y", &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, lookup, x, "y", &a), -ENOTDIR);
	assert_int_equal(META_CALL(f->m, lookup, 999999, "y", &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, lookup, META_ROOT_INO, "no-such-name", &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, lookup, 31337, "y", &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, lookup, d, "", &a), -EINVAL);
	assert_int_equal(META_CALL(f->m, lookup, d, ".", &a), -ENOENT);
	/* names are bytes, compared exactly */
	assert_int_equal(META_CALL(f->m, lookup, d, "X", &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, lookup, META_ROOT_INO, "d", &a), 0);
	assert_int_equal(a.ino, d);
}

static void t_names_are_bytes(void **state)
{
	struct fx *f = *state;
	static const char *names[] = {"caf\xc3\xa9", "\xff\xfe", "new\nline", "tab\there", " lead",
				      "trail ",	     "...",	 "-",	      "%41"};
	struct list l;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		mkfile(f, META_ROOT_INO, names[i]);
	list_dir(f, META_ROOT_INO, 0, &l);
	assert_int_equal(l.n, sizeof(names) / sizeof(names[0]));
	for (size_t i = 0; i < l.n; i++) {
		assert_string_equal(l.e[i].name, names[i]);
		assert_int_equal(lookup_ino(f, META_ROOT_INO, names[i]), l.e[i].ino);
	}
	list_free(&l);
}

static void t_setattr(void **state)
{
	struct fx *f = *state;
	struct meta_attr in, a, before;
	uint64_t x, d;

	x = mkfile(f, META_ROOT_INO, "x");
	d = mkdir_(f, META_ROOT_INO, "d");
	before = get(f, x);
	memset(&in, 0, sizeof(in));

	in.mode = S_IFDIR | 04755; /* type bits are ignored */
	assert_int_equal(META_CALL(f->m, setattr, x, META_SET_MODE, &in, &a), 0);
	assert_int_equal(a.mode, S_IFREG | 04755);
	assert_int_equal(a.ctime_ns, before.ctime_ns); /* no ctime without META_SET_CTIME */
	in.uid = 7;
	in.gid = 8;
	assert_int_equal(META_CALL(f->m, setattr, x, META_SET_UID | META_SET_GID, &in, &a), 0);
	assert_int_equal(a.uid, 7);
	assert_int_equal(a.gid, 8);
	assert_int_equal(a.mode, S_IFREG | 04755);
	in.size = 1ull << 40;
	in.mtime_ns = 111;
	in.ctime_ns = 222;
	in.atime_ns = 333;
	assert_int_equal(META_CALL(f->m, setattr, x,
				   META_SET_SIZE | META_SET_MTIME | META_SET_CTIME | META_SET_ATIME,
				   &in, &a),
			 0);
	assert_int_equal(a.size, 1ull << 40);
	assert_int_equal(a.mtime_ns, 111);
	assert_int_equal(a.ctime_ns, 222);
	assert_int_equal(a.atime_ns, 333);
	assert_int_equal(a.btime_ns, before.btime_ns);
	in.flags = META_IF_WDIRTY;
	assert_int_equal(META_CALL(f->m, setattr, x, META_SET_FLAGS, &in, NULL), 0);
	a = get(f, x);
	assert_int_equal(a.flags, META_IF_WDIRTY);
	assert_int_equal(a.uid, 7);
	assert_int_equal(a.size, 1ull << 40);
	assert_int_equal(a.nlink, 1);
	assert_int_equal(a.ino, x);
	assert_int_equal(a.generation, before.generation);
	/* empty mask: just the attributes */
	assert_int_equal(META_CALL(f->m, setattr, x, 0, NULL, &a), 0);
	assert_int_equal(a.uid, 7);
	/* errors */
	assert_int_equal(META_CALL(f->m, setattr, d, META_SET_SIZE, &in, &a), -EISDIR);
	assert_int_equal(META_CALL(f->m, setattr, 999999, META_SET_MODE, &in, &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, setattr, x, 0x8000, &in, &a), -EINVAL);
	in.size = (uint64_t)INT64_MAX + 1;
	assert_int_equal(META_CALL(f->m, setattr, x, META_SET_SIZE, &in, &a), -EFBIG);
	assert_int_equal(get(f, x).size, 1ull << 40);
}

static void t_link(void **state)
{
	struct fx *f = *state;
	struct meta_attr a;
	int64_t now;
	uint64_t x, d, d2;

	x = mkfile(f, META_ROOT_INO, "x");
	d = mkdir_(f, META_ROOT_INO, "d");
	now = tick(f);
	assert_int_equal(META_CALL(f->m, link, x, d, "y", now, &a), 0);
	assert_int_equal(a.ino, x);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.ctime_ns, now);
	assert_int_equal(get(f, x).nlink, 2);
	assert_int_equal(get(f, d).mtime_ns, now);
	assert_int_equal(get(f, d).ctime_ns, now);
	assert_int_equal(get(f, d).nlink, 2); /* a file link adds no dir link */
	assert_int_equal(lookup_ino(f, d, "y"), x);

	assert_int_equal(META_CALL(f->m, link, d, META_ROOT_INO, "dd", tick(f), &a), -EPERM);
	assert_int_equal(META_CALL(f->m, link, x, d, "y", tick(f), &a), -EEXIST);
	assert_int_equal(META_CALL(f->m, link, x, x, "z", tick(f), &a), -ENOTDIR);
	assert_int_equal(META_CALL(f->m, link, 999999, d, "z", tick(f), &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, link, x, 999999, "z", tick(f), &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, link, x, d, ".", tick(f), &a), -EEXIST);
	assert_int_equal(get(f, x).nlink, 2);

	/* unlink one name: the other still works */
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "x", tick(f), &a), 0);
	assert_int_equal(a.nlink, 1);
	assert_false(in_orphans(f, x));
	assert_int_equal(lookup_ino(f, d, "y"), x);
	d2 = mkdir_(f, d, "sub");
	assert_int_equal(META_CALL(f->m, link, x, d2, "w", tick(f), NULL), 0);
	assert_int_equal(get(f, x).nlink, 2);
}

/* mknod in a setgid directory: the directory's group, and for a directory its setgid bit,
 * whatever group the caller gave; elsewhere the caller's group. */
static void t_mknod_setgid(void **state)
{
	struct fx *f = *state;
	struct meta_attr in, a;
	uint64_t g, p;

	g = mk(f, META_ROOT_INO, "g", S_IFDIR | S_ISGID | 0775);
	in = attr_in(f, S_IFREG | 0644); /* gid 100 */
	in.mode = S_IFDIR | 0775;
	in.gid = 42;
	assert_int_equal(META_CALL(f->m, setattr, g, META_SET_GID, &in, NULL), 0);

	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(f->m, mknod, g, "f", &in, NULL, &a), 0);
	assert_int_equal(a.gid, 42);
	assert_int_equal(a.mode, S_IFREG | 0644);
	assert_int_equal(get(f, a.ino).gid, 42);
	in = attr_in(f, S_IFDIR | 0755);
	assert_int_equal(META_CALL(f->m, mknod, g, "sub", &in, NULL, &a), 0);
	assert_int_equal(a.gid, 42);
	assert_int_equal(a.mode, S_IFDIR | S_ISGID | 0755);
	assert_int_equal(get(f, a.ino).mode, S_IFDIR | S_ISGID | 0755);
	in = attr_in(f, S_IFLNK | 0777);
	assert_int_equal(META_CALL(f->m, mknod, a.ino, "l", &in, "target", &a), 0);
	assert_int_equal(a.gid, 42);

	p = mkdir_(f, META_ROOT_INO, "plain");
	in = attr_in(f, S_IFDIR | 0755);
	assert_int_equal(META_CALL(f->m, mknod, p, "d", &in, NULL, &a), 0);
	assert_int_equal(a.gid, 100);
	assert_int_equal(a.mode, S_IFDIR | 0755);
	/* the parent must still be a directory */
	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(f->m, mknod, mkfile(f, p, "x"), "y", &in, NULL, &a), -ENOTDIR);
}

static void t_unlink_orphan_purge(void **state)
{
	struct fx *f = *state;
	struct meta_attr a, p;
	uint64_t x, d;
	int64_t now;
	char v[8];

	x = mkfile(f, META_ROOT_INO, "x");
	d = mkdir_(f, META_ROOT_INO, "d");
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.k", "v", 1, 0), 0);
	now = tick(f);
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "x", now, &a), 0);
	assert_int_equal(a.ino, x);
	assert_int_equal(a.nlink, 0);
	assert_int_equal(a.ctime_ns, now);
	p = get(f, META_ROOT_INO);
	assert_int_equal(p.mtime_ns, now);
	assert_int_equal(p.ctime_ns, now);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "x"), 0);
	/* META-3: the row stays until purge; an open file can still stat itself */
	a = get(f, x);
	assert_int_equal(a.nlink, 0);
	assert_true(in_orphans(f, x));
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.k", v, sizeof(v)), 1);
	/* orphans survive a reopen (a crash) */
	fx_reopen(f);
	assert_true(in_orphans(f, x));
	assert_int_equal(META_CALL(f->m, purge, x), 0);
	assert_int_equal(META_CALL(f->m, getattr, x, &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.k", v, sizeof(v)), -ENOENT);
	assert_false(in_orphans(f, x));
	assert_int_equal(META_CALL(f->m, purge, x), -ENOENT);

	x = mkfile(f, META_ROOT_INO, "y");
	assert_int_equal(META_CALL(f->m, purge, x), -EBUSY);
	assert_int_equal(META_CALL(f->m, purge, META_ROOT_INO), -EBUSY);
	assert_int_equal(META_CALL(f->m, purge, d), -EBUSY);
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "d", tick(f), &a), -EISDIR);
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "nope", tick(f), &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, unlink, x, "nope", tick(f), &a), -ENOTDIR);
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "y", tick(f), NULL), 0);
	assert_int_equal(get(f, x).nlink, 0);
}

static void t_rmdir(void **state)
{
	struct fx *f = *state;
	struct meta_attr a, p;
	uint64_t d, e, x;
	int64_t now;

	d = mkdir_(f, META_ROOT_INO, "d");
	e = mkdir_(f, d, "e");
	x = mkfile(f, d, "x");
	assert_int_equal(get(f, META_ROOT_INO).nlink, 3);
	assert_int_equal(get(f, d).nlink, 3);
	assert_int_equal(META_CALL(f->m, rmdir, META_ROOT_INO, "d", tick(f), &a), -ENOTEMPTY);
	assert_int_equal(META_CALL(f->m, rmdir, d, "x", tick(f), &a), -ENOTDIR);
	assert_int_equal(META_CALL(f->m, rmdir, d, "nope", tick(f), &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, rmdir, x, "nope", tick(f), &a), -ENOTDIR);
	now = tick(f);
	assert_int_equal(META_CALL(f->m, rmdir, d, "e", now, &a), 0);
	assert_int_equal(a.ino, e);
	assert_int_equal(a.nlink, 0);
	assert_int_equal(META_CALL(f->m, getattr, e, &a), -ENOENT); /* row deleted */
	p = get(f, d);
	assert_int_equal(p.nlink, 2);
	assert_int_equal(p.mtime_ns, now);
	assert_int_equal(p.ctime_ns, now);
	assert_int_equal(META_CALL(f->m, unlink, d, "x", tick(f), NULL), 0);
	assert_int_equal(META_CALL(f->m, rmdir, META_ROOT_INO, "d", tick(f), NULL), 0);
	assert_int_equal(get(f, META_ROOT_INO).nlink, 2);
	assert_int_equal(count_dir(f, META_ROOT_INO), 0);
}

static void t_rename_simple(void **state)
{
	struct fx *f = *state;
	struct meta_attr rep, a;
	uint64_t x;
	int64_t now;

	x = mkfile(f, META_ROOT_INO, "x");
	now = tick(f);
	memset(&rep, 0xff, sizeof(rep));
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "y", 0, now, &rep), 0);
	assert_int_equal(rep.ino, 0); /* nothing replaced */
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "x"), 0);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "y"), x);
	a = get(f, x);
	assert_int_equal(a.ctime_ns, now);
	assert_int_equal(a.nlink, 1);
	a = get(f, META_ROOT_INO);
	assert_int_equal(a.mtime_ns, now);
	assert_int_equal(a.ctime_ns, now);
	assert_int_equal(a.nlink, 2);
	/* ret_replaced may be NULL */
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "y", META_ROOT_INO, "z", 0, tick(f), NULL), 0);
	assert_int_equal(count_dir(f, META_ROOT_INO), 1);
}

static void t_rename_dir_across(void **state)
{
	struct fx *f = *state;
	struct meta_attr a;
	uint64_t A, B, s, x;
	int64_t now;

	A = mkdir_(f, META_ROOT_INO, "A");
	B = mkdir_(f, META_ROOT_INO, "B");
	s = mkdir_(f, A, "s");
	x = mkfile(f, A, "x");
	assert_int_equal(get(f, A).nlink, 3);
	now = tick(f);
	assert_int_equal(META_CALL(f->m, rename, A, "s", B, "t", 0, now, NULL), 0);
	a = get(f, A);
	assert_int_equal(a.nlink, 2);
	assert_int_equal(a.mtime_ns, now);
	assert_int_equal(a.ctime_ns, now);
	a = get(f, B);
	assert_int_equal(a.nlink, 3);
	assert_int_equal(a.mtime_ns, now);
	assert_int_equal(get(f, s).ctime_ns, now);
	assert_int_equal(get(f, s).nlink, 2);
	assert_int_equal(lookup_ino(f, B, "t"), s);
	/* a file across: no link counts change */
	assert_int_equal(META_CALL(f->m, rename, A, "x", s, "x", 0, tick(f), NULL), 0);
	assert_int_equal(get(f, A).nlink, 2);
	assert_int_equal(get(f, s).nlink, 2);
	assert_int_equal(lookup_ino(f, s, "x"), x);
	/* a directory up to the root */
	assert_int_equal(META_CALL(f->m, rename, B, "t", META_ROOT_INO, "t", 0, tick(f), NULL), 0);
	assert_int_equal(get(f, B).nlink, 2);
	assert_int_equal(get(f, META_ROOT_INO).nlink, 5);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_rename_replace_file(void **state)
{
	struct fx *f = *state;
	struct meta_attr rep;
	uint64_t x, y, z;
	int64_t now;

	x = mkfile(f, META_ROOT_INO, "x");
	y = mkfile(f, META_ROOT_INO, "y");
	now = tick(f);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "y", 0, now, &rep), 0);
	assert_int_equal(rep.ino, y);
	assert_int_equal(rep.nlink, 0);
	assert_int_equal(rep.ctime_ns, now);
	assert_int_equal(get(f, y).nlink, 0); /* orphan, META-3 */
	assert_true(in_orphans(f, y));
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "y"), x);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "x"), 0);
	assert_int_equal(count_dir(f, META_ROOT_INO), 1);

	/* replaced file with another link: nlink 2 -> 1, not an orphan */
	z = mkfile(f, META_ROOT_INO, "z");
	assert_int_equal(META_CALL(f->m, link, z, META_ROOT_INO, "z2", tick(f), NULL), 0);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "y", META_ROOT_INO, "z", 0, tick(f), &rep), 0);
	assert_int_equal(rep.ino, z);
	assert_int_equal(rep.nlink, 1);
	assert_false(in_orphans(f, z));
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "z"), x);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "z2"), z);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_rename_replace_dir(void **state)
{
	struct fx *f = *state;
	struct meta_attr rep;
	uint64_t A, B, a, b;

	A = mkdir_(f, META_ROOT_INO, "A");
	B = mkdir_(f, META_ROOT_INO, "B");
	a = mkdir_(f, A, "a");
	b = mkdir_(f, B, "b");
	mkfile(f, a, "content");
	/* a over the empty b, across parents */
	assert_int_equal(META_CALL(f->m, rename, A, "a", B, "b", 0, tick(f), &rep), 0);
	assert_int_equal(rep.ino, b);
	assert_int_equal(rep.nlink, 0);
	assert_int_equal(META_CALL(f->m, getattr, b, &rep), -ENOENT); /* deleted row */
	assert_int_equal(get(f, A).nlink, 2);
	assert_int_equal(get(f, B).nlink, 3); /* lost b, gained a */
	assert_int_equal(lookup_ino(f, B, "b"), a);
	assert_int_equal(count_dir(f, a), 1);
	/* same parent */
	b = mkdir_(f, B, "c");
	assert_int_equal(get(f, B).nlink, 4);
	assert_int_equal(META_CALL(f->m, rename, B, "c", B, "b", 0, tick(f), &rep),
			 -ENOTEMPTY); /* b (= a) has content */
	assert_int_equal(META_CALL(f->m, rename, B, "b", B, "c", 0, tick(f), &rep), 0);
	assert_int_equal(rep.ino, b);
	assert_int_equal(get(f, B).nlink, 3);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_rename_errors(void **state)
{
	struct fx *f = *state;
	struct meta_attr rep;
	char name[META_NAME_MAX + 2];
	uint64_t a, b, c, x, full;

	a = mkdir_(f, META_ROOT_INO, "a");
	b = mkdir_(f, a, "b");
	c = mkdir_(f, b, "c");
	x = mkfile(f, META_ROOT_INO, "x");
	full = mkdir_(f, META_ROOT_INO, "full");
	mkfile(f, full, "inside");
	mkdir_(f, META_ROOT_INO, "empty");

	/* type mismatches */
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "empty", 0, tick(f), &rep),
	    -EISDIR);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "empty", META_ROOT_INO, "x", 0, tick(f), &rep),
	    -ENOTDIR);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "empty", META_ROOT_INO, "full", 0,
				   tick(f), &rep),
			 -ENOTEMPTY);
	/* into its own subtree */
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "a", c, "a", 0, tick(f), &rep),
			 -EINVAL);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "a", b, "a2", 0, tick(f), &rep),
			 -EINVAL);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "a", a, "a2", 0, tick(f), &rep),
			 -EINVAL);
	assert_int_equal(META_CALL(f->m, rename, a, "b", c, "b", 0, tick(f), &rep), -EINVAL);
	/* missing things */
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "nope", META_ROOT_INO, "n2", 0, tick(f), &rep),
	    -ENOENT);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", 999999, "x", 0, tick(f), &rep),
			 -ENOENT);
	assert_int_equal(META_CALL(f->m, rename, 999999, "x", META_ROOT_INO, "x", 0, tick(f), &rep),
			 -ENOENT);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "a", x, "a", 0, tick(f), &rep),
			 -ENOTDIR);
	/* bad arguments */
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "y",
				   RENAME_NOREPLACE | RENAME_EXCHANGE, tick(f), &rep),
			 -EINVAL);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "y",
				   RENAME_WHITEOUT, tick(f), &rep),
			 -EINVAL);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "y", 0x100, tick(f), &rep),
	    -EINVAL);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "a/b", 0, tick(f), &rep),
	    -EINVAL);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "..", 0, tick(f), &rep),
	    -EINVAL);
	memset(name, 'n', sizeof(name));
	name[META_NAME_MAX + 1] = '\0';
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, name, 0, tick(f), &rep),
	    -ENAMETOOLONG);
	/* nothing moved */
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "x"), x);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "a"), a);
	assert_int_equal(lookup_ino(f, a, "b"), b);
	assert_int_equal(lookup_ino(f, b, "c"), c);
	assert_int_equal(get(f, META_ROOT_INO).nlink, 5);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
	/* moving a directory up out of its parent is fine */
	assert_int_equal(META_CALL(f->m, rename, b, "c", META_ROOT_INO, "c", 0, tick(f), &rep), 0);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_rename_noreplace(void **state)
{
	struct fx *f = *state;
	struct meta_attr rep;
	uint64_t x, y;

	x = mkfile(f, META_ROOT_INO, "x");
	y = mkfile(f, META_ROOT_INO, "y");
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "y",
				   RENAME_NOREPLACE, tick(f), &rep),
			 -EEXIST);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "y"), y);
	assert_int_equal(get(f, y).nlink, 1);
	/* as Linux: even onto itself */
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "x",
				   RENAME_NOREPLACE, tick(f), &rep),
			 -EEXIST);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "z",
				   RENAME_NOREPLACE, tick(f), &rep),
			 0);
	assert_int_equal(rep.ino, 0);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "z"), x);
}

static void t_rename_exchange(void **state)
{
	struct fx *f = *state;
	struct meta_attr rep;
	uint64_t x, y, A, B, d, sub;
	int64_t now;

	x = mkfile(f, META_ROOT_INO, "x");
	y = mkfile(f, META_ROOT_INO, "y");
	now = tick(f);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "y",
				   RENAME_EXCHANGE, now, &rep),
			 0);
	assert_int_equal(rep.ino, 0); /* nothing replaced */
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "x"), y);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "y"), x);
	assert_int_equal(get(f, x).nlink, 1);
	assert_int_equal(get(f, y).nlink, 1);
	assert_int_equal(get(f, x).ctime_ns, now);
	assert_int_equal(get(f, y).ctime_ns, now);
	assert_int_equal(get(f, META_ROOT_INO).mtime_ns, now);
	/* missing side */
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "nope",
				   RENAME_EXCHANGE, tick(f), &rep),
			 -ENOENT);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "nope", META_ROOT_INO, "x",
				   RENAME_EXCHANGE, tick(f), &rep),
			 -ENOENT);

	/* a directory and a file across parents: link counts follow the directory */
	A = mkdir_(f, META_ROOT_INO, "A");
	B = mkdir_(f, META_ROOT_INO, "B");
	d = mkdir_(f, A, "d");
	sub = mkdir_(f, d, "sub");
	assert_int_equal(get(f, A).nlink, 3);
	assert_int_equal(get(f, B).nlink, 2);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", B, "fileinB", 0, tick(f), NULL), 0);
	now = tick(f);
	assert_int_equal(META_CALL(f->m, rename, A, "d", B, "fileinB", RENAME_EXCHANGE, now, &rep),
			 0);
	assert_int_equal(lookup_ino(f, A, "d"), y);
	assert_int_equal(lookup_ino(f, B, "fileinB"), d);
	assert_true(S_ISREG(get(f, lookup_ino(f, A, "d")).mode));
	assert_int_equal(get(f, A).nlink, 2);
	assert_int_equal(get(f, B).nlink, 3);
	assert_int_equal(get(f, A).mtime_ns, now);
	assert_int_equal(get(f, B).mtime_ns, now);
	/* two directories (both non-empty: exchange does not care) */
	assert_int_equal(
	    META_CALL(f->m, rename, B, "fileinB", A, "d", RENAME_EXCHANGE, tick(f), NULL), 0);
	assert_int_equal(lookup_ino(f, A, "d"), d);
	assert_int_equal(get(f, A).nlink, 3);
	assert_int_equal(get(f, B).nlink, 2);
	mkfile(f, B, "bfile");
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "A", META_ROOT_INO, "B",
				   RENAME_EXCHANGE, tick(f), NULL),
			 0);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "B"), A);
	/* into own subtree, either direction */
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "B", d, "sub", RENAME_EXCHANGE, tick(f), NULL),
	    -EINVAL);
	assert_int_equal(
	    META_CALL(f->m, rename, d, "sub", META_ROOT_INO, "B", RENAME_EXCHANGE, tick(f), NULL),
	    -EINVAL);
	assert_int_equal(lookup_ino(f, d, "sub"), sub);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_rename_self(void **state)
{
	struct fx *f = *state;
	struct meta_attr rep, before, p;
	uint64_t x, d;

	x = mkfile(f, META_ROOT_INO, "x");
	d = mkdir_(f, META_ROOT_INO, "d");
	before = get(f, x);
	p = get(f, META_ROOT_INO);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "x", 0, tick(f), &rep), 0);
	assert_int_equal(rep.ino, 0);
	assert_int_equal(get(f, x).ctime_ns, before.ctime_ns); /* a true no-op */
	assert_int_equal(get(f, META_ROOT_INO).mtime_ns, p.mtime_ns);
	assert_int_equal(
	    META_CALL(f->m, rename, META_ROOT_INO, "d", META_ROOT_INO, "d", 0, tick(f), &rep), 0);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", META_ROOT_INO, "x",
				   RENAME_EXCHANGE, tick(f), &rep),
			 0);
	/* two hard links of one inode: nothing happens, both names stay */
	assert_int_equal(META_CALL(f->m, link, x, d, "x2", tick(f), NULL), 0);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "x", d, "x2", 0, tick(f), &rep), 0);
	assert_int_equal(rep.ino, 0);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "x"), x);
	assert_int_equal(lookup_ino(f, d, "x2"), x);
	assert_int_equal(get(f, x).nlink, 2);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_readlink(void **state)
{
	struct fx *f = *state;
	struct meta_attr in = attr_in(f, S_IFLNK | 0777), a;
	char buf[64];
	uint64_t x;

	assert_int_equal(META_CALL(f->m, mknod, META_ROOT_INO, "l", &in, "/some/where", &a), 0);
	memset(buf, 'z', sizeof(buf));
	assert_int_equal(META_CALL(f->m, readlink, a.ino, buf, sizeof(buf)), 11);
	assert_string_equal(buf, "/some/where");
	assert_int_equal(META_CALL(f->m, readlink, a.ino, buf, 12), 11);
	assert_int_equal(META_CALL(f->m, readlink, a.ino, buf, 11), -ERANGE); /* no room for NUL */
	assert_int_equal(META_CALL(f->m, readlink, a.ino, buf, 0), -ERANGE);
	x = mkfile(f, META_ROOT_INO, "x");
	assert_int_equal(META_CALL(f->m, readlink, x, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(META_CALL(f->m, readlink, META_ROOT_INO, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(META_CALL(f->m, readlink, 999999, buf, sizeof(buf)), -ENOENT);
}

static void t_readdir_basic(void **state)
{
	struct fx *f = *state;
	static const char *names[] = {"e", "a", "d", "b", "c"};
	uint64_t inos[5], d, x;
	struct list l;

	d = mkdir_(f, META_ROOT_INO, "d");
	for (int i = 0; i < 5; i++)
		inos[i] = mk(f, d, names[i], i == 2 ? S_IFDIR | 0755 : S_IFREG | 0600);
	list_dir(f, d, 0, &l);
	assert_int_equal(l.n, 5);
	for (int i = 0; i < 5; i++) {
		/* creation order, not name order; offsets above the "." and ".." slots */
		assert_string_equal(l.e[i].name, names[i]);
		assert_int_equal(l.e[i].ino, inos[i]);
		assert_int_equal(l.e[i].mode, get(f, inos[i]).mode);
		assert_true(l.e[i].off > 2);
		if (i)
			assert_true(l.e[i].off > l.e[i - 1].off);
	}
	/* resume after the second entry; offsets 1 and 2 mean "from the start" */
	struct list r = {0};
	assert_int_equal(META_CALL(f->m, readdir, d, l.e[1].off, list_cb, &r), 0);
	assert_int_equal(r.n, 3);
	assert_string_equal(r.e[0].name, "d");
	list_free(&r);
	for (uint64_t off = 0; off <= 2; off++) {
		assert_int_equal(META_CALL(f->m, readdir, d, off, list_cb, &r), 0);
		assert_int_equal(r.n, 5);
		list_free(&r);
	}
	assert_int_equal(META_CALL(f->m, readdir, d, l.e[4].off, list_cb, &r), 0);
	assert_int_equal(r.n, 0);
	assert_int_equal(META_CALL(f->m, readdir, d, UINT64_MAX, list_cb, &r), 0);
	assert_int_equal(r.n, 0);
	/* the callback stops it */
	r.limit = 2;
	assert_int_equal(META_CALL(f->m, readdir, d, 0, list_cb, &r), 0);
	assert_int_equal(r.n, 2);
	list_free(&r);
	/* readdirplus: same entries, same offsets, attrs as getattr */
	assert_int_equal(META_CALL(f->m, readdirplus, d, 0, listplus_cb, &r), 0);
	assert_int_equal(r.n, 5);
	for (int i = 0; i < 5; i++) {
		struct meta_attr g = get(f, inos[i]);

		assert_string_equal(r.e[i].name, names[i]);
		assert_int_equal(r.e[i].off, l.e[i].off);
		attr_equal(r.e[i].attr, g);
	}
	list_free(&r);
	r.limit = 1;
	assert_int_equal(META_CALL(f->m, readdirplus, d, l.e[3].off, listplus_cb, &r), 0);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.e[0].name, "c");
	list_free(&r);
	/* errors */
	x = mkfile(f, META_ROOT_INO, "x");
	assert_int_equal(META_CALL(f->m, readdir, x, 0, list_cb, &r), -ENOTDIR);
	assert_int_equal(META_CALL(f->m, readdir, 999999, 0, list_cb, &r), -ENOENT);
	assert_int_equal(META_CALL(f->m, readdirplus, x, 0, listplus_cb, &r), -ENOTDIR);
	assert_int_equal(r.n, 0);
	list_free(&l);
}

/* Offsets stay valid while entries before and after the cursor are deleted and added. */
static void t_readdir_stable(void **state)
{
	struct fx *f = *state;
	char name[32];
	struct list l = {0};
	uint64_t d, off;
	bool seen[103] = {false}, deleted[103] = {false}, seen_new = false;

	d = mkdir_(f, META_ROOT_INO, "d");
	for (int i = 1; i <= 100; i++) {
		snprintf(name, sizeof(name), "%d", i);
		mkfile(f, d, name);
	}
	l.limit = 30;
	assert_int_equal(META_CALL(f->m, readdir, d, 0, list_cb, &l), 0);
	assert_int_equal(l.n, 30);
	assert_string_equal(l.e[29].name, "30");
	off = l.e[29].off;
	for (int i = 0; i < 30; i++)
		seen[atoi(l.e[i].name)] = true;
	list_free(&l);
	/* delete the entry at the cursor, the next one, one already seen, and one far ahead */
	static const int del[] = {30, 31, 10, 77};
	for (size_t i = 0; i < sizeof(del) / sizeof(del[0]); i++) {
		snprintf(name, sizeof(name), "%d", del[i]);
		assert_int_equal(META_CALL(f->m, unlink, d, name, tick(f), NULL), 0);
		deleted[del[i]] = true;
	}
	/* and add one: it comes after everything that exists */
	mkfile(f, d, "new");
	/* resume in small chunks, deleting ahead of the cursor as we go */
	for (;;) {
		struct list c = {0};
		int last = 0;

		c.limit = 7;
		assert_int_equal(META_CALL(f->m, readdir, d, off, list_cb, &c), 0);
		if (c.n == 0)
			break;
		for (size_t i = 0; i < c.n; i++) {
			if (strcmp(c.e[i].name, "new") == 0) {
				assert_false(seen_new);
				seen_new = true;
				continue;
			}
			last = atoi(c.e[i].name);
			assert_false(seen[last]);    /* never twice */
			assert_false(deleted[last]); /* never a deleted one */
			seen[last] = true;
		}
		assert_true(c.e[c.n - 1].off > off);
		off = c.e[c.n - 1].off;
		list_free(&c);
		if (last && last + 2 <= 100 && !deleted[last + 2]) {
			snprintf(name, sizeof(name), "%d", last + 2);
			assert_int_equal(META_CALL(f->m, unlink, d, name, tick(f), NULL), 0);
			deleted[last + 2] = true;
		}
	}
	assert_true(seen_new);
	/* every survivor was seen exactly once */
	for (int i = 1; i <= 100; i++)
		if (!deleted[i])
			assert_true(seen[i]);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void t_readdir_big(void **state)
{
	struct fx *f = *state;
	const char *env = getenv("BRAIDFS_META_BIG");
	/* a shared engine pays a WAL flush per create (~4 ms on a VM disk): fewer by default */
	int n = env ? atoi(env) : (E->ops->caps & META_CAP_SHARED) ? 2000 : 20000;
	char name[32];
	struct list l;
	uint64_t d;
	double t0, t1, t2, t3;

	d = mkdir_(f, META_ROOT_INO, "big");
	t0 = now_s();
	for (int i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "file-%07d", i);
		mkfile(f, d, name);
	}
	t1 = now_s();
	/* statfs pages through more inodes than one of its batches */
	struct meta_statfs sf;
	assert_int_equal(META_CALL(f->m, statfs, &sf), 0);
	assert_int_equal(sf.inodes, (uint64_t)n + 2);
	t1 = now_s();
	/* FUSE asks for a few dozen entries at a time: resume 100 at a time */
	list_dir(f, d, 100, &l);
	t2 = now_s();
	assert_int_equal(l.n, (size_t)n);
	for (int i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "file-%07d", i);
		assert_string_equal(l.e[i].name, name);
		if (i)
			assert_true(l.e[i].off > l.e[i - 1].off);
	}
	/* readdirplus, the whole directory in one call */
	struct list p = {0};
	assert_int_equal(META_CALL(f->m, readdirplus, d, 0, listplus_cb, &p), 0);
	t3 = now_s();
	assert_int_equal(p.n, (size_t)n);
	/* lookups, one transaction-free statement each */
	int nl = n < 2000 ? n : 2000;
	double t4 = now_s();
	for (int i = 0; i < nl; i++) {
		snprintf(name, sizeof(name), "file-%07d", i);
		assert_true(lookup_ino(f, d, name) != 0);
	}
	double t5 = now_s();
	print_message("    %d entries: create %.0f/s, lookup %.0f/s, readdir (100/call) %.1f ms, "
		      "readdirplus %.1f ms\n",
		      n, n / (t1 - t0), nl / (t5 - t4), (t2 - t1) * 1e3, (t3 - t2) * 1e3);
	/* linear, not quadratic: resuming must cost O(batch), not O(offset) */
	assert_true(t2 - t1 < 0.00025 * n + 0.5);

	/* delete ahead of the cursor while listing; each survivor is seen exactly once */
	char *seen = calloc((size_t)n, 1), *deleted = calloc((size_t)n, 1);
	uint64_t off = 0;

	assert_non_null(seen);
	assert_non_null(deleted);
	for (;;) {
		struct list c = {0};
		int last = -1;

		c.limit = 100;
		assert_int_equal(META_CALL(f->m, readdir, d, off, list_cb, &c), 0);
		if (c.n == 0)
			break;
		for (size_t i = 0; i < c.n; i++) {
			last = atoi(c.e[i].name + 5);
			assert_false(seen[last]);
			assert_false(deleted[last]);
			seen[last] = 1;
		}
		off = c.e[c.n - 1].off;
		list_free(&c);
		for (int k = last + 1; k < n && k < last + 150; k += 3) {
			if (deleted[k])
				continue;
			snprintf(name, sizeof(name), "file-%07d", k);
			assert_int_equal(META_CALL(f->m, unlink, d, name, tick(f), NULL), 0);
			deleted[k] = 1;
		}
	}
	for (int i = 0; i < n; i++)
		assert_true(seen[i] || deleted[i]);
	free(seen);
	free(deleted);
	list_free(&p);
	list_free(&l);
}

static void t_xattr(void **state)
{
	struct fx *f = *state;
	char buf[256], big[META_XATTR_SIZE_MAX + 1], name[META_XATTR_NAME_MAX + 2];
	static const char bin[] = {'a', 0, 'b', 0, 0};
	uint64_t x;
	int64_t c0;

	x = mkfile(f, META_ROOT_INO, "x");
	c0 = get(f, x).ctime_ns;
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.a", "hello", 5, 0), 0);
	assert_true(get(f, x).ctime_ns != c0); /* setxattr(2) changes ctime */
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.a", NULL, 0), 5); /* probe */
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.a", buf, 0), 5);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.a", buf, 4), -ERANGE);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.a", buf, 5), 5);
	assert_memory_equal(buf, "hello", 5);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.nope", buf, sizeof(buf)), -ENODATA);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.nope", NULL, 0), -ENODATA);

	/* flags */
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.a", "x", 1, XATTR_CREATE), -EEXIST);
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.b", "x", 1, XATTR_REPLACE), -ENODATA);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.b", NULL, 0), -ENODATA);
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.a", "bye", 3, XATTR_REPLACE), 0);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.a", buf, sizeof(buf)), 3);
	assert_memory_equal(buf, "bye", 3);
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.b", bin, sizeof(bin), XATTR_CREATE), 0);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.b", buf, sizeof(buf)), sizeof(bin));
	assert_memory_equal(buf, bin, sizeof(bin));
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.a", "z", 1, 0x10), -EINVAL);
	/* empty value */
	assert_int_equal(META_CALL(f->m, setxattr, x, "security.empty", "", 0, 0), 0);
	assert_int_equal(META_CALL(f->m, getxattr, x, "security.empty", buf, sizeof(buf)), 0);
	assert_int_equal(META_CALL(f->m, getxattr, x, "security.empty", NULL, 0), 0);

	/* list: NUL-separated, size probe, ERANGE */
	int want = (int)(sizeof("security.empty") + sizeof("user.a") + sizeof("user.b"));
	assert_int_equal(META_CALL(f->m, listxattr, x, NULL, 0), want);
	assert_int_equal(META_CALL(f->m, listxattr, x, buf, (size_t)want - 1), -ERANGE);
	memset(buf, 'q', sizeof(buf));
	assert_int_equal(META_CALL(f->m, listxattr, x, buf, sizeof(buf)), want);
	assert_memory_equal(buf, "security.empty\0user.a\0user.b\0", (size_t)want);

	/* remove */
	assert_int_equal(META_CALL(f->m, removexattr, x, "user.a"), 0);
	assert_int_equal(META_CALL(f->m, removexattr, x, "user.a"), -ENODATA);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.a", buf, sizeof(buf)), -ENODATA);
	assert_int_equal(META_CALL(f->m, listxattr, x, buf, sizeof(buf)), want - 7);

	/* limits */
	memset(big, 'v', sizeof(big));
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.big", big, META_XATTR_SIZE_MAX, 0), 0);
	assert_int_equal(META_CALL(f->m, getxattr, x, "user.big", NULL, 0), META_XATTR_SIZE_MAX);
	assert_int_equal(META_CALL(f->m, setxattr, x, "user.big", big, META_XATTR_SIZE_MAX + 1, 0),
			 -E2BIG);
	memset(name, 'n', sizeof(name));
	name[META_XATTR_NAME_MAX] = '\0';
	assert_int_equal(META_CALL(f->m, setxattr, x, name, "v", 1, 0), 0);
	name[META_XATTR_NAME_MAX] = 'n';
	name[META_XATTR_NAME_MAX + 1] = '\0';
	assert_int_equal(META_CALL(f->m, setxattr, x, name, "v", 1, 0), -ERANGE);
	assert_int_equal(META_CALL(f->m, getxattr, x, name, buf, sizeof(buf)), -ERANGE);
	assert_int_equal(META_CALL(f->m, setxattr, x, "", "v", 1, 0), -EINVAL);

	/* missing inode */
	assert_int_equal(META_CALL(f->m, setxattr, 999999, "user.a", "v", 1, 0), -ENOENT);
	assert_int_equal(META_CALL(f->m, getxattr, 999999, "user.a", buf, sizeof(buf)), -ENOENT);
	assert_int_equal(META_CALL(f->m, listxattr, 999999, buf, sizeof(buf)), -ENOENT);
	assert_int_equal(META_CALL(f->m, removexattr, 999999, "user.a"), -ENOENT);
	/* directories carry xattrs too; none listed is 0 */
	assert_int_equal(META_CALL(f->m, listxattr, META_ROOT_INO, NULL, 0), 0);
	assert_int_equal(META_CALL(f->m, setxattr, META_ROOT_INO, "user.d", "1", 1, 0), 0);
	assert_int_equal(META_CALL(f->m, getxattr, META_ROOT_INO, "user.d", buf, sizeof(buf)), 1);
	/* per inode */
	assert_int_equal(META_CALL(f->m, getxattr, META_ROOT_INO, "user.b", buf, sizeof(buf)),
			 -ENODATA);
}

static void t_orphans_wdirty(void **state)
{
	struct fx *f = *state;
	struct meta_attr in;
	struct list l = {0};
	char name[32];
	uint64_t x, y;

	x = mkfile(f, META_ROOT_INO, "x");
	y = mkfile(f, META_ROOT_INO, "y");
	assert_false(in_orphans(f, x));
	memset(&in, 0, sizeof(in));
	in.flags = META_IF_WDIRTY;
	assert_int_equal(META_CALL(f->m, setattr, x, META_SET_FLAGS, &in, NULL), 0);
	assert_true(in_orphans(f, x)); /* META-4: listed although linked */
	assert_false(in_orphans(f, y));
	assert_int_equal(META_CALL(f->m, purge, x), -EBUSY);
	in.flags = 0;
	assert_int_equal(META_CALL(f->m, setattr, x, META_SET_FLAGS, &in, NULL), 0);
	assert_false(in_orphans(f, x));

	/* more than any internal batch, in ino order */
	for (int i = 0; i < 700; i++) {
		snprintf(name, sizeof(name), "o%d", i);
		mkfile(f, META_ROOT_INO, name);
		assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, name, tick(f), NULL), 0);
	}
	assert_int_equal(META_CALL(f->m, orphans, inode_cb, &l), 0);
	assert_int_equal(l.n, 700);
	for (size_t i = 1; i < l.n; i++)
		assert_true(l.e[i].ino > l.e[i - 1].ino);
	for (size_t i = 0; i < l.n; i++)
		assert_int_equal(l.e[i].attr.nlink, 0);
	/* purging from the list (what a mount does after a crash) */
	for (size_t i = 0; i < l.n; i++)
		assert_int_equal(META_CALL(f->m, purge, l.e[i].ino), 0);
	list_free(&l);
	assert_int_equal(META_CALL(f->m, orphans, inode_cb, &l), 0);
	assert_int_equal(l.n, 0);
	list_free(&l);
}

static int stop_at_3(void *ctx, const struct meta_attr *a)
{
	int *n = ctx;

	(void)a;
	return ++*n == 3;
}

static void t_inodes_statfs(void **state)
{
	struct fx *f = *state;
	struct meta_statfs s0, s;
	struct meta_attr in;
	struct list l = {0};
	char name[32];
	uint64_t d, x;
	int n = 0;

	assert_int_equal(META_CALL(f->m, statfs, &s0), 0);
	assert_int_equal(s0.inodes, 1);
	assert_int_equal(s0.bytes, 0);
	d = mkdir_(f, META_ROOT_INO, "d");
	for (int i = 0; i < 600; i++) {
		snprintf(name, sizeof(name), "f%d", i);
		x = mkfile(f, d, name);
		memset(&in, 0, sizeof(in));
		in.size = (uint64_t)i * 1000;
		assert_int_equal(META_CALL(f->m, setattr, x, META_SET_SIZE, &in, NULL), 0);
	}
	assert_int_equal(META_CALL(f->m, statfs, &s), 0);
	assert_int_equal(s.inodes, 602);
	assert_int_equal(s.bytes, 1000ull * (599 * 600 / 2));
	/* a symlink's size is not file data */
	in = attr_in(f, S_IFLNK | 0777);
	assert_int_equal(META_CALL(f->m, mknod, d, "ln", &in, "abcdef", NULL), 0);
	assert_int_equal(META_CALL(f->m, statfs, &s), 0);
	assert_int_equal(s.bytes, 1000ull * (599 * 600 / 2));

	assert_int_equal(META_CALL(f->m, inodes, inode_cb, &l), 0);
	assert_int_equal(l.n, 603);
	assert_int_equal(l.e[0].ino, META_ROOT_INO);
	for (size_t i = 1; i < l.n; i++)
		assert_true(l.e[i].ino > l.e[i - 1].ino);
	list_free(&l);
	assert_int_equal(META_CALL(f->m, inodes, stop_at_3, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(META_CALL(f->m, inodes, NULL, NULL), -EINVAL);
}

static void t_sync(void **state)
{
	struct fx *f = *state;
	uint64_t x;

	assert_int_equal(META_CALL(f->m, sync), 0);
	assert_int_equal(META_CALL(f->m, sync), 0); /* nothing new: cheap */
	x = mkfile(f, META_ROOT_INO, "x");
	assert_int_equal(META_CALL(f->m, sync), 0);
	x = mkfile(f, META_ROOT_INO, "y");
	assert_int_equal(META_CALL(f->m, sync), 0);
	fx_reopen(f);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "y"), x);
	assert_int_equal(META_CALL(f->m, sync), 0);
}

/* fdatasync as the engines call it (linked with --wrap=fdatasync): held on its first call
 * while armed, noting the inode of the descriptor before and after the hold. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool armed, paused, go;
	ino_t before, after; /* 0: fstat failed */
} hold = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false, false, 0, 0};

int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
int __wrap_fdatasync(int fd)
{
	struct stat st;

	pthread_mutex_lock(&hold.mu);
	if (hold.armed) {
		hold.armed = false;
		hold.before = fstat(fd, &st) == 0 ? st.st_ino : 0;
		hold.paused = true;
		pthread_cond_broadcast(&hold.cv);
		while (!hold.go)
			pthread_cond_wait(&hold.cv, &hold.mu);
		hold.after = fstat(fd, &st) == 0 ? st.st_ino : 0;
	}
	pthread_mutex_unlock(&hold.mu);
	return __real_fdatasync(fd);
}

static void *sync_thread(void *arg)
{
	struct fx *f = arg;

	return (void *)(intptr_t)META_CALL(f->m, sync);
}

/* SQLite: a sync that finds the -wal path naming another file reopens it; a sync in its
 * fdatasync at that moment (the lock is not held there) keeps syncing the file it opened,
 * not a descriptor closed, or reused for another file, under it. */
static void t_sync_wal_replaced(void **state)
{
	struct fx *f = *state;
	char wal[PATH_MAX + 8], keep[PATH_MAX + 8];
	pthread_t t;
	void *ret;
	int fd;

	if (strcmp(E->name, "sqlite") != 0)
		skip(); /* knows the SQLite file layout */
	snprintf(wal, sizeof(wal), "%s-wal", f->file);
	snprintf(keep, sizeof(keep), "%s-keep", f->file);
	mkfile(f, META_ROOT_INO, "x"); /* something to sync */
	pthread_mutex_lock(&hold.mu);
	hold.armed = true;
	hold.paused = hold.go = false;
	pthread_mutex_unlock(&hold.mu);
	assert_int_equal(pthread_create(&t, NULL, sync_thread, f), 0);
	pthread_mutex_lock(&hold.mu);
	while (!hold.paused)
		pthread_cond_wait(&hold.cv, &hold.mu);
	pthread_mutex_unlock(&hold.mu);
	/* another file under the WAL's name: this sync drops the engine's descriptor */
	assert_int_equal(link(wal, keep), 0);
	assert_int_equal(unlink(wal), 0);
	fd = open(wal, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(META_CALL(f->m, sync), 0);
	assert_int_equal(rename(keep, wal), 0); /* the WAL back under its name */
	pthread_mutex_lock(&hold.mu);
	hold.go = true;
	pthread_cond_broadcast(&hold.cv);
	pthread_mutex_unlock(&hold.mu);
	assert_int_equal(pthread_join(t, &ret), 0);
	assert_int_equal((intptr_t)ret, 0);
	assert_true(hold.before != 0);
	assert_int_equal(hold.after, hold.before);
	/* and the engine's own descriptor follows the WAL again */
	mkfile(f, META_ROOT_INO, "y");
	assert_int_equal(META_CALL(f->m, sync), 0);
}

/* SQLite's default VFS under another name, its xSync counted per calling thread: which
 * threads flush the database's files. */
static sqlite3_vfs count_vfs;
static sqlite3_vfs *count_base;
/* SQLite's VFS gives the WAL other methods than the database: a counting copy of each */
static sqlite3_io_methods count_io[4];
static const sqlite3_io_methods *count_base_io[4];

/* the real methods of a file opened through the counting VFS */
static const sqlite3_io_methods *count_real(sqlite3_file *file)
{
	for (unsigned i = 0; i < 4; i++)
		if (file->pMethods == &count_io[i])
			return count_base_io[i];
	return file->pMethods;
}
static _Atomic unsigned count_syncs;	   /* by every thread */
static __thread unsigned count_syncs_here; /* by the calling thread */

/* the WAL files open through the counting VFS (a few at a time) */
static sqlite3_file *count_wals[8];
static pthread_mutex_t count_wals_mu = PTHREAD_MUTEX_INITIALIZER;

static void count_wal_add(sqlite3_file *file)
{
	pthread_mutex_lock(&count_wals_mu);
	for (unsigned i = 0; i < 8; i++)
		if (!count_wals[i]) {
			count_wals[i] = file;
			break;
		}
	pthread_mutex_unlock(&count_wals_mu);
}

static bool count_wal_file(sqlite3_file *file)
{
	bool r = false;

	pthread_mutex_lock(&count_wals_mu);
	for (unsigned i = 0; i < 8; i++)
		r |= count_wals[i] == file;
	pthread_mutex_unlock(&count_wals_mu);
	return r;
}

static int count_sync(sqlite3_file *file, int flags)
{
	count_syncs++;
	count_syncs_here++;
	return count_real(file)->xSync(file, flags);
}

/* writes to WAL files: told apart by their address, as the methods are shared */
static _Atomic unsigned count_wal_writes;

static int count_write(sqlite3_file *file, const void *data, int amt, sqlite3_int64 off)
{
	if (amt > 0 && off >= 0 && count_wal_file(file))
		count_wal_writes++;
	return count_real(file)->xWrite(file, data, amt, off);
}

static int count_close(sqlite3_file *file)
{
	pthread_mutex_lock(&count_wals_mu);
	for (unsigned i = 0; i < 8; i++)
		if (count_wals[i] == file)
			count_wals[i] = NULL;
	pthread_mutex_unlock(&count_wals_mu);
	return count_real(file)->xClose(file);
}

static int count_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out)
{
	int rc = count_base->xOpen(count_base, name, file, flags, out);

	(void)vfs;
	if (rc == SQLITE_OK && file->pMethods) {
		for (unsigned i = 0; i < 4; i++) {
			if (!count_base_io[i]) {
				count_base_io[i] = file->pMethods;
				count_io[i] = *file->pMethods;
				count_io[i].xSync = count_sync;
				count_io[i].xWrite = count_write;
				count_io[i].xClose = count_close;
			}
			if (file->pMethods == count_base_io[i]) {
				file->pMethods = &count_io[i];
				break;
			}
		}
		if (flags & SQLITE_OPEN_WAL)
			count_wal_add(file);
	}
	return rc;
}

/* The counting VFS becomes the default (the engine wraps the default it finds at open). */
static void count_vfs_register(void)
{
	count_base = sqlite3_vfs_find("unix");
	assert_non_null(count_base);
	count_vfs = *count_base;
	count_vfs.zName = "braidfs-test-count";
	count_vfs.xOpen = count_open;
	assert_int_equal(sqlite3_vfs_register(&count_vfs, 1), SQLITE_OK);
}

/* and SQLite's own again (unregistering the default would promote any other one) */
static void count_vfs_unregister(void)
{
	assert_int_equal(sqlite3_vfs_unregister(&count_vfs), SQLITE_OK);
	assert_int_equal(sqlite3_vfs_register(count_base, 1), SQLITE_OK);
}

/* The WAL's checkpoint sequence number (its header, bytes 12-15): one more every time a
 * commit starts the WAL again from its beginning after a complete checkpoint. */
static uint32_t wal_ckpt_seq(const char *wal)
{
	unsigned char h[16];
	int fd = open(wal, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? pread(fd, h, sizeof(h), 0) : -1;

	if (fd >= 0)
		close(fd);
	if (n != (ssize_t)sizeof(h))
		return 0;
	return (uint32_t)h[12] << 24 | (uint32_t)h[13] << 16 | (uint32_t)h[14] << 8 | h[15];
}

/* SQLite: a commit never checkpoints the WAL itself (no flush on the committing thread);
 * the engine's checkpointer does, and the WAL starts again from its beginning (it does not
 * grow without end under a steady stream of commits). */
static void t_checkpoint_off_commit(void **state)
{
	struct fx *f = *state;
	char wal[PATH_MAX + 8], name[32];
	uint32_t seq0, restarts;
	uint64_t d, last = 0;
	unsigned n, mine;
	struct stat st;
	bool restarted = false;

	if (strcmp(E->name, "sqlite") != 0)
		skip(); /* knows the SQLite file layout */
	snprintf(wal, sizeof(wal), "%s-wal", f->file);
	meta_close(f->m);
	f->m = NULL;
	count_vfs_register();
	assert_int_equal(meta_open(f->url, 0, &f->m, NULL, 0), 0);
	d = mkdir_(f, META_ROOT_INO, "d");
	seq0 = wal_ckpt_seq(wal);
	count_syncs = 0;
	count_syncs_here = 0;
	/* ~7 WAL frames per create: the checkpointer wakes after ~1,200. Past 16 MiB of WAL
	 * the stream slows down to leave the checkpointer time on a loaded machine (the
	 * commits would checkpoint themselves only 4 limits behind). */
	for (n = 0; n < 8000 && !(restarted && n >= 3000); n++) {
		snprintf(name, sizeof(name), "f%u", n);
		last = mkfile(f, d, name);
		restarted = wal_ckpt_seq(wal) != seq0;
		if (!restarted && stat(wal, &st) == 0 && st.st_size > (16 << 20))
			usleep(5000);
	}
	mine = count_syncs_here;
	restarts = wal_ckpt_seq(wal) - seq0;
	assert_true(restarted);
	/* a commit that restarts the WAL syncs its new header (SQLite does, whoever
	 * checkpointed); a checkpoint in the commit would add the WAL's and the file's */
	assert_true(mine <= restarts);
	assert_true(count_syncs > 0);	  /* the checkpointer did */
	assert_true(stat(wal, &st) == 0); /* restarted, not grown: under 2 limits */
	assert_true(st.st_size < 2 * 8192 * (4096 + 24));
	meta_close(f->m); /* stops the checkpointer */
	f->m = NULL;
	count_vfs_unregister();
	/* every create is there, read through SQLite's own VFS */
	assert_int_equal(meta_open(f->url, 0, &f->m, NULL, 0), 0);
	struct meta_attr a;
	assert_int_equal(META_CALL(f->m, lookup, d, "f0", &a), 0);
	snprintf(name, sizeof(name), "f%u", n - 1);
	assert_int_equal(META_CALL(f->m, lookup, d, name, &a), 0);
	assert_int_equal(a.ino, last);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* SQLite: a commit's WAL frames go out as one write, and are all in the file when the commit
 * returns: another connection (SQLite's own VFS) reads every operation right after it. */
static void t_wal_one_write_per_commit(void **state)
{
	struct fx *f = *state;
	sqlite3 *peer = NULL;
	sqlite3_stmt *st = NULL;
	char name[32];
	uint64_t d;
	unsigned most = 0, total = 0;
	const unsigned n = 300;

	if (strcmp(E->name, "sqlite") != 0)
		skip(); /* knows the SQLite file layout */
	meta_close(f->m);
	f->m = NULL;
	count_vfs_register();
	assert_int_equal(meta_open(f->url, 0, &f->m, NULL, 0), 0);
	d = mkdir_(f, META_ROOT_INO, "d");
	assert_int_equal(sqlite3_open_v2(f->file, &peer, SQLITE_OPEN_READONLY, "unix"), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(peer, "SELECT count(*) FROM dentries WHERE parent = ?1",
					    -1, &st, NULL),
			 SQLITE_OK);
	for (unsigned i = 0; i < n; i++) {
		unsigned w0 = count_wal_writes, w;

		snprintf(name, sizeof(name), "f%u", i);
		mkfile(f, d, name);
		w = count_wal_writes - w0;
		total += w;
		if (w > most)
			most = w;
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, (sqlite3_int64)d);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		assert_int_equal(sqlite3_column_int64(st, 0), i + 1);
	}
	sqlite3_finalize(st);
	sqlite3_close(peer);
	meta_close(f->m);
	f->m = NULL;
	count_vfs_unregister();
	/* a create changes ~7 pages: 14 writes when each frame header and page goes alone */
	print_message("wal writes: %u in %u creates, at most %u in one\n", total, n, most);
	assert_true(total >= n);
	assert_true(most <= 2);
	assert_int_equal(meta_open(f->url, 0, &f->m, NULL, 0), 0);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* A process killed in the middle of a stream of operations leaves whole operations only
 * (META-1 across a crash of the process). */
static void t_crash_atomicity(void **state)
{
	struct fx *f = *state;
	struct meta_attr a;
	pid_t pid;
	int st, ready[2];
	char c;

	meta_close(f->m);
	f->m = NULL;
	assert_int_equal(pipe(ready), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct meta *m;
		char name[32];
		struct meta_attr in;
		uint64_t d = META_ROOT_INO;

		if (meta_open(f->url, 0, &m, NULL, 0) < 0)
			_exit(2);
		memset(&in, 0, sizeof(in));
		for (int i = 0;; i++) {
			snprintf(name, sizeof(name), "n%d", i);
			in.mode = (i % 3 ? S_IFREG : S_IFDIR) | 0644;
			in.ctime_ns = i;
			if (META_CALL(m, mknod, d, name, &in, NULL, &a) < 0)
				_exit(3);
			if (S_ISDIR(a.mode))
				d = a.ino;
			if (i % 5 == 4)
				META_CALL(m, rename, d, name, META_ROOT_INO, name, 0, i, NULL);
			if (i % 7 == 6)
				META_CALL(m, unlink, META_ROOT_INO, name, i, NULL);
			if (i == 0 && write(ready[1], "r", 1) != 1) /* one operation is committed */
				_exit(4);
		}
	}
	close(ready[1]);
	/* the kill lands mid-stream however slow the machine is: after the first commit */
	assert_int_equal(read(ready[0], &c, 1), 1);
	close(ready[0]);
	usleep(300 * 1000);
	kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
	fx_reopen(f);
	assert_true(count_dir(f, META_ROOT_INO) > 0);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* ---- check ---------------------------------------------------------------------------- */

struct reports {
	int n, repaired;
	char last[512];
	bool saw_missing, saw_nlink, saw_unreachable, saw_noentry, saw_badparent;
};

static void report_cb(void *ctx, const char *what, uint64_t ino, bool repaired)
{
	struct reports *r = ctx;

	(void)ino;
	r->n++;
	r->repaired += repaired;
	snprintf(r->last, sizeof(r->last), "%s", what);
	r->saw_missing |= strstr(what, "missing inode") != NULL;
	r->saw_nlink |= strstr(what, "entries say") != NULL;
	r->saw_unreachable |= strstr(what, "not reachable") != NULL;
	r->saw_noentry |= strstr(what, "no directory entry") != NULL;
	r->saw_badparent |= strstr(what, "missing directory") != NULL;
	assert_null(strchr(what, '\n'));
}

static void t_check_clean(void **state)
{
	struct fx *f = *state;
	struct reports rep = {0};
	uint64_t d, x;

	d = mkdir_(f, META_ROOT_INO, "d");
	x = mkfile(f, d, "x");
	assert_int_equal(META_CALL(f->m, link, x, META_ROOT_INO, "x", tick(f), NULL), 0);
	mkdir_(f, d, "e");
	mkfile(f, META_ROOT_INO, "gone");
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "gone", tick(f), NULL), 0);
	/* an orphan waiting for purge is not a problem */
	assert_int_equal(META_CALL(f->m, check, false, report_cb, &rep), 0);
	assert_int_equal(rep.n, 0);
	assert_int_equal(META_CALL(f->m, check, true, report_cb, &rep), 0);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_check_inject(void **state)
{
	struct fx *f = *state;
	struct reports rep = {0};
	struct meta_attr a;
	char sql[1024];
	uint64_t d, x, y, z, cx, cy, lost, kept;
	int r;

	if (!E->raw_exec)
		skip();
	d = mkdir_(f, META_ROOT_INO, "d");
	x = mkfile(f, d, "x");
	y = mkfile(f, d, "y");
	z = mkfile(f, d, "z");
	cx = mkdir_(f, META_ROOT_INO, "cx");
	cy = mkdir_(f, cx, "cy");
	lost = mkfile(f, cy, "lost");
	kept = mkfile(f, cy, "kept");
	assert_int_equal(META_CALL(f->m, link, kept, d, "kept", tick(f), NULL), 0);

	snprintf(sql, sizeof(sql),
		 /* 1. an entry naming an inode that does not exist */
		 "INSERT INTO dentries (parent, name, ino) VALUES (%llu, CAST('ghost' AS BLOB),"
		 " 987654);"
		 /* 2. a wrong link count */
		 "UPDATE inodes SET nlink = 5 WHERE ino = %llu;"
		 /* 3. a file that lost its only entry but kept nlink 1 */
		 "DELETE FROM dentries WHERE ino = %llu;"
		 /* 4. a cycle: cx moved under its own child cy (unreachable) */
		 "UPDATE dentries SET parent = %llu WHERE ino = %llu;"
		 /* 5. an entry in a directory that does not exist */
		 "INSERT INTO dentries (parent, name, ino) VALUES (555555, CAST('stray' AS BLOB),"
		 " %llu);"
		 /* 6. a directory with a wrong link count */
		 "UPDATE inodes SET nlink = 9 WHERE ino = %llu;",
		 (unsigned long long)d, (unsigned long long)x, (unsigned long long)y,
		 (unsigned long long)cy, (unsigned long long)cx, (unsigned long long)z,
		 (unsigned long long)d);
	assert_int_equal(E->raw_exec(f, sql), 0);

	/* a broken entry reads as an error, not as a file */
	assert_int_equal(META_CALL(f->m, lookup, d, "ghost", &a), -EIO);

	r = META_CALL(f->m, check, false, report_cb, &rep);
	assert_true(r >= 6);
	assert_int_equal(r, rep.n);
	assert_int_equal(rep.repaired, 0);
	assert_true(rep.saw_missing);
	assert_true(rep.saw_nlink);
	assert_true(rep.saw_unreachable);
	assert_true(rep.saw_noentry);
	assert_true(rep.saw_badparent);
	/* checking changed nothing */
	assert_int_equal(get(f, x).nlink, 5);

	memset(&rep, 0, sizeof(rep));
	r = META_CALL(f->m, check, true, report_cb, &rep);
	assert_int_equal(r, 0); /* nothing left unrepaired */
	assert_true(rep.n >= 6);
	assert_int_equal(rep.repaired, rep.n);

	memset(&rep, 0, sizeof(rep));
	assert_int_equal(META_CALL(f->m, check, false, report_cb, &rep), 0);
	assert_int_equal(rep.n, 0);

	/* the repairs themselves */
	assert_int_equal(META_CALL(f->m, lookup, d, "ghost", &a), -ENOENT);
	assert_int_equal(get(f, x).nlink, 1);
	assert_int_equal(get(f, d).nlink, 2);
	assert_int_equal(get(f, y).nlink, 0); /* orphaned: purge frees it */
	assert_true(in_orphans(f, y));
	assert_int_equal(get(f, z).nlink, 1); /* the stray entry is gone, the real one stays */
	assert_int_equal(get(f, cx).nlink, 0);
	assert_int_equal(get(f, cy).nlink, 0);
	assert_int_equal(get(f, lost).nlink, 0);
	assert_int_equal(get(f, kept).nlink, 1); /* still linked from d */
	assert_int_equal(lookup_ino(f, d, "kept"), kept);
	/* nothing new goes into an orphaned directory */
	struct meta_attr in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(f->m, mknod, cx, "new", &in, NULL, &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, link, x, cx, "new", tick(f), &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, rename, d, "x", cx, "x", 0, tick(f), NULL), -ENOENT);
	/* everything orphaned can be purged, then the namespace is clean */
	struct list l = {0};
	assert_int_equal(META_CALL(f->m, orphans, inode_cb, &l), 0);
	for (size_t i = 0; i < l.n; i++)
		assert_int_equal(META_CALL(f->m, purge, l.e[i].ino), 0);
	list_free(&l);
	assert_int_equal(META_CALL(f->m, getattr, cx, &a), -ENOENT);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
	/* and it still works */
	mkfile(f, d, "after");
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_check_root_missing(void **state)
{
	struct fx *f = *state;
	struct reports rep = {0};
	uint64_t x;

	if (!E->raw_exec)
		skip();
	x = mkfile(f, META_ROOT_INO, "x");
	assert_int_equal(E->raw_exec(f, "DELETE FROM inodes WHERE ino = 1;"), 0);
	assert_true(META_CALL(f->m, check, false, report_cb, &rep) > 0);
	assert_int_equal(META_CALL(f->m, check, true, NULL, NULL), 0);
	assert_true(S_ISDIR(get(f, META_ROOT_INO).mode));
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "x"), x); /* children kept */
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* ---- handles and threads ----------------------------------------------------------------- */

static void t_rdonly_and_second_handle(void **state)
{
	struct fx *f = *state;
	struct meta *ro = NULL, *rw = NULL;
	struct meta_attr a, in;
	char err[512];
	uint64_t x;

	x = mkfile(f, META_ROOT_INO, "x");
	assert_int_equal(meta_open(f->url, META_O_RDONLY, &ro, err, sizeof(err)), 0);
	assert_int_equal(META_CALL(ro, lookup, META_ROOT_INO, "x", &a), 0);
	assert_int_equal(a.ino, x);
	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(ro, mknod, META_ROOT_INO, "y", &in, NULL, &a), -EROFS);
	assert_int_equal(META_CALL(ro, setattr, x, META_SET_MODE, &in, &a), -EROFS);
	assert_int_equal(META_CALL(ro, check, true, NULL, NULL), -EROFS);
	assert_int_equal(META_CALL(ro, check, false, NULL, NULL), 0);
	assert_int_equal(do_format(ro), -EROFS);
	/* the cluster tables' writes too (META-13..17; META-10..12 where the engine has them) */
	struct meta_chunk_ref ref = {x, 0};
	struct meta_repair rp = {.chain = 0, .target = 2, .kind = META_REPAIR_RESYNC};
	uint32_t one[1] = {1};
	assert_int_equal(META_CALL(ro, chain_update, 0, 1, one, 1, NULL), -EROFS);
	assert_int_equal(META_CALL(ro, dirty_add, 0, 2, &ref, 1), -EROFS);
	assert_int_equal(META_CALL(ro, repair_set, &rp), -EROFS);
	assert_int_equal(META_CALL(ro, repair_delete, 0, 2), -EROFS);
	if (E->ops->caps & META_CAP_CLUSTER) {
		assert_int_equal(META_CALL_OPT(ro, node_register, "n", "a", 1000, NULL), -EROFS);
		assert_int_equal(META_CALL_OPT(ro, node_heartbeat, 1, 1000), -EROFS);
		assert_int_equal(META_CALL_OPT(ro, node_set_state, 1, META_NODE_DOWN), -EROFS);
		assert_int_equal(META_CALL_OPT(ro, lease_acquire, "l", 1, 1000, NULL), -EROFS);
		assert_int_equal(META_CALL_OPT(ro, client_heartbeat, 1, 1000), -EROFS);
		assert_int_equal(META_CALL_OPT(ro, client_unregister, 1), -EROFS);
	}
	assert_int_equal(META_CALL(ro, sync), 0);

	/* a second read-write handle (the CLI while a mount runs) sees and makes changes */
	assert_int_equal(meta_open(f->url, 0, &rw, err, sizeof(err)), 0);
	assert_int_equal(META_CALL(rw, mknod, META_ROOT_INO, "y", &in, NULL, &a), 0);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "y"), a.ino);
	assert_int_equal(META_CALL(ro, lookup, META_ROOT_INO, "y", &a), 0);
	assert_int_equal(META_CALL(rw, sync), 0);
	assert_int_equal(META_CALL(f->m, sync), 0); /* syncs rw's commit too */
	/* statfs is not fooled by its cache when another handle commits */
	struct meta_statfs s1, s2;
	assert_int_equal(META_CALL(f->m, statfs, &s1), 0);
	assert_int_equal(META_CALL(f->m, statfs, &s2), 0);
	assert_int_equal(s1.inodes, s2.inodes);
	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(rw, mknod, META_ROOT_INO, "z", &in, NULL, &a), 0);
	assert_int_equal(META_CALL(f->m, statfs, &s2), 0);
	assert_int_equal(s2.inodes, s1.inodes + 1);
	assert_int_equal(META_CALL(ro, statfs, &s1), 0);
	assert_int_equal(s1.inodes, s2.inodes);
	assert_int_equal(META_CALL(ro, sync), 0);
	/* both create: numbers never collide */
	uint64_t a1 = mkfile(f, META_ROOT_INO, "a1");
	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(rw, mknod, META_ROOT_INO, "a2", &in, NULL, &a), 0);
	assert_true(a.ino > a1);
	meta_close(rw);
	meta_close(ro);
}

struct thr {
	struct fx *f;
	uint64_t dir;
	int id, n, errors;
};

static void *thr_main(void *arg)
{
	struct thr *t = arg;
	struct meta_attr in, a;
	char name[32];

	memset(&in, 0, sizeof(in));
	in.mode = S_IFREG | 0644;
	for (int i = 0; i < t->n; i++) {
		snprintf(name, sizeof(name), "t%d-%d", t->id, i);
		in.ctime_ns = i;
		if (META_CALL(t->f->m, mknod, t->dir, name, &in, NULL, &a) < 0)
			t->errors++;
		if (META_CALL(t->f->m, getattr, a.ino, &a) < 0)
			t->errors++;
		if (i % 4 == 3 && META_CALL(t->f->m, unlink, t->dir, name, i, NULL) < 0)
			t->errors++;
		if (i % 50 == 0) {
			struct list l = {0};

			l.limit = 300;
			if (META_CALL(t->f->m, readdir, t->dir, 0, list_cb, &l) < 0)
				t->errors++;
			list_free(&l);
		}
	}
	return NULL;
}

/* NT threads, in one directory (dirs[0] for all) or in one each: creates, getattrs, unlinks,
 * readdirs; every count right after. Prints the write rate. */
static void run_threads(struct fx *f, const uint64_t *dirs, bool own, const char *what)
{
	enum { NT = 8, N = 250 };
	struct thr t[NT];
	pthread_t tid[NT];
	double t0 = now_s(), dt;

	for (int i = 0; i < NT; i++) {
		t[i] = (struct thr){.f = f, .dir = dirs[own ? i : 0], .id = i, .n = N};
		assert_int_equal(pthread_create(&tid[i], NULL, thr_main, &t[i]), 0);
	}
	for (int i = 0; i < NT; i++) {
		pthread_join(tid[i], NULL);
		assert_int_equal(t[i].errors, 0);
	}
	dt = now_s() - t0;
	print_message("    %d threads, %s: %d creates + %d unlinks in %.2f s (%.0f writes/s)\n", NT,
		      what, NT * N, NT * (N / 4), dt, NT * (N + N / 4) / dt);
	for (int i = 0; i < (own ? NT : 1); i++)
		assert_int_equal(count_dir(f, dirs[i]), (own ? 1 : NT) * (N - N / 4));
}

static void t_threads(void **state)
{
	struct fx *f = *state;
	uint64_t dirs[8];
	char name[16];

	dirs[0] = mkdir_(f, META_ROOT_INO, "d");
	run_threads(f, dirs, false, "one directory");
	for (int i = 0; i < 8; i++) {
		snprintf(name, sizeof(name), "own%d", i);
		dirs[i] = mkdir_(f, META_ROOT_INO, name);
	}
	run_threads(f, dirs, true, "a directory each");
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* ---- several processes --------------------------------------------------------------------- */

static int conc_fail(int k, int i, const char *what, int r)
{
	fprintf(stderr, "process %d round %d: %s: unexpected %d (%s)\n", k, i, what, r,
		strerror(-r));
	return 1;
}

/* One of two processes (two mounts on two nodes) working the same two directories at once:
 * creates, renames over each other's names, across directories (files and directories),
 * links, unlinks, mkdir/rmdir. Every error must be one the race explains. */
static int conc_child(const char *url, int k, int rounds, uint64_t d, uint64_t e)
{
	struct meta *m = NULL;
	struct meta_attr in, a;
	char n1[64], n2[64];
	unsigned seed = 1234u + (unsigned)k * 7919u;
	int64_t now = 1900000000000000000ll + k;

	if (meta_open(url, 0, &m, NULL, 0) < 0)
		return 2;
	memset(&in, 0, sizeof(in));
	for (int i = 0; i < rounds; i++) {
		int op = (int)(rand_r(&seed) % 9), r, sh = (int)(rand_r(&seed) % 16);
		uint64_t from = rand_r(&seed) % 2 ? d : e, to = from == d ? e : d;

		now += 10;
		in.ctime_ns = now;
		switch (op) {
		case 0: /* a private file, then a shared name over it: EEXIST is the other's */
			in.mode = S_IFREG | 0644;
			snprintf(n1, sizeof(n1), "p%d-%d", k, i);
			r = META_CALL(m, mknod, d, n1, &in, NULL, &a);
			if (r < 0)
				return conc_fail(k, i, "mknod private", r);
			snprintf(n2, sizeof(n2), "s%d", sh);
			r = META_CALL(m, rename, d, n1, from, n2, 0, now, NULL);
			if (r < 0 && r != -EISDIR)
				return conc_fail(k, i, "rename over shared", r);
			break;
		case 1:
			in.mode = S_IFREG | 0644;
			snprintf(n1, sizeof(n1), "s%d", sh);
			r = META_CALL(m, mknod, from, n1, &in, NULL, &a);
			if (r < 0 && r != -EEXIST)
				return conc_fail(k, i, "mknod shared", r);
			break;
		case 2: /* a shared file to the other directory (may be gone or a directory) */
			snprintf(n1, sizeof(n1), "s%d", sh);
			r = META_CALL(m, rename, from, n1, to, n1, 0, now, NULL);
			if (r < 0 && r != -ENOENT && r != -EISDIR && r != -ENOTDIR &&
			    r != -ENOTEMPTY)
				return conc_fail(k, i, "rename across", r);
			break;
		case 3:
			snprintf(n1, sizeof(n1), "s%d", sh);
			r = META_CALL(m, unlink, from, n1, now, NULL);
			if (r < 0 && r != -ENOENT && r != -EISDIR)
				return conc_fail(k, i, "unlink", r);
			break;
		case 4:
			in.mode = S_IFDIR | 0755;
			snprintf(n1, sizeof(n1), "D%d", sh % 6);
			r = META_CALL(m, mknod, from, n1, &in, NULL, &a);
			if (r < 0 && r != -EEXIST)
				return conc_fail(k, i, "mkdir", r);
			if (r == 0 && rand_r(&seed) % 2) {
				in.mode = S_IFREG | 0600;
				r = META_CALL(m, mknod, a.ino, "inner", &in, NULL, NULL);
				/* the other may have removed or moved it meanwhile */
				if (r < 0 && r != -ENOENT && r != -EEXIST)
					return conc_fail(k, i, "mknod inner", r);
			}
			break;
		case 5:
			snprintf(n1, sizeof(n1), "D%d", sh % 6);
			r = META_CALL(m, rmdir, from, n1, now, NULL);
			if (r < 0 && r != -ENOENT && r != -ENOTEMPTY && r != -ENOTDIR)
				return conc_fail(k, i, "rmdir", r);
			break;
		case 6: /* a directory across: the rename lock and the loop check (PG-3) */
			snprintf(n1, sizeof(n1), "D%d", sh % 6);
			r = META_CALL(m, rename, from, n1, to, n1, 0, now, NULL);
			if (r < 0 && r != -ENOENT && r != -ENOTEMPTY && r != -ENOTDIR &&
			    r != -EISDIR)
				return conc_fail(k, i, "rename dir across", r);
			break;
		case 7: /* a hard link of a shared file */
			snprintf(n1, sizeof(n1), "s%d", sh);
			r = META_CALL(m, lookup, from, n1, &a);
			if (r == 0 && !S_ISDIR(a.mode)) {
				snprintf(n2, sizeof(n2), "l%d-%d", k, i);
				r = META_CALL(m, link, a.ino, to, n2, now, NULL);
				/* gone (purged by nobody here: only unlinked) is still linkable */
				if (r < 0 && r != -ENOENT)
					return conc_fail(k, i, "link", r);
			} else if (r < 0 && r != -ENOENT) {
				return conc_fail(k, i, "lookup", r);
			}
			break;
		default: { /* exchange two shared names */
			snprintf(n1, sizeof(n1), "s%d", sh);
			snprintf(n2, sizeof(n2), "s%d", (sh + 1) % 16);
			r = META_CALL(m, rename, from, n1, to, n2, RENAME_EXCHANGE, now, NULL);
			if (r < 0 && r != -ENOENT)
				return conc_fail(k, i, "exchange", r);
			break;
		}
		}
	}
	meta_close(m);
	return 0;
}

static void t_two_processes(void **state)
{
	struct fx *f = *state;
	const char *env = getenv("BRAIDFS_META_CONC_ROUNDS");
	int rounds = env ? atoi(env) : 300;
	pid_t pid[2];
	uint64_t d, e;
	double t0;
	struct list l;

	d = mkdir_(f, META_ROOT_INO, "d");
	e = mkdir_(f, META_ROOT_INO, "e");
	meta_close(f->m);
	f->m = NULL;
	t0 = now_s();
	for (int k = 0; k < 2; k++) {
		pid[k] = fork();
		assert_true(pid[k] >= 0);
		if (pid[k] == 0)
			_exit(conc_child(f->url, k, rounds, d, e));
	}
	for (int k = 0; k < 2; k++) {
		int st;

		assert_int_equal(waitpid(pid[k], &st, 0), pid[k]);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
	print_message("    2 processes x %d rounds in %.2f s\n", rounds, now_s() - t0);
	fx_reopen(f);
	/* every link count agrees with the entries, no entry names a missing inode, nothing is
	 * unreachable */
	struct reports rep = {0};
	assert_int_equal(META_CALL(f->m, check, false, report_cb, &rep), 0);
	assert_int_equal(rep.n, 0);
	/* directory link counts, counted here too */
	uint64_t dirs[2] = {d, e};
	for (int k = 0; k < 2; k++) {
		uint32_t sub = 0;

		list_dir(f, dirs[k], 50, &l);
		for (size_t i = 0; i < l.n; i++)
			sub += S_ISDIR(l.e[i].mode);
		assert_int_equal(get(f, dirs[k]).nlink, 2 + sub);
		list_free(&l);
	}
	assert_int_equal(get(f, META_ROOT_INO).nlink, 4);
}

/* ---- cluster tables (META_CAP_CLUSTER) ------------------------------------------------------ */

static bool cluster_or_unsupported(struct fx *f)
{
	struct meta_node n;
	struct meta_lease l;
	struct meta_client c = {0};
	uint32_t id;
	uint64_t cid;

	if (E->ops->caps & META_CAP_CLUSTER)
		return true;
	/* an engine without the cap answers every optional op with -EOPNOTSUPP */
	assert_int_equal(META_CALL_OPT(f->m, node_register, "n", "a", 10, &id), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, node_heartbeat, 1, 10), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, node_set_state, 1, META_NODE_UP), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, nodes_list, &n, 1), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, lease_acquire, "m", 1, 10, &l), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, lease_renew, "m", 1, 1, 10, &l), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, lease_release, "m", 1, 1), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, lease_get, "m", &l), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, client_register, &c, 10, &cid, NULL), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, client_heartbeat, 1, 10), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, client_unregister, 1), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, clients_list, &c, 1), -EOPNOTSUPP);
	return false;
}

static void t_nodes(void **state)
{
	struct fx *f = *state;
	struct meta_node n[4];
	char longname[80];
	uint32_t a, b, a2;

	if (!cluster_or_unsupported(f))
		return;
	assert_int_equal(META_CALL(f->m, nodes_list, n, 4), 0);
	assert_int_equal(META_CALL(f->m, node_register, "node-a", "10.0.0.1:7000", 10000, &a), 0);
	assert_int_equal(META_CALL(f->m, node_register, "node-b", "10.0.0.2:7000", 3000, &b), 0);
	assert_true(a >= 1 && b >= 1 && a != b);
	/* a node that restarts keeps its id; its address follows */
	assert_int_equal(META_CALL(f->m, node_set_state, a, META_NODE_DOWN), 0);
	assert_int_equal(META_CALL(f->m, node_register, "node-a", "10.0.0.9:7000", 10000, &a2), 0);
	assert_int_equal(a2, a);
	memset(n, 0xa5, sizeof(n));
	assert_int_equal(META_CALL(f->m, nodes_list, n, 1), 2); /* count > max: call again */
	assert_int_equal(n[1].id, 0xa5a5a5a5u);
	assert_int_equal(META_CALL(f->m, nodes_list, n, 4), 2);
	assert_int_equal(n[0].id, a);
	assert_string_equal(n[0].name, "node-a");
	assert_string_equal(n[0].address, "10.0.0.9:7000");
	assert_int_equal(n[0].state, META_NODE_UP); /* register means up */
	/* the database's clock: a fresh heartbeat is young */
	assert_true(n[0].heartbeat_age_ns >= 0 && n[0].heartbeat_age_ns < 5000000000ll);
	assert_true(n[0].lease_remaining_ns > 5000000000ll &&
		    n[0].lease_remaining_ns <= 10000000000ll);
	usleep(200 * 1000);
	assert_int_equal(META_CALL(f->m, nodes_list, n, 4), 2);
	assert_true(n[1].heartbeat_age_ns >= 150000000ll);
	int64_t age = n[1].heartbeat_age_ns;
	/* DIST-4: a heartbeat renews the node's lease, by the database's clock (a lease long
	 * enough that a loaded machine's pause between two calls does not expire it) */
	assert_int_equal(META_CALL(f->m, node_heartbeat, b, 1000), 0);
	assert_int_equal(META_CALL(f->m, nodes_list, n, 4), 2);
	assert_true(n[1].heartbeat_age_ns < age);
	assert_true(n[1].lease_remaining_ns > 0 && n[1].lease_remaining_ns <= 1000000000ll);
	usleep(1100 * 1000);
	assert_int_equal(META_CALL(f->m, nodes_list, n, 4), 2);
	assert_true(n[1].lease_remaining_ns < 0); /* expired: the manager may act on it */
	assert_true(n[0].lease_remaining_ns > 0);
	assert_int_equal(META_CALL(f->m, node_set_state, b, META_NODE_DOWN), 0);
	assert_int_equal(META_CALL(f->m, nodes_list, n, 4), 2);
	assert_int_equal(n[1].state, META_NODE_DOWN);
	/* errors */
	assert_int_equal(META_CALL(f->m, node_heartbeat, 999, 1000), -ENOENT);
	assert_int_equal(META_CALL(f->m, node_heartbeat, a, 0), -EINVAL);
	assert_int_equal(META_CALL(f->m, node_set_state, 999, META_NODE_UP), -ENOENT);
	assert_int_equal(META_CALL(f->m, node_set_state, a, (enum meta_node_state)9), -EINVAL);
	assert_int_equal(META_CALL(f->m, node_register, "", "x", 1000, &a2), -EINVAL);
	assert_int_equal(META_CALL(f->m, node_register, "c", "x", 0, &a2), -EINVAL);
	memset(longname, 'n', sizeof(longname));
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(META_CALL(f->m, node_register, longname, "x", 1000, &a2), -EINVAL);
	assert_int_equal(META_CALL(f->m, nodes_list, NULL, 0), 2);
	/* survives a reopen */
	fx_reopen(f);
	assert_int_equal(META_CALL(f->m, nodes_list, n, 4), 2);
}

/* What every racer of race_run() starts with: the barrier of each round, its rounds, and its
 * counts. */
struct race_tally {
	pthread_barrier_t *bar; /* set by race_run() */
	int rounds;
	int won; /* out */
	int errors;
};

/* n racers (structs of `size` bytes that start with a struct race_tally, at racers) each run
 * by a thread of fn at once, meeting at one barrier; asserts that none counted an error and
 * returns how many rounds they won in all. */
static int race_run(void *racers, size_t size, int n, void *(*fn)(void *))
{
	pthread_t tid[16];
	pthread_barrier_t bar;
	int won = 0;

	assert_true(n >= 1 && n <= (int)ARRAY_SIZE(tid));
	pthread_barrier_init(&bar, NULL, (unsigned)n);
	for (int i = 0; i < n; i++) {
		struct race_tally *t = (void *)((char *)racers + (size_t)i * size);

		t->bar = &bar;
		assert_int_equal(pthread_create(&tid[i], NULL, fn, t), 0);
	}
	for (int i = 0; i < n; i++) {
		const struct race_tally *t = (void *)((char *)racers + (size_t)i * size);

		pthread_join(tid[i], NULL);
		assert_int_equal(t->errors, 0);
		won += t->won;
	}
	pthread_barrier_destroy(&bar);
	return won;
}

struct race {
	struct race_tally t; /* first: race_run() */
	struct fx *f;
	uint32_t node;
};

static void *race_main(void *arg)
{
	struct race *r = arg;
	char name[32];

	for (int i = 0; i < r->t.rounds; i++) {
		struct meta_lease l;
		int x;

		snprintf(name, sizeof(name), "race-%d", i);
		pthread_barrier_wait(r->t.bar);
		x = META_CALL(r->f->m, lease_acquire, name, r->node, 60000, &l);
		if (x == 0 && l.holder == r->node && l.generation == 1)
			r->t.won++;
		else if (x != -EBUSY || l.holder == r->node)
			r->t.errors++;
	}
	return NULL;
}

static void t_leases(void **state)
{
	struct fx *f = *state;
	struct meta_lease l;
	uint32_t a, b;

	if (!cluster_or_unsupported(f))
		return;
	assert_int_equal(META_CALL(f->m, node_register, "a", "a:1", 60000, &a), 0);
	assert_int_equal(META_CALL(f->m, node_register, "b", "b:1", 60000, &b), 0);
	assert_int_equal(META_CALL(f->m, lease_get, "manager", &l), -ENOENT);
	/* free: a takes it, tenure 1 */
	assert_int_equal(META_CALL(f->m, lease_acquire, "manager", a, 1000, &l), 0);
	assert_string_equal(l.name, "manager");
	assert_int_equal(l.holder, a);
	assert_int_equal(l.generation, 1);
	assert_true(l.remaining_ns > 0 && l.remaining_ns <= 1000000000ll);
	/* b cannot, and learns who holds it */
	memset(&l, 0, sizeof(l));
	assert_int_equal(META_CALL(f->m, lease_acquire, "manager", b, 1000, &l), -EBUSY);
	assert_int_equal(l.holder, a);
	assert_int_equal(l.generation, 1);
	/* acquiring again while holding it renews, same tenure */
	assert_int_equal(META_CALL(f->m, lease_acquire, "manager", a, 1000, &l), 0);
	assert_int_equal(l.generation, 1);
	assert_int_equal(META_CALL(f->m, lease_renew, "manager", a, 1, 3000, &l), 0);
	assert_true(l.remaining_ns > 2000000000ll);
	/* only the holder, with its generation, renews or releases */
	assert_int_equal(META_CALL(f->m, lease_renew, "manager", b, 1, 3000, &l), -ESTALE);
	assert_int_equal(l.holder, a);
	assert_int_equal(META_CALL(f->m, lease_renew, "manager", a, 2, 3000, &l), -ESTALE);
	assert_int_equal(META_CALL(f->m, lease_release, "manager", b, 1), -ESTALE);
	assert_int_equal(META_CALL(f->m, lease_release, "manager", a, 1), 0);
	assert_int_equal(META_CALL(f->m, lease_get, "manager", &l), 0);
	assert_int_equal(l.holder, 0);
	assert_int_equal(META_CALL(f->m, lease_release, "manager", a, 1), -ESTALE);
	/* a new holder: a new tenure, a new fencing token */
	assert_int_equal(META_CALL(f->m, lease_acquire, "manager", b, 300, &l), 0);
	assert_int_equal(l.holder, b);
	assert_int_equal(l.generation, 2);
	/* META-11: expired is expired, by the database's clock: no renewal, anyone may take it */
	usleep(500 * 1000);
	assert_int_equal(META_CALL(f->m, lease_get, "manager", &l), 0);
	assert_true(l.remaining_ns <= 0);
	assert_int_equal(META_CALL(f->m, lease_renew, "manager", b, 2, 1000, &l), -ESTALE);
	assert_int_equal(META_CALL(f->m, lease_release, "manager", b, 2), -ESTALE);
	assert_int_equal(META_CALL(f->m, lease_acquire, "manager", a, 1000, &l), 0);
	assert_int_equal(l.generation, 3);
	/* the same holder after its own expiry starts a new tenure too */
	assert_int_equal(META_CALL(f->m, lease_acquire, "short", a, 100, &l), 0);
	usleep(300 * 1000);
	assert_int_equal(META_CALL(f->m, lease_acquire, "short", a, 100, &l), 0);
	assert_int_equal(l.generation, 2);
	/* bad requests */
	assert_int_equal(META_CALL(f->m, lease_acquire, "x", a, 0, &l), -EINVAL);
	assert_int_equal(META_CALL(f->m, lease_acquire, "x", a, META_TTL_MAX_MS + 1, &l), -EINVAL);
	assert_int_equal(META_CALL(f->m, lease_acquire, "x", 0, 10, &l), -EINVAL);
	assert_int_equal(META_CALL(f->m, lease_acquire, "x", 999, 10, &l), -EINVAL); /* no node */
	assert_int_equal(META_CALL(f->m, lease_acquire, "", a, 10, &l), -EINVAL);
	assert_int_equal(META_CALL(f->m, lease_get, "x", &l), -ENOENT);

	/* threads race for free leases: exactly one wins each, tenure 1 */
	enum { NT = 6, ROUNDS = 25 };
	struct race r[NT];
	uint32_t ids[NT];

	for (int i = 0; i < NT; i++) {
		char name[16];

		snprintf(name, sizeof(name), "racer-%d", i);
		assert_int_equal(META_CALL(f->m, node_register, name, "x", 60000, &ids[i]), 0);
		r[i] = (struct race){{.rounds = ROUNDS}, f, ids[i]};
	}
	assert_int_equal(race_run(r, sizeof(r[0]), NT, race_main), ROUNDS);
}

static void t_clients(void **state)
{
	struct fx *f = *state;
	struct meta_client in, got[4], conflict;
	uint64_t c1, c2, c3, c4;

	if (!cluster_or_unsupported(f))
		return;
	memset(&in, 0, sizeof(in));
	snprintf(in.host, sizeof(in.host), "node-a");
	in.pid = 101;
	snprintf(in.mountpoint, sizeof(in.mountpoint), "/mnt/a");
	assert_int_equal(META_CALL(f->m, client_register, &in, 10000, &c1, NULL), 0);
	/* mounts share the volume */
	snprintf(in.host, sizeof(in.host), "node-b");
	in.pid = 202;
	snprintf(in.mountpoint, sizeof(in.mountpoint), "/mnt/b");
	assert_int_equal(META_CALL(f->m, client_register, &in, 10000, &c2, NULL), 0);
	assert_true(c2 != c1);
	/* META-12: an exclusive one (fsck --repair) does not register beside them */
	in.exclusive = true;
	in.mountpoint[0] = '\0';
	memset(&conflict, 0, sizeof(conflict));
	assert_int_equal(META_CALL(f->m, client_register, &in, 10000, &c3, &conflict), -EBUSY);
	assert_int_equal(conflict.id, c1);
	assert_string_equal(conflict.host, "node-a");
	assert_int_equal(conflict.pid, 101);
	assert_string_equal(conflict.mountpoint, "/mnt/a");
	assert_true(conflict.alive);
	assert_int_equal(META_CALL(f->m, clients_list, got, 4), 2);
	assert_int_equal(got[1].id, c2);
	assert_string_equal(got[1].mountpoint, "/mnt/b");
	assert_true(got[1].alive && !got[1].exclusive);
	assert_true(got[1].remaining_ns > 5000000000ll);
	assert_int_equal(META_CALL(f->m, client_heartbeat, c1, 10000), 0);
	assert_int_equal(META_CALL(f->m, client_heartbeat, 9999, 10000), -ESTALE);
	assert_int_equal(META_CALL(f->m, client_unregister, c1), 0);
	assert_int_equal(META_CALL(f->m, client_unregister, c1), -ENOENT);
	assert_int_equal(META_CALL(f->m, client_unregister, c2), 0);
	/* alone, the exclusive one registers, and then nobody else */
	assert_int_equal(META_CALL(f->m, client_register, &in, 10000, &c3, NULL), 0);
	in.exclusive = false;
	assert_int_equal(META_CALL(f->m, client_register, &in, 10000, &c4, &conflict), -EBUSY);
	assert_int_equal(conflict.id, c3);
	assert_true(conflict.exclusive);
	assert_int_equal(META_CALL(f->m, client_unregister, c3), 0);
	/* an expired registration: listed as dead, cannot be renewed, reaped by the next
	 * register, and no longer in anyone's way */
	assert_int_equal(META_CALL(f->m, client_register, &in, 200, &c4, NULL), 0);
	usleep(400 * 1000);
	assert_int_equal(META_CALL(f->m, clients_list, got, 4), 1);
	assert_false(got[0].alive);
	assert_true(got[0].remaining_ns <= 0);
	assert_int_equal(META_CALL(f->m, client_heartbeat, c4, 10000), -ESTALE);
	in.exclusive = true;
	assert_int_equal(META_CALL(f->m, client_register, &in, 10000, &c3, NULL), 0);
	assert_int_equal(META_CALL(f->m, clients_list, got, 4), 1);
	assert_int_equal(got[0].id, c3);
	/* bad requests */
	assert_int_equal(META_CALL(f->m, client_register, &in, 0, &c4, NULL), -EINVAL);
	assert_int_equal(META_CALL(f->m, client_register, NULL, 10, &c4, NULL), -EINVAL);
	assert_int_equal(META_CALL(f->m, client_heartbeat, c3, 0), -EINVAL);
}

/* ---- file locks (META_CAP_LOCKS, META-18) ---------------------------------------------------- */

/* The range arithmetic every engine shares, without a database. */
static void t_lock_apply(void **state)
{
	struct meta_lock cur[4], out[4], in = {.ino = 2, .client = 1, .owner = 7};

	(void)state;
	in.type = META_LOCK_WR;
	in.start = 10;
	in.end = 19;
	/* adjacent on both sides, same type: one range */
	cur[0] = in, cur[0].start = 0, cur[0].end = 9;
	cur[1] = in, cur[1].start = 20, cur[1].end = 29;
	assert_int_equal(meta_lock_apply(cur, 2, &in, out, 4), 1);
	assert_int_equal(out[0].start, 0);
	assert_int_equal(out[0].end, 29);
	/* the same rows in the other order (an engine reads them unordered): the same result */
	cur[2] = cur[0], cur[0] = cur[1], cur[1] = cur[2];
	assert_int_equal(meta_lock_apply(cur, 2, &in, out, 4), 1);
	assert_int_equal(out[0].start, 0);
	assert_int_equal(out[0].end, 29);
	/* a read lock in the middle of a write lock splits it in three */
	cur[0] = out[0];
	in.type = META_LOCK_RD;
	assert_int_equal(meta_lock_apply(cur, 1, &in, out, 4), 3);
	assert_int_equal(out[0].type, META_LOCK_WR);
	assert_int_equal(out[0].end, 9);
	assert_int_equal(out[1].type, META_LOCK_WR);
	assert_int_equal(out[1].start, 20);
	assert_int_equal(out[2].type, META_LOCK_RD);
	assert_int_equal(out[2].start, 10);
	/* ... and needs room for three */
	assert_int_equal(meta_lock_apply(cur, 1, &in, out, 2), -ENOLCK);
	/* unlock to the end of the file from inside a range */
	in.type = META_LOCK_UN;
	in.start = 5;
	in.end = META_LOCK_EOF;
	assert_int_equal(meta_lock_apply(cur, 1, &in, out, 4), 1);
	assert_int_equal(out[0].start, 0);
	assert_int_equal(out[0].end, 4);
	/* a range ending at EOF touches nothing beyond it (no overflow) */
	cur[0] = in, cur[0].type = META_LOCK_WR, cur[0].start = 100, cur[0].end = META_LOCK_EOF;
	in.type = META_LOCK_WR;
	in.start = 0;
	in.end = 98;
	assert_int_equal(meta_lock_apply(cur, 1, &in, out, 4), 2);
	in.end = 99;
	assert_int_equal(meta_lock_apply(cur, 1, &in, out, 4), 1);
	assert_int_equal(out[0].end, META_LOCK_EOF);
	/* an flock replaces what the owner held */
	in.kind = META_LOCK_FLOCK;
	in.start = 0;
	in.end = META_LOCK_EOF;
	in.type = META_LOCK_RD;
	assert_int_equal(meta_lock_apply(cur, 1, &in, out, 4), 1);
	assert_int_equal(out[0].type, META_LOCK_RD);
	in.type = META_LOCK_UN;
	assert_int_equal(meta_lock_apply(cur, 1, &in, out, 4), 0);
	/* checks */
	assert_int_equal(meta_lock_check(&in), 0);
	in.start = 1;
	assert_int_equal(meta_lock_check(&in), -EINVAL); /* an flock is whole-file */
	in.kind = META_LOCK_POSIX;
	assert_int_equal(meta_lock_check(&in), 0);
	in.start = 5, in.end = 4;
	assert_int_equal(meta_lock_check(&in), -EINVAL);
	in.start = 0, in.end = (uint64_t)META_LOCK_EOF + 1;
	assert_int_equal(meta_lock_check(&in), -EINVAL);
	in.end = 1, in.type = 3;
	assert_int_equal(meta_lock_check(&in), -EINVAL);
	in.type = META_LOCK_RD, in.client = 0;
	assert_int_equal(meta_lock_check(&in), -EINVAL);
}

static uint64_t lk_client(struct fx *f, const char *host, uint32_t ttl_ms)
{
	struct meta_client in;
	uint64_t id = 0;

	memset(&in, 0, sizeof(in));
	snprintf(in.host, sizeof(in.host), "%s", host);
	in.pid = 77;
	snprintf(in.mountpoint, sizeof(in.mountpoint), "/mnt/%s", host);
	assert_int_equal(META_CALL(f->m, client_register, &in, ttl_ms, &id, NULL), 0);
	return id;
}

static struct meta_lock lk(uint64_t ino, uint64_t client, uint64_t owner, enum meta_lock_type type,
			   uint64_t start, uint64_t end)
{
	struct meta_lock l;

	memset(&l, 0, sizeof(l));
	l.ino = ino;
	l.client = client;
	l.owner = owner;
	l.kind = META_LOCK_POSIX;
	l.type = type;
	l.start = start;
	l.end = end;
	l.pid = (int32_t)(1000 + owner);
	return l;
}

static struct meta_lock lk_flock(uint64_t ino, uint64_t client, uint64_t owner,
				 enum meta_lock_type type)
{
	struct meta_lock l = lk(ino, client, owner, type, 0, META_LOCK_EOF);

	l.kind = META_LOCK_FLOCK;
	return l;
}

static int lk_set(struct fx *f, struct meta_lock l)
{
	return META_CALL(f->m, lock_set, &l, NULL);
}

/* An engine without the cap: every lock op answers -EOPNOTSUPP. true: go on. */
static bool locks_or_unsupported(struct fx *f)
{
	struct meta_lock l = lk(2, 1, 1, META_LOCK_WR, 0, 0);

	if (E->ops->caps & META_CAP_LOCKS)
		return true;
	assert_int_equal(META_CALL_OPT(f->m, lock_set, &l, NULL), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, lock_get, &l, &l), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, lock_release, 2, 1, 1, META_LOCK_POSIX), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, locks_release_client, 1), -EOPNOTSUPP);
	assert_int_equal(META_CALL_OPT(f->m, locks_list, 2, &l, 1), -EOPNOTSUPP);
	return false;
}

static void t_locks_conflict(void **state)
{
	struct fx *f = *state;
	struct meta_lock c, l;
	uint64_t ino, a, b, r;

	if (!locks_or_unsupported(f))
		return;
	ino = mkfile(f, META_ROOT_INO, "db");
	a = lk_client(f, "host1", 10000);
	b = lk_client(f, "host1", 10000);
	r = lk_client(f, "host2", 10000);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 0, 99)), 0);
	/* another client, overlapping: refused with the holder named */
	memset(&c, 0, sizeof(c));
	l = lk(ino, b, 2, META_LOCK_RD, 50, 60);
	assert_int_equal(META_CALL(f->m, lock_set, &l, &c), -EAGAIN);
	assert_int_equal(c.client, a);
	assert_int_equal(c.owner, 1);
	assert_int_equal(c.type, META_LOCK_WR);
	assert_int_equal(c.start, 0);
	assert_int_equal(c.end, 99);
	assert_int_equal(c.pid, 1001);
	assert_true(c.local);
	/* another owner of the same client (another process of one mount): refused too */
	assert_int_equal(lk_set(f, lk(ino, a, 3, META_LOCK_WR, 99, 99)), -EAGAIN);
	/* beside it: granted */
	assert_int_equal(lk_set(f, lk(ino, b, 2, META_LOCK_RD, 100, META_LOCK_EOF)), 0);
	/* read locks share; a write lock over them does not */
	assert_int_equal(lk_set(f, lk(ino, r, 4, META_LOCK_RD, 200, 300)), 0);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 250, 250)), -EAGAIN);
	/* the owner itself may change its own lock whatever it holds */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_RD, 0, 99)), 0);
	assert_int_equal(lk_set(f, lk(ino, b, 2, META_LOCK_RD, 0, 10)), 0);
	/* F_GETLK: the first conflicting lock, or none */
	l = lk(ino, r, 9, META_LOCK_WR, 0, META_LOCK_EOF);
	assert_int_equal(META_CALL(f->m, lock_get, &l, &c), 0);
	assert_int_equal(c.type, META_LOCK_RD);
	assert_int_equal(c.client, a);
	assert_int_equal(c.start, 0);
	assert_false(c.local); /* asked from host2, held on host1 */
	l = lk(ino, r, 9, META_LOCK_RD, 0, META_LOCK_EOF);
	assert_int_equal(META_CALL(f->m, lock_get, &l, &c), 0);
	assert_int_equal(c.type, META_LOCK_UN);
	l = lk(ino, r, 4, META_LOCK_WR, 250, 260); /* its own lock is no conflict, b's is */
	assert_int_equal(META_CALL(f->m, lock_get, &l, &c), 0);
	assert_int_equal(c.client, b);
	assert_int_equal(c.start, 100);
	assert_int_equal(c.end, META_LOCK_EOF);
	l = lk(ino, b, 2, META_LOCK_WR, 100, 150);
	assert_int_equal(META_CALL(f->m, lock_get, &l, &c), 0);
	assert_int_equal(c.type, META_LOCK_UN);
	/* flock and POSIX locks are separate (as on Linux); flock locks conflict whole-file */
	assert_int_equal(lk_set(f, lk_flock(ino, r, 4, META_LOCK_WR)), 0);
	assert_int_equal(lk_set(f, lk_flock(ino, a, 5, META_LOCK_RD)), -EAGAIN);
	assert_int_equal(lk_set(f, lk_flock(ino, r, 4, META_LOCK_RD)), 0); /* downgrade */
	assert_int_equal(lk_set(f, lk_flock(ino, a, 5, META_LOCK_RD)), 0);
	assert_int_equal(lk_set(f, lk_flock(ino, r, 4, META_LOCK_WR)), -EAGAIN);
	assert_int_equal(lk_set(f, lk_flock(ino, a, 5, META_LOCK_UN)), 0);
	assert_int_equal(lk_set(f, lk_flock(ino, r, 4, META_LOCK_WR)), 0); /* upgrade */
	/* requests */
	l = lk(ino, a, 1, META_LOCK_WR, 5, 4);
	assert_int_equal(META_CALL(f->m, lock_set, &l, NULL), -EINVAL);
	assert_int_equal(lk_set(f, lk(ino + 1000, a, 1, META_LOCK_WR, 0, 0)), -ENOENT);
	assert_int_equal(lk_set(f, lk(ino, 99999, 1, META_LOCK_WR, 0, 0)), -ESTALE);
	l = lk(ino, a, 1, META_LOCK_UN, 0, 0);
	assert_int_equal(META_CALL(f->m, lock_get, &l, &c), -EINVAL);
}

static void t_locks_merge_split(void **state)
{
	struct fx *f = *state;
	struct meta_lock got[8];
	uint64_t ino, a;

	if (!locks_or_unsupported(f))
		return;
	ino = mkfile(f, META_ROOT_INO, "f");
	a = lk_client(f, "host1", 10000);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 0, 9)), 0);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 10, 19)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 8), 1);
	assert_int_equal(got[0].start, 0);
	assert_int_equal(got[0].end, 19);
	assert_true(got[0].alive);
	/* split by a read lock */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_RD, 5, 7)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 8), 3);
	assert_int_equal(got[0].type, META_LOCK_WR);
	assert_int_equal(got[0].end, 4);
	assert_int_equal(got[1].type, META_LOCK_RD);
	assert_int_equal(got[1].start, 5);
	assert_int_equal(got[1].end, 7);
	assert_int_equal(got[2].type, META_LOCK_WR);
	assert_int_equal(got[2].start, 8);
	assert_int_equal(got[2].end, 19);
	/* unlock a range across all three */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_UN, 3, 15)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 8), 2);
	assert_int_equal(got[0].start, 0);
	assert_int_equal(got[0].end, 2);
	assert_int_equal(got[1].start, 16);
	assert_int_equal(got[1].end, 19);
	/* what was unlocked is free for others; what is left is not */
	uint64_t b = lk_client(f, "host2", 10000);

	assert_int_equal(lk_set(f, lk(ino, b, 2, META_LOCK_WR, 3, 15)), 0);
	assert_int_equal(lk_set(f, lk(ino, b, 2, META_LOCK_WR, 2, 2)), -EAGAIN);
	assert_int_equal(lk_set(f, lk(ino, b, 2, META_LOCK_UN, 0, META_LOCK_EOF)), 0);
	/* one lock over everything, then give back the tail */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 0, META_LOCK_EOF)), 0);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_UN, 100, META_LOCK_EOF)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 8), 1);
	assert_int_equal(got[0].start, 0);
	assert_int_equal(got[0].end, 99);
	/* unlock of what is not held: nothing changes, no error */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_UN, 500, 600)), 0);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_UN, 0, META_LOCK_EOF)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 8), 0);
}

/* More ranges of one owner than an engine may keep on its stack: each lock_set reads and
 * rewrites all of them. */
static void t_locks_many_ranges(void **state)
{
	struct fx *f = *state;
	enum { N = 40 };
	struct meta_lock got[N + 2];
	uint64_t ino, a;

	if (!locks_or_unsupported(f))
		return;
	ino = mkfile(f, META_ROOT_INO, "f");
	a = lk_client(f, "host1", 10000);
	for (uint64_t i = 0; i < N; i++)
		assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 10 * i, 10 * i + 4)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, N + 2), N);
	/* a read lock inside one range splits it: N + 2 */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_RD, 202, 202)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, N + 2), N + 2);
	assert_int_equal(got[20].end, 201);
	assert_int_equal(got[21].type, META_LOCK_RD);
	assert_int_equal(got[22].start, 203);
	/* a write lock over all of them merges them into one */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 0, 10 * N)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, N + 2), 1);
	assert_int_equal(got[0].start, 0);
	assert_int_equal(got[0].end, 10 * N);
}

static void t_locks_release(void **state)
{
	struct fx *f = *state;
	struct meta_lock got[8];
	uint64_t ino, ino2, a, b;

	if (!locks_or_unsupported(f))
		return;
	ino = mkfile(f, META_ROOT_INO, "f");
	ino2 = mkfile(f, META_ROOT_INO, "g");
	a = lk_client(f, "host1", 10000);
	b = lk_client(f, "host2", 10000);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 0, 9)), 0);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 20, 29)), 0);
	assert_int_equal(lk_set(f, lk(ino, a, 2, META_LOCK_WR, 40, 49)), 0);
	assert_int_equal(lk_set(f, lk_flock(ino, a, 1, META_LOCK_WR)), 0);
	assert_int_equal(lk_set(f, lk(ino2, a, 1, META_LOCK_WR, 0, 9)), 0);
	/* close(2) by owner 1: its POSIX locks of this file go, nothing else */
	assert_int_equal(META_CALL(f->m, lock_release, ino, a, 1, META_LOCK_POSIX), 2);
	assert_int_equal(lk_set(f, lk(ino, b, 3, META_LOCK_WR, 0, 29)), 0);
	assert_int_equal(lk_set(f, lk(ino, b, 3, META_LOCK_WR, 40, 40)), -EAGAIN);
	assert_int_equal(lk_set(f, lk(ino2, b, 3, META_LOCK_WR, 0, 0)), -EAGAIN);
	assert_int_equal(lk_set(f, lk_flock(ino, b, 3, META_LOCK_RD)), -EAGAIN);
	assert_int_equal(META_CALL(f->m, lock_release, ino, a, 1, META_LOCK_FLOCK), 1);
	assert_int_equal(lk_set(f, lk_flock(ino, b, 3, META_LOCK_RD)), 0);
	assert_int_equal(META_CALL(f->m, lock_release, ino, a, 1, META_LOCK_FLOCK), 0);
	/* every lock of a client (unmount) */
	assert_int_equal(META_CALL(f->m, locks_release_client, a), 2);
	assert_int_equal(lk_set(f, lk(ino2, b, 3, META_LOCK_WR, 0, 0)), 0);
	assert_int_equal(lk_set(f, lk(ino, b, 3, META_LOCK_WR, 40, 40)), 0);
	/* a client that unregisters takes its locks with it */
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 8), 3);
	assert_int_equal(META_CALL(f->m, client_unregister, b), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 8), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino2, got, 8), 0);
	assert_int_equal(META_CALL(f->m, lock_release, 0, a, 1, META_LOCK_POSIX), -EINVAL);
	assert_int_equal(META_CALL(f->m, locks_release_client, 0), -EINVAL);
}

/* A client whose registration expired holds nothing: its locks stop counting at once (by the
 * database's clock), the next lock_set of that inode deletes them, and it cannot lock. */
static void t_locks_expired_client(void **state)
{
	struct fx *f = *state;
	struct meta_lock got[4], c;
	uint64_t ino, dead, b;

	if (!locks_or_unsupported(f))
		return;
	ino = mkfile(f, META_ROOT_INO, "f");
	dead = lk_client(f, "host1", 300);
	b = lk_client(f, "host2", 10000);
	assert_int_equal(lk_set(f, lk(ino, dead, 1, META_LOCK_WR, 0, META_LOCK_EOF)), 0);
	assert_int_equal(lk_set(f, lk_flock(ino, dead, 1, META_LOCK_WR)), 0);
	assert_int_equal(lk_set(f, lk(ino, b, 2, META_LOCK_WR, 0, 0)), -EAGAIN);
	usleep(600 * 1000);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 4), 2);
	assert_false(got[0].alive);
	c = lk(ino, b, 2, META_LOCK_WR, 0, 0);
	assert_int_equal(META_CALL(f->m, lock_get, &c, &c), 0);
	assert_int_equal(c.type, META_LOCK_UN);
	assert_int_equal(lk_set(f, lk(ino, b, 2, META_LOCK_WR, 0, 0)), 0);
	assert_int_equal(lk_set(f, lk_flock(ino, b, 2, META_LOCK_WR)), 0);
	assert_int_equal(META_CALL(f->m, locks_list, ino, got, 4), 2);
	assert_int_equal(got[0].client, b);
	assert_int_equal(got[1].client, b);
	assert_int_equal(lk_set(f, lk(ino, dead, 1, META_LOCK_RD, 9, 9)), -ESTALE);
}

/* PG-7: clients racing for one write lock: exactly one wins each round. */
struct lk_race {
	struct race_tally t; /* first: race_run() */
	const char *url;
	uint64_t ino, client;
	int id;
};

static void *lk_race_main(void *arg)
{
	struct lk_race *r = arg;
	char err[256];
	struct meta *m = NULL;

	if (meta_open(r->url, 0, &m, err, sizeof(err)) < 0)
		r->t.errors++;
	for (int i = 0; i < r->t.rounds; i++) {
		struct meta_lock l = lk(r->ino, r->client, (uint64_t)r->id, META_LOCK_WR, 10, 10);
		int e;

		pthread_barrier_wait(r->t.bar);
		e = m ? META_CALL(m, lock_set, &l, NULL) : -EIO;
		if (e == 0)
			r->t.won++;
		else if (e != -EAGAIN)
			r->t.errors++;
		pthread_barrier_wait(r->t.bar);
		if (e == 0) {
			l.type = META_LOCK_UN;
			if (META_CALL(m, lock_set, &l, NULL) < 0)
				r->t.errors++;
		}
		pthread_barrier_wait(r->t.bar);
	}
	meta_close(m);
	return NULL;
}

static void t_locks_race(void **state)
{
	enum { NT = 4, ROUNDS = 30 };
	struct fx *f = *state;
	struct lk_race r[NT];

	if (!locks_or_unsupported(f))
		return;
	uint64_t ino = mkfile(f, META_ROOT_INO, "f");

	for (int i = 0; i < NT; i++)
		r[i] = (struct lk_race){
		    {.rounds = ROUNDS}, f->url, ino, lk_client(f, "h", 60000), i + 1};
	assert_int_equal(race_run(r, sizeof(r[0]), NT, lk_race_main), ROUNDS);
}

/* A volume of schema 2 (before file locks) is upgraded in place on a writable open. */
static void t_locks_migration(void **state)
{
	struct fx *f = *state;
	uint64_t ino, a;

	if (!(E->ops->caps & META_CAP_LOCKS) || !E->before_locks_sql)
		skip();
	ino = mkfile(f, META_ROOT_INO, "f");
	meta_close(f->m);
	f->m = NULL;
	assert_int_equal(E->raw_exec(f, E->before_locks_sql), 0);
	fx_reopen(f);
	a = lk_client(f, "h", 10000);
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_WR, 0, 0)), 0);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
	fx_reopen(f); /* already current */
	assert_int_equal(lk_set(f, lk(ino, a, 1, META_LOCK_UN, 0, 0)), 0);
}

/* ---- engine-specific: connections (META_CAP_SHARED) ---------------------------------------- */

/* A trigger on new entries that kills its own session the first time it runs: at the INSERT,
 * or (deferred) inside COMMIT. A sequence, which no rollback undoes, counts the runs. */
static void die_once(struct fx *f, const char *name, bool at_commit)
{
	char sql[1024];

	snprintf(sql, sizeof(sql),
		 "CREATE SEQUENCE %s;"
		 "CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
		 " IF nextval('%s') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid());"
		 " PERFORM pg_sleep(5); END IF; RETURN NULL; END $$;"
		 "CREATE %sTRIGGER %s AFTER INSERT ON dentries %s FOR EACH ROW"
		 " EXECUTE FUNCTION %s();",
		 name, name, name, at_commit ? "CONSTRAINT " : "", name,
		 at_commit ? "DEFERRABLE INITIALLY DEFERRED" : "", name);
	assert_int_equal(E->raw_exec(f, sql), 0);
}

/* The engine's sessions die under it (a server restart, a network cut): the next calls
 * reconnect and work. A transaction whose connection dies before COMMIT, or during COMMIT
 * without committing, runs again and happens exactly once (PG-5). */
static void t_reconnect(void **state)
{
	struct fx *f = *state;
	long long n = 0;
	uint64_t x;

	if (!(E->ops->caps & META_CAP_SHARED))
		skip();
	x = mkfile(f, META_ROOT_INO, "before");
	assert_int_equal(
	    E->raw_int(f,
		       "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
		       " WHERE datname = current_database() AND pid <> pg_backend_pid()",
		       &n),
	    0);
	assert_true(n >= 1);
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "before"), x);
	mkfile(f, META_ROOT_INO, "after");
	/* killed inside the transaction, once: the first attempt dies at its INSERT */
	die_once(f, "die1", false);
	x = mkfile(f, META_ROOT_INO, "in-tx");
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "in-tx"), x);
	assert_int_equal(E->raw_exec(f, "DROP TRIGGER die1 ON dentries;"), 0);
	/* killed during COMMIT (a deferred trigger runs there), once: not committed, so it
	 * runs again */
	die_once(f, "die2", true);
	x = mkfile(f, META_ROOT_INO, "at-commit");
	assert_int_equal(lookup_ino(f, META_ROOT_INO, "at-commit"), x);
	assert_int_equal(E->raw_int(f, "SELECT last_value FROM die2", &n), 0);
	assert_int_equal(n, 2); /* the trigger ran twice: the first attempt was really lost */
	assert_int_equal(E->raw_exec(f, "DROP TRIGGER die2 ON dentries;"), 0);
	assert_int_equal(count_dir(f, META_ROOT_INO), 4);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* A store that holds something else is not ours: refused, and left as it was. */
static void t_open_foreign(void **state)
{
	struct fx *f = *state;
	long long n = 0;

	assert_int_equal(E->raw_exec(f, "CREATE TABLE notes (x TEXT);"
					"INSERT INTO notes VALUES ('keep me');"),
			 0);
	open_fails(f->url, 0, f->file[0] ? f->file : NULL, -EINVAL,
		   "is not a braidfs metadata database");
	open_fails(f->url, META_O_CREATE, f->file[0] ? f->file : NULL, -EINVAL,
		   "is not a braidfs metadata database");
	open_fails(f->url, META_O_RDONLY, NULL, -EINVAL, "is not a braidfs metadata database");
	assert_int_equal(E->raw_int(f, "SELECT count(*) FROM notes WHERE x = 'keep me'", &n), 0);
	assert_int_equal(n, 1);
}

/* A schema newer than this engine: refused with what to do. */
static void t_open_newer_schema(void **state)
{
	struct fx *f = *state;

	meta_close(f->m);
	f->m = NULL;
	assert_int_equal(E->raw_exec(f, E->newer_schema_sql), 0);
	open_fails(f->url, 0, NULL, -EINVAL, "newer than this braidfs");
	open_fails(f->url, META_O_RDONLY, NULL, -EINVAL, "upgrade braidfs");
}

/* ---- directory quotas (META-9) ------------------------------------------------------------ */

static struct meta_quota quota(struct fx *f, uint64_t ino)
{
	struct meta_quota q;
	int r = META_CALL(f->m, quota_get, ino, &q);

	if (r < 0)
		fail_msg("quota_get(%llu) = %d", (unsigned long long)ino, r);
	return q;
}

static void set_size(struct fx *f, uint64_t ino, uint64_t size, uint32_t flags)
{
	struct meta_attr in = {0};

	in.size = size;
	in.flags = flags;
	assert_int_equal(META_CALL(f->m, setattr, ino, META_SET_SIZE | META_SET_FLAGS, &in, NULL),
			 0);
}

static void t_quota_basic(void **state)
{
	struct fx *f = *state;
	uint64_t d = mkdir_(f, META_ROOT_INO, "vol"), plain = mkfile(f, META_ROOT_INO, "plain");
	struct meta_quota q;
	struct meta_attr in;

	assert_int_equal(META_CALL(f->m, quota_get, d, &q), -ENODATA);
	assert_int_equal(META_CALL(f->m, quota_set, plain, 100, 0), -ENOTDIR);
	assert_int_equal(META_CALL(f->m, quota_set, 999999, 100, 0), -ENOENT);
	assert_int_equal(META_CALL(f->m, quota_set, d, 1000, 3), 0);
	q = quota(f, d);
	assert_int_equal(q.ino, d);
	assert_int_equal(q.bytes_limit, 1000);
	assert_int_equal(q.inodes_limit, 3);
	assert_int_equal(q.bytes_used, 0);
	assert_int_equal(q.inodes_used, 0);
	assert_int_equal(get(f, d).qroot, d);
	assert_int_equal(get(f, plain).qroot, 0);

	/* Inherited at create, counted; the inode limit answers EDQUOT. */
	uint64_t sub = mkdir_(f, d, "sub");
	uint64_t a = mkfile(f, sub, "a");
	in = attr_in(f, S_IFLNK | 0777);
	struct meta_attr out;
	assert_int_equal(META_CALL(f->m, mknod, d, "l", &in, "target", &out), 0);
	assert_int_equal(out.qroot, d);
	assert_int_equal(get(f, a).qroot, d);
	assert_int_equal(quota(f, a).inodes_used, 3);
	in = attr_in(f, S_IFREG | 0644);
	assert_int_equal(META_CALL(f->m, mknod, d, "x", &in, NULL, &out), -EDQUOT);
	assert_int_equal(lookup_ino(f, d, "x"), 0);

	/* Sizes are charged (symlink length is not). */
	set_size(f, a, 600, 0);
	assert_int_equal(quota(f, d).bytes_used, 600);
	set_size(f, a, 200, 0);
	assert_int_equal(quota(f, d).bytes_used, 200);

	/* Raising the limits lets it grow again; limits below usage only stop growth. */
	assert_int_equal(META_CALL(f->m, quota_set, d, 100, 10), 0);
	q = quota(f, d);
	assert_int_equal(q.bytes_limit, 100);
	assert_int_equal(q.bytes_used, 200);
	assert_int_equal(META_CALL(f->m, mknod, d, "x", &in, NULL, &out), 0);
	assert_int_equal(quota(f, d).inodes_used, 4);

	/* Survives reopen (one transaction each). */
	fx_reopen(f);
	q = quota(f, sub);
	assert_int_equal(q.bytes_used, 200);
	assert_int_equal(q.inodes_used, 4);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_quota_reserve(void **state)
{
	struct fx *f = *state;
	uint64_t d = mkdir_(f, META_ROOT_INO, "vol");
	uint64_t plain = mkfile(f, META_ROOT_INO, "plain"), got = 0;

	assert_int_equal(META_CALL(f->m, quota_set, d, 1000, 0), 0);
	uint64_t a = mkfile(f, d, "a"), b = mkfile(f, d, "b");

	/* No quota root: only the WDIRTY mark. */
	assert_int_equal(META_CALL(f->m, quota_reserve, plain, 10, 20, &got), 0);
	assert_true(got == UINT64_MAX);
	assert_int_equal(get(f, plain).flags, META_IF_WDIRTY);

	/* want granted when it fits, else what is left as long as need fits. */
	assert_int_equal(META_CALL(f->m, quota_reserve, a, 100, 400, &got), 0);
	assert_int_equal(got, 400);
	assert_int_equal(get(f, a).qres, 400);
	assert_int_equal(get(f, a).flags, META_IF_WDIRTY);
	assert_int_equal(quota(f, d).bytes_used, 400);
	assert_int_equal(META_CALL(f->m, quota_reserve, b, 500, 900, &got), 0);
	assert_int_equal(got, 600);
	assert_int_equal(quota(f, d).bytes_used, 1000);
	assert_int_equal(META_CALL(f->m, quota_reserve, b, 601, 700, &got), -EDQUOT);
	assert_int_equal(get(f, b).qres, 600); /* rolled back whole */
	assert_int_equal(META_CALL(f->m, quota_reserve, a, 10, 400, &got), 0);
	assert_int_equal(got, 400); /* already covered: no charge */
	assert_int_equal(META_CALL(f->m, quota_reserve, a, 20, 10, &got), -EINVAL);
	assert_int_equal(META_CALL(f->m, quota_reserve, d, 1, 1, &got), -EISDIR);

	/* Recording the size keeps the reservation while WDIRTY stays ... */
	set_size(f, a, 300, META_IF_WDIRTY);
	assert_int_equal(quota(f, d).bytes_used, 1000);
	/* ... and clearing WDIRTY releases it down to the size. */
	set_size(f, a, 300, 0);
	assert_int_equal(get(f, a).qres, 0);
	assert_int_equal(quota(f, d).bytes_used, 900);

	/* Unlink keeps the orphan charged until purge, which frees it. */
	struct meta_attr u;
	assert_int_equal(META_CALL(f->m, unlink, d, "b", tick(f), &u), 0);
	assert_int_equal(quota(f, d).bytes_used, 900);
	assert_int_equal(META_CALL(f->m, purge, b), 0);
	assert_int_equal(quota(f, d).bytes_used, 300);
	assert_int_equal(quota(f, d).inodes_used, 1);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* purge_batch: one transaction for many orphans; what purge() would refuse as gone or not an
 * orphan is skipped, the rest is deleted, quota usage drops with the rows. */
static void t_purge_batch(void **state)
{
	struct fx *f = *state;
	struct meta_attr a;
	uint64_t q, x[4], live, gone, v[8];

	q = mkdir_(f, META_ROOT_INO, "q");
	assert_int_equal(META_CALL(f->m, quota_set, q, 0, 100), 0);
	for (int i = 0; i < 4; i++) {
		char name[8];

		snprintf(name, sizeof(name), "x%d", i);
		x[i] = mkfile(f, q, name);
		assert_int_equal(META_CALL(f->m, setxattr, x[i], "user.k", "v", 1, 0), 0);
		assert_int_equal(META_CALL(f->m, unlink, q, name, tick(f), &a), 0);
		assert_true(in_orphans(f, x[i]));
	}
	live = mkfile(f, q, "live");
	gone = mkfile(f, META_ROOT_INO, "gone");
	assert_int_equal(META_CALL(f->m, unlink, META_ROOT_INO, "gone", tick(f), NULL), 0);
	assert_int_equal(META_CALL(f->m, purge, gone), 0);
	assert_int_equal(quota(f, q).inodes_used, 5);

	/* orphans, a live file, the root, an inode already purged, one that never existed */
	v[0] = x[0];
	v[1] = live;
	v[2] = x[1];
	v[3] = META_ROOT_INO;
	v[4] = gone;
	v[5] = x[2];
	v[6] = 999999;
	v[7] = x[3];
	assert_int_equal(META_CALL(f->m, purge_batch, v, 8), 4);
	for (int i = 0; i < 4; i++) {
		char val[8];

		assert_int_equal(META_CALL(f->m, getattr, x[i], &a), -ENOENT);
		assert_int_equal(META_CALL(f->m, getxattr, x[i], "user.k", val, sizeof(val)),
				 -ENOENT);
		assert_false(in_orphans(f, x[i]));
	}
	assert_int_equal(get(f, live).nlink, 1);
	assert_int_equal(quota(f, q).inodes_used, 1);
	/* nothing left to do: every inode is skipped */
	assert_int_equal(META_CALL(f->m, purge_batch, v, 8), 0);

	assert_int_equal(META_CALL(f->m, purge_batch, NULL, 1), -EINVAL);
	assert_int_equal(META_CALL(f->m, purge_batch, v, 0), -EINVAL);
	assert_int_equal(META_CALL(f->m, purge_batch, v, META_PURGE_BATCH_MAX + 1), -EINVAL);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_quota_exdev(void **state)
{
	struct fx *f = *state;
	uint64_t q1 = mkdir_(f, META_ROOT_INO, "q1"), q2 = mkdir_(f, META_ROOT_INO, "q2");
	uint64_t out = mkdir_(f, META_ROOT_INO, "out");
	struct meta_attr r;

	assert_int_equal(META_CALL(f->m, quota_set, q1, 0, 100), 0);
	assert_int_equal(META_CALL(f->m, quota_set, q2, 0, 100), 0);
	uint64_t a = mkfile(f, q1, "a");
	uint64_t s1 = mkdir_(f, q1, "s1");
	uint64_t o = mkfile(f, out, "o");

	assert_int_equal(META_CALL(f->m, rename, q1, "a", q2, "a", 0, tick(f), &r), -EXDEV);
	assert_int_equal(META_CALL(f->m, rename, q1, "a", out, "a", 0, tick(f), &r), -EXDEV);
	assert_int_equal(META_CALL(f->m, rename, out, "o", q1, "o", 0, tick(f), &r), -EXDEV);
	assert_int_equal(META_CALL(f->m, rename, q1, "a", q2, "a", RENAME_EXCHANGE, tick(f), &r),
			 -EXDEV);
	assert_int_equal(META_CALL(f->m, link, a, q2, "a2", tick(f), &r), -EXDEV);
	assert_int_equal(META_CALL(f->m, link, o, q1, "o2", tick(f), &r), -EXDEV);
	/* Inside one root, and moving a root itself among unquotaed directories, are fine. */
	assert_int_equal(META_CALL(f->m, rename, q1, "a", s1, "a", 0, tick(f), &r), 0);
	assert_int_equal(META_CALL(f->m, link, a, q1, "a2", tick(f), &r), 0);
	assert_int_equal(META_CALL(f->m, rename, META_ROOT_INO, "q2", out, "q2", 0, tick(f), &r),
			 0);
	/* Moving a root into another root would nest them. */
	assert_int_equal(META_CALL(f->m, rename, out, "q2", s1, "q2", 0, tick(f), &r), -EXDEV);
	assert_int_equal(quota(f, q1).inodes_used, 2);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_quota_existing_tree(void **state)
{
	struct fx *f = *state;
	uint64_t d = mkdir_(f, META_ROOT_INO, "d"), s = mkdir_(f, d, "s");
	uint64_t a = mkfile(f, s, "a"), b = mkfile(f, d, "b");
	struct meta_attr r;

	set_size(f, a, 5000, 0);
	set_size(f, b, 70, 0);
	/* No nesting, either way. */
	assert_int_equal(META_CALL(f->m, quota_set, s, 10, 0), 0);
	assert_int_equal(META_CALL(f->m, quota_set, d, 10, 0), -EINVAL);
	assert_int_equal(META_CALL(f->m, quota_clear, d), -ENODATA);
	assert_int_equal(META_CALL(f->m, quota_clear, s), 0);
	assert_int_equal(get(f, a).qroot, 0);
	/* A non-empty tree is tagged and counted at once, even over its limit. */
	assert_int_equal(META_CALL(f->m, quota_set, d, 10, 0), 0);
	struct meta_quota q = quota(f, a);
	assert_int_equal(q.ino, d);
	assert_int_equal(q.bytes_used, 5070);
	assert_int_equal(q.inodes_used, 3);
	assert_int_equal(META_CALL(f->m, quota_set, s, 10, 0), -EINVAL);
	/* rmdir of an empty root removes its quota; clear untags. */
	assert_int_equal(META_CALL(f->m, quota_clear, d), 0);
	assert_int_equal(META_CALL(f->m, quota_get, a, &q), -ENODATA);
	uint64_t e = mkdir_(f, META_ROOT_INO, "e");
	assert_int_equal(META_CALL(f->m, quota_set, e, 10, 0), 0);
	assert_int_equal(META_CALL(f->m, rmdir, META_ROOT_INO, "e", tick(f), &r), 0);
	e = mkdir_(f, META_ROOT_INO, "e");
	assert_int_equal(META_CALL(f->m, quota_get, e, &q), -ENODATA);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

static void t_quota_check_repairs(void **state)
{
	struct fx *f = *state;
	uint64_t d = mkdir_(f, META_ROOT_INO, "d");

	if (!E->raw_exec)
		skip();
	assert_int_equal(META_CALL(f->m, quota_set, d, 0, 0), 0);
	uint64_t a = mkfile(f, d, "a");
	set_size(f, a, 123, 0);
	meta_close(f->m);
	f->m = NULL;
	assert_int_equal(E->raw_exec(f, "UPDATE quotas SET bytes_used = 7, inodes_used = 9"), 0);
	fx_reopen(f);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 1);
	assert_int_equal(META_CALL(f->m, check, true, NULL, NULL), 0);
	assert_int_equal(quota(f, d).bytes_used, 123);
	assert_int_equal(quota(f, d).inodes_used, 1);
}

/* A version-1 database (before quotas) is upgraded by the first read-write open. */
static void t_quota_migration(void **state)
{
	struct fx *f = *state;
	char err[512] = "";
	struct meta *ro = NULL;
	uint64_t d = mkdir_(f, META_ROOT_INO, "d"), a = mkfile(f, d, "a");

	if (!E->make_old)
		skip(); /* an engine without an older release has nothing to migrate */
	set_size(f, a, 42, 0);
	meta_close(f->m);
	f->m = NULL;
	assert_int_equal(E->raw_exec(f, E->before_roles_sql), 0); /* back to version 3 ... */
	assert_int_equal(E->raw_exec(f, "DROP INDEX inodes_by_qroot; DROP TABLE quotas;"
					"ALTER TABLE inodes DROP COLUMN qroot;"
					"ALTER TABLE inodes DROP COLUMN qres;"
					"PRAGMA user_version = 2;"),
			 0);
	assert_int_equal(meta_open(f->url, META_O_RDONLY, &ro, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "needs an upgrade"));
	fx_reopen(f);
	assert_int_equal(get(f, a).size, 42);
	assert_int_equal(META_CALL(f->m, quota_set, d, 100, 0), 0);
	assert_int_equal(quota(f, a).bytes_used, 42);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
	fx_reopen(f); /* already current: nothing to do */
	assert_int_equal(quota(f, a).bytes_used, 42);
}

/* ---- chain roles, dirty chunks, repairs (META-13..17) ------------------------------------ */

static struct meta_chain roles(const uint32_t *mem, uint32_t nm, const uint32_t *syn, uint32_t ns,
			       const uint32_t *away, uint32_t na)
{
	struct meta_chain c;

	memset(&c, 0, sizeof(c));
	c.nmembers = nm;
	c.nsyncing = ns;
	c.naway = na;
	for (uint32_t i = 0; i < nm && i < META_MAX_REPLICAS; i++)
		c.members[i] = mem[i];
	for (uint32_t i = 0; i < ns && i < META_MAX_REPLICAS; i++)
		c.syncing[i] = syn[i];
	for (uint32_t i = 0; i < na && i < META_MAX_REPLICAS; i++)
		c.away[i] = away[i];
	return c;
}

static struct meta_chain chain_get(struct fx *f, uint32_t id)
{
	struct meta_chain c[2];

	assert_int_equal(META_CALL(f->m, chains_list, c, 2), 2);
	assert_true(id < 2);
	return c[id];
}

/* META-13, META-14: one epoch-conditional op sets the three roles; an away target keeps the
 * time it went. */
static void t_chain_roles(void **state)
{
	struct fx *f = *state;
	uint32_t one[1] = {1}, two[1] = {2}, three[1] = {3}, m13[2] = {1, 3}, m12[2] = {1, 2};
	struct meta_chain in, c;
	struct meta_target tin;
	uint64_t epoch = 0;
	int64_t away1;

	c = chain_get(f, 0);
	assert_int_equal(c.nsyncing, 0);
	assert_int_equal(c.naway, 0);
	/* chain 1: 3 alone, 1 away since T0 (a reference time for the end of the case) */
	in = roles(three, 1, NULL, 0, one, 1);
	assert_int_equal(META_CALL(f->m, chain_set, 1, 1, &in, &epoch), 0);
	/* target 2 fails: out of chain 0, away */
	in = roles(one, 1, NULL, 0, two, 1);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 1, &in, &epoch), 0);
	assert_int_equal(epoch, 2);
	c = chain_get(f, 0);
	assert_int_equal(c.epoch, 2);
	assert_int_equal(c.nmembers, 1);
	assert_int_equal(c.members[0], 1);
	assert_int_equal(c.nsyncing, 0);
	assert_int_equal(c.naway, 1);
	assert_int_equal(c.away[0], 2);
	assert_true(c.away_ns[0] >= 0 && c.away_ns[0] < 60000000000ll);
	assert_int_equal(chain_get(f, 1).epoch, 2); /* the other chain untouched */
	usleep(150 * 1000);
	/* a replacement (3) starts syncing; 2 stays away and keeps its time (META-14) */
	in = roles(one, 1, three, 1, two, 1);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 2, &in, &epoch), 0);
	assert_int_equal(epoch, 3);
	c = chain_get(f, 0);
	assert_int_equal(c.nsyncing, 1);
	assert_int_equal(c.syncing[0], 3);
	assert_int_equal(c.naway, 1);
	assert_true(c.away_ns[0] >= 100000000ll);
	away1 = c.away_ns[0];
	/* chain_update (the members-only op) takes 3 in; syncing loses it, away is kept */
	assert_int_equal(META_CALL(f->m, chain_update, 0, 3, m13, 2, &epoch), 0);
	assert_int_equal(epoch, 4);
	c = chain_get(f, 0);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.members[1], 3);
	assert_int_equal(c.nsyncing, 0);
	assert_int_equal(c.naway, 1);
	assert_int_equal(c.away[0], 2);
	assert_true(c.away_ns[0] >= away1);
	/* META-7 covers every role: an away target cannot be drained */
	memset(&tin, 0, sizeof(tin));
	tin.state = META_TARGET_DRAINED;
	assert_int_equal(META_CALL(f->m, target_update, 2, META_TSET_STATE, &tin), -EBUSY);

	/* bad requests: -EINVAL / -ESTALE / -ENOENT, and nothing changes */
	epoch = 77;
	in = roles(m13, 2, NULL, 0, two, 1);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 3, &in, &epoch), -ESTALE);
	assert_int_equal(epoch, 77);
	assert_int_equal(META_CALL(f->m, chain_set, 7, 4, &in, &epoch), -ENOENT);
	in = roles(NULL, 0, NULL, 0, two, 1); /* no member */
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, &in, &epoch), -EINVAL);
	in = roles(m12, 2, NULL, 0, two, 1); /* 2 in two roles */
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, &in, &epoch), -EINVAL);
	in = roles(one, 1, m13, 2, NULL, 0); /* 1 in two roles */
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, &in, &epoch), -EINVAL);
	in = roles(one, 1, three, 1, three, 1);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, &in, &epoch), -EINVAL);
	uint32_t bad[1] = {42};
	in = roles(one, 1, bad, 1, NULL, 0); /* unknown target */
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, &in, &epoch), -EINVAL);
	in = roles(one, 1, NULL, 0, two, 1);
	in.naway = META_MAX_REPLICAS + 1; /* too long */
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, &in, &epoch), -EINVAL);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, NULL, &epoch), -EINVAL);
	c = chain_get(f, 0);
	assert_int_equal(c.epoch, 4);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.nsyncing, 0);
	assert_int_equal(c.naway, 1);

	/* 2 comes back: syncing; leaving away and coming back later starts a new time */
	in = roles(m13, 2, two, 1, NULL, 0);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 4, &in, NULL), 0);
	c = chain_get(f, 0);
	assert_int_equal(c.epoch, 5);
	assert_int_equal(c.nsyncing, 1);
	assert_int_equal(c.syncing[0], 2);
	assert_int_equal(c.naway, 0);
	in = roles(m13, 2, NULL, 0, two, 1);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 5, &in, NULL), 0);
	/* one read, one clock: 2 went (again) at least the 150 ms slept after T0 later than 1 */
	struct meta_chain both[2];
	assert_int_equal(META_CALL(f->m, chains_list, both, 2), 2);
	assert_int_equal(both[1].away[0], 1);
	assert_int_equal(both[0].away[0], 2);
	assert_true(both[1].away_ns[0] - both[0].away_ns[0] >= 100000000ll);
	/* survives reopen */
	fx_reopen(f);
	c = chain_get(f, 0);
	assert_int_equal(c.epoch, 6);
	assert_int_equal(c.members[0], 1);
	assert_int_equal(c.members[1], 3);
	assert_int_equal(c.naway, 1);
	assert_int_equal(c.away[0], 2);
}

/* META-16 (DIST-6): promotion, dirty rows and the repairs row go in one transaction. */
static void t_chain_promote(void **state)
{
	struct fx *f = *state;
	uint32_t one[1] = {1}, two[1] = {2};
	struct meta_chunk_ref refs[3] = {{5, 0}, {5, 1}, {9, 3}};
	struct meta_repair rp, got[4];
	struct meta_chain in, c;
	uint64_t epoch = 0, n = 0;

	in = roles(one, 1, two, 1, NULL, 0);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 1, &in, &epoch), 0);
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, refs, 3), 0);
	assert_int_equal(META_CALL(f->m, dirty_add, 1, 2, refs, 2), 0); /* another chain */
	memset(&rp, 0, sizeof(rp));
	rp.chain = 0;
	rp.target = 2;
	rp.kind = META_REPAIR_RESYNC;
	rp.chunks_total = 3;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), 0);
	rp.chain = 1;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), 0);

	/* only a syncing target can be promoted; a stale epoch changes nothing */
	assert_int_equal(META_CALL(f->m, chain_promote, 0, 2, 1, &epoch), -EINVAL);
	assert_int_equal(META_CALL(f->m, chain_promote, 0, 2, 3, &epoch), -EINVAL);
	assert_int_equal(META_CALL(f->m, chain_promote, 0, 1, 2, &epoch), -ESTALE);
	assert_int_equal(META_CALL(f->m, chain_promote, 9, 2, 2, &epoch), -ENOENT);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	assert_int_equal(n, 3);

	assert_int_equal(META_CALL(f->m, chain_promote, 0, 2, 2, &epoch), 0);
	assert_int_equal(epoch, 3);
	c = chain_get(f, 0);
	assert_int_equal(c.epoch, 3);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.members[0], 1);
	assert_int_equal(c.members[1], 2);
	assert_int_equal(c.nsyncing, 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 1, 2, &n), 0);
	assert_int_equal(n, 2); /* the other chain's rows stay */
	assert_int_equal(META_CALL(f->m, repairs_list, got, 4), 1);
	assert_int_equal(got[0].chain, 1);
	/* promoting again: not syncing any more */
	assert_int_equal(META_CALL(f->m, chain_promote, 0, 3, 2, &epoch), -EINVAL);
}

static int ref_cmp(const void *a, const void *b)
{
	const struct meta_chunk_ref *x = a, *y = b;

	if (x->ino != y->ino)
		return x->ino < y->ino ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* META-15: dirty refs are a set, added and removed in batches, listed in pages in order. */
static void t_dirty(void **state)
{
	struct fx *f = *state;
	struct meta_chunk_ref add1[5] = {{7, 2}, {3, INT64_MAX}, {7, 0}, {3, 1}, {7, 2}};
	struct meta_chunk_ref add2[3] = {{3, 1}, {1, 9}, {INT64_MAX, 0}};
	struct meta_chunk_ref want[6] = {{1, 9}, {3, 1}, {3, INT64_MAX},
					 {7, 0}, {7, 2}, {INT64_MAX, 0}};
	struct meta_chunk_ref got[8], bad[1], *big;
	uint64_t n = 99;
	int k;

	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(META_CALL(f->m, dirty_list, 0, 2, NULL, got, 8), 0);
	/* duplicates, in a batch and against stored rows, keep one row */
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, add1, 5), 0);
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, add2, 3), 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	assert_int_equal(n, 6);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 1, &n), 0);
	assert_int_equal(n, 0); /* per target */
	assert_int_equal(META_CALL(f->m, dirty_list, 0, 2, NULL, got, 8), 6);
	assert_memory_equal(got, want, sizeof(want));
	/* pages of 2 after a cursor */
	struct meta_chunk_ref cur = {0, 0}, *after = NULL;
	int total = 0;
	while ((k = META_CALL(f->m, dirty_list, 0, 2, after, got, 2)) > 0) {
		assert_true(k <= 2);
		assert_memory_equal(got, &want[total], (size_t)k * sizeof(got[0]));
		total += k;
		cur = got[k - 1];
		after = &cur;
	}
	assert_int_equal(k, 0);
	assert_int_equal(total, 6);
	/* remove a batch (absent refs ignored) */
	struct meta_chunk_ref rm[3] = {{3, 1}, {7, 2}, {100, 100}};
	assert_int_equal(META_CALL(f->m, dirty_remove, 0, 2, rm, 3), 0);
	assert_int_equal(META_CALL(f->m, dirty_list, 0, 2, NULL, got, 8), 4);
	assert_int_equal(got[0].ino, 1);
	assert_int_equal(got[1].ino, 3);
	assert_int_equal(got[1].idx, INT64_MAX);
	assert_int_equal(got[2].ino, 7);
	assert_int_equal(got[2].idx, 0);
	assert_int_equal(got[3].ino, INT64_MAX);

	/* bad batches add nothing */
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, add1, 0), -EINVAL);
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, NULL, 1), -EINVAL);
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, add1, META_DIRTY_BATCH_MAX + 1), -EINVAL);
	bad[0] = (struct meta_chunk_ref){0, 1};
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, bad, 1), -EINVAL);
	bad[0] = (struct meta_chunk_ref){1, (uint64_t)INT64_MAX + 1};
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, bad, 1), -EINVAL);
	assert_int_equal(META_CALL(f->m, dirty_add, 9, 2, add2, 3), -EINVAL);  /* no chain */
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 42, add2, 3), -EINVAL); /* no target */
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	assert_int_equal(n, 4);

	/* clear, then one full batch, listed back in pages */
	assert_int_equal(META_CALL(f->m, dirty_clear, 0, 2), 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	assert_int_equal(n, 0);
	big = calloc(META_DIRTY_BATCH_MAX, sizeof(*big));
	assert_non_null(big);
	for (unsigned i = 0; i < META_DIRTY_BATCH_MAX; i++)
		big[i] = (struct meta_chunk_ref){1000 + (i * 7919) % 97, i};
	assert_int_equal(META_CALL(f->m, dirty_add, 1, 3, big, META_DIRTY_BATCH_MAX), 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 1, 3, &n), 0);
	assert_int_equal(n, META_DIRTY_BATCH_MAX);
	qsort(big, META_DIRTY_BATCH_MAX, sizeof(*big), ref_cmp);
	struct meta_chunk_ref *page = calloc(1000, sizeof(*page));
	assert_non_null(page);
	after = NULL;
	total = 0;
	while ((k = META_CALL(f->m, dirty_list, 1, 3, after, page, 1000)) > 0) {
		assert_memory_equal(page, &big[total], (size_t)k * sizeof(*page));
		total += k;
		cur = page[k - 1];
		after = &cur;
	}
	assert_int_equal(k, 0);
	assert_int_equal(total, META_DIRTY_BATCH_MAX);
	assert_int_equal(META_CALL(f->m, dirty_remove, 1, 3, big, META_DIRTY_BATCH_MAX), 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 1, 3, &n), 0);
	assert_int_equal(n, 0);
	free(page);
	free(big);
}

/* META-17: one repairs row per (chain, target); started kept while the kind stays. */
static void t_repairs(void **state)
{
	struct fx *f = *state;
	struct meta_repair rp, got[4];
	int64_t started;

	assert_int_equal(META_CALL(f->m, repairs_list, got, 4), 0);
	memset(&rp, 0, sizeof(rp));
	rp.chain = 1;
	rp.target = 3;
	rp.kind = META_REPAIR_REBUILD;
	rp.chunks_total = 0;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), 0);
	rp.chain = 0;
	rp.target = 2;
	rp.kind = META_REPAIR_RESYNC;
	rp.chunks_total = 10;
	rp.chunks_done = 1;
	rp.bytes_done = 4096;
	rp.rate = 1000;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), 0);
	memset(got, 0, sizeof(got));
	assert_int_equal(META_CALL(f->m, repairs_list, got, 1), 2); /* count > max */
	assert_int_equal(META_CALL(f->m, repairs_list, got, 4), 2);
	assert_int_equal(got[0].chain, 0); /* by (chain, target) */
	assert_int_equal(got[0].target, 2);
	assert_int_equal(got[0].kind, META_REPAIR_RESYNC);
	assert_int_equal(got[0].chunks_total, 10);
	assert_int_equal(got[0].chunks_done, 1);
	assert_int_equal(got[0].bytes_done, 4096);
	assert_int_equal(got[0].rate, 1000);
	assert_true(got[0].started_ns > 1600000000000000000ll);
	assert_true(got[0].elapsed_ns >= 0 && got[0].updated_ns >= 0);
	assert_int_equal(got[1].chain, 1);
	assert_int_equal(got[1].kind, META_REPAIR_REBUILD);
	assert_string_equal(meta_repair_kind_name(got[1].kind), "rebuild");
	started = got[0].started_ns;
	usleep(100 * 1000);
	/* progress: started kept */
	rp.chunks_done = 5;
	rp.bytes_done = 5 * 4096;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), 0);
	assert_int_equal(META_CALL(f->m, repairs_list, got, 4), 2);
	assert_int_equal(got[0].chunks_done, 5);
	assert_int_equal(got[0].started_ns, started);
	assert_true(got[0].elapsed_ns >= 80000000ll);
	/* another kind: a new repair, a new start */
	rp.kind = META_REPAIR_REBUILD;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), 0);
	assert_int_equal(META_CALL(f->m, repairs_list, got, 4), 2);
	assert_int_equal(got[0].kind, META_REPAIR_REBUILD);
	assert_true(got[0].started_ns > started);
	/* bad rows */
	rp.kind = 7;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), -EINVAL);
	rp.kind = META_REPAIR_RESYNC;
	rp.target = 42;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), -EINVAL);
	rp.target = 2;
	rp.chain = 9;
	assert_int_equal(META_CALL(f->m, repair_set, &rp), -EINVAL);
	assert_int_equal(META_CALL(f->m, repair_set, NULL), -EINVAL);
	/* delete */
	assert_int_equal(META_CALL(f->m, repair_delete, 0, 2), 0);
	assert_int_equal(META_CALL(f->m, repair_delete, 0, 2), -ENOENT);
	assert_int_equal(META_CALL(f->m, repairs_list, got, 4), 1);
	assert_int_equal(got[0].chain, 1);
}

/* A volume from before chain roles is upgraded by the first read-write open: every chain
 * member stays a member; the new tables work. A read-only open refuses it untouched. */
static void t_roles_migration(void **state)
{
	struct fx *f = *state;
	struct meta_chunk_ref r1 = {2, 3};
	uint32_t one[1] = {1}, two[1] = {2};
	struct meta_chain c, in;
	struct meta *ro = NULL;
	char err[512] = "";
	uint64_t n = 0;

	if (!E->before_roles_sql)
		skip();
	meta_close(f->m);
	f->m = NULL;
	assert_int_equal(E->raw_exec(f, E->before_roles_sql), 0);
	assert_int_equal(meta_open(f->url, META_O_RDONLY, &ro, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "needs an upgrade"));
	fx_reopen(f);
	c = chain_get(f, 0);
	assert_int_equal(c.epoch, 1);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.members[0], 1);
	assert_int_equal(c.members[1], 2);
	assert_int_equal(c.nsyncing + c.naway, 0);
	in = roles(one, 1, NULL, 0, two, 1);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 1, &in, NULL), 0);
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 2, &r1, 1), 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 2, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
	fx_reopen(f); /* already current: nothing to do */
	assert_int_equal(chain_get(f, 0).naway, 1);
}

/* META-19: the async role beside members; kept by chain_update; never promoted; its dirty rows;
 * META-7 and META-13's rules for it too. */
static void t_chain_async(void **state)
{
	struct fx *f = *state;
	uint32_t one[1] = {1}, three[1] = {3}, m12[2] = {1, 2}, m21[2] = {2, 1}, m13[2] = {1, 3};
	struct meta_chunk_ref r1 = {5, 6};
	struct meta_chain in, c;
	struct meta_target tin;
	uint64_t epoch = 0, n = 0;

	in = roles(m12, 2, NULL, 0, NULL, 0);
	in.nasync = 1;
	in.async[0] = 3;
	assert_int_equal(META_CALL(f->m, chain_set, 0, 1, &in, &epoch), 0);
	assert_int_equal(epoch, 2);
	c = chain_get(f, 0);
	assert_int_equal(c.nmembers, 2);
	assert_int_equal(c.nsyncing + c.naway, 0);
	assert_int_equal(c.nasync, 1);
	assert_int_equal(c.async[0], 3);
	/* chain_update keeps it; chain_promote refuses it (not syncing) */
	assert_int_equal(META_CALL(f->m, chain_update, 0, 2, m21, 2, &epoch), 0);
	c = chain_get(f, 0);
	assert_int_equal(c.members[0], 2);
	assert_int_equal(c.nasync, 1);
	assert_int_equal(c.async[0], 3);
	assert_int_equal(META_CALL(f->m, chain_promote, 0, 3, 3, &epoch), -EINVAL);
	/* what it missed (META-15 applies to it) */
	assert_int_equal(META_CALL(f->m, dirty_add, 0, 3, &r1, 1), 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 3, &n), 0);
	assert_int_equal(n, 1);
	/* META-7: an async target cannot be drained */
	memset(&tin, 0, sizeof(tin));
	tin.state = META_TARGET_DRAINED;
	assert_int_equal(META_CALL(f->m, target_update, 3, META_TSET_STATE, &tin), -EBUSY);
	/* META-13: disjoint, bounded */
	in = roles(m13, 2, NULL, 0, NULL, 0);
	in.nasync = 1;
	in.async[0] = 3;
	assert_int_equal(META_CALL(f->m, chain_set, 0, 3, &in, &epoch), -EINVAL);
	in = roles(one, 1, three, 1, NULL, 0);
	in.nasync = 1;
	in.async[0] = 3;
	assert_int_equal(META_CALL(f->m, chain_set, 0, 3, &in, &epoch), -EINVAL);
	in = roles(one, 1, NULL, 0, NULL, 0);
	in.nasync = META_MAX_REPLICAS + 1;
	assert_int_equal(META_CALL(f->m, chain_set, 0, 3, &in, &epoch), -EINVAL);
	c = chain_get(f, 0);
	assert_int_equal(c.epoch, 3);
	/* it becomes syncing (an operator's choice), then a member by promotion */
	in = roles(m21, 2, three, 1, NULL, 0);
	assert_int_equal(META_CALL(f->m, chain_set, 0, 3, &in, &epoch), 0);
	assert_int_equal(META_CALL(f->m, chain_promote, 0, 4, 3, &epoch), 0);
	c = chain_get(f, 0);
	assert_int_equal(c.nmembers, 3);
	assert_int_equal(c.nasync, 0);
	assert_int_equal(META_CALL(f->m, dirty_count, 0, 3, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
}

/* Schema step of META-19: every older schema (before chain roles, before file locks, before
 * the async role) refuses a read-only open, is upgraded by a writable one to the current
 * version, and then holds async rows, which the upgrades after them keep. */
static void t_async_migration(void **state)
{
	struct fx *f = *state;
	const char *older[] = {E->before_roles_sql, E->before_locks_sql, E->before_async_sql};
	uint32_t one[1] = {1};
	struct meta_chain in;
	uint64_t epoch = 1;
	unsigned steps = 0;

	for (unsigned k = 0; k < sizeof(older) / sizeof(older[0]); k++) {
		struct meta *ro = NULL;
		char err[512] = "";
		long long ver = 0;

		if (!older[k])
			continue;
		meta_close(f->m);
		f->m = NULL;
		assert_int_equal(E->raw_exec(f, older[k]), 0);
		assert_int_equal(meta_open(f->url, META_O_RDONLY, &ro, err, sizeof(err)), -EINVAL);
		assert_non_null(strstr(err, "needs an upgrade"));
		fx_reopen(f);
		assert_int_equal(E->raw_int(f, E->version_sql, &ver), 0);
		assert_int_equal(ver, E->async_version);
		if (steps++) /* async rows written after an earlier step survived this one */
			assert_int_equal(chain_get(f, 0).nasync, 1);
		in = roles(one, 1, NULL, 0, NULL, 0);
		in.nasync = 1;
		in.async[0] = 2;
		assert_int_equal(META_CALL(f->m, chain_set, 0, epoch, &in, &epoch), 0);
		fx_reopen(f); /* already current: nothing to do */
		assert_int_equal(chain_get(f, 0).nasync, 1);
		assert_int_equal(chain_get(f, 0).async[0], 2);
		assert_int_equal(META_CALL(f->m, check, false, NULL, NULL), 0);
	}
	assert_true(steps >= 1);
}

/* ---- main ----------------------------------------------------------------------------------- */

#define T(fn)  cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
#define TB(fn) cmocka_unit_test_setup_teardown(fn, fx_setup_bare, fx_teardown)

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    TB(t_open_missing),
	    TB(t_open_create_no_parent),
	    TB(t_open_garbage),
	    TB(t_open_foreign_sqlite),
	    T(t_open_corrupted),
	    TB(t_open_bad_urls),
	    TB(t_open_empty),
	    T(t_format),
	    T(t_format_invalid),
	    T(t_targets),
	    T(t_chains),
	    T(t_target_add),
	    T(t_target_states),
	    T(t_target_update),
	    TB(t_migrate_v1),
	    T(t_root),
	    T(t_mknod_types),
	    T(t_mknod_errors),
	    T(t_ino_never_reused),
	    T(t_lookup),
	    T(t_names_are_bytes),
	    T(t_setattr),
	    T(t_link),
	    T(t_mknod_setgid),
	    T(t_unlink_orphan_purge),
	    T(t_purge_batch),
	    T(t_rmdir),
	    T(t_rename_simple),
	    T(t_rename_dir_across),
	    T(t_rename_replace_file),
	    T(t_rename_replace_dir),
	    T(t_rename_errors),
	    T(t_rename_noreplace),
	    T(t_rename_exchange),
	    T(t_rename_self),
	    T(t_readlink),
	    T(t_readdir_basic),
	    T(t_readdir_stable),
	    T(t_readdir_big),
	    T(t_xattr),
	    T(t_orphans_wdirty),
	    T(t_inodes_statfs),
	    T(t_sync),
	    T(t_sync_wal_replaced),
	    T(t_checkpoint_off_commit),
	    T(t_wal_one_write_per_commit),
	    T(t_crash_atomicity),
	    T(t_check_clean),
	    T(t_check_inject),
	    T(t_check_root_missing),
	    T(t_rdonly_and_second_handle),
	    T(t_threads),
	    TB(t_open_foreign),
	    T(t_open_newer_schema),
	    T(t_two_processes),
	    T(t_nodes),
	    T(t_leases),
	    T(t_clients),
	    T(t_reconnect),
	    T(t_quota_basic),
	    T(t_quota_reserve),
	    T(t_quota_exdev),
	    T(t_quota_existing_tree),
	    T(t_quota_check_repairs),
	    T(t_quota_migration),
	    T(t_chain_roles),
	    T(t_chain_promote),
	    T(t_dirty),
	    T(t_repairs),
	    T(t_roles_migration),
	    T(t_lock_apply),
	    T(t_locks_conflict),
	    T(t_locks_merge_split),
	    T(t_locks_many_ranges),
	    T(t_locks_release),
	    T(t_locks_expired_client),
	    T(t_locks_race),
	    T(t_locks_migration),
	    T(t_chain_async),
	    T(t_async_migration),
	};
	int failed = 0, ran = 0;

	/* BRAIDFS_TEST_DEBUG=1: the engines' debug log on stderr; BRAIDFS_TEST_FILTER=t_x*: only
	 * the cases whose names match. */
	if (getenv("BRAIDFS_TEST_DEBUG"))
		log_init("test_meta_conformance", LOG_DEBUG, LOG_SINK_STDERR, NULL);
	if (getenv("BRAIDFS_TEST_FILTER"))
		cmocka_set_test_filter(getenv("BRAIDFS_TEST_FILTER"));
	/* Engines named on the command line, or every engine whose store is at hand (postgres
	 * needs BRAIDFS_TEST_PG_URL: tests/services/postgres.sh run - CMD sets it). */
	for (size_t i = 0; i < ARRAY_SIZE(engines); i++) {
		bool named = argc < 2;

		for (int a = 1; a < argc; a++)
			named |= !strcmp(argv[a], engines[i].name);
		if (!named)
			continue;
		if (engines[i].ops == &meta_pg_ops && !pg_base()) {
			fprintf(stderr, "postgres: BRAIDFS_TEST_PG_URL not set: skipped\n");
			continue;
		}
		E = &engines[i];
		failed += cmocka_run_group_tests_name(E->name, tests, NULL, NULL);
		ran++;
	}
	if (!ran)
		return 77;
	return failed ? 1 : 0;
}
