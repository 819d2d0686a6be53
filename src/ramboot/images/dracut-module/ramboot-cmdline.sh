#!/bin/sh
# cmdline hook: the boot is in the initramfs; say so (queued until the network is up).
type rb_stage > /dev/null 2>&1 || . /lib/ramboot-lib.sh
rb_console "initramfs (dracut) on $(uname -r)"
rb_stage initramfs '{"initramfs":"dracut"}'
[ -n "$(getarg ramboot.sha256=)" ] || rb_console "WARNING: no ramboot.sha256= given: the root image will NOT be verified"
