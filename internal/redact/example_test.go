package redact_test

import (
	"fmt"

	"github.com/daraja-edge/daraja-edge/internal/redact"
)

func ExamplePath() {
	fmt.Println(redact.Path("/stk/callback"))
	fmt.Println(redact.Path("/v1/tokens/wEtZr0EY5mOTXc8pwaAKFPayvHo6hMKAUPV774TE/rotate"))
	fmt.Println(redact.Path("/a\nb"))
	// Output:
	// /stk/callback
	// /v1/tokens/[redacted]/rotate
	// /a?b
}
