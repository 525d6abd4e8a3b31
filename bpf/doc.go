// Package bpf is Ambit's eBPF traffic redirection: it captures an enrolled pod's traffic to
// ztunnel's listeners inside the pod's own network namespace, meeting the data-plane contract
// of DESIGN.md section 3 without netfilter.
//
// Two tcx programs and a few policy routes are installed in the pod netns, and nothing on the
// host:
//
//   - ambit_inbound (inbound.c, tcx ingress on every interface but lo) hands new TCP
//     connections to any port but 15008 to ztunnel's listener on 15006 with bpf_sk_assign.
//   - Policy routes send the app's TCP and UDP port 53 traffic to non-local addresses through lo,
//     where ambit_outbound (outbound.c, tcx ingress on lo) hands new connections to 15001 (TCP
//     port 53 to 15053) and DNS queries to ztunnel's UDP socket on 15053.
//
// Packets keep their addresses, so the socket ztunnel accepts has the original destination as
// its local address. The programs are attached with the kernel's plain attach call, not a
// bpf_link: they stay attached when the loading process exits and are found again by name on
// the next Attach, which makes Attach a reconcile. See README.md for the design.
package bpf
