/* Fuzz target: url_parse + url_query_get on arbitrary bytes (META_URL and target URLs
 * come from users and, later, from the metadata database). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	struct url u;
	char err[128], v[64];
	if (url_parse(s, &u, err, sizeof(err)) == 0) {
		url_query_get(&u, "socket", v, sizeof(v));
		url_query_get(&u, "", v, sizeof(v));
	}
	free(s);
	return 0;
}
