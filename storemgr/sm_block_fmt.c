/* sm_block_fmt — the on-device structures of the block chunk store: superblock, log blocks and
 * their records, checkpoint images. Rendering and bounded parsing only; no I/O, no state.
 * docs/format.md is the description; FMT-n are its invariants. Every integer is little-endian.
 *
 * The parsers take bytes read from a device: they never read past `len`, never trust a count
 * or an offset before checking it against what is left, and answer -EBADMSG with a reason.
 */
#include "storemgr/sm_block_int.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crc32c.h"
#include "common/util.h"

/* ---------------------------------------------------------------------------------------- */
/* little-endian fields */

static void put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}

#define BAD(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
		return -EBADMSG;                                                                   \
	} while (0)

/* Block numbers and counts on the device stay below 2^48 (1 EiB of 4 KiB blocks), so sums of
 * two never overflow and a bit above them is free for flags. */
#define SM_BLOCK_MAX_BLKNO (1ull << 48)

static bool chunk_size_ok(uint32_t cs)
{
	return cs >= SM_BLOCK_BS && cs <= (1u << 30) && cs % SM_BLOCK_BS == 0;
}

/* ---------------------------------------------------------------------------------------- */
/* superblock (FMT-2) */

enum {
	SB_MAGIC = 0,
	SB_VERSION = 8,
	SB_COPY = 12,
	SB_GEN = 16,
	SB_NONCE = 24,
	SB_BS = 32,
	SB_CHUNK = 36,
	SB_TID = 40,
	SB_IDVER = 44,
	SB_VOL = 48,
	SB_TGT = 88, /* uuids: 36 characters, NUL padded to 40 */
	SB_DEVBLK = 128,
	SB_LOG = 136,
	SB_LOGN = 144,
	SB_CP0 = 152,
	SB_CP1 = 160,
	SB_CPN = 168,
	SB_DATA = 176,
	SB_DATAN = 184,
	SB_MAXCH = 192,
	SB_CPAREA = 200,
	SB_CPCRC = 204,
	SB_CPLEN = 208,
	SB_CPSEQ = 216,
	SB_REPLAY = 224,
	SB_CRC = 232, /* crc32c of the whole block with this field zero (a torn write shows) */
	SB_END = 236,
};

/* The bytes a checkpoint of a device with data_blocks data blocks can take at most (FMT-12):
 * a header; an entry per chunk (at most one chunk per data block: max_chunks); a run per
 * block at worst; a crc per block. */
#define CP_ENTRY SM_BLOCK_CP_ENTRY
#define CP_RUN	 SM_BLOCK_CP_RUN
static uint64_t cp_bytes_max(uint64_t data_blocks)
{
	return SM_BLOCK_CP_HDR + data_blocks * (CP_ENTRY + CP_RUN + 4);
}

bool sm_block_has_magic(const void *buf, size_t len)
{
	return len >= 8 && memcmp(buf, SM_BLOCK_SB_MAGIC, 8) == 0;
}

void sm_block_sb_render(const struct sm_block_sb *sb, void *out)
{
	uint8_t *p = out;
	memset(p, 0, SM_BLOCK_BS);
	memcpy(p + SB_MAGIC, SM_BLOCK_SB_MAGIC, 8);
	put32(p + SB_VERSION, sb->version);
	put32(p + SB_COPY, sb->copy);
	put64(p + SB_GEN, sb->generation);
	put64(p + SB_NONCE, sb->nonce);
	put32(p + SB_BS, SM_BLOCK_BS);
	put32(p + SB_CHUNK, sb->id.chunk_size);
	put32(p + SB_TID, sb->id.target_id);
	put32(p + SB_IDVER, sb->id.format_version);
	memcpy(p + SB_VOL, sb->id.volume_uuid, strnlen(sb->id.volume_uuid, 36));
	memcpy(p + SB_TGT, sb->id.target_uuid, strnlen(sb->id.target_uuid, 36));
	put64(p + SB_DEVBLK, sb->dev_blocks);
	put64(p + SB_LOG, sb->log_start);
	put64(p + SB_LOGN, sb->log_blocks);
	put64(p + SB_CP0, sb->cp_start[0]);
	put64(p + SB_CP1, sb->cp_start[1]);
	put64(p + SB_CPN, sb->cp_blocks);
	put64(p + SB_DATA, sb->data_start);
	put64(p + SB_DATAN, sb->data_blocks);
	put64(p + SB_MAXCH, sb->max_chunks);
	put32(p + SB_CPAREA, sb->cp_area);
	put32(p + SB_CPCRC, sb->cp_crc);
	put64(p + SB_CPLEN, sb->cp_len);
	put64(p + SB_CPSEQ, sb->cp_seq);
	put64(p + SB_REPLAY, sb->replay_pos);
	put32(p + SB_CRC, crc32c(0, p, SM_BLOCK_BS));
}

