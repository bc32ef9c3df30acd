//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/galaxy-platform/rtmanager/config"
)

// On Kubernetes a test's world is a namespace of the suite's one control plane (test/k8senv:
// kube-apiserver, etcd, kube-scheduler, kube-controller-manager, kwok's three nodes). kwok plays
// the kubelet but runs no containers, so the rig plays the engines: for every Pod of the namespace
// that kwok reports Running it binds a stand-in engine on <Pod IP>:<engine port> (Pod IPs are in
// 127.100.0.0/16, on this machine's loopback) that answers what test/engine answers (/healthz with
// the game, boot count and version, and the /control/… endpoints), and closes it when the Pod
// terminates or goes. The stand-in keeps the engine's boot counter per state claim, as the engine
// keeps it in its state dir: a Pod that mounts the game's claim again boots from the same state.

// kubeWorld is one test's namespace with its stand-in engines.
type kubeWorld struct {
	t    *testing.T
	ns   string
	cs   kubernetes.Interface
	port int

	mu        sync.Mutex
	engines   map[types.UID]*standIn
	bootCount map[string]int       // by state claim (or pod/<name> for a Pod without one)
	deleted   map[string]time.Time // when each Pod was first seen deleting or gone, by name
	wg        sync.WaitGroup
	closed    bool
}

// newKubeWorld starts the stand-in engines' watcher of namespace ns; the test's cleanup stops it
// and every stand-in.
func newKubeWorld(t *testing.T, ns string, port int) *kubeWorld {
	t.Helper()
	w := &kubeWorld{t: t, ns: ns, cs: suite.k8s.Client(), port: port,
		engines: map[types.UID]*standIn{}, bootCount: map[string]int{}, deleted: map[string]time.Time{}}
	factory := informers.NewSharedInformerFactoryWithOptions(w.cs, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.sync,
		UpdateFunc: func(_, obj any) { w.sync(obj) },
		DeleteFunc: w.sync,
	}); err != nil {
		t.Fatalf("stand-in engines: %v", err)
	}
	stop := make(chan struct{})
	factory.Start(stop)
	t.Cleanup(func() {
		close(stop)
		factory.Shutdown()
		w.mu.Lock()
		w.closed = true
		for uid, s := range w.engines {
			s.close()
			delete(w.engines, uid)
		}
		w.mu.Unlock()
		w.wg.Wait()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatalf("stand-in engines: the Pods of %s were not listed", ns)
	}
	return w
}

// sync follows one Pod: a stand-in engine while it runs, none once it terminated or goes.
func (w *kubeWorld) sync(obj any) {
	var p *corev1.Pod
	gone := false
	switch o := obj.(type) {
	case *corev1.Pod:
		p = o
	case cache.DeletedFinalStateUnknown:
		p, _ = o.Obj.(*corev1.Pod)
		gone = true
	}
	if p == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	deleting := gone || p.DeletionTimestamp != nil
	if deleting {
		if _, seen := w.deleted[p.Name]; !seen {
			w.deleted[p.Name] = time.Now()
		}
	}
	s := w.engines[p.UID]
	switch {
	case !deleting && podEngine(p).running() && p.Status.PodIP != "":
		if s == nil {
			w.serve(p)
		}
	case s != nil:
		s.close()
		delete(w.engines, p.UID)
	}
}

// serve starts a stand-in engine for the running Pod p (w.mu held): one more boot of its state.
func (w *kubeWorld) serve(p *corev1.Pod) {
	key := "pod/" + p.Name
	for _, v := range p.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			key = v.PersistentVolumeClaim.ClaimName
		}
	}
	w.bootCount[key]++
	s := &standIn{w: w, pod: p.Name, addr: net.JoinHostPort(p.Status.PodIP, strconv.Itoa(w.port)),
		game: p.Annotations["com.galaxy.game_id"], boots: w.bootCount[key], wellCh: make(chan struct{}), done: make(chan struct{})}
	if len(p.Spec.Containers) > 0 {
		img := p.Spec.Containers[0].Image
		s.version = img[strings.LastIndex(img, ":")+1:]
	}
	s.sick = s.version == v143 // the bad release: /healthz fails from the start (ENGINE_SICK=1)
	w.engines[p.UID] = s
	w.wg.Add(1)
	go s.run()
}

// deletedAt returns when the Pod name was first seen deleting or gone (zero: not yet).
func (w *kubeWorld) deletedAt(name string) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.deleted[name]
}

// standIn is the stand-in engine of one Pod (one container's life).
type standIn struct {
	w             *kubeWorld
	pod, addr     string
	game, version string
	boots         int
	mu            sync.Mutex
	sick, hang    bool
	wellCh        chan struct{}
	done          chan struct{} // closed by close
	closeOnce     sync.Once
}

