/* meta_pg — the PostgreSQL metadata engine: one database shared by every node and mount.
 *
 * URL: postgres://[user[:password]@]host[:port]/dbname[?param=value&...] (postgresql:// too).
 * The whole URL goes to libpq, which owns its syntax: sslmode, connect_timeout, options
 * (e.g. options=-csearch_path%3Dvol1 to keep several volumes in one database, one schema
 * each) and the rest. The engine's tables live in the connection's current schema (the first
 * existing one of search_path). The password never appears in a message.
 *
 * CONCURRENCY: READ COMMITTED plus row locks, not SERIALIZABLE
 *   Many processes on many nodes write the same directories. SERIALIZABLE would abort one of
 *   two creates in the same directory whenever their predicate locks meet (index pages of
 *   dentries), so a busy directory would retry in a loop; row locks instead queue writers of
 *   one directory behind each other, which is the real conflict. The rules (cited as PG-n):
 *   PG-1  Every change to the entries of directory D happens in a transaction that holds the
 *         row lock of D's inode (SELECT ... FOR UPDATE) before it reads any entry of D.
 *         Entries read after the lock, in a *later statement*, are current: READ COMMITTED
 *         takes a new snapshot per statement, and nobody else can change D's entries now.
 *         (A join inside the locking statement would not be: its other rows come from the
 *         statement's snapshot, from before the wait.)
 *   PG-2  Two directories are locked in inode order (rename). Inodes that are not locked
 *         first are changed only by relative single-statement updates (nlink = nlink - 1,
 *         ctime = $t), which take their row lock themselves; a directory about to be removed
 *         or replaced is locked before its emptiness is checked (PG-1 from the other side).
 *   PG-3  A rename that moves a directory to another parent first takes the volume-wide
 *         rename lock (row 'rename' of table `locks`), as Linux takes s_vfs_rename_mutex:
 *         only such renames change the ancestry the loop check walks, so the walk is exact.
 *         The lock is taken before any directory lock; when a transaction learns under its
 *         directory locks that it needs it, it rolls back and starts again holding it.
 *   PG-4  Deadlocks (40P01) and serialization failures (40001) cannot corrupt anything: the
 *         transaction rolls back whole and runs again, at most MP_TX_TRIES times.
 *   PG-5  A transaction is retried after a lost connection only when it cannot have
 *         committed (the connection broke before COMMIT was sent). A connection lost during
 *         COMMIT is resolved with txid_status(xid) after reconnecting: committed -> success,
 *         aborted -> run again, unknown -> -EIO with that said. Single-statement writes
 *         (node heartbeats and state, leases) are idempotent and simply run again.
 *   PG-6  Directory quotas (META-9): a quota row is locked last, after every inode row the
 *         operation locks, and one operation charges one root only (link and rename refuse
 *         to cross roots), so quota rows add no lock cycle. Making or removing a root locks
 *         the inodes table in EXCLUSIVE mode (readers go on) for its transaction, so that no
 *         create or rename slips past the walk that tags the subtree.
 *   PG-7  File locks (META-18): lock_set holds the row lock of the file's inode (as PG-1 does
 *         for a directory's entries) before it reads any file_locks row of that inode, so
 *         two conflicting lock_sets run one after the other and the second sees the
 *         first's rows. Releases only delete rows and take no inode lock: a test that races
 *         one sees a lock that is going away, answers -EAGAIN and its waiter retries.
 *   Target rows (META-7, META-8): target_add holds the 'targets' row of `locks` (ids are
 *   max + 1); chain_update share-locks its members' rows, target_update locks its row, so a
 *   target cannot be drained while a chain that names it commits.
 *
 * DURABILITY (META-5)
 *   Every session runs with synchronous_commit on (raised from off if the server default is
 *   off; stronger settings such as remote_apply are kept): COMMIT returns only after the
 *   commit record is flushed to the WAL on disk, and other sessions see a transaction only
 *   after that. So every committed transaction is durable when its call returns and sync()
 *   has nothing left to do: it returns 0 without a round trip.
 *
 * CONNECTIONS
 *   A pool of up to MP_POOL_MAX connections per handle, opened on demand; a call borrows one
 *   for its duration, so FUSE threads run in parallel. Each connection prepares its
 *   statements (MP_STMTS) on first use; results come in binary and every column is read
 *   through bounded, type-checked accessors (a reply is untrusted input like any socket
 *   byte). A broken connection is reset with at most MP_RECONNECT_TRIES tries (about 7 s)
 *   before the call fails with -EIO and one logged line that names the server.
 *
 * LOCKS
 *   mp.lock protects the pool (free list, count); mp.cond wakes waiters for a connection.
 *   No engine lock is held while a query runs. Callbacks (readdir, orphans, inodes) run
 *   with no connection held; check() reports run inside its transaction.
 */
#include "fs/meta/meta_int.h"

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define MP_SCHEMA_VERSION  4
#define MP_APPLICATION	   "braidfs"
#define MP_POOL_MAX	   8	     /* connections per handle */
#define MP_TX_TRIES	   10	     /* PG-4, PG-5 */
#define MP_RECONNECT_TRIES 8	     /* 50 ms doubling to 2 s: ~7 s in all */
#define MP_BATCH	   256	     /* rows per readdir/orphans/inodes query */
#define MP_LINK_MAX	   65000     /* hard links per inode, as ext4 (EMLINK) */
#define MP_DEPTH_MAX	   (1 << 20) /* ancestor walk bound: deeper means a loop */
#define MP_MAX_PARAMS	   20
#define MP_WHERE_MAX	   (URL_MAX + 64)

/* Session defaults handed to libpq before the URL (the URL's own values win). */
static const char *const mp_conn_keys[] = {"connect_timeout",
					   "keepalives_idle",
					   "keepalives_interval",
					   "keepalives_count",
					   "tcp_user_timeout",
					   "application_name",
					   "dbname",
					   NULL};

/* Session settings (after connect). lock_timeout: a writer waits this long for a directory
 * another client holds, then -EBUSY; idle_in_transaction: the server ends the session of a
 * client that froze inside a transaction, so its row locks do not block everyone. */
static const char mp_session_sql[] =
    "SET lock_timeout = '60s'; SET idle_in_transaction_session_timeout = '60s';"
    " SET statement_timeout = 0;";

/* Version 2 (META-13..17): chain roles (chain_members.role: 0 member, 1 syncing, 2 away;
 * since: when an away target went, database clock), the dirty chunks of targets out of a
 * chain (primary key (chain, target, ino, idx): dirty_list is an index range scan) and repair
 * progress. */
#define MP_REPAIR_SCHEMA                                                                           \
	"CREATE TABLE dirty ("                                                                     \
	" chain bigint NOT NULL REFERENCES chains (id),"                                           \
	" target bigint NOT NULL REFERENCES targets (id),"                                         \
	" ino bigint NOT NULL, idx bigint NOT NULL, PRIMARY KEY (chain, target, ino, idx));"       \
	"CREATE TABLE repairs ("                                                                   \
	" chain bigint NOT NULL REFERENCES chains (id),"                                           \
	" target bigint NOT NULL REFERENCES targets (id),"                                         \
	" kind bigint NOT NULL, chunks_total bigint NOT NULL, chunks_done bigint NOT NULL,"        \
	" bytes_done bigint NOT NULL, rate bigint NOT NULL,"                                       \
	" started timestamptz NOT NULL, updated timestamptz NOT NULL,"                             \
	" PRIMARY KEY (chain, target));"

/* Schema 1 -> 2, run by mp_migrate() in one transaction: every chain member keeps role 0. */
#define MP_MIGRATE_1_TO_2                                                                          \
	"ALTER TABLE chain_members ADD COLUMN role bigint NOT NULL DEFAULT 0,"                     \
	" ADD COLUMN since timestamptz;" MP_REPAIR_SCHEMA                                          \
	"UPDATE braidfs_schema SET version = 2 WHERE id = 1;"

/* Version 3 (META-18): file locks. A row per range of one lock owner of one client; a client's
 * rows go with its registration (ON DELETE CASCADE: unregister, or the reaping of an expired
 * one). The primary key leads with ino: lock_set and lock_get read one inode's rows. */
#define MP_LOCKS_SCHEMA                                                                            \
	"CREATE TABLE file_locks ("                                                                \
	" ino bigint NOT NULL, client bigint NOT NULL REFERENCES clients (id) ON DELETE CASCADE,"  \
	" owner bigint NOT NULL, kind bigint NOT NULL, type bigint NOT NULL,"                      \
	" lstart bigint NOT NULL, lend bigint NOT NULL, pid bigint NOT NULL,"                      \
	" CHECK (lstart >= 0 AND lstart <= lend),"                                                 \
	" PRIMARY KEY (ino, client, owner, kind, lstart));"                                        \
	"CREATE INDEX file_locks_by_client ON file_locks (client);"

/* Schema 2 -> 3, run by mp_migrate() in one transaction. */
#define MP_MIGRATE_2_TO_3 MP_LOCKS_SCHEMA "UPDATE braidfs_schema SET version = 3 WHERE id = 1;"

/* Schema 3 -> 4, run by mp_migrate(): chain_members.role may be 3, async (META-19). No row
 * changes; the version alone keeps an older braidfs, which would drop async rows on its next
 * chain_set, from opening the database. */
#define MP_MIGRATE_3_TO_4 "UPDATE braidfs_schema SET version = 4 WHERE id = 1;"

/* Schema version 4. The same shape as the SQLite engine's (see meta_sqlite.c and the README)
 * plus the cluster tables:
 *  - identities never hand a number out twice (META-2; dentries.id is the readdir cookie);
 *  - names, symlink targets and xattrs are bytea: bytes, compared with memcmp;
 *  - `locks` holds one row per volume-wide lock (PG-3, client registration); the file
 *    locks of applications are `file_locks` (PG-7);
 *  - nodes, leases and clients compare times only with now() (META-10). */
/* clang-format off */
static const char mp_schema_sql[] =
	"CREATE TABLE braidfs_schema ("
	" id bigint PRIMARY KEY CHECK (id = 1), application text NOT NULL, version bigint NOT NULL);"
	"CREATE TABLE volume ("
	" id bigint PRIMARY KEY CHECK (id = 1),"
	" name text NOT NULL, uuid text NOT NULL, format_version bigint NOT NULL,"
	" chunk_size bigint NOT NULL, replicas bigint NOT NULL, consistency bigint NOT NULL,"
	" created_ns bigint NOT NULL);"
	"CREATE TABLE locks (name text PRIMARY KEY);"
	"INSERT INTO locks VALUES ('rename'), ('clients'), ('targets');"
	"CREATE TABLE targets ("
	" id bigint PRIMARY KEY CHECK (id >= 1 AND id <= 4294967295),"
	" url text NOT NULL, uuid text NOT NULL, state bigint NOT NULL,"
	" pool text NOT NULL DEFAULT '', node text NOT NULL DEFAULT '',"
	" media text NOT NULL DEFAULT '');"
	"CREATE TABLE chains ("
	" id bigint PRIMARY KEY CHECK (id >= 0 AND id <= 4294967295), epoch bigint NOT NULL);"
	"CREATE TABLE chain_members ("
	" chain bigint NOT NULL REFERENCES chains (id), pos bigint NOT NULL,"
	" target bigint NOT NULL REFERENCES targets (id),"
	" role bigint NOT NULL DEFAULT 0, since timestamptz," /* META-13, META-14 */
	" PRIMARY KEY (chain, pos), UNIQUE (chain, target));"
	"CREATE TABLE inodes ("
	" ino bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
	" mode bigint NOT NULL, nlink bigint NOT NULL, uid bigint NOT NULL, gid bigint NOT NULL,"
	" rdev bigint NOT NULL, size bigint NOT NULL, atime bigint NOT NULL, mtime bigint NOT NULL,"
	" ctime bigint NOT NULL, btime bigint NOT NULL, generation bigint NOT NULL,"
	" flags bigint NOT NULL, link bytea,"
	" qroot bigint NOT NULL DEFAULT 0, qres bigint NOT NULL DEFAULT 0);" /* META-9 */
	"CREATE INDEX inodes_pending ON inodes (ino) WHERE nlink = 0 OR (flags & 1) <> 0;"
	"CREATE INDEX inodes_by_qroot ON inodes (qroot) WHERE qroot <> 0;"
	"CREATE TABLE quotas ("
	" ino bigint PRIMARY KEY, bytes_limit bigint NOT NULL, inodes_limit bigint NOT NULL,"
	" bytes_used bigint NOT NULL, inodes_used bigint NOT NULL);"
	"CREATE TABLE dentries ("
	" id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
	" parent bigint NOT NULL, name bytea NOT NULL, ino bigint NOT NULL,"
	" UNIQUE (parent, name));"
	"CREATE INDEX dentries_by_parent ON dentries (parent, id);"
	"CREATE INDEX dentries_by_ino ON dentries (ino);"
	"CREATE TABLE xattrs ("
	" ino bigint NOT NULL, name bytea NOT NULL, value bytea NOT NULL, PRIMARY KEY (ino, name));"
	"CREATE TABLE nodes ("
	" id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY CHECK (id <= 4294967295),"
	" name text NOT NULL UNIQUE, address text NOT NULL, state bigint NOT NULL,"
	" heartbeat timestamptz NOT NULL, lease_until timestamptz NOT NULL,"
	" registered timestamptz NOT NULL);"
	"CREATE TABLE leases ("
	" name text PRIMARY KEY, holder bigint REFERENCES nodes (id),"
	" generation bigint NOT NULL, expires timestamptz NOT NULL);"
	"CREATE TABLE clients ("
	" id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
	" host text NOT NULL, pid bigint NOT NULL, mountpoint text NOT NULL,"
	" exclusive bigint NOT NULL, started timestamptz NOT NULL, expires timestamptz NOT NULL);"
	MP_REPAIR_SCHEMA MP_LOCKS_SCHEMA;
/* clang-format on */

#define MP_ATTR_COLS                                                                               \
	"ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, btime, generation, flags, "  \
	"qroot, qres"
#define MP_ATTR_COLS_I                                                                             \
	"i.ino, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size, i.atime, i.mtime, i.ctime, "        \
	"i.btime, i.generation, i.flags, i.qroot, i.qres"
/* what an inode charges its quota root (META-9) */
#define MP_CHARGED(x)                                                                              \
	"CASE WHEN (" x "mode & 61440) = 32768 THEN greatest(" x "size, " x "qres) ELSE 0 END"
#define MP_IS_DIR(x)  "((" x " & 61440) = 16384)"
#define MP_MS(x)      "(extract(epoch from (" x ")) * 1000000000)::int8"
#define MP_LEASE_COLS "name, coalesce(holder, 0), generation, " MP_MS("expires - now()")
#define MP_CLIENT_COLS                                                                             \
	"id, host, pid, mountpoint, exclusive, (expires > now())::int::int8, " MP_MS(              \
	    "expires - now()")
/* a file_locks row as mp_lock_cols() reads it */
#define MP_LOCK_COLS "l.ino, l.client, l.owner, l.kind, l.type, l.lstart, l.lend, l.pid"

/* Every statement, prepared once per connection. Parameter types: i int8, b bytea, t text,
 * a int8[] (sent as text). Every result column is int8, bytea or text (binary format). */
