// Package darajatest is a local stand-in for Daraja's OAuth, STK Push
// Query, Transaction Status and Pull Transactions endpoints, with
// Safaricom's published request and response shapes and error answers,
// for tests (no test touches the internet).
package darajatest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Failure is an error answer the stand-in gives instead of the next
// answer on a path.
type Failure int

// The error answers Daraja gives.
const (
	InvalidToken Failure = iota + 1 // 404 {"errorCode":"404.001.03","errorMessage":"Invalid Access Token"}
	Unauthorized                    // 401
	RateLimited                     // 429 spike arrest fault
	ServerError                     // 500 {"errorCode":"500.003.02"}
	Processing                      // 500 {"errorCode":"500.001.1001","errorMessage":"The transaction is being processed"}
)

// Server is the stand-in.
type Server struct {
	*httptest.Server
	Key, Secret string
	// Passkeys maps a shortcode to its Lipa Na M-Pesa passkey: an STK
	// query with another password is refused.
	Passkeys map[string]string

	mu      sync.Mutex
	tokens  map[string]bool
	fails   map[string][]Failure
	calls   map[string]int
	Bodies  map[string][]map[string]any // requests received, per path
	results map[string]string           // CheckoutRequestID -> ResultCode
	issued  []string                    // every access token issued
	pulls   map[string][]PullTransaction
	// PullPage is the most transactions one Pull answer holds (default
	// 1000); OffSetValue skips rows.
	PullPage int
}

// PullTransaction is one C2B transaction Pull Transactions answers with.
type PullTransaction struct {
	Receipt       string
	Time          time.Time
	MSISDN        string
	BillReference string
	Amount        string
	Type          string // default c2b-pay-bill-debit
	Organization  string
}

// New starts a stand-in on 127.0.0.1 for the app (key, secret).
func New(key, secret string) *Server {
	s := &Server{Key: key, Secret: secret, Passkeys: map[string]string{}, tokens: map[string]bool{},
		fails: map[string][]Failure{}, calls: map[string]int{}, Bodies: map[string][]map[string]any{}, results: map[string]string{}, pulls: map[string][]PullTransaction{}, PullPage: 1000}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /oauth/v1/generate", s.oauth)
	mux.HandleFunc("POST /mpesa/stkpushquery/v1/query", s.api(s.stk))
	mux.HandleFunc("POST /mpesa/transactionstatus/v1/query", s.api(s.status))
	mux.HandleFunc("POST /pulltransactions/v1/query", s.api(s.pull))
	s.Server = httptest.NewServer(mux)
	return s
}

// Fail queues failures for the next calls on path ("/oauth/v1/generate"
// or an API path).
func (s *Server) Fail(path string, f ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fails[path] = append(s.fails[path], f...)
}

// Calls counts the requests on path.
func (s *Server) Calls(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[path]
}

// Revoke forgets every access token issued (as an expiry would).
func (s *Server) Revoke() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = map[string]bool{}
}

// Tokens returns every access token issued (for secret scans of logs).
func (s *Server) Tokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

// AddPull adds C2B transactions of a shortcode that Pull Transactions
// answers for a window holding their time.
func (s *Server) AddPull(shortcode string, txs ...PullTransaction) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pulls[shortcode] = append(s.pulls[shortcode], txs...)
}

// SetResult sets the ResultCode an STK query answers for a checkout id
// (default "0"; "1032" is cancelled by the user).
func (s *Server) SetResult(checkout, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results[checkout] = code
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func requestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Server) next(path string) Failure {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[path]++
	if q := s.fails[path]; len(q) > 0 {
		s.fails[path] = q[1:]
		return q[0]
	}
	return 0
}

// fail writes failure f; bearer is the access token the request carried,
// which Daraja's 401 repeats.
func (s *Server) fail(w http.ResponseWriter, f Failure, bearer string) {
	if bearer == "" {
		bearer = "BJGFGOXv5aZnw90KkA4TDtu4Xdyf"
	}
	switch f {
	case InvalidToken:
		writeJSON(w, http.StatusNotFound, map[string]string{"requestId": requestID(), "errorCode": "404.001.03", "errorMessage": "Invalid Access Token"})
	case Unauthorized:
		writeJSON(w, http.StatusUnauthorized, map[string]string{"requestId": requestID(), "errorCode": "401.002.01", "errorMessage": "Error Occurred - Invalid Access Token - " + bearer})
	case RateLimited:
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"fault": map[string]any{
			"faultstring": "Spike arrest violation. Allowed rate : MessageRate{messagesPerPeriod=5, periodInMicroseconds=1000000, maxBurstMessageCount=1.0}",
			"detail":      map[string]string{"errorcode": "policies.ratelimit.SpikeArrestViolation"}}})
	case ServerError:
		writeJSON(w, http.StatusInternalServerError, map[string]string{"requestId": requestID(), "errorCode": "500.003.02", "errorMessage": "System is busy. Please try again in few minutes."})
	case Processing:
		writeJSON(w, http.StatusInternalServerError, map[string]string{"requestId": requestID(), "errorCode": "500.001.1001", "errorMessage": "The transaction is being processed"})
	}
}

