package forward

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/daraja-edge/daraja-edge/config"
)

// TestSecretsFile: a destination's secrets_file signs too (with the
// secrets listed inline), so a rotation can be a file change.
func TestSecretsFile(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	file := filepath.Join(t.TempDir(), "shop.secrets")
	if err := os.WriteFile(file, []byte("# shop, rotated\n"+secretB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := destination("shop", a.srv.URL)
	d.Secrets, d.SecretsFile = []string{secretA}, file
	f := e.start(nil, d)
	e.store("b2c.result", "600000", "AG_1", "tok_abcdefghijklmnop", body("b2c.result", "AG_1"))
	eventually(t, "delivered, verified with both secrets", func() bool {
		ds, err := f.Deliveries(context.Background(), "shop", "AG_1", StateDelivered, 0)
		return err == nil && len(ds) == 1
	})
	d.SecretsFile = filepath.Join(t.TempDir(), "missing")
	if _, err := New(Options{Destinations: []config.Destination{d}}); err == nil {
		t.Error("a missing secrets_file is accepted")
	}
}
