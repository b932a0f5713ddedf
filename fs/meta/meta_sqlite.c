/* meta_sqlite — the embedded metadata engine: one SQLite database file in WAL mode.
 *
 * URL: sqlite:///absolute/path.db (sqlite:/absolute/path.db is accepted too). No host, no query.
 *
 * DESIGN
 *   One handle = one SQLite connection + one mutex (`lock`). Every call takes the mutex, so the
 *   connection is used by one thread at a time (it is opened SQLITE_OPEN_NOMUTEX: SQLite's own
 *   per-call mutex would only add cost). Other processes (the CLI while a mount runs) open the
 *   same file with their own connections; SQLite's WAL locking and busy_timeout arbitrate.
 *
 *   Every namespace operation is one `BEGIN IMMEDIATE ... COMMIT` (META-1): IMMEDIATE takes the
 *   write lock up front, so a transaction never fails half way with SQLITE_BUSY on the upgrade
 *   from reader to writer. The body of each operation is an `ms_*_tx()` function that only
 *   runs inside such a transaction and returns 0/-errno; ms_end() commits or rolls back.
 *   Out-parameters are written only after the commit succeeded.
 *
 *   Statements are prepared once per connection (lazily, SQLITE_PREPARE_PERSISTENT) from the
 *   MS_STMTS table below and reset after every use, so no statement keeps a read snapshot
 *   open (that would stall WAL checkpoints).
 *
 * DURABILITY (META-5)
 *   synchronous=NORMAL: a commit appends to the WAL without fsync, so it may be lost on power
 *   failure (never corrupted). sync() fdatasyncs the -wal file through a descriptor of its own,
 *   without the lock: the WAL is append-only, so every frame written before (every earlier
 *   commit, by any connection) is durable after it, which is what a commit with
 *   synchronous=FULL would have done, minus a transaction; frames already checkpointed into
 *   the main file were synced by the checkpoint before the WAL was restarted. sync() is skipped
 *   when nothing was committed since the last one (our counter + PRAGMA data_version for other
 *   connections), which turns a burst of fsync() calls into one WAL fsync.
 *
 * CHECKPOINTS (ms_ckpt_*)
 *   SQLite's own automatic checkpoint runs inside the commit that crosses the WAL limit: that
 *   one namespace operation pays for copying the WAL into the main file and for flushing the
 *   whole WAL and the main file (some 30 ms once per ~1,000 creates, half the mean cost of a
 *   commit). A read-write handle instead hands that work to a checkpointer thread with its
 *   own connection (started on the first need): a wal_hook wakes it, it copies what the WAL
 *   holds while commits go on, then copies the few frames committed meanwhile while holding
 *   the handle's lock, so that the WAL is wholly in the main file and the next commit starts
 *   it again from its beginning. Only when it falls MS_WAL_BEHIND limits behind (or cannot
 *   run) does a commit checkpoint inline, as SQLite would. Which connection checkpoints
 *   changes nothing for DURABILITY: SQLite syncs the WAL before copying and the main file
 *   before the WAL may be restarted.
 *
 * OPEN (never modifies a file it rejects)
 *   stat -> (missing: ENOENT, or create with META_O_CREATE) -> raw 100-byte header check (SQLite
 *   magic, application_id if already in the main file) -> SQLite open with checkpoint-on-close
 *   disabled -> application_id / user_version / schema read through SQLite (sees the WAL) ->
 *   accepted: WAL mode, pragmas, checkpoint-on-close back on. A database that holds no table and
 *   no application_id is "empty": usable only with META_O_CREATE (a format that crashed before
 *   its commit leaves exactly that).
 *
 * LOCKS
 *   ms.lock protects the connection and the statement cache. Callbacks run with it held (see
 *   meta.h); readdir/inodes/orphans drop it between batches of MS_BATCH rows so that a long
 *   listing does not starve writers. No other lock exists, so there is no lock order.
 */
#include "fs/meta/meta_int.h"
#include "fs/meta/meta_sqlite_vfs.h"

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MS_APP_ID	   0x42524653 /* "BRFS": PRAGMA application_id of every braidfs db */
#define MS_SCHEMA_VERSION  5	      /* PRAGMA user_version written by format() */
#define MS_BUSY_TIMEOUT_MS 5000	      /* then -EBUSY */
#define MS_BATCH	   256	      /* rows per lock hold in readdir/inodes/orphans */
#define MS_STATFS_BATCH	   8192	      /* rows per lock hold in statfs (no callback: cheap rows) */
#define MS_LINK_MAX	   65000      /* hard links per inode, as ext4 (EMLINK) */
#define MS_DEPTH_MAX	   (1u << 20) /* ancestor walk bound: deeper means a loop (corruption) */
#define MS_CACHE_KIB	   16384      /* page cache per connection */
/* WAL pages between automatic checkpoints (SQLite's default: 1000). A checkpoint costs two or
 * three fdatasyncs and copies each page once however often it changed, so a longer WAL costs
 * fewer of both per commit; the WAL file is reused from its start after each checkpoint, not
 * truncated, so its fdatasync never has a file size to journal. */
#define MS_WAL_CHECKPOINT_PAGES 8192 /* 32 MiB of 4 KiB pages */
/* the checkpointer copies without the handle's lock while more than this many frames remain
 * (at most MS_CKPT_PASSES passes), then the rest with it */
#define MS_CKPT_TAIL   256
#define MS_CKPT_PASSES 3
/* a commit checkpoints inline once the WAL holds this many limits' worth of frames */
#define MS_WAL_BEHIND 4

/* mode bits as they appear in SQL (S_IFMT, S_IFDIR, S_IFREG) */
#define MS_SQL_IFMT  "61440"
#define MS_SQL_IFDIR "16384"
#define MS_SQL_IFREG "32768"

/* Schema version 3 (version 1 had no targets.pool/node/media, version 2 no quotas;
 * ms_migrate() adds them). Why
 * this shape:
 *  - inodes.ino AUTOINCREMENT: SQLite then never hands out a number again, even after the
 *    highest row is deleted (META-2). Root is inserted as 1 by format().
 *  - dentries.id AUTOINCREMENT is the readdir cookie (offset = id + 2): monotonic and never
 *    reused, so a listing resumed from an offset neither repeats nor skips surviving entries.
 *    (parent, id) serves readdir as an index range scan; UNIQUE (parent, name) serves lookup;
 *    (ino) serves the ancestor walk of rename and fsck's link counting.
 *  - names are BLOBs: a file name is bytes, not text in some encoding; BLOB = memcmp.
 *  - no per-chunk rows: chunks are located from the layout (ARCHITECTURE.md).
 *  - the partial index inodes_pending holds only orphans and WDIRTY inodes, so orphans() after
 *    a crash costs O(orphans), not a scan of every inode.
 *  - chain members are a child table so that targets(id) is a real foreign key and a target
 *    cannot be listed twice in one chain (UNIQUE).
 *  - namespace tables carry no foreign keys: they would need enforcement lookups on every
 *    create; the engine keeps them consistent inside each transaction and check() verifies. */
/* Version 3 (META-9): the quota table and its index; inodes gain qroot and qres. */
#define MS_QUOTA_SCHEMA                                                                            \
	"CREATE TABLE quotas ("                                                                    \
	" ino INTEGER PRIMARY KEY,"                                                                \
	" bytes_limit INTEGER NOT NULL, inodes_limit INTEGER NOT NULL,"                            \
	" bytes_used INTEGER NOT NULL, inodes_used INTEGER NOT NULL);"                             \
	"CREATE INDEX inodes_by_qroot ON inodes (qroot) WHERE qroot != 0;"

/* Version 4 (META-13..17): chain roles (chain_members.role: 0 member, 1 syncing, 2 away;
 * since: when an away target went, ns since the epoch by the database's clock), the dirty
 * chunks of targets out of a chain, and repair progress. dirty is WITHOUT ROWID keyed by
 * (chain, target, ino, idx): dirty_list is a range scan of its primary key. */
#define MS_REPAIR_SCHEMA                                                                           \
	"CREATE TABLE dirty ("                                                                     \
	" chain INTEGER NOT NULL REFERENCES chains (id),"                                          \
	" target INTEGER NOT NULL REFERENCES targets (id),"                                        \
	" ino INTEGER NOT NULL, idx INTEGER NOT NULL,"                                             \
	" PRIMARY KEY (chain, target, ino, idx)) WITHOUT ROWID;"                                   \
	"CREATE TABLE repairs ("                                                                   \
	" chain INTEGER NOT NULL REFERENCES chains (id),"                                          \
	" target INTEGER NOT NULL REFERENCES targets (id),"                                        \
	" kind INTEGER NOT NULL, chunks_total INTEGER NOT NULL, chunks_done INTEGER NOT NULL,"     \
	" bytes_done INTEGER NOT NULL, rate INTEGER NOT NULL,"                                     \
	" started INTEGER NOT NULL, updated INTEGER NOT NULL,"                                     \
	" PRIMARY KEY (chain, target));"

/* Schema 3 -> 4, run by ms_migrate(): every existing chain member keeps role 0. */
#define MS_MIGRATE_3_TO_4                                                                          \
	"ALTER TABLE chain_members ADD COLUMN role INTEGER NOT NULL DEFAULT 0;"                    \
	"ALTER TABLE chain_members ADD COLUMN since INTEGER NOT NULL DEFAULT 0;" MS_REPAIR_SCHEMA

/* The database's clock (here: this host's), ns since the epoch, in SQL (META-14). */
#define MS_SQL_NOW_NS "(CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) * 1000000)"

/* Schema 2 -> 3, run by ms_migrate(). */
#define MS_MIGRATE_2_TO_3                                                                          \
	"ALTER TABLE inodes ADD COLUMN qroot INTEGER NOT NULL DEFAULT 0;"                          \
	"ALTER TABLE inodes ADD COLUMN qres INTEGER NOT NULL DEFAULT 0;" MS_QUOTA_SCHEMA

/* clang-format off */
static const char ms_schema_sql[] =
	"CREATE TABLE volume ("
	" id INTEGER PRIMARY KEY CHECK (id = 1),"
	" name TEXT NOT NULL, uuid TEXT NOT NULL, format_version INTEGER NOT NULL,"
	" chunk_size INTEGER NOT NULL, replicas INTEGER NOT NULL, consistency INTEGER NOT NULL,"
	" created_ns INTEGER NOT NULL,"
	" sync_seq INTEGER NOT NULL DEFAULT 0);" /* unused (earlier sync()s bumped it) */
	"CREATE TABLE targets ("
	" id INTEGER PRIMARY KEY CHECK (id >= 1),"
	" url TEXT NOT NULL, uuid TEXT NOT NULL, state INTEGER NOT NULL,"
	" pool TEXT NOT NULL DEFAULT '', node TEXT NOT NULL DEFAULT '',"
	" media TEXT NOT NULL DEFAULT '');"
	"CREATE TABLE chains ("
	" id INTEGER PRIMARY KEY CHECK (id >= 0),"
	" epoch INTEGER NOT NULL);"
	"CREATE TABLE chain_members ("
	" chain INTEGER NOT NULL REFERENCES chains (id),"
	" pos INTEGER NOT NULL,"
	" target INTEGER NOT NULL REFERENCES targets (id),"
	" role INTEGER NOT NULL DEFAULT 0, since INTEGER NOT NULL DEFAULT 0," /* META-13, 14 */
	" PRIMARY KEY (chain, pos), UNIQUE (chain, target)) WITHOUT ROWID;"
	"CREATE TABLE inodes ("
	" ino INTEGER PRIMARY KEY AUTOINCREMENT,"
	" mode INTEGER NOT NULL, nlink INTEGER NOT NULL,"
	" uid INTEGER NOT NULL, gid INTEGER NOT NULL, rdev INTEGER NOT NULL,"
	" size INTEGER NOT NULL,"
	" atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,"
	" btime INTEGER NOT NULL,"
	" generation INTEGER NOT NULL, flags INTEGER NOT NULL,"
	" link BLOB," /* symlink target, NULL for every other type */
	" qroot INTEGER NOT NULL DEFAULT 0, qres INTEGER NOT NULL DEFAULT 0);" /* META-9 */
	"CREATE INDEX inodes_pending ON inodes (ino) WHERE nlink = 0 OR flags & 1 != 0;"
	MS_QUOTA_SCHEMA
	"CREATE TABLE dentries ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT,"
	" parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,"
	" UNIQUE (parent, name));"
	"CREATE INDEX dentries_by_parent ON dentries (parent, id);"
	"CREATE INDEX dentries_by_ino ON dentries (ino);"
	"CREATE TABLE xattrs ("
	" ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,"
	" PRIMARY KEY (ino, name));"
	MS_REPAIR_SCHEMA;
/* clang-format on */

#define MS_ATTR_COLS                                                                               \
	"ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, btime, generation, "         \
	"flags, qroot, qres"
#define MS_ATTR_COLS_I                                                                             \
	"i.ino, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size, i.atime, i.mtime, i.ctime, "        \
	"i.btime, i.generation, i.flags, i.qroot, i.qres"
/* an entry and the inode it names, as ms_dent_row() reads them */
#define MS_DENT_COLS "d.id, d.ino, " MS_ATTR_COLS_I

