package daraja

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
)

var (
	resultCodeRE = regexp.MustCompile(`^[0-9A-Za-z]{1,16}$`)
	thirdPartyRE = regexp.MustCompile(`^[\x21-\x7e]{1,64}$`)
	integerRE    = regexp.MustCompile(`^[0-9]{1,16}$`)
)

// MaxValidationAnswer bounds a validator's answer.
const MaxValidationAnswer = 4096

// ValidationAnswer reads a business validator's answer to a C2B
// validation and rebuilds the answer Daraja gets from what it read, so
// that what Daraja acts on is what the edge records: one JSON object with
// nothing after it, no key twice, exact key names; ResultCode a string
// (escapes decoded) or a whole number, of 1–16 letters and digits, "0"
// accepting and any other rejecting (C2B00011…); ResultDesc kept when it
// is a string of at most 256 bytes; ThirdPartyTransID kept when it is 1–64
// printable ASCII characters. ok is false for anything else: the caller
// falls back as for no answer.
func ValidationAnswer(reply []byte) (answer []byte, accepted, ok bool) {
	if len(reply) == 0 || len(reply) > MaxValidationAnswer {
		return nil, false, false
	}
	fields, err := topLevelObject(reply)
	if err != nil {
		return nil, false, false
	}
	var code string
	switch raw := fields["ResultCode"]; {
	case len(raw) > 0 && raw[0] == '"':
		if json.Unmarshal(raw, &code) != nil {
			return nil, false, false
		}
	case integerRE.Match(raw):
		code = string(raw)
	default:
		return nil, false, false
	}
	if !resultCodeRE.MatchString(code) {
		return nil, false, false
	}
	accepted = code == "0"
	out := struct {
		ResultCode        string `json:"ResultCode"`
		ResultDesc        string `json:"ResultDesc"`
		ThirdPartyTransID string `json:"ThirdPartyTransID,omitempty"`
	}{ResultCode: code}
	if raw := fields["ResultDesc"]; len(raw) > 0 {
		var d string
		if json.Unmarshal(raw, &d) == nil && d != "" && len(d) <= 256 {
			out.ResultDesc = d
		}
	}
	if out.ResultDesc == "" {
		out.ResultDesc = "Rejected"
		if accepted {
			out.ResultDesc = "Accepted"
		}
	}
	if raw := fields["ThirdPartyTransID"]; len(raw) > 0 {
		var id string
		if json.Unmarshal(raw, &id) == nil && thirdPartyRE.MatchString(id) {
			out.ThirdPartyTransID = id
		}
	}
	b, err := json.Marshal(out)
	return b, accepted, err == nil
}

// topLevelObject splits one JSON object into its members, refusing a key
// given twice and anything after the object.
func topLevelObject(data []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	fields := map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := t.(string)
		if _, dup := fields[key]; dup {
			return nil, errors.New("a key given twice")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		fields[key] = v
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("more after the JSON object")
	}
	return fields, nil
}
