package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

func cmdTokenIssue(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token issue", stderr)
	kinds := fs.String("kinds", "", "comma-separated callback kinds, e.g. b2c.result,b2c.timeout")
	shortcode := fs.String("shortcode", "", "business shortcode the callbacks are for")
	reference := fs.String("reference", "", "your reference, carried in the Daraja-Reference header")
	ttl := fs.String("ttl", "", "lifetime, e.g. 1h (default tokens.default_ttl)")
	reusable := fs.Bool("reusable", false, "not consumed by its first callback (C2B registered URLs)")
	path := configFlag(fs, "configuration file (admin address and key)")
	adminURL := fs.String("admin", "", "admin API base URL (default from admin.listen)")
	keyFile := fs.String("api-key-file", "", "file holding the admin API key")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *kinds == "" || *shortcode == "" {
		return usageError("token issue: --kinds and --shortcode are required")
	}
	req := verify.IssueRequest{Shortcode: *shortcode, Reference: *reference, TTL: *ttl, Reusable: *reusable}
	for _, k := range strings.Split(*kinds, ",") {
		req.Kinds = append(req.Kinds, daraja.Kind(strings.TrimSpace(k)))
	}

	cfg, haveCfg, err := clientConfig(*path, stderr)
	if err != nil {
		return err
	}
	base := *adminURL
	if base == "" {
		base = "http://" + loopbackAddr(cfg.Admin.Listen)
	}
	key, err := adminKey(cfg, haveCfg, *keyFile)
	if err != nil {
		return err
	}

	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+"/v1/tokens", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("token issue: %w", err)
	}
	hreq.Header.Set("Authorization", "Bearer "+key)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return fmt.Errorf("token issue: admin API at %s: %w", base, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("token issue: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("token issue: admin API answered %s: %s", resp.Status, bytes.TrimSpace(out))
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, out, "", "  ") == nil {
		out = append(pretty.Bytes(), '\n')
	}
	_, err = stdout.Write(out)
	return err
}

func adminKey(cfg config.Config, haveCfg bool, keyFile string) (string, error) {
	if k := os.Getenv("DARAJA_EDGE_ADMIN_KEY"); k != "" && keyFile == "" {
		return k, nil
	}
	if keys := cfg.Admin.Keys(); haveCfg && keyFile == "" && len(keys) > 0 {
		return keys[0], nil
	}
	if keyFile == "" {
		keyFile = cfg.Admin.KeyFile
	}
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return "", errors.New("token issue: no admin API key: set DARAJA_EDGE_ADMIN_KEY, admin.api_keys, or --api-key-file (" + err.Error() + ")")
	}
	return strings.TrimSpace(string(data)), nil
}
