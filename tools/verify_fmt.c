/* verify_fmt — blocks and journal of braidfs-verify; the layouts are in verify_fmt.h. */
#include "tools/verify_fmt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/crc32c.h"
#include "common/util.h"

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* ---------------------------------------------------------------------------------------- */
/* blocks */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t payload_seed(const struct vl_block_id *id)
{
	uint64_t s = hash_mix64(id->run ^ 0x5652464c4f4144ULL);
	s = hash_mix64(s ^ ((uint64_t)id->file << 32 | id->block_size));
	s = hash_mix64(s ^ id->offset);
	return hash_mix64(s ^ id->gen);
}

/* The payload (bytes VL_HDR_SIZE..block_size) of id into buf at the same place. */
static void payload_fill(uint8_t *buf, const struct vl_block_id *id)
{
	uint64_t s = payload_seed(id);
	for (size_t o = VL_HDR_SIZE; o < id->block_size; o += 8)
		put64(buf + o, splitmix64(&s));
}

static void header_fill(uint8_t *b, const struct vl_block_id *id)
{
	memcpy(b, VL_BLOCK_MAGIC, 8);
	put64(b + 8, id->run);
	put32(b + 16, id->file);
	put32(b + 20, id->block_size);
	put64(b + 24, id->offset);
	put64(b + 32, id->gen);
	put32(b + 40, 0);
	put32(b + 44, 0);
}

void vl_block_fill(void *buf, const struct vl_block_id *id)
{
	uint8_t *b = buf;
	header_fill(b, id);
	payload_fill(b, id);
	put32(b + 40, crc32c(0, b, id->block_size));
}

static bool all_zero(const uint8_t *b, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (b[i])
			return false;
	return true;
}

enum vl_block_state vl_block_check(const void *buf, size_t len, const struct vl_block_id *where,
				   uint64_t *ret_gen)
{
	const uint8_t *b = buf;
	if (len < VL_HDR_SIZE || len != where->block_size)
		return VL_BLOCK_BAD_MAGIC;
	if (memcmp(b, VL_BLOCK_MAGIC, 8) != 0)
		return all_zero(b, len) ? VL_BLOCK_ZERO : VL_BLOCK_BAD_MAGIC;
	uint32_t stored = get32(b + 40);
	uint32_t c = crc32c(0, b, 40);
	static const uint8_t zero4[4];
	c = crc32c(c, zero4, 4);
	c = crc32c(c, b + 44, len - 44);
	if (c != stored)
		return VL_BLOCK_BAD_CRC;
	struct vl_block_id got = {
	    .run = get64(b + 8),
	    .file = get32(b + 16),
	    .block_size = get32(b + 20),
	    .offset = get64(b + 24),
	    .gen = get64(b + 32),
	};
	if (got.run != where->run || got.file != where->file ||
	    got.block_size != where->block_size || got.offset != where->offset ||
	    get32(b + 44) != 0)
		return VL_BLOCK_MISPLACED;
	uint64_t s = payload_seed(&got);
	for (size_t o = VL_HDR_SIZE; o + 8 <= len; o += 8)
		if (get64(b + o) != splitmix64(&s))
			return VL_BLOCK_BAD_PAYLOAD;
	*ret_gen = got.gen;
	return VL_BLOCK_OK;
}

const char *vl_block_state_name(enum vl_block_state s)
{
	switch (s) {
	case VL_BLOCK_OK:
		return "ok";
	case VL_BLOCK_ZERO:
		return "zero";
	case VL_BLOCK_BAD_MAGIC:
		return "not a block of this checker";
	case VL_BLOCK_BAD_CRC:
		return "checksum mismatch";
	case VL_BLOCK_MISPLACED:
		return "block of another place or run";
	case VL_BLOCK_BAD_PAYLOAD:
		return "payload does not match its header";
	}
	return "?";
}