/* Every statement the engine runs more than once, prepared once per connection. */
#define MS_STMTS(X)                                                                                \
	X(BEGIN_W, "BEGIN IMMEDIATE")                                                              \
	X(BEGIN_R, "BEGIN DEFERRED")                                                               \
	X(COMMIT, "COMMIT")                                                                        \
	X(ROLLBACK, "ROLLBACK")                                                                    \
	X(SYNC_FULL, "PRAGMA synchronous = FULL")                                                  \
	X(SYNC_NORMAL, "PRAGMA synchronous = NORMAL")                                              \
	X(DATA_VERSION, "PRAGMA data_version")                                                     \
	X(APP_ID, "PRAGMA application_id")                                                         \
	X(USER_VERSION, "PRAGMA user_version")                                                     \
	X(VOLUME_GET, "SELECT name, uuid, format_version, chunk_size, replicas, consistency, "     \
		      "created_ns FROM volume WHERE id = 1")                                       \
	X(TARGETS_LIST, "SELECT id, url, uuid, state, pool, node, media FROM targets ORDER BY id") \
	X(TARGETS_LIST_V1, "SELECT id, url, uuid, state, '', '', '' FROM targets ORDER BY id")     \
	X(TARGET_STATE, "SELECT state FROM targets WHERE id = ?1")                                 \
	X(TARGET_NCHAINS, "SELECT count(*) FROM chain_members WHERE target = ?1")                  \
	X(TARGET_URL_USER, "SELECT id FROM targets WHERE url = ?1 AND state != 4 LIMIT 1")         \
	X(TARGET_NEXT_ID, "SELECT coalesce(max(id), 0) + 1, count(*) FROM targets")                \
	X(TARGET_INSERT, "INSERT INTO targets (id, url, uuid, state, pool, node, media) "          \
			 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")                                    \
	X(TARGET_SET_STATE, "UPDATE targets SET state = ?2 WHERE id = ?1")                         \
	X(TARGET_SET_POOL, "UPDATE targets SET pool = ?2 WHERE id = ?1")                           \
	X(TARGET_SET_NODE, "UPDATE targets SET node = ?2 WHERE id = ?1")                           \
	X(TARGET_SET_MEDIA, "UPDATE targets SET media = ?2 WHERE id = ?1")                         \
	X(CHAINS_LIST, "SELECT c.id, c.epoch, m.target, m.role, " MS_SQL_NOW_NS " - m.since "      \
		       "FROM chains c LEFT JOIN chain_members m ON m.chain = c.id "                \
		       "ORDER BY c.id, m.pos")                                                     \
	X(CHAIN_ROWS, "SELECT target, role, since FROM chain_members WHERE chain = ?1 "            \
		      "ORDER BY pos")                                                              \
	X(CHAIN_EPOCH, "SELECT epoch FROM chains WHERE id = ?1")                                   \
	X(CHAIN_SET_EPOCH, "UPDATE chains SET epoch = ?2 WHERE id = ?1")                           \
	X(CHAIN_CLEAR, "DELETE FROM chain_members WHERE chain = ?1")                               \
	X(CHAIN_ADD, "INSERT INTO chain_members (chain, pos, target, role, since) VALUES "         \
		     "(?1, ?2, ?3, ?4, CASE WHEN ?4 = 2 AND ?5 = 0 THEN " MS_SQL_NOW_NS            \
		     " WHEN ?4 = 2 THEN ?5 ELSE 0 END)")                                           \
	X(DIRTY_ADD, "INSERT OR IGNORE INTO dirty (chain, target, ino, idx) "                      \
		     "VALUES (?1, ?2, ?3, ?4)")                                                    \
	X(DIRTY_DEL, "DELETE FROM dirty WHERE chain = ?1 AND target = ?2 AND ino = ?3 "            \
		     "AND idx = ?4")                                                               \
	X(DIRTY_LIST, "SELECT ino, idx FROM dirty WHERE chain = ?1 AND target = ?2 "               \
		      "AND (?3 = 0 OR (ino, idx) > (?4, ?5)) ORDER BY ino, idx LIMIT ?6")          \
	X(DIRTY_COUNT, "SELECT count(*) FROM dirty WHERE chain = ?1 AND target = ?2")              \
	X(DIRTY_CLEAR, "DELETE FROM dirty WHERE chain = ?1 AND target = ?2")                       \
	X(REPAIR_PUT,                                                                              \
	  "INSERT INTO repairs (chain, target, kind, chunks_total, chunks_done, "                  \
	  "bytes_done, rate, started, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, " MS_SQL_NOW_NS \
	  ", " MS_SQL_NOW_NS ") ON CONFLICT (chain, target) DO UPDATE "                            \
	  "SET started = CASE WHEN kind = excluded.kind THEN started "                             \
	  "ELSE excluded.started END, kind = excluded.kind, "                                      \
	  "chunks_total = excluded.chunks_total, chunks_done = excluded.chunks_done, "             \
	  "bytes_done = excluded.bytes_done, rate = excluded.rate, "                               \
	  "updated = excluded.updated")                                                            \
	X(REPAIRS_LIST, "SELECT chain, target, kind, chunks_total, chunks_done, bytes_done, "      \
			"rate, started, " MS_SQL_NOW_NS " - started, " MS_SQL_NOW_NS " - updated " \
			"FROM repairs ORDER BY chain, target")                                     \
	X(REPAIR_DEL, "DELETE FROM repairs WHERE chain = ?1 AND target = ?2")                      \
	X(INODE_GET, "SELECT " MS_ATTR_COLS " FROM inodes WHERE ino = ?1")                         \
	X(INODE_PUT, "UPDATE inodes SET mode = ?2, nlink = ?3, uid = ?4, gid = ?5, rdev = ?6, "    \
		     "size = ?7, atime = ?8, mtime = ?9, ctime = ?10, btime = ?11, flags = ?12, "  \
		     "qres = ?13 WHERE ino = ?1")                                                  \
	X(INODE_INSERT, "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime, mtime, "    \
			"ctime, btime, generation, flags, link, qroot) "                           \
			"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)")    \
	X(INODE_DELETE, "DELETE FROM inodes WHERE ino = ?1")                                       \
	X(INODE_CTIME, "UPDATE inodes SET ctime = ?2 WHERE ino = ?1")                              \
	X(INODE_LINK, "SELECT mode, link FROM inodes WHERE ino = ?1")                              \
	X(DIR_TOUCH, "UPDATE inodes SET nlink = nlink + ?2, mtime = ?3, ctime = ?3 "               \
		     "WHERE ino = ?1")                                                             \
	X(DENT_GET, "SELECT " MS_DENT_COLS " FROM dentries d "                                     \
		    "LEFT JOIN inodes i ON i.ino = d.ino WHERE d.parent = ?1 AND d.name = ?2")     \
	X(LOOKUP, "SELECT p.mode, " MS_DENT_COLS " FROM inodes p "                                 \
		  "LEFT JOIN dentries d ON d.parent = p.ino AND d.name = ?2 "                      \
		  "LEFT JOIN inodes i ON i.ino = d.ino WHERE p.ino = ?1")                          \
	X(DENT_INSERT, "INSERT INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)")             \
	X(DENT_DELETE, "DELETE FROM dentries WHERE id = ?1")                                       \
	X(DENT_MOVE, "UPDATE dentries SET parent = ?2, name = ?3 WHERE id = ?1")                   \
	X(DENT_SET_INO, "UPDATE dentries SET ino = ?2 WHERE id = ?1")                              \
	X(DENT_ANY_CHILD, "SELECT 1 FROM dentries WHERE parent = ?1 LIMIT 1")                      \
	X(DENT_PARENT_OF, "SELECT parent FROM dentries WHERE ino = ?1 ORDER BY id LIMIT 1")        \
	X(READDIR, "SELECT d.id, d.name, d.ino, i.mode FROM dentries d "                           \
		   "LEFT JOIN inodes i ON i.ino = d.ino "                                          \
		   "WHERE d.parent = ?1 AND d.id > ?2 ORDER BY d.id LIMIT ?3")                     \
	X(READDIRPLUS, "SELECT d.id, d.name, " MS_ATTR_COLS_I " FROM dentries d "                  \
		       "LEFT JOIN inodes i ON i.ino = d.ino "                                      \
		       "WHERE d.parent = ?1 AND d.id > ?2 ORDER BY d.id LIMIT ?3")                 \
	X(XATTR_GET, "SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")                      \
	X(XATTR_PUT, "INSERT INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3) "                  \
		     "ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value")               \
	X(XATTR_DEL, "DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")                            \
	X(XATTR_DEL_ALL, "DELETE FROM xattrs WHERE ino = ?1")                                      \
	X(XATTR_LIST, "SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")                      \
	X(ORPHANS, "SELECT " MS_ATTR_COLS " FROM inodes "                                          \
		   "WHERE (nlink = 0 OR flags & 1 != 0) AND ino > ?1 ORDER BY ino LIMIT ?2")       \
	X(INODES, "SELECT " MS_ATTR_COLS " FROM inodes WHERE ino > ?1 ORDER BY ino LIMIT ?2")      \
	X(QUOTA_GET, "SELECT bytes_limit, inodes_limit, bytes_used, inodes_used FROM quotas "      \
		     "WHERE ino = ?1")                                                             \
	X(QUOTA_ADD, "UPDATE quotas SET bytes_used = max(0, bytes_used + ?2), "                    \
		     "inodes_used = max(0, inodes_used + ?3) WHERE ino = ?1")                      \
	X(QUOTA_LIMITS, "UPDATE quotas SET bytes_limit = ?2, inodes_limit = ?3 WHERE ino = ?1")    \
	X(QUOTA_DEL, "DELETE FROM quotas WHERE ino = ?1")                                          \
	X(QUOTA_UNTAG, "UPDATE inodes SET qroot = 0, qres = 0 WHERE qroot = ?1")                   \
	X(QUOTA_SUBTREE_ROOTS, "WITH RECURSIVE sub(ino) AS (SELECT ?1 UNION SELECT d.ino FROM "    \
			       "dentries d JOIN sub ON d.parent = sub.ino) "                       \
			       "SELECT count(*) FROM sub JOIN quotas q ON q.ino = sub.ino")        \
	X(QUOTA_TAG, "WITH RECURSIVE sub(ino) AS (SELECT ?1 UNION SELECT d.ino FROM "              \
		     "dentries d JOIN sub ON d.parent = sub.ino) "                                 \
		     "UPDATE inodes SET qroot = ?1 WHERE ino IN sub")                              \
	X(QUOTA_CREATE,                                                                            \
	  "INSERT INTO quotas (ino, bytes_limit, inodes_limit, bytes_used, "                       \
	  "inodes_used) SELECT ?1, ?2, ?3, coalesce(sum(CASE WHEN mode & " MS_SQL_IFMT             \
	  " = " MS_SQL_IFREG " THEN max(size, qres) ELSE 0 END), 0), count(*) - 1 "                \
	  "FROM inodes WHERE qroot = ?1")                                                          \
	X(STATFS, "SELECT count(*), coalesce(sum(CASE WHEN mode & " MS_SQL_IFMT " = " MS_SQL_IFREG \
		  " THEN size ELSE 0 END), 0), max(ino) FROM (SELECT ino, mode, size "             \
		  "FROM inodes WHERE ino > ?1 ORDER BY ino LIMIT ?2)")

/* clang-format off */
enum ms_sid {
#define MS_ENUM(id, sql) MSQ_##id,
	MS_STMTS(MS_ENUM)
#undef MS_ENUM
	MSQ_COUNT
};

static const char *const ms_sql[MSQ_COUNT] = {
#define MS_SQL(id, sql) [MSQ_##id] = sql,
	MS_STMTS(MS_SQL)
#undef MS_SQL
};
/* clang-format on */

struct ms {
	struct meta base; /* first: meta_ops_of() reads base.ops */
	pthread_mutex_t lock;
	/* protected by lock: */
	sqlite3 *db;
	sqlite3_stmt *stmt[MSQ_COUNT]; /* prepared on first use */
	bool formatted;		       /* application_id seen; schema present */
	int64_t schema;		       /* user_version once formatted (1 until migrated) */
	uint64_t txns;		       /* write transactions committed, ever (never reset) */
	uint64_t synced_txns;	       /* txns that the last sync() covered */
	int64_t synced_dv;	       /* PRAGMA data_version at the last sync(); -1: never */
	int wal_fd;		       /* our own descriptor of the -wal file for sync(); -1 */
	/* statfs() result, valid while txns and data_version are what they were */
	bool statfs_valid;
	uint64_t statfs_txns;
	int64_t statfs_dv;
	struct meta_statfs statfs;
	/* the checkpointer (CHECKPOINTS above), protected by ck_lock, taken after lock when
	 * both are held (the wal_hook runs inside a commit); it takes lock without ck_lock */
	pthread_mutex_t ck_lock;
	pthread_cond_t ck_cond;
	pthread_t ck_thread;
	pid_t ck_pid;	/* the process ck_thread runs in; 0: none started */
	bool ck_failed; /* could not start or open: commits checkpoint inline */
	bool ck_want, ck_stop;
	/* immutable after open: */
	int64_t schema_version; /* as found by ms_validate(); 0 for a new database */
	bool rdonly;
	char path[URL_MAX];
};

static struct ms *ms_of(struct meta *mm)
{
	return (struct ms *)mm;
}

static void ms_lock(struct ms *m)
{
	pthread_mutex_lock(&m->lock);
}

static void ms_unlock(struct ms *m)
{
	pthread_mutex_unlock(&m->lock);
}

/* SQLite result -> -errno, in exactly one place. Call it right after the failing call, before
 * anything else touches the connection (sqlite3_errmsg() describes the latest call). */
static int ms_errno(struct ms *m, int rc, const char *what)
{
	int e;

	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		e = -EBUSY;
		break;
	case SQLITE_FULL:
		e = -ENOSPC;
		break;
	case SQLITE_READONLY:
		e = -EROFS;
		break;
	case SQLITE_NOMEM:
		e = -ENOMEM;
		break;
	case SQLITE_TOOBIG:
		e = -E2BIG;
		break;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		/* The one error above debug level: the operator must learn about it. */
		log_err("metadata database %s is corrupted (%s: %s); run 'braidfs fsck'", m->path,
			what, sqlite3_errmsg(m->db));
		return -EIO;
	default:
		e = -EIO;
		break;
	}
	log_debug("meta sqlite %s: %s: %s (%d)", m->path, what, sqlite3_errmsg(m->db), rc);
	return e;
}

/* The cached statement `id`, reset and with no bindings. */
static int ms_prep(struct ms *m, enum ms_sid id, sqlite3_stmt **ret)
{
	sqlite3_stmt *st = m->stmt[id];
	int rc;

	if (!st) {
		rc =
		    sqlite3_prepare_v3(m->db, ms_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
		if (rc != SQLITE_OK)
			return ms_errno(m, rc, "prepare");
		m->stmt[id] = st;
	} else {
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
	}
	*ret = st;
	return 0;
}

/* Step a statement that returns no row we need; reset it. */
static int ms_done(struct ms *m, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);
	int r = 0;

	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		r = ms_errno(m, rc, what);
	sqlite3_reset(st);
	return r;
}

/* Run cached statement `id` with up to three int64 parameters; no result rows. */
static int ms_run3(struct ms *m, enum ms_sid id, int64_t a, int64_t b, int64_t c)
{
	sqlite3_stmt *st;
	int n, r;

	r = ms_prep(m, id, &st);
	if (r < 0)
		return r;
	n = sqlite3_bind_parameter_count(st);
	if (n >= 1)
		sqlite3_bind_int64(st, 1, a);
	if (n >= 2)
		sqlite3_bind_int64(st, 2, b);
	if (n >= 3)
		sqlite3_bind_int64(st, 3, c);
	return ms_done(m, st, ms_sql[id]);
}

/* The first column of the first row of statement `id`, with ?1 = *key when key is given;
 * `none` when there is no row. */
static int ms_int_row(struct ms *m, enum ms_sid id, const int64_t *key, int none, int64_t *ret)
{
	sqlite3_stmt *st;
	int rc, r;

	r = ms_prep(m, id, &st);
	if (r < 0)
		return r;
	if (key)
		sqlite3_bind_int64(st, 1, *key);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*ret = sqlite3_column_int64(st, 0);
	else if (rc == SQLITE_DONE)
		r = none;
	else
		r = ms_errno(m, rc, ms_sql[id]);
	sqlite3_reset(st);
	return r;
}

/* One integer from a single-row statement (PRAGMA x). */
static int ms_int_query(struct ms *m, enum ms_sid id, int64_t *ret)
{
	return ms_int_row(m, id, NULL, -EIO, ret);
}

/* One integer column of a one-row query keyed by an id (-ENOENT: no row). */
static int ms_int_by_id(struct ms *m, enum ms_sid id, int64_t key, int64_t *ret)
{
	return ms_int_row(m, id, &key, -ENOENT, ret);
}

static int ms_bind_name(sqlite3_stmt *st, int idx, const char *name)
{
	return sqlite3_bind_blob(st, idx, name, (int)strlen(name), SQLITE_STATIC);
}

/* ---- transactions ---------------------------------------------------------------------- */

/* Re-read application_id when this handle opened an empty database: another process (or
 * this one) may have formatted it since. -ENOENT while it is not formatted. */
static int ms_ready(struct ms *m)
{
	int64_t id = 0;
	int r;

	if (m->formatted)
		return 0;
	r = ms_int_query(m, MSQ_APP_ID, &id);
	if (r < 0)
		return r;
	if (id != MS_APP_ID)
		return -ENOENT;
	r = ms_int_query(m, MSQ_USER_VERSION, &m->schema);
	if (r < 0)
		return r;
	m->formatted = true;
	return 0;
}

static int ms_begin(struct ms *m)
{
	int r;

	if (m->rdonly)
		return -EROFS;
	r = ms_ready(m);
	if (r < 0)
		return r;
	return ms_run3(m, MSQ_BEGIN_W, 0, 0, 0);
}

static void ms_rollback(struct ms *m)
{
	/* SQLite rolls back by itself on some errors (FULL, IOERR, BUSY, NOMEM): then there is
	 * no transaction left and ROLLBACK would only fail. */
	if (sqlite3_get_autocommit(m->db))
		return;
	if (ms_run3(m, MSQ_ROLLBACK, 0, 0, 0) < 0)
		log_debug("meta sqlite %s: rollback failed", m->path);
}

/* End the transaction begun by ms_begin(): commit if r >= 0, else roll back. Returns r, or
 * the commit's error. */
static int ms_end(struct ms *m, int r)
{
	if (r >= 0) {
		int c = ms_run3(m, MSQ_COMMIT, 0, 0, 0);

		if (c == 0) {
			m->txns++;
			return r;
		}
		r = c;
	}
	ms_rollback(m);
	return r;
}

/* One write transaction around `call` (an ms_*_tx() call: 0, or a count, or -errno): under
 * the handle's lock, begin, then ms_end() commits on >= 0 and rolls back otherwise. Evaluates
 * to the result. */
#define MS_WRITE_TX(m, call)                                                                       \
	({                                                                                         \
		ms_lock(m);                                                                        \
		int r_ = ms_begin(m);                                                              \
		if (r_ == 0)                                                                       \
			r_ = ms_end(m, (call));                                                    \
		ms_unlock(m);                                                                      \
		r_;                                                                                \
	})

/* ---- rows <-> structs ------------------------------------------------------------------ */

/* Columns c..c+n-1 of the current row into v. */
static void ms_row_i64s(sqlite3_stmt *st, int c, int64_t *v, int n)
{
	for (int i = 0; i < n; i++)
		v[i] = sqlite3_column_int64(st, c + i);
}

static void ms_row_attr(sqlite3_stmt *st, int c, struct meta_attr *a)
{
	int64_t v[META_ATTR_NCOLS];

	ms_row_i64s(st, c, v, META_ATTR_NCOLS);
	meta_attr_from_cols(a, v);
}

/* A name column into a NUL-terminated buffer of META_NAME_MAX + 1 bytes. */
static void ms_col_name(sqlite3_stmt *st, int c, char *buf)
{
	const void *p = sqlite3_column_blob(st, c);
	int n = sqlite3_column_bytes(st, c);

	if (n < 0 || !p)
		n = 0;
	if (n > META_NAME_MAX)
		n = META_NAME_MAX; /* only a corrupted row; check() does not look at names */
	memcpy(buf, p ? p : "", (size_t)n);
	buf[n] = '\0';
}

/* ---- inode and entry primitives (inside a transaction or under the lock) ---------------- */

static int ms_inode_get(struct ms *m, uint64_t ino, struct meta_attr *ret)
{
	sqlite3_stmt *st;
	int rc, r;

	if (ino == 0 || ino > INT64_MAX)
		return -ENOENT;
	r = ms_prep(m, MSQ_INODE_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		ms_row_attr(st, 0, ret);
	else if (rc == SQLITE_DONE)
		r = -ENOENT;
	else
		r = ms_errno(m, rc, "inode get");
	sqlite3_reset(st);
	return r;
}

/* Write every mutable column of a (ino and generation never change). */
static int ms_inode_put(struct ms *m, const struct meta_attr *a)
{
	sqlite3_stmt *st;
	int r;

	r = ms_prep(m, MSQ_INODE_PUT, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)a->ino);
	sqlite3_bind_int64(st, 2, a->mode);
	sqlite3_bind_int64(st, 3, a->nlink);
	sqlite3_bind_int64(st, 4, a->uid);
	sqlite3_bind_int64(st, 5, a->gid);
	sqlite3_bind_int64(st, 6, (int64_t)a->rdev);
	sqlite3_bind_int64(st, 7, (int64_t)a->size);
	sqlite3_bind_int64(st, 8, a->atime_ns);
	sqlite3_bind_int64(st, 9, a->mtime_ns);
	sqlite3_bind_int64(st, 10, a->ctime_ns);
	sqlite3_bind_int64(st, 11, a->btime_ns);
	sqlite3_bind_int64(st, 12, a->flags);
	sqlite3_bind_int64(st, 13, (int64_t)a->qres);
	return ms_done(m, st, "inode put");
}

/* Insert a new inode from a (a->ino ignored); *ret_ino gets the number SQLite assigned. */
static int ms_inode_insert(struct ms *m, const struct meta_attr *a, const char *link,
			   uint64_t *ret_ino)
{
	sqlite3_stmt *st;
	int r;

	r = ms_prep(m, MSQ_INODE_INSERT, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, a->mode);
	sqlite3_bind_int64(st, 2, a->nlink);
	sqlite3_bind_int64(st, 3, a->uid);
	sqlite3_bind_int64(st, 4, a->gid);
	sqlite3_bind_int64(st, 5, (int64_t)a->rdev);
	sqlite3_bind_int64(st, 6, (int64_t)a->size);
	sqlite3_bind_int64(st, 7, a->atime_ns);
	sqlite3_bind_int64(st, 8, a->mtime_ns);
	sqlite3_bind_int64(st, 9, a->ctime_ns);
	sqlite3_bind_int64(st, 10, a->btime_ns);
	sqlite3_bind_int64(st, 11, (int64_t)a->generation);
	sqlite3_bind_int64(st, 12, a->flags);
	if (link)
		ms_bind_name(st, 13, link);
	else
		sqlite3_bind_null(st, 13);
	sqlite3_bind_int64(st, 14, (int64_t)a->qroot);
	r = ms_done(m, st, "inode insert");
	if (r < 0)
		return r;
	*ret_ino = (uint64_t)sqlite3_last_insert_rowid(m->db);
	return 0;
}

/* ---- quota accounting (META-9), inside a transaction ------------------------------------ */

