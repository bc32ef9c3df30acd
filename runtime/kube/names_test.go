package kube

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	rtm "github.com/galaxy-platform/rtmanager"
)

func TestName(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		id, want string
	}{
		{"alpha-1", "galaxy-game-alpha-1"},
		{"Alpha-1", "galaxy-game-alpha-1"}, // DNS is case-insensitive; ids differing in case are refused
		{strings.Repeat("a", 51), "galaxy-game-" + strings.Repeat("a", 51)},
	}
	for _, tt := range tests {
		if got := Name(tt.id); got != tt.want {
			t.Errorf("Name(%q) = %q, want %q", tt.id, got, tt.want)
		}
	}
	for _, id := range []string{"a_b", "game-", long, strings.Repeat("a", 52), "9_", "_"} {
		n := Name(id)
		if len(n) > 63 || !strings.HasPrefix(n, "galaxy-game-") || !dnsLabel(strings.TrimPrefix(n, "galaxy-game-")) {
			t.Errorf("Name(%q) = %q: not a DNS label of at most 63", id, n)
		}
		if EngineHost(id) != n {
			t.Errorf("EngineHost(%q) = %q, want the Service name %q", id, EngineHost(id), n)
		}
	}
	if Name("a_b") == Name("a-b") {
		t.Errorf("a_b and a-b share a name")
	}
	if EngineHost("Alpha-1") != "galaxy-game-Alpha-1" {
		t.Errorf("EngineHost of a DNS-fit id is not the contract's name: %q", EngineHost("Alpha-1"))
	}
	if labelValue(long) || !labelValue("alpha-1") || labelValue("game-") {
		t.Errorf("labelValue is wrong")
	}
}

func TestStartFailure(t *testing.T) {
	waiting := func(reason string) *corev1.Pod {
		return &corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
			Name: engineContainer, Image: "galaxy/game:9.9.9",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: "m"}}}}}}
	}
	for reason, want := range map[string]rtm.ErrorCode{
		"ErrImagePull":               rtm.CodeImagePullFailed,
		"ImagePullBackOff":           rtm.CodeImagePullFailed,
		"InvalidImageName":           rtm.CodeImagePullFailed,
		"CreateContainerConfigError": rtm.CodeContainerStartFailed,
		"ContainerCreating":          "",
	} {
		if got := rtm.CodeOf(startFailure(waiting(reason)), ""); got != want {
			t.Errorf("%s: code %q, want %q", reason, got, want)
		}
	}
}
