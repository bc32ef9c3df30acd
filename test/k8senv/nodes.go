package k8senv

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
)

// Node describes a fake node for AddNode.
type Node struct {
	// Name must be unique; the Launch nodes are kwok-node-<i>.
	Name string
	// Capacity is what the node offers (see Capacity for the defaults); Pods "0" makes a node the
	// scheduler never picks.
	Capacity Capacity
	// Labels are added to the node's (kubernetes.io/hostname, type=kwok, …).
	Labels map[string]string
}

// AddNode creates a fake node and waits until kwok has made it Ready.
func (e *Env) AddNode(ctx context.Context, n Node) error {
	if err := e.createNode(ctx, n); err != nil {
		return err
	}
	return e.waitNodeReady(ctx, n.Name, corev1.ConditionTrue)
}

func (e *Env) createNode(ctx context.Context, n Node) error {
	capacity, err := n.Capacity.list()
	if err != nil {
		return err
	}
	labels := map[string]string{
		"kubernetes.io/hostname": n.Name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"type":                   "kwok",
	}
	for k, v := range n.Labels {
		labels[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        n.Name,
			Labels:      labels,
			Annotations: map[string]string{AnnotationKwokNode: "fake"},
		},
		Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
	if _, err := e.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("k8senv: creating node %s: %w", n.Name, err)
	}
	e.mu.Lock()
	e.nodes = append(e.nodes, n.Name)
	e.mu.Unlock()
	return nil
}

// nodeReady returns the status of the node's Ready condition ("" when it has none).
func nodeReady(n *corev1.Node) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return ""
}

// waitNodeReady watches the node until its Ready condition has status want; for True, also until
// the controller-manager has lifted its not-ready taints (until then the scheduler skips it).
func (e *Env) waitNodeReady(ctx context.Context, name string, want corev1.ConditionStatus) error {
	_, err := e.WaitNode(ctx, name, func(n *corev1.Node) bool {
		if nodeReady(n) != want {
			return false
		}
		if want != corev1.ConditionTrue {
			return true
		}
		for _, t := range n.Spec.Taints {
			if t.Key == corev1.TaintNodeNotReady || t.Key == corev1.TaintNodeUnreachable {
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("k8senv: node %s Ready=%s: %w", name, want, err)
	}
	return nil
}

// WaitNode watches the node until cond holds and returns it, or ctx's error.
func (e *Env) WaitNode(ctx context.Context, name string, cond func(*corev1.Node) bool) (*corev1.Node, error) {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	for {
		list, err := e.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return nil, err
		}
		if len(list.Items) == 1 && cond(&list.Items[0]) {
			return &list.Items[0], nil
		}
		w, err := e.cs.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: list.ResourceVersion})
		if err != nil {
			return nil, err
		}
		n, err := waitEvent(ctx, w, func(ev watch.Event) bool {
			node, ok := ev.Object.(*corev1.Node)
			return ok && ev.Type != watch.Deleted && cond(node)
		})
		if err != nil {
			return nil, err
		}
		if n != nil {
			return n.(*corev1.Node), nil
		}
		// The watch ended (a timeout, a compaction): list again.
	}
}

// waitEvent reads w until match holds (the event's object), the watch ends (nil, nil) or ctx
// ends. It stops w.
func waitEvent(ctx context.Context, w watch.Interface, match func(watch.Event) bool) (any, error) {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok || ev.Type == watch.Error {
				return nil, nil
			}
			if match(ev) {
				return ev.Object, nil
			}
		}
	}
}

// LoseNode makes the node report NotReady, as kwok's node-not-ready chaos stage does (its kubelet
// is alive but the node is not fit), and waits until it does. The controller-manager then taints
// it node.kubernetes.io/not-ready:NoExecute and evicts its Pods once their toleration runs out
// (300 s by default; set tolerationSeconds on the Pod for a quick test). kwok still plays the
// evicted Pods' deletion: one holding FinalizerKeepExited is terminated and kept, others are
// deleted. A cluster whose every node is lost evicts nothing (the controller-manager's full
// disruption mode): lose one node of two or more.
func (e *Env) LoseNode(ctx context.Context, name string) error {
	if err := e.annotateNode(ctx, name, AnnotationNodeNotReady, "true"); err != nil {
		return err
	}
	return e.waitNodeReady(ctx, name, corev1.ConditionFalse)
}