/* The quota row of root `ino`; -ENODATA if it has none. */
static int ms_quota_row(struct ms *m, uint64_t ino, struct meta_quota *ret)
{
	sqlite3_stmt *st;
	int rc, r;

	r = ms_prep(m, MSQ_QUOTA_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		ret->ino = ino;
		ret->bytes_limit = (uint64_t)sqlite3_column_int64(st, 0);
		ret->inodes_limit = (uint64_t)sqlite3_column_int64(st, 1);
		ret->bytes_used = (uint64_t)sqlite3_column_int64(st, 2);
		ret->inodes_used = (uint64_t)sqlite3_column_int64(st, 3);
	} else if (rc == SQLITE_DONE) {
		r = -ENODATA;
	} else {
		r = ms_errno(m, rc, "quota get");
	}
	sqlite3_reset(st);
	return r;
}

/* Charge root with dbytes / dinodes. With `check`, growth that would pass a limit is
 * refused with -EDQUOT (shrinking never is). */
static int ms_quota_charge(struct ms *m, uint64_t root, int64_t dbytes, int64_t dinodes, bool check)
{
	struct meta_quota q;
	int r;

	if (root == 0 || (dbytes == 0 && dinodes == 0))
		return 0;
	if (check) {
		r = ms_quota_row(m, root, &q);
		if (r == -ENODATA)
			return 0; /* a tag without a row: check() reports it */
		if (r < 0)
			return r;
		r = meta_quota_fits(&q, dbytes, dinodes);
		if (r < 0)
			return r;
	}
	return ms_run3(m, MSQ_QUOTA_ADD, (int64_t)root, dbytes, dinodes);
}

/* Delete an inode row and its xattrs, and uncharge its quota root (META-9). */
static int ms_inode_delete(struct ms *m, const struct meta_attr *a)
{
	int r = ms_run3(m, MSQ_XATTR_DEL_ALL, (int64_t)a->ino, 0, 0);

	if (r < 0)
		return r;
	if (a->qroot == a->ino)
		r = ms_run3(m, MSQ_QUOTA_DEL, (int64_t)a->ino, 0, 0); /* an empty root goes */
	else if (a->qroot)
		r = ms_quota_charge(m, a->qroot, -(int64_t)meta_charged(a), -1, false);
	if (r < 0)
		return r;
	return ms_run3(m, MSQ_INODE_DELETE, (int64_t)a->ino, 0, 0);
}

/* Directory ino: nlink += dnlink, mtime = ctime = now (an entry in it changed). */
static int ms_dir_touch(struct ms *m, uint64_t ino, int dnlink, int64_t now)
{
	return ms_run3(m, MSQ_DIR_TOUCH, (int64_t)ino, dnlink, now);
}

static int ms_dir_get(struct ms *m, uint64_t ino, struct meta_attr *ret)
{
	struct meta_attr a;
	int r = ms_inode_get(m, ino, &a);

	if (r < 0)
		return r;
	if (!S_ISDIR(a.mode))
		return -ENOTDIR;
	if (ret)
		*ret = a;
	return 0;
}

/* A directory new entries may go into: not one that check() orphaned (nlink 0), as Linux
 * refuses to create in a removed directory (IS_DEADDIR). */
static int ms_dir_live(struct ms *m, uint64_t ino, struct meta_attr *ret)
{
	int r = ms_dir_get(m, ino, ret);

	if (r < 0)
		return r;
	return ret->nlink == 0 ? -ENOENT : 0;
}

/* The MS_DENT_COLS of the current row from column c: the entry `name` of directory `parent`,
 * its id and the inode it names. -ENOENT if there is no entry (a NULL id: an outer join found
 * none); -EIO if it names a missing inode (check() repairs that). */
static int ms_dent_row(struct ms *m, sqlite3_stmt *st, int c, uint64_t parent, const char *name,
		       int64_t *ret_id, struct meta_attr *ret)
{
	if (sqlite3_column_type(st, c) == SQLITE_NULL)
		return -ENOENT;
	if (sqlite3_column_type(st, c + 2) == SQLITE_NULL) {
		log_debug("meta sqlite %s: entry '%s' in directory %" PRIu64
			  " names missing inode %lld; run 'braidfs fsck'",
			  m->path, name, parent, (long long)sqlite3_column_int64(st, c + 1));
		return -EIO;
	}
	if (ret_id)
		*ret_id = sqlite3_column_int64(st, c);
	if (ret)
		ms_row_attr(st, c + 2, ret);
	return 0;
}

/* The entry `name` in directory `parent` (which the caller checked): its id and the inode it
 * names. -ENOENT if there is none; -EIO if it names a missing inode (check() repairs that). */
static int ms_dent_get(struct ms *m, uint64_t parent, const char *name, int64_t *ret_id,
		       struct meta_attr *ret)
{
	sqlite3_stmt *st;
	int rc, r;

	r = ms_prep(m, MSQ_DENT_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)parent);
	ms_bind_name(st, 2, name);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		r = ms_dent_row(m, st, 0, parent, name, ret_id, ret);
	} else if (rc == SQLITE_DONE) {
		r = -ENOENT;
	} else {
		r = ms_errno(m, rc, "entry get");
	}
	sqlite3_reset(st);
	return r;
}

static int ms_dent_insert(struct ms *m, uint64_t parent, const char *name, uint64_t ino)
{
	sqlite3_stmt *st;
	int r;

	r = ms_prep(m, MSQ_DENT_INSERT, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)parent);
	ms_bind_name(st, 2, name);
	sqlite3_bind_int64(st, 3, (int64_t)ino);
	return ms_done(m, st, "entry insert");
}

static int ms_dent_move(struct ms *m, int64_t id, uint64_t newparent, const char *newname)
{
	sqlite3_stmt *st;
	int r;

	r = ms_prep(m, MSQ_DENT_MOVE, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, (int64_t)newparent);
	ms_bind_name(st, 3, newname);
	return ms_done(m, st, "entry move");
}

/* 1 if directory ino has an entry, 0 if empty. */
static int ms_has_children(struct ms *m, uint64_t ino)
{
	sqlite3_stmt *st;
	int rc, r;

	r = ms_prep(m, MSQ_DENT_ANY_CHILD, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		r = 1;
	else if (rc != SQLITE_DONE)
		r = ms_errno(m, rc, "children");
	sqlite3_reset(st);
	return r;
}

/* -EINVAL if directory `dir` is `from` or one of its ancestors (a rename would move `dir`
 * into its own subtree). Walks up through the entry that names each directory. */
static int ms_check_not_ancestor(struct ms *m, uint64_t dir, uint64_t from)
{
	uint64_t cur = from;
	sqlite3_stmt *st;
	int rc, r;

	for (unsigned depth = 0;; depth++) {
		if (cur == dir)
			return -EINVAL;
		if (cur == META_ROOT_INO)
			return 0;
		if (depth > MS_DEPTH_MAX) {
			log_debug("meta sqlite %s: directory loop above inode %" PRIu64
				  "; run 'braidfs fsck'",
				  m->path, from);
			return -EIO;
		}
		r = ms_prep(m, MSQ_DENT_PARENT_OF, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, (int64_t)cur);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			cur = (uint64_t)sqlite3_column_int64(st, 0);
		} else if (rc == SQLITE_DONE) {
			log_debug("meta sqlite %s: directory %" PRIu64
				  " is not reachable from the root; run 'braidfs fsck'",
				  m->path, cur);
			r = -EIO;
		} else {
			r = ms_errno(m, rc, "parent of");
		}
		sqlite3_reset(st);
		if (r < 0)
			return r;
	}
}

/* ---- argument checks ------------------------------------------------------------------- */

/* Open a connection to path (SQLITE_OPEN_READONLY or _READWRITE in `mode`) through the
 * engine's VFS, with checkpoint-on-close off, defensive mode and an untrusted schema (a
 * crafted file runs no SQL of its own). *db may be set on failure too: close it. */
static int ms_db_open(const char *path, int mode, sqlite3 **db)
{
	int rc = sqlite3_open_v2(path, db, mode | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
				 meta_sqlite_vfs());

	if (rc == SQLITE_OK) {
		sqlite3_db_config(*db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
		sqlite3_db_config(*db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
		sqlite3_db_config(*db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
	}
	return rc;
}

/* ---- checkpoints (CHECKPOINTS at the top) ---------------------------------------------- */

/* One round: copy the WAL into the main file without the handle's lock while much of it is
 * left, then the rest with it (nothing of this handle commits meanwhile, so the copy is whole
 * unless another process reads an older snapshot). false: no connection of its own. */
static bool ms_ckpt_round(struct ms *m, sqlite3 **dbp)
{
	int log = 0, done = 0, rc = SQLITE_OK;

	if (!*dbp) {
		/* Checkpoint-on-close stays off: the handle's connection is the one whose close
		 * copies the WAL. A connection learns that the database is in WAL mode, and opens
		 * the WAL, on its first read; until then a checkpoint finds nothing to do. */
		rc = ms_db_open(m->path, SQLITE_OPEN_READWRITE, dbp);
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(*dbp, "SELECT count(*) FROM sqlite_schema", NULL, NULL,
					  NULL);
		if (rc != SQLITE_OK) {
			log_warn("meta sqlite %s: the checkpointer cannot open it (%s): commits "
				 "checkpoint the WAL themselves",
				 m->path, *dbp ? sqlite3_errmsg(*dbp) : sqlite3_errstr(rc));
			sqlite3_close_v2(*dbp);
			*dbp = NULL;
			return false;
		}
	}
	/* A pass copies the WAL as it was when the pass began; commits go on meanwhile. Pass
	 * again while the last pass found many new frames. */
	for (int pass = 0, prev = -1; pass < MS_CKPT_PASSES; pass++) {
		rc =
		    sqlite3_wal_checkpoint_v2(*dbp, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done);
		if (rc != SQLITE_OK || (prev >= 0 && log - prev <= MS_CKPT_TAIL))
			break;
		prev = log;
	}
	if (rc == SQLITE_OK) {
		/* nothing to copy costs a lock and no flush */
		ms_lock(m);
		rc =
		    sqlite3_wal_checkpoint_v2(*dbp, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done);
		ms_unlock(m);
	}
	if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
		log_debug("meta sqlite %s: checkpoint: %s (%d)", m->path, sqlite3_errmsg(*dbp), rc);
	return true;
}

static void *ms_ckpt_main(void *arg)
{
	struct ms *m = arg;
	sqlite3 *db = NULL;

	pthread_mutex_lock(&m->ck_lock);
	for (;;) {
		while (!m->ck_want && !m->ck_stop)
			pthread_cond_wait(&m->ck_cond, &m->ck_lock);
		if (m->ck_stop)
			break;
		pthread_mutex_unlock(&m->ck_lock);
		bool ran = ms_ckpt_round(m, &db);
		pthread_mutex_lock(&m->ck_lock);
		if (!ran) {
			m->ck_failed = true;
			break;
		}
		/* the round answered the wakes of the commits before its end; a later commit
		 * that still finds a long WAL wakes it again */
		m->ck_want = false;
	}
	pthread_mutex_unlock(&m->ck_lock);
	sqlite3_close_v2(db);
	return NULL;
}

/* Ask the checkpointer for a round, starting it if need be. false: there is none (it could
 * not start), so the caller checkpoints itself. */
static bool ms_ckpt_wake(struct ms *m)
{
	bool ok;

	pthread_mutex_lock(&m->ck_lock);
	if (m->ck_pid != getpid() && !m->ck_failed) {
		/* none yet, or one of the process this one was forked from */
		sigset_t all, old;
		int e;

		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old); /* signals are the process's business */
		m->ck_stop = false;
		e = pthread_create(&m->ck_thread, NULL, ms_ckpt_main, m);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (e == 0) {
			m->ck_pid = getpid();
		} else {
			log_warn("meta sqlite %s: cannot start the checkpointer (%s): commits "
				 "checkpoint the WAL themselves",
				 m->path, strerror(e));
			m->ck_failed = true;
		}
	}
	ok = m->ck_pid == getpid() && !m->ck_failed;
	if (ok) {
		m->ck_want = true;
		pthread_cond_signal(&m->ck_cond);
	}
	pthread_mutex_unlock(&m->ck_lock);
	return ok;
}

/* Stop the checkpointer (its round ends first); without the handle's lock. */
static void ms_ckpt_stop(struct ms *m)
{
	pthread_mutex_lock(&m->ck_lock);
	bool running = m->ck_pid == getpid();
	m->ck_stop = true;
	pthread_cond_signal(&m->ck_cond);
	pthread_mutex_unlock(&m->ck_lock);
	if (running) {
		pthread_join(m->ck_thread, NULL);
		m->ck_pid = 0;
	}
}

/* After every commit of the handle's connection, with its lock held (SQLite's wal_hook;
 * `frames` is the WAL's length). */
static int ms_wal_hook(void *arg, sqlite3 *db, const char *schema, int frames)
{
	struct ms *m = arg;

	if (frames < MS_WAL_CHECKPOINT_PAGES)
		return SQLITE_OK;
	if (frames < MS_WAL_CHECKPOINT_PAGES * MS_WAL_BEHIND && ms_ckpt_wake(m))
		return SQLITE_OK;
	/* no checkpointer, or it fell behind: this commit pays, as with SQLite's own */
	sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return SQLITE_OK;
}

/* ---- open / close ---------------------------------------------------------------------- */

static void ms_close(struct meta *mm)
{
	struct ms *m;

	if (!mm)
		return;
	m = ms_of(mm);
	ms_ckpt_stop(m);
	for (int i = 0; i < MSQ_COUNT; i++)
		sqlite3_finalize(m->stmt[i]);
	if (m->db)
		sqlite3_close_v2(m->db);
	if (m->wal_fd >= 0)
		close(m->wal_fd);
	pthread_mutex_destroy(&m->lock);
	pthread_mutex_destroy(&m->ck_lock);
	pthread_cond_destroy(&m->ck_cond);
	free(m);
}

enum ms_file { MS_FILE_MISSING, MS_FILE_EMPTY, MS_FILE_SQLITE };

static uint32_t ms_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool ms_file_nonempty(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 && sb.st_size > 0;
}

/* Look at the file before SQLite does: SQLite must only ever see a missing file, an empty one,
 * or one with an SQLite header that is not some other application's. Reads only. */
static int ms_precheck(struct ms *m, int flags, enum ms_file *ret, char *err, size_t errlen)
{
	static const char magic[16] = "SQLite format 3";
	unsigned char hdr[100];
	char side[URL_MAX + 16];
	struct stat sb;
	uint32_t app;
	int fd, r;

	if (stat(m->path, &sb) < 0) {
		r = -errno;
		if (r != -ENOENT) {
			set_err(err, errlen, "cannot access %s: %s", m->path, strerror(-r));
			return r;
		}
		if (!(flags & META_O_CREATE)) {
			set_err(err, errlen,
				"no metadata database at %s (run 'braidfs format' first)", m->path);
			return -ENOENT;
		}
		/* SQLite would say "unable to open database file"; say which directory. */
		char dir[URL_MAX];
		char *slash;

		snprintf(dir, sizeof(dir), "%s", m->path);
		slash = strrchr(dir, '/');
		if (slash == dir)
			slash[1] = '\0';
		else if (slash)
			*slash = '\0';
		if (stat(dir, &sb) < 0)
			r = -errno;
		else
			r = S_ISDIR(sb.st_mode) ? 0 : -ENOTDIR;
		if (r < 0) {
			set_err(err, errlen, "cannot create %s: directory %s: %s", m->path, dir,
				strerror(-r));
			return r;
		}
		*ret = MS_FILE_MISSING;
		return 0;
	}
	if (S_ISDIR(sb.st_mode)) {
		set_err(err, errlen, "%s is a directory, not a braidfs metadata database", m->path);
		return -EISDIR;
	}
	if (!S_ISREG(sb.st_mode)) {
		set_err(err, errlen, "%s is not a regular file, not a braidfs metadata database",
			m->path);
		return -EINVAL;
	}
	snprintf(side, sizeof(side), "%s-wal", m->path);
	if (sb.st_size == 0) {
		/* The main file stays empty until the first checkpoint; the WAL may hold it all. */
		*ret = ms_file_nonempty(side) ? MS_FILE_SQLITE : MS_FILE_EMPTY;
		return 0;
	}
	if (sb.st_size < (off_t)sizeof(hdr))
		goto not_sqlite;
	fd = open(m->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = -errno;
		set_err(err, errlen, "cannot open %s: %s", m->path, strerror(-r));
		return r;
	}
	r = pread_full(fd, hdr, sizeof(hdr), 0);
	close(fd);
	if (r == -ENODATA)
		goto not_sqlite;
	if (r < 0) {
		set_err(err, errlen, "cannot read %s: %s", m->path, strerror(-r));
		return r;
	}
	if (memcmp(hdr, magic, sizeof(magic)) != 0)
		goto not_sqlite;
	app = ms_be32(hdr + 68);
	if (app != 0 && app != MS_APP_ID) {
		set_err(err, errlen,
			"%s is not a braidfs metadata database (an SQLite database of another "
			"application, id 0x%08x)",
			m->path, app);
		return -EINVAL;
	}
	/* A rollback journal next to a database that is not already ours: SQLite would replay it
	 * into the file on first read. braidfs databases live in WAL mode and never have one. */
	snprintf(side, sizeof(side), "%s-journal", m->path);
	if (app != MS_APP_ID && ms_file_nonempty(side)) {
		set_err(err, errlen,
			"%s is not a braidfs metadata database (an SQLite database with a "
			"rollback journal)",
			m->path);
		return -EINVAL;
	}
	*ret = MS_FILE_SQLITE;
	return 0;

not_sqlite:
	set_err(err, errlen, "%s is not a braidfs metadata database (not an SQLite file)", m->path);
	return -EINVAL;
}

/* One integer from an SQL text, for the open-time checks (statement cache not used yet). */
static int ms_open_int(sqlite3 *db, const char *sql, int64_t *ret)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			*ret = sqlite3_column_int64(st, 0);
			rc = SQLITE_OK;
		} else if (rc == SQLITE_DONE) {
			*ret = 0;
			rc = SQLITE_OK;
		}
	}
	sqlite3_finalize(st);
	return rc;
}