#define MP_STMTS(X)                                                                                \
	X(READY, "",                                                                               \
	  "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"              \
	  " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"                          \
	  " AND c.relname = 'braidfs_schema'")                                                     \
	X(XID_STATUS, "i", "SELECT coalesce(txid_status($1), 'unknown')")                          \
	X(LOCK, "t", "SELECT 1::int8 FROM locks WHERE name = $1 FOR UPDATE")                       \
	X(VOLUME_GET, "",                                                                          \
	  "SELECT name, uuid, format_version, chunk_size, replicas, consistency, "                 \
	  "created_ns FROM volume WHERE id = 1")                                                   \
	X(TARGETS_LIST, "",                                                                        \
	  "SELECT id, url, uuid, state, pool, node, media FROM targets ORDER BY id")               \
	X(TARGET_INSERT, "ittittt",                                                                \
	  "INSERT INTO targets (id, url, uuid, state, pool, node, media)"                          \
	  " VALUES ($1, $2, $3, $4, $5, $6, $7)")                                                  \
	X(TARGET_LOCK, "i", "SELECT state FROM targets WHERE id = $1 FOR UPDATE")                  \
	X(TARGET_NCHAINS, "i", "SELECT count(*) FROM chain_members WHERE target = $1")             \
	X(TARGET_URL_USERS, "t", "SELECT count(*) FROM targets WHERE url = $1 AND state <> 4")     \
	X(TARGET_NEXT_ID, "", "SELECT coalesce(max(id), 0) + 1, count(*) FROM targets")            \
	X(TARGET_UPDATE, "iiittt",                                                                 \
	  "UPDATE targets SET state = CASE WHEN $2 & 1 <> 0 THEN $3 ELSE state END,"               \
	  " pool = CASE WHEN $2 & 2 <> 0 THEN $4 ELSE pool END,"                                   \
	  " node = CASE WHEN $2 & 4 <> 0 THEN $5 ELSE node END,"                                   \
	  " media = CASE WHEN $2 & 8 <> 0 THEN $6 ELSE media END WHERE id = $1")                   \
	X(CHAINS_LIST, "",                                                                         \
	  "SELECT c.id, c.epoch, coalesce(m.target, 0), coalesce(m.role, 0), coalesce(" MP_MS(     \
	      "now() - m.since") ", 0) FROM chains c "                                             \
				 "LEFT JOIN chain_members m ON m.chain = c.id ORDER BY c.id, "     \
				 "m.pos")                                                          \
	X(CHAIN_ROWS, "i",                                                                         \
	  "SELECT target, role, coalesce(" MP_MS("since") ", 0) FROM chain_members"                \
							  " WHERE chain = $1 ORDER BY pos")        \
	X(CHAIN_ADD_ROLES, "iaaa",                                                                 \
	  "INSERT INTO chain_members (chain, pos, target, role, since) SELECT $1, o - 1, t, r,"    \
	  " CASE WHEN r = 2 AND s = 0 THEN now() WHEN r = 2 THEN 'epoch'::timestamptz + (s / "     \
	  "1000)"                                                                                  \
	  " * interval '1 microsecond' END"                                                        \
	  " FROM unnest($2::int8[], $3::int8[], $4::int8[]) WITH ORDINALITY AS u (t, r, s, o)")    \
	X(CHAIN_SHARE, "i", "SELECT epoch FROM chains WHERE id = $1 FOR SHARE")                    \
	X(DIRTY_ADD, "iiaa",                                                                       \
	  "INSERT INTO dirty (chain, target, ino, idx) SELECT $1, $2, i, x"                        \
	  " FROM unnest($3::int8[], $4::int8[]) AS u (i, x) ON CONFLICT DO NOTHING")               \
	X(DIRTY_DEL, "iiaa",                                                                       \
	  "DELETE FROM dirty d USING unnest($3::int8[], $4::int8[]) AS u (i, x)"                   \
	  " WHERE d.chain = $1 AND d.target = $2 AND d.ino = u.i AND d.idx = u.x")                 \
	X(DIRTY_LIST, "iiiiii",                                                                    \
	  "SELECT ino, idx FROM dirty WHERE chain = $1 AND target = $2"                            \
	  " AND ($3 = 0 OR (ino, idx) > ($4, $5)) ORDER BY ino, idx LIMIT $6")                     \
	X(DIRTY_COUNT, "ii", "SELECT count(*) FROM dirty WHERE chain = $1 AND target = $2")        \
	X(DIRTY_CLEAR, "ii", "DELETE FROM dirty WHERE chain = $1 AND target = $2")                 \
	X(REPAIR_PUT, "iiiiiii",                                                                   \
	  "INSERT INTO repairs AS p (chain, target, kind, chunks_total, chunks_done, bytes_done,"  \
	  " rate, started, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, now(), now())"             \
	  " ON CONFLICT (chain, target) DO UPDATE SET started = CASE WHEN p.kind = excluded.kind"  \
	  " THEN p.started ELSE excluded.started END, kind = excluded.kind,"                       \
	  " chunks_total = excluded.chunks_total, chunks_done = excluded.chunks_done,"             \
	  " bytes_done = excluded.bytes_done, rate = excluded.rate, updated = now()")              \
	X(REPAIRS_LIST, "",                                                                        \
	  "SELECT chain, target, kind, chunks_total, chunks_done, bytes_done, rate, " MP_MS(       \
	      "started") ", " MP_MS("now() - started") ", " MP_MS("now() - updated") " FROM "      \
										     "repairs "    \
										     "ORDER BY "   \
										     "chain, "     \
										     "target")     \
	X(REPAIR_DEL, "ii", "DELETE FROM repairs WHERE chain = $1 AND target = $2")                \
	X(CHAIN_INSERT, "ii", "INSERT INTO chains (id, epoch) VALUES ($1, $2)")                    \
	X(CHAIN_TARGETS_OK, "a",                                                                   \
	  "SELECT count(*) FROM (SELECT id FROM targets WHERE id = ANY($1::int8[])"                \
	  " AND state NOT IN (3, 4) FOR SHARE) t")                                                 \
	X(CHAIN_LOCK, "i", "SELECT epoch FROM chains WHERE id = $1 FOR UPDATE")                    \
	X(CHAIN_SET_EPOCH, "ii", "UPDATE chains SET epoch = $2 WHERE id = $1")                     \
	X(CHAIN_CLEAR, "i", "DELETE FROM chain_members WHERE chain = $1")                          \
	X(INODE_GET, "i", "SELECT " MP_ATTR_COLS " FROM inodes WHERE ino = $1")                    \
	X(INODE_LOCK, "i", "SELECT " MP_ATTR_COLS " FROM inodes WHERE ino = $1 FOR UPDATE")        \
	X(INODE_LINK, "i", "SELECT mode, link FROM inodes WHERE ino = $1")                         \
	X(INODE_CTIME, "ii", "UPDATE inodes SET ctime = $2 WHERE ino = $1")                        \
	X(INODE_DROP_LINK, "ii",                                                                   \
	  "UPDATE inodes SET nlink = greatest(nlink - 1, 0), ctime = $2 "                          \
	  "WHERE ino = $1 RETURNING " MP_ATTR_COLS)                                                \
	X(INODE_DELETE, "i",                                                                       \
	  "WITH x AS (DELETE FROM xattrs WHERE ino = $1) "                                         \
	  "DELETE FROM inodes WHERE ino = $1")                                                     \
	X(INODE_PUT, "iiiiiiiiiiiii",                                                              \
	  "UPDATE inodes SET mode = $2, nlink = $3, uid = $4, gid = $5, rdev = $6, size = $7,"     \
	  " atime = $8, mtime = $9, ctime = $10, btime = $11, flags = $12, qres = $13"             \
	  " WHERE ino = $1")                                                                       \
	X(ROOT_INSERT, "iiii",                                                                     \
	  "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, btime, "    \
	  "generation, flags) VALUES ($1, 2, $2, $3, 0, 0, $4, $4, $4, $4, 1, 0) RETURNING ino")   \
	X(MKNOD, "ibiiiiiiiiiiibii",                                                               \
	  "WITH i AS (INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, atime, mtime, ctime," \
	  " btime, generation, flags, link, qroot) VALUES ($3, $4, $5, $6, $7, $8, $9, $10, $11,"  \
	  " $12, 1, 0, $14, $16) RETURNING ino),"                                                  \
	  " d AS (INSERT INTO dentries (parent, name, ino) SELECT $1, $2, ino FROM i"              \
	  " ON CONFLICT (parent, name) DO NOTHING RETURNING id),"                                  \
	  " p AS (UPDATE inodes SET nlink = nlink + $15, mtime = $13, ctime = $13"                 \
	  " WHERE ino = $1 AND EXISTS (SELECT 1 FROM d))"                                          \
	  " SELECT i.ino, (SELECT count(*) FROM d) FROM i")                                        \
	X(LINK, "ibii",                                                                            \
	  "WITH d AS (INSERT INTO dentries (parent, name, ino) VALUES ($1, $2, $3)"                \
	  " ON CONFLICT (parent, name) DO NOTHING RETURNING id),"                                  \
	  " i AS (UPDATE inodes SET nlink = nlink + 1, ctime = $4"                                 \
	  " WHERE ino = $3 AND EXISTS (SELECT 1 FROM d) RETURNING " MP_ATTR_COLS "),"              \
	  " p AS (UPDATE inodes SET mtime = $4, ctime = $4 WHERE ino = $1"                         \
	  " AND EXISTS (SELECT 1 FROM d)) SELECT " MP_ATTR_COLS " FROM i")                         \
	X(UNLINK, "iiii",                                                                          \
	  "WITH d AS (DELETE FROM dentries WHERE id = $1),"                                        \
	  " i AS (UPDATE inodes SET nlink = greatest(nlink - 1, 0), ctime = $3 WHERE ino = $2"     \
	  " RETURNING " MP_ATTR_COLS "),"                                                          \
	  " p AS (UPDATE inodes SET mtime = $3, ctime = $3 WHERE ino = $4)"                        \
	  " SELECT " MP_ATTR_COLS " FROM i")                                                       \
	X(DIR_TOUCH, "iii",                                                                        \
	  "UPDATE inodes SET nlink = nlink + $2, mtime = $3, ctime = $3 "                          \
	  "WHERE ino = $1")                                                                        \
	X(LOOKUP, "ib",                                                                            \
	  "SELECT p.mode, coalesce(d.id, 0), coalesce(d.ino, 0), " MP_ATTR_COLS_I                  \
	  " FROM inodes p LEFT JOIN dentries d ON d.parent = p.ino AND d.name = $2"                \
	  " LEFT JOIN inodes i ON i.ino = d.ino WHERE p.ino = $1")                                 \
	X(DENT_GET, "ib",                                                                          \
	  "SELECT d.id, d.ino, " MP_ATTR_COLS_I " FROM dentries d"                                 \
	  " LEFT JOIN inodes i ON i.ino = d.ino WHERE d.parent = $1 AND d.name = $2")              \
	X(DENT_DELETE, "i", "DELETE FROM dentries WHERE id = $1")                                  \
	X(DENT_MOVE, "iib", "UPDATE dentries SET parent = $2, name = $3 WHERE id = $1")            \
	X(DENT_SET_INO, "ii", "UPDATE dentries SET ino = $2 WHERE id = $1")                        \
	X(DENT_ANY_CHILD, "i",                                                                     \
	  "SELECT count(*) FROM (SELECT 1 FROM dentries WHERE parent = $1 "                        \
	  "LIMIT 1) c")                                                                            \
	X(ANCESTOR, "iii",                                                                         \
	  "WITH RECURSIVE up (ino, depth) AS (SELECT $1::int8, 0::int8 UNION ALL"                  \
	  " SELECT p.parent, up.depth + 1 FROM up CROSS JOIN LATERAL (SELECT d.parent FROM"        \
	  " dentries d WHERE d.ino = up.ino ORDER BY d.id LIMIT 1) p"                              \
	  " WHERE up.ino <> 1 AND up.ino <> $2 AND up.depth < $3)"                                 \
	  " SELECT ino, depth FROM up ORDER BY depth DESC LIMIT 1")                                \
	X(READDIR, "iii",                                                                          \
	  "SELECT d.id, d.name, d.ino, coalesce(i.mode, -1) FROM dentries d"                       \
	  " LEFT JOIN inodes i ON i.ino = d.ino"                                                   \
	  " WHERE d.parent = $1 AND d.id > $2 ORDER BY d.id LIMIT $3")                             \
	X(READDIRPLUS, "iii",                                                                      \
	  "SELECT d.id, d.name, coalesce(i.ino, 0), coalesce(i.mode, 0), coalesce(i.nlink, 0),"    \
	  " coalesce(i.uid, 0), coalesce(i.gid, 0), coalesce(i.rdev, 0), coalesce(i.size, 0),"     \
	  " coalesce(i.atime, 0), coalesce(i.mtime, 0), coalesce(i.ctime, 0),"                     \
	  " coalesce(i.btime, 0), coalesce(i.generation, 0), coalesce(i.flags, 0),"                \
	  " coalesce(i.qroot, 0), coalesce(i.qres, 0)"                                             \
	  " FROM dentries d LEFT JOIN inodes i ON i.ino = d.ino"                                   \
	  " WHERE d.parent = $1 AND d.id > $2 ORDER BY d.id LIMIT $3")                             \
	X(XATTR_GET, "ib", "SELECT value FROM xattrs WHERE ino = $1 AND name = $2")                \
	X(XATTR_PUT, "ibb",                                                                        \
	  "INSERT INTO xattrs (ino, name, value) VALUES ($1, $2, $3) "                             \
	  "ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value")                          \
	X(XATTR_DEL, "ib", "DELETE FROM xattrs WHERE ino = $1 AND name = $2")                      \
	X(XATTR_LIST, "i", "SELECT name FROM xattrs WHERE ino = $1 ORDER BY name")                 \
	X(ORPHANS, "ii",                                                                           \
	  "SELECT " MP_ATTR_COLS " FROM inodes WHERE (nlink = 0 OR (flags & 1) <> 0)"              \
	  " AND ino > $1 ORDER BY ino LIMIT $2")                                                   \
	X(INODES, "ii",                                                                            \
	  "SELECT " MP_ATTR_COLS " FROM inodes WHERE ino > $1 ORDER BY ino LIMIT $2")              \
	X(QUOTA_GET, "i",                                                                          \
	  "SELECT bytes_limit, inodes_limit, bytes_used, inodes_used FROM quotas WHERE ino = $1")  \
	X(QUOTA_LOCK, "i",                                                                         \
	  "SELECT bytes_limit, inodes_limit, bytes_used, inodes_used FROM quotas WHERE ino = $1"   \
	  " FOR UPDATE")                                                                           \
	X(QUOTA_ADD, "iii",                                                                        \
	  "UPDATE quotas SET bytes_used = greatest(0, bytes_used + $2),"                           \
	  " inodes_used = greatest(0, inodes_used + $3) WHERE ino = $1")                           \
	X(QUOTA_LIMITS, "iii",                                                                     \
	  "UPDATE quotas SET bytes_limit = $2, inodes_limit = $3 WHERE ino = $1")                  \
	X(QUOTA_DEL, "i", "DELETE FROM quotas WHERE ino = $1")                                     \
	X(QUOTA_UNTAG, "i", "UPDATE inodes SET qroot = 0, qres = 0 WHERE qroot = $1")              \
	X(QUOTA_SUBTREE_ROOTS, "i",                                                                \
	  "WITH RECURSIVE sub (ino) AS (SELECT $1::int8 UNION SELECT d.ino FROM dentries d"        \
	  " JOIN sub ON d.parent = sub.ino) SELECT count(*) FROM sub JOIN quotas q ON q.ino ="     \
	  " sub.ino")                                                                              \
	X(QUOTA_TAG, "i",                                                                          \
	  "WITH RECURSIVE sub (ino) AS (SELECT $1::int8 UNION SELECT d.ino FROM dentries d"        \
	  " JOIN sub ON d.parent = sub.ino) UPDATE inodes SET qroot = $1 WHERE ino IN"             \
	  " (SELECT ino FROM sub)")                                                                \
	X(QUOTA_CREATE, "iii",                                                                     \
	  "INSERT INTO quotas (ino, bytes_limit, inodes_limit, bytes_used, inodes_used)"           \
	  " SELECT $1, $2, $3, coalesce(sum(" MP_CHARGED("") "), 0)::int8, count(*) - 1"           \
							     " FROM inodes WHERE qroot = $1")      \
	X(STATFS, "",                                                                              \
	  "SELECT count(*), coalesce(sum(CASE WHEN (mode & 61440) = 32768 THEN size"               \
	  " ELSE 0 END), 0)::int8 FROM inodes")                                                    \
	X(NODE_REGISTER, "tti",                                                                    \
	  "INSERT INTO nodes (name, address, state, heartbeat, lease_until, registered)"           \
	  " VALUES ($1, $2, 0, now(), now() + $3 * interval '1 millisecond', now())"               \
	  " ON CONFLICT (name) DO UPDATE SET address = excluded.address, state = 0,"               \
	  " heartbeat = now(), lease_until = excluded.lease_until RETURNING id")                   \
	X(NODE_HEARTBEAT, "ii",                                                                    \
	  "UPDATE nodes SET heartbeat = now(), lease_until = now() + $2 * interval"                \
	  " '1 millisecond' WHERE id = $1")                                                        \
	X(NODE_SET_STATE, "ii", "UPDATE nodes SET state = $2 WHERE id = $1")                       \
	X(NODES_LIST, "",                                                                          \
	  "SELECT id, name, address, state, " MP_MS("now() - heartbeat") ", " MP_MS(               \
	      "lease_until - now()") " FROM nodes ORDER BY id")                                    \
	X(LEASE_ACQUIRE, "tii",                                                                    \
	  "INSERT INTO leases AS l (name, holder, generation, expires)"                            \
	  " VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')"                             \
	  " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"                            \
	  " expires = excluded.expires, generation = CASE WHEN l.holder = excluded.holder"         \
	  " AND l.expires > now() THEN l.generation ELSE l.generation + 1 END"                     \
	  " WHERE l.holder IS NULL OR l.holder = excluded.holder OR l.expires <= now()"            \
	  " RETURNING " MP_LEASE_COLS)                                                             \
	X(LEASE_RENEW, "tiii",                                                                     \
	  "UPDATE leases SET expires = now() + $4 * interval '1 millisecond' WHERE name = $1"      \
	  " AND holder = $2 AND generation = $3 AND expires > now() RETURNING " MP_LEASE_COLS)     \
	X(LEASE_RELEASE, "tii",                                                                    \
	  "UPDATE leases SET holder = NULL, expires = now() WHERE name = $1 AND holder = $2"       \
	  " AND generation = $3 AND expires > now()")                                              \
	X(LEASE_GET, "t", "SELECT " MP_LEASE_COLS " FROM leases WHERE name = $1")                  \
	X(CLIENTS_REAP, "", "DELETE FROM clients WHERE expires <= now()")                          \
	X(CLIENT_CONFLICT, "i",                                                                    \
	  "SELECT " MP_CLIENT_COLS " FROM clients WHERE expires > now()"                           \
	  " AND (exclusive <> 0 OR $1 <> 0) ORDER BY id LIMIT 1")                                  \
	X(CLIENT_INSERT, "ttiii",                                                                  \
	  "INSERT INTO clients (host, pid, mountpoint, exclusive, started, expires)"               \
	  " VALUES ($1, $3, $2, $4, now(), now() + $5 * interval '1 millisecond') RETURNING id")   \
	X(CLIENT_HEARTBEAT, "ii",                                                                  \
	  "UPDATE clients SET expires = now() + $2 * interval '1 millisecond'"                     \
	  " WHERE id = $1 AND expires > now()")                                                    \
	X(CLIENT_DELETE, "i", "DELETE FROM clients WHERE id = $1")                                 \
	X(CLIENTS_LIST, "", "SELECT " MP_CLIENT_COLS " FROM clients ORDER BY id")                  \
	X(FLOCK_INODE, "i", "SELECT 1::int8 FROM inodes WHERE ino = $1 FOR UPDATE")                \
	X(FLOCK_CLIENT, "i",                                                                       \
	  "SELECT 1::int8 FROM clients WHERE id = $1 AND expires > now() FOR KEY SHARE")           \
	X(FLOCK_PURGE, "i",                                                                        \
	  "DELETE FROM file_locks l USING clients c WHERE l.ino = $1 AND c.id = l.client"          \
	  " AND c.expires <= now()")                                                               \
	X(FLOCK_CONFLICT, "iiiiiii",                                                               \
	  "SELECT " MP_LOCK_COLS ","                                                               \
	  " (c.host = coalesce((SELECT host FROM clients WHERE id = $2), ''))::int::int8"          \
	  " FROM file_locks l JOIN clients c ON c.id = l.client AND c.expires > now()"             \
	  " WHERE l.ino = $1 AND l.kind = $4 AND NOT (l.client = $2 AND l.owner = $3)"             \
	  " AND (l.type = 2 OR $5 = 2) AND l.lstart <= $7 AND l.lend >= $6"                        \
	  " ORDER BY l.lstart, l.client, l.owner LIMIT 1")                                         \
	X(FLOCK_TAKE, "iiii",                                                                      \
	  "DELETE FROM file_locks l"                                                               \
	  " WHERE ino = $1 AND client = $2 AND owner = $3 AND kind = $4 RETURNING " MP_LOCK_COLS)  \
	X(FLOCK_INSERT, "iiiiiiii",                                                                \
	  "INSERT INTO file_locks (ino, client, owner, kind, type, lstart, lend, pid)"             \
	  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")                                              \
	X(FLOCK_RELEASE, "iiii",                                                                   \
	  "DELETE FROM file_locks WHERE ino = $1 AND client = $2 AND owner = $3 AND kind = $4")    \
	X(FLOCK_RELEASE_CLIENT, "i", "DELETE FROM file_locks WHERE client = $1")                   \
	X(FLOCK_LIST, "i",                                                                         \
	  "SELECT " MP_LOCK_COLS ","                                                               \
	  " coalesce((c.expires > now())::int, 0)::int8 FROM file_locks l"                         \
	  " LEFT JOIN clients c ON c.id = l.client WHERE l.ino = $1"                               \
	  " ORDER BY l.client, l.owner, l.kind, l.lstart")

/* clang-format off */
enum mp_sid {
#define MP_ENUM(id, types, sql) MPQ_##id,
	MP_STMTS(MP_ENUM)
#undef MP_ENUM
	MPQ_COUNT
};

static const struct {
	const char *types;
	const char *sql;
} mp_stmt[MPQ_COUNT] = {
#define MP_DEF(id, t, s) [MPQ_##id] = {t, s},
	MP_STMTS(MP_DEF)
#undef MP_DEF
};
/* clang-format on */

struct mp_conn {
	PGconn *pg;
	struct mp_conn *next;			  /* free list, protected by mp.lock */
	uint64_t prepared[(MPQ_COUNT + 63) / 64]; /* statements prepared on this session */
	/* outcome of the last failed statement (set by mp_fail) */
	bool lost;     /* the connection broke: PG-5 */
	bool retry;    /* deadlock or serialization failure: PG-4 */
	char state[6]; /* SQLSTATE */
};

struct mp {
	struct meta base; /* first: meta_ops_of() reads base.ops */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* protected by lock: */
	struct mp_conn *free;
	unsigned nconns;
	/* immutable after open: */
	bool rdonly;
	char url[URL_MAX];	  /* handed to libpq as is */
	char where[MP_WHERE_MAX]; /* the URL without password and query, for messages */
	atomic_bool formatted;
	int64_t schema; /* the version mp_validate() found; mp_migrate() brings it up */
};

static struct mp *mp_of(struct meta *mm)
{
	return (struct mp *)mm;
}

/* libpq's message, one line: the first line, without the "ERROR:  " / "FATAL:  " prefix. */
static void mp_oneline(const char *msg, char *out, size_t len)
{
	const char *p = msg ? msg : "";
	size_t n;

	if (!strncmp(p, "ERROR:  ", 8) || !strncmp(p, "FATAL:  ", 8))
		p += 8;
	n = strcspn(p, "\n");
	if (n >= len)
		n = len - 1;
	memcpy(out, p, n);
	out[n] = '\0';
}

/* ---- errors: SQLSTATE -> -errno, in exactly one place ---------------------------------- */

static bool mp_state_is(const struct mp_conn *c, const char *s)
{
	return !strncmp(c->state, s, strlen(s));
}

/* A statement failed with `res` (may be NULL: the connection failed before a result). Sets
 * c->lost / c->retry for the transaction runner and returns the errno the caller reports. */
static int mp_fail(struct mp *m, struct mp_conn *c, const PGresult *res, const char *what)
{
	const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char msg[512];
	int e;

	snprintf(c->state, sizeof(c->state), "%s", st ? st : "");
	mp_oneline(res ? PQresultErrorMessage(res) : PQerrorMessage(c->pg), msg, sizeof(msg));
	if (!msg[0])
		mp_oneline(PQerrorMessage(c->pg), msg, sizeof(msg));
	if (PQstatus(c->pg) == CONNECTION_BAD || mp_state_is(c, "08") || mp_state_is(c, "57P01") ||
	    mp_state_is(c, "57P02") || mp_state_is(c, "57P03")) {
		c->lost = true;
		e = -EIO;
	} else if (mp_state_is(c, "40001") || mp_state_is(c, "40P01")) {
		c->retry = true;
		e = -EAGAIN;
	} else if (mp_state_is(c, "55P03") || mp_state_is(c, "57014") || mp_state_is(c, "53300")) {
		e = -EBUSY; /* lock_timeout, statement_timeout, too many connections */
	} else if (mp_state_is(c, "53100")) {
		e = -ENOSPC;
	} else if (mp_state_is(c, "53200")) {
		e = -ENOMEM;
	} else if (mp_state_is(c, "25006")) {
		e = -EROFS;
	} else if (mp_state_is(c, "23") || mp_state_is(c, "22")) {
		e = -EINVAL; /* constraint (unknown target, duplicate id) or bad value */
	} else if (mp_state_is(c, "XX")) {
		/* The one error above debug level: an operator must hear about it. */
		log_err("metadata database %s reports damage (%s: %s, SQLSTATE %s)", m->where, what,
			msg, c->state);
		return -EIO;
	} else {
		e = -EIO;
	}
	log_debug("meta postgres %s: %s: %s (SQLSTATE %s)", m->where, what, msg,
		  c->state[0] ? c->state : "none");
	return e;
}

/* ---- connections ------------------------------------------------------------------------ */

/* Session setup after (re)connecting: settings, and synchronous_commit at least on (see
 * DURABILITY). */
static int mp_session(struct mp *m, struct mp_conn *c)
{
	PGresult *res;
	int r = 0;

	memset(c->prepared, 0, sizeof(c->prepared));
	res = PQexec(c->pg, mp_session_sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		r = mp_fail(m, c, res, "session setup");
	PQclear(res);
	if (r == 0) {
		res = PQexec(c->pg, "SELECT current_setting('synchronous_commit')");
		if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
			r = mp_fail(m, c, res, "synchronous_commit");
		else if (!strcmp(PQgetvalue(res, 0, 0), "off"))
			r = 1;
		PQclear(res);
		if (r == 1) {
			res = PQexec(c->pg, "SET synchronous_commit = on");
			r = PQresultStatus(res) == PGRES_COMMAND_OK
				? 0
				: mp_fail(m, c, res, "synchronous_commit");
			PQclear(res);
		}
	}
	if (r == 0 && m->rdonly) {
		res = PQexec(c->pg, "SET default_transaction_read_only = on");
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			r = mp_fail(m, c, res, "read-only session");
		PQclear(res);
	}
	return r;
}

/* Server notices (NOTICE, WARNING) go to our log, not to the process's stderr. */
static void mp_notice(void *arg, const PGresult *res)
{
	struct mp *m = arg;
	char msg[512];

	mp_oneline(PQresultErrorMessage(res), msg, sizeof(msg));
	log_debug("meta postgres %s: server says: %s", m->where, msg);
}

/* A new session; err gets the user's one-liner on failure. */
static int mp_connect(struct mp *m, struct mp_conn *c, char *err, size_t errlen)
{
	const char *vals[] = {"10", "10", "5", "3", "30000", "braidfs", m->url, NULL};
	char msg[512];
	int r;

	c->pg = PQconnectdbParams(mp_conn_keys, vals, 1);
	if (!c->pg) {
		set_err(err, errlen, "cannot connect to PostgreSQL at %s: out of memory", m->where);
		return -ENOMEM;
	}
	PQsetNoticeReceiver(c->pg, mp_notice, m);
	if (PQstatus(c->pg) != CONNECTION_OK) {
		mp_oneline(PQerrorMessage(c->pg), msg, sizeof(msg));
		set_err(err, errlen, "cannot connect to PostgreSQL at %s: %s", m->where, msg);
		/* libpq gives no SQLSTATE for startup failures; its words are all there is. */
		if (strstr(msg, "password authentication failed") ||
		    strstr(msg, "no pg_hba.conf entry") || strstr(msg, "authentication"))
			return -EACCES;
		if (strstr(msg, "does not exist"))
			return -ENOENT;
		return -EIO;
	}
	r = mp_session(m, c);
	if (r < 0) {
		mp_oneline(PQerrorMessage(c->pg), msg, sizeof(msg));
		set_err(err, errlen, "cannot set up a session with PostgreSQL at %s: %s", m->where,
			msg);
	}
	return r;
}

static void mp_conn_free(struct mp_conn *c)
{
	if (!c)
		return;
	PQfinish(c->pg);
	free(c);
}

/* Bring a broken connection back: bounded tries with doubling waits (PG-5). */
static int mp_reconnect(struct mp *m, struct mp_conn *c)
{
	long wait_ms = 50;
	char msg[512] = "";

	for (int i = 0; i < MP_RECONNECT_TRIES; i++) {
		if (i > 0) {
			struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000000};

			nanosleep(&ts, NULL);
			wait_ms = MIN(wait_ms * 2, 2000);
		}
		PQreset(c->pg);
		if (PQstatus(c->pg) == CONNECTION_OK && mp_session(m, c) == 0) {
			log_debug("meta postgres %s: reconnected after %d tr%s", m->where, i + 1,
				  i ? "ies" : "y");
			c->lost = false;
			return 0;
		}
		mp_oneline(PQerrorMessage(c->pg), msg, sizeof(msg));
	}
	log_err("lost the connection to the metadata database %s and %d tries to reconnect "
		"failed: %s",
		m->where, MP_RECONNECT_TRIES, msg);
	return -EIO;
}

/* Borrow a connection (open a new one while the pool is below MP_POOL_MAX). */
static int mp_get(struct mp *m, struct mp_conn **ret)
{
	struct mp_conn *c;
	int r;

	pthread_mutex_lock(&m->lock);
	while (!m->free && m->nconns >= MP_POOL_MAX)
		pthread_cond_wait(&m->cond, &m->lock);
	c = m->free;
	if (c) {
		m->free = c->next;
		pthread_mutex_unlock(&m->lock);
	} else {
		m->nconns++;
		pthread_mutex_unlock(&m->lock);
		c = calloc(1, sizeof(*c));
		r = c ? mp_connect(m, c, NULL, 0) : -ENOMEM;
		if (r < 0 && c && c->pg) {
			/* the first connection worked at open(): treat this like a lost one */
			c->lost = true;
			r = 0;
		}
		if (r < 0) {
			mp_conn_free(c);
			pthread_mutex_lock(&m->lock);
			m->nconns--;
			pthread_cond_signal(&m->cond);
			pthread_mutex_unlock(&m->lock);
			return r;
		}
	}
	c->retry = false;
	c->state[0] = '\0';
	if (c->lost || PQstatus(c->pg) != CONNECTION_OK) {
		r = mp_reconnect(m, c);
		if (r < 0) {
			c->lost = true;
			pthread_mutex_lock(&m->lock);
			c->next = m->free;
			m->free = c;
			pthread_cond_signal(&m->cond);
			pthread_mutex_unlock(&m->lock);
			return r;
		}
	}
	*ret = c;
	return 0;
}

static void mp_put(struct mp *m, struct mp_conn *c)
{
	pthread_mutex_lock(&m->lock);
	c->next = m->free;
	m->free = c;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

/* ---- statements ------------------------------------------------------------------------ */

/* Parameters of one statement, in binary except int8[] (text). */
struct mp_args {
	int n;
	const char *val[MP_MAX_PARAMS];
	int len[MP_MAX_PARAMS];
	int fmt[MP_MAX_PARAMS];
	uint64_t ibuf[MP_MAX_PARAMS];
	char abuf[4 * 21 * (META_CHAIN_SLOTS + 1)]; /* small int8[] parameters, as text */
	size_t aused;
};

static void arg_i64(struct mp_args *a, int64_t v)
{
	a->ibuf[a->n] = htobe64((uint64_t)v);
	a->val[a->n] = (const char *)&a->ibuf[a->n];
	a->len[a->n] = 8;
	a->fmt[a->n] = 1;
	a->n++;
}

static void arg_bytes(struct mp_args *a, const void *p, size_t len)
{
	a->val[a->n] = len ? p : "";
	a->len[a->n] = (int)len;
	a->fmt[a->n] = 1;
	a->n++;
}

static void arg_str(struct mp_args *a, const char *s)
{
	arg_bytes(a, s, strlen(s));
}

static void arg_null(struct mp_args *a)
{
	a->val[a->n] = NULL;
	a->len[a->n] = 0;
	a->fmt[a->n] = 1;
	a->n++;
}

/* A text parameter the caller owns (an int8[] literal): valid until the statement ran. */
static void arg_text(struct mp_args *a, const char *s)
{
	a->val[a->n] = s;
	a->len[a->n] = 0;
	a->fmt[a->n] = 0;
	a->n++;
}

/* "{v0,v1,...}" of n values (get(v, i) each) into out[cap]; false if it does not fit. */
static bool mp_array_text(char *out, size_t cap, int64_t (*get)(const void *v, uint32_t i),
			  const void *v, uint32_t n)
{
	size_t o = 0;
	int k;

	if (cap < 3)
		return false;
	out[o++] = '{';
	for (uint32_t i = 0; i < n; i++) {
		k = snprintf(out + o, cap - o, "%s%" PRId64, i ? "," : "", get(v, i));
		if (k < 0 || (size_t)k >= cap - o)
			return false;
		o += (size_t)k;
	}
	if (cap - o < 2)
		return false;
	out[o++] = '}';
	out[o] = '\0';
	return true;
}

static int64_t mp_get_u32(const void *v, uint32_t i)
{
	return ((const uint32_t *)v)[i];
}

static int64_t mp_get_i64(const void *v, uint32_t i)
{
	return ((const int64_t *)v)[i];
}

/* A small int8[] parameter built in a->abuf (at most META_CHAIN_SLOTS values). */
static void arg_array(struct mp_args *a, int64_t (*get)(const void *v, uint32_t i), const void *v,
		      uint32_t n)
{
	char *out = a->abuf + a->aused;

	if (!mp_array_text(out, sizeof(a->abuf) - a->aused, get, v, n))
		snprintf(out, sizeof(a->abuf) - a->aused, "{}"); /* a caller bug: n too big */
	a->aused += strlen(out) + 1;
	arg_text(a, out);
}

static void arg_u32_array(struct mp_args *a, const uint32_t *v, uint32_t n)
{
	arg_array(a, mp_get_u32, v, n);
}

static Oid mp_type_oid(char t)
{
	switch (t) {
	case 'i':
		return 20; /* int8 */
	case 'b':
		return 17; /* bytea */
	case 't':
		return 25; /* text */
	default:
		return 1016; /* int8[] */
	}
}

/* Run prepared statement `id` on c. *ret (may be NULL) gets the result on success (caller
 * PQclear()s it). */
static int mp_q(struct mp *m, struct mp_conn *c, enum mp_sid id, const struct mp_args *a,
		PGresult **ret)
{
	const char *types = mp_stmt[id].types;
	int np = (int)strlen(types);
	char name[16];
	PGresult *res;
	ExecStatusType st;

	snprintf(name, sizeof(name), "b%d", (int)id);
	if (!(c->prepared[id / 64] & (1ull << (id % 64)))) {
		Oid oids[MP_MAX_PARAMS];

		for (int i = 0; i < np; i++)
			oids[i] = mp_type_oid(types[i]);
		res = PQprepare(c->pg, name, mp_stmt[id].sql, np, oids);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			int r = mp_fail(m, c, res, mp_stmt[id].sql);

			PQclear(res);
			return r;
		}
		PQclear(res);
		c->prepared[id / 64] |= 1ull << (id % 64);
	}
	if ((a ? a->n : 0) != np) {
		log_err("meta postgres: statement %d takes %d parameters, got %d", (int)id, np,
			a ? a->n : 0);
		return -EINVAL;
	}
	res = PQexecPrepared(c->pg, name, np, a ? a->val : NULL, a ? a->len : NULL,
			     a ? a->fmt : NULL, 1);
	st = PQresultStatus(res);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		int r = mp_fail(m, c, res, mp_stmt[id].sql);

		PQclear(res);
		return r;
	}
	if (ret)
		*ret = res;
	else
		PQclear(res);
	return 0;
}

