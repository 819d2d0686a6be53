"""The boot storm: N PXE clients booting at once against a real `ramboot serve`.

The orchestrator (run as root) makes two namespaces joined by a veth pair
(`rbb<random>-s` with the server on 10.77.0.1/16, `rbb<random>-c` for the
clients), writes a data directory with a synthetic image of the given size and
a config in full DHCP mode, starts `ramboot serve` in the server namespace and
then this same package in the client namespace as the load generator.

Each simulated client does the network side of a whole BIOS PXE -> iPXE boot:

1. DHCP DISCOVER/REQUEST with the PXE vendor class, arch 0 and its own MAC;
2. the TFTP fetch of the boot program it was given (lock-step, blksize 1456,
   like a PXE ROM), compared with the file;
3. a second DHCP exchange as iPXE (user class `iPXE`), which must hand it the
   http URL of its script (no chainload loop);
4. the iPXE script over HTTP, then the kernel, initrd and root image it names,
   each compared byte for byte with the image's file, which every generator
   process checks against the manifest's sha256 once at start (a memcmp per
   chunk instead of a sha256: as strong, 5-20x cheaper here); `ramboot.sha256=` on
   the kernel command line must match the manifest;
5. the `booted` report: `POST /api/v1/nodes/{mac}/events`, from its leased address.

All clients share one interface: DHCP goes out of one socket bound to port 68
(distinct chaddr, broadcast flag set), and the replies are demultiplexed by
xid. The leased addresses are made local in the client namespace with one
"AnyIP" route (`ip route add local POOL dev lo`), so each client's TFTP and
HTTP traffic really comes from its own leased address; the server's namespace
routes the pool via the client namespace's address (one ARP entry, not N).

The report: completion time p50/p99/max and per phase, failures with reasons,
server CPU seconds and peak RSS (from /proc), the generator's CPU, the
machine's busy share, the aggregate transfer rate against the link bound (raw
TCP over the same veth into the generator processes, nothing checked),
measured in the same run, and which side bound the storm.

The modules, one job each: `orchestrator` (namespaces, servers, generator processes,
measurements), `generator` (one generator process: its clients' boots), the load
clients `dhcp_client`, `tftp_client` and `http_client`, `seeding` (a booted client
serving its peers), `linkbound` (the raw-TCP probe), `report` (summary and text),
`cli` (`python -m bench.storm`), and `common` (what they share). Import them by name
(`from bench.storm.orchestrator import run_storm`): a generator process loads only its own
modules, not the orchestrator's (the server's code, PostgreSQL's helpers).
"""
