package main

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/daraja-edge/daraja-edge/config"
)

// pinnedImage is a base image pinned by digest, with a tag that names the
// release for the reader.
var pinnedImage = regexp.MustCompile(`^[a-z0-9./_-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$`)

// TestDockerfileLint checks the Dockerfile against the hadolint rules that
// matter here (hadolint is not packaged for Debian; see docs/operations.md
// for running it by hand): pinned base images, go.mod copied before the
// source, a non-root final user, exec-form CMD/ENTRYPOINT/HEALTHCHECK,
// and a static binary.
func TestDockerfileLint(t *testing.T) {
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var froms, users []string
	var sawModCopy, sawSourceCopy, modBeforeSource, healthcheck, cgoOff bool
	sc := bufio.NewScanner(f)
	var logical strings.Builder
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			logical.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		logical.WriteString(line)
		l := logical.String()
		logical.Reset()
		instr := strings.ToUpper(strings.Fields(l)[0])
		switch instr {
		case "FROM":
			froms = append(froms, strings.Fields(l)[1])
		case "USER":
			users = append(users, strings.Fields(l)[1])
		case "COPY":
			if strings.Contains(l, "go.mod") {
				sawModCopy = true
			} else if strings.Contains(l, "COPY . .") {
				sawSourceCopy = true
				modBeforeSource = sawModCopy
			}
		case "CMD", "ENTRYPOINT":
			if !regexp.MustCompile(`^\w+\s+\[`).MatchString(l) {
				t.Errorf("%s is not in exec form: %s", instr, l)
			}
		case "HEALTHCHECK":
			healthcheck = true
			if !strings.Contains(l, `CMD [`) {
				t.Errorf("HEALTHCHECK is not in exec form: %s", l)
			}
		case "RUN":
			if strings.Contains(l, "CGO_ENABLED=0") {
				cgoOff = true
			}
		}
	}
	if len(froms) < 2 {
		t.Errorf("not multi-stage: %v", froms)
	}
	for _, img := range froms {
		if !pinnedImage.MatchString(img) || strings.Contains(img, ":latest@") {
			t.Errorf("base image %q is not pinned: want name:tag@sha256:<64 hex>, the tag not latest", img)
		}
	}
	if !strings.Contains(froms[len(froms)-1], "distroless") && froms[len(froms)-1] != "scratch" {
		t.Errorf("runtime image %q is neither distroless nor scratch", froms[len(froms)-1])
	}
	if len(users) == 0 || strings.HasPrefix(users[len(users)-1], "root") || users[len(users)-1] == "0" {
		t.Errorf("final user is root: %v", users)
	}
	if !sawSourceCopy || !modBeforeSource {
		t.Error("go.mod/go.sum must be copied (and downloaded) before the source, for layer caching")
	}
	if !healthcheck || !cgoOff {
		t.Errorf("healthcheck=%v static=%v", healthcheck, cgoOff)
	}
}

// TestDeployConfigsLoad keeps the shipped configs valid.
func TestDeployConfigsLoad(t *testing.T) {
	t.Setenv("DARAJA_EDGE_ADMIN_KEY", "deploy-test-admin-key-0123456789")
	files, _ := filepath.Glob("deploy/*.yaml")
	for _, path := range files {
		if filepath.Base(path) == "compose.yaml" {
			continue
		}
		if _, err := config.LoadFile(path); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	if len(files) < 2 {
		t.Errorf("deploy/ holds %d YAML files", len(files))
	}
}

// TestNATSNodeConfigs: the shipped cluster nodes load with nats-server's own
// parser, fsync every write before acknowledging it, and find a silent
// partition in seconds.
func TestNATSNodeConfigs(t *testing.T) {
	files, _ := filepath.Glob("deploy/nats/*.conf")
	if len(files) != 3 {
		t.Fatalf("deploy/nats holds %d node configs, want 3", len(files))
	}
	for _, path := range files {
		o, err := server.ProcessConfigFile(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if !o.JetStream || !o.SyncAlways {
			t.Errorf("%s: jetstream=%v sync_interval always=%v, want both", path, o.JetStream, o.SyncAlways)
		}
		if o.Cluster.PingInterval <= 0 || o.Cluster.PingInterval > 5*time.Second || len(o.Routes) != 3 {
			t.Errorf("%s: cluster ping_interval %v, %d routes; want a few seconds and 3", path, o.Cluster.PingInterval, len(o.Routes))
		}
	}
}

// TestImageHygiene: the build context never holds history, data or keys;
// the image carries OCI labels and exposes the default ports; the compose
// file's NATS is the version the edge embeds.
func TestImageHygiene(t *testing.T) {
	ignore, err := os.ReadFile(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", "data", "*.key", "*.creds"} {
		if !strings.Contains("\n"+string(ignore)+"\n", "\n"+want+"\n") {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
	df, _ := os.ReadFile("Dockerfile")
	for _, want := range []string{"org.opencontainers.image.version", "org.opencontainers.image.revision", "org.opencontainers.image.licenses", "EXPOSE 8443 9090"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	mod, _ := os.ReadFile("go.mod")
	v := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\S+)`).FindSubmatch(mod)
	compose, _ := os.ReadFile("deploy/compose.yaml")
	if v == nil || !strings.Contains(string(compose), "image: nats:"+string(v[1])+"-alpine") {
		t.Errorf("deploy/compose.yaml's NATS image is not the embedded server's version %s", v)
	}
}