/* Run statement `id`; return the number of rows it changed or returned. */
static int mp_count(struct mp *m, struct mp_conn *c, enum mp_sid id, const struct mp_args *a)
{
	PGresult *res;
	int r = mp_q(m, c, id, a, &res);
	long n;

	if (r < 0)
		return r;
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		n = PQntuples(res);
	else
		n = strtol(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	return (int)MIN(n, INT_MAX);
}

/* Simple-protocol SQL (session setup, DDL, transaction control). */
static int mp_exec(struct mp *m, struct mp_conn *c, const char *sql)
{
	PGresult *res = PQexec(c->pg, sql);
	ExecStatusType st = PQresultStatus(res);
	int r = 0;

	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
		r = mp_fail(m, c, res, sql);
	PQclear(res);
	return r;
}

/* ---- result columns: bounded, type-checked (a reply is untrusted input) --------------- */

struct mp_rd {
	const PGresult *res;
	int row;
	bool bad; /* a column was NULL, of the wrong size or missing */
};

static bool mp_col_ok(struct mp_rd *rd, int col)
{
	if (rd->row >= PQntuples(rd->res) || col >= PQnfields(rd->res) ||
	    PQgetisnull(rd->res, rd->row, col)) {
		rd->bad = true;
		return false;
	}
	return true;
}

static int64_t mp_i64(struct mp_rd *rd, int col)
{
	uint64_t v;

	if (!mp_col_ok(rd, col) || PQfformat(rd->res, col) != 1 ||
	    PQgetlength(rd->res, rd->row, col) != 8) {
		rd->bad = true;
		return 0;
	}
	memcpy(&v, PQgetvalue(rd->res, rd->row, col), 8);
	return (int64_t)be64toh(v);
}

/* bytea/text column: pointer and length (not NUL-terminated). */
static const char *mp_bytes(struct mp_rd *rd, int col, size_t *len)
{
	if (!mp_col_ok(rd, col)) {
		*len = 0;
		return "";
	}
	*len = (size_t)PQgetlength(rd->res, rd->row, col);
	return PQgetvalue(rd->res, rd->row, col);
}

/* text column into out[cap]; longer than cap-1 is a bad row. */
static void mp_text(struct mp_rd *rd, int col, char *out, size_t cap)
{
	size_t n;
	const char *p = mp_bytes(rd, col, &n);

	if (n >= cap || memchr(p, '\0', n)) {
		rd->bad = true;
		n = 0;
	}
	memcpy(out, p, n);
	out[n] = '\0';
}

static int mp_bad_row(struct mp *m, const char *what)
{
	log_err("metadata database %s: unexpected column data in %s; run 'braidfs fsck'", m->where,
		what);
	return -EIO;
}

/* int8 columns c..c+n-1 of the current row into v. */
static void mp_row_i64s(struct mp_rd *rd, int c, int64_t *v, int n)
{
	for (int i = 0; i < n; i++)
		v[i] = mp_i64(rd, c + i);
}

static void mp_row_attr(struct mp_rd *rd, int c, struct meta_attr *a)
{
	int64_t v[META_ATTR_NCOLS];

	mp_row_i64s(rd, c, v, META_ATTR_NCOLS);
	meta_attr_from_cols(a, v);
}

/* A name column into buf[META_NAME_MAX + 1]. */
static void mp_col_name(struct mp_rd *rd, int c, char *buf)
{
	size_t n;
	const char *p = mp_bytes(rd, c, &n);

	if (n > META_NAME_MAX)
		n = META_NAME_MAX; /* only a row written behind our back */
	memcpy(buf, p, n);
	buf[n] = '\0';
}

typedef void (*mp_row_fn)(struct mp_rd *rd, void *out);

/* The first row of statement `id`, read into out by row(); -ENOENT without a row. */
static int mp_one(struct mp *m, struct mp_conn *c, enum mp_sid id, const struct mp_args *a,
		  mp_row_fn row, void *out)
{
	struct mp_rd rd = {0};
	PGresult *res;
	int r = mp_q(m, c, id, a, &res);

	if (r < 0)
		return r;
	rd.res = res;
	if (PQntuples(res) < 1)
		r = -ENOENT;
	else
		row(&rd, out);
	PQclear(res);
	return rd.bad ? mp_bad_row(m, mp_stmt[id].sql) : r;
}

static void mp_i64_row(struct mp_rd *rd, void *out)
{
	*(int64_t *)out = mp_i64(rd, 0);
}

static void mp_pair_row(struct mp_rd *rd, void *out)
{
	mp_row_i64s(rd, 0, out, 2);
}

/* One int8 from the first row of statement `id`; -ENOENT without a row. */
static int mp_q_i64(struct mp *m, struct mp_conn *c, enum mp_sid id, const struct mp_args *a,
		    int64_t *ret)
{
	return mp_one(m, c, id, a, mp_i64_row, ret);
}

/* ---- transactions ---------------------------------------------------------------------- */

typedef int (*mp_fn)(struct mp *m, struct mp_conn *c, void *arg);

/* 1..10 ms times the attempt, jittered so that two clients that collided do not again. */
static void mp_backoff(int attempt)
{
	long jitter = 1 + (long)((uint64_t)now_monotonic_ns() / 1000 % 10);
	struct timespec ts = {0, jitter * (attempt + 1) * 1000000L};

	nanosleep(&ts, NULL);
}

/* BEGIN and learn the transaction id (PG-5). */
static int mp_begin(struct mp *m, struct mp_conn *c, uint64_t *xid)
{
	PGresult *res = PQexec(c->pg, "BEGIN ISOLATION LEVEL READ COMMITTED;"
				      " SELECT txid_current()::text");
	const char *v;
	char *end;
	int r = 0;

	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 1) {
		r = mp_fail(m, c, res, "begin");
	} else {
		v = PQgetvalue(res, 0, 0);
		errno = 0;
		*xid = strtoull(v, &end, 10);
		if (errno || end == v || *end || PQgetlength(res, 0, 0) > 20)
			r = mp_bad_row(m, "txid_current");
	}
	PQclear(res);
	return r;
}

static void mp_rollback(struct mp *m, struct mp_conn *c)
{
	PGresult *res;

	if (PQstatus(c->pg) != CONNECTION_OK || PQtransactionStatus(c->pg) == PQTRANS_IDLE)
		return;
	res = PQexec(c->pg, "ROLLBACK");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		log_debug("meta postgres %s: rollback failed", m->where);
	PQclear(res);
}

/* The connection broke during COMMIT: did the transaction commit? 1 yes, 0 no, -EIO unknown. */
static int mp_resolve(struct mp *m, struct mp_conn *c, uint64_t xid)
{
	for (int i = 0; i < 50; i++) {
		struct mp_args a = {0};
		PGresult *res;
		size_t n;
		const char *v;
		struct mp_rd rd = {0};
		int r;

		if (PQstatus(c->pg) != CONNECTION_OK && mp_reconnect(m, c) < 0)
			break;
		arg_i64(&a, (int64_t)xid);
		r = mp_q(m, c, MPQ_XID_STATUS, &a, &res);
		if (r < 0) {
			mp_backoff(i);
			continue;
		}
		rd.res = res;
		v = mp_bytes(&rd, 0, &n);
		r = n == 9 && !memcmp(v, "committed", 9) ? 1
		    : n == 7 && !memcmp(v, "aborted", 7) ? 0
							 : 2;
		PQclear(res);
		if (r < 2)
			return r;
		/* "in progress": the old backend has not noticed yet; give it a moment */
		mp_backoff(i);
	}
	log_err("metadata database %s: the connection broke during a commit and whether it "
		"committed cannot be learned (transaction %" PRIu64 ")",
		m->where, xid);
	return -EIO;
}

static int mp_ready(struct mp *m, struct mp_conn *c);

/* Run fn as one transaction (META-1) with the retries of PG-4 and PG-5. fn may run more than
 * once: it must leave its results in arg, overwriting what an earlier run left. Unless
 * `any`, the volume must exist (-ENOENT). */
static int mp_txn(struct mp *m, mp_fn fn, void *arg, bool any)
{
	struct mp_conn *c;
	int r = 0;

	if (m->rdonly)
		return -EROFS;
	for (int attempt = 0; attempt < MP_TX_TRIES; attempt++) {
		uint64_t xid = 0;

		r = mp_get(m, &c);
		if (r < 0)
			return r;
		r = mp_begin(m, c, &xid);
		if (r == 0 && !any)
			r = mp_ready(m, c);
		if (r == 0)
			r = fn(m, c, arg);
		if (r >= 0 && !c->lost && !c->retry) {
			PGresult *res = PQexec(c->pg, "COMMIT");

			if (PQresultStatus(res) == PGRES_COMMAND_OK &&
			    !strcmp(PQcmdStatus(res), "COMMIT")) {
				PQclear(res);
				mp_put(m, c);
				return r;
			}
			int e = mp_fail(m, c, res, "commit");

			PQclear(res);
			if (c->lost) {
				int done = mp_resolve(m, c, xid);

				mp_put(m, c);
				if (done != 0)
					return done == 1 ? r : done;
				continue; /* aborted: run it again */
			}
			if (!c->retry) {
				mp_rollback(m, c);
				mp_put(m, c);
				return e;
			}
		}
		mp_rollback(m, c);
		bool again = c->lost || c->retry;

		mp_put(m, c);
		if (!again)
			return r;
		mp_backoff(attempt);
	}
	log_err("metadata database %s: a transaction failed %d times in a row (deadlocks or a "
		"connection that keeps breaking)",
		m->where, MP_TX_TRIES);
	return r < 0 ? r : -EIO;
}

static int mp_tx(struct mp *m, mp_fn fn, void *arg)
{
	return mp_txn(m, fn, arg, false);
}

/* Run fn outside an explicit transaction: reads, and single-statement writes that are
 * idempotent (each statement is its own transaction). Runs again after a lost connection. */
static int mp_run(struct mp *m, mp_fn fn, void *arg)
{
	struct mp_conn *c;
	int r = 0;

	for (int attempt = 0; attempt < MP_TX_TRIES; attempt++) {
		r = mp_get(m, &c);
		if (r < 0)
			return r;
		r = mp_ready(m, c);
		if (r == 0)
			r = fn(m, c, arg);
		bool again = r < 0 && (c->lost || c->retry);

		mp_put(m, c);
		if (!again)
			return r;
		mp_backoff(attempt);
	}
	return r;
}

/* Run fn (a transaction, or a statement on its own when !tx) and on success copy len bytes of
 * its result from res to ret (ret may be NULL). */
static int mp_call(struct mp *m, bool tx, mp_fn fn, void *arg, void *ret, const void *res,
		   size_t len)
{
	int r = tx ? mp_tx(m, fn, arg) : mp_run(m, fn, arg);

	if (r == 0 && ret)
		memcpy(ret, res, len);
	return r;
}

/* A write that is one idempotent statement, run outside a transaction (PG-5: it runs again
 * after a lost connection). */
static int mp_run_write(struct mp *m, mp_fn fn, void *arg)
{
	return m->rdonly ? -EROFS : mp_run(m, fn, arg);
}

/* One statement of int8 parameters v[0..n-1]. With `none` (an -errno) it must change a row:
 * 0, or `none` if it changes none; with none = 0 it answers how many rows it changed. */
struct mp_change {
	enum mp_sid id;
	int n;
	int64_t v[4];
	int none;
};

static int mp_change_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	const struct mp_change *x = arg;
	struct mp_args a = {0};
	int r;

	for (int i = 0; i < x->n; i++)
		arg_i64(&a, x->v[i]);
	r = mp_count(m, c, x->id, &a);
	if (r < 0 || !x->none)
		return r;
	return r == 0 ? x->none : 0;
}

/* -ENOENT until the schema exists (another process may format after we opened). */
static int mp_ready_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	int64_t n = 0;
	int r;

	if (atomic_load(&m->formatted))
		return 0;
	r = mp_q_i64(m, c, MPQ_READY, NULL, &n);
	if (r < 0)
		return r;
	if (n != 1)
		return -ENOENT;
	atomic_store(&m->formatted, true);
	return 0;
}

static int mp_ready(struct mp *m, struct mp_conn *c)
{
	return mp_ready_fn(m, c, NULL);
}

/* ---- inode and entry primitives (inside a transaction) --------------------------------- */

static void mp_attr_row(struct mp_rd *rd, void *out)
{
	mp_row_attr(rd, 0, out);
}

static int mp_attr_query(struct mp *m, struct mp_conn *c, enum mp_sid id, struct mp_args *a,
			 struct meta_attr *ret)
{
	return mp_one(m, c, id, a, mp_attr_row, ret);
}

static int mp_inode(struct mp *m, struct mp_conn *c, uint64_t ino, bool lock, struct meta_attr *ret)
{
	struct mp_args a = {0};

	if (ino == 0 || ino > INT64_MAX)
		return -ENOENT;
	arg_i64(&a, (int64_t)ino);
	return mp_attr_query(m, c, lock ? MPQ_INODE_LOCK : MPQ_INODE_GET, &a, ret);
}

/* Lock directory ino (PG-1): -ENOENT, -ENOTDIR; with live, also -ENOENT for a directory
 * check() orphaned (nlink 0), as Linux refuses to create in a removed directory. */
static int mp_dir_lock(struct mp *m, struct mp_conn *c, uint64_t ino, bool live,
		       struct meta_attr *ret)
{
	struct meta_attr a;
	int r = mp_inode(m, c, ino, true, &a);

	if (r < 0)
		return r;
	if (!S_ISDIR(a.mode))
		return -ENOTDIR;
	if (live && a.nlink == 0)
		return -ENOENT;
	if (ret)
		*ret = a;
	return 0;
}

/* The entry `name` in `parent`: its id and inode. -ENOENT none; -EIO names a missing inode. */
static int mp_dent(struct mp *m, struct mp_conn *c, uint64_t parent, const char *name,
		   int64_t *ret_id, struct meta_attr *ret)
{
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int r;

	arg_i64(&a, (int64_t)parent);
	arg_str(&a, name);
	r = mp_q(m, c, MPQ_DENT_GET, &a, &res);
	if (r < 0)
		return r;
	rd.res = res;
	if (PQntuples(res) < 1) {
		r = -ENOENT;
	} else if (PQgetisnull(res, 0, 2)) {
		log_debug("meta postgres %s: entry '%s' in directory %" PRIu64
			  " names missing inode %" PRId64 "; run 'braidfs fsck'",
			  m->where, name, parent, mp_i64(&rd, 1));
		r = -EIO;
	} else {
		int64_t id = mp_i64(&rd, 0);
		struct meta_attr at;

		mp_row_attr(&rd, 2, &at);
		if (rd.bad) {
			r = mp_bad_row(m, "entry");
		} else {
			if (ret_id)
				*ret_id = id;
			if (ret)
				*ret = at;
		}
	}
	PQclear(res);
	return r;
}

