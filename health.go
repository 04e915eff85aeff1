package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// cmdHealth asks a running edge's /readyz; exit 0 when ready, 1 when not.
// Distroless images have no curl: this is the container HEALTHCHECK.
func cmdHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("health", stderr)
	path := configFlag(fs, "configuration file (admin address)")
	adminURL := fs.String("admin", "", "admin base URL (default from admin.listen)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	base := *adminURL
	if base == "" {
		cfg, _, err := clientConfig(*path, stderr)
		if err != nil {
			return err
		}
		base = "http://" + loopbackAddr(cfg.Admin.Listen)
	} else if _, err := findConfig(*path, false); err != nil {
		// --admin says where to ask, but a --config (or $DARAJA_EDGE_CONFIG)
		// that does not exist is still a mistake to report, not to ignore.
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(stdout, "%s\n", strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK {
		return &exitError{code: 1}
	}
	return nil
}

// loopbackAddr turns a listen address into one to dial on this host.
func loopbackAddr(listen string) string {
	host, port, _ := net.SplitHostPort(listen)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
