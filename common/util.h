/* util — small helpers shared by every layer: sizes, clocks, strings, files. */
#ifndef BRAIDFS_UTIL_H
#define BRAIDFS_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)     ((a) < (b) ? (a) : (b))
#define MAX(a, b)     ((a) > (b) ? (a) : (b))

/* A 64-bit finalizer (MurmurHash3's fmix64): spreads every input bit over the result, for hash
 * tables keyed by inode and chunk numbers. */
static inline uint64_t hash_mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* Is x among the n values of v? */
static inline bool u32_in(const uint32_t *v, uint32_t n, uint32_t x)
{
	for (uint32_t i = 0; i < n; i++)
		if (v[i] == x)
			return true;
	return false;
}

/* A thread about to wait for a device, the network or another thread's long work calls
 * wait_hint() first. The FUSE loop (fs/fs_loop.c) sets tl_wait_hook on the thread that holds
 * its reader's place while that thread handles a request itself; the hook hands the place to
 * another worker (and clears itself), so that the requests behind this one are read while it
 * waits. On every other thread it is NULL and the call costs one thread-local load. */
extern _Thread_local void (*tl_wait_hook)(void);
static inline void wait_hint(void)
{
	void (*h)(void) = tl_wait_hook;
	if (h)
		h();
}

/* A one-line reason into a caller's buffer: err may be NULL or errlen 0 (then nothing). Every
 * layer's "char *err, size_t errlen" out-parameter is filled through this. */
void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "4M", "1GiB", "512k", "4096" -> bytes (binary units). 0 or -EINVAL / -ERANGE. */
int parse_size(const char *s, uint64_t *ret);
/* 1536 -> "1.5 KiB" into buf. Returns buf. */
char *fmt_size(uint64_t bytes, char *buf, size_t len);

int64_t now_realtime_ns(void);
int64_t now_monotonic_ns(void);

/* A condition variable whose timed waits run on CLOCK_MONOTONIC, so that a deadline taken from
 * now_monotonic_ns() survives steps of the wall clock. 0 or -errno. */
int cond_init_monotonic(pthread_cond_t *c);
/* pthread_cond_timedwait on a cond_init_monotonic condition until deadline_ns
 * (now_monotonic_ns() time): 0 when woken (perhaps spuriously), ETIMEDOUT once it passed. */
int cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline_ns);

/* Write/read exactly len bytes at off, retrying on EINTR and short I/O. 0 or -errno
 * (read: -ENODATA when the file ends first). */
int pwrite_full(int fd, const void *buf, size_t len, off_t off);
int pread_full(int fd, void *buf, size_t len, off_t off);

/* 16 random bytes -> "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" (37 bytes with NUL). */
int uuid_generate_str(char out[37]);
/* Exactly 36 characters "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lower-case hex digits. */
bool uuid_str_valid(const char *s);

/* mkdir -p with mode; 0 or -errno. */
int mkdir_p(const char *path, mode_t mode);

#endif
