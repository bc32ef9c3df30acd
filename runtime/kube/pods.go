package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	rtm "github.com/galaxy-platform/rtmanager"
)

// Span attributes.
var (
	attrGameID = attribute.Key("rtmanager.game_id")
	attrPodUID = attribute.Key("k8s.pod.uid")
)

// engineContainer is the name of the engine's container in its Pod.
const engineContainer = "engine"

// nonRootID is the user and group an engine runs as when no engine user is configured: Pods run
// as non-root whatever the image says.
const nonRootID = 65532

// pullFailures are the waiting reasons that mean the image cannot be had.
var pullFailures = []string{"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}

// List returns every owned Pod of the namespace from the informer's store: no API call.
func (k *Kube) List(context.Context) ([]rtm.Container, error) {
	objs := k.informer.GetStore().List()
	out := make([]rtm.Container, 0, len(objs))
	for _, obj := range objs {
		if p := podOf(obj); p != nil && !vanishing(p) {
			out = append(out, k.container(p, time.Now()))
		}
	}
	return out, nil
}

// Inspect returns the Pod of gameID from the informer's store: the one named Name(gameID) when
// it exists, else a Pod carrying the game's id (a running one over others, the newest among
// equals). No Pod wraps rtm.ErrNotFound.
func (k *Kube) Inspect(_ context.Context, gameID string) (rtm.Container, error) {
	p := k.podOfGame(gameID)
	if p == nil {
		return rtm.Container{}, fmt.Errorf("pod of game %s: %w", gameID, rtm.ErrNotFound)
	}
	return k.container(p, time.Now()), nil
}

func (k *Kube) podOfGame(gameID string) *corev1.Pod {
	objs, _ := k.informer.GetIndexer().ByIndex(byGame, strings.ToLower(gameID))
	var pods []*corev1.Pod
	for _, obj := range objs {
		if p := podOf(obj); p != nil && gameIDOf(p) == gameID && !vanishing(p) {
			if p.Name == Name(gameID) {
				return p
			}
			pods = append(pods, p)
		}
	}
	if len(pods) == 0 {
		return nil
	}
	return slices.MaxFunc(pods, func(a, b *corev1.Pod) int {
		ra, rb := running(a), running(b)
		if ra != rb {
			if ra {
				return 1
			}
			return -1
		}
		return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
	})
}

// podByUID returns the Pod id, nil when there is none or Kubernetes is deleting it (vanishing).
func (k *Kube) podByUID(id string) *corev1.Pod {
	if p := k.anyPodByUID(id); p != nil && !vanishing(p) {
		return p
	}
	return nil
}

// anyPodByUID returns the Pod id, also one that is vanishing.
func (k *Kube) anyPodByUID(id string) *corev1.Pod {
	objs, _ := k.informer.GetIndexer().ByIndex(byUID, id)
	if len(objs) == 0 {
		return nil
	}
	return podOf(objs[0])
}

// EnsureImage does nothing: a node pulls an engine's image when its Pod is placed there, and a
// pull that fails fails the start (Start) with image_pull_failed.
func (k *Kube) EnsureImage(context.Context, string) error { return nil }

// Create creates the game's state claim and Service when they do not exist yet, then its Pod,
// and returns the Pod's UID. The Pod runs as soon as it is placed: Start waits for that.
//
// Errors: a Pod of that name RTM owns already exists → wraps rtm.ErrConflict; one RTM does not
// own → *rtm.Error with CodeContainerStartFailed; the API server cannot be reached → wraps
// rtm.ErrUnavailable; any other refusal (forbidden, invalid, over quota) → *rtm.Error with
// CodeContainerStartFailed and the server's words.
func (k *Kube) Create(ctx context.Context, spec rtm.ContainerSpec) (string, error) {
	op := k.ops.Start(ctx, "create", attrGameID.String(spec.GameID))
	ctx = op.Context()
	id, err := k.create(ctx, spec)
	return id, op.Finish(err)
}

func (k *Kube) create(ctx context.Context, spec rtm.ContainerSpec) (string, error) {
	name := Name(spec.GameID)
	if err := k.ensureGame(ctx, spec.GameID); err != nil {
		return "", err
	}
	pod := k.pod(spec)
	cctx, cancel := context.WithTimeout(ctx, k.opts.CallTimeout)
	defer cancel()
	pods := k.cs.CoreV1().Pods(k.opts.Namespace)
	created, err := pods.Create(cctx, pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		other, gerr := pods.Get(cctx, name, metav1.GetOptions{})
		switch {
		case gerr != nil:
		case other.Labels[rtm.LabelOwner] != rtm.OwnerValue:
			return "", rtm.Errorf(rtm.CodeContainerStartFailed, "the name %s is taken by a Pod RTM does not own", name)
		case vanishing(other):
			// The game's previous Pod, deleted by Kubernetes on a node that no longer answers:
			// no kubelet will confirm its end, so it is deleted at once, and the name is free.
			if derr := k.delete(ctx, other, 0); derr == nil || errors.Is(derr, rtm.ErrNotFound) {
				created, err = pods.Create(cctx, pod, metav1.CreateOptions{})
			}
		}
	}
	if err != nil {
		return "", k.refusal(ctx, "creating pod "+name, err)
	}
	k.log.Debug("pod created", "game_id", spec.GameID, "pod", name, "uid", created.UID, "image_ref", spec.ImageRef)
	return string(created.UID), nil
}

// ensureGame creates the game's state claim and headless Service unless this process knows
// they exist. Neither is ever deleted by RTM.
func (k *Kube) ensureGame(ctx context.Context, gameID string) error {
	k.mu.Lock()
	done := k.ensured[gameID]
	k.mu.Unlock()
	if done {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, k.opts.CallTimeout)
	defer cancel()
	name := Name(gameID)
	if _, err := k.cs.CoreV1().PersistentVolumeClaims(k.opts.Namespace).Create(cctx, k.claim(gameID), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return k.refusal(ctx, "creating state claim "+name, err)
	}
	if _, err := k.cs.CoreV1().Services(k.opts.Namespace).Create(cctx, k.service(gameID), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return k.refusal(ctx, "creating service "+name, err)
	}
	k.mu.Lock()
	k.ensured[gameID] = true
	k.mu.Unlock()
	return nil
}

// refusal classifies a failed write: the caller's end and an unreachable server are errors to
// retry; a refusal by the server is a start failure with its words.
func (k *Kube) refusal(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	cerr := classify(err)
	if errors.Is(cerr, rtm.ErrUnavailable) || errors.Is(cerr, rtm.ErrConflict) || errors.Is(cerr, rtm.ErrNotFound) {
		return fmt.Errorf("%s: %w", what, cerr)
	}
	return &rtm.Error{Code: rtm.CodeContainerStartFailed, Message: fmt.Sprintf("%s: %s", what, serverMessage(err)), Err: err}
}

// serverMessage is the API server's own words of an error.
func serverMessage(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Message != "" {
		return st.Status().Message
	}
	return err.Error()
}

// Start waits until the Pod id runs (or has already run and exited), at most StartTimeout.
//
// Errors: the Pod is gone → wraps rtm.ErrNotFound; its image cannot be pulled →
// *rtm.Error with CodeImagePullFailed; it is still not running at the timeout (no node has room,
// its claim is not bound, …) or its container cannot be created → *rtm.Error with
// CodeContainerStartFailed, saying why.
func (k *Kube) Start(ctx context.Context, id string) error {
	return k.onPod(ctx, "start", id, k.start)
}

func (k *Kube) start(ctx context.Context, id string) error {
	if err := k.seen(ctx, id); err != nil {
		return err
	}
	var last *corev1.Pod
	var failed error
	err := k.await(ctx, types.UID(id), k.opts.StartTimeout, func() bool {
		last = k.podByUID(id)
		if last != nil {
			failed = startFailure(last)
		}
		return last == nil || failed != nil || running(last) || terminated(last) != nil
	})
	switch {
	case errors.Is(err, errWaited):
		k.forgetGame(last)
		return rtm.Errorf(rtm.CodeContainerStartFailed, "pod %s is not running after %s: %s",
			last.Name, k.opts.StartTimeout, pendingReason(last))
	case err != nil:
		return fmt.Errorf("starting pod %s: %w", id, err)
	case last == nil:
		return fmt.Errorf("starting pod %s: %w", id, rtm.ErrNotFound)
	case failed != nil:
		k.forgetGame(last)
		return failed
	}
	return nil
}

// seen waits until the informer holds Pod id: a Pod Create just made reaches it a moment later,
// and one it has not seen within CallTimeout is not there.
func (k *Kube) seen(ctx context.Context, id string) error {
	err := k.await(ctx, types.UID(id), k.opts.CallTimeout, func() bool { return k.anyPodByUID(id) != nil })
	if errors.Is(err, errWaited) {
		return fmt.Errorf("starting pod %s: %w", id, rtm.ErrNotFound)
	}
	return err
}

// BeginStart is Start without the waits for the informer to see the Pod and for the Pod to run:
// a Pod still on its way (not in the informer yet, scheduled or not, pulling, mounting) is
// answered with *rtm.Starting, whose Within is what is left of its start timeout (startLeft),
// and the informer's events (create, start, die, or the update that shows a start
// failure) say when to look again. A worker of the reconciler so holds a game
// for a few API calls, not for the seconds a Pod takes to run under a burst.
//
// Errors are Start's, the timeout counted as startLeft says.
func (k *Kube) BeginStart(ctx context.Context, id string) error {
	return k.onPod(ctx, "begin_start", id, k.beginStart)
}

func (k *Kube) beginStart(_ context.Context, id string) error {
	// One read of the informer: two (the Pod, then "also a vanishing one?") could straddle its
	// arrival and call a Pod just seen gone.
	p := k.anyPodByUID(id)
	switch {
	case p == nil:
		// Just created, not in the informer yet (a burst delays the watch by seconds): its
		// appearance is an event. Waiting for it here would hold the worker for the watch's
		// delay; a Pod not seen within CallTimeout is looked for again then (Start's bound).
		return &rtm.Starting{ID: id, Reason: "created, not yet seen", Within: min(k.opts.CallTimeout, k.opts.StartTimeout)}
	case vanishing(p):
		return fmt.Errorf("starting pod %s: %w", id, rtm.ErrNotFound)
	case running(p) || terminated(p) != nil:
		return nil
	}
	if err := startFailure(p); err != nil {
		k.forgetGame(p)
		return err
	}
	left := k.startLeft(p)
	if left <= 0 {
		k.forgetGame(p)
		return rtm.Errorf(rtm.CodeContainerStartFailed, "pod %s is not running after %s: %s",
			p.Name, k.opts.StartTimeout, pendingReason(p))
	}
	return &rtm.Starting{ID: id, Reason: pendingReason(p), Within: left}
}

// backlogAllowance is how many start timeouts a Pod the scheduler has not looked at yet gets.
const backlogAllowance = 5

// startLeft is what is left of a Pod's start timeout. The clock runs from the scheduler's word
// on it (PodScheduled, true or false: placed, or no node has room), so a start fails when no node
// takes the Pod, or a node does not run it, for StartTimeout; not because the Pod waited its turn
// behind thousands of others in the scheduler's queue. A Pod the scheduler has not considered
// at all (no PodScheduled condition: a backlog, or no scheduler) gets backlogAllowance times as
// long from its creation. Times are kept in whole seconds: counting from the end of the second
// never gives up early.
func (k *Kube) startLeft(p *corev1.Pod) time.Duration {
	since, allowed := p.CreationTimestamp.Time, backlogAllowance*k.opts.StartTimeout
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && !c.LastTransitionTime.IsZero() {
			since, allowed = c.LastTransitionTime.Time, k.opts.StartTimeout
		}
	}
	return allowed - time.Since(since.Add(time.Second))
}

