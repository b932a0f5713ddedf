/* proto — encoders and decoders of the data service's frames. See proto.h (PROTO-n) and
 * docs/protocol.md.
 *
 * Every payload is described once, as a list of fields in the layout table below; one
 * encoder and one decoder walk that table for every opcode and direction, so a field can be
 * neither forgotten by one side nor read past the payload by the other. What a table cannot
 * say (a UUID's shape, a count's bound) is checked in body_check(), shared by both sides: the
 * encoder refuses to write what the decoder would refuse to read (PROTO-4).
 */
#include "dataservice/proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/crc32c.h"
#include "common/util.h"

/* ---------------------------------------------------------------------------------------- */
/* little-endian bytes */

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static int bad(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EBADMSG;
}

/* ---------------------------------------------------------------------------------------- */
/* opcodes */

const char *proto_op_name(unsigned op)
{
	switch (op) {
#define PROTO_OP_CASE(name, num, str)                                                              \
	case num:                                                                                  \
		return str;
		PROTO_OPS(PROTO_OP_CASE)
#undef PROTO_OP_CASE
	}
	return NULL;
}

bool proto_op_mutates(unsigned op)
{
	return op == PROTO_OP_WRITE || op == PROTO_OP_TRUNCATE || op == PROTO_OP_PUNCH ||
	       op == PROTO_OP_ALLOCATE || op == PROTO_OP_REMOVE;
}

bool proto_op_local_ok(unsigned op)
{
	return op == PROTO_OP_READ || op == PROTO_OP_SEEK || op == PROTO_OP_CHUNK_LENGTH;
}

/* ---------------------------------------------------------------------------------------- */
/* header */

/* Byte offsets of the header fields (docs/protocol.md, "Header"). */
enum {
	H_MAGIC = 0,
	H_VERSION = 4,
	H_OP = 6,
	H_FLAGS = 8,
	H_STATUS = 12,
	H_REQ_ID = 16,
	H_EPOCH = 24,
	H_CHAIN = 32,
	H_TARGET = 36,
	H_LEN = 40,
	H_PCRC = 44,
	H_RESERVED = 48,
	H_HCRC = 52,
};

void proto_hdr_encode(const struct proto_hdr *h, uint8_t out[PROTO_HDR_SIZE])
{
	put_le(out + H_MAGIC, PROTO_MAGIC, 4);
	put_le(out + H_VERSION, h->version, 2);
	put_le(out + H_OP, h->op, 2);
	put_le(out + H_FLAGS, h->flags, 4);
	put_le(out + H_STATUS, (uint32_t)h->status, 4);
	put_le(out + H_REQ_ID, h->req_id, 8);
	put_le(out + H_EPOCH, h->epoch, 8);
	put_le(out + H_CHAIN, h->chain, 4);
	put_le(out + H_TARGET, h->target, 4);
	put_le(out + H_LEN, h->len, 4);
	put_le(out + H_PCRC, h->pcrc, 4);
	put_le(out + H_RESERVED, 0, 4);
	put_le(out + H_HCRC, crc32c(0, out, H_HCRC), 4);
}

