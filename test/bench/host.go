package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// neighbourTable is where Linux keeps the limits of its ARP table (IPv4 neighbours).
const neighbourTable = "/proc/sys/net/ipv4/neigh/default/"

// roomForEngines makes the host's neighbour table hold n engines on one bridge. RTM probes
// every engine by its address on the network, so the host keeps one neighbour entry per engine;
// with the kernel's defaults (gc_thresh2 512, gc_thresh3 1,024) a thousand engines overflow it,
// and connects to some engines fail or stall while the kernel drops entries: at 1,000 engines
// here about one engine in five was unreachable at any time (230 probe_failed while they came up)
// and each of those cost a new connect every round. It raises gc_thresh1/2/3 to 2n, 4n and 8n
// where they are lower (as an operator running that many engines on a host has to; see
// docs/workers.md §12), logs what it changed, and says so when it cannot.
func roomForEngines(n int) {
	want := map[string]int{"gc_thresh1": 2 * n, "gc_thresh2": 4 * n, "gc_thresh3": 8 * n}
	var changed []string
	for _, k := range []string{"gc_thresh3", "gc_thresh2", "gc_thresh1"} { // raise the ceiling first
		b, err := os.ReadFile(neighbourTable + k)
		if err != nil {
			harness.Logf("  host: reading %s: %v; probes of %d engines may fail", k, err, n)
			return
		}
		have, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || have >= want[k] {
			continue
		}
		if err := os.WriteFile(neighbourTable+k, []byte(strconv.Itoa(want[k])), 0o644); err != nil {
			harness.Logf("  host: net.ipv4.neigh.default.%s is %d, below %d for %d engines, and cannot be raised (%v): probes may fail", k, have, want[k], n, err)
			continue
		}
		changed = append(changed, fmt.Sprintf("%s %d→%d", k, have, want[k]))
	}
	if len(changed) > 0 {
		harness.Logf("  host: raised net.ipv4.neigh.default %s for %d engines", strings.Join(changed, ", "), n)
	}
}
