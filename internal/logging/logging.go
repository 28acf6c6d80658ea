// Package logging builds the slog logger every command uses, from -log-format
// and -log-level flags defaulting to LOG_FORMAT and LOG_LEVEL.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Options are the parsed logging flags.
type Options struct {
	format *string
	level  *string
}

// Flags registers -log-format (text|json) and -log-level on fs.
func Flags(fs *flag.FlagSet, getenv func(string) string) *Options {
	def := func(k, d string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return d
	}
	return &Options{
		format: fs.String("log-format", def("LOG_FORMAT", "text"), "log format: text or json (env LOG_FORMAT)"),
		level:  fs.String("log-level", def("LOG_LEVEL", "info"), "log level: debug, info, warn, error (env LOG_LEVEL)"),
	}
}

// Logger returns a logger writing to w.
func (o *Options) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*o.level)); err != nil {
		return nil, fmt.Errorf("LOG_LEVEL (or -log-level) %q: want debug, info, warn or error", *o.level)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(*o.format) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", *o.format)
}
