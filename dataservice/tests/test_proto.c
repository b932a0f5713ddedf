/* The wire codec (proto.h): round trips of every opcode in both directions, canonical
 * encoding (PROTO-4), every malformed-input case the decoders must refuse (PROTO-2/3/5), and
 * PROTO-1 checked with a guard page: each payload is decoded from the very end of a readable
 * page, cut at every length, so a read past the given length faults. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/util.h"
#include "dataservice/proto.h"

#define VOL "4a8d3f0e-6b1c-4f5e-9a2b-0c3d4e5f6a7b"
#define TGT "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"

static const uint16_t all_ops[] = {
#define OP_LIST_ITEM(name, num, str) PROTO_OP_##name,
    PROTO_OPS(OP_LIST_ITEM)
#undef OP_LIST_ITEM
};

static uint8_t data4k[4096];
static uint8_t entries[3 * PROTO_LIST_ENTRY_SIZE];

/* A body with every field an opcode may use set to something non-zero and valid. */
static void sample(uint16_t op, bool reply, struct proto_body *b)
{
	memset(b, 0, sizeof(*b));
	b->ino = 0x0123456789abcdefULL;
	b->idx = 0xfedcba98u;
	b->off = 12345;
	b->len = 4096;
	b->whence = PROTO_SEEK_HOLE;
	b->origin = 0x1122334455667788ULL;
	b->write_id = 99;
	b->value = 0xdeadbeefcafef00dULL;
	b->count = reply ? 3 : 17;
	b->hello = (struct proto_hello){.min_version = 1,
					.max_version = 1,
					.version = 1,
					.max_payload = PROTO_MAX_PAYLOAD,
					.node_id = 7,
					.instance = 8};
	strcpy(b->hello.volume_uuid, VOL);
	b->ident = (struct sm_identity){.format_version = 1, .target_id = 3, .chunk_size = 1 << 22};
	strcpy(b->ident.volume_uuid, VOL);
	strcpy(b->ident.target_uuid, TGT);
	b->statfs = (struct sm_statfs){1000, 500, 400, 42};
	if ((op == PROTO_OP_WRITE && !reply) || (op == PROTO_OP_READ && reply)) {
		b->data = data4k;
		b->data_len = sizeof(data4k);
	}
	if (op == PROTO_OP_LIST && reply) {
		for (uint32_t i = 0; i < 3; i++) {
			struct sm_chunk_info c = {.ino = 100 + i, .idx = i, .length = 1000u * i};
			proto_list_put(entries, i, &c);
		}
		b->data = entries;
		b->data_len = sizeof(entries);
	}
}

static struct proto_hdr hdr_of(uint16_t op, bool reply, int status)
{
	return (struct proto_hdr){.version = 1,
				  .op = op,
				  .flags = reply ? PROTO_F_REPLY : 0,
				  .status = status,
				  .req_id = 0x0102030405060708ULL,
				  .epoch = 77,
				  .chain = 5,
				  .target = 6};
}

/* fixed part + tail into buf; returns the payload length */
static size_t encode_payload(const struct proto_hdr *h, const struct proto_body *b, uint8_t *buf,
			     size_t cap)
{
	ssize_t n = proto_body_encode(h, b, buf, cap);
	assert_true(n >= 0);
	size_t len = (size_t)n;
	if (proto_has_tail(h) && b->data_len) {
		assert_true(len + b->data_len <= cap);
		memcpy(buf + len, b->data, b->data_len);
		len += b->data_len;
	}
	return len;
}

/* A whole frame: header with both crcs. */
static size_t encode_frame(struct proto_hdr h, const struct proto_body *b, uint8_t *buf, size_t cap)
{
	size_t len = encode_payload(&h, b, buf + PROTO_HDR_SIZE, cap - PROTO_HDR_SIZE);
	h.len = (uint32_t)len;
	h.pcrc = crc32c(0, buf + PROTO_HDR_SIZE, len);
	proto_hdr_encode(&h, buf);
	return PROTO_HDR_SIZE + len;
}

