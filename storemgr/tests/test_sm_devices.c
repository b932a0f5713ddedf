/* test_sm_devices — device discovery on a fake machine: a sysfs tree, a /dev of image files
 * and a /proc with mountinfo and swaps, all under a temp directory (sm_devenv). Covers every
 * media class, every kind of content (partition table, file system with label, swap, the
 * braidfs magic), mounts, holders, partitions, malformed sysfs values and bounded lines
 * (DEVS-1), and the real machine's scan. The image contents come from mkfs.ext4, mkswap and
 * sfdisk when they are installed (those cases skip otherwise). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "storemgr/sm_devices.h"

/* snprintf that fails the test instead of cutting a path short. */
static void fit(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fit(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && (size_t)n < len);
}

struct fake {
	char root[PATH_MAX];
	char sys[PATH_MAX + 8], dev[PATH_MAX + 8], proc[PATH_MAX + 8];
	struct sm_devenv env;
	bool have_mkfs, have_mkswap, have_sfdisk;
};

static void put(const char *path, const char *text)
{
	char dir[PATH_MAX];
	fit(dir, sizeof(dir), "%s", path);
	*strrchr(dir, '/') = '\0';
	assert_int_equal(mkdir_p(dir, 0755), 0);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void putf(const char *fmt_dir, const char *dir, const char *name, const char *text)
{
	char p[PATH_MAX * 2];
	fit(p, sizeof(p), fmt_dir, dir, name);
	put(p, text);
}

/* A block device directory under sys/devices/<where>/<name> with its attributes, and the
 * class/block link to it. */
static void blockdev(struct fake *f, const char *where, const char *name, const char *devno,
		     const char *sectors, const char *rot)
{
	char d[PATH_MAX * 2], link[PATH_MAX * 2];
	fit(d, sizeof(d), "%s/devices/%s/%s", f->sys, where, name);
	putf("%s/%s", d, "dev", devno);
	putf("%s/%s", d, "size", sectors);
	putf("%s/%s", d, "ro", "0\n");
	putf("%s/%s", d, "removable", "0\n");
	if (rot)
		putf("%s/%s", d, "queue/rotational", rot);
	assert_int_equal(mkdir_p(d, 0755), 0);
	fit(link, sizeof(link), "%s/class/block", f->sys);
	assert_int_equal(mkdir_p(link, 0755), 0);
	fit(link, sizeof(link), "%s/class/block/%s", f->sys, name);
	assert_int_equal(symlink(d, link), 0);
}

static void partition(struct fake *f, const char *where, const char *disk, const char *name,
		      const char *devno, const char *num)
{
	char w[PATH_MAX];
	fit(w, sizeof(w), "%s/%s", where, disk);
	blockdev(f, w, name, devno, "2048\n", NULL);
	char d[PATH_MAX * 2];
	fit(d, sizeof(d), "%s/devices/%s/%s", f->sys, w, name);
	putf("%s/%s", d, "partition", num);
}

/* A /dev entry: an image file of `mib` MiB, zeros. */
static void image(struct fake *f, const char *name, unsigned mib)
{
	char p[PATH_MAX * 2];
	fit(p, sizeof(p), "%s/%s", f->dev, name);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)mib << 20), 0);
	close(fd);
}

static int run(const char *cmd)
{
	int r = system(cmd);
	return r == 0 ? 0 : -1;
}

