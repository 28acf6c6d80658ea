// Package contract checks HTTP traffic against HighLevel's official OpenAPI
// description (copied, CC0, into openapi/ from GoHighLevel/highlevel-api-docs).
// Wrap a handler (the sandbox) with a Validator and every request that reaches
// it and every response it gives is validated; Problems lists what did not
// match. Requests to paths the spec does not describe are problems too.
package contract

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// SpecDir is the folder holding apps/ and common/ as in the upstream repo.
func SpecDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "openapi")
}

// Validator validates traffic against the Conversations API spec.
type Validator struct {
	router routers.Router

	mu       sync.Mutex
	problems []string
	checked  map[string]int // "METHOD /template STATUS" -> count
}

// New loads apps/conversations.json (and its external refs).
func New() (*Validator, error) {
	path := filepath.Join(SpecDir(), "apps", "conversations.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("contract: read spec: %w", err)
	}
	raw, err = patchSchemaExamples(raw)
	if err != nil {
		return nil, fmt.Errorf("contract: patch spec: %w", err)
	}
	loader := openapi3.NewLoader()
	loader.IsExternalRefsAllowed = true
	doc, err := loader.LoadFromDataWithPath(raw, &url.URL{Path: path})
	if err != nil {
		return nil, fmt.Errorf("contract: load spec: %w", err)
	}
	// Match on paths alone, whatever host the sandbox listens on.
	doc.Servers = openapi3.Servers{{URL: "/"}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("contract: router: %w", err)
	}
	return &Validator{router: router, checked: map[string]int{}}, nil
}

// patchSchemaExamples drops schema-level "examples" that are not arrays.
// Upstream's conversations.json has one (UserSubscriptionChangeDto, far from
// the endpoints we use) that no OpenAPI parser accepts; the vendored file is
// kept byte-identical to upstream and patched in memory instead.
func patchSchemaExamples(raw []byte) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	var walk func(v any, inSchemas bool)
	walk = func(v any, inSchemas bool) {
		switch t := v.(type) {
		case map[string]any:
			for k, child := range t {
				if k == "examples" && inSchemas {
					if _, ok := child.([]any); !ok {
						delete(t, k)
						continue
					}
				}
				walk(child, inSchemas || k == "schemas")
			}
		case []any:
			for _, child := range t {
				walk(child, inSchemas)
			}
		}
	}
	walk(doc, false)
	return json.Marshal(doc)
}

// Problems returns every mismatch seen so far.
func (v *Validator) Problems() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.problems...)
}

// Checked returns how many exchanges were validated per route and status.
func (v *Validator) Checked() map[string]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string]int, len(v.checked))
	for k, n := range v.checked {
		out[k] = n
	}
	return out
}

func (v *Validator) problem(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.problems) < 100 {
		v.problems = append(v.problems, fmt.Sprintf(format, args...))
	}
}

// Wrap returns next with validation in front and behind. Requests under
// /_sandbox/ (the sandbox's own control routes) pass unchecked.
func (v *Validator) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/_sandbox/") {
			next.ServeHTTP(w, r)
			return
		}
		route, params, err := v.router.FindRoute(r)
		if err != nil {
			v.problem("%s %s: no such route in the spec: %v", r.Method, r.URL.Path, err)
			next.ServeHTTP(w, r)
			return
		}
		in := &openapi3filter.RequestValidationInput{
			Request: r, PathParams: params, Route: route,
			Options: &openapi3filter.Options{
				MultiError: true,
				// The spec's bearer scheme: require a Bearer credential.
				AuthenticationFunc: func(_ context.Context, ai *openapi3filter.AuthenticationInput) error {
					if !strings.HasPrefix(ai.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ") {
						return fmt.Errorf("no bearer token")
					}
					return nil
				},
			},
		}
		if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
			v.problem("request %s %s: %v", r.Method, route.Path, err)
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		res := rec.Result()
		body := rec.Body.Bytes()
		out := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in,
			Status:                 res.StatusCode,
			Header:                 res.Header,
			Body:                   io.NopCloser(bytes.NewReader(body)),
			Options:                &openapi3filter.Options{MultiError: true},
		}
		if err := openapi3filter.ValidateResponse(r.Context(), out); err != nil {
			v.problem("response %s %s %d: %v (body %s)", r.Method, route.Path, res.StatusCode, err, body)
		}
		v.mu.Lock()
		v.checked[fmt.Sprintf("%s %s %d", r.Method, route.Path, res.StatusCode)]++
		v.mu.Unlock()
		for k, vals := range res.Header {
			w.Header()[k] = vals
		}
		w.WriteHeader(res.StatusCode)
		_, _ = w.Write(body)
	})
}
