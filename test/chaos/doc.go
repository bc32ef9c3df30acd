// Package chaos is Runtime Manager's fault-injection suite. It runs the real rtmanager binary
// against its real dependencies (PostgreSQL from test/testenv, a redis-server per test, the
// Docker daemon) and breaks them while Lobby-style jobs and operators' REST calls arrive:
// SIGKILL of RTM mid-burst, PostgreSQL stopped, Redis restarted empty, the Docker daemon
// unreachable (through a test-owned socket proxy), two RTM processes overlapping as in a rolling
// restart, and a per-game lease expiring in the middle of a slow patch.
//
// After every fault it checks the same invariants: every job answered exactly once on
// runtime:job_results (and once in the outbox), at most one container per game, every runtime
// record equal to what Docker shows, nothing left unanswered or unpublished. Each test prints
//
//	fault <name>: jobs sent N / answered N / duplicated 0 / lost 0
//
// The tests sit behind the chaos build tag and run one after another (they stop the shared
// PostgreSQL): `make chaos`.
package chaos