int proto_hdr_decode(const uint8_t *buf, size_t len, struct proto_hdr *ret, char *err,
		     size_t errlen)
{
	if (len < PROTO_HDR_SIZE)
		return bad(err, errlen, "short frame header: %zu of %d bytes", len, PROTO_HDR_SIZE);
	/* PROTO-3: nothing is read from a header whose checksum does not match */
	uint32_t want = (uint32_t)get_le(buf + H_HCRC, 4), got = crc32c(0, buf, H_HCRC);
	if (want != got)
		return bad(err, errlen, "frame header checksum mismatch (%08x, computed %08x)",
			   want, got);
	uint32_t magic = (uint32_t)get_le(buf + H_MAGIC, 4);
	if (magic != PROTO_MAGIC)
		return bad(err, errlen, "bad frame magic %08x", magic);
	struct proto_hdr h = {
	    .version = (uint16_t)get_le(buf + H_VERSION, 2),
	    .op = (uint16_t)get_le(buf + H_OP, 2),
	    .flags = (uint32_t)get_le(buf + H_FLAGS, 4),
	    .status = (int32_t)(uint32_t)get_le(buf + H_STATUS, 4),
	    .req_id = get_le(buf + H_REQ_ID, 8),
	    .epoch = get_le(buf + H_EPOCH, 8),
	    .chain = (uint32_t)get_le(buf + H_CHAIN, 4),
	    .target = (uint32_t)get_le(buf + H_TARGET, 4),
	    .len = (uint32_t)get_le(buf + H_LEN, 4),
	    .pcrc = (uint32_t)get_le(buf + H_PCRC, 4),
	};
	if (h.version < PROTO_VERSION_MIN || h.version > PROTO_VERSION_MAX) {
		if (err && errlen)
			snprintf(err, errlen,
				 "protocol version %u not supported (this build speaks %d..%d)",
				 h.version, PROTO_VERSION_MIN, PROTO_VERSION_MAX);
		return -EPROTONOSUPPORT;
	}
	if (get_le(buf + H_RESERVED, 4) != 0)
		return bad(err, errlen, "reserved header bytes are not zero");
	if (!proto_op_name(h.op))
		return bad(err, errlen, "unknown opcode %u", h.op);
	if (h.flags & ~PROTO_F_ALL)
		return bad(err, errlen, "unknown header flags %#x", h.flags & ~PROTO_F_ALL);
	bool reply = h.flags & PROTO_F_REPLY;
	if (reply && (h.flags & PROTO_F_RETRY))
		return bad(err, errlen, "RETRY flag on a reply");
	if ((h.flags & PROTO_F_LOCAL) && (reply || !proto_op_local_ok(h.op)))
		return bad(err, errlen,
			   "LOCAL flag on a frame that is no READ, SEEK or CHUNK_LENGTH "
			   "request");
	if ((h.flags & PROTO_F_MORE) && (!reply || h.op != PROTO_OP_LIST || h.status != 0))
		return bad(err, errlen, "MORE flag on a frame that is no successful LIST reply");
	if (!reply && h.status != 0)
		return bad(err, errlen, "request with status %d", h.status);
	if (reply && (h.status > 0 || h.status < -4095))
		return bad(err, errlen, "reply status %d is neither 0 nor -errno", h.status);
	if (h.len > PROTO_MAX_PAYLOAD)
		return bad(err, errlen, "payload length %u exceeds %u", h.len, PROTO_MAX_PAYLOAD);
	*ret = h;
	return 0;
}

uint32_t proto_payload_crc(const uint8_t *fixed, size_t flen, const uint8_t *tail, size_t tlen)
{
	uint32_t c = crc32c(0, fixed, flen);
	return tlen ? crc32c(c, tail, tlen) : c;
}

