#!/bin/bash
# ramboot's own dracut module (installed as 99ramboot by images/dracut.py).
# It makes dracut's livenet path as trustworthy as ramboot's initramfs: the root image
# is downloaded by ramboot's own livenetroot (every server in turn, seeding peers with a
# fall-back to the server) and its sha256 checked before dmsquash-live mounts it, the
# boot stages are reported to ramboot.server, the kernel's modules layer is fetched, the
# verified files are seeded to peers, and the root is left what it needs to report
# "booted" itself.

check() {
    return 255 # only when asked for: --add ramboot
}

depends() {
    echo livenet dmsquash-live url-lib bash
}

installkernel() {
    instmods squashfs loop overlay
}

install() {
    inst_multiple sha256sum curl cut tr stat awk mkdir cp tar wc ln grep sleep
    inst_simple "$moddir/ramboot-lib.sh" /lib/ramboot-lib.sh
    # The node's TPM (tpm.sh, shared with ramboot's own initramfs): tpm2-tools, the device
    # TCTI it loads with dlopen, and openssl to open the overlay sealed to the boot key.
    inst_multiple tpm2 openssl base64 od head tail
    inst_libdir_file "libtss2-tcti-device.so*"
    inst_simple "$moddir/tpm.sh" /lib/ramboot-tpm.sh
    inst_hook cmdline 20 "$moddir/ramboot-cmdline.sh"
    inst_hook netroot 50 "$moddir/ramboot-netroot.sh"
    inst_hook pre-mount 10 "$moddir/ramboot-overlay-dirs.sh"
    inst_hook pre-pivot 90 "$moddir/ramboot-pre-pivot.sh"
    # netroot hands `livenet:URL` to /sbin/livenetroot: ramboot's takes its place (livenet's
    # downloads one URL with no check and no fall-back), and hands dmsquash-live's own
    # /sbin/dmsquash-live-root only verified bytes.
    [ -e "$initdir/sbin/livenetroot" ] && [ -e "$initdir/sbin/dmsquash-live-root" ] || {
        derror "ramboot: livenetroot or dmsquash-live-root is not in the image"
        return 1
    }
    rm -f "$initdir/sbin/livenetroot" # dracut-install leaves a file that exists as it is
    inst_script "$moddir/ramboot-livenetroot.sh" /sbin/livenetroot
    # The root reports "booted" with curl, its libraries and the loader, left in /run (over
    # HTTPS, pinned to the server's CA); this static busybox stands in where they are not,
    # and its httpd seeds the verified root to peers (ramboot-pre-pivot.sh).
    [ -x /bin/busybox ] && inst_simple /bin/busybox /usr/lib/ramboot/busybox
    # With a TPM, that report is signed by its attestation key: tpm2 and its device TCTI too.
    local bin lib tcti
    tcti=$(find /lib /usr/lib -name 'libtss2-tcti-device.so.0' 2> /dev/null | head -n 1)
    for bin in $(command -v curl) $(command -v tpm2) $tcti; do
        inst_simple "$(readlink -f "$bin")" "/usr/lib/ramboot/curl/${bin##*/}"
        for lib in $(ldd "$bin" | awk '$2 == "=>" { print $3 } $1 ~ /^\// { print $1 }'); do
            inst_simple "$(readlink -f "$lib")" "/usr/lib/ramboot/curl/${lib##*/}"
        done
    done
    return 0
}
