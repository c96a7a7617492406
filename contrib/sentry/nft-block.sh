#!/bin/sh
# blockcmd helper for portnanny.nft: add (or, with "del", remove) an address in the set of its
# family, with the block's remaining time (0 seconds = no timeout: until removed).
#   blockcmd   /etc/portnanny/nft-block.sh add %(ip)s %(seconds)d
#   unblockcmd /etc/portnanny/nft-block.sh del %(ip)s 0
# portnanny runs it without a shell of its own, from an empty environment with a fixed PATH,
# with a time limit; its output and exit status are logged.
set -eu
op=$1 ip=$2 secs=${3:-0}
case $ip in
	*:*) set=blocked6 ;;
	*) set=blocked4 ;;
esac
case $op in
	add)
		if [ "$secs" -gt 0 ]; then
			exec nft add element inet portnanny "$set" "{ $ip timeout ${secs}s }"
		else
			exec nft add element inet portnanny "$set" "{ $ip }"
		fi ;;
	del)
		exec nft delete element inet portnanny "$set" "{ $ip }" ;;
	*)
		echo "usage: $0 add|del ADDR [SECONDS]" >&2
		exit 2 ;;
esac