static void test_op_names(void **state)
{
	(void)state;
	assert_string_equal(proto_op_name(PROTO_OP_WRITE), "write");
	assert_string_equal(proto_op_name(PROTO_OP_CHUNK_LENGTH), "chunk_length");
	assert_null(proto_op_name(0));
	assert_null(proto_op_name(4));
	assert_null(proto_op_name(PROTO_OP_MAX + 1));
	assert_true(proto_op_mutates(PROTO_OP_PUNCH));
	assert_false(proto_op_mutates(PROTO_OP_READ));
	assert_false(proto_op_mutates(PROTO_OP_SYNC_ALL));
}

/* Every opcode, both directions: frame -> decode -> same fields -> encode -> same bytes. */
static void test_round_trip(void **state)
{
	(void)state;
	static uint8_t buf[PROTO_HDR_SIZE + PROTO_MAX_FIXED + 8192];
	for (size_t i = 0; i < ARRAY_SIZE(all_ops); i++) {
		for (int reply = 0; reply < 2; reply++) {
			struct proto_body b, d;
			sample(all_ops[i], reply, &b);
			struct proto_hdr h = hdr_of(all_ops[i], reply, 0), got;
			size_t n = encode_frame(h, &b, buf, sizeof(buf));
			char err[200] = "";
			int r = proto_frame_decode(buf, n, &got, &d, err, sizeof(err));
			if (r)
				fail_msg("%s %s: %d %s", proto_op_name(h.op),
					 reply ? "reply" : "req", r, err);
			assert_int_equal(got.op, h.op);
			assert_int_equal(got.flags, h.flags);
			assert_int_equal(got.req_id, h.req_id);
			assert_int_equal(got.epoch, h.epoch);
			assert_int_equal(got.chain, h.chain);
			assert_int_equal(got.target, h.target);
			assert_int_equal(got.len, n - PROTO_HDR_SIZE);
			/* the tail is where it was put */
			assert_int_equal(d.data_len, b.data_len);
			if (b.data_len)
				assert_memory_equal(d.data, b.data, b.data_len);
			/* canonical: encoding what was decoded gives the bytes back */
			uint8_t again[sizeof(buf)];
			size_t m = encode_frame(got, &d, again, sizeof(again));
			assert_int_equal(m, n);
			assert_memory_equal(again, buf, n);
		}
	}
	/* field by field for a few */
	struct proto_body b, d;
	struct proto_hdr h = hdr_of(PROTO_OP_WRITE, false, 0), got;
	sample(PROTO_OP_WRITE, false, &b);
	size_t n = encode_frame(h, &b, buf, sizeof(buf));
	assert_int_equal(proto_frame_decode(buf, n, &got, &d, NULL, 0), 0);
	assert_int_equal(d.ino, b.ino);
	assert_int_equal(d.idx, b.idx);
	assert_int_equal(d.off, b.off);
	assert_int_equal(d.origin, b.origin);
	assert_int_equal(d.write_id, b.write_id);
	assert_int_equal(d.len, 0); /* not a WRITE field */
	h = hdr_of(PROTO_OP_HELLO, true, 0);
	sample(PROTO_OP_HELLO, true, &b);
	n = encode_frame(h, &b, buf, sizeof(buf));
	assert_int_equal(proto_frame_decode(buf, n, &got, &d, NULL, 0), 0);
	assert_string_equal(d.hello.volume_uuid, VOL);
	assert_int_equal(d.hello.instance, 8);
	assert_int_equal(d.hello.max_payload, PROTO_MAX_PAYLOAD);
	h = hdr_of(PROTO_OP_LIST, true, 0);
	sample(PROTO_OP_LIST, true, &b);
	n = encode_frame(h, &b, buf, sizeof(buf));
	assert_int_equal(proto_frame_decode(buf, n, &got, &d, NULL, 0), 0);
	assert_int_equal(d.count, 3);
	struct sm_chunk_info c;
	proto_list_get(&d, 2, &c);
	assert_int_equal(c.ino, 102);
	assert_int_equal(c.idx, 2);
	assert_int_equal(c.length, 2000);
	proto_list_get(&d, 3, &c); /* past count: zeros, nothing read */
	assert_int_equal(c.ino, 0);
	/* an empty volume uuid travels as zeros and comes back empty */
	h = hdr_of(PROTO_OP_HELLO, false, 0);
	sample(PROTO_OP_HELLO, false, &b);
	b.hello.volume_uuid[0] = '\0';
	n = encode_frame(h, &b, buf, sizeof(buf));
	assert_int_equal(proto_frame_decode(buf, n, &got, &d, NULL, 0), 0);
	assert_string_equal(d.hello.volume_uuid, "");
}

