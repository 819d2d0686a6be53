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
# rb_unseal FILE: the overlay sealed to RB_TPMKEY (AES-256-CTR, then HMAC-SHA256 over all
# before it; tpm_gate.seal), its HMAC checked first, then opened in place.
RB_TPMKEY=

rb_tpm_say() { if type rb_console >/dev/null 2>&1; then rb_console "TPM: $*"; else echo "ramboot: TPM: $*"; fi; }

rb_tpm_uptime() { read -r up _ < /proc/uptime; echo "$up"; }

rb_tpm_key() {
  server=$1 mac=$2 token=$3 ca=$4
  [ -c /dev/tpmrm0 ] && [ -n "$server" ] && [ -n "$token" ] && [ -n "$mac" ] || return 1
  t0=$(rb_tpm_uptime)
  mkdir -p /run/ramboot/tpm && cd /run/ramboot/tpm || return 1
  export TPM2TOOLS_TCTI=device:/dev/tpmrm0
  if ! tpm2 createek -c ek.ctx -G rsa -u ek.pub >/dev/null ||
     ! tpm2 createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name >/dev/null; then
    rb_tpm_say "cannot create its endorsement and attestation keys"; cd /; return 1
  fi
  cert=
  tpm2 nvread -o ekcert.der 0x1c00002 >/dev/null 2>&1 && cert=$(base64 -w 0 ekcert.der)
  body="{\"ek\":\"$(base64 -w 0 ek.pub)\",\"ak\":\"$(base64 -w 0 ak.pub)\"${cert:+,\"ek_cert\":\"$cert\"}}"
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
  RB_TPM_SECS=$(awk -v a="$t0" -v b="$(rb_tpm_uptime)" 'BEGIN { printf "%.2f", b - a }')
  RB_TPM_CERT=false
  [ -n "$cert" ] && RB_TPM_CERT=true
  return 0
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
