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

// cut is one power-cut run against nats-server.
type cut struct {
	name       string
	mode       NamespaceMode
	syncAlways bool
	// warm runs a server first that creates warmStream and ends cleanly, its
	// state synced: the store existed long before the cut.
	warm       bool
	warmStream string
	// maxBytes up to 128 kB makes nats-server use its smallest message
	// blocks, 32 kB (filestore.go dynBlkSize): new block files are created
	// during the run.
	maxBytes int64
	msgSize  int
	check    func(acked, survived int) error
}

// powerCut runs nats-server with its store on a lazy filesystem, publishes
// to stream S, cuts the power, and starts a new server on what survived.
func powerCut(t *testing.T, c cut) (acked, survived int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := MountT(t, "", Options{Namespace: c.mode})

	cfg := jetstream.StreamConfig{Name: streamName, Subjects: []string{"s.>"}, Storage: jetstream.FileStorage, MaxBytes: c.maxBytes}
	if c.warm {
		ns, stop := startServer(t, f.MountPoint(), c.syncAlways)
		_, js := natstest.Connect(t, ns)
		wcfg := cfg
		if c.warmStream != streamName {
			wcfg = jetstream.StreamConfig{Name: c.warmStream, Subjects: []string{"w.>"}, Storage: jetstream.FileStorage}
		}
		if _, err := js.CreateStream(ctx, wcfg); err != nil {
			t.Fatal(err)
		}
		stop()
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}

	ns, stop := startServer(t, f.MountPoint(), c.syncAlways)
	_, js := natstest.Connect(t, ns)
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	payload := []byte("a callback that was answered 200")
	if c.msgSize > 0 {
		payload = make([]byte, c.msgSize)
	}
	for i := range publishes {
		if _, err := js.Publish(ctx, fmt.Sprintf("s.%d", i), payload); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		acked++
	}
	if err := f.Crash(); err != nil {
		t.Fatal(err)
	}
	stop()

	t.Logf("backing directory after the cut: %v", listTree(t, f.BackingDir()))
	ns2, _ := startServer(t, f.BackingDir(), c.syncAlways)
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

func lost(acked, survived int) error {
	if survived >= acked {
		return errors.New("the control lost nothing: this test cannot see a loss")
	}
	return nil
}

func allKept(acked, survived int) error {
	if survived != acked {
		return fmt.Errorf("%d acknowledged messages lost with SyncAlways", acked-survived)
	}
	return nil
}

// TestPowerCutNATS cuts the power under nats-server v2.15.2. What it
// fsyncs (server/filestore.go): with SyncAlways every message block write
// (flushPendingMsgsLocked, 8926–8927) and every small file it writes
// atomically (writeAtomicallyWithTemp, 14797–14829: O_SYNC, rename, fsync
// of the directory); the directory of a removed or compacted block
// (syncBlocks, 8505–8511). It never fsyncs the parent of a directory it
// creates (stream, msgs and obs directories, 439–491; jetstream.go 449,
// 1291) nor msgs/ after creating a block file (newMsgBlockForWrite, 5308).
// ext4 forgives that (JournaledNamespace); strict POSIX does not.
func TestPowerCutNATS(t *testing.T) {
	for _, c := range []cut{{
		// The control: NATS's default, fsync every two minutes, ack at once.
		name: "control", mode: JournaledNamespace, check: lost,
	}, {
		// The control on a stream created long before: the stream is there
		// after the cut, its messages are not.
		name: "control-warm", mode: JournaledNamespace, warm: true, warmStream: streamName, check: lost,
	}, {
		name: "sync-always", mode: JournaledNamespace, syncAlways: true, check: allKept,
	}, {
		name: "sync-always-rollover", mode: JournaledNamespace, syncAlways: true,
		maxBytes: 120_000, msgSize: 150, check: allKept,
	}, {
		// Strict POSIX, stream created before the run: its directories are
		// durable and its one message block is not new.
		name: "sync-always-strict-warm", mode: StrictNamespace, syncAlways: true,
		warm: true, warmStream: streamName, check: allKept,
	}, {
		// Strict POSIX, first start: nothing nats-server created is in a
		// directory it fsynced, so the whole store is lost although every
		// message was fsynced. A finding, pinned here.
		name: "sync-always-strict-first-start", mode: StrictNamespace, syncAlways: true,
		check: func(acked, survived int) error {
			if survived != 0 {
				return fmt.Errorf("the stream survived a first start in strict mode (%d messages): has nats-server started syncing directories?", survived)
			}
			return nil
		},
	}, {
		// Strict POSIX, a stream created on a server that has run before:
		// streams/ is never fsynced after the new stream's directory is
		// made in it.
		name: "sync-always-strict-new-stream", mode: StrictNamespace, syncAlways: true,
		warm: true, warmStream: "W",
		check: func(acked, survived int) error {
			if survived != 0 {
				return fmt.Errorf("a stream created on a running store survived in strict mode (%d messages)", survived)
			}
			return nil
		},
	}, {
		// Strict POSIX, an old stream whose blocks roll over during the
		// run: the new block files are fsynced, their directory is not.
		name: "sync-always-strict-rollover", mode: StrictNamespace, syncAlways: true,
		warm: true, warmStream: streamName, maxBytes: 120_000, msgSize: 150,
		check: func(acked, survived int) error {
			if survived == 0 || survived >= acked {
				return fmt.Errorf("want the first block kept and the rolled-over ones lost, got %d of %d", survived, acked)
			}
			return nil
		},
	}} {
		t.Run(c.name, func(t *testing.T) {
			acked, survived := powerCut(t, c)
			t.Logf("POWERCUT lazyfs-%s acked=%d survived=%d lost=%d", c.name, acked, survived, acked-survived)
			if err := c.check(acked, survived); err != nil {
				t.Fatal(err)
			}
		})
	}
}
