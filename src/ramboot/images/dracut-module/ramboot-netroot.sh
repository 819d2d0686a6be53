#!/bin/sh
# netroot hook (sourced with the interface that came up, just before the root's download):
# the node's MAC is known now, so the queued events go out.
type rb_stage > /dev/null 2>&1 || . /lib/ramboot-lib.sh
if [ -n "$1" ] && [ -r "/sys/class/net/$1/address" ]; then
    cat "/sys/class/net/$1/address" > "$RB_DIR/mac"
    echo "$1" > "$RB_DIR/iface"
fi
rb_flush