// errWaited is await's error when the wait ran out.
var errWaited = errors.New("timed out")

// await waits, at most timeout, until done, which it calls at once and after each change of
// the Pod uid the informer sees. It returns errWaited when the time ran out, ctx's error when
// ctx ended.
func (k *Kube) await(ctx context.Context, uid types.UID, timeout time.Duration, done func() bool) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		changed := k.changed(uid) // before the check: no change between the two is missed
		if done() {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return errWaited
		}
	}
}

// forgetGame makes the next Create of p's game check its claim and Service again.
func (k *Kube) forgetGame(p *corev1.Pod) {
	k.mu.Lock()
	delete(k.ensured, gameIDOf(p))
	k.mu.Unlock()
}

// startFailure returns the error of a Pod whose engine cannot start: its image cannot be pulled,
// or its container cannot be created.
func startFailure(p *corev1.Pod) error {
	cs := engineStatus(p)
	if cs == nil || cs.State.Waiting == nil {
		return nil
	}
	w := cs.State.Waiting
	switch {
	case slices.Contains(pullFailures, w.Reason):
		return rtm.Errorf(rtm.CodeImagePullFailed, "pod %s cannot pull image %s: %s: %s", p.Name, cs.Image, w.Reason, w.Message)
	case strings.HasPrefix(w.Reason, "CreateContainer") || w.Reason == "RunContainerError":
		return rtm.Errorf(rtm.CodeContainerStartFailed, "pod %s: %s: %s", p.Name, w.Reason, w.Message)
	}
	return nil
}