/* Turn an open-time SQLite failure into the user's one-liner. */
static int ms_open_fail(struct ms *m, int rc, char *err, size_t errlen)
{
	const char *msg = sqlite3_errmsg(m->db);

	switch (rc & 0xff) {
	case SQLITE_NOTADB:
		set_err(err, errlen, "%s is not a braidfs metadata database (%s)", m->path, msg);
		return -EINVAL;
	case SQLITE_CORRUPT:
		set_err(err, errlen, "%s is corrupted: %s", m->path, msg);
		return -EIO;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		set_err(err, errlen, "%s is locked by another process (%s)", m->path, msg);
		return -EBUSY;
	case SQLITE_CANTOPEN:
	case SQLITE_PERM:
	case SQLITE_READONLY: {
		int e = sqlite3_system_errno(m->db);

		set_err(err, errlen, "cannot open %s: %s", m->path, e ? strerror(e) : msg);
		return e ? -e : -EACCES;
	}
	case SQLITE_NOMEM:
		set_err(err, errlen, "cannot open %s: out of memory", m->path);
		return -ENOMEM;
	default:
		set_err(err, errlen, "cannot open %s: %s", m->path, msg);
		return -EIO;
	}
}

/* Decide whether the database SQLite now sees is ours, empty, or someone else's. Reads only;
 * checkpoint-on-close is off, so even closing after a failure does not write. */
static int ms_validate(struct ms *m, int flags, char *err, size_t errlen)
{
	int64_t app = 0, ver = 0, ntab = 0, nvol = 0, nroot = 0;
	int rc;

	rc = ms_open_int(m->db, "PRAGMA application_id", &app);
	if (rc == SQLITE_OK)
		rc = ms_open_int(m->db, "PRAGMA user_version", &ver);
	if (rc == SQLITE_OK)
		rc = ms_open_int(m->db, "SELECT count(*) FROM sqlite_schema", &ntab);
	if (rc != SQLITE_OK)
		return ms_open_fail(m, rc, err, errlen);
	if (app == 0 && ntab == 0) {
		if (!(flags & META_O_CREATE)) {
			set_err(err, errlen,
				"no metadata database at %s (the file is an empty database; run "
				"'braidfs format' first)",
				m->path);
			return -ENOENT;
		}
		return 0; /* empty: format() will fill it */
	}
	if (app != MS_APP_ID) {
		set_err(err, errlen,
			"%s is not a braidfs metadata database (an SQLite database of another "
			"application)",
			m->path);
		return -EINVAL;
	}
	if (ver > MS_SCHEMA_VERSION) {
		set_err(err, errlen,
			"%s has metadata schema version %lld, newer than this braidfs (%d): "
			"upgrade braidfs",
			m->path, (long long)ver, MS_SCHEMA_VERSION);
		return -EINVAL;
	}
	if (ver < 1) {
		set_err(err, errlen, "%s is corrupted: no schema version", m->path);
		return -EIO;
	}
	if (ver < MS_SCHEMA_VERSION && m->rdonly) {
		set_err(err, errlen,
			"%s has metadata schema version %lld and needs an upgrade to %d: open it "
			"read-write once (braidfs mount or braidfs fsck)",
			m->path, (long long)ver, MS_SCHEMA_VERSION);
		return -EINVAL;
	}
	m->schema_version = ver;
	/* Touch the pages every mount needs first, so that a damaged file is named here and not
	 * by the first lookup. */
	rc = ms_open_int(m->db, "SELECT count(*) FROM volume", &nvol);
	if (rc == SQLITE_OK)
		rc = ms_open_int(m->db,
				 "SELECT count(*) FROM inodes WHERE ino = 1 AND mode & " MS_SQL_IFMT
				 " = " MS_SQL_IFDIR,
				 &nroot);
	if (rc != SQLITE_OK && (rc & 0xff) == SQLITE_ERROR) {
		set_err(err, errlen, "%s is corrupted: %s", m->path, sqlite3_errmsg(m->db));
		return -EIO;
	}
	if (rc != SQLITE_OK)
		return ms_open_fail(m, rc, err, errlen);
	if (nvol != 1 || nroot != 1) {
		set_err(err, errlen, "%s is corrupted: %s", m->path,
			nvol != 1 ? "no volume row" : "no root directory");
		return -EIO;
	}
	m->schema = ver;
	m->formatted = true;
	return 0;
}

static int ms_exec(struct ms *m, const char *sql)
{
	int rc = sqlite3_exec(m->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : ms_errno(m, rc, sql);
}

/* Connection settings; after validation, so that nothing is written to a rejected file. */
static int ms_configure(struct ms *m, char *err, size_t errlen)
{
	char sql[256];
	int rc;

	if (!m->rdonly) {
		/* journal_mode answers with the mode it ended up in. */
		sqlite3_stmt *st = NULL;
		const unsigned char *mode = NULL;

		rc = sqlite3_prepare_v2(m->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
		if (rc == SQLITE_OK) {
			rc = sqlite3_step(st);
			if (rc == SQLITE_ROW)
				mode = sqlite3_column_text(st, 0);
		}
		if (rc != SQLITE_ROW || !mode || strcmp((const char *)mode, "wal") != 0) {
			int r = rc == SQLITE_ROW ? -EIO : ms_open_fail(m, rc, err, errlen);

			if (rc == SQLITE_ROW)
				set_err(err, errlen, "%s: cannot switch to WAL mode (got '%s')",
					m->path, mode ? (const char *)mode : "?");
			sqlite3_finalize(st);
			return r;
		}
		sqlite3_finalize(st);
	}
	snprintf(sql, sizeof(sql),
		 "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -%d;"
		 " PRAGMA temp_store = MEMORY; PRAGMA cell_size_check = ON;",
		 MS_CACHE_KIB);
	rc = sqlite3_exec(m->db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return ms_open_fail(m, rc, err, errlen);
	/* replaces SQLite's automatic checkpoint (CHECKPOINTS above) */
	if (!m->rdonly)
		sqlite3_wal_hook(m->db, ms_wal_hook, m);
	return 0;
}

/* Bring a database of an older schema up to MS_SCHEMA_VERSION, one step per version, all in
 * one transaction (a crash leaves the old version whole). Another process may have migrated it
 * first: the version is read again under the write lock. A read-only handle never migrates:
 * ms_validate() refuses to open an older schema read-only.
 *   1 -> 2: targets gain pool, node and media. Version 1 knew only dir: targets (faulty: is
 *           their test twin), all on the one host that ran it, so pool and media become
 *           'dir' and node this host's name.
 *   2 -> 3: directory quotas (META-9): the quotas table, inodes.qroot and inodes.qres.
 *   3 -> 4: chain roles (META-13, 14: chain_members.role and since; every row a member), the
 *           dirty and repairs tables (META-15, 17).
 *   4 -> 5: the async role (META-19, role 3): nothing to rewrite. */
static int ms_migrate(struct ms *m, char *err, size_t errlen)
{
	char host[META_NODE_MAX] = "", sql[64];
	sqlite3_stmt *st = NULL;
	int64_t ver = 0;
	int rc, r;

	if (m->rdonly || !m->formatted || m->schema >= MS_SCHEMA_VERSION)
		return 0;
	if (gethostname(host, sizeof(host) - 1) < 0)
		host[0] = '\0';
	r = ms_run3(m, MSQ_BEGIN_W, 0, 0, 0);
	if (r == 0)
		r = ms_int_query(m, MSQ_USER_VERSION, &ver);
	if (r == 0 && ver < 2) {
		r = ms_exec(m, "ALTER TABLE targets ADD COLUMN pool TEXT NOT NULL DEFAULT '';"
			       "ALTER TABLE targets ADD COLUMN node TEXT NOT NULL DEFAULT '';"
			       "ALTER TABLE targets ADD COLUMN media TEXT NOT NULL DEFAULT '';");
		if (r == 0) {
			rc = sqlite3_prepare_v2(
			    m->db,
			    "UPDATE targets SET node = ?1, pool = CASE WHEN url "
			    "LIKE 'dir:%' OR url LIKE 'faulty:%' THEN 'dir' ELSE "
			    "'unknown' END, media = CASE WHEN url LIKE 'dir:%' OR "
			    "url LIKE 'faulty:%' THEN 'dir' ELSE 'unknown' END",
			    -1, &st, NULL);
			if (rc != SQLITE_OK)
				r = ms_errno(m, rc, "prepare migration");
		}
		if (r == 0) {
			sqlite3_bind_text(st, 1, host, -1, SQLITE_STATIC);
			r = ms_done(m, st, "migrate targets");
		}
		sqlite3_finalize(st);
		if (r == 0)
			ver = 2;
	}
	if (r == 0 && ver < 3) {
		r = ms_exec(m, MS_MIGRATE_2_TO_3);
		if (r == 0)
			ver = 3;
	}
	if (r == 0 && ver < 4) {
		r = ms_exec(m, MS_MIGRATE_3_TO_4);
		if (r == 0)
			ver = 4;
	}
	/* 4 -> 5: chain_members.role may be 3, async (META-19). No row changes; the version
	 * written below alone keeps an older braidfs, which would drop async rows on its next
	 * chain_set, from opening the database. */
	if (r == 0 && ver < 5)
		ver = 5;
	if (r == 0) {
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d;", MS_SCHEMA_VERSION);
		r = ms_exec(m, sql);
	}
	r = ms_end(m, r);
	if (r < 0) {
		set_err(err, errlen,
			"%s: cannot upgrade the metadata schema from version %lld to %d: %s",
			m->path, (long long)m->schema, MS_SCHEMA_VERSION, strerror(-r));
		return r;
	}
	if (ver != m->schema)
		log_info("metadata %s: schema upgraded from version %lld to %lld", m->path,
			 (long long)m->schema, (long long)ver);
	m->schema = ver;
	m->schema_version = ver;
	return 0;
}

static int ms_open(const char *url, int flags, struct meta **ret, char *err, size_t errlen)
{
	struct url u;
	char uerr[URL_MAX + 64];
	enum ms_file state;
	bool created = false;
	struct ms *m;
	int rc, r;

	if (err && errlen > 0)
		err[0] = '\0';
	if (!url || !ret)
		return -EINVAL;
	r = meta_open_flags_check(flags, err, errlen);
	if (r < 0)
		return r;
	r = url_parse(url, &u, uerr, (int)sizeof(uerr));
	if (r < 0) {
		set_err(err, errlen, "bad metadata URL: %s (expected sqlite:///abs/path.db)", uerr);
		return r;
	}
	if (strcmp(u.scheme, "sqlite") != 0) {
		set_err(err, errlen, "not an sqlite URL: '%s' (expected sqlite:///abs/path.db)",
			url);
		return -EINVAL;
	}
	if (u.host[0] || u.userinfo[0] || u.port) {
		set_err(err, errlen,
			"sqlite URL '%s' names a host; a local file takes three slashes: "
			"sqlite:///abs/path.db",
			url);
		return -EINVAL;
	}
	if (u.query[0]) {
		set_err(err, errlen, "sqlite URL '%s' has a query; none is supported", url);
		return -EINVAL;
	}
	if (!u.path[0] || strcmp(u.path, "/") == 0) {
		set_err(err, errlen,
			"sqlite URL '%s' has no file path (expected "
			"sqlite:///abs/path.db)",
			url);
		return -EINVAL;
	}
	if (u.path[0] != '/') {
		set_err(err, errlen,
			"sqlite URL '%s' has a relative path '%s'; use an absolute one: "
			"sqlite:///abs/path.db",
			url, u.path);
		return -EINVAL;
	}

	m = calloc(1, sizeof(*m));
	if (!m) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	m->base.ops = &meta_sqlite_ops;
	m->rdonly = flags & META_O_RDONLY;
	m->synced_dv = -1;
	m->wal_fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	pthread_mutex_init(&m->ck_lock, NULL);
	pthread_cond_init(&m->ck_cond, NULL);
	snprintf(m->path, sizeof(m->path), "%s", u.path);

	r = ms_precheck(m, flags, &state, err, errlen);
	if (r < 0)
		goto fail;
	if (state == MS_FILE_EMPTY && !(flags & META_O_CREATE)) {
		set_err(err, errlen,
			"no metadata database at %s (the file is empty; run 'braidfs format' "
			"first)",
			m->path);
		r = -ENOENT;
		goto fail;
	}

	if (state == MS_FILE_MISSING) {
		/* Create it ourselves: SQLite would use 0644, and file names are nobody else's
		 * business. SQLite gives -wal and -shm the mode of the database file. */
		int fd = open(m->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

		if (fd < 0) {
			r = -errno;
			set_err(err, errlen, "cannot create %s: %s", m->path, strerror(-r));
			goto fail;
		}
		close(fd);
		created = true;
		state = MS_FILE_EMPTY;
	}

	/* Until the file is known to be ours, closing must not checkpoint a WAL into it. */
	rc = ms_db_open(m->path, m->rdonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE, &m->db);
	if (rc != SQLITE_OK) {
		if (!m->db) {
			set_err(err, errlen, "cannot open %s: out of memory", m->path);
			r = -ENOMEM;
		} else {
			r = ms_open_fail(m, rc, err, errlen);
		}
		goto fail;
	}
	sqlite3_extended_result_codes(m->db, 1);
	sqlite3_busy_timeout(m->db, MS_BUSY_TIMEOUT_MS);

	if (state == MS_FILE_SQLITE) {
		r = ms_validate(m, flags, err, errlen);
		if (r < 0)
			goto fail;
	}
	r = ms_configure(m, err, errlen);
	if (r == 0)
		r = ms_migrate(m, err, errlen);
	if (r < 0)
		goto fail;
	sqlite3_db_config(m->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
	*ret = &m->base;
	return 0;

fail:
	ms_ckpt_stop(m); /* before the files go */
	if (created) {
		/* Nothing of value in it: do not leave an empty "database" behind. */
		char side[URL_MAX + 8];

		unlink(m->path);
		snprintf(side, sizeof(side), "%s-wal", m->path);
		unlink(side);
		snprintf(side, sizeof(side), "%s-shm", m->path);
		unlink(side);
	}
	ms_close(&m->base);
	return r;
}

/* ---- cluster tables -------------------------------------------------------------------- */

/* Insert one target row with id `id` (inside a transaction). -EINVAL on a constraint. */
static int ms_target_insert(struct ms *m, uint32_t id, const struct meta_target *t)
{
	sqlite3_stmt *st;
	int rc, r;

	r = ms_prep(m, MSQ_TARGET_INSERT, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, t->url, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, t->uuid, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, t->state);
	sqlite3_bind_text(st, 5, t->pool, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, t->node, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 7, t->media, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if ((rc & 0xff) == SQLITE_CONSTRAINT) {
		log_debug("meta sqlite %s: target %u: %s", m->path, id, sqlite3_errmsg(m->db));
		r = -EINVAL;
	} else if (rc != SQLITE_DONE) {
		r = ms_errno(m, rc, "insert target");
	}
	sqlite3_reset(st);
	return r;
}

/* Bind v[0..n-1] to ?1..?n. */
static void ms_bind_i64s(sqlite3_stmt *st, const int64_t *v, int n)
{
	for (int i = 0; i < n; i++)
		sqlite3_bind_int64(st, i + 1, v[i]);
}

/* Write the roles of chain `chain` (META-13): every row replaced, in storage order. META-7:
 * drained and removed targets hold no chain (unknown ones: the foreign key). An away target
 * that was away in `old` (may be NULL) keeps its time (META-14: old->away_ns holds the raw
 * `since` here), a newly away one gets now(). */
static int ms_chain_write(struct ms *m, uint32_t chain, const struct meta_chain *c,
			  const struct meta_chain *old)
{
	uint32_t t[META_CHAIN_SLOTS];
	enum meta_role role[META_CHAIN_SLOTS];
	int64_t since[META_CHAIN_SLOTS];
	unsigned n = meta_chain_rows(c, old, t, role, since);
	sqlite3_stmt *st;
	int rc, r;

	r = ms_run3(m, MSQ_CHAIN_CLEAR, chain, 0, 0);
	for (unsigned i = 0; i < n && r == 0; i++) {
		int64_t state = 0;
		int64_t v[5] = {chain, i, t[i], role[i], since[i]};

		r = ms_int_by_id(m, MSQ_TARGET_STATE, t[i], &state);
		if (r == 0 && (state == META_TARGET_DRAINED || state == META_TARGET_REMOVED)) {
			log_debug("meta sqlite %s: chain %u: target %u is %s", m->path, chain, t[i],
				  meta_target_state_name((enum meta_target_state)state));
			r = -EINVAL;
		}
		if (r == -ENOENT)
			r = -EINVAL;
		if (r < 0)
			break;
		r = ms_prep(m, MSQ_CHAIN_ADD, &st);
		if (r < 0)
			break;
		ms_bind_i64s(st, v, 5);
		rc = sqlite3_step(st);
		if ((rc & 0xff) == SQLITE_CONSTRAINT) {
			/* unknown target (foreign key) or the same target twice (unique) */
			log_debug("meta sqlite %s: chain %u member %u: %s", m->path, chain, t[i],
				  sqlite3_errmsg(m->db));
			r = -EINVAL;
		} else if (rc != SQLITE_DONE) {
			r = ms_errno(m, rc, "chain member");
		}
		sqlite3_reset(st);
	}
	return r;
}

/* The current roles of chain `chain`, inside a transaction: id, epoch (-ENOENT: no chain),
 * and in away_ns the raw `since` of each away target (ms_chain_write's `old`). */
static int ms_chain_read(struct ms *m, uint32_t chain, struct meta_chain *ret)
{
	sqlite3_stmt *st;
	int64_t epoch = 0;
	int rc, r;

	r = ms_int_by_id(m, MSQ_CHAIN_EPOCH, chain, &epoch);
	if (r < 0)
		return r;
	memset(ret, 0, sizeof(*ret));
	ret->id = chain;
	ret->epoch = (uint64_t)epoch;
	r = ms_prep(m, MSQ_CHAIN_ROWS, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, chain);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		meta_chain_put(ret, (enum meta_role)sqlite3_column_int(st, 1),
			       (uint32_t)sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 2));
	r = rc == SQLITE_DONE ? 0 : ms_errno(m, rc, "chain rows");
	sqlite3_reset(st);
	return r;
}

static int ms_format_tx(struct ms *m, const struct meta_volume *vol, const struct meta_target *t,
			unsigned nt, const struct meta_chain *c, unsigned nc, uid_t uid, gid_t gid)
{
	struct meta_attr root;
	sqlite3_stmt *st = NULL;
	char uuid[37], sql[96];
	int64_t now = now_realtime_ns(), n = 0;
	uint64_t ino;
	int rc, r;

	rc = ms_open_int(m->db, "SELECT count(*) FROM sqlite_schema WHERE name = 'volume'", &n);
	if (rc != SQLITE_OK)
		return ms_errno(m, rc, "format probe");
	if (n > 0)
		return -EEXIST;
	r = ms_exec(m, ms_schema_sql);
	if (r < 0)
		return r;
	snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d;",
		 MS_APP_ID, MS_SCHEMA_VERSION);
	r = ms_exec(m, sql);
	if (r < 0)
		return r;

	snprintf(uuid, sizeof(uuid), "%s", vol->uuid);
	if (!uuid[0] && uuid_generate_str(uuid) < 0)
		return -EIO;
	rc = sqlite3_prepare_v2(m->db,
				"INSERT INTO volume (id, name, uuid, format_version, "
				"chunk_size, replicas, consistency, created_ns) "
				"VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
				-1, &st, NULL);
	if (rc != SQLITE_OK)
		return ms_errno(m, rc, "prepare volume");
	sqlite3_bind_text(st, 1, vol->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, uuid, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, vol->format_version ? vol->format_version : MS_SCHEMA_VERSION);
	sqlite3_bind_int64(st, 4, vol->chunk_size);
	sqlite3_bind_int64(st, 5, vol->replicas);
	sqlite3_bind_int64(st, 6, vol->consistency);
	sqlite3_bind_int64(st, 7, vol->created_ns ? vol->created_ns : now);
	rc = sqlite3_step(st);
	r = rc == SQLITE_DONE ? 0 : ms_errno(m, rc, "insert volume");
	sqlite3_finalize(st);
	if (r < 0)
		return r;

	for (unsigned i = 0; i < nt; i++) {
		r = ms_target_insert(m, t[i].id, &t[i]);
		if (r < 0)
			return r;
	}
	for (unsigned i = 0; i < nc; i++) {
		rc = sqlite3_prepare_v2(m->db, "INSERT INTO chains (id, epoch) VALUES (?1, ?2)", -1,
					&st, NULL);
		if (rc != SQLITE_OK)
			return ms_errno(m, rc, "prepare chain");
		sqlite3_bind_int64(st, 1, c[i].id);
		sqlite3_bind_int64(st, 2, (int64_t)c[i].epoch);
		rc = sqlite3_step(st);
		r = rc == SQLITE_DONE		       ? 0
		    : (rc & 0xff) == SQLITE_CONSTRAINT ? -EINVAL
						       : ms_errno(m, rc, "insert chain");
		sqlite3_finalize(st);
		if (r < 0)
			return r;
		struct meta_chain mem = c[i];

		mem.nsyncing = mem.naway = 0; /* format writes members and async only */
		r = ms_chain_write(m, c[i].id, &mem, NULL);
		if (r < 0)
			return r;
	}

	memset(&root, 0, sizeof(root));
	root.mode = S_IFDIR | 0755;
	root.nlink = 2;
	root.uid = uid;
	root.gid = gid;
	root.atime_ns = root.mtime_ns = root.ctime_ns = root.btime_ns = now;
	root.generation = 1;
	/* The table is empty, so AUTOINCREMENT hands out 1: the root (META-2). */
	r = ms_inode_insert(m, &root, NULL, &ino);
	if (r < 0)
		return r;
	if (ino != META_ROOT_INO) {
		log_debug("meta sqlite %s: root got inode %" PRIu64, m->path, ino);
		return -EIO;
	}
	return 0;
}

/* fsync the directory holding the database so that a freshly created file survives. */
static void ms_sync_dir(struct ms *m)
{
	char dir[URL_MAX];
	char *slash;
	int fd;

	snprintf(dir, sizeof(dir), "%s", m->path);
	slash = strrchr(dir, '/');
	if (!slash)
		return;
	if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (fsync(fd) < 0)
		log_debug("meta sqlite %s: fsync of %s: %s", m->path, dir, strerror(errno));
	close(fd);
}

static int ms_format(struct meta *mm, const struct meta_volume *vol, const struct meta_target *t,
		     unsigned ntargets, const struct meta_chain *c, unsigned nchains, uid_t uid,
		     gid_t gid)
{
	struct ms *m = ms_of(mm);
	int r;

	r = meta_format_check(vol, t, ntargets, c, nchains);
	if (r < 0)
		return r;

	ms_lock(m);
	if (m->rdonly) {
		r = -EROFS;
		goto out;
	}
	if (ms_ready(m) == 0) {
		r = -EEXIST;
		goto out;
	}
	/* Format is rare and must be durable when it returns: commit it with FULL. */
	r = ms_run3(m, MSQ_SYNC_FULL, 0, 0, 0);
	if (r < 0)
		goto out;
	r = ms_run3(m, MSQ_BEGIN_W, 0, 0, 0);
	if (r == 0)
		r = ms_end(m, ms_format_tx(m, vol, t, ntargets, c, nchains, uid, gid));
	if (ms_run3(m, MSQ_SYNC_NORMAL, 0, 0, 0) < 0 && r == 0)
		r = -EIO;
	if (r == 0) {
		m->formatted = true;
		m->schema = MS_SCHEMA_VERSION;
		m->synced_txns = m->txns;
		ms_sync_dir(m);
	}
out:
	ms_unlock(m);
	return r;
}

static int ms_volume_get(struct meta *mm, struct meta_volume *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_volume v;
	sqlite3_stmt *st;
	int rc, r;

	ms_lock(m);
	r = ms_ready(m);
	if (r < 0)
		goto out;
	r = ms_prep(m, MSQ_VOLUME_GET, &st);
	if (r < 0)
		goto out;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		memset(&v, 0, sizeof(v));
		snprintf(v.name, sizeof(v.name), "%s",
			 (const char *)sqlite3_column_text(st, 0) ?: "");
		snprintf(v.uuid, sizeof(v.uuid), "%s",
			 (const char *)sqlite3_column_text(st, 1) ?: "");
		v.format_version = (uint32_t)sqlite3_column_int64(st, 2);
		v.chunk_size = (uint32_t)sqlite3_column_int64(st, 3);
		v.replicas = (uint32_t)sqlite3_column_int64(st, 4);
		v.consistency = (enum meta_consistency)sqlite3_column_int(st, 5);
		v.created_ns = sqlite3_column_int64(st, 6);
		*ret = v;
	} else if (rc == SQLITE_DONE) {
		r = -ENOENT;
	} else {
		r = ms_errno(m, rc, "volume get");
	}
	sqlite3_reset(st);
out:
	ms_unlock(m);
	return r;
}

static int ms_targets_list(struct meta *mm, struct meta_target *ret, unsigned max)
{
	struct ms *m = ms_of(mm);
	sqlite3_stmt *st;
	int rc, r, n = 0;

	ms_lock(m);
	r = ms_ready(m);
	if (r < 0)
		goto out;
	/* a read-only handle on a version 1 database reads it as it is (ms_migrate) */
	r = ms_prep(m, m->schema < 2 ? MSQ_TARGETS_LIST_V1 : MSQ_TARGETS_LIST, &st);
	if (r < 0)
		goto out;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if ((unsigned)n < max && ret) {
			struct meta_target *t = &ret[n];

			memset(t, 0, sizeof(*t));
			t->id = (uint32_t)sqlite3_column_int64(st, 0);
			snprintf(t->url, sizeof(t->url), "%s",
				 (const char *)sqlite3_column_text(st, 1) ?: "");
			snprintf(t->uuid, sizeof(t->uuid), "%s",
				 (const char *)sqlite3_column_text(st, 2) ?: "");
			t->state = (enum meta_target_state)sqlite3_column_int(st, 3);
			snprintf(t->pool, sizeof(t->pool), "%s",
				 (const char *)sqlite3_column_text(st, 4) ?: "");
			snprintf(t->node, sizeof(t->node), "%s",
				 (const char *)sqlite3_column_text(st, 5) ?: "");
			snprintf(t->media, sizeof(t->media), "%s",
				 (const char *)sqlite3_column_text(st, 6) ?: "");
		}
		n++;
	}
	r = rc == SQLITE_DONE ? n : ms_errno(m, rc, "targets list");
	sqlite3_reset(st);
out:
	ms_unlock(m);
	return r;
}

/* Run an "UPDATE targets SET x = ?2 WHERE id = ?1" with a text value. */
static int ms_target_set_text(struct ms *m, enum ms_sid sid, uint32_t id, const char *v)
{
	sqlite3_stmt *st;
	int r = ms_prep(m, sid, &st);

	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
	return ms_done(m, st, ms_sql[sid]);
}

static int ms_target_update_tx(struct ms *m, uint32_t id, unsigned mask,
			       const struct meta_target *in)
{
	int64_t state = 0, nchains = 0;
	int r = ms_int_by_id(m, MSQ_TARGET_STATE, id, &state);

	if (r < 0)
		return r;
	if (state == META_TARGET_REMOVED)
		return -EINVAL; /* META-7: final */
	if ((mask & META_TSET_STATE) &&
	    (in->state == META_TARGET_DRAINED || in->state == META_TARGET_REMOVED)) {
		r = ms_int_by_id(m, MSQ_TARGET_NCHAINS, id, &nchains);
		if (r < 0)
			return r;
		if (nchains > 0)
			return -EBUSY; /* META-7 */
	}
	if (mask & META_TSET_STATE)
		r = ms_run3(m, MSQ_TARGET_SET_STATE, id, in->state, 0);
	if (r == 0 && (mask & META_TSET_POOL))
		r = ms_target_set_text(m, MSQ_TARGET_SET_POOL, id, in->pool);
	if (r == 0 && (mask & META_TSET_NODE))
		r = ms_target_set_text(m, MSQ_TARGET_SET_NODE, id, in->node);
	if (r == 0 && (mask & META_TSET_MEDIA))
		r = ms_target_set_text(m, MSQ_TARGET_SET_MEDIA, id, in->media);
	return r;
}

static int ms_target_update(struct meta *mm, uint32_t id, unsigned mask,
			    const struct meta_target *in)
{
	struct ms *m = ms_of(mm);
	int r = meta_target_update_check(mask, in);

	if (r < 0)
		return r;
	ms_lock(m);
	r = ms_begin(m);
	if (r == 0 && m->schema < 2 && (mask & ~META_TSET_STATE))
		r = -EROFS; /* cannot happen: a writable handle migrated at open */
	if (r == 0)
		r = ms_end(m, ms_target_update_tx(m, id, mask, in));
	ms_unlock(m);
	return r;
}

static int ms_target_set_state(struct meta *mm, uint32_t id, enum meta_target_state state)
{
	struct meta_target in = {.state = state};

	return ms_target_update(mm, id, META_TSET_STATE, &in);
}

static int ms_target_add_tx(struct ms *m, const struct meta_target *t, uint32_t *ret_id)
{
	sqlite3_stmt *st;
	int64_t next = 0, count = 0, user = 0;
	int rc, r;

	r = ms_prep(m, MSQ_TARGET_URL_USER, &st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, t->url, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		user = sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_DONE)
		r = ms_errno(m, rc, "target url");
	sqlite3_reset(st);
	if (r < 0)
		return r;
	if (user)
		return -EEXIST; /* META-8 */
	r = ms_prep(m, MSQ_TARGET_NEXT_ID, &st);
	if (r < 0)
		return r;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		next = sqlite3_column_int64(st, 0);
		count = sqlite3_column_int64(st, 1);
	} else {
		r = ms_errno(m, rc, "target next id");
	}
	sqlite3_reset(st);
	if (r < 0)
		return r;
	if (count >= META_MAX_TARGETS || next > UINT32_MAX)
		return -ENOSPC;
	r = ms_target_insert(m, (uint32_t)next, t);
	if (r == 0)
		*ret_id = (uint32_t)next;
	return r;
}

static int ms_target_add(struct meta *mm, const struct meta_target *t, uint32_t *ret_id)
{
	struct ms *m = ms_of(mm);
	uint32_t id = 0;
	int r;

	if (!t || !meta_target_ok(t) || t->state == META_TARGET_REMOVED)
		return -EINVAL;
	r = MS_WRITE_TX(m, ms_target_add_tx(m, t, &id));
	if (r == 0 && ret_id)
		*ret_id = id;
	return r;
}

static int ms_chains_list(struct meta *mm, struct meta_chain *ret, unsigned max)
{
	struct ms *m = ms_of(mm);
	struct meta_chains_reader g = {.ret = ret, .max = max};
	int64_t v[META_CHAINS_NCOLS];
	sqlite3_stmt *st;
	int rc, r;

	ms_lock(m);
	r = ms_ready(m);
	if (r < 0)
		goto out;
	/* One statement = one snapshot: epochs and members agree. */
	r = ms_prep(m, MSQ_CHAINS_LIST, &st);
	if (r < 0)
		goto out;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		ms_row_i64s(st, 0, v, META_CHAINS_NCOLS); /* no member: target NULL reads as 0 */
		meta_chains_row(&g, v);
	}
	r = rc == SQLITE_DONE ? g.n : ms_errno(m, rc, "chains list");
	sqlite3_reset(st);
out:
	ms_unlock(m);
	return r;
}

