/* sm_devices — block device discovery and classification. See sm_devices.h (DEVS-1..3).
 *
 * Where each fact comes from:
 *   name, partition, parent   <sysfs>/class/block/<name> (a link into the device tree); a
 *                             partition has a `partition` file, its parent is the directory
 *                             above it
 *   size, ro, removable, dev  `size` (512-byte sectors), `ro`, `removable`, `dev` ("8:0")
 *   rotational                `queue/rotational` of the disk (a partition inherits it)
 *   model, vendor             `device/model`, `device/vendor` (trimmed)
 *   loop backing file         `loop/backing_file`
 *   holders                   entries of `holders/` (dm-*, md*: LVM, RAID, crypt)
 *   transport                 the name (nvme*, loop*, ram*, zram*, nbd*) or "/session" in the
 *                             device's sysfs path (an iSCSI LUN)
 *   content                   libblkid (superblocks: TYPE, LABEL; partitions: PTTYPE) and the
 *                             braidfs magic in the first 8 KiB, read by us
 *   mounts, swap              <proc>/self/mountinfo by major:minor, <proc>/swaps by path
 */
#include "storemgr/sm_devices.h"

#include <blkid.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "storemgr/sm.h"

#define SMD_ATTR_MAX 4096 /* DEVS-1 */
#define SMD_LINE_MAX 8192
#define SMD_HEAD     8192 /* bytes read for the braidfs magic */

struct sm_devenv sm_devenv_system(void)
{
	return (struct sm_devenv){.sysfs = "/sys", .dev = "/dev", .proc = "/proc"};
}

const char *sm_media_name(enum sm_media m)
{
	static const char *const names[] = {
	    [SM_MEDIA_UNKNOWN] = "unknown", [SM_MEDIA_HDD] = "hdd",
	    [SM_MEDIA_SSD] = "ssd",	    [SM_MEDIA_NVME] = "nvme",
	    [SM_MEDIA_VIRTUAL] = "virtual", [SM_MEDIA_REMOTE] = "remote",
	    [SM_MEDIA_DIR] = "dir",	    [SM_MEDIA_FILE] = "file",
	};
	return (unsigned)m < ARRAY_SIZE(names) ? names[m] : "unknown";
}