// pendingReason says why a Pod does not run yet.
func pendingReason(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
			return fmt.Sprintf("not scheduled: %s: %s", c.Reason, c.Message)
		}
	}
	if cs := engineStatus(p); cs != nil && cs.State.Waiting != nil {
		return fmt.Sprintf("%s: %s", cs.State.Waiting.Reason, cs.State.Waiting.Message)
	}
	return "phase " + string(p.Status.Phase)
}

// Stop stops the engine of Pod id: it puts KeepExited on the Pod and deletes it with grace
// (rounded up to whole seconds), then waits, at most grace plus CallTimeout, until the kubelet
// reports the engine terminated (its exit code) or the Pod is gone. Stopping a terminated Pod
// succeeds and changes nothing; a missing one wraps rtm.ErrNotFound.
func (k *Kube) Stop(ctx context.Context, id string, grace time.Duration) error {
	return k.onPod(ctx, "stop", id, func(ctx context.Context, id string) error { return k.stop(ctx, id, grace) })
}

// onPod runs do as the operation name on Pod id: one span and one latency sample.
func (k *Kube) onPod(ctx context.Context, name, id string, do func(ctx context.Context, id string) error) error {
	op := k.ops.Start(ctx, name, attrPodUID.String(id))
	return op.Finish(do(op.Context(), id))
}