static int mp_run2(struct mp *m, struct mp_conn *c, enum mp_sid id, int64_t x, int64_t y)
{
	struct mp_args a = {0};

	arg_i64(&a, x);
	if (strlen(mp_stmt[id].types) > 1)
		arg_i64(&a, y);
	return mp_q(m, c, id, &a, NULL);
}

static int mp_dir_touch(struct mp *m, struct mp_conn *c, uint64_t ino, int dnlink, int64_t now)
{
	struct mp_args a = {0};

	arg_i64(&a, (int64_t)ino);
	arg_i64(&a, dnlink);
	arg_i64(&a, now);
	return mp_q(m, c, MPQ_DIR_TOUCH, &a, NULL);
}

/* 1 if directory ino has an entry, 0 if empty. */
static int mp_has_children(struct mp *m, struct mp_conn *c, uint64_t ino)
{
	struct mp_args a = {0};
	int64_t n = 0;
	int r;

	arg_i64(&a, (int64_t)ino);
	r = mp_q_i64(m, c, MPQ_DENT_ANY_CHILD, &a, &n);
	return r < 0 ? r : n > 0;
}

/* -EINVAL if directory `dir` is `from` or one of its ancestors (PG-3 makes the walk exact). */
static int mp_check_not_ancestor(struct mp *m, struct mp_conn *c, uint64_t dir, uint64_t from)
{
	struct mp_args a = {0};
	int64_t top, depth, v[2];
	int r;

	if (from == dir)
		return -EINVAL;
	arg_i64(&a, (int64_t)from);
	arg_i64(&a, (int64_t)dir);
	arg_i64(&a, MP_DEPTH_MAX);
	r = mp_one(m, c, MPQ_ANCESTOR, &a, mp_pair_row, v);
	if (r < 0)
		return r;
	top = v[0];
	depth = v[1];
	if ((uint64_t)top == dir)
		return -EINVAL;
	if (top == META_ROOT_INO)
		return 0;
	log_debug("meta postgres %s: %s above directory %" PRIu64 "; run 'braidfs fsck'", m->where,
		  depth >= MP_DEPTH_MAX ? "a directory loop" : "an unreachable directory", from);
	return -EIO;
}

/* ---- quota accounting (META-9), inside a transaction ------------------------------------
 * PG-6: a quota row is locked last (after every inode row the operation locks), and one
 * operation charges one root only (link and rename refuse to cross roots), so quota rows add
 * no lock cycle. Making or removing a root locks the inodes table (EXCLUSIVE: readers go on)
 * for its transaction, so that no create slips past the tagging walk. */

static void mp_quota_row(struct mp_rd *rd, void *out)
{
	struct meta_quota *q = out;

	q->bytes_limit = (uint64_t)mp_i64(rd, 0);
	q->inodes_limit = (uint64_t)mp_i64(rd, 1);
	q->bytes_used = (uint64_t)mp_i64(rd, 2);
	q->inodes_used = (uint64_t)mp_i64(rd, 3);
}

/* The quota row of root ino (locked with lock); -ENODATA if it has none. */
static int mp_quota_get_row(struct mp *m, struct mp_conn *c, uint64_t ino, bool lock,
			    struct meta_quota *ret)
{
	struct mp_args a = {0};
	int r;

	arg_i64(&a, (int64_t)ino);
	r = mp_one(m, c, lock ? MPQ_QUOTA_LOCK : MPQ_QUOTA_GET, &a, mp_quota_row, ret);
	if (r == -ENOENT)
		return -ENODATA;
	ret->ino = ino;
	return r;
}

/* Charge root with dbytes / dinodes; with `check`, growth past a limit is -EDQUOT. */
static int mp_quota_charge(struct mp *m, struct mp_conn *c, uint64_t root, int64_t dbytes,
			   int64_t dinodes, bool check)
{
	struct mp_args a = {0};
	struct meta_quota q;
	int r;

	if (root == 0 || (dbytes == 0 && dinodes == 0))
		return 0;
	if (check) {
		r = mp_quota_get_row(m, c, root, true, &q);
		if (r == -ENODATA)
			return 0; /* a tag without a row: check() reports it */
		if (r < 0)
			return r;
		r = meta_quota_fits(&q, dbytes, dinodes);
		if (r < 0)
			return r;
	}
	arg_i64(&a, (int64_t)root);
	arg_i64(&a, dbytes);
	arg_i64(&a, dinodes);
	return mp_q(m, c, MPQ_QUOTA_ADD, &a, NULL);
}

/* Delete an inode row and its xattrs; uncharge its quota root (an empty root goes). */
static int mp_inode_delete(struct mp *m, struct mp_conn *c, const struct meta_attr *a)
{
	int r = 0;

	if (a->qroot == a->ino)
		r = mp_run2(m, c, MPQ_QUOTA_DEL, (int64_t)a->ino, 0);
	else if (a->qroot)
		r = mp_quota_charge(m, c, a->qroot, -(int64_t)meta_charged(a), -1, false);
	if (r == 0)
		r = mp_run2(m, c, MPQ_INODE_DELETE, (int64_t)a->ino, 0);
	return r;
}

/* Every mutable column of a (ino, generation and qroot never change here). */
/* mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, btime: as INODE_PUT and MKNOD take
 * them. */
static void arg_attr(struct mp_args *q, const struct meta_attr *a)
{
	arg_i64(q, a->mode);
	arg_i64(q, a->nlink);
	arg_i64(q, a->uid);
	arg_i64(q, a->gid);
	arg_i64(q, (int64_t)a->rdev);
	arg_i64(q, (int64_t)a->size);
	arg_i64(q, a->atime_ns);
	arg_i64(q, a->mtime_ns);
	arg_i64(q, a->ctime_ns);
	arg_i64(q, a->btime_ns);
}

static int mp_inode_put(struct mp *m, struct mp_conn *c, const struct meta_attr *a)
{
	struct mp_args q = {0};

	arg_i64(&q, (int64_t)a->ino);
	arg_attr(&q, a);
	arg_i64(&q, a->flags);
	arg_i64(&q, (int64_t)a->qres);
	return mp_q(m, c, MPQ_INODE_PUT, &q, NULL);
}

/* ---- open / close ---------------------------------------------------------------------- */

static void mp_close(struct meta *mm)
{
	struct mp *m;

	if (!mm)
		return;
	m = mp_of(mm);
	while (m->free) {
		struct mp_conn *c = m->free;

		m->free = c->next;
		mp_conn_free(c);
	}
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* Is the database ours, empty, or someone else's? Reads only. */
static int mp_validate(struct mp *m, struct mp_conn *c, int flags, char *err, size_t errlen)
{
	PGresult *res;
	char schema[256] = "", app[64] = "", msg[512];
	int64_t ntab = 0, ours = 0, ver = 0, nvol = 0, nroot = 0;
	int r = 0;

	res = PQexec(c->pg,
		     "SELECT coalesce(current_schema(), ''), (SELECT count(*) FROM"
		     " pg_catalog.pg_class k JOIN pg_catalog.pg_namespace n ON n.oid ="
		     " k.relnamespace WHERE n.nspname = current_schema() AND k.relkind IN"
		     " ('r', 'p', 'v', 'm', 'f')), (SELECT count(*) FROM pg_catalog.pg_class k"
		     " JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace WHERE n.nspname ="
		     " current_schema() AND k.relname = 'braidfs_schema')");
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		mp_oneline(PQresultErrorMessage(res), msg, sizeof(msg));
		set_err(err, errlen, "cannot read the schema of %s: %s", m->where, msg);
		PQclear(res);
		return -EIO;
	}
	snprintf(schema, sizeof(schema), "%s", PQgetvalue(res, 0, 0));
	ntab = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	ours = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	PQclear(res);
	if (!schema[0]) {
		set_err(err, errlen,
			"no metadata database at %s (no schema of the search_path exists; "
			"create it, then run 'braidfs format')",
			m->where);
		return -ENOENT;
	}
	if (!ours) {
		if (ntab == 0) {
			if (flags & META_O_CREATE)
				return 0; /* empty: format() fills it */
			set_err(err, errlen,
				"no metadata database at %s (schema %s is empty; run 'braidfs "
				"format' first)",
				m->where, schema);
			return -ENOENT;
		}
		set_err(err, errlen,
			"%s is not a braidfs metadata database (schema %s holds %" PRId64
			" other table(s))",
			m->where, schema, ntab);
		return -EINVAL;
	}
	res = PQexec(c->pg, "SELECT application, version::text, (SELECT count(*) FROM volume),"
			    " (SELECT count(*) FROM inodes WHERE ino = 1 AND " MP_IS_DIR(
				"mode") ") FROM braidfs_schema WHERE id = 1");
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		mp_oneline(PQresultErrorMessage(res), msg, sizeof(msg));
		set_err(err, errlen, "%s is corrupted: %s", m->where, msg);
		PQclear(res);
		return -EIO;
	}
	if (PQntuples(res) == 1) {
		snprintf(app, sizeof(app), "%s", PQgetvalue(res, 0, 0));
		ver = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
		nvol = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
		nroot = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	}
	PQclear(res);
	if (strcmp(app, MP_APPLICATION) != 0) {
		set_err(err, errlen,
			"%s is not a braidfs metadata database (braidfs_schema names "
			"application '%s')",
			m->where, app);
		return -EINVAL;
	}
	if (ver > MP_SCHEMA_VERSION) {
		set_err(err, errlen,
			"%s has metadata schema version %" PRId64
			", newer than this braidfs (%d): upgrade braidfs",
			m->where, ver, MP_SCHEMA_VERSION);
		return -EINVAL;
	}
	if (ver >= 1 && ver < MP_SCHEMA_VERSION && (flags & META_O_RDONLY)) {
		set_err(err, errlen,
			"%s has metadata schema version %" PRId64
			" and needs an upgrade: open it read-write once (braidfs mount or braidfs "
			"fsck)",
			m->where, ver);
		return -EINVAL;
	}
	m->schema = ver;
	if (ver < 1 || nvol != 1 || nroot != 1) {
		set_err(err, errlen, "%s is corrupted: %s", m->where,
			ver < 1	    ? "no schema version"
			: nvol != 1 ? "no volume row"
				    : "no root directory");
		return -EIO;
	}
	atomic_store(&m->formatted, true);
	return r;
}

/* Bring an older schema up to MP_SCHEMA_VERSION in one transaction; the version is read
 * again under the row lock of braidfs_schema, so two processes opening at once migrate once.
 *   1 -> 2: chain roles (META-13, 14), the dirty and repairs tables (META-15, 17).
 *   2 -> 3: file locks (META-18).
 *   3 -> 4: the async role (META-19, role 3): nothing to rewrite. */
static int mp_migrate_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	PGresult *res = PQexec(c->pg, "SELECT version::text FROM braidfs_schema WHERE id = 1"
				      " FOR UPDATE");
	int64_t ver = 0;
	int r = 0;

	(void)arg;
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
		r = mp_fail(m, c, res, "schema version");
	else
		ver = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	if (r == 0 && ver < 2)
		r = mp_exec(m, c, MP_MIGRATE_1_TO_2);
	if (r == 0 && ver < 3)
		r = mp_exec(m, c, MP_MIGRATE_2_TO_3);
	if (r == 0 && ver < 4)
		r = mp_exec(m, c, MP_MIGRATE_3_TO_4);
	return r;
}

static int mp_migrate(struct mp *m, char *err, size_t errlen)
{
	int r;

	if (m->rdonly || m->schema < 1 || m->schema >= MP_SCHEMA_VERSION)
		return 0;
	r = mp_tx(m, mp_migrate_tx, NULL);
	if (r < 0) {
		set_err(err, errlen,
			"%s: cannot upgrade the metadata schema from version %" PRId64 " to %d: %s",
			m->where, m->schema, MP_SCHEMA_VERSION, strerror(-r));
		return r;
	}
	log_info("metadata %s: schema upgraded from version %" PRId64 " to %d", m->where, m->schema,
		 MP_SCHEMA_VERSION);
	m->schema = MP_SCHEMA_VERSION;
	return 0;
}

/* "postgres://user@host:port/db" without password and query, for every message. */
static void mp_where(const struct url *u, char *out, size_t len)
{
	char user[128];
	size_t n = strcspn(u->userinfo, ":");

	snprintf(user, sizeof(user), "%.*s", (int)n, u->userinfo);
	if (u->port)
		snprintf(out, len, "%s://%s%s%s:%d%s", u->scheme, user, user[0] ? "@" : "", u->host,
			 u->port, u->path);
	else
		snprintf(out, len, "%s://%s%s%s%s", u->scheme, user, user[0] ? "@" : "", u->host,
			 u->path);
}

static int mp_open(const char *url, int flags, struct meta **ret, char *err, size_t errlen)
{
	struct url u;
	struct mp_conn *c = NULL;
	struct mp *m;
	int r;

	r = meta_open_begin(url, flags, ret, &u, "postgres://user@host:port/dbname", err, errlen);
	if (r < 0)
		return r;
	if (strcmp(u.scheme, "postgres") != 0 && strcmp(u.scheme, "postgresql") != 0) {
		set_err(err, errlen,
			"not a postgres URL: '%s' (expected postgres://user@host:port/dbname)",
			url);
		return -EINVAL;
	}
	if (!u.has_authority) {
		set_err(err, errlen,
			"postgres URL '%s' lacks '//' (expected "
			"postgres://user@host:port/dbname)",
			url);
		return -EINVAL;
	}
	if (strlen(u.path) < 2 || strchr(u.path + 1, '/')) {
		set_err(err, errlen,
			"postgres URL '%s' names no database (expected "
			"postgres://user@host:port/dbname)",
			url);
		return -EINVAL;
	}
	if (strlen(url) >= URL_MAX) {
		set_err(err, errlen, "postgres URL longer than %d bytes", URL_MAX - 1);
		return -EINVAL;
	}

	m = calloc(1, sizeof(*m));
	if (!m) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	m->base.ops = &meta_pg_ops;
	m->rdonly = flags & META_O_RDONLY;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	snprintf(m->url, sizeof(m->url), "%s", url);
	mp_where(&u, m->where, sizeof(m->where));

	c = calloc(1, sizeof(*c));
	if (!c) {
		set_err(err, errlen, "out of memory");
		r = -ENOMEM;
		goto fail;
	}
	r = mp_connect(m, c, err, errlen);
	if (r == 0)
		r = mp_validate(m, c, flags, err, errlen);
	if (r < 0)
		goto fail;
	m->nconns = 1;
	c->next = NULL;
	m->free = c;
	c = NULL;
	r = mp_migrate(m, err, errlen);
	if (r < 0)
		goto fail;
	*ret = &m->base;
	return 0;

fail:
	mp_conn_free(c);
	mp_close(&m->base);
	return r;
}

/* ---- cluster tables -------------------------------------------------------------------- */

static int mp_target_insert(struct mp *m, struct mp_conn *c, uint32_t id,
			    const struct meta_target *t)
{
	struct mp_args a = {0};

	arg_i64(&a, id);
	arg_str(&a, t->url);
	arg_str(&a, t->uuid);
	arg_i64(&a, t->state);
	arg_str(&a, t->pool);
	arg_str(&a, t->node);
	arg_str(&a, t->media);
	return mp_q(m, c, MPQ_TARGET_INSERT, &a, NULL);
}

/* Replace every row of chain `chain` by the roles of c (META-13). META-7: every target is
 * known, neither drained nor removed, and named once; the targets' rows are share-locked so
 * that no target_update drains one meanwhile. An away target that was away in `old` (may be
 * NULL; its away_ns holds the raw `since`, ns since the epoch) keeps that time (META-14), a
 * newly away one gets now(). */
static int mp_chain_write(struct mp *m, struct mp_conn *c, uint32_t chain,
			  const struct meta_chain *cc, const struct meta_chain *old)
{
	uint32_t t[META_CHAIN_SLOTS];
	enum meta_role role[META_CHAIN_SLOTS];
	int64_t rv[META_CHAIN_SLOTS], since[META_CHAIN_SLOTS];
	unsigned n = meta_chain_rows(cc, old, t, role, since);
	struct mp_args a = {0}, b = {0};
	int64_t ok = 0;
	int r;

	for (unsigned i = 0; i < n; i++)
		rv[i] = role[i];
	arg_u32_array(&a, t, n);
	r = mp_q_i64(m, c, MPQ_CHAIN_TARGETS_OK, &a, &ok);
	if (r < 0)
		return r;
	if (ok != n) {
		log_debug("meta postgres %s: chain %u: a target is unknown, drained, removed or "
			  "named twice",
			  m->where, chain);
		return -EINVAL;
	}
	r = mp_run2(m, c, MPQ_CHAIN_CLEAR, chain, 0);
	if (r < 0)
		return r;
	arg_i64(&b, chain);
	arg_u32_array(&b, t, n);
	arg_array(&b, mp_get_i64, rv, n);
	arg_array(&b, mp_get_i64, since, n);
	return mp_q(m, c, MPQ_CHAIN_ADD_ROLES, &b, NULL);
}

struct mp_format {
	const struct meta_volume *vol;
	const struct meta_target *t;
	unsigned nt;
	const struct meta_chain *c;
	unsigned nc;
	uid_t uid;
	gid_t gid;
};

static int mp_format_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	const struct mp_format *f = arg;
	struct mp_args a = {0};
	PGresult *res;
	char uuid[37], sql[256];
	int64_t now = now_realtime_ns(), ino = 0;
	int r;

	/* Two formats at once: the second waits here, then finds the schema. */
	r = mp_exec(m, c,
		    "SELECT pg_advisory_xact_lock(hashtext('braidfs format ' ||"
		    " coalesce(current_schema(), '')))");
	if (r < 0)
		return r;
	res = PQexec(c->pg, "SELECT count(*) FROM pg_catalog.pg_class k JOIN"
			    " pg_catalog.pg_namespace n ON n.oid = k.relnamespace WHERE n.nspname ="
			    " current_schema() AND k.relname = 'braidfs_schema'");
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		r = mp_fail(m, c, res, "format probe");
		PQclear(res);
		return r;
	}
	r = strcmp(PQgetvalue(res, 0, 0), "0") ? -EEXIST : 0;
	PQclear(res);
	if (r < 0)
		return r;
	r = mp_exec(m, c, mp_schema_sql);
	if (r < 0)
		return r;
	snprintf(sql, sizeof(sql),
		 "INSERT INTO braidfs_schema (id, application, version) VALUES (1, '%s', %d)",
		 MP_APPLICATION, MP_SCHEMA_VERSION);
	r = mp_exec(m, c, sql);
	if (r < 0)
		return r;

	snprintf(uuid, sizeof(uuid), "%s", f->vol->uuid);
	if (!uuid[0] && uuid_generate_str(uuid) < 0)
		return -EIO;
	{
		const char *vals[7];
		char nums[5][24];
		int64_t v[5] = {f->vol->format_version ? f->vol->format_version : MP_SCHEMA_VERSION,
				f->vol->chunk_size, f->vol->replicas, f->vol->consistency,
				f->vol->created_ns ? f->vol->created_ns : now};

		vals[0] = f->vol->name;
		vals[1] = uuid;
		for (int i = 0; i < 5; i++) {
			snprintf(nums[i], sizeof(nums[i]), "%" PRId64, v[i]);
			vals[2 + i] = nums[i];
		}
		res =
		    PQexecParams(c->pg,
				 "INSERT INTO volume (id, name, uuid, format_version, chunk_size,"
				 " replicas, consistency, created_ns) VALUES (1, $1, $2, $3::int8,"
				 " $4::int8, $5::int8, $6::int8, $7::int8)",
				 7, NULL, vals, NULL, NULL, 0);
		r = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : mp_fail(m, c, res, "volume");
		PQclear(res);
		if (r < 0)
			return r;
	}
	for (unsigned i = 0; i < f->nt; i++) {
		r = mp_target_insert(m, c, f->t[i].id, &f->t[i]);
		if (r < 0)
			return r;
	}
	for (unsigned i = 0; i < f->nc; i++) {
		a.n = 0;
		arg_i64(&a, f->c[i].id);
		arg_i64(&a, (int64_t)f->c[i].epoch);
		r = mp_q(m, c, MPQ_CHAIN_INSERT, &a, NULL);
		if (r < 0)
			return r;
		struct meta_chain mem = f->c[i];

		mem.nsyncing = mem.naway = 0; /* format writes members and async only */
		r = mp_chain_write(m, c, f->c[i].id, &mem, NULL);
		if (r < 0)
			return r;
	}
	/* The identity is new, so the first inode is 1: the root (META-2). */
	a.n = 0;
	arg_i64(&a, S_IFDIR | 0755);
	arg_i64(&a, f->uid);
	arg_i64(&a, f->gid);
	arg_i64(&a, now);
	r = mp_q_i64(m, c, MPQ_ROOT_INSERT, &a, &ino);
	if (r < 0)
		return r;
	if (ino != META_ROOT_INO) {
		log_debug("meta postgres %s: root got inode %" PRId64, m->where, ino);
		return -EIO;
	}
	return 0;
}

static int mp_format(struct meta *mm, const struct meta_volume *vol, const struct meta_target *t,
		     unsigned ntargets, const struct meta_chain *c, unsigned nchains, uid_t uid,
		     gid_t gid)
{
	struct mp *m = mp_of(mm);
	struct mp_format f = {vol, t, ntargets, c, nchains, uid, gid};
	int r;

	r = meta_format_check(vol, t, ntargets, c, nchains);
	if (r < 0)
		return r;
	if (m->rdonly)
		return -EROFS;
	if (atomic_load(&m->formatted))
		return -EEXIST;
	r = mp_txn(m, mp_format_tx, &f, true);
	if (r == 0)
		atomic_store(&m->formatted, true);
	return r;
}