int proto_payload_check(const struct proto_hdr *h, const uint8_t *payload, char *err, size_t errlen)
{
	uint32_t got = crc32c(0, payload, h->len);
	if (got != h->pcrc)
		return bad(err, errlen, "%s payload checksum mismatch (%08x, computed %08x)",
			   proto_op_name(h->op), h->pcrc, got);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* payload layouts */

enum fkind {
	F_END = 0,
	F_U16,
	F_U32,
	F_U64,
	F_PAD16,   /* reserved, zero */
	F_PAD32,   /* reserved, zero */
	F_UUID,	   /* 36 bytes: a lower-case UUID, or 36 zero bytes for "" */
	F_DATA,	   /* last: the rest of the payload is the tail (data, data_len) */
	F_ENTRIES, /* last: u32 count, then count LIST entries as the tail */
};

struct field {
	uint8_t kind;
	uint16_t off; /* into struct proto_body */
};

static const unsigned fsize[] = {
    [F_END] = 0,
    [F_U16] = 2,
    [F_U32] = 4,
    [F_U64] = 8,
    [F_PAD16] = 2,
    [F_PAD32] = 4,
    [F_UUID] = PROTO_UUID_LEN,
    [F_DATA] = 0,
    [F_ENTRIES] = 4,
};

#define FLD(k, m)                                                                                  \
	{                                                                                          \
		F_##k, offsetof(struct proto_body, m)                                              \
	}
#define PAD16                                                                                      \
	{                                                                                          \
		F_PAD16, 0                                                                         \
	}
#define PAD32                                                                                      \
	{                                                                                          \
		F_PAD32, 0                                                                         \
	}
#define END                                                                                        \
	{                                                                                          \
		F_END, 0                                                                           \
	}
#define DATA                                                                                       \
	{                                                                                          \
		F_DATA, 0                                                                          \
	}

static const struct field l_none[] = {END};
static const struct field l_hello_req[] = {
    FLD(U16, hello.min_version), FLD(U16, hello.max_version),  PAD32, FLD(U64, hello.node_id),
    FLD(U64, hello.instance),	 FLD(UUID, hello.volume_uuid), END};
static const struct field l_hello_rep[] = {FLD(U16, hello.version),
					   PAD16,
					   FLD(U32, hello.max_payload),
					   FLD(U64, hello.node_id),
					   FLD(U64, hello.instance),
					   FLD(UUID, hello.volume_uuid),
					   END};
static const struct field l_value[] = {FLD(U64, value), END};
static const struct field l_ident_rep[] = {
    FLD(U32, ident.format_version), FLD(U32, ident.target_id),	  FLD(U32, ident.chunk_size),
    FLD(UUID, ident.volume_uuid),   FLD(UUID, ident.target_uuid), END};
static const struct field l_read_req[] = {FLD(U64, ino), FLD(U32, idx), PAD32,
					  FLD(U64, off), FLD(U64, len), END};
static const struct field l_data[] = {DATA, END};
static const struct field l_write_req[] = {
    FLD(U64, ino),    FLD(U32, idx),	  PAD32, FLD(U64, off),
    FLD(U64, origin), FLD(U64, write_id), DATA,	 END};
static const struct field l_truncate_req[] = {
    FLD(U64, ino), FLD(U32, idx), PAD32, FLD(U64, len), FLD(U64, origin), FLD(U64, write_id), END};
static const struct field l_range_req[] = {
    FLD(U64, ino),    FLD(U32, idx),	  PAD32, FLD(U64, off), FLD(U64, len),
    FLD(U64, origin), FLD(U64, write_id), END};
static const struct field l_remove_req[] = {FLD(U64, ino),    FLD(U32, idx),	  PAD32,
					    FLD(U64, origin), FLD(U64, write_id), END};
static const struct field l_seek_req[] = {FLD(U64, ino), FLD(U32, idx), FLD(U32, whence),
					  FLD(U64, off), END};
static const struct field l_chunk_req[] = {FLD(U64, ino), FLD(U32, idx), PAD32, END};
static const struct field l_ino_req[] = {FLD(U64, ino), END};
static const struct field l_statfs_rep[] = {
    FLD(U64, statfs.total_bytes), FLD(U64, statfs.free_bytes), FLD(U64, statfs.used_bytes),
    FLD(U64, statfs.chunks), END};
static const struct field l_list_req[] = {FLD(U32, count), PAD32, END};
static const struct field l_list_rep[] = {{F_ENTRIES, offsetof(struct proto_body, count)}, END};

/* [op][0] = request, [op][1] = successful reply. NULL: no such opcode. */
static const struct field *const layouts[PROTO_OP_MAX + 1][2] = {
    [PROTO_OP_HELLO] = {l_hello_req, l_hello_rep},
    [PROTO_OP_PING] = {l_value, l_value},
    [PROTO_OP_IDENTITY] = {l_none, l_ident_rep},
    [PROTO_OP_READ] = {l_read_req, l_data},
    [PROTO_OP_WRITE] = {l_write_req, l_none},
    [PROTO_OP_TRUNCATE] = {l_truncate_req, l_none},
    [PROTO_OP_PUNCH] = {l_range_req, l_none},
    [PROTO_OP_ALLOCATE] = {l_range_req, l_none},
    [PROTO_OP_REMOVE] = {l_remove_req, l_none},
    [PROTO_OP_SEEK] = {l_seek_req, l_value},
    [PROTO_OP_CHUNK_LENGTH] = {l_chunk_req, l_value},
    [PROTO_OP_SYNC_INO] = {l_ino_req, l_none},
    [PROTO_OP_SYNC_ALL] = {l_none, l_none},
    [PROTO_OP_STATFS] = {l_none, l_statfs_rep},
    [PROTO_OP_LIST] = {l_list_req, l_list_rep},
};

static const struct field *layout_of(const struct proto_hdr *h)
{
	if (h->op > PROTO_OP_MAX)
		return NULL;
	return layouts[h->op][(h->flags & PROTO_F_REPLY) ? 1 : 0];
}

static const char *dir_name(const struct proto_hdr *h)
{
	return (h->flags & PROTO_F_REPLY) ? "reply" : "request";
}

bool proto_has_tail(const struct proto_hdr *h)
{
	const struct field *l = layout_of(h);
	if (!l || h->status < 0)
		return false;
	for (; l->kind != F_END; l++)
		if (l->kind == F_DATA || l->kind == F_ENTRIES)
			return true;
	return false;
}

/* A UUID as proto carries it: "" or 8-4-4-4-12 lower-case hex digits (PROTO-4). */
static bool uuid_ok(const char *s)
{
	if (!s[0])
		return true;
	for (unsigned i = 0; i < PROTO_UUID_LEN; i++) {
		char c = s[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return false;
		}
	}
	return s[PROTO_UUID_LEN] == '\0';
}

static bool printable(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

/* What the table cannot say; the same rules bind the encoder and the decoder. */
static int body_check(const struct proto_hdr *h, const struct proto_body *b, char *err,
		      size_t errlen)
{
	const char *op = proto_op_name(h->op);
	bool reply = h->flags & PROTO_F_REPLY;
	if (b->data_len > PROTO_MAX_DATA)
		return bad(err, errlen, "%s %s data of %u bytes exceeds %u", op, dir_name(h),
			   b->data_len, PROTO_MAX_DATA);
	switch (h->op) {
	case PROTO_OP_HELLO:
		if (!uuid_ok(b->hello.volume_uuid))
			return bad(err, errlen, "hello: malformed volume uuid");
		if (!reply &&
		    (b->hello.min_version == 0 || b->hello.min_version > b->hello.max_version))
			return bad(err, errlen, "hello: bad version range %u..%u",
				   b->hello.min_version, b->hello.max_version);
		if (reply && (b->hello.version == 0 || b->hello.max_payload == 0))
			return bad(err, errlen, "hello reply: version %u, max payload %u",
				   b->hello.version, b->hello.max_payload);
		break;
	case PROTO_OP_IDENTITY:
		if (reply && (!uuid_ok(b->ident.volume_uuid) || !uuid_ok(b->ident.target_uuid)))
			return bad(err, errlen, "identity reply: malformed uuid");
		break;
	case PROTO_OP_READ:
		if (!reply && b->len > PROTO_MAX_DATA)
			return bad(err, errlen, "read of %llu bytes exceeds %u",
				   (unsigned long long)b->len, PROTO_MAX_DATA);
		break;
	case PROTO_OP_SEEK:
		if (!reply && b->whence != PROTO_SEEK_DATA && b->whence != PROTO_SEEK_HOLE)
			return bad(err, errlen, "seek: unknown whence %u", b->whence);
		break;
	case PROTO_OP_LIST:
		if (!reply && (b->count == 0 || b->count > PROTO_LIST_MAX_PAGE))
			return bad(err, errlen, "list: page of %u entries (1..%d)", b->count,
				   PROTO_LIST_MAX_PAGE);
		if (reply && b->count > PROTO_LIST_MAX_PAGE)
			return bad(err, errlen, "list reply: %u entries exceed %d", b->count,
				   PROTO_LIST_MAX_PAGE);
		if (reply && (uint64_t)b->count * PROTO_LIST_ENTRY_SIZE != b->data_len)
			return bad(err, errlen, "list reply: %u entries in %u bytes", b->count,
				   b->data_len);
		break;
	}
	if (!reply && proto_op_mutates(h->op) && b->write_id && !b->origin)
		return bad(err, errlen, "%s: write id %llu without an origin", op,
			   (unsigned long long)b->write_id);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* encode */

ssize_t proto_body_encode(const struct proto_hdr *h, const struct proto_body *b, uint8_t *out,
			  size_t cap)
{
	const struct field *l = layout_of(h);
	if (!l || (!(h->flags & PROTO_F_REPLY) && h->status != 0))
		return -EINVAL;
	if ((h->flags & PROTO_F_REPLY) && h->status < 0) {
		size_t n = strnlen(b->reason, sizeof(b->reason));
		if (n > PROTO_MAX_REASON || !printable(b->reason, n) || n > cap)
			return -EINVAL;
		memcpy(out, b->reason, n);
		return (ssize_t)n;
	}
	if (body_check(h, b, NULL, 0) < 0)
		return -EINVAL;
	const uint8_t *base = (const uint8_t *)b;
	size_t pos = 0;
	for (; l->kind != F_END; l++) {
		unsigned n = fsize[l->kind];
		if (pos + n > cap)
			return -EINVAL;
		const uint8_t *src = base + l->off;
		switch (l->kind) {
		case F_U16:
			put_le(out + pos, *(const uint16_t *)src, 2);
			break;
		case F_U32:
		case F_ENTRIES:
			put_le(out + pos, *(const uint32_t *)src, 4);
			break;
		case F_U64:
			put_le(out + pos, *(const uint64_t *)src, 8);
			break;
		case F_PAD16:
		case F_PAD32:
			memset(out + pos, 0, n);
			break;
		case F_UUID:
			/* "" is 36 zero bytes; uuid_ok() passed, so a non-empty one has 36 chars */
			if (*src)
				memcpy(out + pos, src, n);
			else
				memset(out + pos, 0, n);
			break;
		case F_DATA:
			break;
		}
		pos += n;
	}
	return (ssize_t)pos;
}

/* ---------------------------------------------------------------------------------------- */
/* decode */

/* A bounded cursor (PROTO-1): take() hands out the next n bytes or NULL when fewer remain. */
struct cursor {
	const uint8_t *p;
	size_t len, pos;
};

static const uint8_t *take(struct cursor *c, size_t n)
{
	if (n > c->len - c->pos)
		return NULL;
	const uint8_t *r = c->p + c->pos;
	c->pos += n;
	return r;
}

static size_t fixed_size(const struct field *l)
{
	size_t n = 0;
	for (; l->kind != F_END; l++)
		n += fsize[l->kind];
	return n;
}

static int decode_reason(const struct proto_hdr *h, const uint8_t *payload, size_t len,
			 struct proto_body *b, char *err, size_t errlen)
{
	if (len > PROTO_MAX_REASON)
		return bad(err, errlen, "%s error reply: reason of %zu bytes exceeds %d",
			   proto_op_name(h->op), len, PROTO_MAX_REASON);
	if (!printable((const char *)payload, len))
		return bad(err, errlen, "%s error reply: reason is not printable text",
			   proto_op_name(h->op));
	memcpy(b->reason, payload, len);
	b->reason[len] = '\0';
	return 0;
}

int proto_body_decode(const struct proto_hdr *h, const uint8_t *payload, size_t len,
		      struct proto_body *ret, char *err, size_t errlen)
{
	struct proto_body b;
	memset(&b, 0, sizeof(b));
	const struct field *l = layout_of(h);
	if (!l)
		return bad(err, errlen, "unknown opcode %u", h->op);
	const char *op = proto_op_name(h->op);
	if ((h->flags & PROTO_F_REPLY) && h->status < 0) {
		int r = decode_reason(h, payload, len, &b, err, errlen);
		if (r == 0)
			*ret = b;
		return r;
	}
	size_t need = fixed_size(l);
	if (len < need)
		return bad(err, errlen, "short %s %s payload: %zu bytes, needs %zu", op,
			   dir_name(h), len, need);
	struct cursor c = {payload, len, 0};
	uint8_t *base = (uint8_t *)&b;
	for (; l->kind != F_END; l++) {
		const uint8_t *p = take(&c, fsize[l->kind]);
		if (!p) /* cannot happen after the size check; the cursor stays the only way in */
			return bad(err, errlen, "short %s %s payload", op, dir_name(h));
		uint8_t *dst = base + l->off;
		switch (l->kind) {
		case F_U16:
			*(uint16_t *)dst = (uint16_t)get_le(p, 2);
			break;
		case F_U32:
			*(uint32_t *)dst = (uint32_t)get_le(p, 4);
			break;
		case F_U64:
			*(uint64_t *)dst = get_le(p, 8);
			break;
		case F_PAD16:
		case F_PAD32:
			if (get_le(p, fsize[l->kind]) != 0)
				return bad(err, errlen, "%s %s: reserved bytes are not zero", op,
					   dir_name(h));
			break;
		case F_UUID: {
			static const uint8_t zero[PROTO_UUID_LEN];
			if (memcmp(p, zero, PROTO_UUID_LEN) != 0) {
				memcpy(dst, p, PROTO_UUID_LEN);
				dst[PROTO_UUID_LEN] = '\0';
				if (!uuid_ok((const char *)dst) || dst[0] == '\0')
					return bad(err, errlen, "%s %s: malformed uuid", op,
						   dir_name(h));
			}
			break;
		}
		case F_ENTRIES:
			*(uint32_t *)dst = (uint32_t)get_le(p, 4);
			__attribute__((fallthrough)); /* the entries are the tail */
		case F_DATA:
			b.data_len = (uint32_t)MIN(c.len - c.pos, (size_t)UINT32_MAX);
			b.data = take(&c, b.data_len);
			break;
		}
	}
	if (c.pos != c.len)
		return bad(err, errlen, "%s %s: %zu trailing bytes", op, dir_name(h),
			   c.len - c.pos);
	int r = body_check(h, &b, err, errlen);
	if (r < 0)
		return r;
	*ret = b;
	return 0;
}

int proto_frame_decode(const uint8_t *buf, size_t len, struct proto_hdr *ret_hdr,
		       struct proto_body *ret_body, char *err, size_t errlen)
{
	struct proto_hdr h = {.len = 0}; /* set by proto_hdr_decode; gcc cannot always tell */
	int r = proto_hdr_decode(buf, len, &h, err, errlen);
	if (r < 0)
		return r;
	if (len - PROTO_HDR_SIZE != h.len)
		return bad(err, errlen, "frame of %zu bytes, header says %u + %d", len, h.len,
			   PROTO_HDR_SIZE);
	r = proto_payload_check(&h, buf + PROTO_HDR_SIZE, err, errlen);
	if (r < 0)
		return r;
	r = proto_body_decode(&h, buf + PROTO_HDR_SIZE, h.len, ret_body, err, errlen);
	if (r < 0)
		return r;
	*ret_hdr = h;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* LIST entries */

void proto_list_put(uint8_t *tail, uint32_t i, const struct sm_chunk_info *c)
{
	uint8_t *p = tail + (size_t)i * PROTO_LIST_ENTRY_SIZE;
	put_le(p, c->ino, 8);
	put_le(p + 8, c->idx, 4);
	put_le(p + 12, c->length, 8);
}

void proto_list_get(const struct proto_body *b, uint32_t i, struct sm_chunk_info *ret)
{
	if ((uint64_t)i * PROTO_LIST_ENTRY_SIZE + PROTO_LIST_ENTRY_SIZE > b->data_len) {
		memset(ret, 0, sizeof(*ret)); /* i >= count: nothing to read */
		return;
	}
	const uint8_t *p = b->data + (size_t)i * PROTO_LIST_ENTRY_SIZE;
	ret->ino = get_le(p, 8);
	ret->idx = (uint32_t)get_le(p + 8, 4);
	ret->length = get_le(p + 12, 8);
}
