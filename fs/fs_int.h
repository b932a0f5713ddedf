/* fs_int — private to fs/: the FUSE version and headers, and the small helpers the request
 * handlers (fs_fuse.c, fs_lock.c) share. fs.h stays free of FUSE headers: tools/ includes it.
 */
#ifndef BRAIDFS_FS_INT_H
#define BRAIDFS_FS_INT_H

#define FUSE_USE_VERSION 314

#include <fuse_lowlevel.h>
#include <stdint.h>

#include "fs/fs.h"

/* The struct fs a request belongs to (fuse_session_new's userdata). */
static inline struct fs *req_fs(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* The open file of a request (fuse_file_info.fh, set at open/create). */
static inline struct fs_file *file_of(const struct fuse_file_info *fi)
{
	return (struct fs_file *)(uintptr_t)fi->fh;
}

#endif
