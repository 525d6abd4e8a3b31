// Package bpf is Ambit's eBPF traffic redirection: it captures an enrolled pod's traffic to
// ztunnel's listeners inside the pod's own network namespace, meeting the data-plane contract
// of DESIGN.md section 3 without netfilter.
//
// In the pod netns, and nowhere on the host, it installs:
//
//   - ambit_inbound (inbound.c), a tc ingress filter on every interface but lo: new TCP connections
//     to any port but 15008 go to ztunnel's listener on 15006 (bpf_sk_assign).
//   - policy routes that send the app's TCP and UDP port 53 traffic for non-local addresses
//     through lo, where ambit_outbound (outbound.c, a tc ingress filter on lo) hands new connections
//     to 15001 (TCP port 53 to 15053) and DNS queries to ztunnel's UDP socket on 15053.
//   - ambit_sk_lookup (sk_lookup.c), which catches the SYNs the kernel would otherwise recycle
//     from a time-wait socket to the app's listener.
//
// Packets keep their addresses, so the socket ztunnel accepts has the original destination as
// its local address. The tc filters hold their programs and the sk_lookup link is pinned under
// Options.PinDir, so everything outlives the loading process; Attach finds it
// again and reconciles. README.md has the design and the reasons for it.
package bpf