// RestoreNode undoes LoseNode: kwok reports the node Ready again (the controller-manager then
// removes its taints) and waits until it does.
func (e *Env) RestoreNode(ctx context.Context, name string) error {
	if err := e.annotateNode(ctx, name, AnnotationNodeNotReady, ""); err != nil {
		return err
	}
	return e.waitNodeReady(ctx, name, corev1.ConditionTrue)
}

// CutNode makes kwok let go of the node, as if the machine vanished: the node's Lease is taken
// over by a holder that never renews it, so kwok stops renewing it and stops acting on the node's
// Pods. After NodeMonitorGracePeriod the controller-manager marks the node Unknown and taints it
// node.kubernetes.io/unreachable:NoExecute; its Pods are then deleted once their toleration runs
// out, and stay Terminating (no kubelet confirms) until the node is deleted. CutNode returns once
// the Lease is taken; the node cannot be restored.
func (e *Env) CutNode(ctx context.Context, name string) error {
	leases := e.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	for {
		lease, err := leases.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("k8senv: lease of node %s: %w", name, err)
		}
		// kwok leaves a Lease alone while another holder's has not expired.
		lease.Spec.HolderIdentity = ptr.To("k8senv-cut")
		lease.Spec.LeaseDurationSeconds = ptr.To[int32](24 * 3600)
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue // kwok renewed it meanwhile
		}
		if err != nil {
			return fmt.Errorf("k8senv: taking the lease of node %s: %w", name, err)
		}
		return nil
	}
}

// DeleteNode deletes a node; the Pod garbage collector then deletes the Pods bound to it.
func (e *Env) DeleteNode(ctx context.Context, name string) error {
	if err := e.cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("k8senv: deleting node %s: %w", name, err)
	}
	return nil
}

// annotateNode sets (value non-empty) or removes an annotation of a node.
func (e *Env) annotateNode(ctx context.Context, name, key, value string) error {
	patch, err := annotationPatch(map[string]string{key: value})
	if err != nil {
		return err
	}
	if _, err := e.cs.CoreV1().Nodes().Patch(ctx, name, typeMerge, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("k8senv: annotating node %s: %w", name, err)
	}
	return nil
}

// annotationPatch is a merge patch setting the annotations, removing those with an empty value.
func annotationPatch(a map[string]string) ([]byte, error) {
	m := map[string]any{}
	for k, v := range a {
		if v == "" {
			m[k] = nil
		} else {
			m[k] = v
		}
	}
	return json.Marshal(map[string]any{"metadata": map[string]any{"annotations": m}})
}

// ExitPod makes the containers of a Pod terminate with exit code code (reason OOMKilled when oom,
// else Error; a real OOM kill reports 137), as soon as the Pod is Running: its phase becomes
// Failed (Succeeded for code 0) and its Ready condition False. It returns once the Pod is
// annotated; watch the Pod for the termination (kwok writes it within milliseconds).
func (e *Env) ExitPod(ctx context.Context, ns, name string, code int, oom bool) error {
	reason := "Error"
	if oom {
		reason = "OOMKilled"
	} else if code == 0 {
		reason = "Completed"
	}
	patch, err := annotationPatch(map[string]string{AnnotationExitCode: strconv.Itoa(code), AnnotationExitReason: reason})
	if err != nil {
		return err
	}
	if _, err := e.cs.CoreV1().Pods(ns).Patch(ctx, name, typeMerge, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("k8senv: annotating pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// WaitPod watches the Pod until cond holds for it (nil: the Pod is gone) and returns it, or ctx's
// error.
func (e *Env) WaitPod(ctx context.Context, ns, name string, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	pods := e.cs.CoreV1().Pods(ns)
	for {
		list, err := pods.List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return nil, err
		}
		var p *corev1.Pod
		if len(list.Items) == 1 {
			p = &list.Items[0]
		}
		if cond(p) {
			return p, nil
		}
		w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: list.ResourceVersion})
		if err != nil {
			return nil, err
		}
		var found *corev1.Pod
		obj, err := waitEvent(ctx, w, func(ev watch.Event) bool {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok {
				return false
			}
			if ev.Type == watch.Deleted {
				pod = nil
			}
			if cond(pod) {
				found = pod
				return true
			}
			return false
		})
		if err != nil {
			return nil, err
		}
		if obj != nil {
			return found, nil
		}
	}
}
