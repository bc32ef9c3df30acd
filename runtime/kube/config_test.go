package kube

import (
	"testing"

	"k8s.io/client-go/rest"
)

func TestClientConfig(t *testing.T) {
	in := &rest.Config{Host: "https://127.0.0.1:6443", QPS: 5, Burst: 10}
	got := ClientConfig(in)
	if got.Host != in.Host {
		t.Errorf("host %q, want %q", got.Host, in.Host)
	}
	if got.QPS != -1 || got.Burst != 0 {
		t.Errorf("QPS %v, burst %d: want no client-side rate limit (-1, 0)", got.QPS, got.Burst)
	}
	if want := "application/vnd.kubernetes.protobuf"; got.ContentType != want {
		t.Errorf("content type %q, want %q", got.ContentType, want)
	}
	if want := "application/vnd.kubernetes.protobuf,application/json"; got.AcceptContentTypes != want {
		t.Errorf("accept %q, want %q", got.AcceptContentTypes, want)
	}
	if in.QPS != 5 || in.ContentType != "" {
		t.Errorf("the caller's config was changed: %+v", in)
	}
}