func (k *Kube) stop(ctx context.Context, id string, grace time.Duration) error {
	p := k.podByUID(id)
	if p == nil {
		return fmt.Errorf("stopping pod %s: %w", id, rtm.ErrNotFound)
	}
	if terminated(p) != nil {
		return nil
	}
	secs := int64(math.Ceil(max(grace, 0).Seconds()))
	if !running(p) {
		// It never ran (still on its way): there is nothing to stop gracefully and no exit code
		// to read; the deleted Pod, kept by KeepExited, says final until Remove.
		secs = 0
	}
	if p.DeletionTimestamp == nil {
		if err := k.keepExited(ctx, p); err != nil {
			return err
		}
		if err := k.delete(ctx, p, secs); err != nil {
			return err
		}
	}
	err := k.await(ctx, p.UID, time.Duration(secs)*time.Second+k.opts.CallTimeout, func() bool {
		cur := k.podByUID(id)
		return cur == nil || terminated(cur) != nil || cur.DeletionTimestamp != nil && !running(cur)
	})
	if errors.Is(err, errWaited) {
		err = fmt.Errorf("its engine is not reported terminated after %ds: %w", secs, rtm.ErrUnavailable)
	}
	if err != nil {
		return fmt.Errorf("stopping pod %s: %w", p.Name, err)
	}
	return nil
}

// keepExited adds the KeepExited finalizer to p.
func (k *Kube) keepExited(ctx context.Context, p *corev1.Pod) error {
	if slices.Contains(p.Finalizers, KeepExited) {
		return nil
	}
	ops := []jsonPatch{{Op: "test", Path: "/metadata/uid", Value: string(p.UID)}}
	if len(p.Finalizers) == 0 {
		ops = append(ops, jsonPatch{Op: "add", Path: "/metadata/finalizers", Value: []string{KeepExited}})
	} else {
		ops = append(ops, jsonPatch{Op: "add", Path: "/metadata/finalizers/-", Value: KeepExited})
	}
	return k.patch(ctx, p, "keeping pod", ops)
}

