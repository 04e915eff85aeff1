package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// startServer starts a JetStream server on storeDir; stop shuts it down.
func startServer(t *testing.T, storeDir string, syncAlways bool) (ns *server.Server, stop func()) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: storeDir,
		SyncAlways: syncAlways, NoSigs: true, NoLog: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	}
	t.Cleanup(stop)
	return ns, stop
}

const (
	streamName = "S"
	publishes  = 500
)

// powerCut runs nats-server with its store on a lazy filesystem, publishes,
// cuts the power, and starts a new server on what survived. warm creates
// the stream in an earlier run that ended cleanly, so only the messages are
// new at the cut.
func powerCut(t *testing.T, mode NamespaceMode, syncAlways, warm bool) (acked, survived int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := MountT(t, "", Options{Namespace: mode})

	cfg := jetstream.StreamConfig{Name: streamName, Subjects: []string{"s.>"}, Storage: jetstream.FileStorage}
	if warm {
		ns, stop := startServer(t, f.MountPoint(), syncAlways)
		_, js := natstest.Connect(t, ns)
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		stop()
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}

	ns, stop := startServer(t, f.MountPoint(), syncAlways)
	_, js := natstest.Connect(t, ns)
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for i := range publishes {
		if _, err := js.Publish(ctx, fmt.Sprintf("s.%d", i), []byte("a callback that was answered 200")); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		acked++
	}
	if err := f.Crash(); err != nil {
		t.Fatal(err)
	}
	stop()

	t.Logf("backing directory after the cut: %v", listTree(t, f.BackingDir()))
	ns2, _ := startServer(t, f.BackingDir(), syncAlways)
	_, js2 := natstest.Connect(t, ns2)
	s, err := js2.Stream(ctx, streamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return acked, 0
	}
	if err != nil {
		t.Fatal(err)
	}
	st := s.CachedInfo().State
	if st.Msgs > 0 && (st.FirstSeq != 1 || st.LastSeq != st.Msgs) {
		t.Errorf("survivors are not a prefix of what was acked: first %d, last %d, %d messages", st.FirstSeq, st.LastSeq, st.Msgs)
	}
	return acked, int(st.Msgs)
}

// listTree lists the files under dir with their sizes.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out = append(out, rel+"/")
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s(%d)", rel, info.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPowerCutNATS(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mode       NamespaceMode
		syncAlways bool
		warm       bool
		check      func(acked, survived int) error
	}{{
		// The control: NATS's default, fsync every two minutes, ack at once.
		name: "control", mode: JournaledNamespace,
		check: func(acked, survived int) error {
			if survived >= acked {
				return errors.New("the control lost nothing: this test cannot see a loss")
			}
			return nil
		},
	}, {
		// The control on a stream created long before the run: the stream
		// is there after the cut, its messages are not.
		name: "control-warm", mode: JournaledNamespace, warm: true,
		check: func(acked, survived int) error {
			if survived >= acked {
				return errors.New("the control lost nothing: this test cannot see a loss")
			}
			return nil
		},
	}, {
		name: "sync-always", mode: JournaledNamespace, syncAlways: true,
		check: func(acked, survived int) error {
			if survived != acked {
				return fmt.Errorf("%d acknowledged messages lost with SyncAlways", acked-survived)
			}
			return nil
		},
	}, {
		// Strict POSIX, stream created before the run: the stream's
		// directories are durable, its message block is not new.
		name: "sync-always-strict-warm", mode: StrictNamespace, syncAlways: true, warm: true,
		check: func(acked, survived int) error {
			if survived != acked {
				return fmt.Errorf("%d acknowledged messages lost with SyncAlways", acked-survived)
			}
			return nil
		},
	}, {
		// Strict POSIX, first start: nats-server never fsyncs the directory
		// it creates a stream in (filestore.go newFileStoreWithCreated
		// MkdirAll, no syncDir of the parent), so the stream itself is lost
		// although every message was fsynced. A finding, pinned here.
		name: "sync-always-strict-first-start", mode: StrictNamespace, syncAlways: true,
		check: func(acked, survived int) error {
			if survived != 0 {
				return fmt.Errorf("the stream survived a first start in strict mode (%d messages): has nats-server started syncing directories?", survived)
			}
			return nil
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			acked, survived := powerCut(t, tc.mode, tc.syncAlways, tc.warm)
			t.Logf("POWERCUT lazyfs-%s acked=%d survived=%d lost=%d", tc.name, acked, survived, acked-survived)
			if err := tc.check(acked, survived); err != nil {
				t.Fatal(err)
			}
		})
	}
}
