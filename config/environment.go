package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// probePrefix starts the name of the file CheckEnvironment creates and
// removes to prove a directory writable.
const probePrefix = ".daraja-edge-probe-"

// CheckEnvironment checks what Validate leaves alone because it needs the
// filesystem as the edge will use it: every directory the edge writes —
// spool.dir; nats.embedded.store_dir with embedded NATS; tls.storage with
// tls.mode acme (unless "nats"); the directory of admin.key_file when
// api_keys holds no key and serve may generate one — is writable, or can
// be created. `check` and `serve` both call it, so a check that passes
// means serve will not fail on these.
//
// It leaves nothing behind: writability is proven by creating and removing
// a probe file, and no directory is created. A directory that does not
// exist yet passes when its nearest existing ancestor is a writable
// directory. The error splits with Problems, one per directory.
func CheckEnvironment(c Config) error {
	type dir struct{ key, path string }
	dirs := []dir{{"spool.dir", c.Spool.Dir}}
	if c.NATS.URL == "" {
		dirs = append(dirs, dir{"nats.embedded.store_dir", c.NATS.Embedded.StoreDir})
	}
	if c.TLS.Mode == TLSACME && c.TLS.Storage != "nats" {
		dirs = append(dirs, dir{"tls.storage", c.TLS.Storage})
	}
	if len(c.Admin.Keys()) == 0 && c.Admin.KeyFile != "" {
		dirs = append(dirs, dir{"admin.key_file", filepath.Dir(c.Admin.KeyFile)})
	}
	var problems []error
	for _, d := range dirs {
		if d.path == "" {
			continue // Validate reports it
		}
		if err := writableDir(d.path); err != nil {
			problems = append(problems, &Problem{Key: d.key, Msg: err.Error()})
		}
	}
	return errors.Join(problems...)
}

// writableDir reports why the edge could not create files in path, or nil.
func writableDir(path string) error {
	p := filepath.Clean(path)
	for {
		st, err := os.Stat(p)
		switch {
		case err == nil && !st.IsDir():
			if p == filepath.Clean(path) {
				return fmt.Errorf("%q is a file, not a directory", path)
			}
			return fmt.Errorf("%q cannot be created: %s is a file, not a directory", path, p)
		case err == nil:
			if err := probe(p); err != nil {
				if p == filepath.Clean(path) {
					return fmt.Errorf("%q is not writable: %w", path, err)
				}
				return fmt.Errorf("%q cannot be created: %s is not writable: %w", path, p, err)
			}
			return nil
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
			parent := filepath.Dir(p)
			if parent == p {
				return fmt.Errorf("%q cannot be created: %w", path, err)
			}
			p = parent
		default:
			return fmt.Errorf("%q cannot be used: %w", path, unwrapPath(err))
		}
	}
}

// probe creates and removes a file in dir.
func probe(dir string) error {
	f, err := os.CreateTemp(dir, probePrefix+"*")
	if err != nil {
		return unwrapPath(err)
	}
	name := f.Name()
	_, werr := f.Write([]byte("probe\n"))
	cerr := f.Close()
	rerr := os.Remove(name)
	return errors.Join(werr, cerr, rerr)
}

// unwrapPath drops the path an *fs.PathError repeats: the message names it.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
