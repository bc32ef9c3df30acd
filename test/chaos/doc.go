// Package chaos is Runtime Manager's fault-injection suite. It runs the real rtmanager binary
// against its real dependencies (PostgreSQL from test/testenv, a redis-server per test, the
// Docker daemon) and breaks them while Lobby-style jobs and operators' REST calls arrive:
// SIGKILL of RTM mid-burst, PostgreSQL stopped and black-holed, Redis restarted empty, one RTM
// cut off from Redis while another works, the Docker daemon unreachable or refusing to stop a
// container, two RTM processes overlapping as in a rolling restart, and a per-game lease expiring
// in the middle of a slow patch.
//
// Every RTM process reaches Docker through its own test-owned proxy of the daemon's socket, which
// records each call, so every Docker call is attributed to the process that made it. After every
// fault the suite checks the same invariants: every job answered exactly once on
// runtime:job_results (and once in the outbox), at most one container per game, every runtime
// record equal to what Docker shows, nothing left unanswered or unpublished, and for every game
// no mutating Docker call of one process inside another process's burst of work on it. Each test
// prints
//
//	fault <name>: jobs sent N / answered N / duplicated 0 / lost 0; interleaved mutations 0
//
// The tests sit behind the chaos build tag and run one after another (they stop the shared
// PostgreSQL): `make chaos`, also run by `make test`.
package chaos
