#!/bin/sh
# Installed as /sbin/livenetroot in place of livenet's (netroot calls it once the network is
# up, with the interface and `livenet:URL`). ramboot downloads the root itself, as its own
# initramfs does: each server in turn (root=live: then ramboot.url=), a seeding peer when the
# server redirects there, the server itself when a peer fails or sends other bytes; the
# sha256 (ramboot.sha256=) is checked before dmsquash-live's own script mounts anything.
# The file lands in RB_IMG, a tmpfs under /run, so the booted root can seed it on.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
. /lib/ramboot-lib.sh

[ -e /tmp/livenet.downloaded ] && exit 0

urls=$(getarg root=)
urls="${urls#live:} $(getargs ramboot.url=)"
sha=$(getarg ramboot.sha256= | tr A-F a-f)
rb_image_tmpfs || rb_fail "cannot mount a tmpfs on $RB_IMG"
img=$RB_IMG/rootfs.squashfs
set -f
# shellcheck disable=SC2086 # the URL list is split on spaces, on purpose
set -- $urls
set +f
rb_stage download-start "{\"url\":\"$(rb_jstr "$1")\"}"
rb_download "$img" "root image" "$sha" "$@" || rb_fail "could not download the root image from any of: $urls"
rb_stage download-done "{\"url\":\"$(rb_jstr "$RB_GOT")\",\"bytes\":$RB_BYTES,\"seconds\":$RB_SECS}"
if [ -n "$sha" ]; then
    rb_verify "$img" "root image" "$sha" "$RB_GOT" || exit 1
    rb_stage verified "{\"sha256\":\"$RB_SUM\"}"
else
    rb_console "WARNING: no ramboot.sha256= given: the root image is NOT verified"
fi
echo "$RB_GOT" > /tmp/livenet.downloaded
exec /sbin/dmsquash-live-root "$img"
