/* ctl — the control protocol between `braidfs` commands and a running mount daemon, over the
 * daemon's unix socket /run/braidfs/<pid>.ctl. The reference is docs/ctl-protocol.md.
 *
 * WHAT IT OWNS
 *   The wire format (one text line per message), its bounded parser and its encoder, the
 *   line reader, the list of messages (CTL_MESSAGES, declared once here), and the mapping of
 *   the data service's result and stats structs to fields. It knows nothing of sockets beyond
 *   reading and writing one fd; the daemon side is ctl_server.c, the client side the commands.
 *
 * FORMAT
 *   line  = verb *(" " key "=" value) "\n"      at most CTL_LINE_MAX bytes before the "\n"
 *   verb  = 1..32 of [a-z_]     key = 1..32 of [a-z0-9_]
 *   value = 0..CTL_VALUE_MAX decoded bytes; on the wire every byte is printable ASCII
 *           (0x21..0x7e) but '%', which starts an escape %XX (two hex digits) for any byte
 *           other than NUL. At most CTL_MAX_FIELDS fields, no key twice.
 *   Bytes from the socket are untrusted: anything else is -EBADMSG with a one-line reason,
 *   and the connection is closed after an error reply. Unknown keys are ignored (a newer
 *   peer may send more); unknown verbs are an error.
 *
 * THREADS: every function is safe from any thread on its own objects; none keeps state.
 */
#ifndef BRAIDFS_CTL_H
#define BRAIDFS_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataservice/ds.h"

#define CTL_VERSION    1
#define CTL_LINE_MAX   4096 /* bytes of a line before its "\n" */
#define CTL_NAME_MAX   32   /* verb or key */
#define CTL_VALUE_MAX  1024 /* decoded bytes of a value */
#define CTL_MAX_FIELDS 32

/* Every message, once: direction (C2D client to daemon, D2C daemon to client), name, verb. */
#define CTL_MESSAGES(X)                                                                            \
	X(C2D, HELLO, "hello")	     /* version=1: first line of a connection */                   \
	X(C2D, STATS, "stats")	     /* requests=0|1: data-service stats, target counters [and     \
					requests by kind] */                                       \
	X(C2D, SCRUB, "scrub")	     /* rate=BYTES/s (0 unlimited) repair=0|1: start a scrub */    \
	X(C2D, CANCEL, "cancel")     /* stop the running scrub (closing the socket does too) */    \
	X(D2C, HELLO, "hello")	     /* version=1 pid= volume=: answer to hello */                 \
	X(D2C, STATS, "stats")	     /* ds_stats fields; then one target per target, then end */   \
	X(D2C, TARGET, "target")     /* id= open= counters= ... statfs= ... */                     \
	X(D2C, REQUEST, "request")   /* kind= count= busy_us=: FUSE requests of one kind */        \
	X(D2C, END, "end")	     /* ends a stats reply */                                      \
	X(D2C, PROGRESS, "progress") /* ds_check_result fields, while a scrub runs */              \
	X(D2C, FOUND, "found")	     /* what= ino= idx= target= repaired=: one finding */          \
	X(D2C, DONE, "done")   /* status=ok|cancelled|failed problems= msg= + result fields */     \
	X(D2C, ERROR, "error") /* msg=: the request was refused; the daemon closes */

enum ctl_type {
	CTL_UNKNOWN = 0,
#define CTL_ENUM(dir, name, verb) CTL_##dir##_##name,
	CTL_MESSAGES(CTL_ENUM)
#undef CTL_ENUM
	    CTL_NTYPES
};

enum ctl_dir { CTL_C2D, CTL_D2C };

struct ctl_field {
	char key[CTL_NAME_MAX + 1];
	char val[CTL_VALUE_MAX + 1]; /* decoded, NUL-terminated (NUL never occurs inside) */
	size_t len;
};

