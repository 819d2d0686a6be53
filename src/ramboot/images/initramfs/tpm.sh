#!/bin/sh
# A node's TPM, for ramboot's initramfs and its dracut module alike (sourced): this boot's
# key, which only this machine's TPM can recover, and the overlay sealed to it
# (docs/security.md#a-nodes-tpm; the server's side is tpm_gate.py).
#
# rb_tpm_key SERVER MAC TOKEN CA: the EK (and its certificate from NV) and a fresh AK go to
# the server with this boot's credential; for a TPM the server trusts, the answer is the
# boot key wrapped by MakeCredential to that EK and AK, which only TPM2_ActivateCredential
# in this TPM undoes. Sets RB_TPMKEY (hex), RB_TPM_SECS and RB_TPM_CERT (true|false); on
# failure says why on the console and returns 1.
# Measured boot: the same request carries a TPM2_Quote of PCRs 0-9, 11, 12 (sha256) by the AK over
# a nonce of this boot's credential, the PCRs' values and the firmware's event log; the
# server takes them or not.
# rb_tpm_sign KIND MAC BODY: once the boot key is here, a report's proof for the server
# ("SEQ:base64 signature", header X-Ramboot-Signature): the AK signs the report nonce (an
# HMAC of the boot key, so only this TPM knows it), a counter that grows, and the body's sha256.
# (RB_TPM_DIR and RB_TCTI: where its files are and which TPM; tests point them at a swtpm.)
# rb_tpm_waiting: true while a TPM's boot key is still to be asked for (reports wait for it).
# rb_unseal FILE: the overlay sealed to RB_TPMKEY (AES-256-CTR, then HMAC-SHA256 over all
# before it; tpm_gate.seal), its HMAC checked first, then opened in place.
RB_TPMKEY=
RB_TPM_DIR=${RB_TPM_DIR:-/run/ramboot/tpm}
RB_PCRS=0,1,2,3,4,5,6,7,8,9,11,12  # tpm_gate.PCRS

rb_tpm_say() { if type rb_console >/dev/null 2>&1; then rb_console "TPM: $*"; else echo "ramboot: TPM: $*"; fi; }

rb_tpm_uptime() { read -r up _ < /proc/uptime; echo "$up"; }

rb_tpm_waiting() { [ -c /dev/tpmrm0 ] && [ ! -e $RB_TPM_DIR/tried ]; }

