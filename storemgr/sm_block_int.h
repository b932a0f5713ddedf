/* sm_block_int — internals of the block chunk store (sm_block.c) that its tests, fuzzers and
 * benchmark need: the on-device structures, their bounded parsers, and the target's counters.
 *
 * Only storemgr/, its tests, tests/fuzz and tests/bench include this file; the contract of the
 * storage manager stays sm.h. The format is described in docs/format.md; FMT-n below are its
 * invariants.
 *
 * Every parser takes bytes read from a device (untrusted): it reads at most `len` bytes,
 * checks magic, crc32c and every field's range, and answers 0 or -EBADMSG with a one-line
 * reason in `why`. None allocates.
 */
#ifndef BRAIDFS_SM_BLOCK_INT_H
#define BRAIDFS_SM_BLOCK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storemgr/dev.h"
#include "storemgr/sm.h"

#define SM_BLOCK_BS	     4096u /* FMT-1: the block size of every region */
#define SM_BLOCK_VERSION     1u	   /* of the on-device format (docs/format.md) */
#define SM_BLOCK_MIN_BYTES   (64ull << 20)
#define SM_BLOCK_PROBE_BYTES (64u << 10) /* format() refuses non-zero bytes in here (SM-6) */

#define SM_BLOCK_SB_MAGIC  "BRAIDSB" /* 8 bytes with its NUL; devices are detected by it */
#define SM_BLOCK_LOG_MAGIC "BRAIDLG"
#define SM_BLOCK_CP_MAGIC  "BRAIDCP"

/* ---------------------------------------------------------------------------------------- */
/* superblock (FMT-2) */

struct sm_block_sb {
	uint32_t version;
	uint32_t copy; /* the slot this copy was written to: 0 (block 0) or 1 (block 1) */
	uint64_t generation;
	uint64_t nonce; /* random per format(): carried by every log block and checkpoint */
	struct sm_identity id;
	/* layout (FMT-1), in blocks */
	uint64_t dev_blocks; /* of the device, used by this target */
	uint64_t log_start, log_blocks;
	uint64_t cp_start[2], cp_blocks;
	uint64_t data_start, data_blocks;
	uint64_t max_chunks;
	/* the current checkpoint (FMT-9) */
	uint32_t cp_area;    /* 0 or 1 */
	uint32_t cp_crc;     /* of its cp_len bytes */
	uint64_t cp_len;     /* bytes */
	uint64_t cp_seq;     /* it holds every log record in blocks of sequence <= cp_seq */
	uint64_t replay_pos; /* log block index where replay starts: (cp_seq + 1) % log_blocks */
};

/* Parse one superblock copy (the first SM_BLOCK_BS bytes of buf; len must be at least that).
 * Checks magic, crc32c, version, identity and that the layout is inside dev_blocks, in order
 * and not overlapping. */
int sm_block_sb_parse(const void *buf, size_t len, struct sm_block_sb *ret, char *why,
		      size_t whylen);
/* Render sb into out[SM_BLOCK_BS] (zero padded, crc32c filled in). */
void sm_block_sb_render(const struct sm_block_sb *sb, void *out);
/* The region sizes for a device of dev_blocks blocks (FMT-12); -ENOSPC when too small. */
int sm_block_layout(uint64_t dev_blocks, struct sm_block_sb *ret);
/* Does buf (len bytes) start with the superblock magic? (for format's "what is there") */
bool sm_block_has_magic(const void *buf, size_t len);

/* ---------------------------------------------------------------------------------------- */
/* log blocks and records (FMT-6) */