static void test_error_reply(void **state)
{
	(void)state;
	uint8_t buf[1024];
	struct proto_body b, d;
	memset(&b, 0, sizeof(b));
	strcpy(b.reason, "chain 3 is at epoch 9, not 8");
	struct proto_hdr h = hdr_of(PROTO_OP_WRITE, true, -ESTALE), got;
	h.epoch = 9;
	size_t n = encode_frame(h, &b, buf, sizeof(buf));
	assert_int_equal(proto_frame_decode(buf, n, &got, &d, NULL, 0), 0);
	assert_int_equal(got.status, -ESTALE);
	assert_int_equal(got.epoch, 9);
	assert_string_equal(d.reason, b.reason);
	assert_false(proto_has_tail(&got));
	/* an empty reason is fine */
	b.reason[0] = '\0';
	n = encode_frame(h, &b, buf, sizeof(buf));
	assert_int_equal(proto_frame_decode(buf, n, &got, &d, NULL, 0), 0);
	assert_string_equal(d.reason, "");
	/* what the decoder refuses, the encoder refuses */
	strcpy(b.reason, "tab\there");
	assert_int_equal(proto_body_encode(&h, &b, buf, sizeof(buf)), -EINVAL);
	char err[200];
	uint8_t bad[PROTO_MAX_REASON + 1];
	memset(bad, 'x', sizeof(bad));
	assert_int_equal(proto_body_decode(&h, bad, sizeof(bad), &d, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "reason of 201 bytes exceeds 200"));
	bad[3] = 0x7f;
	assert_int_equal(proto_body_decode(&h, bad, 10, &d, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "not printable"));
}

static void expect_hdr(const uint8_t *buf, size_t len, int want, const char *needle)
{
	struct proto_hdr h;
	char err[200] = "";
	int r = proto_hdr_decode(buf, len, &h, err, sizeof(err));
	if (r != want || !strstr(err, needle))
		fail_msg("got %d '%s', want %d '%s'", r, err, want, needle);
}

/* Re-encode a header with one field changed (crc made valid again). */
static void hdr_with(struct proto_hdr h, uint8_t *out)
{
	proto_hdr_encode(&h, out);
}