/* crc32c of a block whose crc field (at `at`) counts as zero. */
static uint32_t crc_without(const uint8_t *p, size_t at)
{
	static const uint8_t zero[4];
	uint32_t c = crc32c(0, p, at);
	c = crc32c(c, zero, 4);
	return crc32c(c, p + at + 4, SM_BLOCK_BS - at - 4);
}

static int uuid_field(const uint8_t *p, char out[37])
{
	memcpy(out, p, 36);
	out[36] = '\0';
	for (int i = 36; i < 40; i++)
		if (p[i])
			return -1;
	return uuid_str_valid(out) ? 0 : -1;
}

int sm_block_sb_parse(const void *buf, size_t len, struct sm_block_sb *ret, char *why,
		      size_t whylen)
{
	const uint8_t *p = buf;
	struct sm_block_sb sb = {0};
	if (len < SM_BLOCK_BS)
		BAD("short superblock (%zu bytes)", len);
	if (!sm_block_has_magic(p, len))
		BAD("no superblock magic");
	uint32_t want = get32(p + SB_CRC), got = crc_without(p, SB_CRC);
	if (want != got)
		BAD("superblock checksum mismatch (stored %08x, computed %08x)", want, got);
	sb.version = get32(p + SB_VERSION);
	if (sb.version != SM_BLOCK_VERSION)
		BAD("superblock format version %u (this braidfs reads %u)", sb.version,
		    SM_BLOCK_VERSION);
	if (get32(p + SB_BS) != SM_BLOCK_BS)
		BAD("block size %u (expected %u)", get32(p + SB_BS), SM_BLOCK_BS);
	sb.copy = get32(p + SB_COPY);
	if (sb.copy > 1)
		BAD("bad copy slot %u", sb.copy);
	sb.generation = get64(p + SB_GEN);
	sb.nonce = get64(p + SB_NONCE);
	sb.id.chunk_size = get32(p + SB_CHUNK);
	sb.id.target_id = get32(p + SB_TID);
	sb.id.format_version = get32(p + SB_IDVER);
	if (!chunk_size_ok(sb.id.chunk_size))
		BAD("invalid chunk size %u", sb.id.chunk_size);
	if (uuid_field(p + SB_VOL, sb.id.volume_uuid) < 0 ||
	    uuid_field(p + SB_TGT, sb.id.target_uuid) < 0)
		BAD("invalid volume or target uuid");
	sb.dev_blocks = get64(p + SB_DEVBLK);
	sb.log_start = get64(p + SB_LOG);
	sb.log_blocks = get64(p + SB_LOGN);
	sb.cp_start[0] = get64(p + SB_CP0);
	sb.cp_start[1] = get64(p + SB_CP1);
	sb.cp_blocks = get64(p + SB_CPN);
	sb.data_start = get64(p + SB_DATA);
	sb.data_blocks = get64(p + SB_DATAN);
	sb.max_chunks = get64(p + SB_MAXCH);
	sb.cp_area = get32(p + SB_CPAREA);
	sb.cp_crc = get32(p + SB_CPCRC);
	sb.cp_len = get64(p + SB_CPLEN);
	sb.cp_seq = get64(p + SB_CPSEQ);
	sb.replay_pos = get64(p + SB_REPLAY);
	/* FMT-1: the regions follow each other in this order, inside the device */
	if (sb.dev_blocks >= SM_BLOCK_MAX_BLKNO || sb.log_blocks >= SM_BLOCK_MAX_BLKNO ||
	    sb.cp_blocks >= SM_BLOCK_MAX_BLKNO || sb.data_blocks >= SM_BLOCK_MAX_BLKNO)
		BAD("region size out of range");
	if (sb.log_start != 2 || sb.log_blocks < 16 ||
	    sb.cp_start[0] != sb.log_start + sb.log_blocks || sb.cp_blocks == 0 ||
	    sb.cp_start[1] != sb.cp_start[0] + sb.cp_blocks ||
	    sb.data_start != sb.cp_start[1] + sb.cp_blocks || sb.data_blocks == 0 ||
	    sb.data_start + sb.data_blocks > sb.dev_blocks)
		BAD("inconsistent region layout");
	if (sb.max_chunks == 0 || sb.max_chunks > sb.data_blocks ||
	    cp_bytes_max(sb.data_blocks) > sb.cp_blocks * SM_BLOCK_BS)
		BAD("checkpoint areas too small for the data region");
	if (sb.cp_area > 1 || sb.cp_len < SM_BLOCK_CP_HDR || sb.cp_len > sb.cp_blocks * SM_BLOCK_BS)
		BAD("bad checkpoint reference (area %u, %llu bytes)", sb.cp_area,
		    (unsigned long long)sb.cp_len);
	if (sb.cp_seq >= UINT64_MAX / 2 || sb.replay_pos != (sb.cp_seq + 1) % sb.log_blocks)
		BAD("replay position %llu does not follow checkpoint sequence %llu",
		    (unsigned long long)sb.replay_pos, (unsigned long long)sb.cp_seq);
	*ret = sb;
	return 0;
}