// Remove drops KeepExited from Pod id and deletes it at once (killing an engine that still
// runs), then waits, at most CallTimeout, until it is gone, so that the game's next Pod can take
// its name. The claim and Service stay. A missing Pod wraps rtm.ErrNotFound.
func (k *Kube) Remove(ctx context.Context, id string) error {
	return k.onPod(ctx, "remove", id, k.remove)
}

func (k *Kube) remove(ctx context.Context, id string) error {
	p := k.anyPodByUID(id)
	if p == nil {
		return fmt.Errorf("removing pod %s: %w", id, rtm.ErrNotFound)
	}
	// The deletion (grace 0) comes first, while KeepExited still holds the Pod: dropping the
	// finalizer then ends it at once. The other order shows a deleting Pod without RTM's
	// finalizer for a moment, which a kubelet (kwok's, at least) may act on by name after the
	// game's next Pod has taken that name.
	if err := k.delete(ctx, p, 0); err != nil && !errors.Is(err, rtm.ErrNotFound) {
		return err
	}
	if slices.Contains(p.Finalizers, KeepExited) {
		rest := slices.DeleteFunc(slices.Clone(p.Finalizers), func(f string) bool { return f == KeepExited })
		if err := k.patch(ctx, p, "releasing pod", []jsonPatch{
			{Op: "test", Path: "/metadata/uid", Value: string(p.UID)},
			{Op: "replace", Path: "/metadata/finalizers", Value: rest},
		}); err != nil && !errors.Is(err, rtm.ErrNotFound) {
			return err
		}
	}
	err := k.await(ctx, p.UID, k.opts.CallTimeout, func() bool { return k.anyPodByUID(id) == nil })
	if errors.Is(err, errWaited) {
		err = fmt.Errorf("still there after %s: %w", k.opts.CallTimeout, rtm.ErrUnavailable)
	}
	if err != nil {
		return fmt.Errorf("removing pod %s: %w", p.Name, err)
	}
	return nil
}

type jsonPatch struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

func (k *Kube) patch(ctx context.Context, p *corev1.Pod, what string, ops []jsonPatch) error {
	body, err := json.Marshal(ops)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, p.Name, err)
	}
	cctx, cancel := context.WithTimeout(ctx, k.opts.CallTimeout)
	defer cancel()
	_, err = k.cs.CoreV1().Pods(k.opts.Namespace).Patch(cctx, p.Name, types.JSONPatchType, body, metav1.PatchOptions{})
	if apierrors.IsInvalid(err) {
		// The test failed: the name belongs to another Pod now, this one is gone.
		return fmt.Errorf("%s %s: %w", what, p.Name, rtm.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, p.Name, classify(err))
	}
	return nil
}

// delete deletes p (and only p: the UID is a precondition) with the grace period secs.
func (k *Kube) delete(ctx context.Context, p *corev1.Pod, secs int64) error {
	cctx, cancel := context.WithTimeout(ctx, k.opts.CallTimeout)
	defer cancel()
	err := k.cs.CoreV1().Pods(k.opts.Namespace).Delete(cctx, p.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &secs, Preconditions: &metav1.Preconditions{UID: &p.UID}})
	if apierrors.IsConflict(err) {
		// The precondition failed: the name belongs to another Pod now, this one is gone.
		return fmt.Errorf("deleting pod %s: %w", p.Name, rtm.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("deleting pod %s: %w", p.Name, classify(err))
	}
	return nil
}

// Pod returns the Pod Create creates for spec (nothing is sent to the API server): the
// benchmark's bare-client baseline creates exactly this Pod.
func (k *Kube) Pod(spec rtm.ContainerSpec) *corev1.Pod { return k.pod(spec) }