static void mp_volume_row(struct mp_rd *rd, void *out)
{
	struct meta_volume *v = out;

	memset(v, 0, sizeof(*v));
	mp_text(rd, 0, v->name, sizeof(v->name));
	mp_text(rd, 1, v->uuid, sizeof(v->uuid));
	v->format_version = (uint32_t)mp_i64(rd, 2);
	v->chunk_size = (uint32_t)mp_i64(rd, 3);
	v->replicas = (uint32_t)mp_i64(rd, 4);
	v->consistency = (enum meta_consistency)mp_i64(rd, 5);
	v->created_ns = mp_i64(rd, 6);
}

static int mp_volume_get_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	return mp_one(m, c, MPQ_VOLUME_GET, NULL, mp_volume_row, arg);
}

static int mp_volume_get(struct meta *mm, struct meta_volume *ret)
{
	struct meta_volume v;

	return mp_call(mp_of(mm), false, mp_volume_get_fn, &v, ret, &v, sizeof(v));
}

/* A list call (targets, nodes, clients): statement `id`, one row -> one element; fills up to
 * max elements and returns the count of all rows. */
struct mp_list {
	enum mp_sid id;
	void *ret;
	unsigned max;
	size_t elem;
	void (*row)(struct mp_rd *rd, void *out);
};

/* A list whose statement takes one int8 parameter. */
struct mp_list_by {
	struct mp_list l;
	int64_t key;
};

static int mp_list_q(struct mp *m, struct mp_conn *c, struct mp_list *l, const struct mp_args *a)
{
	struct mp_rd rd = {0};
	PGresult *res;
	int n, r = mp_q(m, c, l->id, a, &res);

	if (r < 0)
		return r;
	rd.res = res;
	n = PQntuples(res);
	for (int i = 0; i < n && (unsigned)i < l->max && l->ret; i++) {
		rd.row = i;
		l->row(&rd, (char *)l->ret + (size_t)i * l->elem);
	}
	PQclear(res);
	return rd.bad ? mp_bad_row(m, mp_stmt[l->id].sql) : n;
}

static int mp_list_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	return mp_list_q(m, c, arg, NULL);
}

static int mp_list_by_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_list_by *b = arg;
	struct mp_args a = {0};

	arg_i64(&a, b->key);
	return mp_list_q(m, c, &b->l, &a);
}

static void mp_target_row(struct mp_rd *rd, void *out)
{
	struct meta_target *t = out;

	memset(t, 0, sizeof(*t));
	t->id = (uint32_t)mp_i64(rd, 0);
	mp_text(rd, 1, t->url, sizeof(t->url));
	mp_text(rd, 2, t->uuid, sizeof(t->uuid));
	t->state = (enum meta_target_state)mp_i64(rd, 3);
	mp_text(rd, 4, t->pool, sizeof(t->pool));
	mp_text(rd, 5, t->node, sizeof(t->node));
	mp_text(rd, 6, t->media, sizeof(t->media));
}

static int mp_targets_list(struct meta *mm, struct meta_target *ret, unsigned max)
{
	struct mp_list l = {MPQ_TARGETS_LIST, ret, max, sizeof(*ret), mp_target_row};

	return mp_run(mp_of(mm), mp_list_fn, &l);
}

struct mp_target_op {
	uint32_t id;
	unsigned mask;
	const struct meta_target *in;
};

static int mp_target_update_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_target_op *o = arg;
	struct mp_args a = {0};
	int64_t state = 0, nchains = 0;
	int r;

	arg_i64(&a, o->id);
	r = mp_q_i64(m, c, MPQ_TARGET_LOCK, &a, &state);
	if (r < 0)
		return r;
	if (state == META_TARGET_REMOVED)
		return -EINVAL; /* META-7: final */
	if ((o->mask & META_TSET_STATE) &&
	    (o->in->state == META_TARGET_DRAINED || o->in->state == META_TARGET_REMOVED)) {
		/* the row lock holds off a chain change's share lock (mp_chain_write) */
		r = mp_q_i64(m, c, MPQ_TARGET_NCHAINS, &a, &nchains);
		if (r < 0)
			return r;
		if (nchains > 0)
			return -EBUSY; /* META-7 */
	}
	arg_i64(&a, o->mask);
	arg_i64(&a, o->in->state);
	arg_str(&a, o->in->pool);
	arg_str(&a, o->in->node);
	arg_str(&a, o->in->media);
	return mp_q(m, c, MPQ_TARGET_UPDATE, &a, NULL);
}

static int mp_target_update(struct meta *mm, uint32_t id, unsigned mask,
			    const struct meta_target *in)
{
	struct mp_target_op o = {id, mask, in};
	int r = meta_target_update_check(mask, in);

	return r < 0 ? r : mp_tx(mp_of(mm), mp_target_update_tx, &o);
}

static int mp_target_set_state(struct meta *mm, uint32_t id, enum meta_target_state state)
{
	struct meta_target in = {.state = state};

	return mp_target_update(mm, id, META_TSET_STATE, &in);
}

/* META-8: under the 'targets' lock, the URL must be free and the next id is max + 1. */
static int mp_target_add_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_target_op *o = arg;
	struct mp_args a = {0};
	int64_t users = 0, next, count, v[2];
	int r;

	arg_str(&a, "targets");
	r = mp_q(m, c, MPQ_LOCK, &a, NULL);
	if (r < 0)
		return r;
	a.n = 0;
	arg_str(&a, o->in->url);
	r = mp_q_i64(m, c, MPQ_TARGET_URL_USERS, &a, &users);
	if (r < 0)
		return r;
	if (users > 0)
		return -EEXIST;
	r = mp_one(m, c, MPQ_TARGET_NEXT_ID, NULL, mp_pair_row, v);
	if (r < 0)
		return r;
	next = v[0];
	count = v[1];
	if (count >= META_MAX_TARGETS || next > UINT32_MAX)
		return -ENOSPC;
	r = mp_target_insert(m, c, (uint32_t)next, o->in);
	if (r == 0)
		o->id = (uint32_t)next;
	return r;
}

static int mp_target_add(struct meta *mm, const struct meta_target *t, uint32_t *ret_id)
{
	struct mp_target_op o = {0, 0, t};

	if (!t || !meta_target_ok(t) || t->state == META_TARGET_REMOVED)
		return -EINVAL;
	return mp_call(mp_of(mm), true, mp_target_add_tx, &o, ret_id, &o.id, sizeof(o.id));
}

static int mp_chains_list_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_list *l = arg; /* only ret and max: rows group into chains */
	struct meta_chains_reader g = {.ret = l->ret, .max = l->max};
	int64_t v[META_CHAINS_NCOLS];
	struct mp_rd rd = {0};
	PGresult *res;
	int r = mp_q(m, c, MPQ_CHAINS_LIST, NULL, &res); /* one statement: one snapshot */

	if (r < 0)
		return r;
	rd.res = res;
	for (int i = 0; i < PQntuples(res); i++) {
		rd.row = i;
		mp_row_i64s(&rd, 0, v, META_CHAINS_NCOLS);
		meta_chains_row(&g, v);
	}
	PQclear(res);
	return rd.bad ? mp_bad_row(m, "chains") : g.n;
}

static int mp_chains_list(struct meta *mm, struct meta_chain *ret, unsigned max)
{
	struct mp_list l = {MPQ_CHAINS_LIST, ret, max, sizeof(*ret), NULL};

	return mp_run(mp_of(mm), mp_chains_list_fn, &l);
}

/* The current roles of chain `id`, its row locked (META-6: compare-and-set is one step for
 * every client); away_ns holds the raw `since` of each away target (mp_chain_write's old). */
static int mp_chain_read(struct mp *m, struct mp_conn *c, uint32_t id, struct meta_chain *ret)
{
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int64_t epoch = 0;
	int r;

	arg_i64(&a, id);
	r = mp_q_i64(m, c, MPQ_CHAIN_LOCK, &a, &epoch);
	if (r == 0)
		r = mp_q(m, c, MPQ_CHAIN_ROWS, &a, &res);
	if (r < 0)
		return r;
	memset(ret, 0, sizeof(*ret));
	ret->id = id;
	ret->epoch = (uint64_t)epoch;
	rd.res = res;
	for (int i = 0; i < PQntuples(res); i++) {
		rd.row = i;
		meta_chain_put(ret, (enum meta_role)mp_i64(&rd, 1), (uint32_t)mp_i64(&rd, 0),
			       mp_i64(&rd, 2));
	}
	PQclear(res);
	return rd.bad ? mp_bad_row(m, "chain members") : 0;
}

/* One epoch-conditional chain change (META-6): the roles meta_chain_change_apply() makes of
 * the current ones are written and get epoch + 1; a promotion's dirty and repairs rows go in
 * the same transaction (META-16). */
struct mp_chain_change {
	const struct meta_chain_change *u;
	uint64_t epoch; /* out */
};

static int mp_chain_change_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_chain_change *x = arg;
	const struct meta_chain_change *u = x->u;
	struct meta_chain cur, next;
	int r;

	r = mp_chain_read(m, c, u->id, &cur);
	if (r == 0)
		r = meta_chain_change_apply(u, &cur, &next);
	if (r == 0)
		r = mp_chain_write(m, c, u->id, &next, &cur);
	if (r == 0)
		r = mp_run2(m, c, MPQ_CHAIN_SET_EPOCH, u->id, (int64_t)cur.epoch + 1);
	if (r == 0 && u->op == META_CHAIN_PROMOTE) {
		r = mp_run2(m, c, MPQ_DIRTY_CLEAR, u->id, u->target);
		if (r == 0)
			r = mp_run2(m, c, MPQ_REPAIR_DEL, u->id, u->target);
	}
	if (r == 0)
		x->epoch = cur.epoch + 1;
	return r;
}

static int mp_chain_change(struct meta *mm, const struct meta_chain_change *u, uint64_t *ret_epoch)
{
	struct mp_chain_change x = {u, 0};
	int r = meta_chain_change_check(u);

	return r < 0 ? r
		     : mp_call(mp_of(mm), true, mp_chain_change_tx, &x, ret_epoch, &x.epoch,
			       sizeof(x.epoch));
}

static int mp_chain_update(struct meta *mm, uint32_t chain_id, uint64_t expect_epoch,
			   const uint32_t *members, uint32_t nmembers, uint64_t *ret_epoch)
{
	struct meta_chain_change u = {.op = META_CHAIN_UPDATE,
				      .id = chain_id,
				      .expect = expect_epoch,
				      .members = members,
				      .n = nmembers};

	return mp_chain_change(mm, &u, ret_epoch);
}

static int mp_chain_set(struct meta *mm, uint32_t chain_id, uint64_t expect_epoch,
			const struct meta_chain *in, uint64_t *ret_epoch)
{
	struct meta_chain_change u = {
	    .op = META_CHAIN_SET, .id = chain_id, .expect = expect_epoch, .in = in};

	return mp_chain_change(mm, &u, ret_epoch);
}

static int mp_chain_promote(struct meta *mm, uint32_t chain_id, uint64_t expect_epoch,
			    uint32_t target, uint64_t *ret_epoch)
{
	struct meta_chain_change u = {
	    .op = META_CHAIN_PROMOTE, .id = chain_id, .expect = expect_epoch, .target = target};

	return mp_chain_change(mm, &u, ret_epoch);
}

/* ---- dirty chunks (META-15) and repairs (META-17) -------------------------------------- */

struct mp_dirty {
	uint32_t chain, target;
	const struct meta_chunk_ref *refs;
	unsigned n;
	enum mp_sid id;			    /* DIRTY_ADD / DIRTY_DEL / DIRTY_CLEAR */
	const struct meta_chunk_ref *after; /* list */
	struct meta_chunk_ref *ret;
	unsigned max;
	int64_t count;
	char *ino_txt, *idx_txt; /* the batch's two int8[] literals */
};

static int64_t mp_get_ref_ino(const void *v, uint32_t i)
{
	return (int64_t)((const struct meta_chunk_ref *)v)[i].ino;
}

static int64_t mp_get_ref_idx(const void *v, uint32_t i)
{
	return (int64_t)((const struct meta_chunk_ref *)v)[i].idx;
}

static int mp_dirty_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_dirty *d = arg;
	struct mp_args a = {0};
	int64_t epoch = 0;
	int r;

	/* Ordered against chain_promote (which holds the row FOR UPDATE): a batch commits
	 * either before the promotion deletes the rows or after it. -EINVAL: no such chain. */
	arg_i64(&a, d->chain);
	r = mp_q_i64(m, c, MPQ_CHAIN_SHARE, &a, &epoch);
	if (r < 0)
		return r == -ENOENT ? -EINVAL : r;
	arg_i64(&a, d->target);
	if (d->id != MPQ_DIRTY_CLEAR) {
		arg_text(&a, d->ino_txt);
		arg_text(&a, d->idx_txt);
	}
	return mp_q(m, c, d->id, &a, NULL); /* an unknown target: the foreign key, -EINVAL */
}

static int mp_dirty_batch(struct meta *mm, enum mp_sid id, uint32_t chain, uint32_t target,
			  const struct meta_chunk_ref *refs, unsigned n)
{
	struct mp_dirty d = {.chain = chain, .target = target, .refs = refs, .n = n, .id = id};
	size_t cap = (size_t)n * 21 + 3;
	int r = meta_dirty_refs_check(refs, n);

	if (r < 0)
		return r;
	d.ino_txt = malloc(cap);
	d.idx_txt = malloc(cap);
	if (!d.ino_txt || !d.idx_txt)
		r = -ENOMEM;
	else if (!mp_array_text(d.ino_txt, cap, mp_get_ref_ino, refs, n) ||
		 !mp_array_text(d.idx_txt, cap, mp_get_ref_idx, refs, n))
		r = -EINVAL;
	else
		r = mp_tx(mp_of(mm), mp_dirty_tx, &d);
	free(d.ino_txt);
	free(d.idx_txt);
	return r;
}

static int mp_dirty_add(struct meta *mm, uint32_t chain, uint32_t target,
			const struct meta_chunk_ref *refs, unsigned n)
{
	return mp_dirty_batch(mm, MPQ_DIRTY_ADD, chain, target, refs, n);
}

static int mp_dirty_remove(struct meta *mm, uint32_t chain, uint32_t target,
			   const struct meta_chunk_ref *refs, unsigned n)
{
	return mp_dirty_batch(mm, MPQ_DIRTY_DEL, chain, target, refs, n);
}

static int mp_dirty_clear(struct meta *mm, uint32_t chain, uint32_t target)
{
	struct mp_dirty d = {.chain = chain, .target = target, .id = MPQ_DIRTY_CLEAR};

	return mp_tx(mp_of(mm), mp_dirty_tx, &d);
}

static int mp_dirty_list_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_dirty *d = arg;
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int n, r;

	arg_i64(&a, d->chain);
	arg_i64(&a, d->target);
	arg_i64(&a, d->after != NULL);
	arg_i64(&a, d->after ? (int64_t)d->after->ino : 0);
	arg_i64(&a, d->after ? (int64_t)d->after->idx : 0);
	arg_i64(&a, d->max);
	r = mp_q(m, c, MPQ_DIRTY_LIST, &a, &res);
	if (r < 0)
		return r;
	rd.res = res;
	n = PQntuples(res);
	for (int i = 0; i < n && (unsigned)i < d->max; i++) {
		rd.row = i;
		d->ret[i].ino = (uint64_t)mp_i64(&rd, 0);
		d->ret[i].idx = (uint64_t)mp_i64(&rd, 1);
	}
	PQclear(res);
	return rd.bad ? mp_bad_row(m, "dirty") : MIN(n, (int)d->max);
}

static int mp_dirty_list(struct meta *mm, uint32_t chain, uint32_t target,
			 const struct meta_chunk_ref *after, struct meta_chunk_ref *ret,
			 unsigned max)
{
	struct mp_dirty d = {
	    .chain = chain, .target = target, .after = after, .ret = ret, .max = max};

	if ((!ret && max) || max > INT32_MAX ||
	    (after && (after->ino > INT64_MAX || after->idx > INT64_MAX)))
		return -EINVAL;
	return mp_run(mp_of(mm), mp_dirty_list_fn, &d);
}

static int mp_dirty_count_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_dirty *d = arg;
	struct mp_args a = {0};

	arg_i64(&a, d->chain);
	arg_i64(&a, d->target);
	return mp_q_i64(m, c, MPQ_DIRTY_COUNT, &a, &d->count);
}

static int mp_dirty_count(struct meta *mm, uint32_t chain, uint32_t target, uint64_t *ret)
{
	struct mp_dirty d = {.chain = chain, .target = target};
	int r = mp_run(mp_of(mm), mp_dirty_count_fn, &d);

	if (r == 0 && ret)
		*ret = (uint64_t)d.count;
	return r;
}

static int mp_repair_set_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	const struct meta_repair *in = arg;
	struct mp_args a = {0};

	arg_i64(&a, in->chain);
	arg_i64(&a, in->target);
	arg_i64(&a, in->kind);
	arg_i64(&a, (int64_t)in->chunks_total);
	arg_i64(&a, (int64_t)in->chunks_done);
	arg_i64(&a, (int64_t)in->bytes_done);
	arg_i64(&a, (int64_t)in->rate);
	return mp_q(m, c, MPQ_REPAIR_PUT, &a, NULL); /* unknown chain/target: FK, -EINVAL */
}

static int mp_repair_set(struct meta *mm, const struct meta_repair *in)
{
	int r = meta_repair_check(in);

	return r < 0 ? r : mp_run_write(mp_of(mm), mp_repair_set_fn, (void *)in); /* an upsert */
}

static int mp_repair_delete(struct meta *mm, uint32_t chain, uint32_t target)
{
	struct mp_change x = {MPQ_REPAIR_DEL, 2, {chain, target}, -ENOENT};

	/* a transaction: run again after a lost connection, it would find no row */
	return mp_tx(mp_of(mm), mp_change_fn, &x);
}

static void mp_repair_row(struct mp_rd *rd, void *out)
{
	int64_t v[META_REPAIR_NCOLS];

	mp_row_i64s(rd, 0, v, META_REPAIR_NCOLS);
	meta_repair_from_cols(out, v);
}

static int mp_repairs_list(struct meta *mm, struct meta_repair *ret, unsigned max)
{
	struct mp_list l = {MPQ_REPAIRS_LIST, ret, max, sizeof(*ret), mp_repair_row};

	return mp_run(mp_of(mm), mp_list_fn, &l);
}

/* ---- namespace: reads ------------------------------------------------------------------ */

struct mp_lookup {
	uint64_t parent;
	const char *name;
	struct meta_attr attr;
};

static int mp_lookup_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_lookup *l = arg;
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int r;

	if (l->parent == 0 || l->parent > INT64_MAX)
		return -ENOENT;
	arg_i64(&a, (int64_t)l->parent);
	arg_str(&a, l->name);
	/* One statement tells every case apart: no parent, not a directory, no entry, entry
	 * naming a missing inode, found. */
	r = mp_q(m, c, MPQ_LOOKUP, &a, &res);
	if (r < 0)
		return r;
	rd.res = res;
	if (PQntuples(res) < 1) {
		r = -ENOENT;
	} else if (mp_i64(&rd, 1) == 0) {
		r = S_ISDIR((mode_t)mp_i64(&rd, 0)) ? -ENOENT : -ENOTDIR;
	} else if (PQgetisnull(res, 0, 3)) {
		log_debug("meta postgres %s: entry '%s' in directory %" PRIu64
			  " names missing inode %" PRId64 "; run 'braidfs fsck'",
			  m->where, l->name, l->parent, mp_i64(&rd, 2));
		r = -EIO;
	} else {
		mp_row_attr(&rd, 3, &l->attr);
	}
	if (r == 0 && rd.bad)
		r = mp_bad_row(m, "lookup");
	PQclear(res);
	return r;
}

static int mp_lookup(struct meta *mm, uint64_t parent, const char *name, struct meta_attr *ret)
{
	struct mp_lookup l = {parent, name, {0}};
	int r = meta_name_check(name);

	if (r < 0)
		return r;
	return mp_call(mp_of(mm), false, mp_lookup_fn, &l, ret, &l.attr, sizeof(l.attr));
}

struct mp_ino {
	uint64_t ino;
	struct meta_attr attr;
};

static int mp_getattr_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_ino *g = arg;
	return mp_inode(m, c, g->ino, false, &g->attr);
}

static int mp_getattr(struct meta *mm, uint64_t ino, struct meta_attr *ret)
{
	struct mp_ino g = {ino, {0}};

	return mp_call(mp_of(mm), false, mp_getattr_fn, &g, ret, &g.attr, sizeof(g.attr));
}

struct mp_buf {
	uint64_t ino;
	const char *name;
	char *buf;
	size_t size;
	const void *value;
	int flags;
};

static int mp_readlink_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_buf *b = arg;
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int r;

	arg_i64(&a, (int64_t)b->ino);
	r = mp_q(m, c, MPQ_INODE_LINK, &a, &res);
	if (r < 0)
		return r;
	rd.res = res;
	if (PQntuples(res) < 1) {
		r = -ENOENT;
	} else if (!S_ISLNK((mode_t)mp_i64(&rd, 0)) || PQgetisnull(res, 0, 1)) {
		r = rd.bad ? mp_bad_row(m, "readlink") : -EINVAL;
	} else {
		size_t n;
		const char *p = mp_bytes(&rd, 1, &n);

		if (n > META_SYMLINK_MAX) {
			r = mp_bad_row(m, "readlink");
		} else if (n + 1 > b->size || !b->buf) {
			r = -ERANGE;
		} else {
			memcpy(b->buf, p, n);
			b->buf[n] = '\0';
			r = (int)n;
		}
	}
	PQclear(res);
	return r;
}

static int mp_readlink(struct meta *mm, uint64_t ino, char *buf, size_t size)
{
	struct mp_buf b = {.ino = ino, .buf = buf, .size = size};

	if (ino == 0 || ino > INT64_MAX)
		return -ENOENT;
	return mp_run(mp_of(mm), mp_readlink_fn, &b);
}

/* One batch of a paged query (readdir, orphans, inodes): the result is handed back so that
 * the callbacks run with no connection held, and a batch lost with its connection is simply
 * fetched again (no callback has seen it). */
struct mp_page {
	enum mp_sid id;
	uint64_t dir; /* readdir: the directory, checked on the first batch */
	bool first;
	int64_t after;
	PGresult *res; /* out */
};