static void test_header_malformed(void **state)
{
	(void)state;
	uint8_t buf[PROTO_HDR_SIZE];
	struct proto_hdr h = hdr_of(PROTO_OP_READ, false, 0), got;
	hdr_with(h, buf);
	assert_int_equal(proto_hdr_decode(buf, sizeof(buf), &got, NULL, 0), 0);
	expect_hdr(buf, PROTO_HDR_SIZE - 1, -EBADMSG, "short frame header: 55 of 56 bytes");
	for (size_t i = 0; i < PROTO_HDR_SIZE; i++) { /* any flipped bit: the crc catches it */
		buf[i] ^= 0x10;
		expect_hdr(buf, sizeof(buf), -EBADMSG, "checksum mismatch");
		buf[i] ^= 0x10;
	}
	/* a valid crc over bad fields */
	uint8_t raw[PROTO_HDR_SIZE];
	memcpy(raw, buf, sizeof(raw));
	raw[0] = 'X';
	uint32_t c = crc32c(0, raw, 52);
	memcpy(raw + 52, &c, 4);
	expect_hdr(raw, sizeof(raw), -EBADMSG, "bad frame magic");
	memcpy(raw, buf, sizeof(raw));
	raw[48] = 1;
	c = crc32c(0, raw, 52);
	memcpy(raw + 52, &c, 4);
	expect_hdr(raw, sizeof(raw), -EBADMSG, "reserved header bytes");

	/* one bad field each, with a valid crc */
	static const struct {
		struct proto_hdr h;
		int want;
		const char *needle;
	} bad[] = {
	    {{.version = 2, .op = 16}, -EPROTONOSUPPORT, "protocol version 2 not supported"},
	    {{.version = 0, .op = 16}, -EPROTONOSUPPORT, "version 0"},
	    {{.version = 1, .op = 9}, -EBADMSG, "unknown opcode 9"},
	    {{.version = 1, .op = 16, .flags = 0x80}, -EBADMSG, "unknown header flags 0x80"},
	    {{.version = 1, .op = 16, .flags = PROTO_F_REPLY | PROTO_F_RETRY},
	     -EBADMSG,
	     "RETRY flag on a reply"},
	    {{.version = 1, .op = PROTO_OP_WRITE, .flags = PROTO_F_LOCAL}, -EBADMSG, "LOCAL flag"},
	    {{.version = 1, .op = PROTO_OP_READ, .flags = PROTO_F_REPLY | PROTO_F_LOCAL},
	     -EBADMSG,
	     "LOCAL flag"},
	    {{.version = 1, .op = PROTO_OP_LIST, .flags = PROTO_F_MORE}, -EBADMSG, "MORE flag"},
	    {{.version = 1, .op = 16, .flags = PROTO_F_REPLY | PROTO_F_MORE},
	     -EBADMSG,
	     "MORE flag"},
	    {{.version = 1,
	      .op = PROTO_OP_LIST,
	      .flags = PROTO_F_REPLY | PROTO_F_MORE,
	      .status = -5},
	     -EBADMSG,
	     "MORE flag"},
	    {{.version = 1, .op = 16, .status = -5}, -EBADMSG, "request with status -5"},
	    {{.version = 1, .op = 16, .flags = PROTO_F_REPLY, .status = 1},
	     -EBADMSG,
	     "reply status 1"},
	    {{.version = 1, .op = 16, .flags = PROTO_F_REPLY, .status = -4096},
	     -EBADMSG,
	     "reply status -4096"},
	    {{.version = 1, .op = 16, .len = PROTO_MAX_PAYLOAD + 1}, -EBADMSG, "exceeds"},
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		hdr_with(bad[i].h, buf);
		expect_hdr(buf, sizeof(buf), bad[i].want, bad[i].needle);
	}
	struct proto_hdr x = h;
	x.len = PROTO_MAX_PAYLOAD;
	hdr_with(x, buf);
	assert_int_equal(proto_hdr_decode(buf, sizeof(buf), &got, NULL, 0), 0);
}

static void test_frame_malformed(void **state)
{
	(void)state;
	static uint8_t buf[PROTO_HDR_SIZE + PROTO_MAX_FIXED + 8192];
	struct proto_body b, d;
	struct proto_hdr h = hdr_of(PROTO_OP_WRITE, false, 0), got;
	sample(PROTO_OP_WRITE, false, &b);
	size_t n = encode_frame(h, &b, buf, sizeof(buf));
	char err[200];
	assert_int_equal(proto_frame_decode(buf, n - 1, &got, &d, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "header says"));
	buf[n - 1] ^= 1; /* one data bit: the payload crc */
	assert_int_equal(proto_frame_decode(buf, n, &got, &d, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "write payload checksum mismatch"));
}

