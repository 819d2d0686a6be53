#!/bin/sh
# pre-pivot hook: the node's overlay (its identity: hostname, machine-id, host keys,
# authorized_keys, /etc/hosts), the kernel's modules layer, and what the root needs
# to report "booted" (/run/ramboot/node.env and a static busybox), then switch-root.
type rb_stage > /dev/null 2>&1 || . /lib/ramboot-lib.sh
. /lib/ramboot-tpm.sh

# This boot's key from the node's TPM, when it has one (tpm.sh): the overlay of a node
# whose TPM the server trusts comes sealed to it.
# The reports queued meanwhile go now, signed with it when the server trusts this TPM.
rb_tpm() {
    [ -c /dev/tpmrm0 ] || return 0
    if rb_tpm_key "$(rb_server)" "$(rb_mac)" "$(getarg ramboot.token=)" "$RB_CA"; then
        rb_flush
        rb_stage tpm "{\"seconds\":$RB_TPM_SECS,\"ek_cert\":$RB_TPM_CERT}"
    else
        rb_flush
        rb_console "TPM: no boot key: an overlay sealed to this node's TPM will not open"
    fi
}

# The overlay as ramboot's own initramfs fetches it: once per boot, against this
# boot's credential (ramboot.token=), its sha256 first (that only checks), then the
# tar (which uses the credential up), laid on the root's writable layer (the overlayfs
# upper dir, through $NEWROOT). A refusal or a 404 passes the turn to the next server;
# a fetched archive is not fetched again. Without one the node boots, without its identity.
rb_overlay() {
    local urls url want sum file got sealed
    urls=$(getargs ramboot.overlay=)
    [ -n "$urls" ] || return 0
    [ -n "$(getarg ramboot.token=)" ] ||
        rb_console "no ramboot.token= (this boot's credential): the server hands out no overlay"
    file=$RB_DIR/overlay.tar
    for url in $urls; do
        rm -f "$file"
        want=$(rb_curl -sf -m 15 "$url.sha256") || continue
        rb_curl -sf -m 60 -o "$file" "$url" || continue
        want=$(echo "$want" | cut -d' ' -f1 | tr A-F a-f)
        sum=$(sha256sum "$file" | cut -d' ' -f1)
        if [ "$sum" = "$want" ]; then
            sealed=false
            if rb_sealed "$file"; then
                sealed=true
                rb_unseal "$file" || {
                    rm -f "$file"
                    rb_console "WARNING: the overlay is sealed to this node's TPM and did not open"
                    break
                }
            fi
            tar -xf "$file" -C "$NEWROOT" || rb_fail "cannot unpack the node's overlay"
            got=$(tar -tf "$file" | wc -l)
            rm -f "$file"
            rb_stage overlay "{\"sha256\":\"$sum\",\"files\":$got,\"tpm\":$sealed}"
            return 0
        fi
        rb_console "overlay from $url: sha256 mismatch (expected $want, got $sum)"
        break
    done
    rb_console "WARNING: no overlay from $urls: the node boots without its identity files"
}

rb_modules() {
    local urls sha file mnt kv target
    urls=$(getargs ramboot.modules=)
    [ -n "$urls" ] || return 0
    sha=$(getarg ramboot.modules.sha256= | tr A-F a-f)
    rb_image_tmpfs || rb_fail "cannot mount a tmpfs on $RB_IMG"
    file=$RB_IMG/modules.squashfs
    mnt=$RB_DIR/modules
    kv=$(uname -r)
    set -f
    # shellcheck disable=SC2086 # the URL list is split on spaces, on purpose
    rb_download "$file" "modules layer" "$sha" $urls || rb_fail "could not download the modules layer from any of: $urls"
    set +f
    if [ -n "$sha" ]; then
        rb_verify "$file" "modules layer" "$sha" "$RB_GOT" || return 1
    else
        RB_SUM=
        rb_console "WARNING: no ramboot.modules.sha256= given: the modules layer is NOT verified"
    fi
    mkdir -p "$mnt"
    mount -t squashfs -o ro,loop "$file" "$mnt" || rb_fail "cannot mount the modules layer (not a squashfs?)"
    [ -d "$mnt/lib/modules/$kv" ] || rb_fail "the modules layer has no lib/modules/$kv"
    # The root's own /lib (often a symlink to usr/lib) decides where the directory lands.
    target=$NEWROOT/lib/modules/$kv
    [ -L "$NEWROOT/lib" ] && target=$NEWROOT/$(readlink "$NEWROOT/lib" | sed 's|^/||')/modules/$kv
    mkdir -p "$target" && mount --bind "$mnt/lib/modules/$kv" "$target" ||
        rb_fail "cannot mount the modules layer on /lib/modules/$kv"
    rb_stage modules "{\"url\":\"$(rb_jstr "$RB_GOT")\",\"bytes\":$RB_BYTES,\"seconds\":$RB_SECS,\"sha256\":\"$RB_SUM\"}"
}

