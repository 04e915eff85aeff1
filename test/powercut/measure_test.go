//go:build powercut

package powercut

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
)

// envMeasure turns TestMeasureSync on.
const envMeasure = "DARAJA_POWERCUT_MEASURE"

// TestMeasureSync measures what nats.embedded.sync costs: callbacks
// answered per second by a running edge (a child process, embedded NATS,
// single-use tokens issued beforehand, keep-alive TLS from the allowlisted
// source, 16 in flight), with sync "always" and with intervals, its store
// on the real disk and on the lazy filesystem (which keeps everything in
// memory: there an fsync costs the FUSE round trip, not a disk flush).
// Every combination runs once per round, interleaved, three rounds; each
// run is a fresh edge on an empty store, warmed with 200 callbacks first.
// It prints a MEASURE line per run and the median per combination.
//
// Off unless DARAJA_POWERCUT_MEASURE=1; run it without -race, on a machine
// doing nothing else:
//
//	DARAJA_POWERCUT_MEASURE=1 go test -count=1 -tags powercut -run '^TestMeasureSync$' -v ./test/powercut
func TestMeasureSync(t *testing.T) {
	if os.Getenv(envMeasure) != "1" {
		t.Skipf("a measurement, not a test: set %s=1 (and leave -race off)", envMeasure)
	}
	lazyfs.Require(t)
	const (
		rounds   = 3
		warm     = 200
		measured = 2000
	)
	syncs := []string{"always", "1s", "2m"}
	stores := []string{"disk", "lazyfs"}
	rates := map[string][]float64{}
	for round := 1; round <= rounds; round++ {
		for _, store := range stores {
			for _, every := range syncs {
				key := fmt.Sprintf("store=%s sync=%s", store, every)
				t.Run(fmt.Sprintf("round%d/%s/%s", round, store, every), func(t *testing.T) {
					rate := measureOnce(t, store, every, warm, measured)
					rates[key] = append(rates[key], rate)
					line := fmt.Sprintf("MEASURE %s round=%d callbacks=%d rate=%.0f/s", key, round, measured, rate)
					t.Log(line)
					fmt.Fprintln(os.Stderr, line)
				})
			}
		}
	}
	for _, store := range stores {
		base := median(rates[fmt.Sprintf("store=%s sync=always", store)])
		for _, every := range syncs {
			key := fmt.Sprintf("store=%s sync=%s", store, every)
			m := median(rates[key])
			line := fmt.Sprintf("MEASURE median %s rate=%.0f/s runs=%v vs_always=%.2fx", key, m, roundAll(rates[key]), m/base)
			t.Log(line)
			fmt.Fprintln(os.Stderr, line)
		}
	}
}

// measureOnce starts an edge with its store on store ("disk" or "lazyfs")
// and nats.embedded.sync set to every, and returns the callbacks per second
// it answers 200 to, measured over n callbacks after warm ones.
func measureOnce(t *testing.T, store, every string, warm, n int) float64 {
	t.Helper()
	dir := t.TempDir() // ext4 here
	if store == "lazyfs" {
		dir = lazyfs.MountT(t, "", lazyfs.Options{Namespace: lazyfs.JournaledNamespace}).MountPoint()
	}
	tl := makeTLS(t)
	conf := edgeConf{
		public: freeAddr(t), admin: freeAddr(t), embedded: freeAddr(t),
		storeDir: filepath.Join(dir, "nats"), spoolDir: filepath.Join(dir, "spool"),
		sync: every, tls: tl, certStorage: t.TempDir(),
	}
	path, _ := writeConf(t, conf)
	a := newAPI(conf.public, conf.admin, tl.roots, nil)
	t.Cleanup(a.close)
	ch := startChild(t, "edge", "edge", path, "")
	a.waitReady(t, ch, 60*time.Second)
	toks := issueN(t, a, warm+n)
	send := func(from, to int) time.Duration {
		var next atomic.Int64
		next.Store(int64(from))
		var failed atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < to; i = int(next.Add(1)) - 1 {
					if a.post(context.Background(), toks[i].Token, fmt.Sprintf("ws_CO_measure_%06d", i)) != http.StatusOK {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if f := failed.Load(); f > 0 {
			t.Fatalf("%d callbacks not answered 200", f)
		}
		return time.Since(start)
	}
	send(0, warm)
	took := send(warm, warm+n)
	ch.stop(t)
	return float64(n) / took.Seconds()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func roundAll(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x + 0.5)
	}
	return out
}
