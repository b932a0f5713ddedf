/* ds_internal — tuning hooks of the data service for its own tests and benchmarks.
 * Not part of the contract (ds.h); only dataservice/ and its tests include it. */
#ifndef BRAIDFS_DS_INTERNAL_H
#define BRAIDFS_DS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

struct ds;

/* Chunk writes of at least this many bytes send their replicas to the worker pool in parallel;
 * smaller ones are written one replica after another by the calling thread. 0: always the
 * pool; SIZE_MAX: never. Call before any I/O.
 * Default 1 MiB, from test_ds's bench (2 dir replicas, 4 MiB chunks, page cache, 2 vCPUs):
 * inline wins at 4 KiB (~5x) and 128 KiB (~1.5-2.5x) and is about even at 1 MiB; a handoff
 * costs ~10-20 us on that machine. fsync is parallel regardless: it waits for devices. */
#define DS_PAR_MIN_DEFAULT (1024 * 1024)
void ds_set_parallel_min(struct ds *ds, size_t bytes);

/* fsync / sync_all / remove: targets synced in parallel on the pool (default true) or one after
 * another by the calling thread. */
void ds_set_parallel_sync(struct ds *ds, bool parallel);

/* Weak mode: the most bytes the background replication queue holds before ds_write blocks. */
void ds_set_weak_queue_max(struct ds *ds, size_t bytes);

#endif