static int mp_page_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_page *p = arg;
	struct mp_args a = {0};
	int r;

	if (p->first && (p->id == MPQ_READDIR || p->id == MPQ_READDIRPLUS)) {
		struct meta_attr d;

		r = mp_inode(m, c, p->dir, false, &d);
		if (r < 0)
			return r;
		if (!S_ISDIR(d.mode))
			return -ENOTDIR;
	}
	if (p->id == MPQ_READDIR || p->id == MPQ_READDIRPLUS)
		arg_i64(&a, (int64_t)p->dir);
	arg_i64(&a, p->after);
	arg_i64(&a, MP_BATCH);
	return mp_q(m, c, p->id, &a, &p->res);
}

static int mp_readdir_any(struct mp *m, uint64_t dir, uint64_t off, meta_dirent_cb cb,
			  meta_direntplus_cb pcb, void *ctx)
{
	struct mp_page p = {pcb ? MPQ_READDIRPLUS : MPQ_READDIR, dir, true, 0, NULL};
	char name[META_NAME_MAX + 1];

	if (off > (uint64_t)INT64_MAX)
		return 0; /* beyond every id the identity can hand out */
	p.after = off > 2 ? (int64_t)(off - 2) : 0;
	for (;;) {
		struct mp_rd rd = {0};
		int n, stop = 0, r = mp_run(m, mp_page_fn, &p);

		if (r < 0)
			return r;
		p.first = false;
		rd.res = p.res;
		n = PQntuples(p.res);
		for (int i = 0; i < n && !stop; i++) {
			int64_t id;

			rd.row = i;
			id = mp_i64(&rd, 0);
			p.after = id;
			mp_col_name(&rd, 1, name);
			if (pcb) {
				struct meta_attr a;

				mp_row_attr(&rd, 2, &a);
				if (rd.bad)
					break;
				if (a.ino == 0)
					continue; /* names a missing inode: hidden until check() */
				stop = pcb(ctx, name, &a, (uint64_t)id + 2);
			} else {
				uint64_t ino = (uint64_t)mp_i64(&rd, 2);
				int64_t mode = mp_i64(&rd, 3);

				if (rd.bad)
					break;
				if (mode < 0)
					continue;
				stop = cb(ctx, name, ino, (uint32_t)mode, (uint64_t)id + 2);
			}
		}
		PQclear(p.res);
		p.res = NULL;
		if (rd.bad)
			return mp_bad_row(m, "readdir");
		if (stop || n < MP_BATCH)
			return 0;
	}
}

static int mp_readdir(struct meta *mm, uint64_t dir, uint64_t off, meta_dirent_cb cb, void *ctx)
{
	if (!cb)
		return -EINVAL;
	return mp_readdir_any(mp_of(mm), dir, off, cb, NULL, ctx);
}

static int mp_readdirplus(struct meta *mm, uint64_t dir, uint64_t off, meta_direntplus_cb cb,
			  void *ctx)
{
	if (!cb)
		return -EINVAL;
	return mp_readdir_any(mp_of(mm), dir, off, NULL, cb, ctx);
}

/* Page through orphans or every inode, in ino order (see mp_page). */
static int mp_scan(struct mp *m, enum mp_sid id, meta_inode_cb cb, void *ctx)
{
	struct mp_page p = {id, 0, true, 0, NULL};

	for (;;) {
		struct mp_rd rd = {0};
		int n, stop = 0, r = mp_run(m, mp_page_fn, &p);

		if (r < 0)
			return r;
		rd.res = p.res;
		n = PQntuples(p.res);
		for (int i = 0; i < n && !stop && !rd.bad; i++) {
			struct meta_attr a;

			rd.row = i;
			mp_row_attr(&rd, 0, &a);
			p.after = (int64_t)a.ino;
			if (!rd.bad)
				stop = cb(ctx, &a);
		}
		PQclear(p.res);
		p.res = NULL;
		if (rd.bad)
			return mp_bad_row(m, "inode scan");
		if (stop || n < MP_BATCH)
			return 0;
	}
}

static int mp_orphans(struct meta *mm, meta_inode_cb cb, void *ctx)
{
	if (!cb)
		return -EINVAL;
	return mp_scan(mp_of(mm), MPQ_ORPHANS, cb, ctx);
}

static int mp_inodes(struct meta *mm, meta_inode_cb cb, void *ctx)
{
	if (!cb)
		return -EINVAL;
	return mp_scan(mp_of(mm), MPQ_INODES, cb, ctx);
}

/* ---- namespace: writes ----------------------------------------------------------------- */

#define MP_SETATTR_ALL                                                                             \
	(META_SET_MODE | META_SET_UID | META_SET_GID | META_SET_SIZE | META_SET_ATIME |            \
	 META_SET_MTIME | META_SET_CTIME | META_SET_FLAGS)

struct mp_setattr {
	uint64_t ino;
	unsigned mask;
	const struct meta_attr *in;
	struct meta_attr attr; /* out */
};

static int mp_setattr_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_setattr *s = arg;
	const struct meta_attr *in = s->in;
	struct meta_attr a, old;
	int r = mp_inode(m, c, s->ino, true, &a);

	if (r < 0)
		return r;
	old = a;
	r = meta_setattr_apply(&a, s->mask, in);
	if (r < 0)
		return r;
	if (a.qroot && a.qroot != a.ino) {
		/* The data path reserved before writing: account, do not refuse (a refusal here
		 * would lose a size). */
		r = mp_quota_charge(m, c, a.qroot,
				    (int64_t)meta_charged(&a) - (int64_t)meta_charged(&old), 0,
				    false);
		if (r < 0)
			return r;
	}
	r = mp_inode_put(m, c, &a);
	if (r == 0)
		s->attr = a;
	return r;
}

static int mp_setattr(struct meta *mm, uint64_t ino, unsigned mask, const struct meta_attr *in,
		      struct meta_attr *ret)
{
	struct mp *m = mp_of(mm);
	struct mp_setattr s = {ino, mask, in, {0}};

	if ((mask & ~MP_SETATTR_ALL) || (mask && !in))
		return -EINVAL;
	if ((mask & META_SET_SIZE) && in->size > INT64_MAX)
		return -EFBIG;
	if (m->rdonly)
		return -EROFS;
	return mp_call(m, true, mp_setattr_tx, &s, ret, &s.attr, sizeof(s.attr));
}

struct mp_mknod {
	uint64_t parent;
	const char *name;
	const struct meta_attr *in;
	const char *link;
	struct meta_attr attr; /* out */
};

static int mp_mknod_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_mknod *k = arg;
	const struct meta_attr *in = k->in;
	struct meta_attr *a = &k->attr;
	struct mp_args q = {0};
	struct mp_rd rd = {0};
	struct meta_attr p;
	PGresult *res;
	int64_t made;
	int r = mp_dir_lock(m, c, k->parent, true, &p); /* PG-1 */
	if (r < 0)
		return r;
	/* META-9: the parent's quota root accounts the new inode */
	meta_mknod_attr(in, k->link, &p, a);

	arg_i64(&q, (int64_t)k->parent);
	arg_str(&q, k->name);
	arg_attr(&q, a);
	arg_i64(&q, in->ctime_ns);
	if (k->link)
		arg_str(&q, k->link);
	else
		arg_null(&q);
	arg_i64(&q, S_ISDIR(a->mode) ? 1 : 0);
	arg_i64(&q, (int64_t)a->qroot);
	r = mp_q(m, c, MPQ_MKNOD, &q, &res);
	if (r < 0)
		return r;
	rd.res = res;
	a->ino = (uint64_t)mp_i64(&rd, 0);
	made = mp_i64(&rd, 1);
	PQclear(res);
	if (rd.bad)
		return mp_bad_row(m, "mknod");
	if (made == 1)
		return mp_quota_charge(m, c, a->qroot, 0, 1, true); /* -EDQUOT rolls it back */
	/* The name exists (the transaction rolls back the new inode): -EEXIST, or -EIO when
	 * that entry is a broken one. */
	r = mp_dent(m, c, k->parent, k->name, NULL, NULL);
	return r == 0 ? -EEXIST : r == -ENOENT ? -EIO : r;
}

static int mp_mknod(struct meta *mm, uint64_t parent, const char *name, const struct meta_attr *in,
		    const char *link, struct meta_attr *ret)
{
	struct mp_mknod k = {parent, name, in, link, {0}};
	int r;

	r = meta_mknod_check(name, in, link);
	if (r < 0)
		return r;
	return mp_call(mp_of(mm), true, mp_mknod_tx, &k, ret, &k.attr, sizeof(k.attr));
}

struct mp_nsop {
	uint64_t parent, ino;
	const char *name;
	int64_t now;
	struct meta_attr attr; /* out */
};

static int mp_link_tx(struct mp *m, struct mp_conn *c, void *arg);

/* link, unlink, rmdir: check the name, run tx, hand out the inode after the change. */
static int mp_nsop_run(struct meta *mm, mp_fn tx, uint64_t parent, uint64_t ino, const char *name,
		       int64_t now, struct meta_attr *ret)
{
	struct mp_nsop o = {parent, ino, name, now, {0}};
	int r = meta_name_check(name);

	if (r < 0)
		return r;
	if (tx == mp_link_tx && meta_name_is_dot(name))
		return -EEXIST;
	return mp_call(mp_of(mm), true, tx, &o, ret, &o.attr, sizeof(o.attr));
}

static int mp_link_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_nsop *o = arg;
	struct mp_args q = {0};
	struct meta_attr a, np;
	int r;

	/* sqlite's order of checks: the inode first, then the directory; locks: the directory
	 * first (PG-1), then the inode. */
	r = mp_inode(m, c, o->ino, false, &a);
	if (r < 0)
		return r;
	if (S_ISDIR(a.mode))
		return -EPERM;
	if (a.nlink >= MP_LINK_MAX)
		return -EMLINK;
	r = mp_dir_lock(m, c, o->parent, true, &np);
	if (r < 0)
		return r;
	r = mp_inode(m, c, o->ino, true, &a);
	if (r < 0)
		return r;
	if (a.nlink >= MP_LINK_MAX)
		return -EMLINK;
	if (np.qroot != a.qroot)
		return -EXDEV; /* META-9: an inode is accounted to one quota root */
	arg_i64(&q, (int64_t)o->parent);
	arg_str(&q, o->name);
	arg_i64(&q, (int64_t)o->ino);
	arg_i64(&q, o->now);
	/* nlink 0 -> 1 revives an orphan (linkat of an O_TMPFILE file); the kernel decides
	 * whether that is allowed. */
	r = mp_attr_query(m, c, MPQ_LINK, &q, &o->attr);
	if (r == -ENOENT) {
		r = mp_dent(m, c, o->parent, o->name, NULL, NULL);
		r = r == 0 ? -EEXIST : r == -ENOENT ? -EIO : r;
	}
	return r;
}

static int mp_link(struct meta *mm, uint64_t ino, uint64_t newparent, const char *newname,
		   int64_t now_ns, struct meta_attr *ret)
{
	return mp_nsop_run(mm, mp_link_tx, newparent, ino, newname, now_ns, ret);
}

static int mp_unlink_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_nsop *o = arg;
	struct mp_args q = {0};
	struct meta_attr a;
	int64_t id = 0;
	int r = mp_dir_lock(m, c, o->parent, false, NULL);
	if (r == 0)
		r = mp_dent(m, c, o->parent, o->name, &id, &a);
	if (r < 0)
		return r;
	if (S_ISDIR(a.mode))
		return -EISDIR;
	/* nlink 0: the row stays, an orphan (META-3) */
	arg_i64(&q, id);
	arg_i64(&q, (int64_t)a.ino);
	arg_i64(&q, o->now);
	arg_i64(&q, (int64_t)o->parent);
	return mp_attr_query(m, c, MPQ_UNLINK, &q, &o->attr);
}

static int mp_unlink(struct meta *mm, uint64_t parent, const char *name, int64_t now_ns,
		     struct meta_attr *ret)
{
	return mp_nsop_run(mm, mp_unlink_tx, parent, 0, name, now_ns, ret);
}

static int mp_rmdir_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_nsop *o = arg;
	struct meta_attr a;
	int64_t id = 0;
	int r = mp_dir_lock(m, c, o->parent, false, NULL);
	if (r == 0)
		r = mp_dent(m, c, o->parent, o->name, &id, &a);
	if (r < 0)
		return r;
	if (!S_ISDIR(a.mode))
		return -ENOTDIR;
	/* PG-2: lock the directory itself before judging it empty, so no create slips in. */
	r = mp_inode(m, c, a.ino, true, &a);
	if (r == 0)
		r = mp_has_children(m, c, a.ino);
	if (r < 0)
		return r;
	if (r > 0)
		return -ENOTEMPTY;
	r = mp_run2(m, c, MPQ_DENT_DELETE, id, 0);
	if (r == 0)
		r = mp_inode_delete(m, c, &a);
	if (r == 0)
		r = mp_dir_touch(m, c, o->parent, -1, o->now);
	if (r < 0)
		return r;
	a.nlink = 0;
	a.ctime_ns = o->now;
	o->attr = a;
	return 0;
}

static int mp_rmdir(struct meta *mm, uint64_t parent, const char *name, int64_t now_ns,
		    struct meta_attr *ret)
{
	return mp_nsop_run(mm, mp_rmdir_tx, parent, 0, name, now_ns, ret);
}

static int mp_touch_parents(struct mp *m, struct mp_conn *c, uint64_t parent, int dp,
			    uint64_t newparent, int dn, int64_t now)
{
	int r;

	if (parent == newparent)
		return mp_dir_touch(m, c, parent, dp + dn, now);
	r = mp_dir_touch(m, c, parent, dp, now);
	if (r < 0)
		return r;
	return mp_dir_touch(m, c, newparent, dn, now);
}

struct mp_rename {
	uint64_t parent, newparent;
	const char *name, *newname;
	unsigned flags;
	int64_t now;
	bool need_lock;		   /* PG-3: run with the rename lock (sticky across retries) */
	struct meta_attr replaced; /* out */
};

static int mp_rename_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_rename *o = arg;
	struct meta_attr src, dst, pa, na;
	uint64_t parent = o->parent, newparent = o->newparent;
	int64_t sid = 0, did = 0;
	bool have_dst, sdir, ddir;
	int r, rp, rn;

	memset(&o->replaced, 0, sizeof(o->replaced));
	if (o->need_lock) {
		struct mp_args a = {0};

		arg_str(&a, "rename");
		r = mp_q(m, c, MPQ_LOCK, &a, NULL);
		if (r < 0)
			return r;
	}
	/* PG-2: both directories, in inode order; errors reported as the SQLite engine does. */
	if (parent == newparent) {
		rp = rn = mp_dir_lock(m, c, parent, false, &pa);
		na = pa;
	} else if (parent < newparent) {
		rp = mp_dir_lock(m, c, parent, false, &pa);
		rn = rp < 0 && rp != -ENOENT && rp != -ENOTDIR
			 ? rp
			 : mp_dir_lock(m, c, newparent, true, &na);
	} else {
		rn = mp_dir_lock(m, c, newparent, true, &na);
		rp = rn < 0 && rn != -ENOENT && rn != -ENOTDIR
			 ? rn
			 : mp_dir_lock(m, c, parent, false, &pa);
	}
	if (rp < 0)
		return rp;
	if (rn < 0)
		return rn;
	/* META-9: what moves between quota roots would change accounts: refuse, as XFS project
	 * quotas do, so that mv copies instead. */
	if (pa.qroot != na.qroot)
		return -EXDEV;
	r = mp_dent(m, c, parent, o->name, &sid, &src);
	if (r < 0)
		return r;
	r = mp_dent(m, c, newparent, o->newname, &did, &dst);
	if (r < 0 && r != -ENOENT)
		return r;
	have_dst = r == 0;

	if ((o->flags & RENAME_EXCHANGE) && !have_dst)
		return -ENOENT;
	if ((o->flags & RENAME_NOREPLACE) && have_dst)
		return -EEXIST; /* even for the same inode, as Linux */
	if (have_dst && dst.ino == src.ino)
		return 0; /* the same inode under both names: rename(2) does nothing */

	sdir = S_ISDIR(src.mode);
	ddir = have_dst && S_ISDIR(dst.mode);
	if (newparent != parent && (sdir || ((o->flags & RENAME_EXCHANGE) && ddir)) &&
	    !o->need_lock) {
		/* A directory changes parent: start again with the rename lock (PG-3). */
		o->need_lock = true;
		c->retry = true;
		return -EAGAIN;
	}
	if (sdir && newparent != parent) {
		r = mp_check_not_ancestor(m, c, src.ino, newparent);
		if (r < 0)
			return r;
	}

	if (o->flags & RENAME_EXCHANGE) {
		if (ddir && newparent != parent) {
			r = mp_check_not_ancestor(m, c, dst.ino, parent);
			if (r < 0)
				return r;
		}
		r = mp_run2(m, c, MPQ_DENT_SET_INO, sid, (int64_t)dst.ino);
		if (r == 0)
			r = mp_run2(m, c, MPQ_DENT_SET_INO, did, (int64_t)src.ino);
		if (r == 0)
			r = mp_run2(m, c, MPQ_INODE_CTIME, (int64_t)src.ino, o->now);
		if (r == 0)
			r = mp_run2(m, c, MPQ_INODE_CTIME, (int64_t)dst.ino, o->now);
		if (r < 0)
			return r;
		/* A directory that changes parent takes its ".." link with it. */
		return mp_touch_parents(m, c, parent, (int)ddir - (int)sdir, newparent,
					(int)sdir - (int)ddir, o->now);
	}

	if (have_dst) {
		if (sdir && !ddir)
			return -ENOTDIR;
		if (!sdir && ddir)
			return -EISDIR;
		if (ddir) {
			/* PG-2: lock the victim before judging it empty. */
			r = mp_inode(m, c, dst.ino, true, &dst);
			if (r == 0)
				r = mp_has_children(m, c, dst.ino);
			if (r < 0)
				return r;
			if (r > 0)
				return -ENOTEMPTY;
		}
		r = mp_run2(m, c, MPQ_DENT_DELETE, did, 0);
		if (r < 0)
			return r;
		if (ddir) {
			/* An empty directory keeps nothing open: gone now, as rmdir. */
			r = mp_inode_delete(m, c, &dst);
			dst.nlink = 0;
		} else {
			struct mp_args q = {0};

			arg_i64(&q, (int64_t)dst.ino);
			arg_i64(&q, o->now);
			r = mp_attr_query(m, c, MPQ_INODE_DROP_LINK, &q, &dst);
		}
		if (r < 0)
			return r;
		dst.ctime_ns = o->now;
	}
	{
		struct mp_args q = {0};

		arg_i64(&q, sid);
		arg_i64(&q, (int64_t)newparent);
		arg_str(&q, o->newname);
		r = mp_q(m, c, MPQ_DENT_MOVE, &q, NULL);
	}
	if (r == 0)
		r = mp_run2(m, c, MPQ_INODE_CTIME, (int64_t)src.ino, o->now);
	if (r == 0)
		r = mp_touch_parents(m, c, parent, sdir && parent != newparent ? -1 : 0, newparent,
				     (sdir && parent != newparent ? 1 : 0) - (ddir ? 1 : 0),
				     o->now);
	if (r < 0)
		return r;
	if (have_dst)
		o->replaced = dst;
	return 0;
}

static int mp_rename(struct meta *mm, uint64_t parent, const char *name, uint64_t newparent,
		     const char *newname, unsigned flags, int64_t now_ns,
		     struct meta_attr *ret_replaced)
{
	struct mp_rename o = {parent, newparent, name, newname, flags, now_ns, false, {0}};
	int r;

	r = meta_rename_check(name, newname, flags);
	if (r < 0)
		return r;
	return mp_call(mp_of(mm), true, mp_rename_tx, &o, ret_replaced, &o.replaced,
		       sizeof(o.replaced));
}

/* ---- xattrs ---------------------------------------------------------------------------- */

static int mp_setxattr_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_buf *b = arg;
	struct mp_args q = {0};
	struct meta_attr a;
	int n, r = mp_inode(m, c, b->ino, true, &a);
	if (r < 0)
		return r;
	arg_i64(&q, (int64_t)b->ino);
	arg_str(&q, b->name);
	n = mp_count(m, c, MPQ_XATTR_GET, &q);
	if (n < 0)
		return n;
	if (n > 0 && (b->flags & XATTR_CREATE))
		return -EEXIST;
	if (n == 0 && (b->flags & XATTR_REPLACE))
		return -ENODATA;
	arg_bytes(&q, b->value, b->size);
	r = mp_q(m, c, MPQ_XATTR_PUT, &q, NULL);
	if (r < 0)
		return r;
	/* setxattr(2) changes ctime; there is no caller clock here, so use ours. */
	return mp_run2(m, c, MPQ_INODE_CTIME, (int64_t)b->ino, now_realtime_ns());
}

static int mp_setxattr(struct meta *mm, uint64_t ino, const char *name, const void *value,
		       size_t size, int flags)
{
	struct mp_buf b = {ino, name, NULL, size, value, flags};
	int r = meta_setxattr_check(name, value, size, flags);

	if (r < 0)
		return r;
	return mp_tx(mp_of(mm), mp_setxattr_tx, &b);
}

static int mp_getxattr_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_buf *b = arg;
	struct mp_args q = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int r;

	arg_i64(&q, (int64_t)b->ino);
	arg_str(&q, b->name);
	r = mp_q(m, c, MPQ_XATTR_GET, &q, &res);
	if (r < 0)
		return r;
	rd.res = res;
	if (PQntuples(res) < 1) {
		struct meta_attr a;

		r = mp_inode(m, c, b->ino, false, &a);
		if (r == 0)
			r = -ENODATA;
	} else {
		size_t n;
		const char *p = mp_bytes(&rd, 0, &n);

		if (rd.bad || n > META_XATTR_SIZE_MAX)
			r = mp_bad_row(m, "xattr");
		else if (b->size == 0)
			r = (int)n;
		else if (n > b->size || !b->buf)
			r = -ERANGE;
		else {
			if (n)
				memcpy(b->buf, p, n);
			r = (int)n;
		}
	}
	PQclear(res);
	return r;
}

