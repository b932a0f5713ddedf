#!/bin/sh
# targets.sh — shell front of targets.py (real iSCSI and NBD servers on loopback for tests).
# Usage: targets.sh start|stop DIR, targets.sh kill|revive DIR iscsi|nbd|nbdunix,
#        targets.sh run DIR -- CMD ARGS...   (see targets.py for the whole story)
# Debian's python3, never another one on PATH (the tests rely on its standard library only).
exec /usr/bin/python3 "$(dirname "$0")/targets.py" "$@"
