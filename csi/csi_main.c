/* braidfs-csi — the command: options, checks, then csi_serve(). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/url.h"
#include "common/util.h"
#include "csi/csi.h"

static const char help[] =
    "Usage: braidfs-csi --endpoint unix:///PATH/csi.sock --node-id ID --meta META_URL\n"
    "                   [--controller] [--node] [OPTIONS]\n"
    "\n"
    "The braidfs CSI plugin (Container Storage Interface spec v1): Kubernetes, or any\n"
    "container orchestrator, creates, mounts, expands and deletes braidfs volumes\n"
    "through it over a gRPC unix socket.\n"
    "\n"
    "A volume is a directory of a braidfs file system with a quota equal to its capacity\n"
    "(see 'braidfs quota --help'). On each node the file system is mounted once, by\n"
    "'braidfs mount', under the state directory; a volume is staged by a bind mount of\n"
    "its directory and published by a bind mount into the pod (read-only when asked).\n"
    "The mount processes are not children of this plugin: restarting or killing it\n"
    "leaves every mount serving. A mount whose process died is repaired by the next\n"
    "NodeStageVolume or NodePublishVolume of a volume on it.\n"
    "\n"
    "Options:\n"
    "  --endpoint unix:///PATH  the socket to serve (created 0600; a stale socket file\n"
    "                        is replaced; a live one is refused)\n"
    "  --node-id ID          this node's name (Kubernetes: the node name); also the value\n"
    "                        of the topology key " CSI_TOPOLOGY_KEY "\n"
    "  --meta META_URL       the braidfs file system volumes are carved from; repeat it\n"
    "                        to serve several (the first is the default, a StorageClass\n"
    "                        picks another with the parameter metaURL)\n"
    "  --controller          serve the Controller service\n"
    "  --node                serve the Node service (both when neither is given)\n"
    "  --volumes-dir DIR     directory inside each file system that holds the volumes\n"
    "                        (default /volumes)\n"
    "  --state-dir DIR       where the file systems are mounted and their logs go\n"
    "                        (default /var/lib/braidfs-csi; in Kubernetes, a hostPath\n"
    "                        with Bidirectional mount propagation)\n"
    "  --layout-dir DIR      where volumes with a layout of their own live; repeat it,\n"
    "                        one per disk (see LAYOUTS below)\n"
    "  --braidfs PATH        the braidfs command (default: braidfs from PATH)\n"
    "  --mount-wrapper 'CMD ARGS'  words run before 'braidfs mount ...' (split on\n"
    "                        spaces). In Kubernetes a container restart kills every\n"
    "                        process of the container, so run the mount processes on\n"
    "                        the host: --mount-wrapper 'nsenter --target 1 --mount --pid\n"
    "                        -- systemd-run --scope --collect --quiet --' (hostPID)\n"
    "  --workers N           threads that run calls (default 4)\n"
    "  --log PATH            log to PATH instead of stderr\n"
    "  -v, --verbose         log debug messages\n"
    "  -h, --help            show this help\n"
    "\n"
    "StorageClass parameters: metaURL (one of --meta), replicas (1..8), consistency\n"
    "(strong or weak), pool ('default').\n"
    "\n"
    "LAYOUTS\n"
    "  A volume keeps the replica count and consistency of its file system. When a\n"
    "  StorageClass asks for others, the volume becomes a braidfs file system of its own\n"
    "  if the plugin has --layout-dir: formatted with that layout, one target on every\n"
    "  layout dir (DIR/<volume>), its metadata in the first (DIR/<volume>.db), id\n"
    "  '<volume>@layout'. Deleting the volume deletes that file system. Without\n"
    "  --layout-dir such a StorageClass is refused with a message naming both layouts.\n"
    "  The node plugin needs the same --layout-dir options as the controller.\n"
    "\n"
    "Example:\n"
    "  braidfs-csi --endpoint unix:///var/lib/kubelet/plugins/csi.braidfs.io/csi.sock \\\n"
    "      --node-id $(hostname) --meta sqlite:///var/lib/braidfs/meta.db --controller --node\n"
    "\n"
    "Exit status: 0 stopped by SIGTERM/SIGINT, 1 could not start, 2 usage error.\n";

static int usage_err(const char *fmt, const char *arg)
{
	fprintf(stderr, "braidfs-csi: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (try --help)\n");
	return 2;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"endpoint", required_argument, NULL, 'e'},
	    {"node-id", required_argument, NULL, 'n'},
	    {"meta", required_argument, NULL, 'm'},
	    {"controller", no_argument, NULL, 'C'},
	    {"node", no_argument, NULL, 'N'},
	    {"volumes-dir", required_argument, NULL, 'V'},
	    {"state-dir", required_argument, NULL, 's'},
	    {"braidfs", required_argument, NULL, 'b'},
	    {"workers", required_argument, NULL, 'w'},
	    {"log", required_argument, NULL, 'l'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {"mount-wrapper", required_argument, NULL, 'W'},
	    {"layout-dir", required_argument, NULL, 'L'},
	    {0},
	};
	static struct csi c;
	const char *endpoint = NULL, *logpath = NULL;
	bool verbose = false;
	int o;

	snprintf(c.volumes_dir, sizeof(c.volumes_dir), "/volumes");
	snprintf(c.state_dir, sizeof(c.state_dir), "/var/lib/braidfs-csi");
	snprintf(c.braidfs, sizeof(c.braidfs), "braidfs");
	c.workers = 4;
	opterr = 0;
	while ((o = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		switch (o) {
		case 'e':
			endpoint = optarg;
			break;
		case 'n':
			snprintf(c.node_id, sizeof(c.node_id), "%s", optarg);
			if (strlen(optarg) >= sizeof(c.node_id) || !optarg[0])
				return usage_err("--node-id must be 1..255 bytes", "");
			break;
		case 'm': {
			struct url u;
			char err[256];
			if (c.nmeta == CSI_MAX_META)
				return usage_err("at most 8 --meta", "");
			if (url_parse(optarg, &u, err, sizeof(err)) < 0)
				return usage_err("bad --meta URL '%s'", optarg);
			c.meta[c.nmeta++] = optarg;
			break;
		}
		case 'C':
			c.controller = true;
			break;
		case 'N':
			c.node = true;
			break;
		case 'V':
			if (optarg[0] != '/' || strstr(optarg, "..") ||
			    strlen(optarg) >= sizeof(c.volumes_dir) - CSI_ID_MAX)
				return usage_err(
				    "--volumes-dir must be an absolute path inside the "
				    "file system without '..', not '%s'",
				    optarg);
			snprintf(c.volumes_dir, sizeof(c.volumes_dir), "%s", optarg);
			break;
		case 's':
			if (optarg[0] != '/' || strlen(optarg) >= sizeof(c.state_dir) - 64)
				return usage_err(
				    "--state-dir must be a short absolute path, not '%s'", optarg);
			snprintf(c.state_dir, sizeof(c.state_dir), "%s", optarg);
			break;
		case 'b':
			snprintf(c.braidfs, sizeof(c.braidfs), "%s", optarg);
			break;
		case 'L': {
			struct stat st;
			if (c.nlayout == CSI_MAX_META)
				return usage_err("at most 8 --layout-dir%s", "");
			if (optarg[0] != '/' || strstr(optarg, "..") ||
			    strlen(optarg) >= PATH_MAX - 2 * CSI_ID_MAX)
				return usage_err(
				    "--layout-dir must be a short absolute path without "
				    "'..', not '%s'",
				    optarg);
			if (stat(optarg, &st) < 0 || !S_ISDIR(st.st_mode))
				return usage_err("--layout-dir '%s' is not a directory", optarg);
			c.layout_dir[c.nlayout++] = optarg;
			break;
		}
		case 'w': {
			char *end;
			long n = strtol(optarg, &end, 10);
			if (*end || n < 1 || n > 64)
				return usage_err("--workers must be 1..64, not '%s'", optarg);
			c.workers = (unsigned)n;
			break;
		}
		case 'l':
			logpath = optarg;
			break;
		case 'W':
			c.nwrapper = 0;
			for (char *save = NULL, *w = strtok_r(optarg, " ", &save); w;
			     w = strtok_r(NULL, " ", &save)) {
				if (c.nwrapper == CSI_WRAPPER_MAX)
					return usage_err("--mount-wrapper has more than 16 words%s",
							 "");
				c.wrapper[c.nwrapper++] = w;
			}
			break;
		case 'v':
			verbose = true;
			break;
		case 'h':
			fputs(help, stdout);
			return 0;
		case ':':
			return usage_err("option %s needs a value", argv[optind - 1]);
		default:
			return usage_err("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_err("unexpected argument '%s'", argv[optind]);
	if (!endpoint)
		return usage_err("--endpoint is required%s", "");
	if (strncmp(endpoint, "unix://", 7) || endpoint[7] != '/')
		return usage_err("--endpoint must be unix:///ABSOLUTE/PATH, not '%s'", endpoint);
	if (strlen(endpoint + 7) >= 100) /* sun_path */
		return usage_err("--endpoint path is too long for a unix socket: '%s'", endpoint);
	snprintf(c.endpoint, sizeof(c.endpoint), "%s", endpoint + 7);
	if (!c.node_id[0])
		return usage_err("--node-id is required%s", "");
	if (c.nmeta == 0)
		return usage_err("--meta is required%s", "");
	if (!c.controller && !c.node)
		c.controller = c.node = true;

	if (logpath ? log_init("braidfs-csi", verbose ? LOG_DEBUG : LOG_INFO, LOG_SINK_FILE,
			       logpath) < 0
		    : log_init("braidfs-csi", verbose ? LOG_DEBUG : LOG_INFO, LOG_SINK_STDERR,
			       NULL) < 0) {
		fprintf(stderr, "braidfs-csi: cannot open the log %s\n", logpath ? logpath : "");
		return 1;
	}
	int e = mkdir_p(c.state_dir, 0700);
	if (e < 0) {
		fprintf(stderr, "braidfs-csi: cannot make the state directory %s: %s\n",
			c.state_dir, strerror(-e));
		return 1;
	}
	char sockdir[PATH_MAX];
	snprintf(sockdir, sizeof(sockdir), "%s", c.endpoint);
	*strrchr(sockdir, '/') = '\0';
	if (sockdir[0] && (e = mkdir_p(sockdir, 0755)) < 0) {
		fprintf(stderr, "braidfs-csi: cannot make %s: %s\n", sockdir, strerror(-e));
		return 1;
	}
	pthread_mutex_init(&c.lock, NULL);
	return csi_serve(&c);
}