bool vl_block_sectors_from(const void *buf, const struct vl_block_id *where, uint64_t gen_lo,
			   uint64_t gen_hi, void *scratch)
{
	const uint8_t *b = buf;
	if (gen_lo > gen_hi || where->block_size < VL_BLOCK_MIN ||
	    where->block_size > VL_BLOCK_MAX || where->block_size % VL_SECTOR)
		return false;
	size_t nsec = where->block_size / VL_SECTOR;
	/* one bit per sector: matched by some generation so far (blocks are at most 2048
	 * sectors) */
	uint64_t matched[VL_BLOCK_MAX / VL_SECTOR / 64] = {0};
	size_t left = nsec;
	unsigned tried = 0;
	uint64_t g = gen_hi;
	while (left) {
		struct vl_block_id id = *where;
		id.gen = g;
		if (g == 0)
			memset(scratch, 0, where->block_size);
		else
			vl_block_fill(scratch, &id);
		for (size_t i = 0; i < nsec; i++) {
			if (matched[i / 64] >> (i % 64) & 1)
				continue;
			if (memcmp(b + i * VL_SECTOR, (uint8_t *)scratch + i * VL_SECTOR,
				   VL_SECTOR) == 0) {
				matched[i / 64] |= 1ULL << (i % 64);
				left--;
			}
		}
		if (g == 0 || g == gen_lo || ++tried >= 64)
			break;
		g--;
	}
	return left == 0;
}

/* ---------------------------------------------------------------------------------------- */
/* journal */

int vl_shape_check(uint32_t block_size, uint32_t files, uint32_t blocks_per_file, uint32_t threads,
		   char *err, size_t errlen)
{
	if (block_size < VL_BLOCK_MIN || block_size > VL_BLOCK_MAX || block_size % VL_SECTOR) {
		set_err(err, errlen, "block size %u: must be a multiple of %u in %u..%u",
			block_size, VL_SECTOR, VL_BLOCK_MIN, VL_BLOCK_MAX);
		return -EINVAL;
	}
	if (files == 0 || files > VL_FILES_MAX) {
		set_err(err, errlen, "%u files: must be 1..%u", files, VL_FILES_MAX);
		return -EINVAL;
	}
	if (threads == 0 || threads > VL_THREADS_MAX) {
		set_err(err, errlen, "%u threads: must be 1..%u", threads, VL_THREADS_MAX);
		return -EINVAL;
	}
	uint64_t n = (uint64_t)files * blocks_per_file;
	if (blocks_per_file == 0 || n > VL_BLOCKS_MAX) {
		set_err(err, errlen, "%u files of %u blocks: must be 1..%u blocks in all", files,
			blocks_per_file, VL_BLOCKS_MAX);
		return -EINVAL;
	}
	if (n < threads) {
		set_err(err, errlen, "%llu blocks for %u threads: every thread needs a block",
			(unsigned long long)n, threads);
		return -EINVAL;
	}
	return 0;
}

void vl_jhdr_encode(uint8_t out[VL_JHDR_SIZE], const struct vl_journal_hdr *h)
{
	memset(out, 0, VL_JHDR_SIZE);
	memcpy(out, VL_JOURNAL_MAGIC, 8);
	put32(out + 8, h->version);
	put32(out + 12, h->block_size);
	put32(out + 16, h->files);
	put32(out + 20, h->blocks_per_file);
	put32(out + 24, h->threads);
	put32(out + 28, h->ack_mode);
	put64(out + 32, h->run);
	put64(out + 40, (uint64_t)h->start_ns);
	put32(out + 60, crc32c(0, out, 60));
}

int vl_jhdr_parse(const uint8_t *buf, size_t len, struct vl_journal_hdr *ret, char *err,
		  size_t errlen)
{
	if (len < VL_JHDR_SIZE) {
		set_err(err, errlen, "journal header: %zu bytes, need %u", len, VL_JHDR_SIZE);
		return -EBADMSG;
	}
	if (memcmp(buf, VL_JOURNAL_MAGIC, 8) != 0) {
		set_err(err, errlen, "not a braidfs-verify journal (bad magic)");
		return -EBADMSG;
	}
	if (get32(buf + 60) != crc32c(0, buf, 60) || !all_zero(buf + 48, 12)) {
		set_err(err, errlen, "journal header: checksum mismatch");
		return -EBADMSG;
	}
	struct vl_journal_hdr h = {
	    .version = get32(buf + 8),
	    .block_size = get32(buf + 12),
	    .files = get32(buf + 16),
	    .blocks_per_file = get32(buf + 20),
	    .threads = get32(buf + 24),
	    .ack_mode = get32(buf + 28),
	    .run = get64(buf + 32),
	    .start_ns = (int64_t)get64(buf + 40),
	};
	if (h.version != VL_JOURNAL_VERSION) {
		set_err(err, errlen, "journal version %u (this checker reads %u)", h.version,
			VL_JOURNAL_VERSION);
		return -EBADMSG;
	}
	if (h.ack_mode != VL_ACK_WRITE && h.ack_mode != VL_ACK_FSYNC) {
		set_err(err, errlen, "journal header: unknown ack mode %u", h.ack_mode);
		return -EBADMSG;
	}
	char why[160];
	if (vl_shape_check(h.block_size, h.files, h.blocks_per_file, h.threads, why, sizeof(why)) !=
	    0) {
		set_err(err, errlen, "journal header: %s", why);
		return -EBADMSG;
	}
	*ret = h;
	return 0;
}

