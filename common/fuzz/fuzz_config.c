/* Fuzz target: cfg_parse on arbitrary bytes (a node's configuration file is written by people
 * and tools: anything may be in it). */
#include <stdint.h>
#include <stdio.h>

#include "common/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct cfg_node c;
	char err[256];
	if (cfg_parse((const char *)data, size, &c, err, sizeof(err)) < 0 && !err[0])
		__builtin_trap(); /* every refusal says why */
	return 0;
}
