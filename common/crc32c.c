#include "common/crc32c.h"

#include <isa-l/crc.h>
#include <limits.h>

/* ISA-L's crc32_iscsi() takes and returns the CRC without the final inversion, and an
 * int length; wrap both so callers see the standard CRC-32C (check value 0xE3069283). */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	crc = ~crc;
	while (len > 0) {
		int n = len > (size_t)INT_MAX ? INT_MAX : (int)len;
		crc = crc32_iscsi((unsigned char *)p, n, crc);
		p += n;
		len -= (size_t)n;
	}
	return ~crc;
}