// pod is the Pod RTM creates for spec.
func (k *Kube) pod(spec rtm.ContainerSpec) *corev1.Pod {
	name := Name(spec.GameID)
	uid, gid := int64(nonRootID), int64(nonRootID)
	if u, g, ok := strings.Cut(spec.User, ":"); ok {
		if n, err := strconv.ParseInt(u, 10, 64); err == nil && n > 0 {
			uid = n
		}
		if n, err := strconv.ParseInt(g, 10, 64); err == nil && n > 0 {
			gid = n
		}
	}
	fsGroup := k.opts.FSGroup
	if fsGroup == nil {
		fsGroup = &gid
	}
	env := make([]corev1.EnvVar, 0, len(spec.Env))
	for key, v := range spec.Env {
		env = append(env, corev1.EnvVar{Name: key, Value: v})
	}
	slices.SortFunc(env, func(a, b corev1.EnvVar) int { return cmp.Compare(a.Name, b.Name) })
	resources := corev1.ResourceList{}
	if spec.MemoryBytes > 0 {
		resources[corev1.ResourceMemory] = *resource.NewQuantity(spec.MemoryBytes, resource.BinarySI)
	}
	if spec.NanoCPUs > 0 {
		resources[corev1.ResourceCPU] = *resource.NewMilliQuantity(spec.NanoCPUs/1e6, resource.DecimalSI)
	}
	tmpSize := resource.MustParse("16Mi")
	no, yes := false, true
	tolerate := k.opts.EvictionSeconds
	probe := k.opts.Probe
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   k.opts.Namespace,
			Labels:      labels(spec.GameID),
			Annotations: map[string]string{rtm.LabelGameID: spec.GameID, rtm.LabelImageRef: spec.ImageRef, rtm.LabelGeneration: strconv.FormatInt(spec.Generation, 10)},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                corev1.RestartPolicyNever,
			EnableServiceLinks:           &no,
			AutomountServiceAccountToken: &no,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &yes,
				RunAsUser:      &uid,
				RunAsGroup:     &gid,
				FSGroup:        fsGroup,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tolerate},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tolerate},
			},
			Containers: []corev1.Container{{
				Name:            engineContainer,
				Image:           spec.ImageRef,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Env:             env,
				Ports:           []corev1.ContainerPort{{Name: "engine", ContainerPort: int32(probe.Port)}},
				Resources:       corev1.ResourceRequirements{Requests: resources, Limits: resources},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no,
					Privileged:               &no,
					ReadOnlyRootFilesystem:   &spec.ReadOnlyRoot,
					RunAsNonRoot:             &yes,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "state", MountPath: spec.StateMount},
					{Name: "tmp", MountPath: "/tmp"},
				},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(int32(probe.Port))}},
					PeriodSeconds:    seconds(probe.Period),
					TimeoutSeconds:   seconds(probe.Timeout),
					FailureThreshold: int32(max(probe.Threshold, 1)),
				},
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}},
			Volumes: []corev1.Volume{
				{Name: "state", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}},
				{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &tmpSize}}},
			},
		},
	}
}

func seconds(d time.Duration) int32 { return int32(max(math.Ceil(d.Seconds()), 1)) }

// labels are the labels of every object of a game: RTM's owner label, the object name the
// Service selects on, and the game id when it can be a label value (the annotation of the same
// key always carries it).
func labels(gameID string) map[string]string {
	l := map[string]string{rtm.LabelOwner: rtm.OwnerValue, LabelName: Name(gameID)}
	if labelValue(gameID) {
		l[rtm.LabelGameID] = gameID
	}
	return l
}

// claim is the game's state claim.
func (k *Kube) claim(gameID string) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: Name(gameID), Namespace: k.opts.Namespace, Labels: labels(gameID),
			Annotations: map[string]string{rtm.LabelGameID: gameID}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: k.size}},
		},
	}
	if k.opts.StorageClass != "" {
		c.Spec.StorageClassName = &k.opts.StorageClass
	}
	return c
}

// service is the game's headless Service: its name resolves to the Pod's IP.
func (k *Kube) service(gameID string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: Name(gameID), Namespace: k.opts.Namespace, Labels: labels(gameID),
			Annotations: map[string]string{rtm.LabelGameID: gameID}},
		Spec: corev1.ServiceSpec{
			ClusterIP:                corev1.ClusterIPNone,
			Selector:                 map[string]string{rtm.LabelOwner: rtm.OwnerValue, LabelName: Name(gameID)},
			Ports:                    []corev1.ServicePort{{Name: "engine", Port: int32(k.opts.Probe.Port), TargetPort: intstr.FromInt32(int32(k.opts.Probe.Port))}},
			PublishNotReadyAddresses: true,
		},
	}
}

