/* Fuzz target: the dir target's identity file and chunk-name parsers (bytes from disk).
 * Each input is parsed as is, and again with a valid crc32c line appended, so that the
 * fuzzer also reaches the key/value parsing behind the checksum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crc32c.h"
#include "storemgr/sm_dir_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sm_identity id;
	char why[256];
	sm_dir_id_parse((const char *)data, size, &id, why, sizeof(why));

	char *buf = malloc(size + 32);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	int n = snprintf(buf + size, 32, "crc32c=%08x\n", crc32c(0, data, size));
	sm_dir_id_parse(buf, size + (size_t)n, &id, why, sizeof(why));

	char name[64];
	size_t k = size < sizeof(name) - 1 ? size : sizeof(name) - 1;
	memcpy(name, data, k);
	name[k] = '\0';
	uint64_t ino;
	uint32_t idx;
	sm_dir_parse_name(name, &ino, &idx);
	free(buf);
	return 0;
}
