/* verify_fmt — the formats of braidfs-verify (tools/verify-load.c): the self-describing blocks
 * it writes into the file system under test, and its journal of issued and acknowledged
 * writes, kept outside that file system.
 *
 * Both are read back from places that may have been damaged (finding the damage is the point),
 * so every parser here is bounded, never trusts a length or a count it read, and answers
 * -EBADMSG with a reason. Nothing here does I/O or keeps global state: every function is safe
 * from any thread on its own arguments.
 *
 * A block (block_size bytes, a multiple of VL_SECTOR, at offset block * block_size):
 *
 *     0  magic "BFSVBLK1"        8  run id (u64)     16  file (u32)     20  block_size (u32)
 *     24 offset (u64)            32 generation (u64) 40  crc32c (u32)   44  zero (u32)
 *     48 payload: a splitmix64 stream seeded from (run, file, offset, generation)
 *
 * crc32c covers the whole block with its own field zero. Integers are little-endian. The
 * payload is a function of the header, so a block's content is fully determined by
 * (run, file, offset, generation): a block from another place or another run, a torn write,
 * an old generation and a flipped bit are all told apart.
 *
 * The journal: a 64-byte header (magic "BFSVJRN1", version, the run's shape and id, crc32c),
 * then 32-byte records appended by the writers:
 *
 *     0  type (u8: 1 issue, 2 ack)  1..3 zero   4 file (u32)   8 block (u32)
 *     12 crc32c of bytes 0..11 and 16..31 (u32)                16 generation (u64)
 *     24 time: realtime clock, ns since the epoch (u64)
 *
 * ISSUE is appended before a write is sent, ACK after it was acknowledged (write() returned,
 * or the fsync that covered it returned, as the run's ack mode says). One writer owns each
 * block, so a block's issue generations are 1, 2, 3... in journal order, and its acks rise.
 * A journal cut short by a crash ends in a torn record: tolerated at the end only.
 */
#ifndef BRAIDFS_VERIFY_FMT_H
#define BRAIDFS_VERIFY_FMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VL_BLOCK_MAGIC "BFSVBLK1"
#define VL_HDR_SIZE    48
#define VL_SECTOR      512
#define VL_BLOCK_MIN   VL_SECTOR
#define VL_BLOCK_MAX   (1u << 20)

#define VL_JOURNAL_MAGIC   "BFSVJRN1"
#define VL_JOURNAL_VERSION 1
#define VL_JHDR_SIZE	   64
#define VL_REC_SIZE	   32

/* Limits on a run's shape: a journal header that asks for more is refused (the checker sizes
 * its state from it: at most VL_BLOCKS_MAX blocks, 16 bytes each). */
#define VL_FILES_MAX   65536
#define VL_THREADS_MAX 1024
#define VL_BLOCKS_MAX  (1u << 22)

/* Where a block lives and which version of it. */
struct vl_block_id {
	uint64_t run;
	uint32_t file;
	uint32_t block_size;
	uint64_t offset;
	uint64_t gen;
};

/* Fill buf (id->block_size bytes) with the block id->gen of (file, offset). */
void vl_block_fill(void *buf, const struct vl_block_id *id);

enum vl_block_state {
	VL_BLOCK_OK,	     /* a whole, correct block; *ret_gen is its generation */
	VL_BLOCK_ZERO,	     /* all zero: never written (or a hole) */
	VL_BLOCK_BAD_MAGIC,  /* not a block of ours (and not zero) */
	VL_BLOCK_BAD_CRC,    /* header says ours, checksum does not match: torn or damaged */
	VL_BLOCK_MISPLACED,  /* a whole block of ours, but of another run, file, size or offset */
	VL_BLOCK_BAD_PAYLOAD /* checksum matches, payload is not the one of its header */
};

/* Classify len bytes read at where->offset of where->file (where->gen is ignored). len must be
 * where->block_size; a shorter read is the caller's "missing" (the file ends first). */
enum vl_block_state vl_block_check(const void *buf, size_t len, const struct vl_block_id *where,
				   uint64_t *ret_gen);
const char *vl_block_state_name(enum vl_block_state s);

/* A torn write: is every VL_SECTOR of buf equal to the same sector of generation
 * gen_lo..gen_hi of where (0: all zero, i.e. never written)? scratch holds block_size bytes.
 * At most 64 generations are tried (the newest first). */
bool vl_block_sectors_from(const void *buf, const struct vl_block_id *where, uint64_t gen_lo,
			   uint64_t gen_hi, void *scratch);

enum vl_ack_mode {
	VL_ACK_WRITE = 0, /* acknowledged when write() returned */
	VL_ACK_FSYNC = 1, /* acknowledged when the fsync that covered it returned */
};

struct vl_journal_hdr {
	uint32_t version;
	uint32_t block_size;
	uint32_t files;
	uint32_t blocks_per_file;
	uint32_t threads;
	uint32_t ack_mode; /* enum vl_ack_mode */
	uint64_t run;
	int64_t start_ns; /* realtime clock at the start of the run */
};

void vl_jhdr_encode(uint8_t out[VL_JHDR_SIZE], const struct vl_journal_hdr *h);
/* 0, or -EBADMSG with a reason: short, bad magic, version, crc, or a shape out of limits. */
int vl_jhdr_parse(const uint8_t *buf, size_t len, struct vl_journal_hdr *ret, char *err,
		  size_t errlen);
/* The shape limits alone (also for a run's command line): 0 or -EINVAL with a reason. */
int vl_shape_check(uint32_t block_size, uint32_t files, uint32_t blocks_per_file, uint32_t threads,
		   char *err, size_t errlen);

enum vl_rec_type {
	VL_REC_ISSUE = 1,
	VL_REC_ACK = 2,
};

struct vl_rec {
	uint8_t type;
	uint32_t file;
	uint32_t block;
	uint64_t gen;
	int64_t time_ns; /* realtime: when the writer appended it (an ACK: when it saw the ack) */
};

void vl_rec_encode(uint8_t out[VL_REC_SIZE], const struct vl_rec *r);

/* What the journal says about every block, and how much of it there was. */
struct vl_state {
	struct vl_journal_hdr h;
	uint64_t nblocks; /* files * blocks_per_file */
	uint64_t *acked;  /* [file * blocks_per_file + block]: newest acknowledged generation */
	uint64_t *issued; /* newest issued generation (>= acked) */
	uint64_t n_issue; /* records */
	uint64_t n_ack;
	uint64_t torn_tail;  /* bytes of a last, incomplete record (a crash while appending) */
	int64_t last_ack_ns; /* time of the newest ACK record (0: none) */
};

/* Allocate the per-block state for h (already checked by vl_jhdr_parse). 0 or -ENOMEM. */
int vl_state_init(struct vl_state *s, const struct vl_journal_hdr *h);
void vl_state_fini(struct vl_state *s);

/* Apply the whole records of buf[0..len) to s; *consumed says how many bytes that was (a
 * multiple of VL_REC_SIZE; the caller keeps the rest for the next call, and what is left at
 * the very end is s->torn_tail). 0, or -EBADMSG with a reason and the record's index (bad
 * crc, unknown type, a block out of range, an issue that does not follow its block's last
 * one, an ack of a generation never issued or older than the last ack). */
int vl_journal_scan(struct vl_state *s, const uint8_t *buf, size_t len, size_t *consumed, char *err,
		    size_t errlen);

#endif
