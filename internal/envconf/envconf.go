// Package envconf reads environment variables as the defaults of a
// command's flags. A value that does not parse is collected, not replaced by
// the default, so the command can refuse to start naming every bad one.
package envconf

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Env reads variables through get (os.Getenv, or a map in tests).
type Env struct {
	get  func(string) string
	errs []error
}

// New returns an Env reading through get.
func New(get func(string) string) *Env { return &Env{get: get} }

// String returns the variable, or def when it is unset or empty.
func (e *Env) String(k, def string) string {
	if v := e.get(k); v != "" {
		return v
	}
	return def
}

func (e *Env) parse(k, want string, parse func(string) error) {
	if v := e.get(k); v != "" {
		if err := parse(v); err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q: want %s", k, v, want))
		}
	}
}

// Int returns the variable as an int, or def.
func (e *Env) Int(k string, def int) int {
	e.parse(k, "an integer", func(v string) (err error) { def, err = strconv.Atoi(v); return err })
	return def
}

// Float returns the variable as a float64, or def.
func (e *Env) Float(k string, def float64) float64 {
	e.parse(k, "a number", func(v string) (err error) { def, err = strconv.ParseFloat(v, 64); return err })
	return def
}

// Duration returns the variable as a duration ("30s", "168h"), or def.
func (e *Env) Duration(k string, def time.Duration) time.Duration {
	e.parse(k, `a duration with a unit, like "30s" or "168h"`, func(v string) (err error) { def, err = time.ParseDuration(v); return err })
	return def
}

// Bool returns the variable as a bool (true/false, 1/0, t/f in any case),
// or def.
func (e *Env) Bool(k string, def bool) bool {
	e.parse(k, "true or false", func(v string) (err error) { def, err = strconv.ParseBool(v); return err })
	return def
}

// Err joins every variable that did not parse; nil when all did.
func (e *Env) Err() error { return errors.Join(e.errs...) }