func (s *Server) oauth(w http.ResponseWriter, r *http.Request) {
	if f := s.next(r.URL.Path); f != 0 {
		s.fail(w, f, "")
		return
	}
	k, sec, ok := r.BasicAuth()
	if !ok || k != s.Key || sec != s.Secret || r.URL.Query().Get("grant_type") != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"requestId": requestID(), "errorCode": "400.008.01", "errorMessage": "Invalid Authentication passed"})
		return
	}
	var b [20]byte
	_, _ = rand.Read(b[:])
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	s.mu.Lock()
	s.tokens[tok] = true
	s.issued = append(s.issued, tok)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"access_token": tok, "expires_in": "3599"})
}

func (s *Server) api(h func(http.ResponseWriter, map[string]any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		const bearer = "Bearer "
		auth := r.Header.Get("Authorization")
		if f := s.next(r.URL.Path); f != 0 {
			s.fail(w, f, strings.TrimPrefix(auth, bearer))
			return
		}
		s.mu.Lock()
		valid := len(auth) > len(bearer) && auth[:len(bearer)] == bearer && s.tokens[auth[len(bearer):]]
		s.mu.Unlock()
		if !valid {
			s.fail(w, InvalidToken, "")
			return
		}
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"requestId": requestID(), "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid Body"})
			return
		}
		s.mu.Lock()
		s.Bodies[r.URL.Path] = append(s.Bodies[r.URL.Path], body)
		s.mu.Unlock()
		h(w, body)
	}
}

// Requests returns the request bodies received on path.
func (s *Server) Requests(path string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any(nil), s.Bodies[path]...)
}

func str(m map[string]any, k string) string { v, _ := m[k].(string); return v }

func (s *Server) stk(w http.ResponseWriter, b map[string]any) {
	sc, ts := str(b, "BusinessShortCode"), str(b, "Timestamp")
	want := base64.StdEncoding.EncodeToString([]byte(sc + s.Passkeys[sc] + ts))
	if str(b, "Password") != want || len(ts) != 14 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"requestId": requestID(), "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid Password"})
		return
	}
	id := str(b, "CheckoutRequestID")
	s.mu.Lock()
	code, ok := s.results[id]
	s.mu.Unlock()
	if !ok {
		code = "0"
	}
	desc := "The service request is processed successfully."
	if code == "1032" {
		desc = "Request cancelled by user"
	}
	writeJSON(w, http.StatusOK, map[string]string{"ResponseCode": "0", "ResponseDescription": "The service request has been accepted successsfully",
		"MerchantRequestID": "22205-34066-1", "CheckoutRequestID": id, "ResultCode": code, "ResultDesc": desc})
}

func (s *Server) status(w http.ResponseWriter, b map[string]any) {
	if str(b, "CommandID") != "TransactionStatusQuery" || str(b, "Initiator") == "" || str(b, "SecurityCredential") == "" ||
		str(b, "ResultURL") == "" || str(b, "QueueTimeOutURL") == "" || str(b, "PartyA") == "" ||
		(str(b, "TransactionID") == "") == (str(b, "OriginalConversationID") == "") {
		writeJSON(w, http.StatusBadRequest, map[string]string{"requestId": requestID(), "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid Request"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"OriginatorConversationID": requestID(),
		"ConversationID": "AG_20260101_" + requestID(), "ResponseCode": "0", "ResponseDescription": "Accept the service request successfully."})
}

// eat is Daraja's clock (UTC+3).
var eat = time.FixedZone("EAT", 3*60*60)

func (s *Server) pull(w http.ResponseWriter, b map[string]any) {
	const layout = "2006-01-02 15:04:05"
	from, err1 := time.ParseInLocation(layout, str(b, "StartDate"), eat)
	to, err2 := time.ParseInLocation(layout, str(b, "EndDate"), eat)
	offset, err3 := strconv.Atoi(str(b, "OffSetValue"))
	if err1 != nil || err2 != nil || err3 != nil || offset < 0 || str(b, "ShortCode") == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"requestId": requestID(), "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid Request"})
		return
	}
	s.mu.Lock()
	var rows []map[string]string
	for _, tx := range s.pulls[str(b, "ShortCode")] {
		if tx.Time.Before(from) || tx.Time.After(to) {
			continue
		}
		typ := tx.Type
		if typ == "" {
			typ = "c2b-pay-bill-debit"
		}
		rows = append(rows, map[string]string{"transactionId": tx.Receipt, "trxDate": tx.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
			"msisdn": tx.MSISDN, "sender": "", "transactiontype": typ, "billreference": tx.BillReference, "amount": tx.Amount,
			"organizationname": tx.Organization})
	}
	page := s.PullPage
	s.mu.Unlock()
	rows = rows[min(offset, len(rows)):]
	rows = rows[:min(page, len(rows))]
	if rows == nil {
		rows = []map[string]string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"ResponseRefID": requestID(), "ResponseCode": "1000", "ResponseMessage": "Success",
		"Response": [][]map[string]string{rows}})
}
