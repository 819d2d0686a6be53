#!/bin/sh
# pre-pivot hook: the kernel's modules layer, the hostname, and what the root needs
# to report "booted" (/run/ramboot/node.env and a static busybox), then switch-root.
type rb_stage > /dev/null 2>&1 || . /lib/ramboot-lib.sh

rb_modules() {
    local urls sha url file mnt kv t0 bytes secs target
    urls=$(getargs ramboot.modules=)
    [ -n "$urls" ] || return 0
    sha=$(getarg ramboot.modules.sha256= | tr A-F a-f)
    file=$RB_DIR/modules.squashfs
    mnt=$RB_DIR/modules
    kv=$(uname -r)
    for url in $urls; do
        t0=$(rb_now)
        if curl -sf --connect-timeout 10 -o "$file" "$url"; then
            bytes=$(stat -c %s "$file")
            secs=$(awk -v a="$t0" -v b="$(rb_now)" 'BEGIN { printf "%.2f", b - a }')
            rb_console "fetched the modules layer: $bytes bytes in $secs s from $url"
            break
        fi
        rb_console "download of the modules layer from $url failed"
        rm -f "$file"
    done
    [ -s "$file" ] || rb_fail "could not download the modules layer from any of: $urls"
    if [ -n "$sha" ]; then
        rb_verify "$file" "modules layer" "$sha" "$url" || return 1
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
    rb_stage modules "{\"url\":\"$(rb_jstr "$url")\",\"bytes\":$bytes,\"seconds\":$secs,\"sha256\":\"$RB_SUM\"}"
}

rb_modules
rb_host=$(getarg ramboot.hostname=)
[ -n "$rb_host" ] && echo "$rb_host" > "$NEWROOT/etc/hostname"
[ -x /usr/lib/ramboot/busybox ] && cp /usr/lib/ramboot/busybox "$RB_DIR/busybox"
printf 'RAMBOOT_SERVER=%s\nRAMBOOT_MAC=%s\nRAMBOOT_IFACE=%s\n' "$(rb_server)" "$(rb_mac)" \
    "$(cat "$RB_DIR/iface" 2> /dev/null)" > "$RB_DIR/node.env"
rb_stage switch-root '{"initramfs":"dracut"}'
