/* cmd_serve — `braidfs serve`: run this node of a distributed volume (tools/node.c). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "tools/node.h"
#include "tools/tools.h"

static const char help[] =
    "Usage: braidfs serve --config FILE [OPTIONS]\n"
    "\n"
    "Run this node of a distributed braidfs volume: open the node's targets, register\n"
    "the node in the metadata database, serve the targets over TCP to mounts and to\n"
    "the other nodes, and renew the node's lease every heartbeat. One serve process\n"
    "runs per node. It stays in the foreground and logs to stderr.\n"
    "\n"
    "A client writes to the primary of a chunk's chain; the primary's node applies\n"
    "the write to its own target and forwards it to every other member's node in\n"
    "parallel, and answers once every in-chain member has it (strong volumes) or at\n"
    "once (weak). A member that fails leaves the chain (epoch + 1, committed in the\n"
    "database) before the write is answered, and what it misses is recorded for its\n"
    "resync. One of the serve processes also holds the manager lease: it marks nodes\n"
    "whose lease expired as down and takes their targets out of every chain.\n"
    "\n"
    "When a node comes back, the manager makes its targets syncing in their chains:\n"
    "they receive new writes, and the primary of each chain copies them the chunks\n"
    "they missed (resync, at resync_rate), then makes them full members again. A\n"
    "target away longer than replace_after_s whose node is down is replaced in each\n"
    "chain by another target of its pool, which the primary copies the whole chain\n"
    "to (rebuild). Each repair logs the bytes it copied.\n"
    "\n"
    "A node that cannot renew its lease for lease_ms stops answering writes and reads\n"
    "(it fences itself) until a renewal succeeds and it has re-read its chains, so a\n"
    "node cut off from the database never acknowledges a write that the chain that\n"
    "replaced it could miss.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   the node's configuration (YAML, below); required\n"
    "  -v, --verbose       log debug messages too\n"
    "  -h, --help          show this help\n"
    "\n"
    "Configuration (every key but the first four is optional):\n"
    "  node: n1                     this node's name, unique in the cluster, as in\n"
    "                               NODE@URL when the volume was formatted\n"
    "  listen: 10.77.0.1:7410       HOST:PORT to serve on ([ADDR]:PORT for IPv6);\n"
    "                               others connect to exactly this address\n"
    "  meta: postgres://braidfs@db/braidfs\n"
    "                               the volume's metadata database\n"
    "  targets:                     this node's targets, as formatted\n"
    "    - file:/var/lib/braidfs/n1.img\n"
    "  heartbeat_ms: 500            how often the lease is renewed (10-60000)\n"
    "  lease_ms: 3000               the lease; at least twice heartbeat_ms\n"
    "  replace_after_s: 600         a target away longer than this is replaced\n"
    "  resync_rate: 256MiB          bytes/s for resync and rebuild (>= 1MiB)\n"
    "  local_reads: false           true: serve mounts run with -o node=NAME the reads\n"
    "                               of chains this node is a non-primary member of;\n"
    "                               set the same on every node of the volume\n"
    "Unknown keys are refused; every error names its line and column.\n"
    "\n"
    "Signals: SIGTERM or SIGINT stop the node cleanly: no new requests, the running\n"
    "ones are answered, the node is marked down (the manager then takes its targets\n"
    "out of their chains) and the manager lease, if held, is released.\n"
    "\n"
    "Example:\n"
    "  braidfs format --replicas 3 postgres://braidfs@db/braidfs vol1 \\\n"
    "          n1@file:/srv/n1.img n2@file:/srv/n2.img n3@file:/srv/n3.img\n"
    "  braidfs serve --config /etc/braidfs/node.yaml     (on n1, n2 and n3)\n"
    "  braidfs mount postgres://braidfs@db/braidfs /mnt/vol1\n"
    "\n"
    "Exit status: 0 stopped by a signal, 1 could not start, 2 usage error.\n";

int cmd_serve(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
					     {"verbose", no_argument, NULL, 'v'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	const char *path = NULL;
	bool verbose = false;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'v':
			verbose = true;
			break;
		case 'h':
			fputs(help, stdout);
			return 0;
		default:
			return bad_option("serve", argv, c);
		}
	}
	if (optind < argc) {
		die_msg("serve", "unexpected argument '%s' (try 'braidfs serve --help')",
			argv[optind]);
		return EXIT_USAGE;
	}
	if (!path) {
		die_msg("serve", "needs --config FILE (try 'braidfs serve --help')");
		return EXIT_USAGE;
	}
	struct cfg_node *cfg = calloc(1, sizeof(*cfg));
	char err[2048] = "";
	if (!cfg) {
		die_msg("serve", "out of memory");
		return 1;
	}
	if (cfg_load(path, cfg, err, sizeof(err)) < 0) {
		die_msg("serve", "%s", err);
		free(cfg);
		return 1;
	}
	log_init("braidfs-serve", verbose ? LOG_DEBUG : LOG_INFO, LOG_SINK_STDERR, NULL);

	/* every thread inherits the mask: the signals reach sigwait below only */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct node *n = NULL;
	if (node_start(cfg, &n, err, sizeof(err)) < 0) {
		die_msg("serve", "%s", err);
		free(cfg);
		return 1;
	}
	log_info("node %s (id %u) serving %u target(s) on %s", cfg->node, node_id(n), cfg->ntargets,
		 cfg->listen);
	int sig = 0;
	while (sigwait(&set, &sig) == 0 && sig == SIGHUP)
		log_info("SIGHUP ignored (the configuration is read at start only)");
	log_info("signal %d: stopping", sig);
	node_stop(n);
	log_info("node %s stopped", cfg->node);
	free(cfg);
	return 0;
}