struct ctl_msg {
	enum ctl_type type;
	char verb[CTL_NAME_MAX + 1];
	unsigned nf;
	struct ctl_field f[CTL_MAX_FIELDS];
};

/* Parse one line (without its "\n") of a message travelling in direction dir. 0, or -EBADMSG
 * with a one-line reason in why (a verb of the other direction is "unexpected"). */
int ctl_parse(const char *line, size_t len, enum ctl_dir dir, struct ctl_msg *ret, char *why,
	      size_t whylen);
const char *ctl_type_name(enum ctl_type t);

/* The value of key, or NULL. Valid while m lives. */
const char *ctl_get(const struct ctl_msg *m, const char *key);
/* Decimal value of key: 0, -ENOENT (absent) or -EBADMSG (not a number below 2^64). */
int ctl_get_u64(const struct ctl_msg *m, const char *key, uint64_t *ret);

/* Building a line: begin, add fields, end (appends "\n"). An overflow is remembered and
 * reported by ctl_end (-E2BIG), so the adds need no checks. */
struct ctl_line {
	char buf[CTL_LINE_MAX + 2];
	size_t len;
	bool overflow;
};
void ctl_begin(struct ctl_line *l, enum ctl_type t);
void ctl_add_u64(struct ctl_line *l, const char *key, uint64_t v);
void ctl_add_str(struct ctl_line *l, const char *key, const char *v); /* percent-encodes */
int ctl_end(struct ctl_line *l);
/* Write the whole line to fd (no SIGPIPE). 0 or -errno. */
int ctl_send(int fd, const struct ctl_line *l);

/* Reading lines from a stream fd, blocking or not. */
struct ctl_reader {
	int fd;
	size_t len;
	char buf[CTL_LINE_MAX + 1];
};
void ctl_reader_init(struct ctl_reader *r, int fd);
/* The next line, without its "\n", into out (at least CTL_LINE_MAX + 1 bytes), NUL-terminated;
 * *ret_len its length. 0; -ENODATA at a clean end of stream; -EBADMSG for a line longer than
 * CTL_LINE_MAX or a stream that ends inside a line; -EAGAIN (non-blocking fd, no whole line
 * yet); else -errno of read. */
int ctl_read_line(struct ctl_reader *r, char *out, size_t outlen, size_t *ret_len);
/* The line-splitting step on its own, for the fuzzer: the first line of buf[0..n) (without
 * "\n") into out; returns the bytes consumed, 0 when buf holds no whole line yet, -EBADMSG
 * when the first line is longer than CTL_LINE_MAX. */
ssize_t ctl_take_line(const char *buf, size_t n, char *out, size_t outlen, size_t *ret_len);

/* The data service's structs as fields (every field, named as in ds.h). ctl_get_*: absent
 * fields are 0; -EBADMSG when one is not a number. */
void ctl_put_result(struct ctl_line *l, const struct ds_check_result *r);
int ctl_get_result(const struct ctl_msg *m, struct ds_check_result *ret);
void ctl_put_stats(struct ctl_line *l, const struct ds_stats *s);
int ctl_get_stats(const struct ctl_msg *m, struct ds_stats *ret);
void ctl_put_target(struct ctl_line *l, const struct ds_target_stat *t);
int ctl_get_target(const struct ctl_msg *m, struct ds_target_stat *ret);

/* One `request` line of a stats reply: the FUSE requests of one kind handled since mount and
 * the microseconds their handlers took. ctl_get_request: every field must be there, kind a
 * name of 1..CTL_NAME_MAX of a-z 0-9 _ (else -EBADMSG). */
struct ctl_req_stat {
	char kind[CTL_NAME_MAX + 1];
	uint64_t count;
	uint64_t busy_us;
};
void ctl_put_request(struct ctl_line *l, const struct ctl_req_stat *q);
int ctl_get_request(const struct ctl_msg *m, struct ctl_req_stat *ret);

#endif