/* Decode payload p (of len bytes) as h's body, expecting -EBADMSG and a reason. */
static void expect_body(const struct proto_hdr *h, const uint8_t *p, size_t len, const char *needle)
{
	struct proto_body d;
	char err[200] = "";
	int r = proto_body_decode(h, p, len, &d, err, sizeof(err));
	if (r != -EBADMSG || !strstr(err, needle))
		fail_msg("%s: got %d '%s', want '%s'", proto_op_name(h->op), r, err, needle);
}

static void test_body_malformed(void **state)
{
	(void)state;
	static uint8_t p[PROTO_MAX_FIXED + 8192];
	struct proto_body b;
	/* short and trailing, for every opcode and direction with a fixed part */
	for (size_t i = 0; i < ARRAY_SIZE(all_ops); i++) {
		for (int reply = 0; reply < 2; reply++) {
			struct proto_hdr h = hdr_of(all_ops[i], reply, 0);
			sample(all_ops[i], reply, &b);
			ssize_t fl = proto_body_encode(&h, &b, p, sizeof(p));
			assert_true(fl >= 0);
			if (fl > 0)
				expect_body(&h, p, (size_t)fl - 1, "short");
			if (!proto_has_tail(&h)) {
				p[fl] = 0;
				expect_body(&h, p, (size_t)fl + 1, "1 trailing bytes");
			}
		}
	}
	struct proto_hdr h = hdr_of(PROTO_OP_READ, false, 0);
	sample(PROTO_OP_READ, false, &b);
	ssize_t n = proto_body_encode(&h, &b, p, sizeof(p));
	p[12] = 1; /* the pad after idx */
	expect_body(&h, p, (size_t)n, "reserved bytes are not zero");
	b.len = PROTO_MAX_DATA + 1;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);
	n = proto_body_encode(&h, &(struct proto_body){.len = 1}, p, sizeof(p));
	p[24 + 2] = 0x40; /* len = 4 MiB + 1 */
	p[24] = 1;
	expect_body(&h, p, (size_t)n, "read of 4194305 bytes exceeds");

	h = hdr_of(PROTO_OP_SEEK, false, 0);
	sample(PROTO_OP_SEEK, false, &b);
	b.whence = 2;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);
	b.whence = 0;
	n = proto_body_encode(&h, &b, p, sizeof(p));
	p[12] = 2;
	expect_body(&h, p, (size_t)n, "unknown whence 2");

	h = hdr_of(PROTO_OP_LIST, false, 0);
	b.count = 0;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);
	memset(p, 0, 8);
	expect_body(&h, p, 8, "page of 0 entries");
	p[0] = 0x01;
	p[1] = 0x10; /* 4097 */
	expect_body(&h, p, 8, "page of 4097 entries");
	h = hdr_of(PROTO_OP_LIST, true, 0);
	memset(p, 0, 64);
	p[0] = 2; /* two entries announced, one present */
	expect_body(&h, p, 4 + PROTO_LIST_ENTRY_SIZE, "2 entries in 20 bytes");
	p[0] = 0x01;
	p[1] = 0x10;
	expect_body(&h, p, 4, "exceed");

	h = hdr_of(PROTO_OP_HELLO, false, 0);
	sample(PROTO_OP_HELLO, false, &b);
	b.hello.min_version = 2;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);
	b.hello.min_version = 1;
	n = proto_body_encode(&h, &b, p, sizeof(p));
	p[0] = 3; /* min 3 > max 1 */
	expect_body(&h, p, (size_t)n, "bad version range 3..1");
	p[0] = 1;
	p[24 + 8] = 'A'; /* upper case in the uuid */
	expect_body(&h, p, (size_t)n, "malformed uuid");
	p[24 + 8] = '-';
	p[24] = 0; /* a zero byte, the rest not */
	expect_body(&h, p, (size_t)n, "malformed uuid");
	strcpy(b.hello.volume_uuid, "not-a-uuid");
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);

	h = hdr_of(PROTO_OP_HELLO, true, 0);
	sample(PROTO_OP_HELLO, true, &b);
	b.hello.version = 0;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);

	h = hdr_of(PROTO_OP_IDENTITY, true, 0);
	sample(PROTO_OP_IDENTITY, true, &b);
	n = proto_body_encode(&h, &b, p, sizeof(p));
	p[12 + 36 + 13] = 'x'; /* the target uuid's second dash */
	expect_body(&h, p, (size_t)n, "malformed uuid");

	h = hdr_of(PROTO_OP_TRUNCATE, false, 0);
	sample(PROTO_OP_TRUNCATE, false, &b);
	b.origin = 0;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);
	b.write_id = 0; /* no deduplication asked: no origin needed */
	n = proto_body_encode(&h, &b, p, sizeof(p));
	assert_true(n > 0);
	p[32] = 5; /* write id 5, origin 0 */
	expect_body(&h, p, (size_t)n, "write id 5 without an origin");

	/* a data tail longer than PROTO_MAX_DATA */
	h = hdr_of(PROTO_OP_WRITE, false, 0);
	sample(PROTO_OP_WRITE, false, &b);
	b.data_len = PROTO_MAX_DATA + 1;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);
	/* an encoder buffer too small */
	sample(PROTO_OP_WRITE, false, &b);
	assert_int_equal(proto_body_encode(&h, &b, p, 8), -EINVAL);
	/* a request with a status is no request */
	h.status = -1;
	assert_int_equal(proto_body_encode(&h, &b, p, sizeof(p)), -EINVAL);
}

