package ghl

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzValidateID: an accepted id is 1-64 bytes of [A-Za-z0-9_-], so it is
// safe as a URL path segment; everything else is refused with a message.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"ve9EPM428h8vShlRW1KT", "", "a/b", "../x", "héllo", "a b", "x?y=1", "%2F", string(make([]byte, 65))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateID(id)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if len(id) == 0 || len(id) > MaxIDLength {
			t.Fatalf("accepted %d-byte id", len(id))
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				t.Fatalf("accepted %q", id)
			}
		}
	})
}

// FuzzClassify: any status, headers and body give exactly one of a terminal
// Result or a typed error with a known reason; a 2xx is never a dead
// letter without a body saying so, a 5xx is always retryable, a 429 is a
// *RateLimitError with a positive wait; messages are valid UTF-8 and bounded.
func FuzzClassify(f *testing.F) {
	f.Add(200, "", `{"status":200,"message":"ok"}`)
	f.Add(200, "", `{"status":404,"message":"Message not found"}`)
	f.Add(429, "2", `{"statusCode":429,"message":"Too many requests"}`)
	f.Add(500, "", `<html>bad gateway</html>`)
	f.Add(401, "", `{"statusCode":401,"message":["Invalid JWT"]}`)
	f.Add(200, "", `{"status":"oops"`)
	f.Add(204, "", ``)
	f.Fuzz(func(t *testing.T, status int, retryAfter, body string) {
		h := http.Header{}
		if retryAfter != "" {
			h.Set("Retry-After", retryAfter)
		}
		h.Set("X-RateLimit-Remaining", strconv.Itoa(len(body)%7))
		res, err := Classify(status, h, []byte(body), time.Now())
		if (res == nil) == (err == nil) {
			t.Fatalf("status %d: want exactly one of result and error, got %v, %v", status, res, err)
		}
		if res != nil {
			if res.Outcome != OutcomeCancelled && res.Outcome != OutcomeNotCancellable {
				t.Fatalf("unknown outcome %q", res.Outcome)
			}
			if !utf8.ValidString(res.Message) || len(res.Message) > maxMessageLen+3 {
				t.Fatalf("message %q", res.Message)
			}
			return
		}
		var rl *RateLimitError
		var e *Error
		switch {
		case errors.As(err, &rl):
			if status != 429 && !(status >= 200 && status < 300) {
				t.Fatalf("status %d classified as rate limited", status)
			}
			if rl.RetryAfter <= 0 {
				t.Fatalf("429 with wait %v", rl.RetryAfter)
			}
		case errors.As(err, &e):
			if e.Reason == "" {
				t.Fatal("error without reason")
			}
			if status >= 500 && status < 600 && !e.Retryable {
				t.Fatalf("5xx not retryable: %v", e)
			}
			if !utf8.ValidString(e.Message) || len(e.Message) > maxMessageLen+3 {
				t.Fatalf("message %q", e.Message)
			}
		default:
			t.Fatalf("untyped error %T", err)
		}
	})
}
