package spool

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
	"github.com/nats-io/nats.go"
)

// TestPowerCut runs the spool on a filesystem that drops whatever was not
// fsynced when the power is cut: every record Append accepted survives, a
// drained segment stays deleted, and a cut in the middle of a replay
// replays the rest again. The control, with fsync skipped, must lose
// accepted records, so the test is shown able to see a loss.
func TestPowerCut(t *testing.T) {
	for _, mode := range []lazyfs.NamespaceMode{lazyfs.StrictNamespace, lazyfs.JournaledNamespace} {
		for _, noSync := range []bool{false, true} {
			name := fmt.Sprintf("%s/synced", mode)
			if noSync {
				name = fmt.Sprintf("%s/control-no-fsync", mode)
			}
			t.Run(name, func(t *testing.T) {
				lfs := lazyfs.MountT(t, "", lazyfs.Options{Namespace: mode})
				rel := filepath.Join("data", "spool") // Open creates both
				s := mustOpen(t, filepath.Join(lfs.MountPoint(), rel), Options{NoSync: noSync})
				for i := range 5 {
					if err := s.Append(msg(i)); err != nil {
						t.Fatal(err)
					}
				}
				// NATS refuses record 2: the first segment stays, sealed.
				errNATS := errors.New("nats down")
				if _, err := s.Drain(context.Background(), func(_ context.Context, m *nats.Msg) error {
					if ids([]*nats.Msg{m})[0] == 2 {
						return errNATS
					}
					return nil
				}); !errors.Is(err, errNATS) {
					t.Fatalf("first drain: %v", err)
				}
				for i := 5; i < 10; i++ { // into a second segment
					if err := s.Append(msg(i)); err != nil {
						t.Fatal(err)
					}
				}
				// The next drain finishes the first segment (deleted: nothing
				// fsyncs the directory after that but the spool itself) and
				// the power goes while record 7 is being replayed.
				errCut := errors.New("power cut")
				_, err := s.Drain(context.Background(), func(_ context.Context, m *nats.Msg) error {
					if ids([]*nats.Msg{m})[0] == 7 {
						if err := lfs.Crash(); err != nil {
							t.Fatal(err)
						}
						return errCut
					}
					return nil
				})
				if !errors.Is(err, errCut) {
					t.Fatalf("drain: %v", err)
				}
				s.Close()

				s = mustOpen(t, filepath.Join(lfs.BackingDir(), rel), Options{})
				got := ids(collect(t, s))
				t.Logf("after the cut: replayed %v, corrupt %d", got, s.Corrupt())
				if noSync {
					if len(got) >= 5 {
						t.Fatalf("control lost nothing (%v): the test cannot see a loss", got)
					}
					return
				}
				// 5 and 6 were published before the cut but their segment was
				// not drained: at least once, under their Nats-Msg-Id.
				if want := []int{5, 6, 7, 8, 9}; !slices.Equal(got, want) {
					t.Fatalf("after the cut replayed %v, want %v", got, want)
				}
				if s.Corrupt() != 0 {
					t.Errorf("corrupt %d", s.Corrupt())
				}
			})
		}
	}
}
