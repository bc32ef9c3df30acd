package config_test

import (
	"errors"
	"maps"
	"testing"

	"github.com/galaxy-platform/rtmanager/config"
)

// loadKube runs Load for the Kubernetes runtime: requiredEnv without the Docker-only state root,
// with RTMANAGER_RUNTIME=kubernetes and a namespace, overlaid with given.
func loadKube(t testing.TB, given map[string]string) (config.Config, error) {
	t.Helper()
	env := requiredEnv()
	delete(env, "RTMANAGER_GAME_STATE_ROOT")
	env["RTMANAGER_RUNTIME"] = config.RuntimeKubernetes
	env["RTMANAGER_KUBE_NAMESPACE"] = "games"
	maps.Copy(env, given)
	return config.Load(func(k string) string { return env[k] })
}

func TestLoad_kubernetes(t *testing.T) {
	cfg, err := loadKube(t, nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Runtime != config.RuntimeKubernetes || cfg.KubeNamespace != "games" || cfg.KubeStateSize != "1Gi" {
		t.Errorf("Load = runtime %q namespace %q size %q", cfg.Runtime, cfg.KubeNamespace, cfg.KubeStateSize)
	}
	if cfg.ReconcileWorkers != config.KubeReconcileWorkers || cfg.ReconcileRate != config.KubeReconcileRate ||
		cfg.ReconcileBurst != config.KubeReconcileBurst {
		t.Errorf("queue = %d workers, %d/s, burst %d; want the Kubernetes defaults", cfg.ReconcileWorkers, cfg.ReconcileRate, cfg.ReconcileBurst)
	}
	if cfg.ProbeTarget != config.ProbeTargetReadiness {
		t.Errorf("outside the cluster ProbeTarget = %q, want %q", cfg.ProbeTarget, config.ProbeTargetReadiness)
	}
	inCluster, err := loadKube(t, map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
	if err != nil || inCluster.ProbeTarget != config.ProbeTargetContainerIP {
		t.Errorf("inside the cluster ProbeTarget = %q (%v), want %q", inCluster.ProbeTarget, err, config.ProbeTargetContainerIP)
	}
	set, err := loadKube(t, map[string]string{"RTMANAGER_RECONCILE_WORKERS": "8", "RTMANAGER_PROBE_TARGET": "endpoint"})
	if err != nil || set.ReconcileWorkers != 8 || set.ProbeTarget != config.ProbeTargetEndpoint {
		t.Errorf("set values = %d workers, probe %q (%v); want what the environment says", set.ReconcileWorkers, set.ProbeTarget, err)
	}
}

// TestLoad_otherRuntimesSettings checks that a setting of the other runtime stops the start-up
// (exit 2 in main) naming it, and that each runtime's required settings are its own.
func TestLoad_otherRuntimesSettings(t *testing.T) {
	tests := []struct {
		name    string
		load    func(testing.TB, map[string]string) (config.Config, error)
		given   map[string]string
		wantVar string
	}{
		{"docker host under kubernetes", loadKube, map[string]string{"RTMANAGER_DOCKER_HOST": "unix:///run/docker.sock"}, "RTMANAGER_DOCKER_HOST"},
		{"docker network under kubernetes", loadKube, map[string]string{"RTMANAGER_DOCKER_NETWORK": "galaxy-net"}, "RTMANAGER_DOCKER_NETWORK"},
		{"state root under kubernetes", loadKube, map[string]string{"RTMANAGER_GAME_STATE_ROOT": "/var/lib/galaxy"}, "RTMANAGER_GAME_STATE_ROOT"},
		{"pids limit under kubernetes", loadKube, map[string]string{"RTMANAGER_ENGINE_PIDS_LIMIT": "100"}, "RTMANAGER_ENGINE_PIDS_LIMIT"},
		{"namespace under docker", load, map[string]string{"RTMANAGER_KUBE_NAMESPACE": "games"}, "RTMANAGER_KUBE_NAMESPACE"},
		{"storage class under docker", load, map[string]string{"RTMANAGER_KUBE_STORAGE_CLASS": "fast"}, "RTMANAGER_KUBE_STORAGE_CLASS"},
		{"readiness probe under docker", load, map[string]string{"RTMANAGER_PROBE_TARGET": "readiness"}, "RTMANAGER_PROBE_TARGET"},
		{"kubernetes without a namespace", loadKube, map[string]string{"RTMANAGER_KUBE_NAMESPACE": ""}, "RTMANAGER_KUBE_NAMESPACE"},
		{"a namespace that is no name", loadKube, map[string]string{"RTMANAGER_KUBE_NAMESPACE": "Games_1"}, "RTMANAGER_KUBE_NAMESPACE"},
		{"a state size that is no size", loadKube, map[string]string{"RTMANAGER_KUBE_STATE_SIZE": "lots"}, "RTMANAGER_KUBE_STATE_SIZE"},
		{"an unknown runtime", load, map[string]string{"RTMANAGER_RUNTIME": "nomad"}, "RTMANAGER_RUNTIME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.load(t, tt.given)
			var cerr *config.Error
			if !errors.As(err, &cerr) || cerr.Var != tt.wantVar {
				t.Fatalf("Load = %v, want an error naming %s", err, tt.wantVar)
			}
		})
	}
}
