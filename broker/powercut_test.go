package broker

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
)

// TestSyncStoreFirstStart: on a filesystem that makes a directory entry
// durable only with a fsync of its directory (strict POSIX, as lazyfs
// models it), nats-server's own sync-always loses a stream created just
// before a power cut, with everything acknowledged into it, because it
// never fsyncs the directories it creates. SyncStore after creating the
// stream keeps it. The control (no SyncStore) must lose, or the test could
// not see a loss.
func TestSyncStoreFirstStart(t *testing.T) {
	for _, c := range []struct {
		name      string
		syncStore bool
	}{{"control without SyncStore", false}, {"SyncStore after creating the stream", true}} {
		t.Run(c.name, func(t *testing.T) {
			fs := lazyfs.MountT(t, "", lazyfs.Options{Namespace: lazyfs.StrictNamespace})
			store := filepath.Join(fs.MountPoint(), "nats")
			b, err := Start(context.Background(), Options{EmbeddedListen: "127.0.0.1:0", EmbeddedStoreDir: store, Name: "t"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if _, err := b.JetStream.CreateStream(ctx, jetstream.StreamConfig{Name: "DARAJA", Subjects: []string{"cb.>"}}); err != nil {
				t.Fatal(err)
			}
			if c.syncStore {
				if err := b.SyncStore(store); err != nil {
					t.Fatal(err)
				}
			}
			acked := 0
			for i := range 50 {
				if _, err := b.JetStream.Publish(ctx, fmt.Sprintf("cb.%d", i), []byte("x")); err != nil {
					t.Fatal(err)
				}
				acked++
			}
			if err := fs.Crash(); err != nil {
				t.Fatal(err)
			}
			b.Close()

			after, err := Start(ctx, Options{EmbeddedListen: "127.0.0.1:0", EmbeddedStoreDir: filepath.Join(fs.BackingDir(), "nats"), Name: "t"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer after.Close()
			survived := 0
			if st, err := after.JetStream.Stream(ctx, "DARAJA"); err == nil {
				info, _ := st.Info(ctx)
				survived = int(info.State.Msgs)
			}
			t.Logf("POWERCUT broker-first-start %q acked=%d survived=%d", c.name, acked, survived)
			if c.syncStore && survived != acked {
				t.Fatalf("%d of %d acknowledged messages survived", survived, acked)
			}
			if !c.syncStore && survived == acked {
				t.Fatal("the control lost nothing: this test cannot see a loss")
			}
		})
	}
}