static int mp_getxattr(struct meta *mm, uint64_t ino, const char *name, void *buf, size_t size)
{
	struct mp_buf b = {ino, name, buf, size, NULL, 0};
	int r = meta_xattr_name_check(name);

	if (r < 0)
		return r;
	if (ino == 0 || ino > INT64_MAX)
		return -ENOENT;
	return mp_run(mp_of(mm), mp_getxattr_fn, &b);
}

static int mp_listxattr_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_buf *b = arg;
	struct mp_args q = {0};
	struct mp_rd rd = {0};
	struct meta_attr a;
	PGresult *res;
	size_t total = 0;
	int r = mp_inode(m, c, b->ino, false, &a);
	if (r < 0)
		return r;
	arg_i64(&q, (int64_t)b->ino);
	r = mp_q(m, c, MPQ_XATTR_LIST, &q, &res);
	if (r < 0)
		return r;
	rd.res = res;
	for (int i = 0; i < PQntuples(res); i++) {
		size_t n;
		const char *p;

		rd.row = i;
		p = mp_bytes(&rd, 0, &n);
		if (n > META_XATTR_NAME_MAX) {
			rd.bad = true;
			break;
		}
		if (b->size && b->buf && total + n + 1 <= b->size) {
			memcpy(b->buf + total, p, n);
			b->buf[total + n] = '\0';
		}
		total += n + 1;
	}
	PQclear(res);
	if (rd.bad)
		return mp_bad_row(m, "xattr list");
	if (total > INT_MAX)
		return -E2BIG;
	if (b->size && total > b->size)
		return -ERANGE;
	return (int)total;
}

static int mp_listxattr(struct meta *mm, uint64_t ino, char *buf, size_t size)
{
	struct mp_buf b = {ino, NULL, buf, size, NULL, 0};

	if (ino == 0 || ino > INT64_MAX)
		return -ENOENT;
	return mp_run(mp_of(mm), mp_listxattr_fn, &b);
}

static int mp_removexattr_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_buf *b = arg;
	struct mp_args q = {0};
	struct meta_attr a;
	int r = mp_inode(m, c, b->ino, true, &a);
	if (r < 0)
		return r;
	arg_i64(&q, (int64_t)b->ino);
	arg_str(&q, b->name);
	r = mp_count(m, c, MPQ_XATTR_DEL, &q);
	if (r < 0)
		return r;
	if (r == 0)
		return -ENODATA;
	return mp_run2(m, c, MPQ_INODE_CTIME, (int64_t)b->ino, now_realtime_ns());
}

static int mp_removexattr(struct meta *mm, uint64_t ino, const char *name)
{
	struct mp_buf b = {ino, name, NULL, 0, NULL, 0};
	int r = meta_xattr_name_check(name);

	if (r < 0)
		return r;
	return mp_tx(mp_of(mm), mp_removexattr_tx, &b);
}

/* ---- quotas (META-9) ------------------------------------------------------------------- */

struct mp_quota_op {
	uint64_t ino;
	uint64_t a, b;	     /* limits; reserve: need, want */
	uint64_t got;	     /* out: reserve */
	struct meta_quota q; /* out: get */
};

/* PG-6: no create or rename under dir while its subtree is tagged or untagged. */
static int mp_quota_lock_tree(struct mp *m, struct mp_conn *c)
{
	return mp_exec(m, c, "LOCK TABLE inodes IN EXCLUSIVE MODE");
}

static int mp_quota_set_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_quota_op *o = arg;
	struct mp_args q = {0};
	struct meta_attr a;
	int64_t nested = 0;
	int r = mp_quota_lock_tree(m, c);

	if (r == 0)
		r = mp_dir_lock(m, c, o->ino, true, &a);
	if (r < 0)
		return r;
	arg_i64(&q, (int64_t)o->ino);
	arg_i64(&q, (int64_t)o->a);
	arg_i64(&q, (int64_t)o->b);
	if (a.qroot == o->ino)
		return mp_q(m, c, MPQ_QUOTA_LIMITS, &q, NULL);
	if (a.qroot != 0)
		return -EINVAL; /* inside another root: no nesting */
	struct mp_args one = {0};

	arg_i64(&one, (int64_t)o->ino);
	r = mp_q_i64(m, c, MPQ_QUOTA_SUBTREE_ROOTS, &one, &nested);
	if (r < 0)
		return r;
	if (nested > 0)
		return -EINVAL; /* holds a root: no nesting */
	r = mp_run2(m, c, MPQ_QUOTA_TAG, (int64_t)o->ino, 0);
	if (r == 0)
		r = mp_q(m, c, MPQ_QUOTA_CREATE, &q, NULL);
	return r;
}

static int mp_quota_set(struct meta *mm, uint64_t dir, uint64_t bytes_limit, uint64_t inodes_limit)
{
	struct mp_quota_op o = {.ino = dir, .a = bytes_limit, .b = inodes_limit};

	if (bytes_limit > INT64_MAX || inodes_limit > INT64_MAX)
		return -EINVAL;
	return mp_tx(mp_of(mm), mp_quota_set_tx, &o);
}

static int mp_quota_get_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_quota_op *o = arg;
	struct meta_attr a;
	int r = mp_inode(m, c, o->ino, false, &a);

	if (r < 0)
		return r;
	return a.qroot ? mp_quota_get_row(m, c, a.qroot, false, &o->q) : -ENODATA;
}

static int mp_quota_get(struct meta *mm, uint64_t ino, struct meta_quota *ret)
{
	struct mp_quota_op o = {.ino = ino};

	return mp_call(mp_of(mm), false, mp_quota_get_fn, &o, ret, &o.q, sizeof(o.q));
}

static int mp_quota_clear_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_quota_op *o = arg;
	struct meta_attr a;
	int r = mp_quota_lock_tree(m, c);

	if (r == 0)
		r = mp_dir_lock(m, c, o->ino, false, &a);
	if (r < 0)
		return r;
	if (a.qroot != o->ino)
		return -ENODATA;
	r = mp_run2(m, c, MPQ_QUOTA_UNTAG, (int64_t)o->ino, 0);
	if (r == 0)
		r = mp_run2(m, c, MPQ_QUOTA_DEL, (int64_t)o->ino, 0);
	return r;
}

static int mp_quota_clear(struct meta *mm, uint64_t dir)
{
	struct mp_quota_op o = {.ino = dir};

	return mp_tx(mp_of(mm), mp_quota_clear_tx, &o);
}

static int mp_quota_reserve_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_quota_op *o = arg;
	struct meta_attr a;
	struct meta_quota q;
	uint64_t cur, grant, need = o->a, want = o->b;
	int r = mp_inode(m, c, o->ino, true, &a);

	if (r < 0)
		return r;
	if (!S_ISREG(a.mode))
		return S_ISDIR(a.mode) ? -EISDIR : -EINVAL;
	a.flags |= META_IF_WDIRTY; /* META-4 */
	o->got = UINT64_MAX;
	if (a.qroot) {
		cur = meta_charged(&a);
		o->got = cur;
		if (want > cur) {
			r = mp_quota_get_row(m, c, a.qroot, true, &q);
			if (r < 0 && r != -ENODATA)
				return r;
			uint64_t room = r == 0 ? meta_quota_room(&q) : UINT64_MAX;

			grant = want - cur <= room ? want : cur + room;
			if (grant < need)
				return -EDQUOT;
			r = mp_quota_charge(m, c, a.qroot, (int64_t)(grant - cur), 0, false);
			if (r < 0)
				return r;
			a.qres = grant;
			o->got = grant;
		}
	}
	return mp_inode_put(m, c, &a);
}

static int mp_quota_reserve(struct meta *mm, uint64_t ino, uint64_t need, uint64_t want,
			    uint64_t *ret_reserved)
{
	struct mp_quota_op o = {.ino = ino, .a = need, .b = want};

	if (need > want || want > INT64_MAX)
		return need > want ? -EINVAL : -EFBIG;
	return mp_call(mp_of(mm), true, mp_quota_reserve_tx, &o, ret_reserved, &o.got,
		       sizeof(o.got));
}

/* ---- orphans, sync, statfs -------------------------------------------------------------- */

static int mp_purge_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_ino *p = arg;
	struct meta_attr a;
	int r = mp_inode(m, c, p->ino, true, &a);
	if (r < 0)
		return r;
	if (a.nlink > 0 || p->ino == META_ROOT_INO)
		return -EBUSY;
	/* Only check() orphans a directory, and empties it first; refuse one that still holds
	 * entries rather than leave them pointing at nothing. */
	if (S_ISDIR(a.mode)) {
		r = mp_has_children(m, c, p->ino);
		if (r < 0)
			return r;
		if (r > 0)
			return -ENOTEMPTY;
	}
	return mp_inode_delete(m, c, &a);
}

static int mp_purge(struct meta *mm, uint64_t ino)
{
	struct mp_ino p = {ino, {0}};

	return mp_tx(mp_of(mm), mp_purge_tx, &p);
}

struct mp_purges {
	const uint64_t *inos;
	unsigned n;
	struct mp *m; /* for mp_purge_one, set by each run of the transaction */
	struct mp_conn *c;
};

static int mp_purge_one(void *ctx, uint64_t ino)
{
	struct mp_purges *p = ctx;
	struct mp_ino one = {ino, {0}};

	return mp_purge_tx(p->m, p->c, &one);
}

static int mp_purge_batch_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_purges *p = arg;

	p->m = m;
	p->c = c;
	return meta_purge_each(p->inos, p->n, mp_purge_one, p);
}

/* mp_tx returns the count of the run that committed */
static int mp_purge_batch(struct meta *mm, const uint64_t *inos, unsigned n)
{
	struct mp_purges p = {inos, n, NULL, NULL};
	int r = meta_purge_batch_check(inos, n);

	return r < 0 ? r : mp_tx(mp_of(mm), mp_purge_batch_tx, &p);
}

/* META-5: a COMMIT returned only after its WAL record was flushed (synchronous_commit is at
 * least on in every session, see DURABILITY): nothing committed can still be volatile
 * (META_CAP_DURABLE_COMMIT, so the FUSE layer does not even call this). */
static int mp_sync(struct meta *mm)
{
	(void)mm;
	return 0;
}

static void mp_statfs_row(struct mp_rd *rd, void *out)
{
	struct meta_statfs *s = out;

	s->inodes = (uint64_t)mp_i64(rd, 0);
	s->bytes = (uint64_t)mp_i64(rd, 1);
}

/* One statement: one snapshot of every inode (~0.1 s per million). */
static int mp_statfs_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	return mp_one(m, c, MPQ_STATFS, NULL, mp_statfs_row, arg);
}

static int mp_statfs(struct meta *mm, struct meta_statfs *ret)
{
	struct meta_statfs s = {0, 0};

	return mp_call(mp_of(mm), false, mp_statfs_fn, &s, ret, &s, sizeof(s));
}

/* ---- check ------------------------------------------------------------------------------ */

/* Directories no path from the root reaches (cycles too: UNION stops at a repeat), except an
 * orphan already empty and unnamed, which only waits for purge(). */
#define MP_UNREACH_CTE                                                                             \
	"WITH RECURSIVE r (ino) AS (SELECT 1::int8 UNION SELECT d.ino FROM dentries d"             \
	" JOIN r ON d.parent = r.ino), u AS (SELECT i.ino FROM inodes i WHERE " MP_IS_DIR(         \
	    "i.mode") " AND i.ino NOT IN (SELECT ino FROM r) AND (i.nlink > 0 OR EXISTS"           \
		      " (SELECT 1 FROM dentries d WHERE d.ino = i.ino OR d.parent = i.ino)))"
/* Link counts as the entries say: a non-directory one per entry naming it; a directory 2 plus
 * one per subdirectory, or 0 if nothing names it (an orphan). Unreachable ones excluded. */
#define MP_WANT_CTE                                                                                \
	MP_UNREACH_CTE ", w AS (SELECT i.ino, i.nlink, CASE WHEN " MP_IS_DIR(                      \
	    "i.mode") " THEN (CASE WHEN i.ino = 1 OR coalesce(n.cnt, 0) > 0 THEN 2 +"              \
		      " coalesce(sd.cnt, 0) ELSE 0 END) ELSE coalesce(n.cnt, 0) END AS want"       \
		      " FROM inodes i LEFT JOIN (SELECT ino, count(*) AS cnt FROM dentries"        \
		      " GROUP BY ino) n ON n.ino = i.ino LEFT JOIN (SELECT d.parent, count(*)"     \
		      " AS cnt FROM dentries d JOIN inodes s ON s.ino = d.ino WHERE " MP_IS_DIR(   \
			  "s.mode") " GROUP BY d.parent) sd ON sd.parent = i.ino"                  \
				    " WHERE i.ino NOT IN (SELECT ino FROM u))"

/* Per quota root: recorded usage and what its tagged inodes add up to (META-9). */
#define MP_QUOTA_COUNT_CTE                                                                         \
	"WITH qc AS (SELECT q.ino, q.bytes_used, q.inodes_used, coalesce(sum(" MP_CHARGED(         \
	    "i.") "), 0)::int8 AS b, (count(i.ino) - CASE WHEN EXISTS (SELECT 1 FROM inodes r"     \
		  " WHERE r.ino = q.ino AND r.qroot = q.ino) THEN 1 ELSE 0 END)::int8 AS n"        \
		  " FROM quotas q LEFT JOIN inodes i ON i.qroot = q.ino"                           \
		  " GROUP BY q.ino, q.bytes_used, q.inodes_used)"

/* Run `sql`, report each row, then run `fix` if repairing: the same condition in the same
 * transaction, so it touches exactly the rows reported. */
static int mp_check_step(struct mp *m, struct mp_conn *c, struct meta_checker *k,
			 enum meta_finding kind, const char *sql, const char *fix)
{
	struct mp_rd rd = {0};
	bool fixing = k->repair && fix;
	PGresult *res;
	int n, r = 0;

	res = PQexecParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 1);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = mp_fail(m, c, res, "check");
		PQclear(res);
		return r;
	}
	rd.res = res;
	n = PQntuples(res);
	for (int i = 0; i < n && !rd.bad; i++) {
		int cols = PQnfields(res);
		int64_t v[5] = {0};
		bool named = false;
		struct meta_find f;

		/* the columns meta_find_col names for the kind */
		rd.row = i;
		for (int j = 0; j < 5; j++) {
			int col = meta_find_col(kind, j, &named);

			if (col >= 0 && col < cols)
				v[j] = mp_i64(&rd, col);
		}
		f = (struct meta_find){(uint64_t)v[0], v[1], v[2], v[3], v[4], NULL, 0};
		if (named && cols > 2)
			f.name = mp_bytes(&rd, 2, &f.n);
		if (!rd.bad)
			meta_finding(k, kind, fixing, &f);
	}
	PQclear(res);
	if (rd.bad)
		return mp_bad_row(m, "check");
	if (n > 0 && fixing)
		r = mp_exec(m, c, fix);
	return r;
}

static int mp_check_namespace(struct mp *m, struct mp_conn *c, struct meta_checker *k)
{
	struct meta_attr root;
	int r = mp_inode(m, c, META_ROOT_INO, false, &root);

	/* The root first: everything else is judged by reachability from it. */
	if (r == -ENOENT) {
		struct meta_find f = {.a = META_ROOT_INO};

		meta_finding(k, META_FIND_ROOT_MISSING, k->repair, &f);
		if (k->repair) {
			int64_t now = now_realtime_ns();
			char sql[320];

			snprintf(
			    sql, sizeof(sql),
			    "INSERT INTO inodes (ino, mode, nlink, uid, gid, rdev, size, atime,"
			    " mtime, ctime, btime, generation, flags) VALUES (1, %d, 2, 0, 0, 0,"
			    " 0, %" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 ", 1, 0)",
			    S_IFDIR | 0755, now, now, now, now);
			r = mp_exec(m, c, sql);
		} else {
			r = 0;
		}
	} else if (r == 0 && !S_ISDIR(root.mode)) {
		struct meta_find f = {.a = META_ROOT_INO, .b = root.mode};

		meta_finding(k, META_FIND_ROOT_NOT_DIR, false, &f);
		return 0; /* nothing below can be judged */
	}
	if (r < 0)
		return r;

	r = mp_check_step(m, c, k, META_FIND_ROOT_NAMED,
			  "SELECT ino, parent, name FROM dentries WHERE ino = 1 ORDER BY id",
			  "DELETE FROM dentries WHERE ino = 1");
	if (r == 0)
		r = mp_check_step(m, c, k, META_FIND_ENTRY_MISSING_INODE,
				  "SELECT d.ino, d.parent, d.name FROM dentries d WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = d.ino) ORDER BY d.id",
				  "DELETE FROM dentries d WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = d.ino)");
	if (r == 0)
		r = mp_check_step(
		    m, c, k, META_FIND_ENTRY_BAD_PARENT,
		    "SELECT d.ino, d.parent, d.name, (p.ino IS NOT NULL)::int::int8 FROM"
		    " dentries d LEFT JOIN inodes p ON p.ino = d.parent"
		    " WHERE p.ino IS NULL OR NOT " MP_IS_DIR("p.mode") " ORDER BY d.id",
		    "DELETE FROM dentries WHERE id IN (SELECT d.id FROM dentries d"
		    " LEFT JOIN inodes p ON p.ino = d.parent"
		    " WHERE p.ino IS NULL OR NOT " MP_IS_DIR("p.mode") ")");
	if (r == 0)
		r = mp_check_step(m, c, k, META_FIND_DIR_MULTI,
				  "SELECT d.ino, count(*) FROM dentries d JOIN inodes i ON i.ino ="
				  " d.ino WHERE " MP_IS_DIR("i.mode") " GROUP BY d.ino"
								      " HAVING count(*) > 1"
								      " ORDER BY d.ino",
				  "DELETE FROM dentries WHERE id IN (SELECT d.id FROM dentries d"
				  " JOIN inodes i ON i.ino = d.ino WHERE " MP_IS_DIR(
				      "i.mode") " AND d.id > (SELECT min(e.id) FROM dentries e"
						" WHERE e.ino = d.ino))");
	if (r == 0)
		r = mp_check_step(m, c, k, META_FIND_XATTR_ORPHAN,
				  "SELECT x.ino, count(*) FROM xattrs x WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = x.ino) GROUP BY x.ino"
				  " ORDER BY x.ino",
				  "DELETE FROM xattrs x WHERE NOT EXISTS"
				  " (SELECT 1 FROM inodes i WHERE i.ino = x.ino)");
	/* META-9: every root's usage equals what its tagged inodes add up to. */
	if (r == 0)
		r = mp_check_step(m, c, k, META_FIND_QUOTA_USAGE,
				  MP_QUOTA_COUNT_CTE
				  " SELECT ino, bytes_used, inodes_used, b, n FROM qc"
				  " WHERE b <> bytes_used OR n <> inodes_used"
				  " ORDER BY ino",
				  MP_QUOTA_COUNT_CTE " UPDATE quotas SET bytes_used = qc.b,"
						     " inodes_used = qc.n FROM qc WHERE"
						     " quotas.ino = qc.ino");
	if (r == 0)
		r = mp_check_step(m, c, k, META_FIND_UNREACHABLE,
				  MP_UNREACH_CTE " SELECT ino FROM u ORDER BY ino",
				  MP_UNREACH_CTE ", x AS (DELETE FROM dentries WHERE ino IN (SELECT"
						 " ino FROM u) OR parent IN (SELECT ino FROM u))"
						 " UPDATE inodes SET nlink = 0 WHERE ino IN"
						 " (SELECT ino FROM u)");
	if (r == 0)
		r = mp_check_step(
		    m, c, k, META_FIND_NLINK,
		    MP_WANT_CTE
		    " SELECT ino, nlink, ''::bytea, want FROM w WHERE nlink <> want ORDER BY ino",
		    MP_WANT_CTE " UPDATE inodes SET nlink = w.want FROM w WHERE"
				" inodes.ino = w.ino AND w.nlink <> w.want");
	return r;
}

/* check(false): one REPEATABLE READ snapshot, rolled back (writes nothing, so a read-only
 * handle may run it). */
static int mp_check_read_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct meta_checker *k = arg;
	int r;

	k->found = k->unfixed = 0;
	r = mp_exec(m, c, "BEGIN ISOLATION LEVEL REPEATABLE READ");
	if (r < 0)
		return r;
	r = mp_check_namespace(m, c, k);
	mp_rollback(m, c);
	return r < 0 ? r : k->found;
}

/* check(true): the tables locked against every writer (readers go on), repair, commit. */
static int mp_check_repair_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct meta_checker *k = arg;
	int r;

	k->found = k->unfixed = 0;
	r = mp_exec(m, c, "LOCK TABLE inodes, dentries, xattrs IN EXCLUSIVE MODE");
	if (r == 0)
		r = mp_check_namespace(m, c, k);
	return r < 0 ? r : k->unfixed;
}

static int mp_check(struct meta *mm, bool repair, meta_report_cb cb, void *ctx)
{
	struct mp *m = mp_of(mm);
	struct meta_checker k = {repair, cb, ctx, 0, 0};

	if (repair)
		return m->rdonly ? -EROFS : mp_tx(m, mp_check_repair_tx, &k);
	return mp_run(m, mp_check_read_fn, &k);
}

/* ---- nodes, leases, clients (META_CAP_CLUSTER; META-10..12) ------------------------------ */

static int mp_ttl_check(uint32_t ttl_ms)
{
	return ttl_ms < 1 || ttl_ms > META_TTL_MAX_MS ? -EINVAL : 0;
}

static int mp_lease_name_check(const char *name)
{
	size_t n;

	if (!name)
		return -EINVAL;
	n = strnlen(name, META_LEASE_NAME_MAX + 1);
	return n == 0 || n > META_LEASE_NAME_MAX ? -EINVAL : 0;
}

struct mp_cluster {
	const char *name, *address;
	uint64_t id;
	int64_t x, y; /* leases: holder, generation */
	uint32_t ttl_ms;
	const struct meta_client *client;
	struct meta_lease lease; /* out */
	bool have_lease;
	struct meta_client conflict; /* out */
};

static int mp_node_register_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_cluster *k = arg;
	struct mp_args a = {0};
	int64_t id = 0;
	int r;

	arg_str(&a, k->name);
	arg_str(&a, k->address);
	arg_i64(&a, k->ttl_ms);
	r = mp_q_i64(m, c, MPQ_NODE_REGISTER, &a, &id);
	if (r == 0)
		k->id = (uint64_t)id;
	return r;
}