/* PROTO-1 with a guard page: every prefix of every valid payload is decoded from the end of a
 * readable page; a single byte read past the length would fault. */
static void test_bounded(void **state)
{
	(void)state;
	long pg = sysconf(_SC_PAGESIZE);
	uint8_t *map =
	    mmap(NULL, (size_t)pg * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + pg * 3, (size_t)pg, PROT_NONE), 0);
	uint8_t *end = map + pg * 3;
	static uint8_t p[PROTO_MAX_FIXED + 8192];
	unsigned decoded = 0;
	for (size_t i = 0; i < ARRAY_SIZE(all_ops); i++) {
		for (int kind = 0; kind < 3; kind++) { /* request, reply, error reply */
			struct proto_hdr h = hdr_of(all_ops[i], kind > 0, kind == 2 ? -EIO : 0);
			struct proto_body b, d;
			sample(all_ops[i], kind > 0, &b);
			strcpy(b.reason, "no such thing");
			size_t len = encode_payload(&h, &b, p, sizeof(p));
			assert_true(len <= (size_t)pg * 3);
			for (size_t cut = 0; cut <= len; cut++) {
				memcpy(end - cut, p, cut);
				int r = proto_body_decode(&h, end - cut, cut, &d, NULL, 0);
				assert_true(r == 0 || r == -EBADMSG);
				assert_int_equal(r == 0, cut == len || kind == 2 ||
							     (proto_has_tail(&h) &&
							      all_ops[i] != PROTO_OP_LIST &&
							      cut >= len - b.data_len));
				decoded++;
			}
		}
	}
	/* headers too */
	struct proto_hdr h = hdr_of(PROTO_OP_PING, false, 0), got;
	proto_hdr_encode(&h, p);
	for (size_t cut = 0; cut <= PROTO_HDR_SIZE; cut++) {
		memcpy(end - cut, p, cut);
		assert_int_equal(proto_hdr_decode(end - cut, cut, &got, NULL, 0),
				 cut == PROTO_HDR_SIZE ? 0 : -EBADMSG);
	}
	munmap(map, (size_t)pg * 4);
	print_message("%u truncated payloads decoded against a guard page\n", decoded);
}

int main(void)
{
	for (size_t i = 0; i < sizeof(data4k); i++)
		data4k[i] = (uint8_t)(i * 7 + 3);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_op_names),	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_error_reply),	    cmocka_unit_test(test_header_malformed),
	    cmocka_unit_test(test_frame_malformed), cmocka_unit_test(test_body_malformed),
	    cmocka_unit_test(test_bounded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