/* One epoch-conditional chain change (META-6): the roles meta_chain_change_apply() makes of
 * the current ones are written and get epoch + 1; a promotion's dirty and repairs rows go
 * with the same commit (META-16). */
static int ms_chain_change_tx(struct ms *m, const struct meta_chain_change *u, uint64_t *ret_epoch)
{
	struct meta_chain cur, next;
	int r;

	r = ms_chain_read(m, u->id, &cur);
	if (r == 0)
		r = meta_chain_change_apply(u, &cur, &next);
	if (r == 0)
		r = ms_chain_write(m, u->id, &next, &cur);
	if (r == 0)
		r = ms_run3(m, MSQ_CHAIN_SET_EPOCH, u->id, (int64_t)cur.epoch + 1, 0);
	if (r == 0 && u->op == META_CHAIN_PROMOTE) {
		r = ms_run3(m, MSQ_DIRTY_CLEAR, u->id, u->target, 0);
		if (r == 0)
			r = ms_run3(m, MSQ_REPAIR_DEL, u->id, u->target, 0);
	}
	if (r == 0)
		*ret_epoch = cur.epoch + 1;
	return r;
}

static int ms_chain_change(struct meta *mm, const struct meta_chain_change *u, uint64_t *ret_epoch)
{
	struct ms *m = ms_of(mm);
	uint64_t epoch = 0;
	int r = meta_chain_change_check(u);

	if (r == 0)
		r = MS_WRITE_TX(m, ms_chain_change_tx(m, u, &epoch));
	if (r == 0 && ret_epoch)
		*ret_epoch = epoch;
	return r;
}

static int ms_chain_update(struct meta *mm, uint32_t chain_id, uint64_t expect_epoch,
			   const uint32_t *members, uint32_t nmembers, uint64_t *ret_epoch)
{
	struct meta_chain_change u = {.op = META_CHAIN_UPDATE,
				      .id = chain_id,
				      .expect = expect_epoch,
				      .members = members,
				      .n = nmembers};

	return ms_chain_change(mm, &u, ret_epoch);
}

static int ms_chain_set(struct meta *mm, uint32_t chain_id, uint64_t expect_epoch,
			const struct meta_chain *in, uint64_t *ret_epoch)
{
	struct meta_chain_change u = {
	    .op = META_CHAIN_SET, .id = chain_id, .expect = expect_epoch, .in = in};

	return ms_chain_change(mm, &u, ret_epoch);
}

static int ms_chain_promote(struct meta *mm, uint32_t chain_id, uint64_t expect_epoch,
			    uint32_t target, uint64_t *ret_epoch)
{
	struct meta_chain_change u = {
	    .op = META_CHAIN_PROMOTE, .id = chain_id, .expect = expect_epoch, .target = target};

	return ms_chain_change(mm, &u, ret_epoch);
}

/* ---- dirty chunks (META-15) and repairs (META-17) -------------------------------------- */

/* The chain and the target exist: -EINVAL otherwise (a clearer answer than the FK's). */
static int ms_chain_target_known(struct ms *m, uint32_t chain, uint32_t target)
{
	int64_t x = 0;
	int r = ms_int_by_id(m, MSQ_CHAIN_EPOCH, chain, &x);

	if (r == 0)
		r = ms_int_by_id(m, MSQ_TARGET_STATE, target, &x);
	return r == -ENOENT ? -EINVAL : r;
}

/* Run statement id (?1 chain, ?2 target, ?3 ino, ?4 idx) once per ref. */
static int ms_dirty_each_tx(struct ms *m, enum ms_sid id, uint32_t chain, uint32_t target,
			    const struct meta_chunk_ref *refs, unsigned n)
{
	int r = ms_chain_target_known(m, chain, target);

	for (unsigned i = 0; i < n && r == 0; i++) {
		int64_t v[4] = {chain, target, (int64_t)refs[i].ino, (int64_t)refs[i].idx};
		sqlite3_stmt *st;

		r = ms_prep(m, id, &st);
		if (r < 0)
			break;
		ms_bind_i64s(st, v, 4);
		r = ms_done(m, st, ms_sql[id]);
	}
	return r;
}

static int ms_dirty_batch(struct meta *mm, enum ms_sid id, uint32_t chain, uint32_t target,
			  const struct meta_chunk_ref *refs, unsigned n)
{
	struct ms *m = ms_of(mm);
	int r = meta_dirty_refs_check(refs, n);

	return r < 0 ? r : MS_WRITE_TX(m, ms_dirty_each_tx(m, id, chain, target, refs, n));
}

static int ms_dirty_add(struct meta *mm, uint32_t chain, uint32_t target,
			const struct meta_chunk_ref *refs, unsigned n)
{
	return ms_dirty_batch(mm, MSQ_DIRTY_ADD, chain, target, refs, n);
}

static int ms_dirty_remove(struct meta *mm, uint32_t chain, uint32_t target,
			   const struct meta_chunk_ref *refs, unsigned n)
{
	return ms_dirty_batch(mm, MSQ_DIRTY_DEL, chain, target, refs, n);
}

static int ms_dirty_clear(struct meta *mm, uint32_t chain, uint32_t target)
{
	struct ms *m = ms_of(mm);

	return MS_WRITE_TX(m, ms_run3(m, MSQ_DIRTY_CLEAR, chain, target, 0));
}

