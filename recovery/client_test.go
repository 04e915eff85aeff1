package recovery

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/recovery/darajatest"
)

const (
	stkPath = "/mpesa/stkpushquery/v1/query"
	oauth   = "/oauth/v1/generate"
)

func stand(t *testing.T) (*darajatest.Server, *Client) {
	t.Helper()
	d := darajatest.New("app-key-1234", "app-secret-5678")
	t.Cleanup(d.Close)
	d.Passkeys["174379"] = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
	return d, NewClient(d.URL, d.Key, d.Secret, d.Client())
}

func stkQuery(d *darajatest.Server) STKQuery {
	ts := Timestamp(time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC))
	return STKQuery{BusinessShortCode: "174379", Password: STKPassword("174379", d.Passkeys["174379"], ts), Timestamp: ts,
		CheckoutRequestID: "ws_CO_01122026120000123456"}
}

func TestTimestampAndPassword(t *testing.T) {
	ts := Timestamp(time.Date(2026, 12, 1, 21, 30, 5, 0, time.UTC))
	if ts != "20261202003005" { // EAT is UTC+3
		t.Fatalf("timestamp %s", ts)
	}
	got, _ := base64.StdEncoding.DecodeString(STKPassword("174379", "pk", ts))
	if string(got) != "174379pk20261202003005" {
		t.Fatalf("password decodes to %q", got)
	}
}

// TestTokenShared: concurrent calls share one OAuth fetch, and later
// calls reuse the cached token.
func TestTokenShared(t *testing.T) {
	d, c := stand(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.QuerySTK(context.Background(), stkQuery(d)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if _, err := c.QuerySTK(context.Background(), stkQuery(d)); err != nil {
		t.Fatal(err)
	}
	if n := d.Calls(oauth); n != 1 {
		t.Fatalf("%d OAuth fetches for 9 calls, want 1", n)
	}
}

// TestTokenRenewed: an invalid-token answer (404.001.03, or 401) renews
// the token once and the call goes through.
func TestTokenRenewed(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    darajatest.Failure
	}{{"404.001.03", darajatest.InvalidToken}, {"401", darajatest.Unauthorized}, {"revoked", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			d, c := stand(t)
			if _, err := c.QuerySTK(context.Background(), stkQuery(d)); err != nil {
				t.Fatal(err)
			}
			if tc.f != 0 {
				d.Fail(stkPath, tc.f)
			} else {
				d.Revoke()
			}
			if _, err := c.QuerySTK(context.Background(), stkQuery(d)); err != nil {
				t.Fatal(err)
			}
			if n := d.Calls(oauth); n != 2 {
				t.Fatalf("%d OAuth fetches, want 2", n)
			}
		})
	}
}

// TestErrors: Daraja's error answers become APIErrors, retryable or not.
func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		f         []darajatest.Failure
		code      string
		retryable bool
	}{
		{"rate limit", []darajatest.Failure{darajatest.RateLimited}, "policies.ratelimit.SpikeArrestViolation", true},
		{"500", []darajatest.Failure{darajatest.ServerError}, "500.003.02", true},
		{"processing", []darajatest.Failure{darajatest.Processing}, CodeProcessing, true},
		{"invalid token twice", []darajatest.Failure{darajatest.InvalidToken, darajatest.InvalidToken}, CodeInvalidToken, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, c := stand(t)
			d.Fail(stkPath, tc.f...)
			_, err := c.QuerySTK(context.Background(), stkQuery(d))
			var ae *APIError
			if !errors.As(err, &ae) || ae.Code != tc.code || Retryable(err) != tc.retryable {
				t.Fatalf("err %v, want code %s retryable %v", err, tc.code, tc.retryable)
			}
		})
	}
	d, c := stand(t)
	q := stkQuery(d)
	q.Password = STKPassword("174379", "wrong", q.Timestamp)
	if _, err := c.QuerySTK(context.Background(), q); err == nil || Retryable(err) {
		t.Fatalf("wrong password: %v, want a final error", err)
	}
}

