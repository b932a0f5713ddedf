/* fuzz_block — what the block chunk store's fuzz targets share: inputs as device blocks, and a
 * checksum fixed up so that the fuzzer also reaches the checks behind it. Offsets are those of
 * docs/format.md (the superblock's crc at 232, a log block's at 48, a checkpoint's at 40). */
#ifndef BRAIDFS_FUZZ_BLOCK_H
#define BRAIDFS_FUZZ_BLOCK_H

#include <stdint.h>
#include <string.h>

#include "common/crc32c.h"
#include "storemgr/sm_block_int.h"

/* Chunk size and data region the records and runs are checked against. */
static const struct sm_block_limits fuzz_block_lim = {64 * 1024, 100, 1000000};

/* The input as one 4 KiB block (cut or zero padded). */
static inline void fuzz_block_in(uint8_t out[SM_BLOCK_BS], const uint8_t *data, size_t size)
{
	memset(out, 0, SM_BLOCK_BS);
	memcpy(out, data, size < SM_BLOCK_BS ? size : SM_BLOCK_BS);
}

/* Store the crc32c of the whole block (the field at `at` counted as zero) at `at`. */
static inline void fuzz_block_fix_crc(uint8_t *blk, size_t at)
{
	memset(blk + at, 0, 4);
	uint32_t c = crc32c(0, blk, SM_BLOCK_BS);
	for (int i = 0; i < 4; i++)
		blk[at + (size_t)i] = (uint8_t)(c >> (8 * i));
}

/* The nonce a block claims (bytes 8..15): parsing with it gets past the nonce check. */
static inline uint64_t fuzz_block_nonce(const uint8_t *blk)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | blk[8 + i];
	return v;
}

#endif