static int ms_dirty_list(struct meta *mm, uint32_t chain, uint32_t target,
			 const struct meta_chunk_ref *after, struct meta_chunk_ref *ret,
			 unsigned max)
{
	struct ms *m = ms_of(mm);
	int64_t v[6] = {chain,
			target,
			after != NULL,
			after ? (int64_t)after->ino : 0,
			after ? (int64_t)after->idx : 0,
			MIN(max, (unsigned)INT32_MAX)};
	sqlite3_stmt *st;
	int rc, r, n = 0;

	if ((!ret && max) || (after && (after->ino > INT64_MAX || after->idx > INT64_MAX)))
		return -EINVAL;
	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_prep(m, MSQ_DIRTY_LIST, &st);
	if (r == 0) {
		ms_bind_i64s(st, v, 6);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW && (unsigned)n < max) {
			ret[n].ino = (uint64_t)sqlite3_column_int64(st, 0);
			ret[n].idx = (uint64_t)sqlite3_column_int64(st, 1);
			n++;
		}
		r = rc == SQLITE_DONE || rc == SQLITE_ROW ? n : ms_errno(m, rc, "dirty list");
		sqlite3_reset(st);
	}
	ms_unlock(m);
	return r;
}

/* The first column of statement id with ?1, ?2 bound; under the lock, outside a transaction. */
static int ms_count2(struct ms *m, enum ms_sid id, int64_t a, int64_t b, int64_t *ret)
{
	sqlite3_stmt *st;
	int rc, r;

	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_prep(m, id, &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, a);
		sqlite3_bind_int64(st, 2, b);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW)
			*ret = sqlite3_column_int64(st, 0);
		else
			r = ms_errno(m, rc, ms_sql[id]);
		sqlite3_reset(st);
	}
	ms_unlock(m);
	return r;
}

static int ms_dirty_count(struct meta *mm, uint32_t chain, uint32_t target, uint64_t *ret)
{
	int64_t n = 0;
	int r = ms_count2(ms_of(mm), MSQ_DIRTY_COUNT, chain, target, &n);

	if (r == 0 && ret)
		*ret = (uint64_t)n;
	return r;
}

static int ms_repair_set_tx(struct ms *m, const struct meta_repair *in)
{
	int64_t v[7] = {in->chain,
			in->target,
			in->kind,
			(int64_t)in->chunks_total,
			(int64_t)in->chunks_done,
			(int64_t)in->bytes_done,
			(int64_t)in->rate};
	sqlite3_stmt *st;
	int r = ms_chain_target_known(m, in->chain, in->target);

	if (r == 0)
		r = ms_prep(m, MSQ_REPAIR_PUT, &st);
	if (r < 0)
		return r;
	ms_bind_i64s(st, v, 7);
	return ms_done(m, st, "repair set");
}

static int ms_repair_set(struct meta *mm, const struct meta_repair *in)
{
	struct ms *m = ms_of(mm);
	int r = meta_repair_check(in);

	if (r < 0)
		return r;
	return MS_WRITE_TX(m, ms_repair_set_tx(m, in));
}

static int ms_repair_delete_tx(struct ms *m, uint32_t chain, uint32_t target)
{
	int r = ms_run3(m, MSQ_REPAIR_DEL, chain, target, 0);

	return r == 0 && sqlite3_changes(m->db) == 0 ? -ENOENT : r;
}

static int ms_repair_delete(struct meta *mm, uint32_t chain, uint32_t target)
{
	struct ms *m = ms_of(mm);

	return MS_WRITE_TX(m, ms_repair_delete_tx(m, chain, target));
}

static int ms_repairs_list(struct meta *mm, struct meta_repair *ret, unsigned max)
{
	struct ms *m = ms_of(mm);
	sqlite3_stmt *st;
	int rc, r, n = 0;

	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_prep(m, MSQ_REPAIRS_LIST, &st);
	if (r == 0) {
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			if ((unsigned)n < max && ret) {
				int64_t v[META_REPAIR_NCOLS];

				ms_row_i64s(st, 0, v, META_REPAIR_NCOLS);
				meta_repair_from_cols(&ret[n], v);
			}
			n++;
		}
		r = rc == SQLITE_DONE ? n : ms_errno(m, rc, "repairs list");
		sqlite3_reset(st);
	}
	ms_unlock(m);
	return r;
}

/* ---- namespace: reads ------------------------------------------------------------------ */

static int ms_lookup(struct meta *mm, uint64_t parent, const char *name, struct meta_attr *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	sqlite3_stmt *st;
	int rc, r;

	r = meta_name_check(name);
	if (r < 0)
		return r;
	if (parent == 0 || parent > INT64_MAX)
		return -ENOENT;
	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_prep(m, MSQ_LOOKUP, &st);
	if (r < 0) {
		ms_unlock(m);
		return r;
	}
	/* One statement (one read transaction) answers a miss too: a create's negative lookup
	 * costs no second read to tell "no such name" from "not a directory". */
	sqlite3_bind_int64(st, 1, (int64_t)parent);
	ms_bind_name(st, 2, name);
	rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		r = -ENOENT; /* no such directory */
	} else if (rc != SQLITE_ROW) {
		r = ms_errno(m, rc, "lookup");
	} else if (!S_ISDIR(sqlite3_column_int64(st, 0))) {
		r = -ENOTDIR;
	} else {
		r = ms_dent_row(m, st, 1, parent, name, NULL, &a); /* -ENOENT: no such name */
	}
	sqlite3_reset(st);
	ms_unlock(m);
	if (r == 0)
		*ret = a;
	return r;
}

static int ms_getattr(struct meta *mm, uint64_t ino, struct meta_attr *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	int r;

	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_inode_get(m, ino, &a);
	ms_unlock(m);
	if (r == 0)
		*ret = a;
	return r;
}

static int ms_readlink(struct meta *mm, uint64_t ino, char *buf, size_t size)
{
	struct ms *m = ms_of(mm);
	sqlite3_stmt *st;
	int rc, r;

	if (ino == 0 || ino > INT64_MAX)
		return -ENOENT;
	ms_lock(m);
	r = ms_ready(m);
	if (r < 0)
		goto out;
	r = ms_prep(m, MSQ_INODE_LINK, &st);
	if (r < 0)
		goto out;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const void *p = sqlite3_column_blob(st, 1);
		int n = sqlite3_column_bytes(st, 1);

		if (!S_ISLNK((mode_t)sqlite3_column_int64(st, 0)) || !p) {
			r = -EINVAL;
		} else if ((size_t)n + 1 > size || !buf) {
			r = -ERANGE;
		} else {
			memcpy(buf, p, (size_t)n);
			buf[n] = '\0';
			r = n;
		}
	} else if (rc == SQLITE_DONE) {
		r = -ENOENT;
	} else {
		r = ms_errno(m, rc, "readlink");
	}
	sqlite3_reset(st);
out:
	ms_unlock(m);
	return r;
}

/* readdir and readdirplus: batches of MS_BATCH entries after `off`, the lock dropped between
 * batches. Entry offsets are dentry id + 2 (see the schema). */
static int ms_readdir_any(struct ms *m, uint64_t dir, uint64_t off, meta_dirent_cb cb,
			  meta_direntplus_cb pcb, void *ctx)
{
	char name[META_NAME_MAX + 1];
	int64_t after;
	bool first = true;
	int r = 0;

	if (off > (uint64_t)INT64_MAX)
		return 0; /* beyond every id SQLite can hand out */
	after = off > 2 ? (int64_t)(off - 2) : 0;
	for (;;) {
		sqlite3_stmt *st;
		int rc = SQLITE_DONE, n = 0, stop = 0;

		ms_lock(m);
		if (first) {
			r = ms_ready(m);
			if (r == 0)
				r = ms_dir_get(m, dir, NULL);
			first = false;
		}
		if (r == 0)
			r = ms_prep(m, pcb ? MSQ_READDIRPLUS : MSQ_READDIR, &st);
		if (r < 0) {
			ms_unlock(m);
			return r;
		}
		sqlite3_bind_int64(st, 1, (int64_t)dir);
		sqlite3_bind_int64(st, 2, after);
		sqlite3_bind_int(st, 3, MS_BATCH);
		while (!stop && (rc = sqlite3_step(st)) == SQLITE_ROW) {
			int64_t id = sqlite3_column_int64(st, 0);

			n++;
			after = id;
			if (sqlite3_column_type(st, pcb ? 2 : 3) == SQLITE_NULL) {
				/* names a missing inode: hidden until check() removes it */
				continue;
			}
			ms_col_name(st, 1, name);
			if (pcb) {
				struct meta_attr a;

				ms_row_attr(st, 2, &a);
				stop = pcb(ctx, name, &a, (uint64_t)id + 2);
			} else {
				stop = cb(ctx, name, (uint64_t)sqlite3_column_int64(st, 2),
					  (uint32_t)sqlite3_column_int64(st, 3), (uint64_t)id + 2);
			}
		}
		if (!stop && rc != SQLITE_DONE && rc != SQLITE_ROW)
			r = ms_errno(m, rc, "readdir");
		sqlite3_reset(st);
		ms_unlock(m);
		if (r < 0 || stop || n < MS_BATCH)
			return r;
	}
}

static int ms_readdir(struct meta *mm, uint64_t dir, uint64_t off, meta_dirent_cb cb, void *ctx)
{
	if (!cb)
		return -EINVAL;
	return ms_readdir_any(ms_of(mm), dir, off, cb, NULL, ctx);
}

static int ms_readdirplus(struct meta *mm, uint64_t dir, uint64_t off, meta_direntplus_cb cb,
			  void *ctx)
{
	if (!cb)
		return -EINVAL;
	return ms_readdir_any(ms_of(mm), dir, off, NULL, cb, ctx);
}

/* ---- namespace: writes ----------------------------------------------------------------- */

#define MS_SETATTR_ALL                                                                             \
	(META_SET_MODE | META_SET_UID | META_SET_GID | META_SET_SIZE | META_SET_ATIME |            \
	 META_SET_MTIME | META_SET_CTIME | META_SET_FLAGS)

static int ms_setattr_tx(struct ms *m, uint64_t ino, unsigned mask, const struct meta_attr *in,
			 struct meta_attr *ret)
{
	struct meta_attr a, old;
	int r;

	r = ms_inode_get(m, ino, &a);
	if (r < 0)
		return r;
	old = a;
	r = meta_setattr_apply(&a, mask, in);
	if (r < 0)
		return r;
	if (a.qroot && a.qroot != a.ino) {
		/* The data path reserved before writing, so a recorded size never needs room it
		 * did not get: account, do not refuse (a refusal here would lose a size). */
		r = ms_quota_charge(
		    m, a.qroot, (int64_t)meta_charged(&a) - (int64_t)meta_charged(&old), 0, false);
		if (r < 0)
			return r;
	}
	r = ms_inode_put(m, &a);
	if (r < 0)
		return r;
	*ret = a;
	return 0;
}

static int ms_setattr(struct meta *mm, uint64_t ino, unsigned mask, const struct meta_attr *in,
		      struct meta_attr *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	int r;

	if ((mask & ~MS_SETATTR_ALL) || (mask && !in))
		return -EINVAL;
	r = MS_WRITE_TX(m, ms_setattr_tx(m, ino, mask, in, &a));
	if (r == 0 && ret)
		*ret = a;
	return r;
}

static int ms_mknod_tx(struct ms *m, uint64_t parent, const char *name, const struct meta_attr *in,
		       const char *link, struct meta_attr *ret)
{
	struct meta_attr a, p;
	int r;

	r = ms_dir_live(m, parent, &p);
	if (r < 0)
		return r;
	r = ms_dent_get(m, parent, name, NULL, NULL);
	if (r == 0)
		return -EEXIST;
	if (r != -ENOENT)
		return r;
	/* META-9: the new inode belongs to the parent's quota root and counts against it. */
	r = ms_quota_charge(m, p.qroot, 0, 1, true);
	if (r < 0)
		return r;

	meta_mknod_attr(in, link, &p, &a);
	r = ms_inode_insert(m, &a, link, &a.ino);
	if (r < 0)
		return r;
	r = ms_dent_insert(m, parent, name, a.ino);
	if (r < 0)
		return r;
	r = ms_dir_touch(m, parent, S_ISDIR(a.mode) ? 1 : 0, in->ctime_ns);
	if (r < 0)
		return r;
	*ret = a;
	return 0;
}

static int ms_mknod(struct meta *mm, uint64_t parent, const char *name, const struct meta_attr *in,
		    const char *link, struct meta_attr *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	int r;

	r = meta_mknod_check(name, in, link);
	if (r < 0)
		return r;
	r = MS_WRITE_TX(m, ms_mknod_tx(m, parent, name, in, link, &a));
	if (r == 0 && ret)
		*ret = a;
	return r;
}

static int ms_link_tx(struct ms *m, uint64_t ino, uint64_t newparent, const char *newname,
		      int64_t now, struct meta_attr *ret)
{
	struct meta_attr a, np;
	int r;

	r = ms_inode_get(m, ino, &a);
	if (r < 0)
		return r;
	if (S_ISDIR(a.mode))
		return -EPERM;
	if (a.nlink >= MS_LINK_MAX)
		return -EMLINK;
	r = ms_dir_live(m, newparent, &np);
	if (r < 0)
		return r;
	if (np.qroot != a.qroot)
		return -EXDEV; /* META-9: an inode is accounted to one quota root */
	r = ms_dent_get(m, newparent, newname, NULL, NULL);
	if (r == 0)
		return -EEXIST;
	if (r != -ENOENT)
		return r;
	r = ms_dent_insert(m, newparent, newname, ino);
	if (r < 0)
		return r;
	/* nlink 0 -> 1 revives an orphan (linkat of an O_TMPFILE file); the kernel decides
	 * whether that is allowed. */
	a.nlink++;
	a.ctime_ns = now;
	r = ms_inode_put(m, &a);
	if (r < 0)
		return r;
	r = ms_dir_touch(m, newparent, 0, now);
	if (r < 0)
		return r;
	*ret = a;
	return 0;
}

static int ms_link(struct meta *mm, uint64_t ino, uint64_t newparent, const char *newname,
		   int64_t now_ns, struct meta_attr *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	int r;

	r = meta_name_check(newname);
	if (r < 0)
		return r;
	if (meta_name_is_dot(newname))
		return -EEXIST;
	r = MS_WRITE_TX(m, ms_link_tx(m, ino, newparent, newname, now_ns, &a));
	if (r == 0 && ret)
		*ret = a;
	return r;
}

static int ms_unlink_tx(struct ms *m, uint64_t parent, const char *name, int64_t now,
			struct meta_attr *ret)
{
	struct meta_attr a;
	int64_t id;
	int r;

	r = ms_dir_get(m, parent, NULL);
	if (r < 0)
		return r;
	r = ms_dent_get(m, parent, name, &id, &a);
	if (r < 0)
		return r;
	if (S_ISDIR(a.mode))
		return -EISDIR;
	r = ms_run3(m, MSQ_DENT_DELETE, id, 0, 0);
	if (r < 0)
		return r;
	if (a.nlink > 0)
		a.nlink--;
	a.ctime_ns = now;
	r = ms_inode_put(m, &a); /* nlink 0: the row stays, an orphan (META-3) */
	if (r < 0)
		return r;
	r = ms_dir_touch(m, parent, 0, now);
	if (r < 0)
		return r;
	*ret = a;
	return 0;
}

static int ms_unlink(struct meta *mm, uint64_t parent, const char *name, int64_t now_ns,
		     struct meta_attr *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	int r;

	r = meta_name_check(name);
	if (r < 0)
		return r;
	r = MS_WRITE_TX(m, ms_unlink_tx(m, parent, name, now_ns, &a));
	if (r == 0 && ret)
		*ret = a;
	return r;
}

static int ms_rmdir_tx(struct ms *m, uint64_t parent, const char *name, int64_t now,
		       struct meta_attr *ret)
{
	struct meta_attr a;
	int64_t id;
	int r;

	r = ms_dir_get(m, parent, NULL);
	if (r < 0)
		return r;
	r = ms_dent_get(m, parent, name, &id, &a);
	if (r < 0)
		return r;
	if (!S_ISDIR(a.mode))
		return -ENOTDIR;
	r = ms_has_children(m, a.ino);
	if (r < 0)
		return r;
	if (r > 0)
		return -ENOTEMPTY;
	r = ms_run3(m, MSQ_DENT_DELETE, id, 0, 0);
	if (r == 0)
		r = ms_inode_delete(m, &a);
	if (r == 0)
		r = ms_dir_touch(m, parent, -1, now);
	if (r < 0)
		return r;
	a.nlink = 0;
	a.ctime_ns = now;
	*ret = a;
	return 0;
}

static int ms_rmdir(struct meta *mm, uint64_t parent, const char *name, int64_t now_ns,
		    struct meta_attr *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	int r;

	r = meta_name_check(name);
	if (r < 0)
		return r;
	r = MS_WRITE_TX(m, ms_rmdir_tx(m, parent, name, now_ns, &a));
	if (r == 0 && ret)
		*ret = a;
	return r;
}

/* Parents' mtime/ctime = now and their nlink adjusted; one update when they are the same. */
static int ms_touch_parents(struct ms *m, uint64_t parent, int dp, uint64_t newparent, int dn,
			    int64_t now)
{
	int r;

	if (parent == newparent)
		return ms_dir_touch(m, parent, dp + dn, now);
	r = ms_dir_touch(m, parent, dp, now);
	if (r < 0)
		return r;
	return ms_dir_touch(m, newparent, dn, now);
}

static int ms_rename_tx(struct ms *m, uint64_t parent, const char *name, uint64_t newparent,
			const char *newname, unsigned flags, int64_t now,
			struct meta_attr *ret_replaced)
{
	struct meta_attr src, dst, pa, na;
	int64_t sid, did = 0;
	bool have_dst, sdir, ddir;
	int r;

	memset(ret_replaced, 0, sizeof(*ret_replaced));
	r = ms_dir_get(m, parent, &pa);
	if (r == 0 && newparent != parent) {
		r = ms_dir_live(m, newparent, &na);
		/* META-9: what moves between quota roots would change accounts: refuse, as XFS
		 * project quotas do, so that mv copies instead. */
		if (r == 0 && pa.qroot != na.qroot)
			r = -EXDEV;
	}
	if (r < 0)
		return r;
	r = ms_dent_get(m, parent, name, &sid, &src);
	if (r < 0)
		return r;
	r = ms_dent_get(m, newparent, newname, &did, &dst);
	if (r < 0 && r != -ENOENT)
		return r;
	have_dst = r == 0;

	if ((flags & RENAME_EXCHANGE) && !have_dst)
		return -ENOENT;
	if ((flags & RENAME_NOREPLACE) && have_dst)
		return -EEXIST; /* even for the same inode, as Linux */
	/* Both names already lead to the same inode (the same entry, or two hard links): rename(2)
	 * does nothing and succeeds. */
	if (have_dst && dst.ino == src.ino)
		return 0;