func TestSecurityCredential(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "apicrypt.safaricom.co.ke"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	cred, err := SecurityCredential("Safaricom999!*!", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := base64.StdEncoding.DecodeString(cred)
	//lint:ignore SA1019 the test decrypts what Daraja would, with the scheme Daraja specifies.
	pt, err := rsa.DecryptPKCS1v15(nil, key, ct)
	if err != nil || string(pt) != "Safaricom999!*!" {
		t.Fatalf("decrypts to %q, %v", pt, err)
	}
}

// TestTokenExpiry: the OAuth token is reused until 60 s before its
// expires_in (3599 s from the stand-in), then fetched anew, by the
// client's clock.
func TestTokenExpiry(t *testing.T) {
	d, c := stand(t)
	start := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	now := start
	c.now = func() time.Time { return now }
	for _, step := range []struct {
		at      time.Duration
		fetches int
	}{{0, 1}, {time.Hour - 2*time.Minute, 1}, {3599*time.Second - time.Minute - time.Second, 1},
		{3599*time.Second - time.Minute, 2}, {2*3599*time.Second - 2*time.Minute - time.Second, 2}, {2 * time.Hour, 3}} {
		now = start.Add(step.at)
		if _, err := c.QuerySTK(context.Background(), stkQuery(d)); err != nil {
			t.Fatal(err)
		}
		if n := d.Calls(oauth); n != step.fetches {
			t.Fatalf("at +%s: %d OAuth fetches, want %d", step.at, n, step.fetches)
		}
	}
}

// TestFromConfigCredential: with initiator_password_file and
// certificate_file, FromConfig encrypts the password with the
// certificate's key (PKCS #1 v1.5, base64), as Daraja decrypts it; keys
// and secrets come from their files.
func TestFromConfigCredential(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "sandbox.safaricom.co.ke"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rc := config.DefaultRecovery()
	rc.Enabled, rc.BaseURL = true, "http://127.0.0.1:1"
	rc.ConsumerKeyFile, rc.ConsumerSecretFile = write("key", "file-key-1\n"), write("secret", "file-secret-2\n")
	rc.Shortcodes = map[string]config.RecoveryShortcode{
		"600999": {InitiatorName: "edge-query", InitiatorPasswordFile: write("pw", "Op3rator-Pa55!\n"),
			CertificateFile: write("cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))},
		"174379": {PasskeyFile: write("passkey", "pk-174379\n"), SecurityCredential: "", Pull: true},
	}
	out, err := FromConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	sc := out["600999"]
	ct, err := base64.StdEncoding.DecodeString(sc.SecurityCredential)
	if err != nil || len(ct) != 256 {
		t.Fatalf("credential %q: %v", sc.SecurityCredential, err)
	}
	//lint:ignore SA1019 the test decrypts what Daraja would, with the scheme Daraja specifies.
	pt, err := rsa.DecryptPKCS1v15(nil, key, ct)
	if err != nil || string(pt) != "Op3rator-Pa55!" {
		t.Fatalf("credential decrypts to %q, %v", pt, err)
	}
	if sc.Initiator != "edge-query" || sc.IdentifierType != "4" || sc.Client == nil || sc.Client.key != "file-key-1" || sc.Client.secret != "file-secret-2" {
		t.Fatalf("shortcode %+v", sc)
	}
	if o := out["174379"]; o.Passkey != "pk-174379" || !o.Pull || o.Client != sc.Client {
		t.Fatalf("174379: passkey %q pull %v, one client per app %v", o.Passkey, o.Pull, o.Client == sc.Client)
	}
	rc.Shortcodes["600999"] = config.RecoveryShortcode{InitiatorName: "edge-query", InitiatorPasswordFile: filepath.Join(dir, "pw"),
		CertificateFile: filepath.Join(dir, "secret")}
	if _, err := FromConfig(rc); err == nil || !strings.Contains(err.Error(), "recovery.shortcodes.600999.certificate_file") ||
		strings.Contains(err.Error(), "Op3rator") {
		t.Fatalf("not a certificate: %v", err)
	}
}
