/* crc32c — Castagnoli CRC used for every checksum braidfs stores or sends.
 * Backed by ISA-L (SSE4.2 / PCLMUL paths chosen at run time). Thread-safe.
 * crc32c(0, buf, len) starts a new checksum; pass the previous result to continue.
 */
#ifndef BRAIDFS_CRC32C_H
#define BRAIDFS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

#endif
