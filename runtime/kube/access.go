package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Permission is one verb on one resource of the namespace.
type Permission struct {
	Verb, Resource, Subresource string
}

func (p Permission) String() string {
	if p.Subresource != "" {
		return p.Verb + " " + p.Resource + "/" + p.Subresource
	}
	return p.Verb + " " + p.Resource
}

// Permissions are exactly the verbs RTM uses in its namespace, which docs/kubernetes/rbac.yaml
// grants and nothing more.
var Permissions = []Permission{
	{Verb: "list", Resource: "pods"},
	{Verb: "watch", Resource: "pods"},
	{Verb: "get", Resource: "pods"},
	{Verb: "create", Resource: "pods"},
	{Verb: "patch", Resource: "pods"},
	{Verb: "delete", Resource: "pods"},
	{Verb: "get", Resource: "pods", Subresource: "log"},
	{Verb: "create", Resource: "services"},
	{Verb: "create", Resource: "persistentvolumeclaims"},
}

// accessTTL is how long a verdict of CheckAccess is reused: /readyz is asked every few seconds.
const accessTTL = 30 * time.Second

// accessCache keeps CheckAccess's last verdict.
type accessCache struct {
	mu  sync.Mutex
	at  time.Time
	err error
}

// CheckAccess asks the API server, with one SelfSubjectAccessReview per permission, whether RTM
// may still do everything it does in its namespace; an error names what it may not. A verdict is
// reused for 30 s.
func (k *Kube) CheckAccess(ctx context.Context) error {
	k.access.mu.Lock()
	defer k.access.mu.Unlock()
	if !k.access.at.IsZero() && time.Since(k.access.at) < accessTTL {
		return k.access.err
	}
	ctx, cancel := context.WithTimeout(ctx, k.opts.CallTimeout)
	defer cancel()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		denied []string
		failed error
	)
	for _, p := range Permissions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := k.cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: k.opts.Namespace, Verb: p.Verb, Resource: p.Resource, Subresource: p.Subresource}},
			}, metav1.CreateOptions{})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failed = errors.Join(failed, classify(err))
			case !r.Status.Allowed:
				denied = append(denied, p.String())
			}
		}()
	}
	wg.Wait()
	var err error
	switch {
	case failed != nil:
		err = fmt.Errorf("kubernetes access review: %w", failed)
	case len(denied) > 0:
		err = fmt.Errorf("kubernetes: RTM may not %s in namespace %s", strings.Join(denied, ", "), k.opts.Namespace)
	}
	if failed == nil {
		k.access.at, k.access.err = time.Now(), err
	}
	return err
}
