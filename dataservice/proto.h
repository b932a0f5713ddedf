/* proto — the data service's wire protocol: the frames that carry chunk requests from a client
 * to the node serving a target, and from node to node (chain forwarding). docs/protocol.md is
 * the reference for every byte; this header and proto.c are its only implementation.
 *
 * WHAT IT OWNS
 *   The layout of a frame (a fixed PROTO_HDR_SIZE-byte header, then a payload), the opcode
 *   table, and bounded encoders and decoders for the header and for the payload of every
 *   request and reply. No I/O, no allocation, no threads, no global state: every function may
 *   be called from any thread. The transports (transport.h) move frames; rpc_target.c gives
 *   them meaning.
 *
 * A FRAME
 *   header (56 bytes, little-endian): magic, version, opcode, flags, status, request id, chain
 *   epoch, chain id, target id, payload length, payload crc32c, reserved, header crc32c.
 *   payload: the opcode's fixed fields (a table in proto.c), then for some opcodes a tail of
 *   variable length (WRITE data, READ data, LIST entries, the reason of an error reply).
 *
 * INVARIANTS (cited as PROTO-n)
 *   PROTO-1 A decoder reads only the bytes it is given: every read goes through a cursor
 *           checked against the length, and nothing past it is ever touched.
 *   PROTO-2 Malformed input is answered with -EBADMSG and a one-line reason (a header of a
 *           version this build does not speak: -EPROTONOSUPPORT). Never an assert or a crash.
 *   PROTO-3 No header field is trusted before the header crc32c matched; no payload byte is
 *           decoded before the payload crc32c matched. The payload crc covers fixed fields and
 *           tail: it is computed once by the producer of the payload and a forwarder that
 *           passes the payload on unchanged passes the crc on unchanged (end to end).
 *   PROTO-4 The encoding is canonical: decoding a payload and encoding the result gives the
 *           same bytes. Decoders reject what the encoder never writes (non-zero reserved
 *           bytes, trailing bytes, a non-canonical UUID), so a frame has one meaning only.
 *   PROTO-5 A payload is at most PROTO_MAX_PAYLOAD bytes and a data tail at most
 *           PROTO_MAX_DATA: a peer can make a receiver allocate no more than that per frame.
 *   PROTO-6 Every mutating chunk request (WRITE, TRUNCATE, PUNCH, ALLOCATE, REMOVE) carries
 *           (origin, write id): the server applies one (origin, write id) at most once and
 *           answers a repeat from its table (rpc_target.c, RPC-2). Write id 0 asks for no
 *           deduplication.
 *
 * STATUS
 *   A request's status is 0. A reply's status is 0 or a negated Linux errno (-1..-4095); every
 *   node is Linux, so the numbers need no table. An error reply's payload is its reason text
 *   (printable ASCII, at most PROTO_MAX_REASON bytes), whatever the opcode. -ESTALE means a
 *   stale chain epoch: the reply's header carries the chain's current epoch.
 */
#ifndef BRAIDFS_PROTO_H
#define BRAIDFS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "storemgr/sm.h"

#define PROTO_MAGIC	      0x53465242u /* "BRFS" as bytes on the wire */
#define PROTO_VERSION_MIN     1
#define PROTO_VERSION_MAX     1
#define PROTO_HDR_SIZE	      56
#define PROTO_MAX_DATA	      (4u << 20) /* READ/WRITE data per frame */
#define PROTO_MAX_FIXED	      256	 /* fixed part of any payload (an error reason included) */
#define PROTO_MAX_PAYLOAD     (PROTO_MAX_DATA + PROTO_MAX_FIXED)
#define PROTO_MAX_REASON      200  /* reason text of an error reply */
#define PROTO_LIST_ENTRY_SIZE 20   /* u64 ino, u32 idx, u64 length */
#define PROTO_LIST_MAX_PAGE   4096 /* entries in one LIST reply frame */
#define PROTO_UUID_LEN	      36
#define PROTO_NO_CHAIN	      0xffffffffu /* a request bound to no chain: no epoch check */
#define PROTO_NO_TARGET	      0xffffffffu /* HELLO, PING */

