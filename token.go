package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// adminFlags are the flags every admin API client command takes.
type adminFlags struct {
	config, admin, keyFile *string
}

func addAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		config:  configFlag(fs, "configuration file (admin address and key)"),
		admin:   fs.String("admin", "", "admin API base URL (default from admin.listen)"),
		keyFile: fs.String("api-key-file", "", "file holding the admin API key"),
	}
}

// call sends one admin API request and returns the answer's body when its
// status is want; any other status is an error quoting the answer.
func (a adminFlags) call(ctx context.Context, what, method, path string, body any, want int, stderr io.Writer) ([]byte, error) {
	cfg, haveCfg, err := clientConfig(*a.config, stderr)
	if err != nil {
		return nil, err
	}
	base := *a.admin
	if base == "" {
		base = "http://" + loopbackAddr(cfg.Admin.Listen)
	}
	key, err := adminKey(cfg, haveCfg, *a.keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(base, "/")+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: admin API at %s: %w", what, base, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: read answer: %w", what, err)
	}
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s: admin API answered %s: %s", what, resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}

// printJSON writes an answer indented.
func printJSON(stdout io.Writer, out []byte) error {
	if len(bytes.TrimSpace(out)) == 0 {
		return nil
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, out, "", "  ") == nil {
		out = append(pretty.Bytes(), '\n')
	}
	_, err := stdout.Write(out)
	return err
}

func cmdTokenIssue(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("token issue", stderr)
	kinds := fs.String("kinds", "", "comma-separated callback kinds, e.g. b2c.result,b2c.timeout")
	shortcode := fs.String("shortcode", "", "business shortcode the callbacks are for")
	reference := fs.String("reference", "", "your reference, carried in the Daraja-Reference header")
	ttl := fs.String("ttl", "", "lifetime, e.g. 1h (default tokens.default_ttl; a reusable token: none)")
	reusable := fs.Bool("reusable", false, "takes any number of callbacks (C2B registered URLs)")
	forwardPath := fs.String("forward-path", "", "path and query the forwarder appends for this token's callbacks")
	a := addAdminFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *kinds == "" || *shortcode == "" {
		return commandError("token issue", "token issue: --kinds and --shortcode are required")
	}
	req := verify.IssueRequest{Shortcode: *shortcode, Reference: *reference, TTL: *ttl, Reusable: *reusable, ForwardPath: *forwardPath}
	for _, k := range strings.Split(*kinds, ",") {
		req.Kinds = append(req.Kinds, daraja.Kind(strings.TrimSpace(k)))
	}
	out, err := a.call(ctx, "token issue", http.MethodPost, "/v1/tokens", req, http.StatusCreated, stderr)
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}

// tokenID reads the one positional argument of token status/revoke/…
func tokenID(fs *flag.FlagSet, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", &exitError{code: 0}
		}
		return "", &exitError{code: 2, msg: fs.Name() + ": " + err.Error()}
	}
	switch {
	case fs.NArg() != 1:
		return "", commandError(fs.Name(), "%s: name one token id (tok_…)", fs.Name())
	case !verify.ValidID(fs.Arg(0)):
		return "", commandError(fs.Name(), "%s: %q is not a token id (tok_ and 16 characters a-z, 2-7)", fs.Name(), fs.Arg(0))
	}
	return fs.Arg(0), nil
}

func cmdTokenStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("token status", stderr)
	a := addAdminFlags(fs)
	id, err := tokenID(fs, reorder(args))
	if err != nil {
		return err
	}
	out, err := a.call(ctx, "token status", http.MethodGet, "/v1/tokens/"+id, nil, http.StatusOK, stderr)
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}

func cmdTokenRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("token revoke", stderr)
	a := addAdminFlags(fs)
	id, err := tokenID(fs, reorder(args))
	if err != nil {
		return err
	}
	if _, err := a.call(ctx, "token revoke", http.MethodDelete, "/v1/tokens/"+id, nil, http.StatusNoContent, stderr); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s revoked\n", id)
	return err
}

func cmdTokenRotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("token rotate", stderr)
	overlap := fs.String("overlap", "", "how long the old token stays valid (default 24h)")
	ttl := fs.String("ttl", "", "lifetime of the successor (default the old token's)")
	a := addAdminFlags(fs)
	id, err := tokenID(fs, reorder(args))
	if err != nil {
		return err
	}
	out, err := a.call(ctx, "token rotate", http.MethodPost, "/v1/tokens/"+id+"/rotate",
		verify.RotateRequest{Overlap: *overlap, TTL: *ttl}, http.StatusCreated, stderr)
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}

func cmdTokenAnnotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("token annotate", stderr)
	checkout := fs.String("checkout-request-id", "", "the CheckoutRequestID Daraja answered an STK push with")
	originator := fs.String("originator-conversation-id", "", "the OriginatorConversationID Daraja answered a B2C/B2B/reversal request with")
	a := addAdminFlags(fs)
	id, err := tokenID(fs, reorder(args))
	if err != nil {
		return err
	}
	out, err := a.call(ctx, "token annotate", http.MethodPatch, "/v1/tokens/"+id,
		verify.Annotation{CheckoutRequestID: *checkout, OriginatorConversationID: *originator}, http.StatusOK, stderr)
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}

func cmdTokenList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("token list", stderr)
	reference := fs.String("reference", "", "only tokens with this reference")
	shortcode := fs.String("shortcode", "", "only tokens for this shortcode")
	kind := fs.String("kind", "", "only tokens for this kind")
	state := fs.String("state", "", "only tokens in this state: issued, consumed, expired, revoked")
	after := fs.String("after", "", "continue after this token id (the previous page's next)")
	limit := fs.Int("limit", 50, "tokens per page (at most 500)")
	a := addAdminFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"reference": *reference, "shortcode": *shortcode, "kind": *kind, "state": *state, "after": *after} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", fmt.Sprint(*limit))
	out, err := a.call(ctx, "token list", http.MethodGet, "/v1/tokens?"+q.Encode(), nil, http.StatusOK, stderr)
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}

// reorder puts a leading positional argument after the flags, so both
// "token status tok_x --config f" and "token status --config f tok_x" work.
func reorder(args []string) []string {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return append(append([]string{}, args[1:]...), args[0])
	}
	return args
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
		return "", errors.New("no admin API key: set DARAJA_EDGE_ADMIN_KEY, admin.api_keys, or --api-key-file (" + err.Error() + ")")
	}
	return strings.TrimSpace(string(data)), nil
}
