// Package contract checks HTTP traffic against HighLevel's official OpenAPI
// description (copied, CC0, into openapi/ from GoHighLevel/highlevel-api-docs:
// the conversations and OAuth apps).
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

// Validator validates traffic against one or more OpenAPI specs.
type Validator struct {
	// routers are tried in order; the first that knows the route wins.
	routers []routers.Router
	// ownAPI: requests the server rejected (4xx) are not problems, since
	// tests send bad requests on purpose; a request the spec rejects but the
	// server accepts (2xx) is.
	ownAPI bool

	mu       sync.Mutex
	problems []string
	checked  map[string]int // "METHOD /template STATUS" -> count
}

// specs are the HighLevel spec files New loads, under SpecDir.
var specs = []string{"apps/conversations.json", "apps/oauth.json"}

// New loads HighLevel's conversations and OAuth specs (and their external
// refs): the sandbox's conversations routes and its /oauth/token,
// /oauth/locationToken and /oauth/installedLocations are all checked.
func New() (*Validator, error) {
	return load(specs...)
}

// NewOAuth loads the OAuth spec alone (apps/oauth.json).
func NewOAuth() (*Validator, error) {
	return load("apps/oauth.json")
}

// load reads HighLevel spec files (paths under SpecDir) into one Validator.
func load(files ...string) (*Validator, error) {
	docs := make([]*openapi3.T, 0, len(files))
	for _, f := range files {
		doc, err := loadHighLevel(filepath.Join(SpecDir(), filepath.FromSlash(f)))
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
	return newValidator(false, docs...)
}

// loadHighLevel loads one of HighLevel's spec files, patched (see
// patchSchemaExamples), with its refs to ../common resolved.
func loadHighLevel(path string) (*openapi3.T, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("contract: read spec: %w", err)
	}
	raw, err = patchSchemaExamples(raw)
	if err != nil {
		return nil, fmt.Errorf("contract: patch spec %s: %w", filepath.Base(path), err)
	}
	loader := openapi3.NewLoader()
	loader.IsExternalRefsAllowed = true
	doc, err := loader.LoadFromDataWithPath(raw, &url.URL{Path: path})
	if err != nil {
		return nil, fmt.Errorf("contract: load spec %s: %w", filepath.Base(path), err)
	}
	return doc, nil
}

// NewOwn loads a self-contained spec of one of our own APIs (the intake
// API) after validating the document itself. Responses are always checked;
// requests only where the server accepted them (see Validator.ownAPI).
func NewOwn(path string) (*Validator, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("contract: load %s: %w", path, err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("contract: %s is not a valid OpenAPI document: %w", path, err)
	}
	return newValidator(true, doc)
}

// newValidator routes over docs, in order. Each keeps its own router, so
// each spec's routes are validated against its own components (security
// schemes included).
func newValidator(own bool, docs ...*openapi3.T) (*Validator, error) {
	v := &Validator{ownAPI: own, checked: map[string]int{}}
	for _, doc := range docs {
		// Match on paths alone, whatever host the server listens on.
		doc.Servers = openapi3.Servers{{URL: "/"}}
		router, err := gorillamux.NewRouter(doc)
		if err != nil {
			return nil, fmt.Errorf("contract: router: %w", err)
		}
		v.routers = append(v.routers, router)
	}
	return v, nil
}

// findRoute asks each spec's router in turn; the error is the first
// router's when none knows the route.
func (v *Validator) findRoute(r *http.Request) (*routers.Route, map[string]string, error) {
	var first error
	for _, router := range v.routers {
		route, params, err := router.FindRoute(r)
		if err == nil {
			return route, params, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, nil, first
}

// authenticate accepts a request carrying the credential a security scheme
// names: a Bearer Authorization header or the named API-key header.
func authenticate(_ context.Context, ai *openapi3filter.AuthenticationInput) error {
	r := ai.RequestValidationInput.Request
	ss := ai.SecurityScheme
	switch {
	case ss.Type == "http" && strings.EqualFold(ss.Scheme, "bearer"):
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			return fmt.Errorf("no bearer token")
		}
	case ss.Type == "apiKey" && ss.In == "header":
		if r.Header.Get(ss.Name) == "" {
			return fmt.Errorf("no %s header", ss.Name)
		}
	default:
		return fmt.Errorf("unsupported security scheme %s", ss.Type)
	}
	return nil
}

// patchSchemaExamples drops schema-level "examples" that are not arrays.
// Upstream's conversations.json has one (UserSubscriptionChangeDto, far from
// the endpoints we use) that no OpenAPI parser accepts; the vendored files
// are kept byte-identical to upstream and patched in memory instead (every
// spec goes through it; oauth.json has none to drop).
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
		route, params, err := v.findRoute(r)
		if err != nil {
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			// Our own API may refuse a route the spec lacks (404, 405).
			if !v.ownAPI || rec.Code < 400 {
				v.problem("%s %s: no such route in the spec: %v (answered %d)", r.Method, r.URL.Path, err, rec.Code)
			}
			copyResponse(w, rec)
			return
		}
		in := &openapi3filter.RequestValidationInput{
			Request: r, PathParams: params, Route: route,
			Options: &openapi3filter.Options{
				MultiError:         true,
				AuthenticationFunc: authenticate,
			},
		}
		reqErr := openapi3filter.ValidateRequest(r.Context(), in)
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		res := rec.Result()
		body := rec.Body.Bytes()
		if reqErr != nil && (!v.ownAPI || res.StatusCode < 400) {
			v.problem("request %s %s (answered %d): %v", r.Method, route.Path, res.StatusCode, reqErr)
		}
		if r.Context().Err() != nil {
			// The client gave up (a timeout fault): nobody receives this
			// response, so there is nothing to hold to the spec.
			return
		}
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
		copyResponse(w, rec)
	})
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, vals := range rec.Result().Header {
		w.Header()[k] = vals
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}