/* header flags */
#define PROTO_F_REPLY 0x1u /* a reply (else a request) */
#define PROTO_F_MORE  0x2u /* a streamed reply: more frames follow for this request id */
#define PROTO_F_RETRY 0x4u /* a request sent again with the same (origin, write id) */
/* a READ, SEEK or CHUNK_LENGTH a client sends to a member on its own node instead of the
 * chain's primary (DS-6): served by a non-primary member only under its read lease */
#define PROTO_F_LOCAL 0x8u
#define PROTO_F_ALL   (PROTO_F_REPLY | PROTO_F_MORE | PROTO_F_RETRY | PROTO_F_LOCAL)

/* SEEK whence on the wire (not the host's SEEK_DATA/SEEK_HOLE numbers) */
#define PROTO_SEEK_DATA 0
#define PROTO_SEEK_HOLE 1

/* Every opcode, once: name, number, what it asks. Numbers are part of the protocol. Each one
 * is a request to the node that serves a target; its reply has the same opcode and
 * PROTO_F_REPLY (so names need no direction). */
#define PROTO_OPS(X)                                                                               \
	X(HELLO, 1, "hello")	    /* version, node, volume: first frame of a connection */       \
	X(PING, 2, "ping")	    /* heartbeat: echoes a value */                                \
	X(IDENTITY, 3, "identity")  /* the target's identity (SM-1) */                             \
	X(READ, 16, "read")	    /* bytes of a chunk */                                         \
	X(WRITE, 17, "write")	    /* bytes into a chunk */                                       \
	X(TRUNCATE, 18, "truncate") /* a chunk's length */                                         \
	X(PUNCH, 19, "punch")	    /* a hole in a chunk */                                        \
	X(ALLOCATE, 20, "allocate") /* reserve space in a chunk */                                 \
	X(REMOVE, 21, "remove")	    /* every chunk of an inode from an index on (SM-5) */          \
	X(SEEK, 22, "seek")	    /* next data or hole within a chunk */                         \
	X(CHUNK_LENGTH, 23, "chunk_length") /* a chunk's logical length */                         \
	X(SYNC_INO, 24, "sync_ino")	    /* SM-4 for one inode */                               \
	X(SYNC_ALL, 25, "sync_all")	    /* SM-4 for the target */                              \
	X(STATFS, 26, "statfs")		    /* space and chunk count */                            \
	X(LIST, 27, "list")		    /* every chunk, streamed in pages */

enum proto_op {
#define PROTO_OP_ENUM(name, num, str) PROTO_OP_##name = num,
	PROTO_OPS(PROTO_OP_ENUM)
#undef PROTO_OP_ENUM
	    PROTO_OP_MAX = 27
};

struct proto_hdr {
	uint16_t version;
	uint16_t op;
	uint32_t flags;
	int32_t status;	 /* requests 0; replies 0 or -errno */
	uint64_t req_id; /* chosen by the requester, echoed by the reply */
	uint64_t epoch;	 /* requests: the chain epoch the sender holds; -ESTALE replies: current */
	uint32_t chain;	 /* PROTO_NO_CHAIN when the request is bound to no chain */
	uint32_t target; /* the target id the request is for */
	uint32_t len;	 /* payload bytes, <= PROTO_MAX_PAYLOAD */
	uint32_t pcrc;	 /* crc32c of the payload */
};

struct proto_hello {
	uint16_t min_version, max_version; /* request: what the sender speaks */
	uint16_t version;		   /* reply: what the connection speaks from now on */
	uint32_t max_payload;		   /* reply: the largest payload the server accepts */
	uint64_t node_id;		   /* the sender's node (0: a plain client) */
	uint64_t instance;		   /* the sender's random instance id (the write origin) */
	char volume_uuid[PROTO_UUID_LEN + 1]; /* "" = unknown (request) */
};

/* IDENTITY replies carry a struct sm_identity, STATFS replies a struct sm_statfs and LIST
 * entries are struct sm_chunk_info (storemgr/sm.h): the wire layout is the field table in
 * proto.c, the in-memory one is the storage manager's, so nothing is copied field by field. */

/* The decoded payload of any request or reply. Which fields an opcode uses is in
 * docs/protocol.md (and the layout table in proto.c); the others are left zero by the decoder
 * and ignored by the encoder. `data` borrows from the buffer that was decoded: it is valid as
 * long as that buffer is. */
