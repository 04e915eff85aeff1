package edge

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/daraja-edge/daraja-edge/config"
	"go.uber.org/zap"
)

// TestAdminKeyFile: with no admin.api_keys the edge generates a key into
// admin.key_file (0600) and reads the same one back on the next start; a
// key the operator wrote there is used, or, when too short for the log
// redaction, refused by name and left as it was (it was overwritten by a
// generated one before).
func TestAdminKeyFile(t *testing.T) {
	dir := t.TempDir()
	a := config.Admin{KeyFile: filepath.Join(dir, "sub", "admin.key")}
	first, err := adminKeys(a, zap.NewNop())
	if err != nil || len(first) != 1 || len(first[0]) < 20 {
		t.Fatalf("generated: %q %v", first, err)
	}
	if st, err := os.Stat(a.KeyFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	again, err := adminKeys(a, zap.NewNop())
	if err != nil || again[0] != first[0] {
		t.Fatalf("second start: %q %v, want the generated key again", again, err)
	}
	for _, c := range []struct {
		name, content, want, wantErr string
	}{
		{"operator's key", "operator-written-admin-key-42\n", "operator-written-admin-key-42", ""},
		{"too short", "short-key-16char\n", "", "shorter than 20 characters"},
		{"empty file", "\n", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := config.Admin{KeyFile: filepath.Join(t.TempDir(), "admin.key")}
			if err := os.WriteFile(a.KeyFile, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			keys, err := adminKeys(a, zap.NewNop())
			after, _ := os.ReadFile(a.KeyFile)
			switch {
			case c.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), a.KeyFile) {
					t.Fatalf("error %v, want one naming the file and %q", err, c.wantErr)
				}
				if string(after) != c.content {
					t.Fatalf("the operator's file was changed to %q", after)
				}
			case err != nil:
				t.Fatal(err)
			case c.want != "" && keys[0] != c.want:
				t.Fatalf("key %q, want %q", keys[0], c.want)
			case c.want == "" && (len(keys[0]) < 20 || strings.TrimSpace(string(after)) != keys[0]):
				t.Fatalf("generated %q, file holds %q", keys[0], after)
			}
		})
	}
}
