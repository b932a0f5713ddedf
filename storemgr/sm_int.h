/* sm_int — helpers that every storemgr backend shares (defined in sm.c). Only storemgr/ and its
 * tests include this file; the storage manager's contract is sm.h. */
#ifndef BRAIDFS_SM_INT_H
#define BRAIDFS_SM_INT_H

#include <stdarg.h>
#include <stddef.h>

#include "storemgr/sm.h"

/* Message into err (NULL / 0 ok). */
void sm_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* SM-1: does the identity `have` of the target named `what` match `expect` (NULL: anything)?
 * An empty uuid or a zero chunk size in expect matches any. 0, or -EINVAL with one line in err
 * ("target X belongs to volume A, not to volume B", "... is target id 3, expected target id 4",
 * "... has target UUID ...", "... has chunk size ..."). */
int sm_identity_expect(const char *what, const struct sm_identity *have,
		       const struct sm_identity *expect, char *err, size_t errlen);

#endif