#define SM_BLOCK_LOG_HDR 64u
enum sm_block_rec_type {
	SM_BLOCK_REC_MAP = 1,	 /* blocks [first, first+n) of (ino, idx) -> pb.., length >= end */
	SM_BLOCK_REC_UNMAP = 2,	 /* blocks [first, first+n) become holes (punch) */
	SM_BLOCK_REC_SETLEN = 3, /* length = len; blocks past it dropped; 0 deletes the chunk */
	SM_BLOCK_REC_REMOVE = 4, /* every chunk of ino with idx >= idx is deleted */
};
#define SM_BLOCK_REC_HDR       16u
#define SM_BLOCK_REC_MAP_FIXED (SM_BLOCK_REC_HDR + 24u)
#define SM_BLOCK_MAP_UNWRITTEN 0x1u /* allocate(): blocks reserved, read as zeros, no crcs */
/* The most blocks one MAP record can carry (its crcs fill one log block). */
#define SM_BLOCK_REC_MAX_BLOCKS ((SM_BLOCK_BS - SM_BLOCK_LOG_HDR - SM_BLOCK_REC_MAP_FIXED) / 4u)

struct sm_block_log_hdr {
	uint64_t nonce;
	uint64_t seq;
	uint64_t generation; /* the superblock generation of the open that wrote it */
	uint64_t durable;    /* every log block of sequence <= durable was flushed before it */
	uint32_t count;	     /* records */
	uint32_t used;	     /* bytes of records after the header */
};

struct sm_block_rec {
	uint8_t type;
	uint64_t ino;
	uint32_t idx;
	uint32_t len;	     /* MAP: the chunk is at least this long after; SETLEN: its length */
	uint32_t first;	     /* MAP, UNMAP: first block within the chunk */
	uint32_t n;	     /* MAP, UNMAP: blocks */
	uint32_t flags;	     /* MAP: SM_BLOCK_MAP_UNWRITTEN */
	uint64_t pb;	     /* MAP: first physical block (absolute block number on the device) */
	const uint8_t *crcs; /* MAP of written blocks: n little-endian crc32c, inside the buffer */
};

/* Limits a record must respect: blocks of a chunk, and the data region. */
struct sm_block_limits {
	uint32_t chunk_size;
	uint64_t data_start, data_end; /* [data_start, data_end) in blocks */
};

/* Parse a log block: header (magic, nonce, crc32c over the block) and every record's framing
 * and ranges. Records are then read with sm_block_rec_next(). */
int sm_block_log_parse(const void *buf, size_t len, uint64_t nonce,
		       const struct sm_block_limits *lim, struct sm_block_log_hdr *ret, char *why,
		       size_t whylen);
/* Iterate the records of a block that sm_block_log_parse() accepted: *pos starts at 0.
 * Returns true and fills *ret while there is one. */
bool sm_block_rec_next(const void *buf, const struct sm_block_log_hdr *h, size_t *pos,
		       struct sm_block_rec *ret);
/* Append rec to a log block being built (buf[SM_BLOCK_BS], *used bytes of records so far).
 * Returns false when it does not fit. */
bool sm_block_rec_put(void *buf, uint32_t *used, const struct sm_block_rec *rec);
/* Bytes rec takes in a log block. */
uint32_t sm_block_rec_size(const struct sm_block_rec *rec);
/* Fill in the header and crc32c of a log block whose records are in place. */
void sm_block_log_seal(void *buf, const struct sm_block_log_hdr *h);

/* ---------------------------------------------------------------------------------------- */
/* checkpoint image (FMT-9) */

#define SM_BLOCK_CP_HDR 64u
struct sm_block_cp_hdr {
	uint64_t nonce;
	uint64_t seq;
	uint64_t nchunks;
	uint64_t body; /* bytes after the header */
};
/* One run of a checkpoint entry, as sm_block_cp_parse() hands it out. */
struct sm_block_cp_run {
	uint32_t first, n, flags;
	uint64_t pb;
	const uint8_t *crcs; /* n little-endian crc32c unless flags & SM_BLOCK_MAP_UNWRITTEN */
};
/* Called once per chunk, with its runs; non-zero stops the parse with that value. */
typedef int (*sm_block_cp_cb)(void *ctx, uint64_t ino, uint32_t idx, uint32_t length,
			      const struct sm_block_cp_run *runs, uint32_t nruns);