	sdir = S_ISDIR(src.mode);
	ddir = have_dst && S_ISDIR(dst.mode);
	if (sdir && newparent != parent) {
		r = ms_check_not_ancestor(m, src.ino, newparent);
		if (r < 0)
			return r;
	}

	if (flags & RENAME_EXCHANGE) {
		/* dst moves to parent: it must not be parent's ancestor either. */
		if (ddir && newparent != parent) {
			r = ms_check_not_ancestor(m, dst.ino, parent);
			if (r < 0)
				return r;
		}
		r = ms_run3(m, MSQ_DENT_SET_INO, sid, (int64_t)dst.ino, 0);
		if (r == 0)
			r = ms_run3(m, MSQ_DENT_SET_INO, did, (int64_t)src.ino, 0);
		if (r == 0)
			r = ms_run3(m, MSQ_INODE_CTIME, (int64_t)src.ino, now, 0);
		if (r == 0)
			r = ms_run3(m, MSQ_INODE_CTIME, (int64_t)dst.ino, now, 0);
		if (r < 0)
			return r;
		/* A directory that changes parent takes its ".." link with it. */
		return ms_touch_parents(m, parent, (int)ddir - (int)sdir, newparent,
					(int)sdir - (int)ddir, now);
	}

	if (have_dst) {
		if (sdir && !ddir)
			return -ENOTDIR;
		if (!sdir && ddir)
			return -EISDIR;
		if (ddir) {
			r = ms_has_children(m, dst.ino);
			if (r < 0)
				return r;
			if (r > 0)
				return -ENOTEMPTY;
		}
		r = ms_run3(m, MSQ_DENT_DELETE, did, 0, 0);
		if (r < 0)
			return r;
		if (ddir) {
			/* An empty directory has nothing to keep open data for: gone now, as
			 * rmdir. */
			r = ms_inode_delete(m, &dst);
			dst.nlink = 0;
		} else {
			if (dst.nlink > 0)
				dst.nlink--;
			dst.ctime_ns = now;
			r = ms_inode_put(m, &dst);
		}
		if (r < 0)
			return r;
		dst.ctime_ns = now;
	}
	r = ms_dent_move(m, sid, newparent, newname);
	if (r == 0)
		r = ms_run3(m, MSQ_INODE_CTIME, (int64_t)src.ino, now, 0);
	if (r == 0)
		r = ms_touch_parents(m, parent, sdir && parent != newparent ? -1 : 0, newparent,
				     (sdir && parent != newparent ? 1 : 0) - (ddir ? 1 : 0), now);
	if (r < 0)
		return r;
	if (have_dst)
		*ret_replaced = dst;
	return 0;
}

static int ms_rename(struct meta *mm, uint64_t parent, const char *name, uint64_t newparent,
		     const char *newname, unsigned flags, int64_t now_ns,
		     struct meta_attr *ret_replaced)
{
	struct ms *m = ms_of(mm);
	struct meta_attr rep;
	int r;

	r = meta_rename_check(name, newname, flags);
	if (r < 0)
		return r;
	ms_lock(m);
	r = ms_begin(m);
	if (r == 0)
		r = ms_end(m,
			   ms_rename_tx(m, parent, name, newparent, newname, flags, now_ns, &rep));
	ms_unlock(m);
	if (r == 0 && ret_replaced)
		*ret_replaced = rep;
	return r;
}

/* ---- xattrs ---------------------------------------------------------------------------- */

/* 1 if the xattr exists, 0 if not. */
static int ms_xattr_exists(struct ms *m, uint64_t ino, const char *name)
{
	sqlite3_stmt *st;
	int rc, r;

	r = ms_prep(m, MSQ_XATTR_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	ms_bind_name(st, 2, name);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		r = 1;
	else if (rc != SQLITE_DONE)
		r = ms_errno(m, rc, "xattr get");
	sqlite3_reset(st);
	return r;
}

static int ms_setxattr_tx(struct ms *m, uint64_t ino, const char *name, const void *value,
			  size_t size, int flags)
{
	struct meta_attr a;
	sqlite3_stmt *st;
	int r;

	r = ms_inode_get(m, ino, &a);
	if (r < 0)
		return r;
	r = ms_xattr_exists(m, ino, name);
	if (r < 0)
		return r;
	if (r == 1 && (flags & XATTR_CREATE))
		return -EEXIST;
	if (r == 0 && (flags & XATTR_REPLACE))
		return -ENODATA;
	r = ms_prep(m, MSQ_XATTR_PUT, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	ms_bind_name(st, 2, name);
	/* zeroblob, not NULL, for an empty value: the column is NOT NULL */
	if (size)
		sqlite3_bind_blob(st, 3, value, (int)size, SQLITE_STATIC);
	else
		sqlite3_bind_zeroblob(st, 3, 0);
	r = ms_done(m, st, "xattr put");
	if (r < 0)
		return r;
	/* setxattr(2) changes ctime; there is no caller clock here, so use ours. */
	return ms_run3(m, MSQ_INODE_CTIME, (int64_t)ino, now_realtime_ns(), 0);
}

static int ms_setxattr(struct meta *mm, uint64_t ino, const char *name, const void *value,
		       size_t size, int flags)
{
	struct ms *m = ms_of(mm);
	int r;

	r = meta_setxattr_check(name, value, size, flags);
	if (r < 0)
		return r;
	r = MS_WRITE_TX(m, ms_setxattr_tx(m, ino, name, value, size, flags));
	return r;
}

static int ms_getxattr(struct meta *mm, uint64_t ino, const char *name, void *buf, size_t size)
{
	struct ms *m = ms_of(mm);
	sqlite3_stmt *st;
	int rc, r;

	r = meta_xattr_name_check(name);
	if (r < 0)
		return r;
	if (ino == 0 || ino > INT64_MAX)
		return -ENOENT;
	ms_lock(m);
	r = ms_ready(m);
	if (r < 0)
		goto out;
	r = ms_prep(m, MSQ_XATTR_GET, &st);
	if (r < 0)
		goto out;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	ms_bind_name(st, 2, name);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		int n = sqlite3_column_bytes(st, 0);
		const void *p = sqlite3_column_blob(st, 0);

		if (size == 0) {
			r = n;
		} else if ((size_t)n > size || !buf) {
			r = -ERANGE;
		} else {
			if (n)
				memcpy(buf, p, (size_t)n);
			r = n;
		}
	} else if (rc == SQLITE_DONE) {
		r = -ENODATA;
	} else {
		r = ms_errno(m, rc, "xattr get");
	}
	sqlite3_reset(st);
	if (r == -ENODATA) {
		struct meta_attr a;
		int e = ms_inode_get(m, ino, &a);

		if (e < 0)
			r = e;
	}
out:
	ms_unlock(m);
	return r;
}

static int ms_listxattr(struct meta *mm, uint64_t ino, char *buf, size_t size)
{
	struct ms *m = ms_of(mm);
	struct meta_attr a;
	sqlite3_stmt *st;
	size_t total = 0;
	int rc, r;

	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_inode_get(m, ino, &a);
	if (r < 0)
		goto out;
	r = ms_prep(m, MSQ_XATTR_LIST, &st);
	if (r < 0)
		goto out;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const void *p = sqlite3_column_blob(st, 0);
		size_t n = (size_t)sqlite3_column_bytes(st, 0);

		if (size && buf && total + n + 1 <= size) {
			memcpy(buf + total, p, n);
			buf[total + n] = '\0';
		}
		total += n + 1;
	}
	if (rc != SQLITE_DONE)
		r = ms_errno(m, rc, "xattr list");
	else if (total > INT_MAX)
		r = -E2BIG;
	else if (size && total > size)
		r = -ERANGE;
	else
		r = (int)total;
	sqlite3_reset(st);
out:
	ms_unlock(m);
	return r;
}

static int ms_removexattr_tx(struct ms *m, uint64_t ino, const char *name)
{
	struct meta_attr a;
	sqlite3_stmt *st;
	int r;

	r = ms_inode_get(m, ino, &a);
	if (r < 0)
		return r;
	r = ms_prep(m, MSQ_XATTR_DEL, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)ino);
	ms_bind_name(st, 2, name);
	r = ms_done(m, st, "xattr delete");
	if (r < 0)
		return r;
	if (sqlite3_changes(m->db) == 0)
		return -ENODATA;
	return ms_run3(m, MSQ_INODE_CTIME, (int64_t)ino, now_realtime_ns(), 0);
}

static int ms_removexattr(struct meta *mm, uint64_t ino, const char *name)
{
	struct ms *m = ms_of(mm);
	int r;

	r = meta_xattr_name_check(name);
	if (r < 0)
		return r;
	r = MS_WRITE_TX(m, ms_removexattr_tx(m, ino, name));
	return r;
}

/* ---- quotas (META-9) ------------------------------------------------------------------- */

static int ms_quota_set_tx(struct ms *m, uint64_t dir, uint64_t bytes, uint64_t inodes)
{
	struct meta_attr a;
	sqlite3_stmt *st;
	int64_t nested = 0;
	int rc, r;

	r = ms_dir_live(m, dir, &a);
	if (r < 0)
		return r;
	if (a.qroot == dir)
		return ms_run3(m, MSQ_QUOTA_LIMITS, (int64_t)dir, (int64_t)bytes, (int64_t)inodes);
	if (a.qroot != 0)
		return -EINVAL; /* inside another root: no nesting */
	r = ms_prep(m, MSQ_QUOTA_SUBTREE_ROOTS, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)dir);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		nested = sqlite3_column_int64(st, 0);
	else
		r = ms_errno(m, rc, "quota subtree");
	sqlite3_reset(st);
	if (r < 0)
		return r;
	if (nested > 0)
		return -EINVAL; /* holds a root: no nesting */
	r = ms_run3(m, MSQ_QUOTA_TAG, (int64_t)dir, 0, 0);
	if (r == 0)
		r = ms_run3(m, MSQ_QUOTA_CREATE, (int64_t)dir, (int64_t)bytes, (int64_t)inodes);
	return r;
}

static int ms_quota_set(struct meta *mm, uint64_t dir, uint64_t bytes_limit, uint64_t inodes_limit)
{
	struct ms *m = ms_of(mm);
	int r;

	if (bytes_limit > INT64_MAX || inodes_limit > INT64_MAX)
		return -EINVAL;
	r = MS_WRITE_TX(m, ms_quota_set_tx(m, dir, bytes_limit, inodes_limit));
	return r;
}

static int ms_quota_get(struct meta *mm, uint64_t ino, struct meta_quota *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_quota q;
	struct meta_attr a;
	int r;

	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_inode_get(m, ino, &a);
	if (r == 0)
		r = a.qroot ? ms_quota_row(m, a.qroot, &q) : -ENODATA;
	ms_unlock(m);
	if (r == 0)
		*ret = q;
	return r;
}

static int ms_quota_clear_tx(struct ms *m, uint64_t dir)
{
	struct meta_attr a;
	int r;

	r = ms_dir_get(m, dir, &a);
	if (r < 0)
		return r;
	if (a.qroot != dir)
		return -ENODATA;
	r = ms_run3(m, MSQ_QUOTA_UNTAG, (int64_t)dir, 0, 0);
	if (r == 0)
		r = ms_run3(m, MSQ_QUOTA_DEL, (int64_t)dir, 0, 0);
	return r;
}

static int ms_quota_clear(struct meta *mm, uint64_t dir)
{
	struct ms *m = ms_of(mm);
	int r;

	r = MS_WRITE_TX(m, ms_quota_clear_tx(m, dir));
	return r;
}

static int ms_quota_reserve_tx(struct ms *m, uint64_t ino, uint64_t need, uint64_t want,
			       uint64_t *ret)
{
	struct meta_attr a;
	struct meta_quota q;
	uint64_t cur, grant;
	int r;

	r = ms_inode_get(m, ino, &a);
	if (r < 0)
		return r;
	if (!S_ISREG(a.mode))
		return S_ISDIR(a.mode) ? -EISDIR : -EINVAL;
	a.flags |= META_IF_WDIRTY; /* META-4 */
	*ret = UINT64_MAX;
	if (a.qroot) {
		cur = meta_charged(&a);
		*ret = cur;
		if (want > cur) {
			r = ms_quota_row(m, a.qroot, &q);
			if (r < 0 && r != -ENODATA)
				return r;
			uint64_t room = r == 0 ? meta_quota_room(&q) : UINT64_MAX;

			grant = want - cur <= room ? want : cur + room;
			if (grant < need)
				return -EDQUOT;
			r = ms_quota_charge(m, a.qroot, (int64_t)(grant - cur), 0, false);
			if (r < 0)
				return r;
			a.qres = grant;
			*ret = grant;
		}
	}
	return ms_inode_put(m, &a);
}

static int ms_quota_reserve(struct meta *mm, uint64_t ino, uint64_t need, uint64_t want,
			    uint64_t *ret_reserved)
{
	struct ms *m = ms_of(mm);
	uint64_t got = 0;
	int r;

	if (need > want || want > INT64_MAX)
		return need > want ? -EINVAL : -EFBIG;
	r = MS_WRITE_TX(m, ms_quota_reserve_tx(m, ino, need, want, &got));
	if (r == 0 && ret_reserved)
		*ret_reserved = got;
	return r;
}

/* ---- orphans, scans, sync, statfs ------------------------------------------------------ */

static int ms_purge_tx(struct ms *m, uint64_t ino)
{
	struct meta_attr a;
	int r;

	r = ms_inode_get(m, ino, &a);
	if (r < 0)
		return r;
	if (a.nlink > 0 || ino == META_ROOT_INO)
		return -EBUSY;
	/* Only check() can orphan a directory, and it empties it first; refuse one that still
	 * holds entries rather than leave them pointing at nothing. */
	if (S_ISDIR(a.mode)) {
		r = ms_has_children(m, ino);
		if (r < 0)
			return r;
		if (r > 0)
			return -ENOTEMPTY;
	}
	return ms_inode_delete(m, &a);
}

static int ms_purge(struct meta *mm, uint64_t ino)
{
	struct ms *m = ms_of(mm);
	int r;

	r = MS_WRITE_TX(m, ms_purge_tx(m, ino));
	return r;
}

static int ms_purge_one(void *ctx, uint64_t ino)
{
	return ms_purge_tx(ctx, ino);
}

static int ms_purge_batch(struct meta *mm, const uint64_t *inos, unsigned n)
{
	struct ms *m = ms_of(mm);
	int r = meta_purge_batch_check(inos, n);

	return r < 0 ? r : MS_WRITE_TX(m, meta_purge_each(inos, n, ms_purge_one, m));
}

/* Page through a statement (?1 = last ino, ?2 = limit) in ino order, MS_BATCH rows per lock
 * hold. Each batch is one consistent snapshot; the whole walk is not (1M rows must not block
 * writers), which orphans() and inodes() callers accept: an inode created meanwhile may or may
 * not be seen. */
static int ms_scan(struct ms *m, enum ms_sid id, meta_inode_cb cb, void *ctx)
{
	int64_t after = 0;
	int r;

	for (;;) {
		sqlite3_stmt *st;
		int rc = SQLITE_DONE, n = 0, stop = 0;

		ms_lock(m);
		r = ms_ready(m);
		if (r == 0)
			r = ms_prep(m, id, &st);
		if (r < 0) {
			ms_unlock(m);
			return r;
		}
		sqlite3_bind_int64(st, 1, after);
		sqlite3_bind_int(st, 2, MS_BATCH);
		while (!stop && (rc = sqlite3_step(st)) == SQLITE_ROW) {
			struct meta_attr a;

			ms_row_attr(st, 0, &a);
			after = (int64_t)a.ino;
			n++;
			stop = cb(ctx, &a);
		}
		if (!stop && rc != SQLITE_DONE)
			r = ms_errno(m, rc, "scan");
		sqlite3_reset(st);
		ms_unlock(m);
		if (r < 0 || stop || n < MS_BATCH)
			return r;
	}
}

static int ms_orphans(struct meta *mm, meta_inode_cb cb, void *ctx)
{
	if (!cb)
		return -EINVAL;
	return ms_scan(ms_of(mm), MSQ_ORPHANS, cb, ctx);
}

static int ms_inodes(struct meta *mm, meta_inode_cb cb, void *ctx)
{
	if (!cb)
		return -EINVAL;
	return ms_scan(ms_of(mm), MSQ_INODES, cb, ctx);
}

/* A read-only handle cannot commit; fsync what SQLite would have: the WAL, then the file. */
static int ms_sync_files(struct ms *m)
{
	char wal[URL_MAX + 8];
	const char *files[2] = {wal, m->path};
	int r = 0;

	snprintf(wal, sizeof(wal), "%s-wal", m->path);
	for (int i = 0; i < 2; i++) {
		int fd = open(files[i], O_RDONLY | O_CLOEXEC);

		if (fd < 0) {
			if (errno != ENOENT && r == 0)
				r = -errno;
			continue;
		}
		if (fsync(fd) < 0 && r == 0)
			r = -errno;
		close(fd);
	}
	return r;
}

/* The -wal file, opened by sync() (with the lock held) and kept: SQLite keeps the file while
 * our connection is open, so the descriptor names the file every commit appends to. */
static int ms_wal_fd(struct ms *m)
{
	const char *wal = sqlite3_filename_wal(sqlite3_db_filename(m->db, "main"));
	struct stat a, b;

	/* Never sync a file that is not the WAL any more (deleted and made anew): one stat per
	 * sync is the price of not trusting that. */
	if (m->wal_fd >= 0 && (!wal || stat(wal, &a) < 0 || fstat(m->wal_fd, &b) < 0 ||
			       a.st_ino != b.st_ino || a.st_dev != b.st_dev)) {
		close(m->wal_fd);
		m->wal_fd = -1;
	}
	if (m->wal_fd < 0) {
		int fd = wal ? open(wal, O_RDONLY | O_CLOEXEC) : -1;

		if (fd < 0) {
			int e = wal ? -errno : -EIO;

			log_debug("meta sqlite %s: cannot open its WAL to sync it: %s", m->path,
				  strerror(-e));
			return e;
		}
		m->wal_fd = fd;
	}
	return m->wal_fd;
}