// run binds the stand-in on the Pod's address and serves until close. The address may still be
// held for a moment by the stand-in of a Pod (of any test) that had it before: it retries.
func (s *standIn) run() {
	defer s.w.wg.Done()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.healthz)
	mux.HandleFunc("/control/sick", func(rw http.ResponseWriter, _ *http.Request) { s.set(true, false); fmt.Fprintln(rw, "sick") })
	mux.HandleFunc("/control/well", func(rw http.ResponseWriter, _ *http.Request) { s.set(false, false); fmt.Fprintln(rw, "well") })
	mux.HandleFunc("/control/hang", func(rw http.ResponseWriter, _ *http.Request) { s.set(false, true); fmt.Fprintln(rw, "hanging") })
	mux.HandleFunc("/control/exit", func(rw http.ResponseWriter, req *http.Request) {
		code, err := strconv.Atoi(req.URL.Query().Get("code"))
		if err != nil {
			code = 0
		}
		fmt.Fprintf(rw, "exiting with %d\n", code)
		go func() { _ = s.w.exitPod(s.pod, code, false) }()
	})
	mux.HandleFunc("/control/oom", func(rw http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(rw, "allocating")
		// What the kubelet reports of an engine the kernel killed for its memory limit.
		go func() { _ = s.w.exitPod(s.pod, 137, true) }()
	})
	var ln net.Listener
	for {
		var err error
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		select {
		case <-s.done:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-s.done
		_ = srv.Close()
	}()
	_ = srv.Serve(ln)
}

// close stops the stand-in (its Pod terminated or went): the address is free again.
func (s *standIn) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mu.Lock()
		if s.hang {
			s.hang = false
			close(s.wellCh)
		}
		s.mu.Unlock()
	})
}

func (s *standIn) set(sick, hang bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sick = sick
	if hang {
		s.hang = true
	} else if s.hang {
		s.hang = false
		close(s.wellCh)
		s.wellCh = make(chan struct{})
	}
}

func (s *standIn) healthz(rw http.ResponseWriter, req *http.Request) {
	s.mu.Lock()
	sick, hang, well := s.sick, s.hang, s.wellCh
	s.mu.Unlock()
	if hang {
		select {
		case <-well:
		case <-req.Context().Done():
			return
		}
		s.mu.Lock()
		sick = s.sick
		s.mu.Unlock()
	}
	body := map[string]any{"status": "ok", "game": s.game, "boots": s.boots, "version": s.version}
	rw.Header().Set("Content-Type", "application/json")
	if sick {
		body["status"] = "sick"
		rw.WriteHeader(http.StatusInternalServerError)
	}
	_ = json.NewEncoder(rw).Encode(body)
}

// exitPod has kwok terminate the Pod's engine with code (OOMKilled when oom).
func (w *kubeWorld) exitPod(name string, code int, oom bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return suite.k8s.ExitPod(ctx, w.ns, name, code, oom)
}

// podEngine is what a test reads of a Pod.
func podEngine(p *corev1.Pod) *engine {
	e := &engine{ID: string(p.UID), Name: p.Name, State: "pending"}
	if len(p.Spec.Containers) > 0 {
		e.Image = p.Spec.Containers[0].Image
	}
	for _, cs := range p.Status.ContainerStatuses {
		switch {
		case cs.State.Terminated != nil:
			e.State, e.ExitCode, e.OOM = "exited", int(cs.State.Terminated.ExitCode), cs.State.Terminated.Reason == "OOMKilled"
		case cs.State.Running != nil:
			e.State = "running"
		}
	}
	return e
}

// ---- world ----

func (w *kubeWorld) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// pod returns the Pod name of the namespace, nil when there is none.
func (w *kubeWorld) pod(name string) *corev1.Pod {
	w.t.Helper()
	ctx, cancel := w.ctx()
	defer cancel()
	p, err := w.cs.CoreV1().Pods(w.ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		w.t.Fatalf("get pod %s/%s: %v", w.ns, name, err)
	}
	return p
}

// nodeOf is the node the game's Pod is bound to, "" when it has no Pod or none yet.
func (w *kubeWorld) nodeOf(gameID string) string {
	w.t.Helper()
	if p := w.pod(engineName(gameID)); p != nil {
		return p.Spec.NodeName
	}
	return ""
}

func (w *kubeWorld) byName(name string) *engine {
	w.t.Helper()
	if p := w.pod(name); p != nil {
		return podEngine(p)
	}
	return nil
}

func (w *kubeWorld) engineURL(gameID string) string {
	w.t.Helper()
	p := w.pod(engineName(gameID))
	if p == nil || p.Status.PodIP == "" {
		w.t.Fatalf("pod %s has no IP: %+v", engineName(gameID), p)
	}
	return fmt.Sprintf("http://%s:%d", p.Status.PodIP, w.port)
}

