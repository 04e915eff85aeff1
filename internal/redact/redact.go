// Package redact makes request data fit for logs: no token, no secret, no
// control byte, and a bounded length, the same on every listener.
package redact

// MaxPath is the most bytes Path returns.
const MaxPath = 128

// MinRun is the shortest run of token characters (A-Z a-z 0-9 - _) that
// Path hides. Every token (40 characters), token id (20), API key (config
// refuses shorter ones) and secret the edge issues or accepts is at least
// this long, while the segments of the paths it serves are all shorter. An
// API key is hidden whole only if it is made of token characters: others
// are cut into shorter runs (config.example.yaml says so).
const MinRun = 20

// Placeholder replaces each hidden run.
const Placeholder = "[redacted]"

// Path returns p fit for a log line or an event: each run of MinRun or more
// token characters becomes Placeholder, each byte outside printable ASCII
// becomes '?', and the result is cut to MaxPath bytes. A path that needs
// none of that (every endpoint path the edge serves) is returned as it is,
// without allocating.
//
// Path hides token-shaped text wherever it sits in p (segment, fragment,
// anything); it does not parse p. Pass it a path, never a raw query: a
// query's short values are kept.
func Path(p string) string {
	if clean(p) {
		return p
	}
	b := make([]byte, 0, MaxPath+MinRun)
	run := 0 // length of the run of token characters ending at i
	flush := func(end int) {
		if run >= MinRun {
			b = append(b, Placeholder...)
		} else {
			b = append(b, p[end-run:end]...)
		}
		run = 0
	}
	for i := 0; i < len(p) && len(b) < MaxPath; i++ {
		c := p[i]
		if tokenChar(c) {
			run++
			continue
		}
		flush(i)
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b = append(b, c)
	}
	if run > 0 {
		flush(len(p))
	}
	if len(b) > MaxPath {
		b = b[:MaxPath]
	}
	return string(b)
}

// clean reports whether Path would return p unchanged.
func clean(p string) bool {
	if len(p) > MaxPath {
		return false
	}
	run := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case tokenChar(c):
			if run++; run >= MinRun {
				return false
			}
		case c < 0x20 || c > 0x7e:
			return false
		default:
			run = 0
		}
	}
	return true
}

func tokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
