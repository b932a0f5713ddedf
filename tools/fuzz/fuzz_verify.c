/* Fuzz target: braidfs-verify's journal and blocks (bytes read back from a disk and from the
 * file system under test). The input is a journal: its header is parsed, and when valid the
 * records are scanned in pieces of varying size (as the checker reads them) with the state
 * that header sizes; then every VL_SECTOR..block_size slice of the input is classified as a
 * block and, when damaged, tried as a torn write. Nothing may read out of bounds, and a valid
 * block must classify as OK with its generation. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tools/verify_fmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vl_journal_hdr h;
	char why[256];
	if (vl_jhdr_parse(data, size, &h, why, sizeof(why)) == 0) {
		/* keep the fuzzer's memory bounded: the header may ask for VL_BLOCKS_MAX blocks */
		if ((uint64_t)h.files * h.blocks_per_file > 65536)
			h.blocks_per_file = (uint32_t)(65536 / h.files);
		if (h.blocks_per_file && (uint64_t)h.files * h.blocks_per_file >= h.threads) {
			struct vl_state s;
			if (vl_state_init(&s, &h) == 0) {
				size_t off = VL_JHDR_SIZE, step = 1 + (size % 97);
				while (off < size) {
					size_t len = size - off < step ? size - off : step;
					size_t used = 0;
					if (vl_journal_scan(&s, data + off, len, &used, why,
							    sizeof(why)) != 0)
						break;
					if (used > len || used % VL_REC_SIZE)
						abort();
					off += used ? used : len;
					step = step * 3 % 101 + 1;
				}
				for (uint64_t k = 0; k < s.nblocks; k++)
					if (s.acked[k] > s.issued[k])
						abort();
				vl_state_fini(&s);
			}
		}
	}
	static uint8_t block[8192], scratch[8192];
	struct vl_block_id where = {.run = 1, .file = 0, .block_size = 1024, .offset = 0};
	size_t len = size < sizeof(block) ? size : sizeof(block);
	memset(block, 0, sizeof(block));
	memcpy(block, data, len);
	for (uint32_t bs = VL_SECTOR; bs <= sizeof(block); bs *= 2) {
		where.block_size = bs;
		uint64_t g = 0;
		enum vl_block_state st = vl_block_check(block, bs, &where, &g);
		if (st != VL_BLOCK_OK && st != VL_BLOCK_ZERO)
			vl_block_sectors_from(block, &where, 0, 3, scratch);
		vl_block_state_name(st);
	}
	/* a valid block always classifies as itself */
	where.block_size = 1024;
	where.gen = size;
	vl_block_fill(block, &where);
	uint64_t g = 0;
	if (vl_block_check(block, 1024, &where, &g) != VL_BLOCK_OK || g != size)
		abort();
	return 0;
}