static int mp_node_register(struct meta *mm, const char *name, const char *address, uint32_t ttl_ms,
			    uint32_t *ret_id)
{
	struct mp *m = mp_of(mm);
	struct mp_cluster k = {.name = name, .address = address, .ttl_ms = ttl_ms};
	int r = mp_ttl_check(ttl_ms);

	if (r < 0)
		return r;
	if (!name || !address || !name[0] ||
	    !meta_str_ok(name, sizeof(((struct meta_node *)0)->name)) ||
	    !meta_str_ok(address, sizeof(((struct meta_node *)0)->address)))
		return -EINVAL;
	r = mp_run_write(m, mp_node_register_fn, &k); /* an upsert */
	if (r == 0 && ret_id)
		*ret_id = (uint32_t)k.id;
	return r;
}

static int mp_node_heartbeat(struct meta *mm, uint32_t id, uint32_t ttl_ms)
{
	struct mp_change x = {MPQ_NODE_HEARTBEAT, 2, {id, ttl_ms}, -ENOENT};

	if (mp_ttl_check(ttl_ms) < 0)
		return -EINVAL;
	return mp_run_write(mp_of(mm), mp_change_fn, &x);
}

static int mp_node_set_state(struct meta *mm, uint32_t id, enum meta_node_state state)
{
	struct mp_change x = {MPQ_NODE_SET_STATE, 2, {id, state}, -ENOENT};

	if (state != META_NODE_UP && state != META_NODE_DOWN)
		return -EINVAL;
	return mp_run_write(mp_of(mm), mp_change_fn, &x);
}

static void mp_node_row(struct mp_rd *rd, void *out)
{
	struct meta_node *o = out;

	memset(o, 0, sizeof(*o));
	o->id = (uint32_t)mp_i64(rd, 0);
	mp_text(rd, 1, o->name, sizeof(o->name));
	mp_text(rd, 2, o->address, sizeof(o->address));
	o->state = (enum meta_node_state)mp_i64(rd, 3);
	o->heartbeat_age_ns = mp_i64(rd, 4);
	o->lease_remaining_ns = mp_i64(rd, 5);
}

static int mp_nodes_list(struct meta *mm, struct meta_node *ret, unsigned max)
{
	struct mp_list l = {MPQ_NODES_LIST, ret, max, sizeof(*ret), mp_node_row};

	return mp_run(mp_of(mm), mp_list_fn, &l);
}

/* A lease row (MP_LEASE_COLS). */
static void mp_lease_row(struct mp_rd *rd, void *out)
{
	struct meta_lease *l = out;

	memset(l, 0, sizeof(*l));
	mp_text(rd, 0, l->name, sizeof(l->name));
	l->holder = (uint32_t)mp_i64(rd, 1);
	l->generation = (uint64_t)mp_i64(rd, 2);
	l->remaining_ns = l->holder ? mp_i64(rd, 3) : 0;
}

static int mp_lease_get_row(struct mp *m, struct mp_conn *c, struct mp_cluster *k)
{
	struct mp_args a = {0};
	int r;

	arg_str(&a, k->name);
	r = mp_one(m, c, MPQ_LEASE_GET, &a, mp_lease_row, &k->lease);
	k->have_lease = r == 0;
	return r;
}

/* acquire (x = holder), renew (x = holder, y = generation), release (x, y), get: each one
 * conditional statement judged by now() (META-10, META-11); a refusal reads the lease as it
 * stands so the caller learns who holds it. */
enum mp_lease_op { MP_LEASE_ACQUIRE, MP_LEASE_RENEW, MP_LEASE_RELEASE, MP_LEASE_GET };

struct mp_lease_call {
	struct mp_cluster k;
	enum mp_lease_op op;
};

static int mp_lease_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_lease_call *l = arg;
	struct mp_cluster *k = &l->k;
	struct mp_args a = {0};
	int r;

	k->have_lease = false;
	if (l->op == MP_LEASE_GET)
		return mp_lease_get_row(m, c, k);
	arg_str(&a, k->name);
	arg_i64(&a, k->x);
	if (l->op != MP_LEASE_ACQUIRE)
		arg_i64(&a, k->y);
	if (l->op != MP_LEASE_RELEASE)
		arg_i64(&a, k->ttl_ms);
	if (l->op == MP_LEASE_RELEASE) {
		r = mp_count(m, c, MPQ_LEASE_RELEASE, &a);
		if (r < 0)
			return r;
		if (r > 0)
			return 0;
	} else {
		r = mp_one(m, c, l->op == MP_LEASE_ACQUIRE ? MPQ_LEASE_ACQUIRE : MPQ_LEASE_RENEW,
			   &a, mp_lease_row, &k->lease);
		if (r != -ENOENT) {
			k->have_lease = r == 0;
			return r;
		}
	}
	r = mp_lease_get_row(m, c, k);
	if (r < 0)
		return r;
	return l->op == MP_LEASE_ACQUIRE ? -EBUSY : -ESTALE;
}

static int mp_lease_call(struct meta *mm, enum mp_lease_op op, const char *name, uint32_t holder,
			 uint64_t generation, uint32_t ttl_ms, struct meta_lease *ret)
{
	struct mp *m = mp_of(mm);
	struct mp_lease_call l = {
	    {.name = name, .x = holder, .y = (int64_t)generation, .ttl_ms = ttl_ms}, op};
	int r = mp_lease_name_check(name);

	if (r == 0 && op != MP_LEASE_GET && holder == 0)
		r = -EINVAL;
	if (r == 0 && (op == MP_LEASE_ACQUIRE || op == MP_LEASE_RENEW))
		r = mp_ttl_check(ttl_ms);
	if (r == 0 && generation > INT64_MAX)
		r = -EINVAL;
	if (r < 0)
		return r;
	r = op == MP_LEASE_GET ? mp_run(m, mp_lease_fn, &l) : mp_run_write(m, mp_lease_fn, &l);
	if (ret && l.k.have_lease)
		*ret = l.k.lease;
	return r;
}

static int mp_lease_acquire(struct meta *mm, const char *name, uint32_t holder, uint32_t ttl_ms,
			    struct meta_lease *ret)
{
	return mp_lease_call(mm, MP_LEASE_ACQUIRE, name, holder, 0, ttl_ms, ret);
}

static int mp_lease_renew(struct meta *mm, const char *name, uint32_t holder, uint64_t generation,
			  uint32_t ttl_ms, struct meta_lease *ret)
{
	return mp_lease_call(mm, MP_LEASE_RENEW, name, holder, generation, ttl_ms, ret);
}

static int mp_lease_release(struct meta *mm, const char *name, uint32_t holder, uint64_t generation)
{
	return mp_lease_call(mm, MP_LEASE_RELEASE, name, holder, generation, 1, NULL);
}

static int mp_lease_get(struct meta *mm, const char *name, struct meta_lease *ret)
{
	return mp_lease_call(mm, MP_LEASE_GET, name, 0, 0, 1, ret);
}

/* A client row (MP_CLIENT_COLS). */
static void mp_client_row(struct mp_rd *rd, void *out)
{
	struct meta_client *o = out;

	memset(o, 0, sizeof(*o));
	o->id = (uint64_t)mp_i64(rd, 0);
	mp_text(rd, 1, o->host, sizeof(o->host));
	o->pid = (int32_t)mp_i64(rd, 2);
	mp_text(rd, 3, o->mountpoint, sizeof(o->mountpoint));
	o->exclusive = mp_i64(rd, 4) != 0;
	o->alive = mp_i64(rd, 5) != 0;
	o->remaining_ns = mp_i64(rd, 6);
}

/* META-12: reap the expired, look for a conflict and insert, under the 'clients' lock. */
static int mp_client_register_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_cluster *k = arg;
	const struct meta_client *in = k->client;
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int64_t id = 0;
	int r;

	arg_str(&a, "clients");
	r = mp_q(m, c, MPQ_LOCK, &a, NULL);
	if (r == 0)
		r = mp_q(m, c, MPQ_CLIENTS_REAP, NULL, NULL);
	if (r < 0)
		return r;
	a.n = 0;
	arg_i64(&a, in->exclusive);
	r = mp_q(m, c, MPQ_CLIENT_CONFLICT, &a, &res);
	if (r < 0)
		return r;
	if (PQntuples(res) > 0) {
		rd.res = res;
		mp_client_row(&rd, &k->conflict);
		PQclear(res);
		return rd.bad ? mp_bad_row(m, "clients") : -EBUSY;
	}
	PQclear(res);
	a.n = 0;
	arg_str(&a, in->host);
	arg_str(&a, in->mountpoint);
	arg_i64(&a, in->pid);
	arg_i64(&a, in->exclusive);
	arg_i64(&a, k->ttl_ms);
	r = mp_q_i64(m, c, MPQ_CLIENT_INSERT, &a, &id);
	if (r == 0)
		k->id = (uint64_t)id;
	return r;
}

static int mp_client_register(struct meta *mm, const struct meta_client *in, uint32_t ttl_ms,
			      uint64_t *ret_id, struct meta_client *ret_conflict)
{
	struct mp *m = mp_of(mm);
	struct mp_cluster k = {.client = in, .ttl_ms = ttl_ms};
	int r;

	if (!in || !meta_str_ok(in->host, sizeof(in->host)) ||
	    !meta_str_ok(in->mountpoint, sizeof(in->mountpoint)))
		return -EINVAL;
	r = mp_ttl_check(ttl_ms);
	if (r < 0)
		return r;
	if (m->rdonly)
		return -EROFS;
	r = mp_tx(m, mp_client_register_tx, &k);
	if (r == 0 && ret_id)
		*ret_id = k.id;
	if (r == -EBUSY && ret_conflict)
		*ret_conflict = k.conflict;
	return r;
}

static int mp_client_heartbeat(struct meta *mm, uint64_t id, uint32_t ttl_ms)
{
	struct mp_change x = {MPQ_CLIENT_HEARTBEAT, 2, {(int64_t)id, ttl_ms}, -ESTALE};
	int r = mp_ttl_check(ttl_ms);

	if (r < 0)
		return r;
	if (id == 0 || id > INT64_MAX)
		return -ESTALE;
	return mp_run_write(mp_of(mm), mp_change_fn, &x);
}

static int mp_client_unregister(struct meta *mm, uint64_t id)
{
	struct mp_change x = {MPQ_CLIENT_DELETE, 1, {(int64_t)id}, -ENOENT};

	if (id == 0 || id > INT64_MAX)
		return -ENOENT;
	return mp_run_write(mp_of(mm), mp_change_fn, &x);
}

static int mp_clients_list(struct meta *mm, struct meta_client *ret, unsigned max)
{
	struct mp_list l = {MPQ_CLIENTS_LIST, ret, max, sizeof(*ret), mp_client_row};

	return mp_run(mp_of(mm), mp_list_fn, &l);
}

/* ---- file locks (META_CAP_LOCKS; META-18, PG-7) ---------------------------------------- */

struct mp_flock {
	const struct meta_lock *in;
	struct meta_lock conflict; /* out: -EAGAIN */
};

/* The owner's rows before and after a lock_set, on the stack when this many fit (one owner
 * rarely holds more than a few ranges of one file: up to 5 here). */
#define MP_LOCK_STACK 16

/* The MP_LOCK_COLS of the current row into *l; local and alive false. */
static void mp_lock_cols(struct mp_rd *rd, struct meta_lock *l)
{
	memset(l, 0, sizeof(*l));
	l->ino = (uint64_t)mp_i64(rd, 0);
	l->client = (uint64_t)mp_i64(rd, 1);
	l->owner = (uint64_t)mp_i64(rd, 2);
	l->kind = (enum meta_lock_kind)mp_i64(rd, 3);
	l->type = (enum meta_lock_type)mp_i64(rd, 4);
	l->start = (uint64_t)mp_i64(rd, 5);
	l->end = (uint64_t)mp_i64(rd, 6);
	l->pid = (int32_t)mp_i64(rd, 7);
}

/* The key of l's rows as the first parameters: ino, client, owner, kind. */
static void arg_lock_key(struct mp_args *a, const struct meta_lock *l)
{
	arg_i64(a, (int64_t)l->ino);
	arg_i64(a, (int64_t)l->client);
	arg_i64(a, (int64_t)l->owner);
	arg_i64(a, l->kind);
}

/* The first live conflicting lock of in: 1 found (in *ret), 0 none, or -errno. */
static int mp_lock_conflict(struct mp *m, struct mp_conn *c, const struct meta_lock *in,
			    struct meta_lock *ret)
{
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int r;

	arg_lock_key(&a, in);
	arg_i64(&a, in->type);
	arg_i64(&a, (int64_t)in->start);
	arg_i64(&a, (int64_t)in->end);
	r = mp_q(m, c, MPQ_FLOCK_CONFLICT, &a, &res);
	if (r < 0)
		return r;
	rd.res = res;
	r = PQntuples(res) > 0;
	if (r) {
		mp_lock_cols(&rd, ret);
		ret->local = mp_i64(&rd, 8) != 0;
		ret->alive = true;
	}
	PQclear(res);
	return rd.bad ? mp_bad_row(m, "file_locks") : r;
}

/* PG-7: the inode's row lock, then (later statements, fresh snapshots) the caller's
 * registration, the purge of dead clients' rows, the conflict test, and the owner's rows
 * taken out and written back as meta_lock_apply() says. */
static int mp_lock_set_tx(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_flock *x = arg;
	const struct meta_lock *in = x->in;
	struct mp_args a = {0};
	struct mp_rd rd = {0};
	PGresult *res;
	int64_t one = 0;
	int r, n;

	arg_i64(&a, (int64_t)in->ino);
	r = mp_q_i64(m, c, MPQ_FLOCK_INODE, &a, &one);
	if (r == 0)
		r = mp_q(m, c, MPQ_FLOCK_PURGE, &a, NULL);
	if (r < 0)
		return r;
	a.n = 0;
	arg_i64(&a, (int64_t)in->client);
	r = mp_q_i64(m, c, MPQ_FLOCK_CLIENT, &a, &one);
	if (r < 0)
		return r == -ENOENT ? -ESTALE : r;
	if (in->type != META_LOCK_UN) {
		r = mp_lock_conflict(m, c, in, &x->conflict);
		if (r != 0)
			return r < 0 ? r : -EAGAIN;
	}
	a.n = 0;
	arg_lock_key(&a, in);
	r = mp_q(m, c, MPQ_FLOCK_TAKE, &a, &res);
	if (r < 0)
		return r;
	rd.res = res;
	n = PQntuples(res);
	if (n > META_LOCK_RANGES_MAX) {
		PQclear(res);
		return mp_bad_row(m, "file_locks");
	}
	/* cur: the n rows; out: what meta_lock_apply() makes of them. It puts at most two
	 * ranges per row (a split) and in's own, so 2n + 1 (n + 2 while the rows do not
	 * overlap, which no constraint enforces) never runs into -ENOLCK below
	 * META_LOCK_RANGES_MAX: the same result as out[META_LOCK_RANGES_MAX]. */
	unsigned nout = MIN(2 * (unsigned)n + 1, META_LOCK_RANGES_MAX);
	struct meta_lock stack[MP_LOCK_STACK], *cur = stack;

	if ((unsigned)n + nout > ARRAY_SIZE(stack)) {
		cur = malloc(((unsigned)n + nout) * sizeof(*cur));
		if (!cur) {
			PQclear(res);
			return -ENOMEM;
		}
	}
	struct meta_lock *out = cur + n;

	for (rd.row = 0; rd.row < n; rd.row++) {
		struct meta_lock *l = &cur[rd.row];

		mp_lock_cols(&rd, l);
		if (l->type != META_LOCK_RD && l->type != META_LOCK_WR)
			rd.bad = true;
	}
	PQclear(res);
	r = rd.bad ? mp_bad_row(m, "file_locks") : meta_lock_apply(cur, (unsigned)n, in, out, nout);
	for (int i = 0; i < r; i++) {
		const struct meta_lock *l = &out[i];
		int e;

		a.n = 0;
		arg_lock_key(&a, in);
		arg_i64(&a, l->type);
		arg_i64(&a, (int64_t)l->start);
		arg_i64(&a, (int64_t)l->end);
		arg_i64(&a, l->pid);
		e = mp_q(m, c, MPQ_FLOCK_INSERT, &a, NULL);
		if (e < 0) {
			r = e;
			break;
		}
	}
	if (cur != stack)
		free(cur);
	return r < 0 ? r : 0;
}

static int mp_lock_set(struct meta *mm, const struct meta_lock *in, struct meta_lock *ret_conflict)
{
	struct mp *m = mp_of(mm);
	struct mp_flock x = {.in = in};
	int r = meta_lock_check(in);

	if (r < 0)
		return r;
	if (m->rdonly)
		return -EROFS;
	r = mp_tx(m, mp_lock_set_tx, &x);
	if (r == -EAGAIN && ret_conflict)
		*ret_conflict = x.conflict;
	return r;
}

static int mp_lock_get_fn(struct mp *m, struct mp_conn *c, void *arg)
{
	struct mp_flock *x = arg;
	int r = mp_lock_conflict(m, c, x->in, &x->conflict);

	if (r == 0) {
		memset(&x->conflict, 0, sizeof(x->conflict));
		x->conflict.ino = x->in->ino;
		x->conflict.kind = x->in->kind;
		x->conflict.type = META_LOCK_UN;
	}
	return r < 0 ? r : 0;
}

static int mp_lock_get(struct meta *mm, const struct meta_lock *in, struct meta_lock *ret)
{
	struct mp_flock x = {.in = in};
	int r = meta_lock_check(in);

	if (r == 0 && (in->type == META_LOCK_UN || !ret))
		r = -EINVAL;
	if (r < 0)
		return r;
	return mp_call(mp_of(mm), false, mp_lock_get_fn, &x, ret, &x.conflict, sizeof(*ret));
}

/* One DELETE: idempotent, so it runs again after a lost connection (PG-5). */
static int mp_lock_release(struct meta *mm, uint64_t ino, uint64_t client, uint64_t owner,
			   enum meta_lock_kind kind)
{
	struct mp_change x = {
	    MPQ_FLOCK_RELEASE, 4, {(int64_t)ino, (int64_t)client, (int64_t)owner, kind}, 0};

	if (ino < 1 || ino > INT64_MAX || client < 1 || client > INT64_MAX ||
	    (kind != META_LOCK_POSIX && kind != META_LOCK_FLOCK))
		return -EINVAL;
	return mp_run_write(mp_of(mm), mp_change_fn, &x);
}

static int mp_locks_release_client(struct meta *mm, uint64_t client)
{
	struct mp_change x = {MPQ_FLOCK_RELEASE_CLIENT, 1, {(int64_t)client}, 0};

	if (client < 1 || client > INT64_MAX)
		return -EINVAL;
	return mp_run_write(mp_of(mm), mp_change_fn, &x); /* one DELETE, as lock_release */
}

static void mp_lock_row(struct mp_rd *rd, void *out)
{
	struct meta_lock *l = out;

	mp_lock_cols(rd, l);
	l->alive = mp_i64(rd, 8) != 0;
}

static int mp_locks_list(struct meta *mm, uint64_t ino, struct meta_lock *ret, unsigned max)
{
	struct mp_list_by b = {{MPQ_FLOCK_LIST, ret, max, sizeof(*ret), mp_lock_row}, (int64_t)ino};

	if (ino < 1 || ino > INT64_MAX)
		return -EINVAL;
	return mp_run(mp_of(mm), mp_list_by_fn, &b);
}

const struct meta_ops meta_pg_ops = {
    .scheme = "postgres",
    .caps = META_CAP_SHARED | META_CAP_CLUSTER | META_CAP_LOCKS | META_CAP_DURABLE_COMMIT,
    .open = mp_open,
    .close = mp_close,
    .format = mp_format,
    .volume_get = mp_volume_get,
    .targets_list = mp_targets_list,
    .target_set_state = mp_target_set_state,
    .target_add = mp_target_add,
    .target_update = mp_target_update,
    .chains_list = mp_chains_list,
    .chain_update = mp_chain_update,
    .chain_set = mp_chain_set,
    .chain_promote = mp_chain_promote,
    .dirty_add = mp_dirty_add,
    .dirty_list = mp_dirty_list,
    .dirty_count = mp_dirty_count,
    .dirty_remove = mp_dirty_remove,
    .dirty_clear = mp_dirty_clear,
    .repair_set = mp_repair_set,
    .repairs_list = mp_repairs_list,
    .repair_delete = mp_repair_delete,
    .lookup = mp_lookup,
    .getattr = mp_getattr,
    .setattr = mp_setattr,
    .mknod = mp_mknod,
    .link = mp_link,
    .unlink = mp_unlink,
    .rmdir = mp_rmdir,
    .rename = mp_rename,
    .readlink = mp_readlink,
    .readdir = mp_readdir,
    .readdirplus = mp_readdirplus,
    .setxattr = mp_setxattr,
    .getxattr = mp_getxattr,
    .listxattr = mp_listxattr,
    .removexattr = mp_removexattr,
    .purge = mp_purge,
    .purge_batch = mp_purge_batch,
    .orphans = mp_orphans,
    .inodes = mp_inodes,
    .sync = mp_sync,
    .statfs = mp_statfs,
    .quota_set = mp_quota_set,
    .quota_get = mp_quota_get,
    .quota_clear = mp_quota_clear,
    .quota_reserve = mp_quota_reserve,
    .check = mp_check,
    .node_register = mp_node_register,
    .node_heartbeat = mp_node_heartbeat,
    .node_set_state = mp_node_set_state,
    .nodes_list = mp_nodes_list,
    .lease_acquire = mp_lease_acquire,
    .lease_renew = mp_lease_renew,
    .lease_release = mp_lease_release,
    .lease_get = mp_lease_get,
    .client_register = mp_client_register,
    .client_heartbeat = mp_client_heartbeat,
    .client_unregister = mp_client_unregister,
    .clients_list = mp_clients_list,
    .lock_set = mp_lock_set,
    .lock_get = mp_lock_get,
    .lock_release = mp_lock_release,
    .locks_release_client = mp_locks_release_client,
    .locks_list = mp_locks_list,
};