struct proto_body {
	uint64_t ino;
	uint32_t idx;
	uint32_t whence; /* SEEK: PROTO_SEEK_DATA / PROTO_SEEK_HOLE */
	uint64_t off;
	uint64_t len;	   /* READ: bytes wanted; TRUNCATE: new length; PUNCH/ALLOCATE: bytes */
	uint64_t origin;   /* mutating requests: the instance that produced the write id */
	uint64_t write_id; /* mutating requests: 0 = no deduplication (PROTO-6) */
	uint64_t value;	   /* PING: echoed; SEEK reply: position; CHUNK_LENGTH reply: length */
	uint32_t count;	   /* LIST request: entries per page; LIST reply: entries here */
	struct proto_hello hello;
	struct sm_identity ident;
	struct sm_statfs statfs;
	/* tail: WRITE request and READ reply data; LIST reply entries (count entries of
	 * PROTO_LIST_ENTRY_SIZE bytes, read them with proto_list_get) */
	const uint8_t *data;
	uint32_t data_len;
	char reason[PROTO_MAX_REASON + 1]; /* error replies */
};

/* "write", or NULL for a number that is no opcode. */
const char *proto_op_name(unsigned op);
/* A mutating chunk request (PROTO-6). */
bool proto_op_mutates(unsigned op);
/* A request that may carry PROTO_F_LOCAL: READ, SEEK, CHUNK_LENGTH (DS-6). */
bool proto_op_local_ok(unsigned op);

/* Header: encode computes the header crc32c; decode checks crc, magic, version, reserved
 * bytes, known opcode and flags, status range and the payload bound (PROTO-2/3/5). */
void proto_hdr_encode(const struct proto_hdr *h, uint8_t out[PROTO_HDR_SIZE]);
int proto_hdr_decode(const uint8_t *buf, size_t len, struct proto_hdr *ret, char *err,
		     size_t errlen);
/* The payload's crc32c against h->pcrc (len = h->len bytes). 0 or -EBADMSG. */
int proto_payload_check(const struct proto_hdr *h, const uint8_t *payload, char *err,
			size_t errlen);

/* Payload, by h->op, h->flags & PROTO_F_REPLY and h->status: *ret is filled on success (the
 * tail borrowed from payload). 0, -EBADMSG. The crc is not looked at: see
 * proto_payload_check. */
int proto_body_decode(const struct proto_hdr *h, const uint8_t *payload, size_t len,
		      struct proto_body *ret, char *err, size_t errlen);
/* Encode the fixed part of the payload for h's opcode, direction and status into out (at
 * most PROTO_MAX_FIXED bytes; an error reply's reason is its fixed part). The tail, if the
 * opcode has one, is b->data / b->data_len and follows the fixed part unchanged. Returns the
 * fixed part's length, or -EINVAL for a body the decoder would refuse (a bad UUID, a tail
 * longer than PROTO_MAX_DATA, entries that do not match count, reason text that is not
 * printable). */
ssize_t proto_body_encode(const struct proto_hdr *h, const struct proto_body *b, uint8_t *out,
			  size_t cap);
/* Whether h's opcode, direction and status carry a tail (b->data). */
bool proto_has_tail(const struct proto_hdr *h);

/* A whole frame in one buffer: header, payload crc, payload. For tests and fuzzers; the
 * transports decode incrementally. */
int proto_frame_decode(const uint8_t *buf, size_t len, struct proto_hdr *ret_hdr,
		       struct proto_body *ret_body, char *err, size_t errlen);

/* LIST entries: write entry i into a tail buffer / read entry i of a decoded LIST reply. */
void proto_list_put(uint8_t *tail, uint32_t i, const struct sm_chunk_info *c);
/* i >= b->count gives zeros and reads nothing. */
void proto_list_get(const struct proto_body *b, uint32_t i, struct sm_chunk_info *ret);

/* crc32c of a payload given as fixed part + tail (what proto_hdr.pcrc must hold). */
uint32_t proto_payload_crc(const uint8_t *fixed, size_t flen, const uint8_t *tail, size_t tlen);

#endif