// kill: no client kills a Pod's container with SIGKILL; the kubelet reports what that gives.
func (w *kubeWorld) kill(gameID string) {
	w.t.Helper()
	if err := w.exitPod(engineName(gameID), 137, false); err != nil {
		w.t.Fatalf("killing the engine of %s: %v", gameID, err)
	}
}

func (w *kubeWorld) exit(gameID string) {
	w.t.Helper()
	if err := w.exitPod(engineName(gameID), 0, false); err != nil {
		w.t.Fatalf("stopping the engine of %s: %v", gameID, err)
	}
	w.waitPod(engineName(gameID), "terminated", func(p *corev1.Pod) bool { return p != nil && podEngine(p).State == "exited" })
}

// remove deletes the game's Pod at once (kubectl delete pod --grace-period=0) and waits until it
// is gone.
func (w *kubeWorld) remove(gameID string) {
	w.t.Helper()
	name := engineName(gameID)
	ctx, cancel := w.ctx()
	defer cancel()
	if err := w.cs.CoreV1().Pods(w.ns).Delete(ctx, name, *metav1.NewDeleteOptions(0)); err != nil {
		w.t.Fatalf("kubectl delete pod %s: %v", name, err)
	}
	w.waitPod(name, "gone", func(p *corev1.Pod) bool { return p == nil })
}

// waitPod waits until cond holds for the Pod name (nil: gone).
func (w *kubeWorld) waitPod(name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := suite.k8s.WaitPod(ctx, w.ns, name, cond)
	if err != nil {
		w.t.Fatalf("pod %s/%s %s: %v", w.ns, name, what, err)
	}
	return p
}

// handStart creates, as docs/kubernetes.md says an operator does, a Pod with RTM's owner label,
// the game's id and image annotations, the label com.galaxy.name the game's Service selects on,
// and the game's state claim (created when missing), and waits until it runs.
func (w *kubeWorld) handStart(name, gameID string) string {
	w.t.Helper()
	claim := engineName(gameID)
	w.ensureClaim(claim, gameID)
	mount := "/var/lib/galaxy-game"
	p := enginePod(name, img(v141),
		map[string]string{"com.galaxy.owner": "rtmanager", "com.galaxy.game_id": gameID, "com.galaxy.name": claim},
		map[string]string{"com.galaxy.game_id": gameID, "com.galaxy.image_ref": img(v141)},
		[]corev1.EnvVar{{Name: "GALAXY_GAME_ID", Value: gameID}, {Name: "GALAXY_STATE_DIR", Value: mount}})
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "state", MountPath: mount}}
	p.Spec.Volumes = []corev1.Volume{{Name: "state", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}
	return w.create(p)
}

func (w *kubeWorld) foreign(name string, labels map[string]string) string {
	w.t.Helper()
	return w.create(enginePod(name, img(v141), labels, nil, nil))
}

// create creates p and waits until it runs; it returns its UID.
func (w *kubeWorld) create(p *corev1.Pod) string {
	w.t.Helper()
	ctx, cancel := w.ctx()
	defer cancel()
	created, err := w.cs.CoreV1().Pods(w.ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatalf("creating pod %s: %v", p.Name, err)
	}
	w.waitPod(p.Name, "running", func(p *corev1.Pod) bool { return p != nil && podEngine(p).running() })
	return string(created.UID)
}

// enginePod is a Pod of one engine container, as someone other than RTM makes it.
func enginePod(name, image string, labels, annotations map[string]string, env []corev1.EnvVar) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "engine", Image: image, Env: env}},
		},
	}
}

// ensureClaim creates the state claim name of gameID unless it exists.
func (w *kubeWorld) ensureClaim(name, gameID string) {
	w.t.Helper()
	ctx, cancel := w.ctx()
	defer cancel()
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{"com.galaxy.game_id": gameID}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	if _, err := w.cs.CoreV1().PersistentVolumeClaims(w.ns).Create(ctx, c, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		w.t.Fatalf("creating claim %s: %v", name, err)
	}
}

func (w *kubeWorld) boots(gameID string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := w.bootCount[engineName(gameID)]; n > 0 {
		return strconv.Itoa(n)
	}
	return ""
}

func (w *kubeWorld) stateDir(gameID string) string {
	return "persistentvolumeclaim/" + engineName(gameID)
}

func (w *kubeWorld) stateExists(gameID string) bool {
	w.t.Helper()
	ctx, cancel := w.ctx()
	defer cancel()
	_, err := w.cs.CoreV1().PersistentVolumeClaims(w.ns).Get(ctx, engineName(gameID), metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		w.t.Fatalf("get claim %s: %v", engineName(gameID), err)
	}
	return err == nil
}

