/* config — the YAML configuration of a node (`braidfs serve --config FILE`), read through
 * libyaml. Prefix cfg_.
 *
 * The file is one mapping (docs/distributed.md, "Node configuration"):
 *   node: n1                       required; 1..63 of [A-Za-z0-9._-]
 *   listen: 10.77.0.1:7410         required; HOST:PORT (IPv6 as [ADDR]:PORT), port 1..65535
 *   meta: postgres://...           required; the metadata URL
 *   targets: [file:/x.img, ...]    required; 1..CFG_MAX_TARGETS target URLs of this node
 *   heartbeat_ms: 500              10..60000
 *   lease_ms: 3000                 at least 2 x heartbeat_ms, at most 600000
 *   replace_after_s: 600           1..31536000
 *   resync_rate: 256MiB            a size per second (parse_size), at least 1 MiB
 *   local_reads: false             true or false (DS-6: docs/distributed.md "Reads")
 *
 * Every byte is untrusted: the file is read up to CFG_FILE_MAX bytes, every string is bounded,
 * unknown keys, duplicate keys, aliases, tags on values and more than one document are refused,
 * and every refusal is one line "LINE:COL: reason" (1-based) in err. No global state; any
 * thread.
 */
#ifndef BRAIDFS_CONFIG_H
#define BRAIDFS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_FILE_MAX	(64u * 1024)
#define CFG_MAX_TARGETS 64
#define CFG_NAME_MAX	64   /* node name + NUL */
#define CFG_ADDR_MAX	256  /* listen address + NUL */
#define CFG_URL_MAX	1024 /* meta and target URLs + NUL */

struct cfg_node {
	char node[CFG_NAME_MAX];
	char listen[CFG_ADDR_MAX]; /* as written: HOST:PORT */
	char meta[CFG_URL_MAX];
	unsigned ntargets;
	char targets[CFG_MAX_TARGETS][CFG_URL_MAX];
	uint32_t heartbeat_ms;	  /* default 500 */
	uint32_t lease_ms;	  /* default 3000 */
	uint32_t replace_after_s; /* default 600 */
	uint64_t resync_rate;	  /* bytes/s, default 256 MiB */
	/* The manager declares a node dead when its lease expired more than grace_ms ago
	 * (database clock, DIST-4); default 2 x heartbeat_ms. */
	uint32_t grace_ms;
	/* A node re-reads its own row every state_check_beats heartbeats, in case a manager
	 * acting on an older read marked it down just after it renewed; default 8. */
	uint32_t state_check_beats;
	bool local_reads; /* serve members' reads to mounts of this node (DS-6) */
};

/* Parse len bytes of YAML into *ret (written only on success). 0, or -EINVAL / -EFBIG /
 * -ENOMEM with "LINE:COL: reason" in err. */
int cfg_parse(const char *buf, size_t len, struct cfg_node *ret, char *err, size_t errlen);
/* Read and parse a file; reasons are prefixed with the path ("PATH:LINE:COL: reason"). */
int cfg_load(const char *path, struct cfg_node *ret, char *err, size_t errlen);

#endif
