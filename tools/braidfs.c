/* braidfs — the command line: dispatch to one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "tools/tools.h"

static const char usage[] =
    "Usage: braidfs COMMAND [OPTIONS] ARGS...\n"
    "\n"
    "braidfs is a replicated POSIX file system: every chunk of every file is kept on\n"
    "several targets at once, and one command mounts it.\n"
    "\n"
    "Commands:\n"
    "  format   create a volume: metadata database + targets\n"
    "  mount    mount a volume (FUSE)\n"
    "  umount   flush and unmount a mounted volume\n"
    "  status   show a volume, its targets, chains and their health\n"
    "  fsck     check (and repair) metadata and replicas\n"
    "  bench    measure the local disk, braidfs and its peers side by side\n"
    "  device   block devices of this machine; add, drain, remove targets\n"
    "  quota    set, show or clear a directory quota\n"
    "  scrub    verify every replica's checksums and contents, repair (mounted or not)\n"
    "  serve    run this node of a distributed volume (targets, lease, replication)\n"
    "\n"
    "Run 'braidfs COMMAND --help' for a command's options.\n"
    "\n"
    "A quick start:\n"
    "  mkdir -p /srv/t1 /srv/t2 /mnt/braidfs\n"
    "  braidfs format sqlite:///srv/meta.db vol1 dir:/srv/t1 dir:/srv/t2\n"
    "  braidfs mount sqlite:///srv/meta.db /mnt/braidfs\n";

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage, stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
		fputs(usage, stdout);
		return 0;
	}
	if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
		printf("braidfs %s\n", BRAIDFS_VERSION);
		return 0;
	}
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
	    {"format", cmd_format},  {"mount", cmd_mount},   {"umount", cmd_umount},
	    {"unmount", cmd_umount}, {"status", cmd_status}, {"fsck", cmd_fsck},
	    {"bench", cmd_bench},    {"device", cmd_device}, {"quota", cmd_quota},
	    {"scrub", cmd_scrub},    {"serve", cmd_serve},
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmd, cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "braidfs: unknown command '%s' (try 'braidfs --help')\n", cmd);
	return EXIT_USAGE;
}