// checkPod checks the game's Pod, Service and claim as docs/kubernetes.md describes them: RTM's
// labels and annotations, restart policy Never, the locked-down security context, the engine's
// resources as requests and limits, its environment, the claim mounted at the state mount, and a
// headless Service of the same name.
func (w *kubeWorld) checkPod(t *testing.T, g string, cfg config.Config) {
	t.Helper()
	name := engineName(g)
	p := w.pod(name)
	expect(t, p != nil, "no pod %s", name)
	expect(t, p.Labels["com.galaxy.owner"] == "rtmanager" && p.Labels["com.galaxy.game_id"] == g &&
		p.Labels["com.galaxy.name"] == name && p.Annotations["com.galaxy.image_ref"] == img(v141),
		"labels %v, annotations %v", p.Labels, p.Annotations)
	expect(t, p.Spec.RestartPolicy == corev1.RestartPolicyNever, "restart policy %q", p.Spec.RestartPolicy)
	sc := p.Spec.SecurityContext
	expect(t, sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot && sc.SeccompProfile != nil &&
		sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault, "pod security context %+v", sc)
	ctr := p.Spec.Containers[0]
	csc := ctr.SecurityContext
	expect(t, csc != nil && csc.Capabilities != nil && slices.Contains(csc.Capabilities.Drop, "ALL") &&
		csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation &&
		csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem, "container security context %+v", csc)
	lim, req := ctr.Resources.Limits, ctr.Resources.Requests
	expect(t, lim.Memory().Value() == cfg.EngineMemoryBytes && lim.Cpu().MilliValue() == cfg.EngineNanoCPUs/1e6 &&
		req.Memory().Equal(*lim.Memory()) && req.Cpu().Equal(*lim.Cpu()), "resources %+v", ctr.Resources)
	env := map[string]string{}
	for _, e := range ctr.Env {
		env[e.Name] = e.Value
	}
	expect(t, env["GALAXY_GAME_ID"] == g && env["GALAXY_STATE_DIR"] == cfg.EngineStateMount, "engine environment %v", env)
	mounted := false
	for _, v := range p.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == name {
			for _, m := range ctr.VolumeMounts {
				mounted = mounted || (m.Name == v.Name && m.MountPath == cfg.EngineStateMount)
			}
		}
	}
	expect(t, mounted, "the claim %s is not mounted at %s: %+v %+v", name, cfg.EngineStateMount, p.Spec.Volumes, ctr.VolumeMounts)
	expect(t, w.stateExists(g), "no state claim %s", name)
	ctx, cancel := w.ctx()
	defer cancel()
	svc, err := w.cs.CoreV1().Services(w.ns).Get(ctx, name, metav1.GetOptions{})
	expect(t, err == nil && svc.Spec.ClusterIP == corev1.ClusterIPNone && svc.Spec.Selector["com.galaxy.name"] == name,
		"service %s: %v %+v", name, err, svc)
}

// ---- credentials ----

// applyRBAC applies the Role and RoleBinding of docs/kubernetes/rbac.yaml in namespace ns, the
// binding's subject the user (a client certificate of env.AddUser) instead of the manifest's
// ServiceAccount; objects that exist are left as they are.
func applyRBAC(t *testing.T, ns, user string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(suite.root, "docs", "kubernetes", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rbac := suite.k8s.Client().RbacV1()
	applied := 0
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("rbac.yaml: %v", err)
		}
		switch meta.Kind {
		case "Role":
			var role rbacv1.Role
			if err := yaml.Unmarshal([]byte(doc), &role); err != nil {
				t.Fatalf("rbac.yaml: Role: %v", err)
			}
			role.Namespace = ns
			_, err = rbac.Roles(ns).Create(ctx, &role, metav1.CreateOptions{})
		case "RoleBinding":
			var binding rbacv1.RoleBinding
			if err := yaml.Unmarshal([]byte(doc), &binding); err != nil {
				t.Fatalf("rbac.yaml: RoleBinding: %v", err)
			}
			binding.Namespace = ns
			binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
			_, err = rbac.RoleBindings(ns).Create(ctx, &binding, metav1.CreateOptions{})
		default:
			continue
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("applying rbac.yaml's %s in %s: %v", meta.Kind, ns, err)
		}
		applied++
	}
	if applied != 2 {
		t.Fatalf("rbac.yaml: %d Role and RoleBinding applied, want one of each", applied)
	}
}

// kubeconfigVia writes a copy of the kubeconfig file path whose clusters are reached at server
// (a forwarder in front of the API server) and returns the copy's path.
func kubeconfigVia(t *testing.T, path, server string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatalf("kubeconfig %s: %v", path, err)
	}
	for _, c := range cfg.Clusters {
		c.Server = server
	}
	out := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// apiServerAddr is host:port of the suite's API server.
func apiServerAddr(t *testing.T) string {
	t.Helper()
	host := suite.k8s.Config().Host
	if u, err := url.Parse(host); err == nil && u.Host != "" {
		return u.Host
	}
	return host
}
