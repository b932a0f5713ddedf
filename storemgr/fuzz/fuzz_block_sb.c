/* Fuzz target: the block chunk store's superblock parser (bytes from a device). Each input is
 * parsed as is, then with a valid crc32c; what parses must render back to the same fields. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storemgr/fuzz/fuzz_block.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t blk[SM_BLOCK_BS], again[SM_BLOCK_BS];
	char why[256];
	struct sm_block_sb sb, sb2;
	fuzz_block_in(blk, data, size);
	sm_block_sb_parse(blk, size < SM_BLOCK_BS ? size : SM_BLOCK_BS, &sb, why, sizeof(why));
	fuzz_block_fix_crc(blk, 232);
	if (sm_block_sb_parse(blk, SM_BLOCK_BS, &sb, why, sizeof(why)) == 0) {
		sm_block_sb_render(&sb, again);
		if (sm_block_sb_parse(again, SM_BLOCK_BS, &sb2, why, sizeof(why)) != 0 ||
		    memcmp(&sb, &sb2, sizeof(sb)) != 0)
			abort(); /* render and parse disagree */
	}
	return 0;
}
