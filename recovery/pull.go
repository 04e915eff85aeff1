package recovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// PullTransaction is one transaction of a Pull Transactions answer.
type PullTransaction struct {
	Receipt string          // transactionId, the M-Pesa receipt
	Raw     json.RawMessage // the transaction's object, byte for byte
}

// pullAnswer is Pull Transactions' answer: {"ResponseRefID",
// "ResponseCode":"1000","ResponseMessage":"Success","Response":[[{…}]]}.
type pullAnswer struct {
	ResponseCode    string          `json:"ResponseCode"`
	ResponseMessage string          `json:"ResponseMessage"`
	Response        json.RawMessage `json:"Response"`
}

// maxPullTransactions bounds what one answer is read for.
const maxPullTransactions = 10000

// PullTransactions reads the transactions of a Pull Transactions answer:
// objects with a transactionId, at any depth of nested arrays under
// Response (Daraja nests them one level: [[{…},{…}]]). An empty Response
// is no transaction; a ResponseCode other than 1000 is an error.
func PullTransactions(body []byte) ([]PullTransaction, error) {
	var a pullAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("recovery: pull answer: %w", err)
	}
	if a.ResponseCode != "" && a.ResponseCode != "1000" && a.ResponseCode != "0" {
		return nil, fmt.Errorf("recovery: pull answer: ResponseCode %s: %s", clip(a.ResponseCode), clip(a.ResponseMessage))
	}
	var out []PullTransaction
	var walk func(raw json.RawMessage, depth int) error
	walk = func(raw json.RawMessage, depth int) error {
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || depth > 8 {
			return nil
		}
		switch raw[0] {
		case '[':
			var items []json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				return err
			}
			for _, it := range items {
				if err := walk(it, depth+1); err != nil {
					return err
				}
			}
		case '{':
			var tx struct {
				ID string `json:"transactionId"`
			}
			if err := json.Unmarshal(raw, &tx); err != nil {
				return err
			}
			if !validReceipt(tx.ID) {
				return fmt.Errorf("transaction without a usable transactionId")
			}
			if len(out) >= maxPullTransactions {
				return errors.New("too many transactions")
			}
			out = append(out, PullTransaction{Receipt: tx.ID, Raw: append(json.RawMessage(nil), raw...)})
		}
		return nil
	}
	if err := walk(a.Response, 0); err != nil {
		return nil, fmt.Errorf("recovery: pull answer: %w", err)
	}
	return out, nil
}

// validReceipt: an M-Pesa receipt (transaction id) is 8 to 20 letters and
// digits; it goes into subjects and message ids, so nothing else passes.
func validReceipt(s string) bool {
	if len(s) < 8 || len(s) > 20 {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool { return !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') }) < 0
}