int sm_block_layout(uint64_t dev_blocks, struct sm_block_sb *ret)
{
	if (dev_blocks * SM_BLOCK_BS < SM_BLOCK_MIN_BYTES || dev_blocks >= SM_BLOCK_MAX_BLKNO)
		return -ENOSPC;
	struct sm_block_sb sb = *ret;
	sb.dev_blocks = dev_blocks;
	sb.log_start = 2;
	/* 1/64 of the device, 4 MiB to 1 GiB: half of it is written between checkpoints */
	sb.log_blocks = MIN(MAX(dev_blocks / 64, 1024), 262144);
	uint64_t avail = dev_blocks - 2 - sb.log_blocks;
	uint64_t d = avail / (SM_BLOCK_BS + 2 * (CP_ENTRY + CP_RUN + 4)) * SM_BLOCK_BS;
	uint64_t c;
	for (;;) { /* at most a few rounds: d starts within a block or two of the answer */
		c = (cp_bytes_max(d) + SM_BLOCK_BS - 1) / SM_BLOCK_BS;
		if (d + 2 * c <= avail)
			break;
		d--;
	}
	/* grow d into what rounding left over */
	while ((cp_bytes_max(d + 1) + SM_BLOCK_BS - 1) / SM_BLOCK_BS * 2 + d + 1 <= avail)
		d++;
	c = (cp_bytes_max(d) + SM_BLOCK_BS - 1) / SM_BLOCK_BS;
	sb.cp_blocks = c;
	sb.cp_start[0] = sb.log_start + sb.log_blocks;
	sb.cp_start[1] = sb.cp_start[0] + c;
	sb.data_start = sb.cp_start[1] + c;
	sb.data_blocks = d;
	sb.max_chunks = d;
	*ret = sb;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* log blocks (FMT-6) */

enum {
	LOG_MAGIC = 0,
	LOG_NONCE = 8,
	LOG_SEQ = 16,
	LOG_GEN = 24,
	LOG_DURABLE = 32,
	LOG_COUNT = 40,
	LOG_USED = 44,
	LOG_CRC = 48, /* crc32c of the whole block with this field zero */
};

enum {
	REC_TYPE = 0,
	REC_SIZE = 2, /* u16: bytes of the record */
	REC_IDX = 4,
	REC_INO = 8,
	/* MAP */
	MAP_LEN = 16,
	MAP_FIRST = 20,
	MAP_N = 24,
	MAP_FLAGS = 28,
	MAP_PB = 32,
	MAP_CRCS = 40,
	/* UNMAP */
	UNMAP_FIRST = 16,
	UNMAP_N = 20,
	/* SETLEN */
	SETLEN_LEN = 16,
};

uint32_t sm_block_rec_size(const struct sm_block_rec *rec)
{
	switch (rec->type) {
	case SM_BLOCK_REC_MAP:
		return SM_BLOCK_REC_MAP_FIXED +
		       (rec->flags & SM_BLOCK_MAP_UNWRITTEN ? 0 : 4 * rec->n);
	case SM_BLOCK_REC_UNMAP:
	case SM_BLOCK_REC_SETLEN:
		return SM_BLOCK_REC_HDR + 8;
	default:
		return SM_BLOCK_REC_HDR;
	}
}

bool sm_block_rec_put(void *buf, uint32_t *used, const struct sm_block_rec *rec)
{
	uint32_t size = sm_block_rec_size(rec);
	if (*used + size > SM_BLOCK_BS - SM_BLOCK_LOG_HDR)
		return false;
	uint8_t *p = (uint8_t *)buf + SM_BLOCK_LOG_HDR + *used;
	memset(p, 0, size);
	p[REC_TYPE] = rec->type;
	p[REC_SIZE] = (uint8_t)(size & 0xff);
	p[REC_SIZE + 1] = (uint8_t)(size >> 8);
	put32(p + REC_IDX, rec->idx);
	put64(p + REC_INO, rec->ino);
	switch (rec->type) {
	case SM_BLOCK_REC_MAP:
		put32(p + MAP_LEN, rec->len);
		put32(p + MAP_FIRST, rec->first);
		put32(p + MAP_N, rec->n);
		put32(p + MAP_FLAGS, rec->flags);
		put64(p + MAP_PB, rec->pb);
		if (!(rec->flags & SM_BLOCK_MAP_UNWRITTEN))
			memcpy(p + MAP_CRCS, rec->crcs, 4 * (size_t)rec->n);
		break;
	case SM_BLOCK_REC_UNMAP:
		put32(p + UNMAP_FIRST, rec->first);
		put32(p + UNMAP_N, rec->n);
		break;
	case SM_BLOCK_REC_SETLEN:
		put32(p + SETLEN_LEN, rec->len);
		break;
	}
	*used += size;
	return true;
}

void sm_block_log_seal(void *buf, const struct sm_block_log_hdr *h)
{
	uint8_t *p = buf;
	memset(p, 0, SM_BLOCK_LOG_HDR);
	memset(p + SM_BLOCK_LOG_HDR + h->used, 0, SM_BLOCK_BS - SM_BLOCK_LOG_HDR - h->used);
	memcpy(p + LOG_MAGIC, SM_BLOCK_LOG_MAGIC, 8);
	put64(p + LOG_NONCE, h->nonce);
	put64(p + LOG_SEQ, h->seq);
	put64(p + LOG_GEN, h->generation);
	put64(p + LOG_DURABLE, h->durable);
	put32(p + LOG_COUNT, h->count);
	put32(p + LOG_USED, h->used);
	put32(p + LOG_CRC, crc32c(0, p, SM_BLOCK_BS));
}

/* One record at p (avail bytes left in the block): framing and ranges. */
static int rec_parse(const uint8_t *p, size_t avail, const struct sm_block_limits *lim,
		     struct sm_block_rec *ret, char *why, size_t whylen)
{
	if (avail < SM_BLOCK_REC_HDR)
		BAD("record header past the end of the block");
	struct sm_block_rec r = {0};
	r.type = p[REC_TYPE];
	uint32_t size = (uint32_t)p[REC_SIZE] | (uint32_t)p[REC_SIZE + 1] << 8;
	r.idx = get32(p + REC_IDX);
	r.ino = get64(p + REC_INO);
	if (p[1])
		BAD("record with reserved bits set");
	if (size > avail)
		BAD("record of %u bytes past the end of the block", size);
	uint32_t cblocks = lim->chunk_size / SM_BLOCK_BS;
	switch (r.type) {
	case SM_BLOCK_REC_MAP:
		if (size < SM_BLOCK_REC_MAP_FIXED)
			BAD("short map record");
		r.len = get32(p + MAP_LEN);
		r.first = get32(p + MAP_FIRST);
		r.n = get32(p + MAP_N);
		r.flags = get32(p + MAP_FLAGS);
		r.pb = get64(p + MAP_PB);
		if (r.flags & ~SM_BLOCK_MAP_UNWRITTEN)
			BAD("map record with unknown flags %#x", r.flags);
		if (r.n == 0 || r.n > SM_BLOCK_REC_MAX_BLOCKS || r.first >= cblocks ||
		    r.n > cblocks - r.first)
			BAD("map record of blocks %u+%u outside a chunk of %u", r.first, r.n,
			    cblocks);
		if (r.len > lim->chunk_size || r.len <= (uint64_t)(r.first + r.n - 1) * SM_BLOCK_BS)
			BAD("map record length %u does not cover its blocks", r.len);
		if (r.pb < lim->data_start || r.pb >= lim->data_end || r.n > lim->data_end - r.pb)
			BAD("map record to blocks %llu+%u outside the data region",
			    (unsigned long long)r.pb, r.n);
		if (size != sm_block_rec_size(&r))
			BAD("map record of %u bytes for %u blocks", size, r.n);
		r.crcs = r.flags & SM_BLOCK_MAP_UNWRITTEN ? NULL : p + MAP_CRCS;
		break;
	case SM_BLOCK_REC_UNMAP:
		if (size != SM_BLOCK_REC_HDR + 8)
			BAD("unmap record of %u bytes", size);
		r.first = get32(p + UNMAP_FIRST);
		r.n = get32(p + UNMAP_N);
		if (r.n == 0 || r.first >= cblocks || r.n > cblocks - r.first)
			BAD("unmap record of blocks %u+%u outside a chunk of %u", r.first, r.n,
			    cblocks);
		break;
	case SM_BLOCK_REC_SETLEN:
		if (size != SM_BLOCK_REC_HDR + 8)
			BAD("setlen record of %u bytes", size);
		r.len = get32(p + SETLEN_LEN);
		if (r.len > lim->chunk_size)
			BAD("setlen record of %u bytes in a chunk of %u", r.len, lim->chunk_size);
		break;
	case SM_BLOCK_REC_REMOVE:
		if (size != SM_BLOCK_REC_HDR)
			BAD("remove record of %u bytes", size);
		break;
	default:
		BAD("unknown record type %u", r.type);
	}
	*ret = r;
	return 0;
}

int sm_block_log_parse(const void *buf, size_t len, uint64_t nonce,
		       const struct sm_block_limits *lim, struct sm_block_log_hdr *ret, char *why,
		       size_t whylen)
{
	const uint8_t *p = buf;
	if (len < SM_BLOCK_BS)
		BAD("short log block (%zu bytes)", len);
	if (memcmp(p + LOG_MAGIC, SM_BLOCK_LOG_MAGIC, 8) != 0)
		BAD("no log block magic");
	uint32_t got = crc_without(p, LOG_CRC);
	uint32_t want = get32(p + LOG_CRC);
	if (got != want)
		BAD("log block checksum mismatch (stored %08x, computed %08x)", want, got);
	struct sm_block_log_hdr h = {
	    .nonce = get64(p + LOG_NONCE),
	    .seq = get64(p + LOG_SEQ),
	    .generation = get64(p + LOG_GEN),
	    .durable = get64(p + LOG_DURABLE),
	    .count = get32(p + LOG_COUNT),
	    .used = get32(p + LOG_USED),
	};
	if (h.nonce != nonce)
		BAD("log block of another format (nonce %016llx)", (unsigned long long)h.nonce);
	if (h.durable >= h.seq)
		BAD("log block %llu claims durable %llu", (unsigned long long)h.seq,
		    (unsigned long long)h.durable);
	if (h.used > SM_BLOCK_BS - SM_BLOCK_LOG_HDR)
		BAD("log block with %u bytes of records", h.used);
	size_t pos = 0;
	for (uint32_t i = 0; i < h.count; i++) {
		struct sm_block_rec r;
		int e = rec_parse(p + SM_BLOCK_LOG_HDR + pos, h.used - pos, lim, &r, why, whylen);
		if (e < 0)
			return e;
		pos += sm_block_rec_size(&r);
	}
	if (pos != h.used)
		BAD("log block: %u records take %zu bytes, header says %u", h.count, pos, h.used);
	*ret = h;
	return 0;
}

bool sm_block_rec_next(const void *buf, const struct sm_block_log_hdr *h, size_t *pos,
		       struct sm_block_rec *ret)
{
	if (*pos >= h->used)
		return false;
	/* already validated by sm_block_log_parse(): limits wide enough to accept it */
	const struct sm_block_limits any = {1u << 30, 0, SM_BLOCK_MAX_BLKNO};
	const uint8_t *p = (const uint8_t *)buf + SM_BLOCK_LOG_HDR + *pos;
	if (rec_parse(p, h->used - *pos, &any, ret, NULL, 0) < 0)
		return false;
	*pos += sm_block_rec_size(ret);
	return true;
}

/* ---------------------------------------------------------------------------------------- */
/* checkpoint images (FMT-9) */

enum {
	CP_MAGIC = 0,
	CP_NONCE = 8,
	CP_SEQ = 16,
	CP_NCHUNKS = 24,
	CP_BODY = 32,
	CP_CRC = 40, /* crc32c of the header with this field zero, then of the body */
};

/* One run at q (validated by the caller's first pass, or checked here when check is set). */
static const uint8_t *cp_run_get(const uint8_t *q, struct sm_block_cp_run *r)
{
	*r = (struct sm_block_cp_run){
	    .first = get32(q), .n = get32(q + 4), .flags = get32(q + 8), .pb = get64(q + 12)};
	q += CP_RUN;
	if (!(r->flags & SM_BLOCK_MAP_UNWRITTEN)) {
		r->crcs = q;
		q += 4 * (size_t)r->n;
	}
	return q;
}

int sm_block_cp_parse(const void *buf, size_t len, uint64_t nonce,
		      const struct sm_block_limits *lim, sm_block_cp_cb cb, void *ctx,
		      struct sm_block_cp_hdr *ret, char *why, size_t whylen)
{
	const uint8_t *p = buf;
	if (len < SM_BLOCK_CP_HDR)
		BAD("short checkpoint (%zu bytes)", len);
	if (memcmp(p + CP_MAGIC, SM_BLOCK_CP_MAGIC, 8) != 0)
		BAD("no checkpoint magic");
	struct sm_block_cp_hdr h = {
	    .nonce = get64(p + CP_NONCE),
	    .seq = get64(p + CP_SEQ),
	    .nchunks = get64(p + CP_NCHUNKS),
	    .body = get64(p + CP_BODY),
	};
	if (h.body != len - SM_BLOCK_CP_HDR)
		BAD("checkpoint body of %llu bytes in an image of %zu", (unsigned long long)h.body,
		    len);
	uint8_t hdr[SM_BLOCK_CP_HDR];
	memcpy(hdr, p, sizeof(hdr));
	put32(hdr + CP_CRC, 0);
	uint32_t got = crc32c(crc32c(0, hdr, sizeof(hdr)), p + SM_BLOCK_CP_HDR, h.body);
	if (got != get32(p + CP_CRC))
		BAD("checkpoint checksum mismatch (stored %08x, computed %08x)", get32(p + CP_CRC),
		    got);
	if (h.nonce != nonce)
		BAD("checkpoint of another format (nonce %016llx)", (unsigned long long)h.nonce);
	uint32_t cblocks = lim->chunk_size / SM_BLOCK_BS;
	const uint8_t *q = p + SM_BLOCK_CP_HDR, *end = p + len;
	struct sm_block_cp_run stack_runs[64];
	for (uint64_t c = 0; c < h.nchunks; c++) {
		if ((size_t)(end - q) < CP_ENTRY)
			BAD("checkpoint entry %llu past the end", (unsigned long long)c);
		uint64_t ino = get64(q);
		uint32_t idx = get32(q + 8), length = get32(q + 12), nruns = get32(q + 16);
		q += CP_ENTRY;
		if (length > lim->chunk_size)
			BAD("chunk %llu.%u of %u bytes (chunk size %u)", (unsigned long long)ino,
			    idx, length, lim->chunk_size);
		uint64_t nblk = ((uint64_t)length + SM_BLOCK_BS - 1) / SM_BLOCK_BS;
		uint32_t next = 0;
		const uint8_t *runs_at = q;
		/* first pass: every run in bounds, in order, inside the chunk and the data region
		 */
		for (uint32_t i = 0; i < nruns; i++) {
			struct sm_block_cp_run r;
			if ((size_t)(end - q) < CP_RUN)
				BAD("checkpoint run past the end");
			cp_run_get(q, &r);
			if (r.flags & ~SM_BLOCK_MAP_UNWRITTEN)
				BAD("checkpoint run with unknown flags %#x", r.flags);
			if (r.n == 0 || r.first < next || r.first >= nblk || r.n > nblk - r.first ||
			    r.first >= cblocks)
				BAD("chunk %llu.%u: run %u+%u out of order or past its length",
				    (unsigned long long)ino, idx, r.first, r.n);
			if (r.pb < lim->data_start || r.pb >= lim->data_end ||
			    r.n > lim->data_end - r.pb)
				BAD("chunk %llu.%u: run to blocks outside the data region",
				    (unsigned long long)ino, idx);
			if (!(r.flags & SM_BLOCK_MAP_UNWRITTEN) &&
			    (size_t)(end - q - CP_RUN) / 4 < r.n)
				BAD("checkpoint crcs past the end");
			next = r.first + r.n;
			q = cp_run_get(q, &r);
		}
		if (!cb)
			continue;
		/* second pass: hand the entry out (nruns <= len / CP_RUN: checked above) */
		struct sm_block_cp_run *rv = stack_runs, *heap = NULL;
		if (nruns > ARRAY_SIZE(stack_runs)) {
			heap = malloc(sizeof(*heap) * nruns);
			if (!heap)
				return -ENOMEM;
			rv = heap;
		}
		const uint8_t *r2 = runs_at;
		for (uint32_t i = 0; i < nruns; i++)
			r2 = cp_run_get(r2, &rv[i]);
		int e = cb(ctx, ino, idx, length, rv, nruns);
		free(heap);
		if (e)
			return e;
	}
	if (q != end)
		BAD("checkpoint: %llu bytes after its last entry", (unsigned long long)(end - q));
	*ret = h;
	return 0;
}

size_t sm_block_cp_put_entry(uint8_t *p, uint64_t ino, uint32_t idx, uint32_t length,
			     uint32_t nruns)
{
	put64(p, ino);
	put32(p + 8, idx);
	put32(p + 12, length);
	put32(p + 16, nruns);
	return CP_ENTRY;
}

size_t sm_block_cp_put_run(uint8_t *p, uint32_t first, uint32_t n, uint32_t flags, uint64_t pb,
			   const uint32_t *crcs)
{
	put32(p, first);
	put32(p + 4, n);
	put32(p + 8, flags);
	put64(p + 12, pb);
	if (flags & SM_BLOCK_MAP_UNWRITTEN)
		return CP_RUN;
	for (uint32_t i = 0; i < n; i++)
		put32(p + CP_RUN + 4 * (size_t)i, crcs[i]);
	return CP_RUN + 4 * (size_t)n;
}

void sm_block_cp_seal(uint8_t *buf, const struct sm_block_cp_hdr *h)
{
	memset(buf, 0, SM_BLOCK_CP_HDR);
	memcpy(buf + CP_MAGIC, SM_BLOCK_CP_MAGIC, 8);
	put64(buf + CP_NONCE, h->nonce);
	put64(buf + CP_SEQ, h->seq);
	put64(buf + CP_NCHUNKS, h->nchunks);
	put64(buf + CP_BODY, h->body);
	uint32_t crc = crc32c(crc32c(0, buf, SM_BLOCK_CP_HDR), buf + SM_BLOCK_CP_HDR, h->body);
	put32(buf + CP_CRC, crc);
}
