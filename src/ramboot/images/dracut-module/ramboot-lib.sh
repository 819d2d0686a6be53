#!/bin/sh
# ramboot's report API for dracut hooks (sourced): the stage markers on the console
# and POST {ramboot.server}/api/v1/nodes/<mac>/events, as ramboot's own initramfs does.
# Events are queued in /run/ramboot/pending until the boot NIC (and so the MAC) is known.

RB_DIR=/run/ramboot
mkdir -p "$RB_DIR"
# The root image and the modules layer, in a tmpfs of their own under /run/initramfs (which
# systemd leaves alone at shutdown), as on ramboot's own initramfs; seeded to peers from there.
RB_IMG=/run/initramfs/ramboot/image
RB_SEED_PORT=8790 # server/seeding.py SEED_PORT

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
        curl -g --cacert "$RB_CA" ${token:+-H "Authorization: Bearer $token"} "$@"
    else
        curl -g ${token:+-H "Authorization: Bearer $token"} "$@"
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

rb_peer_refused() { # rb_peer_refused URL WHY: the server skips that peer from now on; the caller falls back
    rb_console "the peer $1 was refused ($2): falling back to the server"
    rb_stage seed-refused "{\"url\":\"$(rb_jstr "$1")\",\"reason\":\"$(rb_jstr "$2")\"}"
}

# rb_get URL FILE: one GET; sets RB_GOT to where the bytes came from. The server may redirect
# it to a seeding peer (http://ADDRESS:RB_SEED_PORT/images/...), and does so for this module
# only because X-Ramboot-Fallback says the bytes are checked here and a bad peer costs one
# more download from the server (stock livenet would mount whatever a peer sent). A peer
# that does not answer in 5 s or stalls for 15 s (longer than the server may hold a
# request while it waits for a free seeder) fails the GET.
rb_get() {
    RB_GOT=$(curl -g -sS -f -L --max-redirs 1 -H 'X-Ramboot-Fallback: 1' --connect-timeout 5 \
        --speed-limit 1 --speed-time 15 -o "$2" -w '%{url_effective}' "$1")
}

rb_from_peer() {
    case "$RB_GOT" in "http://"*":$RB_SEED_PORT/images/"*) return 0 ;; esac
    return 1
}

# rb_download FILE WHAT SHA256 URL...: from the first server that has it, four rounds with a
# growing pause between them; sets RB_GOT, RB_BYTES, RB_SECS. Bytes from a peer are checked
# here and refused on a mismatch (then the same server's own copy, `?seed=0`, is fetched);
# the caller still verifies what it got (rb_verify), from a peer or not.
rb_download() {
    local file=$1 what=$2 sha=$3 url round t0 delay=1
    shift 3
    for round in 1 2 3 4; do
        for url in "$@"; do
            rm -f "$file"
            t0=$(rb_now)
            if rb_get "$url" "$file"; then
                if [ -n "$sha" ] && rb_from_peer && [ "$(sha256sum "$file" | cut -d' ' -f1)" != "$sha" ]; then
                    rb_peer_refused "$RB_GOT" "sha256 mismatch"
                    rm -f "$file"
                    t0=$(rb_now)
                    rb_get "$url?seed=0" "$file" || continue
                fi
            elif rb_from_peer; then
                rb_peer_refused "$RB_GOT" "download failed or stalled"
                rm -f "$file"
                t0=$(rb_now)
                rb_get "$url?seed=0" "$file" || { rm -f "$file"; continue; }
            else
                rm -f "$file"
                rb_console "download of the $what from $url failed"
                continue
            fi
            RB_BYTES=$(stat -c %s "$file")
            RB_SECS=$(awk -v a="$t0" -v b="$(rb_now)" 'BEGIN { printf "%.2f", b - a }')
            rb_console "fetched the $what: $RB_BYTES bytes in $RB_SECS s from $RB_GOT"
            return 0
        done
        [ "$round" -lt 4 ] || break
        rb_console "no server gave the $what; retrying in $delay s"
        sleep "$delay"
        delay=$((delay * 2))
    done
    return 1
}

rb_image_tmpfs() { # the tmpfs the root image and the modules layer go to (once)
    grep -q " $RB_IMG " /proc/mounts && return 0
    mkdir -p "$RB_IMG" && mount -t tmpfs -o size=95%,mode=0700 tmpfs "$RB_IMG"
}
