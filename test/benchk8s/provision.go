package main

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/galaxy-platform/rtmanager/test/harness"
)

// prebindClass is the StorageClass of the claims the benchmark binds itself before a run (RTM
// and the bare client are set to it); no provisioner serves it. test/k8senv's own provisioner
// binds one claim at a time, four requests each: about 40 claims a second here, which would be
// the limit of both sides of every run instead of the control plane and RTM.
const prebindClass = "benchk8s-prebound"

func (w *world) createPrebindClass(ctx context.Context) error {
	immediate := storagev1.VolumeBindingImmediate
	retain := corev1.PersistentVolumeReclaimRetain
	_, err := w.cs.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: prebindClass},
		Provisioner:       "benchk8s.rtm.test/prebound",
		ReclaimPolicy:     &retain,
		VolumeBindingMode: &immediate,
	}, metav1.CreateOptions{})
	return err
}

// provision creates the games' state claims (as the adapter makes them) and binds each to a
// volume of its own, the way test/k8senv's provisioner does, 32 at a time, before a run is
// timed; without -provisioner only.
func (w *world) provision(ctx context.Context, b *bare, games []string) error {
	if !w.prebind {
		return nil
	}
	t0 := time.Now()
	core := w.cs.CoreV1()
	err := w.each(ctx, games, func(ctx context.Context, gameID string) error {
		claim, _, _ := b.objects(gameID)
		c, err := core.PersistentVolumeClaims(b.ns).Create(ctx, claim, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		size := c.Spec.Resources.Requests[corev1.ResourceStorage]
		pv, err := core.PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: "pvc-" + string(c.UID)},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:    corev1.ResourceList{corev1.ResourceStorage: size},
				AccessModes: c.Spec.AccessModes,
				ClaimRef: &corev1.ObjectReference{APIVersion: "v1", Kind: "PersistentVolumeClaim",
					Namespace: c.Namespace, Name: c.Name, UID: c.UID},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				StorageClassName:              prebindClass,
				VolumeMode:                    c.Spec.VolumeMode,
				PersistentVolumeSource: corev1.PersistentVolumeSource{
					HostPath: &corev1.HostPathVolumeSource{Path: "/benchk8s/volumes/" + string(c.UID)}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		pv.Status.Phase = corev1.VolumeBound
		if _, err := core.PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{}); err != nil {
			return err
		}
		c.Spec.VolumeName = pv.Name
		c.Annotations["pv.kubernetes.io/bind-completed"] = "yes"
		c.Annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
		if c, err = core.PersistentVolumeClaims(b.ns).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			return err
		}
		c.Status.Phase = corev1.ClaimBound
		c.Status.AccessModes = c.Spec.AccessModes
		c.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: size}
		_, err = core.PersistentVolumeClaims(b.ns).UpdateStatus(ctx, c, metav1.UpdateOptions{})
		return err
	})
	if err == nil {
		harness.Logf("  %d state claims created and bound in %s (not timed)", len(games), time.Since(t0).Round(100*time.Millisecond))
	}
	return err
}
