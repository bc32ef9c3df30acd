// Package e2e is Runtime Manager's end-to-end suite. It drives the built rtmanager binary (and,
// in one test, RTM's own container image) only from outside, the way Lobby and an operator do:
// job entries on Redis streams, the internal REST API, psql and redis-cli as the runbook writes
// them, and the real Docker daemon. It imports no package of the product but config.
//
// The tests sit behind the integration build tag; run them with `make e2e` (see
// docs/integration-tests.md for what each test proves and how to run one alone).
package e2e