# Seeding (ramboot.seed=1, [scale] seed): the verified root (and modules layer) go on to
# peers from this RAM copy, over HTTP on RB_SEED_PORT, until the node shuts down, with
# nothing added to the operator's root. The static busybox's httpd serves hard links to the
# verified files, and is started here so that it outlives switch-root: its argv[0] begins
# with '@', which systemd's kill of the initramfs's processes at switch-root (and its
# shutdown's) spares (systemd.io/ROOT_STORAGE_DAEMONS); dracut's hook units stop only their
# main process (KillMode=process); and it is moved to the root cgroup, so no unit of the
# booted system owns it. /run, where the files are, moves into the booted root.
rb_seed() {
    local sha first name sd pid
    [ "$(getarg ramboot.seed=)" = 1 ] || return 0
    sha=$(getarg ramboot.sha256= | tr A-F a-f)
    [ -n "$sha" ] && [ -s "$RB_IMG/rootfs.squashfs" ] && [ -x /usr/lib/ramboot/busybox ] || return 0
    first=$(getarg root=)
    first=${first#live:}
    name=${first%/*}
    name=${name##*/}
    sd=$RB_IMG/seed/images/$name
    if mkdir -p "$sd" && ln -f "$RB_IMG/rootfs.squashfs" "$sd/rootfs.squashfs" &&
        { [ ! -s "$RB_IMG/modules.squashfs" ] || ln -f "$RB_IMG/modules.squashfs" "$sd/modules.squashfs"; }; then
        (exec -a "@$RB_DIR/httpd" /usr/lib/ramboot/busybox -f -p "$RB_SEED_PORT" -h "$RB_IMG/seed" \
            < /dev/null > /dev/null 2>&1) &
        pid=$!
        [ -w /sys/fs/cgroup/cgroup.procs ] && echo "$pid" > /sys/fs/cgroup/cgroup.procs 2> /dev/null
        sleep 0.2
        if kill -0 "$pid" 2> /dev/null; then
            rb_stage seeding "{\"sha256\":\"$sha\",\"port\":$RB_SEED_PORT}"
            return 0
        fi
    fi
    rb_console "could not start seeding (httpd on port $RB_SEED_PORT)"
}

rb_tpm
rb_overlay
rb_modules
rb_seed
rb_host=$(getarg ramboot.hostname=)
[ -n "$rb_host" ] && [ ! -s "$NEWROOT/etc/hostname" ] && echo "$rb_host" > "$NEWROOT/etc/hostname"
[ -x /usr/lib/ramboot/busybox ] && cp /usr/lib/ramboot/busybox "$RB_DIR/busybox"
[ -d /usr/lib/ramboot/curl ] && cp -r /usr/lib/ramboot/curl "$RB_DIR/curl"
[ -s "$RB_CA" ] && cp "$RB_CA" "$RB_DIR/ca.pem"
cp /lib/ramboot-tpm.sh "$RB_DIR/tpm.sh"
# node.env holds the credential (for the root's "booted" report): root's alone.
(umask 077; printf 'RAMBOOT_SERVER=%s\nRAMBOOT_MAC=%s\nRAMBOOT_IFACE=%s\nRAMBOOT_TOKEN=%s\n' "$(rb_server)" \
    "$(rb_mac)" "$(cat "$RB_DIR/iface" 2> /dev/null)" "$(getarg ramboot.token=)" > "$RB_DIR/node.env")
rb_stage switch-root '{"initramfs":"dracut"}'
