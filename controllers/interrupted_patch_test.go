package controllers_test

import (
	"context"
	"path/filepath"
	"testing"

	rtm "github.com/galaxy-platform/rtmanager"
)

// A patch whose reconcile stopped half-way (its process died or lost the lease) leaves a pending
// patch and the game somewhere between the old engine and the new one. The next reconcile, in any
// process, must finish it as a patch (verify the new engine, roll back when it fails), never
// settle or start it as if it were done: here the new engine is sick, so every case ends with the
// patch rolled back and the old image running again.
func TestGameReconciler_Reconcile_interruptedPatchIsVerifiedNotSettled(t *testing.T) {
	for _, tc := range []struct {
		name string
		// launched: the new engine was created and started; shown: the record was moved onto it.
		launched, shown bool
	}{
		{name: "old engine removed, new one not launched"},
		{name: "new engine launched, record not moved yet", launched: true},
		{name: "new engine under verification", launched: true, shown: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			ctx := context.Background()
			g := r.running("half")
			old, err := r.inspect(g)
			if err != nil {
				t.Fatal(err)
			}
			bad := rtm.Request{GameID: g, Kind: rtm.OpPatch, ImageRef: repo + ":1.4.3", OldImageRef: repo + ":1.4.1", RequestID: "half"}
			bad.Channel = r.submit(bad).Request.Channel
			rec := r.record(g)

			// What patch had done when it was interrupted.
			if _, err := r.store.Commit(ctx, rtm.Change{GameID: g, Gen: rec.Generation, Apply: func(x *rtm.Record, _ bool) {
				x.Status = rtm.StatusStopping
			}}); err != nil {
				t.Fatal(err)
			}
			if err := r.docker.Stop(ctx, old.ID, 0); err != nil {
				t.Fatal(err)
			}
			if err := r.docker.Remove(ctx, old.ID); err != nil {
				t.Fatal(err)
			}
			var id string
			if tc.launched {
				id, err = r.docker.Create(ctx, rtm.ContainerSpec{GameID: g, ImageRef: bad.ImageRef, Generation: rec.ContainerGeneration,
					StateDir: filepath.Join(r.root, g), StateMount: "/var/lib/galaxy-game", Network: network, ReadOnlyRoot: true,
					MemoryBytes: 64 << 20, NanoCPUs: 1e9, PidsLimit: 64,
					Env: map[string]string{"GALAXY_GAME_ID": g, "GALAXY_STATE_DIR": "/var/lib/galaxy-game"}})
				if err != nil {
					t.Fatal(err)
				}
				if err := r.docker.Start(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if tc.shown {
				if _, err := r.store.Commit(ctx, rtm.Change{GameID: g, Gen: rec.Generation, Apply: func(x *rtm.Record, _ bool) {
					x.Status, x.CurrentContainerID, x.CurrentImageRef = rtm.StatusStarting, id, bad.ImageRef
				}}); err != nil {
					t.Fatal(err)
				}
			}

			r.reconcile(g)
			if a := r.answer(bad); a == nil || a.Code != rtm.CodePatchRolledBack {
				t.Fatalf("interrupted patch to a sick engine answered %+v, want patch_rolled_back", a)
			}
			rec = r.record(g)
			if rec.Status != rtm.StatusRunning || rec.CurrentImageRef != repo+":1.4.1" || rec.DesiredImageRef != repo+":1.4.1" {
				t.Fatalf("after the interrupted patch: %+v", rec)
			}
			if c, err := r.inspect(g); err != nil || !c.Running() || c.ImageRef != repo+":1.4.1" || c.ID == id || c.ID != rec.CurrentContainerID {
				t.Fatalf("container after the rollback: %+v %v", c, err)
			}
			if n := r.ops(g, rtm.OpPatch); n != 1 {
				t.Fatalf("%d patch rows, want 1", n)
			}
		})
	}
}
