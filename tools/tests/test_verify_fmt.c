/* test_verify_fmt — braidfs-verify's formats: a block round-trips and every kind of damage is
 * told apart (a flipped bit, another place, another run, a rewritten header, zeros); a torn
 * write made of two generations' sectors is recognised, one with a foreign sector is not;
 * the journal header refuses bad magic, crc, versions and shapes; the record scan applies
 * issues and acks, keeps a torn tail for the next call, and refuses each malformed record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tools/verify_fmt.h"

#define BS 4096

static const struct vl_block_id where = {
    .run = 0x1234, .file = 3, .block_size = BS, .offset = 7 * BS};

static void test_block_roundtrip(void **state)
{
	uint8_t b[BS];
	struct vl_block_id id = where;
	id.gen = 42;
	vl_block_fill(b, &id);
	uint64_t g = 0;
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_OK);
	assert_int_equal(g, 42);
	/* the same place and generation always gives the same bytes */
	uint8_t b2[BS];
	vl_block_fill(b2, &id);
	assert_memory_equal(b, b2, BS);
	/* another generation differs in the payload, not only the header */
	id.gen = 43;
	vl_block_fill(b2, &id);
	assert_memory_not_equal(b + VL_HDR_SIZE, b2 + VL_HDR_SIZE, 64);
}

static void test_block_damage(void **state)
{
	uint8_t b[BS], z[BS] = {0};
	struct vl_block_id id = where;
	id.gen = 5;
	uint64_t g;
	assert_int_equal(vl_block_check(z, BS, &where, &g), VL_BLOCK_ZERO);

	vl_block_fill(b, &id);
	b[1000] ^= 1;
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_BAD_CRC);

	vl_block_fill(b, &id);
	b[0] = 'X';
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_BAD_MAGIC);

	/* a whole block of the neighbouring offset, of another file, of another run */
	struct vl_block_id other = id;
	other.offset += BS;
	vl_block_fill(b, &other);
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_MISPLACED);
	other = id;
	other.file++;
	vl_block_fill(b, &other);
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_MISPLACED);
	other = id;
	other.run++;
	vl_block_fill(b, &other);
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_MISPLACED);

	/* a header rewritten to claim a newer generation over the old payload, crc redone by
	 * someone who knows the format: the payload gives it away */
	uint8_t b6[BS];
	other = id;
	other.gen = 6;
	vl_block_fill(b6, &other);
	vl_block_fill(b, &id);
	memcpy(b, b6, VL_HDR_SIZE); /* header (and crc) of 6, payload of 5 */
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_BAD_CRC);

	/* a wrong length is never OK */
	vl_block_fill(b, &id);
	assert_int_not_equal(vl_block_check(b, BS - 512, &where, &g), VL_BLOCK_OK);
	assert_string_equal(vl_block_state_name(VL_BLOCK_BAD_CRC), "checksum mismatch");
}

static void test_block_torn(void **state)
{
	uint8_t b[BS], b2[BS], scratch[BS];
	struct vl_block_id id = where;
	id.gen = 3;
	vl_block_fill(b, &id);
	id.gen = 4;
	vl_block_fill(b2, &id);
	memcpy(b + 2048, b2 + 2048, 1024); /* sectors 4 and 5 of generation 4 */
	uint64_t g;
	assert_int_equal(vl_block_check(b, BS, &where, &g), VL_BLOCK_BAD_CRC);
	assert_true(vl_block_sectors_from(b, &where, 3, 4, scratch));
	assert_false(vl_block_sectors_from(b, &where, 4, 4, scratch)); /* 3 not allowed */
	assert_false(vl_block_sectors_from(b, &where, 4, 3, scratch)); /* empty range */
	/* zeros count for generation 0 (a first write torn) */
	memset(b, 0, 1024);
	assert_false(vl_block_sectors_from(b, &where, 3, 4, scratch));
	assert_true(vl_block_sectors_from(b, &where, 0, 4, scratch));
	/* a sector of nobody's */
	b[3000] ^= 0x80;
	assert_false(vl_block_sectors_from(b, &where, 0, 4, scratch));
}

static struct vl_journal_hdr hdr(void)
{
	return (struct vl_journal_hdr){.version = VL_JOURNAL_VERSION,
				       .block_size = BS,
				       .files = 2,
				       .blocks_per_file = 4,
				       .threads = 2,
				       .ack_mode = VL_ACK_FSYNC,
				       .run = 99,
				       .start_ns = 1};
}

static void test_jhdr(void **state)
{
	uint8_t b[VL_JHDR_SIZE];
	struct vl_journal_hdr h = hdr(), got;
	char why[200];
	vl_jhdr_encode(b, &h);
	assert_int_equal(vl_jhdr_parse(b, sizeof(b), &got, why, sizeof(why)), 0);
	assert_memory_equal(&got, &h, sizeof(h));
	assert_int_equal(vl_jhdr_parse(b, 63, &got, why, sizeof(why)), -EBADMSG);
	b[20] ^= 1;
	assert_int_equal(vl_jhdr_parse(b, sizeof(b), &got, why, sizeof(why)), -EBADMSG);
	assert_non_null(strstr(why, "checksum"));
	b[0] = 'x';
	assert_int_equal(vl_jhdr_parse(b, sizeof(b), &got, why, sizeof(why)), -EBADMSG);
	assert_non_null(strstr(why, "magic"));
}

