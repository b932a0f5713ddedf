/* Fuzz target: the control protocol (bytes from a unix socket). The input is split into lines
 * as the daemon's reader splits them; each line is parsed as a message in both directions, its
 * fields decoded into the data-service structs, and a parsed message is encoded again and must
 * parse to the same fields (the encoder and parser agree on every value). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tools/ctl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void roundtrip(const struct ctl_msg *m, enum ctl_dir dir)
{
	struct ctl_line l;
	ctl_begin(&l, m->type);
	for (unsigned i = 0; i < m->nf; i++)
		ctl_add_str(&l, m->f[i].key, m->f[i].val);
	if (ctl_end(&l) < 0)
		return; /* escaping can make a line longer than the limit: refused, fine */
	static struct ctl_msg m2;
	if (ctl_parse(l.buf, l.len - 1, dir, &m2, NULL, 0) != 0 || m2.type != m->type ||
	    m2.nf != m->nf)
		abort();
	for (unsigned i = 0; i < m->nf; i++)
		if (strcmp(m->f[i].key, m2.f[i].key) || m->f[i].len != m2.f[i].len ||
		    memcmp(m->f[i].val, m2.f[i].val, m->f[i].len))
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char line[CTL_LINE_MAX + 1];
	static struct ctl_msg m;
	const char *p = (const char *)data;
	size_t left = size;
	for (;;) {
		size_t len = 0;
		ssize_t k = ctl_take_line(p, left, line, sizeof(line), &len);
		if (k <= 0) {
			/* no whole line left (or an oversize one): parse the rest as one line */
			len = left < CTL_LINE_MAX ? left : CTL_LINE_MAX;
			memcpy(line, p, len);
			k = 0;
		}
		for (int d = 0; d < 2; d++) {
			char why[256];
			if (ctl_parse(line, len, (enum ctl_dir)d, &m, why, sizeof(why)) != 0)
				continue;
			struct ds_check_result r;
			struct ds_stats s;
			struct ds_target_stat t;
			struct ctl_req_stat q;
			uint64_t v;
			ctl_get_result(&m, &r);
			ctl_get_stats(&m, &s);
			ctl_get_target(&m, &t);
			ctl_get_request(&m, &q);
			ctl_get_u64(&m, "version", &v);
			ctl_get(&m, "msg");
			roundtrip(&m, (enum ctl_dir)d);
		}
		if (k == 0)
			break;
		p += k;
		left -= (size_t)k;
	}
	return 0;
}