// gameIDOf returns the game id a Pod carries (annotation, else label).
func gameIDOf(p *corev1.Pod) string {
	if id := p.Annotations[rtm.LabelGameID]; id != "" {
		return id
	}
	return p.Labels[rtm.LabelGameID]
}

func engineStatus(p *corev1.Pod) *corev1.ContainerStatus {
	for i := range p.Status.ContainerStatuses {
		if p.Status.ContainerStatuses[i].Name == engineContainer {
			return &p.Status.ContainerStatuses[i]
		}
	}
	if len(p.Status.ContainerStatuses) > 0 {
		return &p.Status.ContainerStatuses[0]
	}
	return nil
}

func running(p *corev1.Pod) bool {
	cs := engineStatus(p)
	return cs != nil && cs.State.Running != nil
}

// terminated returns the engine's terminated state, nil while it has not terminated. A Pod that
// failed or succeeded as a whole without a container status (evicted before it ran) counts as
// terminated with exit code 137 (killed) or 0.
func terminated(p *corev1.Pod) *corev1.ContainerStateTerminated {
	if cs := engineStatus(p); cs != nil && cs.State.Terminated != nil {
		return cs.State.Terminated
	}
	switch p.Status.Phase {
	case corev1.PodFailed:
		return &corev1.ContainerStateTerminated{ExitCode: 137, Reason: p.Status.Reason, Message: p.Status.Message}
	case corev1.PodSucceeded:
		return &corev1.ContainerStateTerminated{Reason: p.Status.Reason}
	}
	return nil
}

// vanishing reports a Pod Kubernetes is deleting (an eviction, a lost node's taint), not RTM: it
// carries no KeepExited. It counts as gone already: on a node that no longer answers it would
// stay Terminating, its status frozen at running, until the node object is deleted.
func vanishing(p *corev1.Pod) bool {
	return p.DeletionTimestamp != nil && !slices.Contains(p.Finalizers, KeepExited)
}

// ready reports the Pod's Ready condition.
func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// container is what RTM sees of a Pod.
func (k *Kube) container(p *corev1.Pod, now time.Time) rtm.Container {
	c := rtm.Container{
		ID:       string(p.UID),
		Name:     p.Name,
		GameID:   gameIDOf(p),
		Owned:    p.Labels[rtm.LabelOwner] == rtm.OwnerValue,
		ImageRef: p.Annotations[rtm.LabelImageRef],
		IP:       p.Status.PodIP,
		Created:  p.CreationTimestamp.Time,
		State:    rtm.StateCreated,
	}
	if c.ImageRef == "" && len(p.Spec.Containers) > 0 {
		c.ImageRef = p.Spec.Containers[0].Image
	}
	c.Generation, _ = strconv.ParseInt(p.Annotations[rtm.LabelGeneration], 10, 64)
	cs := engineStatus(p)
	switch t := terminated(p); {
	case t != nil:
		c.State, c.Final = rtm.StateExited, true
		c.ExitCode = int(t.ExitCode)
		c.OOMKilled = t.Reason == "OOMKilled"
		c.StartedAt, c.FinishedAt = t.StartedAt.Time, t.FinishedAt.Time
	case cs != nil && cs.State.Running != nil:
		c.State = rtm.StateRunning
		c.StartedAt = cs.State.Running.StartedAt.Time
		c.Health = k.health(p, c.StartedAt, now)
	}
	if p.DeletionTimestamp != nil {
		// On its way out: whatever it does now, it will not run again.
		c.Final = true
	}
	// A Pod that has not run yet runs by itself once its node, image and volume are there,
	// unless it shows that it cannot (BeginStart then says why).
	c.Starting = c.State == rtm.StateCreated && !c.Final && startFailure(p) == nil
	return c
}

// health reads the readiness RTM's probe gives a running engine the way Docker reads a
// healthcheck: healthy when ready, starting while not yet ready within the probe's allowance
// after the start (period × threshold + timeout), unhealthy after that.
func (k *Kube) health(p *corev1.Pod, started, now time.Time) string {
	if ready(p) {
		return "healthy"
	}
	pr := k.opts.Probe
	allowance := time.Duration(max(pr.Threshold, 1))*max(pr.Period, time.Second) + pr.Timeout
	if now.Sub(started) < allowance {
		return "starting"
	}
	return "unhealthy"
}