/* Parse a checkpoint image of len bytes (header, crc32c, every entry and run within limits:
 * runs in order, inside the chunk's length and the data region). cb may be NULL (check only). */
int sm_block_cp_parse(const void *buf, size_t len, uint64_t nonce,
		      const struct sm_block_limits *lim, sm_block_cp_cb cb, void *ctx,
		      struct sm_block_cp_hdr *ret, char *why, size_t whylen);

/* Build an image: entries and runs after the header (each returns the bytes it wrote: an entry
 * SM_BLOCK_CP_ENTRY, a run SM_BLOCK_CP_RUN + 4 per crc of written blocks), then seal it (header
 * with h->body bytes of entries, crc32c). */
#define SM_BLOCK_CP_ENTRY 20u
#define SM_BLOCK_CP_RUN	  20u
size_t sm_block_cp_put_entry(uint8_t *p, uint64_t ino, uint32_t idx, uint32_t length,
			     uint32_t nruns);
size_t sm_block_cp_put_run(uint8_t *p, uint32_t first, uint32_t n, uint32_t flags, uint64_t pb,
			   const uint32_t *crcs);
void sm_block_cp_seal(uint8_t *buf, const struct sm_block_cp_hdr *h);

/* ---------------------------------------------------------------------------------------- */
/* a target's counters (what sm_ops.counters reports, and more) */

struct sm_block_stats {
	uint64_t csum_errors;	 /* blocks whose crc32c did not match when read (FMT-11) */
	uint64_t bytes_read;	 /* payload returned by read() */
	uint64_t bytes_written;	 /* payload taken by write() */
	uint64_t blocks_written; /* data blocks written (copy-on-write, read-modify-write) */
	uint64_t log_blocks;	 /* log blocks written by this open */
	uint64_t log_records;	 /* records in them */
	uint64_t log_full_waits; /* writers that waited for a checkpoint to free log space */
	uint64_t flushes;	 /* device flushes (sync, checkpoint, superblock) */
	uint64_t syncs;		 /* sync_ino / sync_all calls */
	uint64_t checkpoints;	 /* written by this open */
	uint64_t cp_bytes;	 /* size of the last checkpoint image */
	uint64_t cp_freeze_ns;	 /* writers were held while the last index was copied */
	uint64_t replayed;	 /* log records applied at open */
	uint64_t dropped;     /* tail records dropped at open: their data never reached the disk */
	uint64_t used_blocks; /* data blocks mapped */
	uint64_t pending_blocks; /* freed, waiting for a flush before reuse (FMT-5) */
	uint64_t data_blocks;	 /* of the data region */
	uint64_t chunks;
};
int sm_block_stats(struct sm_target *t, struct sm_block_stats *ret);

/* Check the in-memory index of an open target: no block mapped twice, every mapping inside the
 * data region, the allocator's free + used + pending == data blocks, and (verify_data) every
 * mapped written block's crc32c against the device. 0, or -EBADMSG / -errno with why. */
int sm_block_check(struct sm_target *t, bool verify_data, char *why, size_t whylen);
/* The physical block (device block number) that holds block blk of chunk (ino, idx):
 * 0 when it is a hole or the chunk is missing. For corruption tests. */
uint64_t sm_block_phys(struct sm_target *t, uint64_t ino, uint32_t idx, uint32_t blk);
/* Write a checkpoint now (what the log does when half full). */
int sm_block_checkpoint(struct sm_target *t);

/* format() and open() over a device the caller opened (a test's fault-injecting device): url is
 * only the name in messages and in the target. open_dev owns dev from the call on (closed by
 * sm_close, or at once on failure); format_dev leaves it open. */
int sm_block_format_dev(struct sm_dev *dev, const char *url, const struct sm_identity *id,
			bool force, bool dry_run, char *err, size_t errlen);
int sm_block_open_dev(struct sm_dev *dev, const char *url, const struct sm_identity *expect,
		      struct sm_target **ret, char *err, size_t errlen);

#endif
