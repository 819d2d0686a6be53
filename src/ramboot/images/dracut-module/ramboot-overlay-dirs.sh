#!/bin/sh
# pre-mount hook. With rd.live.overlay.overlayfs=1, livenet's generator writes a
# sysroot.mount whose overlay has upperdir=/run/overlayfs,workdir=/run/ovlwork, but
# under systemd nothing makes those before sysroot.mount runs (dracut's overlayfs
# module only does in its mount hook, which comes after): the mount fails with
# "overlayfs: failed to resolve '/run/overlayfs'". Make them here, on the tmpfs /run;
# a persistent overlay that dmsquash-live already linked there is left as it is.
type getargbool > /dev/null 2>&1 || . /lib/dracut-lib.sh
if getargbool 0 rd.live.overlay.overlayfs; then
    [ -e /run/overlayfs ] || mkdir -m 0755 -p /run/overlayfs
    [ -e /run/ovlwork ] || mkdir -m 0755 -p /run/ovlwork
fi