static void refused_shape(struct vl_journal_hdr h, const char *needle)
{
	uint8_t b[VL_JHDR_SIZE];
	struct vl_journal_hdr got;
	char why[200] = "";
	vl_jhdr_encode(b, &h);
	assert_int_equal(vl_jhdr_parse(b, sizeof(b), &got, why, sizeof(why)), -EBADMSG);
	if (!strstr(why, needle))
		fail_msg("reason '%s' lacks '%s'", why, needle);
}

static void test_jhdr_shapes(void **state)
{
	struct vl_journal_hdr h = hdr();
	h.version = 2;
	refused_shape(h, "version");
	h = hdr();
	h.ack_mode = 7;
	refused_shape(h, "ack mode");
	h = hdr();
	h.block_size = 1000;
	refused_shape(h, "block size");
	h = hdr();
	h.block_size = VL_BLOCK_MAX * 2;
	refused_shape(h, "block size");
	h = hdr();
	h.files = 0;
	refused_shape(h, "files");
	h = hdr();
	h.files = 65536;
	h.blocks_per_file = 65536; /* 4 G blocks: the checker would allocate 64 GiB */
	refused_shape(h, "blocks in all");
	h = hdr();
	h.threads = 9; /* more than the 8 blocks */
	refused_shape(h, "every thread");
	h = hdr();
	h.threads = 0;
	refused_shape(h, "threads");
}

static size_t rec(uint8_t *out, uint8_t type, uint32_t file, uint32_t block, uint64_t gen)
{
	vl_rec_encode(out, &(struct vl_rec){type, file, block, gen, (int64_t)gen * 1000});
	return VL_REC_SIZE;
}

static void test_scan(void **state)
{
	struct vl_journal_hdr h = hdr();
	struct vl_state s;
	assert_int_equal(vl_state_init(&s, &h), 0);
	assert_int_equal(s.nblocks, 8);
	uint8_t buf[VL_REC_SIZE * 8];
	size_t n = 0, used = 0;
	char why[200];
	n += rec(buf + n, VL_REC_ISSUE, 1, 2, 1);
	n += rec(buf + n, VL_REC_ISSUE, 1, 2, 2);
	n += rec(buf + n, VL_REC_ACK, 1, 2, 1);
	n += rec(buf + n, VL_REC_ACK, 1, 2, 2);
	n += rec(buf + n, VL_REC_ISSUE, 0, 0, 1);
	/* a torn record at the end: not consumed, kept for the next call */
	assert_int_equal(vl_journal_scan(&s, buf, n + 10, &used, why, sizeof(why)), 0);
	assert_int_equal(used, n);
	assert_int_equal(s.acked[6], 2);
	assert_int_equal(s.issued[6], 2);
	assert_int_equal(s.issued[0], 1);
	assert_int_equal(s.acked[0], 0);
	assert_int_equal(s.n_issue, 3);
	assert_int_equal(s.n_ack, 2);
	assert_int_equal(s.last_ack_ns, 2000);
	vl_state_fini(&s);
}

static void scan_bad(const uint8_t *r, const char *needle)
{
	struct vl_journal_hdr h = hdr();
	struct vl_state s;
	assert_int_equal(vl_state_init(&s, &h), 0);
	uint8_t buf[VL_REC_SIZE * 2];
	size_t used = 99;
	char why[200] = "";
	rec(buf, VL_REC_ISSUE, 0, 1, 1);
	memcpy(buf + VL_REC_SIZE, r, VL_REC_SIZE);
	assert_int_equal(vl_journal_scan(&s, buf, sizeof(buf), &used, why, sizeof(why)), -EBADMSG);
	assert_int_equal(used, VL_REC_SIZE); /* the good one was applied */
	if (!strstr(why, needle))
		fail_msg("reason '%s' lacks '%s'", why, needle);
	assert_non_null(strstr(why, "record 1"));
	vl_state_fini(&s);
}

static void test_scan_bad(void **state)
{
	uint8_t r[VL_REC_SIZE];
	rec(r, VL_REC_ISSUE, 0, 1, 2);
	r[17] ^= 1; /* the generation, under the crc */
	scan_bad(r, "checksum");
	rec(r, VL_REC_ISSUE, 0, 1, 2);
	r[30] ^= 1; /* the time, under the crc too */
	scan_bad(r, "checksum");
	rec(r, 9, 0, 1, 2);
	scan_bad(r, "unknown type");
	rec(r, VL_REC_ISSUE, 2, 0, 1);
	scan_bad(r, "out of range");
	rec(r, VL_REC_ISSUE, 0, 4, 1);
	scan_bad(r, "out of range");
	rec(r, VL_REC_ISSUE, 0, 1, 3); /* skips 2 */
	scan_bad(r, "after generation 1");
	rec(r, VL_REC_ISSUE, 0, 1, 1); /* again */
	scan_bad(r, "after generation 1");
	rec(r, VL_REC_ACK, 0, 1, 2); /* never issued */
	scan_bad(r, "ack of generation 2");
	rec(r, VL_REC_ACK, 0, 1, 0);
	scan_bad(r, "ack of generation 0");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_block_roundtrip), cmocka_unit_test(test_block_damage),
	    cmocka_unit_test(test_block_torn),	    cmocka_unit_test(test_jhdr),
	    cmocka_unit_test(test_jhdr_shapes),	    cmocka_unit_test(test_scan),
	    cmocka_unit_test(test_scan_bad),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