static uint32_t rec_crc(const uint8_t *r)
{
	return crc32c(crc32c(0, r, 12), r + 16, VL_REC_SIZE - 16);
}

void vl_rec_encode(uint8_t out[VL_REC_SIZE], const struct vl_rec *r)
{
	memset(out, 0, VL_REC_SIZE);
	out[0] = r->type;
	put32(out + 4, r->file);
	put32(out + 8, r->block);
	put64(out + 16, r->gen);
	put64(out + 24, (uint64_t)r->time_ns);
	put32(out + 12, rec_crc(out));
}

int vl_state_init(struct vl_state *s, const struct vl_journal_hdr *h)
{
	memset(s, 0, sizeof(*s));
	s->h = *h;
	s->nblocks = (uint64_t)h->files * h->blocks_per_file;
	s->acked = calloc(s->nblocks, sizeof(uint64_t));
	s->issued = calloc(s->nblocks, sizeof(uint64_t));
	if (!s->acked || !s->issued) {
		vl_state_fini(s);
		return -ENOMEM;
	}
	return 0;
}

void vl_state_fini(struct vl_state *s)
{
	if (!s)
		return;
	free(s->acked);
	free(s->issued);
	s->acked = s->issued = NULL;
}

int vl_journal_scan(struct vl_state *s, const uint8_t *buf, size_t len, size_t *consumed, char *err,
		    size_t errlen)
{
	size_t off = 0;
	for (; off + VL_REC_SIZE <= len; off += VL_REC_SIZE) {
		const uint8_t *r = buf + off;
		uint64_t idx = s->n_issue + s->n_ack;
		if (get32(r + 12) != rec_crc(r) || r[1] || r[2] || r[3]) {
			set_err(err, errlen, "journal record %llu: checksum mismatch",
				(unsigned long long)idx);
			goto bad;
		}
		uint32_t file = get32(r + 4), block = get32(r + 8);
		uint64_t gen = get64(r + 16);
		if (file >= s->h.files || block >= s->h.blocks_per_file) {
			set_err(err, errlen,
				"journal record %llu: block %u of file %u is out of range",
				(unsigned long long)idx, block, file);
			goto bad;
		}
		uint64_t k = (uint64_t)file * s->h.blocks_per_file + block;
		if (r[0] == VL_REC_ISSUE) {
			if (gen != s->issued[k] + 1) {
				set_err(err, errlen,
					"journal record %llu: issue of generation %llu of file %u "
					"block %u after generation %llu",
					(unsigned long long)idx, (unsigned long long)gen, file,
					block, (unsigned long long)s->issued[k]);
				goto bad;
			}
			s->issued[k] = gen;
			s->n_issue++;
		} else if (r[0] == VL_REC_ACK) {
			if (gen > s->issued[k] || gen <= s->acked[k]) {
				set_err(err, errlen,
					"journal record %llu: ack of generation %llu of file %u "
					"block %u (issued %llu, acknowledged %llu)",
					(unsigned long long)idx, (unsigned long long)gen, file,
					block, (unsigned long long)s->issued[k],
					(unsigned long long)s->acked[k]);
				goto bad;
			}
			s->acked[k] = gen;
			s->n_ack++;
			s->last_ack_ns = MAX(s->last_ack_ns, (int64_t)get64(r + 24));
		} else {
			set_err(err, errlen, "journal record %llu: unknown type %u",
				(unsigned long long)idx, r[0]);
			goto bad;
		}
	}
	*consumed = off;
	return 0;
bad:
	*consumed = off;
	return -EBADMSG;
}
