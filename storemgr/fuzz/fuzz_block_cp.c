/* Fuzz target: the block chunk store's checkpoint image parser (bytes from a device). Each
 * input is parsed as is, then with its body length and crc32c fixed up and its own nonce; every
 * run handed to the callback must be in order, inside its chunk and the data region. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storemgr/fuzz/fuzz_block.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int check_cb(void *ctx, uint64_t ino, uint32_t idx, uint32_t length,
		    const struct sm_block_cp_run *runs, uint32_t nruns)
{
	const uint8_t *end = ctx;
	(void)ino;
	(void)idx;
	uint32_t next = 0;
	for (uint32_t i = 0; i < nruns; i++) {
		const struct sm_block_cp_run *r = &runs[i];
		uint64_t nblk = ((uint64_t)length + SM_BLOCK_BS - 1) / SM_BLOCK_BS;
		if (r->first < next || (uint64_t)r->first + r->n > nblk ||
		    r->pb < fuzz_block_lim.data_start || r->pb + r->n > fuzz_block_lim.data_end ||
		    (r->crcs && r->crcs + 4 * (size_t)r->n > end))
			abort();
		next = r->first + r->n;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (1u << 20))
		return 0;
	uint8_t *img = malloc(size + SM_BLOCK_CP_HDR);
	if (!img)
		return 0;
	memcpy(img, data, size);
	char why[256];
	struct sm_block_cp_hdr h;
	sm_block_cp_parse(img, size, 0, &fuzz_block_lim, check_cb, img + size, &h, why,
			  sizeof(why));
	if (size >= SM_BLOCK_CP_HDR) {
		/* re-seal: the header's body length and crc made right, the rest as given */
		struct sm_block_cp_hdr fix = {.nonce = fuzz_block_nonce(img),
					      .body = size - SM_BLOCK_CP_HDR};
		fix.seq = 0;
		fix.nchunks = 0;
		for (int i = 7; i >= 0; i--)
			fix.seq = fix.seq << 8 | img[16 + i];
		for (int i = 7; i >= 0; i--)
			fix.nchunks = fix.nchunks << 8 | img[24 + i];
		sm_block_cp_seal(img, &fix);
		sm_block_cp_parse(img, size, fix.nonce, &fuzz_block_lim, check_cb, img + size, &h,
				  why, sizeof(why));
	}
	free(img);
	return 0;
}