static int ms_sync(struct meta *mm)
{
	struct ms *m = ms_of(mm);
	int64_t dv = 0;
	uint64_t txns = 0;
	bool local;
	int r, fd = -1;

	ms_lock(m);
	r = ms_ready(m);
	if (r < 0) {
		if (r == -ENOENT)
			r = 0; /* not formatted: nothing was ever committed */
		ms_unlock(m);
		return r;
	}
	/* Commits of other connections matter only when this one made none: with a local commit
	 * the WAL is synced anyway, and the read transaction of PRAGMA data_version is saved
	 * (synced_dv then stays old, which costs at most one spare sync later). */
	txns = m->txns;
	local = txns != m->synced_txns;
	if (!local) {
		r = ms_int_query(m, MSQ_DATA_VERSION, &dv);
		if (r == 0 && dv == m->synced_dv) {
			ms_unlock(m); /* nothing committed since the last sync, here or elsewhere */
			return 0;
		}
	}
	if (r == 0 && !m->rdonly) {
		/* a copy of our own: a concurrent sync that finds the WAL replaced closes
		 * m->wal_fd while this one is in fdatasync below, without the lock */
		fd = ms_wal_fd(m);
		if (fd >= 0 && (fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
			fd = -errno;
		r = fd < 0 ? fd : 0;
	}
	ms_unlock(m);
	if (r < 0)
		return r;
	/* See DURABILITY at the top: the WAL is append-only, so one fdatasync of it makes every
	 * commit before this point durable (by any connection); the lock is not held across the
	 * device flush, so other operations go on meanwhile. */
	if (m->rdonly)
		r = ms_sync_files(m);
	else if (fdatasync(fd) < 0)
		r = -errno;
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		log_debug("meta sqlite %s: sync: %s", m->path, strerror(-r));
		return r;
	}
	ms_lock(m);
	if (txns > m->synced_txns)
		m->synced_txns = txns;
	if (!local)
		m->synced_dv = dv;
	ms_unlock(m);
	return 0;
}

/* Sums over every inode, paged by ino so that the lock is never held for a whole table scan
 * (1M inodes take ~50 ms). The pages are not one snapshot: an inode created or deleted during
 * the walk may or may not count, which df can live with. The result is kept until something
 * commits here or elsewhere (PRAGMA data_version), so polling df on an idle volume is free. */
static int ms_statfs(struct meta *mm, struct meta_statfs *ret)
{
	struct ms *m = ms_of(mm);
	struct meta_statfs sum = {0, 0};
	int64_t after = 0, dv = 0;
	int r;

	ms_lock(m);
	r = ms_ready(m);
	if (r == 0)
		r = ms_int_query(m, MSQ_DATA_VERSION, &dv);
	if (r == 0 && m->statfs_valid && m->statfs_txns == m->txns && m->statfs_dv == dv) {
		*ret = m->statfs;
		ms_unlock(m);
		return 0;
	}
	ms_unlock(m);
	while (r == 0) {
		sqlite3_stmt *st;
		int64_t n = 0;
		int rc;

		ms_lock(m);
		r = ms_prep(m, MSQ_STATFS, &st);
		if (r < 0) {
			ms_unlock(m);
			break;
		}
		sqlite3_bind_int64(st, 1, after);
		sqlite3_bind_int(st, 2, MS_STATFS_BATCH);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			n = sqlite3_column_int64(st, 0);
			sum.inodes += (uint64_t)n;
			sum.bytes += (uint64_t)sqlite3_column_int64(st, 1);
			after = sqlite3_column_int64(st, 2);
		} else {
			r = ms_errno(m, rc, "statfs");
		}
		sqlite3_reset(st);
		ms_unlock(m);
		if (n < MS_STATFS_BATCH)
			break;
	}
	if (r < 0)
		return r;
	ms_lock(m);
	/* Cache only if nothing committed while we walked; else the next call walks again. */
	if (ms_int_query(m, MSQ_DATA_VERSION, &after) == 0 && after == dv) {
		m->statfs = sum;
		m->statfs_txns = m->txns;
		m->statfs_dv = dv;
		m->statfs_valid = true;
	}
	ms_unlock(m);
	*ret = sum;
	return 0;
}

/* ---- check ----------------------------------------------------------------------------- */

struct ms_check {
	struct ms *m;
	struct meta_checker k; /* counts and words the findings (meta_int.h) */
};

/* Run `sql` (columns as meta_find_col says for `kind`), report each row, then run `fix` if
 * repairing. The fix uses the same condition inside the same transaction, so it touches
 * exactly the rows reported. */
static int ms_check_step(struct ms_check *c, enum meta_finding kind, const char *sql,
			 const char *fix)
{
	struct ms *m = c->m;
	sqlite3_stmt *st = NULL;
	int rc, n = 0, r = 0;
	bool fixing = c->k.repair && fix, named;

	rc = sqlite3_prepare_v2(m->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return ms_errno(m, rc, "check prepare");
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int cols = sqlite3_column_count(st);
		int64_t v[5] = {0};

		n++;
		for (int i = 0; i < 5; i++) {
			int col = meta_find_col(kind, i, &named);

			if (col >= 0 && col < cols)
				v[i] = sqlite3_column_int64(st, col);
		}
		struct meta_find f = {(uint64_t)v[0], v[1], v[2], v[3], v[4], NULL, 0};
		if (named && cols > 2) {
			f.name = sqlite3_column_blob(st, 2);
			f.n = (size_t)sqlite3_column_bytes(st, 2);
		}
		meta_finding(&c->k, kind, fixing, &f);
	}
	if (rc != SQLITE_DONE)
		r = ms_errno(m, rc, "check");
	sqlite3_finalize(st);
	if (r == 0 && n > 0 && fixing)
		r = ms_exec(m, fix);
	return r;
}

#define MS_IS_DIR(x) "(" x " & " MS_SQL_IFMT " = " MS_SQL_IFDIR ")"
/* Per quota root: recorded usage and the usage its tagged inodes add up to (META-9). */
#define MS_QUOTA_COUNT                                                                             \
	"SELECT q.ino AS ino, q.bytes_used AS bytes_used, q.inodes_used AS inodes_used,"           \
	" coalesce(sum(CASE WHEN i.mode & " MS_SQL_IFMT " = " MS_SQL_IFREG                         \
	" THEN max(i.size, i.qres) ELSE 0 END), 0) AS b,"                                          \
	" count(i.ino) - (CASE WHEN EXISTS (SELECT 1 FROM inodes r WHERE r.ino = q.ino AND"        \
	" r.qroot = q.ino) THEN 1 ELSE 0 END) AS n"                                                \
	" FROM quotas q LEFT JOIN inodes i ON i.qroot = q.ino GROUP BY q.ino"

static int ms_check_namespace(struct ms_check *c)
{
	struct ms *m = c->m;
	struct meta_attr root;
	sqlite3_stmt *st = NULL;
	int rc, r;

	/* The root first: everything else is judged by reachability from it. */
	r = ms_inode_get(m, META_ROOT_INO, &root);
	if (r == -ENOENT) {
		struct meta_find f = {.a = META_ROOT_INO};

		meta_finding(&c->k, META_FIND_ROOT_MISSING, c->k.repair, &f);
		if (c->k.repair) {
			int64_t now = now_realtime_ns();
			char sql[256];

			snprintf(
			    sql, sizeof(sql),
			    "INSERT INTO inodes (ino, mode, nlink, uid, gid, rdev, size, atime,"
			    " mtime, ctime, btime, generation, flags) VALUES (1, %d, 2, 0, 0, 0,"
			    " 0, %" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 ", 1, 0)",
			    S_IFDIR | 0755, now, now, now, now);
			r = ms_exec(m, sql);
		} else {
			r = 0;
		}
	} else if (r == 0 && !S_ISDIR(root.mode)) {
		struct meta_find f = {.a = META_ROOT_INO, .b = root.mode};

		meta_finding(&c->k, META_FIND_ROOT_NOT_DIR, false, &f);
		return 0; /* nothing below can be judged */
	}
	if (r < 0)
		return r;

	r = ms_check_step(c, META_FIND_ROOT_NAMED,
			  "SELECT ino, parent, name FROM dentries WHERE ino = 1",
			  "DELETE FROM dentries WHERE ino = 1");
	if (r == 0)
		r = ms_check_step(c, META_FIND_ENTRY_MISSING_INODE,
				  "SELECT d.ino, d.parent, d.name FROM dentries d WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = d.ino)",
				  "DELETE FROM dentries WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = dentries.ino)");
	if (r == 0)
		r = ms_check_step(
		    c, META_FIND_ENTRY_BAD_PARENT,
		    "SELECT d.ino, d.parent, d.name, p.ino IS NOT NULL FROM dentries d"
		    " LEFT JOIN inodes p ON p.ino = d.parent"
		    " WHERE p.ino IS NULL OR NOT " MS_IS_DIR("p.mode"),
		    "DELETE FROM dentries WHERE id IN (SELECT d.id FROM dentries d"
		    " LEFT JOIN inodes p ON p.ino = d.parent"
		    " WHERE p.ino IS NULL OR NOT " MS_IS_DIR("p.mode") ")");
	if (r == 0)
		r = ms_check_step(c, META_FIND_DIR_MULTI,
				  "SELECT d.ino, count(*) FROM dentries d JOIN inodes i"
				  " ON i.ino = d.ino WHERE " MS_IS_DIR(
				      "i.mode") " GROUP BY d.ino HAVING count(*) > 1",
				  "DELETE FROM dentries WHERE id IN (SELECT d.id FROM dentries d"
				  " JOIN inodes i ON i.ino = d.ino WHERE " MS_IS_DIR(
				      "i.mode") " AND d.id > (SELECT min(e.id) FROM dentries e"
						" WHERE e.ino = d.ino))");
	if (r == 0)
		r = ms_check_step(c, META_FIND_XATTR_ORPHAN,
				  "SELECT x.ino, count(*) FROM xattrs x WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = x.ino) GROUP BY x.ino",
				  "DELETE FROM xattrs WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = xattrs.ino)");
	/* META-9: every root's usage equals what its tagged inodes add up to. */
	if (r == 0)
		r = ms_check_step(
		    c, META_FIND_QUOTA_USAGE,
		    "SELECT ino, bytes_used, inodes_used, b, n FROM"
		    " (" MS_QUOTA_COUNT ") WHERE b != bytes_used OR n != inodes_used",
		    "UPDATE quotas SET bytes_used = (SELECT b FROM (" MS_QUOTA_COUNT
		    ") c WHERE c.ino = quotas.ino), inodes_used = (SELECT n FROM (" MS_QUOTA_COUNT
		    ") c WHERE c.ino = quotas.ino)");
	if (r < 0)
		return r;

	/* Reachability: every inode an entry path from the root leads to. UNION (not UNION
	 * ALL) makes the recursion stop at cycles and hard links. */
	r = ms_exec(
	    m, "DROP TABLE IF EXISTS temp.ms_reach;"
	       "CREATE TEMP TABLE ms_reach (ino INTEGER PRIMARY KEY);"
	       "INSERT INTO temp.ms_reach WITH RECURSIVE r(ino) AS (SELECT 1 UNION"
	       " SELECT d.ino FROM dentries d JOIN r ON d.parent = r.ino) SELECT ino FROM r;"
	       "DROP TABLE IF EXISTS temp.ms_unreach;"
	       "CREATE TEMP TABLE ms_unreach (ino INTEGER PRIMARY KEY);"
	       /* unreachable directories, except an orphan already empty and unnamed
		* (it only waits for purge()) */
	       "INSERT INTO temp.ms_unreach SELECT i.ino FROM inodes i"
	       " WHERE " MS_IS_DIR("i.mode") " AND i.ino NOT IN (SELECT ino FROM temp.ms_reach)"
					     " AND (i.nlink > 0 OR EXISTS (SELECT 1 FROM dentries "
					     "d WHERE d.ino = i.ino"
					     " OR d.parent = i.ino));");
	if (r == 0)
		r = ms_check_step(c, META_FIND_UNREACHABLE, "SELECT ino FROM temp.ms_unreach",
				  "DELETE FROM dentries WHERE ino IN temp.ms_unreach"
				  " OR parent IN temp.ms_unreach;"
				  "UPDATE inodes SET nlink = 0 WHERE ino IN temp.ms_unreach;");
	if (r < 0)
		return r;

	/* Link counts: a non-directory has one link per entry naming it; a directory 2 plus one
	 * per subdirectory, or 0 if nothing names it (an orphan). Unreachable directories were
	 * reported above. */
	r = ms_exec(
	    m,
	    "DROP TABLE IF EXISTS temp.ms_want;"
	    "CREATE TEMP TABLE ms_want (ino INTEGER PRIMARY KEY, nlink INTEGER,"
	    " want INTEGER);"
	    "INSERT INTO temp.ms_want SELECT i.ino, i.nlink, CASE WHEN " MS_IS_DIR(
		"i.mode") " THEN (CASE WHEN i.ino = 1 OR EXISTS (SELECT 1 FROM"
			  " dentries d WHERE d.ino = i.ino) THEN 2 + (SELECT count(*) FROM "
			  "dentries d"
			  " JOIN inodes s ON s.ino = d.ino WHERE d.parent = i.ino AND " MS_IS_DIR(
			      "s.mode") ") ELSE 0 END)"
					" ELSE (SELECT count(*) FROM dentries d WHERE d.ino = "
					"i.ino) END FROM inodes i"
					" WHERE i.ino NOT IN temp.ms_unreach;");
	if (r < 0)
		return r;
	rc = sqlite3_prepare_v2(m->db,
				"SELECT ino, nlink, want FROM temp.ms_want"
				" WHERE nlink != want ORDER BY ino",
				-1, &st, NULL);
	if (rc != SQLITE_OK)
		return ms_errno(m, rc, "check prepare");
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct meta_find f = {.a = (uint64_t)sqlite3_column_int64(st, 0),
				      .b = sqlite3_column_int64(st, 1),
				      .c = sqlite3_column_int64(st, 2)};

		meta_finding(&c->k, META_FIND_NLINK, c->k.repair, &f);
	}
	r = rc == SQLITE_DONE ? 0 : ms_errno(m, rc, "check nlink");
	sqlite3_finalize(st);
	if (r == 0 && c->k.repair)
		r = ms_exec(m, "UPDATE inodes SET nlink = (SELECT want FROM temp.ms_want w"
			       " WHERE w.ino = inodes.ino) WHERE ino IN (SELECT ino FROM"
			       " temp.ms_want WHERE nlink != want)");
	return r;
}

static int ms_check(struct meta *mm, bool repair, meta_report_cb cb, void *ctx)
{
	struct ms *m = ms_of(mm);
	struct ms_check c = {.m = m, .k = {.repair = repair, .cb = cb, .ctx = ctx}};
	sqlite3_stmt *st = NULL;
	int rc, r;

	ms_lock(m);
	if (repair && m->rdonly) {
		r = -EROFS;
		goto out;
	}
	r = ms_ready(m);
	if (r < 0)
		goto out;

	/* Storage first: if SQLite's own structures are damaged, the namespace checks would read
	 * garbage and a repair could spread it. Report and stop. */
	rc = sqlite3_prepare_v2(m->db, "PRAGMA quick_check", -1, &st, NULL);
	if (rc != SQLITE_OK) {
		r = ms_errno(m, rc, "quick_check");
		goto out;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *msg = (const char *)sqlite3_column_text(st, 0);

		if (msg && strcmp(msg, "ok") != 0) {
			struct meta_find f = {.name = msg, .n = strlen(msg)};

			meta_finding(&c.k, META_FIND_STORAGE, false, &f);
		}
	}
	if (rc != SQLITE_DONE) {
		/* Too damaged even to check: that is a finding, not an engine failure. */
		const char *msg = sqlite3_errmsg(m->db);
		struct meta_find f = {.name = msg, .n = strlen(msg)};

		meta_finding(&c.k, META_FIND_STORAGE, false, &f);
	}
	sqlite3_finalize(st);
	if (c.k.found > 0) {
		r = c.k.unfixed;
		goto out;
	}

	/* One transaction: a read snapshot, or the repair as a whole (META-1). */
	r = ms_run3(m, repair ? MSQ_BEGIN_W : MSQ_BEGIN_R, 0, 0, 0);
	if (r < 0)
		goto out;
	r = ms_check_namespace(&c);
	if (repair) {
		r = ms_end(m, r);
	} else {
		ms_rollback(m);
	}
	/* temp tables live outside the transaction's fate; drop them either way */
	sqlite3_exec(m->db,
		     "DROP TABLE IF EXISTS temp.ms_reach; DROP TABLE IF EXISTS"
		     " temp.ms_unreach; DROP TABLE IF EXISTS temp.ms_want;",
		     NULL, NULL, NULL);
	if (r == 0)
		r = repair ? c.k.unfixed : c.k.found;
out:
	ms_unlock(m);
	return r;
}

const struct meta_ops meta_sqlite_ops = {
    .scheme = "sqlite",
    .caps = 0,
    .open = ms_open,
    .close = ms_close,
    .format = ms_format,
    .volume_get = ms_volume_get,
    .targets_list = ms_targets_list,
    .target_set_state = ms_target_set_state,
    .target_add = ms_target_add,
    .target_update = ms_target_update,
    .chains_list = ms_chains_list,
    .chain_update = ms_chain_update,
    .chain_set = ms_chain_set,
    .chain_promote = ms_chain_promote,
    .dirty_add = ms_dirty_add,
    .dirty_list = ms_dirty_list,
    .dirty_count = ms_dirty_count,
    .dirty_remove = ms_dirty_remove,
    .dirty_clear = ms_dirty_clear,
    .repair_set = ms_repair_set,
    .repairs_list = ms_repairs_list,
    .repair_delete = ms_repair_delete,
    .lookup = ms_lookup,
    .getattr = ms_getattr,
    .setattr = ms_setattr,
    .mknod = ms_mknod,
    .link = ms_link,
    .unlink = ms_unlink,
    .rmdir = ms_rmdir,
    .rename = ms_rename,
    .readlink = ms_readlink,
    .readdir = ms_readdir,
    .readdirplus = ms_readdirplus,
    .setxattr = ms_setxattr,
    .getxattr = ms_getxattr,
    .listxattr = ms_listxattr,
    .removexattr = ms_removexattr,
    .purge = ms_purge,
    .purge_batch = ms_purge_batch,
    .orphans = ms_orphans,
    .inodes = ms_inodes,
    .sync = ms_sync,
    .statfs = ms_statfs,
    .quota_set = ms_quota_set,
    .quota_get = ms_quota_get,
    .quota_clear = ms_quota_clear,
    .quota_reserve = ms_quota_reserve,
    .check = ms_check,
};
