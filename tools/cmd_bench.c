/* braidfs bench — runs tools/bench.py (the benchmark is orchestration: fio, pgbench, mounts,
 * a chart; Python does that best). This finds the script, installed or in the source tree,
 * and hands it the running braidfs binary so that the figures are of this build. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/tools.h"

#define PYTHON "/usr/bin/python3" /* Debian's: the one with python3-matplotlib */

int cmd_bench(int argc, char **argv)
{
	char self[PATH_MAX], script[PATH_MAX + 64];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0) {
		die_msg("bench", "cannot find the running binary: %s", strerror(errno));
		return 1;
	}
	self[n] = '\0';
	const char *env = getenv("BRAIDFS_BENCH_SCRIPT");
	if (env) {
		snprintf(script, sizeof(script), "%s", env);
	} else {
		/* build/tools/braidfs in a source tree, else the installed copy */
		char *slash = strrchr(self, '/');
		snprintf(script, sizeof(script), "%.*s/../../tools/bench.py", (int)(slash - self),
			 self);
		if (access(script, R_OK) != 0)
			snprintf(script, sizeof(script), "%s", BRAIDFS_LIBEXECDIR "/bench.py");
	}
	if (access(script, R_OK) != 0) {
		die_msg("bench", "cannot find bench.py (looked in the source tree and %s)",
			BRAIDFS_LIBEXECDIR);
		return 1;
	}
	if (access(PYTHON, X_OK) != 0) {
		die_msg("bench", "%s is missing (apt-get install python3)", PYTHON);
		return 1;
	}
	char **av = calloc((size_t)argc + 5, sizeof(*av));
	if (!av) {
		die_msg("bench", "out of memory");
		return 1;
	}
	int k = 0;
	bool has_bin = false;
	av[k++] = PYTHON;
	av[k++] = script;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--braidfs") || !strncmp(argv[i], "--braidfs=", 10))
			has_bin = true;
		av[k++] = argv[i];
	}
	if (!has_bin) {
		av[k++] = "--braidfs";
		av[k++] = self;
	}
	av[k] = NULL;
	execv(PYTHON, av);
	die_msg("bench", "cannot run %s: %s", PYTHON, strerror(errno));
	free(av);
	return 1;
}
