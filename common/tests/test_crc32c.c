/* test_crc32c — crc32c() against published CRC-32C (Castagnoli) vectors, and its chaining and
 * alignment behaviour (the ISA-L paths differ by length and alignment). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/crc32c.h"

/* The "check" value of the CRC catalogue. */
static void test_check_value(void **state)
{
	(void)state;
	assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
}

static void test_empty(void **state)
{
	(void)state;
	assert_int_equal(crc32c(0, "", 0), 0);
	assert_int_equal(crc32c(0, NULL, 0), 0);
	/* an empty continuation changes nothing */
	assert_int_equal(crc32c(0xE3069283u, "", 0), 0xE3069283u);
}

/* RFC 3720 (iSCSI), appendix B.4. */
static void test_rfc3720(void **state)
{
	unsigned char buf[32];
	(void)state;

	memset(buf, 0, sizeof(buf));
	assert_int_equal(crc32c(0, buf, sizeof(buf)), 0x8A9136AAu);
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(crc32c(0, buf, sizeof(buf)), 0x62A8AB43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (unsigned char)i;
	assert_int_equal(crc32c(0, buf, sizeof(buf)), 0x46DD794Eu);
	for (int i = 0; i < 32; i++)
		buf[i] = (unsigned char)(31 - i);
	assert_int_equal(crc32c(0, buf, sizeof(buf)), 0x113FDB5Cu);
}

/* RFC 3720 B.4: an iSCSI Read (10) command PDU. */
static void test_rfc3720_pdu(void **state)
{
	static const unsigned char pdu[48] = {
	    0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	    0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
	    0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
	    0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	};
	(void)state;
	assert_int_equal(crc32c(0, pdu, sizeof(pdu)), 0xD9963A56u);
}

static void test_single_bytes(void **state)
{
	(void)state;
	assert_int_equal(crc32c(0, "a", 1), 0xC1D04330u);
	assert_int_equal(crc32c(0, "\0", 1), 0x527D5351u);
}

/* crc(a || b) == crc(crc(a), b) for every split point, over a buffer long enough to take the
 * wide (folding) code paths. */
static void test_chaining(void **state)
{
	enum { N = 4099 };
	unsigned char *buf = malloc(N);
	uint32_t whole;
	(void)state;

	assert_non_null(buf);
	for (int i = 0; i < N; i++)
		buf[i] = (unsigned char)(i * 131 + 7);
	whole = crc32c(0, buf, N);
	for (int split = 0; split <= N; split += (split < 64 ? 1 : 97)) {
		uint32_t c = crc32c(0, buf, (size_t)split);

		c = crc32c(c, buf + split, (size_t)(N - split));
		assert_int_equal(c, whole);
	}
	/* byte at a time */
	uint32_t c = 0;
	for (int i = 0; i < N; i++)
		c = crc32c(c, buf + i, 1);
	assert_int_equal(c, whole);
	free(buf);
}

/* The same bytes at every alignment give the same CRC. */
static void test_alignment(void **state)
{
	enum { N = 1000 };
	unsigned char *buf = malloc(N + 16);
	unsigned char ref[N];
	uint32_t want;
	(void)state;

	assert_non_null(buf);
	for (int i = 0; i < N; i++)
		ref[i] = (unsigned char)(i ^ 0x5a);
	want = crc32c(0, ref, N);
	for (int off = 0; off < 16; off++) {
		memcpy(buf + off, ref, N);
		assert_int_equal(crc32c(0, buf + off, N), want);
	}
	free(buf);
}

/* A single bit flip anywhere changes the CRC. */
static void test_bitflip(void **state)
{
	unsigned char buf[64];
	uint32_t base;
	(void)state;

	for (int i = 0; i < 64; i++)
		buf[i] = (unsigned char)i;
	base = crc32c(0, buf, sizeof(buf));
	for (int bit = 0; bit < 64 * 8; bit++) {
		buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		assert_int_not_equal(crc32c(0, buf, sizeof(buf)), base);
		buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_check_value),	 cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_rfc3720),	 cmocka_unit_test(test_rfc3720_pdu),
	    cmocka_unit_test(test_single_bytes), cmocka_unit_test(test_chaining),
	    cmocka_unit_test(test_alignment),	 cmocka_unit_test(test_bitflip),
	};
	return cmocka_run_group_tests_name("crc32c", tests, NULL, NULL);
}