static int setup(void **state)
{
	struct fake *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	fit(f->root, sizeof(f->root), "%s/smdev.XXXXXX", tmp);
	if (!mkdtemp(f->root))
		return -1;
	fit(f->sys, sizeof(f->sys), "%s/sys", f->root);
	fit(f->dev, sizeof(f->dev), "%s/dev", f->root);
	fit(f->proc, sizeof(f->proc), "%s/proc", f->root);
	mkdir_p(f->dev, 0755);
	f->env = (struct sm_devenv){.sysfs = f->sys, .dev = f->dev, .proc = f->proc};
	f->have_mkfs = run("command -v mkfs.ext4 >/dev/null 2>&1") == 0;
	f->have_mkswap = run("command -v mkswap >/dev/null 2>&1") == 0;
	f->have_sfdisk = run("command -v sfdisk >/dev/null 2>&1") == 0;

	/* sda: an HDD with a GPT, two partitions: sda1 ext4 "data" mounted, sda2 held by dm-0 */
	const char *ata = "pci0000:00/ata1/host0/target0:0:0/0:0:0:0/block";
	blockdev(f, ata, "sda", "8:0\n", "16384\n", "1\n");
	char d[PATH_MAX * 2];
	fit(d, sizeof(d), "%s/devices/%s/sda", f->sys, ata);
	putf("%s/%s", d, "device/model", "WDC WD40EFRX-68N  \n");
	putf("%s/%s", d, "device/vendor", "ATA     \n");
	partition(f, ata, "sda", "sda1", "8:1\n", "1\n");
	partition(f, ata, "sda", "sda2", "8:2\n", "2\n");
	fit(d, sizeof(d), "%s/devices/%s/sda/sda2/holders/dm-0", f->sys, ata);
	assert_int_equal(mkdir_p(d, 0755), 0);
	image(f, "sda", 8);
	image(f, "sda1", 4);
	image(f, "sda2", 1);
	/* nvme0n1: NVMe holding a braidfs superblock */
	blockdev(f, "pci0000:00/0000:00:04.0/nvme/nvme0", "nvme0n1", "259:0\n", "8192\n", "0\n");
	fit(d, sizeof(d), "%s/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1", f->sys);
	putf("%s/%s", d, "device/model", "Samsung SSD 980 PRO 1TB\n");
	image(f, "nvme0n1", 4);
	/* sdb: an iSCSI LUN (its sysfs path has a session), empty */
	blockdev(f, "platform/host3/session1/target3:0:0/3:0:0:0/block", "sdb", "8:16\n", "8192\n",
		 "0\n");
	image(f, "sdb", 4);
	/* sdc: an SSD with a swap signature, active, and an md holder */
	blockdev(f, "pci0000:00/ata2/host1/target1:0:0/1:0:0:0/block", "sdc", "8:32\n", "8192\n",
		 "0\n");
	fit(d, sizeof(d),
	    "%s/devices/pci0000:00/ata2/host1/target1:0:0/1:0:0:0/block/sdc/holders/md127", f->sys);
	assert_int_equal(mkdir_p(d, 0755), 0);
	image(f, "sdc", 4);
	/* loop0 attached to an image, loop1 detached, zram0 */
	blockdev(f, "virtual/block", "loop0", "7:0\n", "8192\n", "0\n");
	fit(d, sizeof(d), "%s/devices/virtual/block/loop0", f->sys);
	putf("%s/%s", d, "loop/backing_file", "/var/tmp/disk.img\n");
	image(f, "loop0", 4);
	blockdev(f, "virtual/block", "loop1", "7:1\n", "0\n", "0\n");
	image(f, "loop1", 0);
	blockdev(f, "virtual/block", "zram0", "252:0\n", "8192\n", "0\n");
	image(f, "zram0", 4);
	/* broken: a device number that does not parse (skipped), a size that does not parse */
	blockdev(f, "virtual/block", "bad0", "eight:zero\n", "8192\n", "0\n");
	blockdev(f, "virtual/block", "vdz", "254:16\n", "12abc\n", NULL);
	image(f, "vdz", 1);

	/* /proc: sda1 mounted at a path with a space (escaped), a very long line, garbage */
	char big[12000];
	memset(big, 'x', sizeof(big) - 2);
	big[sizeof(big) - 2] = '\n';
	big[sizeof(big) - 1] = '\0';
	char mi[20000];
	fit(mi, sizeof(mi),
	    "21 26 0:20 / /proc rw,relatime - proc proc rw\n"
	    "%s"
	    "garbage\n"
	    "36 25 8:1 / /srv/my\\040data rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
	    "37 25 8:1 / /second rw - ext4 /dev/sda1 rw\n",
	    big);
	putf("%s/%s", f->proc, "self/mountinfo", mi);
	char sw[PATH_MAX * 2];
	fit(sw, sizeof(sw),
	    "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
	    "%s/sdc                               partition\t4096\t\t0\t\t-2\n",
	    f->dev);
	putf("%s/%s", f->proc, "swaps", sw);

	/* content */
	char cmd[PATH_MAX * 3];
	if (f->have_sfdisk) {
		fit(cmd, sizeof(cmd),
		    "printf 'label: gpt\\n,2M\\n,\\n' | sfdisk -q %s/sda >/dev/null 2>&1", f->dev);
		f->have_sfdisk = run(cmd) == 0;
	}
	if (f->have_mkfs) {
		fit(cmd, sizeof(cmd), "mkfs.ext4 -q -F -L data %s/sda1 >/dev/null 2>&1", f->dev);
		f->have_mkfs = run(cmd) == 0;
	}
	if (f->have_mkswap) {
		fit(cmd, sizeof(cmd), "mkswap %s/sdc >/dev/null 2>&1", f->dev);
		f->have_mkswap = run(cmd) == 0;
	}
	char p[PATH_MAX * 2];
	fit(p, sizeof(p), "%s/nvme0n1", f->dev);
	int fd = open(p, O_WRONLY);
	assert_true(fd >= 0);
	static const char magic[SM_BRAIDFS_MAGIC_LEN] = SM_BRAIDFS_MAGIC;
	assert_int_equal(pwrite_full(fd, magic, sizeof(magic), 0), 0);
	assert_int_equal(pwrite_full(fd, magic, sizeof(magic), 4096), 0);
	close(fd);
	print_message("fake machine in %s (sfdisk %s, mkfs.ext4 %s, mkswap %s)\n", f->root,
		      f->have_sfdisk ? "used" : "missing", f->have_mkfs ? "used" : "missing",
		      f->have_mkswap ? "used" : "missing");
	*state = f;
	return 0;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int teardown(void **state)
{
	struct fake *f = *state;
	nftw(f->root, rm_cb, 64, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static const struct sm_device *find(const struct sm_device *v, unsigned n, const char *name)
{
	for (unsigned i = 0; i < n; i++)
		if (!strcmp(v[i].name, name))
			return &v[i];
	fail_msg("device %s not found", name);
	return NULL;
}

static void state_is(const struct sm_device *d, const char *want)
{
	char b[1024];
	sm_device_state(d, b, sizeof(b));
	if (strcmp(b, want))
		fail_msg("%s: state '%s', expected '%s'", d->name, b, want);
}

static void t_scan(void **state)
{
	struct fake *f = *state;
	struct sm_device *v = NULL;
	unsigned n = 0;
	char err[256] = "", want[PATH_MAX * 2];
	assert_int_equal(sm_devices_scan(&f->env, &v, &n, err, sizeof(err)), 0);
	/* sorted, partitions right after their disk; bad0 (no device number) skipped */
	const char *order[] = {"loop0", "loop1", "nvme0n1", "sda", "sda1",
			       "sda2",	"sdb",	 "sdc",	    "vdz", "zram0"};
	assert_int_equal(n, ARRAY_SIZE(order));
	for (unsigned i = 0; i < n; i++)
		assert_string_equal(v[i].name, order[i]);

	const struct sm_device *d = find(v, n, "sda");
	fit(want, sizeof(want), "%s/sda", f->dev);
	assert_string_equal(d->path, want);
	assert_int_equal(d->media, SM_MEDIA_HDD);
	assert_true(d->rotational);
	assert_int_equal(d->major, 8);
	assert_int_equal(d->minor, 0);
	assert_int_equal(d->size, 16384ull * 512);
	assert_string_equal(d->model, "WDC WD40EFRX-68N");
	assert_string_equal(d->vendor, "ATA");
	assert_string_equal(d->parent, "");
	assert_int_equal(d->partitions, 2);
	assert_true(sm_device_in_use(d));
	if (f->have_sfdisk) {
		assert_string_equal(d->pttype, "gpt");
		state_is(d, "partition table gpt (2 partitions)");
	} else {
		state_is(d, "2 partitions");
	}

	d = find(v, n, "sda1");
	assert_string_equal(d->parent, "sda");
	assert_int_equal(d->media, SM_MEDIA_HDD); /* the disk's */
	assert_int_equal(d->size, 2048 * 512);
	assert_string_equal(d->mountpoint, "/srv/my data"); /* unescaped, first mount wins */
	if (f->have_mkfs) {
		assert_string_equal(d->fstype, "ext4");
		assert_string_equal(d->label, "data");
		state_is(d, "mounted at /srv/my data; holds ext4 \"data\"");
	}
	d = find(v, n, "sda2");
	assert_string_equal(d->holders, "dm-0");
	state_is(d, "used by dm-0");
	assert_true(sm_device_in_use(d));

	d = find(v, n, "nvme0n1");
	assert_int_equal(d->media, SM_MEDIA_NVME);
	assert_string_equal(d->model, "Samsung SSD 980 PRO 1TB");
	assert_true(d->braidfs);
	assert_true(sm_device_in_use(d));
	char b[512];
	sm_device_state(d, b, sizeof(b));
	assert_non_null(strstr(b, "braidfs target"));

	d = find(v, n, "sdb");
	assert_int_equal(d->media, SM_MEDIA_REMOTE);
	assert_false(sm_device_in_use(d));
	state_is(d, "free");

	d = find(v, n, "sdc");
	assert_int_equal(d->media, SM_MEDIA_SSD);
	assert_true(d->swap_active);
	state_is(d, f->have_mkswap ? "swap (active); used by md127" : "active swap; used by md127");

	d = find(v, n, "loop0");
	assert_int_equal(d->media, SM_MEDIA_VIRTUAL);
	assert_string_equal(d->backing, "/var/tmp/disk.img");
	assert_false(d->ram);
	state_is(d, "free");
	d = find(v, n, "loop1");
	assert_int_equal(d->size, 0);
	assert_true(d->probed);
	d = find(v, n, "zram0");
	assert_true(d->ram);
	assert_int_equal(d->media, SM_MEDIA_VIRTUAL);
	d = find(v, n, "vdz");
	assert_int_equal(d->size, 0); /* "12abc" sectors: unknown, not 12 */
	assert_int_equal(d->media, SM_MEDIA_UNKNOWN);
	free(v);
}

static void t_by_path_and_urls(void **state)
{
	struct fake *f = *state;
	struct sm_device d;
	char err[512] = "", p[PATH_MAX * 2], link[PATH_MAX * 2], url[PATH_MAX * 2];

	/* through a by-id style link */
	fit(link, sizeof(link), "%s/disk/by-id", f->dev);
	assert_int_equal(mkdir_p(link, 0755), 0);
	fit(link, sizeof(link), "%s/disk/by-id/nvme-Samsung_980", f->dev);
	assert_int_equal(symlink("../../nvme0n1", link), 0);
	assert_int_equal(sm_device_by_path(&f->env, link, &d, err, sizeof(err)), 0);
	assert_string_equal(d.name, "nvme0n1");
	assert_true(d.braidfs);
	/* sda1 probed alone still sees its mount */
	fit(p, sizeof(p), "%s/sda1", f->dev);
	assert_int_equal(sm_device_by_path(&f->env, p, &d, err, sizeof(err)), 0);
	assert_string_equal(d.mountpoint, "/srv/my data");
	/* not a device */
	assert_int_equal(sm_device_by_path(&f->env, f->root, &d, err, sizeof(err)), -ENOTBLK);
	assert_non_null(strstr(err, "not a block device"));
	fit(p, sizeof(p), "%s/nothere", f->dev);
	assert_int_equal(sm_device_by_path(&f->env, p, &d, err, sizeof(err)), -ENOENT);
	fit(p, sizeof(p), "%s/disk", f->dev); /* in /dev but no such block device */
	image(f, "notblk", 1);
	fit(p, sizeof(p), "%s/notblk", f->dev);
	assert_int_equal(sm_device_by_path(&f->env, p, &d, err, sizeof(err)), -ENOTBLK);
	assert_int_equal(sm_device_probe(&f->env, "../etc", &d, err, sizeof(err)), -EINVAL);
	assert_int_equal(sm_device_probe(&f->env, "bad0", &d, err, sizeof(err)), -EBADMSG);

	assert_int_equal(sm_media_for_url(&f->env, "dir:/srv/t1"), SM_MEDIA_DIR);
	assert_int_equal(sm_media_for_url(&f->env, "faulty:/srv/t1"), SM_MEDIA_DIR);
	assert_int_equal(sm_media_for_url(&f->env, "iscsi://127.0.0.1/iqn.x/0"), SM_MEDIA_REMOTE);
	assert_int_equal(sm_media_for_url(&f->env, "nbd+unix:///e?socket=/s"), SM_MEDIA_REMOTE);
	fit(url, sizeof(url), "file:%s/nvme0n1", f->dev);
	assert_int_equal(sm_media_for_url(&f->env, url), SM_MEDIA_NVME);
	fit(url, sizeof(url), "file:%s/sda", f->dev);
	assert_int_equal(sm_media_for_url(&f->env, url), SM_MEDIA_HDD);
	fit(p, sizeof(p), "%s/image.img", f->root);
	put(p, "x");
	fit(url, sizeof(url), "file:%s", p);
	assert_int_equal(sm_media_for_url(&f->env, url), SM_MEDIA_FILE);
	assert_int_equal(sm_media_for_url(&f->env, "file:/no/such/file"), SM_MEDIA_UNKNOWN);
	assert_int_equal(sm_media_for_url(&f->env, "sqlite:///x.db"), SM_MEDIA_UNKNOWN);
	assert_string_equal(sm_media_name(SM_MEDIA_NVME), "nvme");
	assert_string_equal(sm_media_name((enum sm_media)99), "unknown");
}

/* A device that cannot be read is unknown and in use (DEVS-3). */
static void t_unreadable(void **state)
{
	struct fake *f = *state;
	struct sm_device d;
	char err[256], p[PATH_MAX * 2];
	fit(p, sizeof(p), "%s/sdb", f->dev);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(sm_device_probe(&f->env, "sdb", &d, err, sizeof(err)), 0);
	assert_false(d.probed);
	assert_true(sm_device_in_use(&d));
	char b[512];
	sm_device_state(&d, b, sizeof(b));
	assert_non_null(strstr(b, "unknown (cannot open"));
	/* no sysfs at all */
	struct sm_devenv none = {.sysfs = "/nonexistent", .dev = f->dev, .proc = f->proc};
	struct sm_device *v = NULL;
	unsigned n = 5;
	assert_int_equal(sm_devices_scan(&none, &v, &n, err, sizeof(err)), -ENOENT);
	assert_int_equal(n, 0);
	assert_non_null(strstr(err, "/nonexistent/class/block"));
}

/* The real machine: the scan works and every device it finds has a name, a path and a class. */
static void t_real_machine(void **state)
{
	(void)state;
	struct sm_devenv env = sm_devenv_system();
	struct sm_device *v = NULL;
	unsigned n = 0;
	char err[256] = "";
	if (access("/sys/class/block", F_OK) < 0)
		skip();
	assert_int_equal(sm_devices_scan(&env, &v, &n, err, sizeof(err)), 0);
	for (unsigned i = 0; i < n; i++) {
		char b[1024];
		assert_true(v[i].name[0]);
		assert_true(strncmp(v[i].path, "/dev/", 5) == 0);
		sm_device_state(&v[i], b, sizeof(b));
		assert_true(b[0]);
		if (!strncmp(v[i].name, "loop", 4))
			assert_int_equal(v[i].media, SM_MEDIA_VIRTUAL);
	}
	free(v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(t_scan, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_by_path_and_urls, setup, teardown),
	    cmocka_unit_test_setup_teardown(t_unreadable, setup, teardown),
	    cmocka_unit_test(t_real_machine),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
