#!/bin/sh
# ramboot's report API for dracut hooks (sourced): the stage markers on the console
# and POST {ramboot.server}/api/v1/nodes/<mac>/events, as ramboot's own initramfs does.
# Events are queued in /run/ramboot/pending until the boot NIC (and so the MAC) is known.

RB_DIR=/run/ramboot
mkdir -p "$RB_DIR"

rb_server() {
    local s
    s=$(getarg ramboot.server=)
    echo "${s%/}"
}

rb_mac() {
    [ -r "$RB_DIR/mac" ] && cat "$RB_DIR/mac"
}

rb_now() {
    local up _
    read -r up _ < /proc/uptime
    echo "$up"
}

# A JSON string body: drop quotes, backslashes and control characters.
rb_jstr() {
    printf '%s' "$1" | tr -d '"\\\000-\037'
}

rb_console() {
    echo "ramboot: $*" > /dev/console 2> /dev/null || echo "ramboot: $*"
}

# What carries this boot's credential (ramboot.token=: the overlay, reports) goes over
# HTTPS to a server whose certificate chains to the CA the server put beside this initrd
# (ca.cpio: /etc/ramboot/ca.pem), as ramboot's own initramfs does (docs/security.md).
RB_CA=/etc/ramboot/ca.pem

rb_curl() { # rb_curl ARGS...: curl with this boot's credential, pinned to the server's CA when it has one
    local token
    token=$(getarg ramboot.token=)
    if [ -s "$RB_CA" ]; then
        curl --cacert "$RB_CA" ${token:+-H "Authorization: Bearer $token"} "$@"
    else
        curl ${token:+-H "Authorization: Bearer $token"} "$@"
    fi
}

rb_post() { # rb_post PATH JSON: one short attempt, never blocks the boot for long; signed by
    # this boot's TPM key when it has one (ramboot-tpm.sh)
    local server mac sig
    server=$(rb_server)
    mac=$(rb_mac)
    [ -n "$server" ] && [ -n "$mac" ] || return 1
    type rb_tpm_sign > /dev/null 2>&1 || . /lib/ramboot-tpm.sh
    sig=$(rb_tpm_sign "$1" "$mac" "$2")
    rb_curl -sf -m 5 -o /dev/null -H 'Content-Type: application/json' ${sig:+-H "X-Ramboot-Signature: $sig"} \
        --data "$2" "$server/api/v1/nodes/$mac/$1"
}

rb_stage() { # rb_stage NAME [DETAIL-JSON]
    local ev d
    rb_console "stage $1"
    d=${2:-}
    [ -n "$d" ] || d='{}'
    ev="{\"stage\":\"$1\",\"detail\":$d}"
    [ -n "$(rb_server)" ] || return 0
    type rb_tpm_waiting > /dev/null 2>&1 || . /lib/ramboot-tpm.sh
    # With a TPM, reports wait for its boot key (pre-pivot): a trusted TPM's must be signed.
    if [ -n "$(rb_mac)" ] && ! rb_tpm_waiting; then
        rb_post events "$ev" || rb_console "could not report stage $1 to $(rb_server)"
    else
        echo "$ev" >> "$RB_DIR/pending"
    fi
}

rb_flush() { # the events queued before the network was up
    local ev
    [ -s "$RB_DIR/pending" ] || return 0
    type rb_tpm_waiting > /dev/null 2>&1 || . /lib/ramboot-tpm.sh
    ! rb_tpm_waiting || return 0
    while read -r ev; do
        rb_post events "$ev" || rb_console "could not report to $(rb_server)"
    done < "$RB_DIR/pending"
    : > "$RB_DIR/pending"
}

rb_fail() { # rb_fail REASON: the console marker, the failed event, then dracut's die (halts)
    rb_console "FAILED $*"
    rb_stage failed "{\"reason\":\"$(rb_jstr "$*")\"}"
    die "ramboot: $*"
}

rb_verify() { # rb_verify FILE WHAT EXPECTED URL: refuse loudly on a mismatch; sets RB_SUM
    RB_SUM=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$RB_SUM" = "$3" ] && return 0
    rb_console "************************************************************"
    rb_console "*** $(echo "$2" | tr a-z A-Z) REJECTED: its sha256 does not match"
    rb_console "***   expected $3"
    rb_console "***   received $RB_SUM"
    rb_console "************************************************************"
    rm -f "$1"
    rb_fail "sha256 mismatch for $4: expected $3, got $RB_SUM"
    return 1
}
