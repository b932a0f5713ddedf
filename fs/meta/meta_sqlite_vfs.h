/* meta_sqlite_vfs — the SQLite VFS the engine opens its database with: the process's default
 * VFS, with the writes of a commit's WAL frames combined into one write. */
#ifndef BRAIDFS_META_SQLITE_VFS_H
#define BRAIDFS_META_SQLITE_VFS_H

#include <sqlite3.h>

/* The name of the VFS wrapping the current default one (registered on first use, not as the
 * default); NULL when it cannot be had, and SQLite's default is then the one to use. */
const char *meta_sqlite_vfs(void);

#endif
