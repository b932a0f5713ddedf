/* sm_devices — this machine's block devices: what they are and what they hold.
 *
 * WHAT IT OWNS
 *   Discovery and classification for `braidfs device list` and for the checks of
 *   `braidfs device add`: every disk and partition the kernel shows in sysfs (/sys/block,
 *   /sys/class/block), its size, model, vendor, media class (HDD / SSD / NVMe, virtual for
 *   loop, ram and zram devices, remote for network block devices) and what it holds: a
 *   partition table, a file system (type, label), an LVM physical volume, a RAID member, swap,
 *   a mount (/proc/self/mountinfo), holders (device mapper, md), a braidfs superblock — or
 *   nothing ("free"). Content is probed with libblkid, plus our own read of the first 8 KiB for
 *   the braidfs magic ("BRAIDSB\0" at offset 0 and at 4096, docs/format.md); the identity
 *   behind it (volume uuid, target id) is read through sm_open() when a backend for file:
 *   targets is built in.
 *
 *   Every function takes a struct sm_devenv: the sysfs root, the /dev prefix and the proc root,
 *   so that unit tests run on a fake tree (tests/test_sm_devices.c). sm_devenv_system() is the
 *   real machine.
 *
 * RULES (cited as DEVS-n)
 *   DEVS-1 Bytes read from sysfs, /proc and devices are untrusted: every read is bounded (an
 *          attribute at most 4 KiB, a mountinfo line at most 8 KiB), every number is parsed
 *          strictly, and a value that does not parse is reported as unknown, never guessed.
 *   DEVS-2 Probing never writes and never opens a device exclusively (O_RDONLY, no O_EXCL), so
 *          it is safe on a device in use.
 *   DEVS-3 A device is "free" only when every check ran and found nothing; one that cannot be
 *          read is "unknown" and counts as in use (sm_device_in_use), so `device add` refuses
 *          it without --force.
 *
 * THREADS: no state of its own; callable from any thread.
 * ERRORS: 0 or -errno with a one-line reason in err.
 */
#ifndef BRAIDFS_SM_DEVICES_H
#define BRAIDFS_SM_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SM_BRAIDFS_MAGIC     "BRAIDSB" /* 8 bytes with its NUL, at 0 and at 4096 */
#define SM_BRAIDFS_MAGIC_LEN 8

enum sm_media {
	SM_MEDIA_UNKNOWN = 0,
	SM_MEDIA_HDD,	  /* queue/rotational = 1 */
	SM_MEDIA_SSD,	  /* rotational = 0, not NVMe */
	SM_MEDIA_NVME,	  /* nvme* */
	SM_MEDIA_VIRTUAL, /* loop, ram, zram: no media of its own */
	SM_MEDIA_REMOTE,  /* nbd*, iSCSI sessions; iscsi:// and nbd:// targets */
	SM_MEDIA_DIR,	  /* a dir: target */
	SM_MEDIA_FILE,	  /* an image file (file: URL of a regular file) */
};

struct sm_devenv {
	const char *sysfs; /* "/sys" */
	const char *dev;   /* "/dev" */
	const char *proc;  /* "/proc": self/mountinfo, swaps */
};

struct sm_device {
	char name[64];	 /* "sda", "sda1", "nvme0n1", "loop3" */
	char path[320];	 /* dev prefix + "/" + name */
	char parent[64]; /* the disk of a partition; "" for a disk */
	unsigned major, minor;
	uint64_t size; /* bytes */
	char model[128], vendor[64];
	enum sm_media media;
	bool rotational, readonly, removable;
	bool ram;	     /* ram or zram: listed only with --all */
	char backing[512];   /* loop: the backing file ("" when detached) */
	unsigned partitions; /* partitions sysfs shows for a disk */

	/* what it holds */
	bool probed;		 /* content was read (false: see probe_error) */
	char probe_error[160];	 /* why it could not be read */
	char pttype[32];	 /* partition table: "gpt", "dos", ... */
	char fstype[64];	 /* blkid TYPE: "ext4", "swap", "LVM2_member", ... */
	char label[128];	 /* file system label */
	bool ambivalent;	 /* several signatures (blkid could not decide) */
	bool braidfs;		 /* the braidfs magic at 0 and 4096 */
	char braidfs_volume[37]; /* identity, when a backend could read it */
	uint32_t braidfs_target;
	char braidfs_error[200]; /* why the identity is unknown */
	char mountpoint[512];	 /* where it is mounted ("" not mounted) */
	bool swap_active;	 /* listed in /proc/swaps */
	char holders[256];	 /* sysfs holders, space separated: "dm-0 md127" */
};

/* The real machine: /sys, /dev, /proc. */
struct sm_devenv sm_devenv_system(void);

/* "hdd", "ssd", "nvme", "virtual", "remote", "dir", "file", "unknown" */
const char *sm_media_name(enum sm_media m);

/* Every block device (disks and their partitions, sorted by name, partitions right after
 * their disk). *ret is malloc'd (free it). */
int sm_devices_scan(const struct sm_devenv *env, struct sm_device **ret, unsigned *ret_n, char *err,
		    size_t errlen);

/* One device by kernel name ("sdb", "loop3"). -ENOENT when sysfs has none. */
int sm_device_probe(const struct sm_devenv *env, const char *name, struct sm_device *ret, char *err,
		    size_t errlen);

/* One device by path ("/dev/sdb", "/dev/disk/by-id/...", "/dev/mapper/x": links resolved).
 * -ENOTBLK when the path is not a block device of this machine. */
int sm_device_by_path(const struct sm_devenv *env, const char *path, struct sm_device *ret,
		      char *err, size_t errlen);

/* Does it hold anything, or could it not be read (DEVS-3)? */
bool sm_device_in_use(const struct sm_device *d);

/* One line saying what it holds: `free`, `holds ext4 "data"`, `partition table gpt (2
 * partitions)`, `LVM physical volume`, `RAID member (linux_raid_member)`, `swap (active)`,
 * `mounted at /srv (ext4)`, `used by dm-0`, `braidfs target 3 of volume <uuid>`, `unknown
 * (cannot read: ...)`; several joined by "; ". Returns buf. */
char *sm_device_state(const struct sm_device *d, char *buf, size_t len);

/* The media class behind a target URL: dir:/faulty: -> dir; iscsi://, nbd:// -> remote;
 * file:/dev/X -> the device's class; file:/path of a regular file -> file. */
enum sm_media sm_media_for_url(const struct sm_devenv *env, const char *url);

#endif
