package verify

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"
)

// ServiceError is the error body of the NATS token service:
// {"error":{"code":…,"message":…}}, as in the admin API.
type ServiceError struct {
	Error RequestError `json:"error"`
}

// ServeNATS registers the token service on nc as a NATS micro service:
// <prefix>.tokens.issue, .rotate, .revoke and .status, answering the same
// JSON as the admin API, so business services need no HTTP route to the
// edge. Replicas share the work through the service's queue group.
func ServeNATS(nc *nats.Conn, prefix, version string, iss *Issuer, log *zap.Logger) (micro.Service, error) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("token_service")
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "daraja-edge-tokens",
		Version:     version,
		Description: "issues, rotates and revokes daraja-edge callback tokens",
	})
	if err != nil {
		return nil, err
	}
	g := svc.AddGroup(prefix + ".tokens")
	type call func(ctx context.Context, data []byte) (any, error)
	handle := func(name string, fn call) error {
		return g.AddEndpoint(name, micro.HandlerFunc(func(r micro.Request) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := fn(ctx, r.Data())
			if err != nil {
				code, status, msg := "unavailable", "503", "the token store is unavailable; try again"
				var re *RequestError
				switch {
				case errors.As(err, &re):
					code, status, msg = re.Code, "400", re.Message
				case errors.Is(err, ErrNotFound):
					code, status, msg = "not_found", "404", "no such token"
				default:
					log.Error("token service failed", zap.String("endpoint", name), zap.Error(err))
				}
				body, _ := json.Marshal(ServiceError{RequestError{Code: code, Message: msg}})
				_ = r.Error(status, msg, body)
				return
			}
			_ = r.RespondJSON(out)
		}), micro.WithEndpointSubject(name))
	}
	decode := func(data []byte, v any) error {
		if err := DecodeRequest(data, v); err != nil {
			return badRequest("body must be a JSON request: %v", err)
		}
		return nil
	}
	var idReq struct {
		ID string `json:"id"`
	}
	err = errors.Join(
		handle("issue", func(ctx context.Context, data []byte) (any, error) {
			var req IssueRequest
			if err := decode(data, &req); err != nil {
				return nil, err
			}
			return iss.Issue(ctx, req)
		}),
		handle("rotate", func(ctx context.Context, data []byte) (any, error) {
			var req RotateRequest
			if err := decode(data, &req); err != nil {
				return nil, err
			}
			return iss.Rotate(ctx, req)
		}),
		handle("revoke", func(ctx context.Context, data []byte) (any, error) {
			req := idReq
			if err := decode(data, &req); err != nil {
				return nil, err
			}
			if err := iss.Revoke(ctx, req.ID); err != nil {
				return nil, err
			}
			return map[string]string{"id": req.ID, "state": StateRevoked}, nil
		}),
		handle("status", func(ctx context.Context, data []byte) (any, error) {
			req := idReq
			if err := decode(data, &req); err != nil {
				return nil, err
			}
			return iss.Status(ctx, req.ID)
		}),
	)
	if err != nil {
		_ = svc.Stop()
		return nil, err
	}
	return svc, nil
}
