#!/bin/sh
# Installed as /sbin/dmsquash-live-root, in front of dmsquash-live's own script
# (/sbin/dmsquash-live-root.dracut). livenet calls it with the file it downloaded:
# the bytes are checked against ramboot.sha256= before anything mounts them.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
. /lib/ramboot-lib.sh

img=$1
if [ -f "$img" ]; then
    url=$(cat "$RB_DIR/root-url" 2> /dev/null)
    t0=$(cat "$RB_DIR/download-t0" 2> /dev/null || echo 0)
    bytes=$(stat -c %s "$img")
    secs=$(awk -v a="$t0" -v b="$(rb_now)" 'BEGIN { printf "%.2f", b - a }')
    rb_console "fetched the root image: $bytes bytes in $secs s from $url"
    rb_stage download-done "{\"url\":\"$(rb_jstr "$url")\",\"bytes\":$bytes,\"seconds\":$secs}"
    sha=$(getarg ramboot.sha256= | tr A-F a-f)
    if [ -n "$sha" ]; then
        rb_verify "$img" "root image" "$sha" "$url" || exit 1
        rb_stage verified "{\"sha256\":\"$RB_SUM\"}"
    else
        rb_console "WARNING: no ramboot.sha256= given: the root image is NOT verified"
    fi
fi
exec /sbin/dmsquash-live-root.dracut "$@"