rb_tpm_key() {
  server=$1 mac=$2 token=$3 ca=$4
  mkdir -p $RB_TPM_DIR && : > $RB_TPM_DIR/tried
  [ -c /dev/tpmrm0 ] && [ -n "$server" ] && [ -n "$token" ] && [ -n "$mac" ] || return 1
  t0=$(rb_tpm_uptime)
  cd $RB_TPM_DIR || return 1
  export TPM2TOOLS_TCTI=device:/dev/tpmrm0
  if ! tpm2 createek -c ek.ctx -G rsa -u ek.pub >/dev/null ||
     ! tpm2 createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name >/dev/null; then
    rb_tpm_say "cannot create its endorsement and attestation keys"; cd /; return 1
  fi
  cert=
  tpm2 nvread -o ekcert.der 0x1c00002 >/dev/null 2>&1 && cert=$(base64 -w 0 ekcert.der)
  quote=
  qn=$(printf 'ramboot-quote %s' "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" | sha256sum | cut -d' ' -f1)
  if tpm2 quote -c ak.ctx -l sha256:$RB_PCRS -q "$qn" -g sha256 -m quote.msg -s quote.sig >/dev/null &&
     tpm2 pcrread -o pcrs.bin sha256:$RB_PCRS >/dev/null; then
    quote=",\"quote\":\"$(base64 -w 0 quote.msg)\",\"quote_sig\":\"$(base64 -w 0 quote.sig)\",\"pcrs\":\"$(base64 -w 0 pcrs.bin)\""
    # The firmware's event log: the server replays PCRs 8 and 9 from it (GRUB's commands and files).
    log=/sys/kernel/security/tpm0/binary_bios_measurements
    [ -e $log ] || mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    cat $log > eventlog.bin 2>/dev/null && [ -s eventlog.bin ] && quote="$quote,\"eventlog\":\"$(base64 -w 0 eventlog.bin)\""
  fi
  body="{\"ek\":\"$(base64 -w 0 ek.pub)\",\"ak\":\"$(base64 -w 0 ak.pub)\"${cert:+,\"ek_cert\":\"$cert\"}$quote}"
  cacert=
  [ -s "$ca" ] && cacert="--cacert $ca"
  # shellcheck disable=SC2086  # $cacert is two words or none
  code=$(curl -s -m 30 $cacert -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data "$body" -o cred.blob -w '%{http_code}' "$server/api/v1/nodes/$mac/tpm" 2>/dev/null)
  if [ "$code" != 200 ]; then
    rb_tpm_say "the server releases no key to this TPM ($code): $(tr -d '{}"' < cred.blob 2>/dev/null)"
    cd /; return 1
  fi
  if tpm2 startauthsession --policy-session -S s.ctx >/dev/null && tpm2 policysecret -S s.ctx -c e >/dev/null &&
     tpm2 activatecredential -c ak.ctx -C ek.ctx -i cred.blob -o key.bin -P session:s.ctx >/dev/null; then
    RB_TPMKEY=$(od -An -tx1 key.bin | tr -d ' \n')
  fi
  tpm2 flushcontext s.ctx >/dev/null 2>&1
  rm -f key.bin cred.blob
  cd /
  [ -n "$RB_TPMKEY" ] || { rb_tpm_say "ActivateCredential refused the server's credential"; return 1; }
  printf ramboot-report-nonce | rb_hmac "$RB_TPMKEY" > $RB_TPM_DIR/nonce
  echo 0 > $RB_TPM_DIR/seq
  RB_TPM_SECS=$(awk -v a="$t0" -v b="$(rb_tpm_uptime)" 'BEGIN { printf "%.2f", b - a }')
  RB_TPM_CERT=false
  [ -n "$cert" ] && RB_TPM_CERT=true
  return 0
}

rb_tpm_sign() {
  [ -s $RB_TPM_DIR/nonce ] || return 1
  seq=$(($(cat $RB_TPM_DIR/seq) + 1))
  echo $seq > $RB_TPM_DIR/seq
  printf 'ramboot-report %s %s %s %s %s' "$1" "$2" "$(cat $RB_TPM_DIR/nonce)" $seq \
    "$(printf %s "$3" | sha256sum | cut -d' ' -f1)" > $RB_TPM_DIR/report.msg
  TPM2TOOLS_TCTI=${RB_TCTI:-device:/dev/tpmrm0} tpm2 sign -c $RB_TPM_DIR/ak.ctx -g sha256 -o $RB_TPM_DIR/report.sig \
    $RB_TPM_DIR/report.msg >/dev/null 2>&1 || return 1
  echo "$seq:$(base64 -w 0 $RB_TPM_DIR/report.sig)"
}

rb_hmac() { openssl dgst -sha256 -mac HMAC -macopt "hexkey:$1" -r | cut -d' ' -f1; }

rb_sealed() { [ "$(head -c 6 "$1")" = RBTPM1 ]; }

rb_unseal() {
  [ -n "$RB_TPMKEY" ] || return 1
  n=$(($(stat -c %s "$1") - 32))
  [ "$n" -ge 24 ] || return 1
  ek=$(printf ramboot-overlay-enc | rb_hmac "$RB_TPMKEY")
  mk=$(printf ramboot-overlay-mac | rb_hmac "$RB_TPMKEY")
  [ "$(tail -c 32 "$1" | od -An -tx1 | tr -d ' \n')" = "$(head -c "$n" "$1" | rb_hmac "$mk")" ] || return 1
  iv=$(head -c 24 "$1" | tail -c 16 | od -An -tx1 | tr -d ' \n')
  head -c "$n" "$1" | tail -c +25 | openssl enc -d -aes-256-ctr -K "$ek" -iv "$iv" > "$1.open" && mv "$1.open" "$1"
}
