/* Fuzz target: the block chunk store's log block parser and record iterator (bytes from a
 * device). Each input is parsed as is, then with a valid crc32c and its own nonce; the records
 * of a block that parses are walked, and each must stay inside the block and the limits. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storemgr/fuzz/fuzz_block.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t blk[SM_BLOCK_BS];
	char why[256];
	struct sm_block_log_hdr h;
	fuzz_block_in(blk, data, size);
	sm_block_log_parse(blk, size < SM_BLOCK_BS ? size : SM_BLOCK_BS, 0, &fuzz_block_lim, &h,
			   why, sizeof(why));
	fuzz_block_fix_crc(blk, 48);
	if (sm_block_log_parse(blk, SM_BLOCK_BS, fuzz_block_nonce(blk), &fuzz_block_lim, &h, why,
			       sizeof(why)) != 0)
		return 0;
	size_t pos = 0;
	uint32_t n = 0;
	struct sm_block_rec r;
	while (sm_block_rec_next(blk, &h, &pos, &r)) {
		n++;
		if (pos > h.used ||
		    (r.crcs && (r.crcs < blk || r.crcs + 4 * (size_t)r.n > blk + SM_BLOCK_BS)))
			abort();
		if (r.type == SM_BLOCK_REC_MAP &&
		    (r.pb < fuzz_block_lim.data_start || r.pb + r.n > fuzz_block_lim.data_end))
			abort();
	}
	if (n != h.count)
		abort(); /* the parser accepted what the iterator cannot walk */
	return 0;
}
