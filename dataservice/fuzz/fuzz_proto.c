/* Fuzz target: the data service's frame decoder and every payload decoder (bytes from a
 * socket), with the round trip encode(decode(x)) == x checked for whatever decodes (PROTO-4).
 *
 * Each input is used twice:
 *   1. as a whole frame, as it came (header checksum, header fields, payload checksum, body);
 *   2. byte 0 picks an opcode, byte 1 the direction and status, the rest is the payload of a
 *      frame whose header and checksums are made valid, so that the fuzzer reaches every
 *      payload decoder behind the checksums.
 * A decoded frame must re-encode to the same bytes; anything else aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crc32c.h"
#include "dataservice/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint16_t ops[] = {
#define FUZZ_OP(name, num, str) PROTO_OP_##name,
    PROTO_OPS(FUZZ_OP)
#undef FUZZ_OP
};

static void check_frame(const uint8_t *buf, size_t len)
{
	struct proto_hdr h;
	struct proto_body b;
	char err[256];
	if (proto_frame_decode(buf, len, &h, &b, err, sizeof(err)) != 0)
		return;
	if (h.op == PROTO_OP_LIST && (h.flags & PROTO_F_REPLY) && h.status == 0)
		for (uint32_t i = 0; i <= b.count; i++) { /* one past the end: must read nothing */
			struct sm_chunk_info c;
			proto_list_get(&b, i, &c);
		}
	uint8_t hb[PROTO_HDR_SIZE];
	proto_hdr_encode(&h, hb);
	if (memcmp(hb, buf, PROTO_HDR_SIZE) != 0)
		abort(); /* a header that decodes re-encodes to itself */
	uint8_t fixed[PROTO_MAX_FIXED];
	ssize_t fl = proto_body_encode(&h, &b, fixed, sizeof(fixed));
	if (fl < 0)
		abort(); /* what decodes, encodes */
	size_t tl = proto_has_tail(&h) ? b.data_len : 0;
	if ((size_t)fl + tl != h.len || memcmp(fixed, buf + PROTO_HDR_SIZE, (size_t)fl) != 0 ||
	    (tl && memcmp(b.data, buf + PROTO_HDR_SIZE + fl, tl) != 0))
		abort(); /* ... to the same bytes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_frame(data, size);
	if (size < 2 || size - 2 > PROTO_MAX_PAYLOAD)
		return 0;
	size_t plen = size - 2;
	uint8_t *buf = malloc(PROTO_HDR_SIZE + plen);
	if (!buf)
		return 0;
	struct proto_hdr h = {
	    .version = PROTO_VERSION_MIN,
	    .op = ops[data[0] % (sizeof(ops) / sizeof(ops[0]))],
	    .flags = (data[1] & 1) ? PROTO_F_REPLY : ((data[1] & 8) ? PROTO_F_RETRY : 0),
	    .status = (data[1] & 1) && (data[1] & 2) ? -(int32_t)(1 + (data[1] >> 2)) : 0,
	    .req_id = data[0],
	    .chain = PROTO_NO_CHAIN,
	    .len = (uint32_t)plen,
	    .pcrc = crc32c(0, data + 2, plen),
	};
	if (h.op == PROTO_OP_LIST && (h.flags & PROTO_F_REPLY) && !h.status && (data[1] & 4))
		h.flags |= PROTO_F_MORE;
	proto_hdr_encode(&h, buf);
	memcpy(buf + PROTO_HDR_SIZE, data + 2, plen);
	check_frame(buf, PROTO_HDR_SIZE + plen);
	free(buf);
	return 0;
}
