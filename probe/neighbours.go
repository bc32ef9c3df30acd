package probe

import (
	"os"
	"strconv"
	"strings"
)

// NeighbourThreshPath is where Linux exposes the soft limit of the host's IPv4 neighbour table.
const NeighbourThreshPath = "/proc/sys/net/ipv4/neigh/default/gc_thresh2"

// HostNeighbourLimit reads the neighbour table's soft limit from path (NeighbourThreshPath on a
// Linux host), for Prober.NeighbourLimit; it returns 0, which skips the check, when the file
// cannot be read or parsed (not Linux, or a sandbox without /proc/sys).
func HostNeighbourLimit(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 0
	}
	return n
}