static void smd_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void smd_err(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || !errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* Copy a string, cut to the destination's size. */
static void smd_copy(char *dst, size_t len, const char *src)
{
	size_t n = strnlen(src, len - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* ---------------------------------------------------------------------------------------- */
/* bounded reads (DEVS-1) */

/* An attribute file: at most SMD_ATTR_MAX bytes, trailing white space cut, NUL bytes ended. */
static int smd_attr(const char *dir, const char *name, char *buf, size_t len)
{
	char p[PATH_MAX];
	if (snprintf(p, sizeof(p), "%s/%s", dir, name) >= (int)sizeof(p))
		return -ENAMETOOLONG;
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t want = MIN(len - 1, (size_t)SMD_ATTR_MAX);
	ssize_t n;
	do
		n = read(fd, buf, want);
	while (n < 0 && errno == EINTR);
	int e = errno;
	close(fd);
	if (n < 0)
		return -e;
	buf[n] = '\0';
	buf[strnlen(buf, (size_t)n)] = '\0';
	size_t l = strlen(buf);
	while (l && isspace((unsigned char)buf[l - 1]))
		buf[--l] = '\0';
	return 0;
}

/* A decimal attribute; -EBADMSG when it is not one plain number. */
static int smd_attr_u64(const char *dir, const char *name, uint64_t *ret)
{
	char b[64];
	int r = smd_attr(dir, name, b, sizeof(b));
	if (r < 0)
		return r;
	if (!b[0] || !isdigit((unsigned char)b[0]))
		return -EBADMSG;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(b, &end, 10);
	if (errno || *end)
		return -EBADMSG;
	*ret = v;
	return 0;
}

/* "maj:min" */
static int smd_parse_devno(const char *s, unsigned *maj, unsigned *min)
{
	char *end;
	if (!isdigit((unsigned char)s[0]))
		return -EBADMSG;
	errno = 0;
	unsigned long a = strtoul(s, &end, 10);
	if (errno || *end != ':' || !isdigit((unsigned char)end[1]) || a > UINT32_MAX)
		return -EBADMSG;
	unsigned long b = strtoul(end + 1, &end, 10);
	if (errno || *end || b > UINT32_MAX)
		return -EBADMSG;
	*maj = (unsigned)a;
	*min = (unsigned)b;
	return 0;
}

/* Trim, and make printable: model strings come from the device. */
static void smd_clean(char *s)
{
	for (char *p = s; *p; p++)
		if (!isprint((unsigned char)*p))
			*p = '?';
	char *b = s;
	while (*b == ' ')
		b++;
	memmove(s, b, strlen(b) + 1);
	size_t l = strlen(s);
	while (l && s[l - 1] == ' ')
		s[--l] = '\0';
}

/* mountinfo escapes spaces, tabs, newlines and backslashes as \ooo */
static void smd_unescape(char *s)
{
	char *o = s;
	for (char *p = s; *p; p++) {
		if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
		    p[3] >= '0' && p[3] <= '7') {
			*o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
			p += 3;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
}

/* Read one line of at most SMD_LINE_MAX bytes; longer lines are skipped whole. 1 line, 0 EOF. */
static int smd_line(FILE *f, char *buf, size_t len)
{
	for (;;) {
		if (!fgets(buf, (int)len, f))
			return 0;
		size_t l = strlen(buf);
		if (l && buf[l - 1] == '\n') {
			buf[l - 1] = '\0';
			return 1;
		}
		if (feof(f))
			return 1;
		int c; /* too long: drop the rest of it */
		while ((c = fgetc(f)) != EOF && c != '\n')
			;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* sysfs */

static bool smd_prefix(const char *name, const char *p)
{
	return strncmp(name, p, strlen(p)) == 0;
}

static bool smd_is_partition(const char *dir)
{
	char p[PATH_MAX];
	if (strlen(dir) + sizeof("/partition") > sizeof(p))
		return false;
	smd_err(p, sizeof(p), "%s/partition", dir);
	return access(p, F_OK) == 0;
}

static void smd_list_names(const char *dir, char *out, size_t len, unsigned *count,
			   bool partitions_only)
{
	out[0] = '\0';
	*count = 0;
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (partitions_only) {
			char p[PATH_MAX + 300];
			snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
			if (!smd_is_partition(p))
				continue;
		} else {
			size_t used = strlen(out);
			snprintf(out + used, len - used, "%s%s", used ? " " : "", e->d_name);
		}
		(*count)++;
	}
	closedir(d);
}

static enum sm_media smd_media(const char *disk, const char *devdir, bool have_rot, bool rot)
{
	char real[PATH_MAX];
	if (smd_prefix(disk, "ram") || smd_prefix(disk, "zram") || smd_prefix(disk, "loop"))
		return SM_MEDIA_VIRTUAL;
	if (smd_prefix(disk, "nvme"))
		return SM_MEDIA_NVME;
	if (smd_prefix(disk, "nbd"))
		return SM_MEDIA_REMOTE;
	if (realpath(devdir, real) && strstr(real, "/session"))
		return SM_MEDIA_REMOTE; /* an iSCSI LUN: .../hostN/sessionN/target... */
	if (!have_rot)
		return SM_MEDIA_UNKNOWN;
	return rot ? SM_MEDIA_HDD : SM_MEDIA_SSD;
}

/* Facts from sysfs about `name`, whose directory is dir. */
static int smd_sysfs(const struct sm_devenv *env, const char *name, const char *dir,
		     struct sm_device *d, char *err, size_t errlen)
{
	char b[SMD_ATTR_MAX + 1], disk_dir[PATH_MAX];
	uint64_t v = 0;
	snprintf(d->name, sizeof(d->name), "%s", name);
	snprintf(d->path, sizeof(d->path), "%s/%s", env->dev, name);
	if (smd_attr(dir, "dev", b, sizeof(b)) < 0 || smd_parse_devno(b, &d->major, &d->minor)) {
		smd_err(err, errlen, "%s: no readable device number in %s/dev", name, dir);
		return -EBADMSG;
	}
	if (smd_attr_u64(dir, "size", &v) == 0 && v <= UINT64_MAX / 512)
		d->size = v * 512;
	if (smd_attr_u64(dir, "ro", &v) == 0)
		d->readonly = v != 0;
	snprintf(disk_dir, sizeof(disk_dir), "%s", dir);
	if (smd_is_partition(dir)) {
		char up[PATH_MAX + 8], real[PATH_MAX];
		snprintf(up, sizeof(up), "%s/..", dir);
		if (realpath(up, real)) {
			const char *slash = strrchr(real, '/');
			smd_copy(d->parent, sizeof(d->parent), slash ? slash + 1 : real);
			snprintf(disk_dir, sizeof(disk_dir), "%s", real);
		}
	} else {
		smd_list_names(dir, b, sizeof(b), &d->partitions, true);
	}
	const char *disk = d->parent[0] ? d->parent : name;
	if (smd_attr_u64(disk_dir, "removable", &v) == 0)
		d->removable = v != 0;
	bool have_rot = smd_attr_u64(disk_dir, "queue/rotational", &v) == 0;
	d->rotational = have_rot && v != 0;
	d->media = smd_media(disk, disk_dir, have_rot, d->rotational);
	d->ram = smd_prefix(disk, "ram") || smd_prefix(disk, "zram");
	if (smd_attr(disk_dir, "device/model", b, sizeof(b)) == 0) {
		smd_copy(d->model, sizeof(d->model), b);
		smd_clean(d->model);
	}
	if (smd_attr(disk_dir, "device/vendor", b, sizeof(b)) == 0) {
		smd_copy(d->vendor, sizeof(d->vendor), b);
		smd_clean(d->vendor);
	}
	if (smd_attr(disk_dir, "loop/backing_file", b, sizeof(b)) == 0)
		smd_copy(d->backing, sizeof(d->backing), b);
	char hd[PATH_MAX + 16];
	unsigned nh;
	snprintf(hd, sizeof(hd), "%s/holders", dir);
	smd_list_names(hd, d->holders, sizeof(d->holders), &nh, false);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* content */

static void smd_braidfs_identity(struct sm_device *d)
{
	char url[400], err[200] = "";
	snprintf(url, sizeof(url), "file:%s", d->path);
	if (!sm_ops_for(url)) {
		smd_err(d->braidfs_error, sizeof(d->braidfs_error),
			"this braidfs has no file: target backend to read it");
		return;
	}
	struct sm_target *t = NULL;
	struct sm_identity id;
	int r = sm_open(url, NULL, &t, err, sizeof(err));
	if (r == 0)
		r = t->ops->identity(t, &id);
	sm_close(t);
	if (r < 0) {
		smd_err(d->braidfs_error, sizeof(d->braidfs_error), "%s",
			err[0] ? err : strerror(-r));
		return;
	}
	memcpy(d->braidfs_volume, id.volume_uuid, sizeof(d->braidfs_volume));
	d->braidfs_volume[sizeof(d->braidfs_volume) - 1] = '\0';
	d->braidfs_target = id.target_id;
}

static void smd_blkid_value(blkid_probe pr, const char *what, char *out, size_t len)
{
	const char *v = NULL;
	size_t n = 0;
	if (blkid_probe_lookup_value(pr, what, &v, &n) == 0 && v) {
		snprintf(out, len, "%.*s", (int)MIN(n, len - 1), v);
		out[strnlen(out, len - 1)] = '\0';
		smd_clean(out);
	}
}

/* DEVS-2: read only, never exclusive. */
static void smd_content(struct sm_device *d)
{
	if (d->size == 0) { /* a loop device with nothing attached, an empty slot */
		d->probed = true;
		return;
	}
	int fd = open(d->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		smd_err(d->probe_error, sizeof(d->probe_error), "cannot open %s: %s", d->path,
			strerror(errno));
		return;
	}
	static const char magic[SM_BRAIDFS_MAGIC_LEN] = SM_BRAIDFS_MAGIC;
	char *head = malloc(SMD_HEAD);
	if (!head) {
		close(fd);
		smd_err(d->probe_error, sizeof(d->probe_error), "out of memory");
		return;
	}
	int r = pread_full(fd, head, SMD_HEAD, 0);
	if (r == 0 && !memcmp(head, magic, sizeof(magic)) &&
	    !memcmp(head + 4096, magic, sizeof(magic)))
		d->braidfs = true;
	free(head);
	if (r < 0 && r != -ENODATA) {
		close(fd);
		smd_err(d->probe_error, sizeof(d->probe_error), "cannot read %s: %s", d->path,
			strerror(-r));
		return;
	}
	blkid_probe pr = blkid_new_probe();
	if (!pr || blkid_probe_set_device(pr, fd, 0, 0) < 0) {
		blkid_free_probe(pr);
		close(fd);
		smd_err(d->probe_error, sizeof(d->probe_error), "libblkid cannot probe %s",
			d->path);
		return;
	}
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL);
	blkid_probe_enable_partitions(pr, 1);
	r = blkid_do_safeprobe(pr);
	if (r == -2) {
		d->ambivalent = true;
	} else if (r < 0) {
		blkid_free_probe(pr);
		close(fd);
		smd_err(d->probe_error, sizeof(d->probe_error), "libblkid failed on %s", d->path);
		return;
	} else if (r == 0) {
		smd_blkid_value(pr, "TYPE", d->fstype, sizeof(d->fstype));
		smd_blkid_value(pr, "LABEL", d->label, sizeof(d->label));
		smd_blkid_value(pr, "PTTYPE", d->pttype, sizeof(d->pttype));
	}
	blkid_free_probe(pr);
	close(fd);
	d->probed = true;
	if (d->braidfs)
		smd_braidfs_identity(d);
}

/* Mounted? (by device number; the first mount point wins) */
static void smd_mounts(const struct sm_devenv *env, struct sm_device *devs, unsigned n)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/self/mountinfo", env->proc);
	FILE *f = fopen(p, "re");
	if (!f)
		return;
	char *line = malloc(SMD_LINE_MAX);
	while (line && smd_line(f, line, SMD_LINE_MAX)) {
		/* id parent maj:min root mountpoint ... */
		char *save = NULL, *tok[5];
		int k = 0;
		for (char *s = strtok_r(line, " ", &save); s && k < 5;
		     s = strtok_r(NULL, " ", &save))
			tok[k++] = s;
		unsigned maj, min;
		if (k < 5 || smd_parse_devno(tok[2], &maj, &min) < 0)
			continue;
		for (unsigned i = 0; i < n; i++)
			if (devs[i].major == maj && devs[i].minor == min &&
			    !devs[i].mountpoint[0]) {
				smd_copy(devs[i].mountpoint, sizeof(devs[i].mountpoint), tok[4]);
				smd_unescape(devs[i].mountpoint);
			}
	}
	free(line);
	fclose(f);
	snprintf(p, sizeof(p), "%s/swaps", env->proc);
	f = fopen(p, "re");
	if (!f)
		return;
	char l[SMD_LINE_MAX];
	while (smd_line(f, l, sizeof(l))) {
		char *sp = strpbrk(l, " \t");
		if (!sp || l[0] != '/')
			continue;
		*sp = '\0';
		smd_unescape(l);
		for (unsigned i = 0; i < n; i++)
			if (!strcmp(l, devs[i].path))
				devs[i].swap_active = true;
	}
	fclose(f);
}

/* ---------------------------------------------------------------------------------------- */

static int smd_one(const struct sm_devenv *env, const char *name, struct sm_device *d, char *err,
		   size_t errlen)
{
	char dir[PATH_MAX];
	memset(d, 0, sizeof(*d));
	if (!name[0] || strchr(name, '/') || name[0] == '.' || strlen(name) >= sizeof(d->name)) {
		smd_err(err, errlen, "'%s' is not a block device name", name);
		return -EINVAL;
	}
	snprintf(dir, sizeof(dir), "%s/class/block/%s", env->sysfs, name);
	if (access(dir, F_OK) < 0) {
		smd_err(err, errlen, "no block device '%s' in %s/class/block", name, env->sysfs);
		return -ENOENT;
	}
	int r = smd_sysfs(env, name, dir, d, err, errlen);
	if (r < 0)
		return r;
	smd_content(d);
	return 0;
}

static int smd_cmp(const void *a, const void *b)
{
	const struct sm_device *x = a, *y = b;
	const char *dx = x->parent[0] ? x->parent : x->name;
	const char *dy = y->parent[0] ? y->parent : y->name;
	int c = strcmp(dx, dy);
	if (c)
		return c;
	if (!x->parent[0] != !y->parent[0])
		return x->parent[0] ? 1 : -1; /* the disk before its partitions */
	return strcmp(x->name, y->name);
}

int sm_devices_scan(const struct sm_devenv *env, struct sm_device **ret, unsigned *ret_n, char *err,
		    size_t errlen)
{
	char dir[PATH_MAX];
	*ret = NULL;
	*ret_n = 0;
	snprintf(dir, sizeof(dir), "%s/class/block", env->sysfs);
	DIR *dh = opendir(dir);
	if (!dh) {
		int e = errno;
		smd_err(err, errlen, "cannot list block devices in %s: %s", dir, strerror(e));
		return -e;
	}
	struct sm_device *v = NULL;
	unsigned n = 0, cap = 0;
	struct dirent *e;
	int r = 0;
	while ((e = readdir(dh))) {
		if (e->d_name[0] == '.')
			continue;
		if (n == cap) {
			unsigned nc = cap ? cap * 2 : 32;
			struct sm_device *nv = realloc(v, nc * sizeof(*nv));
			if (!nv) {
				r = -ENOMEM;
				smd_err(err, errlen, "out of memory");
				break;
			}
			v = nv;
			cap = nc;
		}
		char e1[256];
		if (smd_one(env, e->d_name, &v[n], e1, sizeof(e1)) < 0) {
			log_debug("device %s skipped: %s", e->d_name, e1);
			continue;
		}
		n++;
	}
	closedir(dh);
	if (r < 0) {
		free(v);
		return r;
	}
	smd_mounts(env, v, n);
	qsort(v, n, sizeof(*v), smd_cmp);
	*ret = v;
	*ret_n = n;
	return 0;
}

int sm_device_probe(const struct sm_devenv *env, const char *name, struct sm_device *ret, char *err,
		    size_t errlen)
{
	struct sm_device d;
	int r = smd_one(env, name, &d, err, errlen);
	if (r < 0)
		return r;
	smd_mounts(env, &d, 1);
	*ret = d;
	return 0;
}

int sm_device_by_path(const struct sm_devenv *env, const char *path, struct sm_device *ret,
		      char *err, size_t errlen)
{
	char real[PATH_MAX], dev[PATH_MAX];
	if (!realpath(path, real)) {
		int e = errno;
		smd_err(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	if (!realpath(env->dev, dev))
		snprintf(dev, sizeof(dev), "%s", env->dev);
	size_t l = strlen(dev);
	if (strncmp(real, dev, l) != 0 || real[l] != '/' || strchr(real + l + 1, '/')) {
		smd_err(err, errlen, "%s is not a block device of this machine (not in %s)", path,
			env->dev);
		return -ENOTBLK;
	}
	int r = sm_device_probe(env, real + l + 1, ret, err, errlen);
	if (r == -ENOENT) {
		smd_err(err, errlen, "%s is not a block device (sysfs does not know %s)", path,
			real + l + 1);
		return -ENOTBLK;
	}
	return r;
}

bool sm_device_in_use(const struct sm_device *d)
{
	return !d->probed || d->braidfs || d->pttype[0] || d->fstype[0] || d->ambivalent ||
	       d->mountpoint[0] || d->swap_active || d->holders[0] || d->partitions > 0;
}

static void smd_add(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void smd_add(char *buf, size_t len, const char *fmt, ...)
{
	size_t used = strlen(buf);
	if (used + 3 >= len)
		return;
	if (used) {
		memcpy(buf + used, "; ", 3);
		used += 2;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + used, len - used, fmt, ap);
	va_end(ap);
}

char *sm_device_state(const struct sm_device *d, char *buf, size_t len)
{
	buf[0] = '\0';
	if (!d->probed)
		smd_add(buf, len, "unknown (%s)", d->probe_error);
	if (d->braidfs) {
		if (d->braidfs_volume[0])
			smd_add(buf, len, "braidfs target %u of volume %s", d->braidfs_target,
				d->braidfs_volume);
		else
			smd_add(buf, len, "braidfs target (identity not read: %s)",
				d->braidfs_error);
	}
	if (d->mountpoint[0])
		smd_add(buf, len, "mounted at %s", d->mountpoint);
	if (d->ambivalent)
		smd_add(buf, len, "several signatures (libblkid cannot tell which is real)");
	if (d->pttype[0] && d->partitions)
		smd_add(buf, len, "partition table %s (%u partition%s)", d->pttype, d->partitions,
			d->partitions == 1 ? "" : "s");
	else if (d->pttype[0]) /* the kernel did not scan it (a loop device without -P) */
		smd_add(buf, len, "partition table %s", d->pttype);
	else if (d->partitions)
		smd_add(buf, len, "%u partition%s", d->partitions, d->partitions == 1 ? "" : "s");
	if (!strcmp(d->fstype, "LVM2_member"))
		smd_add(buf, len, "LVM physical volume");
	else if (strstr(d->fstype, "_raid_member"))
		smd_add(buf, len, "RAID member (%s)", d->fstype);
	else if (!strcmp(d->fstype, "swap"))
		smd_add(buf, len, "swap%s", d->swap_active ? " (active)" : "");
	else if (d->fstype[0] && d->label[0])
		smd_add(buf, len, "holds %s \"%s\"", d->fstype, d->label);
	else if (d->fstype[0])
		smd_add(buf, len, "holds %s", d->fstype);
	if (d->swap_active && strcmp(d->fstype, "swap"))
		smd_add(buf, len, "active swap");
	if (d->holders[0])
		smd_add(buf, len, "used by %s", d->holders);
	if (!buf[0])
		snprintf(buf, len, "free");
	return buf;
}

enum sm_media sm_media_for_url(const struct sm_devenv *env, const char *url)
{
	if (!url)
		return SM_MEDIA_UNKNOWN;
	if (!strncasecmp(url, "dir:", 4) || !strncasecmp(url, "faulty:", 7))
		return SM_MEDIA_DIR;
	if (!strncasecmp(url, "iscsi:", 6) || !strncasecmp(url, "nbd:", 4) ||
	    !strncasecmp(url, "nbd+unix:", 9))
		return SM_MEDIA_REMOTE;
	if (strncasecmp(url, "file:", 5) != 0)
		return SM_MEDIA_UNKNOWN;
	const char *path = url + 5;
	char clean[PATH_MAX];
	snprintf(clean, sizeof(clean), "%s", path);
	char *q = strchr(clean, '?'); /* URL options are not part of the path */
	if (q)
		*q = '\0';
	struct stat st;
	if (stat(clean, &st) < 0)
		return SM_MEDIA_UNKNOWN;
	if (S_ISREG(st.st_mode) && strncmp(clean, env->dev, strlen(env->dev)) != 0)
		return SM_MEDIA_FILE;
	struct sm_device d;
	char err[256];
	if (sm_device_by_path(env, clean, &d, err, sizeof(err)) < 0)
		return S_ISREG(st.st_mode) ? SM_MEDIA_FILE : SM_MEDIA_UNKNOWN;
	return d.media;
}
