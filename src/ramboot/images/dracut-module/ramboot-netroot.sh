#!/bin/sh
# netroot hook (sourced with the interface that came up, just before livenet downloads):
# the node's MAC is known now, so the queued events go out, then download-start.
type rb_stage > /dev/null 2>&1 || . /lib/ramboot-lib.sh
if [ -n "$1" ] && [ -r "/sys/class/net/$1/address" ]; then
    cat "/sys/class/net/$1/address" > "$RB_DIR/mac"
    echo "$1" > "$RB_DIR/iface"
fi
rb_flush
rb_now > "$RB_DIR/download-t0"
rb_url=$(getarg root=)
rb_url=${rb_url#live:}
echo "$rb_url" > "$RB_DIR/root-url"
rb_stage download-start "{\"url\":\"$(rb_jstr "$rb_url")\"}"
