package broker

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/daraja-edge/daraja-edge/certs"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
)

func runServer(t *testing.T, o *server.Options) *server.Server { return natstest.ServerWith(t, o) }

func hostPort(ns *server.Server) string { return ns.Addr().String() }

// TestRemoteAuth: user/password and token in the URL are honoured, and a
// refused connection's error does not repeat the secret.
func TestRemoteAuth(t *testing.T) {
	ctx := context.Background()
	up := runServer(t, &server.Options{Username: "edge", Password: "pw-0123456789"})
	tok := runServer(t, &server.Options{Authorization: "tok-0123456789"})
	for name, tc := range map[string]struct {
		url string
		ok  bool
	}{
		"user and password": {"nats://edge:pw-0123456789@" + hostPort(up), true},
		"wrong password":    {"nats://edge:wrong-secret-99@" + hostPort(up), false},
		"token":             {"nats://tok-0123456789@" + hostPort(tok), true},
		"wrong token":       {"nats://wrong-secret-99@" + hostPort(tok), false},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := Start(ctx, Options{URL: tc.url, Name: "test"}, nil)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				b.Close()
				return
			}
			if err == nil {
				b.Close()
				t.Fatal("connected with a wrong secret")
			}
			if strings.Contains(err.Error(), "wrong-secret-99") {
				t.Errorf("error repeats the secret: %v", err)
			}
		})
	}
}

// TestRemoteTLS: a tls:// URL asks for TLS, verified against the system
// roots (here a test CA given through SSL_CERT_FILE).
func TestRemoteTLS(t *testing.T) {
	cert, err := certs.SelfSigned([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	t.Setenv("SSL_CERT_FILE", ca)
	ns := runServer(t, &server.Options{TLS: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	b, err := Start(context.Background(), Options{URL: "tls://" + hostPort(ns), Name: "test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.Conn.TLSRequired() {
		t.Error("connection is not TLS")
	}
}

// TestCredentialsFile: a .creds file (user JWT and nkey seed) logs in to a
// server in operator mode.
func TestCredentialsFile(t *testing.T) {
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.IssuerAccount = apub
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(t.TempDir(), "edge.creds")
	os.WriteFile(credsFile, creds, 0o600)

	// The server needs a system account in operator mode.
	skp, _ := nkeys.CreateAccount()
	spub, _ := skp.PublicKey()
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	oc.SystemAccount = spub
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	opc, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for pub, j := range map[string]string{apub: ajwt, spub: sjwt} {
		if err := resolver.Store(pub, j); err != nil {
			t.Fatal(err)
		}
	}
	ns := runServer(t, &server.Options{TrustedOperators: []*jwt.OperatorClaims{opc}, AccountResolver: resolver, SystemAccount: spub})
	if _, err := Start(context.Background(), Options{URL: "nats://" + hostPort(ns), Name: "test"}, nil); err == nil {
		t.Fatal("connected without credentials")
	}
	b, err := Start(context.Background(), Options{URL: "nats://" + hostPort(ns), CredentialsFile: credsFile, Name: "test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}

// TestStartErrorsNameKey: every start-up failure names its key and value
// and keeps its cause (issue 13): an unreachable nats.url says "connection
// refused", not only nats.go's "no servers available", and never shows the
// URL's credentials; a busy embedded port fails at once, naming
// nats.embedded.listen.
func TestStartErrorsNameKey(t *testing.T) {
	ctx := context.Background()
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Run("nats.url unreachable", func(t *testing.T) {
		a, b := closed(), closed()
		_, err := Start(ctx, Options{URL: "nats://operator-7:pw-secret-42@" + a + ", nats://tok-secret-43@" + b, Name: "test"}, nil)
		if err == nil {
			t.Fatal("connected to a closed port")
		}
		msg := err.Error()
		want := `nats.url "nats://` + a + `,nats://` + b + `" (credentials redacted): `
		if !strings.Contains(msg, want) || !strings.Contains(msg, "connection refused") {
			t.Errorf("error %q\nlacks %q and the cause", msg, want)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || !errors.Is(err, nats.ErrNoServers) {
			t.Errorf("error %q does not wrap ECONNREFUSED and nats.ErrNoServers", msg)
		}
		for _, secret := range []string{"pw-secret-42", "tok-secret-43", "operator-7"} {
			if strings.Contains(msg, secret) {
				t.Errorf("error shows %q: %s", secret, msg)
			}
		}
	})
	t.Run("nats.url without credentials", func(t *testing.T) {
		a := closed()
		_, err := Start(ctx, Options{URL: "nats://" + a, Name: "test"}, nil)
		if err == nil || !strings.Contains(err.Error(), `nats.url "nats://`+a+`": `) || strings.Contains(err.Error(), "redacted") ||
			!errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("error %v", err)
		}
	})
	t.Run("nats.credentials_file missing", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "edge.creds")
		_, err := Start(ctx, Options{URL: "nats://" + closed(), CredentialsFile: missing, Name: "test"}, nil)
		if err == nil || !strings.Contains(err.Error(), `nats.credentials_file "`+missing+`": `) || !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v", err)
		}
	})
	t.Run("nats.embedded.listen busy", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		addr := busy.Addr().String()
		_, err = Start(ctx, Options{EmbeddedListen: addr, EmbeddedStoreDir: t.TempDir(), Name: "test"}, nil)
		if err == nil || !strings.Contains(err.Error(), `nats.embedded.listen "`+addr+`": `) || !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("error %v, want nats.embedded.listen %q: address in use", err, addr)
		}
	})
	t.Run("nats.embedded.store_dir under a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		os.WriteFile(file, nil, 0o600)
		dir := filepath.Join(file, "nats")
		_, err := Start(ctx, Options{EmbeddedListen: "127.0.0.1:0", EmbeddedStoreDir: dir, Name: "test"}, nil)
		if err == nil || !strings.Contains(err.Error(), `nats.embedded.store_dir "`+dir+`": `) {
			t.Errorf("error %v", err)
		}
	})
}

// TestMaxMessageFits: the embedded server's max_payload is raised to take
// the largest callback the body limit allows; a remote server whose
// max_payload cannot take it stops the start, naming both (a callback that
// size was answered 200 from the spool and could never be stored).
func TestMaxMessageFits(t *testing.T) {
	ctx := context.Background()
	const big = 2<<20 + 8<<10
	b, err := Start(ctx, Options{EmbeddedListen: "127.0.0.1:0", EmbeddedStoreDir: t.TempDir(), Name: "test", MaxMessage: big}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mp := b.Conn.MaxPayload(); mp < big {
		t.Errorf("embedded max_payload %d, want at least %d", mp, big)
	}
	b.Close()
	small := runServer(t, &server.Options{MaxPayload: 64 << 10})
	_, err = Start(ctx, Options{URL: "nats://" + hostPort(small), Name: "test", MaxMessage: 1<<20 + 8<<10}, nil)
	if err == nil || !strings.Contains(err.Error(), "limits.max_body_bytes") || !strings.Contains(err.Error(), "max_payload (65536)") {
		t.Fatalf("a server that cannot take the largest callback: %v", err)
	}
	if b, err := Start(ctx, Options{URL: "nats://" + hostPort(small), Name: "test", MaxMessage: 32 << 10}, nil); err != nil {
		t.Fatalf("a body limit that fits: %v", err)
	} else {
		b.Close()
	}
}
