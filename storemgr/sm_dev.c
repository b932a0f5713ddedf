/* sm_dev — the registry of block address spaces, chosen by URL scheme. See dev.h. */
#include "storemgr/dev.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* Every device backend, by scheme. */
static const struct sm_dev_ops *const sm_devs[] = {
    &sm_dev_file_ops,
    &sm_dev_iscsi_ops,
    &sm_dev_nbd_ops,
    &sm_dev_nbd_unix_ops,
};

const struct sm_dev_ops *sm_dev_ops_for(const char *url)
{
	if (!url)
		return NULL;
	const char *colon = strchr(url, ':');
	if (!colon || colon == url)
		return NULL;
	size_t n = (size_t)(colon - url);
	for (size_t i = 0; i < ARRAY_SIZE(sm_devs); i++)
		if (strlen(sm_devs[i]->scheme) == n && strncasecmp(url, sm_devs[i]->scheme, n) == 0)
			return sm_devs[i];
	return NULL;
}

int sm_dev_open(const char *url, unsigned flags, struct sm_dev **ret, char *err, size_t errlen)
{
	*ret = NULL;
	const struct sm_dev_ops *ops = sm_dev_ops_for(url);
	if (!ops) {
		if (err && errlen)
			snprintf(err, errlen,
				 "%s: not a device URL (file:, iscsi://, nbd://, nbd+unix://)",
				 url ? url : "(null)");
		return -EINVAL;
	}
	return ops->open(url, flags, ret, err, errlen);
}

void sm_dev_close(struct sm_dev *d)
{
	if (d)
		d->ops->close(d);
}

static bool aligned(const void *buf, size_t len, uint64_t off)
{
	return ((uintptr_t)buf % SM_DEV_ALIGN) == 0 && len % SM_DEV_ALIGN == 0 &&
	       off % SM_DEV_ALIGN == 0;
}

int sm_dev_pread(struct sm_dev *d, void *buf, size_t len, uint64_t off)
{
	if (!aligned(buf, len, off)) /* DEV-1 */
		return -EINVAL;
	if (off > d->size || len > d->size - off)
		return -EINVAL;
	return d->ops->pread(d, buf, len, off);
}

int sm_dev_pwrite(struct sm_dev *d, const void *buf, size_t len, uint64_t off, unsigned flags)
{
	if (!aligned(buf, len, off))
		return -EINVAL;
	if (off > d->size || len > d->size - off)
		return -EINVAL;
	return d->ops->pwrite(d, buf, len, off, flags);
}

int sm_dev_submit(struct sm_dev *d, struct sm_dev_io *ios, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (!aligned(ios[i].buf, ios[i].len, ios[i].off) || ios[i].off > d->size ||
		    ios[i].len > d->size - ios[i].off)
			return -EINVAL;
	return n ? d->ops->submit(d, ios, n) : 0;
}

int sm_dev_flush(struct sm_dev *d)
{
	return d->ops->flush(d);
}

int sm_dev_discard(struct sm_dev *d, uint64_t off, uint64_t len)
{
	if (off % SM_DEV_ALIGN || len % SM_DEV_ALIGN || off > d->size || len > d->size - off)
		return -EINVAL;
	return d->ops->discard ? d->ops->discard(d, off, len) : -EOPNOTSUPP;
}

void *sm_dev_alloc(size_t len)
{
	void *p = NULL;
	size_t n = (len + SM_DEV_ALIGN - 1) / SM_DEV_ALIGN * SM_DEV_ALIGN;
	if (posix_memalign(&p, SM_DEV_ALIGN, n ? n : SM_DEV_ALIGN) != 0)
		return NULL;
	return p;
}
