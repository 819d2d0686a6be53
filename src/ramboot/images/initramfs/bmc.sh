#!/bin/sh
# The machine's own BMC, read in band (IPMI over its system interface, KCS or BT), for ramboot's
# initramfs (sourced; docs/power.md#the-bmcs-address-from-the-node-itself).
#
# rb_bmc_start: when the firmware's tables name a BMC (SMBIOS type 38, which the kernel turns
#   into dmi-ipmi-si platform devices, or ACPI's IPI0001), load ipmi_si and ipmi_devintf and run
#   `ipmitool lan print` in the background; a machine whose tables name none costs nothing.
# rb_bmc_json SECONDS: waits for that read at most until SECONDS after it started (a BMC that
#   hangs is killed and left behind, never waited on), then prints its LAN settings as one JSON
#   object (`{"ip":…,"mac":…}`; empty when none) and says on the console what it found.
# rb_bmc_parse: `ipmitool lan print` on stdin, that JSON object on stdout: the fields found and
#   well formed only (an unset 0.0.0.0 or 00:00:00:00:00:00 is no address).
RB_BMC_PID= RB_BMC_T0=
RB_BMC_DIR=/run/ramboot/bmc

rb_bmc_uptime() { read -r up _ < /proc/uptime; echo "$up"; }

rb_bmc_named() {
  for d in /sys/bus/platform/devices/dmi-ipmi-si.* /sys/bus/acpi/devices/IPI0001:*; do
    [ -e "$d" ] && return 0
  done
  return 1
}

rb_bmc_start() {
  rb_bmc_named && command -v ipmitool >/dev/null 2>&1 || return 1
  RB_BMC_T0=$(rb_bmc_uptime)
  mkdir -p $RB_BMC_DIR
  (
    modprobe -q ipmi_si 2>/dev/null
    modprobe -q ipmi_devintf 2>/dev/null
    n=0
    while [ ! -c /dev/ipmi0 ]; do
      n=$((n + 1))
      [ $n -le 20 ] || exit 1
      sleep 0.1
    done
    ipmitool -I open lan print > $RB_BMC_DIR/lan.txt 2> $RB_BMC_DIR/lan.err &
    echo $! > $RB_BMC_DIR/ipmitool.pid
    wait $!
  ) &
  RB_BMC_PID=$!
  return 0
}

rb_bmc_parse() {
  awk '
    function ip4(v, p, n, i) {
      if (v !~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/) return ""
      n = split(v, p, ".")
      for (i = 1; i <= n; i++) if (p[i] + 0 > 255) return ""
      return v == "0.0.0.0" || v == "255.255.255.255" ? "" : v
    }
    function mac(v) {
      v = tolower(v)
      if (length(v) != 17 || v !~ /^[0-9a-f][0-9a-f](:[0-9a-f][0-9a-f])+$/) return ""
      return v == "00:00:00:00:00:00" || v == "ff:ff:ff:ff:ff:ff" ? "" : v
    }
    function put(k, v) { if (v != "" && !(k in got)) { got[k] = 1; out = out (out == "" ? "" : ",") "\"" k "\":\"" v "\"" } }
    {
      sub(/\r$/, "")
      i = index($0, ":")
      if (i == 0) next
      k = substr($0, 1, i - 1); v = substr($0, i + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)
      if (k == "IP Address") put("ip", ip4(v))
      else if (k == "MAC Address") put("mac", mac(v))
      else if (k == "Subnet Mask") put("netmask", ip4(v))
      else if (k == "Default Gateway IP") put("gateway", ip4(v))
      else if (k == "IP Address Source") {
        s = tolower(v)
        put("ip_source", s ~ /^dhcp/ ? "dhcp" : s ~ /^static/ ? "static" : s ~ /^bios/ ? "bios" : s ~ /^other/ ? "other" : "")
      }
    }
    END { if ("ip" in got || "mac" in got) print "{" out "}" }'
}

rb_bmc_json() {
  [ -n "$RB_BMC_PID" ] || return 0
  limit=$1 t1=$(rb_bmc_uptime)
  while kill -0 "$RB_BMC_PID" 2>/dev/null; do
    if awk -v a="$RB_BMC_T0" -v b="$(rb_bmc_uptime)" -v l="$limit" 'BEGIN { exit !(b - a >= l) }'; then
      kill -9 "$(cat $RB_BMC_DIR/ipmitool.pid 2>/dev/null)" "$RB_BMC_PID" 2>/dev/null
      echo "ramboot: BMC: no answer in band within $limit s: the inventory goes without it" >&2
      RB_BMC_PID=
      return 0
    fi
    sleep 0.1
  done
  RB_BMC_PID=
  # How long the read took, and how much of it the boot waited for (the rest ran beside DHCP).
  secs=$(awk -v a="$RB_BMC_T0" -v w="$t1" -v b="$(rb_bmc_uptime)" 'BEGIN { printf "%.2f s, waited %.2f s", b - a, b - w }')
  json=$(rb_bmc_parse < $RB_BMC_DIR/lan.txt 2>/dev/null)
  if [ -n "$json" ]; then
    echo "ramboot: BMC read in band in $secs: $(echo "$json" | tr -d '{}"')" >&2
    echo "$json"
  elif [ -c /dev/ipmi0 ]; then
    echo "ramboot: BMC: it answered in band but named no LAN address ($(head -c 120 $RB_BMC_DIR/lan.err 2>/dev/null | tr '\n' ' '))" >&2
  else
    echo "ramboot: BMC: the firmware names one, but no IPMI device came up (ipmi_si)" >&2
  fi
}
