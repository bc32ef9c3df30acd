//go:build tools

// Package tools pins the Kubernetes commands build.sh builds, so that go mod tidy keeps
// k8s.io/kubernetes in go.mod (main packages are never compiled from here: the tag excludes them).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
