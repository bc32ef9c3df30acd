package k8senv

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// startProvisioner binds every pending claim of StorageClass to a new PersistentVolume, the way
// a dynamic provisioner and the controller-manager's PV binder would together (neither runs
// here). The volume is a hostPath nothing mounts: kwok runs no containers. Claims of other
// classes stay Pending, as on a cluster without their provisioner.
func (e *Env) startProvisioner() {
	ctx, cancel := context.WithCancel(context.Background())
	e.stopProvisioner = cancel
	e.provisionerDone = make(chan struct{})

	factory := informers.NewSharedInformerFactory(e.cs, 0)
	claims := factory.Core().V1().PersistentVolumeClaims()
	inf := claims.Informer()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	factory.Start(ctx.Done())

	go func() {
		defer close(e.provisionerDone)
		defer factory.Shutdown()
		go func() {
			<-ctx.Done()
			queue.ShutDown()
		}()
		cache.WaitForCacheSync(ctx.Done(), inf.HasSynced)
		for {
			key, quit := queue.Get()
			if quit {
				return
			}
			if err := e.bindClaim(ctx, claims.Lister(), key); err != nil && ctx.Err() == nil {
				queue.AddRateLimited(key)
			} else {
				queue.Forget(key)
			}
			queue.Done(key)
		}
	}()
}

// bindClaim binds the claim key (namespace/name) if it is a pending claim of StorageClass.
func (e *Env) bindClaim(ctx context.Context, lister corelisters.PersistentVolumeClaimLister, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pvc, err := lister.PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if pvc.DeletionTimestamp != nil || pvc.Status.Phase == corev1.ClaimBound ||
		pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != StorageClass {
		return nil
	}
	size, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		size = resource.MustParse("1Gi")
	}
	pvName := "pvc-" + string(pvc.UID)
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        pvName,
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": provisioner},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:    corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes: pvc.Spec.AccessModes,
			ClaimRef: &corev1.ObjectReference{
				APIVersion: "v1", Kind: "PersistentVolumeClaim",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
			},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              StorageClass,
			VolumeMode:                    pvc.Spec.VolumeMode,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/k8senv/volumes/" + string(pvc.UID)},
			},
		},
	}
	pvs := e.cs.CoreV1().PersistentVolumes()
	created, err := pvs.Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = pvs.Get(ctx, pvName, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("k8senv: creating PV for claim %s: %w", key, err)
	}
	if created.Status.Phase != corev1.VolumeBound {
		created.Status.Phase = corev1.VolumeBound
		if _, err := pvs.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("k8senv: binding PV %s: %w", pvName, err)
		}
	}

	claim := pvc.DeepCopy()
	if claim.Spec.VolumeName == "" {
		claim.Spec.VolumeName = pvName
		if claim.Annotations == nil {
			claim.Annotations = map[string]string{}
		}
		claim.Annotations["pv.kubernetes.io/bind-completed"] = "yes"
		claim.Annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
		if claim, err = e.cs.CoreV1().PersistentVolumeClaims(ns).Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("k8senv: binding claim %s: %w", key, err)
		}
	}
	claim.Status.Phase = corev1.ClaimBound
	claim.Status.AccessModes = pvc.Spec.AccessModes
	claim.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: size}
	if _, err := e.cs.CoreV1().PersistentVolumeClaims(ns).UpdateStatus(ctx, claim, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("k8senv: claim %s status: %w", key, err)
	}
	return nil
}
